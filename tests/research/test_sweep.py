"""The u × v sweep: nested sampling, one influence computation per seed (counted), resumption, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nncift.data.demo import demo_records
from nncift.data.records import write_jsonl
from nncift_research.sweep import run_sweep
from nncift_research.sweep_plan import SweepSettings, nested_layouts, nested_samples, sample_size


def test_nested_samples_are_prefixes_of_one_permutation_and_deterministic() -> None:
    fractions = (0.05, 0.1, 0.3, 0.6)
    first = nested_samples(200, fractions, 4, np.random.default_rng(7))
    again = nested_samples(200, fractions, 4, np.random.default_rng(7))
    other = nested_samples(200, fractions, 4, np.random.default_rng(8))
    for small, large in zip(fractions, fractions[1:]):
        assert set(first[small]) < set(first[large])
    for u in fractions:
        assert len(first[u]) == sample_size(200, u, 4) and np.array_equal(first[u], again[u])
        assert np.all(np.diff(first[u]) > 0)  # sorted, no repeats
    assert not np.array_equal(first[0.1], other[0.1])
    assert len(nested_samples(30, (0.01,), 4, np.random.default_rng(0))[0.01]) == 4  # the minimum applies


def test_nested_layouts_with_targets_nest_rows_and_columns() -> None:
    pool, targets = demo_records(60, seed=0), demo_records(20, seed=1)
    layouts = nested_layouts(pool, targets, "flmi", (0.1, 0.5), 2, seed=3)
    small, large = layouts[0.1], layouts[0.5]
    assert set(small.seen_rows) < set(large.seen_rows) and set(small.seen_cols) < set(large.seen_cols)
    assert len(large.rows) == 80 and large.n_pool_rows == 60
    assert np.array_equal(large.seen_rows[: len(large.seen_cols)], large.seen_cols)  # pool rows = the sampled candidates
    topk = nested_layouts(pool, targets, "topk", (0.1, 0.5), 2, seed=3)[0.5]
    assert len(topk.rows) == 20 and topk.n_pool_rows == 0 and len(topk.seen_rows) == 10
    every = nested_layouts(pool, targets, "topk", (0.1, 0.5), 2, seed=3, all_targets=True)
    for u in (0.1, 0.5):  # the all-targets design: every target row at every u, the same sampled candidates
        assert np.array_equal(every[u].seen_rows, np.arange(20))
        assert np.array_equal(every[u].seen_cols, nested_layouts(pool, targets, "topk", (0.1, 0.5), 2, seed=3)[u].seen_cols)
    tasks = {t.task for t in targets}
    strata = nested_layouts(pool, targets, "topk", (0.2, 0.5), len(tasks), seed=3, stratify=True)
    assert set(strata[0.2].seen_rows) < set(strata[0.5].seen_rows)  # still nested
    assert {targets[i].task for i in strata[0.2].seen_rows} == tasks  # every task has labelled rows at the smallest u


@pytest.fixture(scope="module")
def sweep_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sweep-data")
    records = demo_records(48, seed=0)
    pool, heldout = records[:40], records[40:43]
    paths = {"pool": folder / "pool.jsonl", "heldout": folder / "heldout.jsonl"}
    write_jsonl(paths["pool"], [{"instruction": r.instruction, "input": r.input, "output": r.output} for r in pool])
    write_jsonl(paths["heldout"], [{"instruction": r.instruction, "input": r.input, "output": r.output} for r in heldout])
    return paths


def _settings(files: dict[str, Path], tiny_lm_dir: Path, **changes) -> SweepSettings:
    values = dict(data=(str(files["pool"]),), heldout=(str(files["heldout"]),), influence="delift-se", u=(0.25, 0.5), v=(0.2, 0.5),
                  seeds=(0,), **{"sampling.min_sampled": 4}, model=str(tiny_lm_dir), device="cpu", k=2, max_new_tokens=2,
                          **{"network.max_steps": 20, "network.folds": 3},
                  quiet=True)
    return SweepSettings.build(**{**values, **changes})


@pytest.mark.e2e
def test_sweep_computes_the_largest_block_once_and_resumes_without_recomputing(sweep_files, tiny_lm_dir: Path, tmp_path: Path) -> None:
    settings = _settings(sweep_files, tiny_lm_dir)
    results = run_sweep(settings, tmp_path / "sweep")
    influence = results["manifest"]["influence"]
    assert influence["block_per_seed"] == {"0": [20, 20]}  # u = 0.5 of 40 records, pool = targets
    assert influence["evaluations_made_by_this_invocation"] == influence["evaluations_in_blocks"] == 400
    assert influence["independent_runs_per_u_would_make"] == 10 * 10 + 20 * 20
    assert influence["independent_runs_per_cell_would_make"] == 2 * 500
    assert sorted(p.name for p in (tmp_path / "sweep").glob("*.done.jsonl")) == ["q1-seed0.done.jsonl"]  # one matrix computed
    names = {row["name"] for row in results["rows"]}
    assert names == {"nncift-u0.25-v0.2-seed0", "nncift-u0.25-v0.5-seed0", "nncift-u0.5-v0.2-seed0", "nncift-u0.5-v0.5-seed0",
                     "random-v0.2-seed0", "random-v0.5-seed0", "full"}
    subset = json.loads((tmp_path / "sweep" / "subsets" / "nncift-u0.5-v0.2-seed0.json").read_text())
    assert len(subset["indices"]) == 8 and subset["labelled_block"] == [20, 20]
    assert json.loads((tmp_path / "sweep" / "subsets" / "nncift-u0.25-v0.2-seed0.json").read_text())["labelled_block"] == [10, 10]
    generated = results["manifest"]["icl_answers"]["generated_by_this_invocation"]
    assert 0 < generated <= 3 * len(names)
    for name in ("results.md", "grid.png", "manifest.json"):
        assert (tmp_path / "sweep" / name).is_file()
    assert "| NN-CIFT, u = 0.25 |" in (tmp_path / "sweep" / "results.md").read_text()

    again = run_sweep(settings, tmp_path / "sweep")  # resumed (here: finished): nothing is computed or generated again
    assert again["manifest"]["influence"]["evaluations_made_by_this_invocation"] == 0
    assert again["manifest"]["icl_answers"]["generated_by_this_invocation"] == 0
    scores = lambda rows: [[r["metrics"][m] for m in ("exact_match", "rouge_l", "embedding_cosine")] for r in rows]  # noqa: E731
    assert scores(again["rows"]) == scores(results["rows"])


@pytest.mark.e2e
def test_sweep_resumes_after_an_interruption_and_matches_an_uninterrupted_run(sweep_files, tiny_lm_dir: Path, tmp_path: Path) -> None:
    settings = _settings(sweep_files, tiny_lm_dir, references=False, u=(0.5,), v=(0.3,))
    whole = run_sweep(settings, tmp_path / "whole")
    folder = tmp_path / "cut"
    run_sweep(settings, folder)
    for name in ("evaluations/nncift-u0.5-v0.3-seed0-icl.json", "subsets/nncift-u0.5-v0.3-seed0.json", "answers.jsonl"):
        (folder / name).unlink()  # as if killed after the influence block and the network
    resumed = run_sweep(settings, folder)
    assert resumed["manifest"]["influence"]["evaluations_made_by_this_invocation"] == 0
    assert resumed["rows"][0]["metrics"]["exact_match"] == whole["rows"][0]["metrics"]["exact_match"]
    assert json.loads((folder / "subsets/nncift-u0.5-v0.3-seed0.json").read_text()) == \
        json.loads((tmp_path / "whole/subsets/nncift-u0.5-v0.3-seed0.json").read_text())


@pytest.mark.e2e
def test_sweep_cli_runs_and_rejects_bad_values(sweep_files, tiny_lm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from nncift.cli.commands import main

    base = ["sweep", "--data", str(sweep_files["pool"]), "--heldout", str(sweep_files["heldout"]), "--model", str(tiny_lm_dir),
            "--device", "cpu", "--sampling.min-sampled", "4", "--k", "1", "--max-new-tokens", "2", "--network.max-steps", "10",
            "--network.folds", "3", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "ok"), "--u", "0.5", "--v", "0.25", "--no-references"]) == 0
    assert "| NN-CIFT, u = 0.5 |" in capsys.readouterr().out
    for extra, message in ((["--u", "1.5"], "--u: expected a fraction in (0, 1], got 1.5"),
                           (["--v", "0"], "--v: "),
                           (["--fraction", "0.1"], "--fraction: the sweep takes --u, --v and --seeds instead"),
                           (["--selection.budget", "3"], "--selection.budget: the sweep takes --u, --v and --seeds instead"),
                           (["--k", "0"], "--k: expected a value ≥ 1, got 0"),
                           (["--influence", "selectit"], "needs a pairwise influence function")):
        given = [a for i, a in enumerate(base) if extra[0] not in (a, base[i - 1])]  # a flag given twice is refused: drop base's
        assert main([*given, "--out", str(tmp_path / "bad"), *extra]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.e2e
def test_sweep_fine_tunes_on_every_subset_when_asked(sweep_files, tiny_lm_dir: Path, tmp_path: Path) -> None:
    settings = _settings(sweep_files, tiny_lm_dir, references=False, u=(0.5,), v=(0.25,), finetune=True)
    results = run_sweep(settings, tmp_path / "ft")
    assert [(r["name"], r["mode"]) for r in results["rows"]] == [("nncift-u0.5-v0.25-seed0", "icl"), ("nncift-u0.5-v0.25-seed0", "finetune")]
    summary = json.loads((tmp_path / "ft" / "adapters" / "nncift-u0.5-v0.25-seed0" / "finetune.json").read_text())
    assert summary["records"] == 10  # v = 0.25 of 40 records
    markdown = (tmp_path / "ft" / "results.md").read_text()
    assert "| exact match (finetune) |" in markdown and (tmp_path / "ft" / "grid-finetune.png").is_file()
