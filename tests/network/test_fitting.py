"""The default InfluenceNetwork: record-held-out validation, the fallback to the prior, f_gain, determinism,
and that it learns what the embeddings' cosine cannot give (on real embeddings of the built-in data)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from nncift.models.embeddings import embed_records
from nncift.network.files import load_network, save_network
from nncift.network.fitting import FitSettings, calibrate_prior, fit_pairwise
from nncift.network.fitting_pointwise import fit_pointwise
from nncift.network.folds import record_folds, training_sample
from nncift.network.paper import NetworkSettings, predict_pairwise, predict_pointwise
from nncift.network.towers import TwoTowerNetwork, predict_two_tower
from nncift.run.layout import self_columns
from nncift.selection.subset_quality import ObjectiveSpec, cold_mask, f_gain, objective_on, spearman
from nncift_research.fidelity import calibrated_cosine, compare_pairwise, compare_pointwise

QUICK = FitSettings(NetworkSettings(max_steps=120, folds=3, seed=0), eval_every=10, learning_rates=(3e-3,), weight_decays=(1e-4,))


@pytest.fixture(scope="module")
def demo_embeddings() -> np.ndarray:
    """Real MiniLM embeddings of 160 built-in demo records (8 task families)."""
    from nncift.data.demo import demo_records

    return embed_records(demo_records(160, seed=0), progress=False)


def learnable_labels(rows: np.ndarray, cols: np.ndarray, seed: int = 0) -> np.ndarray:
    """Influence with per-target and per-candidate effects the cosine does not contain (plus the cosine)."""
    rng = np.random.default_rng(seed)
    u, v = rng.standard_normal(rows.shape[1]), rng.standard_normal(cols.shape[1])
    return 0.3 * (rows @ cols.T) + 0.5 * np.tanh(3 * rows @ u)[:, None] + 0.8 * np.tanh(3 * cols @ v)[None, :]


def test_record_folds_hold_out_whole_rows_and_columns():
    n_rows, n_cols = 30, 20
    own = self_columns(n_rows, 20)  # rows 0..19 are the 20 candidates themselves, rows 20..29 other targets
    row_fold, col_fold, k = record_folds(n_rows, n_cols, own, 4, seed=1)
    assert k == 4
    assert np.array_equal(row_fold[:20], col_fold)  # a record is held out as a row and as a column together
    assert set(row_fold.tolist()) == set(range(4)) and set(col_fold.tolist()) == set(range(4))
    for fold in range(4):
        train = (row_fold != fold)[:, None] & (col_fold != fold)[None, :]
        val = (row_fold == fold)[:, None] & (col_fold == fold)[None, :]
        held_rows, held_cols = np.flatnonzero(row_fold == fold), np.flatnonzero(col_fold == fold)
        assert not train[held_rows].any() and not train[:, held_cols].any()  # nothing of a held-out record is trained on
        assert val.sum() == len(held_rows) * len(held_cols) > 0
    assert np.bincount(row_fold[20:], minlength=4).max() - np.bincount(row_fold[20:], minlength=4).min() <= 1  # targets spread evenly
    targets_only = record_folds(6, 101, None, 4, seed=0)[0]  # a LESS block: 6 target rows, no pool row
    assert sorted(np.bincount(targets_only, minlength=4).tolist()) == [1, 1, 2, 2]  # every fold validates on some target rows
    again = record_folds(n_rows, n_cols, own, 4, seed=1)
    assert np.array_equal(again[0], row_fold) and not np.array_equal(record_folds(n_rows, n_cols, own, 4, seed=2)[0], row_fold)


def test_training_sample_keeps_whole_records_under_the_cap():
    labels = np.random.default_rng(0).standard_normal((50, 40))  # rows 0..39 are the 40 columns' records, 40..49 other targets
    labels[np.random.default_rng(1).random(labels.shape) < 0.2] = np.nan
    own = self_columns(50, 40)
    rows, cols = training_sample(labels, own, 600, seed=3)
    kept = np.isfinite(labels[np.ix_(rows, cols)]).sum()
    assert 450 < kept <= 600  # under the cap, not far below it
    assert set(rows[rows < 40].tolist()) == set(cols.tolist())  # a pool record is kept as a row and as a column together
    again = training_sample(labels, own, 600, seed=3)
    assert np.array_equal(again[0], rows) and np.array_equal(again[1], cols)
    assert not np.array_equal(training_sample(labels, own, 600, seed=4)[1], cols)
    everything = training_sample(labels, own, 0, seed=3)
    assert len(everything[0]) == 50 and len(everything[1]) == 40
    assert len(training_sample(labels, own, 10**6, seed=3)[0]) == 50


def test_fit_on_a_training_sample_reports_it():
    e = np.random.default_rng(0).standard_normal((40, 16))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    quick = dataclasses.replace(QUICK, network=dataclasses.replace(QUICK.network, max_steps=10, max_training_pairs=700))
    net, report = fit_pairwise(e, e, learnable_labels(e, e), quick, self_cols=np.arange(40))
    assert report.n_labelled == 1600 and 500 < report.n_training <= 700
    assert "sample of" in report.note and report.as_dict()["n_training"] == report.n_training
    assert predict_pairwise(net, e, e, self_cols=np.arange(40)).shape == (40, 40)
    assert "validated and trained on a seeded sample" in report.note
    labels = 2.0 * (e @ e.T) + 1.0  # DELIFT-SE: the labels are the cosine, nothing to train
    exact_net, exact_report = fit_pairwise(e, e, labels, quick, self_cols=np.arange(40), prior_is_exact=True)
    assert exact_report.chosen == "prior" and "nothing was trained" in exact_report.note
    assert "calibrated on a seeded sample" in exact_report.note and "trained on a seeded sample" not in exact_report.note
    np.testing.assert_allclose(predict_pairwise(exact_net, e, e, self_cols=np.arange(40)), labels, atol=1e-4)


def test_f_gain_on_a_hand_made_matrix():
    # 3 rows, 4 candidates: candidate 0 covers row 0, candidate 1 rows 1 and 2; 2 and 3 cover little
    true = np.array([[1.0, 0.0, 0.1, 0.0],
                     [0.0, 1.0, 0.1, 0.0],
                     [0.0, 1.0, 0.0, 0.1]])
    spec = ObjectiveSpec("fl", 2)
    assert objective_on(true, np.array([0, 1]), spec) == pytest.approx(3.0)
    exact = f_gain(true, true, spec, n_random=200, seed=0)
    assert exact["f_gain"] == pytest.approx(1.0) and exact["overlap"] == 1.0
    # a predictor that prefers candidates 2 and 3: f = 0.1 + 0.1 + 0.1 = 0.3 on the true matrix
    wrong = np.array([[0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 1.0, 0.5], [0.0, 0.0, 0.5, 1.0]])
    bad = f_gain(true, wrong, spec, n_random=4000, seed=0)
    # random pairs of 4: (0,1) 3, (0,2) 1.1, (0,3) 1.1, (1,2) 2.1, (1,3) 2.0, (2,3) 0.3 -> mean 1.6
    assert bad["f_random"] == pytest.approx(1.6, abs=0.05)
    expected = (0.3 - 1.6) / (3.0 - 1.6)
    assert bad["f_gain"] == pytest.approx(expected, abs=0.05) and bad["f_gain"] < 0 and bad["overlap"] == 0.0
    assert np.isnan(f_gain(np.ones((3, 4)), wrong, spec)["f_gain"])  # nothing to lose: undefined, not 1 or 0


def test_cold_mask_counts_a_sampled_record_as_seen_on_both_sides():
    mask = cold_mask(5, 4, np.array([4]), np.array([1]), self_columns(5, 4))
    assert not mask[1].any() and not mask[4].any() and not mask[:, 1].any()
    assert mask[0, 0] and mask[2, 3]


@pytest.mark.e2e
def test_untrained_two_tower_is_the_calibrated_cosine_and_predicts_fast_and_exactly(demo_embeddings):
    e = demo_embeddings
    cos = e @ e.T
    labels = 0.4 * cos + 0.1
    labels[np.arange(len(e)), np.arange(len(e))] += 0.3  # a self-pair offset
    alpha, beta, delta = calibrate_prior(cos, labels, np.ones_like(cos, bool), np.eye(len(e), dtype=bool))
    assert (alpha, beta, delta) == pytest.approx((0.4, 0.1, 0.3), abs=1e-6)
    net = TwoTowerNetwork(e.shape[1], 16, 8)
    net.initialise(torch.Generator().manual_seed(0), alpha, beta, delta)
    predicted = predict_two_tower(net, e, e, self_cols=np.arange(len(e)), block_rows=7)
    np.testing.assert_allclose(predicted, labels, atol=1e-5)
    with torch.no_grad():  # after some random training-like change: the GEMM path equals the module's forward
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        net.set_label_scale(0.3, 2.0)
        reference = net(torch.from_numpy(e[:50]), torch.from_numpy(e[:40]), torch.from_numpy(self_columns(50, 40))).numpy()
    np.testing.assert_allclose(predict_two_tower(net, e[:50], e[:40], self_cols=self_columns(50, 40), block_rows=3), reference, atol=1e-5)


@pytest.mark.e2e
def test_the_network_learns_what_the_cosine_cannot_and_is_shipped(demo_embeddings):
    e = demo_embeddings
    true = learnable_labels(e, e)
    seen = np.sort(np.random.default_rng(0).choice(len(e), 40, replace=False))
    net, report = fit_pairwise(e[seen], e[seen], true[np.ix_(seen, seen)], QUICK, self_cols=np.arange(len(seen)))
    assert report.chosen.split(" + ")[0] in ("network", "blend"), report.as_dict()
    assert report.candidates[report.chosen]["criterion"] > report.candidates["prior"]["criterion"]
    predicted = predict_pairwise(net, e, e, self_cols=np.arange(len(e)))
    cosine = calibrated_cosine(e, e, seen, seen, true[np.ix_(seen, seen)], self_columns(len(e), len(e)))
    cold = cold_mask(len(e), len(e), seen, seen, np.arange(len(e)))
    assert spearman(true[cold], predicted[cold]) > spearman(true[cold], cosine[cold]) + 0.2
    assert report.steps > 0 and report.learning_rate == 3e-3 and len(report.validation_curve) == 13
    folds = report.fold_criteria
    assert len(folds["prior"]) == len(folds[report.chosen]) == report.folds == 3  # what the choice compared, per fold
    assert all(a > b for a, b in zip(folds[report.chosen], folds["prior"]))  # shipped: better on every fold


@pytest.mark.e2e
def test_a_confirmed_choice_is_checked_out_of_fold_and_reported(demo_embeddings):
    """``network.confirm`` on labels with something to learn: the learned choice is remade on the other folds of each fold
    and still gains there, so it ships, and the report keeps each fold's out-of-fold gain."""
    e = demo_embeddings
    true = learnable_labels(e, e)
    seen = np.sort(np.random.default_rng(0).choice(len(e), 48, replace=False))
    settings = dataclasses.replace(QUICK, network=dataclasses.replace(QUICK.network, folds=4, confirm=True))
    _, report = fit_pairwise(e[seen], e[seen], true[np.ix_(seen, seen)], settings, self_cols=np.arange(len(seen)))
    _, plain = fit_pairwise(e[seen], e[seen], true[np.ix_(seen, seen)], dataclasses.replace(settings, network=dataclasses.replace(
        settings.network, confirm=False)), self_cols=np.arange(len(seen)))
    assert plain.chosen != "prior" and plain.confirmation is None
    check = report.confirmation
    assert check is not None and check["candidate"] == plain.chosen and len(check["out_of_fold_gains"]) == 4
    assert check["confirmed"] and report.chosen == plain.chosen and min(check["out_of_fold_gains"]) >= 0
    assert "chosen on the other folds, the choice lost on no fold" in report.note
    assert report.as_dict()["confirmation"]["confirmed"] is True


@pytest.mark.e2e
def test_fit_is_deterministic_per_seed_and_round_trips(demo_embeddings, tmp_path):
    e = demo_embeddings[:60]
    labels = learnable_labels(e, e)[:30, :30]
    first, report = fit_pairwise(e[:30], e[:30], labels, QUICK, self_cols=np.arange(30))
    second, _ = fit_pairwise(e[:30], e[:30], labels, QUICK, self_cols=np.arange(30))
    other, _ = fit_pairwise(e[:30], e[:30], labels, dataclasses.replace(QUICK, network=dataclasses.replace(QUICK.network, seed=1)), self_cols=np.arange(30))
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    assert report.chosen != "prior" and any(not torch.equal(a, b) for a, b in zip(first.state_dict().values(), other.state_dict().values()))
    save_network(first, tmp_path / "net.safetensors", {"report": report.as_dict()})
    loaded = load_network(tmp_path / "net.safetensors")
    assert isinstance(loaded, TwoTowerNetwork)
    np.testing.assert_array_equal(predict_pairwise(loaded, e, e, self_cols=np.arange(60)), predict_pairwise(first, e, e, self_cols=np.arange(60)))


def test_repeated_validation_scores_every_fold_of_every_repeat():
    e = np.random.default_rng(0).standard_normal((30, 16))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    labels = learnable_labels(e, e)
    quick = dataclasses.replace(QUICK, network=dataclasses.replace(QUICK.network, max_steps=10), validation_repeats=2)
    _, report = fit_pairwise(e, e, labels, quick, self_cols=np.arange(30))
    _, once = fit_pairwise(e, e, labels, dataclasses.replace(quick, validation_repeats=1), self_cols=np.arange(30))
    assert report.folds == 6 and all(len(values) == 6 for values in report.fold_criteria.values())
    assert (report.repeats, once.repeats) == (2, 1) and report.as_dict()["repeats"] == 2
    first, second = report.fold_criteria["prior"][:3], report.fold_criteria["prior"][3:]
    assert first == once.fold_criteria["prior"]  # the first repeat is the plain validation's folds
    assert first != second  # the second repeat holds out other records


@pytest.mark.e2e
def test_the_prior_is_shipped_when_there_is_nothing_to_learn(demo_embeddings):
    e = demo_embeddings[:40]
    labels = (e @ e.T + 1) / 2  # DELIFT-SE: exactly the calibrated cosine
    net, report = fit_pairwise(e, e, labels, QUICK, self_cols=np.arange(40))
    assert report.chosen == "prior"
    assert report.prior["alpha"] == pytest.approx(0.5, abs=1e-4) and report.prior["beta"] == pytest.approx(0.5, abs=1e-4)
    np.testing.assert_allclose(predict_pairwise(net, e, e, self_cols=np.arange(40)), labels, atol=1e-4)
    tiny, tiny_report = fit_pairwise(e[:12], e[:12], labels[:12, :12] + 0.1, QUICK, self_cols=np.arange(12))  # under 3 folds of 5
    assert tiny_report.chosen == "prior" and "too few labelled records (12)" in tiny_report.note
    noise = np.random.default_rng(3).standard_normal((40, 40))
    _, noise_report = fit_pairwise(e, e, noise, QUICK, self_cols=np.arange(40))
    assert noise_report.chosen == "prior", noise_report.candidates  # nothing to learn: no fold-noise win ships the network


@pytest.mark.e2e
def test_default_beats_the_mean_and_the_paper_network_on_a_real_delift_se_matrix(demo_embeddings):
    e = demo_embeddings
    true = (e @ e.T + 1) / 2  # DELIFT-SE of the built-in records with the bundled embedder
    seen = np.sort(np.random.default_rng(1).choice(len(e), 16, replace=False))
    nets = [NetworkSettings(architecture="two-tower", max_steps=60, folds=3), NetworkSettings(architecture="paper")]
    _, rows, _ = compare_pairwise(true, e, e, seen, seen, ObjectiveSpec("fl", 0.3), nets, self_cols=np.arange(len(e)), seed=1)
    by = {row["predictor"]: row for row in rows}
    assert by["two-tower"]["cold_spearman"] > 0.99 and by["two-tower"]["f_gain"] > 0.9
    assert by["two-tower"]["f_gain"] > by["mean"]["f_gain"] + 0.5
    assert by["two-tower"]["q4_mse_vs_mean"] < 0.05 < by["paper"]["q4_mse_vs_mean"]


@pytest.mark.e2e
def test_pointwise_network_learns_and_falls_back_to_the_mean(demo_embeddings):
    e = demo_embeddings
    rng = np.random.default_rng(0)
    scores = np.tanh(e @ rng.standard_normal(e.shape[1]))
    seen = np.sort(rng.choice(len(e), 60, replace=False))
    labels = scores[seen].copy()
    labels[3] = np.nan  # a failed score is skipped
    net, report = fit_pointwise(e[seen], labels, QUICK)
    assert report.chosen in ("ridge", "network", "blend") and report.n_labelled == 59
    unseen = np.setdiff1d(np.arange(len(e)), seen)
    assert spearman(scores[unseen], predict_pointwise(net, e[unseen])) > 0.6
    noise_net, noise = fit_pointwise(e[seen], rng.standard_normal(60), QUICK)
    assert noise.chosen == "prior"  # pure noise: nothing beats the mean on held-out records
    assert np.ptp(predict_pointwise(noise_net, e)) < 1e-5
    _, rows, _ = compare_pointwise(scores, e, seen, 0.2, [NetworkSettings(max_steps=60, folds=3)])
    by = {row["predictor"]: row for row in rows}
    assert by["two-tower"]["f_gain"] > by["mean"]["f_gain"]


@pytest.mark.e2e
def test_batched_training_forward_equals_each_network(demo_embeddings):
    from nncift.network.tower_training import batched_block

    e = demo_embeddings[:30]
    networks = []
    for seed in (0, 1):
        net = TwoTowerNetwork(e.shape[1], 16, 8)
        net.initialise(torch.Generator().manual_seed(seed), 0.5, 0.1, 0.2)
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 7)))
        networks.append(net)
    params = {name: torch.stack([dict(n.named_parameters())[name].detach() for n in networks]) for name, _ in networks[0].named_parameters()}
    rows, cols = torch.from_numpy(e[:20]), torch.from_numpy(e[5:30])
    own = self_columns(20, 25)[5:]  # rows 5..19 are columns 0..14
    own_rows = np.flatnonzero(np.r_[np.full(5, -1), own] >= 0)
    self_full = np.r_[np.full(5, -1), own]
    batched = batched_block(params, rows, cols, rows @ cols.T, (torch.from_numpy(own_rows), torch.from_numpy(self_full[own_rows])), 8)
    for b, net in enumerate(networks):
        expected = net.standardised_block(rows, cols, torch.from_numpy(self_full))
        torch.testing.assert_close(batched[b], expected, atol=1e-5, rtol=1e-5)


def test_validation_holds_out_candidates_for_top_k_and_records_for_facility_location():
    from nncift.network.folds import validation_hold_out

    assert validation_hold_out(6, 120, "topk") == "columns"  # top-k ranks aggregates over rows: validate the aggregate
    assert validation_hold_out(6, 120, "fl") == "records"  # FL reads each row: hold out whole records
    assert validation_hold_out(120, 120, "fl") == "columns"  # every row labelled: only candidates are ever new


def test_step_sub_block_is_the_whole_block_up_to_step_pairs_and_about_step_pairs_beyond():
    from nncift.network.tower_training import step_sub_block

    assert step_sub_block(100, 200, 0) == (100, 200)  # 0: full batch
    assert step_sub_block(100, 200, 20_000) == (100, 200)
    rows, cols = step_sub_block(1000, 400, 40_000)
    assert (rows, cols) == (316, 126) and abs(rows * cols - 40_000) < 500  # both sides shrunk alike
    assert step_sub_block(1000, 3, 10) == (5, 2) and step_sub_block(3, 1000, 10) == (2, 5)  # a narrow side keeps 2


def test_the_self_pairs_of_a_sub_block_are_found_in_its_positions():
    from nncift.network.tower_training import _sub_self_index

    own_rows, own_cols = torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8])  # rows 0..3 are columns 5..8
    rows, cols = torch.tensor([1, 3]), torch.tensor([2, 6, 8, 9])
    sub = _sub_self_index((own_rows, own_cols), rows, cols, 4, 10)
    assert sub is not None and sub[0].tolist() == [0, 1] and sub[1].tolist() == [1, 2]  # row 1 → col 6 (pos 1), row 3 → col 8 (pos 2)


def _train_once(e: np.ndarray, labels: np.ndarray, step_pairs: int, seed: int = 0) -> tuple[TwoTowerNetwork, float]:
    """A two-tower network trained 150 steps on the first 48 records × themselves; (network, its MSE on the other records)."""
    from nncift.network.fitting import _build_two_tower, _pair_data, one_torch_thread
    from nncift.network.tower_training import train_stacked

    seen, cold = np.arange(48), np.arange(48, len(e))
    data, mean, std = _pair_data(e[seen], e[seen], labels[np.ix_(seen, seen)], np.arange(48))
    network = _build_two_tower(data, QUICK, data.mask, 0)
    with one_torch_thread():
        train_stacked([network], data, [data.mask], [3e-3], [1e-4], 150, None, 10, step_pairs=step_pairs, seed=seed)
    network.set_label_scale(mean, std)
    predicted = predict_pairwise(network.eval(), e[cold], e[cold], self_cols=np.arange(len(cold)))
    return network, float(np.mean((predicted - labels[np.ix_(cold, cold)]) ** 2))


def test_minibatch_steps_learn_as_full_batch_does_and_are_deterministic_per_seed():
    e = np.random.default_rng(1).standard_normal((80, 16))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    labels = learnable_labels(e, e)
    cold = labels[48:, 48:]
    variance = float(np.mean((cold - cold.mean()) ** 2))  # the error of predicting the mean
    _, full_error = _train_once(e, labels, 0)
    _, same_error = _train_once(e, labels, 48 * 48)  # a block no larger than step_pairs: exactly full batch
    assert same_error == full_error
    _, mini_error = _train_once(e, labels, 400)  # sub-blocks of 20 × 20 of the 48 × 48 labelled block
    _, again_error = _train_once(e, labels, 400)
    _, other_error = _train_once(e, labels, 400, seed=1)
    assert mini_error == again_error and other_error != mini_error  # seeded sub-blocks
    assert full_error < 0.5 * variance and mini_error < 0.5 * variance  # both learn the row and column effects
    assert mini_error < 1.5 * full_error  # steps on 17% of the pairs learn nearly as well


@pytest.mark.e2e
def test_fit_with_minibatch_steps_reports_them_and_ships_a_learned_predictor(demo_embeddings):
    e = demo_embeddings
    true = learnable_labels(e, e)
    seen = np.sort(np.random.default_rng(0).choice(len(e), 40, replace=False))
    quick = dataclasses.replace(QUICK, network=dataclasses.replace(QUICK.network, step_pairs=400))
    net, report = fit_pairwise(e[seen], e[seen], true[np.ix_(seen, seen)], quick, self_cols=np.arange(len(seen)))
    assert report.step_pairs == 400 and report.as_dict()["step_pairs"] == 400  # 20 × 20 sub-blocks of the 40 × 40 block
    assert report.chosen.split(" + ")[0] in ("network", "blend"), report.as_dict()
    _, full_report = fit_pairwise(e[seen], e[seen], true[np.ix_(seen, seen)], QUICK, self_cols=np.arange(len(seen)))
    assert full_report.step_pairs == 1600  # the whole block: full batch
