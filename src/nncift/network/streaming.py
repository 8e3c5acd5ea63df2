"""Predicted influence matrices that need not fit in memory, written in row blocks.

Orientation as everywhere: the predicted matrix ``S`` has rows = targets (items to be represented)
and columns = candidates (the pool), shape ``(n_rows, n_candidates)``, float32, stored as ``.npy``.

:func:`predict_to_npy` writes it one row block at a time (blocks computed by any executor: in this
process, or on Ray actors), replacing the sampled block Q1 by its exact values. The driver holds at
most the blocks in flight, never the matrix; blocks are written with ``pwrite`` (not through a
memory map), so they do not stay in the driver's resident memory either. Selection on it, in memory
or from disk, is :func:`nncift.selection.choose_subset`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from nncift.files.atomic import atomic_write
from nncift.files.npy import create_npy, pwrite
from nncift.network.paper import predict_pairwise

_PREDICT_PAIRS = 1 << 24
"""Pairs per prediction task (64 MiB of float32): large enough that recomputing the candidates'
first-layer part per task (cost ∝ d / rows of the task) stays small."""


def prediction_blocks(n_rows: int, n_cols: int, block_rows: int | None = None) -> list[tuple[int, int]]:
    """Row blocks ``(start, stop)`` of a prediction: ``block_rows`` rows each (default ~16M pairs, ≥ 64 rows)."""
    size = block_rows or max(64, _PREDICT_PAIRS // max(n_cols, 1))
    return [(start, min(start + size, n_rows)) for start in range(0, n_rows, size)]


def predict_to_npy(
    network: Any, row_embeddings: np.ndarray, col_embeddings: np.ndarray, path: str | Path, *,
    executor: Any = None, known: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    block_rows: int | None = None, progress: bool = False, self_cols: np.ndarray | None = None,
) -> Path:
    """Write the predicted (n_rows × n_cols) float32 matrix to ``path`` in row blocks.

    Args:
        network: a pairwise InfluenceNetwork.
        row_embeddings: (n_rows, d) embeddings of the rows (targets).
        col_embeddings: (n_cols, d) embeddings of the columns (candidates).
        path: the ``.npy`` file to write (replaced when complete: a kill leaves the old one).
        executor: where the blocks are computed (:meth:`Executor.predict_rows`); default in process.
        known: ``(seen_rows, seen_cols, labels)`` with labels (len(seen_rows), len(seen_cols)): exact
            values that replace the prediction there (NaN labels keep the prediction).
        block_rows: rows per block (default ~16M pairs per block); the result does not depend on it.
        progress: show a progress bar.
        self_cols: per row, the column of the same record (−1: none), for the network's self-pair term.
    """
    path = Path(path)
    shape = (len(row_embeddings), len(col_embeddings))
    row_position = np.full(shape[0], -1, dtype=np.int64)
    if known is not None:
        row_position[np.asarray(known[0])] = np.arange(len(known[0]))

    def fill(target: Path) -> None:  # a temporary file, renamed to ``path`` when complete
        offset = create_npy(target, shape)
        fd = os.open(target, os.O_WRONLY)
        try:
            def write(start: int, stop: int, values: np.ndarray) -> None:
                if values.shape != (stop - start, shape[1]):
                    raise ValueError(f"rows {start}:{stop}: predicted block of shape {values.shape}, expected {(stop - start, shape[1])}")
                positions = row_position[start:stop]
                if known is not None and (positions >= 0).any():
                    values = np.array(values, dtype=np.float32)  # results from Ray are read-only
                    for local in np.flatnonzero(positions >= 0):
                        labels = known[2][positions[local]]
                        values[local, known[1]] = np.where(np.isfinite(labels), labels, values[local, known[1]])
                pwrite(fd, values.astype(np.float32, copy=False), offset + start * shape[1] * 4)

            blocks = prediction_blocks(*shape, block_rows)
            if executor is None:
                predict_rows_in_process(network, row_embeddings, col_embeddings, blocks, write, progress=progress, self_cols=self_cols)
            else:
                executor.predict_rows(network, row_embeddings, col_embeddings, blocks, write, progress=progress, self_cols=self_cols)
        finally:
            os.close(fd)

    return atomic_write(path, fill)


def predict_rows_in_process(
    network: Any, row_embeddings: np.ndarray, col_embeddings: np.ndarray, row_blocks: list[tuple[int, int]],
    write: Callable[[int, int, np.ndarray], None], *, progress: bool = True, self_cols: np.ndarray | None = None,
) -> None:
    """Predict row blocks ``(start, stop)`` one after another in this process and hand each to ``write(start, stop,
    values)`` (float32, (stop − start) × n_cols); ``self_cols``: per row, the column of the same record (−1: none)."""
    for start, stop in tqdm(row_blocks, desc="predict", unit="block", disable=not progress):
        own = None if self_cols is None else self_cols[start:stop]
        write(start, stop, predict_pairwise(network, row_embeddings[start:stop], col_embeddings, self_cols=own))
