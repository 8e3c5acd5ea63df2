"""Network training on minibatches or a bounded sample of the labels vs full batch on all of them (the million-records issue, item 5).

Training time of the two-tower network grows with the labelled pairs (full-batch steps over the labelled block, for
every fold × grid point). ``network.max_training_pairs`` validates and trains on a seeded sample of the labelled
records whose pairs fit the cap. This benchmark measures, at ``--labelled``² labelled pairs (default 1,000² = 1,000,000),
the fit's time and what it ships for each cap, against training on all labels in the same run, and judges every
predictor on pairs that no fit has seen: the ``--cold`` unlabelled records × themselves (held-out criterion of
:func:`nncift.network.validation.selection_criterion`: per-row Spearman and f_gain of facility location at 30%).

Data: real MiniLM embeddings (the bundled all-MiniLM-L6-v2) of P3 records from ``../shared/data/p3`` (one file per
template, read in name order, ``--labelled + --cold`` records). Labels: a synthetic influence function with structure
the cosine does not contain, so that there is something to learn (0.3·cosine + 0.5·tanh(3·row·u) + 0.8·tanh(3·col·v) +
0.4·a rank-8 interaction of tanh features + 0.05 noise, seeded); DELIFT-SE, whose labels are the cosine itself, trains
nothing. Pool-as-targets layout: the labelled block is records × the same records (self-pairs on the diagonal).

``network.step_pairs`` instead trains every step on a seeded random sub-block of the labelled rows × columns (minibatches), so
a step costs the same at any label count while every label is used. Each ``--configs`` entry is ``CAP:STEP_PAIRS``; the first
(default: all labels, full batch) is the baseline the others are compared with.

Run: ``NNCIFT_BENCH_OUT=~/.cache/nncift/bench OMP_NUM_THREADS=1 .venv/bin/python bench/bench_training_sample.py --output bench/results/training_sample.md``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from benchlib import publish, report_head
from less_data import SHARED_DATA


def synthetic_influence(embeddings: np.ndarray, seed: int) -> np.ndarray:
    """A learnable influence matrix over the records (rows = columns): cosine, row and column effects, a rank-8 interaction, noise."""
    rng = np.random.default_rng(seed)
    d = embeddings.shape[1]
    u, v = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.standard_normal((d, 8)), rng.standard_normal((d, 8))
    interaction = np.tanh(2 * embeddings @ a) @ np.tanh(2 * embeddings @ b).T / 8
    return (0.3 * embeddings @ embeddings.T + 0.5 * np.tanh(3 * embeddings @ u)[:, None] + 0.8 * np.tanh(3 * embeddings @ v)[None, :]
            + 0.4 * interaction + 0.05 * rng.standard_normal((len(embeddings), len(embeddings))))


def p3_texts(count: int) -> list:
    """The first ``count`` records of the P3 template files, read in name order."""
    from nncift.data.records import read_records

    records = []
    for path in sorted((SHARED_DATA / "p3").glob("*.jsonl")):
        records.extend(read_records(path)[0])
        if len(records) >= count:
            break
    return records[:count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labelled", type=int, default=1000, help="labelled records (rows = columns): labelled pairs = this squared")
    parser.add_argument("--cold", type=int, default=500, help="unlabelled records on which every predictor is judged")
    parser.add_argument("--configs", nargs="+", default=["0:0", "0:65536", "0:32768", "250000:0"],
                        help="CAP:STEP_PAIRS per fit: network.max_training_pairs (0 = all labels) and network.step_pairs (0 = full batch); "
                             "the first is the baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)

    from nncift.models.embeddings import embed_records
    from nncift.network.fitting import FitSettings, fit_pairwise
    from nncift.network.paper import predict_pairwise
    from nncift.network.validation import selection_criterion
    from nncift.settings.stages import NetworkSettings

    started = time.perf_counter()
    records = p3_texts(args.labelled + args.cold)
    tick = time.perf_counter()
    embeddings = embed_records(records, progress=True)  # nncift's embedding cache: a re-run reads them back
    embed_seconds = time.perf_counter() - tick
    order = np.random.default_rng(args.seed).permutation(len(records))
    seen, cold = order[: args.labelled], order[args.labelled:]
    true = synthetic_influence(embeddings, args.seed)
    rows = []
    for config in args.configs:
        cap, step_pairs = (int(v) for v in config.split(":"))
        settings = FitSettings(NetworkSettings(seed=args.seed, max_training_pairs=cap, step_pairs=step_pairs))
        tick = time.perf_counter()
        network, report = fit_pairwise(embeddings[seen], embeddings[seen], true[np.ix_(seen, seen)], settings, self_cols=np.arange(len(seen)))
        seconds = time.perf_counter() - tick
        predicted = predict_pairwise(network, embeddings[cold], embeddings[cold], self_cols=np.arange(len(cold))).astype(np.float64)
        held_out = selection_criterion(true[np.ix_(cold, cold)], predicted, 0.3, "fl", args.seed)
        rows.append((cap, step_pairs, report, seconds, held_out))
        print(f"cap {cap}, step pairs {step_pairs}: {seconds:.1f} s, {report.chosen}, criterion {held_out['criterion']:.4f}", flush=True)
    base = rows[0][4]["criterion"]
    header = ("| max_training_pairs | step_pairs | pairs trained on | fit s | shipped | steps | held-out criterion | Δ vs the first row | "
              "per-row ρ | f_gain (FL 30%) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for cap, step_pairs, report, seconds, held_out in rows:
        lines.append(f"| {cap or 'all'} | {step_pairs or 'full batch'} | {report.n_training:,} of {report.n_labelled:,} | {seconds:.1f} | "
                     f"{report.chosen} | {report.steps} | "
                     f"{held_out['criterion']:.4f} | {held_out['criterion'] - base:+.4f} | {held_out['ranking_spearman']:.3f} | {held_out['f_gain']:.3f} |")
    text = [*report_head("Network training on minibatches or a bounded sample of the labels", "bench/bench_training_sample.py", started),
            "Torch runs on one thread (as in every fit).", "",
            f"{args.labelled:,} labelled P3 records (pool-as-targets: {args.labelled ** 2:,} labelled pairs), judged on {args.cold:,} other "
            f"records × themselves; embeddings of all {len(records):,} records in {embed_seconds:.0f} s (0 s: read from nncift's embedding cache); synthetic learnable labels "
            "(see the script).", "", *lines]
    publish("\n".join(text) + "\n", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
