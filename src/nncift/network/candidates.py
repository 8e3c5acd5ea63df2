"""Scoring the candidates a fit may ship on its held-out folds, each as the whole procedure would run on unseen data.

A candidate is a base predictor (the calibrated prior, the trained network, their blend) as it is, with label anchors
(:mod:`nncift.network.anchors`) or with row calibration (:mod:`nncift.network.row_calibration`). The anchors and the
calibration have a kernel to choose (:data:`KERNELS`, :data:`~nncift.network.row_calibration.CALIBRATION_TEMPERATURES`).

**Each fold's score comes from a kernel chosen without that fold** (:func:`out_of_fold`): fold i is scored with the
kernel that is best on the other folds. Choosing the kernel on all folds and then judging the candidate on the same
folds rewards the luckiest of the kernels tried (nine for the anchors): the candidate then looks better than it will
do on the pairs a run predicts, and beats the prior on folds where it would lose on the matrix. The kernel that ships
is the best on all folds (the run has no fold left to hold out), and the score it is judged by is the honest one.
The network's grid point and step count are chosen the same way (:func:`out_of_fold_points`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from nncift.network.anchors import NEIGHBOURS, SHRINKS, TEMPERATURES, Anchors, anchor_correction
from nncift.network.row_calibration import CALIBRATION_TEMPERATURES, RowCalibration
from nncift.network.tower_training import PairBlock
from nncift.network.validation import selection_criterion

__all__ = ["KERNELS", "VARIANTS", "Folds", "validate_candidates", "fold_criteria", "other_folds", "out_of_fold", "out_of_fold_points"]

Folds = list[tuple[int, np.ndarray, np.ndarray]]
"""(fold id, training mask, held-out mask) per fold, masks over the labelled block."""

KERNELS = tuple((tau, kappa, NEIGHBOURS) for tau in TEMPERATURES for kappa in SHRINKS) + tuple((tau, 1.0, 0) for tau in TEMPERATURES)
"""Anchor kernels tried: (τ, κ, neighbours); neighbours 0 = every labelled candidate alike, i.e. each labelled row's mean
residual (per-row offset calibration), borrowed by unlabelled rows from their nearest labelled rows."""


def _anchored(data: PairBlock, base: np.ndarray, train: np.ndarray, kernel: tuple[float, ...]) -> np.ndarray:
    """``base`` plus the anchor correction read from the ``train`` pairs' residuals of ``base``, on the whole block."""
    tau, kappa, neighbours = kernel
    anchors = Anchors.from_block(data.rows.numpy(), data.cols.numpy(), data.labels - base, train & ~data.self_mask, tau, kappa, int(neighbours))
    return base + anchor_correction(data.rows, data.cols, anchors).numpy()


def _calibrated(data: PairBlock, base: np.ndarray, train: np.ndarray, kernel: tuple[float, ...]) -> np.ndarray:
    """``base`` with each row's line fitted on the ``train`` pairs (:mod:`nncift.network.row_calibration`), on the whole block."""
    calibration = RowCalibration.fit(data.rows.numpy(), base, data.labels, train & ~data.self_mask, kernel[0])
    a, b = (v.numpy().astype(np.float64) for v in calibration.lines(data.rows))
    return a[:, None] * base + b[:, None]


VARIANTS: dict[str, tuple[Callable[[PairBlock, np.ndarray, np.ndarray, tuple[float, ...]], np.ndarray], list[tuple[float, ...]]]] = {
    "anchors": (_anchored, list(KERNELS)),
    "row calibration": (_calibrated, [(t,) for t in CALIBRATION_TEMPERATURES]),
}
"""Each variant of a base predictor: how it is made from the base and a fold's training pairs, and the kernels tried."""


def other_folds(folds: Folds) -> np.ndarray:
    """(folds, folds) boolean: fold j may choose for fold i when their held-out pairs do not overlap (the other folds of the
    same draw; with repeated folds, a fold of another draw that shares held-out pairs with fold i would leak them)."""
    n = len(folds)
    usable = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for j in range(i + 1, n):
            usable[i, j] = usable[j, i] = not bool((folds[i][2] & folds[j][2]).any())
    return usable


def out_of_fold(scores: list[list[dict[str, float]]], usable: np.ndarray | None = None) -> tuple[list[dict[str, float]], int]:
    """Per fold, the criteria of the option chosen on the *other* folds; and the option best on all folds (what ships).

    ``scores[k][i]``: option k's criteria on fold i. ``usable[i]``: the folds that may choose for fold i (default: every
    other fold; :func:`other_folds`). A fold with none to choose on gets the option best on all folds."""
    table = np.array([[s["criterion"] for s in option] for option in scores], dtype=np.float64)  # (options, folds)
    n = table.shape[1]
    usable = ~np.eye(n, dtype=bool) if usable is None else usable
    filled = np.where(np.isfinite(table), table, -np.inf)  # an option without a score on a fold is never chosen over it
    best_overall = int(np.argmax(filled.mean(axis=1)))
    per_fold = []
    for i in range(n):
        chosen = int(np.argmax(filled[:, usable[i]].mean(axis=1))) if usable[i].any() else best_overall
        per_fold.append(scores[chosen][i])
    return per_fold, best_overall


def out_of_fold_points(curves: np.ndarray, usable: np.ndarray | None = None) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """The (grid point, evaluation) with the lowest mean validation error over all folds (what the run trains), and
    per fold the one lowest over the other folds (what that fold's network is trained at to be scored).

    ``curves``: (grid, folds, evaluations) validation errors; ``usable`` as in :func:`out_of_fold`."""
    def best(folds: np.ndarray) -> tuple[int, int]:
        mean = curves[:, folds, :].mean(axis=1)
        g, e = np.unravel_index(int(np.nanargmin(mean)), mean.shape)
        return int(g), int(e)

    n = curves.shape[1]
    usable = ~np.eye(n, dtype=bool) if usable is None else usable
    overall = best(np.ones(n, dtype=bool))
    return overall, [best(usable[i]) if usable[i].any() else overall for i in range(n)]


def validate_candidates(data: PairBlock, validation_budget: float, seed: int, folds: Folds, bases: dict[str, list[np.ndarray]],
                        objective: str, candidate_scores: Callable[[np.ndarray, np.ndarray], np.ndarray] | None, *,
                        with_exact: bool = False, choose_out_of_fold: bool = True) -> tuple[dict[str, list[dict[str, float]]], dict[str, tuple[float, ...]]]:
    """Per candidate, the selection criterion on each fold; and each anchored or row-calibrated candidate's kernel.

    ``bases[name][i]``: fold i's (R, C) standardised predictions of a base predictor trained without that fold. Each
    base is scored as it is, with label anchors and with row calibration; a variant's fold i is scored with the kernel
    best on the other folds (:func:`out_of_fold`), and the kernel returned is the best on all of them. ``choose_out_of_fold=False``:
    every fold is scored with that kernel (the in-sample rule, kept for the benchmarks' ablation).
    """
    criteria: dict[str, list[dict[str, float]]] = {}
    kernels: dict[str, tuple[float, ...]] = {}
    usable = other_folds(folds)
    for name, predictions in bases.items():
        criteria[name] = fold_criteria(data, validation_budget, seed, folds, predictions, objective, candidate_scores, with_exact)
        for variant, (make, tried) in VARIANTS.items():
            scores = [fold_criteria(data, validation_budget, seed, folds,
                                    [make(data, base, train, kernel) for (_, train, _), base in zip(folds, predictions)],
                                    objective, candidate_scores, with_exact) for kernel in tried]
            criteria[f"{name} + {variant}"], best = out_of_fold(scores, usable)
            if not choose_out_of_fold:
                criteria[f"{name} + {variant}"] = scores[best]
            kernels[f"{name} + {variant}"] = tried[best]
    return criteria, kernels


def fold_criteria(data: PairBlock, validation_budget: float, seed: int, folds: Folds, values: list[np.ndarray], objective: str,
                  candidate_scores: Callable[[np.ndarray, np.ndarray], np.ndarray] | None, with_exact: bool = False) -> list[dict[str, float]]:
    """The criterion of each fold on its held-out pairs (all predicted, as nearly every pair of a run is).

    ``with_exact`` (held-out candidates, every row labelled): the selection also sees the fold's training candidates
    with their exact values, as a run's selection sees its labelled candidates beside the predicted ones, so a
    predictor whose values are off the labels' scale loses what it would lose in the run (the exact candidates
    winning, or losing, the budget by scale alone).
    """
    out = []
    for (_, train, val), predicted in zip(folds, values):
        shown = (val | train) if with_exact else val
        rows, cols = np.flatnonzero(shown.any(axis=1)), np.flatnonzero(shown.any(axis=0))
        block = np.ix_(rows, cols)
        true = np.where(shown[block], data.labels[block], np.nan)
        filled = np.where(np.isfinite(true), true, np.nanmean(true))
        seen = np.where(train[block], data.labels[block], predicted[block]) if with_exact else predicted[block]
        aggregate = None if candidate_scores is None else (lambda matrix, rows=rows: candidate_scores(matrix, rows))
        out.append(selection_criterion(filled, np.where(np.isfinite(true), seen, np.nanmean(seen)), validation_budget, objective, seed, aggregate))
    return out

