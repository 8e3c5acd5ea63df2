"""What selection loses when it runs on predicted influence instead of the exact influence.

An influence matrix has rows = items to represent (targets; for ``flmi``/``flcg`` the pool rows
come first, then the targets) and columns = candidates. :func:`choose_subset` runs an objective on
a matrix exactly as ``nncift select`` does; :func:`objective_on` evaluates a subset's objective on a
(true) matrix; :func:`f_gain` compares the subset chosen from a predicted matrix with the one chosen
from the true matrix and with random subsets, all scored on the true matrix::

    f_gain = (f(S_pred) − mean f(S_rand)) / (f(S_true) − mean f(S_rand))

1 means the prediction loses nothing, 0 means it is no better than a random subset, below 0 worse.
It is NaN when the true subset is no better than random (nothing to lose).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import spearmanr

from nncift import selection
from nncift.selection import ObjectiveSpec, choose_subset

__all__ = ["ObjectiveSpec", "choose_subset", "objective_on", "f_gain", "spearman", "cold_mask"]

def objective_on(matrix: np.ndarray, indices: np.ndarray, spec: ObjectiveSpec) -> float:
    """The objective of the subset ``indices`` evaluated on ``matrix``."""
    if spec.name == "topk":
        return float(spec.scores(matrix)[np.asarray(indices, dtype=np.int64)].sum())
    data, cap, initial = selection.objective_terms(matrix, spec)
    return selection.objective_value(data, indices, cap=cap, initial=initial)


def f_gain(true: np.ndarray, predicted: np.ndarray, spec: ObjectiveSpec, *, n_random: int = 20, seed: int = 0,
           true_subset: np.ndarray | None = None) -> dict[str, float]:
    """f_gain and subset overlap of the subset chosen from ``predicted``, scored on ``true``.

    Returns ``f_gain``, ``overlap`` (|S_pred ∩ S_true| / |S_true|), ``random_overlap`` (expected overlap
    of a random subset, k / n), and the objective values ``f_pred``, ``f_true``, ``f_random`` (mean over
    ``n_random`` seeded random subsets of the same size). ``true_subset``: S_true when already known.
    """
    n_candidates = true.shape[1]
    chosen = choose_subset(predicted, spec).indices
    best = choose_subset(true, spec).indices if true_subset is None else np.asarray(true_subset)
    k = len(best)
    rng = np.random.default_rng(seed)
    randoms = [objective_on(true, rng.choice(n_candidates, k, replace=False), spec) for _ in range(n_random)] if k else [0.0]
    f_pred, f_true, f_random = objective_on(true, chosen, spec), objective_on(true, best, spec), float(np.mean(randoms))
    spread = f_true - f_random
    gain = (f_pred - f_random) / spread if spread > 1e-12 * max(1.0, abs(f_true)) else float("nan")
    return {"f_gain": float(gain), "overlap": len(np.intersect1d(chosen, best)) / k if k else float("nan"),
            "random_overlap": k / n_candidates if n_candidates else float("nan"),
            "f_pred": f_pred, "f_true": f_true, "f_random": f_random}


def spearman(true: np.ndarray, predicted: np.ndarray, *, limit: int = 2_000_000, seed: int = 0) -> float:
    """Spearman's ρ of two equally shaped arrays (a seeded sample of ``limit`` entries when larger); NaN when undefined."""
    a, b = np.asarray(true, dtype=np.float64).ravel(), np.asarray(predicted, dtype=np.float64).ravel()
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size > limit:
        pick = np.random.default_rng(seed).choice(a.size, limit, replace=False)
        a, b = a[pick], b[pick]
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def cold_mask(n_rows: int, n_cols: int, seen_rows: np.ndarray, seen_cols: np.ndarray, row_records: np.ndarray | None = None) -> np.ndarray:
    """(n_rows × n_cols) mask of "cold" pairs: neither the row nor the column was labelled.

    ``row_records``: per row, the column of the same record (−1: none); a row whose record was
    sampled as a column counts as seen too (the pool representing itself).
    """
    row_seen = np.zeros(n_rows, dtype=bool)
    row_seen[np.asarray(seen_rows, dtype=np.int64)] = True
    col_seen = np.zeros(n_cols, dtype=bool)
    col_seen[np.asarray(seen_cols, dtype=np.int64)] = True
    if row_records is not None:
        own = np.asarray(row_records)
        has = own >= 0
        row_seen[has] |= col_seen[own[has]]
    return np.outer(~row_seen, ~col_seen)
