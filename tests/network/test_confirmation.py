"""``network.confirm``: the validation's choice is remade on the other folds and must gain on each one's own (nested
cross-validation), or the prior ships; the setting needs 4 folds."""

from __future__ import annotations

import numpy as np
import pytest

from nncift.network.validation import choose_candidate, confirmation_gains, confirmed, explain_choice
from nncift.settings.fields import SettingsError
from nncift.settings.stages import SelectSettings

OTHERS = ~np.eye(4, dtype=bool)


def per_fold(criteria: dict[str, list[float]]) -> dict[str, list[dict[str, float]]]:
    return {name: [{"criterion": v} for v in values] for name, values in criteria.items()}


def test_a_candidate_that_wins_every_fold_is_not_confirmed_when_the_choice_made_without_a_fold_loses_there() -> None:
    criteria = {"prior": [0.5, 0.5, 0.5, 0.5],
                "a": [0.6, 0.6, 0.6, 0.51],  # better on every fold: the plain rule ships it
                "b": [0.7, 0.7, 0.7, 0.40]}  # worse on fold 3, so not shipped; but chosen without fold 3, it is the best
    order = ["prior", "a", "b"]
    assert choose_candidate(per_fold(criteria), order, True, "a") == "a"
    gains = confirmation_gains(criteria, order, OTHERS)
    np.testing.assert_allclose(gains, [0.1, 0.1, 0.1, -0.1])  # folds 0-2: 'a' chosen on the others; fold 3: 'b', which loses there
    assert not confirmed(gains)
    del criteria["b"]
    gains = confirmation_gains(criteria, ["prior", "a"], OTHERS)
    np.testing.assert_allclose(gains, [0.1, 0.1, 0.1, 0.01])
    assert confirmed(gains)
    assert not confirmed(np.zeros(4))  # the choice on the other folds is the prior everywhere: nothing gained
    assert not confirmed(np.array([0.2, 0.2, 0.2, -0.01]))  # a loss on one fold, whatever the mean


def test_with_three_usable_folds_too_few_the_choice_is_the_prior() -> None:
    criteria = {"prior": [0.5, 0.5, 0.5], "a": [0.9, 0.9, 0.9]}
    gains = confirmation_gains(criteria, ["prior", "a"], ~np.eye(3, dtype=bool))  # two other folds: the rule needs three
    assert not gains.any() and not confirmed(gains)


def test_the_note_says_what_the_check_found() -> None:
    candidates = {"prior": {"criterion": 0.5}, "a": {"criterion": 0.58, "ranking_spearman": 0.3, "f_gain": 0.8}}
    rejected = {"candidate": "a", "out_of_fold_gains": [0.1, 0.1, 0.1, -0.1], "confirmed": False}
    note = explain_choice(candidates, "prior", "records", rejected)
    assert "'a' beat the calibrated cosine on every held-out fold" in note and "lost on 1 of 4 folds (mean +0.050)" in note
    kept = {"candidate": "a", "out_of_fold_gains": [0.1, 0.1, 0.1, 0.01], "confirmed": True}
    assert explain_choice(candidates, "a", "records", kept).endswith("chosen on the other folds, the choice lost on no fold (mean +0.078)")
    assert "other folds" not in explain_choice(candidates, "a", "records")


def test_the_setting_needs_four_folds_and_old_folders_run_without_it() -> None:
    from nncift.steps.select import ADDED_SETTINGS

    assert SelectSettings.build(**{"network.confirm": True}).network.confirm
    assert not SelectSettings.build().network.confirm
    with pytest.raises(SettingsError, match="network.confirm: needs at least 4 folds"):
        SelectSettings.build(**{"network.confirm": True, "network.folds": 3})
    assert ADDED_SETTINGS["network.confirm"] is False
