"""The influence model's own representation as the network's input: mean-pooled hidden states of a causal LM.

``--embedder lm:MODEL`` (``lm:smollm2-135m-instruct`` for the bundled model, or any causal LM id or
path) embeds each record by one forward pass of ``MODEL``: the last layer's hidden states averaged
over the record's tokens (at most :data:`MAX_TOKENS`), L2-normalised. Gradient-based influence (LESS)
and in-context utility (DELIFT) are computed from the same model, so its representation can carry what
a sentence embedder does not; it costs one forward pass per record, cached like any embedding.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["LM_PREFIX", "MAX_TOKENS", "CausalLMEncoder", "lm_of"]

LM_PREFIX = "lm:"
"""Embedder names that start with this are a causal LM's mean-pooled hidden states."""
MAX_TOKENS = 256
"""Tokens per record read by the LM encoder (the rest is cut)."""


def lm_of(embedder: str) -> str | None:
    """The causal LM named by an ``lm:MODEL`` embedder, else None."""
    return embedder[len(LM_PREFIX):] if embedder.startswith(LM_PREFIX) else None


class CausalLMEncoder:
    """Mean-pooled last hidden states of a causal LM, with sentence-transformers' ``encode`` interface."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    def encode(self, texts: Sequence[str], *, batch_size: int = 16, normalize_embeddings: bool = True, **_: Any) -> np.ndarray:
        """float32 (len(texts), hidden size), one forward pass per batch (texts sorted by length to pad little)."""
        import torch

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        device = next(self.model.parameters()).device
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            batch = self.tokenizer([texts[i] for i in index], return_tensors="pt", padding=True, truncation=True, max_length=MAX_TOKENS)
            batch = {key: value.to(device) for key, value in batch.items()}
            with torch.no_grad():
                hidden = self.model(**batch, output_hidden_states=True).hidden_states[-1].float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).cpu().numpy()
            out[index] = pooled
        if normalize_embeddings:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
