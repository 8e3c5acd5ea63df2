"""Facility location of a ``select`` run on a K-nearest-neighbour graph of the predicted matrix (``--selection.neighbours``).

The predicted (rows × pool) matrix is never formed nor written (no ``predicted.npy``): each graph row keeps its ``K``
highest predicted values (exact Q1 values and the self-pair term folded in first, :class:`~nncift.selection.sparse.ExactValues`),
and FL, FLMI or FLCG runs on those entries (:mod:`nncift.selection.sparse`). FLMI's query maxima and FLCG's private maxima
come from the target rows, predicted block by block. Top-k always runs on the whole matrix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nncift.network.paper import predict_pairwise
from nncift.network.towers import TwoTowerNetwork, inner_product_form
from nncift.run.layout import Layout, self_cols_of
from nncift.selection import ObjectiveSpec, Selection, fits_in_memory
from nncift.selection.sparse import BlockPredictor, ExactValues, NeighbourGraph, choose_on_graph, exact_graph, graph_from_blocks
from nncift.selection.sparse_index import GraphPlan, faiss_graph, plan_graph
from nncift.settings.stages import SelectionSettings

SPARSE_OBJECTIVES = ("fl", "flmi", "flcg")
"""The objectives that may run on a neighbour graph (top-k needs every row of a column)."""


def graph_rows(objective: str, layout: Layout) -> int:
    """Rows of the graph: the pool rows for FLMI / FLCG (the target rows only give maxima), every row for FL."""
    return layout.n_pool_rows if objective in ("flmi", "flcg") else len(layout.rows)


def selection_plan(network: Any, layout: Layout, n_pool: int, objective: str, selection: SelectionSettings) -> GraphPlan:
    """Dense or sparse selection for this run: ``selection.neighbours`` (None: sparse when the dense matrix would not fit in
    memory, :func:`~nncift.selection.fits_in_memory`; 0: dense); top-k is always dense."""
    if objective not in SPARSE_OBJECTIVES:
        return GraphPlan(False, 0, "dense")
    dense_fits = selection.neighbours is None and fits_in_memory((len(layout.rows), n_pool))
    inner = isinstance(network, TwoTowerNetwork) and network.anchors is None
    return plan_graph(graph_rows(objective, layout), n_pool, dense_fits=dense_fits, neighbours=selection.neighbours, inner_product=inner)


def select_on_graph(plan: GraphPlan, network: Any, layout: Layout, row_embeddings: np.ndarray, col_embeddings: np.ndarray,
                    labels: np.ndarray, objective: str, selection: SelectionSettings) -> tuple[Selection, dict[str, Any]]:
    """The selection on the plan's graph, and the manifest entries that describe it.

    ``labels``: the scaled exact values of the sampled block (rows ``layout.seen_rows`` × columns ``layout.seen_cols``, NaN
    where not labelled); rows of the matrix = ``layout.rows``, columns = the pool (``col_embeddings``).
    """
    own = self_cols_of(layout)
    n_rows, n_pool = graph_rows(objective, layout), len(col_embeddings)
    predict: BlockPredictor
    if plan.builder in ("exact", "faiss"):
        form = inner_product_form(network, row_embeddings, col_embeddings, self_cols=own)
        exact = ExactValues(own, form.self_terms, layout.seen_rows, layout.seen_cols, labels)
        row_features, col_features = form.row_features, form.col_features
        predict = lambda start, stop: row_features[start:stop] @ col_features.T  # noqa: E731
        build = exact_graph if plan.builder == "exact" else faiss_graph
        graph: NeighbourGraph = build(row_features[:n_rows], col_features, plan.neighbours, exact=exact)
    else:  # the paper MLP or an anchored network: its blocks already hold the self-pair term
        exact = ExactValues(None, None, layout.seen_rows, layout.seen_cols, labels)
        predict = lambda start, stop: predict_pairwise(network, row_embeddings[start:stop], col_embeddings,  # noqa: E731
                                                       self_cols=own[start:stop])
        graph = graph_from_blocks(predict, n_rows, n_pool, plan.neighbours, exact=exact)
    spec = ObjectiveSpec(objective, selection.budget, n_pool_rows=layout.n_pool_rows, eta=selection.eta, nu=selection.nu)
    chosen = choose_on_graph(graph, spec, predict, len(layout.rows), exact=exact)
    info = {"selection_mode": "sparse", "neighbours": int(graph.neighbours), "graph_builder": graph.method, "graph_recall": graph.recall}
    return chosen, info


def describe_mode(manifest: dict[str, Any]) -> str | None:
    """A few words on how a run selected (for the terminal): None for the whole matrix."""
    if manifest.get("selection_mode") != "sparse":
        return None
    recall = manifest.get("graph_recall")
    return (f"sparse selection: {manifest.get('neighbours')} neighbours per row ({manifest.get('graph_builder')} graph"
            + (f", recall {recall:.3f}" if recall is not None else "") + "); no predicted.npy")
