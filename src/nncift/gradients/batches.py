"""Token batches with the loss on response tokens only, and the per-example loss.

Text of an example: the prompt (the tokenizer's chat template with the user turn of
:func:`nncift.data.templates.chat_messages` and a generation prompt when the tokenizer has a chat template,
else :func:`nncift.data.templates.plain_prompt`) followed by the response ``record.output`` and EOS.
Labels are -100 on prompt and padding tokens.

**Per-example loss** (what every per-example gradient in nncift differentiates): for example ``b``
with response token positions ``R_b`` (labels ≠ -100, ``n_b = |R_b| ≥ 1``)::

    loss_b = (1 / n_b) · Σ_{t ∈ R_b} −log p(token_t | tokens_<t)

the mean token cross-entropy over that example's response, as the LESS reference gets with batches
of one. A batched backward pass of ``Σ_b loss_b`` gives every example its own gradient.

Truncation to ``max_length`` tokens: the response keeps ``max(max_length − prompt, max_length // 2)``
of its first tokens, and the prompt keeps its *last* tokens (the end of the query, next to the
answer); the number of truncated examples is counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from nncift.data.records import Record
from nncift.data.templates import chat_messages, plain_prompt

IGNORE = -100


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one example and how many of them are prompt."""

    input_ids: tuple[int, ...]
    prompt_length: int
    truncated: bool


def prompt_text(tokenizer: Any, record: Record) -> str:
    """The prompt of a record for this tokenizer (chat template when it has one)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(chat_messages(record), tokenize=False, add_generation_prompt=True)
    return plain_prompt(record)


def encode_example(tokenizer: Any, record: Record, max_length: int) -> EncodedExample:
    """Prompt + response + EOS token ids, truncated to ``max_length`` (see the module docstring)."""
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    prompt = tokenizer(prompt_text(tokenizer, record), add_special_tokens=not has_template)["input_ids"]
    response = tokenizer(record.output, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    truncated = len(prompt) + len(response) > max_length
    if truncated:
        response = response[: max(max_length - len(prompt), max_length // 2)]
        prompt = prompt[len(prompt) - (max_length - len(response)) :] if max_length > len(response) else []
    return EncodedExample(tuple(prompt) + tuple(response), len(prompt), truncated)


def collate(examples: Sequence[EncodedExample], pad_token_id: int) -> dict[str, Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on prompt and padding), each ``(B, T)``."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, example in enumerate(examples):
        ids = torch.tensor(example.input_ids, dtype=torch.long)
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
        labels[row, example.prompt_length : len(ids)] = ids[example.prompt_length :]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def token_losses(model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Cross-entropy of every predicted response token and its mask, both ``(B, P)``.

    Logits are computed only at the positions that predict a response token of some example of
    the batch (``logits_to_keep``), which saves the LM head on long prompts.
    """
    labels = batch["labels"]
    targets_at = (labels[:, 1:] != IGNORE).any(dim=0).nonzero().squeeze(1)
    if targets_at.numel() == 0:
        raise ValueError("no response token in the batch")
    device = model_device(model)
    output = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                   logits_to_keep=targets_at.to(device), use_cache=False)
    logits = output.logits.float()
    targets = labels[:, targets_at + 1].to(device)
    losses = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="none")
    return losses.view(targets.shape), targets != IGNORE


def model_device(model: Any) -> torch.device:
    """Device of the model's first parameter (CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def per_example_losses(model: Any, batch: dict[str, Tensor]) -> Tensor:
    """``loss_b`` of every example, ``(B,)``: mean cross-entropy over its response tokens."""
    losses, mask = token_losses(model, batch)
    return (losses * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
