"""Recall of the FAISS neighbour indexes against their search breadth (HNSW ``efSearch``, IVF ``nprobe``), on the records of
bench_million.py.

The same records as ``bench/bench_million.py`` (real MiniLM embeddings of the less-p3-2k pool repeated with noise,
the inner-product form of the two-tower network trained on its LESS labels). Each index is built once per size as
``nncift.selection.sparse_index`` builds it; each ``efSearch`` (HNSW) or ``nprobe`` (IVF) then searches every row's K
neighbours (timed) and its recall@K is measured against exact blocked products on 1,000 sampled rows. Needs the `less-p3-2k` matrix and ``faiss-cpu``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_million import noisy_copies, peak_gib, trained_network  # noqa: E402
from benchlib import publish, report_head  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[200_000])
    parser.add_argument("--ef-search", type=int, nargs="*", default=[128, 256, 512, 1024])
    parser.add_argument("--nprobe", type=int, nargs="*", default=[0, 16, 32], help="IVF lists probed (0: the library's default)")
    parser.add_argument("--neighbours", type=int, default=16)
    parser.add_argument("--noise", type=float, default=0.45)
    parser.add_argument("--search-rows", type=int, default=0, help="time the search on this many rows and scale to all (0: all rows)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)

    import faiss

    from nncift.network.towers import inner_product_form
    from nncift.selection.sparse import feature_arrays
    from nncift.selection.sparse_index import _SEARCH_ROWS, _build_index, _recall, _search

    faiss.omp_set_num_threads(args.threads)
    network, base, _ = trained_network(args.seed)
    table = ["| records | index | breadth | build s | search s (all rows; scaled from --search-rows when given) | recall@K (1,000 rows) | peak GiB |", "|---:|---|---|---:|---:|---:|---:|"]
    for n in args.sizes:
        records = noisy_copies(base, n, args.noise, args.seed)
        form = inner_product_form(network, records, records, self_cols=np.arange(n, dtype=np.int64))
        del records
        rows, cols = feature_arrays(form.row_features, form.col_features)
        for kind, breadths in (("hnsw", args.ef_search), ("ivf", args.nprobe)):
            if not breadths:
                continue
            tick = time.perf_counter()
            index = _build_index(cols, kind, args.neighbours, args.seed)
            built = time.perf_counter() - tick
            default_probe = index.nprobe if kind == "ivf" else 0
            for breadth in breadths:
                if kind == "hnsw":
                    index.hnsw.efSearch = breadth
                    label = f"efSearch {breadth}"
                else:
                    index.nprobe = breadth or default_probe
                    label = f"nprobe {index.nprobe} of {index.nlist}" + (" (default)" if index.nprobe == default_probe else "")
                timed = rows[: args.search_rows] if args.search_rows else rows
                tick = time.perf_counter()
                for start in range(0, len(timed), _SEARCH_ROWS):
                    _search(index, timed[start:start + _SEARCH_ROWS], args.neighbours, kind == "hnsw")
                searched = (time.perf_counter() - tick) * len(rows) / len(timed)
                recall = _recall(index, rows, cols, args.neighbours, kind == "hnsw", 1000, args.seed)
                table.append(f"| {n:,} | {kind} | {label} | {built:,.0f} | {searched:,.0f} | {recall:.3f} | {peak_gib():.2f} |")
                print(table[-1], flush=True)
            del index
        del form, rows, cols
    lines = [*report_head("FAISS search breadth against recall@K (records of bench_million.py)", "bench/bench_recall.py"),
             f"FAISS threads: {args.threads}.", "",
             f"K = {args.neighbours}; HNSW M = 32, efConstruction = 80; IVF 4·√n lists (k-means on 64 points a list); build once per size and index.", "", *table]
    publish("\n".join(lines) + "\n", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
