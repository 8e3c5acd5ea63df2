"""The settings of ``nncift fidelity`` (light: the command line builds its flags from them)."""

from __future__ import annotations

from dataclasses import dataclass

from nncift.settings.choices import ARCHITECTURES
from nncift.settings.fields import setting
from nncift.settings.stages import SelectSettings


@dataclass(frozen=True)
class FidelitySettings(SelectSettings):
    """Settings of ``nncift fidelity``: the full matrix once, the network at several fractions."""

    fractions: tuple[float, ...] = setting((0.01, 0.05, 0.1, 0.2), above=0, at_most=1)
    """Sampled fractions u to evaluate."""
    seeds: tuple[int, ...] = setting((), at_least=0)
    """Seeds of the sampling and the networks (empty: --seed alone)."""
    architectures: tuple[str, ...] = setting((), choices=ARCHITECTURES)
    """Network architectures to compare (two-tower, paper); empty: --network.architecture alone. The first fills the quadrant table."""
    limit: int = setting(0, at_least=0)
    """Use only the first N records of the pool (0: all); the full matrix costs N² evaluations."""
