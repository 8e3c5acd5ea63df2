"""Network size against fidelity (the paper's Figure 3): many shapes trained on the same labelled block Q1.

For each stored full matrix of bench/matrices.py and seed, the labelled block is sampled once at
fraction u exactly as ``nncift select`` samples it (``plan_layout``), and every network shape is
trained on that same block and compared with the exact matrix as bench/bench_network.py does:
cold Spearman (pairs whose target and candidate are both unlabelled), Q4 MSE relative to the
training mean's, and f_gain (what selection on the prediction keeps of the exact function's gain
over a random subset). Shapes: the paper's MLP (1–5 hidden layers of widths 5, 50, 500, and one
layer of 5000: :data:`nncift_research.network_shapes.PAPER_FIGURE_SHAPES`) and the two-tower network at
several ranks, trained as shipped but with its fallback to the prior off, so that every point is the
network itself (the calibrated-cosine baseline is drawn as a line).

Run: ``OMP_NUM_THREADS=2 .venv/bin/python bench/bench_sizes.py delift-se-alpaca less-p3 --output bench/results/network_sizes.md``
(``--matrices DIR``: another checkout's bench/out/matrices).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from bench_network import _objective, _scaled, shuffled  # bench/ is on sys.path when a script runs
from benchlib import publish, report_head
from matrices import NAMES, OUT, Matrix, spec_named

TOWER_SHAPES = ("two-tower:r4", "two-tower:r16", "two-tower:r64", "two-tower:r256")


def load(name: str, folder: Path) -> Matrix:
    """The stored full matrix ``name`` under ``folder`` (complete), or exit with a message."""
    import json

    path = folder / name / "full.npy"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `bench/matrices.py {name}` first (or pass --matrices)")
    values = np.load(path)
    if np.isnan(values).any():
        raise SystemExit(f"{path}: unfinished (NaN left): finish `bench/matrices.py {name}`")
    seconds = json.loads((folder / name / "seconds.json").read_text())["seconds"] if (folder / name / "seconds.json").is_file() else 0.0
    return Matrix(spec_named(name), values, seconds, folder / name)


def _summary(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return (float(np.mean(finite)), float(np.std(finite))) if finite else (float("nan"), float("nan"))


def measure(matrix: Matrix, shapes: list[str], fraction: float, seeds: list[int]) -> list[dict]:
    """One row per (shape or baseline, seed): parameters, cold Spearman, Q4 MSE / mean's, f_gain, train seconds."""
    from nncift.models.embeddings import embed_records
    from nncift.run.layout import self_columns
    from nncift.selection.subset_quality import choose_subset
    from nncift.settings.stages import SelectSettings
    from nncift.steps.select import plan_layout
    from nncift_research.fidelity import compare_pairwise
    from nncift_research.network_shapes import parameter_count, shape_settings

    spec = matrix.spec
    budget = 0.05 if spec.influence == "less" else 0.1 if spec.targets else 0.3
    objective_name, objective = _objective(matrix, budget)
    true = _scaled(matrix)
    rows = (spec.pool if spec.pool_rows else []) + spec.targets
    col_embeddings, row_embeddings = embed_records(spec.pool, progress=False), embed_records(rows, progress=False)
    self_cols = self_columns(len(rows), len(spec.pool) if spec.pool_rows else 0)
    true_subset = choose_subset(true, objective).indices
    records = []
    for seed in seeds:
        settings = SelectSettings.build(**{"sampling.fraction": fraction, "sampling.min_sampled": 10}, seed=seed, **{"selection.budget": budget, "sampling.blocks": 1})
        layout = plan_layout(spec.pool, spec.targets, objective_name, settings.sampling, np.random.default_rng(seed))
        base = replace(settings.network, fallback=False)
        for position, shape in enumerate(shapes):
            net = shape_settings(shape, base)
            _, selection, _ = compare_pairwise(true, row_embeddings, col_embeddings, layout.seen_rows, layout.seen_cols, objective, [net],
                                               self_cols=self_cols, fraction=fraction, seed=seed, true_subset=true_subset)
            for row in selection:
                if row["predictor"] == net.architecture:
                    records.append({**row, "shape": shape, "parameters": parameter_count(net, col_embeddings.shape[1])})
                elif position == 0 and row["predictor"] in ("cosine", "mean"):
                    records.append({**row, "shape": row["predictor"], "parameters": 0})
            print(f"{spec.name} seed {seed} {shape}: f_gain {records[-1]['f_gain'] if records else float('nan'):.3f}", flush=True)
    return records


def plot(records: list[dict], shapes: list[str], path: Path, title: str) -> None:
    """Cold Spearman, f_gain and Q4 MSE / mean's against parameter count (log scale), with the cosine baseline as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    colours = {1: "#c6dbef", 2: "#9ecae1", 3: "#6baed6", 4: "#3182bd", 5: "#08519c"}
    for axis, (metric, label) in zip(axes, (("cold_spearman", "cold Spearman"), ("f_gain", "f_gain"), ("q4_mse_vs_mean", "Q4 MSE / mean's"))):
        for shape in shapes:
            group = [r for r in records if r["shape"] == shape]
            mean, spread = _summary([r[metric] for r in group])
            tower = shape.startswith("two-tower")
            colour = "#ff7f0e" if tower else colours[min(5, shape.count("x") + 1)]
            axis.errorbar(group[0]["parameters"], mean, yerr=spread, fmt="s" if tower else "o", color=colour, capsize=3, ms=5)
        cosine, _ = _summary([r[metric] for r in records if r["shape"] == "cosine"])
        if np.isfinite(cosine):
            axis.axhline(cosine, color="grey", ls="--", lw=1, label="calibrated cosine")
        axis.set_xscale("log")
        axis.set_xlabel("parameters")
        axis.set_title(label)
        axis.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=f"paper MLP, {d} layer{'s' if d > 1 else ''}") for d, c in colours.items()]
    handles += [plt.Line2D([], [], color="#ff7f0e", marker="s", ls="", label="two-tower (ranks)"),
                plt.Line2D([], [], color="grey", ls="--", label="calibrated cosine")]
    axes[-1].legend(handles=handles, fontsize=7, loc="best")
    figure.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=96, bbox_inches="tight")
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("matrices", nargs="+", choices=NAMES)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shapes", nargs="+", default=None, help="network shapes (default: the paper's subset and two-tower ranks)")
    parser.add_argument("--matrices-dir", type=Path, default=Path(os.environ.get("NNCIFT_MATRICES", OUT)))
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    from nncift_research.network_shapes import PAPER_FIGURE_SHAPES

    shapes = args.shapes or [*PAPER_FIGURE_SHAPES, *TOWER_SHAPES]
    started = time.perf_counter()
    report = [f"Every shape is trained on the same labelled block per seed (u = {args.fraction}, seeds {args.seeds}; mean ± std over "
              "seeds). Paper MLP: the paper's training (Adam, lr 1e-4, 20 epochs, batch 64). Two-tower: the default training with "
              "its fallback to the prior off (the network itself). The calibrated cosine (no learning) is the baseline row.", ""]
    for name in args.matrices:
        matrix = shuffled(load(name, args.matrices_dir))
        records = measure(matrix, shapes, args.fraction, args.seeds)
        figure = (args.output.parent if args.output else Path("bench/results")) / f"network_sizes_{name.replace('-', '_')}.png"
        plot(records, shapes, figure, f"{name}: fidelity against network size (u = {args.fraction}, {len(args.seeds)} seeds)")
        report += [f"## `{name}` ({matrix.spec.influence}, {matrix.values.shape[0]} × {matrix.values.shape[1]})", "",
                   f"![sizes]({figure.name})", "",
                   "| shape | parameters | cold Spearman | f_gain | Q4 MSE / mean's | train s |", "|---|---|---|---|---|---|"]
        for shape in [*shapes, "cosine", "mean"]:
            group = [r for r in records if r["shape"] == shape]
            if not group:
                continue
            cells = [_summary([r[m] for r in group]) for m in ("cold_spearman", "f_gain", "q4_mse_vs_mean", "train_seconds")]
            report.append(f"| {shape} | {group[0]['parameters']:,} | " + " | ".join(
                "–" if not np.isfinite(mean) else f"{mean:.3f} ± {spread:.3f}" for mean, spread in cells) + " |")
        report.append("")
    publish("\n".join([*report_head("Network size against fidelity (paper Figure 3)", "bench/bench_sizes.py", started), *report]) + "\n",
            args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
