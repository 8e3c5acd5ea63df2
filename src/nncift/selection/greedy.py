"""In-memory greedy facility location (FL, FLMI, FLCG), top-k, budgets and the :class:`Selection` they return.

The conventions (orientation, clipping, numerics, ties, filling) are in :mod:`nncift.selection`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from nncift.files.errors import InputError
from nncift.selection.kernels import all_gains, lazy_greedy, plain_greedy, prepare_candidate_major, row_max, threads_for
from nncift.settings.choices import OBJECTIVES

__all__ = [
    "Selection",
    "budget_to_count",
    "task_floor",
    "top_k_with_task_floor",
    "facility_location",
    "fl_mutual_information",
    "fl_conditional_gain",
    "top_k",
    "objective_value",
    "fill_exhausted",
    "extend_greedy",
    "OBJECTIVES",
]



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
    floor_added: int | None = None
    """Top-k with a task floor: picks the floor added that the plain top-k would not have chosen (as many of its picks left out)."""


# --------------------------------------------------------------------------------------------
# budgets


def budget_to_count(budget: float | int, n_candidates: int) -> int:
    """Number of candidates to select for ``budget`` out of ``n_candidates``.

    The budget rule is :func:`nncift.settings.fields.normalise_budget` (the one ``--budget`` follows): a number
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
        from nncift.settings.fields import normalise_budget  # the rule lives with the settings (no numba there)

        rule = normalise_budget(budget)
        if isinstance(rule, float):
            return min(max(1, int(math.floor(rule * n + 0.5))), n)
        count = rule
    if count < 0:
        raise InputError(f"budget count must be >= 0, got {count}")
    if count > n:
        raise InputError(f"budget count {count} exceeds the number of candidates ({n})")
    return count


# --------------------------------------------------------------------------------------------
# in-memory greedy

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
    with threads_for(a.size):
        out, bad = row_max(a, float(scale))
    if bad:
        raise ValueError(f"{what} contains {bad} non-finite entries")
    return out


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
    with threads_for(n_rows * n_cand):
        bad = prepare_candidate_major(s, cap if cap is not None else np.zeros(n_rows, np.float32), use_cap, st)
        if bad:
            raise ValueError(f"similarity contains {bad} non-finite (as float32) entries")
        initial_gains = all_gains(st, cur)
        if lazy:
            picks, gains = lazy_greedy(st, st.view(np.int32), cur, k, initial_gains.copy())
        else:
            picks, gains = plain_greedy(st, cur, k)
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


def task_floor(k: int, n_tasks: int, share: float) -> int:
    """Picks each of ``n_tasks`` tasks is guaranteed out of ``k``: ``share · k`` split equally, rounded (halves up), at
    least 1 when ``share`` is above 0, and at most ``k // n_tasks``; 0 with fewer than two tasks or no share."""
    if share <= 0 or n_tasks < 2 or k <= 0:
        return 0
    return min(max(1, int(math.floor(share * k / n_tasks + 0.5))), k // n_tasks)


def top_k_with_task_floor(task_scores: np.ndarray, budget: float | int, share: float, *, kept: np.ndarray | None = None) -> Selection:
    """Top-k of the per-candidate maximum over tasks, with every task's best candidates kept first.

    Each task's :func:`task_floor` best candidates by that task's own score are kept (a candidate already kept for an
    earlier task is skipped, so each task gets its own), then the rest of the budget goes to the highest maxima. When
    every task already has that many of its best among the plain top-k (a task's best are: any candidate above the
    top-k's threshold on that task is), the subset is the plain :func:`top_k`'s.

    Args:
        task_scores: ``(n_tasks, n_candidates)``; a candidate's score is its maximum over the tasks (NaN entries left
            out: a task with no value for a candidate does not rank it).
        budget: fraction in (0, 1] or count of ``n_candidates``.
        share: the share of the budget split equally among the tasks (0: plain top-k).
        kept: candidates already in the subset (a subset being grown, ``select --add``): they count towards the budget,
            and each towards the floor of the first task among whose best it is; only the added picks are returned. Where
            the tasks' missing best outnumber the room left, each task gets its first missing one before any gets a second.

    Returns:
        :class:`Selection` named ``"topk"`` in decreasing score order (ties by the lower index); ``values`` are the maxima;
        ``floor_added``: the picks that the plain top-k (of the candidates not kept) would not have made.
    """
    parts = np.asarray(task_scores, dtype=np.float64)
    if parts.ndim != 2:
        raise ValueError(f"task scores must be 2-D (tasks × candidates), got shape {parts.shape}")
    ranked = np.where(np.isfinite(parts), parts, -np.inf)
    values = ranked.max(axis=0) if parts.shape[0] else np.full(parts.shape[1], -np.inf)
    if not np.all(np.isfinite(values)):
        raise ValueError("scores contain non-finite values (a candidate with no finite task score)")
    k = budget_to_count(budget, values.shape[0])
    old = np.zeros(values.shape[0], dtype=bool)
    old[np.asarray(kept if kept is not None else [], dtype=np.int64)] = True
    if k < int(old.sum()):
        raise ValueError(f"a budget of {k} is smaller than the {int(old.sum())} candidates kept")
    floor = task_floor(k, parts.shape[0], share)
    chosen, assigned, missing = old.copy(), np.zeros(values.shape[0], dtype=bool), []
    for task in ranked if floor else ():
        order = np.argsort(-task, kind="stable")
        best = order[np.isfinite(task[order]) & ~assigned[order]][:floor]  # kept ones among them count for this task
        assigned[best] = True
        missing.append(best[~old[best]])
    room = k - int(old.sum())
    for rank in range(floor):  # a grown subset may lack more than its room: each task's first missing best before any second
        for best in missing:
            if rank < len(best) and room > 0 and not chosen[best[rank]]:
                chosen[best[rank]], room = True, room - 1
    rest = np.argsort(-values, kind="stable")
    chosen[rest[~chosen[rest]][:room]] = True
    added = np.flatnonzero(chosen & ~old)
    order = added[np.argsort(-values[added], kind="stable")].astype(np.int64)
    gains = values[order]
    plain = rest[~old[rest]][: k - int(old.sum())]
    floor_added = int(len(order) - np.isin(order, plain).sum()) if floor else None
    return Selection(order, gains, float(gains.sum()), "topk", values=values, floor_added=floor_added)


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
