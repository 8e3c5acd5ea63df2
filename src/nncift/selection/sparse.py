"""Facility location (FL, FLMI, FLCG) on a nearest-neighbour graph of the predicted matrix: no (rows × candidates) matrix.

Each row (an item to represent) keeps its ``K`` highest-scoring candidates; facility location then runs on those
entries only, every other entry counting as 0. Orientation and conventions are those of :mod:`nncift.selection`
(negative values clipped at 0, ties by the lowest index, :func:`~nncift.selection.greedy.fill_exhausted` when the
gains run out, exactly ``budget`` picks); with ``K`` = every candidate the picks are the dense greedy's, bit for bit.

The graph (:class:`NeighbourGraph`, CSR: int32 columns and float32 values, ``K`` per row) is built

- exactly from features whose inner products are the scores (the two-tower network's
  :func:`~nncift.network.towers.inner_product_form`): :func:`exact_graph`, blocked matrix products;
- approximately by a FAISS inner-product index: :func:`faiss_graph` (:mod:`nncift.selection.sparse_index`), with its
  recall against the exact neighbours measured on a sample of rows;
- from any function that predicts a block of rows (the paper MLP, an anchored two-tower network): :func:`graph_from_blocks`.

:class:`ExactValues` folds in what the features do not hold: the self-pair term at each row's own column and the
labelled block's exact values (they replace the prediction before a row's neighbours are chosen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from nncift.selection import ObjectiveSpec
from nncift.selection.greedy import Selection, budget_to_count, fill_exhausted
from nncift.selection.kernels import threads_for
from nncift.selection.sparse_kernels import candidate_major, graph_gains, graph_lazy_greedy, graph_stochastic_greedy, top_k_rows

__all__ = [
    "NeighbourGraph", "ExactValues", "BlockPredictor", "graph_from_blocks", "exact_graph", "column_maxima",
    "sparse_facility_location", "sparse_fl_mutual_information", "sparse_fl_conditional_gain", "choose_on_graph", "default_block_rows",
    "feature_arrays", "graph_greedy", "row_terms", "extend_on_graph", "graph_values", "graph_objective",
]

BlockPredictor = Callable[[int, int], np.ndarray]
"""``predict(start, stop)`` → float32 (stop − start, n_cols): the predicted rows ``start:stop`` of the matrix."""

_BLOCK_ENTRIES = 1 << 24
"""Entries of one row block (64 MiB of float32)."""


def default_block_rows(n_cols: int) -> int:
    """Rows per block so that a block holds about 16M entries."""
    return max(1, _BLOCK_ENTRIES // max(1, n_cols))


@dataclass(frozen=True)
class NeighbourGraph:
    """Each row's kept candidates, CSR: row ``i`` holds ``columns[indptr[i]:indptr[i + 1]]`` (increasing) with their
    ``values``; every other entry of the row counts as 0. Rows = items to represent, columns = candidates."""

    indptr: np.ndarray
    """int64 (n_rows + 1,)."""
    columns: np.ndarray
    """int32 (nnz,): candidate indices."""
    values: np.ndarray
    """float32 (nnz,): the scores (raw: clipping at 0 happens in the selection)."""
    n_columns: int
    """Candidates (the matrix's width)."""
    method: str
    """How it was built: ``exact``, ``blocks``, ``faiss-hnsw`` or ``faiss-ivf``."""
    neighbours: int
    """K: entries kept per row (rows may hold fewer, e.g. when an index found fewer)."""
    recall: float | None = None
    """Approximate builders: mean recall@K of the index's neighbours against exact ones on a sample of rows."""

    def __post_init__(self) -> None:
        if self.indptr.ndim != 1 or self.indptr.shape[0] < 1 or self.indptr[0] != 0 or self.indptr[-1] != self.columns.shape[0]:
            raise ValueError("indptr must start at 0 and end at the number of entries")
        if self.columns.dtype != np.int32 or self.values.dtype != np.float32 or self.columns.shape != self.values.shape:
            raise ValueError("columns must be int32 and values float32, of the same length")

    @property
    def n_rows(self) -> int:
        """Rows (items to represent)."""
        return int(self.indptr.shape[0] - 1)

    def to_dense(self) -> np.ndarray:
        """float32 (n_rows, n_columns) with 0 where the graph holds nothing (small graphs and tests only)."""
        out = np.zeros((self.n_rows, self.n_columns), np.float32)
        out[np.repeat(np.arange(self.n_rows), np.diff(self.indptr)), self.columns] = self.values
        return out


@dataclass
class ExactValues:
    """Values that replace the prediction before each row's neighbours are chosen (row indices of the whole matrix).

    The self-pair term is added first (``self_terms[i]`` at ``(i, self_cols[i])``; leave ``self_terms`` None when the
    predicted blocks already include it), then the labelled block overwrites its entries (NaN labels keep the prediction).
    """

    self_cols: np.ndarray | None = None
    """(n_rows,) per row, the column of the same record, −1 for none."""
    self_terms: np.ndarray | None = None
    """(n_rows,) float32 added at each row's self column (the two-tower :class:`~nncift.network.towers.InnerProductForm`)."""
    labelled_rows: np.ndarray | None = None
    """(Lr,) rows of the labelled block."""
    labelled_cols: np.ndarray | None = None
    """(Lc,) columns of the labelled block."""
    labels: np.ndarray | None = None
    """(Lr, Lc) exact values; NaN: not labelled."""
    _position: dict[int, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if (self.self_terms is not None) and self.self_cols is None:
            raise ValueError("self_terms need self_cols")
        given = [x is not None for x in (self.labelled_rows, self.labelled_cols, self.labels)]
        if any(given) and not all(given):
            raise ValueError("labelled_rows, labelled_cols and labels go together")
        if self.labels is not None:
            shape = (len(np.asarray(self.labelled_rows)), len(np.asarray(self.labelled_cols)))
            if np.shape(self.labels) != shape:
                raise ValueError(f"labels must have shape {shape} (labelled rows × labelled columns), got {np.shape(self.labels)}")
            self._position = {int(row): n for n, row in enumerate(np.asarray(self.labelled_rows))}

    def apply(self, start: int, block: np.ndarray) -> None:
        """Fold the exact values into ``block``, rows ``start:start + len(block)`` of the matrix (in place)."""
        stop = start + block.shape[0]
        if self.self_cols is not None and self.self_terms is not None:
            own = np.asarray(self.self_cols[start:stop])
            local = np.flatnonzero(own >= 0)
            block[local, own[local]] += np.asarray(self.self_terms[start:stop], np.float32)[local]
        if self.labels is not None and self.labelled_cols is not None:
            cols = np.asarray(self.labelled_cols)
            for row in range(start, stop):
                at = self._position.get(row)
                if at is not None:
                    labels = self.labels[at]
                    block[row - start, cols] = np.where(np.isfinite(labels), labels, block[row - start, cols])

    def labelled_in(self, start: int, stop: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """``(row, columns, exact values)`` of the labelled rows in ``start:stop`` (finite labels only)."""
        if self.labels is None or self.labelled_cols is None:
            return []
        cols = np.asarray(self.labelled_cols)
        found = []
        for row in range(start, stop):
            at = self._position.get(row)
            if at is not None:
                ok = np.isfinite(self.labels[at])
                found.append((row, cols[ok], np.asarray(self.labels[at], np.float32)[ok]))
        return found


def graph_from_blocks(predict: BlockPredictor, n_rows: int, n_cols: int, neighbours: int, *, exact: ExactValues | None = None,
                      block_rows: int | None = None, first_row: int = 0, method: str = "blocks") -> NeighbourGraph:
    """Each of rows ``first_row:first_row + n_rows`` keeps its ``neighbours`` highest values (ties: the lowest column),
    from blocks ``predict(start, stop)`` with ``exact`` folded in first. Memory: one block plus the graph."""
    if neighbours < 1:
        raise ValueError(f"neighbours must be at least 1, got {neighbours}")
    k = min(int(neighbours), n_cols)
    columns = np.empty((n_rows, k), np.int32)
    values = np.empty((n_rows, k), np.float32)
    step = block_rows or default_block_rows(n_cols)
    for start in range(first_row, first_row + n_rows, step):
        stop = min(first_row + n_rows, start + step)
        block = np.require(predict(start, stop), np.float32, ["C", "W", "O"])  # a copy unless it is a fresh array
        if block.shape != (stop - start, n_cols):
            raise ValueError(f"rows {start}:{stop}: predicted block of shape {block.shape}, expected {(stop - start, n_cols)}")
        if exact is not None:
            exact.apply(start, block)
        with threads_for(block.size):
            bad = top_k_rows(block, k, columns[start - first_row:stop - first_row], values[start - first_row:stop - first_row])
        if bad:
            raise ValueError(f"rows {start}:{stop}: {bad} non-finite predicted values")
    indptr = np.arange(0, n_rows * k + 1, k, dtype=np.int64) if k else np.zeros(n_rows + 1, np.int64)
    return NeighbourGraph(indptr, columns.reshape(-1), values.reshape(-1), n_cols, method, k)


def exact_graph(row_features: np.ndarray, col_features: np.ndarray, neighbours: int, *, exact: ExactValues | None = None,
                block_rows: int | None = None) -> NeighbourGraph:
    """The exact graph of ``row_features @ col_features.T`` (float32 blocked products, no (R, C) matrix)."""
    rows, cols = feature_arrays(row_features, col_features)
    return graph_from_blocks(lambda start, stop: rows[start:stop] @ cols.T, len(rows), len(cols), neighbours, exact=exact,
                             block_rows=block_rows, method="exact")


def column_maxima(predict: BlockPredictor, first_row: int, stop_row: int, n_cols: int, *, exact: ExactValues | None = None,
                  block_rows: int | None = None) -> np.ndarray:
    """float32 ``max(0, max_{first_row ≤ q < stop_row} s_qj)`` per column j, from row blocks: FLMI's query maxima and
    FLCG's private maxima (the target rows of the matrix, each pool candidate's best target)."""
    best = np.zeros(n_cols, np.float32)
    step = block_rows or default_block_rows(n_cols)
    for start in range(first_row, stop_row, step):
        stop = min(stop_row, start + step)
        block = np.require(predict(start, stop), np.float32, ["C", "W", "O"])  # a copy unless it is a fresh array
        if exact is not None:
            exact.apply(start, block)
        if not np.all(np.isfinite(block)):
            raise ValueError(f"rows {start}:{stop}: non-finite predicted values")
        np.maximum(best, block.max(axis=0, initial=0.0), out=best)
    return best


def feature_arrays(row_features: np.ndarray, col_features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C-contiguous float32 row and column features of equal width (else ``ValueError``)."""
    rows = np.ascontiguousarray(row_features, dtype=np.float32)
    cols = np.ascontiguousarray(col_features, dtype=np.float32)
    if rows.ndim != 2 or cols.ndim != 2 or rows.shape[1] != cols.shape[1]:
        raise ValueError(f"row and column features must be 2-D of equal width, got {rows.shape} and {cols.shape}")
    return rows, cols


# --------------------------------------------------------------------------------------------
# greedy on the graph


def _graph_greedy(graph: NeighbourGraph, budget: float | int, *, cap: np.ndarray | None, initial: np.ndarray | None, name: str,
                  stochastic: bool, epsilon: float, seed: int) -> Selection:
    n_rows, n_cand = graph.n_rows, graph.n_columns
    k = budget_to_count(budget, n_cand)
    if stochastic and not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon!r}")
    if k == 0:
        return Selection(np.zeros(0, np.int64), np.zeros(0, np.float64), 0.0, name)
    if not np.all(np.isfinite(graph.values)):
        raise ValueError("the neighbour graph holds non-finite values")
    if graph.columns.size and (int(graph.columns.min()) < 0 or int(graph.columns.max()) >= n_cand):
        raise ValueError(f"the neighbour graph's columns must be in [0, {n_cand})")
    use_cap = cap is not None
    cptr, crows, cvals = candidate_major(graph.indptr, graph.columns, graph.values, n_cand,
                                         cap if cap is not None else np.zeros(n_rows, np.float32), use_cap)
    clen = np.diff(cptr)
    start = np.zeros(n_rows, np.float32) if initial is None else initial.astype(np.float32, copy=True)
    cur = start.copy()
    with threads_for(len(cvals)):
        initial_gains = graph_gains(cptr, crows, cvals, clen, cur)
    if stochastic:
        sample = min(n_cand, max(1, math.ceil(n_cand / k * math.log(1.0 / epsilon))))
        picks, gains = graph_stochastic_greedy(cptr, crows, cvals, clen, cur, k, initial_gains.copy(), sample, int(seed) & (2**63 - 1))
    else:
        picks, gains = graph_lazy_greedy(cptr, crows, cvals, clen, cur, k, initial_gains.copy())
    objective = float(np.sum(cur.astype(np.float64) - start.astype(np.float64)))
    picks, n_positive = fill_exhausted(picks, gains, initial_gains)
    return Selection(picks, gains, objective, name, n_positive, initial_gains)


def graph_greedy(graph: NeighbourGraph, budget: float | int, *, cap: np.ndarray | None = None, initial: np.ndarray | None = None,
                 name: str = "fl") -> Selection:
    """Lazy greedy on the graph with the per-row ``cap`` (FLMI's, already scaled: float32 (n_rows,)) and the starting
    coverage ``initial`` (FLCG's, already scaled): the kernel under :func:`sparse_facility_location` and its variants."""
    return _graph_greedy(graph, budget, cap=cap, initial=initial, name=name, stochastic=False, epsilon=0.01, seed=0)


def _graph_entries(graph: NeighbourGraph, cap: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(row of each entry, its value clipped at 0 and at the row's ``cap``), float32."""
    rows = np.repeat(np.arange(graph.n_rows), np.diff(graph.indptr))
    values = np.maximum(graph.values, np.float32(0.0))
    return rows, values if cap is None else np.minimum(values, cap[rows])


def _covered(graph: NeighbourGraph, picks: np.ndarray, cap: np.ndarray | None, initial: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 coverage of each graph row by ``picks``, from ``initial`` (default 0), float32 start)."""
    start = np.zeros(graph.n_rows, np.float32) if initial is None else np.asarray(initial, np.float32)
    rows, values = _graph_entries(graph, cap)
    mask = np.isin(graph.columns, picks)
    cover = start.copy()
    np.maximum.at(cover, rows[mask], values[mask])
    return cover, start


def graph_after(graph: NeighbourGraph, chosen: np.ndarray, count: int, *, cap: np.ndarray | None = None,
                initial: np.ndarray | None = None) -> tuple[NeighbourGraph, np.ndarray, np.ndarray]:
    """What a greedy that adds ``count`` candidates to ``chosen`` works on: (the graph without the chosen columns, renumbered;
    the original index of each remaining column, int64; each row's coverage by ``chosen``, clipped at 0 and at ``cap``,
    ``initial`` when higher, float32), the start coverage of that greedy. Raises ``ValueError`` when fewer than ``count``
    candidates are left."""
    kept = np.unique(np.asarray(chosen, dtype=np.int64))
    rest = np.setdiff1d(np.arange(graph.n_columns, dtype=np.int64), kept)
    if not 0 <= count <= rest.size:
        raise ValueError(f"cannot add {count} candidates: {rest.size} are not chosen yet")
    cover, _ = _covered(graph, kept, cap, initial)
    rows = np.repeat(np.arange(graph.n_rows), np.diff(graph.indptr))
    free = ~np.isin(graph.columns, kept)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[free], minlength=graph.n_rows))]).astype(np.int64)
    columns = np.searchsorted(rest, graph.columns[free]).astype(np.int32)
    return NeighbourGraph(indptr, columns, graph.values[free], len(rest), graph.method, graph.neighbours, graph.recall), rest, cover


def extend_on_graph(graph: NeighbourGraph, count: int, chosen: np.ndarray, *, cap: np.ndarray | None = None,
                    initial: np.ndarray | None = None, name: str = "fl") -> Selection:
    """:func:`~nncift.selection.extend_greedy` on a neighbour graph: each row's coverage starts at what ``chosen`` gives it on
    the graph (clipped at 0 and at ``cap``; ``initial`` when higher), and lazy greedy adds ``count`` of the other candidates
    (their conditional gain; entries outside the graph count 0). The picks of :func:`extend_greedy` on
    :meth:`NeighbourGraph.to_dense`, with no (rows × candidates) matrix: the chosen columns are dropped from the graph."""
    others, rest, cover = graph_after(graph, chosen, count, cap=cap, initial=initial)
    added = graph_greedy(others, int(count), cap=cap, initial=cover, name=name)  # the kept picks' coverage is the start
    return Selection(rest[added.indices], added.gains, added.objective, name, added.n_positive)


def graph_values(graph: NeighbourGraph, *, cap: np.ndarray | None = None, initial: np.ndarray | None = None) -> np.ndarray:
    """float64 singleton value of every candidate on the graph (from the ``initial`` coverage), as the sparse greedy computes
    its first gains (what a sparse select writes as ``value``)."""
    start = np.zeros(graph.n_rows, np.float32) if initial is None else np.asarray(initial, np.float32)
    cptr, crows, cvals = candidate_major(graph.indptr, graph.columns, graph.values, graph.n_columns,
                                         np.zeros(graph.n_rows, np.float32) if cap is None else np.asarray(cap, np.float32), cap is not None)
    return np.asarray(graph_gains(cptr, crows, cvals, np.diff(cptr), start.copy()), dtype=np.float64)


def graph_objective(graph: NeighbourGraph, picks: np.ndarray, *, cap: np.ndarray | None = None, initial: np.ndarray | None = None) -> float:
    """The facility-location objective of ``picks`` on the graph: the coverage gained over ``initial`` (float64 sum)."""
    cover, start = _covered(graph, np.asarray(picks, dtype=np.int64), cap, initial)
    return float(np.sum(cover.astype(np.float64) - start.astype(np.float64)))


def _scaled_maxima(maxima: np.ndarray, scale: float, scale_name: str, what: str, n_rows: int) -> np.ndarray:
    """float32 ``scale · max(maxima, 0)`` (as the dense greedy computes FLMI caps and FLCG starts)."""
    if not (scale >= 0.0 and math.isfinite(scale)):
        raise ValueError(f"{scale_name} must be a finite number >= 0, got {scale!r}")
    m = np.asarray(maxima, dtype=np.float32).reshape(-1)
    if m.shape[0] != n_rows:
        raise ValueError(f"{what} must have one value per graph row ({n_rows}), got {m.shape[0]}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{what} contains non-finite values")
    out = (scale * np.maximum(m, np.float32(0.0)).astype(np.float64)).astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{what} times its scale overflows float32")
    return out


def row_terms(name: str, maxima: np.ndarray | None, n_rows: int, *, eta: float = 1.0, nu: float = 1.0) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(cap, initial)`` of :func:`graph_greedy` for objective ``name``: FLMI's cap ``η·max(maxima, 0)``, FLCG's starting
    coverage ``ν·max(maxima, 0)`` (``maxima``: :func:`column_maxima` of the target rows), neither for FL."""
    if name == "fl":
        return None, None
    if name not in ("flmi", "flcg") or maxima is None:
        raise ValueError(f"objective '{name}' on a graph needs fl, or flmi / flcg with their maxima")
    if name == "flmi":
        return _scaled_maxima(maxima, eta, "eta", "query_maxima", n_rows), None
    return None, _scaled_maxima(maxima, nu, "nu", "private_maxima", n_rows)


def sparse_facility_location(graph: NeighbourGraph, budget: float | int, *, stochastic: bool = False, epsilon: float = 0.01,
                             seed: int = 0) -> Selection:
    """Greedy FL ``f(A) = Σ_i max_{j∈A} s_ij`` on the graph's entries (lazy greedy; ``stochastic``: stochastic greedy,
    each step the best of ``(n/k)·ln(1/epsilon)`` candidates drawn with ``seed``). Returns a :class:`Selection` ``"fl"``."""
    return _graph_greedy(graph, budget, cap=None, initial=None, name="fl", stochastic=stochastic, epsilon=epsilon, seed=seed)


def sparse_fl_mutual_information(graph: NeighbourGraph, query_maxima: np.ndarray, budget: float | int, *, eta: float = 1.0,
                                 stochastic: bool = False, epsilon: float = 0.01, seed: int = 0) -> Selection:
    """Greedy FLMI ``Σ_i min(max_{j∈A} s_ij, η·max_q s_iq)`` on the graph. ``query_maxima``: (n_rows,) ``max_q s_iq``
    per graph row (:func:`column_maxima` of the target rows); the cap is ``η·max(query_maxima, 0)``."""
    cap = _scaled_maxima(query_maxima, eta, "eta", "query_maxima", graph.n_rows)
    return _graph_greedy(graph, budget, cap=cap, initial=None, name="flmi", stochastic=stochastic, epsilon=epsilon, seed=seed)


def sparse_fl_conditional_gain(graph: NeighbourGraph, private_maxima: np.ndarray, budget: float | int, *, nu: float = 1.0,
                               stochastic: bool = False, epsilon: float = 0.01, seed: int = 0) -> Selection:
    """Greedy FLCG ``Σ_i max(max_{j∈A} s_ij − ν·max_p s_ip, 0)`` on the graph. ``private_maxima``: (n_rows,)
    ``max_p s_ip`` per graph row (:func:`column_maxima` of the private rows); coverage starts at ``ν·max(·, 0)``."""
    initial = _scaled_maxima(private_maxima, nu, "nu", "private_maxima", graph.n_rows)
    return _graph_greedy(graph, budget, cap=None, initial=initial, name="flcg", stochastic=stochastic, epsilon=epsilon, seed=seed)


def choose_on_graph(graph: NeighbourGraph, spec: ObjectiveSpec, predict: BlockPredictor, n_rows: int, *,
                    exact: ExactValues | None = None) -> Selection:
    """The subset :func:`~nncift.selection.choose_subset` picks with ``spec`` (``fl``, ``flmi`` or ``flcg``), on the graph of
    the matrix's data rows: FL's every row, FLMI's and FLCG's pool rows (``spec.n_pool_rows``). Their query / private
    maxima come from the target rows ``spec.n_pool_rows:n_rows``, predicted block by block (:func:`column_maxima`)."""
    if spec.name == "fl":
        return sparse_facility_location(graph, spec.budget)
    if spec.name not in ("flmi", "flcg"):
        raise ValueError(f"objective '{spec.name}' does not run on a neighbour graph: choose fl, flmi or flcg")
    maxima = column_maxima(predict, spec.n_pool_rows, n_rows, graph.n_columns, exact=exact)
    if spec.name == "flmi":
        return sparse_fl_mutual_information(graph, maxima, spec.budget, eta=spec.eta)
    return sparse_fl_conditional_gain(graph, maxima, spec.budget, nu=spec.nu)
