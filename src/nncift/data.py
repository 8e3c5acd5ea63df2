"""Instruction records and the readers that load them.

Every reader turns a file into a list of :class:`Record` plus a :class:`LoadReport` that counts
what was skipped and why. Bad input raises :class:`DataError` naming the file, line and field;
records with an empty output are skipped and counted (they are real-world noise, never trained on).

Supported layouts (detected per record, so mixed files work):

- Alpaca-style: ``instruction``, optional ``input``, ``output`` (or ``response``, as GPTeacher);
- prompt/completion: ``prompt``, ``completion`` (a trailing ``<|endoftext|>`` is stripped);
- question/answer: ``question``, ``answer`` (GSM8K);
- chat: ``messages`` = list of ``{"role", "content"}``; the last assistant turn is the output,
  the user turns before it the instruction;
- a row of a run's ``selected.jsonl`` (``index``, ``score``, ``record``): the record inside.

Files: ``.json`` (a list of records), ``.jsonl`` (one record per line), or, with
``datasets`` installed, anything ``datasets.load_dataset`` can open (``hf:NAME[:SPLIT]``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

END_OF_TEXT = "<|endoftext|>"


class DataError(ValueError):
    """Bad input, with the place it was found: ``file:line: field: problem``."""

    def __init__(self, path: str | Path, line: int | None, field_name: str | None, problem: str):
        self.path = str(path)
        self.line = line
        self.field_name = field_name
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        what = f" field '{field_name}':" if field_name else ""
        super().__init__(f"{where}:{what} {problem}")


@dataclass(frozen=True)
class Record:
    """One instruction-tuning example.

    Attributes:
        instruction: the task instruction (or prompt).
        input: optional extra input for the instruction ("" when absent).
        output: the reference response.
        source: ``"file:line"`` where the record was read.
        task: a task label when the data has one (file stem for P3-style files, or a ``task`` key).
        raw: the record exactly as read, written back unchanged into ``selected.jsonl``.
    """

    instruction: str
    input: str
    output: str
    source: str = ""
    task: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def query(self) -> str:
        """Instruction and input joined: what the model is asked."""
        return f"{self.instruction}\n{self.input}" if self.input else self.instruction


@dataclass
class LoadReport:
    """What a reader did: records kept and records skipped, by reason, with their places."""

    path: str
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_places: dict[str, list[str]] = field(default_factory=dict)
    sha256: str = ""

    def skip(self, reason: str, place: str) -> None:
        """Count one skipped record and remember where it was (first 20 places per reason)."""
        self.skipped[reason] += 1
        places = self.skipped_places.setdefault(reason, [])
        if len(places) < 20:
            places.append(place)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the manifest."""
        return {
            "path": self.path,
            "sha256": self.sha256,
            "kept": self.kept,
            "skipped": dict(self.skipped),
            "skipped_examples": self.skipped_places,
        }


def _text(value: Any, path: Path, line: int, name: str, *, required: bool) -> str:
    if value is None:
        if required:
            raise DataError(path, line, name, "missing")
        return ""
    if not isinstance(value, str):
        raise DataError(path, line, name, f"expected a string, got {type(value).__name__}")
    return value


def _from_messages(messages: Any, path: Path, line: int) -> tuple[str, str]:
    if not isinstance(messages, list) or not messages:
        raise DataError(path, line, "messages", "expected a non-empty list of {role, content}")
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(path, line, f"messages[{k}]", "expected an object with role and content")
        _text(message["content"], path, line, f"messages[{k}].content", required=True)
    last = max((k for k, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DataError(path, line, "messages", "no assistant turn to use as the output")
    prompt = "\n".join(m["content"] for m in messages[:last] if m["role"] in ("user", "system"))
    return prompt, messages[last]["content"]


def record_from_dict(obj: Any, path: Path, line: int, task: str | None = None) -> Record:
    """Turn one parsed JSON object into a :class:`Record`, or raise :class:`DataError`."""
    if not isinstance(obj, dict):
        raise DataError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
    if set(obj) == {"index", "score", "record"} and isinstance(obj["record"], dict):
        obj = obj["record"]  # a row of a run's selected.jsonl
    task = obj.get("task") if isinstance(obj.get("task"), str) else task
    if "messages" in obj:
        instruction, output = _from_messages(obj["messages"], path, line)
        extra = ""
    elif "prompt" in obj and "completion" in obj:
        instruction = _text(obj["prompt"], path, line, "prompt", required=True)
        output = _text(obj["completion"], path, line, "completion", required=True)
        if output.rstrip().endswith(END_OF_TEXT):
            output = output.rstrip()[: -len(END_OF_TEXT)]
        extra = ""
    elif "question" in obj and "answer" in obj:
        instruction = _text(obj["question"], path, line, "question", required=True)
        output = _text(obj["answer"], path, line, "answer", required=True)
        extra = ""
    elif "instruction" in obj:
        instruction = _text(obj["instruction"], path, line, "instruction", required=True)
        extra = _text(obj.get("input"), path, line, "input", required=False)
        out_key = "response" if "response" in obj and "output" not in obj else "output"
        output = _text(obj.get(out_key), path, line, out_key, required=True)
    else:
        keys = ", ".join(sorted(obj)[:8]) or "none"
        raise DataError(
            path, line, None,
            f"no known layout (keys: {keys}); expected instruction/output, instruction/response, "
            "prompt/completion, question/answer or messages",
        )
    return Record(instruction.strip(), extra.strip(), output.strip(), f"{path}:{line}", task, obj)


def _task_label(path: Path) -> str:
    return path.stem


def _iter_json_objects(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(path, number, None, f"malformed JSON: {error.msg} (column {error.colno})") from None
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(path, error.lineno, None, f"malformed JSON: {error.msg} (column {error.colno})") from None
    if isinstance(data, list):
        yield from _array_elements_with_lines(text)
        return
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            yield from ((position, item) for position, item in enumerate(lists[0], start=1))
            return
    raise DataError(path, 1, None, f"expected a JSON list of records, got {type(data).__name__}")


def _array_elements_with_lines(text: str) -> Iterator[tuple[int, Any]]:
    """Yield (line where the element starts, element) for a top-level JSON array."""
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    line = 1 + text.count("\n", 0, position)
    while True:
        match = _SEPARATORS.match(text, position)
        line += text.count("\n", position, match.end())
        position = match.end()
        if position >= len(text) or text[position] == "]":
            return
        item, end = decoder.raw_decode(text, position)
        yield line, item
        line += text.count("\n", position, end)
        position = end


_SEPARATORS = re.compile(r"[\s,]*")


def read_records(path: str | Path, *, task: str | None = None) -> tuple[list[Record], LoadReport]:
    """Read one data file into records.

    Args:
        path: a ``.json`` or ``.jsonl`` file, or ``hf:NAME[:SPLIT]`` for ``datasets.load_dataset``.
        task: task label for every record; defaults to the file stem.

    Returns:
        The kept records in file order and the load report (skips counted by reason).

    Raises:
        DataError: the file is missing, not UTF-8, malformed, or a record lacks a field or has a
            wrong type. The message names the file, the line (for JSON arrays: the element's
            position) and the field.
    """
    if str(path).startswith("hf:"):
        return _read_hf(str(path)[3:], task)
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "no such file")
    payload = path.read_bytes()
    report = LoadReport(str(path), sha256=hashlib.sha256(payload).hexdigest())
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as error:
        line = payload[: error.start].count(b"\n") + 1
        raise DataError(path, line, None, f"not UTF-8 (byte {error.start})") from None
    label = task or _task_label(path)
    if path.suffix not in (".json", ".jsonl"):
        raise DataError(path, None, None, "unknown file type: expected .json or .jsonl")
    records = []
    for line, obj in _iter_json_objects(path, text):
        record = record_from_dict(obj, path, line, label)
        if not record.output:
            report.skip("empty output", f"{path}:{line}")
            continue
        records.append(record)
    report.kept = len(records)
    return records, report


def _read_hf(spec: str, task: str | None) -> tuple[list[Record], LoadReport]:
    try:
        import datasets  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise DataError(spec, None, None, "reading hf: data needs `pip install nncift[datasets]`") from None
    name, _, split = spec.partition(":")
    table = datasets.load_dataset(name, split=split or "train")
    report = LoadReport(f"hf:{spec}", sha256=getattr(table, "_fingerprint", ""))
    records = []
    for row_number, row in enumerate(table, start=1):
        record = record_from_dict(dict(row), Path(f"hf:{spec}"), row_number, task or name)
        if not record.output:
            report.skip("empty output", f"hf:{spec}:{row_number}")
            continue
        records.append(record)
    report.kept = len(records)
    return records, report


def read_many(paths: Iterable[str | Path]) -> tuple[list[Record], list[LoadReport]]:
    """Read several files (a directory expands to its .json/.jsonl files, sorted)."""
    records: list[Record] = []
    reports: list[LoadReport] = []
    for path in paths:
        path = Path(path) if not str(path).startswith("hf:") else path
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl")) if isinstance(path, Path) and path.is_dir() else [path]
        for file in files:
            file_records, report = read_records(file)
            records.extend(file_records)
            reports.append(report)
    return records, reports


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows as JSON lines (UTF-8, no ASCII escaping), atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
