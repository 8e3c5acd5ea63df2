"""Top-k's task floor: with a score that is the maximum over the targets' tasks (LESS), every task's best candidates by its
own score are kept first, and where every task already has them the subset is the plain top-k's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nncift import Record
from nncift.influence import InfluenceSpec, influence_class
from nncift.influence.less import aggregate_scores, subtask_scores
from nncift.run.layout import Layout
from nncift.run.report import selection_info
from nncift.selection import ObjectiveSpec, choose_subset, task_floor, top_k, top_k_with_task_floor
from nncift.settings.fields import SettingsError
from nncift.settings.stages import SelectionSettings
from nncift.steps.select import ADDED_SETTINGS, objective_spec


def test_the_floor_is_the_share_split_equally_at_least_one_and_never_more_than_fits() -> None:
    assert task_floor(30, 2, 0.1) == 2  # 1.5 rounds up
    assert task_floor(101, 4, 0.1) == 3  # 2.525
    assert task_floor(20, 4, 0.05) == 1  # 0.25: at least one each
    assert task_floor(10, 57, 0.1) == 0  # more tasks than picks: no floor
    assert task_floor(5, 2, 1.0) == 2  # the whole budget: k // n_tasks each
    assert task_floor(30, 1, 0.5) == 0 and task_floor(30, 3, 0.0) == 0  # one task, or no share: plain top-k


def test_a_task_whose_scores_run_lower_keeps_its_best_candidates() -> None:
    rng = np.random.default_rng(0)
    parts = rng.normal(size=(2, 60))
    parts[1] = -0.1 * parts[0] + 0.1 * parts[1]  # task 1's best are task 0's worst, and its scores run lower:
    parts[0] += 3.0  # the plain maximum takes all of its picks from task 0's column
    plain = top_k(parts.max(axis=0), 10)
    assert not np.isin(np.argsort(-parts[1])[:2], plain.indices).any()
    floored = top_k_with_task_floor(parts, 10, 0.4)  # 0.4 × 10 / 2 = 2 per task
    assert len(floored.indices) == 10 and len(set(floored.indices.tolist())) == 10
    assert set(np.argsort(-parts[1])[:2].tolist()) <= set(floored.indices.tolist())
    assert set(np.argsort(-parts[0])[:8].tolist()) <= set(floored.indices.tolist())  # the rest by the maximum
    assert floored.floor_added == 2 and selection_info(floored) == {"task_floor_added": 2}
    assert np.all(np.diff(floored.gains) <= 0) and floored.objective == pytest.approx(floored.gains.sum())
    np.testing.assert_allclose(floored.values, parts.max(axis=0))


def test_where_every_task_has_its_best_already_the_subset_is_the_plain_top_k() -> None:
    rng = np.random.default_rng(1)
    parts = rng.normal(size=(3, 90))  # tasks on one scale: each has several of its best above the threshold
    plain = top_k(parts.max(axis=0), 30)
    floored = top_k_with_task_floor(parts, 30, 0.1)
    np.testing.assert_array_equal(floored.indices, plain.indices)
    assert floored.floor_added == 0
    unfloored = top_k_with_task_floor(parts, 30, 0.0)
    np.testing.assert_array_equal(unfloored.indices, plain.indices)


def test_a_candidate_shared_by_two_tasks_counts_once_and_a_task_without_a_value_does_not_rank_it() -> None:
    parts = np.array([[9.0, 8.0, 1.0, 0.0, 0.0, 0.0],
                      [9.5, np.nan, 0.5, 0.4, 0.3, 0.0]])
    chosen = top_k_with_task_floor(parts, 4, 1.0)  # 2 each
    # task 0 keeps 0 and 1; candidate 0 is task 1's best too, so task 1 keeps its next two, never the NaN candidate 1
    assert set(chosen.indices.tolist()) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="non-finite"):
        top_k_with_task_floor(np.full((2, 3), np.nan), 1, 0.5)


def test_a_grown_subset_keeps_its_picks_and_gives_each_task_its_floor_of_the_larger_budget() -> None:
    """``select --add`` grows a floored subset: the kept picks stay and count, and a new record that is a low-scale task's
    best joins the subset although the plain maximum would pass it over."""
    rng = np.random.default_rng(2)
    parts = rng.normal(size=(2, 60))
    parts[0, :40] += 3.0  # task 1's scores run lower: the plain maximum takes everything from task 0
    parts[1, 50], parts[0, 50] = 2.9, -9.0  # a new record (old pool: the first 40), task 1's best by far, below task 0's maxima
    old = top_k_with_task_floor(parts[:, :40], 10, 0.4)
    grown = top_k_with_task_floor(parts, 14, 0.4, kept=old.indices)  # 0.4 × 14 / 2 → 3 per task
    assert len(grown.indices) == 4 and not np.isin(grown.indices, old.indices).any()
    union = set(old.indices.tolist()) | set(grown.indices.tolist())
    assert 50 in union and grown.floor_added >= 1
    plain = np.setdiff1d(np.arange(60), old.indices)
    assert 50 not in plain[np.argsort(-parts.max(axis=0)[plain], kind="stable")][:4]  # what --add did before: task 1's best left out
    for task in range(2):
        assert set(np.argsort(-parts[task])[:3].tolist()) <= union
    fresh = set(top_k_with_task_floor(parts, 14, 0.4).indices.tolist())
    assert len(union ^ fresh) == 2  # a fresh selection drops old pick 17, task 1's old floor, which --add keeps
    with pytest.raises(ValueError, match="smaller than"):
        top_k_with_task_floor(parts, 5, 0.4, kept=old.indices)


def test_a_grown_subset_with_less_room_than_missing_best_gives_each_task_one_first() -> None:
    parts = np.zeros((2, 12))
    parts[0, :8] = np.arange(8, 0, -1)  # old pool 0..7 on task 0's scale
    parts[1, :8] = -1.0
    parts[0, 8:], parts[1, 8:] = [-5, -5, 0.5, 0.4], [3, 2.5, -5, -5]  # new: task 1's two best (8, 9), task 0's next (10, 11)
    kept = np.array([0, 1, 2, 3])
    grown = top_k_with_task_floor(parts, 6, 1.0, kept=kept)  # floor 3 each; task 1 misses 8 and 9 (its third, old 3, is kept); room 2
    assert sorted(grown.indices.tolist()) == [8, 9]  # task 0 has its 3 best already
    tight = top_k_with_task_floor(parts, 5, 1.0, kept=kept[:3])  # floor 2 each: task 1 misses 8 and 9, room for 2
    assert sorted(tight.indices.tolist()) == [8, 9]
    parts[0, 10] = 7.5  # new record 10 is now task 0's second best: both tasks miss records
    one = top_k_with_task_floor(parts, 5, 1.0, kept=np.array([0, 4, 5, 6]))  # floor 2: task 0 misses 10, task 1 misses 8, 9
    assert one.indices.tolist() == [10]  # the first task's first missing best; task 1's would come next with more room
    two = top_k_with_task_floor(parts, 6, 1.0, kept=np.array([0, 4, 5, 6]))
    assert sorted(two.indices.tolist()) == [8, 10]  # one each before task 1's second (9)


def test_less_subtask_scores_are_the_parts_of_its_aggregation(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    matrix = rng.normal(size=(7, 40)).astype(np.float32)
    tasks = ["a", "a", "b", None, "b", "c", "a"]
    parts = subtask_scores(matrix, tasks)
    assert parts.shape == (4, 40)
    np.testing.assert_allclose(parts.max(axis=0), aggregate_scores(matrix, tasks))
    np.testing.assert_allclose(subtask_scores(matrix, tasks, max_block_elements=9), parts)
    path = tmp_path / "m.npy"
    np.save(path, matrix)
    spec = ObjectiveSpec("topk", 8, candidate_scores=lambda m: aggregate_scores(m, tasks), task_scores=lambda m: subtask_scores(m, tasks),
                         task_share=0.5)
    from_disk, in_memory = choose_subset(path, spec), choose_subset(matrix, spec)
    np.testing.assert_array_equal(from_disk.indices, in_memory.indices)
    np.testing.assert_array_equal(in_memory.indices, top_k_with_task_floor(parts, 8, 0.5).indices)


def test_a_less_run_selects_with_the_floor_of_its_settings() -> None:
    targets = [Record(f"q{i}", "", "a", task="t1" if i < 3 else "t2") for i in range(6)]
    matrix = np.tile(np.linspace(1.0, 0.0, 20), (6, 1))
    matrix[3:] = np.linspace(0.0, 0.5, 20)  # t2's best candidates are t1's worst, and all below t1's top half
    layout = Layout(targets, np.arange(6), np.arange(20), 0)
    spec = InfluenceSpec("less", {})
    less = influence_class("less")
    floored = choose_subset(matrix, objective_spec("topk", layout, SelectionSettings(budget=10), less, spec))
    plain = choose_subset(matrix, objective_spec("topk", layout, SelectionSettings(budget=10, task_share=0.0), less, spec))
    assert sorted(plain.indices.tolist()) == list(range(10))
    assert {19} <= set(floored.indices.tolist()) and floored.floor_added == 1  # 0.1 × 10 / 2 = 0.5: one of t2's best
    delift_se = objective_spec("topk", layout, SelectionSettings(budget=10), influence_class("delift-se"), InfluenceSpec("delift-se", {}))
    assert delift_se.task_scores is None  # its top-k is the row mean: no per-task parts, no floor


def test_the_share_is_checked_and_old_folders_keep_the_plain_maximum() -> None:
    assert SelectionSettings().task_share == 0.1
    with pytest.raises(SettingsError, match="task_share"):
        SelectionSettings(task_share=1.5)
    assert ADDED_SETTINGS["selection.task_share"] == 0.0  # a run folder from before the floor re-selects as it did


def test_select_says_how_many_picks_the_floor_added(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nncift.cli.commands import _print_summary
    from nncift.steps.select import SelectionResult

    records = [Record(f"c{j}", "", "a", task="t1" if j % 2 else "t2") for j in range(10)]
    manifest = {"cost": {"influence_evaluations_made": 10, "influence_evaluations_full_matrix": 100, "share_of_full_matrix": 0.1,
                         "seconds_by_stage": {}}, "counts": {"pool": 20, "targets": 6, "skipped": 0, "selected": 10},
                "settings": {"influence": "less", "selection": {"task_share": 0.1}}, "objective": "topk", "task_floor_added": 2}
    _print_summary(SelectionResult(np.arange(10), np.zeros(10), records, 1.0, manifest, tmp_path))
    assert "2 picks are a target task's own best that the plain maximum over tasks would have left out (--selection.task-share 0.1" in capsys.readouterr().out
    _print_summary(SelectionResult(np.arange(10), np.zeros(10), records, 1.0, {**manifest, "task_floor_added": 0}, tmp_path))
    assert "own best" not in capsys.readouterr().out
