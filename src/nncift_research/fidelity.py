"""How well the InfluenceNetwork reproduces an influence function, judged by what selection loses.

The full influence matrix is computed once (resumable, in the run folder) and scaled to [0, 1]
(the function's fixed range, else the global min–max, as the reference does). For each fraction u
and seed, the sampled block Q1 is labelled and every predictor fills the rest (Q1 keeps its exact
values, as ``nncift select`` does):

- the network of each architecture asked for (the default two-tower, the paper's MLP, …);
- ``cosine``: no learning, the embeddings' cosine calibrated by least squares on Q1 (with the mean
  self-pair offset); rank metrics do not depend on the calibration;
- ``mean``: the training labels' mean everywhere.

**Selection table** (what matters): Spearman's ρ on cold pairs (neither the target nor the
candidate labelled), Q4 MSE and its ratio to the mean's, and **f_gain** = (f(S_pred) − f(S_rand)) /
(f(S_true) − f(S_rand)) with f the run's objective evaluated on the true matrix (facility location
of the pool on itself; top-k for pointwise functions), with the subset overlap |S_pred ∩ S_true| / k.
A network that does not beat ``cosine`` adds nothing, and the table shows it.

**Quadrant table** (the paper's Figure 2): MSE per quadrant Q1 = seen × seen (training), Q2 = seen
rows × unseen cols, Q3 = unseen rows × seen cols, Q4 = unseen × unseen, for the network and the
baselines (mean, cosine, a uniform random value from the training range), Spearman and the top-10%
overlap. Pointwise functions get the same on seen / unseen examples (top 20%).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nncift.data.records import Record
from nncift.execution.executor import Executor, executor_for
from nncift.influence import influence_class, network_reading
from nncift.models.embeddings import embed_records
from nncift.network.fitting import calibrate_prior
from nncift.network.folds import validation_hold_out
from nncift.network.paper import predict_pairwise, predict_pointwise
from nncift.network.training import train_network, train_network_pointwise
from nncift.run.layout import block_self_columns, self_columns
from nncift.run.ledger import CostLedger
from nncift.run.store import RunStore, plan_blocks
from nncift.selection.subset_quality import ObjectiveSpec, choose_subset, cold_mask, f_gain, spearman
from nncift.settings.fields import environment_info, settings_dict
from nncift.settings.stages import NetworkSettings
from nncift.steps.select import influence_spec, label_scaling, load_inputs, sample_indices
from nncift_research.fidelity_settings import FidelitySettings

QUADRANTS = ("Q1", "Q2", "Q3", "Q4")
_MAX_RANK_PAIRS = 2_000_000


@dataclass
class FidelityResult:
    """Rows of the quadrant table (one per fraction, seed and quadrant), of the selection table (one per
    fraction, seed and predictor), and the run folder."""

    rows: list[dict[str, Any]]
    run_dir: Path
    selection_rows: list[dict[str, Any]] | None = None


def quadrant_masks(n_rows: int, n_cols: int, seen_rows: np.ndarray, seen_cols: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean (n_rows × n_cols) masks of Q1..Q4 for the given seen rows and columns."""
    row_seen = np.zeros(n_rows, dtype=bool)
    row_seen[seen_rows] = True
    col_seen = np.zeros(n_cols, dtype=bool)
    col_seen[seen_cols] = True
    return {
        "Q1": np.outer(row_seen, col_seen), "Q2": np.outer(row_seen, ~col_seen),
        "Q3": np.outer(~row_seen, col_seen), "Q4": np.outer(~row_seen, ~col_seen),
    }


def top_overlap(true: np.ndarray, predicted: np.ndarray, share: float) -> float:
    """Share of the true top ``share`` entries that are also in the predicted top ``share``."""
    k = max(1, int(round(share * true.size)))
    top_true = np.argpartition(-true, k - 1)[:k]
    top_predicted = np.argpartition(-predicted, k - 1)[:k]
    return len(np.intersect1d(top_true, top_predicted)) / k


def evaluate_split(true: np.ndarray, predicted: np.ndarray, train_labels: np.ndarray, rng: np.random.Generator, top_share: float,
                   cosine: np.ndarray | None = None) -> dict[str, float]:
    """MSE of the network and of the baselines (mean, random, and ``cosine`` when given) on one split, plus Spearman and top overlap."""
    key = f"top{int(top_share * 100)}_overlap"
    if true.size == 0:
        return {"n": 0, "mse_network": float("nan"), "mse_mean": float("nan"), "mse_random": float("nan"),
                "mse_cosine": float("nan"), "spearman": float("nan"), key: float("nan")}
    mean = float(np.mean(train_labels))
    random_guess = rng.uniform(float(np.min(train_labels)), float(np.max(train_labels)), size=true.shape)
    return {
        "n": int(true.size),
        "mse_network": float(np.mean((predicted - true) ** 2)),
        "mse_mean": float(np.mean((mean - true) ** 2)),
        "mse_random": float(np.mean((random_guess - true) ** 2)),
        "mse_cosine": float(np.mean((cosine - true) ** 2)) if cosine is not None else float("nan"),
        "spearman": spearman(true, predicted, limit=_MAX_RANK_PAIRS, seed=int(rng.integers(1 << 31))),
        key: top_overlap(true, predicted, top_share),
    }


def calibrated_cosine(row_embeddings: np.ndarray, col_embeddings: np.ndarray, seen_rows: np.ndarray, seen_cols: np.ndarray,
                      labels: np.ndarray, self_cols: np.ndarray | None) -> np.ndarray:
    """The no-learning predictor: α·cos + β (+ δ on self-pairs), least-squares fitted on the labelled block."""
    cos = np.asarray(row_embeddings, dtype=np.float64) @ np.asarray(col_embeddings, dtype=np.float64).T
    block_self = np.zeros(labels.shape, dtype=bool)
    full_self = np.zeros(cos.shape, dtype=bool)
    if self_cols is not None:
        has = np.flatnonzero(np.asarray(self_cols) >= 0)
        full_self[has, np.asarray(self_cols)[has]] = True
        block_self = full_self[np.ix_(seen_rows, seen_cols)]
    alpha, beta, delta = calibrate_prior(cos[np.ix_(seen_rows, seen_cols)], labels, np.isfinite(labels), block_self)
    return alpha * cos + beta + delta * full_self


def compare_pairwise(true: np.ndarray, row_embeddings: np.ndarray, col_embeddings: np.ndarray, seen_rows: np.ndarray,
                     seen_cols: np.ndarray, objective: ObjectiveSpec, networks: Sequence[NetworkSettings], *,
                     self_cols: np.ndarray | None = None, fraction: float = float("nan"), seed: int = 0,
                     true_subset: np.ndarray | None = None, labelled: np.ndarray | None = None
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, np.ndarray]]:
    """Train each network on ``true[seen_rows × seen_cols]`` and compare it with the cosine and mean predictors.

    Returns (quadrant rows of the first network, selection rows of every predictor, the predicted
    matrices by predictor name, exact where labelled). ``self_cols``: per row, the column of the same
    record. ``labelled``: (len(seen_rows), len(seen_cols)) mask of the pairs of the block that are
    labelled (default all: the square block design).
    """
    labels = true[np.ix_(seen_rows, seen_cols)].astype(np.float64)
    if labelled is not None:
        labels = np.where(labelled, labels, np.nan)
    block_self = None if self_cols is None else block_self_columns(self_cols, seen_rows, seen_cols)
    q1 = np.ix_(seen_rows, seen_cols)
    predictions: dict[str, np.ndarray] = {}
    timings: dict[str, tuple[float, float, str]] = {}
    criterion = "topk" if objective.name == "topk" else "fl"
    for settings in networks:
        name = settings.architecture
        network, report = train_network(row_embeddings[seen_rows], col_embeddings[seen_cols], labels.astype(np.float32), settings,
                                        self_cols=block_self, objective=criterion,
                                        held_out=validation_hold_out(len(seen_rows), true.shape[0], criterion))  # as `select` holds out
        start = time.perf_counter()
        predicted = predict_pairwise(network, row_embeddings, col_embeddings, self_cols=self_cols).astype(np.float64)
        seconds = time.perf_counter() - start
        timings[name] = (float(report["seconds"]), predicted.size / max(seconds, 1e-9), str(report.get("chosen", "network")))
        predictions[name] = predicted
    predictions["cosine"] = calibrated_cosine(row_embeddings, col_embeddings, seen_rows, seen_cols, labels, self_cols)
    predictions["mean"] = np.full(true.shape, float(np.nanmean(labels)))
    known = np.isfinite(labels)
    for predicted in predictions.values():
        predicted[q1] = np.where(known, labels, predicted[q1])  # exact where known, as nncift select keeps them
    rng = np.random.default_rng(seed)
    n_rows, n_cols = true.shape
    masks = quadrant_masks(n_rows, n_cols, seen_rows, seen_cols)
    first = networks[0].architecture
    quadrant_rows = [{"fraction": fraction, "seed": seed, "split": split, "n_seen_rows": len(seen_rows), "n_seen_cols": len(seen_cols),
                      **evaluate_split(true[mask], predictions[first][mask], labels[known], rng, 0.10, predictions["cosine"][mask])}
                     for split, mask in masks.items()]
    cold = cold_mask(n_rows, n_cols, seen_rows, seen_cols, self_cols)
    mse_mean = float(np.mean((predictions["mean"][masks["Q4"]] - true[masks["Q4"]]) ** 2)) if masks["Q4"].any() else float("nan")
    best = true_subset
    selection_rows = []
    for name, predicted in predictions.items():
        quality = f_gain(true, predicted, objective, seed=seed, true_subset=best)
        q4 = float(np.mean((predicted[masks["Q4"]] - true[masks["Q4"]]) ** 2)) if masks["Q4"].any() else float("nan")
        train_seconds, pairs_per_second, chosen = timings.get(name, (0.0, float("nan"), "-"))
        selection_rows.append({
            "fraction": fraction, "seed": seed, "predictor": name, "chosen": chosen, "n_labelled": int(known.sum()),
            "cold_spearman": spearman(true[cold], predicted[cold], seed=seed) if name != "mean" else float("nan"),
            "q4_mse": q4, "q4_mse_vs_mean": q4 / mse_mean if mse_mean > 0 else float("nan"),
            "f_gain": quality["f_gain"], "overlap": quality["overlap"], "random_overlap": quality["random_overlap"],
            "train_seconds": train_seconds, "pairs_per_second": pairs_per_second,
        })
    return quadrant_rows, selection_rows, predictions


def compare_pointwise(true: np.ndarray, embeddings: np.ndarray, seen: np.ndarray, budget: float | int,
                      networks: Sequence[NetworkSettings], *, fraction: float = float("nan"), seed: int = 0
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, np.ndarray]]:
    """Pointwise counterpart of :func:`compare_pairwise` (top-k of the scores; NaN = a failed score)."""
    ok = np.isfinite(true)
    seen_ok = seen[ok[seen]]
    predictions: dict[str, np.ndarray] = {}
    timings: dict[str, tuple[float, str]] = {}
    labels = np.full(len(seen), np.nan)
    labels[ok[seen]] = true[seen_ok]
    for settings in networks:
        network, report = train_network_pointwise(embeddings[seen], labels, settings)
        predictions[settings.architecture] = predict_pointwise(network, embeddings).astype(np.float64)
        timings[settings.architecture] = (float(report["seconds"]), str(report.get("chosen", "network")))
    predictions["mean"] = np.full(len(true), float(np.mean(true[seen_ok])))
    for predicted in predictions.values():
        predicted[seen_ok] = true[seen_ok]
    rng = np.random.default_rng(seed)
    seen_mask = np.zeros(len(true), dtype=bool)
    seen_mask[seen] = True
    first = networks[0].architecture
    quadrant_rows = [{"fraction": fraction, "seed": seed, "split": split, "n_seen": len(seen),
                      **evaluate_split(true[mask], predictions[first][mask], true[seen_ok], rng, 0.20)}
                     for split, mask in (("seen", seen_mask & ok), ("unseen", ~seen_mask & ok))]
    unseen = ~seen_mask & ok
    truth = np.where(ok, true, np.nanmin(true))[None, :]
    spec = ObjectiveSpec("topk", budget)
    mse_mean = float(np.mean((predictions["mean"][unseen] - true[unseen]) ** 2))
    selection_rows = []
    for name, predicted in predictions.items():
        quality = f_gain(truth, np.where(ok, predicted, -1e30)[None, :], spec, seed=seed)
        mse = float(np.mean((predicted[unseen] - true[unseen]) ** 2))
        train_seconds, chosen = timings.get(name, (0.0, "-"))
        selection_rows.append({
            "fraction": fraction, "seed": seed, "predictor": name, "chosen": chosen, "n_labelled": len(seen_ok),
            "cold_spearman": spearman(true[unseen], predicted[unseen], seed=seed) if name != "mean" else float("nan"),
            "q4_mse": mse, "q4_mse_vs_mean": mse / mse_mean if mse_mean > 0 else float("nan"),
            "f_gain": quality["f_gain"], "overlap": quality["overlap"], "random_overlap": quality["random_overlap"],
            "train_seconds": train_seconds, "pairs_per_second": float("nan"),
        })
    return quadrant_rows, selection_rows, predictions


def run_fidelity(settings: FidelitySettings, out: str | Path, *, pool: Sequence[Record] | None = None,
                 influence_options: dict[str, Any] | None = None) -> FidelityResult:
    """Compute the full matrix (or all scores) once, then train and evaluate at each fraction and seed."""
    if pool is None:
        pool, _, _ = load_inputs(settings)
    with executor_for(settings.executor) as executor:
        return _run_fidelity(settings, out, list(pool), dict(influence_options or {}), executor)


def _network_list(settings: FidelitySettings) -> list[NetworkSettings]:
    base = settings.network
    return [replace(base, architecture=name) for name in (settings.architectures or (settings.network.architecture,))]


def _run_fidelity(settings: FidelitySettings, out: str | Path, pool: list[Record], options: dict[str, Any], executor: Executor) -> FidelityResult:
    pool = pool[: settings.limit or None]
    store = RunStore(out, {**settings_dict(settings), "influence_options": options, "command": "fidelity"})
    function_class = influence_class(settings.influence)
    spec = influence_spec(settings, options)
    ledger = CostLedger()
    progress = not settings.quiet
    n, size = len(pool), settings.executor.block_size
    full = store.matrix("full", np.arange(1 if not function_class.pairwise else n), np.arange(n))
    with ledger.stage("full influence"):
        if function_class.pairwise:
            executor.run_pairwise(spec, pool, pool, full, plan_blocks(n, n, size, size), store.folder, progress=progress)
        else:
            executor.run_pointwise(spec, pool, full, plan_blocks(1, n, 1, size), store.folder, progress=progress)
    values = np.asarray(full.array, dtype=np.float64)
    low, high = label_scaling(function_class, values)  # the same rule as select: the fixed range, else min–max
    scaled = (values - low) / (high - low)
    with ledger.stage("embeddings"):
        embeddings = embed_records(pool, model=settings.embedder, device=settings.device, progress=progress,
                                   **network_reading(settings.influence, settings.network))
    rows: list[dict[str, Any]] = []
    selection_rows: list[dict[str, Any]] = []
    predictions: dict[float, np.ndarray] = {}
    networks = _network_list(settings)
    objective = ObjectiveSpec("fl" if function_class.pairwise else "topk", settings.selection.budget)
    true_subset = None
    for fraction in settings.fractions:
        for seed in settings.seeds or (settings.seed,):
            seen = sample_indices(n, fraction, settings.sampling.min_sampled, np.random.default_rng(seed))
            nets = [replace(net, seed=seed) for net in networks]
            with ledger.stage(f"networks u={fraction}"):
                if function_class.pairwise:
                    if true_subset is None:
                        true_subset = choose_subset(np.where(np.isfinite(scaled), scaled, 0.0), objective).indices
                    quadrant, selected, predicted = compare_pairwise(np.where(np.isfinite(scaled), scaled, 0.0), embeddings, embeddings,
                                                                     seen, seen, objective, nets, self_cols=self_columns(n, n),
                                                                     fraction=fraction, seed=seed, true_subset=true_subset)
                else:
                    quadrant, selected, predicted = compare_pointwise(scaled[0], embeddings, seen, settings.selection.budget, nets,
                                                                      fraction=fraction, seed=seed)
            rows += quadrant
            selection_rows += selected
            predictions.setdefault(fraction, predicted[networks[0].architecture])
    store.write_json("fidelity.json", {"rows": rows, "selection": selection_rows, "label_scaling": {"low": low, "high": high},
                                       "settings": settings_dict(settings), "environment": environment_info(),
                                       "cost": ledger.as_dict(), "pool": n})
    (store.path("fidelity.md")).write_text(format_selection_table(selection_rows) + "\n" + format_table(rows), encoding="utf-8")
    plot_fidelity([r for r in rows if r["seed"] == (settings.seeds or (settings.seed,))[0]], store.path("fidelity.png"),
                  title=f"{settings.influence}: InfluenceNetwork fidelity (n={n})")
    if function_class.pairwise and predictions:
        plot_scatter(scaled, predictions, store.path("scatter.png"), rng=np.random.default_rng(settings.seed))
    return FidelityResult(rows, store.folder, selection_rows)


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1e4 else f"{value:,.3g}"
    return str(value)


def format_selection_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the selection rows: per fraction, seed and predictor."""
    if not rows:
        return ""
    lines = ["| u | seed | predictor | shipped | labels | cold Spearman | Q4 MSE / mean's | f_gain | overlap (random) | train s | pairs/s |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['fraction']} | {row['seed']} | {row['predictor']} | {row['chosen']} | {row['n_labelled']} | "
                     f"{_number(row['cold_spearman'])} | {_number(row['q4_mse_vs_mean'])} | {_number(row['f_gain'])} | "
                     f"{_number(row['overlap'], 2)} ({_number(row['random_overlap'], 2)}) | {_number(row['train_seconds'], 1)} | "
                     f"{_number(row['pairs_per_second'], 0)} |")
    return "\n".join(lines) + "\n"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the fidelity rows."""
    if not rows:
        return ""
    top_key = next(k for k in rows[0] if k.startswith("top"))
    lines = [f"| u | seed | split | pairs | MSE network | MSE mean baseline | MSE cosine baseline | MSE random baseline | Spearman "
             f"| {top_key.replace('_', ' ')} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['fraction']} | {row.get('seed', '')} | {row['split']} | {row['n']} | {row['mse_network']:.4f} | {row['mse_mean']:.4f} | "
                     f"{_number(row.get('mse_cosine', float('nan')), 4)} | {row['mse_random']:.4f} | {_number(row['spearman'])} | {row[top_key]:.3f} |")
    return "\n".join(lines) + "\n"


def plot_fidelity(rows: list[dict[str, Any]], path: Path, *, title: str) -> None:
    """MSE per split versus u for the network and the baselines (one panel per split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    splits = list(dict.fromkeys(row["split"] for row in rows))
    figure, axes = plt.subplots(1, len(splits), figsize=(3.2 * len(splits), 3.0), sharey=True, squeeze=False)
    for axis, split in zip(axes[0], splits):
        subset = [row for row in rows if row["split"] == split]
        fractions = [row["fraction"] for row in subset]
        for key, label, style in (("mse_network", "InfluenceNetwork", "o-"), ("mse_mean", "mean baseline", "s--"),
                                  ("mse_cosine", "cosine baseline", "d-."), ("mse_random", "random baseline", "^:")):
            if all(key in row for row in subset):
                axis.plot(fractions, [row[key] for row in subset], style, label=label)
        axis.set_title(split)
        axis.set_xlabel("sampled fraction u")
        axis.set_xscale("log")
        axis.set_yscale("log")
        ticks = sorted(set(fractions))  # label the measured fractions only (log-axis minor labels overlap)
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axis.set_xticks(ticks, [f"{u:g}" for u in ticks], fontsize=7)
    axes[0][0].set_ylabel("MSE (labels scaled to [0, 1]), log scale")
    axes[0][-1].legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_scatter(scaled: np.ndarray, predictions: dict[float, np.ndarray], path: Path, *, rng: np.random.Generator, points: int = 4000) -> None:
    """Predicted versus true influence for a sample of pairs, one panel per fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(predictions), figsize=(3.0 * len(predictions), 3.0), squeeze=False)
    flat = scaled.ravel()
    pick = rng.choice(flat.size, min(points, flat.size), replace=False)
    for axis, (fraction, predicted) in zip(axes[0], predictions.items()):
        axis.scatter(flat[pick], predicted.ravel()[pick], s=2, alpha=0.4)
        axis.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        axis.set_title(f"u = {fraction}")
        axis.set_xlabel("true (scaled)")
    axes[0][0].set_ylabel("predicted")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

