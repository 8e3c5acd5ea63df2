"""Every bad input is refused before anything is computed or written: exit code 2, a one-line message
naming the YAML file and key (or the flag), and no --out folder left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nncift.cli.commands import build_parser, main
from nncift.data.records import write_jsonl
from nncift.selection import budget_to_count
from nncift.settings.fields import SettingsError, normalise_budget
from nncift.settings.sources import load_yaml
from nncift.settings.stages import SelectSettings

FAST = ["--influence", "delift-se", "--quiet"]


@pytest.fixture()
def pool_file(tmp_path: Path, demo_pool) -> Path:
    path = tmp_path / "pool.jsonl"
    write_jsonl(path, [r.raw for r in demo_pool[:24]])
    return path


# ------------------------------------------------------------------------------- the budget rule


@pytest.mark.parametrize(("budget", "normal"), [
    (0.3, 0.3), (1, 1.0), (1.0, 1.0), (2, 2), (50, 50), (50.0, 50), (1e-3, 1e-3),
])
def test_one_budget_rule(budget, normal) -> None:
    assert normalise_budget(budget) == normal and type(normalise_budget(budget)) is type(normal)
    settings = SelectSettings.build(selection={"budget": budget})
    assert settings.selection.budget == normal and type(settings.selection.budget) is type(normal)
    assert budget_to_count(settings.selection.budget, 100) == budget_to_count(budget if budget != 1 else 1.0, 100)


@pytest.mark.parametrize("budget", [0, 0.0, -1, -0.5, 1.5, 50.5, float("nan"), float("inf"), True, "5", None])
def test_bad_budgets_are_refused_when_settings_are_built(budget) -> None:
    with pytest.raises(SettingsError, match="^selection.budget: expected"):
        SelectSettings.build(selection={"budget": budget})


def test_budget_to_count_keeps_fractions_and_counts() -> None:
    assert budget_to_count(0.3, 10) == 3 and budget_to_count(5, 10) == 5 and budget_to_count(5.0, 10) == 5
    assert budget_to_count(1.0, 7) == 7 and budget_to_count(1, 7) == 1  # an int from code is an exact count


def test_the_rule_is_the_help_text() -> None:
    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["select"].format_help().split())  # noqa: SLF001
    assert "a whole number of records above 1" in help_text and "such as 1.5 are errors" in help_text


def test_yaml_reads_exponents_as_numbers(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("learning-rate: 1e-4\nfraction: 5E-2\nseed: '7'\n")
    assert load_yaml(path) == {"learning_rate": 1e-4, "fraction": 5e-2, "seed": "7"}


# ------------------------------------------------------------------------------- the command line

FLAG_CASES = [
    (["--budget", "0"], "--budget: expected a fraction in (0, 1] or a whole number of records above 1"),
    (["--budget", "1.5"], "got 1.5"),
    (["--budget", "-3"], "--budget: expected a fraction"),
    (["--budget", "500"], "budget count 500 exceeds the number of candidates (24)"),
    (["--fraction", "0"], "--fraction: expected a fraction in (0, 1], got 0.0"),
    (["--fraction", "1.5"], "--fraction: expected a fraction in (0, 1]"),
    (["--sampling.min-sampled", "0"], "--sampling.min-sampled: expected a value ≥ 1, got 0"),
    (["--network.epochs", "-1"], "--network.epochs: expected a value ≥ 0"),
    (["--network.batch-size", "0"], "--network.batch-size: expected a value ≥ 1"),
    (["--network.max-steps", "-1"], "--network.max-steps: expected a value ≥ 0"),
    (["--network.folds", "0"], "--network.folds: expected a value ≥ 3, got 0 (the validation that chooses the predictor needs at least 3 folds)"),
    (["--block-size", "0"], "--block-size: expected a value ≥ 1"),
    (["--workers", "0"], "--workers: expected a value ≥ 1"),
    (["--seed", "-1"], "--seed: expected a value ≥ 0"),
    (["--network.hidden-sizes", "32,0"], "--network.hidden-sizes: expected a value ≥ 1, got 0"),
    (["--device", "gpu"], "--device: expected one of 'auto', 'cpu', 'cuda'"),
    (["--executor", "spark"], "--executor: expected one of 'local', 'ray', got 'spark'"),
    (["--architecture", "mlp"], "--architecture: expected one of 'two-tower', 'paper'"),
    (["--objective", "best"], "--objective: expected one of '', 'fl', 'flmi', 'flcg', 'topk'"),
    (["--influence", "nope"], "unknown influence function 'nope'; choose from: delift, delift-se"),
    (["--objective", "flmi"], "objective flmi needs --targets"),
    (["--influence", "selectit", "--selectit.token-budget", "0"], "--selectit.token-budget: expected a value ≥ 1, got 0"),
    (["--selection.budget", "0"], "--selection.budget: expected a fraction in (0, 1]"),
    (["--sampling.blocks", "-1"], "--sampling.blocks: expected a value ≥ 0"),
    (["--network.tower-rank", "0"], "--network.tower-rank: expected a value ≥ 1, got 0"),
    (["--executor.name", "spark"], "--executor.name: expected one of 'local', 'ray', got 'spark'"),
    (["--budget", "3", "--selection.budget", "4"], "--budget and --selection.budget (one setting) are given twice (3.0 and 4.0)"),
]

YAML_CASES = [
    ({"selection": {"budget": "lots"}}, "c.yaml: selection.budget: expected a number, got 'lots'"),
    ({"budget": 0}, "c.yaml: budget was removed; use selection.budget"),
    ({"seed": "abc"}, "c.yaml: seed: expected an integer, got 'abc'"),
    ({"sampling": {"fraction": [0.1, 0.2]}}, "c.yaml: sampling.fraction: expected a number, got [0.1, 0.2]"),
    ({"network": {"epochs": "5"}}, "c.yaml: network.epochs: expected an integer, got '5'"),
    ({"network": {"epochs": 2.5}}, "c.yaml: network.epochs: expected an integer, got 2.5"),
    ({"network": {"fallback": "loud"}}, "c.yaml: network.fallback: expected true or false, got 'loud'"),
    ({"network": {"hidden-sizes": [32, "x"]}}, "c.yaml: network.hidden_sizes: expected a list of integers, got (32, 'x')"),
    ({"device": "tpu"}, "c.yaml: device: expected one of 'auto', 'cpu', 'cuda' (or 'cuda:N'), got 'tpu'"),
    ({"no-such-setting": 1}, "c.yaml: unknown settings: no_such_setting"),
    ({"selection": {"budget": 0}}, "c.yaml: selection.budget: expected a fraction in (0, 1]"),
    ({"network": {"tower-rank": 0}}, "c.yaml: network.tower_rank: expected a value ≥ 1, got 0"),
    ({"selection": {"budgt": 3}}, "c.yaml: unknown settings for SelectSettings: selection.budgt"),
    ({"hidden_sizes": [3]}, "c.yaml: hidden_sizes was removed; use network.hidden_sizes"),
    ({"network": {"seed": 3}}, "network.seed is the run's seed: set seed instead"),
    ({"executor": {"name": "spark"}}, "c.yaml: executor.name: expected one of 'local', 'ray', got 'spark'"),
    ({"influence": "selectit", "selectit": {"token-budget": "lots"}}, "c.yaml (selectit:): token_budget: expected an integer, got 'lots'"),
]


def _refused(capsys, argv: list[str], fragment: str, out: Path) -> None:
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("nncift: error: ") and fragment in error, error
    assert "Traceback" not in error and len(error.strip().splitlines()) == 1
    assert not out.exists(), f"{out} was written although the settings were refused"


@pytest.mark.parametrize(("flags", "fragment"), FLAG_CASES, ids=[" ".join(case[0]) for case in FLAG_CASES])
def test_bad_flags_exit_2_before_anything_is_written(tmp_path: Path, pool_file: Path, capsys, flags, fragment) -> None:
    out = tmp_path / "run"
    fast = FAST[2:] if "--influence" in flags else FAST  # a flag given twice is refused
    _refused(capsys, ["select", "--data", str(pool_file), *fast, *flags, "--out", str(out)], fragment, out)


@pytest.mark.parametrize(("values", "fragment"), YAML_CASES, ids=[next(iter(case[0])) for case in YAML_CASES])
def test_bad_yaml_values_name_the_file_and_key(tmp_path: Path, pool_file: Path, capsys, values, fragment) -> None:
    config, out = tmp_path / "c.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump({"data": [str(pool_file)], "influence": "delift-se", **values}))
    _refused(capsys, ["select", "--config", str(config), "--quiet", "--out", str(out)], fragment, out)


def test_flags_override_yaml_and_name_the_flag(tmp_path: Path, pool_file: Path, capsys) -> None:
    config, out = tmp_path / "c.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump({"data": [str(pool_file)], "selection": {"budget": 0.5}}))
    _refused(capsys, ["select", "--config", str(config), *FAST, "--budget", "0", "--out", str(out)], "--budget: expected", out)


def test_fidelity_fractions_are_checked(tmp_path: Path, pool_file: Path, capsys) -> None:
    out = tmp_path / "run"
    _refused(capsys, ["fidelity", "--data", str(pool_file), *FAST, "--fractions", "0.2,1.5", "--out", str(out)],
             "--fractions: expected a fraction in (0, 1], got 1.5", out)


@pytest.mark.parametrize("text", ["data: [a, b\nseed: 1\n", "budget: 0.3\n  seed: 2\n", "data: 'open\n"])
def test_malformed_yaml_names_the_file(tmp_path: Path, pool_file: Path, capsys, text: str) -> None:
    config, out = tmp_path / "c.yaml", tmp_path / "run"
    config.write_text(text)
    _refused(capsys, ["select", "--config", str(config), *FAST, "--out", str(out)], f"{config}: malformed YAML at line", out)


def test_empty_targets_are_refused(tmp_path: Path, pool_file: Path, capsys) -> None:
    empty_folder, empty_file, out = tmp_path / "targets", tmp_path / "targets.jsonl", tmp_path / "run"
    empty_folder.mkdir()
    _refused(capsys, ["select", "--data", str(pool_file), *FAST, "--targets", str(empty_folder), "--out", str(out)],
             f"{empty_folder}: the folder holds no .json/.jsonl files", out)
    empty_file.write_text("")
    _refused(capsys, ["select", "--data", str(pool_file), *FAST, "--targets", str(empty_file), "--out", str(out)],
             "targets.jsonl: no records kept", out)


def test_out_that_is_a_file_or_under_a_file(tmp_path: Path, pool_file: Path, capsys) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("keep me")
    for out, fragment in ((blocker, f"cannot use {blocker} as the run folder: it is a file"),
                          (blocker / "run", f"cannot create the run folder {blocker / 'run'}: a part of the path is a file")):
        assert main(["select", "--data", str(pool_file), *FAST, "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert fragment in error and "Traceback" not in error
    assert blocker.read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: a folder without write permission cannot be made")
def test_out_without_write_permission(tmp_path: Path, pool_file: Path, capsys) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert main(["select", "--data", str(pool_file), *FAST, "--out", str(locked / "run")]) == 2
        assert f"cannot create the run folder {locked / 'run'}: Permission denied" in capsys.readouterr().err
        assert main(["select", "--data", str(pool_file), *FAST, "--out", str(locked)]) == 2
        assert f"cannot write in the run folder {locked}: Permission denied" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


@pytest.mark.e2e
def test_a_refused_run_does_not_block_the_corrected_command(tmp_path: Path, pool_file: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["select", "--data", str(pool_file), *FAST, "--objective", "flmi", "--out", str(out)]) == 2
    assert not out.exists()
    assert main(["select", "--data", str(pool_file), *FAST, "--fraction", "0.5", "--network.epochs", "2", "--budget", "5",
                 "--out", str(out)]) == 0
    assert len((out / "selected.jsonl").read_text().splitlines()) == 5
    assert not (out / ".lock").exists()  # released at the end of the run
    capsys.readouterr()


@pytest.mark.e2e
def test_bad_budget_in_a_real_process(tmp_path: Path, pool_file: Path) -> None:
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "nncift.cli", "select", "--data", str(pool_file), *FAST, "--budget", "0",
                          "--out", str(out)], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == ("nncift: error: --budget: expected a fraction in (0, 1] or a whole number of records "
                                  "above 1 (e.g. 50), got 0.0")
    assert not out.exists()
