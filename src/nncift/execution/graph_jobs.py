"""What an executor's worker needs to compute neighbour-graph row blocks, and the computation itself.

A :class:`GraphSource` is either the inner-product features of a two-tower network
(:func:`~nncift.network.towers.inner_product_form`: a block is a matrix product) or a network that predicts blocks (the
paper MLP, an anchored two-tower network: :func:`~nncift.network.paper.predict_pairwise`). A :class:`GraphJob` adds the
exact values and ``K`` and computes one block (:func:`~nncift.selection.distributed.graph_block`). The local executor
and every Ray worker run the same :class:`GraphJob` on the same blocks, so the assembled graphs are bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nncift.selection.distributed import graph_block
from nncift.selection.sparse import BlockPredictor, ExactValues, feature_arrays

__all__ = ["GraphSource", "GraphJob"]


@dataclass(frozen=True)
class GraphSource:
    """The matrix whose rows the graph keeps the best of: ``features`` (row, column features: scores = their inner
    products) or ``network`` with its row and column embeddings (and per row the column of the same record, −1: none)."""

    row_features: np.ndarray | None = None
    col_features: np.ndarray | None = None
    network: Any = None
    row_embeddings: np.ndarray | None = None
    col_embeddings: np.ndarray | None = None
    self_cols: np.ndarray | None = None

    @classmethod
    def features(cls, row_features: np.ndarray, col_features: np.ndarray) -> "GraphSource":
        """Scores = ``row_features @ col_features.T`` (float32, C-contiguous copies when needed)."""
        rows, cols = feature_arrays(row_features, col_features)
        return cls(row_features=rows, col_features=cols)

    @classmethod
    def predicted(cls, network: Any, row_embeddings: np.ndarray, col_embeddings: np.ndarray,
                  self_cols: np.ndarray | None = None) -> "GraphSource":
        """Scores = the network's predicted blocks (its self-pair term included)."""
        return cls(network=network, row_embeddings=np.asarray(row_embeddings, np.float32),
                   col_embeddings=np.asarray(col_embeddings, np.float32),
                   self_cols=None if self_cols is None else np.asarray(self_cols, np.int64))

    @property
    def by_features(self) -> bool:
        """Whether the scores are inner products of features."""
        return self.row_features is not None

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the matrix."""
        rows, cols = (self.row_features, self.col_features) if self.by_features else (self.row_embeddings, self.col_embeddings)
        assert rows is not None and cols is not None
        return len(rows), len(cols)

    @property
    def method(self) -> str:
        """The graph's ``method``: ``exact`` (blocked products) or ``blocks`` (predicted blocks)."""
        return "exact" if self.by_features else "blocks"

    def predictor(self) -> BlockPredictor:
        """``predict(start, stop)``: rows ``start:stop`` of the matrix, float32 (stop − start, n_cols)."""
        if self.by_features:
            rows, cols = np.asarray(self.row_features), np.asarray(self.col_features)  # the arrays themselves, no copies
            return lambda start, stop: rows[start:stop] @ cols.T
        from nncift.network.paper import predict_pairwise

        network, own = self.network, self.self_cols
        embedded_rows, embedded_cols = np.asarray(self.row_embeddings), np.asarray(self.col_embeddings)
        return lambda start, stop: predict_pairwise(network, embedded_rows[start:stop], embedded_cols,
                                                    self_cols=None if own is None else own[start:stop])


class GraphJob:
    """Row blocks of one graph: the source's predictor, the exact values and ``K``."""

    def __init__(self, source: GraphSource, neighbours: int, exact: ExactValues | None = None) -> None:
        self.predict, self.n_cols, self.neighbours, self.exact = source.predictor(), source.shape[1], int(neighbours), exact

    def block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``start:stop``: (columns, values), each (stop − start, min(K, n_cols))."""
        return graph_block(self.predict, start, stop, self.n_cols, self.neighbours, exact=self.exact)
