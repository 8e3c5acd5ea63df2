"""The files of a finished run that people, scripts and trainers read (read back by :mod:`nncift.run.view`).

Written by every selection (``select``, ``select --add``, the full-matrix baseline):

- ``selected.jsonl``: one line per pick, in pick order: ``{"index", "score", "record"}`` (pool index,
  marginal gain or top-k score, the record as read);
- ``subset.jsonl``: the chosen records exactly as they were read (their own fields, in their own
  order), in pick order: load it with any trainer (``datasets.load_dataset("json", data_files=...)``);
- ``scores.csv``: one row per pool record: ``index, source_file, line, task, value, gain, rank,
  picked, influence``. ``value`` is what the record is worth on its own under the run's objective
  (facility location: its singleton value f({j}); top-k: its aggregated score), ``gain`` its marginal
  gain when it was picked (``rank`` = 1 for the first pick), ``influence`` where its values came from:
  ``exact`` (computed by the influence function), ``partly exact`` (pairwise: exact for the sampled
  targets, predicted for the others) or ``predicted`` (by the InfluenceNetwork).

Kept for later commands (``score``, ``select --add``, ``inspect``), so they need neither the language
model nor the input files: ``rows.json`` (what each matrix row stands for), ``row_embeddings.npy`` and
``col_embeddings.npy`` (the network's inputs), besides the network, ``q1.npy`` and ``predicted.npy``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nncift.data.records import Record, jsonl_lines
from nncift.files.atomic import atomic_write, save_npy_atomic, write_json_atomic, write_text_atomic
from nncift.files.errors import UserError

SCORE_COLUMNS = ("index", "source_file", "line", "task", "value", "gain", "rank", "picked", "influence")
"""Columns of ``scores.csv``."""


class RunNotReady(UserError, ValueError):
    """The folder is not a finished nncift run (or lacks what a command needs)."""


def split_source(source: str) -> tuple[str, str]:
    """``("file", "line")`` of a record's ``"file:line"`` source ("" where unknown)."""
    file, sep, line = source.rpartition(":")
    return (file, line) if sep and line.isdigit() else (source, "")


def raw_record(record: Record) -> dict[str, Any]:
    """The record as it was read (its own fields, in order), or its parsed fields when it was built in code."""
    return record.raw or {"instruction": record.instruction, "input": record.input, "output": record.output}


def write_selection_files(folder: Path, pool: Sequence[Record], indices: np.ndarray, gains: np.ndarray, *,
                          values: np.ndarray | None, influence: Sequence[str]) -> None:
    """Write ``selected.jsonl``, ``subset.jsonl`` and ``scores.csv`` (see the module docstring)."""
    indices = np.asarray(indices, dtype=np.int64)
    write_jsonl_atomic(folder / "selected.jsonl", [
        {"index": int(i), "score": float(s), "record": raw_record(pool[i])} for i, s in zip(indices, gains)])
    write_jsonl_atomic(folder / "subset.jsonl", [raw_record(pool[i]) for i in indices])
    rank = {int(i): (position + 1, float(g)) for position, (i, g) in enumerate(zip(indices, gains))}

    def write_table(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(SCORE_COLUMNS)
            for j, record in enumerate(pool):
                file, line = split_source(record.source)
                picked = rank.get(j)
                value = "" if values is None or not np.isfinite(values[j]) else f"{values[j]:.6g}"
                writer.writerow([j, file, line, record.task or "", value, "" if picked is None else f"{picked[1]:.6g}",
                                 "" if picked is None else picked[0], int(picked is not None), influence[j]])

    atomic_write(folder / "scores.csv", write_table)


def write_jsonl_atomic(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """JSON lines (UTF-8, no ASCII escaping), written all or nothing."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def column_origin(n_pool: int, *, exact: np.ndarray | None = None, partly: np.ndarray | None = None) -> list[str]:
    """Per pool record, where its values come from: ``exact`` / ``partly exact`` / ``predicted``."""
    origin = np.full(n_pool, "predicted", dtype=object)
    if partly is not None:
        origin[np.asarray(partly, dtype=np.int64)] = "partly exact"
    if exact is not None:
        origin[np.asarray(exact, dtype=np.int64)] = "exact"
    return list(origin)


def save_rows(folder: Path, rows: Sequence[Record], n_pool_rows: int, row_embeddings: np.ndarray | None = None,
              col_embeddings: np.ndarray | None = None) -> None:
    """Store what a pairwise run's rows stand for and (NN-CIFT runs) both sides' embeddings (for score, --add, inspect)."""
    described = [{"kind": "pool" if r < n_pool_rows else "target", "index": r if r < n_pool_rows else r - n_pool_rows,
                  "source": record.source, "task": record.task} for r, record in enumerate(rows)]
    write_json_atomic(folder / "rows.json", {"n_pool_rows": n_pool_rows, "rows": described}, indent=None)
    if row_embeddings is not None and col_embeddings is not None:
        save_npy_atomic(folder / "row_embeddings.npy", np.ascontiguousarray(row_embeddings, dtype=np.float32))
        save_npy_atomic(folder / "col_embeddings.npy", np.ascontiguousarray(col_embeddings, dtype=np.float32))


def save_pool_embeddings(folder: Path, embeddings: np.ndarray) -> None:
    """Store a pointwise run's pool embeddings (for score, --add)."""
    save_npy_atomic(folder / "col_embeddings.npy", np.ascontiguousarray(embeddings, dtype=np.float32))


def records_digest(pool: Sequence[Record], targets: Sequence[Record]) -> str:
    """SHA-256 of the pool's and the targets' texts (instruction, input, output), in order."""
    digest = hashlib.sha256()
    for name, group in (("pool", pool), ("targets", targets)):
        digest.update(name.encode())
        for record in group:
            digest.update(json.dumps([record.instruction, record.input, record.output], ensure_ascii=False).encode())
    return digest.hexdigest()


def read_picks(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(pool indices, gains or scores) of a ``selected.jsonl``, in pick order; :class:`RunNotReady` naming it when damaged."""
    try:
        rows = [json.loads(line) for line in jsonl_lines(path.read_text(encoding="utf-8")) if line.strip()]
        return (np.array([r["index"] for r in rows], dtype=np.int64), np.array([r["score"] for r in rows], dtype=np.float64))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise RunNotReady(f"{path}: damaged ({type(error).__name__}: {error}): run the same select again to repair it") from None
