"""Training the pointwise InfluenceNetwork (SelectIT) with the same record-held-out validation.

The labelled records are split into seeded folds; for each fold a ridge regression (penalty from a
small grid) is fitted on the others and an MLP residual, started at zero, is trained from it by
full-batch AdamW for each learning rate × weight decay, validated every few steps. The grid point and
step count with the lowest mean validation MSE win. The candidates — the labels' mean (no learning),
the ridge start, the trained network and a half-way blend — are scored on the pooled out-of-fold
predictions of all records by the selection-aware criterion of :mod:`nncift.network.fitting` (Spearman and
top-k f_gain); a learned one replaces the mean only if its ρ exceeds 2/√(n − 1). The chosen
predictor is refitted on every labelled record.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch

from nncift.network.candidates import out_of_fold_points
from nncift.network.fitting import FitReport, FitSettings, one_torch_thread
from nncift.network.towers import PointwiseNetwork
from nncift.network.validation import selection_criterion

__all__ = ["fit_pointwise"]


def _ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, float]:
    """Ridge regression with an unpenalised intercept: (weights, bias)."""
    x_mean, y_mean = x.mean(axis=0), float(y.mean())
    xc = x - x_mean
    weights = np.linalg.solve(xc.T @ xc + penalty * np.eye(x.shape[1]), xc.T @ (y - y_mean))
    return weights, y_mean - float(x_mean @ weights)


def fit_pointwise(embeddings: np.ndarray, labels: np.ndarray, settings: FitSettings) -> tuple[PointwiseNetwork, FitReport]:
    """Train the default pointwise network (ridge start + MLP residual) with the same record-fold validation.

    Candidates: ``prior`` (the labels' mean: no learning), ``ridge`` (the linear start), ``network``
    and ``blend``; scored on held-out records by Spearman and top-k f_gain.
    """
    start = time.perf_counter()
    x_all = np.ascontiguousarray(embeddings, dtype=np.float64)
    raw = np.asarray(labels, dtype=np.float64).reshape(-1)
    if raw.shape[0] != x_all.shape[0]:
        raise ValueError(f"labels must have shape ({x_all.shape[0]},), got {np.shape(labels)}")
    ok = np.isfinite(raw)
    x, y_raw = x_all[ok], raw[ok]
    mean = float(y_raw.mean()) if y_raw.size else 0.0
    std = float(y_raw.std()) if y_raw.size else 1.0
    std = std if std > 1e-12 else 1.0
    y = (y_raw - mean) / std
    n = len(y)
    k = int(max(1, min(settings.network.folds, n)))
    report = FitReport("linear-residual", "prior", n, 0.0, folds=k if n >= 2 * k and k >= 2 else 0)
    if report.folds:
        with one_torch_thread():
            _validate_pointwise(x, y, k, settings, report)
    else:
        report.note = "too few labelled records to validate on held-out records: the labels' mean is used"
    network = _final_pointwise(x, y, x_all.shape[1], settings, report)
    network.set_label_scale(mean, std)
    report.seconds = time.perf_counter() - start
    return network.eval(), report


def _validate_pointwise(x: np.ndarray, y: np.ndarray, k: int, settings: FitSettings, report: FitReport) -> None:
    """Choose the ridge penalty, grid point and step count on ``k`` seeded record folds, then the candidate to ship from the
    pooled out-of-fold predictions (each fold's from the penalty, grid point and step chosen on the other folds); written
    into ``report``."""
    n = len(y)
    fold = np.empty(n, dtype=np.int64)
    fold[np.random.default_rng(settings.network.seed).permutation(n)] = np.arange(n) % k
    grid = [(lr, wd) for lr in settings.learning_rates for wd in settings.weight_decays]
    curves, snapshots = _pointwise_curves(x, y, fold, k, grid, settings)
    mean_curves = np.nanmean(curves, axis=2)
    # what the final fit uses: the best on every fold; what fold f is scored with: the best on the other folds
    (pg, e), per_fold = out_of_fold_points(curves.reshape(-1, k, curves.shape[-1]))
    per_fold = per_fold if settings.choices_out_of_fold else [(pg, e)] * k
    report.choices = "out of fold" if settings.choices_out_of_fold else "in sample"
    p, g = divmod(pg, len(grid))
    report.learning_rate, report.weight_decay = grid[g]
    report.steps = int(e) * settings.eval_every
    report.prior = {"ridge_penalty": RIDGE_PENALTIES[p]}
    report.validation_curve = [float(v) for v in mean_curves[p, g]]
    # out-of-fold predictions of every record, pooled: one ranking of all n records per candidate
    oof = {"ridge": np.empty(n), "network": np.empty(n)}
    for f, (fold_pg, fold_e) in enumerate(per_fold):
        shots = snapshots[divmod(fold_pg, len(grid)) + (f,)]
        oof["ridge"][fold == f], oof["network"][fold == f] = shots[0], shots[fold_e]
    oof["blend"] = 0.5 * (oof["ridge"] + oof["network"])
    # the mean ranks nothing: its subset is a random one (f_gain 0) and its ρ is 0
    report.candidates = {"prior": {"spearman": 0.0, "f_gain": 0.0, "mse": float(np.mean(y ** 2)), "criterion": 0.0}}
    report.candidates.update({name: selection_criterion(y, values, settings.validation_budget, "topk", settings.network.seed)
                              for name, values in oof.items()})
    report.chosen = _choose_over_mean(report.candidates, n, settings.network.fallback)


RIDGE_PENALTIES = (0.1, 1.0, 10.0)
"""Ridge penalties tried for the linear start."""


def _pointwise_curves(x: np.ndarray, y: np.ndarray, fold: np.ndarray, k: int, grid: list[tuple[float, float]],
                      settings: FitSettings) -> tuple[np.ndarray, dict[tuple[int, int, int], list[np.ndarray]]]:
    """Train from each fold's ridge start for every penalty × grid point; (validation MSE every ``eval_every`` steps, shape
    (penalty, grid, fold, evals); per (penalty, grid point, fold) the held-out records' predictions at each evaluation)."""
    curves = np.full((len(RIDGE_PENALTIES), len(grid), k, settings.network.max_steps // settings.eval_every + 1), np.nan)
    snapshots: dict[tuple[int, int, int], list[np.ndarray]] = {}
    x_t, y_t = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
    for f in range(k):
        train, val = fold != f, fold == f
        for p, penalty in enumerate(RIDGE_PENALTIES):
            weights, bias = _ridge(x[train], y[train], penalty)
            for g, (lr, wd) in enumerate(grid):
                network = PointwiseNetwork(x.shape[1], settings.network.tower_hidden)
                network.initialise(torch.Generator().manual_seed(settings.network.seed + f), weights, bias)
                shots: list[np.ndarray] = []

                def record(step: int, prediction: np.ndarray, p: int = p, g: int = g, f: int = f, val: np.ndarray = val,
                           shots: list[np.ndarray] = shots) -> None:
                    curves[p, g, f, step // settings.eval_every] = float(np.mean((prediction[val] - y[val]) ** 2))
                    shots.append(prediction[val].copy())

                _train_pointwise(network, x_t, y_t, torch.from_numpy(train), lr, wd, settings.network.max_steps, record, settings.eval_every)
                snapshots[(p, g, f)] = shots
    return curves, snapshots


def _final_pointwise(x: np.ndarray, y: np.ndarray, dim: int, settings: FitSettings, report: FitReport) -> PointwiseNetwork:
    """The chosen predictor (standardised labels) fitted on every labelled record: the mean, the ridge start, the network or the blend."""
    network = PointwiseNetwork(dim, settings.network.tower_hidden)
    if report.chosen == "prior":
        network.initialise(torch.Generator().manual_seed(settings.network.seed), np.zeros(dim), 0.0)
        return network
    weights, bias = _ridge(x, y, report.prior["ridge_penalty"])
    network.initialise(torch.Generator().manual_seed(settings.network.seed), weights, bias)
    if report.chosen in ("network", "blend"):
        with one_torch_thread():
            assert report.learning_rate is not None and report.weight_decay is not None and report.steps is not None  # chosen on validation
            x_t, y_t = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.float32))
            _train_pointwise(network, x_t, y_t, torch.ones(len(y), dtype=torch.bool), report.learning_rate, report.weight_decay,
                             report.steps, None, settings.eval_every)
        if report.chosen == "blend":
            network.scale_learned_part(0.5)
    return network


def _choose_over_mean(candidates: dict[str, dict[str, float]], n: int, fallback: bool) -> str:
    """Pointwise: a learned candidate replaces the mean only if its out-of-fold ρ is significant.

    ρ must exceed 2/√(n − 1) (about the 5% level of ρ under no association) and the criterion must be
    positive; of those, the best criterion is shipped.
    """
    if not fallback:
        return "network"
    best, best_value = "prior", 0.0
    for name in ("ridge", "blend", "network"):
        values = candidates[name]
        if values["spearman"] > 2.0 / math.sqrt(max(n - 1, 1)) and values["criterion"] > best_value + 1e-9:
            best, best_value = name, values["criterion"]
    return best


def _train_pointwise(network: PointwiseNetwork, x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, lr: float, wd: float,
                     steps: int, on_eval: Callable[[int, np.ndarray], None] | None, eval_every: int) -> None:
    """Full-batch AdamW on the training records; ``on_eval(step, predictions of all records)``."""
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=wd)
    network.train()
    for step in range(steps + 1):
        prediction = network.standardised(x)
        if on_eval is not None and step % eval_every == 0:
            on_eval(step, prediction.detach().numpy())
        if step == steps:
            break
        loss = torch.mean((prediction[train] - y[train]) ** 2)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    network.eval()
