"""The default InfluenceNetworks: a calibrated similarity prior plus a learned correction.

Pairwise (:class:`TwoTowerNetwork`), for a target embedding ``a`` and a candidate embedding ``b``
(both L2-normalised, so ``aᵀb`` is their cosine)::

    s(a, b) = μ + σ · ( α·aᵀb + f(a)ᵀg(b)/√k + r(a) + c(b) + β  [+ δ + wᵀa  if a and b are the same record] )

- ``α·aᵀb + β`` is the *prior*: the embeddings' cosine, calibrated by least squares to the labels.
  It costs nothing to compute and is what the network must never do worse than.
- ``f`` and ``g`` are two towers (``d → hidden → ReLU → k``); ``f(a)ᵀg(b)`` is a learned low-rank
  interaction, ``r`` and ``c`` learned per-target and per-candidate offsets (read from the towers'
  hidden layers). Their last layers start at zero, so an untrained network *is* the calibrated prior.
- The **self-pair term** ``δ + wᵀa`` applies only where the row and the column are the same record
  (the pool representing itself). Influence functions value a record as its own example very
  differently from any other pair (DELIFT: ≈ 0.4 against ≈ 0.01 off the diagonal); a term of its
  own learns that from the labelled self-pairs instead of distorting every other prediction.
- ``μ, σ`` are the training labels' mean and standard deviation (training runs on standardised labels).
- Optional **label anchors** (:mod:`nncift.network.anchors`): the labelled block's residuals, carried to
  unlabelled pairs by embedding neighbours, added on top (two more matrix products per block).

Prediction of a whole (R × C) block is one matrix product: ``[α·a, f(a)/√k, r(a)+β, 1] ·
[b, g(b), 1, c(b)]ᵀ`` (width d + k + 2), then the self-pair term on the diagonal entries.
:func:`inner_product_form` returns the two factors (μ and σ folded in) and the self-pair terms, so that selection can
keep each row's nearest candidates (:mod:`nncift.selection.sparse`) without forming the matrix.

Pointwise (:class:`PointwiseNetwork`, for SelectIT): ``s(a) = μ + σ·(wᵀa + b + vᵀrelu(W a))``, the
linear part started at the ridge fit of the labels and ``v`` at zero.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from nncift.network.anchors import NEIGHBOURS, Anchors, anchor_correction, sparse_kernel_weights
from nncift.network.row_calibration import RowCalibration

__all__ = ["TwoTowerNetwork", "PointwiseNetwork", "predict_two_tower", "InnerProductForm", "inner_product_form"]

_PREDICT_PAIRS = 1 << 22
"""Pairs per row block of :func:`predict_two_tower` (16 MiB of float32 output per block)."""
_ANCHOR_TILE = (1 << 20, 1024, 8192)
"""Label anchors' tiles of columns: about this many float32 per tile (4 MiB), with at least and at most this many columns."""


class _Tower(torch.nn.Module):
    """``d → hidden → ReLU → (k outputs, 1 offset)``; the output layers start at zero."""

    def __init__(self, d: int, hidden: int, rank: int) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(d, hidden)
        self.out = torch.nn.Linear(hidden, rank)
        self.offset = torch.nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.relu(self.hidden(x))
        return self.out(h), self.offset(h).squeeze(-1)


class TwoTowerNetwork(torch.nn.Module):
    """Pairwise InfluenceNetwork with a calibrated cosine prior, low-rank towers and a self-pair term."""

    kind = "two-tower"
    pairwise = True
    label_mean: Tensor
    """Buffer: the labels' mean (output = mean + std · standardised output)."""
    label_std: Tensor
    """Buffer: the labels' standard deviation."""

    def __init__(self, embedding_dim: int, hidden: int = 128, rank: int = 64) -> None:
        """``embedding_dim`` d, tower ``hidden`` width, interaction ``rank`` k. Starts as the prior α = 1, β = 0."""
        super().__init__()
        if min(embedding_dim, hidden, rank) < 1:
            raise ValueError(f"embedding_dim, hidden and rank must be positive, got {embedding_dim}, {hidden}, {rank}")
        self.embedding_dim, self.hidden_size, self.rank = int(embedding_dim), int(hidden), int(rank)
        self.row_tower = _Tower(self.embedding_dim, self.hidden_size, self.rank)
        self.col_tower = _Tower(self.embedding_dim, self.hidden_size, self.rank)
        self.alpha = torch.nn.Parameter(torch.ones(()))
        self.beta = torch.nn.Parameter(torch.zeros(()))
        self.self_bias = torch.nn.Parameter(torch.zeros(()))
        self.self_weight = torch.nn.Parameter(torch.zeros(self.embedding_dim))
        self.register_buffer("label_mean", torch.zeros(()))
        self.register_buffer("label_std", torch.ones(()))
        self.anchors: Anchors | None = None
        self.row_calibration: RowCalibration | None = None
        self.task_calibration: RowCalibration | None = None

    def attach_row_calibration(self, calibration: RowCalibration | None) -> None:
        """Add (or, with None, remove) per-row calibration (:mod:`nncift.network.row_calibration`); saved with the weights."""
        self.row_calibration = calibration
        self._calibration_buffers("calibration_", calibration)

    def attach_task_calibration(self, calibration: RowCalibration | None) -> None:
        """Add (or, with None, remove) per-task calibration (:mod:`nncift.network.task_calibration`): it replaces the row
        calibration on the rows it holds; saved with the weights."""
        self.task_calibration = calibration
        self._calibration_buffers("task_calibration_", calibration)

    def _calibration_buffers(self, prefix: str, calibration: RowCalibration | None) -> None:
        for name in ("rows", "slopes", "offsets", "kernel"):
            self._buffers.pop(prefix + name, None)
        if calibration is not None:
            self.register_buffer(prefix + "rows", calibration.rows)
            self.register_buffer(prefix + "slopes", calibration.slopes)
            self.register_buffer(prefix + "offsets", calibration.offsets)
            self.register_buffer(prefix + "kernel", torch.tensor([calibration.temperature, calibration.shrink]))

    def calibration_lines(self, rows: Tensor) -> tuple[Tensor, Tensor] | None:
        """(A, B) of ``rows``: the standardised prediction becomes ``A·p + B``: the task calibration's line for the rows it
        holds (rows of a task without a line of their own), the row calibration's for every other row; None without either."""
        lines = None if self.row_calibration is None else self.row_calibration.lines(rows)
        if self.task_calibration is None:
            return lines
        a, b, match = self.task_calibration.matched_lines(rows)  # match ≈ 1 for the rows it holds, ≈ 0 for any other
        own_a, own_b = lines if lines is not None else (torch.ones_like(a), torch.zeros_like(b))
        return match * a + (1.0 - match) * own_a, match * b + (1.0 - match) * own_b

    def attach_anchors(self, anchors: Anchors | None) -> None:
        """Add (or, with None, remove) the label-anchor correction; its tensors are saved with the weights."""
        self.anchors = anchors
        for name in ("anchor_rows", "anchor_cols", "anchor_residuals", "anchor_mask", "anchor_kernel"):
            self._buffers.pop(name, None)
        if anchors is not None:
            self.register_buffer("anchor_rows", anchors.rows)
            self.register_buffer("anchor_cols", anchors.cols)
            self.register_buffer("anchor_residuals", anchors.residuals)
            self.register_buffer("anchor_mask", anchors.mask)
            self.register_buffer("anchor_kernel", torch.tensor([anchors.temperature, anchors.shrink, float(anchors.neighbours)]))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Loading weights saved with anchors or a row calibration re-creates them (their sizes come from the file)."""
        for kind, attach in (("calibration_", self.attach_row_calibration), ("task_calibration_", self.attach_task_calibration)):
            if prefix + kind + "rows" in state_dict:
                kernel = state_dict[prefix + kind + "kernel"]
                rows, slopes, offsets = (state_dict[prefix + kind + name].clone() for name in ("rows", "slopes", "offsets"))
                attach(RowCalibration(rows, slopes, offsets, float(kernel[0]), float(kernel[1])))
        if prefix + "anchor_rows" in state_dict:
            kernel = state_dict[prefix + "anchor_kernel"]
            rows, cols, residuals, mask = (state_dict[prefix + name].clone() for name in ("anchor_rows", "anchor_cols", "anchor_residuals", "anchor_mask"))
            self.attach_anchors(Anchors(rows, cols, residuals, mask, float(kernel[0]), float(kernel[1]), int(kernel[2])))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def initialise(self, generator: torch.Generator, alpha: float, beta: float, self_bias: float) -> None:
        """Seeded start: hidden layers U(±1/√fan_in), output layers 0, prior (α, β) and self bias as given."""
        with torch.no_grad():
            for tower in (self.row_tower, self.col_tower):
                bound = 1.0 / math.sqrt(self.embedding_dim)
                tower.hidden.weight.uniform_(-bound, bound, generator=generator)
                tower.hidden.bias.uniform_(-bound, bound, generator=generator)
                for layer in (tower.out, tower.offset):
                    layer.weight.zero_()
                    layer.bias.zero_()
            self.alpha.fill_(alpha)
            self.beta.fill_(beta)
            self.self_bias.fill_(self_bias)
            self.self_weight.zero_()

    def set_label_scale(self, mean: float, std: float) -> None:
        """Predict in label units: output = mean + std · (standardised output)."""
        with torch.no_grad():
            self.label_mean.fill_(mean)
            self.label_std.fill_(std)

    def scale_learned_part(self, weight: float) -> None:
        """Multiply the learned terms (interaction, offsets, self-pair weights) by ``weight``.

        The result predicts ``weight·network + (1 − weight)·prior`` when the prior is this network's
        own (α, β, δ) with its learned terms at zero: a blend of the two is again a two-tower network.
        """
        with torch.no_grad():
            for tower in (self.row_tower, self.col_tower):
                for layer in (tower.out, tower.offset):
                    layer.weight.mul_(weight)
                    layer.bias.mul_(weight)
            self.self_weight.mul_(weight)

    def standardised_block(self, rows: Tensor, cols: Tensor, self_cols: Tensor | None = None, *, cos: Tensor | None = None) -> Tensor:
        """(R, C) standardised predictions for every row × column (self-pair term where ``self_cols[i] = j``).

        ``cos``: the (R, C) cosines ``rows @ cols.T`` when already computed (training reuses them).
        """
        f, r = self.row_tower(rows)
        g, c = self.col_tower(cols)
        out = self.alpha * (rows @ cols.T if cos is None else cos) + (f @ g.T) / math.sqrt(self.rank) + r[:, None] + c[None, :] + self.beta
        if self_cols is not None:
            has = self_cols >= 0
            if bool(has.any()):
                index = torch.nonzero(has).squeeze(-1)
                extra = torch.zeros_like(out)
                extra[index, self_cols[index]] = self.self_bias + rows[index] @ self.self_weight
                out = out + extra
        if self.anchors is not None:
            out = out + anchor_correction(rows, cols, self.anchors)
        lines = self.calibration_lines(rows)
        if lines is not None:
            out = lines[0][:, None] * out + lines[1][:, None]
        return out

    def forward(self, rows: Tensor, cols: Tensor, self_cols: Tensor | None = None) -> Tensor:
        """(R, C) predictions in label units."""
        return self.label_mean + self.label_std * self.standardised_block(rows, cols, self_cols)

    def parameter_count(self) -> int:
        """Trainable parameters."""
        return int(sum(p.numel() for p in self.parameters()))

    def architecture(self) -> dict[str, Any]:
        """JSON-ready description from which :func:`nncift.network.files.build_network` rebuilds the module."""
        described = {"kind": self.kind, "embedding_dim": self.embedding_dim, "hidden": self.hidden_size, "rank": self.rank, "pairwise": True}
        if self.anchors is not None:
            described["anchors"] = {"rows": int(self.anchors.rows.shape[0]), "cols": int(self.anchors.cols.shape[0]),
                                    "temperature": self.anchors.temperature, "shrink": self.anchors.shrink, "neighbours": self.anchors.neighbours}
        if self.row_calibration is not None:
            described["row_calibration"] = {"rows": int(self.row_calibration.rows.shape[0]), "temperature": self.row_calibration.temperature,
                                            "shrink": self.row_calibration.shrink}
        if self.task_calibration is not None:
            described["task_calibration"] = {"rows": int(self.task_calibration.rows.shape[0])}
        return described


def _row_features(network: TwoTowerNetwork, rows: Tensor) -> tuple[Tensor, Tensor | None]:
    """``[α·a, f(a)/√k, r(a) + β, 1, μ]`` per row, with the calibration line ``A(a)·(every term but μ) + B(a)`` applied; and
    ``A(a)`` (None without calibration), which scales the self-pair term too."""
    f, r = network.row_tower(rows)
    ones = torch.ones(rows.shape[0], 1)
    features = torch.cat([network.alpha * rows, f / math.sqrt(network.rank), (r + network.beta)[:, None], ones, ones * float(network.label_mean)], dim=1)
    lines = network.calibration_lines(rows)
    if lines is None:
        return features, None
    features[:, :-1] *= lines[0][:, None]
    features[:, -3] += lines[1]
    return features, lines[0]


def _col_features(network: TwoTowerNetwork, cols: Tensor) -> Tensor:
    """``[σ·b, σ·g(b), σ, σ·c(b), 1]`` per column: its inner product with :func:`_row_features` is the prediction in label units."""
    g, c = network.col_tower(cols)
    scale, ones = float(network.label_std), torch.ones(cols.shape[0], 1)
    return torch.cat([scale * cols, scale * g, ones * scale, scale * c[:, None], ones], dim=1)


def _self_terms(network: TwoTowerNetwork, rows: Tensor, slopes: Tensor | None) -> Tensor:
    """``σ·(δ + wᵀa)`` per row, times its calibration slope: what the self-pair adds in label units."""
    terms = float(network.label_std) * (network.self_bias + rows @ network.self_weight)
    return terms if slopes is None else terms * slopes


def _anchor_columns(network: TwoTowerNetwork, cols: Tensor) -> list[tuple[int, Tensor, Tensor]] | None:
    """The columns' side of the label-anchor correction, computed once: ``(Lr, C)`` residual and mask sums over each column's
    kernel neighbours, in contiguous tiles of columns ``(start, residuals, mask)`` of about 4 MiB each, so that a row block's
    16 neighbour rows of a tile are read from cache, not memory (with anchors, about 4× the earlier untiled, transposed sums
    at 20,000²: BENCHMARKS.md, "Pairwise prediction benchmark"); None without anchors. Where every pair of the labelled block
    counts (separate targets: no self-pairs left out), the mask sums are the same for every anchor row, and ``mask`` is
    then the ``(C,)`` column sums alone: the denominator becomes an outer product instead of a second sparse product."""
    anchors = network.anchors
    if anchors is None or not anchors.rows.shape[0] or not anchors.cols.shape[0]:
        return None
    weights = sparse_kernel_weights(cols, anchors.cols, anchors.temperature, anchors.neighbours)
    residuals = torch.sparse.mm(weights, anchors.residuals.T.contiguous()).T
    full = bool(anchors.mask.all())
    mask = torch.sparse.mm(weights, (anchors.mask[:1] if full else anchors.mask).T.contiguous()).T
    elements, fewest, most = _ANCHOR_TILE
    width = min(most, max(fewest, elements // anchors.rows.shape[0]))
    return [(start, residuals[:, start:start + width].contiguous(), (mask[0] if full else mask)[..., start:start + width].contiguous())
            for start in range(0, cols.shape[0], width)]


def predict_two_tower(network: TwoTowerNetwork, rows: np.ndarray, cols: np.ndarray, *, out: np.ndarray | None = None,
                      self_cols: np.ndarray | None = None, block_rows: int | None = None) -> np.ndarray:
    """float32 (R, C) predictions, one matrix product per row block (O(d + k) per pair), copied into ``out``.

    ``self_cols``: per row, the column of the same record (−1: none); those entries get the self-pair term.
    """
    rows_t = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    cols_t = torch.from_numpy(np.ascontiguousarray(cols, dtype=np.float32))
    n_rows, n_cols = rows_t.shape[0], cols_t.shape[0]
    if out is None:
        out = np.empty((n_rows, n_cols), dtype=np.float32)
    if n_rows == 0 or n_cols == 0:
        return out
    block_rows = block_rows or max(1, _PREDICT_PAIRS // n_cols)
    with torch.no_grad():
        right = _col_features(network, cols_t).T
        anchor_cols = _anchor_columns(network, cols_t)
        buffer = torch.empty(min(block_rows, n_rows), n_cols)  # one block's products, reused (a product written straight into a
        # row block of ``out`` was slower where the rows are not 64-byte aligned, e.g. 5,000 columns)
        for start in range(0, n_rows, block_rows):
            stop = min(n_rows, start + block_rows)
            part = rows_t[start:stop]
            block = buffer[: stop - start]
            left, slopes = _row_features(network, part)
            torch.mm(left, right, out=block)
            if self_cols is not None:
                own = np.asarray(self_cols[start:stop])
                local = np.flatnonzero(own >= 0)
                if local.size:
                    block[local, own[local]] += _self_terms(network, part[local], None if slopes is None else slopes[local])
            if anchor_cols is not None:
                _add_anchor_correction(network, part, anchor_cols, block, None if slopes is None else slopes)
            out[start:stop] = block.numpy()
    return out


def _add_anchor_correction(network: TwoTowerNetwork, rows: Tensor, anchor_cols: list[tuple[int, Tensor, Tensor]], block: Tensor,
                           slopes: Tensor | None) -> None:
    """Add to ``block`` (in place) the rows' label-anchor correction in label units, ``σ·A(a)·Σ w·e / (Σ w·m + κ)``, one tile of
    columns at a time."""
    anchors = network.anchors
    assert anchors is not None
    weights = sparse_kernel_weights(rows, anchors.rows, anchors.temperature, NEIGHBOURS)
    full = anchor_cols[0][2].ndim == 1  # every labelled pair counts: the mask's sums are (row's weights) × (column's)
    row_sums = torch.sparse.mm(weights, torch.ones(anchors.rows.shape[0], 1)).squeeze(1) if full else None
    for start, residuals, mask in anchor_cols:
        numerator = torch.sparse.mm(weights, residuals)
        if slopes is not None:
            numerator.mul_(slopes[:, None])
        denominator = torch.outer(row_sums, mask) if row_sums is not None else torch.sparse.mm(weights, mask)
        block[:, start:start + numerator.shape[1]].addcdiv_(numerator, denominator.add_(anchors.shrink), value=float(network.label_std))


class InnerProductForm(NamedTuple):
    """A two-tower network's predictions as inner products: ``row_features @ col_features.T`` is the (R, C) prediction in
    label units without the self-pair term; ``self_terms[i]`` is added at ``(i, self_cols[i])`` (0 where there is none)."""

    row_features: np.ndarray
    """float32 (R, d + k + 3): ``[α·a, f(a)/√k, r(a) + β, 1, μ]``."""
    col_features: np.ndarray
    """float32 (C, d + k + 3): ``[σ·b, σ·g(b), σ, σ·c(b), 1]``."""
    self_terms: np.ndarray
    """float32 (R,): ``σ·(δ + wᵀa)`` for rows with a self column, else 0."""


def inner_product_form(network: TwoTowerNetwork, rows: np.ndarray, cols: np.ndarray, *, self_cols: np.ndarray | None = None,
                       block_rows: int = 65536) -> InnerProductForm:
    """:func:`predict_two_tower` as features whose inner products are the predictions (no (R, C) matrix is formed).

    ``self_cols``: per row, the column of the same record (−1: none), as in :func:`predict_two_tower`. Label anchors are
    a ratio of two kernel sums, not an inner product: an anchored network raises ``ValueError`` (predict its row blocks
    with :func:`predict_two_tower` instead, e.g. as the callback of :func:`nncift.selection.sparse.graph_from_blocks`).
    """
    if network.anchors is not None:
        raise ValueError("the network has label anchors: its predictions are not inner products; predict row blocks instead")
    for name, array in (("rows", rows), ("cols", cols)):
        if np.ndim(array) != 2 or np.shape(array)[1] != network.embedding_dim:
            raise ValueError(f"{name} must have {network.embedding_dim} columns, got shape {np.shape(array)}")
    width = network.embedding_dim + network.rank + 3
    row_features = np.empty((len(rows), width), np.float32)
    col_features = np.empty((len(cols), width), np.float32)
    self_terms = np.zeros(len(rows), np.float32)
    own = None if self_cols is None else np.asarray(self_cols, dtype=np.int64).reshape(-1)
    if own is not None and own.shape[0] != len(rows):
        raise ValueError(f"self_cols must have one entry per row ({len(rows)}), got {own.shape[0]}")
    with torch.no_grad():
        for start in range(0, len(rows), block_rows):
            part = torch.from_numpy(np.ascontiguousarray(rows[start:start + block_rows], dtype=np.float32))
            features, slopes = _row_features(network, part)
            row_features[start:start + len(part)] = features.numpy()
            if own is not None:
                has = own[start:start + len(part)] >= 0
                self_terms[start:start + len(part)] = np.where(has, _self_terms(network, part, slopes).numpy(), 0.0)
        for start in range(0, len(cols), block_rows):
            part = torch.from_numpy(np.ascontiguousarray(cols[start:start + block_rows], dtype=np.float32))
            col_features[start:start + len(part)] = _col_features(network, part).numpy()
    return InnerProductForm(row_features, col_features, self_terms)


class PointwiseNetwork(torch.nn.Module):
    """Pointwise InfluenceNetwork: a linear model (started at the ridge fit) plus a zero-started MLP residual."""

    kind = "linear-residual"
    pairwise = False
    label_mean: Tensor
    """Buffer: the labels' mean."""
    label_std: Tensor
    """Buffer: the labels' standard deviation."""

    def __init__(self, embedding_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.embedding_dim, self.hidden_size = int(embedding_dim), int(hidden)
        self.linear = torch.nn.Linear(self.embedding_dim, 1)
        self.hidden = torch.nn.Linear(self.embedding_dim, self.hidden_size)
        self.residual = torch.nn.Linear(self.hidden_size, 1)
        self.register_buffer("label_mean", torch.zeros(()))
        self.register_buffer("label_std", torch.ones(()))

    def initialise(self, generator: torch.Generator, weight: np.ndarray, bias: float) -> None:
        """Seeded start: the linear part at (weight, bias), the hidden layer U(±1/√d), the residual at 0."""
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(np.asarray(weight, dtype=np.float32)).reshape(1, -1))
            self.linear.bias.fill_(bias)
            bound = 1.0 / math.sqrt(self.embedding_dim)
            self.hidden.weight.uniform_(-bound, bound, generator=generator)
            self.hidden.bias.uniform_(-bound, bound, generator=generator)
            self.residual.weight.zero_()
            self.residual.bias.zero_()

    def set_label_scale(self, mean: float, std: float) -> None:
        """Predict in label units: output = mean + std · (standardised output)."""
        with torch.no_grad():
            self.label_mean.fill_(mean)
            self.label_std.fill_(std)

    def scale_learned_part(self, weight: float) -> None:
        """Multiply the MLP residual by ``weight`` (a blend of the network with its linear start)."""
        with torch.no_grad():
            self.residual.weight.mul_(weight)
            self.residual.bias.mul_(weight)

    def standardised(self, x: Tensor) -> Tensor:
        """(N,) standardised predictions."""
        return (self.linear(x) + self.residual(torch.relu(self.hidden(x)))).squeeze(-1)

    def forward(self, x: Tensor) -> Tensor:
        """(N,) predictions in label units."""
        return self.label_mean + self.label_std * self.standardised(x)

    def parameter_count(self) -> int:
        """Trainable parameters."""
        return int(sum(p.numel() for p in self.parameters()))

    def architecture(self) -> dict[str, Any]:
        """JSON-ready description from which :func:`nncift.network.files.build_network` rebuilds the module."""
        return {"kind": self.kind, "embedding_dim": self.embedding_dim, "hidden": self.hidden_size, "pairwise": False}
