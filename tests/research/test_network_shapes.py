"""Network shapes of the size analysis: parsing, and parameter counts equal to the built networks'."""

from __future__ import annotations

import pytest

from nncift.network.paper import InfluenceNetwork, NetworkSettings
from nncift.network.towers import TwoTowerNetwork
from nncift_research.network_shapes import PAPER_FIGURE_SHAPES, parameter_count, shape_name, shape_settings


@pytest.mark.parametrize("shape", ["paper:5", "paper:50x50x50", "paper:500x5"])
def test_paper_shapes_count_the_weights_of_the_built_mlp(shape: str) -> None:
    settings = shape_settings(shape)
    assert settings.architecture == "paper" and shape_name(settings) == shape
    built = InfluenceNetwork(24, settings.hidden_sizes)
    assert parameter_count(settings, 24) == sum(p.numel() for p in built.parameters())


def test_two_tower_shapes_set_rank_and_width_and_keep_the_rest() -> None:
    base = NetworkSettings(max_steps=17, seed=3)
    settings = shape_settings("two-tower:r16h32", base)
    assert (settings.architecture, settings.tower_rank, settings.tower_hidden, settings.max_steps, settings.seed) == ("two-tower", 16, 32, 17, 3)
    assert shape_settings("two-tower:r8").tower_hidden == NetworkSettings().tower_hidden
    built = TwoTowerNetwork(24, hidden=32, rank=16)
    assert parameter_count(settings, 24) == sum(p.numel() for p in built.parameters() if p.requires_grad)
    assert parameter_count(shape_settings("two-tower:r64h32"), 24) > parameter_count(settings, 24)


def test_the_figure_subset_spans_one_to_five_layers_and_widths_5_to_5000() -> None:
    depths = {len(shape_settings(s).hidden_sizes) for s in PAPER_FIGURE_SHAPES}
    widths = {w for s in PAPER_FIGURE_SHAPES for w in shape_settings(s).hidden_sizes}
    assert depths == {1, 2, 3, 4, 5} and widths == {5, 50, 500, 5000}


@pytest.mark.parametrize("shape", ["paper", "paper:", "paper:0", "paper:5x", "mlp:5", "two-tower:16", "two-tower:r0"])
def test_malformed_shapes_are_clear_errors(shape: str) -> None:
    with pytest.raises(ValueError, match="network shape"):
        shape_settings(shape)
