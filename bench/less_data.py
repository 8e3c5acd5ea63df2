"""Real records for the LESS benchmarks: a mixed pool of P3 tasks and held-out targets of two tasks.

Read from ../shared/data (never copied into the repository). Every record's ``task`` is its file's
stem, so the targets bring two subtasks for LESS's aggregation.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nncift.data.records import Record, read_records

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
POOL_FILES = (
    "ag_news_classify", "quartz_answer_question_below", "gigaword_make_a_title", "glue_mrpc_paraphrase",
    "rotten_tomatoes_Reviewer_Enjoyment", "sciq_Direct_Question_Closed_Book_", "common_gen_Put_together",
    "social_i_qa_Generate_answer",
)
TARGET_FILES = ("rotten_tomatoes_Movie_Expressed_Sentiment", "ag_news_classify_question_first")


def read_p3(stem: str, count: int, offset: int = 0) -> list[Record]:
    """``count`` records (from ``offset``) of one P3 template file in ../shared/data/p3; exits with a message when missing."""
    path = SHARED_DATA / "p3" / f"{stem}.jsonl"
    if not path.is_file():
        sys.exit(f"real data not found at {path} (../shared/data beside the checkout)")
    records, _ = read_records(path)
    if len(records) < offset + count:
        sys.exit(f"{path}: {len(records)} records with an output, {offset + count} needed")
    return records[offset : offset + count]


def pool_and_targets(n_pool: int, n_targets: int) -> tuple[list[Record], list[Record]]:
    """``n_pool`` records spread over :data:`POOL_FILES` and ``n_targets`` over :data:`TARGET_FILES`."""
    per_pool = -(-n_pool // len(POOL_FILES))
    per_target = -(-n_targets // len(TARGET_FILES))
    pool = [r for stem in POOL_FILES for r in read_p3(stem, per_pool)][:n_pool]
    targets = [r for stem in TARGET_FILES for r in read_p3(stem, per_target, offset=100)][:n_targets]
    return pool, targets
