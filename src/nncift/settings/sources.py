"""Where settings come from: a YAML file (``--config``) and flags over it, merged one way for every command
(``select``, ``finetune``, ``evaluate`` and the research commands): :func:`settings_from_args`, :func:`read_sources`."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any, Collection

import yaml

from nncift.files.errors import InputError
from nncift.settings.fields import build_settings, removed_name, resolve_names, stage_fields
from nncift.settings.given_once import GIVEN_AS, UniqueKeyLoader


class _YamlLoader(UniqueKeyLoader):
    """Safe YAML that reads 1e-4 as a number (YAML 1.2), not as the string PyYAML makes of it."""


_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                  list("-+0123456789"))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML settings file into a dict (top-level keys with - or _ both accepted).

    A file that cannot be read or is not valid YAML raises :class:`~nncift.files.errors.InputError` naming the file (and the line).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            payload = yaml.load(handle, Loader=_YamlLoader) or {}  # noqa: S506 - a SafeLoader
    except OSError as error:
        raise InputError(f"{path}: cannot read the settings file ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InputError(f"{path}: malformed YAML{line}: {getattr(error, 'problem', None) or error}") from None
    if not isinstance(payload, dict):
        raise InputError(f"{path}: expected a mapping of settings, got {type(payload).__name__}")
    flat = {str(k).replace("-", "_"): v for k, v in payload.items()}
    if len(flat) < len(payload):
        raise InputError(f"{path}: a key is given twice, once with - and once with _: give it once")
    return flat


@dataclasses.dataclass
class Sources:
    """Settings as given, before they are built: the YAML file's values, then the flags' over them."""

    values: dict[str, Any]
    """Values of the settings class by dotted name (``selection.budget``); flags override the file."""
    sections: dict[str, dict[str, Any]]
    """Values of each section (an influence function's options: YAML under ``delift:``, flags ``--delift.NAME``)."""
    origins: dict[str, str]
    """Where each value came from, by the name it was given under: the YAML file's path, or the flag as typed."""


def read_sources(cls: type, args: argparse.Namespace, *, sections: Collection[str] = (), hint: str = "") -> Sources:
    """The one merge of a YAML file (``args.config``) and flags (``args``'s destinations) for settings class ``cls``.

    Flags override the file; a setting given twice in one of them is refused. ``sections`` are other names whose
    values are mappings in YAML and dotted flags (``--delift.token-budget``). An unknown YAML key is refused naming the
    file (``hint`` added), a removed one naming its spelling now.
    """
    config = getattr(args, "config", None)
    from_yaml = load_yaml(config) if config else {}
    nested = {name: from_yaml.pop(name) for name in list(from_yaml) if name in sections}
    own = {f.name for f in dataclasses.fields(cls)}
    stages = stage_fields(cls)
    unknown = sorted(key for key in from_yaml if key not in own and key.partition(".")[0] not in stages)
    if unknown and not any(removed_name(cls, key) for key in unknown):
        raise InputError(f"{config}: unknown settings: {', '.join(unknown)}{hint}")
    from_file, origins = resolve_names(cls, from_yaml, dict.fromkeys(from_yaml, str(config)))
    typed: dict[str, str] = getattr(args, GIVEN_AS, {})
    flags = {dest: value for dest, value in vars(args).items()
             if value is not None and (dest in own or dest.partition(".")[0] in stages)}
    from_flags, flag_origins = resolve_names(cls, flags, {dest: typed.get(dest, "--" + dest.replace("_", "-")) for dest in flags})
    origins.update(flag_origins)
    by_section: dict[str, dict[str, Any]] = {}
    for name, given in nested.items():
        if not isinstance(given, dict):
            raise InputError(f"{config}: {name}: expected a mapping of {name}'s options, got {given!r}")
        by_section[name] = {str(key).replace("-", "_"): value for key, value in given.items()}
        origins.update(dict.fromkeys(by_section[name], f"{config} ({name}:)"))
    for dest, value in vars(args).items():
        name, dot, key = dest.partition(".")
        if dot and name in sections and value is not None:
            by_section.setdefault(name, {})[key] = value
            origins[key] = typed.get(dest, f"--{name}.{key.replace('_', '-')}")
    return Sources({**from_file, **from_flags}, by_section, origins)


def settings_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Settings of class ``cls`` from the defaults, the YAML file (``args.config``), then the flags: every value checked,
    a bad one reported with the file or flag it came from."""
    sources = read_sources(cls, args)
    return build_settings(cls, sources.values, origins=sources.origins)
