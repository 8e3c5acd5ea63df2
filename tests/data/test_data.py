"""Readers: every layout, every kind of bad input, and every real file in ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA, shared_data

from nncift.data.records import END_OF_TEXT, DataError, EmptyFileError, Record, read_many, read_records, write_jsonl


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
        ('[1, 2]\n', 1, None, "a JSON array, not one JSON object per line"),
        ('"text"\n', 1, None, "expected a JSON object"),
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
    skipped = sum(r.skipped["empty output"] for r in reports)
    p3_skipped = sum(r.skipped["empty output"] for r in reports if "/p3/" in r.path)
    assert p3_skipped == 1400  # the README's count of empty completions
    assert len(records) + skipped == sum(r.read for r in reports) == 30_823 + 999 + 2_017 + 4_535 + 1_923 + 7_473 + 1_319
    empty = [r for r in reports if r.skipped["empty file"]]  # 0-byte P3 files: counted, not raised
    assert empty and all(r.read == r.kept == 0 and "empty file: 1" in r.summary() for r in empty)
    assert all(r.output and not r.output.endswith("<|endoftext|>") for r in records)
    gpteacher = [r for r in records if "gpteacher/codegen" in r.source]
    assert len(gpteacher) + sum(sum(r.skipped.values()) for r in reports if "codegen" in r.path) == 4_535


def _chat(*turns: tuple[str, str], key: str = "messages", names: tuple[str, str] = ("role", "content")) -> str:
    return json.dumps({key: [{names[0]: role, names[1]: text} for role, text in turns]}) + "\n"


def test_chat_role_aliases_and_sharegpt(tmp_path: Path) -> None:
    sharegpt = (("system", "Be brief."), ("human", "Name a colour"), ("gpt", "Blue"))
    lines = [
        _chat(("human", "Hi"), ("gpt", "Hello")),
        _chat(("User", "Hi"), ("bot", "Yo")),
        _chat(("user", "Hi"), ("model", "Hey"), ("user", "Again"), ("assistant", "Hey again")),
        _chat(*sharegpt, key="conversations", names=("from", "value")),
        _chat(*sharegpt, names=("from", "value")),
    ]
    records, _ = read_records(_write(tmp_path / "chat.jsonl", "".join(lines)))
    assert [(r.instruction, r.output) for r in records] == [
        ("Hi", "Hello"), ("Hi", "Yo"), ("Hi\nAgain", "Hey again"),
        ("Be brief.\nName a colour", "Blue"), ("Be brief.\nName a colour", "Blue"),
    ]


@pytest.mark.parametrize(
    ("content", "field", "problem"),
    [
        (_chat(("user", "a"), ("assistant", "b"), ("tool", "c"), ("assistant", "d")), "messages[2].role", "unknown role 'tool'"),
        (_chat(("human", "a"), ("narrator", "b"), key="conversations", names=("from", "value")), "conversations[1].from", "unknown role"),
        (json.dumps({"messages": [{"role": ["user"], "content": "a"}]}) + "\n", "messages[0].role", "unknown role"),
        (json.dumps({"messages": [{"from": "human", "content": 3}]}) + "\n", "messages[0].content", "expected a string"),
        (json.dumps({"conversations": [{"text": "a"}]}) + "\n", "conversations[0]", "from and value"),
    ],
    ids=["tool-role", "sharegpt-narrator", "role-not-a-string", "content-not-a-string", "no-role-key"],
)
def test_chat_bad_roles_raise(tmp_path: Path, content: str, field: str, problem: str) -> None:
    path = _write(tmp_path / "chat.jsonl", "\n" + content)
    with pytest.raises(DataError) as caught:
        read_records(path)
    assert (caught.value.path, caught.value.line, caught.value.field_name) == (str(path), 2, field)
    assert problem in str(caught.value)


def test_bom_and_upper_case_suffix(tmp_path: Path) -> None:
    bom = "\ufeff".encode()
    rows = [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]
    array = _write(tmp_path / "bom.json", bom + json.dumps(rows, indent=1).encode())
    lines = _write(tmp_path / "BOM.JSONL", bom + "".join(json.dumps(r) + "\n" for r in rows).encode())
    for path, first_line in ((array, 2), (lines, 1)):
        records, report = read_records(path)
        assert [r.output for r in records] == ["b", "d"] and report.read == report.kept == 2
        assert records[0].source == f"{path}:{first_line}"
    bad = _write(tmp_path / "bad.jsonl", bom + b'{"instruction": "a", "output": "b"}\n{"instruction": "\xe9"}\n')
    with pytest.raises(DataError, match="not UTF-8") as caught:
        read_records(bad)
    assert caught.value.line == 2


@pytest.mark.parametrize(("name", "text", "reason"),
                         [("e.jsonl", "", "empty file"), ("w.json", " \n\t\n", "empty file"),
                          ("w.jsonl", "\n\n", "empty file"), ("l.json", "[]", "empty list")])
def test_empty_file_is_an_error_naming_it(tmp_path: Path, name: str, text: str, reason: str) -> None:
    path = _write(tmp_path / name, text)
    with pytest.raises(EmptyFileError) as caught:
        read_records(path)
    assert str(caught.value) == f"{path}: no records ({reason})"
    assert isinstance(caught.value, DataError) and isinstance(caught.value, ValueError)


def test_read_many_folder_reports_what_it_did_not_read(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    (folder / "runs").mkdir(parents=True)
    _write(folder / "runs" / "selected.jsonl", json.dumps({"instruction": "x", "output": "y"}) + "\n")
    _write(folder / "b.JSONL", json.dumps({"instruction": "b", "output": "2"}) + "\n")
    _write(folder / "a.json", json.dumps([{"instruction": "a", "output": "1"}, {"instruction": "n", "output": ""}]))
    _write(folder / "empty.jsonl", "")
    _write(folder / "notes.txt", "hello")
    records, reports = read_many([folder])
    assert [r.output for r in records] == ["1", "2"]
    assert [Path(r.path).name for r in reports] == ["a.json", "b.JSONL", "empty.jsonl", "data"]
    a, b, empty, skipped = reports
    assert a.summary() == f"{folder / 'a.json'}: read 2, kept 1, skipped 1 (empty output: 1)"
    assert (b.read, b.kept, dict(b.skipped)) == (1, 1, {})
    assert empty.as_dict()["skipped"] == {"empty file": 1} and empty.as_dict()["read"] == 0
    assert skipped.as_dict()["skipped"] == {"sub-folder (not read)": 1, "not .json/.jsonl (not read)": 1}
    assert skipped.skipped_places == {"sub-folder (not read)": [str(folder / "runs")],
                                      "not .json/.jsonl (not read)": [str(folder / "notes.txt")]}
    _, clean = read_many([folder / "runs"])  # nothing left out: no folder report
    assert [Path(r.path).name for r in clean] == ["selected.jsonl"]


def test_read_many_with_nothing_kept_names_every_file_and_count(tmp_path: Path) -> None:
    empty = _write(tmp_path / "empty.jsonl", "  \n")
    noise = _write(tmp_path / "noise.jsonl", "".join(json.dumps({"prompt": "p", "completion": END_OF_TEXT}) + "\n" for _ in range(3)))
    records, report = read_records(noise)  # one file, all skipped: not an error, the summary says it
    assert records == [] and report.summary() == f"{noise}: read 3, kept 0, skipped 3 (empty output: 3)"
    with pytest.raises(DataError) as caught:
        read_many([empty, noise])
    message = str(caught.value)
    assert message.startswith("2 inputs: no records kept:")
    assert f"{empty}: read 0, kept 0, skipped 1 (empty file: 1)" in message
    assert f"{noise}: read 3, kept 0, skipped 3 (empty output: 3)" in message
    assert read_many([]) == ([], [])



def test_jsonl_strings_with_unicode_line_breaks_round_trip(tmp_path: Path) -> None:
    """U+0085, U+2028 and U+2029 are line breaks to str.splitlines but plain characters inside JSON strings
    (written unescaped with ensure_ascii=False, as write_jsonl does): a record must stay one record."""
    rows = [{"instruction": "a\x85b", "output": "c\u2028d"}, {"instruction": "e\u2029f", "input": "g\r", "output": "h"}]
    path = tmp_path / "odd.jsonl"
    write_jsonl(path, rows)
    records, report = read_records(path)
    assert report.kept == 2 and [r.instruction for r in records] == ["a\x85b", "e\u2029f"]
    assert records[0].output == "c\u2028d" and records[1].source.endswith(":2")
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))  # Windows line ends still read
    assert [r.output for r in read_records(path)[0]] == ["c\u2028d", "h"]
