"""How a run's selection reads the influence matrix, for the network's validation and for top-k: the function's own
aggregation of rows into one score per candidate, and what the validation holds out (``nncift select`` and the
research sweep use the same, so that a benchmark judges what a run ships)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from nncift.data.records import Record
from nncift.influence import InfluenceFunction, InfluenceSpec, PairwiseInfluence
from nncift.network.folds import validation_hold_out
from nncift.network.task_calibration import TaskRows
from nncift.run.layout import Layout

__all__ = ["candidate_scores", "network_validation", "network_task_rows", "topk_scorers"]


def _has_own_aggregation(function_class: type[InfluenceFunction]) -> bool:
    """The function aggregates a matrix's rows into one score per candidate its own way (LESS), not by the row mean."""
    return issubclass(function_class, PairwiseInfluence) and function_class.candidate_scores is not PairwiseInfluence.candidate_scores


def _aggregating_function(function_class: type[InfluenceFunction], spec: InfluenceSpec) -> PairwiseInfluence | None:
    """The influence function (no model loaded: ``prepare`` is not called) when it has its own top-k aggregation; else None."""
    if not _has_own_aggregation(function_class):
        return None
    function = function_class.from_options(spec.options, run=spec.run, progress=False)
    assert isinstance(function, PairwiseInfluence)
    return function


def candidate_scores(function_class: type[InfluenceFunction], spec: InfluenceSpec) -> Callable[[np.ndarray, Sequence[Record]], np.ndarray] | None:
    """Top-k's aggregation of an influence matrix's rows (records ``rows``) into one score per candidate, when the
    function has its own (LESS: max over subtasks of the mean over that subtask's targets); None: the mean over rows."""
    function = _aggregating_function(function_class, spec)
    return None if function is None else function.candidate_scores


def topk_scorers(function_class: type[InfluenceFunction], spec: InfluenceSpec, rows: Sequence[Record]) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The ``candidate_scores`` and ``task_scores`` of top-k's :class:`~nncift.selection.ObjectiveSpec` for a matrix whose rows
    are ``rows``: the function's own aggregation and its per-task parts (LESS); empty when it aggregates by the row mean."""
    function = _aggregating_function(function_class, spec)
    if function is None:
        return {}

    def task_parts(matrix: np.ndarray) -> np.ndarray:
        parts = function.candidate_task_scores(matrix, rows)
        assert parts is not None  # only asked of a function that overrides it
        return parts

    scorers: dict[str, Callable[[np.ndarray], np.ndarray]] = {"candidate_scores": lambda matrix: function.candidate_scores(matrix, rows)}
    if type(function).candidate_task_scores is not PairwiseInfluence.candidate_task_scores:
        scorers["task_scores"] = task_parts
    return scorers


def network_validation(function_class: type[InfluenceFunction], spec: InfluenceSpec, layout: Layout, objective: str) -> dict[str, Any]:
    """The network's validation for a run's layout and selection ``objective``: the keyword arguments ``objective`` (``topk``
    or ``fl``), ``candidate_scores`` (the function's aggregation of the labelled block's rows) and ``held_out``
    (:func:`~nncift.network.folds.validation_hold_out`) of :func:`nncift.network.training.train_network`."""
    criterion = "topk" if objective == "topk" else "fl"
    aggregate = candidate_scores(function_class, spec)
    block_scores = None if aggregate is None else (lambda m, idx: aggregate(m, [layout.rows[int(layout.seen_rows[i])] for i in idx]))
    return {"objective": criterion, "candidate_scores": block_scores,
            "held_out": validation_hold_out(len(layout.seen_rows), len(layout.rows), criterion)}


def network_task_rows(mode: str, function_class: type[InfluenceFunction], layout: Layout, objective: str,
                      row_embeddings: np.ndarray) -> TaskRows | None:
    """The rows the network calibrates per task (``network.task_calibration``; :mod:`nncift.network.task_calibration`), or
    None: the setting is ``off``; the rows are not separate targets (the pool represents itself, or its rows come first)
    of two or more task labels; or, with ``auto``, the selection does not aggregate the targets by task (only top-k with
    the function's own aggregation does: LESS's maximum over subtasks)."""
    if mode == "off" or layout.n_pool_rows or not layout.rows:
        return None
    tasks = [record.task for record in layout.rows]
    if len({t for t in tasks if t is not None}) < 2:
        return None
    if mode == "auto" and not (objective == "topk" and _has_own_aggregation(function_class)):
        return None
    return TaskRows(np.asarray(row_embeddings), tasks, np.asarray(layout.seen_rows))
