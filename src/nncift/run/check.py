"""A damaged file in a run folder is refused by name, before a command reads it (``score``, ``inspect``, ``select --add``).

Each file is read only as far as needed to see that it is whole: JSON files parse; ``.npy`` files have
a valid header and exactly the bytes it announces; ``network.safetensors`` has a valid header and the
bytes its tensors need; ``.jsonl`` files parse line by line and ``scores.csv`` has whole rows of the
header's width, both ending with a newline (a cut file almost always ends mid-line). The
``*.done.jsonl`` records of finished blocks may end torn (a kill while appending): they are not checked.
"""

from __future__ import annotations

import csv
import io
import json
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

from nncift.run.files import RunNotReady
from nncift.run.view import RunView


def _npy(path: Path) -> None:
    with path.open("rb") as handle:
        version = np.lib.format.read_magic(handle)
        shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(handle)
        offset = handle.tell()
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if path.stat().st_size != expected:
        raise ValueError(f"{path.stat().st_size} bytes, its header announces {expected}")


def _safetensors(path: Path) -> None:
    payload = path.read_bytes()
    if len(payload) < 8:
        raise ValueError("shorter than its header")
    (length,) = struct.unpack("<Q", payload[:8])
    header = json.loads(payload[8 : 8 + length].decode("utf-8"))
    end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    if len(payload) != 8 + length + end:
        raise ValueError(f"{len(payload)} bytes, its header announces {8 + length + end}")


def _lines(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise ValueError("the last line is cut off")
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                json.loads(line)
            except ValueError as error:
                raise ValueError(f"line {number}: {error}") from None


def _csv(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise ValueError("the last row is cut off")
    rows = list(csv.reader(io.StringIO(text)))
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise ValueError(f"row {number} has {len(row)} fields, the header {len(rows[0])}")


def check_run_files(folder: str | Path, names: Iterable[str] | None = None) -> None:
    """Raise :class:`~nncift.run.files.RunNotReady` naming the first damaged file of ``folder`` (all its files, or ``names``)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    paths = sorted(folder.iterdir()) if names is None else [folder / name for name in names]
    for path in paths:
        if path.name.startswith(".") or path.name.endswith(".done.jsonl") or not path.is_file():
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix == ".npy":
                _npy(path)
            elif path.suffix == ".safetensors":
                _safetensors(path)
            elif path.suffix == ".jsonl":
                _lines(path)
            elif path.suffix == ".csv":
                _csv(path)
        except (ValueError, KeyError, TypeError, IndexError, OSError, EOFError, struct.error) as error:
            raise RunNotReady(f"{path}: damaged or cut short ({error}); restore it, or run the select again into a new folder") from None


def recorded_inputs(view: RunView, key: str) -> list[str]:
    """A run's input paths (settings ``data`` or ``targets``) as they can be read from here, whatever the current directory:
    a relative path is taken from the working directory recorded in the run's manifest, else from the current one, else
    from a folder above the run folder (runs made before the working directory was recorded)."""
    cwd = view.working_directory
    resolved = []
    for given in map(str, getattr(view.settings, key)):
        path = Path(given)
        if given.startswith("hf:") or path.is_absolute():
            resolved.append(given)
            continue
        candidates = ([Path(cwd) / path] if cwd else []) + [path] + [parent / path for parent in view.folder.resolve().parents]
        resolved.append(str(next((c for c in candidates if c.exists()), candidates[0])))
    return resolved
