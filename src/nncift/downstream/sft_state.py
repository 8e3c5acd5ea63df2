"""Trainer checkpoint state without pickles: optimizer, learning-rate schedule, gradient scaler and random generators.

``transformers.Trainer`` writes ``optimizer.pt``, ``scheduler.pt``, ``scaler.pt`` and ``rng_state.pth`` with
``torch.save`` (pickles) and reads them back with ``torch.load``. :class:`nncift.downstream.sft.SubsetSFTTrainer`
writes the same states with these functions instead: every tensor into one ``NAME.safetensors`` (flat keys), every
other value into ``NAME.json``, and reads them back the same way, so resuming a fine-tuning run never unpickles.

Files of a checkpoint folder (beside peft's ``adapter_model.safetensors`` and the Trainer's ``trainer_state.json``):
``optimizer.safetensors`` + ``optimizer.json`` (AdamW moments per parameter, the parameter groups),
``scheduler.json``, ``scaler.json`` (fp16 only), ``rng_state.safetensors`` + ``rng_state.json`` (torch CPU and CUDA
generators; Python's and NumPy's global generators).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from nncift.files.atomic import atomic_write, write_json_atomic

TENSOR = "__tensor__"
"""JSON placeholder of a value stored in the safetensors file: ``{"__tensor__": key}``."""
STATE_FILES = ("optimizer.safetensors", "optimizer.json", "scheduler.json", "scaler.json", "rng_state.safetensors", "rng_state.json")
"""Every file these functions write into a checkpoint folder."""


def _split(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` with every tensor moved into ``tensors`` (under a dotted key) and replaced by a placeholder."""
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous()
        return {TENSOR: key}
    if isinstance(value, dict):
        return {"__dict__": [[name, _split(item, f"{key}.{name}", tensors)] for name, item in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"__tuple__" if isinstance(value, tuple) else "__list__": [_split(item, f"{key}.{i}", tensors) for i, item in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint ({key})")


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`_split` (dict keys that were ints are ints again: optimizer state is keyed by parameter index)."""
    if isinstance(value, dict):
        if TENSOR in value:
            return tensors[value[TENSOR]]
        if "__dict__" in value:
            return {name: _join(item, tensors) for name, item in value["__dict__"]}
        items = [_join(item, tensors) for item in value.get("__tuple__") or value.get("__list__") or []]
        return tuple(items) if "__tuple__" in value else items
    return value


def save_state(folder: str | Path, name: str, state: Any) -> None:
    """Write ``state`` (nested dicts, lists, tuples, tensors, plain values) as ``NAME.json`` (+ ``NAME.safetensors``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    layout = _split(state, name, tensors)
    if tensors:
        atomic_write(folder / f"{name}.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    write_json_atomic(folder / f"{name}.json", layout)


def load_state(folder: str | Path, name: str, device: str | torch.device = "cpu") -> Any:
    """Read what :func:`save_state` wrote (tensors on ``device``), or None when the checkpoint has no ``NAME.json``."""
    folder = Path(folder)
    if not (folder / f"{name}.json").is_file():
        return None
    layout = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    tensor_file = folder / f"{name}.safetensors"
    tensors = load_file(str(tensor_file), device=str(device)) if tensor_file.is_file() else {}
    return _join(layout, tensors)


def rng_state() -> dict[str, Any]:
    """The global random generators: Python's, NumPy's, torch's CPU one and (when there is one) every CUDA device's."""
    numpy_state: Any = np.random.get_state()
    kind, keys, position, has_gauss, cached = numpy_state
    state: dict[str, Any] = {
        "python": random.getstate(), "numpy": (kind, keys.tolist(), position, has_gauss, cached),
        "cpu": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global random generators to what :func:`rng_state` recorded."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.random.set_rng_state(state["cpu"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([generator.cpu() for generator in state["cuda"]])
