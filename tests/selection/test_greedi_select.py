"""``select --selection.partitions m``: GreeDi on the run's neighbour graph (unit tier: a tiny LM embeds), said in the
manifest; refused where there is no graph."""

from __future__ import annotations

from pathlib import Path

import pytest

from nncift import SelectSettings
from nncift.files.errors import UserError
from nncift.steps.select import run_select


def _settings(embedder: Path, **overrides) -> SelectSettings:
    base = dict(influence="delift-se", embedder=f"lm:{embedder}", device="cpu", **{
        "sampling.fraction": 0.25, "sampling.min_sampled": 8, "selection.budget": 8, "network.max_steps": 40, "network.folds": 3},
        quiet=True, seed=3)
    return SelectSettings.build(**{**base, **overrides})


@pytest.mark.parametrize("objective", ["fl", "flmi"])
def test_partitions_select_by_greedi_on_the_graph(tmp_path: Path, tiny_lm_dir: Path, demo_pool, objective: str) -> None:
    pool, targets = demo_pool[:48], demo_pool[48:56]
    common = {"selection.objective": objective, "selection.neighbours": 12}
    single = run_select(_settings(tiny_lm_dir, **common), tmp_path / "single", pool=pool, targets=targets)
    parts = run_select(_settings(tiny_lm_dir, **common, **{"selection.partitions": 3}), tmp_path / "parts", pool=pool, targets=targets)
    assert "greedi" not in single.manifest and parts.manifest["selection_mode"] == "sparse"
    greedi = parts.manifest["greedi"]
    assert greedi["partitions"] == 3 and len(greedi["part_objectives"]) == 3 and greedi["executor"] == "local"
    assert len(parts.indices) == 8 and len(set(parts.indices.tolist())) == 8
    assert parts.objective >= 0.95 * single.objective and parts.objective >= max(greedi["part_objectives"])


def test_partitions_choose_the_graph_and_need_one(tmp_path: Path, tiny_lm_dir: Path, demo_pool) -> None:
    chosen = run_select(_settings(tiny_lm_dir, **{"selection.partitions": 2}), tmp_path / "graph", pool=demo_pool[:40])
    assert chosen.manifest["selection_mode"] == "sparse" and chosen.manifest["greedi"]["partitions"] == 2  # the matrix would fit
    with pytest.raises(UserError, match="--selection.partitions 2 needs a neighbour graph"):
        run_select(_settings(tiny_lm_dir, **{"selection.partitions": 2, "selection.neighbours": 0}), tmp_path / "dense", pool=demo_pool[:40])
    with pytest.raises(UserError, match="objective fl, flmi or flcg"):
        run_select(_settings(tiny_lm_dir, **{"selection.partitions": 2, "selection.objective": "topk"}), tmp_path / "topk",
                   pool=demo_pool[:40])
