"""Influence functions, by name. Adding one = one module + one line in :data:`REGISTRY` (built in), or one call to
:func:`register` (a user's function)."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, TypedDict

from nncift.influence.base import InfluenceFunction, InfluenceSpec, PairwiseInfluence, PointwiseInfluence
from nncift.settings.fields import SettingsError

REGISTRY: dict[str, str] = {
    "delift-se": "nncift.influence.delift_se:DeliftSE",
    "delift": "nncift.influence.delift:Delift",
    "less": "nncift.influence.less:Less",
    "selectit": "nncift.influence.selectit:SelectIT",
}
"""The import path (``module:Class``) of each function by name; :func:`register` adds to it."""


SETTINGS: dict[str, str] = {
    "delift-se": "nncift.influence.settings:DeliftSESettings",
    "delift": "nncift.influence.settings:DeliftSettings",
    "less": "nncift.influence.settings:LessSettings",
    "selectit": "nncift.influence.settings:SelectITSettings",
}
"""The settings class of each registered function, in a light module (the command line builds its flags
from them without importing torch); ``influence_class(name).Settings`` is the same class."""

_CLASSES: dict[str, type[InfluenceFunction]] = {}
"""Classes given to :func:`register` as objects (found in this process even when their import path is not importable)."""


def _import(path: str, what: str) -> Any:
    """The object at ``module:attribute`` (attribute may be dotted: a nested class); :class:`SettingsError` naming ``what`` otherwise."""
    module, _, attribute = path.partition(":")
    try:
        value: Any = importlib.import_module(module)
        for part in attribute.split("."):
            value = getattr(value, part)
    except (ImportError, AttributeError, ValueError) as error:
        raise SettingsError(what, f"cannot import {path!r} ({type(error).__name__}: {error})") from None
    return value


def register(name: str, function: type[InfluenceFunction] | str, *, replace: bool = False) -> None:
    """Make influence function ``function`` available as ``name`` to ``select``, ``score`` and both executors.

    ``function`` is a subclass of :class:`PairwiseInfluence` or :class:`PointwiseInfluence` with its settings
    dataclass as ``Settings`` (its fields are the function's options), or its import path ``"package.module:Class"``.
    Both registries (:data:`REGISTRY`, :data:`SETTINGS`) are updated; a class without a ``name`` gets this one.

    The Ray executor rebuilds the function on its workers from the import path: the workers import the class's
    module, so that module must be importable there (installed, or on ``PYTHONPATH`` of the Ray runtime
    environment: ``ray.init(runtime_env={"env_vars": {"PYTHONPATH": folder}})``). A class given as an object is
    registered under ``module:qualname``: a class defined at the top level of a module (a test file too) works
    on workers; one defined inside a function works with the local executor only.

    Raises:
        SettingsError: ``name`` is taken (unless ``replace``), or ``function`` is not an influence function class.
    """
    if not name or not isinstance(name, str):
        raise SettingsError("influence", f"register: the name must be a non-empty string, got {name!r}")
    if name in REGISTRY and not replace:
        raise SettingsError("influence", f"'{name}' is already registered ({REGISTRY[name]}): pick another name, or pass replace=True")
    path = function if isinstance(function, str) else f"{function.__module__}:{function.__qualname__}"
    cls = _import(path, "influence") if isinstance(function, str) else function
    if not (isinstance(cls, type) and issubclass(cls, (PairwiseInfluence, PointwiseInfluence))):
        raise SettingsError("influence", f"register: {path} is not a subclass of PairwiseInfluence or PointwiseInfluence")
    settings = getattr(cls, "Settings", None)
    if not (isinstance(settings, type) and dataclasses.is_dataclass(settings)):
        raise SettingsError("influence", f"register: {path} has no settings dataclass as its Settings attribute")
    if not getattr(cls, "name", None):
        cls.name = name
    REGISTRY[name] = path
    SETTINGS[name] = f"{settings.__module__}:{settings.__qualname__}"
    _CLASSES[name] = cls


def function_path(name: str) -> str:
    """The import path (``module:Class``) registered under ``name`` (what a Ray worker imports)."""
    if name not in REGISTRY:
        raise SettingsError("influence", f"unknown influence function '{name}'; choose from: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def settings_class(name: str) -> type:
    """The settings dataclass of the function registered under ``name``."""
    if name in _CLASSES:
        return _CLASSES[name].Settings
    if name not in SETTINGS:
        raise SettingsError("influence", f"unknown influence function '{name}'; choose from: {', '.join(sorted(SETTINGS))}")
    module, _, attribute = SETTINGS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def influence_class(name: str) -> type[InfluenceFunction]:
    """The class registered under ``name`` (imported on first use)."""
    if name in _CLASSES:
        return _CLASSES[name]
    module, _, attribute = function_path(name).partition(":")
    return getattr(importlib.import_module(module), attribute)


class NetworkReading(TypedDict):
    """Keyword arguments of :func:`nncift.models.embeddings.embed_records` that say what the network reads."""

    network_input: str
    response_weight: float


def network_reading(influence: str, network: Any) -> NetworkReading:
    """How the InfluenceNetwork of a run reads each record, as keyword arguments of
    :func:`nncift.models.embeddings.embed_records`: ``network_input`` (``--network.input``; ``auto`` resolved to the influence
    function's own :attr:`~nncift.influence.base.InfluenceFunction.network_input`) and ``response_weight``."""
    chosen = network.input if network.input != "auto" else influence_class(influence).network_input
    return {"network_input": chosen, "response_weight": float(network.response_weight)}


def build_influence(spec: InfluenceSpec, *, progress: bool = True) -> Any:
    """Build the influence function described by ``spec``."""
    return influence_class(spec.name).from_options(spec.options, run=spec.run, progress=progress)


__all__ = [
    "REGISTRY", "InfluenceFunction", "InfluenceSpec", "PairwiseInfluence", "PointwiseInfluence",
    "SETTINGS", "build_influence", "function_path", "influence_class", "register", "settings_class",
]
