"""Candidates scored as the whole procedure would run on unseen data: a kernel, a grid point or a step count chosen on
the folds must not also be judged on them (a fold is scored with what the other folds chose)."""

from __future__ import annotations

import dataclasses

import numpy as np

from nncift.network.candidates import VARIANTS, fold_criteria, other_folds, out_of_fold, out_of_fold_points, validate_candidates
from nncift.network.fitting import FitSettings, _pair_data, fit_pairwise
from nncift.network.folds import fold_masks
from nncift.network.paper import NetworkSettings


def scores(table: list[list[float]]) -> list[list[dict[str, float]]]:
    """Options × folds of criteria, tagged so the test can see which option each fold's score came from."""
    return [[{"criterion": value, "option": float(k)} for value in row] for k, row in enumerate(table)]


def test_each_fold_is_scored_with_the_option_chosen_on_the_other_folds():
    table = [[0.50, 0.50, 0.50, 0.50],   # steady
             [0.95, 0.40, 0.40, 0.40],   # lucky on fold 0 only: best on all folds (mean 0.54) …
             [0.10, 0.52, 0.52, 0.10]]   # … but the other folds choose differently
    per_fold, overall = out_of_fold(scores(table))
    assert overall == 1  # what ships: the best mean over every fold
    chosen = [int(s["option"]) for s in per_fold]
    # fold 0 judged with the option the others choose (folds 1–3: means 0.5 / 0.4 / 0.38 → steady), not with its own lucky one
    assert chosen[0] == 0 and per_fold[0]["criterion"] == 0.50
    assert chosen == [0, 1, 1, 1]  # folds 1–3: the others (fold 0 among them) choose the lucky option
    honest = np.mean([s["criterion"] for s in per_fold])
    assert honest < max(np.mean(row) for row in table)  # the in-sample best mean is the optimistic one


def test_an_option_without_a_finite_score_on_some_fold_is_not_chosen_there():
    per_fold, overall = out_of_fold(scores([[0.3, 0.3, 0.3], [float("nan"), 0.9, 0.9]]))
    assert overall == 0 and [int(s["option"]) for s in per_fold] == [1, 0, 0]


def test_grid_point_and_step_are_chosen_without_the_fold_they_score():
    curves = np.ones((2, 3, 4))
    curves[0, :, 2] = [0.1, 0.9, 0.9]   # grid 0, step 2: excellent on fold 0 alone (mean 0.63)
    curves[1, :, 1] = [0.8, 0.5, 0.5]   # grid 1, step 1: good on folds 1 and 2 (mean 0.6: the overall best)
    overall, per_fold = out_of_fold_points(curves)
    assert overall == (1, 1)
    assert per_fold == [(1, 1), (0, 2), (0, 2)]  # fold 0 gets the others' choice; folds 1 and 2 see fold 0's luck


def _block(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((40, 12))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = x @ x.T + 0.5 * rng.standard_normal((40, 40))
    labels[rng.random((40, 40)) < 0.4] = np.nan
    return _pair_data(x, x, labels, np.arange(40))[0]


def test_validate_candidates_scores_each_fold_of_a_variant_with_the_kernel_the_other_folds_chose():
    data = _block()
    folds, _, _ = fold_masks(data.mask, data.self_cols, 4, 0, 1, "records")
    rng = np.random.default_rng(1)
    bases = {"prior": [data.cos.astype(np.float64) * 0.8 + 0.05 * rng.standard_normal(data.cos.shape) for _ in folds]}
    criteria, kernels = validate_candidates(data, 0.3, 0, folds, bases, "fl", None)
    in_sample_anchors = validate_candidates(data, 0.3, 0, folds, bases, "fl", None, choose_out_of_fold=False)[0]["prior + anchors"]
    assert [s["criterion"] for s in criteria["prior + anchors"]] != [s["criterion"] for s in in_sample_anchors]  # a fold differs here
    for variant, (make, tried) in VARIANTS.items():
        brute = [fold_criteria(data, 0.3, 0, folds, [make(data, base, train, k) for (_, train, _), base in zip(folds, bases["prior"])], "fl", None)
                 for k in tried]
        table = np.array([[s["criterion"] for s in row] for row in brute])
        assert kernels[f"prior + {variant}"] == tried[int(np.argmax(table.mean(axis=1)))]
        for i, got in enumerate(criteria[f"prior + {variant}"]):
            others = [j for j in range(len(folds)) if j != i]
            assert got["criterion"] == table[int(np.argmax(table[:, others].mean(axis=1))), i]
        in_sample = validate_candidates(data, 0.3, 0, folds, bases, "fl", None, choose_out_of_fold=False)[0][f"prior + {variant}"]
        assert [got["criterion"] for got in in_sample] == table[int(np.argmax(table.mean(axis=1)))].tolist()  # the ablation: one kernel


def test_labels_of_pure_noise_ship_the_prior_on_every_seed():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((48, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for seed in range(3):
        settings = FitSettings(NetworkSettings(max_steps=60, folds=4, seed=seed), eval_every=10, learning_rates=(3e-3,), weight_decays=(1e-4,))
        _, report = fit_pairwise(x, x, np.random.default_rng(seed).standard_normal((48, 48)), settings, self_cols=np.arange(48))
        assert report.chosen == "prior", report.note
        assert report.as_dict()["choices"] == "out of fold"  # the manifest says how the folds were scored
        assert all(len(values) == 4 for values in report.fold_criteria.values())


def test_with_repeated_folds_only_folds_whose_held_out_pairs_do_not_overlap_choose_for_each_other():
    data = _block()
    one_draw, _, _ = fold_masks(data.mask, data.self_cols, 4, 0, 1, "records")
    assert np.array_equal(other_folds(one_draw), ~np.eye(len(one_draw), dtype=bool))  # a single draw: every other fold
    two_draws, _, _ = fold_masks(data.mask, data.self_cols, 4, 0, 2, "records")
    usable = other_folds(two_draws)
    for i, (_, _, held_i) in enumerate(two_draws):
        for j, (_, _, held_j) in enumerate(two_draws):
            assert usable[i, j] == (i != j and not (held_i & held_j).any())
    assert usable[:4, :4].sum() == 12 and not usable[:4, 4:].all()  # the same draw chooses; the other draw's overlapping folds do not


def test_the_pointwise_fit_reports_its_folds_scored_out_of_fold_and_in_sample_on_request():
    from nncift.network.fitting_pointwise import fit_pointwise

    rng = np.random.default_rng(5)
    x = rng.standard_normal((60, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = np.tanh(3 * x @ rng.standard_normal(16)) + 0.1 * rng.standard_normal(60)
    settings = FitSettings(NetworkSettings(max_steps=60, folds=4, seed=0), eval_every=10, learning_rates=(1e-3, 3e-3), weight_decays=(1e-4,))
    _, report = fit_pointwise(x, y, settings)
    assert report.choices == "out of fold" and report.chosen != "prior"  # a learnable signal still ships a learned candidate
    _, in_sample = fit_pointwise(x, y, dataclasses.replace(settings, choices_out_of_fold=False))
    assert in_sample.choices == "in sample"
