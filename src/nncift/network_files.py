"""Saving and loading every InfluenceNetwork: safetensors weights with a JSON sidecar (``network.safetensors``
+ ``network.json``: architecture, settings, training report, format version). Nothing is pickled."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from .network import InfluenceNetwork
from .towers import PointwiseNetwork, TwoTowerNetwork

__all__ = ["FORMAT_VERSION", "build_network", "load_network", "load_network_metadata", "network_metadata_path", "save_network"]

FORMAT_VERSION = 1
"""Version of the saved-network layout (written into the JSON sidecar)."""



def network_metadata_path(path: str | Path) -> Path:
    """The JSON sidecar of a weights file: ``network.safetensors`` → ``network.json``."""
    return Path(path).with_suffix(".json")


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_network(network: "InfluenceNetwork | TwoTowerNetwork | PointwiseNetwork", path: str | Path, metadata: dict) -> None:
    """Write the weights to ``path`` (safetensors) and ``{"architecture", "format_version", **metadata}``
    to the JSON sidecar beside it (:func:`network_metadata_path`). No pickle."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**_jsonable(dict(metadata)), "architecture": network.architecture(), "format_version": FORMAT_VERSION}
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in network.state_dict().items()}
    save_file(tensors, str(path), metadata={"nncift_architecture": json.dumps(network.architecture())})
    network_metadata_path(path).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def load_network_metadata(path: str | Path) -> dict:
    """The metadata written by :func:`save_network` (falls back to the architecture in the weights file's header)."""
    sidecar = network_metadata_path(path)
    if sidecar.exists():
        return json.loads(sidecar.read_text(encoding="utf-8"))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    if "nncift_architecture" not in header:
        raise FileNotFoundError(f"no metadata for {path}: {sidecar} is missing and the header has no architecture")
    return {"architecture": json.loads(header["nncift_architecture"])}


def build_network(architecture: dict[str, Any]) -> "InfluenceNetwork | TwoTowerNetwork | PointwiseNetwork":
    """An untrained module of the described architecture (``architecture()`` of any network kind)."""
    kind = architecture.get("kind", "paper")
    d = int(architecture["embedding_dim"])
    if kind == TwoTowerNetwork.kind:
        return TwoTowerNetwork(d, int(architecture["hidden"]), int(architecture["rank"]))
    if kind == PointwiseNetwork.kind:
        return PointwiseNetwork(d, int(architecture["hidden"]))
    if kind == "paper":
        return InfluenceNetwork(d, tuple(architecture["hidden_sizes"]), pairwise=bool(architecture["pairwise"]))
    raise ValueError(f"unknown network kind {kind!r} (written by a newer nncift?)")


def load_network(path: str | Path) -> "InfluenceNetwork | TwoTowerNetwork | PointwiseNetwork":
    """Rebuild a network written by :func:`save_network` (eval mode, CPU)."""
    from safetensors.torch import load_file

    network = build_network(load_network_metadata(path)["architecture"])
    network.load_state_dict(load_file(str(path)))
    network.eval()
    return network
