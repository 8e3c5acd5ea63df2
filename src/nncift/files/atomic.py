"""Writing a file all or nothing: the one helper every run file goes through (:func:`atomic_write`).

A temporary file beside the target is filled, flushed to disk and renamed over the target, so a
process killed at any point leaves the old file or the new one, never a torn one. The temporary
names are hidden and per process (``.scores.1234.tmp.csv``): a stray one left by a kill is ignored
by every reader and removed when the run folder's next result is committed (:mod:`nncift.run.commit`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np


def temporary_name(path: Path) -> Path:
    """The temporary file :func:`atomic_write` fills before renaming it to ``path``: hidden, per process, same suffix
    (``.scores.1234.tmp.csv``); :func:`is_temporary` recognises it (and a stray one left by a kill)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary file of an atomic write (this version's, or an older ``NAME.tmp``)."""
    return path.name.endswith(".tmp") or (path.name.startswith(".") and ".tmp" in path.name)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Write ``path`` all or nothing: ``write(tmp)`` fills a temporary file beside it, which is flushed to disk and
    renamed over ``path`` (a kill at any point leaves the old file, or the new one, never a torn one).

    The one helper for every file a run writes whole (JSON, ``.npy``, CSV, JSON lines, safetensors, copies).
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        descriptor = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, payload: Any, *, indent: int | None = 2) -> Path:
    """:func:`atomic_write` of a JSON document (numpy values and paths as plain values, :func:`json_default`)."""
    return write_text_atomic(path, json.dumps(payload, indent=indent, ensure_ascii=False, default=json_default))


def save_npy_atomic(path: str | Path, array: np.ndarray) -> Path:
    """:func:`atomic_write` of an ``.npy`` array."""
    return atomic_write(path, lambda tmp: np.save(tmp, array))


def json_default(value: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy scalars (and bools) and arrays as Python values, paths as strings."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
