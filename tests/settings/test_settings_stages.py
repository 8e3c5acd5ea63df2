"""The run settings are nested by stage, and YAML, the command line and the manifest mirror the nesting."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from nncift.cli.commands import build_parser, main, split_settings
from nncift.data.records import write_jsonl
from nncift.settings.fields import RemovedSetting, SettingsError, settings_dict
from nncift.settings.stages import ExecutorSettings, NetworkSettings, SamplingSettings, SelectionSettings, SelectSettings


def test_each_stage_is_its_own_checked_object() -> None:
    settings = SelectSettings(seed=4, selection=SelectionSettings(budget=50.0), sampling={"fraction": 0.1})  # type: ignore[arg-type]
    assert isinstance(settings.sampling, SamplingSettings) and settings.sampling.fraction == 0.1
    assert settings.selection.budget == 50 and type(settings.selection.budget) is int  # the budget rule, applied once, when built
    assert settings.network == NetworkSettings(seed=4)  # the network trains with the run's seed
    assert settings.executor == ExecutorSettings()
    with pytest.raises(SettingsError, match="^budget: expected a fraction"):
        SelectionSettings(budget=1.5)
    with pytest.raises(SettingsError, match="^selection: expected SelectionSettings or a mapping"):
        SelectSettings(selection=0.3)  # type: ignore[arg-type]


def test_build_takes_stage_mappings_and_dotted_names_alike_and_refuses_flat_ones() -> None:
    nested = SelectSettings.build(selection={"budget": 5}, sampling={"blocks": 2}, executor={"name": "ray", "address": "auto"})
    dotted = SelectSettings.build(**{"selection.budget": 5, "sampling.blocks": 2, "executor.name": "ray", "executor.address": "auto"})
    assert nested == dotted
    assert dotted.updated(**{"selection.budget": 0.5}, seed=2).selection.budget == 0.5 and dotted.updated(seed=2).network.seed == 2
    assert dotted.updated(**{"selection.budget": 0.5}).executor == dotted.executor  # other stages untouched
    for flat, now in (("budget", "selection.budget"), ("sampling_blocks", "sampling.blocks"), ("ray_address", "executor.address")):
        with pytest.raises(RemovedSetting, match=f"^{flat} was removed; use {now}$"):
            SelectSettings.build(**{flat: 5})
    with pytest.raises(ValueError, match="selection.budget is given twice"):
        SelectSettings.build(**{"selection.budget": 5}, selection={"budget": 6})
    with pytest.raises(ValueError, match="unknown settings for SelectSettings: selection.size"):
        SelectSettings.build(selection={"size": 6})


@pytest.mark.e2e
def test_the_manifest_yaml_and_flags_share_one_nesting(tmp_path: Path, demo_pool) -> None:
    pool = tmp_path / "pool.jsonl"
    write_jsonl(pool, [r.raw for r in demo_pool[:32]])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "data": [str(pool)], "influence": "delift-se", "seed": 2, "quiet": True,
        "sampling": {"fraction": 0.25, "min_sampled": 8}, "network": {"max_steps": 40, "folds": 3},
        "selection": {"budget": 5, "objective": "fl"}, "executor": {"block_size": 16},
    }))
    out = tmp_path / "run"
    assert main(["select", "--config", str(config), "--selection.budget", "6", "--network.tower-rank", "8", "--out", str(out)]) == 0
    stored = json.loads((out / "manifest.json").read_text())["settings"]
    assert stored["selection"] == {"budget": 6, "objective": "fl", "eta": 1.0, "nu": 1.0, "task_share": 0.1, "neighbours": None, "graph": "auto",
                                  "partitions": 0}  # the flag overrides the file
    assert stored["sampling"] == {"fraction": 0.25, "min_sampled": 8, "blocks": 0, "design": "auto", "stratify": True, "labels": 0}
    assert stored["network"]["tower_rank"] == 8 and stored["network"]["max_steps"] == 40 and stored["network"]["seed"] == 2
    assert stored["executor"]["block_size"] == 16 and stored["seed"] == 2
    # the manifest's settings rebuild the same object, and YAML written in the manifest's shape reads back the same
    again = SelectSettings.build(**{k: v for k, v in stored.items() if k in {f.name for f in dataclasses.fields(SelectSettings)}})
    assert settings_dict(again) == stored
    # another executor stage resumes the finished folder; another sampling stage is refused, naming the field
    assert main(["select", "--config", str(config), "--selection.budget", "6", "--network.tower-rank", "8", "--executor.block-size", "8",
                 "--out", str(out)]) == 0


@pytest.mark.e2e
def test_a_changed_sampling_stage_is_refused_by_its_field(tmp_path: Path, demo_pool, capsys) -> None:
    pool = tmp_path / "pool.jsonl"
    write_jsonl(pool, [r.raw for r in demo_pool[:24]])
    base = ["select", "--data", str(pool), "--quiet", "--sampling.fraction", "0.5", "--network.max-steps", "20", "--budget", "4"]
    assert main([*base, "--out", str(tmp_path / "run")]) == 0
    assert main([*base[:-2], "--budget", "4", "--sampling.min-sampled", "5", "--out", str(tmp_path / "run")]) == 2
    assert "sampling.min_sampled: stored 10, now 5" in capsys.readouterr().err


def test_flags_are_grouped_by_stage_with_short_forms() -> None:
    parser = build_parser()
    help_text = parser._subparsers._group_actions[0].choices["select"].format_help()  # noqa: SLF001
    for stage in ("sampling", "network", "selection", "executor"):
        assert f"{stage} settings (" in help_text and f"In YAML under '{stage}:'" in help_text
    assert "--selection.budget BUDGET, --budget BUDGET" in help_text  # the short flag is the same flag
    assert "--network.seed" not in help_text  # the run's --seed
    assert "--sampling-blocks" not in help_text  # an old name: refused, not listed
    args = parser.parse_args(["select", "--out", "x", "--budget", "3", "--executor.workers", "3"])
    settings, _ = split_settings(args, SelectSettings)
    assert settings.selection.budget == 3 and settings.executor.workers == 3


def _all_subclasses(klass: type) -> set[type]:
    found = set(klass.__subclasses__())
    for sub in list(found):
        found |= _all_subclasses(sub)
    return found


def test_run_level_fields_are_declared_once_for_every_command() -> None:
    import nncift.downstream.evaluate  # noqa: F401  (every settings class of the library and the research commands)
    import nncift.downstream.finetune  # noqa: F401
    import nncift_research.experiment_data  # noqa: F401
    from nncift.settings.fields import Checked

    shared = ("model", "device", "dtype", "trust_remote_code", "embedder", "quiet")
    declared: dict[str, set[str]] = {name: set() for name in shared}
    for klass in _all_subclasses(Checked):
        for name in shared:
            if name in klass.__dict__.get("__annotations__", {}) and klass.__qualname__ != "JudgeSettings":  # the judge's own model
                declared[name].add(klass.__qualname__)
    assert declared == {"model": {"ModelContext"}, "device": {"ModelContext"}, "dtype": {"ModelContext"},
                        "trust_remote_code": {"ModelContext"}, "embedder": {"EmbedderChoice"}, "quiet": {"Progress"}}, declared


def test_the_experiments_model_settings_reach_every_stage_unless_a_section_sets_them() -> None:
    from nncift_research.experiment import config_from_dict

    config = config_from_dict({"pool": ["x.jsonl"], "dtype": "bfloat16", "embedder": "onnx:all-MiniLM-L6-v2",
                               "finetune": {"dtype": "float16"}})
    assert config.select.dtype == config.evaluate.dtype == "bfloat16" and config.finetune.dtype == "float16"
    assert config.select.embedder == config.evaluate.embedder == "onnx:all-MiniLM-L6-v2"
