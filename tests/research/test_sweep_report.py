"""The sweep's tables and heat map with and without the LLM judge's metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nncift_research.sweep_report import grid_table, heat_map, table_metrics


def _rows(judged: bool) -> list[dict]:
    rows = []
    for seed in (0, 1):
        for u in (0.05, 0.2):
            for v in (0.1, 0.3):
                metrics = {"exact_match": u + v, "rouge_l": u * v + seed / 100}
                if judged:
                    metrics.update(judge_score=2.0 + u + v + seed, judge_unparseable=seed, judge_unparseable_share=seed / 10)
                rows.append({"kind": "nncift", "u": u, "v": v, "seed": seed, "mode": "icl", "metrics": metrics})
        rows.append({"kind": "random", "u": None, "v": 0.1, "seed": seed, "mode": "icl",
                     "metrics": {"exact_match": 0.1, "rouge_l": 0.01, **({"judge_score": None, "judge_unparseable": 8,
                                                                            "judge_unparseable_share": 1.0} if judged else {})}})
    return rows


def test_judge_tables_follow_rouge_l_only_when_judged() -> None:
    assert table_metrics(_rows(False)) == ("exact_match", "rouge_l")
    assert table_metrics(_rows(True)) == ("exact_match", "rouge_l", "judge_score", "judge_unparseable_share")
    table = grid_table(_rows(True), "judge_score")
    assert table.splitlines()[0].startswith("| LLM judge, mean 1–5 (icl) |")
    assert f"| NN-CIFT, u = 0.05 | {np.mean([2.15, 3.15]):.3f} ± {np.std([2.15, 3.15], ddof=1):.3f} |" in table
    assert "| random subset | – | – |" in table  # no judgement parsed: no value, not a zero
    shares = grid_table(_rows(True), "judge_unparseable_share")
    assert "| random subset | 1.000 ± 0.000 | – |" in shares


def test_heat_map_draws_the_judge_panel(tmp_path: Path) -> None:
    path = heat_map(_rows(True), tmp_path / "grid.png", metrics=table_metrics(_rows(True))[:3])
    from PIL import Image

    width, height = Image.open(path).size
    narrow = heat_map(_rows(False), tmp_path / "grid2.png")
    assert width > Image.open(narrow).size[0] * 1.3 and height > 100  # a third panel
