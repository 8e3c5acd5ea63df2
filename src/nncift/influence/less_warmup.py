"""LESS warm-up: LoRA training on a seeded random fraction of the pool, one checkpoint per epoch.

Reference settings (docs/methods.md §3; LESS ``base_training_args.sh``): LoRA r=128, α=512, dropout 0.1
on q/k/v/o, AdamW (β = 0.9, 0.999, ε = 1e-8, no weight decay), learning rate 2e-5 with linear decay
after a linear warm-up over 3% of the steps, 32 examples per optimizer step, gradient norm clipped
at 1.0, 4 epochs, loss = mean cross-entropy over the response tokens of the optimizer batch. One
difference: the first warm-up step uses ``lr·1/n_warmup`` (Hugging Face's schedule starts at 0, which
wastes the only step of a tiny warm-up set).

Each checkpoint ``checkpoint-{epoch}.safetensors`` holds the LoRA weights (``weight/<param>``) and
AdamW's moments (``exp_avg/<param>``, ``exp_avg_sq/<param>``); its metadata holds the epoch, the
optimizer steps so far, the mean learning rate of the epoch (LESS's checkpoint weight) and a
fingerprint of the settings and warm-up records. A re-run reuses the checkpoints, and an interrupted
warm-up resumes after its last saved epoch (data order and dropout are seeded per epoch).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from nncift.data.records import Record
from nncift.files.atomic import atomic_write
from nncift.files.errors import InputError, SettingsMismatch
from nncift.gradients.adam import AdamState
from nncift.gradients.batches import collate, encode_example, token_losses
from nncift.gradients.hooks import layer_shape, parameter_matrix
from nncift.settings.stages import RunContext

BETAS = (0.9, 0.999)
EPS = 1e-8
MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class Checkpoint:
    """One saved warm-up checkpoint."""

    epoch: int
    """1-based epoch after which it was saved."""
    path: Path
    """The safetensors file."""
    step: int
    """Optimizer steps taken so far."""
    mean_learning_rate: float
    """Mean learning rate over the epoch's steps (LESS weights checkpoints by it)."""


def add_lora(model: Any, settings: Any, *, seed: int) -> Any:
    """Wrap a causal LM with LoRA adapters (``peft``) on ``settings.lora_targets``; only they are trainable (``seed``: the run's)."""
    from peft import LoraConfig, get_peft_model

    targets = [name.strip() for name in settings.lora_targets.split(",") if name.strip()]
    config = LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha, lora_dropout=settings.lora_dropout,
                        target_modules=targets, bias="none")
    torch.manual_seed(seed)
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        raise InputError(f"LoRA targets {targets} do not fit this model ({error}); set --less.lora-targets") from None


def warmup_sample(n_pool: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted pool indices of the warm-up set: ``max(1, round(fraction·n))`` drawn with the seed."""
    if not 0 < fraction <= 1:
        raise InputError(f"warmup_fraction must be in (0, 1], got {fraction}")
    size = min(n_pool, max(1, int(round(fraction * n_pool))))
    return np.sort(np.random.default_rng([seed, 7]).choice(n_pool, size=size, replace=False)).astype(np.int64)


def learning_rate(step: int, total_steps: int, warmup_steps: int, base: float) -> float:
    """Linear warm-up over ``warmup_steps`` (step 0 gets ``base/warmup_steps``), then linear decay towards 0."""
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    return base * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def _fingerprint(settings: Any, run: RunContext, records: Sequence[Record]) -> str:
    keys = ("max_length", "lora_r", "lora_alpha", "lora_dropout", "lora_targets",
            "warmup_learning_rate", "warmup_epochs", "warmup_ratio", "warmup_batch_size")
    values = {"model": run.model, "dtype": run.dtype, "seed": run.seed, **{k: getattr(settings, k) for k in keys}}
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode())
    for record in records:
        digest.update(json.dumps([record.instruction, record.input, record.output]).encode())
    return digest.hexdigest()[:24]


def _read_checkpoint(path: Path, fingerprint: str) -> Checkpoint | None:
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
    if meta.get("fingerprint") != fingerprint:
        raise SettingsMismatch(f"{path}: warm-up checkpoint made with other settings or data; use a new run folder")
    return Checkpoint(int(meta["epoch"]), path, int(meta["step"]), float(meta["mean_learning_rate"]))


def _paths(folder: Path, settings: Any) -> list[Path]:
    return [folder / f"checkpoint-{epoch}.safetensors" for epoch in range(1, settings.warmup_epochs + 1)]


def saved_checkpoints(folder: Path, settings: Any, records: Sequence[Record], run: RunContext) -> list[Checkpoint]:
    """The consecutive checkpoints already saved in ``folder`` for these settings, records and run (epoch 1 first).

    Raises:
        SettingsMismatch: a checkpoint there was made with other settings or records.
    """
    fingerprint = _fingerprint(settings, run, records)
    saved = []
    for path in _paths(folder, settings):
        checkpoint = _read_checkpoint(path, fingerprint)
        if checkpoint is None:
            break
        saved.append(checkpoint)
    return saved


def _trainable(model: Any) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(model: Any, optimizer: torch.optim.Optimizer, path: Path, meta: dict[str, Any]) -> None:
    tensors = {}
    for name, param in _trainable(model).items():
        state = optimizer.state.get(param, {})
        tensors[f"weight/{name}"] = param.detach().cpu().contiguous()
        tensors[f"exp_avg/{name}"] = state.get("exp_avg", torch.zeros_like(param)).detach().cpu().contiguous()
        tensors[f"exp_avg_sq/{name}"] = state.get("exp_avg_sq", torch.zeros_like(param)).detach().cpu().contiguous()
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={k: str(v) for k, v in meta.items()}))


def _restore(model: Any, optimizer: torch.optim.Optimizer, checkpoint: Checkpoint) -> None:
    with safe_open(str(checkpoint.path), framework="pt") as handle:
        for name, param in _trainable(model).items():
            with torch.no_grad():
                param.copy_(handle.get_tensor(f"weight/{name}"))
            optimizer.state[param] = {"step": torch.tensor(float(checkpoint.step)),
                                      "exp_avg": handle.get_tensor(f"exp_avg/{name}").to(param.device),
                                      "exp_avg_sq": handle.get_tensor(f"exp_avg_sq/{name}").to(param.device)}


def run_warmup(model: Any, tokenizer: Any, records: Sequence[Record], settings: Any, folder: Path,
               *, run: RunContext, progress: bool = False, counters: Any = None) -> list[Checkpoint]:
    """Train the LoRA model on ``records`` for ``settings.warmup_epochs`` epochs; return every epoch's checkpoint.

    Checkpoints already in ``folder`` (same settings and records) are reused; training resumes
    after the last one. The model is left in eval mode with the last checkpoint's weights.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(settings, run, records)
    paths = _paths(folder, settings)
    saved = saved_checkpoints(folder, settings, records, run)
    if len(saved) == len(paths):
        model.eval()
        return saved
    encoded = [encode_example(tokenizer, record, settings.max_length) for record in records]
    steps_per_epoch = math.ceil(len(encoded) / settings.warmup_batch_size)
    total_steps = steps_per_epoch * settings.warmup_epochs
    warmup_steps = max(1, math.ceil(settings.warmup_ratio * total_steps))
    optimizer = torch.optim.AdamW(list(_trainable(model).values()), lr=settings.warmup_learning_rate,
                                  betas=BETAS, eps=EPS, weight_decay=0.0)
    if saved:
        _restore(model, optimizer, saved[-1])
    step = saved[-1].step if saved else 0
    bar = tqdm(total=total_steps, initial=step, desc="LESS warm-up", unit="step", disable=not progress)
    for epoch in range(len(saved), settings.warmup_epochs):
        model.train()
        torch.manual_seed(run.seed * 1000 + epoch)
        order = np.random.default_rng([run.seed, 11, epoch]).permutation(len(encoded))
        rates = []
        for start in range(0, len(order), settings.warmup_batch_size):
            rate = learning_rate(step, total_steps, warmup_steps, settings.warmup_learning_rate)
            _optimizer_step(model, optimizer, [encoded[i] for i in order[start : start + settings.warmup_batch_size]],
                            tokenizer.pad_token_id, settings.gradient_batch_size, rate, counters)
            rates.append(rate)
            step += 1
            bar.update(1)
        meta = {"epoch": epoch + 1, "step": step, "mean_learning_rate": float(np.mean(rates)), "fingerprint": fingerprint,
                "beta1": BETAS[0], "beta2": BETAS[1], "eps": EPS}
        _save_checkpoint(model, optimizer, paths[epoch], meta)
        saved.append(Checkpoint(epoch + 1, paths[epoch], step, float(np.mean(rates))))
    bar.close()
    model.eval()
    return saved


def _optimizer_step(model: Any, optimizer: torch.optim.Optimizer, batch: Sequence[Any], pad_token_id: int,
                    micro_batch: int, rate: float, counters: Any) -> None:
    """One AdamW step on ``batch`` (micro-batches accumulated); loss = mean over all its response tokens."""
    n_tokens = sum(len(e.input_ids) - max(e.prompt_length, 1) for e in batch)
    optimizer.zero_grad(set_to_none=True)
    for start in range(0, len(batch), micro_batch):
        part = collate(batch[start : start + micro_batch], pad_token_id)
        losses, mask = token_losses(model, part)
        ((losses * mask).sum() / max(n_tokens, 1)).backward()
        if counters is not None:
            counters["warmup_forward_backward_passes"] += part["input_ids"].shape[0]
            counters["warmup_tokens"] += int(part["attention_mask"].sum())
    torch.nn.utils.clip_grad_norm_(list(_trainable(model).values()), MAX_GRAD_NORM)
    for group in optimizer.param_groups:
        group["lr"] = rate
    optimizer.step()


def load_checkpoint(model: Any, layers: Sequence[tuple[str, torch.nn.Module]], checkpoint: Checkpoint) -> AdamState:
    """Put a checkpoint's LoRA weights into ``model``; return its Adam moments in the layers' orientation."""
    params = _trainable(model)
    exp_avg: list[Any] = []
    exp_avg_sq: list[Any] = []
    with safe_open(str(checkpoint.path), framework="pt") as handle:
        meta = handle.metadata() or {}
        for name, param in params.items():
            with torch.no_grad():
                param.copy_(handle.get_tensor(f"weight/{name}"))
        for name, module in layers:
            shape = layer_shape(name, module)
            bias_key = f"{name}.bias" if shape.has_bias else None
            for moments, key in ((exp_avg, "exp_avg"), (exp_avg_sq, "exp_avg_sq")):
                weight = handle.get_tensor(f"{key}/{name}.weight")
                bias = handle.get_tensor(f"{key}/{bias_key}") if bias_key else None
                moments.append(parameter_matrix(shape, weight, bias).flatten())
    return AdamState(exp_avg, exp_avg_sq, step=int(meta["step"]), beta1=float(meta["beta1"]),
                     beta2=float(meta["beta2"]), eps=float(meta["eps"]))


def checkpoint_weights(checkpoints: Sequence[Checkpoint]) -> np.ndarray:
    """LESS checkpoint weights: each checkpoint's mean learning rate, normalised to sum 1."""
    rates = np.asarray([c.mean_learning_rate for c in checkpoints], dtype=np.float64)
    if rates.sum() <= 0:
        raise InputError("every warm-up checkpoint has learning rate 0")
    return rates / rates.sum()
