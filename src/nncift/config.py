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
import math
import numbers
import platform
import re
import subprocess
import sys
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from .choices import DTYPES
from .models import BUNDLED_EMBEDDER, BUNDLED_LM


@dataclass(frozen=True)
class SelectSettings:
    """Settings of one NN-CIFT selection run (``nncift select``)."""

    data: tuple[str, ...] = ()
    """Pool files (candidates): .json/.jsonl files, folders of them, or hf:NAME[:SPLIT]."""
    targets: tuple[str, ...] = ()
    """Target files (validation data of a task). Empty: the pool represents itself."""
    influence: str = "delift-se"
    """Influence function: delift-se (default), delift, less, selectit. DELIFT-SE is the default because with the bundled 135M model, DELIFT through the
    network selected no better than its cosine fallback on real data, which DELIFT-SE computes exactly without the LM (BENCHMARKS.md)."""
    fraction: float = 0.05
    """Fraction u of targets and candidates on which the influence function is computed (Q1)."""
    min_sampled: int = 10
    """At least this many sampled targets and candidates (for tiny data sets)."""
    sampling_blocks: int = 0
    """Sampling design: 1 = one u×u block; g > 1 = the same number of labelled pairs in g blocks over √g× as many records; 0 = the influence function's
    own default (DELIFT, which costs per pair: 4; the others, which cost per record: 1)."""
    budget: float = 0.3
    """Subset size: a fraction of the pool in (0, 1] (1 = the whole pool, ranked), or a whole number of records above 1 (50, or 50.0); 0, negatives and
    non-integral values above 1 such as 1.5 are errors."""
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
    dtype: str = "float32"
    """Causal LM weights of LM-based influence functions: float32, bfloat16 (GPU), float16."""
    trust_remote_code: bool = False
    """Run code shipped with the causal LM (explicit opt-in only)."""
    architecture: str = "two-tower"
    """InfluenceNetwork: two-tower (calibrated cosine prior + learned towers, validated on held-out records; the default) or paper (the paper's MLP, for
    reproduction)."""
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

    def __post_init__(self) -> None:
        """Check every field's type and range before anything runs (:func:`check_settings`)."""
        check_settings(self)


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
def field_docs(cls: Any) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string right below each field), including bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))  # type: ignore[arg-type]
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


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: frozenset[str] | set[str] = frozenset(),
                  prefix: str = "") -> None:
    """Add a ``--flag`` for each field of dataclass ``cls`` (help = the field's docstring).

    Every flag defaults to None (not given), so that a YAML file's values and the dataclass
    defaults apply unless the flag is set on the command line. With ``prefix`` (an influence
    function's name) the flags are namespaced: ``--delift.token-budget``, stored as ``delift.token_budget``.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    existing = {a.dest for a in parser._actions}  # noqa: SLF001 - argparse has no public accessor
    for item in dataclasses.fields(cls):
        dest = f"{prefix}.{item.name}" if prefix else item.name
        if item.name in skip or dest in existing:
            continue
        flag = "--" + (f"{prefix}." if prefix else "") + item.name.replace("_", "-")
        element, is_sequence = _base_type(hints[item.name])
        choices = getattr(_RULES.get(item.name), "choices", None)
        help_text = f"{docs.get(item.name, '')}" + (f" (one of: {', '.join(c or repr(c) for c in choices)})" if choices else "") + \
            f" (default: {_default(item)!r})"
        if element is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif is_sequence:
            parser.add_argument(flag, dest=dest, type=_split_list(element), action="extend", default=None,
                                help=help_text + ("; repeat the flag for several (values are not split at commas: paths may hold them)"
                                                  if element is str else "; repeat the flag or separate values with commas"))
        else:
            parser.add_argument(flag, dest=dest, type=element, default=None, help=help_text)


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


class SettingsError(ValueError):
    """A setting of the wrong type or out of range: ``key`` names it, ``origin`` where it came from (a YAML file, a flag)."""

    def __init__(self, key: str, problem: str = "", origin: str = ""):
        self.key, self.problem, self.origin = key, problem, origin
        where = f"{origin}: " if origin.startswith("--") else f"{origin}: {key}: " if origin else f"{key}: "
        super().__init__(where + problem)


def normalise_budget(budget: Any) -> float | int:
    """The one budget rule (``--budget``; :func:`nncift.selection.budget_to_count` applies it too).

    A number in (0, 1] is a fraction of the pool (1 = all of it); a whole number above 1 is a count of
    records, written with or without a fraction part (50 or 50.0). Returns the fraction as a float or
    the count as an int. 0, negatives, NaN, infinity, non-integral values above 1 (1.5), bools and
    non-numbers raise :class:`SettingsError`.
    """
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise SettingsError("budget", f"expected a number, got {budget!r}")
    value = float(budget)
    if 0 < value <= 1:
        return value
    if math.isfinite(value) and value > 1 and value.is_integer():
        return int(value)
    raise SettingsError("budget", f"expected a fraction in (0, 1] or a whole number of records above 1 (e.g. 50), got {budget!r}")


_Rule = Callable[[Any], "str | None"]


def _at_least(low: float, *, strict: bool = False) -> _Rule:
    """Rule: a number ≥ ``low`` (> ``low`` when strict)."""
    return lambda v: None if (v > low if strict else v >= low) else f"expected a value {'>' if strict else '≥'} {low}, got {v!r}"


def _one_of(*choices: str) -> _Rule:
    """Rule: one of ``choices`` (kept on the rule as ``choices``, for the help text)."""
    def rule(value: Any) -> str | None:
        return None if value in choices else f"expected one of {', '.join(repr(c) for c in choices)}, got {value!r}"
    rule.choices = choices  # type: ignore[attr-defined]
    return rule


def _fraction(value: float) -> str | None:
    return None if 0 < value <= 1 else f"expected a fraction in (0, 1], got {value!r}"


def _device(value: str) -> str | None:
    return None if value in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", value) else \
        f"expected one of 'auto', 'cpu', 'cuda' (or 'cuda:N'), got {value!r}"


def _influence(value: str) -> str | None:
    from .influence import REGISTRY

    return None if value in REGISTRY else f"unknown influence function {value!r}; choose from: {', '.join(sorted(REGISTRY))}"


_ARCHITECTURES = _one_of("two-tower", "paper")
_RULES: dict[str, _Rule] = {
    "influence": _influence, "fraction": _fraction, "min_sampled": _at_least(1), "sampling_blocks": _at_least(0),
    "objective": _one_of("", "fl", "flmi", "flcg", "topk"), "eta": _at_least(0), "nu": _at_least(0), "seed": _at_least(0),
    "architecture": _ARCHITECTURES, "tower_hidden": _at_least(1), "tower_rank": _at_least(1), "max_steps": _at_least(0),
    "folds": _at_least(1), "hidden_sizes": _at_least(1), "learning_rate": _at_least(0, strict=True), "epochs": _at_least(0),
    "batch_size": _at_least(1), "block_size": _at_least(1), "device": _device, "executor": _one_of("local", "ray"),
    "workers": _at_least(1), "worker_cpus": _at_least(0), "worker_gpus": _at_least(0),
    "fractions": _fraction, "seeds": _at_least(0), "architectures": _ARCHITECTURES, "limit": _at_least(0),
    "dtype": _one_of(*DTYPES),
}
"""Ranges and choices of the fields of :class:`SelectSettings` and :class:`FidelitySettings` (per item of a list),
and of the influence functions' options of the same name (``device``, ``dtype``)."""

_KINDS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings")}


@functools.cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _scalar(value: Any, kind: Any) -> tuple[bool, Any]:
    """(value has the type ``kind``, the value as that type: an int in a float field becomes a float)."""
    if kind in (bool, str):
        return isinstance(value, kind), value
    if kind not in (int, float):
        return True, value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if kind is int else numbers.Real):
        return False, value
    return (math.isfinite(value), float(value)) if kind is float else (True, int(value))  # type: ignore[call-overload]  # an Integral


def check_field(key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the type hint (lists become tuples), or :class:`SettingsError` naming ``key``."""
    if value is None and type(None) in typing.get_args(hint):
        return value
    kind, is_sequence = _base_type(hint)
    singular, plural = _KINDS.get(kind, ("", ""))
    if not is_sequence:
        ok, value = _scalar(value, kind)
        if not ok:
            raise SettingsError(key, f"expected {singular}, got {value!r}")
        return value
    items = [_scalar(item, kind) for item in value] if isinstance(value, (list, tuple)) else [(False, value)]
    if not all(ok for ok, _ in items):
        raise SettingsError(key, f"expected a list of {plural}, got {value!r}")
    return tuple(item for _, item in items)


def check_settings(settings: Any) -> None:
    """Check every field of a settings dataclass: its type (the type hint), then its range (:data:`_RULES`).

    Lists become tuples, integers in float fields floats, and the budget takes its normal form
    (:func:`normalise_budget`). The first bad field raises :class:`SettingsError`.
    """
    for key, hint in _hints(type(settings)).items():  # type: ignore[arg-type]  # classes are hashable
        value = check_field(key, getattr(settings, key), hint)
        rule = _RULES.get(key)
        if rule is None:
            items: tuple[Any, ...] = ()
        else:
            items = value if isinstance(value, tuple) else (value,)
        for item in items:
            problem = rule(item)  # type: ignore[misc]  # not None when there are items
            if problem:
                raise SettingsError(key, problem)
        if key == "budget":
            value = normalise_budget(value)
        object.__setattr__(settings, key, value)


def check_options(settings_class: type, options: dict[str, Any], origins: dict[str, str] | None = None) -> None:
    """Check an influence function's options (keys that are not fields of ``settings_class`` are ignored):
    their types, then the class's own checks; a bad option is reported with its origin (``origins``)."""
    hints = _hints(settings_class)
    own = {key: value for key, value in options.items() if key in hints}
    try:
        for key, value in own.items():
            check_field(key, value, hints[key])
            problem = _RULES[key](value) if key in _RULES and not isinstance(value, (tuple, list)) else None
            if problem:
                raise SettingsError(key, problem)
    except SettingsError as error:
        raise SettingsError(error.key, error.problem, (origins or {}).get(error.key, "")) from None
    settings_class(**own)


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML that reads 1e-4 as a number (YAML 1.2), not as the string PyYAML makes of it."""


_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                  list("-+0123456789"))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML settings file into a flat dict (keys with - or _ both accepted).

    A file that cannot be read or is not valid YAML raises ``ValueError`` naming the file (and the line).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            payload = yaml.load(handle, Loader=_YamlLoader) or {}  # noqa: S506 - a SafeLoader
    except OSError as error:
        raise ValueError(f"{path}: cannot read the settings file ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{path}: malformed YAML{line}: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(payload).__name__}")
    return {str(k).replace("-", "_"): v for k, v in payload.items()}


def build_settings(cls: type, values: dict[str, Any], *, origins: dict[str, str] | None = None) -> Any:
    """Make a settings dataclass from a dict, converting lists to tuples; unknown keys are an error.

    ``origins`` says where each value came from (a YAML file's path, or a ``--flag``): a value the
    dataclass refuses (:class:`SettingsError`) is reported with it, e.g. ``c.yaml: budget: expected a number, got 'lots'``.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown settings for {cls.__name__}: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    converted = {}
    for key, value in values.items():
        element, is_sequence = _base_type(hints[key])
        if is_sequence and value is not None:  # a single value is a list of one; items keep their type unless widened
            value = tuple(_scalar(v, element)[1] for v in (value if isinstance(value, (list, tuple)) else [value]))
        converted[key] = value
    try:
        return cls(**converted)
    except SettingsError as error:
        origin = (origins or {}).get(error.key)
        if not origin or error.origin:
            raise
        raise SettingsError(error.key, error.problem, origin) from None


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
            versions[name] = "not installed"
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
