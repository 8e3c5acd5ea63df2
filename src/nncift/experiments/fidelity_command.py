"""``nncift fidelity``: its settings and its command (light: the computation is imported when the command runs)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from ..settings import SelectSettings


@dataclass(frozen=True)
class FidelitySettings(SelectSettings):
    """Settings of ``nncift fidelity``: the full matrix once, the network at several fractions."""

    fractions: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2)
    """Sampled fractions u to evaluate."""
    seeds: tuple[int, ...] = ()
    """Seeds of the sampling and the networks (empty: --seed alone)."""
    architectures: tuple[str, ...] = ()
    """Network architectures to compare (two-tower, paper); empty: --network.architecture alone. The first fills the quadrant table."""
    limit: int = 0
    """Use only the first N records of the pool (0: all); the full matrix costs N² evaluations."""


def register_cli(subparsers: Any) -> None:
    """Add ``nncift fidelity`` to the command line."""
    from ..cli import add_run_arguments

    parser = subparsers.add_parser("fidelity", help="InfluenceNetwork fidelity per quadrant (paper Fig. 2)")
    add_run_arguments(parser, FidelitySettings)
    parser.set_defaults(handler=_cmd_fidelity)


def _cmd_fidelity(args: argparse.Namespace) -> int:
    """nncift fidelity: what selection loses on the predicted matrix, and per-quadrant MSE, against the true matrix."""
    from ..cli import split_settings
    from .fidelity import format_selection_table, format_table, run_fidelity

    settings, options = split_settings(args, FidelitySettings)
    result = run_fidelity(settings, args.out, influence_options=options)
    print(format_selection_table(result.selection_rows or []))
    print(format_table(result.rows))
    print(f"table, plot and JSON in {result.run_dir}")
    return 0
