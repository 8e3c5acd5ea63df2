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

Matrices at a size where a network can learn (the network issue; hours of CPU, run in the background):

- ``less-p3-2k``: LESS as ``less-p3`` (max_length 192) on a pool of 2,016 records, 126 from each of
  16 P3 families (63 from each of two templates), and 120 targets, 30 from a held-out template of
  each of 4 subtasks (ag_news, rotten_tomatoes, sciq, glue_mrpc): 120 × 2,016.
- ``delift-se-p3-5k``: DELIFT-SE on a pool of 5,100 P3 records (17 families × 300, spread over their
  templates) plus the same 120 held-out targets: 5,220 × 5,100 (FLMI layout).
- ``delift-p3-large``: DELIFT (bundled SmolLM2, max_length 128) on a pool of ``NNCIFT_DELIFT_POOL``
  records (default 2,016, as ``less-p3-2k``'s pool) and ``NNCIFT_DELIFT_TARGETS`` targets (default
  200, 50 from each of the 4 held-out templates): rows = the targets only. Meant for a GPU
  (``NNCIFT_DEVICE=cuda``); on a CPU set smaller sizes (e.g. 240 and 40).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/matrices.py delift-p3`` (prints where it is kept).
Matrices are kept under ``bench/out/matrices`` or ``$NNCIFT_BENCH_OUT`` (a folder outside the work
tree survives a fresh checkout on the same machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from less_data import SHARED_DATA, read_p3  # bench/ is on sys.path when a script runs

OUT = Path(os.environ["NNCIFT_BENCH_OUT"]) if os.environ.get("NNCIFT_BENCH_OUT") else Path(__file__).resolve().parent / "out" / "matrices"

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
HELD_OUT_TEMPLATES = {"ag_news": "ag_news_classify_question_first", "rotten_tomatoes": "rotten_tomatoes_Movie_Expressed_Sentiment",
                      "sciq": "sciq_Multiple_Choice_Question_First", "glue_mrpc": "glue_mrpc_same_thing"}
LARGE_POOL_TEMPLATES = {  # family -> two pool templates (never a held-out target template)
    "ag_news": ("ag_news_classify", "ag_news_which_section"),
    "amazon_polarity": ("amazon_polarity_Is_this_review", "amazon_polarity_user_satisfied"),
    "common_gen": ("common_gen_Put_together", "common_gen_Given_concepts_type_1"),
    "cosmos_qa": ("cosmos_qa_context_question_description_answer_text", "cosmos_qa_only_question_answer"),
    "glue_mrpc": ("glue_mrpc_paraphrase", "glue_mrpc_equivalent"),
    "imdb": ("imdb_Movie_Expressed_Sentiment", "imdb_Reviewer_Enjoyment"),
    "quartz": ("quartz_answer_question_below", "quartz_given_the_fact_answer_the_q"),
    "rotten_tomatoes": ("rotten_tomatoes_Reviewer_Enjoyment", "rotten_tomatoes_Text_Expressed_Sentiment"),
    "sciq": ("sciq_Direct_Question_Closed_Book_", "sciq_Multiple_Choice"),
    "social_i_qa": ("social_i_qa_Generate_answer", "social_i_qa_I_was_wondering"),
    "wiki_qa": ("wiki_qa_Is_This_True_", "wiki_qa_Decide_good_answer"),
    "gigaword": ("gigaword_make_a_title", "gigaword_TLDR"),
    "yelp_review_full": ("yelp_review_full_format_rating", "yelp_review_full_so_i_would"),
    "paws": ("paws_labeled_final_Meaning", "paws_labeled_final_Rewrite"),
    "qasc": ("qasc_qa_with_separated_facts_1", "qasc_is_correct_1"),
    "samsum": ("samsum_Summarize_", "samsum_To_sum_up_this_dialog"),
}


NAMES = ("delift-se-alpaca", "delift-se-p3", "delift-p3", "less-p3", "delift-demo", "less-p3-2k", "delift-se-p3-5k", "delift-p3-large")


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


def _large_targets(per_subtask: int) -> tuple[list, list[str]]:
    """``per_subtask`` records of each held-out template (from record 100 on, away from the pool's rows)."""
    targets, families = [], []
    for family, stem in HELD_OUT_TEMPLATES.items():
        records = read_p3(stem, per_subtask, offset=100)
        targets += records
        families += [family] * len(records)
    return targets, families


def _large_pool(per_template: int, families: dict[str, tuple[str, ...]]) -> tuple[list, list[str]]:
    pool, pool_families = [], []
    for family, stems in families.items():
        for stem in stems:
            records = read_p3(stem, per_template)
            pool += records
            pool_families += [family] * len(records)
    return pool, pool_families


P3_FAMILIES = ("adversarial_qa", "ag_news", "amazon_polarity", "common_gen", "cosmos_qa", "gigaword", "glue_mrpc", "imdb",
               "paws_labeled_final", "qasc", "quartz", "rotten_tomatoes", "samsum", "sciq", "social_i_qa", "wiki_qa",
               "yelp_review_full")


def _all_p3_families() -> dict[str, tuple[str, ...]]:
    """Every P3 family (source data set) with its templates of at least 150 records with an output, held-out target templates left out."""
    from nncift.data.records import read_records

    folder = SHARED_DATA / "p3"
    if not folder.is_dir():
        sys.exit(f"real data not found at {folder}")
    held = set(HELD_OUT_TEMPLATES.values())
    out = {}
    for family in P3_FAMILIES:
        stems = sorted(p.stem for p in folder.glob(f"{family}_*.jsonl") if p.stem not in held and len(read_records(p)[0]) >= 150)
        if stems:
            out[family] = tuple(stems)
    return out


def spec_named(name: str) -> MatrixSpec:
    """The matrix called ``name`` with its records (read from ../shared/data)."""
    if name == "delift-se-alpaca":
        from nncift.data.records import read_records

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
        from nncift.data.demo import demo_records

        pool = demo_records(96, seed=0)
        return MatrixSpec(name, "delift", {"max_length": 2048, "token_budget": 2048}, pool, [], [r.task for r in pool], [])
    if name == "less-p3":
        families = ["ag_news", "amazon_polarity", "common_gen", "glue_mrpc", "quartz", "rotten_tomatoes", "sciq",
                    "social_i_qa", "wiki_qa", "gigaword"]
        pool, targets, pf, tf = _p3_mix(families, 30, {"ag_news": 30, "rotten_tomatoes": 30})
        options = {"compressor": "dropout-structured", "dim": 8192, "lora_r": 8, "lora_alpha": 32, "warmup_epochs": 2,
                   "max_length": 256, "warmup_learning_rate": 2e-4}
        return MatrixSpec(name, "less", options, pool, targets, pf, tf, block_size=60, pool_rows=False)
    if name == "less-p3-2k":
        pool, pf = _large_pool(63, LARGE_POOL_TEMPLATES)
        targets, tf = _large_targets(30)
        options = {"compressor": "dropout-structured", "dim": 8192, "lora_r": 8, "lora_alpha": 32, "warmup_epochs": 2,
                   "max_length": 192, "warmup_learning_rate": 2e-4}
        return MatrixSpec(name, "less", options, pool, targets, pf, tf, block_size=120, pool_rows=False)
    if name == "delift-se-p3-5k":
        pool, pf = [], []
        for family, stems in _all_p3_families().items():  # 17 families × 300 records, at most 100 per template
            per = min(100, -(-300 // len(stems)))
            records = [r for stem in stems for r in read_p3(stem, per)][:300]
            pool += records
            pf += [family] * len(records)
        targets, tf = _large_targets(30)
        return MatrixSpec(name, "delift-se", {}, pool, targets, pf, tf, block_size=1024)
    if name == "delift-p3-large":
        n_pool, n_targets = int(os.environ.get("NNCIFT_DELIFT_POOL", 2016)), int(os.environ.get("NNCIFT_DELIFT_TARGETS", 200))
        pool, pf = _large_pool(63, LARGE_POOL_TEMPLATES)
        order = np.random.default_rng(0).permutation(len(pool))[:n_pool]
        pool, pf = [pool[i] for i in sorted(order)], [pf[i] for i in sorted(order)]
        targets, tf = _large_targets(-(-n_targets // len(HELD_OUT_TEMPLATES)))
        options = {"max_length": 128, "token_budget": 8192 if os.environ.get("NNCIFT_DEVICE") == "cuda" else 2048,
                   "device": os.environ.get("NNCIFT_DEVICE", "cpu"), "dtype": "bfloat16" if os.environ.get("NNCIFT_DEVICE") == "cuda" else "float32"}
        name = f"{name}-{len(targets)}x{len(pool)}"
        return MatrixSpec(name, "delift", options, pool, targets, pf, tf, block_size=40, pool_rows=False)
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


RUN_KEYS = ("model", "embedder", "device", "dtype", "seed")
"""Options that belong to the run's context (:class:`RunContext`), not to the influence function's own settings."""


def compute(name: str, *, progress: bool = True) -> Matrix:
    """Compute (or resume, or load) the matrix ``name``; rows = pool (if ``pool_rows``) then targets, columns = pool."""
    from nncift.execution.executor import LocalExecutor
    from nncift.influence import InfluenceSpec
    from nncift.run.store import RunStore, plan_blocks
    from nncift.settings.choices import BUNDLED_EMBEDDER, BUNDLED_LM
    from nncift.settings.stages import RunContext
    from nncift.steps.select import records_digest

    spec = spec_named(name)
    folder = OUT / spec.name
    options = {"model": BUNDLED_LM, "embedder": BUNDLED_EMBEDDER, "device": "cpu", "seed": 0, **spec.options}
    store = RunStore(folder, {"matrix": spec.name, "influence": spec.influence, "options": options})
    store.check_records(records_digest(spec.pool, spec.targets))
    rows = (spec.pool if spec.pool_rows else []) + spec.targets
    matrix = store.matrix("full", np.arange(len(rows)), np.arange(len(spec.pool)))
    start = time.perf_counter()
    spent = json.loads(store.path("seconds.json").read_text())["seconds"] if store.path("seconds.json").exists() else 0.0
    if matrix.pending(plan_blocks(*matrix.shape, spec.block_size, spec.block_size)):
        with LocalExecutor() as executor:
            run = RunContext(**{k: v for k, v in options.items() if k in RUN_KEYS})
            own = {k: v for k, v in spec.options.items() if k not in RUN_KEYS}
            counters = executor.run_pairwise(InfluenceSpec(spec.influence, own, run), rows, spec.pool, matrix,
                                             plan_blocks(*matrix.shape, spec.block_size, spec.block_size), folder, progress=progress)
        spent += time.perf_counter() - start
        store.write_json("seconds.json", {"seconds": spent, "counters": dict(counters)})
    store.write_json("families.json", {"pool": spec.pool_families, "targets": spec.target_families})
    values = np.array(matrix.array, dtype=np.float64)
    store.close()  # the folder's lock: other benchmarks may read the finished matrix at the same time
    return Matrix(spec, values, spent, folder)


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
