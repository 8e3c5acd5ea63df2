"""``nncift sweep``: NN-CIFT over a u × v grid (fraction labelled × subset size), one influence computation per u.

The plan (settings, nested samples, cells) is :mod:`nncift_research.sweep_plan`; the engine :mod:`nncift_research.sweep_run`;
the tables and heat map :mod:`nncift_research.sweep_report`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nncift.files.errors import InputError
from nncift_research.sweep_plan import SweepSettings


def run_sweep(settings: SweepSettings, out: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Run (or resume) the sweep in ``out``; see :class:`nncift_research.sweep_run.Sweep` for the keyword arguments."""
    from nncift_research.sweep_run import Sweep

    sweep = Sweep(settings, out, **kwargs)
    try:
        return sweep.run()
    finally:
        sweep.close()


def register_cli(subparsers: Any) -> None:
    """Add ``nncift sweep`` to the command line."""
    from nncift.cli.commands import add_run_arguments

    parser = subparsers.add_parser("sweep", help="the u × v grid: NN-CIFT at every labelled fraction and subset size, scored in ICL mode")
    add_run_arguments(parser, SweepSettings)
    parser.set_defaults(handler=_cmd_sweep)


def _cmd_sweep(args: Any) -> int:
    from nncift.cli.commands import split_settings
    from nncift.settings.given_once import GIVEN_AS
    from nncift_research.sweep_report import grid_table

    for dest in ("sampling.fraction", "selection.budget", "seed"):
        if vars(args).get(dest) is not None:
            flag = getattr(args, GIVEN_AS, {}).get(dest, "--" + dest.replace("_", "-"))
            raise InputError(f"{flag}: the sweep takes --u, --v and --seeds instead")
    settings, options = split_settings(args, SweepSettings)
    results = run_sweep(settings, args.out, influence_options=options)
    print(grid_table(results["rows"], "exact_match"))
    influence = results["manifest"]["influence"]
    print(f"influence evaluations: {influence['evaluations_in_blocks']:,} in the largest u's blocks "
          f"({influence['evaluations_made_by_this_invocation']:,} by this run); independent runs per u would make "
          f"{influence['independent_runs_per_u_would_make']:,}")
    print(f"-> {Path(args.out) / 'results.md'} and {Path(args.out) / 'grid.png'}")
    return 0
