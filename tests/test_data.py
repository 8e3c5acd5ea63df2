"""Readers: every layout, every kind of bad input, and every real file in ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SHARED_DATA, shared_data
from nncift.data import DataError, Record, read_many, read_records, write_jsonl


def _write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_alpaca_json_with_line_numbers(tmp_path: Path) -> None:
    rows = [{"instruction": "Add.", "input": "1 2", "output": "3"}, {"instruction": "Greet.", "output": "Hi"}]
    path = _write(tmp_path / "a.json", json.dumps(rows, indent=2))
    records, report = read_records(path)
    assert [r.output for r in records] == ["3", "Hi"]
    assert records[0].query == "Add.\n1 2" and records[1].input == ""
    assert records[0].source == f"{path}:2" and records[1].source == f"{path}:7"
    assert records[0].raw == rows[0] and records[0].task == "a"
    assert report.kept == 2 and not report.skipped and len(report.sha256) == 64


def test_every_layout(tmp_path: Path) -> None:
    lines = [
        {"instruction": "Say hi", "input": "", "response": "hi"},
        {"prompt": "Q: 2+2?", "completion": " 4<|endoftext|>"},
        {"question": "How many?", "answer": "Two.\n#### 2"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour"},
                      {"role": "assistant", "content": "Blue"}]},
    ]
    path = _write(tmp_path / "mixed.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    records, _ = read_records(path)
    assert [r.output for r in records] == ["hi", "4", "Two.\n#### 2", "Blue"]
    assert records[3].instruction == "Be brief.\nName a colour"
    assert [r.source.rsplit(":", 1)[1] for r in records] == ["1", "2", "3", "4"]


def test_empty_outputs_are_counted_skips(tmp_path: Path) -> None:
    lines = [{"prompt": "a", "completion": "<|endoftext|>"}, {"prompt": "b", "completion": "yes<|endoftext|>"},
             {"instruction": "c", "output": "   "}]
    path = _write(tmp_path / "p.jsonl", "\n".join(json.dumps(x) for x in lines))
    records, report = read_records(path)
    assert [r.output for r in records] == ["yes"]
    assert report.skipped["empty output"] == 2
    assert report.as_dict()["skipped_examples"]["empty output"] == [f"{path}:1", f"{path}:3"]


@pytest.mark.parametrize(
    ("content", "line", "field", "problem"),
    [
        ('{"instruction": "a", "output": "b"}\n{"instruction": "a", "output": \n', 2, None, "malformed JSON"),
        ('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n', 2, "output", "missing"),
        ('{"instruction": "a", "output": 3}\n', 1, "output", "expected a string"),
        ('{"instruction": ["x"], "output": "b"}\n', 1, "instruction", "expected a string"),
        ('{"text": "no layout"}\n', 1, None, "no known layout"),
        ('[1, 2]\n', 1, None, "expected a JSON object"),
        ('{"messages": [{"role": "user", "content": "hi"}]}\n', 1, "messages", "no assistant turn"),
    ],
)
def test_bad_input_names_file_line_and_field(tmp_path: Path, content: str, line: int, field: str | None, problem: str) -> None:
    path = _write(tmp_path / "bad.jsonl", content)
    with pytest.raises(DataError) as caught:
        read_records(path)
    error = caught.value
    assert (error.path, error.line, error.field_name) == (str(path), line, field)
    assert problem in str(error) and str(path) in str(error)


def test_not_utf8_and_missing_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "latin.jsonl", '{"instruction": "caf\xe9", "output": "x"}\n{"instruction": "b", "output": "y"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8") as caught:
        read_records(path)
    assert caught.value.line == 1
    with pytest.raises(DataError, match="no such file"):
        read_records(tmp_path / "absent.json")


def test_json_array_element_line_in_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "arr.json", '[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c"}\n]\n')
    with pytest.raises(DataError) as caught:
        read_records(path)
    assert caught.value.line == 3 and caught.value.field_name == "output"


def test_write_and_read_back(tmp_path: Path) -> None:
    rows = [{"instruction": "é", "output": "ü"}]
    write_jsonl(tmp_path / "o.jsonl", rows)
    records, _ = read_records(tmp_path / "o.jsonl")
    assert records == [Record("é", "", "ü", records[0].source, "o")]


def test_every_shared_file_loads_or_reports() -> None:
    shared_data("README.md")
    files = sorted(p for p in SHARED_DATA.rglob("*") if p.suffix in (".json", ".jsonl"))
    assert len(files) >= 178
    records, reports = read_many(files)
    skipped = sum(sum(r.skipped.values()) for r in reports)
    p3_skipped = sum(sum(r.skipped.values()) for r in reports if "/p3/" in r.path)
    assert p3_skipped == 1400  # the README's count of empty completions
    assert len(records) + skipped == 30_823 + 999 + 2_017 + 4_535 + 1_923 + 7_473 + 1_319
    assert all(r.output and not r.output.endswith("<|endoftext|>") for r in records)
    gpteacher = [r for r in records if "gpteacher/codegen" in r.source]
    assert len(gpteacher) + sum(sum(r.skipped.values()) for r in reports if "codegen" in r.path) == 4_535
