# mypy: disable-error-code="assignment"
# (numba integer locals: mypy reads `w += np.int64(p)` as assigning an np.int64 to an int)
"""The numba kernels of facility location on a neighbour graph (:mod:`nncift.selection.sparse`).

The greedy works on the graph's candidate-major form (CSC): candidate ``j`` holds the rows ``i`` that
kept it as a neighbour, in increasing row order, with ``s_ij`` clipped at 0 (and at the FLMI cap); entries
that are 0 after clipping are left out. A candidate's gain is the canonical gain of
:mod:`nncift.selection.kernels` (row ``i`` in lane ``i % LANES``, float64 differences of float32 values,
lanes added left to right): an entry the graph does not hold adds +0.0 there, so on a full graph
(every row keeps every candidate) gains, and therefore picks, are bit-identical to the dense greedy's.
Entries that can no longer improve coverage are dropped in place when a candidate is re-evaluated
(coverage only grows, so a dead entry stays dead).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from nncift.selection.kernels import LANES, _lane_total, lazy_loop, record_pick

__all__ = ["top_k_rows", "candidate_major", "graph_gains", "graph_lazy_greedy", "graph_stochastic_greedy"]


@njit(cache=True, nogil=True)
def _worse(va: float, ia: int, vb: float, ib: int) -> bool:
    """Top-k order: a lower value is worse; among equal values the higher column index is worse."""
    return va < vb or (va == vb and ia > ib)


@njit(cache=True, nogil=True)
def _sift_worst_down(hv: np.ndarray, hi: np.ndarray, size: int, pos: int) -> None:
    """Min-heap by :func:`_worse` (the worst kept entry at the root)."""
    v, i = hv[pos], hi[pos]
    while True:
        c = 2 * pos + 1
        if c >= size:
            break
        if c + 1 < size and _worse(hv[c + 1], hi[c + 1], hv[c], hi[c]):
            c += 1
        if _worse(hv[c], hi[c], v, i):
            hv[pos], hi[pos] = hv[c], hi[c]
            pos = c
        else:
            break
    hv[pos], hi[pos] = v, i


@njit(cache=True, parallel=True)
def top_k_rows(block: np.ndarray, k: int, cols_out: np.ndarray, vals_out: np.ndarray) -> int:
    """Each row's ``k`` highest values (ties: the lowest column index) into ``cols_out``/``vals_out`` (R, k), in
    increasing column order. Returns the number of non-finite entries (rows holding any are not trusted)."""
    n_rows, n_cols = block.shape
    bad = np.zeros(n_rows, np.int64)
    for r in prange(n_rows):
        hv = np.empty(k, np.float32)
        hi = np.empty(k, np.int64)
        nbad = 0
        for j in range(k):
            hv[j] = block[r, j]
            hi[j] = j
            if not np.isfinite(block[r, j]):
                nbad += 1
        for pos in range(k // 2 - 1, -1, -1):
            _sift_worst_down(hv, hi, k, pos)
        for j in range(k, n_cols):
            v = block[r, j]
            if not np.isfinite(v):
                nbad += 1
            elif v > hv[0]:  # scanning in increasing column order: an equal value is never better
                hv[0], hi[0] = v, j
                _sift_worst_down(hv, hi, k, 0)
        order = np.argsort(hi)
        for q in range(k):
            cols_out[r, q] = hi[order[q]]
            vals_out[r, q] = hv[order[q]]
        bad[r] = nbad
    return bad.sum()


@njit(cache=True)
def candidate_major(indptr: np.ndarray, columns: np.ndarray, values: np.ndarray, n_cols: int, cap: np.ndarray,
                    use_cap: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The graph's CSC form ``(cptr, crows, cvals)`` with values clipped at 0 (and at ``cap[i]``), zeros left out."""
    n_rows = indptr.shape[0] - 1
    count = np.zeros(n_cols + 1, np.int64)
    for i in range(n_rows):
        for q in range(indptr[i], indptr[i + 1]):
            if values[q] > 0:
                count[columns[q] + 1] += 1
    for j in range(n_cols):
        count[j + 1] += count[j]
    cptr = count.copy()
    crows = np.empty(cptr[n_cols], np.int32)
    cvals = np.empty(cptr[n_cols], np.float32)
    fill = count[:n_cols].copy()
    for i in range(n_rows):
        for q in range(indptr[i], indptr[i + 1]):
            v = values[q]
            if v > 0:
                if use_cap and v > cap[i]:
                    v = cap[i]
                j = columns[q]
                crows[fill[j]] = i
                cvals[fill[j]] = v
                fill[j] += 1
    return cptr, crows, cvals


@njit(cache=True, nogil=True)
def _gain(cptr: np.ndarray, crows: np.ndarray, cvals: np.ndarray, clen: np.ndarray, j: int, cur: np.ndarray,
          acc: np.ndarray) -> float:
    """Canonical gain of candidate ``j``, dropping its dead entries in place (``clen[j]`` shrinks)."""
    for q in range(LANES):
        acc[q] = 0.0
    start = cptr[j]
    w = start
    for q in range(start, start + clen[j]):
        r = crows[q]
        v = cvals[q]
        d = np.float64(v) - np.float64(cur[r])
        p = d > 0.0
        acc[r % LANES] += d if p else 0.0
        crows[w] = r
        cvals[w] = v
        w += np.int64(p)
    clen[j] = w - start
    return _lane_total(acc)


@njit(cache=True, parallel=True)
def graph_gains(cptr: np.ndarray, crows: np.ndarray, cvals: np.ndarray, clen: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Every candidate's gain under coverage ``cur`` (dead entries dropped)."""
    nc = cptr.shape[0] - 1
    g = np.empty(nc, np.float64)
    for j in prange(nc):
        acc = np.zeros(LANES, np.float64)
        g[j] = _gain(cptr, crows, cvals, clen, j, cur, acc)
    return g


@njit(cache=True, nogil=True)
def _cover(cptr: np.ndarray, crows: np.ndarray, cvals: np.ndarray, clen: np.ndarray, j: int, cur: np.ndarray) -> None:
    for q in range(cptr[j], cptr[j] + clen[j]):
        r = crows[q]
        if cvals[q] > cur[r]:
            cur[r] = cvals[q]


@njit(cache=True, nogil=True, inline="always")
def _graph_evaluate(data: tuple, j: int) -> float:
    """:func:`~nncift.selection.kernels.lazy_loop`'s ``evaluate`` on the graph's candidate-major form."""
    cptr, crows, cvals, clen, cur, acc = data
    return _gain(cptr, crows, cvals, clen, j, cur, acc)


@njit(cache=True, nogil=True, inline="always")
def _graph_cover(data: tuple, j: int) -> None:
    """:func:`~nncift.selection.kernels.lazy_loop`'s ``cover`` on the graph's candidate-major form."""
    cptr, crows, cvals, clen, cur, acc = data
    _cover(cptr, crows, cvals, clen, j, cur)


@njit(cache=True, nogil=True)
def graph_lazy_greedy(cptr: np.ndarray, crows: np.ndarray, cvals: np.ndarray, clen: np.ndarray, cur: np.ndarray, k: int,
                      ub: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lazy greedy (ties: the lowest index) from the exact gains ``ub`` under the starting coverage ``cur`` (updated
    in place). Returns ``(picks, gains)``; after the first zero gain the rest are filled in index order."""
    data = (cptr, crows, cvals, clen, cur, np.zeros(LANES, np.float64))
    return lazy_loop(k, ub, data, _graph_evaluate, _graph_cover)


@njit(cache=True, nogil=True)
def _next_random(state: np.ndarray) -> np.uint64:
    """splitmix64: the next 64-bit value of the generator whose state is ``state[0]``."""
    state[0] += np.uint64(0x9E3779B97F4A7C15)
    z = state[0]
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def _best_of(cptr: np.ndarray, crows: np.ndarray, cvals: np.ndarray, clen: np.ndarray, cur: np.ndarray, ub: np.ndarray,
             remaining: np.ndarray, count: int, acc: np.ndarray) -> tuple[int, float]:
    """The best of ``remaining[:count]`` (highest gain, ties: the lowest index); bounds ``ub`` skip hopeless ones."""
    best, best_gain = -1, -1.0
    for q in range(count):
        j = remaining[q]
        if ub[j] < best_gain or (ub[j] == best_gain and j > best):
            continue
        g = _gain(cptr, crows, cvals, clen, j, cur, acc)
        ub[j] = g
        if g > best_gain or (g == best_gain and j < best):
            best, best_gain = j, g
    return best, best_gain


@njit(cache=True, nogil=True)
def graph_stochastic_greedy(cptr: np.ndarray, crows: np.ndarray, cvals: np.ndarray, clen: np.ndarray, cur: np.ndarray, k: int,
                            ub: np.ndarray, sample: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic greedy (Mirzasoleiman et al., 2015): each step takes the best of ``sample`` candidates drawn without
    replacement from those not chosen (splitmix64 from ``seed``). A sample whose best gain is 0 is widened to every
    remaining candidate, so a zero gain means the objective is exhausted (then the rest are filled in index order)."""
    nc = cptr.shape[0] - 1
    picks = np.empty(k, np.int64)
    gains = np.empty(k, np.float64)
    chosen = np.zeros(nc, np.bool_)
    remaining = np.arange(nc)
    position = np.arange(nc)
    n_left = nc
    state = np.array([np.uint64(seed)], np.uint64)
    acc = np.zeros(LANES, np.float64)
    t = 0
    while t < k:
        draw = min(sample, n_left)
        for q in range(draw):  # partial Fisher-Yates: remaining[:draw] is the sample
            r = q + np.int64(_next_random(state) % np.uint64(n_left - q))
            a, b = remaining[q], remaining[r]
            remaining[q], remaining[r] = b, a
            position[b], position[a] = q, r
        best, best_gain = _best_of(cptr, crows, cvals, clen, cur, ub, remaining, draw, acc)
        if best_gain <= 0.0 and draw < n_left:
            best, best_gain = _best_of(cptr, crows, cvals, clen, cur, ub, remaining, n_left, acc)
        if record_pick(chosen, picks, gains, t, k, best, max(best_gain, 0.0)):
            break
        t += 1
        _cover(cptr, crows, cvals, clen, best, cur)
        n_left -= 1
        last = remaining[n_left]
        remaining[position[best]] = last
        position[last] = position[best]
    return picks, gains
