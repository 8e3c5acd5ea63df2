"""The files of a finished run that people, scripts and trainers read, and the stored view of a run.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nncift.data.records import Record, jsonl_lines
from nncift.files.atomic import atomic_write, save_npy_atomic, write_json_atomic, write_text_atomic
from nncift.files.errors import SettingsMismatch
from nncift.run.commit import changed_inputs, commit_problem
from nncift.run.store import read_json_file

SCORE_COLUMNS = ("index", "source_file", "line", "task", "value", "gain", "rank", "picked", "influence")
"""Columns of ``scores.csv``."""


class RunNotReady(ValueError):
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


@dataclass
class RunView:
    """A finished run folder, read back: its manifest and the artefacts later commands use."""

    folder: Path
    manifest: dict[str, Any]

    @property
    def settings(self) -> dict[str, Any]:
        """The run's settings as recorded in its manifest (stage by stage: ``settings["selection"]["budget"]``)."""
        from nncift.settings.stages import nest_flat_settings

        return nest_flat_settings(self.manifest["settings"])

    @property
    def pairwise(self) -> bool:
        """Whether the influence function is pairwise (a matrix) or pointwise (one score per record)."""
        return (self.folder / "predicted.npy").exists() or (self.folder / "full.npy").exists()

    def need(self, name: str, why: str) -> Path:
        """Path of artefact ``name``, or :class:`RunNotReady` saying what is missing and why it is needed."""
        path = self.folder / name
        if not path.exists():
            raise RunNotReady(f"{self.folder}: no {name} ({why}); it was made by an older nncift or not finished: "
                              "run the same select again into a new folder")
        return path

    def rows(self) -> dict[str, Any]:
        """``rows.json``: ``n_pool_rows`` and, per matrix row, its kind (pool/target), index, source and task."""
        return json.loads(self.need("rows.json", "what the matrix rows stand for").read_text(encoding="utf-8"))

    def embeddings(self, side: str) -> np.ndarray:
        """The stored ``row`` or ``col`` embeddings (float32, one per row / pool record)."""
        return np.load(self.need(f"{side}_embeddings.npy", "the network's inputs"))

    def matrix(self) -> np.ndarray:
        """The selection matrix (predicted, scaled, exact Q1 values kept; or the full exact matrix), memory-mapped."""
        name = "predicted.npy" if (self.folder / "predicted.npy").exists() else "full.npy"
        return np.load(self.need(name, "the influence matrix"), mmap_mode="r")

    def picks(self) -> tuple[np.ndarray, np.ndarray]:
        """(pool indices, gains or scores) of the run's selection, in pick order."""
        return read_picks(self.folder / "selected.jsonl")

    def scaling(self) -> tuple[float, float]:
        """(low, high) that map raw influence values to the [0, 1] the selection uses."""
        scaling = self.manifest.get("label_scaling") or {}
        return float(scaling.get("low", 0.0)), float(scaling.get("high", 1.0))

    def scores_table(self) -> list[dict[str, str]]:
        """The rows of the run's ``scores.csv`` (one per pool record, as strings)."""
        with self.need("scores.csv", "the per-record values").open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))

    def network_path(self) -> Path:
        """The run's trained InfluenceNetwork."""
        if (self.folder / "full.npy").exists() or (self.folder / "scores.npy").exists() and not (self.folder / "predicted_scores.npy").exists():
            raise RunNotReady(f"{self.folder}: a run of the full-matrix baseline has no InfluenceNetwork: use an NN-CIFT select run")
        return self.need("network.safetensors", "the trained InfluenceNetwork")


def read_picks(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(pool indices, gains or scores) of a ``selected.jsonl``, in pick order; :class:`RunNotReady` naming it when damaged."""
    try:
        rows = [json.loads(line) for line in jsonl_lines(path.read_text(encoding="utf-8")) if line.strip()]
        return (np.array([r["index"] for r in rows], dtype=np.int64), np.array([r["score"] for r in rows], dtype=np.float64))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise RunNotReady(f"{path}: damaged ({type(error).__name__}: {error}): run the same select again to repair it") from None


def open_run(folder: str | Path) -> RunView:
    """Read a finished run folder: its commit record must match its files (:mod:`nncift.run.commit`); :class:`RunNotReady`
    naming the folder or the first file that does not match otherwise."""
    path = Path(folder)
    if not path.is_dir():
        raise RunNotReady(f"{path}: no such run folder")
    manifest_path = path / "manifest.json"
    if not (manifest_path.is_file() and (path / "selected.jsonl").is_file()):
        raise RunNotReady(f"{path}: not a finished nncift run (no manifest.json / selected.jsonl): run select to the end first")
    problem = commit_problem(path)
    if problem is not None:
        raise RunNotReady(f"{problem}: run the same select again to finish or repair it")
    try:
        manifest = read_json_file(manifest_path)
    except ValueError as error:
        raise RunNotReady(str(error)) from None
    if "settings" not in manifest:
        raise RunNotReady(f"{manifest_path}: not an nncift run manifest (no 'settings')")
    return RunView(path, manifest)


def check_digest(view: RunView, pool: Sequence[Record], targets: Sequence[Record], reports: Sequence[Any] = ()) -> None:
    """Refuse records that are not the ones the run was computed from, and input files changed since it finished
    (``reports``: the :class:`~nncift.data.records.LoadReport` of each file read again)."""
    stored = read_json_file(view.folder / "records.json").get("records_sha256")
    if stored != records_digest(pool, targets):
        raise SettingsMismatch(f"{view.folder}: its input files ({', '.join(view.settings.get('data') or ())}) no longer hold the "
                               "records the run was computed from; restore them or select again")
    changed = changed_inputs(view.folder, [report.as_dict() for report in reports])
    if changed is not None:
        raise SettingsMismatch(changed)
