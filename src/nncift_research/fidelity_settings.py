"""The settings of ``nncift fidelity`` (light: the command line builds its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass

from nncift.settings.stages import SelectSettings


@dataclass(frozen=True)
class FidelitySettings(SelectSettings):
    """Settings of ``nncift fidelity``: the full matrix once, the network at several fractions."""

    fractions: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2)
    """Sampled fractions u to evaluate."""
    seeds: tuple[int, ...] = ()
    """Seeds of the sampling and the networks (empty: --seed alone)."""
    architectures: tuple[str, ...] = ()
    """Network architectures to compare (two-tower, paper); empty: --network.architecture alone. The first fills the quadrant table."""
    limit: int = 0
    """Use only the first N records of the pool (0: all); the full matrix costs N² evaluations."""
