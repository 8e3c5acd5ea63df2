"""`nncift select` end to end on a pool of up to a million records from a JSONL file (DELIFT-SE, pool as targets).

What it does, in a folder of its own under ``$NNCIFT_BENCH_OUT/select-million-<n>/`` (kept, so a second run reuses it):

1. **records.jsonl**: ``--n`` distinct records, the 2,016 real P3 pool records of ``less-p3-2k`` (16 families) in turn, each copy's
   input ending in ``[copy i]`` so that every text is distinct.
2. **Embeddings, stored in advance** in an embedding cache of the benchmark's own (``NNCIFT_CACHE`` of the folder; the
   bundled models linked in): each copy's vector is its source record's real all-MiniLM-L6-v2 embedding plus Gaussian
   noise (cosine to the source about 0.9), written through nncift's own :class:`~nncift.models.embeddings.EmbeddingCache`,
   as a user's earlier run (or a GPU machine) would have left them. The embedder itself runs at 10–35 records/s on this
   CPU (bench/results/embeddings.md), i.e. 8–28 hours for a million records: its time is extrapolated, not measured here.
3. ``nncift select`` on the JSONL file into a new run folder (an earlier one is deleted) in a fresh process under ``/usr/bin/time -v``: wall time, peak resident memory,
   the manifest's stage times, the selection mode (dense or sparse, K, the graph builder and its recall) and whether any
   file of n² values was written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_million import noisy_copies  # noqa: E402
from benchlib import publish, report_head  # noqa: E402

ROOT = Path(os.environ.get("NNCIFT_BENCH_OUT", Path.home() / ".cache" / "nncift" / "bench"))


def source_records() -> list:
    """The 2,016 real P3 pool records of the less-p3-2k benchmark (16 families, bench/matrices.py)."""
    from matrices import LARGE_POOL_TEMPLATES, _large_pool

    return _large_pool(63, LARGE_POOL_TEMPLATES)[0]


def write_records(folder: Path, n: int) -> Path:
    """records.jsonl of ``n`` distinct copies of the source records (written once)."""
    path = folder / "records.jsonl"
    if path.exists() and sum(1 for _ in path.open()) == n:
        return path
    sources = source_records()
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as handle:
        for i in range(n):
            record = sources[i % len(sources)]
            handle.write(json.dumps({"instruction": record.instruction, "input": f"{record.input} [copy {i}]".strip(),
                                     "output": record.output}) + "\n")
    tmp.replace(path)
    return path


def store_embeddings(folder: Path, records_path: Path, n: int, noise: float, seed: int) -> float:
    """Fill the folder's embedding cache with the copies' vectors (real source embeddings + noise); seconds taken."""
    from nncift.data.records import read_records
    from nncift.data.templates import embedding_text
    from nncift.models.embeddings import SHARD_ROWS, EmbeddingCache, _text_key, embed_records
    from nncift.settings.choices import BUNDLED_EMBEDDER

    tick = time.perf_counter()
    cache = EmbeddingCache(BUNDLED_EMBEDDER, root=folder / "cache" / "embeddings")
    records = read_records(records_path)[0]
    keys = [_text_key(embedding_text(r)) for r in records]
    if all(cache.get(k) is not None for k in keys[:: max(1, n // 1000)]) and cache.get(keys[-1]) is not None:
        return 0.0
    base = embed_records(source_records(), progress=False)  # the user's real cache: the sources are embedded there
    vectors = noisy_copies(base, n, noise, seed, sources=np.arange(n) % len(base))
    for start in range(0, n, SHARD_ROWS):
        cache.put(keys[start:start + SHARD_ROWS], vectors[start:start + SHARD_ROWS])
    return time.perf_counter() - tick


def run_select(folder: Path, records_path: Path, extra: list[str]) -> tuple[float, float, str]:
    """``nncift select`` in a fresh process; (wall seconds, peak resident GiB, its output)."""
    out = folder / "run"
    shutil.rmtree(out, ignore_errors=True)  # a finished run in the folder would be returned as it is, not measured
    env = dict(os.environ, NNCIFT_CACHE=str(folder / "cache"), HF_HUB_OFFLINE="1")
    command = ["/usr/bin/time", "-v", str(Path(sys.executable).with_name("nncift")), "select", "--data", str(records_path), "--out", str(out),
               "--influence", "delift-se", "--force", "--quiet", *extra]
    tick = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - tick
    text = done.stdout + done.stderr
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if done.returncode != 0:
        raise SystemExit(f"nncift select failed ({done.returncode}):\n{text[-4000:]}")
    return seconds, (int(peak.group(1)) / 2**20 if peak else float("nan")), text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--noise", type=float, default=0.45)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path)
    parser.add_argument("select_args", nargs="*", help="more `nncift select` flags after --, e.g. -- --budget 0.1")
    args = parser.parse_args(argv)

    folder = ROOT / f"select-million-{args.n}"
    (folder / "cache").mkdir(parents=True, exist_ok=True)
    models = folder / "cache" / "models"
    if not models.exists():
        models.symlink_to(Path.home() / ".cache" / "nncift" / "models")
    tick = time.perf_counter()
    records_path = write_records(folder, args.n)
    written = time.perf_counter() - tick
    stored = store_embeddings(folder, records_path, args.n, args.noise, args.seed)
    print(f"records {written:.0f} s, embeddings stored {stored:.0f} s", flush=True)
    seconds, peak, text = run_select(folder, records_path, args.select_args)
    manifest = json.loads((folder / "run" / "manifest.json").read_text())
    big = [str(p.relative_to(folder / "run")) for p in (folder / "run").rglob("*") if p.is_file() and p.stat().st_size >= 4 * args.n * args.n > 0]
    print(text[-3000:])
    lines = [*report_head(f"`nncift select` end to end on {args.n:,} records from a JSONL file (DELIFT-SE)", "bench/bench_select_million.py"),
             f"Records: {args.n:,} distinct copies of 2,016 real P3 records (input suffixed `[copy i]`); embeddings stored in advance "
             f"(real MiniLM vectors of the sources + noise of norm {args.noise}) in the benchmark's own embedding cache. "
             f"Writing the JSONL took {written:.0f} s, storing the embeddings {stored:.0f} s (0: already stored).", "",
             "| what | value |", "|---|---|",
             f"| `nncift select` wall time (fresh process) | {seconds:,.0f} s |",
             f"| peak resident memory | {peak:.2f} GiB |",
             f"| selection | {manifest.get('selection_mode')}, K = {manifest.get('neighbours')}, builder {manifest.get('graph_builder')}, "
             f"recall@K {manifest.get('graph_recall')} |",
             f"| stage seconds (manifest) | {', '.join(f'{k} {v:,.0f}' for k, v in manifest['cost']['seconds_by_stage'].items())} |",
             f"| files of ≥ n² float32 values | {', '.join(big) or 'none'} |"]
    publish("\n".join(lines) + "\n", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
