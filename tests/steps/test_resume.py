"""Kill -9 a real `nncift select --influence delift` run in the middle of its blocks, run the same
command again, and get exactly the matrix and the selection of an uninterrupted run (the uninterrupted
reference runs the same command line in-process; the killed run and its rerun are real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nncift.data.records import write_jsonl

pytestmark = pytest.mark.e2e  # whole commands in subprocesses, one killed

_RUN = "import sys; from nncift.cli.commands import main; sys.exit(main(sys.argv[1:]))"


def _command(pool: Path, model: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", _RUN, "select", "--data", str(pool), "--out", str(out), "--influence", "delift",
            "--model", str(model), "--fraction", "0.19", "--sampling.blocks", "1", "--block-size", "3", "--budget", "8", "--network.epochs", "2",
            "--network.max-steps", "20", "--network.folds", "3", "--device", "cpu", "--delift.token-budget", "512", "--quiet"]


def _done_lines(out: Path) -> list[str]:
    path = out / "q1.done.jsonl"
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def _environment() -> dict[str, str]:
    """The processes' environment: this one's, on one torch thread as :func:`_run_in_process` (the matrices are compared bit for bit)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(command: list[str]) -> None:
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600, env=_environment())
    assert finished.returncode == 0, finished.stderr[-3000:]


def _run_in_process(command: list[str]) -> None:
    """The same command through the command line's entry point in this process (``main(argv)``), on one torch thread."""
    import torch

    from nncift.cli.commands import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(command[3:]) == 0
    finally:
        torch.set_num_threads(threads)


def test_sigkill_then_rerun_gives_the_uninterrupted_result(tmp_path, tiny_lm_dir, demo_pool):
    pool = tmp_path / "pool.jsonl"
    write_jsonl(pool, [record.raw for record in demo_pool])  # 64 records: Q1 = 12 × 12 in 16 blocks of 3 × 3
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    _run_in_process(_command(pool, tiny_lm_dir, whole))  # the uninterrupted reference: in-process spares a fresh process's imports
    total = len(_done_lines(whole))
    assert total == 16

    process = subprocess.Popen(_command(pool, tiny_lm_dir, interrupted), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_environment())
    deadline = time.monotonic() + 300
    while len(_done_lines(interrupted)) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    finished_before = {json.loads(line)["block"] for line in _done_lines(interrupted) if line.strip()}
    assert 3 <= len(finished_before) < total, "the run must be killed after some blocks and before the last"
    partial = np.load(interrupted / "q1.npy")
    assert np.isnan(partial).any() and np.isfinite(partial).any()
    assert not (interrupted / "manifest.json").exists()

    _run(_command(pool, tiny_lm_dir, interrupted))
    finished_after = [json.loads(line)["block"] for line in _done_lines(interrupted)]
    assert set(finished_after) >= finished_before and len(set(finished_after)) == total
    assert np.array_equal(np.load(interrupted / "q1.npy"), np.load(whole / "q1.npy"))  # bit for bit
    selected = [json.loads(line)["index"] for line in (interrupted / "selected.jsonl").read_text().splitlines()]
    assert selected == [json.loads(line)["index"] for line in (whole / "selected.jsonl").read_text().splitlines()]
    resumed_cost = json.loads((interrupted / "manifest.json").read_text())["cost"]["counters"]
    whole_cost = json.loads((whole / "manifest.json").read_text())["cost"]["counters"]
    assert resumed_cost["evaluations"] == whole_cost["evaluations"] - 9 * len(finished_before)  # finished blocks not redone
