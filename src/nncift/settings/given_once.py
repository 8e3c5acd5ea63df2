"""A setting given twice is refused, never silently replaced: a flag repeated on the command line
(``--budget 5 --budget 6``) and a key repeated in one YAML mapping (``seed: 1`` then ``seed: 2``).

Flags that take several values (``--data``, ``--model``, list settings) are repeatable on purpose and
do not use :class:`StoreOnce`.
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from nncift.files.errors import InputError

GIVEN_TWICE = "_given_twice"
"""Namespace attribute where :class:`StoreOnce` lists the flags given more than once."""

GIVEN_AS = "_given_as"
"""Namespace attribute where :class:`StoreOnce` notes the option string each destination was given under
(``--budget`` for ``selection.budget``), so that an error names the flag as typed."""


class StoreOnce(argparse.Action):
    """``store`` that notes a second value of the same flag; :func:`refuse_repeated` then refuses it (exit 2, one line)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        previous = getattr(namespace, self.dest, None)
        if getattr(namespace, f"_seen.{self.dest}", False):
            if not hasattr(namespace, GIVEN_TWICE):
                setattr(namespace, GIVEN_TWICE, [])
            first = getattr(namespace, GIVEN_AS, {}).get(self.dest, option_string)
            flags = f"{first} and {option_string} (one setting) are" if first != option_string else f"{option_string or self.dest} is"
            getattr(namespace, GIVEN_TWICE).append(f"{flags} given twice ({previous} and {values}): give it once")
        setattr(namespace, f"_seen.{self.dest}", True)
        if option_string:
            if not hasattr(namespace, GIVEN_AS):
                setattr(namespace, GIVEN_AS, {})
            getattr(namespace, GIVEN_AS)[self.dest] = option_string
        setattr(namespace, self.dest, values)


def refuse_repeated(args: argparse.Namespace) -> None:
    """Raise :class:`~nncift.files.errors.InputError` for the first flag :class:`StoreOnce` saw twice; drop its bookkeeping from ``args``
    (the option strings as typed, :data:`GIVEN_AS`, stay)."""
    repeated = vars(args).pop(GIVEN_TWICE, None)
    for key in [key for key in vars(args) if key.startswith("_seen.")]:
        delattr(args, key)
    if repeated:
        raise InputError(repeated[0])


class UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key repeated in one mapping, naming its line (PyYAML keeps the last value silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise InputError(f"{self.name}: line {key_node.start_mark.line + 1}: key '{key}' is given twice "  # type: ignore[attr-defined]
                                 f"(lines {seen[key] + 1} and {key_node.start_mark.line + 1}): give it once")
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)
