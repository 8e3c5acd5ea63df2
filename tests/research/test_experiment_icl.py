"""The experiment's in-context-learning mode: validation, ICL arms next to the fine-tuning ones, resumption, report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_experiment import _config, family_files  # noqa: F401 - the fixture is used by name

from nncift_research.experiment import Experiment, config_from_dict

FAST_SELECT = {"sampling": {"fraction": 0.3, "min_sampled": 3}, "selection": {"budget": 0.25}, "network": {"max_steps": 20, "folds": 3}}
"""The tests' selection settings with a short network training (the arms, not the network, are tested here)."""


def test_mode_is_validated_and_defaults_to_finetune(tmp_path: Path) -> None:
    assert config_from_dict({}).experiment.mode == "finetune"
    assert config_from_dict({"mode": "both"}).experiment.mode == "both"
    with pytest.raises(ValueError, match="mode: expected one of 'finetune', 'icl', 'both', got 'icl-only'"):
        config_from_dict({"mode": "icl-only"})


def test_cli_bad_mode_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from nncift.cli.commands import main

    config = tmp_path / "bad.yaml"
    config.write_text("mode: sometimes\n")
    assert main(["experiment", "--config", str(config)]) == 2
    assert "mode: expected one of 'finetune', 'icl', 'both', got 'sometimes'" in capsys.readouterr().err


@pytest.mark.e2e
def test_icl_mode_scores_every_subset_without_training_and_resumes(family_files: Path, tiny_lm_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "icl"
    config = config_from_dict(_config(family_files, out, tiny_lm_dir, seeds=[0], mode="icl", select=FAST_SELECT, evaluate={"max_new_tokens": 2, "batch_size": 4,
                                                                                                         "max_length": 96, "k": 2}))
    experiment = Experiment(config)
    results = experiment.run()
    assert results["mode"] == "icl" and results["icl_arms"] == []
    assert [(a["arm"], a["seed"]) for a in results["arms"]] == [("base", None), ("random", 0), ("full", 0), ("delift-se:original", 0),
                                                               ("delift-se:nncift", 0)]
    assert not any(message.startswith("fine-tuning") for message in experiment.log)
    assert not (out / "arms" / "random").exists()  # nothing fine-tuned
    nncift = next(a for a in results["arms"] if a["arm"] == "delift-se:nncift")
    assert nncift["mode"] == "icl" and nncift["n_train"] == results["budget"] and nncift["metrics"]["k"] == 2
    evaluation = json.loads((out / "arms-icl" / "delift-se-nncift" / "seed0" / "evaluation.json").read_text())
    assert all(set(row["icl_examples"]) <= set(range(len(nncift["indices"]))) for row in evaluation["examples"])
    markdown = (out / "results.md").read_text()
    assert "In-context learning: no fine-tuning; each held-out record is answered with the K = 2" in markdown
    assert "| NN-CIFT + delift-se |" in markdown

    again = Experiment(config)  # finished arms are read back, none evaluated again
    assert [a["metrics"] for a in again.run()["arms"]] == [a["metrics"] for a in results["arms"]]
    assert not any(message.startswith("in-context evaluation") for message in again.log)


@pytest.mark.e2e
def test_both_modes_put_the_icl_table_next_to_the_finetuning_one(family_files: Path, tiny_lm_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "both"
    results = Experiment(config_from_dict(_config(family_files, out, tiny_lm_dir, seeds=[0], mode="both", select=FAST_SELECT))).run()
    assert {a["arm"] for a in results["arms"]} == {"base", "random", "full", "delift-se:original", "delift-se:nncift"}
    assert {a["arm"] for a in results["icl_arms"]} == {"random", "full", "delift-se:original", "delift-se:nncift"}
    assert all(a.get("mode") == "icl" for a in results["icl_arms"])
    markdown = (out / "results.md").read_text()
    assert "LoRA fine-tuning on each subset" in markdown and "In-context learning" in markdown
    assert markdown.count("| NN-CIFT + delift-se |") == 2
    assert "<h2>In-context learning</h2>" in (out / "report.html").read_text()
    # the same arms' subsets: the ICL arm of NN-CIFT uses the fine-tuning arm's records
    finetuned = next(a for a in results["arms"] if a["arm"] == "delift-se:nncift")
    in_context = next(a for a in results["icl_arms"] if a["arm"] == "delift-se:nncift")
    assert finetuned["indices"] == in_context["indices"]


def test_folders_made_before_the_icl_settings_still_resume_and_a_changed_k_is_refused(family_files: Path, tiny_lm_dir: Path,  # noqa: F811
                                                                                      tmp_path: Path) -> None:
    from nncift.files.errors import SettingsMismatch

    out = tmp_path / "old"
    Experiment(config_from_dict(_config(family_files, out, tiny_lm_dir))).store.close()
    stored = json.loads((out / "settings.json").read_text())["evaluate"]
    assert not {"k", "icl_pool", "icl_max_length", "with_loss"} & set(stored)  # as in a folder made before they existed
    Experiment(config_from_dict(_config(family_files, out, tiny_lm_dir, mode="both"))).store.close()  # mode changes no arm
    evaluate = {"max_new_tokens": 3, "batch_size": 4, "max_length": 96, "k": 5}
    with pytest.raises(SettingsMismatch, match="evaluate"):
        Experiment(config_from_dict(_config(family_files, out, tiny_lm_dir, evaluate=evaluate)))
