"""``select`` on a K-nearest-neighbour graph (``--selection.neighbours``): the dense picks with K ≥ the pool, close to them
with a small K, no predicted matrix in the folder, and what later commands do with such a run (unit tier: a tiny LM embeds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nncift import SelectSettings
from nncift.cli.commands import main
from nncift.data.records import write_jsonl
from nncift.run.commit import commit_problem
from nncift.selection.subset_quality import ObjectiveSpec, objective_on
from nncift.steps.add import add_to_run
from nncift.steps.inspect import inspect_run
from nncift.steps.score import score_records
from nncift.steps.select import run_select


def _settings(embedder: Path, **overrides) -> SelectSettings:
    base = dict(influence="delift-se", embedder=f"lm:{embedder}", device="cpu", **{
        "sampling.fraction": 0.25, "sampling.min_sampled": 8, "selection.budget": 8, "network.max_steps": 60, "network.folds": 3},
        quiet=True, seed=3)
    return SelectSettings.build(**{**base, **overrides})


@pytest.mark.parametrize("objective", ["fl", "flmi"])
def test_neighbours_covering_the_pool_give_the_dense_picks(tmp_path: Path, tiny_lm_dir: Path, demo_pool, objective: str) -> None:
    pool, targets = demo_pool[:40], demo_pool[40:52]
    settings = {"selection.objective": objective}
    dense = run_select(_settings(tiny_lm_dir, **settings, **{"selection.neighbours": 0}), tmp_path / "dense", pool=pool, targets=targets)
    sparse = run_select(_settings(tiny_lm_dir, **settings, **{"selection.neighbours": 40}), tmp_path / "sparse", pool=pool, targets=targets)
    assert dense.manifest["selection_mode"] == "dense" and sparse.manifest["selection_mode"] == "sparse"
    assert sparse.indices.tolist() == dense.indices.tolist()
    assert sparse.objective == pytest.approx(dense.objective, rel=1e-4)
    assert (tmp_path / "dense" / "predicted.npy").exists() and not (tmp_path / "sparse" / "predicted.npy").exists()


@pytest.mark.parametrize("objective", ["fl", "flmi"])
def test_a_small_graph_keeps_the_objective(tmp_path: Path, tiny_lm_dir: Path, demo_pool, objective: str) -> None:
    targets = demo_pool[48:] if objective == "flmi" else None
    base = {"selection.objective": objective, "selection.budget": 12}
    dense = run_select(_settings(tiny_lm_dir, **base), tmp_path / "dense", pool=demo_pool[:48], targets=targets)
    sparse = run_select(_settings(tiny_lm_dir, **base, **{"selection.neighbours": 8}), tmp_path / "sparse", pool=demo_pool[:48], targets=targets)
    predicted = np.load(tmp_path / "dense" / "predicted.npy")
    spec = ObjectiveSpec(objective, 12, n_pool_rows=48 if objective == "flmi" else 0)
    ratio = objective_on(predicted, sparse.indices, spec) / objective_on(predicted, dense.indices, spec)
    assert ratio >= 0.99
    manifest = json.loads((tmp_path / "sparse" / "manifest.json").read_text())
    assert (manifest["selection_mode"], manifest["neighbours"], manifest["graph_builder"]) == ("sparse", 8, "exact")
    assert "graph_recall" in manifest and manifest["graph_recall"] is None  # exact: nothing to measure


def test_a_sparse_run_is_committed_and_later_commands_work_without_the_matrix(tmp_path: Path, tiny_lm_dir: Path, demo_pool,
                                                                                   capsys: pytest.CaptureFixture) -> None:
    pool_file, new_file = tmp_path / "pool.jsonl", tmp_path / "new.jsonl"
    write_jsonl(pool_file, [r.raw for r in demo_pool[:40]])
    write_jsonl(new_file, [r.raw for r in demo_pool[40:44]])
    run = tmp_path / "run"
    assert main(["select", "--influence", "delift-se", "--embedder", f"lm:{tiny_lm_dir}", "--device", "cpu", "--data", str(pool_file),
                 "--fraction", "0.25", "--budget", "8", "--network.max-steps", "30", "--selection.neighbours", "6", "--out", str(run),
                 "--quiet"]) == 0
    assert "sparse selection: 6 neighbours per row (exact graph); no predicted.npy" in capsys.readouterr().out
    assert commit_problem(run) is None and not (run / "predicted.npy").exists()
    assert inspect_run(run)["run"]["selected"] == 8  # the subset's composition needs no matrix
    assert len(inspect_run(run, target=0)["target"]["top_candidates"]) > 0  # one row predicted on demand, no matrix
    grown = add_to_run(run, demo_pool[40:44], tmp_path / "grown", progress=False)
    assert grown.manifest["selection_mode"] == "sparse" and not (tmp_path / "grown" / "predicted.npy").exists()
    score_records(run, demo_pool[40:44], tmp_path / "scored", progress=False)
    assert (tmp_path / "scored").exists()
    assert main(["inspect", str(run), "--candidate", "0"]) == 0
    assert main(["select", "--run", str(run), "--add", str(new_file), "--out", str(tmp_path / "g"), "--quiet"]) == 0
    assert not (tmp_path / "g" / "predicted.npy").exists()


def test_neighbours_below_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="selection.neighbours"):
        SelectSettings.build(**{"selection.neighbours": -1})


def test_unset_neighbours_choose_the_graph_only_when_the_matrix_would_not_fit(tmp_path: Path, tiny_lm_dir: Path, demo_pool,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    fits = run_select(_settings(tiny_lm_dir), tmp_path / "fits", pool=demo_pool[:40])
    assert fits.manifest["selection_mode"] == "dense" and (tmp_path / "fits" / "predicted.npy").exists()
    monkeypatch.setattr("nncift.steps.select_sparse.fits_in_memory", lambda shape: False)
    large = run_select(_settings(tiny_lm_dir), tmp_path / "large", pool=demo_pool[:40])
    assert (large.manifest["selection_mode"], large.manifest["neighbours"]) == ("sparse", 40)  # K = 64, at most the pool
    assert not (tmp_path / "large" / "predicted.npy").exists()
