"""Training the InfluenceNetwork on the labelled block, validated the way it will be used.

The network predicts pairs it has never seen, so validation holds out what prediction will not have:

1. **Folds by design.** In a u × u block (``held_out="records"``) the unlabelled pairs have neither
   side labelled: the labelled records (a pool record that is both a row and a column is one record)
   are split into ``folds`` seeded groups (pool records and separate target rows dealt separately, so every
   fold has its share of target rows), and each fold is validated on the pairs whose row and column
   are both inside it, after training on the pairs whose row and column are both outside. When every
   row is labelled (all targets × sampled candidates, ``held_out="columns"``), folds hold out
   candidates only and validate on every row × the fold's candidates. ``validation_repeats`` draws the
   folds that many times (:mod:`nncift.network.folds`).
2. Training runs by optimisation steps (full batch, or beyond ``network.step_pairs`` minibatches of seeded random rows ×
   columns, so a step's cost stops growing with the labels), AdamW, for each learning rate × weight decay of a
   small grid, on plain or row-centred MSE (``loss``); the validation error is recorded every
   ``eval_every`` steps, and the grid point and step count with the lowest mean error win.
3. **The network must beat its no-learning fallback.** The candidates — the calibrated prior (the
   embeddings' cosine, least-squares fitted to the labels), the trained network, their half-way blend,
   and each of those with **label anchors** (:mod:`nncift.network.anchors`: the labelled residuals carried to
   nearby records) — are scored on the held-out pairs by a selection-aware criterion
   (:mod:`nncift.network.validation`: per-row Spearman and f_gain of the run's own selection). A candidate
   replaces the prior only if it is better on every fold, and on average by more than one standard
   error of the per-fold differences. Every choice made on the folds (an anchor or calibration kernel, the
   network's grid point and step count) is made for fold i on the other folds, so fold i's score is that
   of the whole procedure on pairs it has not seen (:mod:`nncift.network.candidates`). With fewer than 3
   folds of 5 records (or candidates), the prior is shipped and the report says why.
4. The chosen predictor is retrained on every labelled pair with the chosen settings, and the report
   says in words why it was shipped.

Beyond ``network.max_training_pairs`` labelled pairs, all of this runs on a seeded sample of the labelled
records whose pairs fit (:func:`~nncift.network.folds.training_sample`), so its time stops growing with the labels.
Every choice and its validation numbers (means and per fold) go into the :class:`FitReport` (the run's manifest).
Same inputs and seed → the same network (one torch thread, seeded initialisation and folds).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from nncift.network.anchors import Anchors
from nncift.network.candidates import Folds, other_folds, out_of_fold_points, validate_candidates
from nncift.network.folds import MIN_RECORDS_PER_FOLD, fold_masks, sampled_self_cols, training_sample
from nncift.network.row_calibration import RowCalibration
from nncift.network.task_calibration import TaskRows, describe, fit_task_lines, task_calibration
from nncift.network.tower_training import PairBlock, step_sub_block, train_stacked
from nncift.network.towers import TwoTowerNetwork
from nncift.network.validation import MIN_FOLDS, choose_candidate, confirmation_gains, confirmed, explain_choice, mean_criteria
from nncift.settings.stages import NetworkSettings

__all__ = ["FitSettings", "FitReport", "fit_pairwise", "calibrate_prior", "one_torch_thread"]
@dataclass(frozen=True)
class FitSettings:
    """How the default network is trained and validated: the run's network stage, and the validation grid a run does not set."""

    network: NetworkSettings = field(default_factory=NetworkSettings)
    """The network stage: the towers' width (``tower_hidden``) and rank (``tower_rank``), ``max_steps``, record ``folds``,
    ``fallback`` (ship the calibrated prior or a blend when they validate better), training ``loss`` and ``seed`` (of the
    folds and the initialisation)."""
    eval_every: int = 10
    """Validation every this many steps."""
    learning_rates: tuple[float, ...] = (1e-3, 3e-3)
    """AdamW learning rates tried."""
    weight_decays: tuple[float, ...] = (1e-4, 1e-2)
    """AdamW weight decays tried."""
    force: str = "network"
    """Without ``network.fallback``: the candidate shipped whatever validation says (benchmarks compare every candidate this way)."""
    validation_budget: float = 0.3
    """Subset share used by the selection-aware validation criterion."""
    criterion_shows_exact: bool = True
    """On held-out candidates, score the selection with the fold's training candidates beside them at their exact values
    (as the run's selection sees them); False: the held-out candidates alone (the rule before row calibration: the
    benchmarks' ablation)."""
    choices_out_of_fold: bool = True
    """Score fold i with the kernels, grid point and step count chosen on the other folds (:mod:`nncift.network.candidates`);
    False: chosen on every fold and judged on the same folds (the rule before 2026-12-03: the benchmarks' ablation)."""
    block_folds: bool = False
    """Where the labels lie in several diagonal blocks, hold out whole blocks per fold (the report's ``held_out`` reads
    ``blocks``) instead of records: measured, not better on DELIFT (:mod:`nncift.network.folds`); the benchmarks' option."""
    validation_repeats: int = 1
    """Repeated cross-validation: the record folds are drawn this many times (seeds ``seed``, ``seed + 1``, …) and every
    fold of every repeat is trained and scored, so the choice rests on ``folds × repeats`` held-out blocks. Runs use 1:
    with 3 on the demo's DELIFT matrix (19 labelled records, 6 seeds) the strict rule shipped a learned candidate on 1
    seed of 6 instead of 4, and a worse one (f_gain 0.451 against 0.518, the cosine 0.473; BENCHMARKS.md)."""


CANDIDATE_ORDER = ("prior", "blend", "network", "prior + anchors", "blend + anchors", "network + anchors", "prior + row calibration",
                   "blend + row calibration", "network + row calibration")
"""The predictors validation compares, the no-learning prior first (the one the others must beat; ties go to the earlier)."""


@dataclass
class FitReport:
    """What fitting chose and why (JSON-ready via :meth:`as_dict`)."""

    architecture: str
    chosen: str
    """``network``, ``blend`` or ``prior``."""
    n_labelled: int
    seconds: float
    folds: int = 0
    """Held-out blocks the choice rests on (folds × repeats)."""
    repeats: int = 1
    """How many times the folds were drawn (repeated cross-validation)."""
    choices: str = ""
    """How the per-fold scores were made: ``out of fold`` (kernels, grid point and step count chosen on the other folds)
    or ``in sample`` (:attr:`FitSettings.choices_out_of_fold` off); empty when nothing was validated."""
    learning_rate: float | None = None
    weight_decay: float | None = None
    steps: int | None = None
    validation_curve: list[float] = field(default_factory=list)
    """Mean validation MSE (standardised labels) over the folds, every ``eval_every`` steps, of the chosen grid point."""
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per candidate: cold-validation Spearman, f_gain, MSE and the combined criterion (means over the folds)."""
    fold_criteria: dict[str, list[float]] = field(default_factory=dict)
    """Per candidate: the combined criterion on each fold, in fold order (what the choice compared)."""
    prior: dict[str, float] = field(default_factory=dict)
    confirmation: dict[str, Any] | None = None
    """``network.confirm``: the candidate the folds chose, its out-of-fold gain over the prior on each fold (the choice made on
    the other folds, scored on that one) and whether that confirmed it (else the prior shipped); None when not checked."""
    note: str = ""
    """Why the shipped predictor was shipped, in words."""
    loss: str = "mse"
    held_out: str = "records"
    """What validation held out: ``records`` (both sides), ``blocks`` (whole diagonal blocks of the labels, where they lie in
    several: :mod:`nncift.network.folds`) or ``columns`` (candidates; every row labelled, or top-k)."""
    anchors: dict[str, float] = field(default_factory=dict)
    """The label anchors' kernel (τ, κ, neighbours) when the shipped predictor has them."""
    row_calibration: dict[str, float] = field(default_factory=dict)
    """The row calibration's kernel (τ, κ) and how many rows have their own line, when the shipped predictor has one."""
    task_calibration: dict[str, Any] = field(default_factory=dict)
    """Each task's line and the tasks left as predicted, and why (:mod:`nncift.network.task_calibration`), when rows carry tasks."""
    n_training: int = 0
    """Labelled pairs the network was validated and trained on (``n_labelled`` or, beyond ``network.max_training_pairs``, a sample's)."""
    step_pairs: int = 0
    """Pairs of the block each optimisation step trained on (the whole block: full batch; fewer beyond ``network.step_pairs``:
    minibatches of seeded random rows × columns)."""

    def as_dict(self) -> dict[str, Any]:
        def clean(value: Any) -> Any:
            if isinstance(value, float):
                return None if math.isnan(value) else round(value, 6)
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return clean({k: getattr(self, k) for k in self.__dataclass_fields__})


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with one torch thread (results independent of the machine's core count), then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def calibrate_prior(cos: np.ndarray, labels: np.ndarray, mask: np.ndarray, self_mask: np.ndarray) -> tuple[float, float, float]:
    """Least-squares ``labels ≈ α·cos + β`` on the masked non-self pairs, and the mean self-pair residual δ."""
    pairs = mask & ~self_mask
    if pairs.sum() < 2:
        pairs = mask
    x, y = cos[pairs].astype(np.float64), labels[pairs].astype(np.float64)
    if x.size == 0:
        return 0.0, 0.0, 0.0
    if x.size < 2 or np.ptp(x) < 1e-12:
        alpha, beta = 0.0, float(y.mean())
    else:
        alpha, beta = (float(v) for v in np.polyfit(x, y, 1))
    selfs = mask & self_mask
    delta = float((labels[selfs] - (alpha * cos[selfs] + beta)).mean()) if selfs.any() else 0.0
    return alpha, beta, delta


# ----------------------------------------------------------------------------------------------
# pairwise


def _build_two_tower(data: PairBlock, settings: FitSettings, mask: np.ndarray, seed: int) -> TwoTowerNetwork:
    alpha, beta, delta = calibrate_prior(data.cos, data.labels, mask, data.self_mask)
    network = TwoTowerNetwork(data.rows.shape[1], settings.network.tower_hidden, settings.network.tower_rank)
    network.initialise(torch.Generator().manual_seed(seed), alpha, beta, delta)
    return network


def _pair_data(row_embeddings: np.ndarray, col_embeddings: np.ndarray, labels: np.ndarray,
               self_cols: np.ndarray | None) -> tuple[PairBlock, float, float]:
    """The labelled block on standardised labels, with its cosines and self-pair mask; (data, label mean, label std)."""
    rows = torch.from_numpy(np.ascontiguousarray(row_embeddings, dtype=np.float32))
    cols = torch.from_numpy(np.ascontiguousarray(col_embeddings, dtype=np.float32))
    raw = np.asarray(labels, dtype=np.float64)
    if raw.shape != (rows.shape[0], cols.shape[0]):
        raise ValueError(f"labels must have shape {(rows.shape[0], cols.shape[0])}, got {raw.shape}")
    mask = np.isfinite(raw)
    mean = float(raw[mask].mean()) if mask.any() else 0.0
    std = float(raw[mask].std()) if mask.any() else 1.0
    std = std if std > 1e-12 else 1.0
    self_mask = np.zeros(raw.shape, dtype=bool)
    if self_cols is not None:
        self_cols = np.asarray(self_cols, dtype=np.int64)
        has = np.flatnonzero(self_cols >= 0)
        self_mask[has, self_cols[has]] = True
    data = PairBlock(rows, cols, (rows @ cols.T).numpy().astype(np.float64), np.where(mask, (raw - mean) / std, 0.0), mask, self_cols, self_mask)
    return data, mean, std


def _validation_error(prediction: np.ndarray, target: np.ndarray, mask: np.ndarray, centre_rows: bool) -> float:
    """Mean squared error on the masked pairs (row-centred: each row's mean error removed first)."""
    error = np.where(mask, prediction - target, 0.0)
    if centre_rows:
        count = np.maximum(mask.sum(axis=1, keepdims=True), 1)
        error = np.where(mask, error - error.sum(axis=1, keepdims=True) / count, 0.0)
    return float((error ** 2).sum() / max(int(mask.sum()), 1))


def fit_pairwise(row_embeddings: np.ndarray, col_embeddings: np.ndarray, labels: np.ndarray, settings: FitSettings, *,
                 self_cols: np.ndarray | None = None, objective: str = "fl",
                 candidate_scores: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None, held_out: str = "records",
                 prior_is_exact: bool = False, tasks: TaskRows | None = None, progress: bool = False) -> tuple[TwoTowerNetwork, FitReport]:
    """Train the default pairwise network on a labelled block (NaN = not labelled) and choose what to ship.

    Args:
        row_embeddings: (R, d) L2-normalised embeddings of the block's rows (targets).
        col_embeddings: (C, d) of its columns (candidates).
        labels: (R, C) influence values; NaN entries are not labelled.
        settings: grid, steps, folds, loss, seed.
        self_cols: per row, the column of the same record (−1: none) — pool records that are both.
        objective: ``fl`` or ``topk``: the selection used by the validation criterion.
        candidate_scores: top-k's aggregation ``(matrix, block row indices) -> score per column`` (default: the row mean).
        held_out: ``records`` (u × u designs: unlabelled pairs have neither side labelled) or ``columns`` (every
            row of the matrix is labelled: validation holds out candidates only).
        prior_is_exact: the labels are an affine map of the inputs' cosine (DELIFT-SE): ship the calibrated prior, train nothing.
        tasks: every row of the matrix with its task label: where the calibrated prior ships, every row of a task is then put
            on the task's scale (:mod:`nncift.network.task_calibration`). None: no task calibration.
        progress: a progress bar over the trainings (folds × grid, then the final one).

    Returns:
        The network to predict with (label units) and the report of what was chosen.
    """
    start = time.perf_counter()
    n_labelled = int(np.isfinite(labels).sum())
    keep_rows, keep_cols = training_sample(labels, self_cols, settings.network.max_training_pairs, settings.network.seed)
    if len(keep_rows) < labels.shape[0] or len(keep_cols) < labels.shape[1]:
        labels = np.asarray(labels)[np.ix_(keep_rows, keep_cols)]
        row_embeddings, col_embeddings = np.asarray(row_embeddings)[keep_rows], np.asarray(col_embeddings)[keep_cols]
        self_cols = None if self_cols is None else sampled_self_cols(np.asarray(self_cols)[keep_rows], keep_cols)
    data, mean, std = _pair_data(row_embeddings, col_embeddings, labels, self_cols)
    if prior_is_exact:
        report = FitReport("two-tower", "prior", int(data.mask.sum()), 0.0, loss=settings.network.loss, held_out=held_out,
                           note="the influence function is the embeddings' cosine: the calibrated prior is exact, nothing was trained")
        network = _build_two_tower(data, settings, data.mask, settings.network.seed)
    else:
        network, report = _validated_network(data, settings, objective, candidate_scores, held_out, progress)
        if tasks is not None:
            _calibrate_tasks(network, data, tasks, keep_rows, report, std)
    alpha, beta, delta = calibrate_prior(data.cos, data.labels, data.mask, data.self_mask)
    report.prior = {"alpha": alpha * std, "beta": beta * std + mean, "self_delta": delta * std}  # in label units
    network.set_label_scale(mean, std)
    report.n_training, report.n_labelled = int(data.mask.sum()), n_labelled
    sub_rows, sub_cols = step_sub_block(data.labels.shape[0], data.labels.shape[1], settings.network.step_pairs)
    report.step_pairs = sub_rows * sub_cols
    if report.n_training < n_labelled:
        used = "calibrated" if prior_is_exact else "validated and trained"
        report.note += (f"; {used} on a seeded sample of {report.n_training:,} of the {n_labelled:,} labelled pairs "
                        f"(network.max_training_pairs), every label kept exact where it was measured")
    report.seconds = time.perf_counter() - start
    return network.eval(), report


TASK_CALIBRATED = ("prior", "prior + row calibration")
"""Shipped predictors that task calibration applies to (:func:`_calibrate_tasks`)."""


def _calibrate_tasks(network: TwoTowerNetwork, data: PairBlock, tasks: TaskRows, block_rows: np.ndarray, report: FitReport, std: float) -> None:
    """Fit each task's line on the shipped predictor's values of the labelled block and attach them for every row of
    ``tasks``: only where that predictor is the calibrated prior (with or without row calibration), whose values on the
    labelled pairs are not fitted to them (a trained network's or the anchors' are: their lines would stretch the
    unlabelled rows by what they learnt of the labelled ones)."""
    if report.chosen not in TASK_CALIBRATED:
        report.task_calibration = {"kept_as_predicted": {"every task": f"{report.chosen} is fitted to the labelled pairs (in sample)"}}
        return
    self_t = None if data.self_cols is None else torch.from_numpy(data.self_cols)
    own_lines, own = network.row_calibration, None
    network.attach_row_calibration(None)  # the lines are fitted on the predictor without it
    with torch.no_grad():
        fitted = network.standardised_block(data.rows, data.cols, self_t, cos=torch.from_numpy(data.cos.astype(np.float32))).numpy()
    network.attach_row_calibration(own_lines)
    if own_lines is not None and own_lines.rows.shape[0]:  # the rows with a line of their own keep it
        own = (torch.from_numpy(np.ascontiguousarray(tasks.embeddings, dtype=np.float32)) @ own_lines.rows.T).max(dim=1).values.numpy() > 1 - 1e-5
    block_tasks = [tasks.tasks[int(tasks.block_rows[int(i)])] for i in block_rows]
    lines, skipped = fit_task_lines(fitted, data.labels, data.mask & ~data.self_mask, block_tasks)
    skipped |= {str(t): "no labelled rows" for t in set(tasks.tasks) - {None} if str(t) not in lines and str(t) not in skipped}
    calibration = task_calibration(tasks, lines, own)
    network.attach_task_calibration(calibration)
    report.task_calibration = describe(lines, skipped, std, 0 if calibration is None else int(calibration.rows.shape[0]))
    if lines:
        report.note += (f"; every row put on its task's scale ({len(lines)} of {len(lines) + len(skipped)} tasks with a line of their own, "
                        "fitted on their labelled rows)")


def _validated_network(data: PairBlock, settings: FitSettings, objective: str, candidate_scores: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
                       held_out: str, progress: bool) -> tuple[TwoTowerNetwork, FitReport]:
    """The grid's trainings on the folds, then the candidate that validates best (the prior with too few folds), trained
    on every labelled pair; (network, report without the prior and the time)."""
    repeats = max(1, settings.validation_repeats)
    folds, n_units, unit = fold_masks(data.mask, data.self_cols, settings.network.folds, settings.network.seed, repeats, held_out,
                                      settings.block_folds)
    evals = settings.network.max_steps // settings.eval_every + 1
    report = FitReport("two-tower", "prior", int(data.mask.sum()), 0.0, folds=len(folds), loss=settings.network.loss,
                       held_out=unit, repeats=repeats)
    bar = tqdm(total=evals + 1, desc="influence network", unit="eval", disable=not progress, leave=False)
    with one_torch_thread(), bar:
        grid = [(lr, wd) for lr in settings.learning_rates for wd in settings.weight_decays]
        curves, priors = _grid_curves(data, settings, folds, grid, bar)
        network = _build_two_tower(data, settings, data.mask, settings.network.seed)
        if len(folds) < MIN_FOLDS * (1 if unit == "blocks" else repeats):  # whole blocks, one per fold: drawn once
            unit = "candidates" if held_out == "columns" else "records"
            report.note = (f"too few labelled {unit} ({n_units}) to validate on held-out {unit} "
                           f"(at least {MIN_FOLDS * MIN_RECORDS_PER_FOLD}): the calibrated prior is used")
        else:
            network = _chosen_network(data, settings, report, folds, grid, curves, priors, objective, candidate_scores)
        report.note = report.note or explain_choice(report.candidates, report.chosen, report.held_out, report.confirmation)
        bar.update(1)
    return network, report


def _grid_curves(data: PairBlock, settings: FitSettings, folds: list[tuple[int, np.ndarray, np.ndarray]], grid: list[tuple[float, float]],
                 bar: Any) -> tuple[np.ndarray, list[np.ndarray]]:
    """Train a network for every grid point × fold (stacked); (validation error every ``eval_every`` steps, shape (grid, fold,
    evals); each fold's (R, C) standardised predictions of the calibrated prior, i.e. of its networks before training)."""
    centre = settings.network.loss == "row-centred"
    curves = np.full((len(grid), len(folds), settings.network.max_steps // settings.eval_every + 1), np.nan)
    jobs = [(g, i) for i in range(len(folds)) for g in range(len(grid))]  # (grid point, fold position)
    networks = [_build_two_tower(data, settings, folds[i][1], settings.network.seed + folds[i][0]) for _, i in jobs]
    self_t = None if data.self_cols is None else torch.from_numpy(data.self_cols)
    priors = [network.standardised_block(data.rows, data.cols, self_t, cos=torch.from_numpy(data.cos.astype(np.float32))).detach().numpy()
              .astype(np.float64) for network, (g, _) in zip(networks, jobs) if g == 0]

    def record(step: int, predictions: np.ndarray) -> None:
        for (g, i), prediction in zip(jobs, predictions):
            curves[g, i, step // settings.eval_every] = _validation_error(prediction, data.labels, folds[i][2], centre)
        bar.set_postfix(val_error=f"{np.nanmin(curves):.3f}")

    if jobs:
        train_stacked(networks, data, [folds[i][1] for _, i in jobs], [grid[g][0] for g, _ in jobs], [grid[g][1] for g, _ in jobs],
                      settings.network.max_steps, record, settings.eval_every, tick=lambda: bar.update(1), centre_rows=centre,
                      step_pairs=settings.network.step_pairs, seed=settings.network.seed)
    return curves, priors


def _chosen_network(data: PairBlock, settings: FitSettings, report: FitReport, folds: Folds, grid: list[tuple[float, float]],
                    curves: np.ndarray, priors: list[np.ndarray], objective: str,
                    candidate_scores: Callable[[np.ndarray, np.ndarray], np.ndarray] | None) -> TwoTowerNetwork:
    """The grid point and step count with the lowest mean validation error; every candidate (prior, network, blend, each
    as it is, with anchors and with row calibration) scored on the folds, each fold's network trained at the point chosen
    on the other folds (:mod:`nncift.network.candidates`); the one :func:`choose_candidate` ships, trained on every
    labelled pair. Fills in the report's training settings, candidates and choice."""
    (g, e), per_fold = out_of_fold_points(curves, other_folds(folds))
    per_fold = per_fold if settings.choices_out_of_fold else [(g, e)] * len(folds)
    report.choices = "out of fold" if settings.choices_out_of_fold else "in sample"
    report.learning_rate, report.weight_decay = grid[g]
    report.steps, report.validation_curve = e * settings.eval_every, [float(v) for v in curves.mean(axis=1)[g]]
    trained = _fold_predictions(data, settings, folds, [grid[fg] for fg, _ in per_fold], [fe * settings.eval_every for _, fe in per_fold])
    bases = {"prior": priors, "network": trained, "blend": [0.5 * (a + b) for a, b in zip(priors, trained)]}
    shows_exact = report.held_out == "columns" and settings.criterion_shows_exact
    per_fold_criteria, kernels = validate_candidates(data, settings.validation_budget, settings.network.seed, folds, bases, objective,
                                                     candidate_scores, with_exact=shows_exact, choose_out_of_fold=settings.choices_out_of_fold)
    report.candidates = {name: mean_criteria(values) for name, values in per_fold_criteria.items()}
    report.fold_criteria = {name: [p["criterion"] for p in values] for name, values in per_fold_criteria.items()}
    report.chosen = choose_candidate(per_fold_criteria, list(CANDIDATE_ORDER), settings.network.fallback, settings.force)
    if settings.network.confirm and settings.network.fallback and report.chosen != "prior":  # the choice itself, out of fold
        gains = confirmation_gains(report.fold_criteria, list(CANDIDATE_ORDER), other_folds(folds))
        report.confirmation = {"candidate": report.chosen, "out_of_fold_gains": [float(g) for g in gains], "confirmed": confirmed(gains)}
        report.chosen = report.chosen if confirmed(gains) else "prior"
    return _final_network(data, settings, report, kernels.get(report.chosen))


def _fold_predictions(data: PairBlock, settings: FitSettings, folds: Folds, points: list[tuple[float, float]], steps: list[int]) -> list[np.ndarray]:
    """Each fold's (R, C) standardised predictions of its network trained at its own grid point and step count (retrained
    together: the grid's trainings keep only validation errors, not k × grid × steps full predictions)."""
    networks = [_build_two_tower(data, settings, train, settings.network.seed + fold) for fold, train, _ in folds]
    if not networks:
        return []
    predictions: list[np.ndarray | None] = [None] * len(networks)

    def keep(step: int, block: np.ndarray) -> None:
        for i, wanted in enumerate(steps):
            if step == wanted:
                predictions[i] = block[i].astype(np.float64)

    train_stacked(networks, data, [train for _, train, _ in folds], [p[0] for p in points], [p[1] for p in points], max(steps), keep,
                  settings.eval_every, centre_rows=settings.network.loss == "row-centred", step_pairs=settings.network.step_pairs,
                  seed=settings.network.seed)
    assert all(p is not None for p in predictions)  # every step is a multiple of eval_every, up to max(steps)
    return [p for p in predictions if p is not None]


def _final_network(data: PairBlock, settings: FitSettings, report: FitReport, kernel: tuple[float, ...] | None) -> TwoTowerNetwork:
    """The chosen predictor trained on every labelled pair: the prior, the network or their blend, with its anchors or
    its row calibration."""
    network = _build_two_tower(data, settings, data.mask, settings.network.seed)
    base, _, variant = report.chosen.partition(" + ")
    if base != "prior":
        assert report.learning_rate is not None and report.weight_decay is not None and report.steps is not None  # chosen on validation
        train_stacked([network], data, [data.mask], [report.learning_rate], [report.weight_decay], report.steps, None, settings.eval_every,
                    centre_rows=settings.network.loss == "row-centred", step_pairs=settings.network.step_pairs, seed=settings.network.seed)
        if base == "blend":
            _blend_into(network, _build_two_tower(data, settings, data.mask, settings.network.seed), 0.5)
    if kernel is not None:
        self_t = None if data.self_cols is None else torch.from_numpy(data.self_cols)
        with torch.no_grad():
            fitted = network.standardised_block(data.rows, data.cols, self_t, cos=torch.from_numpy(data.cos.astype(np.float32))).numpy()
        counted = data.mask & ~data.self_mask
        if variant == "row calibration":
            calibration = RowCalibration.fit(data.rows.numpy(), fitted, data.labels, counted, kernel[0])
            network.attach_row_calibration(calibration)
            report.row_calibration = {"temperature": calibration.temperature, "shrink": calibration.shrink, "rows": int(calibration.rows.shape[0])}
        else:
            tau, kappa, neighbours = kernel
            network.attach_anchors(Anchors.from_block(data.rows.numpy(), data.cols.numpy(), data.labels - fitted, counted, tau, kappa, int(neighbours)))
            report.anchors = {"temperature": tau, "shrink": kappa, "neighbours": int(neighbours)}
    return network


def _blend_into(network: TwoTowerNetwork, prior: TwoTowerNetwork, weight: float) -> None:
    """Make ``network`` predict ``weight·network + (1 − weight)·prior`` (prior: learned terms at zero)."""
    network.scale_learned_part(weight)
    with torch.no_grad():
        for name in ("alpha", "beta", "self_bias"):
            mine, theirs = getattr(network, name), getattr(prior, name)
            mine.mul_(weight).add_((1.0 - weight) * theirs)
