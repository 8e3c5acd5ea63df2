"""Per-row calibration: each labelled row's predictions mapped onto its own labels' scale.

A predictor ``p`` (the calibrated cosine, the trained network or their blend) is fitted to the labels with one
global scale: ``α·cos + β``. But rows differ in scale. On LESS, the targets of one subtask can have cosines
twice as high as another's while their gradient similarities are alike. Any selection that compares rows
(top-k over the max of subtask means, facility location's per-row maxima) then favours the high-cosine subtask
through scale alone. On the 60-target ICL grid, 24–26 of 30 picks came from one subtask.

Row calibration fits, for each row ``k`` with at least :data:`MIN_LABELS` labelled (non-self) pairs, the least-squares
line ``y ≈ a_k·p + b_k`` of its labels on the predictor's values. Every row ``x`` then predicts::

    p̂(x, ·) = A(x)·p(x, ·) + B(x),   A(x) = 1 + Σ_k w_k (a_k − 1) / (Σ_k w_k + κ),   B(x) = Σ_k w_k b_k / (Σ_k w_k + κ)

with ``w_k = exp((cos(x, x_k) − 1)/τ)`` over the :data:`~nncift.network.anchors.NEIGHBOURS` nearest calibrated rows.
A labelled row gets its own line almost exactly (``w = 1``, ``κ`` small). An unlabelled row borrows a shrunk
share of its close neighbours' lines, and otherwise keeps ``p``. ``A(x) > 0`` always (slopes are clipped at 0), so
a row's own ranking of its candidates never flips. The calibrated prediction keeps the network's inner-product form:
the row's features are scaled by ``A(x)`` and ``B(x)`` is added to its offset.

:mod:`nncift.network.fitting` scores every predictor with and without its row calibration on held-out data, and
ships the calibration only where it wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nncift.network.anchors import NEIGHBOURS, kernel_weights

__all__ = ["RowCalibration", "MIN_LABELS", "CALIBRATION_TEMPERATURES", "CALIBRATION_SHRINK"]

MIN_LABELS = 3
"""Labelled pairs a row needs for its own line (fewer: the row borrows, like an unlabelled one)."""
CALIBRATION_TEMPERATURES = (0.02, 0.05)
"""Bandwidths τ tried on held-out data (small: a row's own line dominates; neighbours lend only when very close)."""
CALIBRATION_SHRINK = 0.05
"""κ: a labelled row keeps about 1/(1 + κ) of its own line; a far row keeps ``p``."""


@dataclass
class RowCalibration:
    """The calibrated rows' embeddings, their fitted lines (in standardised label units) and the kernel."""

    rows: Tensor
    slopes: Tensor
    offsets: Tensor
    temperature: float
    shrink: float = CALIBRATION_SHRINK

    @classmethod
    def fit(cls, row_embeddings: np.ndarray | Tensor, predictions: np.ndarray, labels: np.ndarray, mask: np.ndarray,
            temperature: float, shrink: float = CALIBRATION_SHRINK) -> "RowCalibration":
        """Each row's least-squares line ``labels ≈ a·predictions + b`` on its ``mask`` pairs (rows with fewer than
        :data:`MIN_LABELS` pairs or no spread in the predictions are left out; slopes clipped at 0)."""
        mask = np.asarray(mask, dtype=bool)
        counts = mask.sum(axis=1)
        x = np.where(mask, np.asarray(predictions, dtype=np.float64), 0.0)
        y = np.where(mask, np.asarray(labels, dtype=np.float64), 0.0)
        safe = np.maximum(counts, 1)
        mx, my = x.sum(axis=1) / safe, y.sum(axis=1) / safe
        dx = np.where(mask, x - mx[:, None], 0.0)
        dy = np.where(mask, y - my[:, None], 0.0)
        sxx, sxy = (dx * dx).sum(axis=1), (dx * dy).sum(axis=1)
        keep = np.flatnonzero((counts >= MIN_LABELS) & (sxx > 1e-12 * np.maximum(counts, 1)))
        slopes = np.clip(sxy[keep] / np.maximum(sxx[keep], 1e-300), 0.0, None)
        offsets = my[keep] - slopes * mx[keep]
        as_tensor = lambda v: torch.as_tensor(np.ascontiguousarray(np.asarray(v, dtype=np.float32)))  # noqa: E731
        return cls(as_tensor(np.asarray(row_embeddings)[keep]), as_tensor(slopes), as_tensor(offsets), float(temperature), float(shrink))

    def lines(self, rows: Tensor) -> tuple[Tensor, Tensor]:
        """(A, B) of each of ``rows`` (n, d): the prediction becomes ``A·p + B`` (standardised units)."""
        slopes, offsets, match = self.matched_lines(rows)
        return 1.0 + match * (slopes - 1.0), match * offsets

    def matched_lines(self, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(a, b, m) of each of ``rows``: the kernel-weighted mean line of its calibrated neighbours (1, 0 without any) and
        the share ``m = Σw / (Σw + κ)`` of it that :meth:`lines` applies (the rest keeps ``p``)."""
        if self.rows.shape[0] == 0:
            return torch.ones(rows.shape[0]), torch.zeros(rows.shape[0]), torch.zeros(rows.shape[0])
        weights = kernel_weights(rows, self.rows, self.temperature, NEIGHBOURS)
        total = weights.sum(dim=1)
        safe = torch.where(total > 0, total, torch.ones_like(total))
        slopes = torch.where(total > 0, weights @ self.slopes / safe, torch.ones_like(total))
        return slopes, weights @ self.offsets / safe, total / (total + self.shrink)
