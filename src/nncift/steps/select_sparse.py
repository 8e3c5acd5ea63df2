"""Facility location of a ``select`` run on a K-nearest-neighbour graph of the predicted matrix (``--selection.neighbours``).

The predicted (rows × pool) matrix is never formed nor written (no ``predicted.npy``): each graph row keeps its ``K``
highest predicted values (exact Q1 values and the self-pair term folded in first, :class:`~nncift.selection.sparse.ExactValues`),
and FL, FLMI or FLCG runs on those entries (:mod:`nncift.selection.sparse`). FLMI's query maxima and FLCG's private maxima
come from the target rows, predicted block by block. Top-k always runs on the whole matrix.

The exact and the predicted-blocks graphs are computed in row blocks by the run's executor (local or Ray: the same graph,
bit for bit); the FAISS graph in this process. ``--selection.partitions m`` (m > 1) selects by two-round distributed greedy
(GreeDi, :mod:`nncift.selection.distributed`), each part's greedy on the executor's workers, parts drawn with the run's seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nncift.execution.executor import Executor, LocalExecutor
from nncift.execution.graph_jobs import GraphSource
from nncift.files.errors import InputError
from nncift.network.towers import TwoTowerNetwork, inner_product_form
from nncift.run.layout import Layout, self_cols_of
from nncift.selection import ObjectiveSpec, Selection, fits_in_memory
from nncift.selection.distributed import greedi
from nncift.selection.sparse import BlockPredictor, ExactValues, NeighbourGraph, choose_on_graph, column_maxima, row_terms
from nncift.selection.sparse_index import GraphPlan, faiss_graph, plan_graph
from nncift.settings.stages import SelectionSettings

SPARSE_OBJECTIVES = ("fl", "flmi", "flcg")
"""The objectives that may run on a neighbour graph (top-k needs every row of a column)."""


def graph_rows(objective: str, layout: Layout) -> int:
    """Rows of the graph: the pool rows for FLMI / FLCG (the target rows only give maxima), every row for FL."""
    return layout.n_pool_rows if objective in ("flmi", "flcg") else len(layout.rows)


def selection_plan(network: Any, layout: Layout, n_pool: int, objective: str, selection: SelectionSettings) -> GraphPlan:
    """Dense or sparse selection for this run: ``selection.neighbours`` (None: sparse when the dense matrix would not fit in
    memory, :func:`~nncift.selection.fits_in_memory`, or when ``selection.partitions`` > 1; 0: dense); top-k is always dense."""
    distributed = selection.partitions > 1
    if distributed and (objective not in SPARSE_OBJECTIVES or selection.neighbours == 0):
        raise InputError(f"--selection.partitions {selection.partitions} needs a neighbour graph: objective fl, flmi or flcg "
                         f"(this run: {objective}) and --selection.neighbours unset or above 0")
    if objective not in SPARSE_OBJECTIVES:
        return GraphPlan(False, 0, "dense")
    dense_fits = selection.neighbours is None and not distributed and fits_in_memory((len(layout.rows), n_pool))
    inner = isinstance(network, TwoTowerNetwork) and network.anchors is None
    return plan_graph(graph_rows(objective, layout), n_pool, dense_fits=dense_fits, neighbours=selection.neighbours, inner_product=inner,
                      graph=selection.graph)


def select_on_graph(plan: GraphPlan, network: Any, layout: Layout, row_embeddings: np.ndarray, col_embeddings: np.ndarray,
                    labels: np.ndarray, objective: str, selection: SelectionSettings, *, executor: Executor | None = None,
                    seed: int = 0, progress: bool = False) -> tuple[Selection, dict[str, Any]]:
    """The selection on the plan's graph, and the manifest entries that describe it.

    ``labels``: the scaled exact values of the sampled block (rows ``layout.seen_rows`` × columns ``layout.seen_cols``, NaN
    where not labelled); rows of the matrix = ``layout.rows``, columns = the pool (``col_embeddings``). ``executor``
    (default: local) builds the exact and predicted-blocks graphs and runs GreeDi's parts; ``seed`` draws the parts.
    """
    own = self_cols_of(layout)
    n_rows = graph_rows(objective, layout)
    executor = executor or LocalExecutor()
    predict: BlockPredictor
    if plan.builder in ("exact", "faiss"):
        form = inner_product_form(network, row_embeddings, col_embeddings, self_cols=own)
        exact = ExactValues(own, form.self_terms, layout.seen_rows, layout.seen_cols, labels)
        row_features, col_features = form.row_features, form.col_features
        predict = lambda start, stop: row_features[start:stop] @ col_features.T  # noqa: E731
        graph: NeighbourGraph = (faiss_graph(row_features[:n_rows], col_features, plan.neighbours, exact=exact, index=plan.index, seed=seed)
                                 if plan.builder == "faiss"
                                 else executor.neighbour_graph(GraphSource.features(row_features, col_features), plan.neighbours,
                                                               n_rows=n_rows, exact=exact, progress=progress))
    else:  # the paper MLP or an anchored network: its blocks already hold the self-pair term
        exact = ExactValues(None, None, layout.seen_rows, layout.seen_cols, labels)
        source = GraphSource.predicted(network, row_embeddings, col_embeddings, own)
        predict = source.predictor()
        graph = executor.neighbour_graph(source, plan.neighbours, n_rows=n_rows, exact=exact, progress=progress)
    spec = ObjectiveSpec(objective, selection.budget, n_pool_rows=layout.n_pool_rows, eta=selection.eta, nu=selection.nu)
    info: dict[str, Any] = {"selection_mode": "sparse", "neighbours": int(graph.neighbours), "graph_builder": graph.method,
                            "graph_recall": graph.recall, "graph_executor": executor.name if plan.builder != "faiss" else "in process"}
    if selection.partitions <= 1:
        return choose_on_graph(graph, spec, predict, len(layout.rows), exact=exact), info
    maxima = None if objective == "fl" else column_maxima(predict, layout.n_pool_rows, len(layout.rows), graph.n_columns, exact=exact)
    cap, initial = row_terms(objective, maxima, graph.n_rows, eta=selection.eta, nu=selection.nu)
    chosen, greedi_info = greedi(graph, selection.budget, selection.partitions, seed=seed, name=objective, cap=cap, initial=initial,
                                 run_parts=executor.greedy_parts)
    return chosen, {**info, "greedi": {**greedi_info, "executor": executor.name}}


def describe_mode(manifest: dict[str, Any]) -> str | None:
    """A few words on how a run selected (for the terminal): None for the whole matrix."""
    if manifest.get("selection_mode") != "sparse":
        return None
    recall = manifest.get("graph_recall")
    greedi = manifest.get("greedi") or {}
    return (f"sparse selection: {manifest.get('neighbours')} neighbours per row ({manifest.get('graph_builder')} graph"
            + (f", recall {recall:.3f}" if recall is not None else "") + "); no predicted.npy"
            + (f"; GreeDi over {greedi['partitions']} parts (winner: {greedi['winner']})" if greedi else ""))
