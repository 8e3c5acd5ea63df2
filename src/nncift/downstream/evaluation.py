"""Evaluating a model on held-out records — fine-tuned (an adapter), as it is, or with in-context examples from
a subset (``icl_pool``) — and the ``nncift evaluate`` command. The metrics are :mod:`nncift.downstream.evaluate`'s;
the in-context answers :mod:`nncift.downstream.icl`'s; the LLM judge's (``--judge.mode``) :mod:`nncift.downstream.judge`'s, its
judgements cached in ``judgements.jsonl`` beside the results file (``--out``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from nncift.data.records import Record, read_many
from nncift.downstream.evaluate import EvaluateSettings, EvaluationResult, add_judgements, evaluate_records, load_model_for_evaluation
from nncift.downstream.icl import evaluate_icl, read_icl_pool
from nncift.downstream.judge import JudgeSettings
from nncift.files.atomic import write_text_atomic
from nncift.settings.fields import environment_info, settings_dict
from nncift.settings.flags import add_arguments
from nncift.settings.sources import settings_from_args

JUDGEMENTS = "judgements.jsonl"
"""The judge's cache file, in the folder of the results file (``--out``)."""


def run_evaluate(settings: EvaluateSettings, records: Sequence[Record], out: str | Path | None = None) -> EvaluationResult:
    """Load the model (and adapter), evaluate on ``records``, and write ``out`` (JSON) when given.

    With the judge on, its judgements are cached in :data:`JUDGEMENTS` beside ``out`` (without ``out``: nncift's cache folder).
    """
    records = list(records)[: settings.limit or None]
    model, tokenizer = load_model_for_evaluation(settings)
    answering = dataclasses.replace(settings, judge=JudgeSettings())  # the judge runs below, with the cache beside ``out``
    if settings.icl_pool:
        result = evaluate_icl(model, tokenizer, records, read_icl_pool(settings.icl_pool), answering)
    else:
        result = evaluate_records(model, tokenizer, records, answering)
    if settings.judge.mode != "off":
        add_judgements(result, records, settings, judge_cache=Path(out).parent / JUDGEMENTS if out is not None else None)
    result.metrics["settings"] = settings_dict(settings)
    result.metrics["environment"] = environment_info()
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
    return result


def register_cli(subparsers: Any) -> None:
    """Add ``nncift evaluate`` to the command line."""
    parser = subparsers.add_parser("evaluate", help="loss, ROUGE-L, embedding cosine, exact match (and an LLM judge's 1-5 score) on "
                                   "held-out records")
    parser.add_argument("--data", required=True, action="append", help="held-out records; repeatable")
    parser.add_argument("--out", help="JSON file for the results (default: print only)")
    parser.add_argument("--config", help="YAML file with evaluation settings (flags override it)")
    add_arguments(parser, EvaluateSettings)
    parser.set_defaults(handler=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    settings = settings_from_args(EvaluateSettings, args)  # the defaults, the YAML file, then the flags
    records, _ = read_many(args.data)
    result = run_evaluate(settings, records, args.out)
    print(json.dumps({k: v for k, v in result.metrics.items() if k not in ("settings", "environment")}, indent=2))
    if settings.judge.mode != "off":
        print(judge_summary(result.metrics), file=sys.stderr)
    return 0


def judge_summary(metrics: dict[str, Any]) -> str:
    """One line on the judge's result: mean score, how many judgements parsed, the unparseable count and share, cache reuse."""
    judge = metrics["judge"]
    score = "no judgement parsed" if metrics["judge_score"] is None else f"mean score {metrics['judge_score']:.3f} (1-5)"
    return (f"judge ({judge['mode']}, {judge['judge']}): {score} over {judge['judged'] - metrics['judge_unparseable']} of "
            f"{judge['judged']} answers; unparseable: {metrics['judge_unparseable']} ({metrics['judge_unparseable_share']:.1%}); "
            f"reused from the cache: {judge['reused_from_cache']}")
