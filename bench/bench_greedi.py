"""Two-round distributed greedy (GreeDi) vs single-machine sparse lazy greedy, on one K-nearest-neighbour graph.

Data: ``--n`` clustered synthetic unit vectors in ``--dim`` dimensions (bench_sparse.py's generator: Dirichlet cluster
sizes, a shared direction, within-cluster cosines about 0.7; not real sentence embeddings), the pool representing itself,
scores = cosines (what DELIFT-SE's prior predicts; 64 dimensions instead of 384 + 67 network features keep the exact
200,000² graph within minutes on 2 cores). The graph (K per row, exact by blocked products) is built once, in row blocks
by the local executor (:meth:`~nncift.execution.executor.Executor.neighbour_graph`).

Rows: ``single`` = :func:`~nncift.selection.sparse.sparse_facility_location` on the whole graph; ``GreeDi m`` =
:func:`~nncift.selection.distributed.greedi` with ``m`` seeded parts on the local executor (parts one after another).
Ratio = objective / single's (both FL on the same graph). Time: the whole GreeDi on one machine; critical path = what
``m`` workers would take (partitioning and the second round, plus the slowest part instead of all of them).

Ray (``--ray-n``, a smaller prefix of the same vectors): the graph and GreeDi's parts on a local Ray cluster
(``--ray-workers`` workers of 1 CPU) against the local executor: graph bit-identical, picks identical.

Run: ``OMP_NUM_THREADS=2 NUMBA_NUM_THREADS=2 .venv/bin/python bench/bench_greedi.py [--n 200000] [--ray-n 20000] [--output bench/results/greedi.md]``
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numba
import numpy as np
from bench_sparse import clustered_embeddings
from benchlib import publish, report_head

from nncift.execution.executor import Executor, LocalExecutor
from nncift.execution.graph_jobs import GraphSource
from nncift.selection.distributed import GraphPart, greedi, part_greedy
from nncift.selection.greedy import Selection
from nncift.selection.sparse import NeighbourGraph, exact_graph, sparse_facility_location


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000, help="records (rows = columns)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--neighbours", type=int, default=32)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--partitions", default="2,4,8")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ray-n", type=int, default=20_000, help="records of the Ray comparison (0: none)")
    parser.add_argument("--ray-workers", type=int, default=2)
    parser.add_argument("--output", type=Path)
    return parser.parse_args(argv)


class TimedParts:
    """Round 1 through an executor, each part timed on its own (in this process: one part after another)."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self.seconds: list[float] = []

    def __call__(self, parts: Sequence[GraphPart], cap: np.ndarray | None, initial: np.ndarray | None) -> list[Selection]:
        if not isinstance(self.executor, LocalExecutor):
            start = time.perf_counter()
            results = self.executor.greedy_parts(parts, cap, initial)
            self.seconds = [time.perf_counter() - start]
            return results
        results, self.seconds = [], []
        for part in parts:
            start = time.perf_counter()
            results.append(part_greedy(part, cap, initial))
            self.seconds.append(time.perf_counter() - start)
        return results


def timed(step: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = step(*args, **kwargs)
    return result, time.perf_counter() - start


def greedi_rows(graph: NeighbourGraph, single: Selection, args: argparse.Namespace, executor: Executor) -> list[dict[str, Any]]:
    """One row per partition count: GreeDi's objective ratio, times, winner."""
    rows = []
    for m in [int(p) for p in args.partitions.split(",")]:
        runner = TimedParts(executor)
        (chosen, info), seconds = timed(greedi, graph, args.budget, m, seed=args.seed, run_parts=runner)
        critical = seconds - sum(runner.seconds) + max(runner.seconds)
        rows.append({"m": m, "chosen": chosen, "ratio": chosen.objective / single.objective, "seconds": seconds, "critical": critical,
                     "parts_s": runner.seconds, "winner": info["winner"], "union": info["union"],
                     "distinct": len(set(chosen.indices.tolist())) == len(chosen.indices)})
        print({k: v for k, v in rows[-1].items() if k != "chosen"}, flush=True)
    return rows


def ray_comparison(vectors: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """Graph and GreeDi on Ray vs the local executor, on ``vectors``."""
    from nncift.execution.ray_cluster import RayExecutor

    source = GraphSource.features(vectors, vectors)
    local = LocalExecutor()
    graph, local_s = timed(local.neighbour_graph, source, args.neighbours, progress=False)
    single, single_s = timed(sparse_facility_location, graph, args.budget)
    local_rows = greedi_rows(graph, single, args, local)
    (executor, start_s) = timed(RayExecutor, workers=args.ray_workers, worker_cpus=1.0,
                                init_options={"include_dashboard": False, "log_to_driver": False, "configure_logging": False})
    with executor:
        executor.worker_pids()  # the pool up before the timings
        on_ray, ray_s = timed(executor.neighbour_graph, source, args.neighbours, progress=False)
        ray_rows = greedi_rows(graph, single, args, executor)
    identical = all(np.array_equal(getattr(graph, name), getattr(on_ray, name)) for name in ("indptr", "columns", "values"))
    same_picks = [a["chosen"].indices.tolist() == b["chosen"].indices.tolist() for a, b in zip(local_rows, ray_rows)]
    return {"n": len(vectors), "local_s": local_s, "ray_s": ray_s, "start_s": start_s, "identical": identical, "same_picks": same_picks,
            "local_rows": local_rows, "ray_rows": ray_rows, "single": single, "single_s": single_s}


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()
    vectors = clustered_embeddings(args.n, args.dim, args.clusters, np.random.default_rng(args.seed))
    warm = exact_graph(vectors[:200], vectors[:200], 8)  # compile / load the numba kernels outside the timings
    greedi(warm, 20, 2)
    graph, build_s = timed(LocalExecutor().neighbour_graph, GraphSource.features(vectors, vectors), args.neighbours, progress=False)
    single, single_s = timed(sparse_facility_location, graph, args.budget)
    print({"graph_s": build_s, "single_s": single_s, "objective": single.objective}, flush=True)
    rows = greedi_rows(graph, single, args, LocalExecutor())
    del graph
    ray = ray_comparison(vectors[: args.ray_n], args) if args.ray_n else None
    publish(render(args, build_s, single, single_s, rows, ray, load_before), args.output)


def _table(single: Selection, single_s: float, rows: list[dict[str, Any]], ray: bool = False) -> list[str]:
    lines = ["| selection | objective | ratio | time s | critical path s | parts s | winner | union | picks distinct |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| single (lazy greedy) | {single.objective:.2f} | 1.000000 | {single_s:.2f} | {single_s:.2f} | | | | yes |"]
    for row in rows:
        parts = "(all, on Ray)" if ray else " / ".join(f"{s:.2f}" for s in row["parts_s"])
        critical = "" if ray else f"{row['critical']:.2f}"
        lines.append(f"| GreeDi m = {row['m']} | {row['chosen'].objective:.2f} | {row['ratio']:.6f} | {row['seconds']:.2f} | {critical} | "
                     f"{parts} | {row['winner']} | {row['union']:,} | {'yes' if row['distinct'] else 'NO'} |")
    return lines


def render(args: argparse.Namespace, build_s: float, single: Selection, single_s: float, rows: list[dict[str, Any]],
           ray: dict[str, Any] | None, load_before: tuple[float, float, float]) -> str:
    lines = [
        *report_head("Two-round distributed greedy (GreeDi) vs single-machine sparse lazy greedy", "bench/bench_greedi.py"),
        f"Versions: numba {numba.__version__} with {numba.get_num_threads()} threads, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, Python {platform.python_version()}; the cores are shared with other jobs.  ",
        "Load average (1, 5, 15 min) before: {:.1f}, {:.1f}, {:.1f}; after: {:.1f}, {:.1f}, {:.1f}".format(*load_before, *os.getloadavg()), "",
        f"Data: {args.n:,} clustered synthetic {args.dim}-d unit vectors ({args.clusters} clusters, seed {args.seed}; bench_sparse.py's "
        "generator, not real sentence embeddings), the pool representing itself, scores = cosines. Graph: K = "
        f"{args.neighbours} per row, exact (blocked products) in row blocks on the local executor: {build_s:.0f} s. Budget "
        f"{args.budget:g} ({len(single.indices):,} picks); GreeDi's parts drawn with seed {args.seed}.", "",
        "Ratio: objective / single-machine lazy greedy's, FL on the same graph (target ≥ 0.98). Time: GreeDi on one machine "
        "(local executor, parts one after another); critical path: partitioning + the slowest part + the second round (what m "
        "workers would take); parts s: each part's greedy.", "",
        *_table(single, single_s, rows), "",
    ]
    if ray is not None:
        lines += [
            f"## Ray: {ray['n']:,} records (a prefix of the same vectors), {args.ray_workers} workers of 1 CPU on this machine", "",
            f"Graph: local executor {ray['local_s']:.1f} s, Ray {ray['ray_s']:.1f} s (Ray start {ray['start_s']:.1f} s, not counted); "
            f"bit-identical: {'yes' if ray['identical'] else 'NO'}. GreeDi picks identical to the local executor's for m = "
            + ", ".join(f"{row['m']}: {'yes' if same else 'NO'}" for row, same in zip(ray["ray_rows"], ray["same_picks"])) + ".", "",
            "Local executor:", "", *_table(ray["single"], ray["single_s"], ray["local_rows"]), "",
            "Ray (time: the whole GreeDi, parts on the workers):", "", *_table(ray["single"], ray["single_s"], ray["ray_rows"], ray=True), "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
