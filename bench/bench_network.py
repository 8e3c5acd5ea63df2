"""What selection loses on the InfluenceNetwork's predictions, on full matrices of real data.

For a matrix of bench/matrices.py (computed once, kept under bench/out/matrices), for each fraction u
and seed: sample the labelled block exactly as ``nncift select`` does (``plan_layout``), train each
architecture on it, predict the rest (exact values kept where labelled) and compare with the
no-learning predictors (the embeddings' calibrated cosine, the training mean):

- cold Spearman (pairs whose target and candidate are both unlabelled), Q4 MSE relative to the mean's;
- f_gain = (f(S_pred) − f(S_rand)) / (f(S_true) − f(S_rand)), f = the run's objective on the TRUE matrix
  (FL of the pool on itself; FLMI with targets for DELIFT and DELIFT-SE; LESS's top-k of the
  max-over-subtasks mean), and the overlap of the two subsets;
- with targets: the on-task share of each subset (records of the targets' families), against the
  exact function's subset and a random one;
- training seconds and prediction pairs per second.

The pool is put in a seeded random order first (see :func:`shuffled`).

Mean ± standard deviation over the seeds, then the targets of the network issue and whether they are met.
``--sampling-blocks 1 4`` compares sampling designs at the same number of labelled pairs (one u×u
block against 4 blocks over twice as many records), with the exact function's cost of each
(:func:`exact_cost`).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_network.py delift-se-alpaca --output bench/results/network_delift_se.md``
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import publish, report_head  # bench/ is on sys.path when a script runs
from matrices import NAMES, compute

TARGETS = {  # the network issue's targets at u = 0.05, per matrix
    "delift-se-alpaca": "cold Spearman ≥ 0.9 and f_gain ≥ 0.8 at u = 0.05",
    "less-p3": "f_gain ≥ 0.5 and never below the cosine baseline's or zero",
    "delift-p3": "f_gain ≥ 0.5 and never below the cosine baseline's or zero",
    "delift-se-p3": "NN-CIFT's on-task share ≥ 0.8 × the exact function's at u = 0.05",
    "delift-demo": "none set; the influence function and data of `nncift demo --influence delift`: never below the cosine baseline",
}


def _objective(matrix, budget: float, task_share: float = 0.0):
    """The run's objective on ``matrix`` (LESS: top-k with its aggregation and a task floor of ``task_share``)."""
    from nncift.influence.less import aggregate_scores, subtask_scores
    from nncift.selection.subset_quality import ObjectiveSpec

    spec = matrix.spec
    if spec.influence == "less":
        tasks = [record.task for record in spec.targets]
        return "topk", ObjectiveSpec("topk", budget, candidate_scores=lambda m: aggregate_scores(m, tasks),
                                     task_scores=lambda m: subtask_scores(m, tasks), task_share=task_share)
    if spec.targets and spec.pool_rows:
        return "flmi", ObjectiveSpec("flmi", budget, n_pool_rows=len(spec.pool))
    return "fl", ObjectiveSpec("fl", budget)  # the pool's rows, or the targets' alone (every target served by its most useful pick)


def _scaled(matrix) -> np.ndarray:
    values = np.where(np.isfinite(matrix.values), matrix.values, np.nanmean(matrix.values))
    if matrix.spec.influence == "delift-se":
        return values  # fixed range [0, 1]
    return (values - values.min()) / ((values.max() - values.min()) or 1.0)


def shuffled(matrix):
    """The matrix with its pool in a seeded random order (rows of the pool permuted alike).

    The stored pools are grouped by family with the targets' family first; selection breaks ties by
    the lowest index, so a predictor with many ties (the mean) would look on-task by file order alone.
    """
    spec = matrix.spec
    order = np.random.default_rng(12345).permutation(len(spec.pool))
    values = matrix.values[:, order]
    if spec.pool_rows:
        values = np.concatenate([values[: len(spec.pool)][order], values[len(spec.pool):]])
    spec = replace(spec, pool=[spec.pool[i] for i in order], pool_families=[spec.pool_families[i] for i in order])
    return replace(matrix, spec=spec, values=values)


@dataclass
class Setup:
    """A stored matrix ready to benchmark: its pool in a seeded order, the run's objective, the scaled true values."""

    matrix: Any
    spec: Any
    budget: float
    objective_name: str
    objective: Any
    true: np.ndarray
    rows: list
    n_pool_rows: int
    self_cols: np.ndarray
    family: np.ndarray
    on_task_families: list[str]
    true_subset: np.ndarray

    def on_task(self, indices: np.ndarray) -> float:
        """Share of ``indices`` from the targets' families (NaN without targets)."""
        return float(np.isin(self.family[indices], self.on_task_families).mean()) if len(indices) and self.on_task_families else float("nan")


def setup(name: str, budget: float | None = None, task_share: float | None = None) -> Setup:
    """Load (or compute) the matrix ``name`` and everything both network benchmarks derive from it. ``task_share``: LESS's
    task floor in the predicted matrices' selection (default: ``nncift select``'s); the exact subset that f_gain compares
    with is always the plain maximum's (the LESS paper's selection)."""
    from nncift.run.layout import self_columns
    from nncift.selection.subset_quality import choose_subset
    from nncift.settings.stages import SelectionSettings

    matrix = shuffled(compute(name, progress=True))
    spec = matrix.spec
    budget = budget or (0.05 if spec.influence == "less" else 0.1 if spec.targets else 0.3)
    objective_name, plain = _objective(matrix, budget)
    objective = _objective(matrix, budget, SelectionSettings().task_share if task_share is None else task_share)[1]
    true = _scaled(matrix)
    rows = (spec.pool if spec.pool_rows else []) + spec.targets
    n_pool_rows = len(spec.pool) if spec.pool_rows else 0
    return Setup(matrix, spec, budget, objective_name, objective, true, rows, n_pool_rows, self_columns(len(rows), n_pool_rows),
                 np.array(spec.pool_families), sorted(set(spec.target_families)), choose_subset(true, plain).indices)


def exact_cost(influence: str, layout) -> int:
    """What the labelled block costs the exact function, in its own units.

    DELIFT: one LM pass per labelled pair, plus a zero-shot pass per distinct target and a prefix pass
    per distinct candidate (prefix reuse). LESS: one gradient per distinct example (per checkpoint).
    DELIFT-SE: one encoder pass per distinct record.
    """
    rows, cols = len(layout.seen_rows), len(layout.seen_cols)
    if influence == "delift":
        return int(layout.labelled().sum()) + rows + cols
    if influence == "less":
        return rows + cols
    own = {int(r) for r in layout.seen_rows if r < layout.n_pool_rows}
    return rows - len(own & {int(c) for c in layout.seen_cols}) + cols


def summary(values: list[float]) -> str:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return "–"
    return f"{np.mean(finite):.3f} ± {np.std(finite):.3f}" if len(finite) > 1 else f"{finite[0]:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("matrix", choices=NAMES)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--architectures", nargs="+", default=["two-tower", "paper"])
    parser.add_argument("--budget", type=float, default=None, help="subset share (default 0.3; LESS 0.05; with targets 0.1)")
    parser.add_argument("--min-sampled", type=int, default=10)
    parser.add_argument("--sampling-blocks", type=int, nargs="+", default=[1],
                        help="sampling designs to compare: 1 = one u×u block, g = the same pairs in g blocks over √g× the records")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    from nncift.models.embeddings import embed_records
    from nncift.selection.subset_quality import choose_subset
    from nncift.settings.stages import SelectSettings
    from nncift.steps.select import plan_layout
    from nncift_research.fidelity import compare_pairwise

    started = time.perf_counter()
    bench = setup(args.matrix, args.budget)
    matrix, spec, budget, objective_name, objective, true, rows = (bench.matrix, bench.spec, bench.budget, bench.objective_name,
                                                                   bench.objective, bench.true, bench.rows)
    col_embeddings = embed_records(spec.pool, progress=False)
    row_embeddings = embed_records(rows, progress=False)
    self_cols, on_task_families, family, true_subset, on_task = bench.self_cols, bench.on_task_families, bench.family, bench.true_subset, bench.on_task
    k = len(true_subset)

    records = []
    for fraction in args.fractions:
        for blocks in args.sampling_blocks:
            for seed in args.seeds:
                settings = SelectSettings.build(**{"sampling.fraction": fraction, "sampling.min_sampled": args.min_sampled}, seed=seed, **{"selection.budget": budget, "sampling.blocks": blocks})
                layout = plan_layout(spec.pool, spec.targets, objective_name, settings.sampling, np.random.default_rng(seed))
                nets = [replace(settings.network, architecture=name) for name in args.architectures]
                _, selection_rows, predictions = compare_pairwise(true, row_embeddings, col_embeddings, layout.seen_rows, layout.seen_cols,
                                                                  objective, nets, self_cols=self_cols, fraction=fraction, seed=seed,
                                                                  true_subset=true_subset, labelled=layout.labelled())
                cost = exact_cost(spec.influence, layout)
                for row in selection_rows:
                    row["design"], row["cost"] = blocks, cost
                    if on_task_families:
                        row["on_task"] = on_task(choose_subset(predictions[row["predictor"]], objective).indices)
                    records.append(row)
                print(f"u={fraction} blocks={blocks} seed={seed}: " + ", ".join(f"{r['predictor']} f_gain {r['f_gain']:.3f}" for r in selection_rows), flush=True)

    predictors = list(dict.fromkeys(r["predictor"] for r in records))
    has_task = bool(on_task_families)
    header = "| u | design | labelled pairs | exact-function cost | predictor | shipped (per seed) | cold Spearman | Q4 MSE / mean's | f_gain | subset overlap | " \
             + ("on-task share | " if has_task else "") + "train s | prediction pairs/s |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for fraction in args.fractions:
        for blocks, predictor in [(b, p) for b in args.sampling_blocks for p in predictors]:
            group = [r for r in records if r["fraction"] == fraction and r["predictor"] == predictor and r["design"] == blocks]
            design = "one block" if blocks == 1 else f"{blocks} blocks"
            lines.append(
                f"| {fraction} | {design} | {group[0]['n_labelled']} | {np.mean([r['cost'] for r in group]):,.0f} | {predictor} | "
                f"{' '.join(r['chosen'] for r in group)} | "
                f"{summary([r['cold_spearman'] for r in group])} | {summary([r['q4_mse_vs_mean'] for r in group])} | "
                f"{summary([r['f_gain'] for r in group])} | {summary([r['overlap'] for r in group])} | "
                + (f"{summary([r['on_task'] for r in group])} | " if has_task else "")
                + f"{summary([r['train_seconds'] for r in group])} | "
                + (f"{np.mean([r['pairs_per_second'] for r in group]):.3g} |" if np.isfinite(group[0]["pairs_per_second"]) else "– |"))
    verdicts = []
    at = [r for r in records if r["fraction"] == 0.05 and r["design"] == args.sampling_blocks[0]]
    if at:
        default = [r for r in at if r["predictor"] == args.architectures[0]]
        cosine = [r for r in at if r["predictor"] == "cosine"]
        gain, cos_gain = np.nanmean([r["f_gain"] for r in default]), np.nanmean([r["f_gain"] for r in cosine])
        rho = np.nanmean([r["cold_spearman"] for r in default])
        verdicts.append(f"At u = 0.05 the default ({args.architectures[0]}) has cold Spearman {rho:.3f} and f_gain {gain:.3f} "
                        f"(cosine baseline {cos_gain:.3f}); worst seed f_gain {np.nanmin([r['f_gain'] for r in default]):.3f}.")
        if has_task:
            share = np.nanmean([r["on_task"] for r in default])
            verdicts.append(f"On-task share at u = 0.05: NN-CIFT {share:.3f}, exact function {on_task(true_subset):.3f}, "
                            f"random {np.isin(family, list(on_task_families)).mean():.3f} (ratio to exact {share / max(on_task(true_subset), 1e-9):.2f}).")
            raw_targets = matrix.values[len(rows) - len(spec.targets):]  # the target rows of the exact matrix, raw
            top = np.argsort(-raw_targets.mean(axis=0), kind="stable")[:k]
            verdicts.append(f"Does the exact function target at all? Its {k} candidates with the highest mean value over the "
                            f"targets are {on_task(top):.3f} on-task (random {np.isin(family, list(on_task_families)).mean():.3f}).")
    report = [*report_head(f"InfluenceNetwork fidelity by selection: `{args.matrix}`", "bench/bench_network.py", started),
              f"Matrix: {true.shape[0]} × {true.shape[1]} {spec.influence} ({len(spec.pool)} pool records"
              + (f", {len(spec.targets)} targets of {sorted(on_task_families)}" if spec.targets else ", pool = targets")
              + f"), computed in {matrix.seconds:,.0f} s by `bench/matrices.py {args.matrix}`; options {spec.options}. "
              f"Objective {objective_name}, budget {budget} ({k} records). Seeds {args.seeds}; mean ± std over seeds. "
              f"Labels scaled to [0, 1] ({'fixed range' if spec.influence == 'delift-se' else 'min–max of the whole matrix'}).", "",
              f"Target (network issue): {TARGETS[args.matrix]}.", "", *lines, "", *verdicts]
    publish("\n".join(report) + "\n", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
