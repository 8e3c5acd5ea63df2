"""Network shapes for the size analysis (the paper's Figure 3): named, parsed, and counted.

A shape is written ``paper:W1xW2x…`` (the paper's MLP with those hidden widths, e.g. ``paper:500x500``)
or ``two-tower:rR[hH]`` (the default two-tower network with interaction rank R and tower width H,
e.g. ``two-tower:r16`` or ``two-tower:r64h256``). :func:`shape_settings` turns one into
:class:`nncift.settings.stages.NetworkSettings`; :func:`parameter_count` counts its weights without building it.
"""

from __future__ import annotations

import re
from dataclasses import replace

from nncift.files.errors import InputError
from nncift.network.paper import NetworkSettings

__all__ = ["PAPER_FIGURE_SHAPES", "shape_settings", "parameter_count", "shape_name"]

PAPER_FIGURE_SHAPES = tuple(f"paper:{'x'.join([str(width)] * layers)}" for layers in range(1, 6) for width in (5, 50, 500)) + ("paper:5000",)
"""1–5 hidden layers of widths 5, 50 and 500, and one layer of 5000: a subset of the paper's 46 shapes
(1–5 layers, widths 5 … 5000) that trains in minutes on a CPU."""

_PAPER = re.compile(r"paper:(\d+(?:x\d+)*)")
_TOWER = re.compile(r"two-tower:r(\d+)(?:h(\d+))?")


def shape_settings(shape: str, base: NetworkSettings | None = None) -> NetworkSettings:
    """The network settings of ``shape`` (the other fields from ``base``, default :class:`NetworkSettings`); a malformed shape is a ValueError naming it."""
    base = base or NetworkSettings()
    paper, tower = _PAPER.fullmatch(shape), _TOWER.fullmatch(shape)
    if paper:
        widths = tuple(int(w) for w in paper.group(1).split("x"))
        if min(widths) < 1:
            raise InputError(f"network shape {shape!r}: widths must be at least 1")
        return replace(base, architecture="paper", hidden_sizes=widths)
    if tower:
        rank, hidden = int(tower.group(1)), int(tower.group(2) or base.tower_hidden)
        if rank < 1 or hidden < 1:
            raise InputError(f"network shape {shape!r}: rank and width must be at least 1")
        return replace(base, architecture="two-tower", tower_rank=rank, tower_hidden=hidden)
    raise InputError(f"network shape {shape!r}: expected paper:W1xW2… (e.g. paper:500x500) or two-tower:rR[hH] (e.g. two-tower:r16)")


def shape_name(settings: NetworkSettings) -> str:
    """The shape string of ``settings`` (inverse of :func:`shape_settings`)."""
    if settings.architecture == "paper":
        return "paper:" + "x".join(str(w) for w in settings.hidden_sizes)
    return f"two-tower:r{settings.tower_rank}h{settings.tower_hidden}"


def parameter_count(settings: NetworkSettings, embedding_dim: int) -> int:
    """Trainable weights of the network ``settings`` describe, for embeddings of ``embedding_dim``.

    paper: the MLP on ``[e_row, 0, e_col]`` (2·d + 1 inputs); two-tower: the two towers and the
    calibration of :class:`nncift.network.towers.TwoTowerNetwork`, counted from a built instance (it is small).
    """
    if settings.architecture == "paper":
        widths = [2 * embedding_dim + 1, *settings.hidden_sizes, 1]
        return sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(widths, widths[1:]))
    from nncift.network.towers import TwoTowerNetwork

    network = TwoTowerNetwork(embedding_dim, hidden=settings.tower_hidden, rank=settings.tower_rank)
    return int(sum(p.numel() for p in network.parameters() if p.requires_grad))
