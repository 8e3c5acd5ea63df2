"""Sparse facility location on a K-nearest-neighbour graph vs dense lazy greedy, on a two-tower network's predictions.

Data: ``--n`` clustered synthetic unit vectors in ``--dim`` dimensions (cluster sizes from a Dirichlet draw, a shared
direction so that cross-cluster cosines are positive, within-cluster cosines about 0.7), standing in for MiniLM
sentence embeddings (computing real ones runs at 10–35 records/s on this machine). Network: a seeded *random*
two-tower network (``TwoTowerNetwork(dim, 128, 64)`` with every learned term non-zero: towers, offsets, self-pair
weights, label scale), not a trained one. Layout: the pool represents itself (rows = columns = the n records, the
self-pair term on the diagonal), plus a labelled block of ``--labelled`` rows × ``--labelled`` columns whose exact values
(prediction + noise) replace the prediction, in the dense matrix and in every graph.

Rows: ``dense`` predicts the n × n matrix (:func:`predict_pairwise`) and runs :func:`facility_location`; ``exact`` builds
the graph by blocked products of :func:`inner_product_form`'s features (:func:`exact_graph`); ``faiss-hnsw`` by the FAISS
index of :mod:`nncift.selection.sparse_index` (recall@K measured against exact neighbours on 1,000 rows); ``stochastic``
runs stochastic greedy (epsilon 0.01, seed 0) on the exact graph. Every selection is scored on the dense predicted
matrix (float64, clipped at 0): ratio = objective / dense lazy greedy's. Peak memory: the highest resident set size seen
while the step ran (sampled every 2 ms) minus the resident set size when it started.

``--records p3`` replaces both stand-ins with real ones: the MiniLM embeddings (nncift's default embedder, cached) of ``--n``
P3 records drawn with the seed from every template file in ../shared/data/p3 (about 30,000 records of 18 source data
sets), and the two-tower network trained on less-p3-2k's LESS labels (block, u = 0.05, forced to ship the network;
``bench_million.trained_network``). The labelled block then holds that network's prediction + noise (no exact values
exist for these pairs).

Run: ``.venv/bin/python bench/bench_sparse.py [--n 20000] [--records synthetic|p3] [--neighbours 16,32,64,128] [--output bench/results/sparse.md]``
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numba
import numpy as np
import torch
from benchlib import publish, report_head

from nncift.network.paper import predict_pairwise
from nncift.network.towers import TwoTowerNetwork, inner_product_form
from nncift.selection import facility_location
from nncift.selection.sparse import ExactValues, exact_graph, sparse_facility_location
from nncift.selection.sparse_index import faiss_graph


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="records (rows = columns)")
    parser.add_argument("--records", choices=("synthetic", "p3"), default="synthetic",
                        help="synthetic clustered vectors and a random network, or real P3 embeddings and a trained network")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--labelled", type=int, default=1000, help="rows and columns of the labelled block")
    parser.add_argument("--neighbours", default="16,32,64,128")
    parser.add_argument("--budgets", default="0.1,0.3")
    parser.add_argument("--no-faiss", action="store_true")
    parser.add_argument("--no-self-pairs", action="store_true", help="no self-pair term (rows as targets that are not pool records)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    return parser.parse_args(argv)


class PeakMemory:
    """Peak resident set size above the start while the block runs (a sampling thread, every 2 ms)."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak_mib = 0.0

    def rss(self) -> int:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * self.page

    def __enter__(self) -> "PeakMemory":
        self.start, self.top, self.done = self.rss(), 0, False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self) -> None:
        while not self.done:
            self.top = max(self.top, self.rss())
            time.sleep(0.002)

    def __exit__(self, *exc: Any) -> None:
        self.done = True
        self.thread.join()
        self.peak_mib = max(0, max(self.top, self.rss()) - self.start) / 2**20


def measured(step: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    """(``step(*args, **kwargs)``, seconds, peak MiB above the start)."""
    with PeakMemory() as memory:
        start = time.perf_counter()
        result = step(*args, **kwargs)
        seconds = time.perf_counter() - start
    return result, seconds, memory.peak_mib


def clustered_embeddings(n: int, d: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    sizes = rng.multinomial(n, rng.dirichlet(np.full(clusters, 0.5)))
    centres = rng.standard_normal((clusters, d)) + 0.6 * rng.standard_normal(d)
    x = np.repeat(centres, sizes, axis=0) + 0.65 * rng.standard_normal((n, d))
    x = x[rng.permutation(n)]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_network(d: int, seed: int) -> TwoTowerNetwork:
    net = TwoTowerNetwork(d, hidden=128, rank=64)
    generator = torch.Generator().manual_seed(seed)
    net.initialise(generator, alpha=1.0, beta=-0.2, self_bias=1.5)
    with torch.no_grad():
        for tower in (net.row_tower, net.col_tower):
            tower.out.weight.normal_(0.0, 0.15, generator=generator)
            tower.offset.weight.normal_(0.0, 0.05, generator=generator)
        net.self_weight.normal_(0.0, 0.05, generator=generator)
    net.set_label_scale(0.0, 0.1)
    return net.eval()


def p3_records(n: int, seed: int) -> list[Any]:
    """``n`` distinct P3 records drawn with ``seed`` from every template file of ../shared/data/p3 (records with an output)."""
    from less_data import SHARED_DATA

    from nncift.data.records import read_records

    files = [path for path in sorted((SHARED_DATA / "p3").glob("*.jsonl")) if path.stat().st_size]  # a few template files are empty
    if not files:
        raise SystemExit(f"real data not found in {SHARED_DATA / 'p3'} (../shared/data beside the checkout)")
    records = [record for path in files for record in read_records(path)[0]]
    if len(records) < n:
        raise SystemExit(f"{SHARED_DATA / 'p3'}: {len(records):,} records with an output, {n:,} asked")
    return [records[i] for i in np.sort(np.random.default_rng(seed).permutation(len(records))[:n])]


def data_and_network(args: argparse.Namespace, rng: np.random.Generator) -> tuple[np.ndarray, TwoTowerNetwork]:
    """The records' embeddings and the network: synthetic and random, or real (P3, MiniLM) and trained on less-p3-2k."""
    if args.records == "synthetic":
        return clustered_embeddings(args.n, args.dim, args.clusters, rng), random_network(args.dim, args.seed)
    from bench_million import trained_network

    from nncift.models.embeddings import embed_records

    embeddings = np.asarray(embed_records(p3_records(args.n, args.seed), progress=True), np.float32)
    network, _, _ = trained_network(args.seed)
    return embeddings, network.eval()


def dense_objective(matrix: np.ndarray, picks: np.ndarray, chunk: int = 2048) -> float:
    """``Σ_i max_{j∈A} max(s_ij, 0)`` in float64, by row blocks."""
    total = 0.0
    for start in range(0, matrix.shape[0], chunk):
        total += float(np.maximum(matrix[start:start + chunk][:, picks], 0).max(axis=1).astype(np.float64).sum())
    return total


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()
    rng = np.random.default_rng(args.seed)
    n, ks, budgets = args.n, [int(k) for k in args.neighbours.split(",")], [float(b) for b in args.budgets.split(",")]
    e, net = data_and_network(args, rng)
    self_cols = None if args.no_self_pairs else np.arange(n)
    form = inner_product_form(net, e, e, self_cols=self_cols)
    rows, cols = np.sort(rng.permutation(n)[: args.labelled]), np.sort(rng.permutation(n)[: args.labelled])
    block = form.row_features[rows] @ form.col_features[cols].T
    noise = 0.02 if args.records == "synthetic" else 0.1 * float(block.std())  # the trained network's scale is LESS's
    labels = (block + noise * rng.standard_normal((len(rows), len(cols)))).astype(np.float32)
    exact = ExactValues(self_cols, None if self_cols is None else form.self_terms, rows, cols, labels)
    facility_location(np.ones((40, 40), np.float32), 4)  # compile / load the numba kernels outside the timings
    sparse_facility_location(exact_graph(e[:40], e[:40], 4), 4)
    sparse_facility_location(exact_graph(e[:40], e[:40], 4), 4, stochastic=True)

    def predict_dense() -> np.ndarray:
        matrix = predict_pairwise(net, e, e, self_cols=self_cols)
        matrix[np.ix_(rows, cols)] = labels
        return matrix

    matrix, dense_s, dense_mib = measured(predict_dense)
    negative = float((matrix < 0).mean())
    table: list[dict[str, Any]] = []
    dense_objectives: dict[float, float] = {}
    entry: dict[str, Any] = {"method": "dense", "K": "n", "build_s": dense_s, "build_mib": dense_mib, "recall": None, "size_mib": matrix.nbytes / 2**20}
    for budget in budgets:
        chosen, seconds, mib = measured(facility_location, matrix, budget)
        dense_objectives[budget] = dense_objective(matrix, chosen.indices)
        entry[budget] = (seconds, mib, 1.0)
    table.append(entry)
    for k in ks:
        graphs = [("exact", *measured(exact_graph, form.row_features, form.col_features, k, exact=exact))]
        if not args.no_faiss:
            graphs.append(("faiss-hnsw", *measured(faiss_graph, form.row_features, form.col_features, k, exact=exact, index="hnsw")))
        for name, graph, build_s, build_mib in graphs:
            variants = [(name, False)] + ([("exact, stochastic", True)] if name == "exact" else [])
            for label, stochastic in variants:
                size = (graph.indptr.nbytes + graph.columns.nbytes + graph.values.nbytes) / 2**20
                entry = {"method": label, "K": k, "build_s": build_s, "build_mib": build_mib, "recall": graph.recall, "size_mib": size}
                for budget in budgets:
                    chosen, seconds, mib = measured(sparse_facility_location, graph, budget, stochastic=stochastic)
                    entry[budget] = (seconds, mib, dense_objective(matrix, chosen.indices) / dense_objectives[budget])
                table.append(entry)
                print(entry, flush=True)
    report = render(args, table, budgets, dense_objectives, negative, load_before)
    publish(report, args.output)


def describe_data(args: argparse.Namespace) -> str:
    if args.records == "p3":
        return (f"{args.n:,} real P3 records (drawn with seed {args.seed} from every template file of ../shared/data/p3), "
                "their MiniLM embeddings; the two-tower network trained on less-p3-2k's LESS labels (block, u = 0.05, forced "
                "to ship the network)")
    return (f"{args.n:,} clustered synthetic {args.dim}-d unit vectors ({args.clusters} clusters, seed {args.seed}; not real "
            "sentence embeddings); a seeded random two-tower network (hidden 128, rank 64, every learned term non-zero; not trained)")


def render(args: argparse.Namespace, table: list[dict[str, Any]], budgets: list[float], dense_objectives: dict[float, float],
           negative: float, load_before: tuple[float, float, float]) -> str:
    lines = [
        *report_head("Sparse facility location on a K-nearest-neighbour graph vs dense lazy greedy", "bench/bench_sparse.py"),
        f"Versions: numba {numba.__version__} with {numba.get_num_threads()} threads, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}; the cores are shared with other jobs.  ",
        "Load average (1, 5, 15 min) before: {:.1f}, {:.1f}, {:.1f}; after: {:.1f}, {:.1f}, {:.1f}".format(*load_before, *os.getloadavg()), "",
        f"Data: {describe_data(args)}; "
        + ("no self-pair term" if args.no_self_pairs else "the pool represents itself (self-pair term on the diagonal)")
        + f" and a {args.labelled} × {args.labelled} labelled block "
        f"(prediction + noise) replaces the prediction. {negative:.1%} of the predicted entries are negative (clipped at 0). Dense objective "
        + ", ".join(f"{b:g}: {dense_objectives[b]:.3f}" for b in budgets) + ".", "",
        "Ratio: the selection's FL objective on the dense predicted matrix / dense lazy greedy's. Build: the dense row predicts "
        "the n × n matrix; graph rows build the graph (exact: blocked products of the inner-product features; faiss-hnsw: "
        "index, search, exact rescoring, exact values, recall measurement). MiB: peak resident memory above the step's start "
        "(memory the process had already freed and reuses does not show: the selection's working copies are smaller than what "
        "the build freed); matrix/graph MiB: the size of the dense matrix or of the graph's CSR arrays.", "",
    ]
    header = "| method | K | build s | build MiB | matrix/graph MiB | recall@K |" + "".join(f" {b:g}: select s | {b:g}: MiB | {b:g}: ratio |" for b in budgets)
    lines += [header, "|" + "---|" * (6 + 3 * len(budgets))]
    for entry in table:
        recall = "" if entry["recall"] is None else f"{entry['recall']:.3f}"
        cells = "".join(f" {entry[b][0]:.2f} | {entry[b][1]:.0f} | {entry[b][2]:.4f} |" for b in budgets)
        lines.append(f"| {entry['method']} | {entry['K']} | {entry['build_s']:.1f} | {entry['build_mib']:.0f} | {entry['size_mib']:.1f} | {recall} |{cells}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
