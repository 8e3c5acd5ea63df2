"""Fine-tuning on TRL's SFTTrainer against the hand-written LoRA loop it replaced (issue 24), in one process.

The reference loop is kept here, as it was in ``nncift.downstream.finetune`` before the TRL path (``train_lora``:
length-grouped batches, AdamW, linear decay, the output head on response positions only). Both paths get the same
records, encoding, LoRA settings and seeds, on the bundled SmolLM2-135M-Instruct on the CPU; runs alternate (loop, TRL,
loop, TRL, … one pair per seed) so that a change of machine load hits both. Per run: training tokens/s, the final
training loss (mean of the last quarter of the steps), and on held-out records the reference-answer loss and ROUGE-L of
``evaluate`` (greedy answers).

Run from the repository root (real data from ../shared/data, never copied):
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_finetune.py --seeds 0,1 --output bench/results/finetune_trl.md
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import command_line, cpu_name, publish  # noqa: E402

from nncift.data.records import Record, read_records  # noqa: E402
from nncift.downstream.evaluate import EvaluateSettings  # noqa: E402
from nncift.downstream.evaluation import run_evaluate  # noqa: E402
from nncift.downstream.finetune import (  # noqa: E402
    EncodedExample,
    FinetuneSettings,
    collate,
    encode_example,
    fast_head_matches,
    finetune,
    response_loss,
    uses_chat_template,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


# ---- the hand-written loop of nncift before issue 24 (reference) ----
def length_grouped_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator, *, group: int = 16) -> list[np.ndarray]:
    """Shuffled batches of indices, grouping similar lengths to save padding (the reference loop's order)."""
    order = rng.permutation(len(lengths))
    lengths_array = np.asarray(lengths)
    batches: list[np.ndarray] = []
    for start in range(0, len(order), group * batch_size):
        chunk = order[start : start + group * batch_size]
        chunk = chunk[np.argsort(lengths_array[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def lora_model(model: Any, settings: FinetuneSettings) -> Any:
    """Wrap ``model`` with fresh LoRA adapters (initialised from torch's current seed)."""
    from peft import LoraConfig, get_peft_model

    modules: Any = "all-linear" if tuple(settings.target_modules) == ("all-linear",) else list(settings.target_modules)
    config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                        target_modules=modules, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def train_lora(model: Any, examples: Sequence[EncodedExample], settings: FinetuneSettings, pad_id: int) -> list[float]:
    """The reference loop: train the LoRA parameters of ``model`` in place; the loss of every step."""
    rng = np.random.default_rng(settings.seed)
    total = math.ceil(len(examples) / settings.batch_size) * settings.epochs
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate, weight_decay=settings.weight_decay)
    warmup = int(round(settings.warmup_ratio * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: (step + 1) / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup)))
    lengths = [len(example.input_ids) for example in examples]
    fast_head = fast_head_matches(model, collate(examples[:2], pad_id))
    losses: list[float] = []
    model.train()
    for _ in range(settings.epochs):
        for batch_indices in length_grouped_batches(lengths, settings.batch_size, rng):
            loss = response_loss(model, collate([examples[i] for i in batch_indices], pad_id), fast_head=fast_head)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
    model.eval()
    return losses


def run_reference(records: Sequence[Record], settings: FinetuneSettings, folder: Path) -> dict[str, Any]:
    """Today's loop as ``finetune`` ran it: seed, load, encode, LoRA, train (timed), save the adapter."""
    from nncift.models.loading import load_causal_lm

    torch.manual_seed(settings.seed)
    model, tokenizer = load_causal_lm(settings.model, device="cpu")
    chat = uses_chat_template(tokenizer, settings.chat_template)
    examples = [encode_example(tokenizer, record, settings.max_length, chat=chat) for record in records]
    model = lora_model(model, settings)
    start = time.perf_counter()
    losses = train_lora(model, examples, settings, tokenizer.pad_token_id)
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    return {"losses": losses, "seconds": seconds, "tokens": sum(len(e.input_ids) for e in examples) * settings.epochs}


def run_trl(records: Sequence[Record], settings: FinetuneSettings, folder: Path) -> dict[str, Any]:
    """The library's ``finetune`` (TRL's SFTTrainer)."""
    result = finetune(records, settings, folder)
    return {"losses": result.losses, "seconds": result.seconds, "tokens": result.n_tokens}


def held_out(adapter: Path, records: Sequence[Record], max_new_tokens: int) -> dict[str, float]:
    """Reference-answer loss and ROUGE-L of the adapter's greedy answers."""
    metrics = run_evaluate(EvaluateSettings(adapter=str(adapter), device="cpu", max_new_tokens=max_new_tokens, quiet=True), records).metrics
    return {"heldout_loss": metrics["loss"], "rouge_l": metrics["rouge_l"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "alpaca_en_demo.json"))
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--n-heldout", type=int, default=20)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--no-eval", action="store_true", help="training only (no held-out evaluation)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if not Path(args.data).is_file():
        sys.exit(f"real data not found at {args.data} (../shared/data beside the checkout)")
    records, _ = read_records(args.data)
    train, heldout = records[: args.n_train], records[args.n_train : args.n_train + args.n_heldout]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as scratch:
        for seed in [int(s) for s in args.seeds.split(",")]:
            settings = FinetuneSettings(seed=seed, epochs=args.epochs, device="cpu", quiet=True, checkpoint_steps=0)
            for name, run in (("hand-written loop", run_reference), ("TRL SFTTrainer", run_trl)):
                folder = Path(scratch) / f"{name.split()[0]}-{seed}"
                row = {"path": name, "seed": seed, **run(train, settings, folder)}
                if not args.no_eval:
                    row.update(held_out(folder, heldout, args.max_new_tokens))
                rows.append(row)
                print(f"{name} seed {seed}: {row['tokens'] / row['seconds']:.0f} tokens/s, final loss {final_loss(row['losses']):.4f}", file=sys.stderr)
    publish(report(rows, args, len(train), len(heldout)), args.output)


def final_loss(losses: Sequence[float]) -> float:
    """Mean training loss of the last quarter of the steps."""
    return float(np.mean(losses[-max(1, len(losses) // 4):]))


def report(rows: list[dict[str, Any]], args: argparse.Namespace, n_train: int, n_heldout: int) -> str:
    """The markdown table: one row per run, then the mean per path and the TRL / loop ratio of tokens/s."""
    import os

    evaluated = "heldout_loss" in rows[0]
    lines = [
        "# Fine-tuning: TRL's SFTTrainer against the hand-written loop (issue 24)", "",
        f"Command: `{command_line('bench/bench_finetune.py')}`  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC  ",
        f"CPU: {cpu_name()}, {os.environ.get('OMP_NUM_THREADS', 'all')} torch thread(s) (torch reports {torch.get_num_threads()}); "
        "machine shared with other jobs.", "",
        f"SmolLM2-135M-Instruct (bundled), LoRA r 8, α 16, dropout 0.05 on all linear layers, lr 2e-4, batch 8, max length 256, "
        f"fp32, {args.epochs} epoch(s) on the first {n_train} records of {Path(args.data).name}; held-out: the next {n_heldout} "
        f"(greedy answers of at most {args.max_new_tokens} tokens). Runs alternate loop / TRL per seed, in one process.", "",
        "| path | seed | steps | train seconds | tokens/s | first loss | final loss (last ¼ of steps) |"
        + (" held-out loss | ROUGE-L |" if evaluated else ""),
        "|---|---|---|---|---|---|---|" + ("---|---|" if evaluated else ""),
    ]
    for row in rows:
        lines.append(f"| {row['path']} | {row['seed']} | {len(row['losses'])} | {row['seconds']:.1f} | {row['tokens'] / row['seconds']:.0f} | "
                     f"{row['losses'][0]:.4f} | {final_loss(row['losses']):.4f} |"
                     + (f" {row['heldout_loss']:.4f} | {row['rouge_l']:.4f} |" if evaluated else ""))
    lines += ["", "| path | mean tokens/s | mean final loss |" + (" mean held-out loss | mean ROUGE-L |" if evaluated else ""),
              "|---|---|---|" + ("---|---|" if evaluated else "")]
    means = {}
    for path in dict.fromkeys(row["path"] for row in rows):
        mine = [row for row in rows if row["path"] == path]
        means[path] = {"tokens/s": np.mean([r["tokens"] / r["seconds"] for r in mine]), "final": np.mean([final_loss(r["losses"]) for r in mine])}
        cells = f"| {path} | {means[path]['tokens/s']:.0f} | {means[path]['final']:.4f} |"
        if evaluated:
            cells += f" {np.mean([r['heldout_loss'] for r in mine]):.4f} | {np.mean([r['rouge_l'] for r in mine]):.4f} |"
        lines.append(cells)
    loop, trl = means.get("hand-written loop"), means.get("TRL SFTTrainer")
    if loop and trl:
        lines += ["", f"TRL / loop tokens/s: {trl['tokens/s'] / loop['tokens/s']:.2f}×."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
