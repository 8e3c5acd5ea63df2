"""InfluenceNetwork fidelity on DELIFT labels: n × n real records, the full matrix computed.

``nncift.fidelity.run_fidelity`` with ``influence="delift"`` on ``--n`` records drawn at random
(seeded) from a real data set: the full DELIFT matrix (pool = targets; bundled SmolLM2-135M-Instruct,
fp32, prefix reuse) is computed once and scaled to [0, 1] by its global min–max; for each fraction
u the network is trained on Q1 and evaluated per quadrant against the mean and random baselines,
with Spearman's ρ on Q4. Then, per fraction, facility location (budget ``--budget``) picks a subset
from the true scaled matrix and from the predicted one (the network's matrix with the exact Q1
values kept, as ``nncift select`` does), and the overlap |A_true ∩ A_pred| / k is reported beside
the overlap a random subset of the same size has on average (k / n).

Run (on a shared machine, see bench_delift.py on threads): ``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_delift_fidelity.py --n 200 --output bench/results/delift_fidelity.md``
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

from benchlib import command_line, cpu_name, publish  # bench/ is on sys.path when a script runs

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_en_demo.json")
    parser.add_argument("--n", type=int, default=200, help="records (the matrix is n × n)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1])
    parser.add_argument("--sampled", type=int, nargs="+", default=None,
                        help="instead of --fractions: sampled records per fraction (u = sampled / n), e.g. 10 20 = "
                             "the Q1 sizes of u = 0.05 and 0.1 on 200 records, for a smaller n")
    parser.add_argument("--block-size", type=int, default=16, help="matrix block (resume granularity)")
    parser.add_argument("--min-sampled", type=int, default=10)
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/out/delift_fidelity"), help="run folder (kept: a rerun resumes the matrix)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="causal LM (default the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown report here")
    args = parser.parse_args(argv)

    from nncift.config import FidelitySettings
    from nncift.data import read_records
    from nncift.embed import embed_records
    from nncift.fidelity import format_table, run_fidelity
    from nncift.network import predict_pairwise, train_pairwise
    from nncift.pipeline import network_settings, sample_indices
    from nncift.selection import budget_to_count, facility_location

    if args.sampled:
        args.fractions = [round(count / args.n, 4) for count in args.sampled]
    records, _ = read_records(args.data)
    pick = np.sort(np.random.default_rng(args.seed).choice(len(records), args.n, replace=False))
    pool = [records[i] for i in pick]
    settings = FidelitySettings(influence="delift", model=args.model, fractions=tuple(args.fractions), min_sampled=args.min_sampled,
                                budget=args.budget, seed=args.seed, device="cpu", quiet=True,
                                block_size=args.block_size)
    start = time.perf_counter()
    result = run_fidelity(settings, args.out, pool=pool, influence_options={"max_length": args.max_length})
    seconds = time.perf_counter() - start
    raw = np.load(args.out / "full.npy").astype(np.float64)
    scaled = (raw - raw.min()) / (raw.max() - raw.min())
    embeddings = embed_records(pool, model=settings.embedder, device="cpu", progress=False)
    k = budget_to_count(args.budget, args.n)
    true_pick = set(facility_location(scaled, args.budget).indices.tolist())
    overlap_rows = []
    for fraction in args.fractions:
        seen = sample_indices(args.n, fraction, args.min_sampled, np.random.default_rng(args.seed))
        labels = scaled[np.ix_(seen, seen)].astype(np.float32)
        network, _ = train_pairwise(embeddings[seen], embeddings[seen], labels, network_settings(settings))
        predicted = predict_pairwise(network, embeddings, embeddings).astype(np.float64)
        predicted[np.ix_(seen, seen)] = labels
        predicted_pick = set(facility_location(np.maximum(predicted, 0.0), args.budget).indices.tolist())
        overlap_rows.append(f"| {fraction:.4g} | {len(seen)} | {k} | {len(true_pick & predicted_pick) / k:.3f} | {k / args.n:.3f} |")

    import json

    cost = json.loads((args.out / "fidelity.json").read_text())["cost"]
    lines = ["# Fidelity of the InfluenceNetwork on DELIFT labels", "",
             f"Command: `{command_line('bench/bench_delift_fidelity.py')}`", "",
             f"Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}  ",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores shared with other jobs (load average at the end {os.getloadavg()[0]:.1f})", "",
             f"{args.n} × {args.n} full DELIFT matrix ({args.n ** 2:,} pairs; pool = targets) of {args.n} records drawn at random "
             f"(seed {args.seed}) from `{args.data.name}`; model `{args.model}` fp32, prefix reuse, max_length {args.max_length}. "
             f"Labels: raw utilities min–max scaled to [0, 1] over the whole matrix (raw range {raw.min():.4f} … {raw.max():.4f}, "
             f"mean {raw.mean():.4f}, std {raw.std():.4f}). Network: MiniLM embeddings (d = 384), one hidden layer of 100, 20 epochs; "
             f"at least {args.min_sampled} sampled rows/columns. Run time {seconds:,.0f} s "
             f"(stages: {', '.join(f'{k} {v:,.0f} s' for k, v in cost['seconds_by_stage'].items())}).", "",
             "Per quadrant (Q1 = training, Q4 = unseen × unseen), MSE on scaled labels:", "",
             format_table(result.rows).rstrip(), "",
             f"Facility location (budget {args.budget} = {k} of {args.n}) on the true matrix versus on the predicted matrix:", "",
             "| u | sampled | k | overlap of the two subsets | expected overlap of a random subset |", "|---|---:|---:|---:|---:|",
             *overlap_rows]
    publish("\n".join(lines) + "\n", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
