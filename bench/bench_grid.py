"""The paper's u × v grid on P3 mixes, scored in ICL mode, with the random, exact-function and full-pool references.

Three set-ups (``SETUPS``), each a pool of P3 records of many families, targets of one or two
families from other templates (the validation data of a targeted selection), and held-out
queries from the pool's template of the target families, at lines no pool or target record uses:

- ``delift-se-p3mix``: DELIFT-SE, FLMI; 40 records of each of 12 families (480); 40 targets, half
  amazon_polarity, half gigaword (other templates than the pool's); held-out queries half
  amazon_polarity sentiment (Positive/Negative, mixed: exact match) and half gigaword titles (ROUGE-L). The sweep computes the influence blocks itself (``nncift sweep``'s
  path); the exact function's subset is ``nncift select``'s full-matrix baseline (``run_select(..., full_matrix=True)``).
- ``less-p3-2k``: LESS, top-k; the stored 120 × 2,016 matrix of bench/matrices.py (4 target subtasks); held-out
  queries from the pool's template of each target family at lines 63… (the pool reads lines 0–62).
- ``less-p3``: LESS, top-k; the stored 60 × 300 matrix of bench/matrices.py (its influence block per
  seed is read from it, not recomputed: 11 minutes of LESS otherwise); held-out queries from
  ag_news_classify lines 30… and rotten_tomatoes_Reviewer_Enjoyment lines 30…. The P3 files are
  sorted by label, so these queries all have the label of the pool's records of their task
  ("Business", "They loved it"): exact match here measures whether a query's examples come from its
  own task, not whether the model can tell labels apart.

Each subset is scored by in-context learning with the bundled SmolLM2-135M-Instruct: each query
gets its K most similar subset records as examples; greedy answers; exact match and ROUGE-L.
References in the same tables: a random subset of the same size per v and seed, the exact
function's subset per v, and the full pool.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python bench/bench_grid.py delift-se-p3mix --output bench/results/grid_delift_se.md``
(``--matrices DIR`` points at another checkout's bench/out/matrices for ``less-p3``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from benchlib import publish, report_head  # bench/ is on sys.path when a script runs
from less_data import read_p3
from matrices import OUT, P3_POOL_FAMILIES, spec_named

from nncift.settings.choices import DEFAULT_RESPONSE_WEIGHT, NETWORK_INPUTS

SETUPS = {
    "delift-se-p3mix": {"influence": "delift-se", "objective": "flmi", "stored": False, "per_family": 40,
                        "targets": [("amazon_polarity", "amazon_polarity_convey_negative_or_positive_sentiment", 100),
                                    ("gigaword", "gigaword_write_a_title_for_this_sentence", 100)],
                        "queries": [("amazon_polarity_Is_this_review", 150), ("gigaword_make_a_title", 150)]},
    "less-p3": {"influence": "less", "objective": "topk", "stored": True,
                "queries": [("ag_news_classify", 30), ("rotten_tomatoes_Reviewer_Enjoyment", 30)]},
    "less-p3-2k": {"influence": "less", "objective": "topk", "stored": True,  # its pool reads lines 0–62 of each template
                   "queries": [("ag_news_classify", 63), ("rotten_tomatoes_Reviewer_Enjoyment", 63),
                               ("sciq_Direct_Question_Closed_Book_", 63), ("glue_mrpc_paraphrase", 63)]},
}


def records_of(name: str, n_targets: int):
    """(pool, targets, pool families, target families, influence options) of a set-up."""
    setup = SETUPS[name]
    if setup["stored"]:
        spec = spec_named(name)
        return spec.pool, spec.targets, spec.pool_families, spec.target_families, dict(spec.options)
    pool, families = [], []
    for family, stem in P3_POOL_FAMILIES.items():
        records = read_p3(stem, setup["per_family"])
        pool += records
        families += [family] * len(records)
    targets, target_families = [], []
    for family, stem, offset in setup["targets"]:
        records = read_p3(stem, -(-n_targets // len(setup["targets"])), offset=offset)
        targets += records
        target_families += [family] * len(records)
    return pool, targets, families, target_families, {}


def heldout_queries(name: str, count: int) -> list:
    """``count`` held-out queries spread over the set-up's query templates."""
    sources = SETUPS[name]["queries"]
    per_source = -(-count // len(sources))
    return [r for stem, offset in sources for r in read_p3(stem, per_source, offset=offset)][:count]


def load_matrix(folder: Path, name: str, expected: tuple[int, int]) -> np.ndarray:
    """The stored full matrix ``name`` (complete, of the expected shape), or exit with a message."""
    path = folder / name / "full.npy"
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `bench/matrices.py {name}` first (or pass --matrices)")
    values = np.load(path)
    if values.shape != expected or np.isnan(values).any():
        raise SystemExit(f"{path}: shape {values.shape} (expected {expected}) or unfinished (NaN left): finish `bench/matrices.py {name}`")
    return values


def exact_subset(settings, v: float, pool, targets, rows, matrix, options, folder: Path) -> list[int]:
    """The exact function's subset of size v: ``nncift select``'s full-matrix baseline, or the same selection on a stored matrix."""
    from dataclasses import fields

    from nncift.influence import influence_class
    from nncift.selection.subset_quality import choose_subset
    from nncift.settings.stages import SelectSettings
    from nncift.steps.select import (
        Layout,
        influence_spec,
        label_scaling,
        objective_spec,
        run_select,
    )

    select = SelectSettings(**{f.name: getattr(settings, f.name) for f in fields(SelectSettings)})  # the sweep's own fields dropped
    select = select.updated(**{"selection.budget": v}, seed=0)  # the budget takes its normal form (SelectionSettings)
    if matrix is None:
        return [int(i) for i in run_select(select, folder, pool=pool, targets=targets, influence_options=options, full_matrix=True).indices]
    function_class = influence_class(settings.influence)
    low, high = label_scaling(function_class, matrix)
    layout = Layout(rows, np.arange(len(rows)), np.arange(len(pool)), len(pool) if len(rows) > len(targets) else 0)
    spec = objective_spec(settings.selection.objective, layout, select.selection, function_class, influence_spec(select, options))
    return [int(i) for i in choose_subset((matrix - low) / (high - low), spec).indices]


def per_subset_table(folder: Path, subsets: list[dict], pool_families: list[str], target_families: list[str], v: float) -> list[str]:
    """Per subset of size ``v`` (each seed of NN-CIFT and random, the exact function's): exact match overall and on each query
    template's queries, and its picks from each target family (what decides a query: whether its own task has records)."""
    families = sorted(set(target_families))
    per_family = np.array(pool_families)
    lines = ["| subset | exact match | exact match per query template | picks from " + " / ".join(families) + " |", "|---|---:|---|---|"]
    for subset in (s for s in subsets if s["v"] == v):
        examples = json.loads((folder / "evaluations" / f"{subset['name']}-icl.json").read_text())["examples"]
        by_task: dict[str, list[float]] = {}
        for example in examples:
            by_task.setdefault(example["task"], []).append(example["exact_match"])
        picks = per_family[np.asarray(subset["indices"], dtype=np.int64)]
        lines.append(f"| {subset['name']} | {np.mean([e['exact_match'] for e in examples]):.3f} | "
                     + " / ".join(f"{task} {np.mean(values):.2f}" for task, values in sorted(by_task.items())) + " | "
                     + " / ".join(str(int((picks == family).sum())) for family in families) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("setup", choices=sorted(SETUPS))
    parser.add_argument("--targets", type=int, default=40, help="targets (computed set-ups)")
    parser.add_argument("--u", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--v", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--heldout", type=int, default=20, help="held-out queries")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--icl-max-length", type=int, default=512, help="most prompt tokens (least similar examples dropped to fit)")
    parser.add_argument("--architecture", default="two-tower")
    parser.add_argument("--network-input", default="text", choices=NETWORK_INPUTS, help="what the network reads (network.input)")
    parser.add_argument("--response-weight", type=float, default=DEFAULT_RESPONSE_WEIGHT, help="text+response: the response half's weight")
    parser.add_argument("--task-calibration", default="auto", choices=("auto", "on", "off"), help="network.task_calibration")
    parser.add_argument("--task-share", type=float, default=None,
                        help="top-k with per-task scores (LESS): selection.task_share (default: nncift select's)")
    parser.add_argument("--design", default="auto", choices=("auto", "block", "all-targets"), help="label design (sampling.design)")
    parser.add_argument("--stratify", action=argparse.BooleanOptionalAction, default=True,
                        help="sample the targets within each task (sampling.stratify; nncift's default since 2026-12-03)")
    parser.add_argument("--matrices", type=Path, default=Path(os.environ.get("NNCIFT_MATRICES", OUT)))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "grid")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    from nncift_research.sweep_plan import SweepSettings
    from nncift_research.sweep_report import grid_table, heat_map
    from nncift_research.sweep_run import Sweep

    started = time.perf_counter()
    setup = SETUPS[args.setup]
    pool, targets, pool_families, target_families, options = records_of(args.setup, args.targets)
    rows = pool + targets if setup["objective"] in ("flmi", "flcg") else targets
    matrix = load_matrix(args.matrices, args.setup, (len(rows), len(pool))) if setup["stored"] else None
    heldout = heldout_queries(args.setup, args.heldout)
    objective = setup["objective"]
    settings = SweepSettings.build(influence=setup["influence"], **{"selection.objective": objective}, u=tuple(args.u), v=tuple(args.v), seeds=tuple(args.seeds),
                                   **{"sampling.min_sampled": 4, "sampling.design": args.design, "sampling.stratify": args.stratify}, k=args.k, max_new_tokens=args.max_new_tokens, icl_max_length=args.icl_max_length, device="cpu", **{"network.architecture": args.architecture, "network.input": args.network_input,
                                      "network.response_weight": args.response_weight, "network.task_calibration": args.task_calibration},
                                   **({} if args.task_share is None else {"selection.task_share": args.task_share}),
                                   quiet=True)
    sweep = Sweep(settings, args.out / args.setup, pool=pool, targets=targets, heldout=heldout, influence_options=options,
                  precomputed=matrix)
    subsets = []
    try:
        results = sweep.run()
        subsets = sweep.subsets()
        for v in args.v:  # the exact function's subset per v: every pair, no network
            indices = exact_subset(settings, v, pool, targets, rows, matrix, options, args.out / args.setup / f"exact-v{v:g}")
            subset = {"name": f"exact-v{v:g}", "kind": "exact", "u": None, "v": v, "seed": None, "indices": indices}
            subsets.append(subset)
            results["rows"].append({k: subset[k] for k in ("name", "kind", "u", "v", "seed")} | {"mode": "icl", "metrics": sweep.evaluate(subset, "icl")})
        manifest = json.loads((sweep.folder / "manifest.json").read_text())
    finally:
        sweep.close()
    figure = (args.output.parent if args.output else args.out) / f"grid_{args.setup.replace('-', '_')}.png"
    heat_map(results["rows"], figure, title=f"{args.setup}: ICL on {len(heldout)} held-out queries, mean of {len(args.seeds)} seeds")
    on_task = np.isin(np.array(pool_families), list(set(target_families)))
    shares = {(kind, v): float(np.mean([on_task[subset["indices"]].mean() for subset in subsets if subset["kind"] == kind and subset["v"] == v]))
              for kind in ("nncift", "random", "exact") for v in args.v}
    influence = manifest["influence"]
    report = [*report_head(f"u × v grid in ICL mode: `{args.setup}` ({setup['influence']}, {objective})", "bench/bench_grid.py", started),
              "The run time is this invocation's: finished parts are reused on a re-run.", "",
              f"Pool {len(pool)} P3 records of {len(set(pool_families))} families; {len(targets)} targets of "
              f"{sorted(set(target_families))}; {len(heldout)} held-out queries ({', '.join(f'{stem} from line {offset}' for stem, offset in setup['queries'])}). ICL: bundled SmolLM2-135M-Instruct, chat template, K = {args.k} nearest subset records, greedy, "
              f"{args.max_new_tokens} new tokens, prompts of at most {args.icl_max_length} tokens. Network: {args.architecture}, input {args.network_input}{f' (response weight {args.response_weight:g})' if args.network_input != 'text' else ''}"
              f"{f'; top-k task share {settings.selection.task_share:g}' if objective == 'topk' else ''}. Seeds {args.seeds}: mean ± s.d. over seeds "
              "(the exact function's subset and the full pool have no seed).", "",
              f"Influence: {influence['source']}; {influence['evaluations_in_blocks']:,} entries in the largest u's blocks "
              f"(u = {influence['largest_u']:g}, one block per seed; {influence['evaluations_made_by_this_invocation']:,} computed by the last "
              f"invocation) against "
              f"{influence['independent_runs_per_u_would_make']:,} for independent runs per u and "
              f"{influence['independent_runs_per_cell_would_make']:,} per cell. ICL answers generated "
              f"{manifest['icl_answers']['generated_by_this_invocation']:,}, reused {manifest['icl_answers']['reused']:,} "
              "(same query and examples) in the last invocation.", "",
              f"![grid]({figure.name})", ""]
    for metric in ("exact_match", "rouge_l"):
        report += [grid_table(results["rows"], metric), ""]
    report += ["Share of the subset from the targets' families (mean over seeds):", "",
               "| subset | " + " | ".join(f"v = {v:g}" for v in args.v) + " |", "|---|" + "---|" * len(args.v)]
    for kind, label in (("nncift", "NN-CIFT (all u)"), ("exact", "exact function"), ("random", "random")):
        report.append(f"| {label} | " + " | ".join(f"{shares[(kind, v)]:.3f}" for v in args.v) + " |")
    for v in args.v:
        report += ["", f"Per subset, v = {v:g}:", "", *per_subset_table(sweep.folder, subsets, pool_families, target_families, v)]
    publish("\n".join(report) + "\n", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
