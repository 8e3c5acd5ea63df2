"""The command line: flags from the settings, YAML configs, and clean errors (exit 2, no traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nncift.cli.commands import build_parser, main
from nncift.data.records import write_jsonl

FAST = ["--influence", "delift-se", "--fraction", "0.25", "--network.epochs", "3", "--network.max-steps", "20", "--network.folds", "3", "--quiet"]


@pytest.fixture()
def pool_file(tmp_path: Path, demo_pool) -> Path:
    path = tmp_path / "pool.jsonl"
    write_jsonl(path, [r.raw for r in demo_pool])
    return path


def test_flags_come_from_the_settings_with_their_docstrings() -> None:
    help_text = build_parser()._subparsers._group_actions[0].choices["select"].format_help()  # noqa: SLF001
    for flag in ("--fraction", "--budget", "--objective", "--embedder", "--model", "--seed", "--targets", "--config", "--network.hidden-sizes",
                 "--selection.budget", "--sampling.fraction", "--executor.name"):
        assert flag in help_text
    assert "Fraction u of targets and candidates" in help_text


@pytest.mark.e2e
def test_select_from_the_command_line(tmp_path: Path, pool_file: Path, capsys) -> None:
    code = main(["select", "--data", str(pool_file), *FAST, "--budget", "10", "--out", str(tmp_path / "run")])
    assert code == 0
    lines = (tmp_path / "run" / "selected.jsonl").read_text().splitlines()
    assert len(lines) == 10
    out = capsys.readouterr().out
    assert "selected 10 records with fl" in out and "selected.jsonl" in out


@pytest.mark.e2e
def test_yaml_config_and_flags_override_it(tmp_path: Path, pool_file: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"data": [str(pool_file)], "selection": {"budget": 5}, "seed": 7,
                                     "network": {"hidden-sizes": [32, 16]}}))
    assert main(["select", "--config", str(config), *FAST, "--budget", "6", "--out", str(tmp_path / "run")]) == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["settings"]["selection"]["budget"] == 6 and manifest["settings"]["seed"] == 7
    assert manifest["settings"]["network"]["hidden_sizes"] == [32, 16] and manifest["counts"]["selected"] == 6


BAD_DATA = [
    ('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n', "pool.jsonl:2: field 'output': missing"),
    ('{"instruction": "a", "output": "b"}\n{oops\n', "pool.jsonl:2: malformed JSON"),
]


@pytest.mark.parametrize(("content", "expected"), BAD_DATA)
@pytest.mark.e2e
def test_bad_data_exits_2_with_file_line_field(tmp_path: Path, content: str, expected: str, capsys) -> None:
    """The first case runs ``python -m nncift.cli`` in a fresh process (the real process's exit code and stderr); the others run
    the same entry point in-process (``main(argv)``), which spares each a fresh process's ~4 s of imports."""
    path = tmp_path / "pool.jsonl"
    path.write_text(content)
    argv = ["select", "--data", str(path), *FAST, "--out", str(tmp_path / "r")]
    if content == BAD_DATA[0][0]:
        run = subprocess.run([sys.executable, "-m", "nncift.cli", *argv], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                             timeout=300)
        code, stderr = run.returncode, run.stderr
    else:
        code, stderr = main(argv), capsys.readouterr().err
    assert code == 2
    assert expected in stderr and "Traceback" not in stderr


@pytest.mark.e2e
def test_changed_settings_in_same_folder_exit_2(tmp_path: Path, pool_file: Path, capsys) -> None:
    assert main(["select", "--data", str(pool_file), *FAST, "--out", str(tmp_path / "run")]) == 0
    assert main(["select", "--data", str(pool_file), *FAST, "--seed", "9", "--out", str(tmp_path / "run")]) == 2
    assert "seed: stored 0, now 9" in capsys.readouterr().err


def test_unknown_influence_is_a_clear_error(tmp_path: Path, pool_file: Path, capsys) -> None:
    assert main(["select", "--data", str(pool_file), "--influence", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "unknown influence function 'nope'" in capsys.readouterr().err


@pytest.mark.e2e
def test_fidelity_writes_table_and_plot(tmp_path: Path, pool_file: Path) -> None:
    assert main(["fidelity", "--data", str(pool_file), "--influence", "delift-se", "--fractions", "0.2,0.5",
                 "--architectures", "two-tower", "--architectures", "paper", "--network.epochs", "5", "--network.max-steps", "40",
                 "--quiet", "--out", str(tmp_path / "fid")]) == 0
    payload = json.loads((tmp_path / "fid" / "fidelity.json").read_text())
    assert [(r["fraction"], r["split"]) for r in payload["rows"]][:4] == [(0.2, "Q1"), (0.2, "Q2"), (0.2, "Q3"), (0.2, "Q4")]
    assert sum(r["n"] for r in payload["rows"] if r["fraction"] == 0.5) == 64 * 64
    assert [r["predictor"] for r in payload["selection"] if r["fraction"] == 0.2] == ["two-tower", "paper", "cosine", "mean"]
    by = {r["predictor"]: r for r in payload["selection"] if r["fraction"] == 0.2}
    assert by["cosine"]["f_gain"] > 0.99 and by["two-tower"]["f_gain"] > 0.99  # DELIFT-SE labels are the calibrated cosine
    assert (tmp_path / "fid" / "fidelity.png").stat().st_size > 5000
    table = (tmp_path / "fid" / "fidelity.md").read_text()
    assert "| u | seed | split |" in table and "| u | seed | predictor |" in table and "f_gain" in table


@pytest.mark.e2e
def test_demo_runs_on_builtin_data(tmp_path: Path) -> None:
    run = subprocess.run([str(Path(sys.executable).parent / "nncift"), "demo", "--quiet", "--out", str(tmp_path / "demo")],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "selected 96 records" in run.stdout
    assert len((tmp_path / "demo" / "run" / "selected.jsonl").read_text().splitlines()) == 96
    manifest = json.loads((tmp_path / "demo" / "run" / "manifest.json").read_text())
    assert manifest["settings"]["influence"] == "delift-se"  # the default
    assert f"{manifest['positive_gain_picks']} picks with a positive gain" in run.stdout and manifest["positive_gain_picks"] > 48
    assert "influence network (two-tower)" in run.stdout and "shipped:" in run.stdout
    assert "the network read each record's text (--network.input auto)" in run.stdout  # DELIFT-SE's own choice


def test_help_says_how_each_list_flag_takes_several_values() -> None:
    from nncift.cli.commands import build_parser

    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["select"].format_help().split())  # noqa: SLF001
    data_help = help_text.split("--data DATA Pool files")[1].split("--targets")[0]
    assert "repeat the flag for several (values are not split at commas" in data_help and "separate values with commas" not in data_help
    sizes_help = help_text.split("--network.hidden-sizes HIDDEN_SIZES paper:")[1].split("--network.learning-rate")[0]
    assert "separate values with commas" in sizes_help


def test_version_and_help_on_every_flag_of_every_command(capsys) -> None:
    from nncift.cli.commands import build_parser, main, package_version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"nncift {package_version()}"
    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    assert {"select", "demo", "score", "inspect", "finetune", "evaluate", "fidelity", "experiment", "sweep"} <= set(commands)
    for name, command in commands.items():
        missing = [action.option_strings for action in command._actions if not action.help]  # noqa: SLF001
        assert not missing, (name, missing)


@pytest.mark.parametrize("flags, message", [
    (["--influence", "delift", "--dtype", "float8"], "dtype: expected one of 'float32', 'bfloat16', 'float16', got 'float8'"),
    (["--device", "gpu"], "expected one of 'auto', 'cpu', 'cuda' (or 'cuda:N'), got 'gpu'"),
    (["--objective", "best"], "expected one of '', 'fl', 'flmi', 'flcg', 'topk', got 'best'"),
])
def test_choice_settings_are_refused_with_the_allowed_values(tmp_path, capsys, flags, message) -> None:
    from nncift.cli.commands import main

    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"instruction": "a", "output": "b"}\n')
    assert main(["select", "--data", str(pool), "--out", str(tmp_path / "run"), *flags]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_building_the_command_line_loads_no_model_library() -> None:
    """`nncift select --help` must be quick: the flags come from light settings modules, not from torch."""
    code = ("import sys; from nncift.cli.commands import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'nncift.steps.select') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_function_declares_its_settings_in_the_light_registry() -> None:
    from nncift.influence import REGISTRY, SETTINGS, influence_class, settings_class

    assert set(SETTINGS) == set(REGISTRY)
    for name in REGISTRY:
        assert influence_class(name).Settings is settings_class(name)


def test_influence_options_are_namespaced_on_the_command_line_and_in_yaml(tmp_path, capsys) -> None:
    from nncift.cli.commands import build_parser, main, split_settings
    from nncift.settings.stages import SelectSettings

    help_text = build_parser()._subparsers._group_actions[0].choices["select"].format_help()  # noqa: SLF001
    assert "--delift.token-budget" in help_text and "--selectit.token-budget" in help_text and "\n  --token-budget" not in help_text
    assert help_text.index("--budget") < help_text.index("delift options")  # the common flags first
    parser = build_parser()
    args = parser.parse_args(["select", "--out", "x", "--data", "d.jsonl", "--influence", "selectit", "--selectit.token-budget", "999",
                              "--dtype", "bfloat16"])
    settings, options = split_settings(args, SelectSettings)
    assert options == {"token_budget": 999} and settings.dtype == "bfloat16"
    config = tmp_path / "c.yaml"
    config.write_text("influence: delift\nselection: {budget: 0.5}\ndelift:\n  token_budget: 1024\n  prefix_reuse: false\n")
    settings, options = split_settings(parser.parse_args(["select", "--out", "x", "--config", str(config)]), SelectSettings)
    assert settings.selection.budget == 0.5 and options == {"token_budget": 1024, "prefix_reuse": False}
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"instruction": "a", "output": "b"}\n')
    assert main(["select", "--data", str(pool), "--out", str(tmp_path / "r"), "--less.dim", "64"]) == 2
    assert "--less.dim: less's options apply with --influence less, not with --influence delift-se" in capsys.readouterr().err
    config.write_text("token_budget: 5\n")
    assert main(["select", "--data", str(pool), "--out", str(tmp_path / "r"), "--config", str(config)]) == 2
    assert "unknown settings: token_budget (an influence function's options go under its name" in capsys.readouterr().err
    config.write_text("influence: delift\ndelift:\n  budget_of_tokens: 5\n")
    assert main(["select", "--data", str(pool), "--out", str(tmp_path / "r"), "--config", str(config)]) == 2
    assert "(delift:): budget_of_tokens: not an option of DeliftSettings" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.e2e
def test_quiet_runs_print_no_progress_bars_or_library_warnings(tmp_path, tiny_lm_dir, demo_pool) -> None:
    """--quiet: nothing from the model libraries either (their loading bars, info logs, FutureWarnings).

    ``--network.max-steps 20``: the network's training runs the same code (every fold and candidate) in fewer steps; at the
    default 300 it took ~12 s of each of the two fresh processes."""
    pool = tmp_path / "pool.jsonl"
    write_jsonl(pool, [r.raw for r in demo_pool[:12]])
    command = [sys.executable, "-m", "nncift.cli", "select", "--influence", "selectit", "--model", str(tiny_lm_dir), "--data", str(pool),
               "--fraction", "1", "--budget", "3", "--device", "cpu", "--network.max-steps", "20", "--out", str(tmp_path / "run")]
    quieting = ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")  # set by in-process --quiet runs of other tests
    env = {**{k: v for k, v in os.environ.items() if k not in quieting}, "HF_HUB_OFFLINE": "1"}
    loud = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    assert "Loading weights" in loud.stderr  # the library's bar shows without --quiet (else this test would prove nothing)
    quiet = subprocess.run(command[:-1] + [str(tmp_path / "quiet"), "--quiet"], capture_output=True, text=True, env=env, check=True)
    assert quiet.stderr == "" and "selected 3 records" in quiet.stdout
