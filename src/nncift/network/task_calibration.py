"""Per-task calibration: every target row of a task put on its task's own scale, labelled or not.

LESS scores a candidate by the maximum over the targets' subtasks of the mean over that subtask's targets, so a subtask
whose predicted values run higher takes the whole top-k. The predictors (the calibrated cosine, the network, their blend)
are fitted with one scale for every row, and the sentence embeddings' cosines differ in scale between tasks in ways the
influence function does not: on the 60 × 300 LESS benchmark the exact subset holds 19 ag_news and 2 rotten_tomatoes
records, the calibrated cosine's 1–2 ag_news and 22 rotten_tomatoes records. Row calibration
(:mod:`nncift.network.row_calibration`) fixes the scale of the rows that have labels; the unlabelled rows of a task (most of
them: u of the targets are labelled) keep the global scale. Validation cannot see this: it scores held-out pairs of
labelled rows.

Task calibration uses what the run knows about the rows: their task labels. For each task with at least
:data:`MIN_TASK_PAIRS` labelled (non-self) pairs, the line ``y ≈ a_s·p + b_s`` of its labelled rows' labels on the
calibrated prior's values (least squares, the slope shrunk towards 1 by its uncertainty: :data:`SLOPE_PRIOR`); every row
of that task without a line of its own then predicts ``a_s·p + b_s``. A task whose slope is not positive, or that has too
few labelled pairs, keeps ``p`` (the report says which). A row that the shipped row calibration gives a line of its own
(a labelled row) keeps that line.

Only the calibrated prior (shipped as it is or with row calibration) is put on task lines
(:data:`nncift.network.fitting.TASK_CALIBRATED`): a trained network's values on the labelled pairs, and the anchors',
are fitted to those pairs, so a line fitted there would stretch the unlabelled rows by what the predictor learnt of the
labelled ones (on the LESS benchmark it lost 0.17 f_gain on one seed that way).

The lines are kept as a second :class:`~nncift.network.row_calibration.RowCalibration` whose rows are the matrix's rows
that take a task line and whose kernel only matches a row with itself (:data:`LOOKUP_TEMPERATURE`): a prediction for one
of those rows reads its task's line, and any other record (a near-duplicate aside) keeps what the row calibration, if
any, gives it. So the network file, the streamed prediction and the neighbour-graph selection need nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from nncift.network.row_calibration import RowCalibration

__all__ = ["TaskRows", "TaskLine", "fit_task_lines", "task_calibration", "MIN_TASK_PAIRS", "LOOKUP_TEMPERATURE"]

MIN_TASK_PAIRS = 10
"""Labelled non-self pairs a task needs for its own line."""
SLOPE_PRIOR = 1.0
"""Standard deviation of a task's slope around 1 (the predictor's own scale): the least-squares slope is shrunk towards 1
by ``σ²/SLOPE_PRIOR²`` (σ² the line's residual variance), which matters only where the predictor barely varies over the
task's labelled pairs (there, a least-squares slope of ±50 is noise, not scale)."""
LOOKUP_TEMPERATURE = 1e-3
"""Kernel bandwidth of the lookup: weight exp((cos − 1)/τ) is 1 for the row itself and below 1e-4 under cos 0.99."""
LOOKUP_SHRINK = 1e-6
"""κ of the lookup: a row that matches itself keeps its task's line all but exactly."""


@dataclass(frozen=True)
class TaskRows:
    """The rows of the whole matrix with their task labels (targets of two or more tasks): what task calibration is for."""

    embeddings: np.ndarray
    """(N, d) L2-normalised embeddings of every row of the matrix, as the network reads them."""
    tasks: Sequence[str | None]
    """The task label of each row (None: a task of its own, never calibrated)."""
    block_rows: np.ndarray
    """The labelled block's rows, as indices into ``embeddings``."""


@dataclass(frozen=True)
class TaskLine:
    """One task's line, in the standardised units of the predictor: ``y ≈ slope·p + offset``."""

    slope: float
    offset: float
    pairs: int
    """Labelled non-self pairs it was fitted on."""
    rows: int
    """Labelled rows of the task."""


def fit_task_lines(predictions: np.ndarray, labels: np.ndarray, mask: np.ndarray,
                   block_tasks: Sequence[str | None]) -> tuple[dict[str, TaskLine], dict[str, str]]:
    """Each task's least-squares line of the labels on the predictions over its labelled rows' ``mask`` pairs.

    Returns (lines, skipped: task → why it keeps the predictor as it is)."""
    lines: dict[str, TaskLine] = {}
    skipped: dict[str, str] = {}
    tasks = np.asarray(["" if t is None else str(t) for t in block_tasks], dtype=object)
    for task in sorted(set(tasks.tolist()) - {""}):
        rows = np.flatnonzero(tasks == task)
        pairs = np.asarray(mask)[rows]
        x, y = np.asarray(predictions, dtype=np.float64)[rows][pairs], np.asarray(labels, dtype=np.float64)[rows][pairs]
        if x.size < MIN_TASK_PAIRS:
            skipped[task] = f"{x.size} labelled pairs (fewer than {MIN_TASK_PAIRS})"
            continue
        dx = x - x.mean()
        if float(dx @ dx) <= 1e-12 * x.size:
            skipped[task] = "no spread in the predictions"
            continue
        sxx, sxy = float(dx @ dx), float(dx @ (y - y.mean()))
        residual = float(np.mean((y - y.mean() - sxy / sxx * dx) ** 2))
        shrink = max(residual, 1e-6) / SLOPE_PRIOR ** 2  # the slope's prior around 1 (the predictor's own scale)
        slope = (sxy + shrink) / (sxx + shrink)
        if slope <= 0:
            skipped[task] = f"slope {slope:.3g} (not positive)"
            continue
        lines[task] = TaskLine(slope, float(y.mean() - slope * x.mean()), int(x.size), int(len(rows)))
    return lines, skipped


def task_calibration(task_rows: TaskRows, lines: dict[str, TaskLine], own: np.ndarray | None = None) -> RowCalibration | None:
    """The lookup calibration that gives every row of ``task_rows`` its task's line, except the ``own`` rows (a mask: rows
    with a line of their own from the row calibration); None when no row gets a line."""
    keep = np.asarray([t is not None and str(t) in lines for t in task_rows.tasks], dtype=bool)
    if own is not None:
        keep &= ~np.asarray(own, dtype=bool)
    if not keep.any():
        return None
    chosen = [lines[str(t)] for t, k in zip(task_rows.tasks, keep) if k]
    as_tensor = lambda v: torch.as_tensor(np.ascontiguousarray(np.asarray(v, dtype=np.float32)))  # noqa: E731
    return RowCalibration(as_tensor(np.asarray(task_rows.embeddings)[keep]), as_tensor([line.slope for line in chosen]),
                          as_tensor([line.offset for line in chosen]), LOOKUP_TEMPERATURE, LOOKUP_SHRINK)


def describe(lines: dict[str, TaskLine], skipped: dict[str, str], label_std: float, calibrated_rows: int) -> dict[str, Any]:
    """For the fit report: each task's line (slope; offset in label units), the tasks left as they were and why."""
    return {"rows": calibrated_rows,
            "lines": {task: {"slope": line.slope, "offset": line.offset * label_std, "pairs": line.pairs, "labelled_rows": line.rows}
                      for task, line in lines.items()},
            "kept_as_predicted": skipped}
