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

from .data import Record, jsonl_lines, write_jsonl
from .store import SettingsMismatch

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
    write_jsonl(folder / "selected.jsonl", [
        {"index": int(i), "score": float(s), "record": raw_record(pool[i])} for i, s in zip(indices, gains)])
    write_jsonl(folder / "subset.jsonl", [raw_record(pool[i]) for i in indices])
    rank = {int(i): (position + 1, float(g)) for position, (i, g) in enumerate(zip(indices, gains))}
    tmp = folder / ".scores.csv.tmp"
    with tmp.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(SCORE_COLUMNS)
        for j, record in enumerate(pool):
            file, line = split_source(record.source)
            picked = rank.get(j)
            value = "" if values is None or not np.isfinite(values[j]) else f"{values[j]:.6g}"
            writer.writerow([j, file, line, record.task or "", value, "" if picked is None else f"{picked[1]:.6g}",
                             "" if picked is None else picked[0], int(picked is not None), influence[j]])
    tmp.replace(folder / "scores.csv")


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
    _write_json(folder / "rows.json", {"n_pool_rows": n_pool_rows, "rows": described})
    if row_embeddings is not None and col_embeddings is not None:
        _save(folder / "row_embeddings.npy", row_embeddings)
        _save(folder / "col_embeddings.npy", col_embeddings)


def save_pool_embeddings(folder: Path, embeddings: np.ndarray) -> None:
    """Store a pointwise run's pool embeddings (for score, --add)."""
    _save(folder / "col_embeddings.npy", embeddings)


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
        from .settings import nest_flat_settings

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
        lines = jsonl_lines((self.folder / "selected.jsonl").read_text(encoding="utf-8"))
        rows = [json.loads(line) for line in lines if line.strip()]
        return (np.array([r["index"] for r in rows], dtype=np.int64), np.array([r["score"] for r in rows], dtype=np.float64))

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


def open_run(folder: str | Path) -> RunView:
    """Read a finished run folder (``manifest.json`` is written last); :class:`RunNotReady` otherwise."""
    path = Path(folder)
    if not path.is_dir():
        raise RunNotReady(f"{path}: no such run folder")
    manifest_path = path / "manifest.json"
    if not (manifest_path.is_file() and (path / "selected.jsonl").is_file()):
        raise RunNotReady(f"{path}: not a finished nncift run (no manifest.json / selected.jsonl): run select to the end first")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise RunNotReady(f"{manifest_path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or "settings" not in manifest:
        raise RunNotReady(f"{manifest_path}: not an nncift run manifest (no 'settings')")
    return RunView(path, manifest)


def check_digest(view: RunView, pool: Sequence[Record], targets: Sequence[Record]) -> None:
    """Refuse records that are not the ones the run was computed from."""
    stored = json.loads((view.folder / "records.json").read_text(encoding="utf-8")).get("records_sha256")
    if stored != records_digest(pool, targets):
        raise SettingsMismatch(f"{view.folder}: its input files ({', '.join(view.settings.get('data') or ())}) no longer hold the "
                               "records the run was computed from; restore them or select again")


def _save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    np.save(tmp, np.ascontiguousarray(array, dtype=np.float32))
    tmp.replace(path)


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
