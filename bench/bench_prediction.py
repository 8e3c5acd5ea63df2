"""Benchmark of pairwise InfluenceNetwork prediction (d = 384, h = 100) on this machine's CPU.

Methods, all with the same network and embeddings in one run:

* one pair per call  — the reference: for each pair build ``[e_i, 0, e_j]`` and call the network
  (timed on a sample of pairs);
* naive blocks       — ``predict_pairwise_naive``: concatenate a block of pairs, run the whole MLP
  (timed on the first rows of the smaller matrix);
* split, numba       — ``predict_pairwise`` with the split first layer and the compiled kernel;
* split, torch       — ``predict_pairwise`` with the split first layer, pure-torch tiles.
* two-tower          — the default network (and with label anchors: every labelled pair counting, as with separate
  targets, and with the self-pairs left out, as where the pool is its own targets), each beside the previous release's
  way of predicting it (``previous_two_tower``: a copy per row block, the anchors' column sums re-read whole per block).

Split methods predict into a preallocated (and pre-faulted) float32 array; each is run ``--repeats``
times and the best time is reported. Prints a markdown table; ``--output FILE`` also writes it there
with the command, the date and the machine.

Run: ``.venv/bin/python bench/bench_prediction.py [--sizes 5000 20000] [--output bench/results/prediction.md]``
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from benchlib import cpu_name  # bench/ is on sys.path when a script runs

from nncift.network import pair_kernel as pk
from nncift.network import paper as nw


def embeddings(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    e = rng.standard_normal((n, d), dtype=np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def one_pair_per_call(net: nw.InfluenceNetwork, rows: np.ndarray, cols: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, float]:
    """The reference loop; returns the values and the seconds."""
    values = np.empty(len(pairs), dtype=np.float32)
    start = time.perf_counter()
    with torch.no_grad():
        for n, (i, j) in enumerate(pairs):
            x = torch.cat([torch.from_numpy(rows[i]), torch.zeros(1), torch.from_numpy(cols[j])]).unsqueeze(0)
            values[n] = net(x).item()
    return values, time.perf_counter() - start


def previous_two_tower(network, rows: np.ndarray, cols: np.ndarray, out: np.ndarray, self_cols: np.ndarray) -> np.ndarray:
    """The baseline: the two-tower prediction as the release of 2026-12-03 made it (no calibration lines), for a same-run
    comparison. Each row block's product went to a new tensor and was then copied into ``out``; the anchors' column sums were
    a transposed view, re-read whole for every row block."""
    import math

    from nncift.network.anchors import NEIGHBOURS, sparse_kernel_weights

    rows_t, cols_t = torch.from_numpy(rows), torch.from_numpy(cols)
    block_rows = max(1, (1 << 22) // len(cols))
    with torch.no_grad():
        scale, shift = float(network.label_std), float(network.label_mean)
        g, c = network.col_tower(cols_t)
        right = torch.cat([cols_t, g, torch.ones(len(cols), 1), c[:, None]], dim=1) * scale
        anchors = network.anchors
        if anchors is not None:
            wc = sparse_kernel_weights(cols_t, anchors.cols, anchors.temperature, anchors.neighbours)
            residual_cols, mask_cols = torch.sparse.mm(wc, anchors.residuals.T.contiguous()).T, torch.sparse.mm(wc, anchors.mask.T.contiguous()).T
        for start in range(0, len(rows), block_rows):
            stop = min(len(rows), start + block_rows)
            part = rows_t[start:stop]
            f, r = network.row_tower(part)
            left = torch.cat([network.alpha * part, f / math.sqrt(network.rank), (r + network.beta)[:, None], torch.ones(stop - start, 1)], dim=1)
            block = torch.addmm(torch.full((1, 1), shift), left, right.T)
            own = self_cols[start:stop]
            local = np.flatnonzero(own >= 0)
            block[local, own[local]] += scale * (network.self_bias + part[local] @ network.self_weight)
            if anchors is not None:
                wr = sparse_kernel_weights(part, anchors.rows, anchors.temperature, NEIGHBOURS)
                block += scale * torch.sparse.mm(wr, residual_cols) / (torch.sparse.mm(wr, mask_cols) + anchors.shrink)
            out[start:stop] = block.numpy()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=384, help="embedding size d")
    parser.add_argument("--hidden", type=int, default=100, help="hidden size h (one layer)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000], help="square matrix sizes for the split methods")
    parser.add_argument("--loop-pairs", type=int, default=2000, help="pairs timed in the one-pair-per-call loop")
    parser.add_argument("--naive-rows", type=int, default=1000, help="rows of the smallest matrix timed with the naive method")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each split method (best is reported)")
    parser.add_argument("--torch-max-size", type=int, default=20000, help="largest size on which the torch path is timed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown report here")
    args = parser.parse_args(argv)

    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(args.seed)
    net = nw.InfluenceNetwork(args.dim, (args.hidden,))
    net.reset_parameters(torch.Generator().manual_seed(args.seed))
    net.eval()
    n_max = max(args.sizes)
    rows_all = embeddings(n_max, args.dim, rng)
    cols_all = embeddings(n_max, args.dim, rng)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    # compile time: the cached dispatcher as the library uses it, and a fresh compilation without cache
    first_call = pk.warm_up_kernel()
    compile_seconds = float("nan")
    if pk.numba_available():
        import numba

        fresh = numba.njit(parallel=True, fastmath=True, cache=False)(pk.pair_kernel_py)
        start = time.perf_counter()
        fresh(np.zeros((3, 4), np.float32), np.zeros((5, 4), np.float32), np.zeros(4, np.float32), np.float32(0), np.empty((3, 5), np.float32), 64, 128)
        compile_seconds = time.perf_counter() - start

    results: list[tuple[str, int, float]] = []

    def note(name: str, n_pairs: int, seconds: float) -> None:
        results.append((name, n_pairs, seconds))
        print(f"  {name}: {n_pairs / seconds:.3g} pairs/s", file=sys.stderr, flush=True)

    # 1. one pair per call
    pairs = np.stack([rng.integers(0, n_max, args.loop_pairs), rng.integers(0, n_max, args.loop_pairs)], axis=1)
    one_pair_per_call(net, rows_all, cols_all, pairs[:50])  # warm-up
    loop_values, loop_seconds = one_pair_per_call(net, rows_all, cols_all, pairs)
    note("one pair per call (reference)", len(pairs), loop_seconds)
    loop_rate = len(pairs) / loop_seconds

    # 2. naive blocks on the first rows of the smallest matrix
    n_small = min(args.sizes)
    naive_rows = min(args.naive_rows, n_small)
    nw.predict_pairwise_naive(net, rows_all[:2], cols_all[:n_small])  # warm-up
    start = time.perf_counter()
    naive = nw.predict_pairwise_naive(net, rows_all[:naive_rows], cols_all[:n_small])
    note(f"naive blocks (concatenate + MLP), {naive_rows}×{n_small}", naive.size, time.perf_counter() - start)

    # 3. split first layer, numba kernel and torch tiles
    max_error = {}
    for n in sorted(args.sizes):
        out = np.empty((n, n), dtype=np.float32)
        out.fill(0.0)  # fault the pages in before timing
        for backend in (["numba"] if pk.numba_available() else []) + ["torch"]:
            if backend == "torch" and n > args.torch_max_size:
                continue
            best = float("inf")
            for _ in range(args.repeats if backend == "numba" else max(1, args.repeats - 1)):
                start = time.perf_counter()
                nw.predict_pairwise(net, rows_all[:n], cols_all[:n], out=out, backend=backend)
                best = min(best, time.perf_counter() - start)
            note(f"split first layer, {backend}, {n}×{n}", n * n, best)
            error = float(np.abs(out[:naive_rows, :n_small] - naive[:, :n]).max()) if n == n_small else float("nan")
            inside = (pairs[:, 0] < n) & (pairs[:, 1] < n)
            loop_error = float(np.abs(out[pairs[inside, 0], pairs[inside, 1]] - loop_values[inside]).max()) if inside.any() else float("nan")
            max_error[(backend, n)] = (error, loop_error)
        del out

    # 4. the default two-tower network (one matrix product per row block), with the self-pair term on the diagonal
    from nncift.network.towers import TwoTowerNetwork
    from nncift.run.layout import self_columns

    tower = TwoTowerNetwork(args.dim)
    tower.initialise(torch.Generator().manual_seed(args.seed), 0.5, 0.1, 0.2)
    with torch.no_grad():  # non-zero learned terms, as after training
        for layer in (tower.row_tower.out, tower.col_tower.out, tower.row_tower.offset, tower.col_tower.offset):
            layer.weight.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(args.seed + 1))
    def best_tower_seconds(n: int, out: np.ndarray, predict=None) -> float:
        """Best of ``args.repeats`` predictions of the n × n matrix by ``tower`` (as it is now) into ``out`` (``predict``: the
        baseline's way instead of the library's)."""
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            if predict is None:
                nw.predict_pairwise(tower, rows_all[:n], cols_all[:n], out=out, self_cols=self_columns(n, n))
            else:
                predict(tower, rows_all[:n], cols_all[:n], out, self_columns(n, n))
            best = min(best, time.perf_counter() - start)
        return best

    for n in sorted(args.sizes):
        out = np.zeros((n, n), dtype=np.float32)
        note(f"two-tower (default network), previous release's blocks (baseline), {n}×{n}", n * n, best_tower_seconds(n, out, previous_two_tower))
        baseline = out.copy() if n == min(args.sizes) else None
        note(f"two-tower (default network), {n}×{n}", n * n, best_tower_seconds(n, out))
        if baseline is not None:
            max_error[("two-tower vs the previous release", n)] = (float(np.abs(out - baseline).max()), float("nan"))
        if n == min(args.sizes):
            with torch.no_grad():
                reference = tower(torch.from_numpy(rows_all[:64]), torch.from_numpy(cols_all[:n]), torch.from_numpy(self_columns(64, n))).numpy()
            max_error[("two-tower vs its module", n)] = (float(np.abs(out[:64] - reference).max()), float("nan"))
        del out

    # 5. the same network with label anchors read from a labelled block of 5% of the rows × 5% of the columns
    from nncift.network.anchors import Anchors

    for n in sorted(args.sizes):
        labelled = max(16, n // 20)
        residuals = np.random.default_rng(args.seed).standard_normal((labelled, labelled)).astype(np.float32)
        out = np.zeros((n, n), dtype=np.float32)
        # every labelled pair counting (separate targets), then the pool as its own targets: the labelled self-pairs left out of
        # the anchors, so the mask's sums need their own sparse product
        for mask, kind in ((np.ones((labelled, labelled), dtype=bool), ""), (~np.eye(labelled, dtype=bool), ", self-pairs left out")):
            name = f"two-tower with label anchors ({labelled}×{labelled} labelled{kind})"
            tower.attach_anchors(Anchors.from_block(rows_all[:labelled], cols_all[:labelled], residuals, mask, 0.05, 1.0))
            note(f"{name}, previous release's blocks (baseline), {n}×{n}", n * n, best_tower_seconds(n, out, previous_two_tower))
            baseline = out.copy() if n == min(args.sizes) else None
            note(f"{name}, {n}×{n}", n * n, best_tower_seconds(n, out))
            if baseline is not None:
                max_error[(f"{name} vs the previous release", n)] = (float(np.abs(out - baseline).max()), float("nan"))
        del out
    tower.attach_anchors(None)

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    say("# Pairwise prediction benchmark")
    say()
    say(f"- command: `{command}` (from the repository root, with `.venv/bin/python`)")
    say(f"- date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}")
    say(f"- machine: {cpu_name()}, {os.cpu_count()} CPU cores (shared with other jobs), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)" + (f", numba {__import__('numba').__version__} ({__import__('numba').config.NUMBA_NUM_THREADS} threads)" if pk.numba_available() else ""))
    say(f"- 1-minute load average: {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
        f"(on {os.cpu_count()} cores: a load above {os.cpu_count()} means other jobs were competing for the CPU)")
    say(f"- paper network: d = {args.dim}, one hidden layer h = {args.hidden} ({sum(p.numel() for p in net.parameters()):,} parameters), random init (seed {args.seed}); "
        "L2-normalised random embeddings")
    say(f"- default two-tower network: towers {args.dim} → 128 → 64, {tower.parameter_count():,} parameters; self-pair term on the diagonal")
    say(f"- numba kernel: first call in this process (compile or load from numba's cache) {first_call:.2f} s; "
        f"fresh compilation without cache {compile_seconds:.2f} s")
    say(f"- split methods write into a preallocated float32 (n, n) array; best of {args.repeats} runs (torch: {max(1, args.repeats - 1)})")
    say()
    say("| method | pairs | seconds | pairs/s | speed-up vs one-pair loop |")
    say("|---|---:|---:|---:|---:|")
    for name, n_pairs, seconds in results:
        rate = n_pairs / seconds
        say(f"| {name} | {n_pairs:,} | {seconds:.3f} | {rate:.3g} | {rate / loop_rate:,.0f}× |")
    say()
    say("Largest absolute difference of the split methods from the naive blocks / from the one-pair loop "
        "(on the pairs that lie inside the matrix):")
    say()
    for (backend, n), (error, loop_error) in max_error.items():
        if backend.startswith("two-tower vs its module"):
            say(f"- two-tower, {n}×{n}: blocked matrix product against the module's own forward pass (first 64 rows): {error:.2e}")
            continue
        if backend.startswith("two-tower"):
            say(f"- {backend}, {n}×{n}: {error:.2e}")
            continue
        say(f"- {backend}, {n}×{n}: naive " + (f"{error:.2e}" if error == error else "not compared (it ran on the smaller size only)")
            + f", one-pair loop {loop_error:.2e}")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
