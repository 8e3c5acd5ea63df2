"""Influence functions, by name. Adding one = one module + one line in :data:`REGISTRY`."""

from __future__ import annotations

import importlib
from typing import Any

from nncift.influence.base import InfluenceFunction, InfluenceSpec, PairwiseInfluence, PointwiseInfluence
from nncift.settings.fields import SettingsError

REGISTRY: dict[str, str] = {
    "delift-se": "nncift.influence.delift_se:DeliftSE",
    "delift": "nncift.influence.delift:Delift",
    "less": "nncift.influence.less:Less",
    "selectit": "nncift.influence.selectit:SelectIT",
}


SETTINGS: dict[str, str] = {
    "delift-se": "nncift.influence.settings:DeliftSESettings",
    "delift": "nncift.influence.settings:DeliftSettings",
    "less": "nncift.influence.settings:LessSettings",
    "selectit": "nncift.influence.settings:SelectITSettings",
}
"""The settings class of each registered function, in a light module (the command line builds its flags
from them without importing torch); ``influence_class(name).Settings`` is the same class."""


def settings_class(name: str) -> type:
    """The settings dataclass of the function registered under ``name``."""
    if name not in SETTINGS:
        raise SettingsError(f"unknown influence function '{name}'; choose from: {', '.join(sorted(SETTINGS))}")
    module, _, attribute = SETTINGS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def influence_class(name: str) -> type[InfluenceFunction]:
    """The class registered under ``name`` (imported on first use)."""
    if name not in REGISTRY:
        raise SettingsError(f"unknown influence function '{name}'; choose from: {', '.join(sorted(REGISTRY))}")
    module, _, attribute = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def build_influence(spec: InfluenceSpec, *, progress: bool = True) -> Any:
    """Build the influence function described by ``spec``."""
    return influence_class(spec.name).from_options(spec.options, progress=progress)


__all__ = [
    "REGISTRY", "InfluenceFunction", "InfluenceSpec", "PairwiseInfluence", "PointwiseInfluence",
    "SETTINGS", "build_influence", "influence_class", "settings_class",
]
