"""The public API: ``nncift.select`` makes a run, ``nncift.open_run`` reads it back as a typed ``Run`` whose
``score``, ``add`` and ``inspect`` are the commands; every manifest starts with the same keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import nncift
from nncift.data.demo import demo_records
from nncift.files.errors import SettingsMismatch
from nncift.run.report import MANIFEST_KEYS
from nncift.run.view import RunCounts
from nncift.steps.score import score_records

SETTINGS = {"influence": "delift-se", "quiet": True, "seed": 3, "sampling": {"fraction": 0.25, "min_sampled": 8},
            "network": {"epochs": 5, "max_steps": 60, "folds": 3}, "selection": {"budget": 0.25}}


@pytest.mark.e2e
def test_select_open_run_and_the_commands_of_a_run(tmp_path: Path) -> None:
    pool, new = demo_records(48, seed=0), demo_records(16, seed=11)
    result = nncift.select(SETTINGS, tmp_path / "run", pool=pool)
    run = nncift.open_run(tmp_path / "run")
    assert isinstance(run, nncift.Run)
    selected = [json.loads(line) for line in (tmp_path / "run" / "selected.jsonl").read_text().splitlines()]
    indices, scores = run.scores
    assert indices.tolist() == [row["index"] for row in selected] == result.indices.tolist() and len(indices) == 12
    np.testing.assert_allclose(scores, [row["score"] for row in selected])
    assert run.subset == [row["record"] for row in selected]
    assert run.subset[0]["instruction"] == pool[int(indices[0])].instruction
    # the settings come back as the SelectSettings object the run was made with, and the rest typed
    assert run.settings == nncift.SelectSettings.build(**SETTINGS) and run.settings.selection.budget == 0.25
    assert (run.command, run.objective, run.influence) == ("select", "fl", "delift-se")
    assert run.counts == RunCounts(pool=48, targets=0, selected=12)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert run.label_scaling == (manifest["label_scaling"]["low"], manifest["label_scaling"]["high"])

    scored = run.score(new, tmp_path / "scores", progress=False)
    by_folder = score_records(tmp_path / "run", new, tmp_path / "scores-again", progress=False)
    assert len(scored.rows) == 16 and [r["value"] for r in scored.rows] == [r["value"] for r in by_folder.rows]
    assert scored.manifest["run"]["folder"] == str((tmp_path / "run").resolve())

    grown = run.add(new, tmp_path / "grown", pool=pool, progress=False)
    assert grown.indices[:12].tolist() == indices.tolist() and len(grown.indices) == 16  # 0.25 of the union of 64
    reopened = nncift.open_run(tmp_path / "grown")
    assert reopened.command == "select --add" and reopened.counts == RunCounts(pool=64, targets=0, selected=16)

    report = run.inspect(top=3)
    assert report["run"]["selected"] == 12 and sum(report["subset_by"]["counts"].values()) == 12 and len(report["most_valuable"]) == 3

    # one manifest schema: the common keys first, in order, whatever the command
    for written, command in ((result.manifest, "select"), (scored.manifest, "score"), (grown.manifest, "select --add")):
        assert tuple(written)[: len(MANIFEST_KEYS)] == MANIFEST_KEYS and written["command"] == command
        assert "skipped" in written["counts"] and "seconds_total" in written["cost"]
    assert scored.manifest["cost"]["counters"]["language_model_loads"] == 0 == grown.manifest["cost"]["counters"]["language_model_loads"]


@pytest.mark.e2e
def test_score_into_a_folder_of_another_run_is_refused(tmp_path: Path) -> None:
    pool, new = demo_records(40, seed=0), demo_records(8, seed=11)
    nncift.select(SETTINGS, tmp_path / "a", pool=pool)
    nncift.select({**SETTINGS, "seed": 4}, tmp_path / "b", pool=pool)
    nncift.open_run(tmp_path / "a").score(new, tmp_path / "scores", progress=False)
    with pytest.raises(SettingsMismatch, match="other settings"):
        nncift.open_run(tmp_path / "b").score(new, tmp_path / "scores", progress=False)


def test_select_checks_settings_given_by_name_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="budget"):
        nncift.select({**SETTINGS, "selection": {"budget": -1}}, tmp_path / "run", pool=demo_records(16))
    assert not (tmp_path / "run").exists()


def test_open_run_refuses_what_is_not_a_finished_run(tmp_path: Path) -> None:
    with pytest.raises(nncift.RunNotReady, match="no such run folder"):
        nncift.open_run(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(nncift.RunNotReady, match="not a finished nncift run"):
        nncift.open_run(tmp_path / "empty")


def test_one_public_name_per_verb() -> None:
    assert {"select", "open_run", "Run", "SelectSettings", "read_records"} <= set(nncift.__all__)
    assert "run_select" not in nncift.__all__
