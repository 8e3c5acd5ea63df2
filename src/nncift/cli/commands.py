"""The ``nncift`` command line. Flags are generated from the settings dataclasses.

Every command exits with code 2 and a one-line message (no traceback) on bad input (a user error:
:data:`USER_ERRORS`); any other exception is a bug, shown with its traceback and exit code 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import signal
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from nncift.files.errors import InputError, UserError
from nncift.run.store import make_run_folder
from nncift.settings.fields import build_settings, check_options, field_docs
from nncift.settings.flags import add_arguments, add_removed_flags
from nncift.settings.given_once import StoreOnce, refuse_repeated
from nncift.settings.sources import read_sources
from nncift.settings.stages import SelectSettings

USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
"""Errors a user causes, reported as one line with exit code 2: nncift's own (:class:`~nncift.files.errors.UserError`:
bad flags, settings, data, models, run folders, a missing extra) and the OS errors of a path the user gave. A full or
read-only disk and memory run out are reported so too; any other exception is a bug (:func:`main`)."""

_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
"""OS errors of the machine, not of nncift: no space left, quota exceeded, read-only file system."""


def _influence_settings_classes() -> dict[str, type]:
    """Settings dataclass of each registered influence function by name (their fields are namespaced flags; light modules, no torch)."""
    from nncift.influence import SETTINGS, settings_class

    return {name: settings_class(name) for name in SETTINGS}


def add_run_arguments(parser: argparse.ArgumentParser, settings_class: type[SelectSettings]) -> None:
    """The flags of a run: ``--out``, ``--config``, one per field of ``settings_class`` and of each influence function's
    settings (``--delift.max-length``), and the removed flags of earlier versions (refused, naming their spelling now)."""
    parser.add_argument("--out", required=True, action=StoreOnce, help="run folder")
    parser.add_argument("--config", action=StoreOnce, help="YAML file with settings (flags override it)")
    parser.add_argument("--model", dest="model", action="append", default=None,
                        help=f"{field_docs(settings_class)['model']} Repeat the flag to rate with several models "  # type: ignore[arg-type]
                             f"(selectit's model-level reflection). (default: {settings_class.model!r})")
    add_arguments(parser, settings_class)
    functions = _influence_settings_classes()
    for name, klass in functions.items():
        group = parser.add_argument_group(f"{name} options (apply with --influence {name}; in YAML under '{name}:')")
        add_arguments(group, klass, prefix=name)  # type: ignore[arg-type]
    add_removed_flags(parser, settings_class, functions)


_OPTIONS_HINT = " (an influence function's options go under its name, e.g. 'delift:' with 'token_budget: 1024' below it)"


def split_settings(args: argparse.Namespace, settings_class: type) -> tuple[Any, dict[str, Any]]:
    """(run settings, influence options): dataclass defaults, then the YAML file, then flags (:func:`nncift.settings.sources.read_sources`).

    Everything is checked here, before any file is written: a bad value is reported with the YAML file
    it came from (``c.yaml: selection.budget: expected a number, got 'lots'``) or its flag.
    """
    from nncift.influence import influence_class

    sources = read_sources(settings_class, args, sections=_influence_settings_classes(), hint=_OPTIONS_HINT)
    values, origins = sources.values, sources.origins
    models = values.get("model")
    if isinstance(models, (list, tuple)):  # --model given once or more (or a YAML list)
        values["model"] = str(models[0])
    settings = build_settings(settings_class, values, origins=origins)
    for name, given in sources.sections.items():
        if name != settings.influence:
            where = ", ".join(origins.get(key, key) for key in given)
            raise InputError(f"{where}: {name}'s options apply with --influence {name}, not with --influence {settings.influence}")
    options = dict(sources.sections.get(settings.influence, {}))
    if isinstance(models, (list, tuple)) and len(models) > 1:
        _add_model_list(settings, options, [str(m) for m in models])
    try:
        function_settings = influence_class(settings.influence).Settings
    except ModuleNotFoundError as error:
        raise InputError(f"influence function {settings.influence} is not available in this build ({error.name} is missing)") from None
    check_options(function_settings, options, origins)
    return settings, options


def _add_model_list(settings: Any, options: dict[str, Any], models: list[str]) -> None:
    """A repeated --model becomes the influence function's ``models`` option (only those that have one)."""
    from nncift.influence import settings_class

    if "models" not in {f.name for f in dataclasses.fields(settings_class(settings.influence))}:
        raise InputError(f"--model given {len(models)} times, but {settings.influence} rates with one model "
                         "(several models: selectit)")
    if options.get("models"):
        raise InputError("give the rating models either as a repeated --model or as --selectit.models, not both")
    options["models"] = models


def cmd_select(args: argparse.Namespace) -> int:
    """nncift select: choose a subset with NN-CIFT (or, with --run and --add, grow a finished run's subset)."""
    from nncift.steps.preflight import check_select
    from nncift.steps.select import run_select

    if args.run or args.add:
        from nncift.cli.run_commands import cmd_add

        return cmd_add(args)
    settings, options = split_settings(args, SelectSettings)
    check_select(settings, options, out=args.out, force=args.force)  # before anything is written
    result = run_select(settings, args.out, influence_options=options)
    _print_summary(result)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """nncift demo: the main job on the built-in data set and the bundled models."""
    from nncift.data.demo import demo_records
    from nncift.data.records import write_jsonl
    from nncift.steps.select import run_select

    records = demo_records(seed=args.seed)
    out = Path(args.out)
    settings = SelectSettings(data=(str(out / "demo_pool.jsonl"),), influence=args.influence, seed=args.seed, quiet=args.quiet)
    make_run_folder(out)  # after the settings are checked
    write_jsonl(out / "demo_pool.jsonl", [r.raw for r in records])
    print(f"nncift demo: {len(records)} built-in records in 8 task families -> {out / 'demo_pool.jsonl'}")
    result = run_select(settings, out / "run")
    _print_summary(result)
    return 0


def cmd_prepare_models(args: argparse.Namespace) -> int:
    """nncift prepare-models: convert the bundled GGUF model once to a cached safetensors folder."""
    from nncift.models.loading import bundled_embedder_path, bundled_lm_path

    print(f"causal LM: {bundled_lm_path()}")
    print(f"embedder:  {bundled_embedder_path()}")
    return 0


def _print_summary(result: Any) -> None:
    manifest = result.manifest
    cost = manifest["cost"]
    counts = manifest["counts"]
    print(f"\npool {counts['pool']} records, targets {counts['targets']}, skipped {counts['skipped'] or 'none'}")
    print(f"influence '{manifest['settings']['influence']}' computed on {cost['influence_evaluations_made']:,} of "
          f"{cost['influence_evaluations_full_matrix']:,} entries ({100 * (cost['share_of_full_matrix'] or 0):.2f}%)")
    for stage, seconds in cost["seconds_by_stage"].items():
        print(f"  {stage:<32s}{seconds:9.2f} s")
    training = manifest.get("network_training")
    if training and "architecture" in training:
        from nncift.run.report import describe_training

        print(describe_training(training))
    reading = manifest.get("network_input")
    if reading:
        weight = f" (response weight {reading['response_weight']:g})" if reading["network_input"] == "text+response" else ""
        print(f"  the network read each record's {reading['network_input']}{weight} (--network.input {manifest['settings']['network']['input']})")
    print(f"selected {counts['selected']} records with {manifest['objective']} (objective {result.objective:.4f})")
    if manifest.get("selection_mode") == "sparse":
        from nncift.steps.select_sparse import describe_mode

        print(f"  {describe_mode(manifest)}")
    positive = manifest.get("positive_gain_picks")
    if positive is not None:
        rest = counts["selected"] - positive
        print(f"  {positive} picks with a positive gain" + (f"; the objective ran out of signal, so the other {rest} were filled "
                                                           f"by singleton value (highest f({{j}}) first)" if rest else ""))
    added = manifest.get("task_floor_added")
    if added:
        share = manifest["settings"]["selection"]["task_share"]
        print(f"  {added} picks are a target task's own best that the plain maximum over tasks would have left out "
              f"(--selection.task-share {share:g}; 0 for LESS's plain maximum)")
    tasks = Counter(record.task for record in result.records)
    if len(tasks) > 1:
        print("by task: " + ", ".join(f"{task} {count}" for task, count in tasks.most_common()))
    print(f"-> {result.run_dir / 'subset.jsonl'} (the chosen records as read), scores.csv, selected.jsonl and manifest.json")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="nncift", description="NN-CIFT data valuation and selection for instruction tuning")
    parser.add_argument("--version", action="version", version=f"nncift {package_version()}", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True)
    select = commands.add_parser("select", help="select a fine-tuning subset with NN-CIFT")
    add_run_arguments(select, SelectSettings)
    select.add_argument("--force", action="store_true", help="write into --out even when it is a non-empty folder that is not an nncift run")
    grow = select.add_argument_group("growing a finished run (no influence function, no language model)")
    grow.add_argument("--run", action=StoreOnce, help="a finished select run folder whose subset --add grows (its settings are used)")
    grow.add_argument("--add", action="append", help="new records to add to --run's pool (repeatable; not split at commas)")
    select.set_defaults(handler=cmd_select)
    demo = commands.add_parser("demo", help="run the main job on the built-in data set")
    demo.add_argument("--out", default="runs/demo", help="run folder")
    demo.add_argument("--influence", default=SelectSettings.influence, help=f"influence function (default: {SelectSettings.influence})")
    demo.add_argument("--seed", type=int, default=0, help="seed of the built-in data, the sampling and the network (default: 0)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(handler=cmd_demo)
    prepare = commands.add_parser("prepare-models", help="convert the bundled models for offline use")
    prepare.set_defaults(handler=cmd_prepare_models)
    for register in _extra_commands():
        register(commands)
    return parser


COMMANDS_GROUP = "nncift.commands"
"""Entry-point group through which other packages add subcommands (a ``register_cli(subparsers)`` function each):
the research commands (``experiment``, ``sweep``, ``fidelity``) come from the research package this way, so the
library never imports research code."""


def _extra_commands() -> list[Callable[[Any], None]]:
    """Subcommands of the library's later stages (score, inspect, fine-tuning, evaluation), then those registered
    by installed packages under :data:`COMMANDS_GROUP`."""
    from importlib.metadata import entry_points

    from nncift.cli.run_commands import register_inspect, register_score
    from nncift.downstream import evaluation, finetune

    registrations: list[Callable[[Any], None]] = [register_score, register_inspect, finetune.register_cli, evaluation.register_cli]
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda entry: entry.name):
        registrations.append(entry.load())
    return registrations


def package_version() -> str:
    """The installed package's version (the source tree's when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nncift")
    except PackageNotFoundError:
        return "0+unknown"


def _interrupted_while_starting(signum: int, frame: Any) -> None:
    """Ctrl-C before the command started (parsing, imports): nothing to clean up; leave at once, in one line."""
    print("nncift: interrupted before the command started; nothing was written", file=sys.stderr)
    os._exit(130)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``nncift`` command."""
    previous = _on_sigint(_interrupted_while_starting)  # first: a Ctrl-C while the parser is built is clean too
    try:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        args = build_parser().parse_args(argv)
        if getattr(args, "quiet", False):
            from nncift.models.loading import quiet_libraries

            quiet_libraries()
        _on_sigint(signal.default_int_handler)  # from here: KeyboardInterrupt, so that locks are released
        refuse_repeated(args)
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("nncift: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as error:  # the one place that tells the user's errors (exit 2) from bugs (exit 1)
        if not is_user_error(error):
            traceback.print_exc()
            print(f"nncift: this is a bug in nncift {package_version()}; please report it with the command and the traceback above",
                  file=sys.stderr)
            return 1
        if os.environ.get("NNCIFT_DEBUG"):
            raise
        print(f"nncift: error: {one_line(error)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            _on_sigint(previous)


def is_user_error(error: BaseException) -> bool:
    """Whether ``error`` is the user's to fix (:data:`USER_ERRORS`, a full or read-only disk, memory run out), not a bug."""
    if isinstance(error, USER_ERRORS) or _out_of_memory(error):
        return True
    return isinstance(error, OSError) and error.errno in _DISK_ERRNOS


def _out_of_memory(error: BaseException) -> bool:
    """Python's MemoryError or torch's OutOfMemoryError (CUDA or CPU; named, so that torch is not imported here)."""
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"


def one_line(error: BaseException) -> str:
    """The message of a user error on one line (a library's message may span several), or its type where it has none."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if _out_of_memory(error):
        return f"out of memory ({type(error).__name__}{': ' + text if text else ''}): use a smaller pool, budget or block size, or a larger machine"
    return text or type(error).__name__


def _on_sigint(handler: Any) -> Any:
    """Install a Ctrl-C handler; the previous one (None where signals cannot be set: not the main thread)."""
    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:
        return None
