"""Gradient compressors on SmolLM2-135M LoRA gradients of real records (docs/methods.md §5).

Every batch gets ONE forward and backward pass whose per-layer inputs and output-gradients are
captured; every compressor then compresses the same captured batch, one after the other (so load
on the shared machine hits all of them alike). The exact reference is the identity compressor
(the full LoRA gradient). Training-side features are Adam-preconditioned with the moments of a
short LESS warm-up, target-side features are plain gradients, as in LESS.

Columns: compression time per example (hooks' work only: select/compute the kept coordinates, Adam,
compress), the speed-up over dense projection at the same k, the whole feature pipeline per example
(forward + backward + compression), the peak extra memory of compressing one batch (measured in a
fresh process per compressor: peak RSS after compressing minus peak RSS before, inputs already
allocated), and fidelity against exact inner products: Spearman correlation over all target ×
train pairs of the cosines (and of the raw inner products), and the overlap of the top 10% of
training examples ranked by the LESS score (max over target subtasks of the mean cosine).

    python bench/bench_compressors.py --n-train 160 --n-targets 32
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nncift.gradients import AdamPreconditioner, AdamState, LayerShape, PerExampleGradients, collate, encode_example, make_compressor
from nncift.gradients.batches import per_example_losses
from nncift.gradients.features import compress_layer
from nncift.influence.less import LessSettings, aggregate_scores
from nncift.settings.stages import RunContext

HERE = Path(__file__).resolve().parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--n-targets", type=int, default=32)
    parser.add_argument("--dims", default="1024,4096,8192")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup-records", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: best on a shared, loaded CPU)")
    parser.add_argument("--out", default=str(HERE / "out" / "compressors"))
    parser.add_argument("--results", default=str(HERE / "results" / "compressors.md"))
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # internal: memory probe of one compressor
    parser.add_argument("--probe-dim", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def configs(dims: list[int]) -> list[tuple[str, int]]:
    return [(name, dim) for dim in dims for name in ("projection", "dropout", "dropout-structured")]


def prepare_model(args, pool):
    from nncift.gradients import layer_shape, trainable_layers
    from nncift.influence.less_warmup import add_lora, load_checkpoint, run_warmup
    from nncift.models.loading import load_causal_lm

    settings = LessSettings(lora_r=args.lora_r, lora_alpha=4 * args.lora_r, warmup_epochs=1, warmup_batch_size=8,
                            gradient_batch_size=args.batch_size, max_length=args.max_length)
    run = RunContext(seed=args.seed, device="cpu")
    model, tokenizer = load_causal_lm(run.model, device="cpu")
    model = add_lora(model, settings, seed=run.seed)
    warm = [pool[i] for i in np.random.default_rng(args.seed).choice(len(pool), args.warmup_records, replace=False)]
    checkpoints = run_warmup(model, tokenizer, warm, settings, Path(args.out) / "warmup", run=run, progress=True)
    layers = trainable_layers(model)
    state = load_checkpoint(model, layers, checkpoints[-1])
    return model, tokenizer, layers, [layer_shape(n, m) for n, m in layers], state


def capture(model, layers, batch):
    """One forward + backward; every layer's (inputs, output-gradients); seconds taken."""
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    start = time.perf_counter()
    with PerExampleGradients(layers, lambda i, x, d: captured.__setitem__(i, (x, d))) as tracker:
        tracker.token_mask = batch["attention_mask"]
        model.zero_grad(set_to_none=True)
        per_example_losses(model, batch).sum().backward()
    model.zero_grad(set_to_none=True)
    return captured, time.perf_counter() - start


def compress_batch(compressor, preconditioner, captured, batch_size):
    out = torch.zeros(batch_size, compressor.output_dim)
    start = time.perf_counter()
    for layer in range(len(captured)):
        compress_layer(compressor, preconditioner, layer, *captured[layer], out)
    return out, time.perf_counter() - start


def features_for(records, side, model, tokenizer, layers, compressors, exact, preconditioner, args, timings):
    """Compressed features of every config, and exact features, for one side ("train" or "targets")."""
    encoded = sorted(((i, encode_example(tokenizer, r, args.max_length)) for i, r in enumerate(records)), key=lambda p: len(p[1].input_ids))
    features = {key: np.zeros((len(records), c.output_dim), dtype=np.float32) for key, c in compressors.items()}
    exact_rows = np.zeros((len(records), exact.output_dim), dtype=np.float32)
    for start in range(0, len(encoded), args.batch_size):
        chunk = encoded[start : start + args.batch_size]
        rows = [i for i, _ in chunk]
        batch = collate([e for _, e in chunk], tokenizer.pad_token_id)
        captured, seconds = capture(model, layers, batch)
        timings["forward_backward"].append((seconds, len(rows)))
        for key, compressor in compressors.items():
            out, seconds = compress_batch(compressor, preconditioner, captured, len(rows))
            timings[key].append((seconds, len(rows)))
            features[key][rows] = out.numpy()
        out, _ = compress_batch(exact, preconditioner, captured, len(rows))
        exact_rows[rows] = out.numpy()
        print(f"{side}: {min(start + args.batch_size, len(encoded))}/{len(encoded)}", file=sys.stderr, flush=True)
    return features, exact_rows


def cosines(targets: np.ndarray, train: np.ndarray) -> np.ndarray:
    t = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    c = train / np.linalg.norm(train, axis=1, keepdims=True)
    return t.astype(np.float64) @ c.T.astype(np.float64)


def top_overlap(a: np.ndarray, b: np.ndarray, share: float = 0.1) -> float:
    k = max(1, int(round(share * len(a))))
    return len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k


def memory_probe(name: str, dim: int, shapes_file: Path) -> float:
    """Peak extra RSS (MiB) of compressing one captured-size batch with Adam, in this fresh process."""
    spec = json.loads(shapes_file.read_text())
    layers = [LayerShape(**layer) for layer in spec["layers"]]
    generator = torch.Generator().manual_seed(0)
    b, t = spec["batch"], spec["tokens"]
    inputs = [torch.randn(b, t, layer.in_features, generator=generator) for layer in layers]
    grads = [torch.randn(b, t, layer.out_features, generator=generator) for layer in layers]
    state = AdamState([torch.zeros(layer.size) for layer in layers], [torch.full((layer.size,), 1e-6) for layer in layers], step=2)
    warm = make_compressor(name, layers, min(dim, 64), seed=1)  # first use of the kernels allocates their own buffers
    scratch = torch.zeros(1, warm.output_dim)
    for index in range(len(layers)):
        compress_layer(warm, AdamPreconditioner(state), index, inputs[index][:1, :2], grads[index][:1, :2], scratch)
    del warm, scratch
    before = reset_peak_rss_kib()
    compressor = make_compressor(name, layers, dim, seed=0)
    preconditioner = AdamPreconditioner(state)
    out = torch.zeros(b, compressor.output_dim)
    for index in range(len(layers)):
        compress_layer(compressor, preconditioner, index, inputs[index], grads[index], out)
    return (peak_rss_kib() - before) / 1024.0


def peak_rss_kib() -> int:
    """Peak resident set size of this process (VmHWM), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_rss_kib() -> int:
    """Reset the peak RSS to the current RSS (Linux ``clear_refs`` 5) and return it, KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return peak_rss_kib()


def probe_all(keys, shapes, batch, tokens, out_dir: Path) -> dict:
    shapes_file = out_dir / "probe_shapes.json"
    shapes_file.write_text(json.dumps({"batch": batch, "tokens": tokens, "layers": [s.__dict__ for s in shapes]}))
    result = {}
    for name, dim in keys:
        command = [sys.executable, __file__, "--probe", name, "--probe-dim", str(dim), "--out", str(out_dir), "--threads", str(torch.get_num_threads())]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        lines = done.stdout.strip().splitlines()
        result[(name, dim)] = float(lines[-1]) if done.returncode == 0 and lines else float("nan")
    return result


def run(args) -> str:
    from less_data import pool_and_targets

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    train, targets = pool_and_targets(args.n_train, args.n_targets)
    model, tokenizer, layers, shapes, state = prepare_model(args, train)
    dims = [int(d) for d in args.dims.split(",")]
    compressors = {key: make_compressor(key[0], shapes, key[1], seed=args.seed) for key in configs(dims)}
    exact = make_compressor("identity", shapes, 1)
    timings = {key: [] for key in [*compressors, "forward_backward"]}
    target_features, target_exact = features_for(targets, "targets", model, tokenizer, layers, compressors, exact, None, args, timings)
    train_features, train_exact = features_for(train, "train", model, tokenizer, layers, compressors, exact,
                                               AdamPreconditioner(state), args, timings)
    exact_cos = cosines(target_exact, train_exact)
    exact_dot = target_exact.astype(np.float64) @ train_exact.T.astype(np.float64)
    subtasks = [r.task for r in targets]
    exact_scores = aggregate_scores(exact_cos, subtasks)
    tokens = int(np.mean([len(encode_example(tokenizer, r, args.max_length).input_ids) for r in train + targets]))
    memory = probe_all(list(compressors), shapes, args.batch_size, tokens, out_dir)
    per_example = {key: 1000 * sum(s for s, _ in v) / sum(n for _, n in v) for key, v in timings.items()}
    return report(args, compressors, per_example, memory, train_features, target_features, exact_cos, exact_dot,
                  exact_scores, subtasks, shapes, tokens)


def report(args, compressors, per_example, memory, train_features, target_features, exact_cos, exact_dot,
           exact_scores, subtasks, shapes, tokens) -> str:
    from scipy.stats import spearmanr

    p = sum(s.size for s in shapes)
    lines = [
        f"SmolLM2-135M-Instruct, LoRA r={args.lora_r} (alpha {4 * args.lora_r}) on q,k,v,o: p = {p:,} gradient coordinates "
        f"in {len(shapes)} LoRA matrices; {args.n_train} training (Adam-preconditioned) and {args.n_targets} target "
        f"(plain) examples of real P3 records, {tokens} tokens per example on average (max {args.max_length}), "
        f"batches of {args.batch_size}, fp32, CPU ({torch.get_num_threads()} torch thread(s), machine shared with other jobs).",
        f"Forward + backward with capture hooks: {per_example['forward_backward']:.0f} ms per example.",
        "",
        "| compressor | k (features) | compress ms/example | speed-up vs projection | fwd+bwd+compress ms/example "
        "| peak extra MiB (batch) | Spearman cos | Spearman inner product | top-10% overlap of LESS scores |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, compressor in compressors.items():
        name, dim = key
        cos = cosines(target_features[key], train_features[key])
        dot = target_features[key].astype(np.float64) @ train_features[key].T.astype(np.float64)
        rho_cos = spearmanr(cos.ravel(), exact_cos.ravel()).statistic
        rho_dot = spearmanr(dot.ravel(), exact_dot.ravel()).statistic
        overlap = top_overlap(aggregate_scores(cos, subtasks), exact_scores)
        speedup = per_example[("projection", dim)] / per_example[key]
        lines.append(
            f"| {name} | {dim} ({compressor.output_dim}) | {per_example[key]:.2f} | {speedup:.0f}x | "
            f"{per_example['forward_backward'] + per_example[key]:.0f} | {memory[key]:.1f} | {rho_cos:.3f} | {rho_dot:.3f} | {overlap:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.probe:
        torch.set_num_threads(args.threads)
        print(memory_probe(args.probe, args.probe_dim, Path(args.out) / "probe_shapes.json"))
        return
    table = run(args)
    print(table)
    command = "python bench/bench_compressors.py " + " ".join(sys.argv[1:])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(f"# Gradient compressors (LESS features)\n\nCommand: `HF_HUB_OFFLINE=1 {command}`  \n"
                                  f"Date: {stamp}\n\n{table}\n\n{NOTES}\n")


NOTES = """Notes:
- LoRA r=8 instead of the paper's 128 to keep dense projection affordable on this CPU: at r=128,
  p = 14.7M and dense projection costs 16 times more per example (it scales with p·k), while
  dropout-structured costs the same (it scales with tokens·k); that case was not run.
- Dense projection regenerates its p × k Rademacher matrix (one random bit per entry, block by block)
  for every batch, so its time per example falls with the batch size (8 here); the dropout
  compressors do not depend on it.
- The exact reference is the full LoRA gradient (identity compressor) of the same captured batch;
  Spearman is taken over all target × training pairs, the top-10% overlap over the training examples
  ranked by the LESS score.
- Peak memory: extra peak RSS of compressing one batch of synthetic inputs of the captured shapes in a
  fresh process (inputs and Adam moments allocated before the measurement)."""


if __name__ == "__main__":
    main()
