"""Settings are data: dataclasses (one per stage, nested in a run's: :mod:`nncift.settings.stages`), read from YAML,
written into every run's manifest, and turned into command-line flags (the help text is each field's docstring).

This module is the one field machinery. A field declares its own range and choices with :func:`setting`
(``fraction: float = setting(0.05, above=0, at_most=1)``); :func:`check_settings` checks every field of a settings
object against its type hint, then its :class:`Rule`; :class:`Checked` does so when an object is built;
:func:`build_settings` makes one from the names YAML and flags use. Reading YAML and flags: :mod:`.sources`,
:mod:`.flags`.
"""

from __future__ import annotations

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from nncift.files.errors import InputError, UserError

RULE = "nncift.rule"
"""Key of a field's :class:`Rule` in its dataclass field metadata."""


class SettingsError(UserError, ValueError):
    """A setting of the wrong type or out of range: ``key`` names it, ``origin`` where it came from (a YAML file, a flag)."""

    def __init__(self, key: str, problem: str = "", origin: str = ""):
        self.key, self.problem, self.origin = key, problem, origin
        where = f"{origin}: " if origin.startswith("--") else f"{origin}: {key}: " if origin else f"{key}: "
        super().__init__(where + problem)


class RemovedSetting(SettingsError):
    """A setting name of an earlier version, given again: the message names its spelling now
    (``--max-length was removed; use --delift.max-length / --less.max-length / --selectit.max-length``)."""

    def __init__(self, given: str, now: str, origin: str = ""):
        ValueError.__init__(self, f"{origin + ': ' if origin else ''}{given} was removed; use {now}")
        self.key, self.problem, self.origin = given, f"was removed; use {now}", origin


@dataclass(frozen=True)
class Rule:
    """What values a field takes beyond its type (each item of a list field): a range, choices, a normal form."""

    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    choices: tuple[str, ...] = ()
    pattern: str = ""
    """Values outside ``choices`` that are accepted too (a regular expression, e.g. ``cuda:\\d+``), shown as ``hint``."""
    hint: str = ""
    why: str = ""
    """Added to the message of a value out of range."""
    normal: Callable[[Any], Any] | None = None
    """The value's normal form (raises :class:`SettingsError` for a value it refuses), e.g. the budget rule."""
    flag: str = ""
    """A short flag listed in ``--help`` besides the field's own (``--budget`` for ``--selection.budget``)."""

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (already of the field's type), or None."""
        if self.choices and value not in self.choices and not (self.pattern and re.fullmatch(self.pattern, str(value))):
            listed = ", ".join(repr(choice) for choice in self.choices) + (f" (or {self.hint})" if self.hint else "")
            return f"expected one of {listed}, got {value!r}"
        if self.above is not None and self.at_most is not None and not self.above < value <= self.at_most:
            return f"expected a fraction in ({self.above:g}, {self.at_most:g}], got {value!r}{self.why}"
        if self.at_least is not None and not value >= self.at_least:
            return f"expected a value ≥ {self.at_least:g}, got {value!r}{self.why}"
        if self.above is not None and not value > self.above:
            return f"expected a value > {self.above:g}, got {value!r}{self.why}"
        if self.at_most is not None and not value <= self.at_most:
            return f"expected a value ≤ {self.at_most:g}, got {value!r}{self.why}"
        return None


def setting(default: Any = dataclasses.MISSING, *, factory: Callable[[], Any] | None = None, **rule: Any) -> Any:
    """A settings field with its :class:`Rule`: ``budget: float = setting(0.3, normal=normalise_budget, flag="--budget")``."""
    metadata = {RULE: Rule(**rule)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def rule_of(item: dataclasses.Field) -> Rule | None:
    """The :class:`Rule` a field declared (None: its type alone)."""
    return item.metadata.get(RULE)


class Checked:
    """Base of a settings dataclass whose every field is checked when the object is built (:func:`check_settings`)."""

    def __post_init__(self) -> None:
        """Check every field."""
        check_settings(self)


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


def base_type(hint: Any) -> tuple[Any, bool]:
    """(element type, is_sequence) of a field's type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return typing.get_args(hint)[0], True
    return hint, False


@functools.cache
def hints(cls: Any) -> dict[str, Any]:
    """The resolved type hints of a settings dataclass."""
    return typing.get_type_hints(cls)


def stage_fields(cls: Any) -> dict[str, Any]:
    """The fields of a settings dataclass that are stages (dataclasses themselves), by name → their class."""
    hinted = hints(cls)
    return {f.name: hinted[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hinted[f.name])}


def default_of(item: dataclasses.Field) -> Any:
    """A field's default value (None when it has none)."""
    if item.default is not dataclasses.MISSING:
        return item.default
    if item.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return item.default_factory()  # type: ignore[misc]
    return None


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


_KINDS = {bool: ("true or false", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings")}


def _scalar(value: Any, kind: Any) -> tuple[bool, Any]:
    """(value has the type ``kind``, the value as that type: an int in a float field becomes a float)."""
    if kind in (bool, str):
        return isinstance(value, kind), value
    if kind not in (int, float):
        return True, value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral if kind is int else numbers.Real):
        return False, value
    return (math.isfinite(value), float(value)) if kind is float else (True, int(value))  # type: ignore[call-overload]  # an Integral


def check_field(key: str, value: Any, hint: Any, rule: Rule | None = None) -> Any:
    """``value`` checked against the type hint (lists become tuples), then the field's :class:`Rule`
    (per item of a list; its normal form applied), or :class:`SettingsError` naming ``key``."""
    if value is None and type(None) in typing.get_args(hint):
        return value
    kind, is_sequence = base_type(hint)
    singular, plural = _KINDS.get(kind, ("", ""))
    if not is_sequence:
        ok, value = _scalar(value, kind)
        if not ok:
            raise SettingsError(key, f"expected {singular}, got {value!r}")
        return _apply(key, value, rule)
    items = [_scalar(item, kind) for item in value] if isinstance(value, (list, tuple)) else [(False, value)]
    if not all(ok for ok, _ in items):
        raise SettingsError(key, f"expected a list of {plural}, got {value!r}")
    return tuple(_apply(key, item, rule) for _, item in items)


def _apply(key: str, value: Any, rule: Rule | None) -> Any:
    """One value (of the field's type) checked against ``rule`` and put in its normal form."""
    if rule is None:
        return value
    problem = rule.problem(value)
    if problem:
        raise SettingsError(key, problem)
    if rule.normal is None:
        return value
    try:
        return rule.normal(value)
    except SettingsError as error:
        raise SettingsError(key, error.problem) from None


def check_settings(settings: Any) -> None:
    """Check every field of a settings dataclass: its type (the type hint), then its :class:`Rule`.

    Lists become tuples, integers in float fields floats, a stage given as a mapping its dataclass, and a value
    with a normal form takes it (the budget: :func:`normalise_budget`). The first bad field raises :class:`SettingsError`.
    """
    hinted = hints(type(settings))  # type: ignore[arg-type]  # classes are hashable
    stages = stage_fields(type(settings))
    for item in dataclasses.fields(settings):
        key, value = item.name, getattr(settings, item.name)
        if key in stages:
            if isinstance(value, dict):
                value = build_settings(stages[key], value)
            elif not isinstance(value, stages[key]):
                raise SettingsError(key, f"expected {stages[key].__name__} or a mapping of its settings, got {value!r}")
        else:
            value = check_field(key, value, hinted[key], rule_of(item))
        object.__setattr__(settings, key, value)


def check_options(settings_class: type, options: dict[str, Any], origins: dict[str, str] | None = None) -> Any:
    """An influence function's settings built from its ``options`` (every option checked; one that is not a field
    of ``settings_class`` refused); a bad option is reported with its origin (``origins``)."""
    names = {f.name for f in dataclasses.fields(settings_class)}
    unknown = sorted(set(options) - names)
    if unknown:
        where = (origins or {}).get(unknown[0], "")
        raise SettingsError(unknown[0], f"not an option of {settings_class.__name__} (its options: {', '.join(sorted(names)) or 'none'}; "
                            "model, device, dtype, seed, embedder and trust_remote_code are the run's settings)", where)
    return build_settings(settings_class, options, origins=origins)


def resolve_names(cls: type, values: dict[str, Any], origins: dict[str, str] | None = None, *,
                  replace: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """({dotted name: value}, {dotted name: origin}) of settings given by the names YAML and flags use.

    A stage (a field that is a dataclass, e.g. ``selection``) is given as a mapping or by dotted names
    (``selection.budget``). Unknown names, and the same setting given twice (unless ``replace``: later values win),
    raise ``ValueError`` naming the origin; a name of an earlier version raises :class:`RemovedSetting` naming its spelling now.
    """
    origins = origins or {}
    stages = stage_fields(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    resolved: dict[str, Any] = {}
    where: dict[str, str] = {}  # dotted name → origin of its value
    named: dict[str, str] = {}  # dotted name → the name it was given under

    def put(path: str, value: Any, given_as: str, origin_of: str = "") -> None:
        stage, dot, key = path.partition(".")
        origin = origins.get(origin_of or given_as, "")
        if (stage not in stages or key not in {f.name for f in dataclasses.fields(stages[stage])}) if dot else path not in names:
            now = removed_name(cls, path)
            if now:
                raise RemovedSetting(given_as, now, origin)
            raise InputError(f"{origin + ': ' if origin else ''}unknown settings for {cls.__name__}: {given_as}"
                             + (f" (its stages: {', '.join(stages)})" if stages else ""))
        if path in resolved and not replace:
            raise InputError(f"{path} is given twice ({where[path] or named[path]} and {origin or given_as}): give one")
        resolved[path], where[path], named[path] = value, origin, given_as

    for given, value in values.items():
        key = str(given).replace("-", "_")
        if key in stages and isinstance(value, dict):
            for sub, item in value.items():
                put(f"{key}.{str(sub).replace('-', '_')}", item, f"{given}.{sub}", given)
        else:
            put(key, value, given)
    return resolved, where


def removed_name(cls: type, name: str) -> str:
    """The dotted name now of ``name``, a flat name of an earlier version (``budget`` → ``selection.budget``); "" if none."""
    renamed: dict[str, str] = getattr(cls, "RENAMED", {})
    if name in renamed:
        return renamed[name]
    if "." in name:
        return ""
    return " / ".join(f"{stage}.{name}" for stage, klass in stage_fields(cls).items()
                      if name in {f.name for f in dataclasses.fields(klass)} and f"{stage}.{name}" not in getattr(cls, "HIDDEN", ()))


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
        if key in nested.get(stage, {}) and nested[stage].pop(key) != top.get(key, _default_named(cls, key)) and not replace:
            raise InputError(f"{where[path] + ': ' if where[path] else ''}{path} is the run's {key}: set {key} instead")
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


def _default_named(cls: type, name: str) -> Any:
    return next(default_of(f) for f in dataclasses.fields(cls) if f.name == name)


def _as_declared(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Lists (or a single value) in sequence fields become tuples; items keep their type unless widened."""
    hinted = hints(cls)
    converted = {}
    for key, value in values.items():
        element, is_sequence = base_type(hinted[key])
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
