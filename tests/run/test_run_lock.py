"""One writer per run folder: a second process is refused (exit 2, naming the PID and host), a lock of a
killed process is taken over, and within one process the lock is re-entrant and released at the end."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nncift.cli.commands import main
from nncift.data.records import write_jsonl
from nncift.run.store import LOCK_NAME, RunFolderInUse, RunStore

HOLD = """
import sys, time
from nncift.run.store import RunStore
store = RunStore(sys.argv[1], {"holder": True})
print("holding", flush=True)
time.sleep(600)
"""

OPEN = """
import json, os, sys
from nncift.run.store import RunStore
store = RunStore(sys.argv[1], {"holder": True})
print(json.dumps({"pid": os.getpid(), "lock": json.loads((store.folder / ".lock").read_text())}))
"""

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def _dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_second_process_is_refused_and_a_killed_holder_is_taken_over(tmp_path: Path, demo_pool) -> None:
    folder, pool = tmp_path / "run", tmp_path / "pool.jsonl"
    write_jsonl(pool, [r.raw for r in demo_pool[:16]])
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        lock = json.loads((folder / LOCK_NAME).read_text())
        assert lock["pid"] == holder.pid and lock["host"] == socket.gethostname() and lock["started"]
        second = subprocess.run([sys.executable, "-m", "nncift.cli", "select", "--data", str(pool), "--influence", "delift-se",
                                 "--quiet", "--out", str(folder)], capture_output=True, text=True, env=ENV, timeout=300)
        assert second.returncode == 2, second.stderr
        assert f"nncift: error: run folder in use by PID {holder.pid} on {socket.gethostname()}: {folder}" in second.stderr
        assert "Traceback" not in second.stderr
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == holder.pid  # untouched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (folder / LOCK_NAME).exists()  # a kill leaves the lock behind
    third = subprocess.run([sys.executable, "-c", OPEN, str(folder)], capture_output=True, text=True, env=ENV, timeout=300)
    assert third.returncode == 0, third.stderr
    assert f"taking over the stale lock of PID {holder.pid} on {socket.gethostname()} (no such process): {folder}" in third.stderr
    seen = json.loads(third.stdout)
    assert seen["lock"]["pid"] == seen["pid"] != holder.pid
    assert not (folder / LOCK_NAME).exists()  # released when the third process exited


def test_reentrant_within_a_process_and_released_by_the_last_close(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    with RunStore(folder, {"seed": 0}) as first:
        second = RunStore(folder, {"seed": 0})  # the same folder re-opened (a finished run, fidelity, experiment)
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
        second.close()
        second.close()  # closing twice gives back one hold only
        assert (folder / LOCK_NAME).exists()
        assert LOCK_NAME not in [p.name for p in first.iter_files()]
    assert not (folder / LOCK_NAME).exists()


def test_lock_of_another_host_is_respected(tmp_path: Path, demo_pool, capsys) -> None:
    folder, pool = tmp_path / "run", tmp_path / "pool.jsonl"
    write_jsonl(pool, [r.raw for r in demo_pool[:16]])
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": 4242, "host": "worker-7", "started": "2024-01-01T00:00:00+00:00"}))
    with pytest.raises(RunFolderInUse, match=r"run folder in use by PID 4242 on worker-7: .*\(if that process is gone, delete"):
        RunStore(folder, {})
    assert main(["select", "--data", str(pool), "--influence", "delift-se", "--quiet", "--out", str(folder)]) == 2
    assert f"nncift: error: run folder in use by PID 4242 on worker-7: {folder}" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # nothing written


def test_stale_lock_on_this_host_is_taken_over(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    dead = _dead_pid()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": "then"}))
    with RunStore(folder, {}):
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"taking over the stale lock of PID {dead}" in capsys.readouterr().err
    assert not (folder / LOCK_NAME).exists()


def test_a_refused_store_releases_its_lock(tmp_path: Path) -> None:
    from nncift.files.errors import SettingsMismatch

    folder = tmp_path / "run"
    RunStore(folder, {"seed": 0}).close()
    with pytest.raises(SettingsMismatch):
        RunStore(folder, {"seed": 1})
    assert not (folder / LOCK_NAME).exists()
