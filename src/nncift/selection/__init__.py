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

Modules: :mod:`~nncift.selection.kernels` (numba), :mod:`~nncift.selection.greedy` (in memory),
:mod:`~nncift.selection.out_of_core` (from a ``.npy`` file that need not fit in memory).
:func:`choose_subset` is the one entry point for a run's objective on a matrix in memory or on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from nncift.selection.greedy import (
    OBJECTIVES,
    Selection,
    budget_to_count,
    extend_greedy,
    facility_location,
    fill_exhausted,
    fl_conditional_gain,
    fl_mutual_information,
    objective_value,
    task_floor,
    top_k,
    top_k_with_task_floor,
)
from nncift.selection.out_of_core import column_means, fits_in_memory, select_from_npy

__all__ = [
    "OBJECTIVES", "CandidateScores", "ObjectiveSpec", "Selection", "budget_to_count", "choose_subset", "column_means",
    "extend_greedy", "facility_location", "fill_exhausted", "fits_in_memory", "fl_conditional_gain",
    "fl_mutual_information", "objective_terms", "objective_value", "select_from_npy", "split_matrix", "task_floor", "top_k",
    "top_k_with_task_floor",
]


CandidateScores = Callable[[np.ndarray], np.ndarray]
"""Aggregation of a (rows × candidates) matrix into one score per candidate (top-k)."""


@dataclass(frozen=True)
class ObjectiveSpec:
    """A selection objective on a matrix layout."""

    name: str
    """fl, flmi, flcg or topk."""
    budget: float | int
    """Subset size: fraction in (0, 1] or count (see :func:`nncift.selection.budget_to_count`)."""
    n_pool_rows: int = 0
    """For flmi/flcg: the leading rows that are pool records (the rest are the targets)."""
    eta: float = 1.0
    nu: float = 1.0
    candidate_scores: CandidateScores | None = None
    """For topk: the influence function's aggregation (default: the mean over rows)."""
    task_scores: CandidateScores | None = None
    """For topk: the per-task parts of ``candidate_scores`` (``(n_tasks, n_candidates)``, whose maximum it is), when the
    function has them (LESS); with ``task_share`` above 0 each task's best candidates by its own part are kept first."""
    task_share: float = 0.0
    """For topk with ``task_scores``: the share of the budget split equally among the tasks (:func:`top_k_with_task_floor`)."""

    def scores(self, matrix: np.ndarray) -> np.ndarray:
        """One score per candidate (topk)."""
        if self.candidate_scores is not None:
            return np.asarray(self.candidate_scores(matrix), dtype=np.float64)
        return np.asarray(matrix, dtype=np.float64).mean(axis=0)


def split_matrix(matrix: np.ndarray, spec: ObjectiveSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """(data similarity, other similarity) of a layout: FL uses the whole matrix; FLMI/FLCG split it."""
    similarity = np.maximum(np.asarray(matrix, dtype=np.float32), 0.0)
    if spec.name == "fl":
        return similarity, None
    return similarity[: spec.n_pool_rows], np.ascontiguousarray(similarity[spec.n_pool_rows :].T)


def objective_terms(matrix: np.ndarray, spec: ObjectiveSpec) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(data similarity, cap, initial coverage) of a facility-location objective on a layout's matrix, as
    :func:`objective_value` and :func:`extend_greedy` take them: FL has neither; FLMI caps each data row
    at ``eta * max_q max(s_iq, 0)`` over the target rows; FLCG starts it at ``nu * max_p max(s_ip, 0)``."""
    data, others = split_matrix(matrix, spec)
    if spec.name == "fl" or others is None:
        return data, None, None
    row_max = others.max(axis=1).astype(np.float64) if others.shape[1] else np.zeros(data.shape[0])
    return (data, spec.eta * row_max, None) if spec.name == "flmi" else (data, None, spec.nu * row_max)


def choose_subset(matrix: np.ndarray | str | Path, spec: ObjectiveSpec, *, workdir: str | Path | None = None) -> Selection:
    """The subset ``nncift select`` picks with objective ``spec``: from a matrix in memory, or from a float32
    ``.npy`` file read from disk without loading it (:func:`select_from_npy`; same picks). Negative values
    are clipped at 0 for the facility-location forms. ``workdir``: where the out-of-core working file goes. Top-k with
    per-task scores and a task share keeps each task's best candidates first (:func:`top_k_with_task_floor`)."""
    if spec.name == "topk" and spec.task_scores is not None and spec.task_share > 0:
        source = np.load(matrix, mmap_mode="r") if isinstance(matrix, (str, Path)) else matrix
        return top_k_with_task_floor(spec.task_scores(source), spec.budget, spec.task_share)
    if isinstance(matrix, (str, Path)):
        return select_from_npy(spec.name, matrix, spec.budget, n_pool_rows=spec.n_pool_rows, eta=spec.eta, nu=spec.nu,
                               candidate_scores=spec.candidate_scores, workdir=workdir)
    if spec.name == "topk":
        return top_k(spec.scores(matrix), spec.budget)
    data, others = split_matrix(matrix, spec)
    if spec.name == "fl" or others is None:
        return facility_location(data, spec.budget)
    if spec.name == "flmi":
        return fl_mutual_information(data, others, spec.budget, eta=spec.eta)
    if spec.name == "flcg":
        return fl_conditional_gain(data, others, spec.budget, nu=spec.nu)
    raise ValueError(f"unknown objective '{spec.name}': choose {', '.join(OBJECTIVES)}")


