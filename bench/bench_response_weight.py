"""How much of the response the network's prior should read: the calibrated cosine of ``--network.input text+response`` at
response weights w (the prior's cosine is (1 − w²) × the texts' cosine + w² × the responses'), judged by what selection
keeps on stored matrices of ``bench/matrices.py``.

For each matrix, weight and seed: the run's label layout (block design, fraction ``--u``, targets sampled within each task,
as ``nncift select`` draws it), the calibrated cosine of that input with the exact labelled values in place, the
function's own selection on it, and its f_gain on the true matrix (1 = the exact function's subset, 0 = a random one)
and on-task share (the share of picks from the targets' families; LESS and DELIFT matrices with held-out targets). No
network is trained: this is the free prior that every run starts from and ships when nothing learned validates;
``bench_designs.py --inputs EMBEDDER/text+response@W`` measures what ships on top of it.

Run: ``NNCIFT_BENCH_OUT=~/.cache/nncift/bench .venv/bin/python bench/bench_response_weight.py less-p3 less-p3-2k --weights 0 0.1 0.2 0.25 0.35 0.5 0.7071 --output bench/results/response_weight.md``
(``delift-p3-large`` needs the ``NNCIFT_DELIFT_POOL`` / ``NNCIFT_DELIFT_TARGETS`` it was computed with.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from bench_network import setup, summary
from benchlib import publish, report_head
from matrices import NAMES


def halves(records: list, embedder: str) -> tuple[np.ndarray, np.ndarray]:
    """(unit text embeddings, unit response embeddings) of ``records``, float64."""
    from nncift.models.embeddings import embed_records

    both = np.asarray(embed_records(records, model=embedder, progress=False, network_input="text+response", response_weight=1 / np.sqrt(2)),
                      np.float64) * np.sqrt(2)
    d = both.shape[1] // 2
    return both[:, :d], both[:, d:]


def prior_quality(name: str, weights: list[float], u: float, seeds: list[int], embedder: str) -> list[dict]:
    """f_gain and on-task share of the calibrated prior at each weight and seed on matrix ``name``."""
    from nncift.influence import influence_class
    from nncift.run.layout import plan_layout, resolve_sampling
    from nncift.selection.subset_quality import choose_subset, f_gain
    from nncift.settings.stages import SamplingSettings
    from nncift_research.fidelity import calibrated_cosine

    bench = setup(name)
    spec, rows = bench.spec, bench.rows
    (row_text, row_response), (col_text, col_response) = halves(rows, embedder), halves(spec.pool, embedder)
    function_class = influence_class(spec.influence)
    results = []
    for w in weights:
        a = np.sqrt(1.0 - w * w)
        row_embeddings, col_embeddings = np.hstack([a * row_text, w * row_response]), np.hstack([a * col_text, w * col_response])
        for seed in seeds:
            sampling = resolve_sampling(SamplingSettings(design="block", blocks=1, fraction=u), function_class, len(spec.pool), len(spec.targets),
                                        len(rows))
            layout = plan_layout(spec.pool, spec.targets, bench.objective_name, sampling, np.random.default_rng(seed))
            seen_rows, seen_cols = layout.seen_rows, layout.seen_cols
            labels = np.where(layout.labelled(), bench.true[np.ix_(seen_rows, seen_cols)], np.nan)
            predicted = calibrated_cosine(row_embeddings, col_embeddings, seen_rows, seen_cols, labels, bench.self_cols).astype(np.float64)
            block = np.ix_(seen_rows, seen_cols)
            predicted[block] = np.where(np.isfinite(labels), labels, predicted[block])
            picks = choose_subset(predicted, bench.objective).indices
            quality = f_gain(bench.true, predicted, bench.objective, seed=seed, true_subset=bench.true_subset)
            results.append({"matrix": name, "w": w, "seed": seed, "f_gain": quality["f_gain"], "on_task": bench.on_task(picks)})
        group = [r for r in results if r["w"] == w]
        print(f"{name} w={w:g}: f_gain {summary([r['f_gain'] for r in group])} on-task {summary([r['on_task'] for r in group])}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("matrices", nargs="+", choices=NAMES)
    parser.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.1, 0.2, 0.25, 0.35, 0.5, 1 / np.sqrt(2)])
    parser.add_argument("--u", type=float, default=0.05, help="labelled fraction (block design)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--embedder", default="all-MiniLM-L6-v2")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = [r for name in args.matrices for r in prior_quality(name, args.weights, args.u, args.seeds, args.embedder)]
    header = "| matrix | response weight w | f_gain per seed | f_gain | on-task share |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for name in args.matrices:
        for w in args.weights:
            group = [r for r in results if r["matrix"] == name and r["w"] == w]
            per_seed = " / ".join(f"{r['f_gain']:.3f}" for r in group)
            lines.append(f"| {name} | {w:.4g} | {per_seed} | {summary([r['f_gain'] for r in group])} | {summary([r['on_task'] for r in group])} |")
    report = "\n".join([
        *report_head("The response weight of the network's prior (`--network.input text+response`, `--network.response-weight`)",
                     "bench/bench_response_weight.py", started),
        f"The calibrated cosine alone (no network), block design, u = {args.u:g}, targets sampled within each task, seeds "
        f"{args.seeds}; embedder {args.embedder}. w = 0 is `--network.input text`; 0.7071 weighs both halves alike. f_gain on "
        "the true matrix (1 = the exact function's subset, 0 = random); on-task share: picks from the targets' families.", "",
        *lines, ""])
    publish(report, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
