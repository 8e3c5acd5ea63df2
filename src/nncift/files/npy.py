"""Raw access to float32 ``.npy`` matrices too large to map whole: positioned reads and writes, row tiles.

Used by :mod:`nncift.network.streaming` (predictions written in row blocks) and by
:mod:`nncift.selection.out_of_core` (selection read from disk).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np

TILE_BYTES = 32 << 20
"""Bytes of one tile read or written while streaming (bounds the driver's memory)."""


def npy_layout(path: str | Path) -> tuple[int, tuple[int, ...]]:
    """(byte offset of the data, shape) of a C-ordered float32 ``.npy`` file."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        offset = handle.tell()
    if fortran or dtype != np.float32:
        raise ValueError(f"{path}: expected a C-ordered float32 matrix, got {dtype} (fortran order {fortran})")
    return offset, tuple(shape)


def create_npy(path: Path, shape: tuple[int, int]) -> int:
    """Create a (sparse) float32 ``.npy`` of ``shape``; return its data offset."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    offset = int(array.offset)
    del array
    return offset


def pwrite(fd: int, values: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(values)).cast("B")  # type: ignore[arg-type]  # ndarray has the buffer protocol
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def pread(fd: int, out: np.ndarray, offset: int) -> np.ndarray:
    view = memoryview(out).cast("B")  # type: ignore[arg-type]  # ndarray has the buffer protocol
    while view:
        read = os.preadv(fd, [view], offset)
        if read == 0:
            raise EOFError(f"file ended at byte {offset}")
        view, offset = view[read:], offset + read
    return out


def row_blocks(path: str | Path, offset: int, n_rows: int, n_cols: int, stop_row: int | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield (start, stop, block) over rows [0, stop_row), each block read with pread (no mapping)."""
    stop_row = n_rows if stop_row is None else stop_row
    size = max(1, TILE_BYTES // max(4 * n_cols, 1))
    buffer = np.empty((min(size, max(stop_row, 1)), n_cols), dtype=np.float32)
    fd = os.open(path, os.O_RDONLY)
    try:
        for start in range(0, stop_row, size):
            stop = min(start + size, stop_row)
            yield start, stop, pread(fd, buffer[: stop - start], offset + start * n_cols * 4)
    finally:
        os.close(fd)
