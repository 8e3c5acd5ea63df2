"""Sentence-embedding throughput on the CPU: today's torch path against ONNX Runtime, int8 and length-sorted batches.

Data: ``--n`` real P3 records spread over the eight pool files of bench/less_data.py (read from ../shared/data/p3,
never copied), embedded as NN-CIFT's example text (:func:`nncift.data.templates.embedding_text`), with the bundled
all-MiniLM-L6-v2 (max 256 tokens). Every backend encodes the same texts in one call, as one cache chunk of
:func:`nncift.models.embeddings.embed_texts` would (the cache is not used).

Backends: ``torch`` is today's path (:func:`nncift.models.embeddings.encode_texts`: sentence-transformers' ``encode``,
batches of 64 texts sorted by character count); ``torch, token-sorted bN`` runs the same torch transformer through
:class:`nncift.models.onnx_embedder.SortedEncoder` (texts sorted by token count, batches of N, each padded to its
longest text); ``onnx`` and ``onnx-int8`` are the ``onnx:`` and ``onnx-int8:`` embedders (batches of at most
``ONNX_MAX_BATCH``; ``onnx b64`` the same session in batches of 64); ``torch bf16`` (not offered as an embedder) is the
token-sorted torch path under ``torch.autocast(cpu, bfloat16)``. Torch and ONNX Runtime both run ``--threads`` threads.

Speed: in one process, each round runs today's path before and after every other backend (T, B1, T, B2, ..., T),
``--rounds`` times, so that the other jobs on the machine slow a backend and the runs of today's path beside it alike;
ratio = the mean of today's two adjacent runs / the backend's run, median over rounds; records/s from the median
seconds (today's: over all its runs; these swing with the machine's load, the ratios much less). Agreement with today's
vectors: |cos(new, today) − 1| per record (max, mean) and the largest |difference| between the n × n cosine matrices.

Run: ``.venv/bin/python bench/bench_embeddings.py [--n 500] [--rounds 5] [--threads 1] [--output bench/results/embeddings.md]``
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from benchlib import publish, report_head  # noqa: E402
from less_data import pool_and_targets  # noqa: E402

from nncift.data.templates import embedding_text  # noqa: E402
from nncift.models.embeddings import encode_texts  # noqa: E402
from nncift.models.loading import load_embedder  # noqa: E402
from nncift.models.onnx_embedder import ONNX_MAX_BATCH, SortedEncoder, load_onnx_embedder, torch_runner  # noqa: E402
from nncift.selection.subset_quality import ObjectiveSpec, f_gain  # noqa: E402
from nncift.settings.choices import BUNDLED_EMBEDDER  # noqa: E402

Encode = Callable[[list[str]], np.ndarray]
NOTES = (    "Notes: sentence-transformers' `encode` (today's path) already sorts the texts by character count (lo"
    'ngest first) before cutting batches of 64; the token-sorted rows sort by token count and cut batches'
    ' of 4, each padded to its longest text. `onnx` runs the exported float32 transformer: the same model'
    " to float32 rounding. `onnx-int8` quantises every MatMul's weights to int8 and its inputs dynamicall"
    'y to uint8: numerically another model (see its cosines), not a drop-in replacement for stored embedd'
    'ings. `torch bf16` (bfloat16 matrix products under autocast) is shown for reference only. `openvino-bf16` runs the '
    'same float export in OpenVINO with bfloat16 arithmetic (CPUs with bfloat16 units only), batches of 16. The last '
    "column is what selection keeps: DELIFT-SE's facility location (30% of the records, pool = targets) on each backend's "
    "cosines, scored on today's cosines (f_gain: 1 = today's subset, 0 = a random one).")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="P3 records")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads")
    parser.add_argument("--output", type=Path)
    return parser.parse_args(argv)


def backends() -> dict[str, Encode]:
    """Name → encode(texts) for every backend measured (models loaded, ONNX files exported, before any timing)."""
    model = load_embedder(BUNDLED_EMBEDDER, device="cpu")
    onnx = load_onnx_embedder(f"onnx:{BUNDLED_EMBEDDER}")
    int8 = load_onnx_embedder(f"onnx-int8:{BUNDLED_EMBEDDER}")
    sorted_torch = {size: SortedEncoder(model, torch_runner(model), max_batch=size) for size in (4,)}

    def bf16(texts: list[str]) -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return sorted_torch[4].encode(texts)

    return {
        "torch (today)": lambda texts: encode_texts(texts, model=BUNDLED_EMBEDDER, device="cpu"),
        "torch, token-sorted b4": lambda texts: sorted_torch[4].encode(texts),
        f"onnx (b{ONNX_MAX_BATCH})": lambda texts: encode_texts(texts, model=f"onnx:{BUNDLED_EMBEDDER}", device="cpu"),
        "onnx b64": lambda texts: SortedEncoder(onnx.model, onnx.runner, max_batch=64).encode(texts),
        f"onnx-int8 (b{ONNX_MAX_BATCH})": lambda texts: int8.encode(texts),
        "openvino-bf16 (b16)": lambda texts: encode_texts(texts, model=f"openvino-bf16:{BUNDLED_EMBEDDER}", device="cpu"),
        "torch bf16, token-sorted b4 (not offered)": bf16,
    }


def measure(encoders: dict[str, Encode], texts: list[str], rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, np.ndarray]]:
    """Seconds per round of each backend, the ratio of each to today's path run just before and just after it (today,
    B1, today, B2, ..., today: each backend between two of today's runs), and each backend's vectors (first round)."""
    today_name, *others = encoders
    seconds: dict[str, list[float]] = {name: [] for name in encoders}
    ratios: dict[str, list[float]] = {name: [] for name in encoders}
    vectors: dict[str, np.ndarray] = {}
    for encode in encoders.values():  # warm-up: loads the models behind encode_texts, first-call allocations
        encode(texts[:8])

    def timed(name: str, round_number: int) -> float:
        start = time.perf_counter()
        out = encoders[name](texts)
        seconds[name].append(time.perf_counter() - start)
        vectors.setdefault(name, out)
        print(f"round {round_number + 1}/{rounds} {name}: {seconds[name][-1]:.2f} s", flush=True)
        return seconds[name][-1]

    for round_number in range(rounds):
        before = timed(today_name, round_number)
        for name in others:
            own = timed(name, round_number)
            after = timed(today_name, round_number)
            ratios[name].append((before + after) / 2 / own)
            before = after
        ratios[today_name].append(1.0)
    return seconds, ratios, vectors


def table(seconds: dict[str, list[float]], ratios: dict[str, list[float]], vectors: dict[str, np.ndarray], n: int) -> str:
    """The markdown table: records/s, ratio to today's, and agreement with today's vectors."""
    today_name = next(iter(seconds))
    today = vectors[today_name].astype(np.float64)
    today_pairs = today @ today.T
    lines = ["| backend | records/s | ratio to today's (median of rounds) | ratios per round | max abs(cos − 1) "
             "| mean abs(cos − 1) | max abs pairwise-cosine difference | f_gain of its FL 30% subset |", "|---|---|---|---|---|---|---|---|"]
    for name, times in seconds.items():
        new = vectors[name].astype(np.float64)
        deviation = np.abs((new * today).sum(axis=1) / np.linalg.norm(new, axis=1) / np.linalg.norm(today, axis=1) - 1)
        pairwise = float(np.abs(new @ new.T - today_pairs).max())
        kept = f_gain(today_pairs, new @ new.T, ObjectiveSpec("fl", 0.3))["f_gain"]
        lines.append(f"| {name} | {n / float(np.median(times)):.1f} | {float(np.median(ratios[name])):.2f} | "
                     f"{', '.join(f'{r:.2f}' for r in ratios[name])} | {deviation.max():.1e} | {deviation.mean():.1e} | {pairwise:.1e} | {kept:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)  # ONNX Runtime sessions take torch's count (nncift.models.onnx_embedder)
    pool, _ = pool_and_targets(args.n, 0)
    texts = [embedding_text(record) for record in pool]
    encoders = backends()
    tokens = np.array([len(ids) for ids in encoders_tokenised(texts)])
    load_before = os.getloadavg()
    seconds, ratios, vectors = measure(encoders, texts, args.rounds)
    load_after = os.getloadavg()
    report = "\n".join([
        *report_head("Sentence embeddings on the CPU: torch, ONNX Runtime, OpenVINO bfloat16, int8, length-sorted batches",
                     "bench/bench_embeddings.py"),
        f"Versions: torch {torch.__version__} and onnxruntime {onnxruntime.__version__} with {args.threads} thread(s) each, "
        f"Python {platform.python_version()}; the cores are shared with other jobs.  ",
        f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.1f}' for x in load_before)}; "
        f"after: {', '.join(f'{x:.1f}' for x in load_after)}", "",
        f"Data: {len(texts)} real P3 records (the eight pool files of bench/less_data.py), NN-CIFT example text; "
        f"tokens per record (truncated at 256): mean {tokens.mean():.1f}, median {np.median(tokens):.0f}, "
        f"max {tokens.max()}. Model: bundled {BUNDLED_EMBEDDER}. {args.rounds} rounds, backends in turn.", "",
        NOTES, "",
        table(seconds, ratios, vectors, len(texts)), "",
    ])
    publish(report, args.output)


def encoders_tokenised(texts: list[str]) -> list[list[int]]:
    """The bundled embedder's token ids of each text, truncated as sentence-transformers truncates."""
    model = load_embedder(BUNDLED_EMBEDDER, device="cpu")
    mask = model.preprocess(texts)["attention_mask"]
    return [row[row.bool()].tolist() for row in mask]


if __name__ == "__main__":
    main()
