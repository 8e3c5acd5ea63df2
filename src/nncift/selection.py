"""Subset selection: facility location (FL), its mutual information (FLMI) and conditional gain
(FLCG) variants, and top-k (docs/methods.md §4).

Orientation (as everywhere in nncift): a similarity matrix ``s`` has **rows = items to be
represented** (targets) and **columns = candidates** (the pool to select from); shape
``(n_rows, n_candidates)``, not necessarily square. Selections are candidate column indices.

Objectives (``max`` over the empty set is 0):

- FL:   ``f(A) = sum_i max_{j in A} s_ij``
- FLMI: ``I(A; Q) = sum_i min(max_{j in A} s_ij, eta * max_{q in Q} s_iq)`` -- FL on the row-capped
  matrix ``min(s_ij, cap_i)``, ``cap_i = eta * max_q s_iq``.
- FLCG: ``f(A | P) = sum_i max(max_{j in A} s_ij - nu * max_{p in P} s_ip, 0)`` -- FL whose per-row
  coverage starts at ``initial_i = nu * max_p s_ip`` (minus that constant).

So a single greedy kernel with an optional per-row cap (baked into the working copy of the matrix)
and an optional initial per-row coverage serves all three.

Conventions and numerics
------------------------
- **Negative similarities are clipped at 0** (not rejected). Facility location is only monotone
  submodular for non-negative similarities, and predicted influence matrices legitimately contain
  small negative values (regression noise around 0); clipping makes "a negative similarity" mean
  "no coverage", which is what ``max`` over the empty set = 0 already says. Non-finite entries
  (NaN, +-inf) raise ``ValueError``.
- The matrix is copied **once**, transposed to ``(n_candidates, n_rows)`` float32 (so a candidate's
  column is contiguous), with the clip and the FLMI cap applied during that copy. float64 inputs are
  therefore rounded to float32; ``np.memmap`` inputs are read in place.
- A candidate's marginal gain is ``sum_i max(s_ij - cover_i, 0)`` accumulated in float64 (each
  difference of two float32 values is formed in float64), with a fixed summation order that does not
  depend on which entries are still "alive". The computed gains are therefore exactly monotone
  non-increasing as coverage grows, and lazy greedy returns exactly the picks of plain greedy.
- Ties are broken by the lowest column index, in lazy and in plain greedy.
- When every remaining gain is 0 (all rows covered as well as they can be: the objective has run
  out of signal), the remaining slots are filled by :func:`fill_exhausted`: the not-yet-chosen
  candidates in decreasing order of their gain on the empty set (their singleton value ``f({j})``,
  ties by the lowest index), gain 0 each. The selection always has exactly ``budget`` elements and
  ``Selection.n_positive`` says how many picks had a positive gain.
- ``Selection.objective`` is recomputed from the final per-row coverage (float64 sum), not summed
  from the gains.
- A budget of 0 returns an empty selection at once, without reading the matrix.

Speed: lazy greedy (max-heap of stale upper bounds) over numba kernels; the initial gains are
computed in parallel; a candidate column whose entries mostly can no longer improve coverage is
compacted in place to its "alive" entries (``s_ij > cover_i`` -- coverage only grows, so a dead
entry stays dead), which makes later re-evaluations cost O(alive) instead of O(n_rows). Matrices
below about a million entries run on one thread (waking numba's thread pool would cost more).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import numba
import numpy as np
from numba import njit, prange

__all__ = [
    "Selection",
    "budget_to_count",
    "facility_location",
    "fl_mutual_information",
    "fl_conditional_gain",
    "top_k",
    "objective_value",
    "fill_exhausted",
    "select",
    "OBJECTIVES",
]

OBJECTIVES = ("fl", "flmi", "flcg", "topk")


@dataclass(frozen=True)
class Selection:
    """A selection: candidate column indices in pick order with their marginal gains.

    Attributes:
        indices: int64, shape ``(k,)``: candidate (column) indices, in pick order.
        gains: float64, shape ``(k,)``: marginal gain of each pick, same order (for top-k: the score).
        objective: final objective value (FL: ``f(A)``; FLMI: ``I(A;Q)``; FLCG: ``f(A|P)``;
            top-k: sum of the chosen scores).
        name: ``"fl"``, ``"flmi"``, ``"flcg"`` or ``"topk"``.
    """

    indices: np.ndarray
    gains: np.ndarray
    objective: float
    name: str
    n_positive: int | None = None
    """Greedy objectives: picks with a positive marginal gain (the rest were filled by :func:`fill_exhausted`)."""
    values: np.ndarray | None = None
    """float64, shape ``(n_candidates,)``: every candidate's singleton value ``f({j})`` (greedy objectives,
    relative to the starting coverage) or score (top-k); what a candidate is worth on its own."""


# --------------------------------------------------------------------------------------------
# budgets


def budget_to_count(budget: float | int, n_candidates: int) -> int:
    """Number of candidates to select for ``budget`` out of ``n_candidates``.

    The budget rule is :func:`nncift.config.normalise_budget` (the one ``--budget`` follows): a number
    in ``(0, 1]`` is a fraction of ``n_candidates``, rounded to the nearest integer (halves round up)
    and at least 1 (unless ``n_candidates`` is 0); a whole number above 1 (``50`` or ``50.0``) is a
    count; 0.0, negatives, NaN and non-integral values above 1 (``1.5``) raise ``ValueError``.
    Code may also pass an exact count as an **integer** ``>= 0``: ``0`` selects nothing and ``1`` one
    candidate (settings never pass these: their budget 1 is the fraction 1.0). A count above
    ``n_candidates``, a bool or a non-number raises ``ValueError``.
    """
    if isinstance(n_candidates, bool) or not isinstance(n_candidates, numbers.Integral) or n_candidates < 0:
        raise ValueError(f"n_candidates must be a non-negative integer, got {n_candidates!r}")
    n = int(n_candidates)
    if isinstance(budget, numbers.Integral) and not isinstance(budget, bool):
        count = int(budget)
    else:
        from .config import normalise_budget  # the rule lives with the settings (no numba there)

        rule = normalise_budget(budget)
        if isinstance(rule, float):
            return min(max(1, int(math.floor(rule * n + 0.5))), n)
        count = rule
    if count < 0:
        raise ValueError(f"budget count must be >= 0, got {count}")
    if count > n:
        raise ValueError(f"budget count {count} exceeds the number of candidates ({n})")
    return count


# --------------------------------------------------------------------------------------------
# numba kernels
#
# Canonical gain of a candidate column ``col`` (length n) under coverage ``cur`` (float32):
#   _LANES float64 accumulators; row i goes to lane i % _LANES, rows added in increasing order;
#   term_i = max(float64(col[i]) - float64(cur[i]), 0)   (float64 difference of two float32 values);
#   gain = acc[0] + acc[1] + ... + acc[_LANES - 1]        (left to right).
# The lanes are independent, so the compiler can vectorise the loop without reassociating anything
# (no fastmath): the value is bit-for-bit defined. A dead term adds +0.0, which leaves a non-negative
# accumulator unchanged, so the value is the same whether dead entries are visited (dense form) or
# skipped (compacted form). Each lane sum, and the fixed combination, is monotone in the terms, and
# terms only shrink as ``cur`` grows: computed gains never increase, which makes lazy greedy exact.
#
# Compacted form of candidate row j of ``st`` (float32, length n), used once alive <= n // 4 (it
# needs alive <= n // 2 to fit; below a quarter the gather-based evaluation beats the dense one):
#   st[j, 0:m] = alive values, sti[j, half:half + m] = their row indices (int32 view of the same
#   memory), in increasing row order; clen[j] = m (-1 = dense).

_LANES = 32


@njit(cache=True, nogil=True)
def _lane_total(acc):
    total = 0.0
    for q in range(_LANES):
        total += acc[q]
    return total


@njit(cache=True, nogil=True)
def _dense_gain(col, cur):
    """Canonical gain of a dense column and its number of alive entries (``col[i] > cur[i]``)."""
    n = col.shape[0]
    tail = n - n % _LANES
    acc = np.zeros(_LANES, np.float64)
    cnt = np.zeros(_LANES, np.int64)
    for i in range(0, tail, _LANES):
        for q in range(_LANES):
            d = np.float64(col[i + q]) - np.float64(cur[i + q])
            p = d > 0.0
            acc[q] += d if p else 0.0
            cnt[q] += np.int64(p)
    alive = 0
    for q in range(_LANES):
        alive += cnt[q]
    for i in range(tail, n):
        d = np.float64(col[i]) - np.float64(cur[i])
        if d > 0.0:
            acc[i % _LANES] += d
            alive += 1
    return _lane_total(acc), alive


@njit(cache=True, nogil=True)
def _compact_dense(st, sti, j, cur, half, scratch):
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
def _compact_gain(st, sti, j, m, cur, half, acc):
    """Canonical gain of compacted row ``j`` (``m`` entries), dropping dead entries in place
    (branch-free, as in :func:`_compact_dense`). Returns ``(gain, new_m)``."""
    for q in range(_LANES):
        acc[q] = 0.0
    w = 0
    for q in range(m):
        v = st[j, q]
        r = sti[j, half + q]
        d = np.float64(v) - np.float64(cur[r])
        p = d > 0.0
        acc[r & (_LANES - 1)] += d if p else 0.0
        st[j, w] = v
        sti[j, half + w] = r
        w += np.int64(p)
    return _lane_total(acc), w


@njit(cache=True, parallel=True)
def _prepare(s, cap, use_cap, out):
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
def _row_max(s, scale):
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
def _all_gains(st, cur):
    nc = st.shape[0]
    g = np.empty(nc, np.float64)
    for j in prange(nc):
        g[j] = _dense_gain(st[j], cur)[0]
    return g


@njit(cache=True, nogil=True)
def _before(a, b, ub):
    """Heap order: larger bound first, then lower index."""
    return ub[a] > ub[b] or (ub[a] == ub[b] and a < b)


@njit(cache=True, nogil=True)
def _sift_down(heap, size, pos, ub):
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
def _fill_zero_gain(chosen, picks, gains, t, k):
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
def _lazy_greedy(st, sti, cur, k, ub):
    """Lazy greedy on ``st`` (candidates x rows, float32, modified in place by compaction).

    ``cur`` (float32, per row) is the starting coverage and is updated in place; ``ub`` holds the exact
    gains under the starting coverage. Returns ``(picks, gains)``."""
    nc, n = st.shape
    half = n // 2
    quarter = n // 4
    picks = np.empty(k, np.int64)
    gains = np.empty(k, np.float64)
    chosen = np.zeros(nc, np.bool_)
    clen = np.full(nc, -1, np.int64)
    stamp = np.zeros(nc, np.int64)
    heap = np.arange(nc)
    size = nc
    for pos in range(size // 2 - 1, -1, -1):
        _sift_down(heap, size, pos, ub)
    scratch = np.empty(max(n, 1), np.int32)
    acc = np.zeros(_LANES, np.float64)
    t = 0
    while t < k:
        top = heap[0]
        if stamp[top] != t:
            m = clen[top]
            if m < 0:
                g, alive = _dense_gain(st[top], cur)
                if alive <= quarter:
                    clen[top] = _compact_dense(st, sti, top, cur, half, scratch)
            else:
                g, m2 = _compact_gain(st, sti, top, m, cur, half, acc)
                clen[top] = m2
            ub[top] = g
            stamp[top] = t
            _sift_down(heap, size, 0, ub)
            continue
        # the top's bound is fresh: it is the true maximum gain (ties: lowest index)
        size -= 1
        heap[0] = heap[size]
        _sift_down(heap, size, 0, ub)
        g = ub[top]
        picks[t] = top
        gains[t] = g
        chosen[top] = True
        t += 1
        if g == 0.0:
            _fill_zero_gain(chosen, picks, gains, t, k)
            break
        m = clen[top]
        if m < 0:
            for i in range(n):
                v = st[top, i]
                if v > cur[i]:
                    cur[i] = v
        else:
            for q in range(m):
                r = sti[top, half + q]
                v = st[top, q]
                if v > cur[r]:
                    cur[r] = v
    return picks, gains


@njit(cache=True, parallel=True)
def _masked_gains(st, cur, chosen):
    nc = st.shape[0]
    g = np.empty(nc, np.float64)
    for j in prange(nc):
        g[j] = -1.0 if chosen[j] else _dense_gain(st[j], cur)[0]
    return g


@njit(cache=True)
def _plain_greedy(st, cur, k):
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
        picks[t] = best
        gains[t] = g[best]
        chosen[best] = True
        t += 1
        if g[best] == 0.0:
            _fill_zero_gain(chosen, picks, gains, t, k)
            break
        for i in range(n):
            v = st[best, i]
            if v > cur[i]:
                cur[i] = v
    return picks, gains


# --------------------------------------------------------------------------------------------
# python side


def _as_matrix(x: Any, what: str) -> np.ndarray:
    """A 2-D float32/float64 ndarray view of ``x`` (memmaps are viewed, not copied)."""
    a = np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{what} must be a 2-D matrix (rows x columns), got shape {a.shape}")
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float64)
    return a


def _row_caps(matrix: Any, scale: float, what: str, n_rows: int) -> np.ndarray:
    """float32 ``scale * max_j max(matrix[i, j], 0)`` per row of ``matrix`` (n_rows x anything)."""
    a = _as_matrix(matrix, what)
    if a.shape[0] != n_rows:
        raise ValueError(f"{what} must have {n_rows} rows (one per row of the data similarity), got {a.shape[0]}")
    with _threads_for(a.size):
        out, bad = _row_max(a, float(scale))
    if bad:
        raise ValueError(f"{what} contains {bad} non-finite entries")
    return out


_PARALLEL_MIN_ENTRIES = 1 << 20
"""Below this many matrix entries the kernels run on one thread: waking the thread pool costs more than
the work (and much more when the cores are shared)."""


@contextlib.contextmanager
def _threads_for(n_entries: int) -> Iterator[None]:
    """Numba threads for a kernel on ``n_entries``; torch's intra-op thread count is restored afterwards.

    Numba's OpenMP layer and torch share the OpenMP runtime: a numba call can change the count torch
    uses for every later op (seen: 1 → 2 threads, which on busy cores makes torch much slower).
    """
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    previous = numba.get_num_threads()
    numba.set_num_threads(previous if n_entries >= _PARALLEL_MIN_ENTRIES else 1)
    try:
        yield
    finally:
        numba.set_num_threads(previous)
        if torch_threads is not None and torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)


def _greedy(similarity: Any, budget: float | int, *, cap: np.ndarray | None, initial: np.ndarray | None,
            lazy: bool, name: str) -> Selection:
    s = _as_matrix(similarity, "similarity")
    n_rows, n_cand = s.shape
    k = budget_to_count(budget, n_cand)
    if k == 0:
        return Selection(np.zeros(0, np.int64), np.zeros(0, np.float64), 0.0, name)
    st = np.empty((n_cand, n_rows), np.float32)
    use_cap = cap is not None
    start = np.zeros(n_rows, np.float32) if initial is None else initial.astype(np.float32, copy=True)
    cur = start.copy()
    with _threads_for(n_rows * n_cand):
        bad = _prepare(s, cap if use_cap else np.zeros(n_rows, np.float32), use_cap, st)
        if bad:
            raise ValueError(f"similarity contains {bad} non-finite (as float32) entries")
        initial_gains = _all_gains(st, cur)
        if lazy:
            picks, gains = _lazy_greedy(st, st.view(np.int32), cur, k, initial_gains.copy())
        else:
            picks, gains = _plain_greedy(st, cur, k)
    objective = float(np.sum(cur.astype(np.float64) - start.astype(np.float64)))
    picks, n_positive = fill_exhausted(picks, gains, initial_gains)
    return Selection(picks, gains, objective, name, n_positive, np.asarray(initial_gains, dtype=np.float64))


def fill_exhausted(picks: np.ndarray, gains: np.ndarray, initial_gains: np.ndarray) -> tuple[np.ndarray, int]:
    """Refill the picks after the first zero gain: unchosen candidates by decreasing ``initial_gains``.

    Greedy stops finding value once every row is covered as well as the candidates allow; the
    remaining picks (gain 0 each, so the objective is unchanged) are then the candidates with the
    highest singleton value ``f({j})`` (``initial_gains``), ties by the lowest index — never the
    pool's file order. Returns ``(picks, number of picks with a positive gain)``.
    """
    zero = np.flatnonzero(np.asarray(gains) <= 0.0)
    if zero.size == 0:
        return picks, len(picks)
    first = int(zero[0])
    chosen = np.zeros(len(initial_gains), dtype=bool)
    chosen[picks[:first]] = True
    order = np.lexsort((np.arange(len(initial_gains)), -np.asarray(initial_gains, dtype=np.float64)))
    rest = order[~chosen[order]][: len(picks) - first]
    out = np.array(picks, dtype=np.int64, copy=True)
    out[first:] = rest
    return out, first


def facility_location(similarity: np.ndarray, budget: float | int, *, lazy: bool = True) -> Selection:
    """Greedy facility location: maximise ``f(A) = sum_i max_{j in A} s_ij`` with ``|A| = budget``.

    Args:
        similarity: ``(n_rows, n_candidates)`` float32/float64 array or memmap; rows = items to be
            represented, columns = candidates. Negative entries are clipped at 0; non-finite raise.
        budget: fraction in (0, 1] or count, see :func:`budget_to_count` (of ``n_candidates``).
        lazy: lazy greedy (default) or plain greedy; both return the same picks.

    Returns:
        :class:`Selection` named ``"fl"`` with column indices in pick order.
    """
    return _greedy(similarity, budget, cap=None, initial=None, lazy=lazy, name="fl")


def fl_mutual_information(data_similarity: np.ndarray, query_similarity: np.ndarray, budget: float | int, *,
                          eta: float = 1.0, lazy: bool = True) -> Selection:
    """Greedy FL mutual information: maximise ``I(A;Q) = sum_i min(max_{j in A} s_ij, eta * max_q s_iq)``.

    Args:
        data_similarity: ``(n_rows, n_candidates)``; rows = items to be represented, columns = candidates.
        query_similarity: ``(n_rows, n_queries)``; similarity of each row item to each query (target)
            item. With no query columns every cap is 0 and all gains are 0.
        budget: fraction in (0, 1] or count of ``n_candidates``.
        eta: ``>= 0``, the query-relevance magnification (cap scale).
        lazy: lazy or plain greedy (same picks).

    Returns:
        :class:`Selection` named ``"flmi"``; ``objective`` is ``I(A;Q)``.
    """
    if not (eta >= 0.0 and math.isfinite(eta)):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    n_rows = _as_matrix(data_similarity, "data_similarity").shape[0]
    cap = _row_caps(query_similarity, eta, "query_similarity", n_rows)
    return _greedy(data_similarity, budget, cap=cap, initial=None, lazy=lazy, name="flmi")


def fl_conditional_gain(data_similarity: np.ndarray, private_similarity: np.ndarray, budget: float | int, *,
                        nu: float = 1.0, lazy: bool = True) -> Selection:
    """Greedy FL conditional gain: maximise ``f(A|P) = sum_i max(max_{j in A} s_ij - nu * max_p s_ip, 0)``.

    Args:
        data_similarity: ``(n_rows, n_candidates)``; rows = items to be represented, columns = candidates.
        private_similarity: ``(n_rows, n_private)``; similarity of each row item to each item of the
            existing/private set P. With no columns it is plain FL.
        budget: fraction in (0, 1] or count of ``n_candidates``.
        nu: ``>= 0``, the privacy hardness (scale of the initial coverage).
        lazy: lazy or plain greedy (same picks).

    Returns:
        :class:`Selection` named ``"flcg"``; ``objective`` is ``f(A|P)``.
    """
    if not (nu >= 0.0 and math.isfinite(nu)):
        raise ValueError(f"nu must be a finite number >= 0, got {nu!r}")
    n_rows = _as_matrix(data_similarity, "data_similarity").shape[0]
    initial = _row_caps(private_similarity, nu, "private_similarity", n_rows)
    if not np.all(np.isfinite(initial)):
        raise ValueError("nu * max private similarity overflows float32")
    return _greedy(data_similarity, budget, cap=None, initial=initial, lazy=lazy, name="flcg")


def top_k(scores: np.ndarray, budget: float | int) -> Selection:
    """The ``budget`` highest scores, highest first; equal scores in increasing index order.

    Args:
        scores: ``(n_candidates,)`` finite scores, one per candidate.
        budget: fraction in (0, 1] or count of ``n_candidates``.

    Returns:
        :class:`Selection` named ``"topk"``: ``gains`` are the chosen scores (float64) and ``objective``
        their sum.
    """
    a = np.asarray(scores)
    if a.ndim != 1:
        raise ValueError(f"scores must be 1-D (one per candidate), got shape {a.shape}")
    values = a.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError("scores contain non-finite values")
    k = budget_to_count(budget, values.shape[0])
    order = np.argsort(-values, kind="stable")[:k].astype(np.int64)
    gains = values[order]
    return Selection(order, gains, float(gains.sum()), "topk", values=values)


def extend_greedy(similarity: np.ndarray, count: int, chosen: Any, *, cap: np.ndarray | None = None,
                  initial: np.ndarray | None = None, name: str = "fl") -> Selection:
    """Continue a greedy facility-location selection from an existing subset ``chosen``.

    The coverage of every row starts at what ``chosen`` already gives it (``max_{j in chosen} c_ij``,
    with ``c`` clipped at 0 and at ``cap``), or ``initial`` when that is higher, and greedy adds ``count``
    candidates among the others: the conditional gain ``f(A | chosen)``. Use it to grow a selection
    when new candidates arrive without re-choosing the old picks.

    Args:
        similarity: ``(n_rows, n_candidates)``; rows = items to represent, columns = candidates.
        count: how many candidates to add (at most the number not in ``chosen``).
        chosen: column indices of the existing subset (kept, never picked again).
        cap: per-row cap (FLMI: ``eta * max_q s_iq``); None for FL and FLCG.
        initial: per-row coverage before anything is chosen (FLCG: ``nu * max_p s_ip``).
        name: the objective's name for the returned :class:`Selection`.

    Returns:
        :class:`Selection` of the added candidates only (column indices of ``similarity``, pick order);
        ``objective`` is the gain over the existing subset; ``values`` the conditional singleton value of
        every candidate (0 for the chosen ones).
    """
    s = _as_matrix(similarity, "similarity")
    n_rows, n_cand = s.shape
    kept = np.unique(np.asarray(chosen, dtype=np.int64).reshape(-1))
    if kept.size and (kept[0] < 0 or kept[-1] >= n_cand):
        raise ValueError(f"chosen indices must be in [0, {n_cand}), got {kept.min()}..{kept.max()}")
    rest = np.setdiff1d(np.arange(n_cand, dtype=np.int64), kept)
    if not 0 <= count <= rest.size:
        raise ValueError(f"cannot add {count} candidates: {rest.size} are not chosen yet")
    start = np.zeros(n_rows, np.float64) if initial is None else np.asarray(initial, np.float64).reshape(-1)
    if kept.size:
        covered = np.maximum(np.asarray(s[:, kept], dtype=np.float64), 0.0)
        if cap is not None:
            covered = np.minimum(covered, np.asarray(cap, np.float64).reshape(-1, 1))
        start = np.maximum(start, covered.max(axis=1))
    added = _greedy(np.ascontiguousarray(s[:, rest]), int(count), cap=cap, initial=start.astype(np.float32), lazy=True, name=name)
    values = np.zeros(n_cand, np.float64)
    values[rest] = added.values if added.values is not None else 0.0
    return Selection(rest[added.indices], added.gains, added.objective, name, added.n_positive, values)


def objective_value(similarity: np.ndarray, indices: Any, *, cap: np.ndarray | None = None,
                    initial: np.ndarray | None = None) -> float:
    """Exact ``sum_i max(max_{j in A} c_ij - initial_i, 0)`` in float64, for checking.

    ``c_ij = min(max(s_ij, 0), cap_i)`` (no cap when ``cap`` is None), ``initial`` defaults to 0 and
    ``max`` over the empty set is 0. With ``cap = eta * row max of the query similarity`` it is FLMI,
    with ``initial = nu * row max of the private similarity`` it is FLCG.

    Args:
        similarity: ``(n_rows, n_candidates)``; rows = items to be represented, columns = candidates.
        indices: candidate column indices ``A`` (duplicates are harmless).
        cap: optional ``(n_rows,)`` per-row cap.
        initial: optional ``(n_rows,)`` per-row initial coverage, ``>= 0``.
    """
    s = np.asarray(similarity)
    if s.ndim != 2:
        raise ValueError(f"similarity must be 2-D, got shape {s.shape}")
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size:
        best = np.maximum(np.asarray(s[:, idx], dtype=np.float64), 0.0)
        if cap is not None:
            best = np.minimum(best, np.asarray(cap, dtype=np.float64).reshape(-1, 1))
        best = best.max(axis=1)
    else:
        best = np.zeros(s.shape[0], np.float64)
    if initial is None:
        return float(best.sum())
    start = np.asarray(initial, dtype=np.float64).reshape(-1)
    if np.any(start < 0):
        raise ValueError("initial coverage must be >= 0")
    return float(np.maximum(best - start, 0.0).sum())


def select(name: str, budget: float | int, *, similarity: np.ndarray | None = None,
           query_similarity: np.ndarray | None = None, private_similarity: np.ndarray | None = None,
           scores: np.ndarray | None = None, eta: float = 1.0, nu: float = 1.0, lazy: bool = True) -> Selection:
    """Run the selection called ``name``.

    - ``"fl"``: :func:`facility_location` on ``similarity`` ``(n_rows, n_candidates)``.
    - ``"flmi"``: :func:`fl_mutual_information` on ``similarity`` and ``query_similarity`` ``(n_rows, n_queries)``.
    - ``"flcg"``: :func:`fl_conditional_gain` on ``similarity`` and ``private_similarity`` ``(n_rows, n_private)``.
    - ``"topk"``: :func:`top_k` on ``scores`` ``(n_candidates,)``.
    """
    def need(value: Any, arg: str) -> Any:
        if value is None:
            raise ValueError(f"selection '{name}' needs {arg}=")
        return value

    if name == "fl":
        return facility_location(need(similarity, "similarity"), budget, lazy=lazy)
    if name == "flmi":
        return fl_mutual_information(need(similarity, "similarity"), need(query_similarity, "query_similarity"),
                                     budget, eta=eta, lazy=lazy)
    if name == "flcg":
        return fl_conditional_gain(need(similarity, "similarity"), need(private_similarity, "private_similarity"),
                                   budget, nu=nu, lazy=lazy)
    if name == "topk":
        return top_k(need(scores, "scores"), budget)
    raise ValueError(f"unknown selection '{name}'; choose from: {', '.join(OBJECTIVES)}")
