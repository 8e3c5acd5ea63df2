"""The run folder: settings, manifest, and resumable memory-mapped matrices.

Layout of a run folder::

    settings.json      the resolved settings of the run (a re-run must match them)
    manifest.json      settings, versions, inputs, counts, cost ledger (rewritten at the end)
    <name>.npy         float32 matrices, memory-mapped, NaN where not computed yet
    <name>.rows.npy    the target indices its rows stand for
    <name>.cols.npy    the candidate indices its columns stand for
    <name>.done.jsonl  one line per finished block (appended and fsynced after the block's values)
    network.safetensors + network.json   the trained InfluenceNetwork

Nothing is pickled. A block is marked done only after its values are flushed to disk, so a run killed
at any point resumes from the finished blocks and recomputes only the block in flight.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np


class SettingsMismatch(RuntimeError):
    """A run folder holds results made with other settings."""


@dataclass(frozen=True)
class Block:
    """A rectangle of a :class:`BlockMatrix`, in row/column *positions* (not pool indices)."""

    row_start: int
    row_stop: int
    col_start: int
    col_stop: int

    @property
    def key(self) -> str:
        """Stable identifier used in the done-record."""
        return f"{self.row_start}:{self.row_stop},{self.col_start}:{self.col_stop}"


def plan_blocks(n_rows: int, n_cols: int, block_rows: int, block_cols: int) -> list[Block]:
    """Tile an ``n_rows × n_cols`` matrix into blocks (row-major order)."""
    return [
        Block(r, min(r + block_rows, n_rows), c, min(c + block_cols, n_cols))
        for r in range(0, n_rows, block_rows)
        for c in range(0, n_cols, block_cols)
    ]


def _fsync_append(path: Path, line: str) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class BlockMatrix:
    """A pre-sized float32 ``.npy`` memory map filled block by block, with a record of finished blocks.

    Rows stand for ``row_indices`` (target indices) and columns for ``col_indices`` (candidate
    indices); both are stored beside the matrix and checked when the matrix is opened again.
    """

    def __init__(self, folder: Path, name: str, row_indices: np.ndarray, col_indices: np.ndarray):
        self.path = folder / f"{name}.npy"
        self.done_path = folder / f"{name}.done.jsonl"
        self.row_indices = np.asarray(row_indices, dtype=np.int64)
        self.col_indices = np.asarray(col_indices, dtype=np.int64)
        shape = (len(self.row_indices), len(self.col_indices))
        rows_path, cols_path = folder / f"{name}.rows.npy", folder / f"{name}.cols.npy"
        if self.path.exists():
            stored_rows, stored_cols = np.load(rows_path), np.load(cols_path)
            if not (np.array_equal(stored_rows, self.row_indices) and np.array_equal(stored_cols, self.col_indices)):
                raise SettingsMismatch(f"{self.path}: stored for other rows/columns; use a new run folder")
            self.array = np.load(self.path, mmap_mode="r+")
        else:
            np.save(rows_path, self.row_indices)
            np.save(cols_path, self.col_indices)
            tmp = folder / f".{name}.npy.tmp"
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
            array[:] = np.nan
            array.flush()
            del array
            tmp.replace(self.path)
            self.done_path.unlink(missing_ok=True)
            self.array = np.load(self.path, mmap_mode="r+")

    @property
    def shape(self) -> tuple[int, int]:
        """(n_rows, n_cols)."""
        return self.array.shape  # type: ignore[return-value]

    def done(self) -> set[str]:
        """Keys of finished blocks (a torn last line from a kill is ignored)."""
        if not self.done_path.exists():
            return set()
        keys = set()
        for line in self.done_path.read_text(encoding="utf-8").splitlines():
            try:
                keys.add(json.loads(line)["block"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
        return keys

    def pending(self, blocks: list[Block]) -> list[Block]:
        """The blocks not finished yet, in order."""
        finished = self.done()
        return [block for block in blocks if block.key not in finished]

    def write(self, block: Block, values: np.ndarray, **info: Any) -> None:
        """Store one block's values, flush them, then mark the block done."""
        expected = (block.row_stop - block.row_start, block.col_stop - block.col_start)
        if values.shape != expected:
            raise ValueError(f"block {block.key}: values of shape {values.shape}, expected {expected}")
        self.array[block.row_start : block.row_stop, block.col_start : block.col_stop] = values
        self.array.flush()
        _fsync_append(self.done_path, json.dumps({"block": block.key, **info}))

    def block_indices(self, block: Block) -> tuple[np.ndarray, np.ndarray]:
        """The target and candidate indices a block stands for."""
        return (self.row_indices[block.row_start : block.row_stop], self.col_indices[block.col_start : block.col_stop])

    def complete(self) -> bool:
        """True when no NaN is left."""
        return not bool(np.isnan(self.array).any())


_RUNTIME_KEYS = {"quiet", "out", "config", "device", "executor", "workers", "ray_address", "worker_cpus", "worker_gpus", "block_size"}
"""Settings that do not change results; they may differ between a run and its resumption."""


class RunStore:
    """A run folder: refuses to mix settings, and holds the run's artefacts."""

    def __init__(self, folder: str | Path, settings: dict[str, Any]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self._check_settings()

    def _check_settings(self) -> None:
        path = self.folder / "settings.json"
        if path.exists():
            stored = json.loads(path.read_text(encoding="utf-8"))
            differences = [
                f"{key}: stored {stored.get(key)!r}, now {self.settings.get(key)!r}"
                for key in sorted(set(stored) | set(self.settings))
                if key not in _RUNTIME_KEYS and stored.get(key) != self.settings.get(key)
            ]
            if differences:
                raise SettingsMismatch(
                    f"{self.folder} holds a run made with other settings ("
                    + "; ".join(differences) + "). Use another --out folder or the same settings."
                )
        else:
            self.write_json("settings.json", self.settings)

    def check_records(self, digest: str) -> None:
        """Refuse a folder whose stored results were computed from other records (``records.json``).

        Settings name the input files, not their contents: a changed file under the same name would
        otherwise resume from blocks computed on the old records.
        """
        path = self.folder / "records.json"
        if path.exists():
            stored = json.loads(path.read_text(encoding="utf-8")).get("records_sha256")
            if stored != digest:
                raise SettingsMismatch(
                    f"{self.folder} holds a run computed from other records (records_sha256: stored {stored}, now "
                    f"{digest}): the input files changed. Use another --out folder."
                )
        else:
            self.write_json("records.json", {"records_sha256": digest})

    def path(self, name: str) -> Path:
        """Path of an artefact in the run folder."""
        return self.folder / name

    def matrix(self, name: str, row_indices: np.ndarray, col_indices: np.ndarray) -> BlockMatrix:
        """Open or create a resumable block matrix."""
        return BlockMatrix(self.folder, name, row_indices, col_indices)

    def write_json(self, name: str, payload: Any) -> None:
        """Write JSON atomically."""
        tmp = self.folder / f".{name}.tmp"
        tmp.write_text(json.dumps(payload, indent=2, ensure_ascii=False, default=_json_default), encoding="utf-8")
        tmp.replace(self.folder / name)

    def read_json(self, name: str) -> Any:
        """Read a JSON artefact."""
        return json.loads((self.folder / name).read_text(encoding="utf-8"))

    def save_array(self, name: str, array: np.ndarray) -> Path:
        """Save an array as ``.npy`` atomically."""
        final = self.folder / name
        tmp = self.folder / f".{name}.tmp.npy"
        np.save(tmp, array)
        tmp.replace(final)
        return final

    def iter_files(self) -> Iterator[Path]:
        """Every file in the run folder."""
        return (p for p in sorted(self.folder.iterdir()) if p.is_file())


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
