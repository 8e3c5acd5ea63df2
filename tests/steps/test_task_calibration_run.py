"""``select`` with targets of several tasks: task calibration on where the settings ask for it, recorded in the manifest and
the network file, and read back by ``score`` (unit tier: a tiny LM embeds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nncift import SelectSettings
from nncift.network.files import load_network
from nncift.steps.score import score_records
from nncift.steps.select import run_select


def _settings(embedder: Path, **overrides) -> SelectSettings:
    base = dict(influence="delift-se", embedder=f"lm:{embedder}", device="cpu", **{
        "sampling.fraction": 0.25, "sampling.min_sampled": 8, "selection.budget": 8, "selection.objective": "topk",
        "network.max_steps": 40, "network.folds": 3, "network.input": "text+response"}, quiet=True, seed=3)
    return SelectSettings.build(**{**base, **overrides})


@pytest.mark.parametrize("mode", ["on", "off", "auto"])
def test_a_run_calibrates_per_task_where_asked_and_says_so(tmp_path: Path, tiny_lm_dir: Path, demo_pool, mode: str) -> None:
    pool, targets = demo_pool[:40], demo_pool[40:64]  # 24 targets of the demo's 8 task families
    settings = _settings(tiny_lm_dir, **{"network.task_calibration": mode, "network.max_steps": 0})  # the calibrated prior ships
    result = run_select(settings, tmp_path / mode, pool=pool, targets=targets)
    training = result.manifest["network_training"]
    assert result.manifest["settings"]["network"]["task_calibration"] == mode
    network = load_network(tmp_path / mode / "network.safetensors")
    if mode != "on":  # off, or auto: DELIFT-SE's top-k does not aggregate by task
        assert not training["task_calibration"] and network.task_calibration is None
        return
    assert training["chosen"].startswith("prior") and "anchors" not in training["chosen"]
    lines = training["task_calibration"]["lines"]
    assert lines and set(lines) <= {t.task for t in targets}
    assert all(line["slope"] > 0 and line["pairs"] >= 10 for line in lines.values())
    assert "its task's scale" in training["note"]
    assert network.task_calibration is not None and network.architecture()["task_calibration"]["rows"] == training["task_calibration"]["rows"]
    plain = run_select(settings.updated(**{"network.task_calibration": "off"}), tmp_path / "plain", pool=pool, targets=targets)
    predicted, without = np.load(tmp_path / mode / "predicted.npy"), np.load(tmp_path / "plain" / "predicted.npy")
    assert plain.manifest["network_training"]["chosen"] == training["chosen"]  # the same predictor, with and without the lines
    assert not np.allclose(predicted, without, atol=1e-4)
    scored = score_records(tmp_path / mode, pool[:5], tmp_path / "scored", progress=False)  # the stored lookup, read back
    assert len(scored.rows) == 5
    manifest = json.loads((tmp_path / mode / "manifest.json").read_text())
    assert manifest["network_training"]["task_calibration"] == training["task_calibration"]
