"""The commands that start from a finished run: ``nncift score``, ``nncift inspect`` and ``nncift select --run RUN --add NEW``.

Each opens the run as the library does (:func:`nncift.open_run`, which names a damaged file or a folder of an
earlier nncift) and runs the :class:`~nncift.steps.run.Run`'s own command (``run.score``, ``run.inspect``,
``run.add``): the command line and the library share one path. What is left here is reading the flags and the
new records, and the lines printed on the terminal.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from nncift.files.errors import InputError
from nncift.settings.given_once import GIVEN_AS, StoreOnce

ADD_FLAGS = ("run", "add", "out", "selection.budget", "quiet", "command", "handler", "force", GIVEN_AS)
"""The arguments of ``select`` that apply with ``--run`` (the others are the run's own settings, refused when given)."""


def cmd_score(args: argparse.Namespace) -> int:
    """nncift score: value new records with a finished run's network (no language model)."""
    from nncift.data.records import read_many, skip_counts
    from nncift.steps.preflight import check_device, check_out_folder
    from nncift.steps.run import open_run

    check_out_folder(args.out, data=args.data, run=args.run, force=args.force)  # before anything is written
    check_device(args.device)
    run = open_run(args.run)
    records, reports = read_many(args.data)
    if not records:
        raise InputError(f"no records to score in {', '.join(args.data)} (see the skip counts)")
    result = run.score(records, args.out, reports=reports, top_targets=args.top, device=args.device, progress=not args.quiet)
    cost = result.manifest["cost"]
    skipped = skip_counts(reports)
    counted = (f"{len(result.rows)} of {sum(r.read for r in reports)} records ({sum(skipped.values())} skipped: "
               + ", ".join(f"{reason}: {n}" for reason, n in skipped.items()) + ")") if skipped else f"{len(result.rows)} records"
    print(f"scored {counted} against {result.manifest['run']['folder']} ({run.objective}): {cost['seconds_total']:.2f} s, "
          f"{cost['counters']['language_model_loads']} language-model loads, 0 influence evaluations")
    for row in sorted(result.rows, key=lambda row: -row["value"])[:5]:
        print(f"  {row['value']:.4f}  {row['source']}")
    print(f"-> {result.out / 'scores.jsonl'}, {result.out / 'scores.csv'}, {result.out / 'manifest.json'}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """nncift inspect: what a finished run chose and why."""
    from nncift.steps.inspect import to_markdown
    from nncift.steps.run import open_run

    report = open_run(args.run).inspect(target=args.target, candidate=args.candidate, top=args.top)
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else to_markdown(report), end="" if not args.json else "\n")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    """select --run RUN --add NEW: the run's own settings, the budget over the union (--budget to change it) and where a sparse
    run's union graph runs (--executor.*; the same picks on every executor)."""
    from nncift.data.records import read_many
    from nncift.steps.preflight import check_out_folder
    from nncift.steps.run import open_run

    if not (args.run and args.add):
        raise InputError("--run and --add go together: --run RUN_DIR --add NEW.jsonl grows RUN_DIR's selection with new records")
    typed = getattr(args, GIVEN_AS, {})
    given = sorted(typed.get(k, "--" + k.replace("_", "-")) for k, v in vars(args).items()
                   if v is not None and v is not False and k not in ADD_FLAGS and not k.startswith("executor."))
    if given:
        raise InputError("with --run, the run's own settings are used: only --selection.budget (--budget), --executor.* and --quiet apply "
                         f"(got {', '.join(given)})")
    check_out_folder(args.out, data=args.add, run=args.run, force=args.force)
    run = open_run(args.run)
    executor = {k.partition(".")[2]: v for k, v in vars(args).items() if k.startswith("executor.") and v is not None}
    new, reports = read_many(args.add)
    if not new:
        raise InputError(f"no records to add in {', '.join(args.add)} (see the skip counts)")
    result = run.add(new, args.out, budget=vars(args)["selection.budget"], reports=reports, new_paths=args.add,
                     executor=dataclasses.replace(run.settings.executor, **executor) if executor else None, progress=not args.quiet)
    counts = result.manifest["counts"]
    print(f"kept the run's {counts['kept']} picks and added {counts['added']} ({counts['added_from_new_records']} of them new records) "
          f"from a union of {counts['pool']} records; objective {result.objective:.4f}")
    print(f"0 influence evaluations, {result.manifest['cost']['counters'].get('language_model_loads', 0)} language-model loads, "
          f"{result.manifest['cost']['seconds_total']:.2f} s")
    print(f"-> {result.run_dir / 'subset.jsonl'}, {result.run_dir / 'scores.csv'} and {result.run_dir / 'manifest.json'}")
    return 0


def register_score(commands: Any) -> None:
    """Add ``nncift score``."""
    parser = commands.add_parser("score", help="value new records with a finished run's network (no language model)")
    parser.add_argument("--run", required=True, action=StoreOnce, help="a finished select run folder")
    parser.add_argument("--data", action="append", required=True, help="new records (file, folder or hf:NAME; repeatable; not split at commas)")
    parser.add_argument("--out", required=True, action=StoreOnce, help="output folder (scores.jsonl, scores.csv, manifest.json)")
    parser.add_argument("--top", type=int, default=5, action=StoreOnce, help="pairwise runs: most-influenced targets listed per record (default: 5)")
    parser.add_argument("--device", default="auto", action=StoreOnce, choices=("auto", "cpu", "cuda"), help="where the embedder runs (default: auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--force", action="store_true", help="write into --out even when it is a non-empty folder that is not an nncift output")
    parser.set_defaults(handler=cmd_score)


def register_inspect(commands: Any) -> None:
    """Add ``nncift inspect``."""
    parser = commands.add_parser("inspect", help="look inside a finished run: top records per target, subset composition, zero-gain picks")
    parser.add_argument("run", help="a finished select run folder")
    parser.add_argument("--target", type=int, help="show the most influential pool records for target I (pool record I when the pool represents itself)")
    parser.add_argument("--candidate", type=int, help="show the targets pool record J serves most")
    parser.add_argument("--top", type=int, default=10, help="how many records per list (default: 10)")
    parser.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    parser.set_defaults(handler=cmd_inspect)
