"""Evaluation: answer normalisation, ROUGE-L, embedding cosine, batched generation, loss, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nncift.data.records import Record
from nncift.downstream.evaluate import (
    EvaluateSettings,
    embedding_cosines,
    evaluate_records,
    exact_match,
    generate_answers,
    load_model_for_evaluation,
    normalize_answer,
    reference_losses,
    rouge_l_scores,
)
from nncift.downstream.evaluation import run_evaluate
from nncift.downstream.finetune import FinetuneSettings, finetune

RECORDS = [
    Record("Classify the sentiment of this review.", "A wonderful, moving film.", "positive"),
    Record("Name the capital of France.", "", "Paris"),
    Record("Add the numbers.", "2 + 3", "5"),
    Record("Reverse the word.", "stressed", "desserts"),
    Record("Give the opposite of the word.", "hot", "cold"),
]


@pytest.mark.parametrize("prediction, reference, expected", [
    ("Business", "business", 1.0),
    ("The answer: Paris.", "answer paris", 1.0),
    ("  an   apple! ", "Apple", 1.0),
    ("Science and Technology", "science and technology", 1.0),
    ("Sports", "Business", 0.0),
    ("Paris, France", "Paris", 0.0),
])
def test_exact_match_after_normalisation(prediction: str, reference: str, expected: float) -> None:
    assert exact_match(prediction, reference) == expected


def test_normalize_answer_removes_case_punctuation_articles_and_spaces() -> None:
    assert normalize_answer("  The  Cat, a DOG; an owl!\n") == "cat dog owl"


def test_rouge_l_known_values() -> None:
    scores = rouge_l_scores(["the cat sat", "the cat", "blue sky", ""], ["the cat sat", "the cat sat", "red car", "x"])
    assert scores[0] == pytest.approx(1.0)
    assert scores[1] == pytest.approx(0.8)  # LCS 2: precision 1, recall 2/3
    assert scores[2] == 0.0 and scores[3] == 0.0


@pytest.mark.e2e
def test_embedding_cosine_is_one_for_equal_texts_and_lower_otherwise() -> None:
    cosines = embedding_cosines(["The cat sleeps on the mat.", "The cat sleeps on the mat."],
                                ["The cat sleeps on the mat.", "Quarterly revenue rose sharply."])
    assert cosines[0] == pytest.approx(1.0, abs=1e-5)
    assert cosines[1] < 0.5


@pytest.fixture(scope="module")
def tiny_model(tiny_lm_dir: Path):
    return load_model_for_evaluation(EvaluateSettings(model=str(tiny_lm_dir), device="cpu"))


def test_generation_is_deterministic_on_a_tiny_model(tiny_model, tiny_lm_dir: Path) -> None:
    model, tokenizer = tiny_model
    settings = EvaluateSettings(model=str(tiny_lm_dir), max_new_tokens=6, batch_size=2, quiet=True)
    first = generate_answers(model, tokenizer, RECORDS, settings)
    assert first == generate_answers(model, tokenizer, RECORDS, settings)
    assert len(first) == len(RECORDS) and all(isinstance(a, str) for a in first)


@pytest.mark.e2e
def test_generation_with_the_real_model_answers_and_is_independent_of_batching(smollm_dir: Path) -> None:
    model, tokenizer = load_model_for_evaluation(EvaluateSettings(model=str(smollm_dir), device="cpu"))
    records = [Record("What is the capital of France? Answer with one word.", "", "Paris"),
               Record("Write the number that comes after four, in digits only.", "", "5"),
               Record("Is the sentence 'I loved this film' positive or negative? Answer with one word.", "", "positive")]
    one = generate_answers(model, tokenizer, records, EvaluateSettings(model=str(smollm_dir), max_new_tokens=8, batch_size=1, quiet=True))
    many = generate_answers(model, tokenizer, records, EvaluateSettings(model=str(smollm_dir), max_new_tokens=8, batch_size=3, quiet=True))
    assert one == many  # left padding does not change greedy answers
    assert "paris" in one[0].lower()
    assert "<|im_end|>" not in " ".join(one)


def test_reference_loss_matches_per_record_and_is_batch_invariant(tiny_model, tiny_lm_dir: Path) -> None:
    model, tokenizer = tiny_model
    sums_1, counts_1 = reference_losses(model, tokenizer, RECORDS, EvaluateSettings(model=str(tiny_lm_dir), batch_size=1))
    sums_4, counts_4 = reference_losses(model, tokenizer, RECORDS, EvaluateSettings(model=str(tiny_lm_dir), batch_size=4))
    np.testing.assert_allclose(sums_1, sums_4, rtol=1e-4)
    np.testing.assert_array_equal(counts_1, counts_4)
    answer_tokens = [len(tokenizer(r.output, add_special_tokens=False)["input_ids"]) + 1 for r in RECORDS]  # + EOS
    assert counts_1.tolist() == answer_tokens


@pytest.mark.e2e
def test_fine_tuned_adapter_lowers_the_loss_on_its_training_records(tiny_lm_dir: Path, tmp_path: Path) -> None:
    adapter = finetune(RECORDS * 2, FinetuneSettings(model=str(tiny_lm_dir), learning_rate=3e-2, epochs=6, batch_size=4, quiet=True),
                       tmp_path / "adapter").adapter_dir
    settings = EvaluateSettings(model=str(tiny_lm_dir), max_new_tokens=4, quiet=True)
    base = run_evaluate(settings, RECORDS)
    tuned = run_evaluate(EvaluateSettings(model=str(tiny_lm_dir), adapter=str(adapter), max_new_tokens=4, quiet=True), RECORDS,
                         tmp_path / "evaluation.json")
    assert tuned.metrics["loss"] < base.metrics["loss"] - 0.15  # the tiny model cannot go far below ln(vocabulary)
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert {"loss", "rouge_l", "embedding_cosine", "exact_match", "n"} <= set(saved["metrics"])
    assert len(saved["examples"]) == len(RECORDS) and saved["metrics"]["settings"]["adapter"] == str(adapter)
    for example in saved["examples"]:
        assert example["exact_match"] == exact_match(example["prediction"], example["reference"])


def test_missing_adapter_is_a_clear_error(tiny_lm_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_model_for_evaluation(EvaluateSettings(model=str(tiny_lm_dir), adapter=str(tmp_path)))


@pytest.mark.e2e
def test_metrics_summarise_the_examples(tiny_model, tiny_lm_dir: Path) -> None:
    model, tokenizer = tiny_model
    result = evaluate_records(model, tokenizer, RECORDS, EvaluateSettings(model=str(tiny_lm_dir), max_new_tokens=3, quiet=True))
    for metric in ("rouge_l", "embedding_cosine", "exact_match"):
        assert result.metrics[metric] == pytest.approx(np.mean([e[metric] for e in result.examples]))
    assert result.metrics["n"] == len(RECORDS)


@pytest.mark.e2e
def test_cli_prints_metrics(tiny_lm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from nncift.cli.commands import main
    from nncift.data.records import write_jsonl

    data = tmp_path / "heldout.jsonl"
    write_jsonl(data, [{"instruction": r.instruction, "input": r.input, "output": r.output} for r in RECORDS])
    code = main(["evaluate", "--model", str(tiny_lm_dir), "--data", str(data), "--max-new-tokens", "2", "--quiet",
                 "--out", str(tmp_path / "out.json")])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n"] == len(RECORDS) and (tmp_path / "out.json").is_file()


def test_the_judge_is_off_by_default_and_adds_nothing(tiny_model, tiny_lm_dir: Path) -> None:
    assert EvaluateSettings().judge.mode == "off"
    model, tokenizer = tiny_model
    settings = EvaluateSettings(model=str(tiny_lm_dir), embedder=f"lm:{tiny_lm_dir}", max_new_tokens=2, with_loss=False, quiet=True)
    result = evaluate_records(model, tokenizer, RECORDS, settings)
    assert not any(key.startswith("judge") for key in result.metrics)
    assert not any(key.startswith("judge") for example in result.examples for key in example)
