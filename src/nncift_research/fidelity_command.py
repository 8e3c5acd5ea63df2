"""``nncift fidelity``: its settings and its command (light: the computation is imported when the command runs)."""

from __future__ import annotations

import argparse
from typing import Any

from nncift_research.fidelity_settings import FidelitySettings


def register_cli(subparsers: Any) -> None:
    """Add ``nncift fidelity`` to the command line."""
    from nncift.cli.commands import add_run_arguments

    parser = subparsers.add_parser("fidelity", help="InfluenceNetwork fidelity per quadrant (paper Fig. 2)")
    add_run_arguments(parser, FidelitySettings)
    parser.set_defaults(handler=_cmd_fidelity)


def _cmd_fidelity(args: argparse.Namespace) -> int:
    """nncift fidelity: what selection loses on the predicted matrix, and per-quadrant MSE, against the true matrix."""
    from nncift.cli.commands import split_settings
    from nncift_research.fidelity import format_selection_table, format_table, run_fidelity

    settings, options = split_settings(args, FidelitySettings)
    result = run_fidelity(settings, args.out, influence_options=options)
    print(format_selection_table(result.selection_rows or []))
    print(format_table(result.rows))
    print(f"table, plot and JSON in {result.run_dir}")
    return 0
