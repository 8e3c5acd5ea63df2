"""Adam preconditioning of per-example gradients (LESS training-side features, docs/methods.md §3).

Given a checkpoint's Adam moments ``m``, ``v`` (after ``step`` optimizer steps) and an example's
gradient ``g``, the direction Adam would move in for that example alone is::

    m' = β1·m + (1 − β1)·g        v' = β2·v + (1 − β2)·g²
    exact (default):  (m' / (1 − β1^(step+1))) / (sqrt(v' / (1 − β2^(step+1))) + ε)
    reference:        m' / sqrt(v' + ε)

The exact form is Adam's own update with bias correction and ε outside the square root; the LESS
reference code puts ε inside the square root and skips the bias correction (offered as
``form="reference"`` to reproduce it). Both are elementwise, so they apply to any subset of
coordinates given ``m`` and ``v`` restricted to the same coordinates: compressors that read only
some coordinates precondition exactly those, before compressing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from nncift.settings.choices import ADAM_FORMS


@dataclass
class AdamState:
    """Adam moments of every layer, flat in the layer orientation of :mod:`nncift.gradients.hooks`."""

    exp_avg: list[Tensor]
    """First moments ``m``, one flat ``(size_l,)`` float32 tensor per layer."""
    exp_avg_sq: list[Tensor]
    """Second moments ``v``, same shapes."""
    step: int
    """Optimizer steps taken when the moments were saved."""
    beta1: float = 0.9
    """Adam β1."""
    beta2: float = 0.999
    """Adam β2."""
    eps: float = 1e-8
    """Adam ε."""


class AdamPreconditioner:
    """Elementwise Adam direction of per-example gradients, for a given checkpoint's moments."""

    def __init__(self, state: AdamState, form: str = "exact"):
        if form not in ADAM_FORMS:
            raise ValueError(f"unknown Adam form '{form}': choose {' or '.join(ADAM_FORMS)}")
        self.state = state
        self.form = form
        self._cache: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}

    def moments(self, layer: int, coordinates: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(m, v)`` of layer ``layer`` at ``coordinates`` (None = all), on ``device`` (cached)."""
        key = (layer, id(coordinates) if coordinates is not None else -1, str(device))
        if key not in self._cache:
            m, v = self.state.exp_avg[layer], self.state.exp_avg_sq[layer]
            if coordinates is not None:
                index = coordinates.to(m.device)
                m, v = m[index], v[index]
            self._cache[key] = (m.to(device, torch.float32), v.to(device, torch.float32))
        return self._cache[key]

    def __call__(self, layer: int, gradient: Tensor, coordinates: Tensor | None = None) -> Tensor:
        """The Adam direction ``(B, n)`` of per-example gradients ``(B, n)`` at ``coordinates`` of ``layer``."""
        m, v = self.moments(layer, coordinates, gradient.device)
        state = self.state
        m_new = state.beta1 * m + (1.0 - state.beta1) * gradient
        v_new = state.beta2 * v + (1.0 - state.beta2) * gradient.square()
        if self.form == "reference":
            return m_new / torch.sqrt(v_new + state.eps)
        t = state.step + 1
        m_hat = m_new / (1.0 - state.beta1 ** t)
        v_hat = v_new / (1.0 - state.beta2 ** t)
        return m_hat / (v_hat.sqrt() + state.eps)


def flat_state(state: AdamState, layers: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
    """``(m, v)`` of the whole model as flat vectors (layer order), for tests and exact references."""
    chosen = range(len(state.exp_avg)) if layers is None else layers
    return torch.cat([state.exp_avg[i] for i in chosen]), torch.cat([state.exp_avg_sq[i] for i in chosen])
