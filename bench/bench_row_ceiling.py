"""How far each target's ranking of its candidates can be learned from sentence embeddings (the per-row ρ target).

On a stored LESS matrix of ``bench/matrices.py`` (rows = targets), hold out candidates and give EVERY target row the
exact values of a fraction of the candidates (more than any label design gives: the block design labels u of the
rows too). Then predict each row's held-out candidates from the embeddings with three simple predictors and report
the mean per-row Spearman ρ over held-out candidates (``nncift.network.validation.row_spearman``):

- ``cosine``: the target's embedding cosine to the candidate (the network's prior, no labels);
- ``ridge per row``: a ridge regression per target row from the candidate's embedding to that row's labels;
- ``kNN per row``: the mean of the row's labels on the candidate's 10 nearest labelled candidates (cosine);
- ``column mean (oracle)``: every row's ranking replaced by the true mean over rows of each held-out candidate, i.e.
  the best a model of "which candidates score high overall" can do (it reads the held-out truth).

Inputs: the embedding of the example text (``text``), of the response alone, and both
(``text+response`` with equal halves, as ``--network.input text+response --network.response-weight 0.7071`` builds it). Run:
``NNCIFT_BENCH_OUT=~/.cache/nncift/bench .venv/bin/python bench/bench_row_ceiling.py less-p3-2k --output bench/results/row_ceiling.md``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from benchlib import publish, report_head
from matrices import NAMES, compute


def _row_rho(predicted: np.ndarray, true: np.ndarray, cols: np.ndarray) -> float:
    from nncift.network.validation import row_spearman

    return row_spearman(true[:, cols], predicted[:, cols])


def _predictions(true: np.ndarray, cand: np.ndarray, target: np.ndarray, train: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    """Each predictor's (rows × candidates) values; only the ``test`` columns are read."""
    cosine = target @ cand.T
    x = cand[train]
    weights = np.linalg.solve(x.T @ x + np.eye(x.shape[1]), x.T @ true[:, train].T)
    nearest = np.argsort(-(cand[test] @ x.T), axis=1)[:, :10]
    knn = np.zeros_like(true)
    knn[:, test] = true[:, train][:, nearest].mean(axis=2)
    return {"cosine": cosine, "ridge per row": (cand @ weights).T, "kNN per row": knn}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("matrix", choices=NAMES)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.2, 0.5])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    from nncift.data.templates import embedding_text, response_text
    from nncift.models.embeddings import embed_texts

    started = time.perf_counter()
    matrix = compute(args.matrix, progress=False)
    spec, true = matrix.spec, matrix.values
    if spec.pool_rows:
        raise SystemExit(f"{args.matrix}: rows are the pool too; this benchmark reads matrices whose rows are the targets only")

    def unit(texts: list[str]) -> np.ndarray:
        vectors = embed_texts(texts, progress=False).astype(np.float64)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    halves = {kind: (unit([render(r) for r in spec.pool]), unit([render(r) for r in spec.targets]))
              for kind, render in (("text", embedding_text), ("response", response_text))}
    inputs = {**halves, "text+response": tuple(np.hstack([halves["text"][i], halves["response"][i]]) / np.sqrt(2) for i in range(2))}
    results: dict[tuple[float, str, str], list[float]] = {}
    for fraction in args.fractions:
        for seed in args.seeds:
            order = np.random.default_rng(seed).permutation(true.shape[1])
            train, test = np.sort(order[: int(fraction * len(order))]), np.sort(order[int(fraction * len(order)) :])
            oracle = np.tile(true[:, test].mean(axis=0), (true.shape[0], 1))
            results.setdefault((fraction, "-", "column mean (oracle)"), []).append(
                _row_rho(oracle, true[:, test], np.arange(len(test))))
            for name, (cand, target) in inputs.items():
                for predictor, values in _predictions(true, cand, target, train, test).items():
                    results.setdefault((fraction, name, predictor), []).append(_row_rho(values, true, test))
    lines = ["| labelled candidates (every row) | input | predictor | per-row ρ, held-out candidates |", "|---|---|---|---|"]
    lines += [f"| {fraction:g} | {name} | {predictor} | {np.mean(v):.3f} ± {np.std(v):.3f} |" for (fraction, name, predictor), v in results.items()]
    report = "\n".join([
        *report_head(f"How far per-row ρ can go from sentence embeddings: `{args.matrix}`", "bench/bench_row_ceiling.py", started),
        f"Matrix: {true.shape[0]} targets × {true.shape[1]} candidates ({spec.influence}). Seeds {args.seeds} (mean ± sd): each "
        "draws which candidates are labelled; every target row has their exact values, and ρ is measured on the others.", "",
        *lines, ""])
    publish(report, args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
