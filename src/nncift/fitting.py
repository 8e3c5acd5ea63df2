"""Training the InfluenceNetwork on the labelled block, validated the way it will be used.

The network is judged on pairs it has never seen either side of (the bulk of the predicted matrix),
so validation holds out whole **records**, never random pairs:

1. The labelled records (rows and columns; a pool record that is both a row and a column is one
   record) are split into ``folds`` seeded groups. For each fold, the network trains on the pairs
   whose row and column are both outside the fold and is validated on the pairs whose row and
   column are both inside it ("cold" pairs, as in the unlabelled part of the matrix).
2. Training runs by optimisation steps (full batch: one step sees every training pair), AdamW, for
   each learning rate × weight decay of a small grid; the validation MSE is recorded every
   ``eval_every`` steps. The grid point and step count with the lowest validation MSE, averaged over
   the folds, win (early stopping on held-out records).
3. **The network must beat its no-learning fallback.** (At least 5 held-out records per fold and 3
   folds, else the prior is shipped.) On the same cold validation pairs the
   candidates — the calibrated prior (for pairs: the embeddings' cosine, least-squares fitted to the
   labels; pointwise: the labels' mean), the trained network, and a half-way blend of the two — are
   scored by a selection-aware criterion: the mean of Spearman's ρ and of f_gain (facility location
   or top-k on the validation block, :mod:`nncift.subset_quality`). A candidate replaces the prior
   only if it is better on every fold, and on average by more than one standard error of the
   per-fold differences; the best such candidate is shipped, else the prior. Pointwise, the candidates are
   scored on the pooled out-of-fold predictions of all records, and a learned one replaces the mean
   only if its ρ exceeds 2/√(n − 1). With too few labelled records to validate (fewer than two per fold), the
   prior is shipped and the report says why.
4. The chosen network is retrained on every labelled pair with the chosen settings.

Every choice and its validation numbers go into the :class:`FitReport` (the run's manifest). Same
inputs and seed → the same network (one torch thread, seeded initialisation and folds).
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

from .subset_quality import ObjectiveSpec, f_gain, spearman
from .towers import TwoTowerNetwork

__all__ = ["FitSettings", "FitReport", "fit_pairwise", "record_folds", "calibrate_prior", "selection_criterion", "one_torch_thread"]


MIN_FOLDS = 3
"""Fewest record folds with which a learned predictor may replace the prior (it must win on every one)."""
MIN_RECORDS_PER_FOLD = 5
"""Fewest held-out records per fold: with fewer, fewer folds are used (and below :data:`MIN_FOLDS`, the prior is shipped)."""


@dataclass(frozen=True)
class FitSettings:
    """How the default network is trained and validated."""

    hidden: int = 128
    """Width of each tower's hidden layer."""
    rank: int = 64
    """Rank k of the learned target × candidate interaction."""
    max_steps: int = 300
    """Most optimisation steps (full batch); the best step count is chosen on held-out records."""
    eval_every: int = 10
    """Validation every this many steps."""
    learning_rates: tuple[float, ...] = (1e-3, 3e-3)
    """AdamW learning rates tried."""
    weight_decays: tuple[float, ...] = (1e-4, 1e-2)
    """AdamW weight decays tried."""
    folds: int = 4
    """Record folds for validation (each record is held out once)."""
    fallback: bool = True
    """Ship the calibrated prior or a blend instead of the network when they validate better."""
    validation_budget: float = 0.3
    """Subset share used by the selection-aware validation criterion."""
    seed: int = 0
    """Seed of the folds, the initialisation and nothing else."""


@dataclass
class FitReport:
    """What fitting chose and why (JSON-ready via :meth:`as_dict`)."""

    architecture: str
    chosen: str
    """``network``, ``blend`` or ``prior``."""
    n_labelled: int
    seconds: float
    folds: int = 0
    learning_rate: float | None = None
    weight_decay: float | None = None
    steps: int | None = None
    validation_curve: list[float] = field(default_factory=list)
    """Mean validation MSE (standardised labels) over the folds, every ``eval_every`` steps, of the chosen grid point."""
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per candidate: cold-validation Spearman, f_gain, MSE and the combined criterion."""
    prior: dict[str, float] = field(default_factory=dict)
    note: str = ""

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


def _record_ids(n_rows: int, n_cols: int, self_cols: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(record id of each row, all record ids): column j is record j; a row is its own column's record, else a new one."""
    own = np.full(n_rows, -1, dtype=np.int64) if self_cols is None else np.asarray(self_cols, dtype=np.int64)
    row_ids = np.where(own >= 0, own, n_cols + np.arange(n_rows))
    return row_ids, np.unique(np.concatenate([np.arange(n_cols), row_ids]))


def record_folds(n_rows: int, n_cols: int, self_cols: np.ndarray | None, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Fold of each row and each column: a row that is the same record as a column shares its fold.

    Returns ``(row_fold, col_fold, k)`` with ``k`` the number of folds used (at most one per record).
    """
    row_ids, ids = _record_ids(n_rows, n_cols, self_cols)
    k = int(max(1, min(folds, len(ids))))
    order = np.random.default_rng(seed).permutation(len(ids))
    fold_of = np.empty(len(ids), dtype=np.int64)
    fold_of[order] = np.arange(len(ids)) % k
    lookup = dict(zip(ids.tolist(), fold_of.tolist()))
    return np.array([lookup[i] for i in row_ids.tolist()], dtype=np.int64), fold_of[:n_cols].copy(), k


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


@dataclass
class _PairData:
    rows: torch.Tensor
    cols: torch.Tensor
    cos: np.ndarray
    labels: np.ndarray  # standardised, NaN → 0
    mask: np.ndarray  # labelled
    self_cols: np.ndarray | None
    self_mask: np.ndarray


def _build_two_tower(data: _PairData, settings: FitSettings, mask: np.ndarray, seed: int) -> TwoTowerNetwork:
    alpha, beta, delta = calibrate_prior(data.cos, data.labels, mask, data.self_mask)
    network = TwoTowerNetwork(data.rows.shape[1], settings.hidden, settings.rank)
    network.initialise(torch.Generator().manual_seed(seed), alpha, beta, delta)
    return network


def _batched_block(params: dict[str, torch.Tensor], rows: torch.Tensor, cols: torch.Tensor, cos: torch.Tensor,
                   self_index: tuple[torch.Tensor, torch.Tensor] | None, rank: int) -> torch.Tensor:
    """(B, R, C) standardised predictions of B stacked two-tower networks (as :meth:`TwoTowerNetwork.standardised_block`)."""
    def tower(prefix: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(torch.einsum("nd,bhd->bnh", x, params[prefix + "hidden.weight"]) + params[prefix + "hidden.bias"][:, None, :])
        out = torch.einsum("bnh,bkh->bnk", hidden, params[prefix + "out.weight"]) + params[prefix + "out.bias"][:, None, :]
        offset = torch.einsum("bnh,bh->bn", hidden, params[prefix + "offset.weight"][:, 0, :]) + params[prefix + "offset.bias"]
        return out, offset

    f, r = tower("row_tower.", rows)
    g, c = tower("col_tower.", cols)
    out = (params["alpha"][:, None, None] * cos + torch.bmm(f, g.transpose(1, 2)) / math.sqrt(rank)
           + r[:, :, None] + c[:, None, :] + params["beta"][:, None, None])
    if self_index is not None:
        own_rows, own_cols = self_index
        term = params["self_bias"][:, None] + torch.einsum("nd,bd->bn", rows[own_rows], params["self_weight"])
        batch = torch.arange(out.shape[0])[:, None]
        out = out.index_put((batch, own_rows[None, :], own_cols[None, :]), term, accumulate=True)
    return out


def _train_many(networks: list[TwoTowerNetwork], data: _PairData, masks: list[np.ndarray], learning_rates: list[float],
                weight_decays: list[float], steps: int, on_eval: Callable[[int, np.ndarray], None] | None, eval_every: int,
                tick: Callable[[], None] | None = None) -> None:
    """Train B networks at once, each on its own mask with its own AdamW learning rate and weight decay.

    The B networks' parameters are stacked and trained jointly (their losses add up; no parameter is
    shared, so each gets exactly its own gradient), full batch. ``on_eval(step, (B, R, C) standardised
    predictions)`` every ``eval_every`` steps. AdamW as in torch (β = 0.9, 0.999, ε = 1e-8, decoupled
    weight decay, bias correction). The trained parameters are written back into ``networks``.
    """
    names = [name for name, _ in networks[0].named_parameters()]
    params = {name: torch.stack([dict(n.named_parameters())[name].detach() for n in networks]).clone().requires_grad_(True) for name in names}
    count = len(networks)
    target = torch.from_numpy(data.labels.astype(np.float32))
    weight = torch.from_numpy(np.stack(masks).astype(np.float32))
    per_model = weight.sum(dim=(1, 2)).clamp(min=1.0)
    cos = torch.from_numpy(data.cos.astype(np.float32))
    self_index = None
    if data.self_cols is not None and (data.self_cols >= 0).any():
        own = np.flatnonzero(data.self_cols >= 0)
        self_index = (torch.from_numpy(own), torch.from_numpy(data.self_cols[own]))
    lr = torch.tensor(learning_rates, dtype=torch.float32)
    decay = 1.0 - lr * torch.tensor(weight_decays, dtype=torch.float32)
    first = {name: torch.zeros_like(p) for name, p in params.items()}
    second = {name: torch.zeros_like(p) for name, p in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for step in range(steps + 1):
        prediction = _batched_block(params, data.rows, data.cols, cos, self_index, networks[0].rank)
        if on_eval is not None and step % eval_every == 0:
            on_eval(step, prediction.detach().numpy())
            if tick is not None:
                tick()
        if step == steps:
            break
        loss = ((((prediction - target) ** 2) * weight).sum(dim=(1, 2)) / per_model).sum()
        for p in params.values():
            p.grad = None
        loss.backward()
        with torch.no_grad():
            t = step + 1
            correction1, correction2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
            for name, p in params.items():
                if p.grad is None:  # not in the graph (the self-pair term without self-pairs): untouched, as torch's AdamW does
                    continue
                shape = (count,) + (1,) * (p.dim() - 1)
                p.mul_(decay.view(shape))
                first[name].lerp_(p.grad, 1.0 - beta1)
                second[name].mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
                denominator = (second[name] / correction2).sqrt_().add_(eps)
                p.sub_((lr / correction1).view(shape) * first[name] / denominator)
    with torch.no_grad():
        for b, network in enumerate(networks):
            for name, p in network.named_parameters():
                p.copy_(params[name][b])
            network.eval()


def selection_criterion(true: np.ndarray, predicted: np.ndarray, budget: float, objective: str, seed: int) -> dict[str, float]:
    """Cold-validation Spearman, f_gain (on the validation block) and MSE; combined = mean of the first two."""
    rho = spearman(true, predicted)
    spec = ObjectiveSpec(objective, budget if objective == "topk" else max(1, int(round(budget * true.shape[-1]))))
    if true.ndim == 1:  # pointwise scores: a one-row matrix
        true, predicted = true[None, :], predicted[None, :]
    gain = f_gain(true, predicted, spec, seed=seed)["f_gain"]
    parts = [v for v in (rho, max(-1.0, min(1.0, gain)) if not math.isnan(gain) else float("nan")) if not math.isnan(v)]
    return {"spearman": rho, "f_gain": gain, "mse": float(np.mean((true - predicted) ** 2)),
            "criterion": float(np.mean(parts)) if parts else float("nan")}


def _mean_criteria(per_fold: list[dict[str, float]]) -> dict[str, float]:
    keys = per_fold[0].keys() if per_fold else ()
    return {k: float(np.nanmean([p[k] for p in per_fold])) if any(not math.isnan(p[k]) for p in per_fold) else float("nan") for k in keys}


def _choose(per_fold: dict[str, list[dict[str, float]]], order: list[str], fallback: bool) -> str:
    """The candidate to ship: ``order[0]`` is the no-learning fallback, the others must beat it.

    A candidate beats the fallback when its criterion is higher on **every** fold and higher on
    average by more than one standard error of the per-fold differences (better consistently, not by
    fold noise); of those, the best on average is shipped. Without ``fallback``, the last of
    ``order`` (the network).
    """
    if not fallback:
        return order[-1]
    base = np.array([p["criterion"] for p in per_fold[order[0]]], dtype=np.float64)
    best, best_value = order[0], -np.inf
    for name in order[1:]:
        values = np.array([p["criterion"] for p in per_fold[name]], dtype=np.float64)
        diff = values - base
        if diff.size < MIN_FOLDS or not np.all(np.isfinite(diff)) or not np.all(diff > 1e-9):
            continue
        se = float(diff.std(ddof=1) / math.sqrt(diff.size))
        if diff.mean() > se and float(values.mean()) > best_value + 1e-9:
            best, best_value = name, float(values.mean())
    return best


def fit_pairwise(row_embeddings: np.ndarray, col_embeddings: np.ndarray, labels: np.ndarray, settings: FitSettings, *,
                 self_cols: np.ndarray | None = None, objective: str = "fl", progress: bool = False) -> tuple[TwoTowerNetwork, FitReport]:
    """Train the default pairwise network on a labelled block (NaN = not labelled) and choose what to ship.

    Args:
        row_embeddings: (R, d) L2-normalised embeddings of the block's rows (targets).
        col_embeddings: (C, d) of its columns (candidates).
        labels: (R, C) influence values; NaN entries are not labelled.
        settings: grid, steps, folds, seed.
        self_cols: per row, the column of the same record (−1: none) — pool records that are both.
        objective: ``fl`` or ``topk``: the selection used by the validation criterion.
        progress: a progress bar over the trainings (folds × grid, then the final one).

    Returns:
        The network to predict with (label units) and the report of what was chosen.
    """
    start = time.perf_counter()
    rows = torch.from_numpy(np.ascontiguousarray(row_embeddings, dtype=np.float32))
    cols = torch.from_numpy(np.ascontiguousarray(col_embeddings, dtype=np.float32))
    raw = np.asarray(labels, dtype=np.float64)
    if raw.shape != (rows.shape[0], cols.shape[0]):
        raise ValueError(f"labels must have shape {(rows.shape[0], cols.shape[0])}, got {raw.shape}")
    mask = np.isfinite(raw)
    n_labelled = int(mask.sum())
    mean = float(raw[mask].mean()) if n_labelled else 0.0
    std = float(raw[mask].std()) if n_labelled else 1.0
    std = std if std > 1e-12 else 1.0
    standardised = np.where(mask, (raw - mean) / std, 0.0)
    self_mask = np.zeros(raw.shape, dtype=bool)
    if self_cols is not None:
        self_cols = np.asarray(self_cols, dtype=np.int64)
        has = np.flatnonzero(self_cols >= 0)
        self_mask[has, self_cols[has]] = True
    data = _PairData(rows, cols, (rows @ cols.T).numpy().astype(np.float64), standardised, mask, self_cols, self_mask)
    n_records = len(_record_ids(raw.shape[0], raw.shape[1], self_cols)[1])
    folds = max(1, min(settings.folds, n_records // MIN_RECORDS_PER_FOLD))
    row_fold, col_fold, k = record_folds(raw.shape[0], raw.shape[1], self_cols, folds, settings.seed)
    grid = [(lr, wd) for lr in settings.learning_rates for wd in settings.weight_decays]
    evals = settings.max_steps // settings.eval_every + 1
    curves = np.full((len(grid), k, evals), np.nan)
    fold_predictions: dict[tuple[int, int], list[np.ndarray]] = {}
    fold_masks, prior_predictions = [], []
    jobs: list[tuple[int, int]] = []  # (grid point, fold)
    for fold in range(k):
        train = mask & (row_fold != fold)[:, None] & (col_fold != fold)[None, :]
        val = mask & (row_fold == fold)[:, None] & (col_fold == fold)[None, :]
        if train.sum() < 2 or val.sum() < 2:
            continue
        fold_masks.append((fold, train, val))
        jobs += [(g, fold) for g in range(len(grid))]
    bar = tqdm(total=settings.max_steps // settings.eval_every + 2, desc="influence network", unit="eval", disable=not progress, leave=False)
    with one_torch_thread(), bar:
        train_of = {fold: train for fold, train, _ in fold_masks}
        networks = [_build_two_tower(data, settings, train_of[fold], settings.seed + fold) for _, fold in jobs]
        self_t = None if self_cols is None else torch.from_numpy(self_cols)
        cos_t = torch.from_numpy(data.cos.astype(np.float32))
        for network, (g, _) in zip(networks, jobs):
            if g == 0:
                prior_predictions.append(network.standardised_block(rows, cols, self_t, cos=cos_t).detach().numpy())
        val_of = {fold: val for fold, _, val in fold_masks}

        def record(step: int, predictions: np.ndarray) -> None:
            for (g, fold), prediction in zip(jobs, predictions):
                val = val_of[fold]
                curves[g, fold, step // settings.eval_every] = float(np.mean((prediction[val] - standardised[val]) ** 2))
                fold_predictions.setdefault((g, fold), []).append(prediction[val].copy())
            bar.set_postfix(val_mse=f"{np.nanmin(curves):.3f}")

        if jobs:
            _train_many(networks, data, [train_of[fold] for _, fold in jobs],
                        [grid[g][0] for g, _ in jobs], [grid[g][1] for g, _ in jobs], settings.max_steps, record,
                        settings.eval_every, tick=lambda: bar.update(1))
        report = FitReport("two-tower", "prior", n_labelled, 0.0, folds=len(fold_masks))
        alpha, beta, delta = calibrate_prior(data.cos, standardised, mask, self_mask)
        report.prior = {"alpha": alpha * std, "beta": beta * std + mean, "self_delta": delta * std}
        if len(fold_masks) < MIN_FOLDS:
            report.note = (f"too few labelled records ({n_records}) to validate on held-out records "
                           f"(at least {MIN_FOLDS * MIN_RECORDS_PER_FOLD}): the calibrated prior is used")
            network = _build_two_tower(data, settings, mask, settings.seed)
        else:
            valid = [fold for fold, _, _ in fold_masks]
            mean_curves = curves[:, valid, :].mean(axis=1)  # (grid, evals)
            g, e = (int(i) for i in np.unravel_index(int(np.nanargmin(mean_curves)), mean_curves.shape))
            report.learning_rate, report.weight_decay = grid[g]
            report.steps = int(e) * settings.eval_every
            report.validation_curve = [float(v) for v in mean_curves[g]]
            candidates: dict[str, list[dict[str, float]]] = {"prior": [], "blend": [], "network": []}
            for (fold, _train, val), prior in zip(fold_masks, prior_predictions):
                val_rows, val_cols = np.flatnonzero(val.any(axis=1)), np.flatnonzero(val.any(axis=0))
                block = np.ix_(val_rows, val_cols)
                true = np.where(val[block], standardised[block], np.nan)
                network_values = np.full(val.shape, np.nan)
                network_values[val] = fold_predictions[(g, fold)][e]
                options = {"prior": prior[block], "network": network_values[block]}
                options["blend"] = 0.5 * (options["prior"] + options["network"])
                filled = np.where(np.isfinite(true), true, np.nanmean(true))
                for name, values in options.items():
                    candidates[name].append(selection_criterion(filled, np.where(np.isfinite(true), values, np.nanmean(values)),
                                                                settings.validation_budget, objective, settings.seed))
            report.candidates = {name: _mean_criteria(values) for name, values in candidates.items()}
            report.chosen = _choose(candidates, ["prior", "blend", "network"], settings.fallback)
            network = _build_two_tower(data, settings, mask, settings.seed)
            if report.chosen != "prior":
                _train_many([network], data, [mask], [report.learning_rate], [report.weight_decay], report.steps, None, settings.eval_every)
                if report.chosen == "blend":
                    prior_network = _build_two_tower(data, settings, mask, settings.seed)
                    _blend_into(network, prior_network, 0.5)
        bar.update(1)
    network.set_label_scale(mean, std)
    report.seconds = time.perf_counter() - start
    return network.eval(), report


def _blend_into(network: TwoTowerNetwork, prior: TwoTowerNetwork, weight: float) -> None:
    """Make ``network`` predict ``weight·network + (1 − weight)·prior`` (prior: learned terms at zero)."""
    network.scale_learned_part(weight)
    with torch.no_grad():
        for name in ("alpha", "beta", "self_bias"):
            mine, theirs = getattr(network, name), getattr(prior, name)
            mine.mul_(weight).add_((1.0 - weight) * theirs)
