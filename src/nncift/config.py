"""Settings are data: one dataclass per stage, read from YAML, written into every run's manifest,
and turned into command-line flags (the help text is each field's docstring).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import importlib.metadata
import inspect
import platform
import subprocess
import sys
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .models import BUNDLED_EMBEDDER, BUNDLED_LM


@dataclass(frozen=True)
class SelectSettings:
    """Settings of one NN-CIFT selection run (``nncift select``)."""

    data: tuple[str, ...] = ()
    """Pool files (candidates): .json/.jsonl files, folders of them, or hf:NAME[:SPLIT]."""
    targets: tuple[str, ...] = ()
    """Target files (validation data of a task). Empty: the pool represents itself."""
    influence: str = "delift"
    """Influence function: delift, delift-se, less, selectit."""
    fraction: float = 0.05
    """Fraction u of targets and candidates on which the influence function is computed (Q1)."""
    min_sampled: int = 10
    """At least this many sampled targets and candidates (for tiny data sets)."""
    sampling_blocks: int = 1
    """Sampling design: 1 = one u×u block; g > 1 = the same number of labelled pairs in g blocks over √g× as many records (for functions that cost per pair, as DELIFT)."""
    budget: float = 0.3
    """Subset size: a fraction of the pool (≤ 1) or a count (> 1)."""
    objective: str = ""
    """Selection: fl, flmi, flcg, topk. Empty: the one that belongs to the influence function."""
    eta: float = 1.0
    """FLMI magnification η."""
    nu: float = 1.0
    """FLCG penalty ν."""
    seed: int = 0
    """Seed for sampling, network training and everything random."""
    model: str = BUNDLED_LM
    """Causal LM id or path for LM-based influence functions."""
    embedder: str = BUNDLED_EMBEDDER
    """Sentence embedder id or path for the InfluenceNetwork's inputs (and DELIFT-SE)."""
    architecture: str = "two-tower"
    """InfluenceNetwork: two-tower (calibrated cosine prior + learned towers, validated on held-out records; the default) or paper (the paper's MLP, for reproduction)."""
    tower_hidden: int = 128
    """two-tower: hidden width of each tower."""
    tower_rank: int = 64
    """two-tower: rank of the learned target × candidate interaction."""
    max_steps: int = 300
    """two-tower: most optimisation steps; the step count, learning rate and weight decay are chosen on held-out records."""
    folds: int = 4
    """two-tower: record folds of the validation (whole rows and columns held out)."""
    fallback: bool = True
    """two-tower: ship the calibrated prior (or a blend) when it validates better than the network."""
    hidden_sizes: tuple[int, ...] = (100,)
    """paper: InfluenceNetwork hidden layer sizes."""
    learning_rate: float = 1e-4
    """paper: InfluenceNetwork Adam learning rate."""
    epochs: int = 20
    """paper: InfluenceNetwork training epochs."""
    batch_size: int = 64
    """paper: InfluenceNetwork mini-batch size."""
    block_size: int = 64
    """Targets × candidates per block of influence computation (also the resume granularity)."""
    device: str = "auto"
    """auto, cpu, cuda."""
    executor: str = "local"
    """Where influence blocks run: local or ray."""
    workers: int = 2
    """Ray workers (with --executor ray)."""
    ray_address: str = ""
    """Ray cluster address (auto, HOST:PORT); empty starts a local cluster."""
    worker_cpus: float = 1.0
    """CPUs per Ray worker."""
    worker_gpus: float = 0.0
    """GPUs per Ray worker."""
    quiet: bool = False
    """No progress bars."""


@dataclass(frozen=True)
class FidelitySettings(SelectSettings):
    """Settings of ``nncift fidelity``: the full matrix once, the network at several fractions."""

    fractions: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2)
    """Sampled fractions u to evaluate."""
    seeds: tuple[int, ...] = ()
    """Seeds of the sampling and the networks (empty: --seed alone)."""
    architectures: tuple[str, ...] = ()
    """Network architectures to compare (two-tower, paper); empty: --architecture alone. The first fills the quadrant table."""
    limit: int = 0
    """Use only the first N records of the pool (0: all); the full matrix costs N² evaluations."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string right below each field), including bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(element type, is_sequence) of a field's type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return typing.get_args(hint)[0], True
    return hint, False


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: frozenset[str] | set[str] = frozenset()) -> None:
    """Add a ``--flag`` for each field of dataclass ``cls`` (help = the field's docstring).

    Every flag defaults to None (not given), so that a YAML file's values and the dataclass
    defaults apply unless the flag is set on the command line.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    existing = {a.dest for a in parser._actions}  # noqa: SLF001 - argparse has no public accessor
    for item in dataclasses.fields(cls):
        if item.name in skip or item.name in existing:
            continue
        flag = "--" + item.name.replace("_", "-")
        element, is_sequence = _base_type(hints[item.name])
        help_text = f"{docs.get(item.name, '')} (default: {_default(item)!r})"
        if element is bool:
            parser.add_argument(flag, dest=item.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif is_sequence:
            parser.add_argument(flag, dest=item.name, type=_split_list(element), action="extend", default=None,
                                help=help_text + "; repeat the flag or separate values with commas")
        else:
            parser.add_argument(flag, dest=item.name, type=element, default=None, help=help_text)


def _split_list(element: type) -> Any:
    """Parser of one flag value into a list: numbers may be comma-separated; strings (paths) are not split."""
    def parse(text: str) -> list[Any]:
        return [text] if element is str else [element(part) for part in text.split(",") if part.strip()]
    parse.__name__ = element.__name__
    return parse


def _default(item: dataclasses.Field) -> Any:
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return item.default_factory()  # type: ignore[misc]
    return None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML settings file into a flat dict (keys with - or _ both accepted)."""
    with open(path, encoding="utf-8") as handle:
        payload = yaml.safe_load(handle) or {}
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(payload).__name__}")
    return {str(k).replace("-", "_"): v for k, v in payload.items()}


def build_settings(cls: type, values: dict[str, Any]) -> Any:
    """Make a settings dataclass from a dict, converting lists to tuples; unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown settings for {cls.__name__}: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    converted = {}
    for key, value in values.items():
        element, is_sequence = _base_type(hints[key])
        if is_sequence and value is not None:
            value = tuple(element(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
        converted[key] = value
    return cls(**converted)


def settings_dict(settings: Any) -> dict[str, Any]:
    """JSON-ready dict of a settings dataclass (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()}


def environment_info() -> dict[str, Any]:
    """Versions and commit recorded next to every result."""
    packages = ["nncift", "torch", "transformers", "sentence-transformers", "numpy", "peft", "numba", "safetensors"]
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "git_commit": _git_commit(),
        "command": " ".join(sys.argv),
    }


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
