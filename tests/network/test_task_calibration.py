"""Per-task calibration: every row of a task, labelled or not, on the line fitted on that task's labelled rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_inner_product import embeddings, random_network
from test_row_calibration import assert_every_path_agrees

from nncift.data.records import Record
from nncift.influence.delift import Delift
from nncift.influence.less import Less, aggregate_scores
from nncift.network.fitting import FitSettings, fit_pairwise
from nncift.network.paper import predict_pairwise
from nncift.network.row_calibration import RowCalibration
from nncift.network.task_calibration import MIN_TASK_PAIRS, TaskRows, fit_task_lines, task_calibration
from nncift.run.layout import Layout
from nncift.settings.stages import NetworkSettings
from nncift.steps.aggregation import network_task_rows


def test_each_task_gets_the_least_squares_line_of_its_labelled_rows() -> None:
    rng = np.random.default_rng(0)
    predictions = rng.standard_normal((6, 20))
    tasks = ["a", "a", "b", "b", "c", None]
    slope = {"a": 2.0, "b": 0.5, "c": 1.0}
    labels = np.stack([slope.get(t or "", 1.0) * p + (1.0 if t == "a" else -0.3) for t, p in zip(tasks, predictions)])
    mask = np.ones(predictions.shape, dtype=bool)
    mask[4, MIN_TASK_PAIRS - 1:] = False  # task c: one pair short of a line
    lines, skipped = fit_task_lines(predictions, labels, mask, tasks)
    assert set(lines) == {"a", "b"} and set(skipped) == {"c"}  # None is nobody's task
    assert lines["a"].slope == pytest.approx(2.0) and lines["a"].offset == pytest.approx(1.0)
    assert lines["b"].slope == pytest.approx(0.5) and lines["b"].offset == pytest.approx(-0.3)
    assert (lines["a"].rows, lines["a"].pairs) == (2, 40)
    flipped, why = fit_task_lines(predictions[:2], -labels[:2], mask[:2], ["a", "a"])
    assert not flipped and "not positive" in why["a"]  # a task's ranking of its candidates is never reversed


def test_a_predictor_that_barely_varies_is_not_blown_up_by_noise() -> None:
    """Over 30 pairs where the predictor spans 0.01 and the labels are mostly noise, least squares finds a slope of tens; the
    shrunk slope stays near the predictor's own scale (1), while a task whose predictor does vary keeps its fitted slope."""
    rng = np.random.default_rng(3)
    flat = 0.005 * rng.standard_normal((2, 15))
    noise = 40 * flat + rng.standard_normal((2, 15))  # a slope of 40, far inside its standard error (about 36)
    least_squares = np.polyfit(flat.ravel(), noise.ravel(), 1)[0]
    lines, _ = fit_task_lines(flat, noise, np.ones_like(flat, dtype=bool), ["a", "a"])
    assert abs(least_squares) > 10 and abs(lines["a"].slope - 1.0) < 0.1
    varied = rng.standard_normal((2, 15))
    lines, _ = fit_task_lines(varied, 3.0 * varied + 0.1 * rng.standard_normal((2, 15)), np.ones_like(varied, dtype=bool), ["a", "a"])
    assert lines["a"].slope == pytest.approx(3.0, abs=0.1)


def test_the_lookup_gives_every_row_of_a_task_its_line_and_any_other_record_none() -> None:
    rows = embeddings(30, 16, 1)
    tasks = ["a"] * 10 + ["b"] * 10 + [None] * 10
    lines, _ = fit_task_lines(np.tile(np.arange(12.0), (2, 1)), np.stack([3 * np.arange(12.0) + 1, 0.5 * np.arange(12.0)]),
                              np.ones((2, 12), dtype=bool), ["a", "b"])
    calibration = task_calibration(TaskRows(rows, tasks, np.array([0, 10])), lines)
    assert calibration is not None and calibration.rows.shape[0] == 20
    a, b = (v.numpy() for v in calibration.lines(torch.from_numpy(rows)))
    np.testing.assert_allclose(a[:10], 3.0, atol=1e-4)
    np.testing.assert_allclose(b[:10], 1.0, atol=1e-4)
    np.testing.assert_allclose(a[10:20], 0.5, atol=1e-4)
    np.testing.assert_allclose(b[10:20], 0.0, atol=1e-4)
    np.testing.assert_allclose(a[20:], 1.0, atol=1e-4)  # rows without a task keep the prediction
    stranger = embeddings(5, 16, 99)
    a, b = (v.numpy() for v in calibration.lines(torch.from_numpy(stranger)))
    np.testing.assert_allclose(a, 1.0, atol=1e-4)
    np.testing.assert_allclose(b, 0.0, atol=1e-4)
    assert task_calibration(TaskRows(rows, tasks, np.array([0])), {}) is None


def test_every_prediction_path_applies_both_calibrations_and_they_survive_saving(tmp_path: Path) -> None:
    """Rows with a line of their own (the row calibration's labelled rows) keep it; every other row of a task takes the
    task's line on the uncalibrated prediction."""
    d = 12
    rows, cols = embeddings(25, d, 1), embeddings(40, d, 2)
    net = random_network(d)
    rng = np.random.default_rng(4)
    plain = predict_pairwise(net, rows, cols)
    with torch.no_grad():
        base = net.standardised_block(torch.from_numpy(rows), torch.from_numpy(cols)).numpy()
    labels = rng.uniform(0.2, 3.0, (25, 1)) * base + rng.normal(0, 1, (25, 1))
    mask = np.zeros(base.shape, dtype=bool)
    mask[:10, :15] = True
    net.attach_row_calibration(RowCalibration.fit(rows, base, labels, mask, temperature=0.05))
    row_calibrated = predict_pairwise(net, rows, cols)
    tasks = ["a"] * 12 + ["b"] * 13
    lines, _ = fit_task_lines(np.tile(np.arange(12.0), (2, 1)), np.stack([2 * np.arange(12.0) + 1, 0.5 * np.arange(12.0) - 1]),
                              np.ones((2, 12), dtype=bool), ["a", "b"])
    own = np.arange(25) < 10
    net.attach_task_calibration(task_calibration(TaskRows(rows, tasks, np.arange(10)), lines, own))
    self_cols = np.full(25, -1, dtype=np.int64)
    self_cols[:20] = rng.permutation(40)[:20]
    mean, std = float(net.label_mean), float(net.label_std)
    slope, offset = np.where(np.arange(25) < 12, 2.0, 0.5)[:, None], np.where(np.arange(25) < 12, 1.0, -1.0)[:, None]
    no_self = predict_pairwise(net, rows, cols)
    np.testing.assert_allclose(no_self[:10], row_calibrated[:10], atol=1e-4)  # their own lines
    np.testing.assert_allclose(no_self[10:], (mean + std * (slope * (plain - mean) / std + offset))[10:], atol=1e-3)  # the task's
    loaded = assert_every_path_agrees(net, rows, cols, self_cols, tmp_path)
    assert loaded.architecture()["task_calibration"]["rows"] == 15


def _two_task_targets(seed: int) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, np.ndarray]:
    """40 targets of two tasks (clustered embeddings) × 300 candidates, and 60 labelled candidates; task a's labels move 3
    per unit cosine, b's 0.4: the cosine alone (any one line of it) ranks b's candidates too high."""
    rng = np.random.default_rng(seed)
    d = 16
    centres = embeddings(2, d, seed + 10)
    rows = np.concatenate([centres[i] + 0.15 * rng.standard_normal((20, d)) for i in range(2)]).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    cols = embeddings(300, d, seed + 20)
    cos = rows @ cols.T
    scale = np.where(np.arange(40) < 20, 3.0, 0.4)[:, None]
    true = scale * cos + 0.02 * rng.standard_normal(cos.shape)
    return rows, cols, ["a"] * 20 + ["b"] * 20, true, np.sort(rng.choice(300, 60, replace=False))


@pytest.mark.parametrize("seed", [0, 1])
def test_unlabelled_rows_take_their_tasks_scale_and_top_k_follows_the_exact_function(seed: int) -> None:
    rows, cols, tasks, true, seen_cols = _two_task_targets(seed)
    seen_rows = np.array([0, 1, 20, 21])  # two labelled rows per task, as a stratified u × u block gives
    labels = true[np.ix_(seen_rows, seen_cols)]
    settings = FitSettings(NetworkSettings(max_steps=20, folds=4, seed=seed))
    aggregate = lambda m, idx: aggregate_scores(m, [tasks[int(seen_rows[i])] for i in idx])  # noqa: E731
    fits = {name: fit_pairwise(rows[seen_rows], cols[seen_cols], labels, settings, objective="topk", held_out="columns",
                               candidate_scores=aggregate, tasks=TaskRows(rows, tasks, seen_rows) if name == "tasks" else None)
            for name in ("tasks", "global")}
    network, report = fits["tasks"]
    assert set(report.task_calibration["lines"]) == {"a", "b"}
    assert report.task_calibration["lines"]["a"]["slope"] > 2 * report.task_calibration["lines"]["b"]["slope"]
    assert "its task's scale" in report.note
    assert not fits["global"][1].task_calibration
    _, unlabelled_task = fit_pairwise(rows[seen_rows], cols[seen_cols], labels, settings, objective="topk", held_out="columns",
                                      candidate_scores=aggregate, tasks=TaskRows(rows, tasks[:39] + ["c"], seen_rows))
    assert unlabelled_task.task_calibration["kept_as_predicted"] == {"c": "no labelled rows"}  # a task the sample missed
    unlabelled = np.setdiff1d(np.arange(40), seen_rows)
    error = {name: float(np.abs(predict_pairwise(net, rows, cols)[unlabelled] - true[unlabelled]).mean()) for name, (net, _) in fits.items()}
    assert error["tasks"] < 0.5 * error["global"]
    k = 30
    exact = set(np.argsort(-aggregate_scores(true, tasks))[:k])
    picked = {name: set(np.argsort(-aggregate_scores(predict_pairwise(net, rows, cols), tasks))[:k]) for name, (net, _) in fits.items()}
    assert len(picked["tasks"] & exact) >= len(picked["global"] & exact) + 5


def test_a_learned_predictor_keeps_its_scale_since_its_labelled_values_are_in_sample() -> None:
    """A trained network's (or the anchors') values on the labelled pairs are fitted to them: a line fitted there would
    stretch the unlabelled rows by what it learnt of the labelled ones, so only the calibrated prior is put on task lines."""
    rows, cols, tasks, true, seen_cols = _two_task_targets(0)
    seen_rows = np.array([0, 1, 20, 21])
    forced = FitSettings(NetworkSettings(max_steps=20, folds=4, seed=0, fallback=False), force="network")
    network, report = fit_pairwise(rows[seen_rows], cols[seen_cols], true[np.ix_(seen_rows, seen_cols)], forced, objective="topk",
                                   held_out="columns", tasks=TaskRows(rows, tasks, seen_rows))
    assert report.chosen == "network" and network.task_calibration is None
    assert "in sample" in report.task_calibration["kept_as_predicted"]["every task"]
    assert "its task's scale" not in report.note


def _records(tasks: list[str | None]) -> list[Record]:
    return [Record(instruction=f"q{i}", input="", output="a", task=t) for i, t in enumerate(tasks)]


def test_which_runs_calibrate_per_task() -> None:
    targets = _records(["a", "b", "a", "b"])
    embeddings_ = embeddings(4, 8, 0)
    targets_only = Layout(targets, np.array([0, 1]), np.array([0, 1, 2]), 0)
    chosen = network_task_rows("auto", Less, targets_only, "topk", embeddings_)
    assert chosen is not None and list(chosen.tasks) == ["a", "b", "a", "b"] and list(chosen.block_rows) == [0, 1]
    assert network_task_rows("auto", Delift, targets_only, "fl", embeddings_) is None  # no aggregation by task: auto leaves it
    assert network_task_rows("on", Delift, targets_only, "fl", embeddings_) is not None
    assert network_task_rows("off", Less, targets_only, "topk", embeddings_) is None
    one_task = Layout(_records(["a", "a", None, "a"]), np.array([0, 1]), np.array([0, 1, 2]), 0)
    assert network_task_rows("on", Less, one_task, "topk", embeddings_) is None
    pool_rows = Layout(targets, np.array([0, 1]), np.array([0, 1]), 4)  # the pool represents itself
    assert network_task_rows("on", Less, pool_rows, "topk", embeddings_) is None
