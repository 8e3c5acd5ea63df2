"""A million records, pool-as-targets: the neighbour graph of a trained network's predictions and sparse facility location.

Records: real all-MiniLM-L6-v2 embeddings of the 2,016 P3 pool records of the `less-p3-2k` benchmark matrix,
repeated with Gaussian noise (each copy's cosine to its source about 0.9) and re-normalised, to ``--n`` records
("real embeddings repeated with noise"). Network: the default two-tower network trained on that matrix's LESS
labels (block design, u = 0.05, seed 0; forced to ship the trained network so that the prediction is an inner
product). Pool-as-targets: rows = columns = the n records, self-pair terms on the diagonal.

Steps, each timed, with the process's peak resident memory after it:

1. the inner-product form of the network's predictions (row and column features, no n × n matrix);
2. the neighbour graph: FAISS HNSW over the column features, K per row, exact rescoring, recall@K measured
   against exact neighbours on 1,000 sampled rows;
3. sparse lazy-greedy facility location at the budget;
4. on a subsample of ``--sub`` records: FL on the FAISS graph against FL on the exact graph (blocked products),
   both objectives evaluated on the exact graph.

Needs the `less-p3-2k` matrix (`bench/matrices.py less-p3-2k`, about 70 minutes) and ``faiss-cpu``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import publish, report_head  # noqa: E402


def peak_gib() -> float:
    """Peak resident memory of this process so far, GiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def noisy_copies(base: np.ndarray, n: int, noise: float, seed: int, sources: np.ndarray | None = None) -> np.ndarray:
    """float32 (n, d): rows of ``base`` (``sources``, or drawn with replacement), Gaussian noise of norm about ``noise``
    added, normalised."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), np.float32)
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        rows = rng.integers(0, len(base), stop - start) if sources is None else sources[start:stop]
        part = base[rows] + rng.standard_normal((stop - start, base.shape[1]), dtype=np.float32) * (noise / np.sqrt(base.shape[1]))
        out[start:stop] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out


def trained_network(seed: int):
    """The two-tower network trained on less-p3-2k's labels (block, u = 0.05), forced to ship the trained network."""
    import dataclasses

    from bench_network import setup

    from nncift.influence import influence_class
    from nncift.models.embeddings import embed_records
    from nncift.network.fitting import FitSettings, fit_pairwise
    from nncift.run.layout import plan_layout, resolve_sampling
    from nncift.settings.stages import NetworkSettings, SamplingSettings

    bench = setup("less-p3-2k")
    spec = bench.spec
    sampling = resolve_sampling(SamplingSettings(design="block", blocks=1, fraction=0.05), influence_class("less"), len(spec.pool),
                                len(spec.targets), len(bench.rows))
    layout = plan_layout(spec.pool, spec.targets, bench.objective_name, sampling, np.random.default_rng(seed))
    rows, cols = embed_records(bench.rows, progress=False), embed_records(spec.pool, progress=False)
    labels = np.where(layout.labelled(), bench.true[np.ix_(layout.seen_rows, layout.seen_cols)], np.nan)
    fit = dataclasses.replace(FitSettings(NetworkSettings(fallback=False, seed=seed)), force="network")
    network, report = fit_pairwise(rows[layout.seen_rows], cols[layout.seen_cols], labels, fit, objective="topk", held_out="columns")
    return network, np.asarray(cols, np.float32), report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--neighbours", type=int, default=16)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--noise", type=float, default=0.45, help="norm of the noise added to each copy")
    parser.add_argument("--sub", type=int, default=100_000, help="subsample for the exact-graph comparison (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--index", choices=("hnsw", "ivf"), default="hnsw", help="the FAISS index of the graph")
    parser.add_argument("--ef-search", type=int, default=None, help="HNSW search breadth (default: the library's)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)

    from nncift.network.towers import inner_product_form
    from nncift.selection.sparse import ExactValues, exact_graph, graph_objective, sparse_facility_location
    from nncift.selection.sparse_index import faiss_graph

    rows_out: list[tuple[str, float, float, str]] = []
    started = time.perf_counter()
    network, base, report = trained_network(args.seed)
    rows_out.append(("train the network (less-p3-2k, u = 0.05)", time.perf_counter() - started, peak_gib(), f"{report.n_labelled} labelled pairs"))
    tick = time.perf_counter()
    records = noisy_copies(base, args.n, args.noise, args.seed)
    own = np.arange(args.n, dtype=np.int64)
    form = inner_product_form(network, records, records, self_cols=own)
    del records
    rows_out.append(("inner-product form", time.perf_counter() - tick, peak_gib(), f"{form.row_features.shape[1]} features a side"))
    print(rows_out[-1], flush=True)
    tick = time.perf_counter()
    exact = ExactValues(self_cols=own, self_terms=form.self_terms)
    graph = faiss_graph(form.row_features, form.col_features, args.neighbours, exact=exact, threads=args.threads, seed=args.seed,
                        index=args.index, ef_search=args.ef_search)
    rows_out.append((f"FAISS {args.index.upper()} graph, K = {args.neighbours}", time.perf_counter() - tick, peak_gib(), f"recall@K {graph.recall:.3f}"))
    print(rows_out[-1], flush=True)
    tick = time.perf_counter()
    chosen = sparse_facility_location(graph, args.budget)
    rows_out.append((f"sparse FL, budget {args.budget:g}", time.perf_counter() - tick, peak_gib(), f"{len(chosen.indices):,} picks"))
    print(rows_out[-1], flush=True)
    total = sum(r[1] for r in rows_out[1:])
    comparison = ""
    if args.sub:
        m = args.sub
        del graph
        tick = time.perf_counter()
        sub_exact = ExactValues(self_cols=own[:m], self_terms=form.self_terms[:m])
        exact_sub = exact_graph(form.row_features[:m], form.col_features[:m], args.neighbours, exact=sub_exact)
        seconds_exact = time.perf_counter() - tick
        faiss_sub = faiss_graph(form.row_features[:m], form.col_features[:m], args.neighbours, exact=sub_exact, threads=args.threads, seed=args.seed,
                                index=args.index, ef_search=args.ef_search)
        picks_exact = sparse_facility_location(exact_sub, args.budget).indices
        picks_faiss = sparse_facility_location(faiss_sub, args.budget).indices
        ratio = graph_objective(exact_sub, picks_faiss) / graph_objective(exact_sub, picks_exact)
        comparison = (f"Subsample of {m:,} records: the exact graph took {seconds_exact:,.0f} s; FL on the FAISS graph reaches "
                      f"**{ratio:.4f}** of FL on the exact graph's objective (both evaluated on the exact graph; target ≥ 0.99); "
                      f"recall@K of the subsample's index {faiss_sub.recall:.3f}.")
    table = ["| step | seconds | peak resident GiB (process) | note |", "|---|---:|---:|---|"]
    table += [f"| {name} | {seconds:,.1f} | {gib:.2f} | {note} |" for name, seconds, gib, note in rows_out]
    lines = [*report_head(f"A million records: neighbour graph and sparse facility location ({args.n:,} records)", "bench/bench_million.py", started),
             f"FAISS threads: {args.threads}.", "",
             (f"Records: real MiniLM embeddings of the 2,016 less-p3-2k pool records repeated with noise (norm {args.noise}) to "
              f"{args.n:,}; pool-as-targets (rows = columns, self-pair terms). Network: two-tower trained on less-p3-2k's LESS labels "
              f"(block, u = 0.05), forced to ship the trained network (an inner product). No n × n array or file anywhere."), "",
             *table, "",
             f"Graph + selection: **{total / 60:,.1f} minutes** (target ≤ 30), peak resident memory **{peak_gib():.2f} GiB** (target ≤ 8; "
             f"includes the network's training data and the embedder).", "", comparison]
    publish("\n".join(lines) + "\n", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
