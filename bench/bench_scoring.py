"""Valuing new data with a finished run (``nncift score``) and growing a selection (``select --add``).

Part 1: score 100,000 new records against a finished run of 1,000 targets (DELIFT-SE run on a P3
mix, FL with targets). Cold embeddings are measured on the distinct new texts with an empty cache and
extrapolated per record to 100,000; the 100,000-row scoring then runs with those texts cached (the
rows cycle through them), so prediction and aggregation run at full size. Each phase runs in its own
process (peak memory = its maximum resident set). The baseline: exact DELIFT with SmolLM2 on a sample
of pairs, measured in the same run and extrapolated to 1,000 × 100,000 pairs.

Part 2: ``select --add`` of 10% new records to a finished 2,000-record run vs a fresh selection on the
union (same settings): wall time, and both subsets' objective on the exact DELIFT-SE matrix of the
union (with the exact greedy's and random subsets' values for scale).

    .venv/bin/python bench/bench_scoring.py --output bench/results/scoring.md
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import command_line, cpu_name, publish  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
P3 = ROOT.parent / "shared" / "data" / "p3"


def _phase(args: argparse.Namespace) -> None:
    """One measured step in this process; prints a JSON line with seconds and peak memory."""
    from nncift.data.records import read_many

    start = time.perf_counter()
    if args.phase == "score":
        from nncift.steps.score import score_records

        records, _ = read_many([args.data])
        result = score_records(args.run, records, args.out, top_targets=5, progress=False)
        info = {"cost": result.manifest["cost"], "records": len(records)}
    elif args.phase == "add":
        from nncift.steps.add import add_to_run

        records, _ = read_many([args.data])
        result = add_to_run(args.run, records, args.out, new_paths=[args.data], progress=False)
        info = {"cost": result.manifest["cost"], "objective": result.objective, "indices": result.indices.tolist()}
    else:  # select
        from nncift import SelectSettings
        from nncift.steps.select import run_select

        settings = SelectSettings.build(data=tuple(args.data.split("+")), targets=(args.targets,) if args.targets else (), **{"sampling.fraction": 0.05, "selection.budget": 0.1}, quiet=True, seed=0)
        result = run_select(settings, args.out)
        info = {"cost": result.manifest["cost"], "objective": result.objective, "indices": result.indices.tolist()}
    info.update(wall=time.perf_counter() - start, peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("RESULT " + json.dumps(info))


def _run(phase: str, env: dict[str, str] | None = None, **kwargs: str) -> dict:
    command = [sys.executable, __file__, "--phase", phase] + [f"--{k}={v}" for k, v in kwargs.items()]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)
    if done.returncode:
        raise SystemExit(f"{phase} failed:\n{done.stderr[-3000:]}")
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


def _write(path: Path, records: list) -> None:
    path.write_text("".join(json.dumps(r.raw, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def _delift_seconds_per_pair(targets: list, candidates: list) -> tuple[float, int]:
    """Exact DELIFT (bundled SmolLM2) on targets × candidates: seconds per pair, pairs. A first 2 × 2 block
    (model load, tokeniser checks, kernels) is not timed; the timed block includes the targets' zero-shot passes."""
    from nncift.influence import InfluenceSpec, build_influence
    from nncift.settings.stages import RunContext

    function = build_influence(InfluenceSpec("delift", run=RunContext(device="cpu")), progress=False)
    work = ROOT / "bench" / "out" / "scoring" / "delift-sample"
    work.mkdir(parents=True, exist_ok=True)
    function.prepare(targets, candidates, work)
    function.compute_block(np.arange(2), np.arange(2))
    rows, cols = np.arange(2, len(targets)), np.arange(2, len(candidates))
    start = time.perf_counter()
    function.compute_block(rows, cols)
    return (time.perf_counter() - start) / (len(rows) * len(cols)), len(rows) * len(cols)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path)
    parser.add_argument("--phase")
    parser.add_argument("--run")
    parser.add_argument("--data")
    parser.add_argument("--targets")
    parser.add_argument("--out")
    parser.add_argument("--new", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=2_000)
    args = parser.parse_args()
    if args.phase:
        return _phase(args)
    from nncift.data.records import read_many
    from nncift.models.embeddings import embed_records
    from nncift.selection import facility_location
    from nncift.selection.subset_quality import ObjectiveSpec, objective_on

    records, _ = read_many(sorted(str(p) for p in P3.glob("*.jsonl")))
    order = np.random.default_rng(0).permutation(len(records))
    take = iter(order)
    pick = lambda n: [records[next(take)] for _ in range(n)]  # noqa: E731
    targets, pool, distinct, added = pick(1000), pick(2000), pick(args.distinct), pick(200)
    work = ROOT / "bench" / "out" / "scoring"
    work.mkdir(parents=True, exist_ok=True)
    files = {name: work / f"{name}.jsonl" for name in ("targets", "pool", "distinct", "many", "added")}
    _write(files["targets"], targets)
    _write(files["pool"], pool)
    _write(files["distinct"], distinct)
    _write(files["added"], added)
    _write(files["many"], [distinct[i % len(distinct)] for i in range(args.new)])
    load_start = os.getloadavg()[0]
    runs = {name: work / name for name in ("run-targets", "score-cold", "score-many", "run-pool", "added-run", "fresh-union")}
    for path in runs.values():
        subprocess.run(["rm", "-rf", str(path)], check=True)
    _run("select", data=str(files["pool"]), targets=str(files["targets"]), out=str(runs["run-targets"]))
    cold_cache = work / "cold-cache"
    subprocess.run(["rm", "-rf", str(cold_cache)], check=True)
    cold_cache.mkdir()
    (cold_cache / "models").symlink_to(Path(os.environ.get("NNCIFT_CACHE", Path.home() / ".cache" / "nncift")) / "models")
    env = {"NNCIFT_CACHE": str(cold_cache)}
    cold = _run("score", env, run=str(runs["run-targets"]), data=str(files["distinct"]), out=str(runs["score-cold"]))
    many = _run("score", env, run=str(runs["run-targets"]), data=str(files["many"]), out=str(runs["score-many"]))
    per_pair, n_pairs = _delift_seconds_per_pair(targets[:10], distinct[:18])

    base = _run("select", env, data=str(files["pool"]), out=str(runs["run-pool"]))
    os.environ.update(env)  # the same (fresh) embedding cache as the phases: the new records are not in it yet
    cold_start = time.perf_counter()
    embed_records(added, progress=False)  # warm cache for both arms: the same embedding cost for each, timed here
    added_embedding = time.perf_counter() - cold_start
    grown = _run("add", env, run=str(runs["run-pool"]), data=str(files["added"]), out=str(runs["added-run"]))
    fresh = _run("select", env, data=f"{files['pool']}+{files['added']}", out=str(runs["fresh-union"]))
    union = pool + added
    embeddings = embed_records(union, progress=False)
    exact = (embeddings @ embeddings.T + 1.0) / 2.0
    spec = ObjectiveSpec("fl", len(grown["indices"]))
    best = facility_location(exact, len(grown["indices"]))
    rng = np.random.default_rng(0)
    randoms = [objective_on(exact, rng.choice(len(union), len(grown["indices"]), replace=False), spec) for _ in range(20)]
    f_add, f_fresh, f_best, f_rand = (objective_on(exact, np.array(grown["indices"]), spec), objective_on(exact, np.array(fresh["indices"]), spec),
                                      best.objective, float(np.mean(randoms)))
    fresh_pairs = fresh["cost"]["influence_evaluations_made"]

    stage = lambda result, name: result["cost"]["seconds_by_stage"].get(name, 0.0)  # noqa: E731
    per_record_cold = stage(cold, "embeddings") / cold["records"]
    lines = [
        "# Scoring new data and growing a selection (`nncift score`, `select --add`)", "",
        f"- command: `{command_line('bench/bench_scoring.py')}`",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {cpu_name()}, {os.cpu_count()} cores; "
        f"1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end",
        f"- data: a seeded shuffle of the P3 mix in ../shared/data/p3 ({len(records):,} records): 1,000 targets, a 2,000-record pool, "
        f"{args.distinct:,} distinct new records, 200 records to add",
        "- the finished run: DELIFT-SE, FL with the 1,000 targets, u = 0.05, budget 0.1, two-tower network, bundled all-MiniLM-L6-v2",
        "", "## Scoring new records against the 1,000 targets", "",
        "| step | records | seconds | records/s | peak memory (MiB) |", "|---|---:|---:|---:|---:|",
        f"| embeddings, cold (empty cache) | {cold['records']:,} distinct | {stage(cold, 'embeddings'):.1f} | {1 / per_record_cold:,.0f} | {cold['peak_mib']:,.0f} |",
        f"| embeddings, cold, extrapolated per record | {args.new:,} | {per_record_cold * args.new:,.0f} | {1 / per_record_cold:,.0f} | (extrapolated) |",
        f"| embeddings, cached (rows cycle through the {args.distinct:,} texts) | {many['records']:,} | {stage(many, 'embeddings'):.1f} | "
        f"{many['records'] / max(stage(many, 'embeddings'), 1e-9):,.0f} | |",
        f"| prediction (1,000 × {many['records']:,} pairs) | {many['records']:,} | {stage(many, 'prediction'):.1f} | "
        f"{many['records'] / max(stage(many, 'prediction'), 1e-9):,.0f} | |",
        f"| aggregation (FL value, gain over the run's subset, top-5 targets) | {many['records']:,} | {stage(many, 'aggregation'):.1f} | "
        f"{many['records'] / max(stage(many, 'aggregation'), 1e-9):,.0f} | |",
        f"| whole `score` process, cached | {many['records']:,} | {many['wall']:.1f} | {many['records'] / many['wall']:,.0f} | {many['peak_mib']:,.0f} |",
        "", f"Language-model loads during scoring: {many['cost']['counters']['language_model_loads']} (cold run: {cold['cost']['counters']['language_model_loads']}); "
        f"influence evaluations: {many['cost']['influence_evaluations_made']}.", "",
        f"**Baseline, exact DELIFT with SmolLM2** (one forward pass per pair): {per_pair:.3f} s per pair measured on {n_pairs} pairs "
        f"(8 targets × 16 of the new records, after an untimed 2 × 2 block; the timed block includes its targets' zero-shot passes) in this run; 1,000 × {args.new:,} pairs would take {per_pair * 1000 * args.new / 3600 / 24:,.0f} days "
        f"(extrapolated), against {per_record_cold * args.new + stage(many, 'prediction') + stage(many, 'aggregation'):,.0f} s for `score` with cold "
        f"embeddings (extrapolated) — a ratio of {per_pair * 1000 * args.new / (per_record_cold * args.new + stage(many, 'prediction') + stage(many, 'aggregation')):,.0f}×. "
        "For DELIFT-SE itself, scoring costs the same embeddings as the exact function: the network saves nothing there.",
        "", "## `select --add` of 10% new records vs a fresh selection on the union", "",
        "Run: 2,000 pool records representing themselves (FL), u = 0.05, budget 0.1 → 200 picks; then 200 new records, budget 0.1 of the "
        f"2,200-record union = 220 picks. The 200 new records' embeddings ({added_embedding:.1f} s, cold) were computed before both arms "
        "(each would pay them once); the old pool's were cached by the first run.", "",
        "| selection | seconds | influence evaluations | FL objective on the exact union matrix | (f − random) / (exact greedy − random) |",
        "|---|---:|---:|---:|---:|",
        f"| `select --add` (keeps the 200 picks, adds 20) | {grown['wall']:.1f} | 0 | {f_add:.2f} | {(f_add - f_rand) / (f_best - f_rand):.3f} |",
        f"| fresh `select` on the union | {fresh['wall']:.1f} | {fresh_pairs:,} | {f_fresh:.2f} | {(f_fresh - f_rand) / (f_best - f_rand):.3f} |",
        f"| exact greedy on the exact union matrix (reference) | | {len(union) ** 2:,} | {f_best:.2f} | 1 |",
        f"| random subsets of 220 (mean of 20) | | | {f_rand:.2f} | 0 |",
        "", f"Overlap of the two subsets: {len(set(grown['indices']) & set(fresh['indices']))} of {len(grown['indices'])}. "
        f"With DELIFT (SmolLM2, {per_pair:.3f} s per pair) the fresh run's {fresh_pairs:,} influence evaluations would add about "
        f"{fresh_pairs * per_pair / 60:,.0f} minutes; `--add` makes none. The first run took {base['wall']:.1f} s.",
    ]
    publish("\n".join(lines) + "\n", args.output)


if __name__ == "__main__":
    main()
