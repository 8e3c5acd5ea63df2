"""Training many two-tower networks at once: their parameters stacked, full batch, AdamW written out.

The record-fold validation of :mod:`nncift.network.fitting` trains one network per fold and grid point on
the same labelled block; stacking them makes that one batched computation per step. No parameter is
shared between the stacked networks, so each gets exactly its own gradient and update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from nncift.network.towers import TwoTowerNetwork

__all__ = ["PairBlock", "batched_block", "step_sub_block", "train_stacked"]


@dataclass
class PairBlock:
    """A labelled block prepared for training: embeddings, cosines, standardised labels (NaN → 0), masks."""

    rows: torch.Tensor
    cols: torch.Tensor
    cos: np.ndarray
    labels: np.ndarray  # standardised, NaN → 0
    mask: np.ndarray  # labelled
    self_cols: np.ndarray | None
    self_mask: np.ndarray


def batched_block(params: dict[str, torch.Tensor], rows: torch.Tensor, cols: torch.Tensor, cos: torch.Tensor,
                   self_index: tuple[torch.Tensor, torch.Tensor] | None, rank: int) -> torch.Tensor:
    """(B, R, C) standardised predictions of B stacked two-tower networks (as :meth:`TwoTowerNetwork.standardised_block`)."""
    def tower(prefix: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(torch.einsum("nd,bhd->bnh", x, params[prefix + "hidden.weight"]) + params[prefix + "hidden.bias"][:, None, :])
        out = torch.einsum("bnh,bkh->bnk", hidden, params[prefix + "out.weight"]) + params[prefix + "out.bias"][:, None, :]
        offset = torch.einsum("bnh,bh->bn", hidden, params[prefix + "offset.weight"][:, 0, :]) + params[prefix + "offset.bias"]
        return out, offset

    f, r = tower("row_tower.", rows)
    g, c = tower("col_tower.", cols)
    out = (params["alpha"][:, None, None] * cos + torch.bmm(f, g.transpose(1, 2)) / math.sqrt(rank)
           + r[:, :, None] + c[:, None, :] + params["beta"][:, None, None])
    if self_index is not None:
        own_rows, own_cols = self_index
        term = params["self_bias"][:, None] + torch.einsum("nd,bd->bn", rows[own_rows], params["self_weight"])
        batch = torch.arange(out.shape[0])[:, None]
        out = out.index_put((batch, own_rows[None, :], own_cols[None, :]), term, accumulate=True)
    return out


def step_sub_block(n_rows: int, n_cols: int, step_pairs: int) -> tuple[int, int]:
    """Rows and columns of one training step's sub-block: the whole block when it has at most ``step_pairs`` pairs (or
    ``step_pairs`` is 0), else both sides shrunk by the same factor to about ``step_pairs`` pairs (at least 2 of each)."""
    if step_pairs <= 0 or n_rows * n_cols <= step_pairs:
        return n_rows, n_cols
    shrink = math.sqrt(step_pairs / (n_rows * n_cols))
    rows, cols = round(n_rows * shrink), round(n_cols * shrink)
    if cols < 2:  # a narrow block: the narrow side stays at 2, the other takes the rest
        cols = min(n_cols, 2)
        rows = max(2, step_pairs // cols)
    elif rows < 2:
        rows = min(n_rows, 2)
        cols = max(2, step_pairs // rows)
    return min(n_rows, rows), min(n_cols, cols)


def _sub_self_index(self_index: tuple[torch.Tensor, torch.Tensor] | None, rows: torch.Tensor, cols: torch.Tensor,
                    n_rows: int, n_cols: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The self-pairs (row, own column) inside the sub-block ``rows`` × ``cols``, in its positions."""
    if self_index is None:
        return None
    row_at = torch.full((n_rows,), -1, dtype=torch.int64)
    col_at = torch.full((n_cols,), -1, dtype=torch.int64)
    row_at[rows], col_at[cols] = torch.arange(len(rows)), torch.arange(len(cols))
    own_rows, own_cols = row_at[self_index[0]], col_at[self_index[1]]
    inside = (own_rows >= 0) & (own_cols >= 0)
    return own_rows[inside], own_cols[inside]


def _sub_block_error(params: dict[str, torch.Tensor], data: PairBlock, cos: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                     self_index: tuple[torch.Tensor, torch.Tensor] | None, rows: torch.Tensor, cols: torch.Tensor, rank: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, r, c) masked errors of the stacked networks on the sub-block ``rows`` × ``cols``, and its (B, r, c) mask weights."""
    own = _sub_self_index(self_index, rows, cols, len(data.rows), len(data.cols))
    prediction = batched_block(params, data.rows[rows], data.cols[cols], cos[rows][:, cols], own, rank)
    step_weight = weight[:, rows][:, :, cols]
    return (prediction - target[rows][:, cols]) * step_weight, step_weight


def train_stacked(networks: list[TwoTowerNetwork], data: PairBlock, masks: list[np.ndarray], learning_rates: list[float],
                weight_decays: list[float], steps: int, on_eval: Callable[[int, np.ndarray], None] | None, eval_every: int,
                tick: Callable[[], None] | None = None, centre_rows: bool = False, step_pairs: int = 0, seed: int = 0) -> None:
    """Train B stacked networks at once (no shared parameter), each on its own mask, AdamW learning rate and weight decay.

    Full batch up to ``step_pairs`` pairs (0: always); beyond, each step on a seeded random sub-block (:func:`step_sub_block`).
    ``on_eval(step, (B, R, C) standardised predictions on the whole block)`` every ``eval_every`` steps. ``centre_rows``: each
    row's mean error is removed before squaring. The trained parameters are written back into ``networks``.
    """
    names = [name for name, _ in networks[0].named_parameters()]
    params = {name: torch.stack([dict(n.named_parameters())[name].detach() for n in networks]).clone().requires_grad_(True) for name in names}
    count = len(networks)
    target = torch.from_numpy(data.labels.astype(np.float32))
    weight = torch.from_numpy(np.stack(masks).astype(np.float32))
    per_model = weight.sum(dim=(1, 2)).clamp(min=1.0)
    cos = torch.from_numpy(data.cos.astype(np.float32))
    self_index = None
    if data.self_cols is not None and (data.self_cols >= 0).any():
        own = np.flatnonzero(data.self_cols >= 0)
        self_index = (torch.from_numpy(own), torch.from_numpy(data.self_cols[own]))
    lr = torch.tensor(learning_rates, dtype=torch.float32)
    decay = 1.0 - lr * torch.tensor(weight_decays, dtype=torch.float32)
    first, second = ({name: torch.zeros_like(p) for name, p in params.items()} for _ in range(2))
    n_rows, n_cols = target.shape
    sub_rows, sub_cols = step_sub_block(n_rows, n_cols, step_pairs)
    full_batch = sub_rows == n_rows and sub_cols == n_cols
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps + 1):
        evaluate = on_eval is not None and step % eval_every == 0
        if full_batch or evaluate:
            with torch.set_grad_enabled(full_batch and step < steps):
                prediction = batched_block(params, data.rows, data.cols, cos, self_index, networks[0].rank)
            if on_eval is not None and evaluate:
                on_eval(step, prediction.detach().numpy())
                if tick is not None:
                    tick()
        if step == steps:
            break
        if full_batch:
            error, step_weight = (prediction - target) * weight, weight
        else:
            rows = torch.randperm(n_rows, generator=generator)[:sub_rows].sort().values
            cols = torch.randperm(n_cols, generator=generator)[:sub_cols].sort().values
            error, step_weight = _sub_block_error(params, data, cos, target, weight, self_index, rows, cols, networks[0].rank)
        if centre_rows:
            error = (error - error.sum(dim=2, keepdim=True) / step_weight.sum(dim=2, keepdim=True).clamp(min=1.0)) * step_weight
        loss = ((error ** 2).sum(dim=(1, 2)) / (per_model if full_batch else step_weight.sum(dim=(1, 2)).clamp(min=1.0))).sum()
        for p in params.values():
            p.grad = None
        loss.backward()
        _adamw_step(params, first, second, lr, decay, step + 1, count)
    with torch.no_grad():
        for b, network in enumerate(networks):
            for name, p in network.named_parameters():
                p.copy_(params[name][b])
            network.eval()


@torch.no_grad()
def _adamw_step(params: dict[str, torch.Tensor], first: dict[str, torch.Tensor], second: dict[str, torch.Tensor],
                lr: torch.Tensor, decay: torch.Tensor, t: int, count: int) -> None:
    """One AdamW update (step ``t``) of the stacked parameters from their gradients, as torch's AdamW does."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    correction1, correction2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
    for name, p in params.items():
        if p.grad is None:  # not in the graph (the self-pair term without self-pairs): untouched, as torch's AdamW does
            continue
        shape = (count,) + (1,) * (p.dim() - 1)
        p.mul_(decay.view(shape))
        first[name].lerp_(p.grad, 1.0 - beta1)
        second[name].mul_(beta2).addcmul_(p.grad, p.grad, value=1.0 - beta2)
        denominator = (second[name] / correction2).sqrt_().add_(eps)
        p.sub_((lr / correction1).view(shape) * first[name] / denominator)
