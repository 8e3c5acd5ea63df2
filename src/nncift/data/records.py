"""Instruction records and the readers that load them.

Every reader turns a file into a list of :class:`Record` plus a :class:`LoadReport` that counts
what was skipped and why. Bad input raises :class:`DataError` naming the file, line and field;
records with an empty output are skipped and counted (they are real-world noise, never trained on).

Supported layouts (detected per record, so mixed files work):

- Alpaca-style: ``instruction``, optional ``input``, ``output`` (or ``response``, as GPTeacher);
- prompt/completion: ``prompt``, ``completion`` (a trailing ``<|endoftext|>`` is stripped);
- question/answer: ``question``, ``answer`` (GSM8K);
- chat: ``messages`` (or ShareGPT's ``conversations``) = list of ``{"role", "content"}`` (or
  ShareGPT's ``{"from", "value"}``). Roles (any case): ``user``/``human`` are user turns,
  ``assistant``/``gpt``/``bot``/``model`` assistant turns, ``system`` system text. The last
  assistant turn is the output; the system and user turns before it, joined in order, are the
  instruction (so a leading system prompt goes in front); earlier assistant turns are dropped.
  Any other role is a :class:`DataError` naming the field (``messages[2].role``);
- a row of a run's ``selected.jsonl`` (``index``, ``score``, ``record``): the record inside.

Files: ``.json`` (a list of records), ``.jsonl`` (one record per line), suffix in any case, UTF-8
with or without a byte-order mark; or, with ``datasets`` installed, anything
``datasets.load_dataset`` can open (``hf:NAME[:SPLIT]``). ``Infinity``/``NaN`` in a record (not JSON) are read as null.

A file with no records at all (empty, whitespace only, or an empty JSON list) is an
:class:`EmptyFileError` from :func:`read_records`; :func:`read_many` instead counts it as skipped
(reason ``"empty file"``) and goes on. A folder given to :func:`read_many` is read one level deep:
its ``.json``/``.jsonl`` files, sorted by name. Sub-folders are *not* read (a run folder's
``selected.jsonl`` would otherwise be read as data); they and any other files are counted as
skipped, with their paths, in an extra report for the folder (reasons ``"sub-folder (not read)"``,
``"broken link (not read)"`` and ``"not .json/.jsonl (not read)"``), so the run manifest (with paths) and the terminal
(counts) show them.
:func:`read_many` raises :class:`DataError` when no record at all is kept, listing per file how
many records were read and skipped (:meth:`LoadReport.summary`), or when a folder holds no file to read.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from nncift.data.json_text import array_elements_with_lines, finite
from nncift.files.atomic import atomic_write
from nncift.files.errors import UserError

END_OF_TEXT = "<|endoftext|>"
SUFFIXES = (".json", ".jsonl")
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
         "model": "assistant", "system": "system"}


class DataError(UserError, ValueError):
    """Bad input, with the place it was found: ``file:line: field: problem``."""

    def __init__(self, path: str | Path, line: int | None, field_name: str | None, problem: str):
        self.path = str(path)
        self.line = line
        self.field_name = field_name
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        what = f" field '{field_name}':" if field_name else ""
        super().__init__(f"{where}:{what} {problem}")


class EmptyFileError(DataError):
    """A file that holds no records at all: ``path: no records (empty file)``."""


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
    """What a reader did: records read, kept and skipped (by reason, with their places).

    ``read`` counts records parsed from the file; ``skipped`` also holds whole files that gave no
    records (``"empty file"``, ``"empty list"``) and, for a folder, entries that were not read.
    """

    path: str
    kept: int = 0
    read: int = 0
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
            "read": self.read,
            "kept": self.kept,
            "skipped": dict(self.skipped),
            "skipped_examples": self.skipped_places,
        }

    def summary(self) -> str:
        """One line: ``path: read N, kept K, skipped S (reason: n, ...)``."""
        reasons = ", ".join(f"{reason}: {n}" for reason, n in self.skipped.items())
        skipped = f", skipped {sum(self.skipped.values())} ({reasons})" if reasons else ""
        return f"{self.path}: read {self.read}, kept {self.kept}{skipped}"


_ABSENT = object()
"""A field that is not there at all (``None`` is a JSON null)."""


def _text(value: Any, path: Path, line: int, name: str, *, required: bool) -> str:
    if value is None or value is _ABSENT:
        if required:
            raise DataError(path, line, name, "missing" if value is _ABSENT else "null: expected a string")
        return ""
    if not isinstance(value, str):
        raise DataError(path, line, name, f"expected a string, got {type(value).__name__}")
    return value


def _from_messages(messages: Any, path: Path, line: int, name: str = "messages") -> tuple[str, str]:
    """(instruction, output) of a chat: turns as role/content or ShareGPT's from/value (see module doc)."""
    if not isinstance(messages, list) or not messages:
        raise DataError(path, line, name, "expected a non-empty list of {role, content}")
    turns: list[tuple[str, str]] = []
    for k, message in enumerate(messages):
        is_dict = isinstance(message, dict)
        role_key = "role" if is_dict and "role" in message else "from"
        content_key = "content" if is_dict and "content" in message else "value"
        if not is_dict or role_key not in message or content_key not in message:
            raise DataError(path, line, f"{name}[{k}]", "expected an object with role and content (or from and value)")
        role = ROLES.get(message[role_key].strip().lower()) if isinstance(message[role_key], str) else None
        if role is None:
            raise DataError(path, line, f"{name}[{k}].{role_key}",
                            f"unknown role {message[role_key]!r}; expected one of {', '.join(ROLES)}")
        turns.append((role, _text(message[content_key], path, line, f"{name}[{k}].{content_key}", required=True)))
    last = max((k for k, (role, _) in enumerate(turns) if role == "assistant"), default=None)
    if last is None:
        raise DataError(path, line, name, "no assistant turn to use as the output")
    prompt = "\n".join(text for role, text in turns[:last] if role in ("user", "system"))
    return prompt, turns[last][1]


def record_from_dict(obj: Any, path: Path, line: int, task: str | None = None) -> Record:
    """Turn one parsed JSON object into a :class:`Record`, or raise :class:`DataError`."""
    if not isinstance(obj, dict):
        raise DataError(path, line, None, f"expected a JSON object, got {type(obj).__name__}")
    if set(obj) == {"index", "score", "record"} and isinstance(obj["record"], dict):
        obj = obj["record"]  # a row of a run's selected.jsonl
    task = obj.get("task") if isinstance(obj.get("task"), str) else task
    if "messages" in obj or "conversations" in obj:
        name = "messages" if "messages" in obj else "conversations"
        instruction, output = _from_messages(obj[name], path, line, name)
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
        output = _text(obj.get(out_key, _ABSENT), path, line, out_key, required=True)
    else:
        keys = ", ".join(sorted(obj)[:8]) or "none"
        raise DataError(
            path, line, None,
            f"no known layout (keys: {keys}); expected instruction/output, instruction/response, "
            "prompt/completion, question/answer, messages or conversations",
        )
    return Record(instruction.strip(), extra.strip(), output.strip(), f"{path}:{line}", task, obj)


def skip_counts(reports: Iterable[LoadReport]) -> dict[str, int]:
    """Records skipped by reason, summed over load reports (what every manifest's ``counts.skipped`` shows)."""
    total: Counter = Counter()
    for report in reports:
        total.update(report.skipped)
    return dict(total)


def records_from(items: Iterable[Any], name: str = "<records>", *, task: str | None = None, sha256: str = "") -> tuple[list[Record], LoadReport]:
    """Records from :class:`Record` objects, plain dicts in any layout the readers accept, or a
    ``datasets.Dataset`` (its rows); errors name ``name:position:field``, empty outputs are counted skips.
    ``task``: the label of records without one; ``sha256``: the source's fingerprint for the report."""
    report = LoadReport(name, sha256=sha256)
    records = []
    for number, item in enumerate(items, start=1):
        report.read += 1
        row = dict(item) if hasattr(item, "keys") else item
        record = item if isinstance(item, Record) else record_from_dict(row, Path(name), number, task)
        if not record.output:
            report.skip("empty output", f"{name}:{number}")
            continue
        records.append(record)
    report.kept = len(records)
    return records, report


def _task_label(path: Path) -> str:
    return path.stem


def jsonl_lines(text: str) -> list[str]:
    """The lines of a JSONL text: split at ``\n`` only (``str.splitlines`` would also split inside strings
    at characters such as U+0085 or U+2028, which JSON writes unescaped with ``ensure_ascii=False``)."""
    return text.split("\n")


def _iter_json_objects(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line, parsed value) of each record. A lone surrogate (``"\\ud800"``, not Unicode text) is refused with its line;
    ``Infinity`` and ``NaN`` (which Python's reader accepts, JSON does not) become null, so written records stay valid JSON."""
    items = _parsed_values(path, text)
    surrogates, constants = "\\u" in text, "Infinity" in text or "NaN" in text
    if not (surrogates or constants):  # the usual case: nothing to look at
        yield from items
        return
    for line, item in items:
        try:
            if surrogates:
                json.dumps(item, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as error:
            raise DataError(path, line, None, f"a lone surrogate {error.object[error.start]!r} (half of a \\u escape pair): not Unicode text") from None
        yield line, finite(item) if constants else item


def _parsed_values(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    if path.suffix.lower() == ".jsonl":
        if text.lstrip().startswith("["):
            raise DataError(path, 1 + text[: len(text) - len(text.lstrip())].count("\n"), None,
                            "a JSON array, not one JSON object per line: name the file .json to read it as an array")
        for number, line in enumerate(jsonl_lines(text), start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(path, number, None, f"malformed JSON: {error.msg} (column {error.colno})") from None
            except RecursionError:
                raise DataError(path, number, None, "nested too deeply to read (arrays or objects inside each other)") from None
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(path, error.lineno, None, f"malformed JSON: {error.msg} (column {error.colno})") from None
    except RecursionError:
        deep = re.search(r"[\[{]{200}", text)
        raise DataError(path, 1 + text.count("\n", 0, deep.start() if deep else 0), None,
                        "nested too deeply to read (arrays or objects inside each other)") from None
    if isinstance(data, list):
        yield from array_elements_with_lines(text)
        return
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            yield from ((position, item) for position, item in enumerate(lists[0], start=1))
            return
    raise DataError(path, 1, None, f"expected a JSON list of records, got {type(data).__name__}")


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
        EmptyFileError: the file holds no records at all (``path: no records (empty file)``).
            A file whose records are all skipped is not an error: ``report.summary()`` says so.
    """
    records, report = _read_file(path, task)
    if report.read == 0 and not str(path).startswith("hf:"):
        raise EmptyFileError(path, None, None, f"no records ({', '.join(report.skipped)})")
    return records, report


def _read_file(path: str | Path, task: str | None) -> tuple[list[Record], LoadReport]:
    """:func:`read_records`, except that a file with no records is counted as skipped, not raised."""
    if str(path).startswith("hf:"):
        return _read_hf(str(path)[3:], task)
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "a broken link (its target does not exist)" if path.is_symlink() else "no such file")
    payload = path.read_bytes()
    report = LoadReport(str(path), sha256=hashlib.sha256(payload).hexdigest())
    try:
        text = payload.decode("utf-8-sig")  # a leading byte-order mark is dropped
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        raise DataError(path, line, None, f"not UTF-8 (byte {error.start})") from None
    label = task or _task_label(path)
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(path, None, None, "unknown file type: expected .json or .jsonl")
    records = []
    for line, obj in _iter_json_objects(path, text) if text.strip() else ():
        report.read += 1
        record = record_from_dict(obj, path, line, label)
        if not record.output:
            report.skip("empty output", f"{path}:{line}")
            continue
        records.append(record)
    if report.read == 0:
        report.skip("empty file" if not text.strip() else "empty list", str(path))
    report.kept = len(records)
    return records, report


def _read_hf(spec: str, task: str | None) -> tuple[list[Record], LoadReport]:
    try:
        import datasets  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise DataError(spec, None, None, "reading hf: data needs `pip install nncift[datasets]`") from None
    name, _, split = spec.partition(":")
    if not name.strip():
        raise DataError(f"hf:{spec}", None, None, "the data set name is empty: write hf:NAME or hf:NAME:SPLIT")
    try:
        table = datasets.load_dataset(name, split=split or "train")
    except (ConnectionError, OSError, ValueError) as error:  # offline: ConnectionError; unknown names: FileNotFoundError
        offline = isinstance(error, ConnectionError) or any(word in f"{type(error).__name__} {error}".lower() for word in ("offline", "reach"))
        raise DataError(f"hf:{spec}", None, None, "the Hugging Face hub is unreachable (offline) and the data set is not in the local cache"
                        if offline else f"cannot load the data set: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    return records_from(table, f"hf:{spec}", task=task or name, sha256=getattr(table, "_fingerprint", ""))


def _folder_files(folder: Path) -> tuple[list[Path], LoadReport]:
    """The folder's .json/.jsonl files (any case, sorted) and a report of the entries not read."""
    files: list[Path] = []
    report = LoadReport(str(folder))
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.suffix.lower() in SUFFIXES:
            files.append(entry)
        elif entry.is_symlink() and not entry.exists():
            report.skip("broken link (not read)", str(entry))
        else:
            report.skip("sub-folder (not read)" if entry.is_dir() else "not .json/.jsonl (not read)", str(entry))
    return files, report


def read_many(paths: Iterable[str | Path]) -> tuple[list[Record], list[LoadReport]]:
    """Read several files; a folder expands to its .json/.jsonl files (see the module doc).

    Returns:
        All kept records in order and one report per file (``report.summary()``: read, kept,
        skipped), plus, after a folder's files, a report of the folder's entries not read when
        there are any. Empty files are counted as skipped (``"empty file"``), not raised.

    Raises:
        DataError: as :func:`read_records`, or when no record at all is kept (the message gives
            each file's summary).
    """
    records: list[Record] = []
    reports: list[LoadReport] = []
    inputs = list(paths)
    for path in inputs:
        is_folder = not str(path).startswith("hf:") and Path(path).is_dir()
        files, folder_report = _folder_files(Path(path)) if is_folder else ([path], None)
        if folder_report is not None and not files:
            raise DataError(path, None, None, "the folder holds no .json/.jsonl files to read" + ("; skipped: " + "; ".join(
                f"{reason} {n} ({', '.join(folder_report.skipped_places[reason][:3])})" for reason, n in folder_report.skipped.items())
                if folder_report.skipped else " (it is empty)"))
        for file in files:
            file_records, report = _read_file(file, None)
            records.extend(file_records)
            reports.append(report)
        if folder_report is not None and folder_report.skipped:
            reports.append(folder_report)
    if reports and not records:
        where = str(inputs[0]) if len(inputs) == 1 else f"{len(inputs)} inputs"
        details = "; ".join(r.summary() for r in reports[:20]) + ("; ..." if len(reports) > 20 else "")
        raise DataError(where, None, None, f"no records kept: {details}")
    return records, reports


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write rows as JSON lines (UTF-8, no ASCII escaping), atomically. Valid JSON only: a non-finite number a record
    was read with (``Infinity``, ``NaN``: Python's reader accepts them) is written as ``null``."""
    def fill(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8") as handle:
            for row in rows:
                try:
                    line = json.dumps(row, ensure_ascii=False, allow_nan=False)
                except ValueError:  # Infinity or NaN somewhere in the row
                    line = json.dumps(finite(row), ensure_ascii=False, allow_nan=False)
                handle.write(line + "\n")

    atomic_write(path, fill)
