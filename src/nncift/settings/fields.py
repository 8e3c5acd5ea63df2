"""Settings are data: dataclasses (one per stage, nested in a run's: :mod:`nncift.settings.stages`), read from YAML,
written into every run's manifest, and turned into command-line flags (the help text is each field's docstring).

This module is the machinery: type and range checks (:func:`check_settings`), the budget rule
(:func:`normalise_budget`), YAML reading, building settings from names (:func:`build_settings`) and flags
(:func:`add_arguments`).
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
import os
import platform
import re
import subprocess
import sys
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Callable

import yaml

from nncift.settings.choices import DTYPES, NETWORK_LOSSES, SAMPLING_DESIGNS
from nncift.settings.given_once import StoreOnce, UniqueKeyLoader


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


def stage_fields(cls: Any) -> dict[str, Any]:
    """The fields of a settings dataclass that are stages (dataclasses themselves), by name → their class."""
    hints = _hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: frozenset[str] | set[str] = frozenset(),
                  prefix: str = "", aliases: dict[str, str] | None = None, listed: frozenset[str] | None = None) -> None:
    """Add a ``--flag`` for each field of dataclass ``cls`` (help = the field's docstring).

    Every flag defaults to None (not given), so that a YAML file's values and the dataclass
    defaults apply unless the flag is set on the command line. With ``prefix`` (a stage's or an influence
    function's name) the flags are namespaced: ``--selection.budget``, stored as ``selection.budget``.
    A stage field gets its own help group and namespaced flags. ``aliases`` (flat name → dotted name)
    adds the flat flag too (``--budget``, stored as ``budget``): listed in the help when in ``listed``.
    """
    aliases = aliases if aliases is not None else getattr(cls, "ALIASES", {})
    listed = listed if listed is not None else getattr(cls, "SHORT_FLAGS", frozenset())
    short = {dotted: flat for flat, dotted in aliases.items()}
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    existing = {a.dest for a in parser._actions}  # noqa: SLF001 - argparse has no public accessor
    stages = stage_fields(cls)
    for item in dataclasses.fields(cls):
        dest = f"{prefix}.{item.name}" if prefix else item.name
        if item.name in skip or dest in skip or dest in existing:
            continue
        if item.name in stages:
            group = parser.add_argument_group(f"{item.name} settings ({docs.get(item.name, '')} In YAML under '{item.name}:')")
            add_arguments(group, stages[item.name], prefix=item.name, aliases=aliases, listed=listed,  # type: ignore[arg-type]
                          skip={name.partition(".")[2] for name in getattr(cls, "HIDDEN", ()) if name.startswith(item.name + ".")})
            continue
        element, is_sequence = _base_type(hints[item.name])
        choices = getattr(_RULES.get(item.name), "choices", None)
        help_text = f"{docs.get(item.name, '')}" + (f" (one of: {', '.join(c or repr(c) for c in choices)})" if choices else "") + \
            f" (default: {_default(item)!r})"
        flags = ["--" + dest.replace("_", "-")]
        if element is bool:
            kwargs: dict[str, Any] = {"action": argparse.BooleanOptionalAction}
        elif is_sequence:
            kwargs = {"type": _split_list(element), "action": "extend"}
            help_text += ("; repeat the flag for several (values are not split at commas: paths may hold them)"
                          if element is str else "; repeat the flag or separate values with commas")
        else:
            kwargs = {"type": element, "action": StoreOnce}  # given twice: refused (nncift.settings.given_once)
        if prefix and element is not bool:
            kwargs["metavar"] = item.name.upper()
        alias = short.get(dest, "")
        parser.add_argument(*flags, dest=dest, default=None, help=help_text + (f" (short: --{alias.replace('_', '-')})" if alias in listed else ""),
                            **kwargs)
        if alias and alias not in existing:
            parser.add_argument("--" + alias.replace("_", "-"), dest=alias, default=None,
                                help=f"short for {flags[0]}" if alias in listed else argparse.SUPPRESS, **kwargs)


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


def _at_least(low: float, *, strict: bool = False, why: str = "") -> _Rule:
    """Rule: a number ≥ ``low`` (> ``low`` when strict); ``why`` is added to the message."""
    return lambda v: None if (v > low if strict else v >= low) else f"expected a value {'>' if strict else '≥'} {low}, got {v!r}{why}"


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


_ARCHITECTURES = _one_of("two-tower", "paper")
_RULES: dict[str, _Rule] = {
    "fraction": _fraction, "min_sampled": _at_least(1), "blocks": _at_least(0),
    "objective": _one_of("", "fl", "flmi", "flcg", "topk"), "eta": _at_least(0), "nu": _at_least(0), "seed": _at_least(0),
    "architecture": _ARCHITECTURES, "tower_hidden": _at_least(1), "tower_rank": _at_least(1), "max_steps": _at_least(0),
    "folds": _at_least(3, why=" (the validation that chooses the predictor needs at least 3 folds)"),
    "hidden_sizes": _at_least(1), "learning_rate": _at_least(0, strict=True), "epochs": _at_least(0),
    "batch_size": _at_least(1), "block_size": _at_least(1), "device": _device, "name": _one_of("local", "ray"),
    "workers": _at_least(1), "worker_cpus": _at_least(0), "worker_gpus": _at_least(0),
    "fractions": _fraction, "seeds": _at_least(0), "architectures": _ARCHITECTURES, "limit": _at_least(0),
    "dtype": _one_of(*DTYPES), "loss": _one_of(*NETWORK_LOSSES), "design": _one_of(*SAMPLING_DESIGNS), "labels": _at_least(0),
}
"""Ranges and choices of settings fields by name, at any level of the run settings (per item of a list),
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

    Lists become tuples, integers in float fields floats, a stage given as a mapping its dataclass, and the
    budget takes its normal form (:func:`normalise_budget`). The first bad field raises :class:`SettingsError`.
    """
    hints = _hints(type(settings))  # type: ignore[arg-type]  # classes are hashable
    stages = stage_fields(type(settings))
    for item in dataclasses.fields(settings):
        key, value = item.name, getattr(settings, item.name)
        if key in stages:
            if isinstance(value, dict):
                value = build_settings(stages[key], value)
            elif not isinstance(value, stages[key]):
                raise SettingsError(key, f"expected {stages[key].__name__} or a mapping of its settings, got {value!r}")
            object.__setattr__(settings, key, value)
            continue
        value = check_field(key, value, hints[key])
        rule = _RULES.get(key)
        for element in (value if isinstance(value, tuple) else (value,)) if rule else ():
            problem = rule(element)  # type: ignore[misc]  # not None when there are items
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
    try:
        settings_class(**own)
    except ValueError as error:  # the class's own checks: "max_length: ..." names the option
        key, _, problem = str(error).partition(": ")
        raise SettingsError(key, problem, (origins or {}).get(key, "")) if key in own and problem else error from None


class _YamlLoader(UniqueKeyLoader):
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
    flat = {str(k).replace("-", "_"): v for k, v in payload.items()}
    if len(flat) < len(payload):
        raise ValueError(f"{path}: a key is given twice, once with - and once with _: give it once")
    return flat


def resolve_names(cls: type, values: dict[str, Any], origins: dict[str, str] | None = None, *,
                  replace: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """({dotted name: value}, {dotted name: origin}) of settings given by the names YAML and flags use.

    A stage (a field that is a dataclass, e.g. ``selection``) is given as a mapping, by dotted names
    (``selection.budget``) or by the class's flat ``ALIASES`` (``budget``). Unknown names, and the same
    setting given twice (unless ``replace``: later values win), raise ``ValueError`` naming the origin.
    """
    origins = origins or {}
    aliases: dict[str, str] = getattr(cls, "ALIASES", {})
    stages = stage_fields(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    resolved: dict[str, Any] = {}
    where: dict[str, str] = {}  # dotted name → origin of its value
    named: dict[str, str] = {}  # dotted name → the name it was given under

    def put(path: str, value: Any, given_as: str, origin_of: str = "") -> None:
        stage, dot, key = path.partition(".")
        origin = origins.get(origin_of or given_as, "")
        if (stage not in stages or key not in {f.name for f in dataclasses.fields(stages[stage])}) if dot else path not in names:
            raise ValueError(f"{origin + ': ' if origin else ''}unknown settings for {cls.__name__}: {given_as}"
                             + (f" (its stages: {', '.join(stages)})" if stages else ""))
        if path in resolved and not replace:
            raise ValueError(f"{path} is given twice ({where[path] or named[path]} and {origin or given_as}): give one")
        resolved[path], where[path], named[path] = value, origin, given_as

    for given, value in values.items():
        key = str(given).replace("-", "_")
        if key in stages and isinstance(value, dict):
            for sub, item in value.items():
                put(f"{key}.{str(sub).replace('-', '_')}", item, f"{given}.{sub}", given)
        elif key in names and not (key in stages and key in aliases and not dataclasses.is_dataclass(value)):
            put(key, value, given)  # ``executor: ray`` is the alias of executor.name; ``executor: {...}`` the stage
        else:
            put(aliases.get(key, key), value, given)
    return resolved, where


def build_settings(cls: type, values: dict[str, Any], *, origins: dict[str, str] | None = None, replace: bool = False) -> Any:
    """Make a settings dataclass from names (YAML keys, flag destinations: :func:`resolve_names`), checking every value.

    ``origins`` says where each value came from (a YAML file's path, or a ``--flag``), by the name it was
    given under: a value the dataclass refuses (:class:`SettingsError`) is reported with it, e.g.
    ``c.yaml: selection.budget: expected a number, got 'lots'``.
    """
    resolved, where = resolve_names(cls, values, origins, replace=replace)
    stages = stage_fields(cls)
    top = {path: value for path, value in resolved.items() if "." not in path}
    nested: dict[str, dict[str, Any]] = {}
    for path, value in resolved.items():
        stage, dot, key = path.partition(".")
        if dot:
            nested.setdefault(stage, {})[key] = value
    for path in getattr(cls, "HIDDEN", ()):
        stage, _, key = path.partition(".")
        if key in nested.get(stage, {}) and nested[stage].pop(key) != top.get(key, _default_of(cls, key)) and not replace:
            raise ValueError(f"{where[path] + ': ' if where[path] else ''}{path} is the run's {key}: set {key} instead")
    try:
        for stage, given_values in nested.items():
            try:
                top[stage] = build_settings(stages[stage], given_values)
            except SettingsError as error:
                path = f"{stage}.{error.key}"
                raise SettingsError(path, error.problem, where.get(path, "")) from None
        return cls(**_as_declared(cls, top))
    except SettingsError as error:
        origin = where.get(error.key)
        if not origin or error.origin:
            raise
        raise SettingsError(error.key, error.problem, origin) from None


def _default_of(cls: type, name: str) -> Any:
    return next(_default(f) for f in dataclasses.fields(cls) if f.name == name)


def _as_declared(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Lists (or a single value) in sequence fields become tuples; items keep their type unless widened."""
    hints = typing.get_type_hints(cls)
    converted = {}
    for key, value in values.items():
        element, is_sequence = _base_type(hints[key])
        if is_sequence and value is not None:
            value = tuple(_scalar(v, element)[1] for v in (value if isinstance(value, (list, tuple)) else [value]))
        converted[key] = value
    return converted


def settings_dict(settings: Any) -> dict[str, Any]:
    """JSON-ready dict of a settings dataclass: stages become nested dicts, tuples lists."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value
    return plain(dataclasses.asdict(settings))


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
        "cwd": os.getcwd(),  # relative input paths are read from here (select --add, score)
    }


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
