"""Command-line flags made from settings dataclasses: one ``--flag`` per field (help = its docstring, its choices and
default), namespaced by stage (``--selection.budget``) or influence function (``--delift.max-length``); and the flags of
earlier versions, which now stop with a one-line error naming their spelling now."""

from __future__ import annotations

import argparse
import dataclasses
import functools
from typing import Any, Sequence, cast

from nncift.settings.fields import RemovedSetting, base_type, default_of, field_docs, hints, rule_of, stage_fields
from nncift.settings.given_once import StoreOnce


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "", skip: frozenset[str] = frozenset()) -> None:
    """Add a ``--flag`` for each field of dataclass ``cls`` (help = the field's docstring).

    Every flag defaults to None (not given), so that a YAML file's values and the dataclass defaults apply unless
    the flag is set on the command line. With ``prefix`` (a stage's or an influence function's name) the flags are
    namespaced: ``--selection.budget``, stored as ``selection.budget``. A stage field gets its own help group. A field's
    short flag (its :class:`nncift.settings.fields.Rule` ``flag``, e.g. ``--budget``) is a second option string of the same flag.
    """
    docs = field_docs(cls)
    existing = {a.dest for a in parser._actions}  # noqa: SLF001 - argparse has no public accessor
    stages = stage_fields(cls)
    for item in dataclasses.fields(cls):
        dest = f"{prefix}.{item.name}" if prefix else item.name
        if dest in skip or dest in existing:
            continue
        if item.name in stages:
            group = parser.add_argument_group(f"{item.name} settings ({docs.get(item.name, '')} In YAML under '{item.name}:')")
            hidden = frozenset(name for name in getattr(cls, "HIDDEN", ()) if name.startswith(item.name + "."))
            add_arguments(group, stages[item.name], prefix=item.name, skip=hidden)  # type: ignore[arg-type]
            continue
        _add_field(parser, item, hints(cls)[item.name], dest, docs.get(item.name, ""), prefix)


def _add_field(parser: argparse.ArgumentParser, item: dataclasses.Field, hint: Any, dest: str, doc: str, prefix: str) -> None:
    """The flag of one field."""
    element, is_sequence = base_type(hint)
    rule = rule_of(item)
    choices = rule.choices if rule else ()
    help_text = doc + (f" (one of: {', '.join(c or repr(c) for c in choices)})" if choices else "") + f" (default: {default_of(item)!r})"
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
    flags = ["--" + dest.replace("_", "-")] + ([rule.flag] if rule and rule.flag else [])
    parser.add_argument(*flags, dest=dest, default=None, help=help_text, **kwargs)


def _split_list(element: type) -> Any:
    """Parser of one flag value into a list: numbers may be comma-separated; strings (paths) are not split."""
    def parse(text: str) -> list[Any]:
        return [text] if element is str else [element(part) for part in text.split(",") if part.strip()]
    parse.__name__ = element.__name__
    return parse


class _Removed(argparse.Action):
    """A flag of an earlier version: using it stops parsing with :class:`RemovedSetting` (one line, exit 2)."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, now: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.now = now

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None) -> None:
        raise RemovedSetting(option_string or self.dest, self.now)


def add_removed_flags(parser: argparse.ArgumentParser, cls: type, sections: dict[str, type] | None = None) -> None:
    """Hidden flags of earlier versions that now name their spelling: a stage field's flat flag (``--max-steps`` →
    ``--network.max-steps``), a renamed one (``cls.RENAMED``: ``--sampling-blocks``) and an influence function's option
    without its function's name (``--max-length`` → ``--delift.max-length / --less.max-length / ...``)."""
    now: dict[str, list[str]] = {}
    booleans: set[str] = set()
    owners = [(stage, klass) for stage, klass in stage_fields(cls).items()] + list((sections or {}).items())
    for owner, klass in owners:
        for item in dataclasses.fields(klass):
            if f"{owner}.{item.name}" not in getattr(cls, "HIDDEN", ()):
                now.setdefault(item.name, []).append(f"{owner}.{item.name}")
                booleans |= {item.name} if base_type(hints(klass)[item.name])[0] is bool else set()
    for old, dotted in getattr(cls, "RENAMED", {}).items():
        now.setdefault(old, []).append(dotted)
    taken = {option for action in parser._actions for option in action.option_strings}  # noqa: SLF001
    for old, dotted in now.items():
        for negated in (False, True) if old in booleans else (False,):
            option = _flag(old, negated)
            if option not in taken:
                parser.add_argument(option, dest=f"removed.{old}", nargs="?", help=argparse.SUPPRESS, default=argparse.SUPPRESS,
                                    action=cast(Any, functools.partial(_Removed, now=" / ".join(_flag(d, negated) for d in dotted))))


def _flag(name: str, negated: bool = False) -> str:
    """``--stage.name`` of a dotted name (``--no-stage.name`` negated, as argparse spells it)."""
    return f"--{'no-' if negated else ''}{name.replace('_', '-')}"
