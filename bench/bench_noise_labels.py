"""How often the validation ships a learned candidate where there is nothing to learn (its false-ship rate).

A labelled block of ``--records`` pool records (rows = columns, as DELIFT's), with seeded random unit embeddings and
labels of two kinds that give a learned predictor nothing to find beyond the calibrated cosine:

- ``noise``: labels of pure Gaussian noise (no predictor beats any other, the prior included);
- ``cosine + noise``: the embeddings' cosine plus noise of the same spread (the prior is the right model).

For each kind and seed it runs the library's fit (default grid, steps and folds: ``nncift.network.fitting.fit_pairwise``)
with the kernels and training settings chosen out of fold (the default since 2026-12-03) and in sample (before; the
baseline of the same run), and counts the seeds on which something other than the prior ships. Run:
``OMP_NUM_THREADS=1 .venv/bin/python bench/bench_noise_labels.py --output bench/results/noise_labels.md``
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import Counter
from pathlib import Path

import numpy as np
from benchlib import publish, report_head


def _block(kind: str, records: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, labels) of one seed: labels of ``kind`` (every pair labelled)."""
    rng = np.random.default_rng([seed, records])
    x = rng.standard_normal((records, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    noise = rng.standard_normal((records, records))
    if kind == "noise":
        return x, noise
    cos = x @ x.T
    return x, cos + noise * cos.std()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, nargs="+", default=[48])
    parser.add_argument("--dim", type=int, default=32, help="embedding width")
    parser.add_argument("--seeds", type=int, default=20, help="seeds 0 … N − 1")
    parser.add_argument("--kinds", nargs="+", default=["noise", "cosine + noise"], choices=["noise", "cosine + noise"])
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    from nncift.network.fitting import FitSettings, fit_pairwise
    from nncift.settings.stages import NetworkSettings

    started = time.perf_counter()
    lines = ["| labels | records | choices | learned shipped | what shipped instead of the prior |", "|---|---:|---|---:|---|"]
    for kind in args.kinds:
        for records in args.records:
            for label, out_of_fold in (("out of fold (this release)", True), ("in sample (before)", False)):
                shipped: Counter[str] = Counter()
                for seed in range(args.seeds):
                    x, labels = _block(kind, records, args.dim, seed)
                    settings = dataclasses.replace(FitSettings(NetworkSettings(seed=seed)), choices_out_of_fold=out_of_fold)
                    _, report = fit_pairwise(x, x, labels, settings, self_cols=np.arange(records))
                    shipped[report.chosen] += 1
                learned = {name: count for name, count in shipped.items() if name != "prior"}
                lines.append(f"| {kind} | {records} | {label} | {sum(learned.values())} of {args.seeds} | "
                             f"{', '.join(f'{name} ×{count}' for name, count in sorted(learned.items())) or '–'} |")
                print(lines[-1], flush=True)
    report = "\n".join([
        *report_head("The validation's false-ship rate: labels with nothing to learn beyond the cosine", "bench/bench_noise_labels.py", started),
        f"Each row: {args.seeds} seeds, random unit embeddings of width {args.dim}, every pair labelled, pool = targets, the "
        "library's default fit (4 record folds, a learned candidate must beat the prior on every fold and on average by more "
        "than one standard error). A learned candidate that ships here is a false positive of the validation.", "",
        *lines, ""])
    publish(report, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
