"""Gradient compressors behind one interface, chosen by name (docs/methods.md §5).

A compressor maps a model's flat per-example gradient (``p`` coordinates, the concatenation of its
layers' gradients in the layer orientation of :mod:`nncift.gradients.hooks`) to ``output_dim``
numbers whose inner products estimate the gradients' inner products:

- ``identity``: the gradient itself (exact; ``output_dim = p``), for tiny models and tests;
- ``projection``: ``Rᵀg / sqrt(k)`` with a dense Rademacher matrix ``R`` (p × k, entries ±1),
  generated block by block from the seed and never held whole: ``E[⟨Rᵀa, Rᵀb⟩] / k = ⟨a, b⟩``;
- ``dropout``: per layer, a seeded random subset of ``k_l`` of its ``p_l`` coordinates (``k`` split
  over layers in proportion to their size), times ``sqrt(p_l / k_l)``: every coordinate is kept with
  probability ``k_l / p_l``, so inner products are unbiased;
- ``dropout-structured``: per layer, seeded random input units ``S_in`` and output units ``S_out``
  with ``|S_in|·|S_out| ≈ k_l``; only the block ``Σ_t δ_t[S_out] x_t[S_in]ᵀ`` of each example's
  gradient is computed from the layer's inputs and output-gradients (cost ``O(T·|S_out|·|S_in|)``,
  the full gradient is never formed), times ``sqrt(out·columns / (|S_out|·|S_in|))``: coordinate
  ``(o, i)`` is kept with probability ``|S_out|/out · |S_in|/columns``, so inner products are unbiased.

Every random choice is a pure function of ``(seed, compressor, layer, block)``: the same seed gives
the same compression for every checkpoint, both sides (training and validation), every batch and
every process.

Per layer, a compressor first restricts the gradient to the coordinates it needs
(:meth:`Compressor.layer_gradient`, whose columns are the flat layer coordinates
:meth:`Compressor.coordinates`) so that an elementwise preconditioner (Adam) can act on exactly those
coordinates, then adds the layer's compressed part into the output (:meth:`Compressor.accumulate`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor

from nncift.gradients.hooks import LayerShape, full_layer_gradient
from nncift.settings.choices import COMPRESSORS


def seeded_rng(seed: int, *keys: int) -> np.random.Generator:
    """A numpy generator that depends only on ``seed`` and ``keys`` (layer, block, purpose...)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *[int(k) for k in keys]]))


def allocate(sizes: Sequence[int], total: int) -> list[int]:
    """Split ``total`` over parts of the given ``sizes``: 1 each, the rest in proportion (largest remainder).

    Every part gets at least 1 and at most its size; the counts sum to ``total`` when
    ``len(sizes) ≤ total < sum(sizes)``, to ``len(sizes)`` below that, and every part gets its full
    size when ``total ≥ sum(sizes)``.
    """
    sizes_array = np.asarray(sizes, dtype=np.int64)
    if total >= sizes_array.sum():
        return sizes_array.tolist()
    extra = max(int(total) - len(sizes_array), 0)
    room = sizes_array - 1
    exact = extra * room / max(int(room.sum()), 1)
    counts = np.floor(exact).astype(np.int64)
    remainder = extra - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:remainder]] += 1
    return (1 + np.minimum(counts, room)).tolist()


def _select_last(tensor: Tensor, index: Tensor) -> Tensor:
    """``tensor[..., index]`` for a (B, T, n) tensor; a 2-D ``index_select`` is several times faster on CPU."""
    batch, tokens, width = tensor.shape
    return tensor.reshape(batch * tokens, width).index_select(1, index).view(batch, tokens, len(index))


class Compressor(ABC):
    """Maps per-example layer gradients to ``(B, output_dim)`` features; inner products estimate exact ones."""

    name: ClassVar[str]
    additive: ClassVar[bool] = False
    """True when layers add into the same output coordinates (projection), False when each layer owns a slice."""

    def __init__(self, layers: Sequence[LayerShape], dim: int, seed: int = 0):
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.layers = list(layers)
        self.dim = int(dim)
        self.seed = int(seed)
        self.total_size = sum(layer.size for layer in self.layers)
        self._device_cache: dict[tuple[str, int, str], Tensor] = {}

    @property
    @abstractmethod
    def output_dim(self) -> int:
        """Number of features per example."""

    def coordinates(self, layer: int) -> Tensor | None:
        """Flat coordinates of layer ``layer`` (row-major ``(out, columns)``) that the compressor reads; None = all."""
        return None

    def layer_gradient(self, layer: int, inputs: Tensor, output_grads: Tensor) -> Tensor:
        """Per-example gradient of one layer at :meth:`coordinates`, ``(B, n)``, from inputs (B, T, in) and output-gradients (B, T, out)."""
        full = full_layer_gradient(self.layers[layer], inputs, output_grads).flatten(1)
        index = self.coordinates(layer)
        return full if index is None else full[:, self._on(index, output_grads.device)]

    @abstractmethod
    def accumulate(self, layer: int, gradient: Tensor, out: Tensor) -> None:
        """Add layer ``layer``'s compressed gradient ``(B, n)`` (columns = :meth:`coordinates`) into ``out`` (B, output_dim)."""

    def compress(self, gradients: Sequence[Tensor]) -> Tensor:
        """Features ``(B, output_dim)`` of full flat layer gradients (one ``(B, size_l)`` tensor per layer)."""
        batch = gradients[0].shape[0]
        out = torch.zeros(batch, self.output_dim, dtype=torch.float32, device=gradients[0].device)
        for layer, gradient in enumerate(gradients):
            index = self.coordinates(layer)
            selected = gradient if index is None else gradient[:, self._on(index, gradient.device)]
            self.accumulate(layer, selected.float(), out)
        return out

    def describe(self) -> dict[str, Any]:
        """What defines the compression (recorded beside stored features; a mismatch is refused)."""
        return {"compressor": self.name, "dim": self.dim, "output_dim": self.output_dim, "seed": self.seed,
                "layers": [[layer.name, layer.out_features, layer.columns] for layer in self.layers]}

    def _on(self, tensor: Tensor, device: torch.device, key: tuple[str, int] | None = None) -> Tensor:
        if tensor.device == device:
            return tensor
        cache_key = (*(key or ("anon", id(tensor))), str(device))
        if cache_key not in self._device_cache:
            self._device_cache[cache_key] = tensor.to(device)
        return self._device_cache[cache_key]


class SlicedCompressor(Compressor):
    """A compressor whose layers own consecutive slices of the output, each scaled by one factor."""

    def _set_slices(self, widths: Sequence[int], scales: Sequence[float]) -> None:
        self._offsets = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
        self._scales = [float(s) for s in scales]

    @property
    def output_dim(self) -> int:
        return int(self._offsets[-1])

    def accumulate(self, layer: int, gradient: Tensor, out: Tensor) -> None:
        start, stop = int(self._offsets[layer]), int(self._offsets[layer + 1])
        out[:, start:stop] += gradient * self._scales[layer] if self._scales[layer] != 1.0 else gradient


class IdentityCompressor(SlicedCompressor):
    """The exact flat gradient (``output_dim = p``); ``dim`` is ignored."""

    name: ClassVar[str] = "identity"

    def __init__(self, layers: Sequence[LayerShape], dim: int = 1, seed: int = 0):
        super().__init__(layers, max(dim, 1), seed)
        self._set_slices([layer.size for layer in self.layers], [1.0] * len(self.layers))


class DropoutCompressor(SlicedCompressor):
    """A seeded random subset of each layer's coordinates (shared by all examples), rescaled to be unbiased."""

    name: ClassVar[str] = "dropout"

    def __init__(self, layers: Sequence[LayerShape], dim: int, seed: int = 0):
        super().__init__(layers, dim, seed)
        counts = allocate([layer.size for layer in self.layers], self.dim)
        self._kept = []
        for index, (layer, count) in enumerate(zip(self.layers, counts)):
            chosen = np.sort(seeded_rng(self.seed, 1, index).choice(layer.size, size=count, replace=False))
            self._kept.append(torch.from_numpy(chosen.astype(np.int64)))
        self._set_slices(counts, [math.sqrt(layer.size / count) for layer, count in zip(self.layers, counts)])

    def coordinates(self, layer: int) -> Tensor:
        return self._kept[layer]

    def layer_gradient(self, layer: int, inputs: Tensor, output_grads: Tensor) -> Tensor:
        """Only the kept coordinates: ``Σ_t δ_t[o_c] x_t[i_c]`` for each kept ``(o_c, i_c)``; chunked over coordinates."""
        shape = self.layers[layer]
        kept = self._on(self._kept[layer], inputs.device, ("kept", layer))
        rows, cols = kept // shape.columns, kept % shape.columns
        if shape.has_bias:
            inputs = torch.cat([inputs, torch.ones_like(inputs[..., :1])], dim=-1)
        chunk = max(1, (1 << 22) // max(1, inputs.shape[0] * inputs.shape[1]))
        parts = [
            (_select_last(output_grads, rows[s : s + chunk]) * _select_last(inputs, cols[s : s + chunk])).sum(dim=1)
            for s in range(0, len(kept), chunk)
        ]
        return torch.cat(parts, dim=1)


class StructuredDropoutCompressor(SlicedCompressor):
    """Per layer, a seeded block of output × input units; only that block of each gradient is computed."""

    name: ClassVar[str] = "dropout-structured"

    def __init__(self, layers: Sequence[LayerShape], dim: int, seed: int = 0):
        super().__init__(layers, dim, seed)
        budgets = allocate([layer.size for layer in self.layers], self.dim)
        self._rows, self._cols, self._coordinates = [], [], []
        widths, scales = [], []
        for index, (layer, budget) in enumerate(zip(self.layers, budgets)):
            n_out, n_in = self.block_shape(layer, budget)
            rng = seeded_rng(self.seed, 2, index)
            rows = np.sort(rng.choice(layer.out_features, size=n_out, replace=False)).astype(np.int64)
            cols = np.sort(rng.choice(layer.columns, size=n_in, replace=False)).astype(np.int64)
            self._rows.append(torch.from_numpy(rows))
            self._cols.append(torch.from_numpy(cols))
            self._coordinates.append(torch.from_numpy((rows[:, None] * layer.columns + cols[None, :]).ravel()))
            widths.append(n_out * n_in)
            scales.append(math.sqrt(layer.size / (n_out * n_in)))
        self._set_slices(widths, scales)

    @staticmethod
    def block_shape(layer: LayerShape, budget: int) -> tuple[int, int]:
        """``(|S_out|, |S_in|)`` with product ≈ ``budget`` and the block's aspect ratio close to the layer's."""
        if budget >= layer.size:
            return layer.out_features, layer.columns
        ideal = round(math.sqrt(budget * layer.out_features / layer.columns))
        n_out = int(np.clip(ideal, max(1, -(-budget // layer.columns)), min(layer.out_features, budget)))
        n_in = int(np.clip(round(budget / n_out), 1, layer.columns))
        return n_out, n_in

    def coordinates(self, layer: int) -> Tensor:
        return self._coordinates[layer]

    def layer_gradient(self, layer: int, inputs: Tensor, output_grads: Tensor) -> Tensor:
        """``Σ_t δ_t[S_out] x_t[S_in]ᵀ`` per example, flattened row-major: ``(B, |S_out|·|S_in|)``."""
        shape = self.layers[layer]
        rows = self._on(self._rows[layer], inputs.device, ("rows", layer))
        cols = self._on(self._cols[layer], inputs.device, ("cols", layer))
        selected_grads = _select_last(output_grads, rows)
        if shape.has_bias and int(self._cols[layer][-1]) == shape.in_features:
            selected_inputs = torch.cat([_select_last(inputs, cols[:-1]), torch.ones_like(inputs[..., :1])], dim=-1)
        else:
            selected_inputs = _select_last(inputs, cols)
        return torch.bmm(selected_grads.transpose(1, 2), selected_inputs).flatten(1)


class ProjectionCompressor(Compressor):
    """Dense Rademacher projection ``Rᵀg / sqrt(k)``, R generated in blocks of rows from the seed.

    Block ``j`` of layer ``l`` (rows ``j·ROWS … (j+1)·ROWS`` of that layer's coordinates) is drawn from
    a generator seeded with ``(seed, layer, j)``: one random bit per entry, ``R = 2·bits − 1``, so
    ``gᵀR = 2·gᵀbits − Σg``. ``ROWS`` is a constant of the definition, not a memory knob.
    """

    name: ClassVar[str] = "projection"
    additive: ClassVar[bool] = True
    ROWS: ClassVar[int] = 1024

    def __init__(self, layers: Sequence[LayerShape], dim: int, seed: int = 0):
        super().__init__(layers, dim, seed)
        self._buffer: Tensor | None = None

    @property
    def output_dim(self) -> int:
        return self.dim

    def bits_block(self, layer: int, block: int, rows: int) -> np.ndarray:
        """The 0/1 entries (uint8, ``rows × dim``) of block ``block`` of layer ``layer``'s part of R."""
        rng = seeded_rng(self.seed, 3, layer, block)
        packed = np.frombuffer(rng.bytes((self.ROWS * self.dim + 7) // 8), dtype=np.uint8)
        return np.unpackbits(packed, count=rows * self.dim).reshape(rows, self.dim)

    def accumulate(self, layer: int, gradient: Tensor, out: Tensor) -> None:
        size = gradient.shape[1]
        scale = 1.0 / math.sqrt(self.dim)
        for block, start in enumerate(range(0, size, self.ROWS)):
            part = gradient[:, start : start + self.ROWS]
            bits = self._bits_tensor(layer, block, part.shape[1], gradient.device)
            out += (2.0 * scale) * (part @ bits) - scale * part.sum(dim=1, keepdim=True)

    def _bits_tensor(self, layer: int, block: int, rows: int, device: torch.device) -> Tensor:
        if self._buffer is None or self._buffer.shape[1] != self.dim:
            self._buffer = torch.empty(self.ROWS, self.dim, dtype=torch.float32)
        view = self._buffer[:rows]
        view.copy_(torch.from_numpy(self.bits_block(layer, block, rows)))
        return view.to(device)

    def dense_matrix(self) -> Tensor:
        """The whole ``p × k`` matrix of ±1 (for tests on tiny models only)."""
        parts = []
        for layer, shape in enumerate(self.layers):
            for block, start in enumerate(range(0, shape.size, self.ROWS)):
                rows = min(self.ROWS, shape.size - start)
                parts.append(torch.from_numpy(self.bits_block(layer, block, rows).astype(np.float32)) * 2 - 1)
        return torch.cat(parts)


_CLASSES: dict[str, type[Compressor]] = {
    "identity": IdentityCompressor,
    "projection": ProjectionCompressor,
    "dropout": DropoutCompressor,
    "dropout-structured": StructuredDropoutCompressor,
}


def make_compressor(name: str, layers: Sequence[LayerShape], dim: int, seed: int = 0) -> Compressor:
    """The compressor registered under ``name`` (one of :data:`COMPRESSORS`) for these layers."""
    if name not in _CLASSES:
        raise ValueError(f"unknown compressor '{name}': choose from {', '.join(COMPRESSORS)}")
    return _CLASSES[name](layers, dim, seed)
