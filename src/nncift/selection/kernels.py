# mypy: disable-error-code="assignment"
# (numba integer locals: mypy reads `w += np.int64(p)` as assigning an np.int64 to an int)
"""The numba kernels of greedy facility location (see :mod:`nncift.selection`).

Canonical gain of a candidate column ``col`` (length n) under coverage ``cur`` (float32):
  LANES float64 accumulators; row i goes to lane i % LANES, rows added in increasing order;
  term_i = max(float64(col[i]) - float64(cur[i]), 0)   (float64 difference of two float32 values);
  gain = acc[0] + acc[1] + ... + acc[LANES - 1]        (left to right).
The lanes are independent, so the compiler can vectorise the loop without reassociating anything
(no fastmath): the value is bit-for-bit defined. A dead term adds +0.0, which leaves a non-negative
accumulator unchanged, so the value is the same whether dead entries are visited (dense form) or
skipped (compacted form). Each lane sum, and the fixed combination, is monotone in the terms, and
terms only shrink as ``cur`` grows: computed gains never increase, which makes lazy greedy exact.

Compacted form of candidate row j of ``st`` (float32, length n), used once alive <= n // 4 (it
needs alive <= n // 2 to fit; below a quarter the gather-based evaluation beats the dense one):
  st[j, 0:m] = alive values, sti[j, half:half + m] = their row indices (int32 view of the same
  memory), in increasing row order; clen[j] = m (-1 = dense).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

import numba
import numpy as np
from numba import njit, prange

LANES = 32


@njit(cache=True, nogil=True)
def _lane_total(acc: np.ndarray) -> float:
    total = 0.0
    for q in range(LANES):
        total += acc[q]
    return total


@njit(cache=True, nogil=True)
def dense_gain(col: np.ndarray, cur: np.ndarray) -> tuple[float, int]:
    """Canonical gain of a dense column and its number of alive entries (``col[i] > cur[i]``)."""
    n = col.shape[0]
    tail = n - n % LANES
    acc = np.zeros(LANES, np.float64)
    cnt = np.zeros(LANES, np.int64)
    for i in range(0, tail, LANES):
        for q in range(LANES):
            d = np.float64(col[i + q]) - np.float64(cur[i + q])
            p = d > 0.0
            acc[q] += d if p else 0.0
            cnt[q] += np.int64(p)
    alive = 0
    for q in range(LANES):
        alive += cnt[q]
    for i in range(tail, n):
        d = np.float64(col[i]) - np.float64(cur[i])
        if d > 0.0:
            acc[i % LANES] += d
            alive += 1
    return _lane_total(acc), alive


@njit(cache=True, nogil=True)
def _compact_dense(st: np.ndarray, sti: np.ndarray, j: int, cur: np.ndarray, half: int, scratch: np.ndarray) -> int:
    """Rewrite dense candidate row ``j`` into its compacted form; returns the number kept.

    Branch-free: every entry is written at the next free slot ``w <= i`` (a slot already read) and
    ``w`` only advances for alive entries."""
    n = st.shape[1]
    w = 0
    for i in range(n):
        v = st[j, i]
        p = v > cur[i]
        st[j, w] = v
        scratch[w] = i
        w += np.int64(p)
    for q in range(w):
        sti[j, half + q] = scratch[q]
    return w


@njit(cache=True, nogil=True)
def _compact_gain(st: np.ndarray, sti: np.ndarray, j: int, m: int, cur: np.ndarray, half: int, acc: np.ndarray) -> tuple[float, int]:
    """Canonical gain of compacted row ``j`` (``m`` entries), dropping dead entries in place
    (branch-free, as in :func:`_compact_dense`). Returns ``(gain, new_m)``."""
    for q in range(LANES):
        acc[q] = 0.0
    w = 0
    for q in range(m):
        v = st[j, q]
        r = sti[j, half + q]
        d = np.float64(v) - np.float64(cur[r])
        p = d > 0.0
        acc[r & (LANES - 1)] += d if p else 0.0
        st[j, w] = v
        sti[j, half + w] = r
        w += np.int64(p)
    return _lane_total(acc), w


@njit(cache=True, parallel=True)
def prepare_candidate_major(s: np.ndarray, cap: np.ndarray, use_cap: bool, out: np.ndarray) -> int:
    """``out[j, i] = min(max(float32(s[i, j]), 0), cap[i])``; returns the number of entries that are not
    finite as float32. Threads take bands of rows, so ``s`` (possibly a memmap) is read sequentially."""
    n, m = s.shape
    block = 64
    nbi = (n + block - 1) // block
    bad = np.zeros(nbi, np.int64)
    for bi in prange(nbi):
        i0 = bi * block
        i1 = min(i0 + block, n)
        nbad = 0
        for j0 in range(0, m, block):
            j1 = min(j0 + block, m)
            for i in range(i0, i1):
                c = cap[i]
                for j in range(j0, j1):
                    v = np.float32(s[i, j])
                    if not np.isfinite(v):
                        nbad += 1
                    if not v > 0:
                        v = np.float32(0.0)
                    if use_cap and v > c:
                        v = c
                    out[j, i] = v
        bad[bi] = nbad
    return bad.sum()


@njit(cache=True, parallel=True)
def row_max(s: np.ndarray, scale: float) -> tuple[np.ndarray, int]:
    """``float32(scale * max_j max(float32(s[i, j]), 0))`` per row (0 for no columns) and the number
    of non-finite entries."""
    n, m = s.shape
    out = np.zeros(n, np.float32)
    bad = np.zeros(n, np.int64)
    for i in prange(n):
        best = np.float32(0.0)
        nbad = 0
        for j in range(m):
            v = np.float32(s[i, j])
            if not np.isfinite(v):
                nbad += 1
            if v > best:
                best = v
        out[i] = np.float32(scale * np.float64(best))
        bad[i] = nbad
    return out, bad.sum()


@njit(cache=True, parallel=True)
def all_gains(st: np.ndarray, cur: np.ndarray) -> np.ndarray:
    nc = st.shape[0]
    g = np.empty(nc, np.float64)
    for j in prange(nc):
        g[j] = dense_gain(st[j], cur)[0]
    return g


@njit(cache=True, nogil=True)
def _before(a: int, b: int, ub: np.ndarray) -> bool:
    """Heap order: larger bound first, then lower index."""
    return ub[a] > ub[b] or (ub[a] == ub[b] and a < b)


@njit(cache=True, nogil=True)
def _sift_down(heap: np.ndarray, size: int, pos: int, ub: np.ndarray) -> None:
    item = heap[pos]
    while True:
        c = 2 * pos + 1
        if c >= size:
            break
        r = c + 1
        if r < size and _before(heap[r], heap[c], ub):
            c = r
        if _before(heap[c], item, ub):
            heap[pos] = heap[c]
            pos = c
        else:
            break
    heap[pos] = item


@njit(cache=True, nogil=True)
def _fill_zero_gain(chosen: np.ndarray, picks: np.ndarray, gains: np.ndarray, t: int, k: int) -> None:
    """Fill picks[t:k] with the unchosen candidates in increasing index order (gain 0)."""
    j = 0
    while t < k:
        if not chosen[j]:
            chosen[j] = True
            picks[t] = j
            gains[t] = 0.0
            t += 1
        j += 1


@njit(cache=True, nogil=True)
def pop_top(heap: np.ndarray, size: int, ub: np.ndarray) -> int:
    """Remove the top of the max-heap ``heap[:size]`` (ordered by ``ub``, ties by the lowest index); return the new size."""
    size -= 1
    heap[0] = heap[size]
    _sift_down(heap, size, 0, ub)
    return size


@njit(cache=True, nogil=True)
def record_pick(chosen: np.ndarray, picks: np.ndarray, gains: np.ndarray, t: int, k: int, pick: int, gain: float) -> bool:
    """Record pick number ``t`` (candidate ``pick`` with its gain). A gain of 0 means the objective has run out of
    signal: the remaining slots are filled (:func:`_fill_zero_gain`) and True (stop) is returned."""
    picks[t] = pick
    gains[t] = gain
    chosen[pick] = True
    if gain == 0.0:
        _fill_zero_gain(chosen, picks, gains, t + 1, k)
        return True
    return False


@njit(cache=True, nogil=True, inline="always")
def lazy_loop(k: int, ub: np.ndarray, data: tuple, evaluate: Callable[[tuple, int], float],
              cover: Callable[[tuple, int], None]) -> tuple[np.ndarray, np.ndarray]:
    """Lazy greedy over candidates ``0 .. len(ub) - 1`` (ties: the lowest index), whatever holds their entries: the
    dense kernel's rows (:func:`lazy_greedy`) or a neighbour graph's columns (:mod:`nncift.selection.sparse_kernels`).

    ``ub``: the exact gains under the starting coverage (then upper bounds, updated in place); ``evaluate(data, j)``:
    candidate ``j``'s gain under the current coverage (it may compact ``j``'s entries); ``cover(data, j)``: add
    candidate ``j`` to the coverage. Both are numba functions marked ``inline="always"``, as this loop is: numba
    inlines all three into the caller's IR, so the compiled code is the hand-written loop's (same speed, measured)
    and the caller stays cacheable (a numba function passed as a value would be a dynamic global).
    Returns ``(picks, gains)``; after the first zero gain the rest are filled (:func:`record_pick`)."""
    nc = ub.shape[0]
    picks = np.empty(k, np.int64)
    gains = np.empty(k, np.float64)
    chosen = np.zeros(nc, np.bool_)
    stamp = np.zeros(nc, np.int64)
    heap = np.arange(nc)
    size = nc
    for pos in range(size // 2 - 1, -1, -1):
        _sift_down(heap, size, pos, ub)
    t = 0
    while t < k:
        top = heap[0]
        if stamp[top] != t:
            ub[top] = evaluate(data, top)
            stamp[top] = t
            _sift_down(heap, size, 0, ub)
            continue
        # the top's bound is fresh: it is the true maximum gain (ties: lowest index)
        size = pop_top(heap, size, ub)
        if record_pick(chosen, picks, gains, t, k, top, ub[top]):
            break
        t += 1
        cover(data, top)
    return picks, gains


@njit(cache=True, nogil=True, inline="always")
def _dense_evaluate(data: tuple, j: int) -> float:
    """:func:`lazy_loop`'s ``evaluate`` on the rows of ``st``: a dense row is compacted once few entries are alive."""
    st, sti, cur, clen, half, scratch, acc = data
    m = clen[j]
    if m < 0:
        g, alive = dense_gain(st[j], cur)
        if alive <= half // 2:
            clen[j] = _compact_dense(st, sti, j, cur, half, scratch)
        return g
    g, kept = _compact_gain(st, sti, j, m, cur, half, acc)
    clen[j] = kept
    return g


@njit(cache=True, nogil=True, inline="always")
def _dense_cover(data: tuple, j: int) -> None:
    """:func:`lazy_loop`'s ``cover`` on the rows of ``st`` (dense or compacted)."""
    st, sti, cur, clen, half, scratch, acc = data
    m = clen[j]
    if m < 0:
        for i in range(st.shape[1]):
            v = st[j, i]
            if v > cur[i]:
                cur[i] = v
    else:
        for q in range(m):
            r = sti[j, half + q]
            v = st[j, q]
            if v > cur[r]:
                cur[r] = v


@njit(cache=True, nogil=True)
def lazy_greedy(st: np.ndarray, sti: np.ndarray, cur: np.ndarray, k: int, ub: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lazy greedy on ``st`` (candidates x rows, float32, modified in place by compaction).

    ``cur`` (float32, per row) is the starting coverage and is updated in place; ``ub`` holds the exact
    gains under the starting coverage. Returns ``(picks, gains)``."""
    nc, n = st.shape
    data = (st, sti, cur, np.full(nc, -1, np.int64), n // 2, np.empty(max(n, 1), np.int32), np.zeros(LANES, np.float64))
    return lazy_loop(k, ub, data, _dense_evaluate, _dense_cover)


@njit(cache=True, parallel=True)
def _masked_gains(st: np.ndarray, cur: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    nc = st.shape[0]
    g = np.empty(nc, np.float64)
    for j in prange(nc):
        g[j] = -1.0 if chosen[j] else dense_gain(st[j], cur)[0]
    return g


@njit(cache=True)
def plain_greedy(st: np.ndarray, cur: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Plain greedy (every gain recomputed at every step, dense form only). Returns ``(picks, gains)``."""
    nc, n = st.shape
    picks = np.empty(k, np.int64)
    gains = np.empty(k, np.float64)
    chosen = np.zeros(nc, np.bool_)
    t = 0
    while t < k:
        g = _masked_gains(st, cur, chosen)
        best = -1
        for j in range(nc):
            if not chosen[j] and (best < 0 or g[j] > g[best]):
                best = j
        if record_pick(chosen, picks, gains, t, k, best, g[best]):
            break
        t += 1
        for i in range(n):
            v = st[best, i]
            if v > cur[i]:
                cur[i] = v
    return picks, gains


PARALLEL_MIN_ENTRIES = 1 << 20
"""Below this many matrix entries the kernels run on one thread: waking the thread pool costs more than
the work (and much more when the cores are shared)."""


@contextlib.contextmanager
def threads_for(n_entries: int) -> Iterator[None]:
    """Numba threads for a kernel on ``n_entries``; torch's intra-op thread count is restored afterwards.

    Numba's OpenMP layer and torch share the OpenMP runtime: a numba call can change the count torch
    uses for every later op (seen: 1 → 2 threads, which on busy cores makes torch much slower).
    """
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    previous = numba.get_num_threads()
    numba.set_num_threads(previous if n_entries >= PARALLEL_MIN_ENTRIES else 1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)
        if torch is not None and torch_threads is not None and torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
