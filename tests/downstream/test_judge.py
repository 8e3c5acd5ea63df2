"""The LLM judge: the strict parser, the settings' refusals, the pipeline on a tiny model, the cache (reuse, torn lines) and,
in the e2e tier, the bundled SmolLM2 judging three answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from nncift.data.records import Record
from nncift.downstream.evaluate import EvaluateSettings, evaluate_records, load_model_for_evaluation
from nncift.downstream.evaluation import JUDGEMENTS, run_evaluate
from nncift.downstream.judge import (
    JudgementCache,
    JudgeSettings,
    LocalJudge,
    judge_answers,
    judge_prompt,
    model_identity,
    parse_score,
)
from nncift.settings.fields import SettingsError, build_settings

QUESTIONS = ["Name the capital of France.", "Add the numbers.\n2 + 3", "Give the opposite of the word.\nhot"]
REFERENCES = ["Paris", "5", "cold"]


@pytest.mark.parametrize("text, score", [
    ("4", 4), ("  5", 5), ("1.", 1), ("3\nThe answer misses a detail.", 3), ("2 because it is off", 2), ("4/5", 4),
    ("4 / 5", 4), ("Score: 4", 4), ("score:2", 2), ("SCORE = 5.", 5), ("5!", 5), ("3)", 3), ("\n\t2", 2),
])
def test_parser_accepts_a_leading_digit_one_to_five(text: str, score: int) -> None:
    assert parse_score(text) == score


@pytest.mark.parametrize("text", [
    "", "   ", "0", "6", "45", "4.5", "10", "five", "**4**", "(4)", "The score is 4", "Rating: 4", "4-5", "4/10", "1/10", "-3",
    "Score 4", "I would give it a 4", "#4", "4th",
])
def test_parser_refuses_everything_else(text: str) -> None:
    assert parse_score(text) is None


def test_prompt_states_the_three_texts_and_the_scale() -> None:
    prompt = judge_prompt("Q?", "the reference", "x" * 2000)
    assert "Question:\nQ?\n" in prompt and "Reference answer:\nthe reference\n" in prompt and "Candidate answer:\nxxx" in prompt
    assert "single digit" in prompt and all(f"{d} = " in prompt for d in "12345")
    assert "x" * 1500 + "…" in prompt and "x" * 1501 not in prompt  # each text cut to 1,500 characters


@pytest.mark.parametrize("values, message", [
    ({"judge": {"endpoint": "http://localhost:8000/v1"}}, "judge.endpoint: is set but judge.mode is off"),
    ({"judge": {"mode": "generate", "endpoint": "localhost:8000"}}, "judge.endpoint: expected an http:// or https:// URL"),
    ({"judge": {"mode": "constrained", "endpoint": "http://localhost:8000/v1"}}, "judge.mode: constrained needs the judge's logits"),
    ({"judge": {"mode": "sometimes"}}, "judge.mode: expected one of 'off', 'generate', 'constrained'"),
    ({"judge.max_new_tokens": 0}, "judge.max_new_tokens: expected a value ≥ 1"),
])
def test_bad_judge_settings_are_refused_naming_the_setting(values: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        build_settings(EvaluateSettings, values)


def test_a_bad_judge_flag_is_one_line_naming_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from nncift.cli.commands import main

    data = tmp_path / "heldout.jsonl"
    data.write_text(json.dumps({"instruction": "Say hi.", "output": "hi"}) + "\n")
    assert main(["evaluate", "--data", str(data), "--judge.endpoint", "http://localhost:1/v1"]) == 2
    error = capsys.readouterr().err.strip()
    assert "--judge.endpoint" in error and "judge.mode is off" in error and "Traceback" not in error


@pytest.fixture(scope="module")
def counted_judge(tiny_lm_dir: Path):
    """A local judge on the tiny model whose model calls (generate and forward) are counted."""
    def make(mode: str, batch_size: int = 8) -> tuple[LocalJudge, JudgeSettings, dict[str, int]]:
        settings = JudgeSettings(mode=mode, model=str(tiny_lm_dir), batch_size=batch_size, max_new_tokens=4)
        judge = LocalJudge(settings, device="cpu")
        model, tokenizer = judge.loaded()
        counts = {"generate": 0, "forward": 0}

        class Counted:
            def __init__(self) -> None:
                self.__dict__["inner"] = model

            def __getattr__(self, name: str):
                return getattr(model, name)

            def generate(self, *args, **kwargs):
                counts["generate"] += 1
                return model.generate(*args, **kwargs)

            def __call__(self, *args, **kwargs):
                counts["forward"] += 1
                return model(*args, **kwargs)

        judge._model = (Counted(), tokenizer)
        return judge, settings, counts
    return make


def test_a_second_run_reuses_every_judgement_and_calls_the_model_zero_times(counted_judge, tmp_path: Path) -> None:
    cache = tmp_path / "judgements.jsonl"
    judge, settings, counts = counted_judge("generate", batch_size=2)
    answers = ["Paris", "five", ""]
    first = judge_answers(QUESTIONS, REFERENCES, answers, settings, judge=judge, cache=cache)
    assert counts["generate"] == 2 and first.reused == 0  # 3 answers in batches of 2
    again, again_settings, again_counts = counted_judge("generate", batch_size=2)
    second = judge_answers(QUESTIONS, REFERENCES, answers, again_settings, judge=again, cache=cache)
    assert again_counts == {"generate": 0, "forward": 0} and second.calls == 0 and second.reused == 3
    assert second.scores == first.scores and second.outputs == first.outputs
    changed = judge_answers(QUESTIONS, REFERENCES, ["Paris", "5", ""], again_settings, judge=again, cache=cache)
    assert again_counts["generate"] == 1 and changed.reused == 2  # only the new answer is judged
    assert len(cache.read_text().splitlines()) == 4
    longer = JudgeSettings(mode="generate", model=settings.model, batch_size=2, max_new_tokens=6)  # a longer judgement may parse otherwise
    assert judge_answers(QUESTIONS, REFERENCES, answers, longer, judge=again, cache=cache).reused == 0


def test_unparseable_judgements_are_counted_never_dropped(counted_judge, tmp_path: Path) -> None:
    judge, settings, _ = counted_judge("generate")
    outcome = judge_answers(QUESTIONS * 4, REFERENCES * 4, [f"answer {i}" for i in range(12)], settings, judge=judge, cache=tmp_path / "c.jsonl")
    metrics = outcome.metrics()
    assert len(outcome.scores) == 12 and outcome.scores == [parse_score(text) for text in outcome.outputs]
    unparsed = sum(score is None for score in outcome.scores)
    assert unparsed > 0  # a random tiny model does not answer with a digit
    assert metrics["judge_unparseable"] == unparsed and metrics["judge_unparseable_share"] == pytest.approx(unparsed / 12)
    parsed = [s for s in outcome.scores if s is not None]
    assert metrics["judge_score"] == (pytest.approx(np.mean(parsed)) if parsed else None)


def test_constrained_mode_always_scores_and_is_batch_invariant(counted_judge, tmp_path: Path) -> None:
    answers = ["Paris", "five", "", "Lyon", "5", "warm"]
    one, settings_one, counts_one = counted_judge("constrained", batch_size=1)
    many, settings_many, counts_many = counted_judge("constrained", batch_size=4)
    by_one = judge_answers(QUESTIONS * 2, REFERENCES * 2, answers, settings_one, judge=one, cache=tmp_path / "one.jsonl")
    by_many = judge_answers(QUESTIONS * 2, REFERENCES * 2, answers, settings_many, judge=many, cache=tmp_path / "many.jsonl")
    assert counts_one == {"generate": 0, "forward": 6} and counts_many == {"generate": 0, "forward": 2}
    assert all(score in (1, 2, 3, 4, 5) for score in by_one.scores) and by_one.metrics()["judge_unparseable"] == 0
    assert by_one.scores == by_many.scores  # left padding with position ids: the same logits whatever the batch


def test_a_torn_last_line_is_counted_and_ignored(counted_judge, tmp_path: Path) -> None:
    cache = tmp_path / "judgements.jsonl"
    judge, settings, counts = counted_judge("constrained")
    first = judge_answers(QUESTIONS, REFERENCES, ["Paris", "6", "warm"], settings, judge=judge, cache=cache)
    with open(cache, "ab") as handle:
        handle.write(b'{"key": "0123", "score": 4, "outp')  # a kill in the middle of an append
    again = judge_answers(QUESTIONS, REFERENCES, ["Paris", "6", "warm"], settings, judge=judge, cache=cache)
    assert again.damaged_cache_lines == 1 and again.reused == 3 and again.scores == first.scores
    calls = counts["forward"]
    judge_answers(QUESTIONS, REFERENCES, ["Paris", "6", "cool"], settings, judge=judge, cache=cache)
    assert counts["forward"] == calls + 1
    reread = JudgementCache(cache)
    assert reread.damaged == 1 and len(reread.entries) == 4  # the append started on a fresh line


def test_the_identity_follows_the_weights(tiny_lm_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_lm_dir, copy)
    assert model_identity(str(copy)).split("@")[1] == model_identity(str(tiny_lm_dir)).split("@")[1]
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # one weight changed
    weights.write_bytes(bytes(data))
    assert model_identity(str(copy)).split("@")[1] != model_identity(str(tiny_lm_dir)).split("@")[1]


RECORDS = [Record(*text.split("\n", 1), output) if "\n" in text else Record(text, "", output) for text, output in zip(QUESTIONS, REFERENCES)]


def test_evaluate_reports_the_judge_and_caches_beside_its_results(tiny_lm_dir: Path, tmp_path: Path) -> None:
    settings = build_settings(EvaluateSettings, {"model": str(tiny_lm_dir), "embedder": f"lm:{tiny_lm_dir}", "device": "cpu",
                                                 "max_new_tokens": 3, "quiet": True, "with_loss": False,
                                                 "judge": {"mode": "constrained", "model": str(tiny_lm_dir)}})
    result = run_evaluate(settings, RECORDS, tmp_path / "eval" / "evaluation.json")
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert saved["metrics"]["judge_score"] == pytest.approx(np.mean([row["judge_score"] for row in saved["examples"]]))
    assert saved["metrics"]["judge_unparseable"] == 0 and saved["metrics"]["judge"]["reused_from_cache"] == 0
    assert saved["metrics"]["settings"]["judge"]["mode"] == "constrained"
    assert len((tmp_path / "eval" / JUDGEMENTS).read_text().splitlines()) == len(RECORDS)
    again = run_evaluate(settings, RECORDS, tmp_path / "eval" / "evaluation.json")
    assert again.metrics["judge"]["reused_from_cache"] == len(RECORDS) and again.metrics["judge"]["judge_calls"] == 0
    assert again.metrics["judge_score"] == result.metrics["judge_score"]


def test_judging_in_score_answers_matches_the_separate_pass(tiny_lm_dir: Path, tmp_path: Path) -> None:
    settings = build_settings(EvaluateSettings, {"model": str(tiny_lm_dir), "embedder": f"lm:{tiny_lm_dir}", "device": "cpu",
                                                 "max_new_tokens": 3, "quiet": True, "with_loss": False,
                                                 "judge": {"mode": "constrained", "model": str(tiny_lm_dir)}})
    model, tokenizer = load_model_for_evaluation(settings)
    inline = evaluate_records(model, tokenizer, RECORDS, settings, judge_cache=tmp_path / "inline.jsonl")
    separate = run_evaluate(settings, RECORDS, tmp_path / "separate" / "evaluation.json")
    assert [row["judge_score"] for row in inline.examples] == [row["judge_score"] for row in separate.examples]


@pytest.mark.e2e
def test_the_bundled_model_judges_three_answers(smollm_dir: Path, tmp_path: Path) -> None:
    answers = ["Paris", "", "The sky is blue."]
    runs = {}
    for mode, batch_size in (("generate", 1), ("generate", 3), ("constrained", 3)):
        settings = JudgeSettings(mode=mode, model=str(smollm_dir), max_new_tokens=3, batch_size=batch_size)
        runs[mode, batch_size] = judge_answers(QUESTIONS, REFERENCES, answers, settings, judge=LocalJudge(settings, device="cpu"),
                                               cache=tmp_path / f"{mode}-{batch_size}.jsonl")
    generated = runs["generate", 3]
    assert generated.outputs == runs["generate", 1].outputs  # greedy and left-padded: the batch changes no judgement
    assert generated.scores == [parse_score(text) for text in generated.outputs]
    assert generated.metrics()["judge_unparseable"] == sum(score is None for score in generated.scores)
    assert all(score in (1, 2, 3, 4, 5) for score in runs["constrained", 3].scores)

def test_cli_prints_the_judge_line_and_keeps_stdout_json(tiny_lm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from nncift.cli.commands import main
    from nncift.data.records import write_jsonl

    data = tmp_path / "heldout.jsonl"
    write_jsonl(data, [{"instruction": r.instruction, "input": r.input, "output": r.output} for r in RECORDS])
    code = main(["evaluate", "--model", str(tiny_lm_dir), "--embedder", f"lm:{tiny_lm_dir}", "--data", str(data), "--max-new-tokens", "2",
                 "--no-with-loss", "--quiet", "--judge.mode", "generate", "--judge.model", str(tiny_lm_dir), "--judge.max-new-tokens", "3",
                 "--out", str(tmp_path / "eval" / "out.json")])
    assert code == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    unparsed = printed["judge_unparseable"]
    assert f"unparseable: {unparsed} ({unparsed / len(RECORDS):.1%})" in captured.err and "reused from the cache: 0" in captured.err
    assert printed["judge"]["judged"] == len(RECORDS) and (tmp_path / "eval" / JUDGEMENTS).is_file()
