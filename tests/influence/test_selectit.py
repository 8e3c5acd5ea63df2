"""SelectIT: the formulas against hand computation, the rating tokens, batching invariance, failures
recorded for the failing example only, model-level weights, and the NN-CIFT pointwise path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from nncift.data.records import Record
from nncift.data.templates import SELECTIT_RATING_INSTRUCTIONS, selectit_prompt
from nncift.influence.selectit import (
    SelectIT,
    SelectITSettings,
    model_weights,
    rating_token_ids,
    selectit_scores,
    sentence_level_scores,
    token_level_scores,
)
from nncift.influence.token_batches import plan_token_batches, right_padded, shorten_middle
from nncift.models.loading import ModelError
from nncift.settings.fields import SettingsError
from nncift.settings.stages import RunContext


def _records(n: int) -> list[Record]:
    topics = ["rivers", "prime numbers", "bread", "volcanoes", "chess", "tides", "bees", "glass"]
    return [Record(f"Write one sentence about {topics[i % len(topics)]}.", "" if i % 3 else f"Audience: {i} year olds",
                   f"{topics[i % len(topics)].capitalize()} are interesting, fact number {i}.", source=f"mem:{i}")
            for i in range(n)]


def _long_record(words: int = 1200) -> Record:
    return Record("Summarise the following text.", " ".join(["alpha beta gamma"] * (words // 3)), "A summary.", source="mem:long")


def _selectit(model_dir: Path, records: list[Record], **options) -> SelectIT:
    function = SelectIT(SelectITSettings(**options), run=RunContext(model=str(model_dir), device="cpu"), progress=False)
    function.prepare(records, Path("."))
    return function


# ---------------------------------------------------------------------------------------------
# formulas


def test_token_level_matches_hand_computation() -> None:
    raw = np.array([0.1, 0.2, 0.05, 0.05, 0.1])  # P' = [.2, .4, .1, .1, .2]; rating 2
    gaps = abs(0.2 - 0.4) + 0 + abs(0.1 - 0.4) * 2 + abs(0.2 - 0.4)
    assert token_level_scores(raw) == pytest.approx(2 * gaps / 4)
    # reference form: a second softmax over P'
    renormalised = raw / raw.sum()
    soft = [math.exp(p) / sum(math.exp(q) for q in renormalised) for p in renormalised]
    assert token_level_scores(raw, "reference") == pytest.approx(2 * sum(abs(p - soft[1]) for p in soft) / 4)
    # a certain rating of 5 gets the maximum, 5; a uniform distribution gets 0
    assert token_level_scores(np.array([0, 0, 0, 0, 0.3])) == pytest.approx(5.0)
    assert token_level_scores(np.full(5, 0.01)) == pytest.approx(0.0)
    # ties go to the lower rating; shape (..., R) is kept; NaN rows stay NaN
    assert token_level_scores(np.array([0.1, 0.4, 0.4, 0.05, 0.05])) == pytest.approx(2 * (0.3 + 0 + 0 + 0.35 + 0.35) / 4)
    batch = token_level_scores(np.stack([raw, np.full(5, np.nan)]).reshape(1, 2, 5))
    assert batch.shape == (1, 2) and np.isnan(batch[0, 1]) and batch[0, 0] == pytest.approx(0.5)


def test_sentence_and_model_level() -> None:
    scores = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]])
    expected = 2.0 / (1 + 0.2 * math.sqrt(2 / 3))  # population std
    np.testing.assert_allclose(sentence_level_scores(scores, 0.2), [expected, 2.0])
    np.testing.assert_allclose(model_weights([100, 300]), [0.25, 0.75])
    with pytest.raises(ValueError):
        model_weights([0, 3])
    rng = np.random.default_rng(0)
    first, second = rng.uniform(0.01, 1, (4, 3, 5)), rng.uniform(0.01, 1, (4, 3, 5))
    combined = selectit_scores([first, second], model_weights([1, 3]), alpha=0.2)
    each = [sentence_level_scores(token_level_scores(p), 0.2) for p in (first, second)]
    np.testing.assert_allclose(combined, 0.25 * each[0] + 0.75 * each[1])


def test_settings_validation_and_model_list() -> None:
    assert SelectITSettings().model_list("m") == ("m",)  # the run's model alone
    assert SelectITSettings(models=("a,b", "c")).model_list("m") == ("a", "b", "c")
    for bad in ({"form": "other"}, {"n_instructions": 6}, {"n_instructions": 0}, {"alpha": -1.0}, {"token_budget": 0}):
        with pytest.raises(SettingsError, match=f"^{next(iter(bad))}: expected"):
            SelectITSettings(**bad)


def test_token_batches_respect_budget_and_cover_everything() -> None:
    lengths = [5, 40, 7, 7, 100, 1, 30]
    batches = plan_token_batches(lengths, 60)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 60
    assert batches[0].tolist() == [4]  # longer than the budget: alone, and first
    ids, mask = right_padded([[7, 8, 9], [4]], pad_id=0)
    np.testing.assert_array_equal(ids, [[7, 8, 9], [4, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 0, 0]])
    assert shorten_middle(list(range(10)), 4) == [0, 1, 8, 9] and shorten_middle([1, 2], 0) == [1, 2]


# ---------------------------------------------------------------------------------------------
# tokenizers


def _digitless_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "[PAD]", "rate", "the", "answer", "is", "one", "two", "three", "four", "five"]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


def test_rating_prompt_is_the_reference_text() -> None:
    """One newline between the response and the cue, as in both public reference copies."""
    record = Record("Add 2 and 3.", "", "5")
    assert selectit_prompt("Rate it.", record) == "Rate it.\nInstruction:Add 2 and 3.\nResponse:5\nThe answer is: \n"
    with_input = Record("Add the numbers.", "2 and 3", "5")
    assert selectit_prompt(SELECTIT_RATING_INSTRUCTIONS[0], with_input) == (
        f"{SELECTIT_RATING_INSTRUCTIONS[0]}\nInstruction:Add the numbers.\n2 and 3\nResponse:5\nThe answer is: \n")


def test_rating_tokens_looked_up_in_the_tokenizer(tiny_lm_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    ids = rating_token_ids(tokenizer)
    assert [tokenizer.decode([i]) for i in ids] == ["1", "2", "3", "4", "5"]
    with pytest.raises(ModelError, match=r"no single token for the rating '1'.*unknown token"):
        rating_token_ids(_digitless_tokenizer(), name="wordlevel")


def test_model_with_digitless_tokenizer_is_refused(tmp_path: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _digitless_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    function = _selectit(tmp_path, _records(2))
    with pytest.raises(ModelError, match="single-digit tokens"):
        function.score(np.arange(2))


# ---------------------------------------------------------------------------------------------
# scoring with real (tiny) models


def _manual_score(model_dir: Path, record: Record, alpha: float = 0.2) -> float:
    """SelectIT for one example by hand: unbatched forward, full logits, plain Python formula."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    digit_ids = [tokenizer.convert_tokens_to_ids(d) for d in "12345"]
    token_scores = []
    for instruction in SELECTIT_RATING_INSTRUCTIONS:
        encoded = tokenizer(selectit_prompt(instruction, record), return_tensors="pt")
        with torch.no_grad():
            probabilities = torch.softmax(model(**encoded).logits[0, -1].double(), dim=-1)
        p = [float(probabilities[i]) for i in digit_ids]
        p = [x / sum(p) for x in p]
        best = max(range(5), key=lambda k: (p[k], -k))
        token_scores.append((best + 1) * sum(abs(x - p[best]) for x in p) / 4)
    mean = sum(token_scores) / len(token_scores)
    std = math.sqrt(sum((s - mean) ** 2 for s in token_scores) / len(token_scores))
    return mean / (1 + alpha * std)


def test_score_matches_manual_computation(tiny_lm_dir: Path) -> None:
    records = _records(3)
    function = _selectit(tiny_lm_dir, records)
    scores = function.score(np.array([2, 0]))
    assert scores.dtype == np.float32 and scores.shape == (2,)
    assert scores[0] == pytest.approx(_manual_score(tiny_lm_dir, records[2]), rel=1e-5)
    assert scores[1] == pytest.approx(_manual_score(tiny_lm_dir, records[0]), rel=1e-5)
    assert function.counters["forward_passes"] == 10 and not function.failures


def test_scores_do_not_depend_on_batching(tiny_lm_dir: Path) -> None:
    records = _records(7)
    results = []
    for budget in (1, 300, 100_000):
        function = _selectit(tiny_lm_dir, records, token_budget=budget)
        results.append(function.score(np.arange(7)))
        batches = function.counters["padded_tokens"]
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=0)
    np.testing.assert_allclose(results[0], results[2], rtol=1e-6, atol=0)
    assert batches > function.counters["tokens"]  # the big budget really padded rows together
    assert len(np.unique(results[0])) == 7  # distinct examples, distinct scores (nothing constant)


def test_failed_forward_is_recorded_for_that_example_only(tiny_gpt2_dir: Path) -> None:
    """GPT-2 has 1024 learned positions: a longer prompt (shortening disabled) makes its forward raise.

    It shares a batch with short prompts; the batch is retried one by one, so only the long example
    fails, and the others keep exactly the scores they get without it.
    """
    records = _records(4)
    pool = records[:2] + [_long_record()] + records[2:]
    function = _selectit(tiny_gpt2_dir, pool, max_length=0, token_budget=1_000_000)
    scores = function.score(np.arange(5))
    assert np.isnan(scores[2]) and np.isfinite(scores[[0, 1, 3, 4]]).all()
    assert list(function.failures) == [2] and "IndexError" in function.failures[2]
    assert function.counters["retried_batches"] >= 1 and function.counters["failed_examples"] == 1
    alone = _selectit(tiny_gpt2_dir, records, max_length=0).score(np.arange(4))
    np.testing.assert_allclose(scores[[0, 1, 3, 4]], alone, rtol=1e-6)
    # with shortening (default max_length, capped at the model's 1024 positions) it is scored
    shortened = _selectit(tiny_gpt2_dir, pool).score(np.array([2]))
    assert np.isfinite(shortened).all()


def test_model_level_weights_follow_parameter_counts(tiny_lm_dir: Path, tiny_gpt2_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    records = _records(3)
    both = _selectit(tiny_lm_dir, records, models=(f"{tiny_lm_dir},{tiny_gpt2_dir}",))
    counts = [AutoModelForCausalLM.from_pretrained(d).num_parameters() for d in (tiny_lm_dir, tiny_gpt2_dir)]
    assert counts[0] != counts[1]
    weights = both.model_weights()
    assert list(weights.values()) == pytest.approx([c / sum(counts) for c in counts])
    combined = both.score(np.arange(3))
    single = [_selectit(d, records).score(np.arange(3)) for d in (tiny_lm_dir, tiny_gpt2_dir)]
    expected = sum(w * s.astype(np.float64) for w, s in zip(weights.values(), single))
    np.testing.assert_allclose(combined, expected, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# NN-CIFT pointwise path: select and fidelity


@pytest.mark.e2e
def test_run_select_records_failures_and_predicts_the_rest(tiny_gpt2_dir: Path, demo_pool, tmp_path: Path) -> None:
    from nncift.settings.stages import SelectSettings
    from nncift.steps.select import run_select

    pool = list(demo_pool[:23]) + [_long_record()]
    options = {"max_length": 0, "n_instructions": 2}
    # every record scored; the network is still trained (in 20 steps: at the default 300 its training took ~11 s of this test)
    settings = SelectSettings.build(influence="selectit", model=str(tiny_gpt2_dir), **{"sampling.fraction": 1.0, "selection.budget": 5.0},
            quiet=True, device="cpu", **{"network.max_steps": 20})
    result = run_select(settings, tmp_path / "all", pool=pool, influence_options=options)
    manifest = json.loads((tmp_path / "all" / "manifest.json").read_text())
    assert list(manifest["failures"]) == ["23"] and "IndexError" in manifest["failures"]["23"]
    assert manifest["counts"]["pool"] == 24 and manifest["counts"]["selected"] == 5 == len(result.indices)
    assert manifest["cost"]["counters"]["failed_examples"] == 1
    assert manifest["cost"]["influence_evaluations_made"] == 24
    raw = np.load(tmp_path / "all" / "scores.npy")[0]
    order = np.argsort(-np.nan_to_num(raw, nan=-np.inf), kind="stable")
    assert set(result.indices.tolist()) == set(order[:5].tolist())  # every record scored: exact top-k

    sampled = SelectSettings.build(influence="selectit", model=str(tiny_gpt2_dir), **{"sampling.fraction": 0.25, "sampling.min_sampled": 4,
            "selection.budget": 0.25}, quiet=True, device="cpu", **{"network.epochs": 3, "network.max_steps": 20, "network.folds": 3})
    result = run_select(sampled, tmp_path / "sampled", pool=pool, influence_options=options)
    folder = tmp_path / "sampled"
    seen = np.load(folder / "scores.cols.npy")
    known = np.load(folder / "scores.npy")[0]
    predicted = np.load(folder / "predicted_scores.npy")
    low, high = result.manifest["label_scaling"]["low"], result.manifest["label_scaling"]["high"]
    ok = np.isfinite(known)
    assert len(seen) == 6 and predicted.shape == (24,) and np.isfinite(predicted).all()
    np.testing.assert_allclose(predicted[seen[ok]], (known[ok] - low) / (high - low), rtol=1e-6)
    np.testing.assert_allclose(known[ok], raw[seen[ok]], rtol=1e-5)  # same scores as the full run
    assert len(result.indices) == 6 and result.manifest["cost"]["influence_evaluations_made"] == 6


@pytest.mark.e2e
def test_fidelity_pointwise_rows(tiny_lm_dir: Path, demo_pool, tmp_path: Path) -> None:
    from nncift_research.fidelity import run_fidelity
    from nncift_research.fidelity_settings import FidelitySettings

    settings = FidelitySettings.build(influence="selectit", model=str(tiny_lm_dir), fractions=(0.25, 0.5), **{"sampling.min_sampled": 4},
                                quiet=True, device="cpu", **{"network.epochs": 3}, architectures=("paper", "two-tower"),
                                        **{"network.max_steps": 40, "network.folds": 3})
    result = run_fidelity(settings, tmp_path / "fid", pool=list(demo_pool[:16]), influence_options={"n_instructions": 2})
    assert [(row["fraction"], row["split"]) for row in result.rows] == [(0.25, "seen"), (0.25, "unseen"), (0.5, "seen"), (0.5, "unseen")]
    for row in result.rows:
        assert row["n"] == row["n_seen"] if row["split"] == "seen" else row["n"] == 16 - row["n_seen"]
        assert all(np.isfinite(row[k]) for k in ("mse_network", "mse_mean", "mse_random", "spearman", "top20_overlap"))
    assert "top20 overlap" in (tmp_path / "fid" / "fidelity.md").read_text()
    assert [row["predictor"] for row in result.selection_rows if row["fraction"] == 0.25] == ["paper", "two-tower", "mean"]
    assert all(row["n_labelled"] == 4 for row in result.selection_rows if row["fraction"] == 0.25)


def test_cli_repeated_model_flag_gives_the_model_list(tiny_lm_dir: Path, tiny_gpt2_dir: Path) -> None:
    from nncift.cli.commands import build_parser, split_settings
    from nncift.settings.stages import SelectSettings

    args = build_parser().parse_args(["select", "--out", "x", "--data", "d.json", "--influence", "selectit",
                                      "--model", str(tiny_lm_dir), "--model", str(tiny_gpt2_dir), "--fraction", "0.05"])
    settings, options = split_settings(args, SelectSettings)
    assert settings.model == str(tiny_lm_dir) and options["models"] == [str(tiny_lm_dir), str(tiny_gpt2_dir)]
    assert SelectITSettings(**options).model_list(settings.model) == (str(tiny_lm_dir), str(tiny_gpt2_dir))
    one = build_parser().parse_args(["select", "--out", "x", "--data", "d.json", "--model", "m"])
    settings, options = split_settings(one, SelectSettings)
    assert settings.model == "m" and "models" not in options
    other = build_parser().parse_args(["select", "--out", "x", "--data", "d.json", "--influence", "delift-se",
                                       "--model", "a", "--model", "b"])
    with pytest.raises(ValueError, match="one model"):
        split_settings(other, SelectSettings)


# ---------------------------------------------------------------------------------------------
# the real model


@pytest.mark.e2e
def test_real_smollm_ratings(smollm_dir: Path) -> None:
    records = [Record("What is 2 + 2?", "", "4"), Record("Name a primary colour.", "", "Red."),
               Record("Translate 'merci' to English.", "", "Thank you.")]
    function = _selectit(smollm_dir, records, token_budget=512)
    probabilities = function.rating_probabilities(np.arange(3))[0]
    assert probabilities.shape == (3, 5, 5) and np.isfinite(probabilities).all()
    assert probabilities.sum(axis=-1).min() > 0.01  # the model does answer with a digit after the cue
    scores = function.score(np.arange(3))
    assert np.isfinite(scores).all() and (0 <= scores).all() and (scores <= 5).all()
    assert scores[1] == pytest.approx(_manual_score(smollm_dir, records[1]), rel=1e-4)
