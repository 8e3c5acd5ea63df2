"""Ray executor benchmark: DELIFT block scaling, and the driver's peak memory on a 20,000 × 20,000 matrix.

Part ``scaling``: the same DELIFT job (targets × candidates of real Alpaca records, the bundled
SmolLM2-135M-Instruct, fp32 CPU) on the local executor (in this process, with ``--local-threads``
torch threads; the first is the baseline) and on a local Ray cluster started here (``num_cpus`` =
the machine's cores) with ``--ray-workers`` workers of 1 CPU (1 torch thread) each. The job time
includes loading the model on every worker; starting the actors (new Python processes importing
torch) is listed apart. Ratio = baseline / this (above 1: faster than the baseline). Every matrix
is compared bit for bit with the baseline's.

Part ``memory``: predict the full matrix with an InfluenceNetwork and run facility location
(budget 0.3) on it, each mode in a fresh subprocess that reports its own peak resident memory
(``VmHWM``, which counts mapped file pages too) and its resident memory before the work started:

- ``in memory``: the local pipeline's in-memory path: the matrix written to disk in row blocks,
  memory-mapped, clipped at 0 into a new array, and selected on by :mod:`nncift.selection` (which
  makes its own transposed copy);
- ``streamed``: :func:`nncift.network.streaming.predict_to_npy` + :func:`nncift.selection.select_from_npy`;
- ``streamed, predicted on Ray``: the same with the row blocks predicted by 2 Ray workers.

Embeddings: n seeded random unit vectors around 50 centres (d = 384); the network (one hidden layer
of 100) is trained for 2 epochs on the DELIFT-SE values (cos + 1)/2 of a 400 × 400 sample. The
picks of all modes are checked to be identical.

Usage::

    python bench/bench_ray.py --part all --output bench/results/ray.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from benchlib import report_head  # noqa: E402 - bench/ is on sys.path when a script runs

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"


# ----------------------------------------------------------------------------------------------
# part 1: DELIFT block scaling


def scaling(args: argparse.Namespace) -> str:
    import ray

    from nncift.data.records import read_records
    from nncift.execution.executor import LocalExecutor
    from nncift.execution.ray_cluster import RayExecutor
    from nncift.influence import InfluenceSpec
    from nncift.run.store import RunStore, plan_blocks
    from nncift.settings.stages import RunContext

    records, _ = read_records(args.data)
    rng = np.random.default_rng(0)
    picked = rng.choice(len(records), args.targets + args.candidates, replace=False)
    targets = [records[i] for i in picked[: args.targets]]
    candidates = [records[i] for i in picked[args.targets :]]
    spec = InfluenceSpec("delift", {"max_length": args.max_length}, RunContext(device="cpu"))
    blocks = plan_blocks(args.targets, args.candidates, args.block_size, args.block_size)
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))

    def matrix(name: str):
        return RunStore(work / name, {}).matrix("q1", np.arange(args.targets), np.arange(args.candidates))

    import torch

    rows = []
    local = local_seconds = None
    for threads in (int(t) for t in args.local_threads.split(",")):
        torch.set_num_threads(threads)
        result = matrix(f"local-{threads}")
        cpu, start = _cpu_seconds([os.getpid()]), time.perf_counter()
        LocalExecutor().run_pairwise(spec, targets, candidates, result, blocks, work / "local", progress=False)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds([os.getpid()]) - cpu
        if local is None:
            local, local_seconds = result, seconds
        same = "-" if result is local else ("yes" if np.array_equal(result.array, local.array) else "no")
        rows.append((f"local executor (this process, torch threads = {threads})", "-", seconds, cpu, local_seconds / seconds, same))

    cores = os.cpu_count() or 2
    start = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, object_store_memory=300 * 1024**2, log_to_driver=False)
    init_seconds = time.perf_counter() - start
    for workers in (int(w) for w in args.ray_workers.split(",")):
        cpus = 1.0
        with RayExecutor(workers=workers, worker_cpus=cpus) as executor:
            start = time.perf_counter()
            pids = executor.worker_pids()
            startup = time.perf_counter() - start
            result = matrix(f"ray-{workers}x{cpus:g}")
            cpu, start = _cpu_seconds(pids), time.perf_counter()
            executor.run_pairwise(spec, targets, candidates, result, blocks, work / "ray", progress=False)
            seconds, cpu = time.perf_counter() - start, _cpu_seconds(pids) - cpu
        same = "yes" if np.array_equal(result.array, local.array) else f"no (max |diff| {np.nanmax(np.abs(result.array - local.array)):.2e})"
        rows.append((f"Ray, {workers} worker{'s' if workers > 1 else ''} × {cpus:g} CPU", f"{startup:.1f}", seconds, cpu, local_seconds / seconds, same))
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    lines = [
        f"DELIFT on {args.targets} targets × {args.candidates} candidates (Alpaca, seed 0), blocks of "
        f"{args.block_size} × {args.block_size} ({len(blocks)} blocks), max_length {args.max_length}, SmolLM2-135M-Instruct fp32 CPU. "
        f"Ray cluster start (`ray.init`, {cores} CPUs): {init_seconds:.1f} s. CPU s = user + system seconds of the "
        "processes doing the job (this process, or the Ray workers) during the job.",
        "",
        "| executor | actor start s | job s (model load + blocks) | CPU s | ratio first row / this (wall) | matrix identical to first row |",
        "|---|---:|---:|---:|---:|---|",
    ]
    lines += [f"| {name} | {startup} | {seconds:.1f} | {cpu:.1f} | {ratio:.2f} | {same} |" for name, startup, seconds, cpu, ratio, same in rows]
    lines += ["", f"Calibration, same machine and time: {_parallel_calibration()}"]
    return "\n".join(lines) + "\n"


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of processes (all their threads), from /proc/PID/stat."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _burn(n: int) -> float:
    start = time.perf_counter()
    value = 0
    for i in range(n):
        value += i * i
    return time.perf_counter() - start


def _parallel_calibration(n: int = 10_000_000) -> str:
    """How much faster 2 processes do 2 units of pure-Python work than 1 process does 1 unit, at this moment."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_burn, [1, 1])  # started before the clock
        one = _burn(n)
        start = time.perf_counter()
        pool.map(_burn, [n, n], chunksize=1)
        two = time.perf_counter() - start
    return (f"2 processes did 2 units of pure-Python work in {two:.1f} s, 1 process 1 unit in {one:.1f} s: "
            f"{2 * one / two:.2f}× the throughput (2.0× on an idle 2-core machine).")


# ----------------------------------------------------------------------------------------------
# part 2: the driver's peak memory


def make_inputs(n: int, folder: Path) -> None:
    """Embeddings (n, 384) and a network trained briefly on DELIFT-SE values of a sample."""
    import torch

    from nncift.network.files import save_network
    from nncift.network.paper import NetworkSettings
    from nncift.network.paper_training import train_pairwise

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((50, 384))
    embeddings = (centres[rng.integers(0, 50, n)] + 0.8 * rng.standard_normal((n, 384))).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    sample = np.sort(rng.choice(n, 400, replace=False))
    labels = ((embeddings[sample] @ embeddings[sample].T + 1) / 2).astype(np.float32)
    torch.manual_seed(0)
    network, _ = train_pairwise(embeddings[sample], embeddings[sample], labels,
                                NetworkSettings(epochs=2, batch_size=256, learning_rate=1e-3), progress=False)
    np.save(folder / "embeddings.npy", embeddings)
    save_network(network, folder / "network.safetensors", {})


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(mode: str, folder: Path, budget: float) -> None:
    """One mode, in a fresh process: prints a JSON line with times, memory and the picks' digest."""
    from nncift import selection
    from nncift.network import streaming
    from nncift.network.files import load_network
    from nncift.network.pair_kernel import warm_up_kernel

    embeddings = np.load(folder / "embeddings.npy")
    network = load_network(folder / "network.safetensors")
    warm_up_kernel()
    selection.facility_location(np.ones((4, 4), np.float32), 2)  # compile / load the numba kernels
    selection.select_from_npy  # noqa: B018
    executor = None
    if mode == "ray":
        import ray

        from nncift.execution.ray_cluster import RayExecutor

        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, object_store_memory=600 * 1024**2, log_to_driver=False)
        executor = RayExecutor(workers=2, worker_cpus=1.0)
        executor.worker_pids()
    baseline = _status("VmRSS")
    path = folder / f"predicted-{mode}.npy"
    start = time.perf_counter()
    streaming.predict_to_npy(network, embeddings, embeddings, path, executor=executor)
    predicted_at = time.perf_counter()
    if mode == "memory":
        chosen = selection.facility_location(np.maximum(np.load(path, mmap_mode="r"), 0.0), budget)
    else:
        chosen = selection.select_from_npy("fl", path, budget)
    done = time.perf_counter()
    peak = _status("VmHWM")
    if executor is not None:
        executor.close()
        import ray

        ray.shutdown()
    path.unlink()
    print(json.dumps({"mode": mode, "baseline": baseline, "peak": peak, "predict_s": predicted_at - start,
                      "select_s": done - predicted_at, "picks": chosen.indices.tolist()[:50], "n_picks": len(chosen.indices),
                      "objective": chosen.objective}))


def memory(args: argparse.Namespace) -> str:
    folder = Path(tempfile.mkdtemp(prefix="bench-ray-memory-", dir=args.workdir))
    make_inputs(args.n, folder)
    labels = {"memory": "in memory (local pipeline path)", "stream": "streamed", "ray": "streamed, predicted on Ray (2 workers)"}
    results = []
    for mode in args.modes.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", mode, "--folder", str(folder), "--budget", str(args.budget)],
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    reference = results[0]
    gib = 1024**3
    matrix_gib = 4 * args.n * args.n / gib
    lines = [
        f"Predict + facility location (budget {args.budget}) on a {args.n:,} × {args.n:,} float32 matrix "
        f"({matrix_gib:.2f} GiB); peak = the driver process's `VmHWM`, before = its RSS after imports and inputs.",
        "",
        "| mode | driver RSS before GiB | driver peak RSS GiB | peak − before GiB | peak ratio vs first | predict s | select s | same picks and objective |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in results:
        same = row["picks"] == reference["picks"] and row["objective"] == reference["objective"] and row["n_picks"] == reference["n_picks"]
        lines.append(f"| {labels[row['mode']]} | {row['baseline'] / gib:.2f} | {row['peak'] / gib:.2f} | "
                     f"{(row['peak'] - row['baseline']) / gib:.2f} | {row['peak'] / reference['peak']:.2f} | "
                     f"{row['predict_s']:.1f} | {row['select_s']:.1f} | {'yes' if same else 'NO'} |")
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["scaling", "memory", "all"], default="all")
    parser.add_argument("--data", default=str(SHARED / "alpaca_en_demo.json"))
    parser.add_argument("--targets", type=int, default=8)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--local-threads", default="1", help="torch threads of the local executor runs, e.g. 1,2 (first = baseline)")
    parser.add_argument("--ray-workers", default="1,2", help="Ray worker counts to run (1 CPU each)")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--modes", default="memory,stream,ray")
    parser.add_argument("--workdir", default=None, help="folder for the temporary matrices (default: the system's)")
    parser.add_argument("--output", help="write the tables, the command and the date to this markdown file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.folder), args.budget)
        return
    sections = []
    if args.part in ("scaling", "all"):
        sections.append("## DELIFT block computation: local executor vs Ray workers\n\n" + scaling(args))
    if args.part in ("memory", "all"):
        sections.append("## Driver memory: predicting and selecting on the full matrix\n\n" + memory(args))
    text = "\n".join(sections)
    print(text)
    if args.output:
        head = [*report_head("Ray executor", "bench/bench_ray.py"), "The cores are shared with other jobs.", ""]
        Path(args.output).write_text("\n".join([*head, text]), encoding="utf-8")


if __name__ == "__main__":
    main()
