"""Saving and loading every InfluenceNetwork: safetensors weights with a JSON sidecar (``network.safetensors``
+ ``network.json``: architecture, settings, training report, format version). Nothing is pickled."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from nncift.files.atomic import atomic_write, write_text_atomic
from nncift.files.errors import UserError
from nncift.network.paper import InfluenceNetwork
from nncift.network.towers import PointwiseNetwork, TwoTowerNetwork

__all__ = ["FORMAT_VERSION", "NetworkFileError", "build_network", "load_network", "load_network_metadata", "network_metadata_path",
           "save_network"]

FORMAT_VERSION = 1
"""Version of the saved-network layout (written into the JSON sidecar)."""


class NetworkFileError(UserError, ValueError):
    """A saved network is damaged, or its weights and its sidecar were not written together."""


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
    """Write the weights to ``path`` (safetensors) and ``{"architecture", "format_version", "weights_sha256", **metadata}``
    to the JSON sidecar beside it (:func:`network_metadata_path`). No pickle.

    Each file is written all or nothing, the weights first; the sidecar names the weights' SHA-256, so a
    pair left unmatched by a kill between the two is recognised by :func:`load_network`."""
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in network.state_dict().items()}
    weights = save(tensors, metadata={"nncift_architecture": json.dumps(network.architecture())})
    document = {**_jsonable(dict(metadata)), "architecture": network.architecture(), "format_version": FORMAT_VERSION,
                "weights_sha256": hashlib.sha256(weights).hexdigest()}
    atomic_write(path, lambda tmp: tmp.write_bytes(weights))
    write_text_atomic(network_metadata_path(path), json.dumps(document, indent=2, sort_keys=True) + "\n")


def load_network_metadata(path: str | Path) -> dict:
    """The metadata written by :func:`save_network` (falls back to the architecture in the weights file's header)."""
    sidecar = network_metadata_path(path)
    if sidecar.exists():
        try:
            document = json.loads(sidecar.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise NetworkFileError(f"{sidecar}: damaged, not valid JSON ({error})") from None
        if not isinstance(document, dict) or not isinstance(document.get("architecture"), dict):
            raise NetworkFileError(f"{sidecar}: damaged (no architecture)")
        return document
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except SafetensorError as error:
        raise NetworkFileError(f"{path}: damaged ({error})") from None
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
    raise NetworkFileError(f"unknown network kind {kind!r} (written by a newer nncift?)")


def load_network(path: str | Path) -> "InfluenceNetwork | TwoTowerNetwork | PointwiseNetwork":
    """Rebuild a network written by :func:`save_network` (eval mode, CPU); :class:`NetworkFileError` naming the file
    when the weights are damaged or are not the ones the sidecar describes."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    metadata = load_network_metadata(path)
    try:
        weights = path.read_bytes()
    except OSError as error:
        raise NetworkFileError(f"{path}: cannot be read ({error.strerror or error})") from None
    expected = metadata.get("weights_sha256")
    if expected is not None and hashlib.sha256(weights).hexdigest() != expected:
        raise NetworkFileError(f"{path}: not the weights {network_metadata_path(path)} describes (damaged, or the pair was not "
                               "written together)")
    network = build_network(metadata["architecture"])
    try:
        network.load_state_dict(load(weights))
    except (SafetensorError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise NetworkFileError(f"{path}: does not fit the architecture in {network_metadata_path(path)} ({first})") from None
    network.eval()
    return network
