"""Cost of NN-CIFT + DELIFT versus DELIFT on all pairs (pool = targets = ``--n`` real records).

- **NN-CIFT + DELIFT, measured end to end**: ``run_select`` with ``influence="delift"``,
  ``fraction=0.05`` and defaults otherwise (bundled SmolLM2-135M-Instruct fp32 on CPU, prefix reuse,
  MiniLM embeddings computed from scratch in an empty embedding cache, InfluenceNetwork 20 epochs,
  prediction of the whole matrix, facility location with budget 0.3). Wall time of the whole call,
  with the ledger's stages.
- **DELIFT on all pairs, extrapolated**: N + N² LM sequences (N zero-shot, N² one-shot) are far too
  many to run here. Their time is extrapolated from the Q1 block that the NN-CIFT run computed with
  the same code and settings: a random sample of ``round(0.05·N)`` targets × as many candidates
  (seeded; 2,500 pairs for N = 1,000), timed inside DELIFT (``milliseconds_with_example`` per pair,
  ``milliseconds_without_example`` per target). Full = model load + N·t_without + N²·t_pair +
  facility location on an N × N matrix (timed here). The full run would use blocks of 64 × 64
  pairs (the prefix of a candidate amortised over 64 targets instead of 50), so the per-pair time
  of the sample is, if anything, slightly pessimistic for the full matrix.

Run (on a shared machine, see bench_delift.py on threads): ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_delift_cost.py --n 1000 --output bench/results/delift_cost.md``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchlib import publish, report_head  # bench/ is on sys.path when a script runs


def _isolated_embedding_cache() -> Path:
    """A fresh NNCIFT_CACHE (embeddings computed from scratch) that still sees the converted bundled LM."""
    from nncift.models.loading import bundled_lm_path, cache_dir

    bundled_lm_path()
    root = Path(tempfile.mkdtemp(prefix="nncift-bench-cache-"))
    (root / "models").symlink_to(cache_dir() / "models")
    os.environ["NNCIFT_CACHE"] = str(root)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_en_demo.json")
    parser.add_argument("--n", type=int, default=1000, help="pool size (the file's first records; alpaca_en_demo has 999)")
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=Path("bench/out/delift_cost"), help="run folder (removed first)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="causal LM (default the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown report here")
    args = parser.parse_args(argv)
    _isolated_embedding_cache()
    import torch as _torch

    threads_at_start = _torch.get_num_threads()

    import shutil

    import numpy as np
    import torch

    from nncift.data.records import read_records
    from nncift.selection import facility_location
    from nncift.settings.stages import SelectSettings
    from nncift.steps.select import run_select

    records, _ = read_records(args.data)
    pool = records[: args.n]
    n = len(pool)
    shutil.rmtree(args.out, ignore_errors=True)
    settings = SelectSettings.build(influence="delift", model=args.model, **{"sampling.fraction": args.fraction}, device="cpu", quiet=True)
    start = time.perf_counter()
    result = run_select(settings, args.out, pool=pool)
    nncift_seconds = time.perf_counter() - start
    cost = result.manifest["cost"]
    counters = cost["counters"]
    sampled_rows, sampled_cols = result.manifest["sampled_rows"], result.manifest["sampled_cols"]
    pairs = sampled_rows * sampled_cols
    per_pair = counters["milliseconds_with_example"] / 1000 / pairs
    per_target = counters["milliseconds_without_example"] / 1000 / sampled_rows
    load = counters["milliseconds_model_load"] / 1000
    predicted = np.load(args.out / "predicted.npy")
    start = time.perf_counter()
    facility_location(np.maximum(predicted, 0.0), settings.selection.budget)
    selection_seconds = time.perf_counter() - start
    full_pairs = n * n
    full_seconds = load + n * per_target + full_pairs * per_pair + selection_seconds
    lm_seconds_nncift = (counters["milliseconds_model_load"] + counters["milliseconds_with_example"] + counters["milliseconds_without_example"]) / 1000

    def hours(seconds: float) -> str:
        return f"{seconds:,.0f} s ({seconds / 3600:,.1f} h)"

    lines = [*report_head("Cost: NN-CIFT + DELIFT vs DELIFT on all pairs", "bench/bench_delift_cost.py"),
             f"Cores shared with other jobs; torch {torch.__version__} ({threads_at_start} intra-op threads at the start, "
             f"{torch.get_num_threads()} at the end); model `{args.model}` fp32, prefix reuse, token budget 2048, max_length 2048.", "",
             f"Pool = targets = the first {n} records of `{args.data.name}`; NN-CIFT fraction u = {args.fraction} "
             f"(Q1 = {sampled_rows} × {sampled_cols} = {pairs:,} random pairs). **The DELIFT-on-all-pairs row is extrapolated**, "
             f"not run: from the per-pair and per-target times of those {pairs:,} random pairs (timed inside DELIFT, same run, same settings), "
             f"{per_pair:.3f} s per pair and {per_target:.3f} s per zero-shot target, plus model load ({load:.1f} s) and facility location "
             f"on the {n} × {n} matrix ({selection_seconds:.2f} s, timed).", "",
             "| method | LM sequences (zero-shot + one-shot) | influence entries from the LM | seconds | cost vs DELIFT on all pairs |",
             "|---|---:|---:|---:|---:|",
             f"| DELIFT, all pairs (**extrapolated** from {pairs:,} timed random pairs) | {n:,} + {full_pairs:,} | {full_pairs:,} | {hours(full_seconds)} | 100% |",
             f"| NN-CIFT + DELIFT, end to end (measured) | {sampled_rows:,} + {pairs:,} | {pairs:,} ({100 * pairs / full_pairs:.2f}%) | "
             f"{hours(nncift_seconds)} | {100 * nncift_seconds / full_seconds:.2f}% |", "",
             f"**Cost reduction: {100 * (1 - nncift_seconds / full_seconds):.2f}%** (paper: 77–99%; DELIFT 67,379 s → 215 s).", "",
             "NN-CIFT stages (from the run's cost ledger):", "",
             "| stage | seconds |", "|---|---:|"]
    for stage, seconds in cost["seconds_by_stage"].items():
        lines.append(f"| {stage} | {seconds:,.2f} |")
    lines += [f"| of which LM (model load + DELIFT passes, inside the sampled block) | {lm_seconds_nncift:,.2f} |",
              f"| total (wall, whole `run_select` call) | {nncift_seconds:,.2f} |", "",
              "LM cost counters of the NN-CIFT run: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counters.items())) + "."]
    publish("\n".join(lines) + "\n", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
