"""Batches packed by a token budget, and right-padded causal-LM inputs (shared by LM-based functions).

A batch's cost is its *padded* size: ``number of sequences × longest sequence``. Sequences are
sorted longest first (ties by position, so the plan is deterministic) and packed greedily while the
padded size stays within the budget; a sequence longer than the budget runs alone. Sorting by length
keeps padding small, and running the longest batch first makes an out-of-memory error show at once.

Right padding keeps a causal LM's values at the real positions exactly those of the unpadded
sequence: a real token never attends to a later (padding) position, and position ids start at 0 in
every row. Scores read at each row's last real position therefore do not depend on the batch.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def plan_token_batches(lengths: Sequence[int], token_budget: int) -> list[np.ndarray]:
    """Group sequence positions into batches whose padded size stays within ``token_budget``.

    Args:
        lengths: ``(n,)`` token counts of the sequences.
        token_budget: the most padded tokens (rows × longest row) per batch; must be ≥ 1.

    Returns:
        A list of int64 arrays of positions into ``lengths``, longest sequences first; every position
        appears exactly once. A sequence longer than the budget forms a batch of its own.
    """
    if token_budget < 1:
        raise ValueError(f"token_budget must be at least 1, got {token_budget}")
    sizes = np.asarray(lengths, dtype=np.int64).reshape(-1)
    order = np.lexsort((np.arange(sizes.size), -sizes))  # longest first, ties by position
    batches: list[np.ndarray] = []
    current: list[int] = []
    longest = 0
    for position in order:
        length = int(sizes[position])
        if current and (len(current) + 1) * max(longest, length) > token_budget:
            batches.append(np.asarray(current, dtype=np.int64))
            current, longest = [], 0
        current.append(int(position))
        longest = max(longest, length)
    if current:
        batches.append(np.asarray(current, dtype=np.int64))
    return batches


def right_padded(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)``, int64 arrays of shape ``(len(sequences), longest)``, padded on the right."""
    if not sequences:
        raise ValueError("no sequences to pad")
    width = max(len(sequence) for sequence in sequences)
    input_ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = sequence
        attention_mask[row, : len(sequence)] = 1
    return input_ids, attention_mask


def shorten_middle(token_ids: Sequence[int], max_length: int) -> list[int]:
    """Keep the first ``max_length // 2`` and the last ``max_length - max_length // 2`` tokens.

    For prompts whose start (an instruction to the model) and end (the cue it answers) both matter.
    Sequences within ``max_length`` (or ``max_length`` ≤ 0: no limit) are returned unchanged.
    """
    ids = list(token_ids)
    if max_length <= 0 or len(ids) <= max_length:
        return ids
    head = max_length // 2
    return ids[:head] + ids[len(ids) - (max_length - head) :]
