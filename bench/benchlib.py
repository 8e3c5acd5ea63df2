"""What every benchmark report states about how and where it ran (stdlib only; the scripts import it from bench/)."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


COMMAND_ENVIRONMENT = ("OMP_NUM_THREADS", "NNCIFT_DELIFT_POOL", "NNCIFT_DELIFT_TARGETS", "NNCIFT_DEVICE")
"""Environment variables that change what a benchmark computes or how fast (bench/matrices.py reads the NNCIFT_ ones)."""


def command_line(script: str) -> str:
    """The command that ran ``script`` with this process's arguments, the :data:`COMMAND_ENVIRONMENT` variables that are set in front."""
    environment = [f"{name}={os.environ[name]}" for name in COMMAND_ENVIRONMENT if os.environ.get(name)]
    return shlex.join(environment + [".venv/bin/python", script, *sys.argv[1:]])


def report_head(title: str, script: str, started: float | None = None) -> list[str]:
    """A report's opening lines: the title, the command that ran ``script``, the date, and the machine (cores, load average at
    the end and, with ``started`` (a ``time.perf_counter()`` value), the run time)."""
    import time

    run_time = "" if started is None else f"; run time {time.perf_counter() - started:,.0f} s"
    return [f"# {title}", "", f"Command: `{command_line(script)}`", "",
            f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ",
            f"Machine: {cpu_name()}, {os.cpu_count()} cores (load average at the end {os.getloadavg()[0]:.1f}){run_time}", ""]


def publish(report: str, output: Path | None) -> None:
    """Print the markdown report and, with ``output``, also write it there (bench/results/NAME.md)."""
    print(report)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report, encoding="utf-8")
