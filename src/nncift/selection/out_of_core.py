"""Selection on a predicted influence matrix stored as ``.npy`` that need not fit in memory.

Orientation as everywhere: the predicted matrix ``S`` has rows = targets (items to be represented)
and columns = candidates (the pool), shape ``(n_rows, n_candidates)``, float32, stored as ``.npy``.

(:func:`nncift.network.streaming.predict_to_npy` writes it in row blocks.)

What each objective needs of ``S`` (:func:`select_from_npy`):

- ``topk`` with the default aggregation (the mean over rows): one pass over row blocks, summing
  columns in row order: O(n_candidates) memory. Functions with their own aggregation (LESS: the
  maximum over subtasks of per-subtask means) receive the read-only memory map instead.
- ``fl`` / ``flmi`` / ``flcg``: the greedy needs, for every evaluation of a candidate ``j``, its
  whole column ``S[:, j]`` against the per-row coverage (n_rows values): every evaluation touches
  every row. So the matrix is first transposed out of core into a candidate-major working file (the
  same layout :mod:`nncift.selection.greedy` builds in memory, with the same clipping at 0 and FLMI cap),
  then lazy greedy reads one candidate's column (n_rows floats) from disk per evaluation. FLMI needs
  the per-row cap ``η·max_q S[q, i]`` and FLCG the initial coverage ``ν·max_p S[p, i]`` over the
  target rows: one more streaming pass. Memory: coverage, heap and one tile; disk: one more copy of
  the pool-row part of ``S`` (deleted afterwards).

Picks, gains and objective are bit-identical to :mod:`nncift.selection.greedy` (same gain kernel and
summation order, same tie rule: the lowest candidate index), and top-k scores to
:meth:`PairwiseInfluence.candidate_scores`: tested in ``tests/test_streaming.py``.
"""

from __future__ import annotations

import heapq
import os
from pathlib import Path
from typing import Callable

import numpy as np

from nncift.files import npy as npy_files
from nncift.files.npy import create_npy, npy_layout, pread, pwrite, row_blocks
from nncift.selection.greedy import Selection, budget_to_count, fill_exhausted, top_k
from nncift.selection.kernels import all_gains, dense_gain

_MAP_ROWS = 4096
"""Rows of one short-lived read-only map while gathering a slab of candidates."""


def column_means(path: str | Path) -> np.ndarray:
    """float64 mean of each column of an .npy matrix, rows added in order (equal to ``np.mean(axis=0)``)."""
    offset, (n_rows, n_cols) = npy_layout(path)
    total = np.zeros(n_cols, dtype=np.float64)
    for start, _, block in row_blocks(path, offset, n_rows, n_cols):
        if start == 0 and len(block):
            total[:] = block[0]  # numpy's reduction starts from the first row, not from 0
            block = block[1:]
        for row in block:
            total += row
    return total / n_rows


def _row_caps(path: str | Path, first_row: int, scale: float) -> np.ndarray:
    """float32 ``scale · max(0, max_{q ≥ first_row} S[q, i])`` per column i (selection's ``_row_max``)."""
    offset, (n_rows, n_cols) = npy_layout(path)
    best = np.zeros(n_cols, dtype=np.float32)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = max(1, npy_files.TILE_BYTES // max(4 * n_cols, 1))
        for start in range(first_row, n_rows, size):
            stop = min(start + size, n_rows)
            block = pread(fd, np.empty((stop - start, n_cols), np.float32), offset + start * n_cols * 4)
            if not np.isfinite(block).all():
                raise ValueError(f"{path}: rows {start}:{stop} contain non-finite values")
            np.maximum(best, block.max(axis=0), out=best)
    finally:
        os.close(fd)
    return (scale * best.astype(np.float64)).astype(np.float32)


def _candidate_major(path: Path, work: Path, n_data_rows: int, cap: np.ndarray | None) -> None:
    """Write ``min(max(S[:n_data_rows, :], 0), cap)ᵀ`` (candidates × data rows) to ``work``, slab by slab.

    A slab of candidates is gathered from short-lived read-only maps of a few thousand rows each
    (unmapped right away, so they do not stay resident) and written with one ``pwrite``.
    """
    offset, (_, n_cols) = npy_layout(path)
    work_offset = create_npy(work, (n_cols, n_data_rows))
    slab_cols = max(1, min(n_cols, npy_files.TILE_BYTES // max(4 * n_data_rows, 1)))
    slab = np.empty((slab_cols, n_data_rows), dtype=np.float32)
    fd = os.open(work, os.O_WRONLY)
    try:
        for first in range(0, n_cols, slab_cols):
            last = min(first + slab_cols, n_cols)
            for start in range(0, n_data_rows, _MAP_ROWS):
                stop = min(start + _MAP_ROWS, n_data_rows)
                rows = np.memmap(path, dtype=np.float32, mode="r", offset=offset + start * n_cols * 4, shape=(stop - start, n_cols))
                part = np.array(rows[:, first:last])
                del rows
                if not np.isfinite(part).all():
                    raise ValueError(f"{path}: rows {start}:{stop} contain non-finite values")
                part = np.where(part > 0, part, np.float32(0.0))
                if cap is not None:
                    part = np.where(part > cap[start:stop, None], cap[start:stop, None], part)
                slab[: last - first, start:stop] = part.T
            pwrite(fd, slab[: last - first], work_offset + first * n_data_rows * 4)
    finally:
        os.close(fd)


def _lazy_greedy(work: Path, start: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lazy greedy over the candidate-major working file; returns (picks, gains, final coverage, initial gains).

    Same semantics as the in-memory kernel: exact initial gains, a max-heap of bounds (larger bound
    first, then lower index), a bound re-evaluated once per step, zero gains filled by
    :func:`nncift.selection.fill_exhausted` (the caller applies it with the initial gains returned).
    """
    offset, (n_cand, n_rows) = npy_layout(work)
    cover = start.astype(np.float32, copy=True)
    bounds = np.empty(n_cand, dtype=np.float64)
    for first, last, block in row_blocks(work, offset, n_cand, n_rows):
        bounds[first:last] = all_gains(block, cover)
    heap = [(-float(bound), j) for j, bound in enumerate(bounds)]
    heapq.heapify(heap)
    stamp = np.zeros(n_cand, dtype=np.int64)
    picks, gains = np.empty(k, np.int64), np.empty(k, np.float64)
    column = np.empty(n_rows, dtype=np.float32)
    fd = os.open(work, os.O_RDONLY)
    try:
        step = 0
        while step < k:
            top = heap[0][1]
            if stamp[top] != step:
                gain = dense_gain(pread(fd, column, offset + top * n_rows * 4), cover)[0]
                stamp[top] = step
                heapq.heapreplace(heap, (-gain, top))
                continue
            gain = -heapq.heappop(heap)[0]
            picks[step], gains[step] = top, gain
            step += 1
            if gain == 0.0:  # out of signal: the caller refills picks[step - 1:] (fill_exhausted)
                picks[step:], gains[step:] = -1, 0.0
                break
            pread(fd, column, offset + top * n_rows * 4)
            np.copyto(cover, column, where=column > cover)
    finally:
        os.close(fd)
    return picks, gains, cover, bounds


def select_from_npy(
    objective: str, path: str | Path, budget: float | int, *, n_pool_rows: int = 0, eta: float = 1.0,
    nu: float = 1.0, candidate_scores: Callable[[np.ndarray], np.ndarray] | None = None,
    workdir: str | Path | None = None,
) -> Selection:
    """Select on a predicted matrix stored as ``.npy`` without loading it (see the module docstring).

    Args:
        objective: ``fl``, ``flmi``, ``flcg`` or ``topk``.
        path: the (n_rows × n_candidates) float32 matrix.
        budget: fraction in (0, 1] or count of candidates.
        n_pool_rows: for ``flmi``/``flcg``: the first ``n_pool_rows`` rows are the pool (the data
            similarity, rows = pool items), the rest the query/existing set (used transposed).
        eta: FLMI magnification; nu: FLCG penalty.
        candidate_scores: for ``topk``, a function's own aggregation of the matrix (given the
            read-only memory map); default the column mean, streamed.
        workdir: folder of the temporary candidate-major file (default: beside ``path``).

    Returns:
        The same :class:`~nncift.selection.Selection` as the in-memory functions.
    """
    path = Path(path)
    _, (n_rows, n_cols) = npy_layout(path)
    if objective == "topk":
        scores = column_means(path) if candidate_scores is None else candidate_scores(np.load(path, mmap_mode="r"))
        return top_k(scores, budget)
    if objective not in ("fl", "flmi", "flcg"):
        raise ValueError(f"unknown objective '{objective}': choose fl, flmi, flcg or topk")
    k = budget_to_count(budget, n_cols)
    if k == 0:
        return Selection(np.zeros(0, np.int64), np.zeros(0, np.float64), 0.0, objective)
    n_data_rows = n_rows if objective == "fl" else n_pool_rows
    if objective != "fl" and n_data_rows != n_cols:
        raise ValueError(f"{objective}: the first {n_pool_rows} rows must be the {n_cols} pool items")
    cap = _row_caps(path, n_data_rows, eta) if objective == "flmi" else None
    start = _row_caps(path, n_data_rows, nu) if objective == "flcg" else np.zeros(n_data_rows, np.float32)
    work = Path(workdir or path.parent) / f".{path.stem}.by-candidate.npy"
    try:
        _candidate_major(path, work, n_data_rows, cap)
        picks, gains, cover, initial_gains = _lazy_greedy(work, start, k)
    finally:
        work.unlink(missing_ok=True)
    value = float(np.sum(cover.astype(np.float64) - start.astype(np.float64)))
    picks, n_positive = fill_exhausted(picks, gains, initial_gains)
    return Selection(picks, gains, value, objective, n_positive, np.asarray(initial_gains, dtype=np.float64))


def fits_in_memory(shape: tuple[int, int], *, share: float = 0.5) -> bool:
    """Whether in-memory selection on a float32 matrix of ``shape`` (about three copies) fits in ``share``
    of the memory available now (Linux ``MemAvailable``; True where unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        available = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return True
    return 3 * 4 * shape[0] * shape[1] <= share * available
