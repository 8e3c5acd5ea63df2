"""How well the InfluenceNetwork reproduces an influence function (the paper's Figure 2).

The full influence matrix is computed once (resumable, in the run folder) and scaled to [0, 1]
(the function's fixed range, else the global min–max, as the reference does). For each fraction u
the network is trained on the sampled block Q1 and evaluated per quadrant (METHODS.md §1):
Q1 = seen × seen (training), Q2 = seen rows × unseen cols, Q3 = unseen rows × seen cols,
Q4 = unseen × unseen (test), against two baselines: the training mean, and a uniform random value
from the training labels' range. On Q4 it also reports Spearman's ρ and the overlap of the top 10%.
Pointwise functions get the same on seen / unseen examples (top 20%).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.stats import spearmanr

from .config import FidelitySettings, environment_info, settings_dict
from .data import Record
from .embed import embed_records
from .executor import executor_for
from .influence import influence_class
from .ledger import CostLedger
from .network import predict_pairwise, predict_pointwise, train_pairwise, train_pointwise
from .pipeline import influence_spec, load_inputs, network_settings, sample_indices
from .store import RunStore, plan_blocks

QUADRANTS = ("Q1", "Q2", "Q3", "Q4")
_MAX_RANK_PAIRS = 2_000_000


@dataclass
class FidelityResult:
    """Rows of the fidelity table (one per fraction and quadrant) and the run folder."""

    rows: list[dict[str, Any]]
    run_dir: Path


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


def _subsample(values: np.ndarray, others: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    if values.size <= _MAX_RANK_PAIRS:
        return values, others
    pick = rng.choice(values.size, _MAX_RANK_PAIRS, replace=False)
    return values[pick], others[pick]


def evaluate_split(true: np.ndarray, predicted: np.ndarray, train_labels: np.ndarray, rng: np.random.Generator, top_share: float) -> dict[str, float]:
    """MSE of the network and of the two baselines on one split, plus Spearman and top overlap."""
    if true.size == 0:
        return {"n": 0, "mse_network": float("nan"), "mse_mean": float("nan"), "mse_random": float("nan"),
                "spearman": float("nan"), f"top{int(top_share * 100)}_overlap": float("nan")}
    mean = float(np.mean(train_labels))
    random_guess = rng.uniform(float(np.min(train_labels)), float(np.max(train_labels)), size=true.shape)
    true_rank, predicted_rank = _subsample(true, predicted, rng)
    rho = spearmanr(true_rank, predicted_rank).statistic if true.size > 2 else float("nan")
    return {
        "n": int(true.size),
        "mse_network": float(np.mean((predicted - true) ** 2)),
        "mse_mean": float(np.mean((mean - true) ** 2)),
        "mse_random": float(np.mean((random_guess - true) ** 2)),
        "spearman": float(rho),
        f"top{int(top_share * 100)}_overlap": top_overlap(true, predicted, top_share),
    }


def run_fidelity(settings: FidelitySettings, out: str | Path, *, pool: Sequence[Record] | None = None,
                 influence_options: dict[str, Any] | None = None) -> FidelityResult:
    """Compute the full matrix (or all scores) once, then train and evaluate at each fraction."""
    if pool is None:
        pool, _, _ = load_inputs(settings)
    with executor_for(settings) as executor:
        return _run_fidelity(settings, out, list(pool), dict(influence_options or {}), executor)


def _run_fidelity(settings: FidelitySettings, out: str | Path, pool: list[Record], options: dict[str, Any], executor) -> FidelityResult:
    pool = pool[: settings.limit or None]
    store = RunStore(out, {**settings_dict(settings), "influence_options": options, "command": "fidelity"})
    function_class = influence_class(settings.influence)
    spec = influence_spec(settings, options)
    ledger = CostLedger()
    progress = not settings.quiet
    n = len(pool)
    full = store.matrix("full", np.arange(1 if not function_class.pairwise else n), np.arange(n))
    with ledger.stage("full influence"):
        if function_class.pairwise:
            executor.run_pairwise(spec, pool, pool, full, plan_blocks(n, n, settings.block_size, settings.block_size), store.folder, progress=progress)
        else:
            executor.run_pointwise(spec, pool, full, plan_blocks(1, n, 1, settings.block_size), store.folder, progress=progress)
    values = np.asarray(full.array, dtype=np.float64)
    low, high = function_class.label_range or (float(np.nanmin(values)), float(np.nanmax(values)))
    scaled = (values - low) / ((high - low) or 1.0)
    with ledger.stage("embeddings"):
        embeddings = embed_records(pool, model=settings.embedder, device=settings.device, progress=progress)
    rows: list[dict[str, Any]] = []
    predictions: dict[float, np.ndarray] = {}
    for fraction in settings.fractions:
        rng = np.random.default_rng(settings.seed)
        seen = sample_indices(n, fraction, settings.min_sampled, rng)
        with ledger.stage(f"network u={fraction}"):
            if function_class.pairwise:
                rows += _pairwise_rows(scaled, embeddings, seen, fraction, settings, rng, predictions, progress)
            else:
                rows += _pointwise_rows(scaled[0], embeddings, seen, fraction, settings, rng, predictions, progress)
    store.write_json("fidelity.json", {"rows": rows, "label_scaling": {"low": low, "high": high},
                                       "settings": settings_dict(settings), "environment": environment_info(),
                                       "cost": ledger.as_dict(), "pool": n})
    (store.path("fidelity.md")).write_text(format_table(rows), encoding="utf-8")
    plot_fidelity(rows, store.path("fidelity.png"), title=f"{settings.influence}: InfluenceNetwork fidelity (n={n})")
    if function_class.pairwise and predictions:
        plot_scatter(scaled, predictions, store.path("scatter.png"), rng=np.random.default_rng(settings.seed))
    return FidelityResult(rows, store.folder)


def _pairwise_rows(scaled, embeddings, seen, fraction, settings, rng, predictions, progress):
    n = scaled.shape[0]
    labels = scaled[np.ix_(seen, seen)].astype(np.float32)
    network, _ = train_pairwise(embeddings[seen], embeddings[seen], labels, network_settings(settings), progress=progress)
    predicted = predict_pairwise(network, embeddings, embeddings)
    predictions[fraction] = predicted
    rows = []
    for name, mask in quadrant_masks(n, n, seen, seen).items():
        metrics = evaluate_split(scaled[mask], predicted[mask].astype(np.float64), labels.ravel(), rng, 0.10)
        rows.append({"fraction": fraction, "split": name, "n_seen": len(seen), **metrics})
    return rows


def _pointwise_rows(scaled, embeddings, seen, fraction, settings, rng, predictions, progress):
    ok = np.isfinite(scaled)
    seen_ok = seen[ok[seen]]
    network, _ = train_pointwise(embeddings[seen_ok], scaled[seen_ok].astype(np.float32), network_settings(settings), progress=progress)
    predicted = predict_pointwise(network, embeddings).astype(np.float64)
    predictions[fraction] = predicted
    seen_mask = np.zeros(len(scaled), dtype=bool)
    seen_mask[seen] = True
    rows = []
    for name, mask in (("seen", seen_mask & ok), ("unseen", ~seen_mask & ok)):
        metrics = evaluate_split(scaled[mask], predicted[mask], scaled[seen_ok], rng, 0.20)
        rows.append({"fraction": fraction, "split": name, "n_seen": len(seen), **metrics})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the fidelity rows."""
    if not rows:
        return ""
    top_key = next(k for k in rows[0] if k.startswith("top"))
    lines = [f"| u | split | pairs | MSE network | MSE mean baseline | MSE random baseline | Spearman | {top_key.replace('_', ' ')} |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['fraction']} | {row['split']} | {row['n']} | {row['mse_network']:.4f} | {row['mse_mean']:.4f} | "
                     f"{row['mse_random']:.4f} | {row['spearman']:.3f} | {row[top_key]:.3f} |")
    return "\n".join(lines) + "\n"


def plot_fidelity(rows: list[dict[str, Any]], path: Path, *, title: str) -> None:
    """MSE per split versus u for the network and the two baselines (one panel per split)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    splits = list(dict.fromkeys(row["split"] for row in rows))
    figure, axes = plt.subplots(1, len(splits), figsize=(3.2 * len(splits), 3.0), sharey=True, squeeze=False)
    for axis, split in zip(axes[0], splits):
        subset = [row for row in rows if row["split"] == split]
        fractions = [row["fraction"] for row in subset]
        for key, label, style in (("mse_network", "InfluenceNetwork", "o-"), ("mse_mean", "mean baseline", "s--"), ("mse_random", "random baseline", "^:")):
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
