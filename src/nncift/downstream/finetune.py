"""LoRA fine-tuning on a subset (docs/methods.md §6), on TRL's ``SFTTrainer`` (:mod:`nncift.downstream.sft`).

Each record becomes ``prompt tokens + response tokens + EOS``. The prompt is the tokenizer's chat
template applied to :func:`nncift.data.templates.chat_messages` with the generation cue (when the
tokenizer has a template), else :func:`nncift.data.templates.plain_prompt`. Labels are ``-100`` on the
prompt and on padding, and equal the token ids on the response and its EOS (teacher forcing): the
loss is the mean cross-entropy over response tokens only (one reference copy never trained on the
response; this is tested). Labels are set by position, never by token id, because the padding token
is often the EOS token. The records reach the trainer tokenised, so the template is applied once.

Long records are cut to ``max_length`` tokens: the response keeps at least half of the room (cut at
its end), the prompt is cut at its start so that its end, the generation cue, is kept. The number of
truncated records is reported.

The output folder holds the adapter (``adapter_model.safetensors`` + ``adapter_config.json``, peft's
``save_pretrained``), ``finetune.json`` (settings, versions, data hash, losses, time; written last: a
folder with it is finished and returned as it is), the loss curve (``loss.jsonl``, ``loss.png``) and,
while training, ``checkpoints/checkpoint-STEP`` (safetensors and JSON only): the same command run again
after a kill resumes from the last one. The encoding helpers here also serve evaluation and ICL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nncift.data import templates
from nncift.data.records import Record, read_many
from nncift.files.errors import InputError
from nncift.models.loading import ModelError
from nncift.run.store import RunStore
from nncift.settings.choices import PRECISIONS
from nncift.settings.fields import SettingsError, environment_info, setting, settings_dict
from nncift.settings.flags import add_arguments
from nncift.settings.sources import settings_from_args
from nncift.settings.stages import ModelContext, Progress

IGNORE_INDEX = -100
"""Label of positions that do not count in the loss (prompt, padding)."""


@dataclass(frozen=True)
class FinetuneSettings(Progress, ModelContext):
    """Settings of ``nncift finetune`` (defaults: docs/methods.md §6)."""

    lora_r: int = setting(8, at_least=1)
    """LoRA rank r."""
    lora_alpha: int = setting(16, at_least=1)
    """LoRA scaling α."""
    lora_dropout: float = setting(0.05, at_least=0, at_most=1)
    """Dropout on the LoRA branch."""
    target_modules: tuple[str, ...] = ("all-linear",)
    """Modules that get LoRA adapters: all-linear (every linear layer but the output head) or module names."""
    learning_rate: float = setting(2e-4, above=0)
    """AdamW peak learning rate (linear decay to 0 after the warm-up)."""
    warmup_ratio: float = setting(0.0, at_least=0, at_most=1)
    """Share of the steps with a linear learning-rate warm-up."""
    weight_decay: float = setting(0.0, at_least=0)
    """AdamW weight decay."""
    epochs: int = setting(3, at_least=1, why=" (at least 1 pass over the data)")
    """Passes over the data."""
    batch_size: int = setting(8, at_least=1)
    """Records per optimiser step."""
    gradient_accumulation: int = setting(1, at_least=1)
    """Micro-batches per optimiser step: each step's batch_size records are split in this many (less memory, the same
    update); batch_size must be a multiple of it."""
    max_length: int = setting(256, at_least=1)
    """Maximum tokens per record (prompt + response + EOS); longer records are cut. With packing: tokens per packed row."""
    chat_template: bool = True
    """Use the tokenizer's chat template when it has one (else the plain prompt template)."""
    precision: str = setting("auto", choices=PRECISIONS)
    """Training precision: auto (bf16 on a CUDA device that supports it, else fp32), fp32, bf16 or fp16 (mixed
    precision, CUDA only: refused on the CPU)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them (less memory, about a third more time)."""
    packing: bool = False
    """Pack several records into each row of max_length tokens (TRL's best-fit packing; no padding, no attention across
    records)."""
    checkpoint_steps: int = setting(50, at_least=0)
    """Optimiser steps between checkpoints (out/checkpoints; the same command resumes from the last one after a kill);
    0 = none. Does not change the result."""
    seed: int = setting(0, at_least=0)
    """Seed for LoRA initialisation, dropout and the data order."""

    def __post_init__(self) -> None:
        """Check every field, then that the batch splits evenly into micro-batches."""
        super().__post_init__()
        if self.batch_size % self.gradient_accumulation:
            raise SettingsError("gradient_accumulation", f"batch_size {self.batch_size} is not a multiple of {self.gradient_accumulation} "
                                "(each optimiser step's records are split evenly in micro-batches)")


@dataclass
class EncodedExample:
    """One tokenised record: ``input_ids`` and ``labels`` of equal length (prompt labels = -100)."""

    input_ids: list[int]
    labels: list[int]
    prompt_length: int
    truncated: bool


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns (also written to ``out/finetune.json``)."""

    adapter_dir: Path
    losses: list[float]
    seconds: float
    n_records: int
    n_truncated: int
    n_tokens: int
    summary: dict[str, Any] = field(default_factory=dict)


def uses_chat_template(tokenizer: Any, want_chat: bool = True) -> bool:
    """True when the chat template is wanted and the tokenizer has one."""
    return bool(want_chat and getattr(tokenizer, "chat_template", None))


def prompt_ids(tokenizer: Any, record: Record, *, chat: bool) -> list[int]:
    """Token ids of the prompt of ``record`` (chat template with generation cue, or the plain prompt)."""
    if chat:
        text = tokenizer.apply_chat_template(templates.chat_messages(record), add_generation_prompt=True, tokenize=False)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(templates.plain_prompt(record), add_special_tokens=True)["input_ids"])


def encode_example(tokenizer: Any, record: Record, max_length: int, *, chat: bool) -> EncodedExample:
    """Tokenise one record for teacher-forced training: labels -100 on the prompt, ids on response + EOS."""
    if tokenizer.eos_token_id is None:
        raise ModelError("the tokenizer has no EOS token: cannot mark the end of a response")
    prompt = prompt_ids(tokenizer, record, chat=chat)
    response = list(tokenizer(record.output, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    truncated = len(prompt) + len(response) > max_length
    if truncated:
        response = response[: max_length - min(len(prompt), max_length // 2)]
        prompt = prompt[len(prompt) - (max_length - len(response)):]
    return EncodedExample(prompt + response, [IGNORE_INDEX] * len(prompt) + response, len(prompt), truncated)


def collate(examples: Sequence[EncodedExample], pad_id: int) -> dict[str, Any]:
    """Right-padded batch: ``input_ids``, ``attention_mask``, ``labels`` (-100 on padding), each (batch, length)."""
    import torch

    length = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def response_loss(model: Any, batch: dict[str, Any], *, reduction: str = "mean", fast_head: bool = True) -> Any:
    """Cross-entropy of the labelled (response) tokens, each predicted from the position before it.

    With ``fast_head`` only the final hidden states of positions whose next label is not -100 go
    through the output head (the prompt's logits are never formed, which saves the head's cost on
    prompt tokens); :func:`fast_head_matches` checks that a model allows it.

    Args:
        model: a causal LM (optionally wrapped by peft).
        batch: ``input_ids``, ``attention_mask``, ``labels`` of shape (batch, length).
        reduction: ``mean`` (over all labelled tokens of the batch), ``sum``, or ``none``
            (a (batch,) tensor of per-record sums).
        fast_head: apply the output head to the labelled positions only.

    Returns:
        The loss tensor (with gradient when the model trains).
    """
    import torch

    device = next(model.parameters()).device
    input_ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
    targets = labels[:, 1:]  # position t predicts token t + 1
    keep = targets != IGNORE_INDEX
    mask = batch["attention_mask"].to(device)
    if fast_head:
        outputs = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True, logits_to_keep=1, use_cache=False)
        logits = model.get_output_embeddings()(outputs.hidden_states[-1][:, :-1][keep]).float()
    else:
        logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits[:, :-1][keep].float()
    per_token = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="none")
    if reduction == "mean":
        return per_token.sum() / keep.sum().clamp(min=1)
    if reduction == "sum":
        return per_token.sum()
    rows = keep.nonzero()[:, 0]
    return torch.zeros(len(labels), dtype=per_token.dtype, device=device).index_add(0, rows, per_token)


def fast_head_matches(model: Any, batch: dict[str, Any]) -> bool:
    """True when the fast output-head path gives the same loss as full logits for ``model`` (eval mode)."""
    import torch

    training = model.training
    model.eval()
    with torch.no_grad():
        fast, full = response_loss(model, batch), response_loss(model, batch, fast_head=False)
    model.train(training)
    return bool(torch.allclose(fast, full, rtol=1e-4, atol=1e-5))


def records_digest(records: Sequence[Record]) -> str:
    """SHA-256 of the records' text (what the adapter was trained on)."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps([record.instruction, record.input, record.output]).encode("utf-8"))
    return digest.hexdigest()


RUNTIME_SETTINGS = frozenset({"checkpoint_steps"})
"""Settings that do not change the adapter: a run may resume with other values."""
ADDED_SETTINGS: dict[str, object] = {"gradient_accumulation": 1, "precision": "auto", "gradient_checkpointing": False, "packing": False}
"""Settings newer than some fine-tuning folders, at the values those folders trained with (a folder without them resumes)."""


def resolve_precision(precision: str, device: str) -> str:
    """The training precision ``fp32``, ``bf16`` or ``fp16`` of setting ``precision`` on ``device`` (a resolved device name).

    ``auto`` is bf16 on a CUDA device that supports it, else fp32. bf16 and fp16 are refused on the CPU (mixed
    precision is for GPUs: on a CPU it is slower than fp32, or unsupported) and bf16 on a GPU without it, with
    :class:`~nncift.settings.fields.SettingsError`, before anything is loaded.
    """
    import torch

    on_cuda = device.startswith("cuda")
    bf16 = on_cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return "bf16" if bf16 else "fp32"
    if precision in ("bf16", "fp16") and not on_cuda:
        raise SettingsError("precision", f"{precision} mixed precision needs a CUDA device, and this run is on the {device}: use auto or fp32")
    if precision == "bf16" and not bf16:
        raise SettingsError("precision", "bf16 is not supported by this CUDA device: use fp16 or fp32")
    return precision


def finetune(records: Sequence[Record], settings: FinetuneSettings, out: str | Path, *, callbacks: Sequence[Any] = ()) -> FinetuneResult:
    """Fine-tune ``settings.model`` with LoRA on ``records`` (TRL's ``SFTTrainer``) and save the adapter in ``out``.

    Every setting is checked before the model is loaded. A folder with ``finetune.json`` is finished and returned as it
    is; a folder with a checkpoint (a run that was killed) is resumed from it.

    Args:
        records: the training records (a selected subset).
        settings: the fine-tuning settings.
        out: folder for ``adapter_model.safetensors``, ``adapter_config.json``, ``finetune.json`` and the loss curve
            (a folder made with other settings or other records is refused).
        callbacks: extra ``transformers.TrainerCallback`` objects.

    Returns:
        The adapter folder, per-step losses, time and token counts.
    """
    from nncift.models.loading import pick_device

    if not records:
        raise InputError("no records to fine-tune on")
    device = pick_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    digest = records_digest(records)
    kept = {key: value for key, value in settings_dict(settings).items() if key not in RUNTIME_SETTINGS}
    with RunStore(out, {**kept, "data_sha256": digest, "command": "finetune"}, added=ADDED_SETTINGS) as store:
        finished = _finished(store.folder)
        if finished is not None:
            return finished
        return _train_and_save(records, settings, store, device=device, precision=precision, callbacks=callbacks)


def _finished(folder: Path) -> FinetuneResult | None:
    """The result stored in a finished folder (``finetune.json`` beside the adapter), else None."""
    if not ((folder / "finetune.json").is_file() and (folder / "adapter_model.safetensors").is_file()):
        return None
    summary = json.loads((folder / "finetune.json").read_text(encoding="utf-8"))
    return FinetuneResult(folder, summary["losses"], summary["seconds"], summary["records"], summary["truncated"], summary["tokens_seen"], summary)


def _train_and_save(records: Sequence[Record], settings: FinetuneSettings, store: RunStore, *, device: str, precision: str,
                    callbacks: Sequence[Any]) -> FinetuneResult:
    """Load the model, encode the records, train (or resume), then write the adapter, the curve and ``finetune.json``."""
    import shutil

    import torch

    from nncift.downstream import sft
    from nncift.models.loading import load_causal_lm

    torch.manual_seed(settings.seed)
    model, tokenizer = load_causal_lm(settings.model, device=device, dtype=settings.dtype, trust_remote_code=settings.trust_remote_code)
    chat = uses_chat_template(tokenizer, settings.chat_template)
    examples = [encode_example(tokenizer, record, settings.max_length, chat=chat) for record in records]
    response_head = device == "cpu" and fast_head_matches(model, collate(examples[:2], tokenizer.pad_token_id))
    resumed = sft.last_checkpoint(store.folder / "checkpoints")
    model, losses, seconds = sft.train(model, tokenizer, examples, settings, store.folder, device=device, precision=precision,
                                       response_head=response_head, callbacks=callbacks)
    model.save_pretrained(store.folder, safe_serialization=True)
    sft.plot_loss_curve(store.folder / "loss.jsonl", store.folder / "loss.png")
    n_tokens = sum(len(e.input_ids) for e in examples) * settings.epochs
    environment = environment_info()
    environment["packages"].update(sft.trainer_versions())
    summary = {
        "settings": settings_dict(settings), "environment": environment, "data_sha256": records_digest(records),
        "records": len(records), "truncated": sum(e.truncated for e in examples), "prompt_format": "chat template" if chat else "plain",
        "trainer": "trl.SFTTrainer", "device": device, "precision": precision,
        "loss_head": "labelled positions only" if response_head else "TRL's fused head",
        "resumed_from": resumed.name if resumed else None,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "tokens_seen": n_tokens, "response_tokens_per_epoch": sum(len(e.input_ids) - e.prompt_length for e in examples),
        "seconds": round(seconds, 3), "losses": [round(x, 6) for x in losses],
    }
    store.write_json("finetune.json", summary)
    shutil.rmtree(store.folder / "checkpoints", ignore_errors=True)  # finished: the adapter is the result
    return FinetuneResult(store.folder, losses, seconds, len(records), summary["truncated"], n_tokens, summary)


def register_cli(subparsers: Any) -> None:
    """Add ``nncift finetune`` to the command line."""
    parser = subparsers.add_parser("finetune", help="LoRA fine-tuning on a subset (labels on the response only)")
    parser.add_argument("--data", required=True, action="append", help="training records (a run's selected.jsonl works); repeatable")
    parser.add_argument("--out", required=True, help="folder for the adapter")
    parser.add_argument("--config", help="YAML file with fine-tuning settings (flags override it)")
    add_arguments(parser, FinetuneSettings)
    parser.set_defaults(handler=_cmd_finetune)


def _cmd_finetune(args: argparse.Namespace) -> int:
    from nncift.models.loading import pick_device
    from nncift.steps.preflight import check_device, check_model

    settings = settings_from_args(FinetuneSettings, args)  # the defaults, the YAML file, then the flags
    check_device(settings.device)
    resolve_precision(settings.precision, pick_device(settings.device))  # refused before the data and the model are read
    check_model(settings.model, "--model")
    records, _ = read_many(args.data)
    result = finetune(records, settings, args.out)
    first, last = result.losses[0], float(np.mean(result.losses[-max(1, len(result.losses) // 10):]))
    print(f"fine-tuned on {result.n_records} records ({result.n_truncated} truncated) in {result.seconds:.1f} s; "
          f"loss {first:.4f} -> {last:.4f}")
    print(f"adapter in {result.adapter_dir}")
    return 0
