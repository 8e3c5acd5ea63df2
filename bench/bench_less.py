"""LESS end to end versus NN-CIFT + LESS on real records with SmolLM2-135M (same run, same settings).

- LESS: the warm-up, then features of every target and every candidate, the full target ×
  candidate matrix, the LESS score (max over target subtasks of the mean), top-k.
- NN-CIFT + LESS (``nncift select``'s pipeline): the same warm-up, LESS only on a random fraction u
  of targets and candidates, the InfluenceNetwork trained on that block predicts the rest, the
  LESS score of the predicted matrix, top-k.

Every run starts from an empty folder and trains its own warm-up (same seed: same checkpoints).
Reported: wall time, example gradient passes, and the overlap of the selected subsets with LESS's
at several budgets (beside the overlap a random subset of that size has on average), plus the
Spearman correlation of the candidates' scores.

    python bench/bench_less.py --n-pool 200 --n-targets 32
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nncift.influence.less import Less, LessSettings, aggregate_scores
from nncift.settings.stages import RunContext

HERE = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-pool", type=int, default=200)
    parser.add_argument("--n-targets", type=int, default=32)
    parser.add_argument("--fractions", default="0.05,0.2", help="NN-CIFT sampled fractions u")
    parser.add_argument("--budgets", default="0.05,0.1,0.3", help="subset sizes compared (fractions of the pool)")
    parser.add_argument("--compressor", default="dropout-structured")
    parser.add_argument("--dim", type=int, default=8192)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: best on a shared, loaded CPU)")
    parser.add_argument("--out", default=str(HERE / "out" / "less"))
    parser.add_argument("--results", default=str(HERE / "results" / "less.md"))
    return parser.parse_args(argv)


def less_settings(args) -> LessSettings:
    """LESS settings of the benchmark: the paper's, except r, epochs and length (CPU time)."""
    return LessSettings(compressor=args.compressor, dim=args.dim, lora_r=args.lora_r, lora_alpha=4 * args.lora_r,
                        warmup_epochs=args.warmup_epochs, max_length=args.max_length)


def run_less(args, pool, targets, folder: Path) -> tuple[np.ndarray, tuple[float, float], int]:
    """Full LESS: (matrix targets × pool, (wall seconds, CPU seconds), gradient passes)."""
    start, cpu = time.perf_counter(), time.process_time()
    less = Less(less_settings(args), run=RunContext(seed=args.seed, device="cpu"), progress=True)
    less.prepare(targets, pool, folder)
    matrix = less.compute_block(np.arange(len(targets)), np.arange(len(pool)))
    seconds = (time.perf_counter() - start, time.process_time() - cpu)
    passes = less.counters["backward_passes"] + less.counters["warmup_forward_backward_passes"]
    less.close()
    return matrix, seconds, int(passes)


def run_nncift(args, pool, targets, fraction: float, folder: Path) -> tuple[np.ndarray, tuple[float, float], int, int]:
    """NN-CIFT + LESS through the pipeline: (predicted matrix, (wall, CPU seconds), gradient passes, pairs computed)."""
    from nncift.settings.stages import SelectSettings
    from nncift.steps.select import run_select

    options = {k: v for k, v in dataclasses.asdict(less_settings(args)).items() if k not in ("model", "device", "seed")}
    settings = SelectSettings.build(influence="less", **{"sampling.fraction": fraction, "selection.budget": 0.05}, seed=args.seed, device="cpu", quiet=True)
    start, cpu = time.perf_counter(), time.process_time()
    result = run_select(settings, folder, pool=pool, targets=targets, influence_options=options)
    seconds = (time.perf_counter() - start, time.process_time() - cpu)
    counters = result.manifest["cost"]["counters"]
    passes = counters.get("backward_passes", 0) + counters.get("warmup_forward_backward_passes", 0)
    predicted = np.load(folder / "predicted.npy")
    return predicted, seconds, int(passes), int(result.manifest["cost"]["influence_evaluations_made"])


def top(scores: np.ndarray, budget: float) -> set[int]:
    k = max(1, int(round(budget * len(scores))))
    return set(np.argsort(-scores, kind="stable")[:k].tolist())


def main(argv=None) -> None:
    from less_data import pool_and_targets
    from scipy.stats import spearmanr

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pool, targets = pool_and_targets(args.n_pool, args.n_targets)
    subtasks = [r.task for r in targets]
    budgets = [float(b) for b in args.budgets.split(",")]
    matrix, less_seconds, less_passes = run_less(args, pool, targets, out / "less")
    exact = aggregate_scores(matrix, subtasks)
    header = " | ".join(f"overlap top {b:.0%}" for b in budgets)
    lines = [
        f"SmolLM2-135M-Instruct, {len(pool)} pool records (8 P3 tasks) and {len(targets)} targets (2 held-out P3 "
        f"templates = 2 subtasks); LESS with LoRA r={args.lora_r} (alpha {4 * args.lora_r}), {args.warmup_epochs} "
        f"warm-up epochs on 5% of the pool, compressor {args.compressor} k={args.dim}, max {args.max_length} tokens, "
        f"fp32, CPU ({torch.get_num_threads()} torch thread(s), machine shared with other jobs). Overlap = "
        "|chosen ∩ chosen by LESS| / k; a random subset's expected overlap is the budget itself. Gradient passes "
        "include the warm-up's; CPU seconds (this process) are less sensitive to the other jobs than wall seconds; "
        "the speed-up is the ratio of CPU seconds.",
        "",
        f"| method | pairs computed | gradient passes | wall s | CPU s | speed-up | {header} | Spearman of scores |",
        "|---|---|---|---|---|---|" + "---|" * len(budgets) + "---|",
        f"| LESS (full matrix) | {matrix.size:,} | {less_passes} | {less_seconds[0]:.0f} | {less_seconds[1]:.0f} | 1.0x | "
        + " | ".join("1.00" for _ in budgets) + " | 1.000 |",
    ]
    for fraction in (float(f) for f in args.fractions.split(",")):
        predicted, seconds, passes, pairs = run_nncift(args, pool, targets, fraction, out / f"nncift-{fraction}")
        scores = aggregate_scores(predicted, subtasks)
        overlaps = [len(top(scores, b) & top(exact, b)) / len(top(exact, b)) for b in budgets]
        rho = spearmanr(scores, exact).statistic
        lines.append(f"| NN-CIFT + LESS, u={fraction} | {pairs:,} | {passes} | {seconds[0]:.0f} | {seconds[1]:.0f} | "
                     f"{less_seconds[1] / seconds[1]:.1f}x | "
                     + " | ".join(f"{o:.2f}" for o in overlaps) + f" | {rho:.3f} |")
    table = "\n".join(lines)
    print(table)
    command = "python bench/bench_less.py " + " ".join(sys.argv[1:] if argv is None else argv)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(f"# LESS end to end versus NN-CIFT + LESS\n\nCommand: `HF_HUB_OFFLINE=1 {command}`  \nDate: {stamp}\n\n{table}\n")


if __name__ == "__main__":
    main()
