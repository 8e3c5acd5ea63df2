"""The LLM judge on the CPU with the bundled SmolLM2: does it parse, and does it rank arms as ROUGE-L does?

Held-out records with short references (Alpaca demo data) are answered by five arms whose quality is known in advance:
the reference itself, the first half of its words, the bundled model's own greedy answer (``evaluate`` without an adapter),
another record's reference (fluent but wrong), and an empty answer. Each arm is scored by ROUGE-L and judged in both judge
modes (``generate``: the first token of a greedy judgement, parsed strictly; ``constrained``: the most likely of the tokens
1..5). Reported per mode: the share of unparseable judgements (goal ≤ 5%), Spearman over the arms between the judge's mean
score and ROUGE-L, Spearman over all answers, and the judge's seconds per answer next to the seconds per generated answer
of ``evaluate`` itself (what turning the judge on adds). Judgements are not cached between invocations (a fresh cache per
run), so the times are those of judging.

Usage::

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_judge.py --n 24 --output bench/results/judge.md
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import command_line, cpu_name, publish  # noqa: E402

from nncift.data.records import Record, read_records  # noqa: E402
from nncift.downstream.evaluate import EvaluateSettings, generate_answers, load_model_for_evaluation, rouge_l_scores  # noqa: E402
from nncift.downstream.judge import PROMPT_VERSION, JudgeSettings, LocalJudge, judge_answers  # noqa: E402
from nncift.settings.choices import BUNDLED_LM  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_en_demo.json"
MODES = ("generate", "constrained")


def held_out(path: Path, n: int, max_chars: int, seed: int) -> list[Record]:
    """``n`` records (seeded) whose reference has at most ``max_chars`` characters and at least three words."""
    records = [r for r in read_records(path)[0] if len(r.output) <= max_chars and len(r.output.split()) >= 3]
    return random.Random(seed).sample(records, n)


def arms(records: list[Record], model_answers: list[str]) -> dict[str, list[str]]:
    """The answers of each arm, best first by construction (the model's own answers fall where they fall)."""
    references = [r.output for r in records]
    return {"reference copy": references,
            "first half of the reference": [" ".join(r.split()[: max(1, len(r.split()) // 2)]) for r in references],
            "base model (SmolLM2, greedy)": model_answers,
            "another record's reference": references[1:] + references[:1],
            "empty answer": [""] * len(records)}


def main() -> None:
    """Run the arms, judge them in both modes, print (and write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--n", type=int, default=24, help="held-out records")
    parser.add_argument("--max-chars", type=int, default=300, help="longest reference kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=BUNDLED_LM, help="the evaluated model and the judge")
    parser.add_argument("--output", type=Path, help="write the markdown report here (bench/results/judge.md)")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"{args.data}: not found (../shared/data beside the checkout)")
    records = held_out(args.data, args.n, args.max_chars, args.seed)
    settings = EvaluateSettings(model=args.model, device="cpu", max_new_tokens=64, batch_size=8, quiet=True)
    model, tokenizer = load_model_for_evaluation(settings)
    start = time.perf_counter()
    answers = arms(records, generate_answers(model, tokenizer, records, settings))
    generation_seconds = (time.perf_counter() - start) / len(records)
    questions, references = [r.query for r in records], [r.output for r in records]
    rouge = {arm: rouge_l_scores(given, references) for arm, given in answers.items()}
    results: dict[str, dict[str, dict]] = {mode: {} for mode in MODES}
    with tempfile.TemporaryDirectory() as folder:
        for mode in MODES:
            judge_settings = JudgeSettings(mode=mode, model=args.model, max_new_tokens=8, batch_size=8)
            judge = LocalJudge(judge_settings, device="cpu")
            judge.loaded()  # loading is not judging
            for arm, given in answers.items():
                start = time.perf_counter()
                outcome = judge_answers(questions, references, given, judge_settings, judge=judge, cache=Path(folder) / f"{mode}.jsonl")
                results[mode][arm] = {"outcome": outcome, "seconds": (time.perf_counter() - start) / len(given)}
    publish(report(args, records, answers, rouge, results, generation_seconds), args.output)


def report(args: argparse.Namespace, records: list[Record], answers: dict[str, list[str]], rouge: dict[str, np.ndarray],
           results: dict[str, dict[str, dict]], generation_seconds: float) -> str:
    """The markdown report: per arm ROUGE-L and each mode's mean score and unparseable share; then the agreement."""
    import torch

    lines = ["# LLM judge: parse rate and agreement with ROUGE-L (bundled SmolLM2 on the CPU)", "",
             f"Command: `{command_line('bench/bench_judge.py')}`; {cpu_name()}, {torch.get_num_threads()} torch thread(s); "
             f"judge and evaluated model {args.model}; prompt {PROMPT_VERSION}; {len(records)} Alpaca-demo records (references of "
             f"≤ {args.max_chars} characters, seed {args.seed}); judge max_new_tokens 8, batch 8.", "",
             "| arm | ROUGE-L | " + " | ".join(f"judge {m}: mean (1–5) | {m}: unparseable" for m in MODES) + " |",
             "|---|---|" + "---|---|" * len(MODES)]
    for arm in answers:
        cells = []
        for mode in MODES:
            metrics = results[mode][arm]["outcome"].metrics()
            score = "–" if metrics["judge_score"] is None else f"{metrics['judge_score']:.2f}"
            cells += [score, f"{metrics['judge_unparseable']}/{len(records)} ({metrics['judge_unparseable_share']:.0%})"]
        lines.append(f"| {arm} | {rouge[arm].mean():.3f} | " + " | ".join(cells) + " |")
    lines += ["", "| mode | unparseable, all arms | Spearman over arms (judge mean vs ROUGE-L) | Spearman over answers | "
              "scores given (1/2/3/4/5) | judge s per answer | evaluate's generation s per answer |", "|---|---|---|---|---|---|---|"]
    for mode in MODES:
        outcomes = [results[mode][arm]["outcome"] for arm in answers]
        scores = [s for o in outcomes for s in o.scores]
        unparsed = sum(s is None for s in scores)
        means = [o.metrics()["judge_score"] for o in outcomes]
        arm_rho = spearmanr([m if m is not None else np.nan for m in means], [rouge[a].mean() for a in answers]).statistic
        pairs = [(s, r) for o, arm in zip(outcomes, answers) for s, r in zip(o.scores, rouge[arm]) if s is not None]
        answer_rho = spearmanr(*zip(*pairs)).statistic if len(pairs) > 2 else float("nan")
        seconds = np.mean([results[mode][arm]["seconds"] for arm in answers])
        given = "/".join(str(scores.count(value)) for value in range(1, 6))
        lines.append(f"| {mode} | {unparsed}/{len(scores)} ({unparsed / len(scores):.1%}) | {arm_rho:.2f} | {answer_rho:.2f} | "
                     f"{given} | {seconds:.3f} | {generation_seconds:.3f} |")
    examples = results["generate"]["base model (SmolLM2, greedy)"]["outcome"].outputs[:5]
    lines += ["", "First raw judgements (generate mode, base-model arm): " + "; ".join(f"`{o.strip()[:40]!r}`" for o in examples), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
