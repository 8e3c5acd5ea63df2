"""Facility location on a neighbour graph: the full graph reproduces dense greedy, a K-graph nearly matches it, the
builders keep the right neighbours and fold in the exact values, and the FAISS index finds most true neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from nncift.files.errors import InputError
from nncift.selection import ObjectiveSpec, choose_subset, facility_location, fl_conditional_gain, fl_mutual_information, objective_value
from nncift.selection.sparse import (
    ExactValues,
    NeighbourGraph,
    choose_on_graph,
    column_maxima,
    exact_graph,
    graph_from_blocks,
    graph_greedy,
    row_terms,
    sparse_facility_location,
    sparse_fl_conditional_gain,
    sparse_fl_mutual_information,
)
from nncift.selection.sparse_index import DEFAULT_INDEX, GraphPlan, faiss_available, faiss_graph, plan_graph


def dyadic(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Values in {-2/8, ..., 1}: exact ties and negatives (clipped at 0 by the selection)."""
    return (rng.integers(-2, 9, size=shape) / 8).astype(np.float32)


def clustered(n: int, d: int, clusters: int, seed: int, spread: float = 0.35) -> np.ndarray:
    """(n, d) unit vectors around ``clusters`` random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def graph_of(matrix: np.ndarray, k: int, **kwargs) -> NeighbourGraph:
    return graph_from_blocks(lambda start, stop: matrix[start:stop], matrix.shape[0], matrix.shape[1], k, **kwargs)


def brute_top_k(matrix: np.ndarray, k: int) -> list[list[int]]:
    """Each row's k highest values, ties by the lowest column, as sorted column lists."""
    return [sorted(np.lexsort((np.arange(matrix.shape[1]), -row))[:k].tolist()) for row in matrix.astype(np.float64)]


@pytest.mark.parametrize("shape,k,block", [((40, 25), 5, 7), ((33, 70), 16, 100), ((10, 6), 6, 3)])
def test_the_graph_keeps_each_rows_best_columns(shape, k, block):
    matrix = dyadic(np.random.default_rng(1), shape)  # many ties: the lowest column wins
    graph = graph_of(matrix, k, block_rows=block)
    assert graph.indptr.tolist() == list(range(0, shape[0] * k + 1, k)) and graph.neighbours == k
    rows = [graph.columns[graph.indptr[i]:graph.indptr[i + 1]].tolist() for i in range(shape[0])]
    assert rows == brute_top_k(matrix, k)
    np.testing.assert_array_equal(graph.values, matrix[np.repeat(np.arange(shape[0]), k), graph.columns])


def test_the_exact_builder_is_the_blocked_product():
    rng = np.random.default_rng(2)
    rows, cols = rng.standard_normal((57, 9)).astype(np.float32), rng.standard_normal((41, 9)).astype(np.float32)
    graph = exact_graph(rows, cols, 8, block_rows=10)
    assert graph.method == "exact"
    expected = rows @ cols.T
    assert [graph.columns[graph.indptr[i]:graph.indptr[i + 1]].tolist() for i in range(57)] == brute_top_k(expected, 8)
    np.testing.assert_allclose(graph.values, expected[np.repeat(np.arange(57), 8), graph.columns], rtol=1e-5, atol=1e-6)


def test_exact_values_replace_the_prediction_before_the_neighbours_are_chosen():
    rng = np.random.default_rng(3)
    predicted = rng.random((20, 15)).astype(np.float32)
    self_cols = np.where(np.arange(20) < 15, np.arange(20), -1)
    terms = rng.random(20).astype(np.float32) * 2
    rows, cols = np.array([2, 5, 16]), np.array([0, 4, 9, 14])
    labels = rng.random((3, 4)).astype(np.float32) * 3
    labels[1, 2] = np.nan  # not labelled: the prediction stays
    exact = ExactValues(self_cols, terms, rows, cols, labels)
    expected = predicted.copy()
    expected[np.arange(15), np.arange(15)] += terms[:15]
    for a, row in enumerate(rows):
        for b, col in enumerate(cols):
            if np.isfinite(labels[a, b]):
                expected[row, col] = labels[a, b]
    before = predicted.copy()
    graph = graph_of(predicted, 4, exact=exact, block_rows=6)
    np.testing.assert_array_equal(predicted, before)  # the caller's blocks are not written to
    np.testing.assert_array_equal(graph.to_dense(), np.where(graph.to_dense() != 0, expected, 0))
    assert [graph.columns[graph.indptr[i]:graph.indptr[i + 1]].tolist() for i in range(20)] == brute_top_k(expected, 4)
    best = column_maxima(lambda start, stop: predicted[start:stop], 10, 20, 15, exact=exact, block_rows=3)
    np.testing.assert_array_equal(best, np.maximum(expected[10:20].max(axis=0), 0))
    with pytest.raises(ValueError, match="labels must have shape"):
        ExactValues(labelled_rows=rows, labelled_cols=cols, labels=labels[:, :2])


@pytest.mark.parametrize("shape,budget", [((64, 64), 20), ((75, 40), 40), ((40, 75), 30), ((101, 57), 0.5), ((5, 30), 12)])
def test_the_full_graph_reproduces_dense_greedy(shape, budget):
    rng = np.random.default_rng(shape[0])
    data = dyadic(rng, shape)
    others = dyadic(rng, (shape[0], 7))
    full = graph_of(data, shape[1])
    cases = [
        (facility_location(data, budget), sparse_facility_location(full, budget)),
        (fl_mutual_information(data, others, budget, eta=0.7),
         sparse_fl_mutual_information(full, np.maximum(others, 0).max(axis=1), budget, eta=0.7)),
        (fl_conditional_gain(data, others, budget, nu=0.5),
         sparse_fl_conditional_gain(full, np.maximum(others, 0).max(axis=1), budget, nu=0.5)),
    ]
    for dense, sparse in cases:
        assert sparse.name == dense.name
        np.testing.assert_array_equal(sparse.indices, dense.indices)
        np.testing.assert_array_equal(sparse.gains, dense.gains)
        assert sparse.objective == dense.objective and sparse.n_positive == dense.n_positive
        np.testing.assert_array_equal(sparse.values, dense.values)


def test_a_neighbour_graph_nearly_matches_dense_greedy():
    e = clustered(600, 24, 12, seed=4)
    matrix = e @ e.T
    for budget in (0.1, 0.3):
        dense = facility_location(matrix, budget)
        sparse = sparse_facility_location(graph_of(matrix, 32), budget)
        assert len(sparse.indices) == len(dense.indices) == len(set(sparse.indices.tolist()))
        ratio = objective_value(matrix, sparse.indices) / objective_value(matrix, dense.indices)
        assert ratio >= 0.99  # greedy is not optimal: the graph may even do a little better
    targets = clustered(600, 24, 12, seed=5) @ clustered(100, 24, 12, seed=6).T
    tiny = sparse_facility_location(graph_of(targets, 1), 90)  # one neighbour a row: gains run out, the rest filled
    assert tiny.n_positive is not None and tiny.n_positive == len(np.unique(targets.argmax(axis=1))) < len(tiny.indices) == 90
    assert len(set(tiny.indices.tolist())) == 90


def test_stochastic_greedy_is_seeded_and_close_to_lazy():
    e = clustered(500, 16, 10, seed=5)
    matrix = e @ e.T
    graph = graph_of(matrix, 24)
    first = sparse_facility_location(graph, 60, stochastic=True, epsilon=0.05, seed=7)
    again = sparse_facility_location(graph, 60, stochastic=True, epsilon=0.05, seed=7)
    other = sparse_facility_location(graph, 60, stochastic=True, epsilon=0.05, seed=8)
    lazy = sparse_facility_location(graph, 60)
    np.testing.assert_array_equal(first.indices, again.indices)
    assert first.indices.tolist() != other.indices.tolist() != lazy.indices.tolist()
    assert len(set(first.indices.tolist())) == 60
    assert first.objective >= 0.95 * lazy.objective
    assert first.objective == pytest.approx(objective_value(graph.to_dense(), first.indices))
    with pytest.raises(ValueError, match="epsilon"):
        sparse_facility_location(graph, 5, stochastic=True, epsilon=1.5)


def test_bad_input_is_refused():
    graph = graph_of(np.ones((4, 3), np.float32), 2)
    with pytest.raises(ValueError, match="query_maxima must have one value per graph row"):
        sparse_fl_mutual_information(graph, np.ones(3), 1)
    with pytest.raises(ValueError, match="eta must be a finite number"):
        sparse_fl_mutual_information(graph, np.ones(4), 1, eta=-1.0)
    with pytest.raises(ValueError, match="non-finite"):
        graph_of(np.full((4, 3), np.nan, np.float32), 2)
    with pytest.raises(ValueError, match="exceeds"):
        sparse_facility_location(graph, 4)
    with pytest.raises(ValueError, match="objective 'topk' does not run on a neighbour graph"):
        choose_on_graph(graph, ObjectiveSpec("topk", 1), lambda start, stop: np.ones((stop - start, 3), np.float32), 4)


def test_the_plan_follows_size_and_the_override():
    assert plan_graph(100, 100, dense_fits=True).builder == "dense"
    assert plan_graph(100, 100, dense_fits=True, neighbours=16) == plan_graph(100, 100, dense_fits=False, neighbours=16)
    assert plan_graph(100, 100, dense_fits=False, neighbours=16).neighbours == 16
    assert plan_graph(100, 100, dense_fits=False, neighbours=0).sparse is False
    assert plan_graph(10**6, 10**6, dense_fits=False, inner_product=False).builder == "blocks"
    assert plan_graph(10**6, 10**6, dense_fits=False).builder == ("faiss" if faiss_available() else "exact")
    with pytest.raises(InputError, match="--selection.neighbours must be >= 0"):
        plan_graph(100, 100, dense_fits=True, neighbours=-1)


def test_the_graph_setting_chooses_the_builder():
    assert plan_graph(10**6, 10**6, dense_fits=False, graph="exact") == GraphPlan(True, 64, "exact")
    assert plan_graph(100, 100, dense_fits=False, graph="auto").builder == "exact"  # small: exact whatever the index
    if faiss_available():
        assert plan_graph(10**6, 10**6, dense_fits=False) == GraphPlan(True, 64, "faiss", DEFAULT_INDEX)
        assert plan_graph(100, 100, dense_fits=False, neighbours=8, graph="hnsw") == GraphPlan(True, 8, "faiss", "hnsw")
        assert plan_graph(100, 100, dense_fits=False, neighbours=8, graph="ivf") == GraphPlan(True, 8, "faiss", "ivf")
    assert plan_graph(100, 100, dense_fits=True, graph="ivf").builder == "dense"  # the graph setting does not make a run sparse
    with pytest.raises(InputError, match="has none: use --selection.graph auto or exact"):
        plan_graph(10**6, 10**6, dense_fits=False, inner_product=False, graph="ivf")
    assert plan_graph(10**6, 10**6, dense_fits=False, inner_product=False, graph="exact").builder == "blocks"
    with pytest.raises(InputError, match="--selection.graph must be one of"):
        plan_graph(100, 100, dense_fits=False, graph="annoy")


@pytest.mark.parametrize("index", ["hnsw", "ivf"])
def test_the_faiss_graph_finds_most_true_neighbours(index):
    if not faiss_available():
        pytest.skip("faiss is not importable (pip install 'nncift[sparse]')")
    rng = np.random.default_rng(6)
    e = clustered(3000, 32, 30, seed=6)
    rows = np.hstack([e, rng.random((3000, 2)).astype(np.float32)])  # row offsets, as in the two-tower form
    cols = np.hstack([e, np.ones((3000, 1), np.float32), 0.1 * rng.standard_normal((3000, 1)).astype(np.float32)])
    exact = ExactValues(np.arange(3000), np.full(3000, 5.0, np.float32))  # a self term that puts each row's own column first
    graph = faiss_graph(rows, cols, 16, exact=exact, index=index, recall_rows=300)
    assert graph.method == f"faiss-{index}" and graph.recall is not None and graph.recall >= 0.9
    truth = exact_graph(rows, cols, 16, exact=exact)
    found = [set(graph.columns[graph.indptr[i]:graph.indptr[i + 1]].tolist()) for i in range(3000)]
    assert all(i in found[i] for i in range(3000))  # the self pair is always offered
    overlap = np.mean([len(found[i] & set(truth.columns[16 * i:16 * i + 16].tolist())) / 16 for i in range(3000)])
    assert overlap >= 0.9
    values = graph.to_dense()[np.arange(3000), np.arange(3000)]
    np.testing.assert_allclose(values, np.einsum("ij,ij->i", rows, cols) + 5.0, rtol=1e-5)


def test_the_faiss_graph_offers_labelled_columns_with_their_exact_values():
    if not faiss_available():
        pytest.skip("faiss is not importable (pip install 'nncift[sparse]')")
    e = clustered(400, 16, 8, seed=7)
    labels = np.full((2, 3), -1.0, np.float32)
    labels[0, 1] = 50.0  # a labelled column far above any prediction: it must be kept, at its exact value
    exact = ExactValues(labelled_rows=np.array([3, 9]), labelled_cols=np.array([10, 20, 30]), labels=labels)
    graph = faiss_graph(e, e, 8, exact=exact, index="hnsw", recall_rows=0)
    assert graph.recall is None
    dense = graph.to_dense()
    assert dense[3, 20] == 50.0
    assert all(dense[row, col] in (0.0, -1.0) for row in (3, 9) for col in (10, 20, 30) if (row, col) != (3, 20))
    assert np.all(np.diff(graph.indptr) == 8)


@pytest.mark.parametrize("objective", ["fl", "flmi", "flcg"])
def test_a_pool_plus_targets_layout_matches_choose_subset(objective):
    """The select step's layout (pool rows, then target rows; columns = the pool): for FLMI and FLCG the graph holds the
    pool rows, the target rows give each pool row's query/private maximum (:func:`column_maxima`), as :func:`choose_subset`
    splits it; FL's graph holds every row. :func:`choose_on_graph` on the full graph picks what the dense greedy picks."""
    n_pool, n_targets = 45, 12
    matrix = dyadic(np.random.default_rng(8), (n_pool + n_targets, n_pool))
    spec = ObjectiveSpec(objective, 15, n_pool_rows=n_pool, eta=0.8, nu=0.6)
    dense = choose_subset(matrix, spec)

    def predict(start: int, stop: int) -> np.ndarray:
        return matrix[start:stop]

    graph_rows = n_pool + n_targets if objective == "fl" else n_pool
    sparse = choose_on_graph(graph_from_blocks(predict, graph_rows, n_pool, n_pool), spec, predict, n_pool + n_targets)
    np.testing.assert_array_equal(sparse.indices, dense.indices)
    assert sparse.objective == dense.objective


@pytest.mark.parametrize("objective", ["fl", "flmi", "flcg"])
def test_graph_greedy_with_row_terms_is_each_objectives_greedy(objective):
    """:func:`graph_greedy` with :func:`row_terms` (what GreeDi's parts run) picks what each objective's own function picks."""
    matrix = dyadic(np.random.default_rng(9), (40, 30))
    graph = graph_of(matrix, 6)
    maxima = np.random.default_rng(10).random(40).astype(np.float32)
    cap, initial = row_terms(objective, None if objective == "fl" else maxima, 40, eta=0.7, nu=0.5)
    chosen = graph_greedy(graph, 9, cap=cap, initial=initial, name=objective)
    expected = {"fl": lambda: sparse_facility_location(graph, 9),
                "flmi": lambda: sparse_fl_mutual_information(graph, maxima, 9, eta=0.7),
                "flcg": lambda: sparse_fl_conditional_gain(graph, maxima, 9, nu=0.5)}[objective]()
    assert chosen.indices.tolist() == expected.indices.tolist() and chosen.objective == expected.objective
    assert chosen.name == objective and (cap is not None) == (objective == "flmi") and (initial is not None) == (objective == "flcg")
    with pytest.raises(ValueError, match="needs fl, or flmi / flcg"):
        row_terms("topk", maxima, 40)
