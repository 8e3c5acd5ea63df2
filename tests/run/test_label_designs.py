"""Label designs by cost structure, label anchors, validation by design and the row-centred loss (network issue)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nncift.data.demo import demo_records
from nncift.influence import influence_class
from nncift.models.embeddings import embed_records
from nncift.network.anchors import Anchors, anchor_correction
from nncift.network.files import load_network, save_network
from nncift.network.fitting import FitSettings, _build_two_tower, _pair_data, fit_pairwise
from nncift.network.folds import fold_masks
from nncift.network.tower_training import train_stacked
from nncift.network.towers import TwoTowerNetwork, predict_two_tower
from nncift.network.validation import row_spearman
from nncift.run.layout import plan_layout, resolve_sampling, sample_indices, stratified_indices, stratified_order
from nncift.selection.subset_quality import ObjectiveSpec, f_gain
from nncift.settings.stages import NetworkSettings, SamplingSettings, SelectSettings
from nncift.steps.select import run_select

QUICK = FitSettings(NetworkSettings(max_steps=60, folds=4, seed=0), eval_every=10, learning_rates=(3e-3,), weight_decays=(1e-4,))


@pytest.fixture(scope="module")
def records():
    return demo_records(160, seed=0)


@pytest.fixture(scope="module")
def embeddings(records) -> np.ndarray:
    return embed_records(records, progress=False)


def test_designs_resolve_to_what_the_function_and_the_evidence_ask(records) -> None:
    pool, targets = records[:100], records[100:120]
    less, delift, delift_se = influence_class("less"), influence_class("delift"), influence_class("delift-se")
    base = SamplingSettings(fraction=0.1)
    assert resolve_sampling(base, less, 100, 20, 20).design == "block"  # auto: the u × u block won on the LESS benchmark
    assert resolve_sampling(SamplingSettings(fraction=0.1, design="all-targets"), delift_se, 100, 0, 100).design == "block"  # no targets
    per_pair = resolve_sampling(base, delift, 100, 20, 20)
    assert per_pair.design == "block" and per_pair.blocks == 4  # DELIFT: its own 4 blocks
    every_target = SamplingSettings(fraction=0.1, design="all-targets")
    layout = plan_layout(pool, targets, "topk", resolve_sampling(every_target, less, 100, 20, 20), np.random.default_rng(0))
    assert np.array_equal(layout.seen_rows, np.arange(20)) and len(layout.seen_cols) == 10 and layout.labelled().all()
    mutual = plan_layout(pool, targets, "flmi", resolve_sampling(every_target, delift_se, 100, 20, 120), np.random.default_rng(0))
    assert set(range(100, 120)) <= set(mutual.seen_rows.tolist())  # every target row
    assert set(mutual.seen_rows[mutual.seen_rows < 100].tolist()) == set(mutual.seen_cols.tolist())  # plus the sampled pool rows


def test_fraction_one_labels_every_pair_whatever_the_design(records) -> None:
    pool, targets = records[:24], records[24:28]
    for name, targets_ in (("delift", targets), ("delift", []), ("less", targets)):
        sampling = resolve_sampling(SamplingSettings(fraction=1.0), influence_class(name), 24, len(targets_), len(targets_) or 24)
        layout = plan_layout(pool, targets_, "fl", sampling, np.random.default_rng(0))
        assert len(layout.seen_rows) == len(layout.rows) and len(layout.seen_cols) == 24 and layout.labelled().all(), name


def test_stratified_samples_give_every_task_its_share_and_nest() -> None:
    tasks = ["a"] * 30 + ["b"] * 30 + ["c"] * 30 + ["d"] * 30 + ["e"] * 6
    for fraction, minimum in ((0.05, 10), (0.05, 1), (0.3, 1), (0.02, 1)):
        for seed in range(5):
            picked = stratified_indices(tasks, fraction, minimum, np.random.default_rng(seed))
            assert len(picked) == len(sample_indices(len(tasks), fraction, minimum, np.random.default_rng(seed)))
            assert np.all(np.diff(picked) > 0)
            counts = np.bincount(np.minimum(picked // 30, 4), minlength=5)
            share = np.array([30, 30, 30, 30, 6]) * len(picked) / len(tasks)
            if len(picked) >= 5:
                assert np.all(counts >= 1), (fraction, seed, counts)  # every task has labelled rows
            assert np.all(np.abs(counts - share) <= 1.0 + 1e-9) or len(picked) < 5, (fraction, seed, counts)
    order = stratified_order(tasks, np.random.default_rng(3))
    assert sorted(order.tolist()) == list(range(len(tasks)))  # a permutation: prefixes nest
    assert np.array_equal(order, stratified_order(tasks, np.random.default_rng(3)))
    assert not np.array_equal(order, stratified_order(tasks, np.random.default_rng(4)))
    # uniform draws miss a task now and then; the stratified sample never does (10 of 126 records, 5 tasks)
    misses = sum(len(set(np.minimum(sample_indices(126, 10 / 126, 1, np.random.default_rng(s)) // 30, 4).tolist())) < 5 for s in range(50))
    assert misses > 0


def test_plan_layout_stratifies_targets_by_task_unless_told_not_to(records) -> None:
    pool, targets = records[:100], records[100:160]
    tasks = sorted({t.task for t in targets})
    assert len(tasks) > 4
    sampling = resolve_sampling(SamplingSettings(fraction=0.1, min_sampled=len(tasks)), influence_class("less"), 100, 60, 60)
    for seed in range(6):
        layout = plan_layout(pool, targets, "topk", sampling, np.random.default_rng(seed))
        assert {targets[i].task for i in layout.seen_rows} == set(tasks)
        plain = plan_layout(pool, targets, "topk", dataclasses.replace(sampling, stratify=False), np.random.default_rng(seed))
        rng = np.random.default_rng(seed)  # the sample before stratification: uniform draws, columns first
        cols = sample_indices(100, 0.1, len(tasks), rng)
        assert np.array_equal(plain.seen_cols, cols) and np.array_equal(layout.seen_cols, cols)
        assert np.array_equal(plain.seen_rows, sample_indices(60, 0.1, len(tasks), rng))


def test_a_label_budget_sets_the_fraction_in_the_functions_own_units() -> None:
    per_record = resolve_sampling(SamplingSettings(labels=50), influence_class("less"), 1000, 40, 40)
    assert per_record.fraction == pytest.approx(0.05)  # 50 of 1,000 pool records
    per_pair = resolve_sampling(SamplingSettings(labels=400, blocks=1), influence_class("delift"), 1000, 0, 1000)
    assert per_pair.fraction == pytest.approx(0.02)  # (0.02·1000)² = 400 pairs
    assert resolve_sampling(SamplingSettings(labels=10**9), influence_class("delift"), 100, 0, 100).fraction == 1.0


def test_column_folds_keep_every_row_and_hold_out_candidates() -> None:
    mask = np.ones((12, 40), dtype=bool)
    folds, units, unit = fold_masks(mask, None, QUICK.network.folds, QUICK.network.seed, 1, "columns")
    assert units == 40 and len(folds) == 4 and unit == "columns"
    held = np.zeros(40, dtype=int)
    for _, train, val in folds:
        cols = val.any(axis=0)
        assert val[:, cols].all() and not train[:, cols].any()  # all rows × the fold's candidates, none trained on
        held += cols
    assert (held == 1).all()


def _cluster_labels(embeddings: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A candidate property the cosine does not carry: each embedding cluster has its own value, different per target half."""
    centres = embeddings[:8]
    value = np.random.default_rng(1).standard_normal((2, 8))
    col_cluster = np.argmax(embeddings[cols] @ centres.T, axis=1)
    return value[rows % 2][:, col_cluster]


@pytest.mark.e2e
def test_anchors_carry_labelled_columns_to_their_neighbours_and_are_shipped(embeddings) -> None:
    rows, cols = np.arange(8, 28), np.arange(28, 160)
    true = _cluster_labels(embeddings, rows, cols)
    seen = np.sort(np.random.default_rng(0).choice(len(cols), 40, replace=False))
    _, report = fit_pairwise(embeddings[rows], embeddings[cols[seen]], true[:, seen], QUICK, objective="topk", held_out="columns")
    assert report.held_out == "columns" and report.chosen != "prior" and "beat the calibrated cosine" in report.note, report.as_dict()
    criterion = {name: values["criterion"] for name, values in report.candidates.items()}
    assert criterion["prior + anchors"] > criterion["prior"] + 0.05  # the anchors alone carry the clusters' values
    # shipped (forced here: the trained network learns these clusters as well), the anchors predict unseen columns
    anchored = dataclasses.replace(QUICK, network=dataclasses.replace(QUICK.network, fallback=False), force="prior + anchors")
    network, report = fit_pairwise(embeddings[rows], embeddings[cols[seen]], true[:, seen], anchored, objective="topk", held_out="columns")
    assert report.chosen == "prior + anchors" and report.anchors["temperature"] > 0 and network.anchors is not None
    predicted = predict_two_tower(network, embeddings[rows], embeddings[cols])
    unseen = np.setdiff1d(np.arange(len(cols)), seen)
    assert row_spearman(true[:, unseen], predicted[:, unseen]) > 0.6
    spec = ObjectiveSpec("topk", 0.1)
    assert f_gain(true, predicted, spec)["f_gain"] > 0.8


@pytest.mark.e2e
def test_anchored_network_predicts_the_same_by_blocks_and_after_a_round_trip(embeddings, tmp_path: Path) -> None:
    network = TwoTowerNetwork(embeddings.shape[1], 16, 4)
    network.initialise(torch.Generator().manual_seed(0), 0.7, 0.1, 0.0)
    residuals = np.random.default_rng(0).standard_normal((10, 12))
    mask = np.random.default_rng(1).random((10, 12)) > 0.3
    network.attach_anchors(Anchors.from_block(embeddings[:10], embeddings[10:22], residuals, mask, 0.05, 1.0))
    network.set_label_scale(0.2, 0.5)
    rows, cols = torch.from_numpy(embeddings[30:70]), torch.from_numpy(embeddings[70:120])
    with torch.no_grad():
        direct = network(rows, cols).numpy()
        plain = 0.2 + 0.5 * (network.standardised_block(rows, cols) - anchor_correction(rows, cols, network.anchors)).numpy()
    assert np.abs(direct - plain).max() > 1e-3  # the anchors change the prediction
    np.testing.assert_allclose(predict_two_tower(network, embeddings[30:70], embeddings[70:120], block_rows=7), direct, atol=1e-5)
    save_network(network, tmp_path / "network.safetensors", {})
    loaded = load_network(tmp_path / "network.safetensors")
    assert json.loads((tmp_path / "network.json").read_text())["architecture"]["anchors"]["rows"] == 10
    np.testing.assert_allclose(predict_two_tower(loaded, embeddings[30:70], embeddings[70:120]), direct, atol=1e-5)


@pytest.mark.e2e
def test_row_centred_loss_ignores_each_rows_offset(embeddings) -> None:
    labels = np.random.default_rng(0).standard_normal((10, 14))
    shifted = labels + np.random.default_rng(1).standard_normal((10, 1)) * 3
    trained = []
    for values in (labels, shifted):
        data, _, _ = _pair_data(embeddings[:10], embeddings[10:24], values, None)
        data.labels = values  # the same raw targets, not re-standardised: only the row offsets differ
        network = _build_two_tower(_pair_data(embeddings[:10], embeddings[10:24], labels, None)[0], QUICK, data.mask, 0)
        train_stacked([network], data, [data.mask], [3e-3], [1e-4], 30, None, 10, centre_rows=True)
        trained.append(network)
    rows, cols = torch.from_numpy(embeddings[30:60]), torch.from_numpy(embeddings[60:90])
    with torch.no_grad():
        centred = [(p - p.mean(dim=1, keepdim=True)).numpy() for p in (n.standardised_block(rows, cols) for n in trained)]
    # what the loss sees (each row's predictions up to its offset) is the same; a row offset (β, r(a)) has no gradient, so
    # only Adam's normalised float noise moves it, and it moves no ranking within a row
    np.testing.assert_allclose(centred[0], centred[1], atol=2e-3)


@pytest.mark.e2e
def test_select_with_targets_labels_every_target_row_and_says_why_it_shipped(tmp_path: Path, records) -> None:
    settings = SelectSettings.build(influence="delift-se", **{"sampling.fraction": 0.2, "sampling.min_sampled": 6, "selection.budget": 10}, seed=0,
            quiet=True, **{"network.max_steps": 40, "network.folds": 3, "sampling.design": "all-targets"})
    result = run_select(settings, tmp_path / "run", pool=records[:60], targets=records[60:72])
    manifest = result.manifest
    assert manifest["sampling_design"] == "all-targets" and manifest["sampled_rows"] == 12 and manifest["sampled_cols"] == 12
    assert manifest["network_training"]["held_out"] == "columns" and manifest["network_training"]["note"]  # every row labelled
    assert result.manifest["settings"]["sampling"]["design"] == "all-targets"
    mutual = run_select(settings.updated(**{"selection.objective": "flmi"}), tmp_path / "flmi", pool=records[:60], targets=records[60:72]).manifest
    assert mutual["sampled_rows"] == 12 + 12 and mutual["labelled_pairs"] == mutual["sampled_rows"] * mutual["sampled_cols"]  # sampled pool rows + every target
    assert mutual["network_training"]["held_out"] == "records"
    ranked = run_select(settings.updated(**{"selection.objective": "topk", "sampling.design": "block"}), tmp_path / "topk", pool=records[:60],
                        targets=records[60:72]).manifest
    assert ranked["sampled_rows"] < 12 and ranked["network_training"]["held_out"] == "columns"  # top-k validates each candidate's aggregate
