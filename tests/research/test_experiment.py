"""The downstream experiment on a tiny model: splits, arms, resumption, results and report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nncift.data.records import read_records, write_jsonl
from nncift_research.experiment import Experiment, config_from_dict, load_experiment_config, run_experiment
from nncift_research.experiment_data import ExperimentSettings, build_splits, family_of

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def family_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Demo records written as two template files per family, aligned by line like the P3 files."""
    from nncift.data.demo import demo_records

    folder = tmp_path_factory.mktemp("families")
    records = demo_records(320, seed=0)
    by_task: dict[str, list] = {}
    for record in records:
        by_task.setdefault(record.task, []).append(record)
    for task, items in sorted(by_task.items())[:4]:
        rows = [{"instruction": r.instruction, "input": r.input, "output": r.output} for r in items[:20]]
        write_jsonl(folder / f"{task}_plain.jsonl", rows)
        write_jsonl(folder / f"{task}_polite.jsonl", [{**row, "instruction": "Please: " + row["instruction"]} for row in rows])
    return folder


def _families(folder: Path) -> list[str]:
    return sorted({p.stem.rsplit("_", 1)[0] for p in folder.glob("*.jsonl")})


def _config(folder: Path, out: Path, model: Path, **overrides) -> dict:
    families = _families(folder)
    values = {
        "name": "tiny targeted", "out": str(out), "pool": [str(folder / "*.jsonl")], "families": families,
        "per_family": 8, "target_family": families[0], "n_targets": 3, "n_heldout": 4, "split_by": "line",
        "influences": ["delift-se"], "objectives": {"delift-se": "flmi"}, "seeds": [0, 1], "fidelity_fractions": [0.3, 0.6],
        "model": str(model), "quiet": True,
        "select": {"sampling": {"fraction": 0.3, "min_sampled": 3}, "selection": {"budget": 0.25}, "network": {"epochs": 2, "max_steps": 20, "folds": 3}},
        "finetune": {"epochs": 1, "batch_size": 4, "max_length": 96},
        "evaluate": {"max_new_tokens": 3, "batch_size": 4, "max_length": 96},
    }
    values.update(overrides)
    return values


def test_family_of_takes_the_longest_prefix() -> None:
    assert family_of("ag_news_classify", ("ag", "ag_news")) == "ag_news"
    assert family_of("imdb_Movie_Expressed_Sentiment", ("ag_news",)) is None
    assert family_of("alpaca_en_demo", ()) == "alpaca_en_demo"


def test_targeted_splits_are_disjoint_by_example_and_deterministic(family_files: Path) -> None:
    families = _families(family_files)
    settings = ExperimentSettings(pool=(str(family_files / "*.jsonl"),), families=tuple(families), per_family=8,
                                  target_family=families[0], n_targets=3, n_heldout=4, split_by="line")
    splits = build_splits(settings)
    assert {r.task for r in splits.heldout} == {r.task for r in splits.targets} == {families[0]}
    line = lambda r: r.source.rsplit(":", 1)[1]  # noqa: E731
    target_pool_lines = {line(r) for r in splits.pool if r.task == families[0]}
    assert not target_pool_lines & {line(r) for r in splits.heldout}  # no template of a held-out example in the pool
    assert not target_pool_lines & {line(r) for r in splits.targets}
    assert not {line(r) for r in splits.heldout} & {line(r) for r in splits.targets}
    assert len(splits.heldout) == 4 and len(splits.targets) == 3 and len(splits.pool) == 8 * len(families)
    again = build_splits(settings)
    assert [r.source for r in again.pool] == [r.source for r in splits.pool]


def test_general_split_holds_out_records_from_the_same_files(family_files: Path) -> None:
    settings = ExperimentSettings(pool=(str(family_files / "*_plain.jsonl"),), n_heldout=10, pool_size=30)
    splits = build_splits(settings)
    assert len(splits.heldout) == 10 and len(splits.pool) == 30 and not splits.targets
    assert not {r.source for r in splits.heldout} & {r.source for r in splits.pool}


def test_bad_config_names_the_section() -> None:
    with pytest.raises(ValueError, match="section 'finetune'.*lora_rank"):
        config_from_dict({"finetune": {"lora_rank": 4}})
    with pytest.raises(ValueError, match="unknown settings"):
        config_from_dict({"pool_files": ["x"]})


def test_missing_pool_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no file matches"):
        build_splits(ExperimentSettings(pool=(str(tmp_path / "nothing*.jsonl"),)))


@pytest.mark.e2e
def test_experiment_runs_every_arm_resumes_and_extends(family_files: Path, tiny_lm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "experiment"
    results = run_experiment(config_from_dict(_config(family_files, out, tiny_lm_dir, seeds=[0])))
    arms = {(arm["arm"], arm["seed"]) for arm in results["arms"]}
    assert arms == {("base", None), ("random", 0), ("full", 0), ("delift-se:original", 0), ("delift-se:nncift", 0)}
    budget = results["budget"]
    for arm in results["arms"]:
        assert {"loss", "rouge_l", "embedding_cosine", "exact_match"} <= set(arm["metrics"])
        if arm["arm"] not in ("base", "full"):
            assert arm["n_train"] == budget and 0.0 <= arm["target_share"] <= 1.0
    assert next(a for a in results["arms"] if a["arm"] == "full")["n_train"] == results["data"]["pool"]
    # the original selection is the full-matrix one: every entry computed, no network
    manifest = json.loads((out / "selections" / "delift-se-original-seed0" / "manifest.json").read_text())
    assert manifest["cost"]["share_of_full_matrix"] == 1.0 and "network_training" not in manifest
    nncift = json.loads((out / "selections" / "delift-se-nncift-seed0" / "manifest.json").read_text())
    assert nncift["cost"]["share_of_full_matrix"] < 0.2
    assert {r["split"] for r in results["fidelity"]["delift-se"]["rows"]} == {"Q1", "Q2", "Q3", "Q4"}
    assert results["cost"]["delift-se"]["original"]["evaluations"] > results["cost"]["delift-se"]["nncift"]["evaluations"]
    for name in ("results.json", "results.md", "report.html"):
        assert (out / name).is_file()
    assert "| NN-CIFT + delift-se |" in (out / "results.md").read_text()
    assert (out / "report.html").read_text().count('src="data:image/png;base64,') == 5

    # resume: nothing is fine-tuned again; a new seed adds only its arms (the original subset is shared)
    experiment = Experiment(config_from_dict(_config(family_files, out, tiny_lm_dir, seeds=[0, 1])))
    again = experiment.run()
    trained = [message for message in experiment.log if message.startswith("fine-tuning")]
    assert sorted(trained) == sorted(f"fine-tuning {name} seed 1 on {n} records" for name, n in
                                     (("random", budget), ("full", results["data"]["pool"]), ("delift-se:original", budget),
                                      ("delift-se:nncift", budget)))
    assert len(again["arms"]) == len(results["arms"]) + 4
    assert not (out / "selections" / "delift-se-original-seed1").exists()
    # seed 1's NN-CIFT selection was computed warm: the embedding cache was filled before it, charged to no arm
    warm = [message for message in experiment.log if message.startswith("warm-up")]
    assert len(warm) == 1 and "charged to no arm" in warm[0]
    first = {(a["arm"], a["seed"]): a["metrics"]["loss"] for a in results["arms"]}
    assert all(first[(a["arm"], a["seed"])] == a["metrics"]["loss"] for a in again["arms"] if (a["arm"], a["seed"]) in first)


def test_unavailable_influence_is_listed_not_fatal(family_files: Path, tiny_lm_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from nncift import influence

    monkeypatch.setitem(influence.REGISTRY, "delift", "nncift.influence.not_written_yet:Nothing")
    from nncift_research.experiment import available_influences

    ready, missing = available_influences(("delift-se", "delift"))
    assert ready == ["delift-se"] and "delift" in missing


def test_changed_data_settings_are_refused(family_files: Path, tiny_lm_dir: Path, tmp_path: Path) -> None:
    from nncift.files.errors import SettingsMismatch

    out = tmp_path / "refuse"
    Experiment(config_from_dict(_config(family_files, out, tiny_lm_dir)))
    with pytest.raises(SettingsMismatch):
        Experiment(config_from_dict(_config(family_files, out, tiny_lm_dir, n_heldout=5)))


@pytest.mark.parametrize("name", ["experiment_targeted.yaml", "experiment_general.yaml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_experiment_config(REPO / "bench" / name)
    assert config.experiment.influences and config.experiment.seeds
    assert config.finetune.lora_r == 8 and config.finetune.lora_alpha == 16


@pytest.mark.e2e
def test_cli_select_only_computes_subsets_without_fine_tuning(family_files: Path, tiny_lm_dir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    import yaml

    from nncift.cli.commands import main

    out = tmp_path / "select-only"
    config = tmp_path / "experiment.yaml"
    config.write_text(yaml.safe_dump(_config(family_files, out, tiny_lm_dir)), encoding="utf-8")
    assert main(["experiment", "--config", str(config), "--select-only"]) == 0
    printed = capsys.readouterr().out
    assert "delift-se original seed 0: 8 records, target share" in printed and "delift-se nncift seed 1" in printed
    assert (out / "selections" / "delift-se-nncift-seed1" / "selected.jsonl").is_file()
    assert not (out / "arms").exists()
    pool = read_records(out / "data" / "pool.jsonl")[0]
    assert len(pool) == 32 and all(record.task for record in pool)  # the written splits keep the family labels


@pytest.mark.e2e
def test_report_only_reports_finished_arms_and_lists_the_rest(family_files: Path, tiny_lm_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "partial"
    experiment = Experiment(config_from_dict(_config(family_files, out, tiny_lm_dir)))
    experiment.run_arm("base", None, None)
    experiment.selection("delift-se", "nncift", 0)
    results = experiment.run(report_only=True)
    assert [arm["arm"] for arm in results["arms"]] == ["base"]
    assert "delift-se:nncift seed 1" in results["missing_arms"] and "random seed 0" in results["missing_arms"]
    assert results["cost"]["delift-se"]["original"]["estimated"] and not results["fidelity"]
    assert not (out / "arms" / "random").exists() and not (out / "selections" / "delift-se-original-seed0").exists()
    assert "Not run (yet)" in (out / "results.md").read_text() and (out / "report.html").is_file()
