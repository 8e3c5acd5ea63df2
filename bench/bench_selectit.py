"""SelectIT on every record versus NN-CIFT + SelectIT on a fraction u, on real records.

Baseline (same run): SelectIT scores every record (K rating instructions, one model). NN-CIFT runs
``run_select`` with the same settings at fraction u: SelectIT on u·n records, the pointwise
InfluenceNetwork predicts the rest, top-k picks the budget. Reported: the time ratio, Spearman's ρ
between the two rankings (all records, and the records NN-CIFT never scored), the overlap of the two
top-20% selections, and what the ratings of the model look like (a 135M model may rate almost
everything the same). The network is also trained at larger fractions on the baseline's scores
(no extra LM cost) to show how the ranking quality grows with u.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_selectit.py \\
        --data ../shared/data/alpaca_en_demo.json --n 300 --out runs/bench-selectit

The baseline's probabilities are kept in ``--out`` (``full.npz``); a second run reuses them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from nncift.data.records import read_records
from nncift.influence.selectit import (
    RATINGS,
    SelectIT,
    SelectITSettings,
    model_weights,
    selectit_scores,
    token_level_scores,
)
from nncift.models.embeddings import embed_records
from nncift.network.paper import NetworkSettings, predict_pointwise
from nncift.network.paper_training import train_pointwise
from nncift.settings.choices import BUNDLED_EMBEDDER, BUNDLED_LM
from nncift.settings.stages import RunContext, SelectSettings
from nncift.steps.select import run_select, sample_indices
from nncift_research.fidelity import top_overlap

NETWORK_RUNS = ((0.05, 20), (0.1, 20), (0.2, 20), (0.5, 20), (0.05, 200), (0.5, 200))
"""(u, epochs) of the extra network runs: the paper's 20 epochs, and 200 to rule out under-training."""


def full_selectit(records, settings: SelectITSettings, run: RunContext, out: Path, chunk: int) -> tuple[np.ndarray, np.ndarray, float, dict]:
    """Probabilities (n, K, R), scores (n,), seconds and failures of SelectIT on every record (cached in out)."""
    cache = out / "full.npz"
    if cache.exists():
        stored = np.load(cache)
        meta = json.loads((out / "full.json").read_text())
        return stored["probabilities"], stored["scores"], meta["seconds"], meta["failures"]
    start = time.perf_counter()
    function = SelectIT(settings, run=run, progress=False)
    function.prepare(records, out)
    parts = []
    for first in range(0, len(records), chunk):
        parts.append(function.rating_probabilities(np.arange(first, min(first + chunk, len(records))))[0])
        print(f"  rated {min(first + chunk, len(records))}/{len(records)} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    probabilities = np.concatenate(parts)
    scores = selectit_scores([probabilities], model_weights([function.raters[0].parameters]), alpha=settings.alpha, form=settings.form)
    scores[[int(i) for i in function.failures]] = np.nan
    seconds = time.perf_counter() - start
    failures = {str(k): v for k, v in function.failures.items()}
    np.savez(cache, probabilities=probabilities, scores=scores)
    (out / "full.json").write_text(json.dumps({"seconds": seconds, "failures": failures, "counters": dict(function.counters)}))
    return probabilities, scores, seconds, failures


def rating_distribution(probabilities: np.ndarray, scores: np.ndarray, records) -> list[tuple[str, str]]:
    """Rows describing the ratings: histogram of the chosen rating, confidence, agreement, score spread."""
    ok = np.isfinite(probabilities).all(axis=(1, 2))
    p = probabilities[ok]
    mass = p.sum(axis=-1)
    renormalised = p / mass[..., None]
    chosen = renormalised.argmax(axis=-1) + 1  # (n, K)
    histogram = np.bincount(chosen.ravel(), minlength=len(RATINGS) + 1)[1:]
    finite = scores[np.isfinite(scores)]
    quantiles = np.quantile(finite, [0, 0.25, 0.5, 0.75, 1])
    lengths = np.array([len(r.output) for r in records])[np.isfinite(scores)]
    token_scores = token_level_scores(p)  # (n, K)
    pairs = [(a, b) for a in range(p.shape[1]) for b in range(a + 1, p.shape[1])]
    consistency = np.mean([spearmanr(token_scores[:, a], token_scores[:, b]).statistic for a, b in pairs]) if pairs else float("nan")
    per_instruction = ", ".join(f"{v:.2f}" for v in (renormalised * np.arange(1, len(RATINGS) + 1)).sum(-1).mean(0))
    return [
        ("chosen rating 1..5 (share of all example × instruction prompts)", " / ".join(f"{h / histogram.sum():.1%}" for h in histogram)),
        ("examples whose K ratings all agree", f"{np.mean((chosen == chosen[:, :1]).all(axis=1)):.1%}"),
        ("probability mass on the tokens 1..5 at the cue (mean, min)", f"{mass.mean():.3f}, {mass.min():.3f}"),
        ("P′ of the chosen rating (mean, 5th–95th percentile)", f"{renormalised.max(-1).mean():.3f} ({np.quantile(renormalised.max(-1), 0.05):.3f}–{np.quantile(renormalised.max(-1), 0.95):.3f})"),
        ("expected rating Σ k·P′_k, mean per rating instruction", per_instruction),
        ("Spearman ρ between two rating instructions' token-level scores (mean over pairs)", f"{consistency:.3f}"),
        ("SelectIT score min / 25% / median / 75% / max", " / ".join(f"{q:.3f}" for q in quantiles)),
        ("score std (coefficient of variation)", f"{finite.std():.3f} ({finite.std() / finite.mean():.2f})"),
        ("Spearman ρ of score and response length (characters)", f"{spearmanr(finite, lengths).statistic:.3f}"),
    ]


def network_rows(scores: np.ndarray, embeddings: np.ndarray, runs, settings: SelectSettings) -> list[str]:
    """Network trained on u of the baseline's scores (for each (u, epochs) in ``runs``): Spearman on
    unseen records, top-20% overlap (seen records keep their exact scores), MSE against the mean baseline."""
    ok = np.isfinite(scores)
    low, high = np.nanmin(scores), np.nanmax(scores)
    scaled = (scores - low) / (high - low)
    rows = []
    for fraction, epochs in runs:
        seen = sample_indices(len(scores), fraction, settings.sampling.min_sampled, np.random.default_rng(settings.seed))
        seen_ok = seen[ok[seen]]
        network, _ = train_pointwise(embeddings[seen_ok], scaled[seen_ok].astype(np.float32),
                                     NetworkSettings(epochs=epochs, seed=settings.seed))
        predicted = predict_pointwise(network, embeddings).astype(np.float64)
        predicted[seen_ok] = scaled[seen_ok]
        unseen = np.setdiff1d(np.flatnonzero(ok), seen)
        rho = spearmanr(scaled[unseen], predicted[unseen]).statistic
        mse = np.mean((predicted[unseen] - scaled[unseen]) ** 2)
        mse_mean = np.mean((scaled[seen_ok].mean() - scaled[unseen]) ** 2)
        overlap = top_overlap(scaled[ok], predicted[ok], 0.2)
        rows.append(f"| {fraction} | {epochs} | {len(seen)} | {rho:.3f} | {overlap:.3f} | {mse:.4f} | {mse_mean:.4f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/alpaca_en_demo.json")
    parser.add_argument("--n", type=int, default=300, help="records sampled (seeded) from the file")
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--model", default=BUNDLED_LM)
    parser.add_argument("--token-budget", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-selectit")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    pool, report = read_records(args.data)
    pick = np.sort(np.random.default_rng(args.seed).choice(len(pool), size=min(args.n, len(pool)), replace=False))
    records = [pool[i] for i in pick]
    selectit = SelectITSettings(token_budget=args.token_budget)
    print(f"SelectIT on all {len(records)} records of {args.data} with {args.model} ...", file=sys.stderr)
    probabilities, full_scores, full_seconds, full_failures = full_selectit(records, selectit, RunContext(model=args.model, seed=args.seed), out, chunk=25)

    print(f"NN-CIFT + SelectIT at u = {args.fraction} ...", file=sys.stderr)
    shutil.rmtree(out / "nncift", ignore_errors=True)
    settings = SelectSettings.build(influence="selectit", model=args.model, **{"sampling.fraction": args.fraction, "selection.budget": args.budget},
                                    seed=args.seed, quiet=True, embedder=BUNDLED_EMBEDDER)
    result = run_select(settings, out / "nncift", pool=records, reports=[report],
                        influence_options={"token_budget": args.token_budget})
    stages = result.manifest["cost"]["seconds_by_stage"]
    nncift_seconds = sum(v for k, v in stages.items() if k != "load data")
    predicted = np.load(out / "nncift" / "predicted_scores.npy").astype(np.float64)
    seen = np.load(out / "nncift" / "scores.cols.npy")
    seen_raw = np.load(out / "nncift" / "scores.npy")[0].astype(np.float64)

    ok = np.isfinite(full_scores)
    unseen = np.setdiff1d(np.flatnonzero(ok), seen)
    k = int(round(args.budget * ok.sum()))
    top_full = np.argsort(-np.where(ok, full_scores, -np.inf), kind="stable")[:k]
    overlap = len(np.intersect1d(top_full, result.indices)) / k
    consistency = np.nanmax(np.abs(seen_raw - full_scores[seen]))

    print(f"\n### SelectIT vs NN-CIFT + SelectIT ({len(records)} records of {Path(args.data).name}, "
          f"model {Path(args.model).name}, K = {selectit.n_instructions}, u = {args.fraction}, top {args.budget:.0%})\n")
    print("| method | records scored by the LM | seconds | time ratio | Spearman ρ vs full (all / unseen) | top-20% overlap |")
    print("|---|---|---|---|---|---|")
    print(f"| SelectIT on all records | {len(records)} | {full_seconds:.1f} | 1.0 | 1 / 1 | 1.000 |")
    print(f"| NN-CIFT + SelectIT | {len(seen)} | {nncift_seconds:.1f} | {full_seconds / nncift_seconds:.1f}× faster | "
          f"{spearmanr(full_scores[ok], predicted[ok]).statistic:.3f} / {spearmanr(full_scores[unseen], predicted[unseen]).statistic:.3f} | {overlap:.3f} |")
    print(f"| random selection (expected) | 0 | – | – | 0 / 0 | {args.budget:.3f} |")
    print(f"\nNN-CIFT stages (s): {', '.join(f'{k} {v:.1f}' for k, v in stages.items())}. "
          f"Exact scores of the {len(seen)} sampled records equal the baseline's to {consistency:.1e}. "
          f"Failures: baseline {len(full_failures)}, NN-CIFT {len(result.manifest['failures'])}.")

    print("\n### What the ratings look like\n")
    print("| quantity | value |\n|---|---|")
    for name, value in rating_distribution(probabilities, full_scores, records):
        print(f"| {name} | {value} |")

    print("\n### Network trained on u of the baseline scores (no extra LM cost)\n")
    print("| u | epochs | records seen | Spearman ρ (unseen) | top-20% overlap | MSE network (unseen, scaled) | MSE mean baseline |")
    print("|---|---|---|---|---|---|---|")
    embeddings = embed_records(records, model=BUNDLED_EMBEDDER, progress=False)
    for row in network_rows(full_scores, embeddings, NETWORK_RUNS, settings):
        print(row)


if __name__ == "__main__":
    main()
