"""The selection-aware criterion by which a learned predictor must beat the no-learning prior.

Facility location and top-k act on each target row's highest values, and a row's offset or scale
moves neither choice. A global Spearman's ρ or an MSE rewards predicting each row's mean (81% of
DELIFT's variance is the target's row mean) and can rise while the selection gets worse. The
criterion is therefore the mean of

- for facility location, the **per-row Spearman's ρ** (each row's ranking of its held-out candidates,
  averaged over rows); for top-k, Spearman's ρ of the candidates' **aggregated scores** (what top-k
  ranks: e.g. LESS's max over subtasks of the mean over that subtask's targets); for pointwise scores,
  the plain Spearman's ρ;
- **f_gain** of the run's own selection (facility location, or top-k with the influence function's
  aggregation over rows) on the held-out block (:mod:`nncift.selection.subset_quality`).

:func:`choose_candidate` ships a learned candidate only when it beats the prior on every fold, and
on average by more than one standard error of the per-fold differences. The per-fold scores it compares are
out of fold for every choice made on the folds (:mod:`nncift.network.candidates`). With ``network.confirm`` the
choice itself is checked out of fold too (:func:`confirmation_gains`): made on the other folds, it must gain on average
and lose on no fold, or the prior ships.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.stats import rankdata

from nncift.selection.subset_quality import ObjectiveSpec, f_gain, spearman

__all__ = ["MIN_FOLDS", "CandidateScores", "selection_criterion", "row_spearman", "mean_criteria", "choose_candidate", "confirmation_gains",
           "confirmed", "explain_choice"]

MIN_FOLDS = 3
"""Fewest folds with which a learned predictor may replace the prior (it must win on every one)."""

CandidateScores = Callable[[np.ndarray], np.ndarray]
"""Top-k's aggregation of a validation block's rows into one score per column (e.g. LESS's max over subtasks)."""


def row_spearman(true: np.ndarray, predicted: np.ndarray) -> float:
    """Mean over rows (with at least 3 finite values that are not all equal) of Spearman's ρ across the row's columns."""
    true, predicted = np.atleast_2d(true), np.atleast_2d(predicted)
    if true.shape[1] >= 3 and np.isfinite(true).all() and np.isfinite(predicted).all():  # the usual case, one vectorised pass
        t_rank, p_rank = rankdata(true, axis=1), rankdata(predicted, axis=1)
        t_rank -= t_rank.mean(axis=1, keepdims=True)
        p_rank -= p_rank.mean(axis=1, keepdims=True)
        spread = np.sqrt((t_rank ** 2).sum(axis=1) * (p_rank ** 2).sum(axis=1))
        usable = (np.ptp(true, axis=1) > 0) & (np.ptp(predicted, axis=1) > 0) & (spread > 0)
        if not usable.any():
            return float("nan")
        rho = (t_rank[usable] * p_rank[usable]).sum(axis=1) / spread[usable]
        return float(np.mean(np.clip(rho, -1.0, 1.0)))
    values = []
    for t, p in zip(true, predicted):
        ok = np.isfinite(t) & np.isfinite(p)
        if ok.sum() < 3 or np.ptp(t[ok]) == 0 or np.ptp(p[ok]) == 0:
            continue
        values.append(float(np.corrcoef(rankdata(t[ok]), rankdata(p[ok]))[0, 1]))
    return float(np.mean(values)) if values else float("nan")


def selection_criterion(true: np.ndarray, predicted: np.ndarray, budget: float, objective: str, seed: int,
                        candidate_scores: CandidateScores | None = None) -> dict[str, float]:
    """The ranking ρ (per-row for facility location, of aggregated scores for top-k, plain for 1-D scores), global
    Spearman, f_gain on the validation block and MSE; ``criterion`` = the mean of the ranking ρ and f_gain (clipped to [−1, 1])."""
    rho = spearman(true, predicted)
    spec = ObjectiveSpec(objective, budget if objective == "topk" else max(1, int(round(budget * true.shape[-1]))),
                         candidate_scores=candidate_scores if objective == "topk" else None)
    if true.ndim == 2 and objective == "topk":  # top-k reads one aggregated score per candidate: rank those
        ranking = spearman(spec.scores(true), spec.scores(predicted))
    else:
        ranking = row_spearman(true, predicted) if true.ndim == 2 and true.shape[0] > 1 else rho
    if true.ndim == 1:  # pointwise scores: a one-row matrix
        true, predicted = true[None, :], predicted[None, :]
    gain = f_gain(true, predicted, spec, seed=seed)["f_gain"]
    parts = [v for v in (ranking, max(-1.0, min(1.0, gain)) if not math.isnan(gain) else float("nan")) if not math.isnan(v)]
    return {"ranking_spearman": ranking, "spearman": rho, "f_gain": gain, "mse": float(np.mean((true - predicted) ** 2)),
            "criterion": float(np.mean(parts)) if parts else float("nan")}


def mean_criteria(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """Each criterion's mean over the folds (NaN folds left out)."""
    keys = per_fold[0].keys() if per_fold else ()
    return {k: float(np.nanmean([p[k] for p in per_fold])) if any(not math.isnan(p[k]) for p in per_fold) else float("nan") for k in keys}


def choose_candidate(per_fold: dict[str, list[dict[str, float]]], order: list[str], fallback: bool, forced: str) -> str:
    """The candidate to ship: ``order[0]`` is the no-learning fallback, the others must beat it.

    A candidate beats the fallback when its criterion is higher on **every** fold and higher on
    average by more than one standard error of the per-fold differences (better consistently, not by
    fold noise); of those, the best on average is shipped. Without ``fallback``, ``forced``.
    """
    if not fallback:
        return forced
    return _passing_best({name: [p["criterion"] for p in values] for name, values in per_fold.items()}, order)


def _passing_best(criteria: dict[str, list[float]], order: list[str]) -> str:
    """:func:`choose_candidate`'s rule on per-fold criteria: of the candidates that beat ``order[0]`` on every fold and on
    average by more than a standard error, the best on average (``order[0]`` when none does)."""
    base = np.array(criteria[order[0]], dtype=np.float64)
    best, best_value = order[0], -np.inf
    for name in order[1:]:
        values = np.array(criteria[name], dtype=np.float64)
        diff = values - base
        if diff.size < MIN_FOLDS or not np.all(np.isfinite(diff)) or not np.all(diff > 1e-9):
            continue
        se = float(diff.std(ddof=1) / math.sqrt(diff.size))
        if diff.mean() > se and float(values.mean()) > best_value + 1e-9:
            best, best_value = name, float(values.mean())
    return best


def confirmation_gains(criteria: dict[str, list[float]], order: list[str], usable: np.ndarray) -> np.ndarray:
    """Nested cross-validation of the choice itself: per fold i, the criterion on fold i of the candidate
    :func:`choose_candidate`'s rule picks on the folds ``usable[i]`` (the other folds), minus ``order[0]``'s (0 where it picks
    ``order[0]``). A candidate that wins on every fold only because it is the luckiest of those tried gains nothing here.
    With fewer than :data:`MIN_FOLDS` usable folds the rule picks ``order[0]``."""
    n = len(criteria[order[0]])
    gains = np.zeros(n)
    for i in range(n):
        others = np.flatnonzero(usable[i])
        chosen = _passing_best({name: [values[j] for j in others] for name, values in criteria.items()}, order)
        gains[i] = criteria[chosen][i] - criteria[order[0]][i]
    return gains


def confirmed(gains: np.ndarray) -> bool:
    """Whether the choice made out of fold gains over the prior on average and loses on no fold."""
    return bool(gains.size and gains.mean() > 1e-9 and np.all(gains > -1e-9))


def explain_choice(candidates: dict[str, dict[str, float]], chosen: str, held_out: str, confirmation: dict | None = None) -> str:
    """One sentence on why ``chosen`` was shipped, from the candidates' validation numbers (manifest and terminal); with
    ``confirmation`` (``network.confirm``), what the nested check of the choice found."""
    if confirmation and not confirmation["confirmed"]:
        gains = confirmation["out_of_fold_gains"]
        return (f"'{confirmation['candidate']}' beat the calibrated cosine on every held-out fold, but chosen on the other folds the "
                f"choice lost on {sum(g < -1e-9 for g in gains)} of {len(gains)} folds (mean {float(np.mean(gains)):+.3f}): the calibrated "
                "cosine is shipped (--network.confirm)")
    prior = candidates.get("prior", {}).get("criterion", float("nan"))
    shipped = candidates.get(chosen, {}).get("criterion", float("nan"))
    best = max(candidates, key=lambda name: candidates[name].get("criterion", -np.inf)) if candidates else "prior"
    where = "on every held-out fold"
    if chosen == "prior":
        if best == "prior":
            return f"no learned candidate beat the calibrated cosine on held-out {held_out} (criterion {prior:.3f})"
        return (f"'{best}' scored {candidates[best]['criterion']:.3f} against the prior's {prior:.3f}, but not {where} "
                f"(within the validation's noise): the calibrated cosine is shipped")
    checked = (f"; chosen on the other folds, the choice lost on no fold (mean {float(np.mean(confirmation['out_of_fold_gains'])):+.3f})"
               if confirmation else "")
    return (f"'{chosen}' beat the calibrated cosine {where} (criterion {shipped:.3f} against {prior:.3f}: "
            f"ranking ρ {candidates[chosen]['ranking_spearman']:.3f}, f_gain {candidates[chosen]['f_gain']:.3f}){checked}")
