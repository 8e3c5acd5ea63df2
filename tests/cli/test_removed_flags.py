"""Flags and YAML keys of earlier versions are refused with one line naming their spelling now (exit 2, nothing
written); the short flags listed in --help are the same flags as their dotted ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from nncift.cli.commands import build_parser, main, split_settings
from nncift.settings.stages import SelectSettings

REMOVED = [
    (["--max-length", "512"], "--max-length was removed; use --delift.max-length / --less.max-length / --selectit.max-length"),
    (["--compressor", "identity"], "--compressor was removed; use --less.compressor"),
    (["--token-budget", "99"], "--token-budget was removed; use --delift.token-budget / --selectit.token-budget"),
    (["--sampling-blocks", "3"], "--sampling-blocks was removed; use --sampling.blocks"),
    (["--ray-address", "auto"], "--ray-address was removed; use --executor.address"),
    (["--max-steps", "20"], "--max-steps was removed; use --network.max-steps"),
    (["--min-sampled=4"], "--min-sampled was removed; use --sampling.min-sampled"),
    (["--no-fallback"], "--no-fallback was removed; use --no-network.fallback"),
    (["--no-prefix-reuse"], "--no-prefix-reuse was removed; use --no-delift.prefix-reuse"),
]


@pytest.mark.parametrize(("command", "flags", "message"), [("select", *case) for case in REMOVED] + [("fidelity", *REMOVED[0])],
                         ids=[f"{c} {case[0][0]}" for c, case in [("select", r) for r in REMOVED] + [("fidelity", REMOVED[0])]])
def test_a_removed_flag_names_its_spelling_now(tmp_path: Path, capsys, command: str, flags: list[str], message: str) -> None:
    out = tmp_path / "run"
    assert main([command, "--data", str(tmp_path / "pool.jsonl"), "--out", str(out), *flags]) == 2
    error = capsys.readouterr().err
    assert error == f"nncift: error: {message}\n"
    assert not out.exists()


def test_removed_flags_are_not_listed_in_help() -> None:
    help_text = build_parser()._subparsers._group_actions[0].choices["select"].format_help()  # noqa: SLF001
    for flag in ("--max-length", "--compressor", "--sampling-blocks", "--ray-address", "--max-steps", "--min-sampled"):
        assert f"  {flag} " not in help_text and f" {flag}," not in help_text, flag
    assert "--delift.max-length MAX_LENGTH" in help_text and "--network.max-steps MAX_STEPS" in help_text


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("budget: 5\n", "c.yaml: budget was removed; use selection.budget"),
    ("sampling_blocks: 2\n", "c.yaml: sampling_blocks was removed; use sampling.blocks"),
    ("max-steps: 20\n", "c.yaml: max_steps was removed; use network.max_steps"),
])
def test_a_removed_yaml_key_names_its_spelling_now(tmp_path: Path, capsys, yaml_text: str, message: str) -> None:
    config, out = tmp_path / "c.yaml", tmp_path / "run"
    config.write_text(yaml_text)
    assert main(["select", "--config", str(config), "--data", "pool.jsonl", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("nncift: error: ") and error.rstrip().endswith(message) and len(error.splitlines()) == 1, error
    assert not out.exists()


def test_the_short_flags_are_their_dotted_flags() -> None:
    parser = build_parser()
    short = ["--budget", "5", "--fraction", "0.5", "--objective", "topk", "--architecture", "paper", "--executor", "ray",
             "--workers", "3", "--block-size", "8"]
    settings, _ = split_settings(parser.parse_args(["select", "--out", "x", "--data", "d.jsonl", *short]), SelectSettings)
    dotted = ["--selection.budget", "5", "--sampling.fraction", "0.5", "--selection.objective", "topk", "--network.architecture", "paper",
              "--executor.name", "ray", "--executor.workers", "3", "--executor.block-size", "8"]
    assert settings == split_settings(parser.parse_args(["select", "--out", "x", "--data", "d.jsonl", *dotted]), SelectSettings)[0]
    assert (settings.selection.budget, settings.sampling.fraction, settings.executor.name, settings.executor.block_size) == (5, 0.5, "ray", 8)
    help_text = " ".join(parser._subparsers._group_actions[0].choices["select"].format_help().split())  # noqa: SLF001
    for long, flag in (("selection.budget", "budget"), ("sampling.fraction", "fraction"), ("selection.objective", "objective"),
                       ("network.architecture", "architecture"), ("executor.name", "executor"), ("executor.workers", "workers"),
                       ("executor.block-size", "block-size")):
        metavar = long.rpartition(".")[2].replace("-", "_").upper()
        assert f"--{long} {metavar}, --{flag} {metavar}" in help_text, flag


def test_a_short_flag_and_its_dotted_flag_together_are_refused(tmp_path: Path, capsys) -> None:
    assert main(["select", "--data", "d.jsonl", "--out", str(tmp_path / "run"), "--budget", "3", "--selection.budget", "4"]) == 2
    assert "--budget and --selection.budget (one setting) are given twice (3.0 and 4.0): give it once" in capsys.readouterr().err


def test_an_error_names_the_flag_as_typed(tmp_path: Path, capsys) -> None:
    assert main(["select", "--data", "d.jsonl", "--out", str(tmp_path / "run"), "--budget", "0"]) == 2
    assert capsys.readouterr().err.startswith("nncift: error: --budget: expected a fraction in (0, 1]")
    assert main(["select", "--data", "d.jsonl", "--out", str(tmp_path / "run"), "--selection.budget", "0"]) == 2
    assert capsys.readouterr().err.startswith("nncift: error: --selection.budget: expected a fraction in (0, 1]")
