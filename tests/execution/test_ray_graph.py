"""The neighbour graph in row blocks on an executor, and GreeDi's parts on its workers: the local executor's graph is the
one-process graph bit for bit, and a real local Ray cluster (one for the module: 2 CPUs, 2 workers) gives the local
executor's graph and picks bit for bit, for inner-product features and for a network that predicts blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nncift.execution.executor import LocalExecutor
from nncift.execution.graph_jobs import GraphSource
from nncift.network.paper import InfluenceNetwork, predict_pairwise
from nncift.selection.distributed import greedi, run_parts_in_process
from nncift.selection.sparse import ExactValues, NeighbourGraph, exact_graph, graph_from_blocks, row_terms

N_ROWS, N_COLS, WIDTH = 90, 70, 8


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster started by the test: 2 CPUs, a small object store, no dashboard."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install nncift[ray])")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def features() -> tuple[np.ndarray, np.ndarray, ExactValues]:
    """Row and column features (rows 0..69 are the columns' own records) and exact values: self-pair terms and a labelled block."""
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((N_ROWS, WIDTH)).astype(np.float32)
    cols = np.concatenate([rows[:N_COLS, :4], rng.standard_normal((N_COLS, 4)).astype(np.float32)], axis=1)
    labels = rng.standard_normal((5, 6)).astype(np.float32) * 4
    labels[0, 0], labels[1, 2] = np.nan, 100.0
    exact = ExactValues(np.where(np.arange(N_ROWS) < N_COLS, np.arange(N_ROWS), -1), rng.random(N_ROWS).astype(np.float32),
                        np.array([0, 11, 30, 64, 89]), np.array([2, 5, 11, 40, 41, 69]), labels)
    return rows, cols, exact


def paper_network() -> InfluenceNetwork:
    torch.manual_seed(0)
    return InfluenceNetwork(WIDTH, (16,)).eval()


def same_graph(first: NeighbourGraph, second: NeighbourGraph) -> None:
    assert (first.n_rows, first.n_columns, first.neighbours, first.method) == (second.n_rows, second.n_columns, second.neighbours, second.method)
    for name in ("indptr", "columns", "values"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name), err_msg=name)


@pytest.mark.parametrize("block_rows", [None, 16])
def test_the_local_executor_builds_the_one_process_graph(features, block_rows) -> None:
    rows, cols, exact = features
    built = LocalExecutor().neighbour_graph(GraphSource.features(rows, cols), 9, n_rows=80, exact=exact, block_rows=block_rows,
                                            progress=False)
    same_graph(built, exact_graph(rows[:80], cols, 9, exact=exact, block_rows=block_rows))
    assert built.n_rows == 80 and built.method == "exact"
    # row 11's label at column 11 (its own record: the label replaces prediction + self-pair term) is kept as it is
    kept = dict(zip(built.columns[built.indptr[11]:built.indptr[12]].tolist(), built.values[built.indptr[11]:built.indptr[12]].tolist()))
    assert kept[11] == 100.0


def test_the_local_executor_builds_a_predicted_blocks_graph(features) -> None:
    rows, cols, exact = features
    network, own = paper_network(), exact.self_cols
    assert own is not None
    labelled = ExactValues(None, None, exact.labelled_rows, exact.labelled_cols, exact.labels)
    built = LocalExecutor().neighbour_graph(GraphSource.predicted(network, rows, cols, own), 6, exact=labelled, block_rows=32,
                                            progress=False)
    expected = graph_from_blocks(lambda a, b: predict_pairwise(network, rows[a:b], cols, self_cols=own[a:b]), N_ROWS, N_COLS, 6,
                                 exact=labelled, block_rows=32)
    same_graph(built, NeighbourGraph(expected.indptr, expected.columns, expected.values, N_COLS, "blocks", 6))


def test_the_local_executor_runs_greedi_parts_in_process(features) -> None:
    rows, cols, exact = features
    graph = exact_graph(rows, cols, 9, exact=exact)
    on_executor, info = greedi(graph, 12, 3, seed=4, run_parts=LocalExecutor().greedy_parts)
    in_process, info_in_process = greedi(graph, 12, 3, seed=4, run_parts=run_parts_in_process)
    assert on_executor.indices.tolist() == in_process.indices.tolist() and info == info_in_process


@pytest.mark.ray
def test_graph_and_greedi_on_ray_equal_the_local_executor(ray_cluster, features) -> None:
    from nncift.execution.ray_cluster import RayExecutor

    rows, cols, exact = features
    network, own = paper_network(), exact.self_cols
    labelled = ExactValues(None, None, exact.labelled_rows, exact.labelled_cols, exact.labels)
    sources = [(GraphSource.features(rows, cols), exact), (GraphSource.predicted(network, rows, cols, own), labelled)]
    local = LocalExecutor()
    local_graphs = [local.neighbour_graph(source, 9, exact=values, block_rows=16, progress=False) for source, values in sources]
    maxima = np.random.default_rng(1).random(N_ROWS).astype(np.float32)
    runs = [("fl", None, None), ("flmi", *row_terms("flmi", maxima, N_ROWS, eta=0.7))]
    local_picks = [greedi(local_graphs[0], 15, 4, seed=2, name=name, cap=cap, initial=initial, run_parts=local.greedy_parts)
                   for name, cap, initial in runs]
    with RayExecutor(workers=2, worker_cpus=1.0) as executor:
        for (source, values), expected in zip(sources, local_graphs):
            same_graph(executor.neighbour_graph(source, 9, exact=values, block_rows=16, progress=False), expected)
        for (name, cap, initial), (expected, expected_info) in zip(runs, local_picks):
            chosen, info = greedi(local_graphs[0], 15, 4, seed=2, name=name, cap=cap, initial=initial, run_parts=executor.greedy_parts)
            assert chosen.indices.tolist() == expected.indices.tolist() and chosen.gains.tolist() == expected.gains.tolist()
            assert chosen.objective == expected.objective and info == expected_info
