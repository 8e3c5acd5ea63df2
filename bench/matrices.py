"""Full influence matrices of real data, computed once and kept under bench/out/matrices/NAME/.

The fidelity benchmark (bench_network.py) needs the exact matrix to measure what selection loses.
Each matrix is defined here by its records and its influence function; computing it is resumable
(finished blocks are kept: kill the command and run it again) and independent of the network's
settings, so the evaluation can change without recomputing the influence function.

Matrices (rows = records to represent, then the targets; columns = the pool):

- ``delift-se-alpaca``: DELIFT-SE on all 999 records of alpaca_en_demo.json (pool = targets).
- ``delift-se-p3``: DELIFT-SE on a pool of 50 records from each of 12 P3 families (600) plus 50
  targets from a held-out template of ag_news: 650 × 600 (the targeted check).
- ``delift-p3``: DELIFT (bundled SmolLM2-135M-Instruct, fp32, max_length 256) on a pool of 8 records
  from each of 12 P3 families (96) plus 16 targets from a held-out template of ag_news: 112 × 96.
- ``delift-demo``: DELIFT (bundled SmolLM2, fp32) on 96 records of the built-in demo data set
  (pool = targets): the influence function and data of ``nncift demo``.
- ``less-p3``: LESS (dropout-structured, k = 8192, LoRA r = 8, 2 warm-up epochs, max_length 256)
  on a pool of 30 records from each of 10 P3 families (300) and 60 targets from held-out templates
  of ag_news and rotten_tomatoes (two subtasks): 60 × 300 (rows = the targets only; LESS selects by top-k).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/matrices.py delift-p3`` (prints where it is kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from less_data import SHARED_DATA, read_p3  # bench/ is on sys.path when a script runs

OUT = Path(__file__).resolve().parent / "out" / "matrices"

P3_POOL_FAMILIES = {  # family -> template file stem used for the pool
    "ag_news": "ag_news_classify",
    "amazon_polarity": "amazon_polarity_Is_this_review",
    "common_gen": "common_gen_Put_together",
    "cosmos_qa": "cosmos_qa_context_question_description_answer_text",
    "glue_mrpc": "glue_mrpc_paraphrase",
    "imdb": "imdb_Movie_Expressed_Sentiment",
    "quartz": "quartz_answer_question_below",
    "rotten_tomatoes": "rotten_tomatoes_Reviewer_Enjoyment",
    "sciq": "sciq_Direct_Question_Closed_Book_",
    "social_i_qa": "social_i_qa_Generate_answer",
    "wiki_qa": "wiki_qa_Is_This_True_",
    "gigaword": "gigaword_make_a_title",
}
HELD_OUT_TEMPLATES = {"ag_news": "ag_news_classify_question_first", "rotten_tomatoes": "rotten_tomatoes_Movie_Expressed_Sentiment"}


NAMES = ("delift-se-alpaca", "delift-se-p3", "delift-p3", "less-p3", "delift-demo")


@dataclass
class MatrixSpec:
    """Records and influence function of one benchmark matrix."""

    name: str
    influence: str
    options: dict[str, Any]
    pool: list = field(default_factory=list)
    targets: list = field(default_factory=list)
    pool_families: list[str] = field(default_factory=list)
    target_families: list[str] = field(default_factory=list)
    block_size: int = 16
    pool_rows: bool = True
    """Whether the pool's own rows come first (pool × pool, for FL / FLMI); else rows = the targets only."""


def _p3_mix(families: list[str], per_family: int, targets: dict[str, int]) -> tuple[list, list, list[str], list[str]]:
    pool, pool_families = [], []
    for family in families:
        records = read_p3(P3_POOL_FAMILIES[family], per_family)
        pool += records
        pool_families += [family] * len(records)
    target_records, target_families = [], []
    for family, count in targets.items():
        records = read_p3(HELD_OUT_TEMPLATES[family], count, offset=100)
        target_records += records
        target_families += [family] * len(records)
    return pool, target_records, pool_families, target_families


def spec_named(name: str) -> MatrixSpec:
    """The matrix called ``name`` with its records (read from ../shared/data)."""
    if name == "delift-se-alpaca":
        from nncift.data import read_records

        path = SHARED_DATA / "alpaca_en_demo.json"
        if not path.is_file():
            sys.exit(f"real data not found at {path}")
        pool, _ = read_records(path)
        return MatrixSpec(name, "delift-se", {}, pool, [], ["alpaca"] * len(pool), [], block_size=256)
    if name == "delift-se-p3":
        pool, targets, pf, tf = _p3_mix(list(P3_POOL_FAMILIES), 50, {"ag_news": 50})
        return MatrixSpec(name, "delift-se", {}, pool, targets, pf, tf, block_size=256)
    if name == "delift-p3":
        pool, targets, pf, tf = _p3_mix(list(P3_POOL_FAMILIES), 8, {"ag_news": 16})
        return MatrixSpec(name, "delift", {"max_length": 256, "token_budget": 2048}, pool, targets, pf, tf)
    if name == "delift-demo":
        from nncift.demo_data import demo_records

        pool = demo_records(96, seed=0)
        return MatrixSpec(name, "delift", {"max_length": 2048, "token_budget": 2048}, pool, [], [r.task for r in pool], [])
    if name == "less-p3":
        families = ["ag_news", "amazon_polarity", "common_gen", "glue_mrpc", "quartz", "rotten_tomatoes", "sciq",
                    "social_i_qa", "wiki_qa", "gigaword"]
        pool, targets, pf, tf = _p3_mix(families, 30, {"ag_news": 30, "rotten_tomatoes": 30})
        options = {"compressor": "dropout-structured", "dim": 8192, "lora_r": 8, "lora_alpha": 32, "warmup_epochs": 2,
                   "max_length": 256, "warmup_learning_rate": 2e-4}
        return MatrixSpec(name, "less", options, pool, targets, pf, tf, block_size=60, pool_rows=False)
    raise SystemExit(f"unknown matrix {name!r}; choose {', '.join(NAMES)}")


@dataclass
class Matrix:
    """A computed matrix: raw values (rows = pool rows, if any, then targets; cols = pool) and its records."""

    spec: MatrixSpec
    values: np.ndarray
    seconds: float
    folder: Path

    @property
    def n_pool(self) -> int:
        return len(self.spec.pool)


def compute(name: str, *, progress: bool = True) -> Matrix:
    """Compute (or resume, or load) the matrix ``name``; rows = pool (if ``pool_rows``) then targets, columns = pool."""
    from nncift.executor import LocalExecutor
    from nncift.influence import InfluenceSpec
    from nncift.models import BUNDLED_EMBEDDER, BUNDLED_LM
    from nncift.pipeline import records_digest
    from nncift.store import RunStore, plan_blocks

    spec = spec_named(name)
    folder = OUT / name
    options = {"model": BUNDLED_LM, "embedder": BUNDLED_EMBEDDER, "device": "cpu", "seed": 0, **spec.options}
    store = RunStore(folder, {"matrix": name, "influence": spec.influence, "options": options})
    store.check_records(records_digest(spec.pool, spec.targets))
    rows = (spec.pool if spec.pool_rows else []) + spec.targets
    matrix = store.matrix("full", np.arange(len(rows)), np.arange(len(spec.pool)))
    start = time.perf_counter()
    spent = json.loads(store.path("seconds.json").read_text())["seconds"] if store.path("seconds.json").exists() else 0.0
    if matrix.pending(plan_blocks(*matrix.shape, spec.block_size, spec.block_size)):
        with LocalExecutor() as executor:
            counters = executor.run_pairwise(InfluenceSpec(spec.influence, options), rows, spec.pool, matrix,
                                             plan_blocks(*matrix.shape, spec.block_size, spec.block_size), folder, progress=progress)
        spent += time.perf_counter() - start
        store.write_json("seconds.json", {"seconds": spent, "counters": dict(counters)})
    store.write_json("families.json", {"pool": spec.pool_families, "targets": spec.target_families})
    return Matrix(spec, np.asarray(matrix.array, dtype=np.float64), spent, folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=NAMES)
    args = parser.parse_args(argv)
    matrix = compute(args.name)
    values = matrix.values
    print(f"{args.name}: {values.shape[0]} × {values.shape[1]} in {matrix.folder} ({matrix.seconds:,.0f} s of influence computation); "
          f"mean {np.nanmean(values):.4f}, std {np.nanstd(values):.4f}, NaN {int(np.isnan(values).sum())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
