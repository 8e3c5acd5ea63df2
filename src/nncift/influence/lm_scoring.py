"""Teacher-forced token probabilities from a causal LM, with an optional shared key/value prefix.

:class:`CausalScorer` runs right-padded batches (planned by
:func:`nncift.influence.token_batches.plan_token_batches`) through a Hugging Face causal LM and
returns, for the last ``n_scored`` tokens of every sequence, the probability the model gave to that
token when predicting it from the position before (the logit shift:
``p_t = softmax(logits[t - 1])[token_t]``). It computes the output layer only at those positions,
and it can run a batch of continuations after a shared prefix whose key/value cache was computed
once (:meth:`CausalScorer.prefix_state`).

Right padding keeps the positions of every row contiguous (``0..n-1``, or ``P..P+n-1`` after a
prefix of length ``P``), so a padded row computes what it computes alone (up to floating-point
round-off); padded positions are masked out of attention and never read.
"""

from __future__ import annotations

import copy
import inspect
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from nncift.influence.token_batches import plan_token_batches, right_padded
from nncift.models.loading import ModelError

HEAD_MODES = ("masked", "full")
"""``masked``: the output layer runs only at the positions that predict scored tokens (through the
model's own ``logits_to_keep``); ``full``: logits at every position, then selected (the plain way)."""


def plan_batches(lengths: Sequence[int], token_budget: int, max_padding_share: float = 0.1) -> list[np.ndarray]:
    """Token-budget batches (sorted by length) cut further so that padding stays a small share.

    :func:`~nncift.influence.token_batches.plan_token_batches` fills each batch up to the budget;
    where lengths spread, most of a full batch can be padding, which costs as much as real tokens.
    Each of its batches (longest first) is cut where one more sequence would make padding more
    than ``max_padding_share`` of the batch's padded size.

    Returns:
        Index arrays into ``lengths``; every index appears once.
    """
    sizes = np.asarray(lengths, dtype=np.int64)
    batches: list[np.ndarray] = []
    for batch in plan_token_batches(sizes.tolist(), token_budget):
        start, real = 0, 0
        for position, index in enumerate(batch):
            longest, count = int(sizes[batch[start]]), position - start + 1
            if count > 1 and count * longest - (real + sizes[index]) > max_padding_share * count * longest:
                batches.append(batch[start:position])
                start, real = position, 0
            real += int(sizes[index])
        batches.append(batch[start:])
    return batches


def rms_distance(probabilities: np.ndarray) -> float:
    """``sqrt(mean((1 - p)²))`` over one sequence's scored tokens (DELIFT's distance)."""
    p = np.asarray(probabilities, dtype=np.float64)
    return float(np.sqrt(np.mean((1.0 - p) ** 2)))


@dataclass
class PrefixState:
    """The key/value cache of one prefix (batch of 1) and its length in tokens."""

    cache: Any
    length: int


class CausalScorer:
    """Token probabilities of scored tokens for batches of sequences, with an optional shared prefix.

    Args:
        model: a Hugging Face causal LM in eval mode.
        pad_token_id: id written into padded positions (never attended to, never scored).
        counters: a Counter to add costs to: ``model_calls``, ``tokens`` (real tokens run through
            the model), ``padding_tokens``, ``output_positions`` (positions where the output layer
            ran).
        head: ``auto`` (``masked`` when the model supports it and agrees with ``full``), ``masked``
            or ``full``.
    """

    def __init__(self, model: Any, pad_token_id: int, counters: Counter | None = None, *, head: str = "auto"):
        self.model = model
        self.pad_token_id = int(pad_token_id)
        self.counters: Counter = counters if counters is not None else Counter()
        self.device = next(model.parameters()).device
        parameters = inspect.signature(model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self._has_logits_to_keep = "logits_to_keep" in parameters
        if head == "auto":
            head = "masked" if self._has_logits_to_keep and self._masked_head_agrees() else "full"
        if head not in HEAD_MODES:
            raise ValueError(f"head must be auto, masked or full, got {head!r}")
        if head == "masked" and not self._has_logits_to_keep:
            raise ValueError(f"{type(model).__name__} has no logits_to_keep: use head='full'")
        self.head = head

    @torch.inference_mode()
    def prefix_state(self, prefix: Sequence[int]) -> PrefixState:
        """Run ``prefix`` once (batch 1) and keep its key/value cache for :meth:`probabilities`."""
        ids = torch.as_tensor([list(prefix)], dtype=torch.long, device=self.device)
        extra = {"logits_to_keep": 1} if self._has_logits_to_keep else {}
        output = self.model(input_ids=ids, use_cache=True, **extra)
        cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
        if cache is None:
            raise ModelError(f"{type(self.model).__name__} returned no key/value cache; use prefix_reuse=False")
        self.counters["model_calls"] += 1
        self.counters["prefix_passes"] += 1
        self.counters["tokens"] += len(prefix)
        return PrefixState(cache, len(prefix))

    def probabilities(
        self, sequences: Sequence[Sequence[int]], n_scored: Sequence[int], *, prefix: PrefixState | None = None,
    ) -> list[np.ndarray]:
        """``exp`` of :meth:`log_probabilities`: the probabilities ``p_t`` of the scored tokens."""
        return [np.exp(values) for values in self.log_probabilities(sequences, n_scored, prefix=prefix)]

    @torch.inference_mode()
    def log_probabilities(
        self, sequences: Sequence[Sequence[int]], n_scored: Sequence[int], *, prefix: PrefixState | None = None,
    ) -> list[np.ndarray]:
        """Log-probabilities of the last ``n_scored[k]`` tokens of ``sequences[k]``, one forward pass.

        Token ``t`` is scored with the distribution predicted at position ``t - 1`` (the logit
        shift). With ``prefix``, every sequence is a continuation of that prefix: its first token
        follows the prefix's last one, and the prefix's cache is shared by the whole batch.

        Args:
            sequences: token ids, one list per sequence (after the prefix, if any).
            n_scored: how many trailing tokens of each sequence are scored; at least 1, and fewer
                than the sequence's length (the first token has no prediction inside the batch).
            prefix: a shared prefix from :meth:`prefix_state`.

        Returns:
            One float64 array of length ``n_scored[k]`` per sequence, in order.
        """
        lengths = [len(s) for s in sequences]
        if any(not 1 <= n < length for n, length in zip(n_scored, lengths)):
            raise ValueError("every sequence needs 1 ≤ n_scored < its length")
        ids, mask = (torch.from_numpy(a) for a in right_padded(sequences, self.pad_token_id))
        scored = torch.zeros_like(mask, dtype=torch.bool)
        for row, (n, length) in enumerate(zip(n_scored, lengths)):
            scored[row, length - n : length] = True
        predicting = torch.zeros_like(scored)
        predicting[:, :-1] = scored[:, 1:]
        offset = prefix.length if prefix is not None else 0
        positions = (torch.arange(ids.shape[1]) + offset).unsqueeze(0).expand_as(ids)
        kwargs: dict[str, Any] = {"use_cache": prefix is not None}
        if prefix is not None:
            cache = copy.deepcopy(prefix.cache)
            cache.batch_repeat_interleave(len(sequences))
            kwargs[self._cache_argument] = cache
            mask = torch.cat([torch.ones((len(sequences), prefix.length), dtype=torch.long), mask], dim=1)
        if self.head == "masked":
            kwargs["logits_to_keep"] = predicting.to(self.device)
        output = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=positions.to(self.device), **kwargs)
        logits = output.logits if self.head == "masked" else output.logits[predicting.to(self.device)]
        targets = ids[scored].to(self.device)
        logits = logits.float()
        log_p = logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        values = log_p.double().cpu().numpy()
        self.counters["model_calls"] += 1
        self.counters["tokens"] += int(sum(lengths))
        self.counters["padding_tokens"] += int(ids.numel() - sum(lengths))
        self.counters["output_positions"] += int(predicting.sum()) if self.head == "masked" else int(ids.numel())
        return np.split(values, np.cumsum(n_scored)[:-1])

    def _masked_head_agrees(self) -> bool:
        """True when ``logits_to_keep`` with a boolean mask gives the log-probabilities of full logits."""
        sequences, n_scored = [[11, 12, 13, 14, 15], [16, 17, 18]], [3, 2]
        saved, self.counters = self.counters, Counter()
        try:
            self.head = "masked"
            masked = np.concatenate(self.log_probabilities(sequences, n_scored))
            self.head = "full"
            full = np.concatenate(self.log_probabilities(sequences, n_scored))
        except (TypeError, ValueError, RuntimeError, IndexError):
            return False
        finally:
            self.counters = saved
        tolerance = 1e-4 if next(self.model.parameters()).dtype == torch.float32 else 5e-2
        return bool(np.allclose(masked, full, atol=tolerance, rtol=0.0))
