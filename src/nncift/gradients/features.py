"""Compressed per-example gradient features: computing them, and storing them resumably.

:class:`GradientFeaturizer` runs one forward and one backward pass per batch and compresses every
layer's per-example gradient inside the backward hook (optionally Adam-preconditioned first), so
that no full gradient of more than one layer exists at a time.

:class:`FeatureStore` is a pre-sized float32 ``.npy`` memory map of ``(n_rows, dim)`` features,
filled row by row in any order, with a ``.done.jsonl`` record of finished rows (appended and fsynced
after the rows' values are flushed) and a ``.json`` description of how the features were made (a
store made differently is refused). A computation killed at any point resumes from the finished
rows. Several processes may fill different rows of one store.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from nncift.files.errors import SettingsMismatch
from nncift.gradients.adam import AdamPreconditioner
from nncift.gradients.batches import model_device, per_example_losses
from nncift.gradients.compressors import Compressor
from nncift.gradients.hooks import PerExampleGradients


def compress_layer(compressor: Compressor, preconditioner: AdamPreconditioner | None, layer: int,
                   inputs: Tensor, output_grads: Tensor, out: Tensor) -> None:
    """Add one layer's compressed (and preconditioned) per-example gradients into ``out`` (B, output_dim)."""
    gradient = compressor.layer_gradient(layer, inputs, output_grads)
    if preconditioner is not None:
        gradient = preconditioner(layer, gradient, compressor.coordinates(layer))
    compressor.accumulate(layer, gradient, out)


class GradientFeaturizer:
    """Features ``(B, output_dim)`` of a batch: per-example gradients of ``layers``, compressed in the hooks.

    Args:
        model: a causal LM whose trainable parameters are exactly the weights (and biases) of ``layers``.
        layers: ``(name, module)`` pairs from :func:`~nncift.gradients.hooks.trainable_layers`.
        compressor: built for the same layers.
        preconditioner: Adam moments of a checkpoint (training side of LESS), or None (plain gradients).
    """

    def __init__(self, model: nn.Module, layers: Sequence[tuple[str, nn.Module]], compressor: Compressor,
                 preconditioner: AdamPreconditioner | None = None):
        self.model = model
        self.layers = list(layers)
        self.compressor = compressor
        self.preconditioner = preconditioner
        self._out: Tensor | None = None

    def _on_layer(self, layer: int, inputs: Tensor, output_grads: Tensor) -> None:
        assert self._out is not None
        compress_layer(self.compressor, self.preconditioner, layer, inputs, output_grads, self._out)

    def __call__(self, batch: dict[str, Tensor]) -> Tensor:
        """Raw (not normalised) features of the batch's examples, float32 ``(B, output_dim)`` on the model's device."""
        device = model_device(self.model)
        self._out = torch.zeros(batch["input_ids"].shape[0], self.compressor.output_dim, device=device)
        with PerExampleGradients(self.layers, self._on_layer) as tracker:
            tracker.token_mask = batch["attention_mask"]
            self.model.zero_grad(set_to_none=True)
            per_example_losses(self.model, batch).sum().backward()
        self.model.zero_grad(set_to_none=True)
        out, self._out = self._out, None
        return out


def l2_normalise(features: Tensor | np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (rows of zeros stay zero), float32 numpy ``(B, dim)``."""
    array = features.detach().cpu().numpy() if isinstance(features, Tensor) else np.asarray(features)
    array = array.astype(np.float64)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return (array / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _create_exclusive(path: Path, write: Any) -> None:
    """Create ``path`` atomically unless it exists (another process may be creating it too)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


class FeatureStore:
    """Resumable ``(n_rows, dim)`` float32 features: ``<name>.npy`` + ``<name>.done.jsonl`` + ``<name>.json``."""

    def __init__(self, folder: str | Path, name: str, n_rows: int, dim: int, description: dict[str, Any]):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{name}.npy"
        self.done_path = folder / f"{name}.done.jsonl"
        self.description_path = folder / f"{name}.json"
        self.description = {**description, "n_rows": int(n_rows), "dim": int(dim)}
        _create_exclusive(self.description_path, lambda p: p.write_text(json.dumps(self.description, indent=1, sort_keys=True)))
        stored = json.loads(self.description_path.read_text(encoding="utf-8"))
        if stored != json.loads(json.dumps(self.description, sort_keys=True)):
            changed = sorted(k for k in set(stored) | set(self.description) if stored.get(k) != self.description.get(k))
            raise SettingsMismatch(f"{self.path}: features stored with other settings ({', '.join(changed)}); use a new folder")
        _create_exclusive(self.path, lambda p: np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=(n_rows, dim)).flush())
        self.array = np.load(self.path, mmap_mode="r+")
        if self.array.shape != (n_rows, dim):
            raise SettingsMismatch(f"{self.path}: shape {self.array.shape}, expected {(n_rows, dim)}")
        self._finished = np.zeros(n_rows, dtype=bool)
        self._read_offset = 0

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_rows, dim)``."""
        return self.array.shape  # type: ignore[return-value]

    def finished(self) -> np.ndarray:
        """Boolean mask ``(n_rows,)`` of rows whose features are stored (re-reads the done-record)."""
        if self.done_path.exists():
            with self.done_path.open("rb") as handle:
                handle.seek(self._read_offset)
                chunk = handle.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]
            self._read_offset += len(complete)
            for line in complete.splitlines():
                try:
                    self._finished[np.asarray(json.loads(line)["rows"], dtype=np.int64)] = True
                except (json.JSONDecodeError, KeyError, TypeError, IndexError, ValueError):
                    continue
        return self._finished

    def missing(self, indices: np.ndarray) -> np.ndarray:
        """The unique ``indices`` (sorted) whose features are not stored yet."""
        unique = np.unique(np.asarray(indices, dtype=np.int64))
        return unique[~self.finished()[unique]]

    def write(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Store features ``values`` (len(indices), dim) of rows ``indices``, flush, then record them done."""
        indices = np.asarray(indices, dtype=np.int64)
        if values.shape != (len(indices), self.shape[1]):
            raise ValueError(f"{self.path}: values of shape {values.shape}, expected {(len(indices), self.shape[1])}")
        self.array[indices] = values
        self.array.flush()
        with self.done_path.open("a+b") as handle:
            torn = False
            if handle.seek(0, os.SEEK_END) > 0:
                handle.seek(-1, os.SEEK_END)
                torn = handle.read(1) != b"\n"  # a line cut short by a kill: end it before appending
            line = ("\n" if torn else "") + json.dumps({"rows": indices.tolist()}) + "\n"
            handle.write(line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Features of rows ``indices`` (a copy, ``(len(indices), dim)``); every row must be stored."""
        indices = np.asarray(indices, dtype=np.int64)
        if not self.finished()[indices].all():
            raise RuntimeError(f"{self.path}: features of rows {self.missing(indices)[:10].tolist()} are not computed")
        return np.asarray(self.array[indices])
