"""Label anchors: the labelled block's residuals carried to unlabelled pairs by embedding neighbours.

A predictor ``p(a, b)`` (the calibrated cosine, or the trained network) leaves a residual
``e = y − p`` on every labelled pair. Records that look alike (close sentence embeddings) tend to
have alike influence rows and columns: a candidate of the same template as a labelled one has a
similar LESS gradient, hence a similar column. The anchored prediction adds to ``p`` a kernel
(Nadaraya–Watson) estimate of the residual from the labelled pairs whose row and column are close::

    p̂(a, b) = p(a, b) + Σ_kl w(a, a_k) e_kl w(b, b_l) / (Σ_kl w(a, a_k) m_kl w(b, b_l) + κ)

with ``w(x, x_k) = exp((cos(x, x_k) − 1) / τ)`` kept for the ``neighbours`` closest labelled records
(0 for the rest; on the candidates' side ``neighbours = 0`` weighs every labelled candidate alike,
which makes the correction each labelled row's mean residual: a per-row offset calibration),
``m_kl`` = 1 where the pair (k, l) is labelled and ``κ`` a shrinkage pseudo-count: with few or
distant neighbours the estimate shrinks to 0 and ``p̂`` to ``p``. A labelled row's own residuals
carry most weight on its row (w = 1 at cos = 1), which calibrates that row's scale and offset to its
labels; a target row with no labels borrows from its neighbours. Self-pairs (a record with itself)
are left out of the residuals: the network's self-pair term models them.

The estimate is two matrix products per block (``K_rows · E · K_colsᵀ``), so it keeps the
prediction's inner-product form with width ``len(anchor rows)``; the bandwidth ``τ``, ``κ`` and the
base it corrects are chosen on held-out records (:mod:`nncift.network.fitting`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["Anchors", "kernel_weights", "sparse_kernel_weights", "anchor_correction", "TEMPERATURES", "SHRINKS", "NEIGHBOURS"]

TEMPERATURES = (0.02, 0.05, 0.1)
"""Kernel bandwidths τ tried on held-out records (cosines of MiniLM embeddings: same template ≈ 0.6–0.9)."""
SHRINKS = (0.5, 2.0)
"""Shrinkage pseudo-counts κ tried on held-out records."""
NEIGHBOURS = 16
"""Labelled records kept per side as a pair's neighbours."""


@dataclass
class Anchors:
    """The labelled block a correction is read from: embeddings of its rows and columns, standardised
    residuals (0 where not labelled or a self-pair) and the mask of pairs that count."""

    rows: Tensor
    cols: Tensor
    residuals: Tensor
    mask: Tensor
    temperature: float
    shrink: float
    neighbours: int = NEIGHBOURS
    """Labelled candidates a column borrows from (0: all of them alike, i.e. each row's mean residual); rows always
    borrow from their :data:`NEIGHBOURS` nearest labelled rows."""

    @classmethod
    def from_block(cls, rows: np.ndarray | Tensor, cols: np.ndarray | Tensor, residuals: np.ndarray, mask: np.ndarray,
                   temperature: float, shrink: float, neighbours: int = NEIGHBOURS) -> "Anchors":
        """Anchors of a labelled block, keeping only the rows and columns with at least one counted pair."""
        mask = np.asarray(mask, dtype=bool)
        keep_rows, keep_cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        sub = np.ix_(keep_rows, keep_cols)
        values = np.where(mask[sub], np.asarray(residuals, dtype=np.float64)[sub], 0.0)
        as_tensor = lambda x: torch.as_tensor(np.ascontiguousarray(np.asarray(x, dtype=np.float32)))  # noqa: E731
        return cls(as_tensor(np.asarray(rows)[keep_rows]), as_tensor(np.asarray(cols)[keep_cols]), as_tensor(values),
                   as_tensor(mask[sub]), float(temperature), float(shrink), int(neighbours))


def kernel_weights(x: Tensor, anchors: Tensor, temperature: float, neighbours: int) -> Tensor:
    """(n, L) weights ``exp((cos − 1)/τ)`` of each of n embeddings to its ``neighbours`` nearest anchors (0 elsewhere).

    ``neighbours`` = 0 weighs every anchor 1 (a global average over them)."""
    if anchors.shape[0] == 0:
        return torch.zeros(x.shape[0], 0)
    if neighbours == 0:
        return torch.ones(x.shape[0], anchors.shape[0])
    cos = x @ anchors.T
    keep = min(int(neighbours), anchors.shape[0])
    top, index = torch.topk(cos, keep, dim=1)
    weights = torch.zeros_like(cos)
    weights.scatter_(1, index, torch.exp((top - 1.0) / temperature))
    return weights


def sparse_kernel_weights(x: Tensor, anchors: Tensor, temperature: float, neighbours: int) -> Tensor:
    """:func:`kernel_weights` as a sparse CSR (n, L) tensor: ``neighbours`` entries per row (prediction at scale; all L with 0)."""
    if neighbours == 0:
        return kernel_weights(x, anchors, temperature, 0).to_sparse_csr()
    keep = min(int(neighbours), anchors.shape[0])
    top, index = torch.topk(x @ anchors.T, keep, dim=1)
    crow = torch.arange(0, x.shape[0] * keep + 1, keep, dtype=torch.int64)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the two operations used here are stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, index.reshape(-1), torch.exp((top - 1.0) / temperature).reshape(-1), size=(x.shape[0], anchors.shape[0]))


def anchor_correction(rows: Tensor, cols: Tensor, anchors: Anchors, *, col_weights: Tensor | None = None) -> Tensor:
    """(R, C) standardised residual estimate for every row × column (``col_weights``: the columns' kernel weights when
    already computed, as in a prediction by row blocks)."""
    wr = kernel_weights(rows, anchors.rows, anchors.temperature, NEIGHBOURS)
    wc = kernel_weights(cols, anchors.cols, anchors.temperature, anchors.neighbours) if col_weights is None else col_weights
    numerator = (wr @ anchors.residuals) @ wc.T
    denominator = (wr @ anchors.mask) @ wc.T + anchors.shrink
    return numerator / denominator
