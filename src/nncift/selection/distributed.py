"""Facility location beyond one machine: the neighbour graph in row blocks, and two-round distributed greedy (GreeDi).

**Row blocks.** The graph of :mod:`nncift.selection.sparse` is a set of independent row blocks: block ``start:stop``
is each of those rows' ``K`` highest predicted values with the exact values folded in (:func:`graph_block`, the very
computation of :func:`~nncift.selection.sparse.graph_from_blocks`). An executor computes the blocks of
:func:`graph_row_blocks` wherever it likes and a :class:`GraphAssembler` puts them together: the graph is bit-identical
to the one built in one process with the same blocks.

**GreeDi** (Mirzasoleiman, Karbasi, Sarkar, Krause, *Distributed submodular maximization*, NeurIPS 2013):

1. the candidates (the graph's columns) are split into ``m`` parts by a seeded permutation (:func:`partition_columns`);
2. each part runs lazy greedy for ``k = budget`` picks (at most its size) on the graph restricted to its columns: the
   objective over **all** rows, candidates from the part only (:func:`restrict_columns`; every column keeps all its
   entries, so a part's objective values are the whole graph's). The parts are independent: ``run_parts`` may compute
   them on other machines, each needing only its part of the graph;
3. lazy greedy for ``k`` picks over the union of the parts' picks;
4. the result is the better of round 2 and the best single part (ties: round 2), which carries the algorithm's
   guarantee ``f ≥ (1 − 1/e)² / min(m, k) · OPT`` (and in practice within a few tenths of a percent of single-machine
   greedy: bench/results/greedi.md). A part's picks after its gains ran out, and the winner's, are refilled as
   :func:`~nncift.selection.greedy.fill_exhausted` refills them, over every candidate.

FL, FLMI and FLCG alike: FLMI's cap and FLCG's starting coverage are per row, the same in every part.
With ``m`` ≤ 1 the result is plain :func:`~nncift.selection.sparse.graph_greedy`, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from nncift.selection.greedy import Selection, budget_to_count, fill_exhausted
from nncift.selection.sparse import (
    BlockPredictor,
    ExactValues,
    NeighbourGraph,
    default_block_rows,
    graph_after,
    graph_from_blocks,
    graph_greedy,
)

__all__ = [
    "graph_row_blocks", "graph_block", "GraphAssembler", "exact_arrays", "exact_from_arrays", "GraphPart", "PartRunner",
    "partition_columns", "restrict_columns", "part_arrays", "part_from_arrays",
    "selection_arrays", "selection_from_arrays", "part_greedy", "run_parts_in_process", "greedi",
    "extend_greedi", "objective_on_graph",
]


# --------------------------------------------------------------------------------------------
# the graph in row blocks


def graph_row_blocks(n_rows: int, n_cols: int, block_rows: int | None = None) -> list[tuple[int, int]]:
    """Row blocks ``(start, stop)`` of a graph with ``n_rows`` rows: those :func:`~nncift.selection.sparse.exact_graph`
    and :func:`~nncift.selection.sparse.graph_from_blocks` use (about 16M entries each) unless ``block_rows`` says."""
    step = block_rows or default_block_rows(n_cols)
    return [(start, min(n_rows, start + step)) for start in range(0, n_rows, step)]


def graph_block(predict: BlockPredictor, start: int, stop: int, n_cols: int, neighbours: int, *,
                exact: ExactValues | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start:stop`` of the graph: int32 and float32 (stop − start, min(K, n_cols)) columns (increasing) and values,
    from ``predict(start, stop)`` with ``exact`` folded in (ties: the lowest column)."""
    part = graph_from_blocks(predict, stop - start, n_cols, neighbours, exact=exact, block_rows=stop - start, first_row=start)
    k = part.columns.shape[0] // max(1, stop - start)
    return part.columns.reshape(stop - start, k), part.values.reshape(stop - start, k)


class GraphAssembler:
    """Collects row blocks (in any order) into one :class:`~nncift.selection.sparse.NeighbourGraph`."""

    def __init__(self, n_rows: int, n_cols: int, neighbours: int) -> None:
        if neighbours < 1:
            raise ValueError(f"neighbours must be at least 1, got {neighbours}")
        self.n_rows, self.n_cols, self.k = n_rows, n_cols, min(int(neighbours), n_cols)
        self.columns = np.empty((n_rows, self.k), np.int32)
        self.values = np.empty((n_rows, self.k), np.float32)
        self.filled = np.zeros(n_rows, bool)

    def write(self, start: int, stop: int, columns: np.ndarray, values: np.ndarray) -> None:
        """Store rows ``start:stop`` (as :func:`graph_block` returns them)."""
        if columns.shape != (stop - start, self.k) or values.shape != columns.shape:
            raise ValueError(f"rows {start}:{stop}: a block of shape {columns.shape}, expected {(stop - start, self.k)}")
        self.columns[start:stop], self.values[start:stop] = columns, values
        self.filled[start:stop] = True

    def graph(self, method: str) -> NeighbourGraph:
        """The assembled graph (every row must have been written)."""
        if not self.filled.all():
            raise ValueError(f"rows missing from the graph: {int((~self.filled).sum())} of {self.n_rows}")
        indptr = np.arange(0, self.n_rows * self.k + 1, self.k, dtype=np.int64) if self.k else np.zeros(self.n_rows + 1, np.int64)
        return NeighbourGraph(indptr, self.columns.reshape(-1), self.values.reshape(-1), self.n_cols, method, self.k)


_EXACT_FIELDS = ("self_cols", "self_terms", "labelled_rows", "labelled_cols", "labels")


def exact_arrays(exact: ExactValues | None) -> dict[str, np.ndarray | None]:
    """``exact`` as plain arrays (to ship to a worker); :func:`exact_from_arrays` rebuilds it."""
    return {name: (None if exact is None else getattr(exact, name)) for name in _EXACT_FIELDS}


def exact_from_arrays(arrays: dict[str, np.ndarray | None]) -> ExactValues | None:
    """The :class:`~nncift.selection.sparse.ExactValues` of :func:`exact_arrays` (None when it held nothing)."""
    if all(arrays.get(name) is None for name in _EXACT_FIELDS):
        return None
    return ExactValues(*(arrays.get(name) for name in _EXACT_FIELDS))


# --------------------------------------------------------------------------------------------
# GreeDi


@dataclass(frozen=True)
class GraphPart:
    """One part of the candidates: the graph restricted to its columns (local column ``c`` = candidate ``columns[c]``)."""

    graph: NeighbourGraph
    columns: np.ndarray
    """int64 (size,): the part's candidates, increasing."""
    count: int
    """Picks to make: the budget, at most the part's size."""
    name: str
    """fl, flmi or flcg (the :class:`Selection`'s name)."""


PartRunner = Callable[[Sequence[GraphPart], "np.ndarray | None", "np.ndarray | None"], list[Selection]]
"""``run(parts, cap, initial)`` → each part's :func:`part_greedy`, in the parts' order (an executor's ``greedy_parts``)."""


def part_arrays(part: GraphPart) -> dict[str, Any]:
    """``part`` as plain values (to ship to a worker); :func:`part_from_arrays` rebuilds it."""
    graph = part.graph
    return {"indptr": graph.indptr, "graph_columns": graph.columns, "values": graph.values, "n_columns": graph.n_columns,
            "method": graph.method, "neighbours": graph.neighbours, "columns": part.columns, "count": part.count, "name": part.name}


def part_from_arrays(arrays: dict[str, Any]) -> GraphPart:
    """The :class:`GraphPart` of :func:`part_arrays` (writable copies of the arrays)."""
    graph = NeighbourGraph(np.array(arrays["indptr"]), np.array(arrays["graph_columns"]), np.array(arrays["values"]),
                           int(arrays["n_columns"]), str(arrays["method"]), int(arrays["neighbours"]))
    return GraphPart(graph, np.array(arrays["columns"]), int(arrays["count"]), str(arrays["name"]))


def selection_arrays(selection: Selection) -> dict[str, Any]:
    """A :class:`Selection` as plain values; :func:`selection_from_arrays` rebuilds it."""
    return {"indices": selection.indices, "gains": selection.gains, "objective": selection.objective, "name": selection.name,
            "n_positive": selection.n_positive, "values": selection.values}


def selection_from_arrays(arrays: dict[str, Any]) -> Selection:
    """The :class:`Selection` of :func:`selection_arrays`."""
    return Selection(np.array(arrays["indices"]), np.array(arrays["gains"]), float(arrays["objective"]), str(arrays["name"]),
                     arrays["n_positive"], None if arrays["values"] is None else np.array(arrays["values"]))


def partition_columns(n_cols: int, partitions: int, seed: int) -> list[np.ndarray]:
    """``partitions`` parts of ``0 .. n_cols − 1`` by a permutation drawn with ``seed``, sizes differing by at most one,
    each sorted (int64)."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    order = np.random.default_rng(seed).permutation(n_cols)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, partitions)]


def restrict_columns(graph: NeighbourGraph, columns: np.ndarray) -> NeighbourGraph:
    """The graph with only the entries of ``columns`` (increasing), renumbered ``0 .. len(columns) − 1``; every row stays."""
    local = np.full(graph.n_columns, -1, np.int64)
    local[columns] = np.arange(len(columns))
    keep = local[graph.columns] >= 0
    counts = np.bincount(np.repeat(np.arange(graph.n_rows), np.diff(graph.indptr))[keep], minlength=graph.n_rows)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return NeighbourGraph(indptr, local[graph.columns[keep]].astype(np.int32), graph.values[keep], len(columns), graph.method,
                          graph.neighbours, graph.recall)


def part_greedy(part: GraphPart, cap: np.ndarray | None = None, initial: np.ndarray | None = None) -> Selection:
    """Round 1 on one part: lazy greedy for ``part.count`` picks, in the part's local column numbers."""
    return graph_greedy(part.graph, int(part.count), cap=cap, initial=initial, name=part.name)


def run_parts_in_process(parts: Sequence[GraphPart], cap: np.ndarray | None, initial: np.ndarray | None) -> list[Selection]:
    """Every part's :func:`part_greedy` in this process, one after another."""
    return [part_greedy(part, cap, initial) for part in parts]


def greedi(graph: NeighbourGraph, budget: float | int, partitions: int, *, seed: int = 0, name: str = "fl",
           cap: np.ndarray | None = None, initial: np.ndarray | None = None,
           run_parts: PartRunner = run_parts_in_process) -> tuple[Selection, dict[str, Any]]:
    """Two-round distributed greedy (module text) of ``name`` (``cap``, ``initial``: :func:`~nncift.selection.sparse.row_terms`)
    for ``budget`` picks with ``partitions`` parts drawn with ``seed``; ``run_parts`` computes round 1 (e.g. on workers).

    Returns the selection and what the manifest says about it (``partitions``, each part's objective, the union's size,
    both rounds' objectives and which one won)."""
    if partitions <= 1:
        return graph_greedy(graph, budget, cap=cap, initial=initial, name=name), {"partitions": 1}
    k = budget_to_count(budget, graph.n_columns)
    parts = [GraphPart(restrict_columns(graph, cols), cols, min(k, len(cols)), name)
             for cols in partition_columns(graph.n_columns, partitions, seed)]
    results = run_parts(parts, cap, initial)
    singletons = np.zeros(graph.n_columns, np.float64)
    for part, result in zip(parts, results):
        if result.values is not None:
            singletons[part.columns] = result.values
    union = np.unique(np.concatenate([part.columns[result.indices] for part, result in zip(parts, results)]))
    second = graph_greedy(restrict_columns(graph, union), min(k, len(union)), cap=cap, initial=initial, name=name)
    best = int(np.argmax([result.objective for result in results]))  # ties: the first part
    if results[best].objective > second.objective:
        winner, chosen, columns = f"part {best}", results[best], parts[best].columns
    else:
        winner, chosen, columns = "second round", second, union
    positive = chosen.n_positive if chosen.n_positive is not None else len(chosen.indices)
    picks = np.zeros(k, np.int64)
    gains = np.zeros(k, np.float64)
    picks[:positive], gains[:positive] = columns[chosen.indices[:positive]], chosen.gains[:positive]
    picks, n_positive = fill_exhausted(picks, gains, singletons)
    info = {"partitions": int(partitions), "partition_seed": int(seed), "part_objectives": [float(r.objective) for r in results],
            "union": int(len(union)), "second_round_objective": float(second.objective), "winner": winner}
    return Selection(picks, gains, float(chosen.objective), name, n_positive, singletons), info


def extend_greedi(graph: NeighbourGraph, count: int, chosen: np.ndarray, partitions: int, *, seed: int = 0, name: str = "fl",
                  cap: np.ndarray | None = None, initial: np.ndarray | None = None,
                  run_parts: PartRunner = run_parts_in_process) -> tuple[Selection, dict[str, Any]]:
    """:func:`~nncift.selection.sparse.extend_on_graph` by the two-round distributed greedy: ``count`` more candidates
    after ``chosen``, each part's greedy (and the second round) starting from the coverage ``chosen`` gives every row, over
    the candidates not chosen yet, parted with ``seed``. ``partitions`` ≤ 1: one lazy greedy (:func:`extend_on_graph`).
    Returns the added picks (original column indices; gains and objective over the kept picks' coverage) and what the
    manifest says (as :func:`greedi`)."""
    others, rest, cover = graph_after(graph, chosen, count, cap=cap, initial=initial)
    added, info = greedi(others, int(count), partitions, seed=seed, name=name, cap=cap, initial=cover, run_parts=run_parts)
    return Selection(rest[added.indices], added.gains, added.objective, name, added.n_positive), info


def objective_on_graph(graph: NeighbourGraph, picks: np.ndarray, *, cap: np.ndarray | None = None,
                       initial: np.ndarray | None = None) -> float:
    """``Σ_i (coverage_i − initial_i)`` of the picks on the graph (values clipped at 0 and at ``cap``), float64: the
    objective a greedy reports, for any set (used to compare selections made on other graphs)."""
    chosen = np.zeros(graph.n_columns, bool)
    chosen[np.asarray(picks, np.int64)] = True
    rows = np.repeat(np.arange(graph.n_rows), np.diff(graph.indptr))
    values = np.maximum(graph.values, np.float32(0.0))
    if cap is not None:
        values = np.minimum(values, np.asarray(cap, np.float32)[rows])
    start = np.zeros(graph.n_rows, np.float32) if initial is None else np.asarray(initial, np.float32)
    cover = start.copy()
    hit = chosen[graph.columns]
    np.maximum.at(cover, rows[hit], values[hit])
    return float(np.sum(cover.astype(np.float64) - start.astype(np.float64)))

