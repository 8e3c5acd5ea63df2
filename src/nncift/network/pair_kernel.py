"""The compiled kernel of the paper network's one-hidden-layer prediction (numba, optional).

``out[i, j] = Σ_k w2[k]·relu(A[i, k] + B[j, k]) + b2`` over cache-sized tiles of pairs, where
``A`` and ``B`` are the two halves of the split first layer (:func:`nncift.network.paper.predict_pairwise`).
Without numba, :data:`pair_kernel` is None and every network takes the torch path.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

__all__ = ["TILE_COLS", "TILE_ROWS", "numba_available", "pair_kernel", "pair_kernel_py", "warm_up_kernel"]

TILE_ROWS = 64
"""Rows of one numba tile: its 64 rows of A (h=100: 25 KiB) stay in cache while the tile's columns sweep by."""
TILE_COLS = 128
"""Columns of one numba tile: its 128 rows of B (h=100: 50 KiB) stay in L2 for all 64 rows of the tile
(A tile + B tile ≈ 75 KiB per core, far below the 1 MiB L2; measured 64×128 ≥ 16×256 and 8×1024)."""

_numba: Any
try:  # numba is optional: without it every network takes the torch path
    import numba as _numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    _numba = None


def numba_available() -> bool:
    """Whether the compiled one-hidden-layer kernel can be used."""
    return _numba is not None


def pair_kernel_py(a: np.ndarray, b: np.ndarray, w2: np.ndarray, b2: np.float32, out: np.ndarray, tile_rows: int, tile_cols: int) -> None:
    """``out[i, j] = Σ_k w2[k]·max(a[i, k] + b[j, k], 0) + b2`` for a (R, h), b (C, h), out (R, C).

    Parallel over tiles of ``tile_rows × tile_cols`` pairs (the tile's rows of ``a`` and ``b`` stay in
    cache); inside a tile 2×2 pairs are computed together so each loaded ``a``/``b`` value serves two
    pairs, and the reduction over k is vectorised (fastmath lets LLVM reassociate the sum);
    relu(a_i + b_j) is never stored, it lives in registers. Each output cell is computed by one thread
    in a fixed order, so results do not depend on the thread count or the tiling.
    """
    n_rows, h = a.shape
    n_cols = b.shape[0]
    zero = np.float32(0.0)
    row_tiles = (n_rows + tile_rows - 1) // tile_rows
    col_tiles = (n_cols + tile_cols - 1) // tile_cols
    for tile in _prange(row_tiles * col_tiles):
        r0 = (tile // col_tiles) * tile_rows
        c0 = (tile % col_tiles) * tile_cols
        r1 = min(n_rows, r0 + tile_rows)
        c1 = min(n_cols, c0 + tile_cols)
        i = r0
        while i < r1:
            i1 = min(i + 1, r1 - 1)  # an odd last row is computed twice (same value, same cell)
            j = c0
            while j < c1:
                j1 = min(j + 1, c1 - 1)
                s00 = zero
                s01 = zero
                s10 = zero
                s11 = zero
                for k in range(h):
                    w = w2[k]
                    a0 = a[i, k]
                    a1 = a[i1, k]
                    bj0 = b[j, k]
                    bj1 = b[j1, k]
                    s00 += w * max(a0 + bj0, zero)
                    s01 += w * max(a0 + bj1, zero)
                    s10 += w * max(a1 + bj0, zero)
                    s11 += w * max(a1 + bj1, zero)
                out[i, j] = s00 + b2
                out[i, j1] = s01 + b2
                out[i1, j] = s10 + b2
                out[i1, j1] = s11 + b2
                j += 2
            i += 2


_prange: Any
if _numba is not None:
    _prange = _numba.prange
    pair_kernel: Any = _numba.njit(parallel=True, fastmath=True, cache=True, nogil=True)(pair_kernel_py)
else:  # pragma: no cover
    _prange = range
    pair_kernel = None


def warm_up_kernel() -> float:
    """Compile (or load from numba's on-disk cache) the pair kernel; return the seconds it took (0 without numba)."""
    if pair_kernel is None:
        return 0.0
    start = time.perf_counter()
    a = np.zeros((3, 4), np.float32)
    b = np.zeros((5, 4), np.float32)
    pair_kernel(a, b, np.zeros(4, np.float32), np.float32(0.0), np.empty((3, 5), np.float32), TILE_ROWS, TILE_COLS)
    return time.perf_counter() - start
