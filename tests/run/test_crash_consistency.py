"""Crash consistency of run folders (issue 23): a run folder moves from one consistent state to the next.

- Fault injection: a real ``select``, a re-selection (budget 8 → 12 and another network architecture),
  ``select --add`` and ``score`` are killed (``os._exit``, no clean-up) at every file-system write they
  make (every rename, every append of an influence block's done record) and once more after their
  last write, before they give back the folder's lock. The points are enumerated by a counting run,
  not sampled. After each kill the same command is run again; the folders must then equal those of an
  uninterrupted run byte for byte, except the fields that legitimately differ (see :func:`_comparable`:
  the cost ledger's timings and counters, the training's duration (manifest and ``network.json``), the
  ``reused`` note of a network trained before the kill, and in ``commit.json`` the hashes of those two files).
- Truncation: each file of a finished run is cut to half its length, one at a time; every command
  (``select`` again, ``score``, ``inspect``, ``select --add``) either repairs it by computing that part
  again or refuses with a one-line error naming the file (exit code 2, no traceback).

The fault injection runs in one subprocess (one thread, so that forking is safe), which forks a child
per attempt: Python and the models are imported once.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

KILLED = 77
STEPS = ("select", "reselect", "add", "score")
OUTPUT = {"select": "run", "reselect": "run", "add": "add", "score": "score"}
MANIFEST_NOISE = ("cost",)
"""Manifest fields that differ between a run and its resumption: the cost ledger (timings, evaluations made by this process)."""


def _write_inputs(folder: Path) -> None:
    from nncift.data.demo import demo_records
    from nncift.data.records import write_jsonl

    records = [r.raw for r in demo_records(56, seed=0)]
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "pool.jsonl", records[:40])
    write_jsonl(folder / "new.jsonl", records[40:48])
    write_jsonl(folder / "fresh.jsonl", records[48:])


def _run_step(step: str, inputs: Path, work: Path) -> None:
    """One command of the sequence, through the library (the same code the CLI runs)."""
    from nncift import SelectSettings
    from nncift.data.records import read_many
    from nncift.steps.add import add_to_run
    from nncift.steps.score import score_records
    from nncift.steps.select import run_select

    settings = SelectSettings.build(influence="delift-se", **{"sampling.fraction": 0.25, "sampling.min_sampled": 6, "selection.budget": 8}, seed=0,
            quiet=True, **{"network.max_steps": 20, "network.folds": 3}, data=(str(inputs / "pool.jsonl"),))
    if step == "select":
        run_select(settings, work / "run")
    elif step == "reselect":
        run_select(settings.updated(**{"selection.budget": 12, "network.architecture": "paper", "network.epochs": 3}), work / "run")
    elif step == "add":
        new, reports = read_many([str(inputs / "new.jsonl")])
        add_to_run(work / "run", new, work / "add", reports=reports, new_paths=[str(inputs / "new.jsonl")], progress=False)
    else:
        fresh, reports = read_many([str(inputs / "fresh.jsonl")])
        score_records(work / "run", fresh, work / "score", reports=reports, progress=False)


def _install_kill_points(kill_at: int | None) -> list[int]:
    """Count (and with ``kill_at``, die at) every rename, done-record append and lock release of this process."""
    from nncift.run import store

    count = [0]

    def point() -> None:
        if count[0] == kill_at:
            os._exit(KILLED)
        count[0] += 1

    def wrap(function: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            point()
            return function(*args, **kwargs)
        return wrapped

    os.replace, os.rename = wrap(os.replace), wrap(os.rename)  # type: ignore[assignment]
    store._fsync_append = wrap(store._fsync_append)  # type: ignore[assignment]
    store.release_lock = wrap(store.release_lock)  # type: ignore[assignment]  # every writer's, score's too (RunStore)
    return count


def _child(step: str, inputs: Path, work: Path, kill_at: int | None = None, count_file: Path | None = None) -> int:
    """Run ``step`` in a forked child; its exit code (``KILLED`` when it died at kill point ``kill_at``)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            if step == "warm-up":
                for each in STEPS:
                    _run_step(each, inputs, work)
                assert count_file is not None
                count_file.write_text("\n".join(name for name in list(sys.modules) if not name.startswith("__")))
            else:
                count = _install_kill_points(kill_at)
                _run_step(step, inputs, work)
                if count_file is not None:
                    count_file.write_text(str(count[0]))
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _comparable(folder: Path) -> dict[str, Any]:
    """Every file of ``folder`` by name: its bytes, or for the manifest and the commit record their JSON without the noise."""
    files: dict[str, Any] = {}
    for path in sorted(folder.iterdir()):
        if path.name == "manifest.json":
            manifest = json.loads(path.read_text(encoding="utf-8"))
            for key in MANIFEST_NOISE:
                manifest.pop(key, None)
            for key in ("reused", "seconds"):  # a network saved before the kill is reused, and says so; the training's duration
                (manifest.get("network_training") or {}).pop(key, None)
            files[path.name] = manifest
        elif path.name == "network.json":
            network = json.loads(path.read_text(encoding="utf-8"))
            network.get("report", {}).pop("seconds", None)  # the training's duration
            files[path.name] = network
        elif path.name == "commit.json":
            commit = json.loads(path.read_text(encoding="utf-8"))
            for name in ("manifest.json", "network.json"):  # the hashes of the files with noise
                commit["files"].pop(name, None)
            files[path.name] = commit
        else:
            files[path.name] = path.read_bytes()
    return files


def _difference(expected: Any, got: Any, where: str = "") -> str:
    """Where two JSON values first differ (for the failure message)."""
    if isinstance(expected, dict) and isinstance(got, dict):
        for key in sorted(set(expected) | set(got)):
            if expected.get(key) != got.get(key):
                return _difference(expected.get(key), got.get(key), f"{where}.{key}")
    return f"{where or 'bytes'}: {str(expected)[:120]} != {str(got)[:120]}"


def _restore(snapshot: Path, work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(snapshot, work, symlinks=True)


def harness(base: str) -> None:
    """Run every step killed at each of its kill points; print one JSON line with what was checked and any difference."""
    import torch

    torch.set_num_threads(1)
    root = Path(base)
    inputs, work = root / "inputs", root / "work"
    _write_inputs(inputs)
    modules = root / "modules.txt"  # warm-up: the embedding cache filled once, and every module a step imports imported here, so
    assert _child("warm-up", inputs, root / "warm-up", count_file=modules) == 0, "warm-up failed"  # children start at once
    for name in modules.read_text().split():  # (this process never computes: OpenMP forbids forking after that)
        try:
            importlib.import_module(name)
        except Exception:  # a module that imports only in its own context
            continue
    work.mkdir()
    before = root / "state-0"
    shutil.copytree(work, before)
    report: dict[str, Any] = {"points": {}, "failures": []}
    references: dict[str, dict[str, Any]] = {}
    for number, step in enumerate(STEPS, start=1):
        _restore(before, work)
        count_file = root / f"count-{step}"
        assert _child(step, inputs, work, count_file=count_file) == 0, f"uninterrupted {step} failed"
        reference = _comparable(work / OUTPUT[step])
        after = root / f"state-{number}"
        shutil.copytree(work, after)
        points = int(count_file.read_text())
        report["points"][step] = points
        references[step] = reference
        # each kill point, then the same command again; a killed re-selection also then the earlier command (the folder
        # must give back the earlier, finished result, not a mix of both)
        for k, then in [(k, step) for k in range(points)] + [(k, "select") for k in range(points) if step == "reselect"]:
            _restore(before, work)
            killed = _child(step, inputs, work, kill_at=k)
            rerun = _child(then, inputs, work)
            problem = None
            if killed != KILLED:
                problem = f"exit {killed} instead of being killed"
            elif rerun != 0:
                problem = f"{then} afterwards exited with {rerun}"
            else:
                got, expected = _comparable(work / OUTPUT[step]), references[then]
                if then != step:  # killed after its commit, the re-selection had finished: going back is a re-selection too
                    got.get("manifest.json", {}).pop("reselected", None)
                differing = sorted(name for name in set(got) | set(expected) if got.get(name) != expected.get(name))
                if differing:
                    problem = f"{then} afterwards: differs from the uninterrupted run in {differing}: " + "; ".join(
                        _difference(expected.get(name), got.get(name)) for name in differing)
            if problem:
                report["failures"].append(f"{step} killed at write {k}: {problem}")
        before = after
    print("HARNESS " + json.dumps(report))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the fault injection forks a child per attempt (POSIX)")
@pytest.mark.e2e
def test_killed_at_every_write_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_crash_consistency as t; t.harness({str(tmp_path)!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("HARNESS ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(lines[-1][len("HARNESS "):])
    assert report["failures"] == [], "\n".join(report["failures"]) + "\n" + done.stderr[-3000:]
    points = report["points"]
    assert set(points) == set(STEPS) and all(n >= 3 for n in points.values()), points
    assert sum(points.values()) >= 40, points


# --- truncation ---------------------------------------------------------------------------------------------------


def _select_args(inputs: Path, out: Path, budget: int = 8) -> list[str]:
    return ["select", "--data", str(inputs / "pool.jsonl"), "--influence", "delift-se", "--fraction", "0.25",
            "--sampling.min-sampled", "6", "--budget", str(budget), "--seed", "0", "--network.max-steps", "20", "--network.folds", "3",
            "--quiet", "--out", str(out)]


REPAIRED_BY_SELECT = {"selected.jsonl", "subset.jsonl", "scores.csv", "manifest.json", "commit.json", "predicted.npy", "rows.json",
                      "row_embeddings.npy", "col_embeddings.npy", "network.safetensors", "network.json", "q1.done.jsonl"}
"""Files that ``select`` computes again when they are damaged (the rest hold the influence values or the folder's identity:
refused, naming the file)."""


@pytest.mark.e2e
def test_each_truncated_file_is_repaired_or_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nncift.cli.commands import main
    from nncift.run.commit import COMMITTED, commit_problem

    inputs = tmp_path / "inputs"
    _write_inputs(inputs)
    pristine = tmp_path / "pristine"
    assert main(_select_args(inputs, pristine)) == 0
    capsys.readouterr()
    results = {name: (pristine / name).read_bytes() for name in ("selected.jsonl", "subset.jsonl", "scores.csv")}
    names = sorted(path.name for path in pristine.iterdir() if path.is_file())
    assert {"commit.json", "q1.done.jsonl", "settings.json", "network.json"} <= set(names)
    run = tmp_path / "run"
    outcomes: dict[str, dict[str, str]] = {}
    cuts = [(name, "half") for name in names] + [(name, "lines") for name in names if name.endswith((".jsonl", ".csv"))]
    for name, cut in cuts:  # half its bytes; or, so that each line still parses, its first half of whole lines
        commands = {
            "select": _select_args(inputs, run),
            "score": ["score", "--run", str(run), "--data", str(inputs / "fresh.jsonl"), "--quiet", "--out", str(tmp_path / f"score-{name}")],
            "inspect": ["inspect", str(run), "--target", "0"],
            "add": ["select", "--run", str(run), "--add", str(inputs / "new.jsonl"), "--quiet", "--out", str(tmp_path / f"add-{name}")],
        }
        for command, argv in commands.items():
            _restore(pristine, run)
            damaged = run / name
            content = damaged.read_bytes()
            lines = content.splitlines(keepends=True)
            damaged.write_bytes(content[: len(content) // 2] if cut == "half" else b"".join(lines[: len(lines) // 2]))
            code = main(argv)
            err = capsys.readouterr().err
            where = f"{name} cut ({cut}), then {command}: exit {code}, stderr {err!r}"
            assert "Traceback" not in err, where
            if code == 2:
                errors = [line for line in err.splitlines() if line.startswith("nncift: error:")]
                assert len(errors) == 1 and str(damaged) in errors[0], where
                outcomes.setdefault(f"{name} ({cut})", {})[command] = "refused"
                continue
            assert code == 0, where
            outcomes.setdefault(f"{name} ({cut})", {})[command] = "ok"
            if command == "select":  # repaired: the folder is consistent again, with the same result
                assert commit_problem(run) is None, where
                assert {n: (run / n).read_bytes() for n in results} == results, where
            else:  # the command read nothing damaged: the file is not one the commit record vouches for
                assert name not in COMMITTED, where
    for name, cut in cuts:
        outcome = outcomes[f"{name} ({cut})"]
        assert outcome["select"] == ("ok" if name in REPAIRED_BY_SELECT else "refused"), (name, cut, outcome)
        if name in COMMITTED:
            assert {outcome[c] for c in ("score", "inspect", "add")} == {"refused"}, (name, cut, outcome)


# --- stale results, the network's pair of files ------------------------------------------------------------------------


@pytest.mark.e2e
def test_a_finished_run_whose_input_file_changed_is_refused_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nncift.cli.commands import main
    from nncift.run.commit import commit_problem

    inputs, run = tmp_path / "inputs", tmp_path / "run"
    _write_inputs(inputs)
    assert main(_select_args(inputs, run)) == 0
    pool = inputs / "pool.jsonl"
    original = pool.read_bytes()
    rows = [json.loads(line) for line in pool.read_text(encoding="utf-8").splitlines()]
    picked = json.loads((run / "selected.jsonl").read_text(encoding="utf-8").splitlines()[0])["index"]
    rows[picked]["note"] = "a field added"  # the records' texts are unchanged: only the file's hash tells
    pool.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    capsys.readouterr()
    for argv in (_select_args(inputs, run), _select_args(inputs, run, budget=12),
                 ["select", "--run", str(run), "--add", str(inputs / "new.jsonl"), "--quiet", "--out", str(tmp_path / "add")]):
        assert main(argv) == 2, argv
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith(f"nncift: error: {pool}: changed since the run in "), errors
    assert not (tmp_path / "add").exists() or not (tmp_path / "add" / "commit.json").exists()
    assert commit_problem(run) is None  # the refused commands wrote nothing (not even the re-selection's settings.json)
    pool.write_bytes(original)
    assert main(_select_args(inputs, run)) == 0 and "finished earlier" not in capsys.readouterr().err  # --quiet
    assert commit_problem(run) is None


def test_network_weights_beside_another_saves_sidecar_are_refused_by_name(tmp_path: Path) -> None:
    import torch

    from nncift.network.files import NetworkFileError, load_network, save_network
    from nncift.network.paper import InfluenceNetwork
    from nncift.network.towers import TwoTowerNetwork

    torch.manual_seed(0)
    paper, towers = tmp_path / "paper" / "network.safetensors", tmp_path / "towers" / "network.safetensors"
    save_network(InfluenceNetwork(8, (4,), pairwise=True), paper, {})
    save_network(TwoTowerNetwork(8, 4, 2), towers, {})
    load_network(paper), load_network(towers)
    assert not [p.name for p in tmp_path.rglob("*") if ".tmp" in p.name]
    shutil.copyfile(paper, towers)  # a kill between the weights and the sidecar of a re-selection with another architecture
    with pytest.raises(NetworkFileError, match=f"^{towers}: not the weights {towers.with_suffix('.json')} describes"):
        load_network(towers)
    towers.write_bytes(b"")
    with pytest.raises(NetworkFileError, match=str(towers)):
        load_network(towers)
