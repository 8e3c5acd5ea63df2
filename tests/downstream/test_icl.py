"""In-context-learning evaluation: k-NN examples, prompts, scoring, the CLI (tiny random model; one slow real-model test)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nncift.data.records import Record as _Record
from nncift.data.records import write_jsonl
from nncift.downstream.evaluate import EvaluateSettings, load_model_for_evaluation
from nncift.downstream.icl import evaluate_icl, icl_prompt_ids, nearest_examples, query_vectors


def Record(instruction: str, output: str, input: str = "") -> _Record:  # noqa: N802 - a short constructor for the tests
    return _Record(instruction=instruction, input=input, output=output)


POOL = [
    Record(instruction="Name the capital city of France.", output="Paris"),
    Record(instruction="Translate 'dog' into German.", output="Hund"),
    Record(instruction="Is this movie review positive or negative?", input="A wonderful, moving film.", output="positive"),
    Record(instruction="Add the numbers.", input="12 + 30", output="42"),
    Record(instruction="Name the capital city of Italy.", output="Rome"),
]


def test_nearest_examples_ranks_by_cosine_with_ties_to_the_lowest_index() -> None:
    pool = np.array([[1, 0, 0], [0, 1, 0], [0.6, 0.8, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    queries = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)
    chosen = nearest_examples(queries, pool, 3)
    assert chosen.tolist() == [[1, 3, 2], [0, 2, 1], [4, 0, 1]]  # rows 1 and 3 tie: lower index first
    assert nearest_examples(queries, pool, 10).shape == (3, 5)  # k larger than the pool: the whole pool, ranked
    with pytest.raises(ValueError, match="empty"):
        nearest_examples(queries, pool[:0], 2)


@pytest.mark.e2e
def test_knn_with_the_real_embedder_picks_the_records_on_the_same_topic() -> None:
    queries = [Record(instruction="Name the capital city of Spain.", output="Madrid"),
               Record(instruction="Is this movie review positive or negative?", input="Dull and far too long.", output="negative")]
    settings = EvaluateSettings(device="cpu")
    chosen = nearest_examples(query_vectors(queries, settings), query_vectors(POOL, settings), 2)
    assert set(chosen[0].tolist()) == {0, 4}  # the two capital-city questions
    assert chosen[1, 0] == 2  # the other review
    # the answer of a query is never used: changing it leaves the neighbours as they are
    changed = [Record(instruction=q.instruction, input=q.input, output="something else entirely") for q in queries]
    assert np.array_equal(nearest_examples(query_vectors(changed, settings), query_vectors(POOL, settings), 2), chosen)


@pytest.fixture(scope="module")
def tiny_model(tiny_lm_dir: Path):
    return load_model_for_evaluation(EvaluateSettings(model=str(tiny_lm_dir), device="cpu"))


def test_prompt_puts_the_most_similar_example_last_and_drops_the_least_similar_to_fit(tiny_model) -> None:
    _, tokenizer = tiny_model
    query = Record(instruction="Name the capital city of Spain.", output="Madrid")
    examples = [POOL[4], POOL[0]]  # least similar first
    ids, kept = icl_prompt_ids(tokenizer, examples, query, chat=True, max_tokens=10_000)
    text = tokenizer.decode(ids)
    assert kept == 2 and text.index("Rome") < text.index("Paris") < text.index("Spain")
    assert text.count("<|im_start|>assistant") == 3  # two answered turns, then the generation cue
    alone, _ = icl_prompt_ids(tokenizer, [], query, chat=True, max_tokens=10_000)
    one, kept_one = icl_prompt_ids(tokenizer, examples, query, chat=True, max_tokens=len(ids) - 1)
    assert kept_one == 1 and "Rome" not in tokenizer.decode(one) and "Paris" in tokenizer.decode(one)
    assert len(alone) < len(one) < len(ids)
    plain, _ = icl_prompt_ids(tokenizer, examples, query, chat=False, max_tokens=10_000)
    assert tokenizer.decode(plain).count("### Response:") == 3


@pytest.mark.e2e
def test_evaluate_icl_records_the_examples_used_and_scores_like_the_finetuning_path(tiny_model, tiny_lm_dir: Path) -> None:
    model, tokenizer = tiny_model
    queries = [Record(instruction="Name the capital city of Spain.", output="Madrid"),
               Record(instruction="Add the numbers.", input="1 + 2", output="3")]
    settings = EvaluateSettings(model=str(tiny_lm_dir), device="cpu", k=2, max_new_tokens=3, quiet=True)
    result = evaluate_icl(model, tokenizer, queries, POOL, settings)
    assert result.metrics["mode"] == "icl" and result.metrics["k"] == 2 and result.metrics["n"] == 2
    assert set(result.examples[0]["icl_examples"]) == {0, 4} and result.examples[1]["icl_examples"][0] == 3
    for metric in ("rouge_l", "exact_match", "loss"):
        assert result.metrics[metric] == pytest.approx(np.mean([e[metric] for e in result.examples]), rel=0.5 if metric == "loss" else 1e-9)
    assert np.isfinite(result.metrics["loss"]) and result.metrics["loss"] > 0
    without = evaluate_icl(model, tokenizer, queries, POOL, EvaluateSettings(model=str(tiny_lm_dir), device="cpu", k=2, max_new_tokens=3,
                                                                              quiet=True, with_loss=False))
    assert without.metrics["loss"] is None and [e["prediction"] for e in without.examples] == [e["prediction"] for e in result.examples]


@pytest.mark.e2e
def test_cli_icl_mode_and_bad_values(tiny_lm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from nncift.cli.commands import main

    pool = tmp_path / "subset.jsonl"
    write_jsonl(pool, [{"index": i, "score": 1.0, "record": {"instruction": r.instruction, "input": r.input, "output": r.output}}
                       for i, r in enumerate(POOL)])  # a run's selected.jsonl
    heldout = tmp_path / "heldout.jsonl"
    write_jsonl(heldout, [{"instruction": "Name the capital city of Spain.", "output": "Madrid"}])
    code = main(["evaluate", "--model", str(tiny_lm_dir), "--data", str(heldout), "--icl-pool", str(pool), "--k", "2",
                 "--max-new-tokens", "2", "--no-with-loss", "--quiet", "--out", str(tmp_path / "out.json")])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["mode"] == "icl" and printed["pool_size"] == len(POOL) and printed["mean_examples_in_prompt"] == 2
    saved = json.loads((tmp_path / "out.json").read_text())
    assert set(saved["examples"][0]["icl_examples"]) == {0, 4}
    assert main(["evaluate", "--model", str(tiny_lm_dir), "--data", str(heldout), "--icl-pool", str(pool), "--k", "0"]) == 2
    assert "--k: expected a value ≥ 1, got 0" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tiny_lm_dir), "--data", str(heldout), "--icl-pool", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl: in-context pool not found" in capsys.readouterr().err


@pytest.mark.e2e
def test_real_model_copies_the_answer_of_an_identical_in_context_example(smollm_dir: Path) -> None:
    """Arbitrary answers the model cannot know: right with the matching example in the prompt, wrong without."""
    pool = [Record(instruction=f"Reply with the code word of the {team} team.", output=word)
            for team, word in (("red", "pineapple"), ("blue", "tortoise"), ("green", "lantern"), ("yellow", "marble"))]
    queries = list(pool)
    settings = EvaluateSettings(device="cpu", k=1, max_new_tokens=6, quiet=True, with_loss=False)
    model, tokenizer = load_model_for_evaluation(settings)
    result = evaluate_icl(model, tokenizer, queries, pool, settings)
    assert [e["icl_examples"] for e in result.examples] == [[0], [1], [2], [3]]
    assert result.metrics["exact_match"] >= 0.5  # 0.75 with torch 2.x on CPU: the model copies most answers
    from nncift.downstream.evaluate import evaluate_records

    assert evaluate_records(model, tokenizer, queries, settings).metrics["exact_match"] == 0.0
