"""The commit record of a run folder: which files make up its finished result (``commit.json``).

A selection writes its files one by one (each all or nothing, :func:`nncift.files.atomic.atomic_write`),
then, last, ``commit.json``: the SHA-256 of every result file (:data:`COMMITTED`), the settings and the
input files' hashes of the run. A folder is finished when its commit record matches its files: a
run killed between two writes (a re-selection half written, a network's weights without their
sidecar) leaves files that do not match, so ``select`` computes the selection again from the stored
influence values, and ``score``, ``inspect`` and ``select --add`` refuse the folder naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from nncift.files.atomic import is_temporary, write_json_atomic
from nncift.files.errors import SettingsMismatch
from nncift.run.store import RunStore

COMMIT_NAME = "commit.json"
FORMAT_VERSION = 1

COMMITTED = ("settings.json", "records.json", "q1.npy", "q1.rows.npy", "q1.cols.npy", "full.npy", "full.rows.npy", "full.cols.npy",
             "scores.npy", "scores.rows.npy", "scores.cols.npy", "rows.json", "row_embeddings.npy", "col_embeddings.npy",
             "network.safetensors", "network.json", "predicted.npy", "predicted_scores.npy",
             "selected.jsonl", "subset.jsonl", "scores.csv", "manifest.json")
"""The files of a run folder that its commit record covers, where they exist: the influence values, what later commands
read, and the results. Not covered: ``*.done.jsonl`` (the influence blocks' progress), the lock, temporary files."""


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB pieces)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def write_commit(folder: Path, settings: dict[str, Any], inputs: list[dict[str, Any]]) -> None:
    """Write ``commit.json`` (last, after every result file): the hashes of the :data:`COMMITTED` files present,
    the run's ``settings`` (as in ``settings.json``) and its ``inputs`` (path and sha256 of each input file);
    then remove stray temporary files of earlier, killed writes."""
    _sync_folder(folder)  # the result files' renames are on disk before the record that vouches for them
    files = {name: file_sha256(folder / name) for name in COMMITTED if (folder / name).is_file()}
    inputs = [{"path": str(i.get("path")), "sha256": str(i.get("sha256"))} for i in inputs if i.get("sha256")]
    write_json_atomic(folder / COMMIT_NAME, {"format_version": FORMAT_VERSION, "files": files, "settings": settings, "inputs": inputs})
    _sync_folder(folder)
    remove_temporaries(folder)


def remove_temporaries(folder: Path) -> None:
    """Remove the stray temporary files of atomic writes a kill interrupted (call it holding the folder's lock)."""
    for path in folder.iterdir():
        if is_temporary(path) and path.is_file():
            path.unlink(missing_ok=True)


def read_commit(folder: Path) -> dict[str, Any] | None:
    """The folder's commit record, or None when there is none or it is damaged."""
    try:
        record = json.loads((folder / COMMIT_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("files"), dict)
            and all(name in COMMITTED and isinstance(digest, str) for name, digest in record["files"].items())):
        return None
    return record


def commit_problem(folder: Path) -> str | None:
    """None when the folder's commit record matches its files; else one line naming the first file that does not."""
    path = folder / COMMIT_NAME
    if not path.exists():
        return f"{folder}: not a finished nncift run (no {COMMIT_NAME}: the run was interrupted, or made by an older nncift)"
    record = read_commit(folder)
    if record is None:
        return f"{path}: damaged (not a commit record)"
    for name, digest in record["files"].items():
        file = folder / name
        if not file.is_file():
            return f"{file}: missing (listed in {COMMIT_NAME})"
        if file_sha256(file) != digest:
            return f"{file}: does not match {COMMIT_NAME} (changed or damaged since the run finished, or the run was interrupted)"
    return None


def committed_settings(folder: Path) -> dict[str, Any] | None:
    """The settings of the folder's last finished selection (from its commit record, matching or not), or None."""
    record = read_commit(folder)
    settings = None if record is None else record.get("settings")
    return settings if isinstance(settings, dict) else None


def changed_inputs(folder: Path, inputs: list[dict[str, Any]]) -> str | None:
    """One line naming an input file whose sha256 differs from the one recorded when the folder's run finished, or None.

    ``inputs``: path and sha256 of each file read now. They are paired with the recorded ones by position when both
    list the same file names in the same order (the same files, perhaps named from another directory), else by path."""
    record = read_commit(folder)
    stored = [(str(i.get("path")), i.get("sha256")) for i in (record or {}).get("inputs") or () if isinstance(i, dict)]
    now = [(str(i.get("path")), i.get("sha256")) for i in inputs if i.get("sha256")]
    if [Path(path).name for path, _ in stored] == [Path(path).name for path, _ in now]:
        pairs = list(zip(stored, now))
    else:
        by_path = dict(stored)
        pairs = [((path, by_path[path]), (path, sha)) for path, sha in now if path in by_path]
    for (_, before), (path, after) in pairs:
        if before and after and before != after:
            return (f"{path}: changed since the run in {folder} finished (sha256 stored {str(before)[:12]}…, now {str(after)[:12]}…): "
                    "its results would be stale. Use another --out folder, or restore the file")
    return None


def check_inputs(store: RunStore, digest: str, inputs: list[dict[str, Any]]) -> None:
    """Refuse, before anything is written, a run folder of other records (:meth:`RunStore.check_records`) or whose finished
    run read input files that changed since (``inputs``: path and sha256 of each file read now): its results would be stale."""
    store.check_records(digest)
    stale = changed_inputs(store.folder, inputs)
    if stale is not None:
        raise SettingsMismatch(stale)


def _sync_folder(folder: Path) -> None:
    """Flush a folder's entries (renames) to disk, where the platform allows it."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
