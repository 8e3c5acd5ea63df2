"""Neighbour graphs from an approximate inner-product index (FAISS), and the choice between dense and sparse selection.

:func:`faiss_graph` searches each row's ``K`` highest inner products ``row_features[i] · col_features[j]`` with a FAISS
index over the column features, recomputes the found scores exactly, folds in :class:`~nncift.selection.sparse.ExactValues`
(the self pair is always offered to its row; a labelled row's labelled columns are offered with their exact values and
their predicted ones dropped) and measures the index's recall@K against exact neighbours on a sample of rows.

Indexes (``faiss-cpu``, the optional extra ``sparse``):

- ``hnsw``: ``IndexHNSWFlat`` on the standard reduction of maximum inner product to nearest neighbour
  (columns get one more coordinate ``√(Φ² − |c|²)``, rows a 0, ``Φ`` the largest column norm), ``M`` = 32 links,
  ``efConstruction`` = 80, ``efSearch`` = max(2K, 128) unless given. Memory: the float32 columns plus ``2·M`` links a column.
- ``ivf`` (the default of ``--selection.graph auto``): ``IndexIVFFlat`` with the inner-product metric, ``nlist`` = 4·√C
  lists (k-means on at most 64 points per list), ``nprobe`` = max(16, nlist/256): at a million columns 16 of 4,000 lists,
  recall@16 1.000 in 343 s of search on 2 cores (bench/results/recall.md; nlist/32 = 125 lists took about 8× longer for
  nothing). Inside the probed lists the scores are exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from nncift.files.errors import InputError
from nncift.selection.kernels import threads_for
from nncift.selection.sparse import ExactValues, NeighbourGraph, default_block_rows, feature_arrays
from nncift.selection.sparse_kernels import top_k_rows
from nncift.settings.choices import GRAPH_BUILDERS

__all__ = ["faiss_graph", "faiss_available", "GraphPlan", "plan_graph", "DEFAULT_NEIGHBOURS", "EXACT_MAX_PAIRS", "DEFAULT_INDEX",
           "GRAPH_BUILDERS", "hnsw_ef_search"]

DEFAULT_NEIGHBOURS = 64
"""K when the run does not say: ≥ 0.99 of dense greedy's objective in bench/results/sparse.md."""
DEFAULT_INDEX: Literal["hnsw", "ivf"] = "ivf"
"""The FAISS index of ``--selection.graph auto`` beyond :data:`EXACT_MAX_PAIRS` (bench/results/recall.md)."""
EXACT_MAX_PAIRS = 10**10
"""Above this many (row, candidate) pairs the graph comes from the FAISS index instead of exact blocked products."""
DEFAULT_EF_SEARCH = 128
"""HNSW ``efSearch`` floor when the run does not say (the search breadth: recall against time)."""
_SEARCH_ROWS = 16384
"""Rows per search block (the found neighbours and their exact scores stay small)."""


def faiss_available() -> bool:
    """Whether ``faiss`` (``pip install nncift[sparse]``) can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class GraphPlan:
    """How a run selects: dense (the whole predicted matrix) or on a neighbour graph built by ``builder``."""

    sparse: bool
    neighbours: int
    """K (0 when dense)."""
    builder: Literal["dense", "exact", "faiss", "blocks"]
    index: Literal["hnsw", "ivf"] = DEFAULT_INDEX
    """The FAISS index when ``builder`` is ``faiss``."""


def plan_graph(n_rows: int, n_cols: int, *, dense_fits: bool, neighbours: int | None = None, inner_product: bool = True,
               graph: str = "auto") -> GraphPlan:
    """Dense while the matrix fits in memory (``dense_fits``), else a graph with :data:`DEFAULT_NEIGHBOURS`;
    ``neighbours`` overrides (0: dense). ``graph`` (``--selection.graph``): ``auto`` builds the graph exactly up to
    :data:`EXACT_MAX_PAIRS` pairs (or without faiss) and from a FAISS :data:`DEFAULT_INDEX` index beyond; ``exact``,
    ``hnsw`` or ``ivf`` choose. A network that is no inner product (``inner_product`` False: paper MLP, anchors)
    predicts row blocks whatever ``graph`` says unless it names an index, which is refused."""
    if neighbours is not None and neighbours < 0:
        raise InputError(f"--selection.neighbours must be >= 0, got {neighbours}")
    if graph not in GRAPH_BUILDERS:
        raise InputError(f"--selection.graph must be one of {', '.join(GRAPH_BUILDERS)}, got {graph!r}")
    if neighbours == 0 or (neighbours is None and dense_fits):
        return GraphPlan(False, 0, "dense")
    k = min(DEFAULT_NEIGHBOURS if neighbours is None else int(neighbours), n_cols)
    if not inner_product:
        if graph in ("hnsw", "ivf"):
            raise InputError(f"--selection.graph {graph} searches the two-tower network's inner-product form; this run's network "
                             f"(the paper MLP, or label anchors) has none: use --selection.graph auto or exact")
        return GraphPlan(True, k, "blocks")
    if graph in ("hnsw", "ivf"):
        if not faiss_available():
            raise InputError(f"--selection.graph {graph} needs faiss-cpu: pip install 'nncift[sparse]'")
        return GraphPlan(True, k, "faiss", graph)  # type: ignore[arg-type]
    if graph == "exact" or n_rows * n_cols <= EXACT_MAX_PAIRS or not faiss_available():
        return GraphPlan(True, k, "exact")
    return GraphPlan(True, k, "faiss", DEFAULT_INDEX)


def hnsw_ef_search(neighbours: int, ef_search: int | None = None) -> int:
    """HNSW's search breadth: ``ef_search`` when given, else max(2K, :data:`DEFAULT_EF_SEARCH`)."""
    if ef_search is not None and ef_search < 1:
        raise ValueError(f"ef_search must be at least 1, got {ef_search}")
    return int(ef_search) if ef_search is not None else max(2 * neighbours, DEFAULT_EF_SEARCH)


def _build_index(cols: np.ndarray, kind: str, neighbours: int, seed: int, ef_search: int | None = None) -> Any:
    """A FAISS index over ``cols`` whose nearest neighbours are the highest inner products."""
    import faiss

    n, width = cols.shape
    if kind == "hnsw":
        norms = np.einsum("ij,ij->i", cols, cols, dtype=np.float64)
        phi2 = float(norms.max()) * (1.0 + 1e-6)
        index = faiss.IndexHNSWFlat(width + 1, 32)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = max(hnsw_ef_search(neighbours, ef_search), neighbours)
        lift = np.sqrt(np.maximum(phi2 - norms, 0.0)).astype(np.float32)[:, None]
        for start in range(0, n, _SEARCH_ROWS):  # in chunks: no second copy of the columns
            index.add(np.hstack([cols[start:start + _SEARCH_ROWS], lift[start:start + _SEARCH_ROWS]]))
        return index
    if kind == "ivf":
        nlist = max(1, min(n // 39, int(4 * math.sqrt(n))))
        quantizer = faiss.IndexFlatIP(width)
        ivf = faiss.IndexIVFFlat(quantizer, width, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(seed).permutation(n)[: 64 * nlist]
        ivf.train(cols[np.sort(sample)])
        ivf.add(cols)
        ivf.nprobe = min(nlist, max(16, nlist // 256))
        return ivf
    raise ValueError(f"unknown index {kind!r}: choose hnsw or ivf")


def _search(index: Any, rows: np.ndarray, k: int, hnsw: bool) -> np.ndarray:
    """int64 (R, k) columns found (−1: none)."""
    query = np.hstack([rows, np.zeros((len(rows), 1), np.float32)]) if hnsw else rows
    return index.search(np.ascontiguousarray(query), k)[1]


def _exact_scores(rows: np.ndarray, cols: np.ndarray, found: np.ndarray, chunk: int = 256) -> np.ndarray:
    """float32 scores of the found pairs (−inf where none was found), in chunks of ``chunk`` rows."""
    scores = np.empty(found.shape, np.float32)
    for start in range(0, len(found), chunk):
        part = found[start:start + chunk]
        scores[start:start + chunk] = np.einsum("rkw,rw->rk", cols[np.maximum(part, 0)], rows[start:start + chunk])
    scores[found < 0] = -np.inf
    return scores


def _offer_self(rows: np.ndarray, cols: np.ndarray, found: np.ndarray, scores: np.ndarray, start: int,
                exact: ExactValues) -> tuple[np.ndarray, np.ndarray]:
    """Add each row's self column (with its self-pair term) to its found candidates: one more column."""
    own = np.full(len(found), -1, np.int64) if exact.self_cols is None else np.asarray(exact.self_cols[start:start + len(found)], np.int64)
    terms = np.zeros(len(found), np.float32) if exact.self_terms is None else np.asarray(exact.self_terms[start:start + len(found)], np.float32)
    present = (found == own[:, None]) & (own[:, None] >= 0)
    scores = scores + np.where(present, terms[:, None], 0.0).astype(np.float32)
    extra = np.where((own >= 0) & ~present.any(axis=1), own, -1)
    extra_scores = np.full(len(found), -np.inf, np.float32)
    has = np.flatnonzero(extra >= 0)
    extra_scores[has] = np.einsum("rw,rw->r", rows[has], cols[extra[has]]) + terms[has]
    return np.hstack([found, extra[:, None]]), np.hstack([scores, extra_scores[:, None]])


def _keep_best(found: np.ndarray, scores: np.ndarray, k: int, start: int, exact: ExactValues) -> tuple[np.ndarray, np.ndarray]:
    """(R, k) columns (increasing, −1 padding last) and values: each row's ``k`` best candidates (ties: the lowest
    column), after a labelled row's exact values replace its predicted ones."""
    for row, label_cols, label_values in exact.labelled_in(start, start + len(found)):
        r = row - start
        keep = (found[r] >= 0) & ~np.isin(found[r], label_cols)
        cols = np.concatenate([found[r][keep], label_cols])
        vals = np.concatenate([scores[r][keep], label_values])
        best = np.lexsort((cols, -vals))[: found.shape[1]]
        found[r], scores[r] = -1, -np.inf
        found[r, : len(best)], scores[r, : len(best)] = cols[best], vals[best]
    order = np.lexsort((found, -scores), axis=1)[:, :k]
    cols, vals = np.take_along_axis(found, order, 1), np.take_along_axis(scores, order, 1)
    by_column = np.argsort(np.where(cols >= 0, cols, np.iinfo(np.int64).max), axis=1, kind="stable")
    return np.take_along_axis(cols, by_column, 1), np.take_along_axis(vals, by_column, 1)


def _recall(index: Any, rows: np.ndarray, cols: np.ndarray, k: int, hnsw: bool, sample: int, seed: int) -> float:
    """Mean |index top-k ∩ exact top-k| / k over ``sample`` random rows (scores without exact values folded in)."""
    picked = np.sort(np.random.default_rng(seed).permutation(len(rows))[:sample])
    found = _search(index, rows[picked], k, hnsw)
    exact_cols = np.empty((len(picked), k), np.int32)
    exact_vals = np.empty((len(picked), k), np.float32)
    for start in range(0, len(picked), default_block_rows(len(cols))):
        part = picked[start:start + default_block_rows(len(cols))]
        block = np.ascontiguousarray(rows[part] @ cols.T)
        with threads_for(block.size):
            top_k_rows(block, k, exact_cols[start:start + len(part)], exact_vals[start:start + len(part)])
    hits = sum(np.intersect1d(found[i], exact_cols[i]).size for i in range(len(picked)))
    return float(hits) / float(k * len(picked))


def faiss_graph(row_features: np.ndarray, col_features: np.ndarray, neighbours: int, *, exact: ExactValues | None = None,
                index: Literal["hnsw", "ivf"] = "hnsw", recall_rows: int = 1000, seed: int = 0,
                threads: int | None = None, ef_search: int | None = None) -> NeighbourGraph:
    """The graph of ``row_features @ col_features.T`` from a FAISS index (see the module text for its parameters); rows
    keep at most ``neighbours`` candidates. ``recall_rows``: rows sampled (with ``seed``) to measure the index's recall@K
    against exact blocked products (0: not measured). ``threads``: FAISS's OpenMP threads (default: its own).
    ``ef_search``: HNSW's search breadth (default max(2K, 128); larger finds more of the exact neighbours, slower)."""
    try:
        import faiss
    except ImportError as error:
        raise ImportError("the FAISS neighbour graph needs faiss-cpu: pip install 'nncift[sparse]'") from error
    if neighbours < 1:
        raise ValueError(f"neighbours must be at least 1, got {neighbours}")
    rows, cols = feature_arrays(row_features, col_features)
    k = min(int(neighbours), len(cols))
    exact = exact or ExactValues()
    if threads is not None:
        faiss.omp_set_num_threads(int(threads))
    built = _build_index(cols, index, k, seed, ef_search)
    hnsw = index == "hnsw"
    kept_cols = np.empty((len(rows), k), np.int32)
    kept_vals = np.empty((len(rows), k), np.float32)
    for start in range(0, len(rows), _SEARCH_ROWS):
        part = rows[start:start + _SEARCH_ROWS]
        found = _search(built, part, k, hnsw)
        found, scores = _offer_self(part, cols, found, _exact_scores(part, cols, found), start, exact)
        kept_cols[start:start + len(part)], kept_vals[start:start + len(part)] = _keep_best(found, scores, k, start, exact)
    recall = _recall(built, rows, cols, k, hnsw, min(recall_rows, len(rows)), seed) if recall_rows > 0 and len(rows) else None
    valid = kept_cols >= 0
    indptr = np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int64)
    return NeighbourGraph(indptr, kept_cols[valid], kept_vals[valid], len(cols), f"faiss-{index}", k, recall)
