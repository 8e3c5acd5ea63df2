"""Every example of README.md (and docs/*.md) still matches the code.

- every ``nncift`` command line of a ```bash block parses with the real parser and its settings are built the way
  the command builds them (so a removed or renamed flag or setting fails here), without running anything;
- every ```yaml config block is loaded through the settings of the command its section documents;
- every ```python block runs for real (e2e: it loads the sentence embedder) in a temporary folder, on small files
  of the built-in demo records written under the names it reads;
- every ``nncift.x.y`` name the text points readers to exists.

A line or block that cannot be checked this way is listed below with the reason; the tests assert the lists match
what the documents hold, so a new unchecked example has to be listed on purpose.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import shlex
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from nncift.cli.commands import build_parser, split_settings
from nncift.settings.fields import RemovedSetting
from nncift.settings.sources import settings_from_args
from nncift.settings.stages import SelectSettings

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]

NOT_NNCIFT = {
    "make demo": "builds the virtualenv and runs the demo: the set-up itself",
    "make test": "runs the whole test suite",
    "OMP_NUM_THREADS=2 .venv/bin/python bench/bench_sizes.py delift-se-alpaca less-p3 --output bench/results/network_sizes.md":
        "a benchmark on stored real matrices (minutes)",
    "pip install 'nncift[ray]'": "installs from the package index",
    "ray start --head": "starts a Ray cluster",
    "ray start --address HEAD_IP:6379": "joins a Ray cluster",
}
"""Shell lines of the documents that are not ``nncift`` commands, so are not checked, with the reason."""

PYTHON_NOT_RUN: dict[str, str] = {}
"""Python blocks that cannot run here (a GPU, a Ray cluster address, the hub), by their first line, with the reason."""

YAML_COMMAND = {"Selecting a subset": "select"}
"""The command whose settings a YAML block of each README section configures."""

PREFIXES = (".venv/bin/nncift", "nncift")


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, the section heading above it, its text."""

    document: Path
    line: int
    language: str
    section: str
    text: str

    def where(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def fenced_blocks(document: Path) -> list[Block]:
    """The ```LANG blocks of a Markdown file, in order."""
    blocks: list[Block] = []
    section, language, start = "", None, 0
    body: list[str] = []
    for number, line in enumerate(document.read_text(encoding="utf-8").splitlines(), start=1):
        if language is None and line.startswith("#"):
            section = line.lstrip("#").strip()
        elif language is None and line.startswith("```"):
            language, start, body = line[3:].strip(), number, []
        elif language is not None and line.startswith("```"):
            blocks.append(Block(document, start, language, section, "\n".join(body) + "\n"))
            language = None
        elif language is not None:
            body.append(line)
    return blocks


def shell_lines(block: Block) -> list[str]:
    """The block's command lines: continuations joined, comments dropped, ``NAME=value`` lines expanded where used."""
    variables: dict[str, str] = {}
    lines = []
    for line in block.text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if len(words) == 1 and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S+", words[0]):
            name, _, value = words[0].partition("=")
            variables[name] = value
            continue
        lines.append(shlex.join(re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], word) for word in words))
    return lines


def all_shell_lines() -> list[tuple[str, str]]:
    return [(block.where(), line) for document in DOCUMENTS for block in fenced_blocks(document)
            if block.language == "bash" for line in shell_lines(block)]


def nncift_arguments(line: str) -> list[str] | None:
    """The arguments after ``nncift`` / ``.venv/bin/nncift``, or None for any other command."""
    words = shlex.split(line)
    return words[1:] if words[0] in PREFIXES else None


def _named(module: str, name: str) -> Any:
    """``module.name``, imported when a line needs it (the research commands' settings live in nncift_research)."""
    return getattr(importlib.import_module(module), name)


def _select(args: argparse.Namespace) -> object:
    if args.run or args.add:  # growing a run: its own settings are used (only --budget may be given), nothing to build
        return None
    return split_settings(args, SelectSettings)


SETTINGS_BUILDERS: dict[str, Callable[[argparse.Namespace], object]] = {
    "select": _select,
    "sweep": lambda args: split_settings(args, _named("nncift_research.sweep_plan", "SweepSettings")),
    "fidelity": lambda args: split_settings(args, _named("nncift_research.fidelity_settings", "FidelitySettings")),
    "finetune": lambda args: settings_from_args(_named("nncift.downstream.finetune", "FinetuneSettings"), args),
    "evaluate": lambda args: settings_from_args(_named("nncift.downstream.evaluation", "EvaluateSettings"), args),
    "experiment": lambda args: _named("nncift_research.experiment", "load_experiment_config")(ROOT / args.config),
}
"""How each command builds its settings from the parsed flags (and its ``--config``), as the command itself does."""

NO_SETTINGS = {"score", "inspect", "demo", "prepare-models"}
"""Commands that take no settings: their lines are only parsed."""


def build_settings(arguments: list[str]) -> object:
    """Parse ``nncift ARGUMENTS`` with the real parser and build the settings as the command would (nothing runs)."""
    args = build_parser().parse_args(arguments)
    assert args.command in SETTINGS_BUILDERS or args.command in NO_SETTINGS, f"nncift {args.command}: no settings builder listed here"
    return SETTINGS_BUILDERS[args.command](args) if args.command in SETTINGS_BUILDERS else None


COMMAND_LINES = [(where, line) for where, line in all_shell_lines() if nncift_arguments(line) is not None]


def test_the_documents_have_examples_and_every_other_shell_line_is_listed() -> None:
    others = {line for _, line in all_shell_lines() if nncift_arguments(line) is None}
    assert others == set(NOT_NNCIFT)
    assert len(COMMAND_LINES) >= 15
    assert {"select", "score", "inspect", "finetune", "evaluate", "experiment", "sweep", "fidelity"} <= {
        nncift_arguments(line)[0] for _, line in COMMAND_LINES}  # type: ignore[index]


@pytest.mark.parametrize(("where", "line"), COMMAND_LINES, ids=[where for where, _ in COMMAND_LINES])
def test_a_command_line_parses_and_its_settings_build(where: str, line: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        build_settings(nncift_arguments(line))  # type: ignore[arg-type]
    except SystemExit as error:  # argparse's error: the message is on stderr
        pytest.fail(f"{where}: `{line}` does not parse: {capsys.readouterr().err.strip()} (exit {error.code})")


def test_a_removed_flag_in_a_command_line_would_fail() -> None:
    with pytest.raises(RemovedSetting, match="use --executor.address"):
        build_settings(["select", "--data", "pool.jsonl", "--out", "runs/x", "--ray-address", "auto"])
    with pytest.raises(ValueError, match="budget"):
        build_settings(["select", "--data", "pool.jsonl", "--out", "runs/x", "--budget", "0"])


YAML_BLOCKS = [block for document in DOCUMENTS for block in fenced_blocks(document) if block.language == "yaml"]


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=[block.where() for block in YAML_BLOCKS])
def test_a_yaml_config_block_loads_through_its_commands_settings(block: Block, tmp_path: Path) -> None:
    assert block.section in YAML_COMMAND, f"{block.where()}: a YAML block in section {block.section!r}: name its command in YAML_COMMAND"
    config = tmp_path / "config.yaml"
    config.write_text(block.text, encoding="utf-8")
    built_pair = build_settings([YAML_COMMAND[block.section], "--config", str(config), "--out", str(tmp_path / "run")])
    assert isinstance(built_pair, tuple)
    settings, options = built_pair
    given = _flatten(yaml.safe_load(block.text))
    built = {**_flatten(json.loads(json.dumps(dataclasses.asdict(settings)))), **{f"{settings.influence}.{k}": v for k, v in options.items()}}
    different = {key: (value, built.get(key)) for key, value in given.items() if built.get(key) != value}
    assert not different, f"{block.where()}: these YAML values did not reach the settings (given, built): {different}"


def test_a_yaml_block_with_a_removed_key_would_fail(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("budget: 0.3\n", encoding="utf-8")
    with pytest.raises(ValueError, match="selection"):
        build_settings(["select", "--config", str(config), "--out", str(tmp_path / "run")])


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = list(value) if isinstance(value, (list, tuple)) else value
    return flat


DOTTED = re.compile(r"`(nncift(?:_research)?(?:\.[A-Za-z_]\w*)+)")


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for name in parts[split:]:
            found = getattr(found, name)
        return found
    raise ModuleNotFoundError(dotted)


def test_every_nncift_name_the_documents_point_to_exists() -> None:
    names = sorted({name for document in DOCUMENTS for name in DOTTED.findall(document.read_text(encoding="utf-8"))})
    assert len(names) >= 10
    missing = []
    for name in names:
        try:
            _resolve(name)
        except (ImportError, AttributeError) as error:
            missing.append(f"{name} ({error})")
    assert not missing, f"the documents name what does not exist: {missing}"


OTHER_FLAGS = {"--dry-run": "bench/gpu_check.sh's", "--output": "bench/bench_sizes.py's", "--head": "ray start's",
               "--address": "ray start's"}
"""Flags the documents name that belong to other programs than nncift."""

REMOVED_FLAGS = {"--compressor", "--ray-address", "--sampling-blocks"}
"""Flags the README names as removed (each must be refused, naming its spelling now)."""

FLAG = re.compile(r"(?<![\w-])--[a-z][\w.-]*\w")


def _parser_flags() -> tuple[set[str], set[str]]:
    """(flags of every nncift command, flags of every command that are refused as removed)."""
    flags: set[str] = set()
    removed: set[str] = set()

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            (removed if type(action).__name__ == "_Removed" else flags).update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for command in action.choices.values():
                    walk(command)

    walk(build_parser())
    return flags, removed


def test_every_flag_the_documents_name_exists() -> None:
    flags, removed = _parser_flags()
    named = {flag for document in DOCUMENTS for flag in FLAG.findall(document.read_text(encoding="utf-8"))}
    namespaces = {flag.rpartition(".")[0] for flag in flags if "." in flag}  # `--delift.…`: a function's options
    unknown = sorted(named - flags - removed - namespaces - set(OTHER_FLAGS))
    assert not unknown, f"the documents name flags no nncift command has: {unknown}"
    assert (named & removed) - flags - set(OTHER_FLAGS) == REMOVED_FLAGS, "a removed flag named as if it were current, or REMOVED_FLAGS is stale"
    assert set(OTHER_FLAGS) <= named


PYTHON_BLOCKS = [block for document in DOCUMENTS for block in fenced_blocks(document) if block.language == "python"]


def test_every_python_block_is_run_or_listed() -> None:
    assert PYTHON_BLOCKS, "README.md has a From Python example"
    firsts = {block.text.splitlines()[0] for block in PYTHON_BLOCKS}
    assert set(PYTHON_NOT_RUN) <= firsts, f"listed as not run but not found: {set(PYTHON_NOT_RUN) - firsts}"


def _write_demo_files(folder: Path) -> None:
    """The files the examples read: a small pool (JSON and JSONL), targets and new records, from the demo records."""
    from nncift.data.demo import demo_records

    records = [record.raw for record in demo_records(n=72, seed=3)]
    (folder / "pool.json").write_text(json.dumps(records[:48]), encoding="utf-8")
    for name, part in (("pool.jsonl", records[:48]), ("targets.jsonl", records[48:60]), ("new.jsonl", records[60:])):
        (folder / name).write_text("".join(json.dumps(record) + "\n" for record in part), encoding="utf-8")


@pytest.mark.e2e
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[block.where() for block in PYTHON_BLOCKS])
def test_a_python_block_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = block.text.splitlines()[0]
    if first in PYTHON_NOT_RUN:
        pytest.skip(f"{block.where()}: {PYTHON_NOT_RUN[first]}")
    monkeypatch.chdir(tmp_path)
    _write_demo_files(tmp_path)
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(compile(block.text, block.where(), "exec"), namespace)  # noqa: S102 - the README's own example
    assert len(namespace["result"].indices) == int(0.3 * 48)
    _check_outputs_as_documented(tmp_path / "runs")


def _check_outputs_as_documented(runs: Path) -> None:
    """The files, columns and manifest keys the README describes are what the Python example wrote."""
    text = README.read_text(encoding="utf-8")
    listed = text[text.index("A run folder holds:"):text.index("The terminal and the manifest")]
    files = set(re.findall(r"`([\w.]+\.(?:jsonl|json|csv|npy|safetensors))`", listed))
    assert {"subset.jsonl", "scores.csv", "commit.json", "q1.rows.npy", "network.safetensors"} <= files
    for run in ("x", "x2"):
        assert files <= {path.name for path in (runs / run).iterdir()}, f"runs/{run} lacks files the README lists"
    columns = re.search(r"`scores.csv`: one row per pool record: `([^`]+)`", text)
    assert columns is not None
    with open(runs / "x" / "scores.csv", encoding="utf-8") as handle:
        assert handle.readline().strip().split(",") == re.split(r",\s*", columns.group(1))
    assert set(json.loads((runs / "x" / "selected.jsonl").read_text(encoding="utf-8").splitlines()[0])) == {"index", "score", "record"}
    assert {"scores.jsonl", "scores.csv", "manifest.json"} <= {path.name for path in (runs / "x-new").iterdir()}
    first_keys = ["command", "settings", "environment", "models", "inputs", "counts", "cost"]
    for folder in ("x", "x2", "x-new"):
        assert list(json.loads((runs / folder / "manifest.json").read_text(encoding="utf-8")))[:7] == first_keys
