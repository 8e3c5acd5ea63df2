"""The run folder: settings, manifest, and resumable memory-mapped matrices.

Layout of a run folder::

    settings.json      the resolved settings of the run (a re-run must match them)
    manifest.json      settings, versions, inputs, counts, cost ledger (rewritten at the end)
    <name>.npy         float32 matrices, memory-mapped, NaN where not computed yet
    <name>.rows.npy    the target indices its rows stand for
    <name>.cols.npy    the candidate indices its columns stand for
    <name>.done.jsonl  one line per finished block (appended and fsynced after the block's values)
    network.safetensors + network.json   the trained InfluenceNetwork
    commit.json        written last: the hashes of the finished result's files (:mod:`nncift.run.commit`)
    .lock              while a run is in progress: {pid, host, started} of the one process writing the folder

One writer per run folder: :class:`RunStore` creates ``.lock`` with ``O_CREAT | O_EXCL`` (atomic on local
file systems and on NFSv3 and later, so on a cluster's shared folders too) and removes it when the run ends.
Another process gets :class:`RunFolderInUse`; a lock left by a process that no longer exists on the same
host is stale and taken over. Within one process the lock is re-entrant.

Nothing is pickled. Every file is written whole or not at all (:func:`nncift.files.atomic.atomic_write`). A block is
marked done only after its values are flushed to disk, so a run killed at any point resumes from the finished blocks
and recomputes only the block in flight.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from nncift.files.atomic import atomic_write, save_npy_atomic, write_json_atomic
from nncift.files.errors import SettingsMismatch, UserError


class RunFolderError(UserError, ValueError):
    """The run folder cannot be created or written: a file in the way, no permission, a read-only file system."""


class RunFolderInUse(UserError, RuntimeError):
    """Another live process holds the run folder's lock."""


LOCK_NAME = ".lock"
_held: dict[Path, int] = {}
"""Lock files this process holds, with how many open :class:`RunStore` objects hold each."""


def make_run_folder(folder: str | Path) -> Path:
    """Create ``folder`` and its parents, or raise :class:`RunFolderError` with a one-line reason naming the path."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunFolderError(f"cannot use {path} as the run folder: it is a file") from None
    except NotADirectoryError:
        raise RunFolderError(f"cannot create the run folder {path}: a part of the path is a file") from None
    except OSError as error:
        raise RunFolderError(f"cannot create the run folder {path}: {error.strerror or error}") from None
    return path


def _lock_owner(path: Path) -> tuple[str, dict[str, Any] | None]:
    """(text, {pid, host, started}) of a lock file; None when gone, being written, or torn by a kill."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return "", None
    try:
        owner = json.loads(text)
    except ValueError:
        return text, None  # torn: the text is kept, so that a stale torn lock can be taken over
    return text, owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def _remove_stale(path: Path, seen: str) -> None:
    """Remove the stale lock whose text was ``seen``, unless another process took it over meanwhile
    (the file is moved aside atomically first; a fresh lock moved by mistake is put back)."""
    aside = path.with_name(f"{path.name}.stale.{socket.gethostname()}.{os.getpid()}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    if aside.read_text(encoding="utf-8") != seen:
        with contextlib.suppress(OSError):
            os.link(aside, path)  # fails if a third process already holds the name: then that one wins
    aside.unlink(missing_ok=True)


def acquire_lock(folder: Path) -> Path:
    """Take the lock of run folder ``folder`` (re-entrant within this process) and return the lock file's path.

    Raises :class:`RunFolderInUse` naming the PID and host of the live process that holds it (or of a
    process on another host, whose liveness cannot be checked), :class:`RunFolderError` when the folder
    cannot be written. A lock of a dead process on this host is taken over, with a message on stderr.
    """
    path = Path(os.path.realpath(folder / LOCK_NAME))
    if path in _held:
        _held[path] += 1
        return path
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for _ in range(100):
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            text, owner = _lock_owner(path)
            if owner is None:  # being written by its creator (wait), or torn long ago by a kill (stale)
                if not path.exists() or time.time() - path.stat().st_mtime < 10:
                    time.sleep(0.05)
                    continue
                print(f"nncift: taking over a torn lock (unreadable, untouched for 10 s or more): {path}", file=sys.stderr)
            elif (owner.get("host"), owner["pid"]) == (me["host"], me["pid"]):  # left by an earlier process with our PID
                break
            elif owner.get("host") != me["host"] or _alive(owner["pid"]):
                raise RunFolderInUse(_in_use_message(owner, folder, path, str(me["host"]))) from None
            else:
                print(f"nncift: taking over the stale lock of PID {owner['pid']} on {owner.get('host')} (no such process): {folder}",
                      file=sys.stderr)
            _remove_stale(path, text)
            continue
        except OSError as error:
            raise RunFolderError(f"cannot write in the run folder {folder}: {error.strerror or error}") from None
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(me, handle)
            handle.flush()
            os.fsync(handle.fileno())
        break
    else:
        raise RunFolderInUse(f"run folder in use: could not take its lock {path}")
    _held[path] = 1
    return path


def _in_use_message(owner: dict[str, Any], folder: Path, path: Path, host: str) -> str:
    """Why the lock is not taken, and how to clear it when its holder is not an nncift run (another program that got the PID)."""
    message = f"run folder in use by PID {owner['pid']} on {owner.get('host')}: {folder}"
    if owner.get("host") != host:
        return message + f" (if that process is gone, delete {path})"
    try:
        command = Path(f"/proc/{owner['pid']}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        command = ""
    if command and "nncift" not in command and "python" not in command.lower():
        return message + f"; that PID is now another program ({command[:60]}), so the lock was left by a run that ended: delete {path}"
    return message + f" (if no nncift command is writing this folder, delete {path})"


def release_lock(path: Path) -> None:
    """Give back one hold of a lock from :func:`acquire_lock`; the last one removes the file (if it is still ours)."""
    if _held.get(path, 0) > 1:
        _held[path] -= 1
        return
    _held.pop(path, None)
    _, owner = _lock_owner(path)
    if owner is not None and (owner.get("host"), owner["pid"]) == (socket.gethostname(), os.getpid()):
        path.unlink(missing_ok=True)


@atexit.register
def _release_all() -> None:
    """At exit, the locks of stores never closed (a forked child removes none: the PID in the file is its parent's)."""
    for path in list(_held):
        _held[path] = 1
        release_lock(path)


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
    """Append one line and flush it to disk (a block's done record)."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _nan_matrix(path: Path, shape: tuple[int, int]) -> None:
    """A float32 ``.npy`` of ``shape`` full of NaN (nothing computed yet)."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    array[:] = np.nan
    array.flush()
    del array


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
            self.array = self._open_stored(rows_path, cols_path, shape)
        else:
            save_npy_atomic(rows_path, self.row_indices)
            save_npy_atomic(cols_path, self.col_indices)
            atomic_write(self.path, lambda tmp: _nan_matrix(tmp, shape))
            self.done_path.unlink(missing_ok=True)
            self.array = np.load(self.path, mmap_mode="r+")

    def _open_stored(self, rows_path: Path, cols_path: Path, shape: tuple[int, int]) -> np.memmap:
        """The stored matrix, memory-mapped, after checking it stands for these rows and columns (damage is named)."""
        for part in (rows_path, cols_path, self.path):
            try:
                stored = np.load(part, mmap_mode="r")
            except (OSError, ValueError, EOFError) as error:
                raise RunFolderError(f"{part}: damaged ({error}); delete {self.path} to compute this influence block again, "
                                     "or use a new run folder") from None
            if part == rows_path and not np.array_equal(stored, self.row_indices) or part == cols_path and not np.array_equal(stored, self.col_indices):
                raise SettingsMismatch(f"{self.path}: stored for other rows/columns; use a new run folder")
            if part == self.path and (stored.shape != shape or stored.dtype != np.float32):
                raise RunFolderError(f"{self.path}: damaged (shape {stored.shape}, expected {shape}); delete it to compute this "
                                     "influence block again, or use a new run folder")
        return np.load(self.path, mmap_mode="r+")

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


RUNTIME_KEYS = {"quiet", "out", "config", "device", "executor"}
"""Settings that do not change results (``executor`` is a whole stage: where and in what blocks); they may differ between a run and
its resumption."""


def _leaves(key: str, stored: Any, now: Any) -> list[tuple[str, Any, Any]]:
    """(name, stored, now) of each changed setting under ``key``: a stage's fields by dotted name (``selection.budget``)."""
    if isinstance(stored, dict) and isinstance(now, dict):
        return [(f"{key}.{name}", stored.get(name), now.get(name)) for name in sorted(set(stored) | set(now)) if stored.get(name) != now.get(name)]
    return [(key, stored, now)]


def _with_added(stored: dict[str, Any], added: dict[str, Any]) -> dict[str, Any]:
    """``stored`` settings with each ``added`` one (``key`` or ``stage.field``) filled in where the folder lacks it."""
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in stored.items()}
    for name, value in added.items():
        stage, _, leaf = name.partition(".")
        if not leaf:
            out.setdefault(stage, value)
        elif isinstance(out.get(stage), dict):
            out[stage].setdefault(leaf, value)
    return out


class RunStore:
    """A run folder: refuses to mix settings, holds the run's artefacts and (``exclusive``) the folder's lock.

    Use it as a context manager, or call :meth:`close`, to release the lock when the run ends; locks
    still held when the process exits are released then.
    """

    def __init__(self, folder: str | Path, settings: dict[str, Any], *, exclusive: bool = True,
                 rerun_keys: frozenset[str] = frozenset(), check: Callable[["RunStore"], None] | None = None,
                 added: dict[str, Any] | None = None):
        """``check``: further refusals (records, input files), made after the settings are compared and before they are written.
        ``added``: settings (``key`` or ``stage.field``) newer than some folders, at the value that reproduces what those
        folders did; a stored folder without one is compared as if it held that value (so it still resumes)."""
        self.folder = make_run_folder(folder)
        self.settings = settings
        self.added = dict(added or {})
        self.rerun_keys = rerun_keys
        """Settings that may differ from the stored ones: the results they affect are recomputed (re-selection)."""
        self.changed: dict[str, Any] = {}
        """The ``rerun_keys`` that differ from the folder's stored settings: ``{key: {"stored", "now"}}``."""
        self._lock = acquire_lock(self.folder) if exclusive else None
        try:
            rewrite = self._check_settings()
            if check is not None:
                check(self)
            if rewrite:
                self.write_json("settings.json", self.settings)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run folder's lock (once; the files stay)."""
        if self._lock is not None:
            release_lock(self._lock)
            self._lock = None

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _check_settings(self) -> bool:
        """Refuse other settings (but the ``rerun_keys``); whether ``settings.json`` is to be written (new or changed)."""
        path = self.folder / "settings.json"
        if path.exists():
            stored = _with_added(read_json_file(path), self.added)
            differing = [key for key in sorted(set(stored) | set(self.settings))
                         if key not in RUNTIME_KEYS and stored.get(key) != self.settings.get(key)]
            refused = [f"{path}: stored {old!r}, now {new!r}" for key in differing if key not in self.rerun_keys
                       for path, old, new in _leaves(key, stored.get(key), self.settings.get(key))]
            if refused:
                allowed = f" (only {', '.join(sorted(self.rerun_keys))} may change in a finished folder)" if self.rerun_keys else ""
                raise SettingsMismatch(
                    f"{self.folder} holds a run made with other settings ("
                    + "; ".join(refused) + f"). Use another --out folder or the same settings{allowed}."
                )
            self.changed = self.changes_since(stored)
            return bool(self.changed)
        return True

    def changes_since(self, stored: dict[str, Any]) -> dict[str, Any]:
        """The ``rerun_keys`` settings that differ between ``stored`` and this run's: ``{dotted name: {"stored", "now"}}``."""
        return {path: {"stored": old, "now": new} for key in sorted(self.rerun_keys) if stored.get(key) != self.settings.get(key)
                for path, old, new in _leaves(key, stored.get(key), self.settings.get(key))}

    def check_records(self, digest: str) -> None:
        """Refuse a folder whose stored results were computed from other records (``records.json``).

        Settings name the input files, not their contents: a changed file under the same name would
        otherwise resume from blocks computed on the old records.
        """
        path = self.folder / "records.json"
        if path.exists():
            stored = read_json_file(path).get("records_sha256")
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
        write_json_atomic(self.folder / name, payload)

    def read_json(self, name: str) -> Any:
        """Read a JSON artefact (a damaged one is named: :class:`RunFolderError`)."""
        return read_json_file(self.folder / name)

    def save_array(self, name: str, array: np.ndarray) -> Path:
        """Save an array as ``.npy`` atomically."""
        return save_npy_atomic(self.folder / name, array)

    def iter_files(self) -> Iterator[Path]:
        """Every file in the run folder."""
        return (p for p in sorted(self.folder.iterdir()) if p.is_file() and p.name != LOCK_NAME)


def read_json_file(path: Path) -> Any:
    """A run file's JSON object; :class:`RunFolderError` naming the file when it is damaged (truncated, not an object)."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise RunFolderError(f"{path}: damaged, not valid JSON ({error}); restore it or use a new run folder") from None
    if not isinstance(payload, dict):
        raise RunFolderError(f"{path}: damaged, not a JSON object; restore it or use a new run folder")
    return payload
