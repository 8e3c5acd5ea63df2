"""Bad or unusual input files through the real command line: file contents → exit code and message.

Each case writes one pool file, runs ``nncift select`` on it through the command line's entry point
(``main(argv)``, in-process: a fresh process per case paid ~4 s of imports each) and checks the exit code,
a fragment of what the user reads (stdout + stderr), and that a failed run leaves no run folder behind. One
case also runs in a fresh process (:func:`test_a_pool_file_in_a_fresh_process`), so that the real
process's exit code and output stay covered. The cases of issue 23 below run the command line in-process
too: exit 2, one line naming the file, line, field or flag, nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nncift.cli.commands import main

_RUN = "import sys; from nncift.cli.commands import main; sys.exit(main(sys.argv[1:]))"


def _alpaca(n: int) -> str:
    topics = ["rivers", "planets", "bridges", "violins", "glaciers", "markets", "comets", "orchards", "harbors", "deserts",
              "volcanoes", "lanterns"]
    return "\n".join(json.dumps({"instruction": f"Write one sentence about {topics[i % len(topics)]}.", "input": "",
                                 "output": f"A sentence about {topics[i % len(topics)]} number {i}."}) for i in range(n)) + "\n"


def _chat(role: str) -> str:
    return "\n".join(json.dumps({"messages": [{"role": role, "content": f"Name a colour, please ({i})."},
                                              {"role": "gpt", "content": f"Colour {i}: blue."}]}) for i in range(12)) + "\n"


CASES = [  # (id, file name, contents, exit code, fragment of stdout + stderr)
    ("utf8-bom", "pool.jsonl", "\ufeff" + _alpaca(12), 0, "selected 6 records"),
    ("upper-case-suffix", "pool.JSONL", _alpaca(12), 0, "selected 6 records"),
    ("sharegpt-roles", "pool.jsonl", _chat("human"), 0, "selected 6 records"),
    ("unknown-role", "pool.jsonl", _chat("narrator"), 2, "pool.jsonl:1: field 'messages[0].role': unknown role 'narrator'"),
    ("empty-file", "pool.jsonl", "", 2, "pool.jsonl: read 0, kept 0, skipped 1 (empty file: 1)"),
    ("whitespace-only", "pool.jsonl", "  \n\n ", 2, "empty file"),
    ("all-outputs-empty", "pool.jsonl", "\n".join(json.dumps({"prompt": f"p{i}", "completion": "<|endoftext|>"}) for i in range(5)),
     2, "read 5, kept 0, skipped 5 (empty output: 5)"),
    ("not-json", "pool.jsonl", "{not json\n", 2, "pool.jsonl:1"),
    ("unknown-layout", "pool.jsonl", json.dumps({"text": "hello"}) + "\n", 2, "no known layout"),
]


def _pool_argv(tmp_path: Path, name: str, contents: str) -> list[str]:
    pool = tmp_path / name
    pool.write_text(contents, encoding="utf-8")
    return ["select", "--data", str(pool), "--out", str(tmp_path / "run"), "--budget", "0.5", "--network.max-steps", "20", "--network.folds", "3"]


@pytest.mark.parametrize("name,contents,code,fragment", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
@pytest.mark.e2e
def test_pool_file_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, contents: str, code: int, fragment: str) -> None:
    returned = main(_pool_argv(tmp_path, name, contents))
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert returned == code, said[-2000:]
    assert fragment in said, said[-2000:]
    assert "Traceback" not in said
    if code:
        assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("case", ["unknown-role"])
@pytest.mark.e2e
def test_a_pool_file_in_a_fresh_process(tmp_path: Path, case: str) -> None:
    """One case of :data:`CASES` in a real process: its exit code, what it prints, no traceback, nothing written."""
    name, contents, code, fragment = next(c[1:] for c in CASES if c[0] == case)
    run = subprocess.run([sys.executable, "-c", _RUN, *_pool_argv(tmp_path, name, contents)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    said = run.stdout + run.stderr
    assert run.returncode == code, said[-2000:]
    assert fragment in said, said[-2000:]
    assert "Traceback" not in said
    if code:
        assert not (tmp_path / "run").exists()  # refused before anything was written


# In-process cases of issue 23: every refusal exits 2 with one line naming its origin, and writes nothing.

FAST = ["--influence", "delift-se", "--network.max-steps", "20", "--network.folds", "3", "--quiet"]


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture()
def pool(tmp_path: Path) -> Path:
    path = tmp_path / "pool.jsonl"
    path.write_text(_alpaca(12), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished DELIFT-SE run on 12 records, each with an Infinity in an extra field."""
    folder = tmp_path_factory.mktemp("finished")
    rows = [json.loads(line) | {"meta": float("inf")} for line in _alpaca(12).splitlines()]
    (folder / "pool.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    assert main(["select", "--data", str(folder / "pool.jsonl"), "--out", str(folder / "run"), "--budget", "4", *FAST]) == 0
    return folder


def _not_json(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON")


@pytest.mark.e2e
def test_infinity_in_an_extra_field_is_written_back_as_null(finished: Path) -> None:
    for name in ("subset.jsonl", "selected.jsonl"):
        for line in (finished / "run" / name).read_text(encoding="utf-8").splitlines():
            row = json.loads(line, parse_constant=_not_json)
            assert (row.get("record") or row)["meta"] is None


@pytest.mark.e2e
def test_a_non_empty_folder_that_is_not_a_run_is_refused_unless_forced(tmp_path: Path, pool: Path, capsys) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "scores.csv").write_text("my own\n")
    _refused(capsys, ["select", "--data", str(pool), "--out", str(mine), *FAST], "is a non-empty folder that is not an nncift run")
    assert sorted(p.name for p in mine.iterdir()) == ["scores.csv"]
    assert main(["select", "--data", str(pool), "--out", str(mine), "--budget", "4", "--force", *FAST]) == 0
    assert (mine / "manifest.json").is_file()


@pytest.mark.parametrize("where,fragment", [("empty", "--out is empty"), ("in-data", "is inside the --data folder")])
def test_empty_out_and_out_inside_the_data_folder_are_refused(tmp_path: Path, pool: Path, capsys, where: str, fragment: str) -> None:
    out = "" if where == "empty" else str(tmp_path / "run")
    _refused(capsys, ["select", "--data", str(tmp_path), "--out", out, *FAST], fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.jsonl"]


@pytest.mark.e2e
def test_out_equal_to_run_is_refused_by_score_and_add(finished: Path, capsys) -> None:
    run, before = finished / "run", {p.name: p.stat().st_mtime_ns for p in (finished / "run").iterdir()}
    _refused(capsys, ["score", "--run", str(run), "--data", str(finished / "pool.jsonl"), "--out", str(run), "--quiet"], "is the --run folder")
    _refused(capsys, ["select", "--run", str(run), "--add", str(finished / "pool.jsonl"), "--out", str(run) + "/", "--quiet"], "is the --run folder")
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_a_flag_or_a_yaml_key_given_twice_is_refused(tmp_path: Path, pool: Path, capsys) -> None:
    _refused(capsys, ["select", "--data", str(pool), "--out", str(tmp_path / "r"), "--budget", "5", "--budget", "6", *FAST],
             "--budget is given twice")
    config = tmp_path / "c.yaml"
    config.write_text("seed: 1\nbudget: 4\nseed: 2\n")
    _refused(capsys, ["select", "--config", str(config), "--data", str(pool), "--out", str(tmp_path / "r"), *FAST],
             "c.yaml: line 3: key 'seed' is given twice (lines 1 and 3)")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("flags,fragment", [
    (["--delift.max-length", "3"], "--delift.max-length: expected a value ≥ 64, got 3 (DELIFT's prefix, query and response)"),
    (["--embedder", "/no/such/embedder"], "--embedder /no/such/embedder: no such folder"),
    (["--network.folds", "2"], "the validation that chooses the predictor needs at least 3 folds"),
    (["--device", "cuda"], "--device cuda: this torch"),
])
def test_settings_refused_before_anything_is_written(tmp_path: Path, pool: Path, capsys, flags: list[str], fragment: str) -> None:
    if "cuda" in flags:
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
    influence = "delift" if "--delift.max-length" in flags else "delift-se"
    argv = ["select", "--data", str(pool), "--out", str(tmp_path / "r"), "--influence", influence, "--network.max-steps", "20", "--quiet", *flags]
    _refused(capsys, argv, fragment)
    assert not (tmp_path / "r").exists()


@pytest.mark.e2e
def test_score_refuses_cuda_without_cuda_and_reports_skipped_lines(finished: Path, tmp_path: Path, capsys) -> None:
    torch = pytest.importorskip("torch")
    data = tmp_path / "new.jsonl"
    data.write_text(_alpaca(3) + json.dumps({"instruction": "x", "output": ""}) + "\n")
    if not torch.cuda.is_available():
        _refused(capsys, ["score", "--run", str(finished / "run"), "--data", str(data), "--out", str(tmp_path / "s"), "--device", "cuda"],
                 "--device cuda")
        assert not (tmp_path / "s").exists()
    assert main(["score", "--run", str(finished / "run"), "--data", str(data), "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert "scored 3 of 4 records (1 skipped: empty output: 1)" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["network.safetensors", "scores.csv", "q1.npy", "rows.json", "manifest.json", "selected.jsonl"])
@pytest.mark.e2e
def test_a_damaged_run_file_is_named(finished: Path, tmp_path: Path, capsys, name: str) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(finished / "run", run)
    size = (run / name).stat().st_size
    with (run / name).open("r+b") as handle:
        handle.truncate(size // 2)
    _refused(capsys, ["inspect", str(run)], f"{run / name}: ")
    _refused(capsys, ["score", "--run", str(run), "--data", str(finished / "pool.jsonl"), "--out", str(tmp_path / "s"), "--quiet"],
             f"{run / name}: ")
    assert not (tmp_path / "s").exists()


@pytest.mark.e2e
def test_add_from_another_directory_reads_the_runs_inputs_from_its_directory(finished: Path, tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "relative"
    monkeypatch.chdir(finished)
    assert main(["select", "--data", "pool.jsonl", "--out", str(run), "--budget", "4", *FAST]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "new.jsonl").write_text(json.dumps({"instruction": "Name a new river.", "output": "The Amazon."}) + "\n")
    monkeypatch.chdir(elsewhere)
    assert main(["select", "--run", str(run), "--add", "new.jsonl", "--out", str(tmp_path / "grown"), "--quiet"]) == 0


@pytest.mark.parametrize("flags,fragment", [(["--epochs", "0"], "--epochs: expected a value ≥ 1, got 0 (at least 1 pass"),
                                            (["--learning-rate", "-1"], "--learning-rate: expected a value > 0")])
def test_finetune_refuses_bad_settings_before_loading_the_model(tmp_path: Path, pool: Path, capsys, flags, fragment) -> None:
    _refused(capsys, ["finetune", "--data", str(pool), "--out", str(tmp_path / "adapter"), "--quiet", *flags], fragment)
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("data,fragment", [("hf:", "hf:: the data set name is empty"),
                                           ("hf:no-such-user/no-such-set", "the Hugging Face hub is unreachable")])
def test_hf_data_errors_say_what_is_wrong(tmp_path: Path, capsys, data: str, fragment: str) -> None:
    pytest.importorskip("datasets")
    _refused(capsys, ["select", "--data", data, "--out", str(tmp_path / "r"), *FAST], fragment)
    assert not (tmp_path / "r").exists()


DATA_CASES = [  # (id, file name, contents, fragment)
    ("array-in-jsonl", "p.jsonl", '[{"instruction": "a", "output": "b"},\n {"instruction": "c", "output": "d"}]\n',
     "p.jsonl:1: a JSON array, not one JSON object per line: name the file .json"),
    ("output-null", "p.jsonl", '{"instruction": "a", "output": null}\n', "p.jsonl:1: field 'output': null"),
    ("lone-surrogate", "p.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "a\\ud800", "output": "b"}\n', "p.jsonl:2: a lone surrogate"),
    ("deep-jsonl", "p.jsonl", '{"instruction": "a", "output": "b"}\n{"x": ' + "[" * 100000 + "]" * 100000 + "}\n", "p.jsonl:2: nested too deeply"),
    ("deep-json", "p.json", "[\n" + "[" * 100000 + "]" * 100000 + "\n]", "p.json:2: nested too deeply"),
]


@pytest.mark.parametrize("name,contents,fragment", [case[1:] for case in DATA_CASES], ids=[case[0] for case in DATA_CASES])
def test_bad_data_is_named_with_file_and_line(tmp_path: Path, capsys, name: str, contents: str, fragment: str) -> None:
    (tmp_path / name).write_text(contents, encoding="utf-8")
    _refused(capsys, ["select", "--data", str(tmp_path / name), "--out", str(tmp_path / "r"), *FAST], fragment)
    assert not (tmp_path / "r").exists()


def test_empty_folder_and_dangling_link_are_named(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    _refused(capsys, ["select", "--data", str(folder), "--out", str(tmp_path / "r"), *FAST], f"{folder}: the folder holds no .json/.jsonl files")
    (folder / "pool.jsonl").symlink_to(tmp_path / "gone.jsonl")
    _refused(capsys, ["select", "--data", str(folder), "--out", str(tmp_path / "r"), *FAST], f"broken link (not read) 1 ({folder / 'pool.jsonl'})")
    _refused(capsys, ["select", "--data", str(folder / "pool.jsonl"), "--out", str(tmp_path / "r"), *FAST], "a broken link")
    assert not (tmp_path / "r").exists()


def test_a_torn_lock_is_taken_over_and_a_live_unrelated_pid_gets_a_hint(tmp_path: Path, pool: Path, capsys) -> None:
    from nncift.run.store import acquire_lock, release_lock

    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / ".lock").write_text('{"pid": 12')
    os.utime(folder / ".lock", (0, 0))
    release_lock(acquire_lock(folder))
    assert "taking over a torn lock" in capsys.readouterr().err
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (folder / ".lock").write_text(json.dumps({"pid": sleeper.pid, "host": __import__("socket").gethostname()}))
        _refused(capsys, ["select", "--data", str(pool), "--out", str(folder), *FAST], "that PID is now another program (sleep 30)")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]


def test_ctrl_c_while_the_parser_is_built_exits_130_in_one_line() -> None:
    code = ("import os, signal, sys; import nncift.cli.commands as cli; build = cli.build_parser; "
            "cli.build_parser = lambda: (os.kill(os.getpid(), signal.SIGINT), build())[1]; sys.exit(cli.main(['select', '--help']))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 130, run.stderr
    assert run.stderr.strip() == "nncift: interrupted before the command started; nothing was written"


def test_a_response_weight_the_input_would_ignore_is_refused(capsys: pytest.CaptureFixture[str], pool: Path, tmp_path: Path) -> None:
    """DELIFT-SE reads the text alone under auto (and with --network.input text): a response weight other than the default
    would change nothing, so it is refused before anything is written, saying how to read the response."""
    out = tmp_path / "run"
    err = _refused(capsys, ["select", "--data", str(pool), "--out", str(out), "--network.response-weight", "0.5", "--quiet"],
                   "--network.response-weight 0.5 has no effect: the network reads the text alone (--network.input auto reads the text for delift-se)")
    assert "--network.input text+response" in err and not out.exists()
    _refused(capsys, ["select", "--influence", "less", "--data", str(pool), "--out", str(out), "--network.input", "text",
                      "--network.response-weight", "0.5", "--quiet"], "has no effect: the network reads the text alone; add")
    assert not out.exists()
