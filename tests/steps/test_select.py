"""NN-CIFT end to end with DELIFT-SE and the real bundled embedder (fast: embeddings are cached)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from nncift import SelectSettings
from nncift.data.records import write_jsonl
from nncift.files.errors import InputError, SettingsMismatch
from nncift.influence import influence_class
from nncift.models.embeddings import embed_records
from nncift.selection import facility_location
from nncift.steps.preflight import check_labelled_block
from nncift.steps.select import plan_layout, run_select, sample_indices


def _settings(**overrides) -> SelectSettings:
    base = dict(influence="delift-se", **{"sampling.fraction": 0.25, "sampling.min_sampled": 8, "selection.budget": 0.25, "network.epochs": 5,
            "network.max_steps": 60, "network.folds": 3}, quiet=True, seed=3)
    return SelectSettings.build(**{**base, **overrides})


def test_sampling_is_seeded_random_not_the_first_rows() -> None:
    first = sample_indices(1000, 0.05, 10, np.random.default_rng(0))
    again = sample_indices(1000, 0.05, 10, np.random.default_rng(0))
    other = sample_indices(1000, 0.05, 10, np.random.default_rng(1))
    assert len(first) == 50 and np.array_equal(first, again) and not np.array_equal(first, other)
    assert not np.array_equal(first, np.arange(50)) and np.all(np.diff(first) > 0)
    assert len(sample_indices(20, 0.05, 10, np.random.default_rng(0))) == 10


def test_a_labelled_block_that_would_not_fit_is_refused_with_a_label_budget_hint(demo_pool) -> None:
    def build(**sampling: float) -> SelectSettings:
        return SelectSettings.build(influence="delift-se", **{"sampling.fraction": 0.5, "sampling.min_sampled": 2,
                                                              **{f"sampling.{k}": v for k, v in sampling.items()}})

    settings = build()
    small_memory = lambda shape: shape[0] * shape[1] <= 100  # noqa: E731  (a machine that holds 100 values)
    with pytest.raises(InputError, match=r"20 × 20 values .*--sampling.labels N, in sampled pool records.* than 0.5"):
        check_labelled_block(settings, influence_class("delift-se"), "fl", demo_pool[:40], [], fits=small_memory)
    check_labelled_block(build(labels=8), influence_class("delift-se"), "fl", demo_pool[:40], [], fits=small_memory)
    check_labelled_block(build(fraction=1.0), influence_class("delift-se"), "fl", demo_pool[:40], [],
                         fits=small_memory)  # every pair: the exact function, which this check leaves to the full-matrix path


def test_layout_orientation_for_each_objective(demo_pool) -> None:
    pool, targets = demo_pool[:40], demo_pool[40:52]
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    alone = plan_layout(pool, [], "fl", _settings().sampling, rng())
    assert alone.rows == pool and np.array_equal(alone.seen_rows, alone.seen_cols)
    targeted = plan_layout(pool, targets, "fl", _settings().sampling, rng())
    assert targeted.rows == targets and targeted.seen_rows.max() < len(targets)
    mutual = plan_layout(pool, targets, "flmi", _settings().sampling, rng())
    assert len(mutual.rows) == 52 and mutual.n_pool_rows == 40
    assert set(mutual.seen_rows[mutual.seen_rows >= 40] - 40) <= set(range(12))


def test_sampling_blocks_spend_the_same_pairs_on_more_records(demo_pool) -> None:
    pool, targets = demo_pool[:48], demo_pool[48:64]
    square = plan_layout(pool, [], "fl", _settings().sampling, np.random.default_rng(0))
    assert square.row_groups is None and square.labelled().all() and len(square.blocks(5)) == 9  # 12 × 12 in 5-blocks
    blocks = plan_layout(pool, [], "fl", _settings(**{"sampling.blocks": 4}).sampling, np.random.default_rng(0))
    assert len(blocks.seen_cols) == 24 == 2 * len(square.seen_cols) and np.array_equal(blocks.seen_rows, blocks.seen_cols)
    labelled = blocks.labelled()
    assert labelled.sum() == 4 * 6 * 6 and abs(int(labelled.sum()) - square.labelled().size) <= 12 * 12 // 2
    assert np.all(np.diff(blocks.col_groups) >= 0)  # ordered by group, so each group's block is one rectangle
    covered = np.zeros_like(labelled)
    for block in blocks.blocks(4):
        covered[block.row_start:block.row_stop, block.col_start:block.col_stop] = True
    assert np.array_equal(covered, labelled)  # exactly the within-group pairs are computed
    mutual = plan_layout(pool, targets, "flmi", _settings(**{"sampling.blocks": 4}).sampling, np.random.default_rng(0))
    group_of_col = dict(zip(mutual.seen_cols.tolist(), mutual.col_groups.tolist()))
    for row, group in zip(mutual.seen_rows.tolist(), mutual.row_groups.tolist()):
        if row < mutual.n_pool_rows:
            assert group_of_col[row] == group  # a pool record is in the same group as a row and as a column


@pytest.mark.e2e
def test_select_with_sampling_blocks_computes_only_the_blocks(tmp_path: Path, demo_pool) -> None:
    result = run_select(_settings(**{"sampling.blocks": 4, "sampling.fraction": 0.2}), tmp_path / "run", pool=demo_pool)
    q1 = np.load(tmp_path / "run" / "q1.npy")
    manifest = result.manifest
    assert manifest["cost"]["influence_evaluations_made"] == manifest["labelled_pairs"] == int(np.isfinite(q1).sum()) < q1.size
    assert manifest["sampling_blocks"] == 4 and len(result.indices) == 16
    predicted = np.load(tmp_path / "run" / "predicted.npy")
    rows, cols = np.load(tmp_path / "run" / "q1.rows.npy"), np.load(tmp_path / "run" / "q1.cols.npy")
    block = predicted[np.ix_(rows, cols)]
    np.testing.assert_allclose(block[np.isfinite(q1)], q1[np.isfinite(q1)], atol=1e-6)  # exact where labelled
    assert np.isfinite(predicted).all()


@pytest.mark.e2e
def test_manifest_reports_the_network_choice_and_positive_gain_picks(tmp_path: Path, demo_pool) -> None:
    result = run_select(_settings(**{"selection.budget": 0.9}), tmp_path / "run", pool=demo_pool)
    training = result.manifest["network_training"]
    assert result.manifest["sampling_blocks"] == 1  # --sampling.blocks 0: DELIFT-SE costs per record, one block
    # DELIFT-SE is the cosine of the network's own inputs: the calibrated prior is exact, nothing is trained, and the report says so
    assert training["architecture"] == "two-tower" and training["chosen"] == "prior" and training["candidates"] == {}
    assert "prior is exact" in training["note"] and training["prior"]["alpha"] == pytest.approx(0.5, abs=1e-4)
    positive = result.manifest["positive_gain_picks"]
    assert positive == int((result.scores > 0).sum()) and 0 < positive <= len(result.indices) == 58
    assert result.manifest["fill_rule"] is None or "singleton value" in result.manifest["fill_rule"]
    paper = run_select(_settings(**{"network.architecture": "paper"}), tmp_path / "paper", pool=demo_pool)
    assert paper.manifest["network_training"]["architecture"] == "paper" and len(paper.manifest["network_training"]["losses"]) == 5


@pytest.mark.e2e
def test_select_with_delift_se_writes_subset_manifest_and_artefacts(tmp_path: Path, demo_pool) -> None:
    pool_file = tmp_path / "pool.jsonl"
    write_jsonl(pool_file, [r.raw for r in demo_pool] + [{"instruction": "x", "output": ""}])
    result = run_select(_settings(data=(str(pool_file),)), tmp_path / "run")
    assert len(result.indices) == 16 == len(set(result.indices.tolist()))
    lines = [json.loads(line) for line in (tmp_path / "run" / "selected.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == result.indices.tolist()
    assert lines[0]["record"] == demo_pool[lines[0]["index"]].raw  # the record, unchanged
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["counts"] == {"pool": 64, "targets": 0, "selected": 16, "skipped": {"empty output": 1}}
    cost = manifest["cost"]
    assert cost["influence_evaluations_made"] == 16 * 16 and cost["influence_evaluations_full_matrix"] == 64 * 64
    assert {"influence on sampled block", "embeddings", "network training", "prediction", "selection"} <= set(cost["seconds_by_stage"])
    assert manifest["environment"]["packages"]["torch"] and manifest["inputs"][0]["sha256"]
    for name in ("q1.npy", "predicted.npy", "network.safetensors", "settings.json"):
        assert (tmp_path / "run" / name).exists()
    assert not list((tmp_path / "run").glob("*.pkl"))


@pytest.mark.e2e
def test_exact_q1_values_are_kept_and_selection_uses_the_matrix(tmp_path: Path, demo_pool) -> None:
    result = run_select(_settings(), tmp_path / "run", pool=demo_pool)
    predicted = np.load(tmp_path / "run" / "predicted.npy")
    q1, rows, cols = (np.load(tmp_path / "run" / f"q1{x}.npy") for x in ("", ".rows", ".cols"))
    np.testing.assert_allclose(predicted[np.ix_(rows, cols)], q1, atol=1e-6)
    embeddings = embed_records(demo_pool, progress=False)
    np.testing.assert_allclose(q1, (embeddings[rows] @ embeddings[cols].T + 1) / 2, atol=1e-5)
    assert result.indices.tolist() == facility_location(np.maximum(predicted, 0), 16).indices.tolist()


@pytest.mark.e2e
def test_same_seed_same_subset_other_seed_differs(tmp_path: Path, demo_pool) -> None:
    first = run_select(_settings(), tmp_path / "a", pool=demo_pool)
    second = run_select(_settings(), tmp_path / "b", pool=demo_pool)
    third = run_select(_settings(seed=4), tmp_path / "c", pool=demo_pool)
    assert first.indices.tolist() == second.indices.tolist()
    assert first.indices.tolist() != third.indices.tolist()
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "predicted.npy"), np.load(tmp_path / "b" / "predicted.npy"))


@pytest.mark.e2e
def test_targets_with_each_objective(tmp_path: Path, demo_pool) -> None:
    pool, targets = demo_pool[:48], [r for r in demo_pool[48:] if r.task == "sentiment"]
    for objective in ("fl", "flmi", "flcg", "topk"):
        result = run_select(_settings(**{"selection.objective": objective, "selection.budget": 8}), tmp_path / objective, pool=pool, targets=targets)
        assert len(result.indices) == 8 and result.manifest["objective"] == objective
        rows = len(targets) if objective in ("fl", "topk") else len(pool) + len(targets)
        assert result.manifest["matrix_shape"] == [rows, len(pool)]
    exact = {objective: sum(r.task == "sentiment" for r in run_select(
        _settings(**{"selection.objective": objective, "selection.budget": 8, "sampling.fraction": 1.0}), tmp_path / f"exact-{objective}",
                pool=pool, targets=targets).records)
        for objective in ("topk", "flcg")}
    assert exact == {"topk": 6, "flcg": 0}  # top-k of mean similarity takes all 6; conditional gain avoids P


@pytest.mark.e2e
def test_rerun_with_other_settings_is_refused(tmp_path: Path, demo_pool) -> None:
    run_select(_settings(), tmp_path / "run", pool=demo_pool)
    run_select(_settings(quiet=False), tmp_path / "run", pool=demo_pool)  # progress bars only: same run
    with pytest.raises(SettingsMismatch, match="fraction"):
        run_select(_settings(**{"sampling.fraction": 0.5}), tmp_path / "run", pool=demo_pool)


@pytest.mark.e2e
def test_finished_run_is_reused_with_its_cost_and_changed_records_are_refused(tmp_path: Path, demo_pool) -> None:
    first = run_select(_settings(), tmp_path / "run", pool=demo_pool)
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    written = {path.name: path.stat().st_mtime_ns for path in (tmp_path / "run").iterdir()}
    again = run_select(_settings(), tmp_path / "run", pool=demo_pool)
    assert np.array_equal(again.indices, first.indices) and np.allclose(again.scores, first.scores)
    assert [r.source for r in again.records] == [r.source for r in first.records]
    assert (tmp_path / "run" / "manifest.json").read_text() == manifest  # the ledger of the run that did the work
    assert {path.name: path.stat().st_mtime_ns for path in (tmp_path / "run").iterdir()} == written  # nothing written again
    (tmp_path / "run" / "predicted.npy").unlink()  # no longer what commit.json vouches for: selected again, same picks
    assert run_select(_settings(), tmp_path / "run", pool=demo_pool).indices.tolist() == first.indices.tolist()
    assert (tmp_path / "run" / "predicted.npy").exists()
    changed = [dataclasses.replace(demo_pool[0], output=demo_pool[0].output + " (edited)")] + list(demo_pool[1:])
    with pytest.raises(SettingsMismatch, match="records_sha256"):
        run_select(_settings(), tmp_path / "run", pool=changed)
    with pytest.raises(SettingsMismatch, match="other records"):  # a shortened input: refused, not an IndexError
        run_select(_settings(), tmp_path / "run", pool=demo_pool[:20])
    (tmp_path / "run" / "manifest.json").unlink()  # killed before the end: resumes, still refuses other records
    with pytest.raises(SettingsMismatch, match="other records"):
        run_select(_settings(), tmp_path / "run", pool=changed)


def test_flmi_without_targets_is_a_clear_error(tmp_path: Path, demo_pool) -> None:
    with pytest.raises(ValueError, match="needs --targets"):
        run_select(_settings(**{"selection.objective": "flmi"}), tmp_path / "run", pool=demo_pool)


# The real Alpaca file through run_select (with this module's settings) is checked in
# tests/steps/test_score_add_inspect.py::test_score_add_and_inspect_from_the_command_line_on_real_data, on the same 120 records as
# the command line there: embedding those real records is most of either check's time, and one test pays it once.
