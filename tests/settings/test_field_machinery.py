"""One field machinery: each field declares its type, range and choices (no rule table keyed by field name); every
allowed-value list lives once (nncift.settings.choices); run-level settings reach an influence function from the run;
FitSettings takes the network stage instead of repeating it; finetune and evaluate merge YAML and flags the one way."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from nncift.cli.commands import build_parser
from nncift.downstream.evaluate import EvaluateSettings
from nncift.downstream.finetune import FinetuneSettings
from nncift.influence import SETTINGS, InfluenceSpec, settings_class
from nncift.influence.settings import DeliftSESettings, DeliftSettings, LessSettings, SelectITSettings
from nncift.network.fitting import FitSettings
from nncift.settings import choices, fields
from nncift.settings.fields import SettingsError, check_options, rule_of
from nncift.settings.sources import settings_from_args
from nncift.settings.stages import ModelContext, NetworkSettings, RunContext, SamplingSettings, SelectionSettings, SelectSettings
from nncift.steps.select import influence_spec


def _rule(cls: type, name: str) -> fields.Rule | None:
    return rule_of(next(f for f in dataclasses.fields(cls) if f.name == name))


# ------------------------------------------------------------------------------- rules live on the fields


def test_the_finetune_example_of_the_issue_is_refused_naming_each_field() -> None:
    with pytest.raises(SettingsError, match=r"^epochs: expected a value ≥ 1, got -3") as caught:
        FinetuneSettings(epochs=-3)
    assert caught.value.key == "epochs"
    with pytest.raises(SettingsError, match=r"^learning_rate: expected a number, got 'abc'"):
        FinetuneSettings(learning_rate="abc")  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match=r"^device: expected one of 'auto', 'cpu', 'cuda' \(or 'cuda:N'\), got 'tpu'"):
        FinetuneSettings(device="tpu")
    with pytest.raises(SettingsError, match=r"^device: "):  # the first bad field, in declaration order (ModelContext's first)
        FinetuneSettings(epochs=-3, learning_rate="abc", device="tpu")  # type: ignore[arg-type]
    assert FinetuneSettings(device="cuda:1", epochs=1).device == "cuda:1"
    assert issubclass(FinetuneSettings, ModelContext) and issubclass(EvaluateSettings, ModelContext)  # declared once


def test_evaluate_settings_are_checked_by_the_same_rules() -> None:
    for name, bad in (("k", 0), ("limit", -1), ("max_new_tokens", 0), ("dtype", "int8")):
        with pytest.raises(SettingsError, match=f"^{name}: expected") as caught:
            EvaluateSettings(**{name: bad})
        assert caught.value.key == name
    assert EvaluateSettings(limit=0, k=1).k == 1


def test_a_rule_belongs_to_its_field_not_to_its_name() -> None:
    """``epochs`` means one pass at least when fine-tuning, and may be 0 for the paper network: two fields, two rules."""
    assert NetworkSettings(epochs=0).epochs == 0
    with pytest.raises(SettingsError, match="^epochs: expected a value ≥ 1"):
        FinetuneSettings(epochs=0)
    assert not hasattr(fields, "_RULES")
    assert _rule(SamplingSettings, "fraction") == fields.Rule(above=0, at_most=1, flag="--fraction")


def test_normal_forms_are_rules_too() -> None:
    assert type(SelectionSettings(budget=50.0).budget) is int and type(SelectionSettings(budget=1).budget) is float
    with pytest.raises(SettingsError, match=r"^budget: expected a fraction in \(0, 1\] or a whole number"):
        SelectionSettings(budget=1.5)


def test_influence_settings_are_checked_when_built() -> None:
    with pytest.raises(SettingsError, match="^max_length: expected a value ≥ 64, got 32"):
        DeliftSettings(max_length=32)
    with pytest.raises(SettingsError, match="^compressor: expected one of 'identity', 'projection', 'dropout', 'dropout-structured'"):
        LessSettings(compressor="sketch")
    with pytest.raises(SettingsError, match="^n_instructions: expected a value ≤ 5, got 6"):
        SelectITSettings(n_instructions=6)


# ------------------------------------------------------------------------------- every allowed-value list once


def test_each_choice_list_is_the_one_in_choices() -> None:
    from nncift.network import paper
    from nncift.selection import greedy

    assert greedy.OBJECTIVES is choices.OBJECTIVES and paper.ARCHITECTURES is choices.ARCHITECTURES
    assert _rule(SelectionSettings, "objective").choices == ("", *choices.OBJECTIVES)  # type: ignore[union-attr]
    assert _rule(NetworkSettings, "architecture").choices is choices.ARCHITECTURES  # type: ignore[union-attr]
    assert _rule(LessSettings, "compressor").choices is choices.COMPRESSORS  # type: ignore[union-attr]
    for cls in (RunContext, FinetuneSettings, EvaluateSettings):
        assert _rule(cls, "device").choices is choices.DEVICES and _rule(cls, "dtype").choices is choices.DTYPES  # type: ignore[union-attr]


# ------------------------------------------------------------------------------- run-level settings, declared once


def test_influence_settings_hold_only_their_own_fields() -> None:
    run_level = {f.name for f in dataclasses.fields(RunContext)}
    assert run_level == {"model", "embedder", "device", "dtype", "seed", "trust_remote_code"}
    for name in SETTINGS:
        assert not {f.name for f in dataclasses.fields(settings_class(name))} & run_level, name
    assert [f.name for f in dataclasses.fields(DeliftSESettings())] == ["similarity_embedder"]  # its own role, not the run's embedder
    assert issubclass(SelectSettings, RunContext)  # the run's fields are the RunContext's, not copies


def test_the_spec_carries_the_run_context_as_plain_json() -> None:
    settings = SelectSettings(influence="delift", model="some/lm", device="cpu", dtype="bfloat16", seed=7)
    spec = influence_spec(settings, {"max_length": 512})
    assert spec.options == {"max_length": 512}  # the function's own options only
    assert spec.run == RunContext(model="some/lm", device="cpu", dtype="bfloat16", seed=7)
    shipped = json.loads(json.dumps(spec.as_dict()))  # what the Ray executor sends to its workers
    assert InfluenceSpec.from_dict(shipped) == spec


def test_a_run_setting_given_as_an_influence_option_is_refused() -> None:
    with pytest.raises(SettingsError, match="^device: not an option of DeliftSettings") as caught:
        check_options(DeliftSettings, {"device": "cpu", "max_length": 512})
    assert "the run's settings" in str(caught.value)
    assert check_options(DeliftSettings, {"max_length": 512}) == DeliftSettings(max_length=512)


def test_from_options_takes_the_run_context(tmp_path: Path) -> None:
    from nncift.influence import build_influence

    function = build_influence(InfluenceSpec("delift-se", {}, RunContext(device="cpu", embedder="my-embedder")), progress=False)
    assert function.run.device == "cpu" and function.run.embedder == "my-embedder"
    with pytest.raises(SettingsError, match="^embedder: not an option"):
        build_influence(InfluenceSpec("delift-se", {"embedder": "x"}), progress=False)


def test_select_flags_of_influence_options_still_work() -> None:
    from nncift.cli.commands import split_settings

    args = build_parser().parse_args(["select", "--out", "x", "--data", "d.jsonl", "--influence", "delift", "--delift.max-length", "512",
                                      "--model", "m", "--device", "cpu"])
    settings, options = split_settings(args, SelectSettings)
    assert options == {"max_length": 512} and influence_spec(settings, options).run.model == "m"


# ------------------------------------------------------------------------------- FitSettings takes the network stage


def test_fit_settings_take_the_network_stage_instead_of_repeating_it() -> None:
    network_fields = {f.name for f in dataclasses.fields(NetworkSettings)}
    own = {f.name for f in dataclasses.fields(FitSettings)} - {"network"}
    assert own and not own & network_fields
    network = NetworkSettings(tower_hidden=7, tower_rank=3, folds=5, seed=2)
    assert FitSettings(network).network is network
    assert not hasattr(FitSettings, "from_network")


# ------------------------------------------------------------------------------- one YAML + flags merge


def _args(command: str, *argv: str):
    return build_parser().parse_args([command, "--data", "d.jsonl", *(["--out", "o"] if command == "finetune" else []), *argv])


def test_finetune_and_evaluate_merge_yaml_and_flags_like_select(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("lora_r: 4\nepochs: 2\nmax-length: 64\n")
    settings = settings_from_args(FinetuneSettings, _args("finetune", "--config", str(config), "--epochs", "5"))
    assert (settings.lora_r, settings.epochs, settings.max_length) == (4, 5, 64)  # the flag overrides the file
    config.write_text("lora_r: 0\n")
    with pytest.raises(SettingsError, match=f"^{config}: lora_r: expected a value ≥ 1, got 0"):
        settings_from_args(FinetuneSettings, _args("finetune", "--config", str(config)))
    config.write_text("k: 2\nno_such: 1\n")
    with pytest.raises(ValueError, match=f"^{config}: unknown settings: no_such"):
        settings_from_args(EvaluateSettings, _args("evaluate", "--config", str(config)))
    with pytest.raises(SettingsError, match="^--k: expected a value ≥ 1, got 0"):
        settings_from_args(EvaluateSettings, _args("evaluate", "--k", "0"))
