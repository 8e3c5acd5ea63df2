"""Bad or unusual input files through the real command line, in a subprocess: file contents → exit code and message.

Each case writes one pool file, runs ``nncift select`` on it in a fresh process and checks the exit
code, a fragment of what the user reads, and that a failed run leaves no run folder behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

_RUN = "import sys; from nncift.cli import main; sys.exit(main(sys.argv[1:]))"


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


@pytest.mark.parametrize("name,contents,code,fragment", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_pool_file_through_the_cli(tmp_path: Path, name: str, contents: str, code: int, fragment: str) -> None:
    pool = tmp_path / name
    pool.write_text(contents, encoding="utf-8")
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-c", _RUN, "select", "--data", str(pool), "--out", str(out), "--budget", "0.5",
                          "--max-steps", "20", "--folds", "3"], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    said = run.stdout + run.stderr
    assert run.returncode == code, said[-2000:]
    assert fragment in said, said[-2000:]
    assert "Traceback" not in said
    if code:
        assert not out.exists()  # refused before anything was written
