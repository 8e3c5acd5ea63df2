"""The two-tower network's inner-product form reproduces its prediction (with and without self-pair terms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nncift.network.anchors import Anchors
from nncift.network.paper import predict_pairwise
from nncift.network.towers import TwoTowerNetwork, inner_product_form


def embeddings(n: int, d: int, seed: int) -> np.ndarray:
    e = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def random_network(d: int, seed: int = 0) -> TwoTowerNetwork:
    """A two-tower network with every term non-zero (as after training): towers, offsets, prior, self-pair weights, scale."""
    net = TwoTowerNetwork(d, hidden=16, rank=8)
    generator = torch.Generator().manual_seed(seed)
    net.initialise(generator, alpha=0.7, beta=-0.05, self_bias=0.3)
    with torch.no_grad():
        for tower in (net.row_tower, net.col_tower):
            for layer in (tower.out, tower.offset):
                layer.weight.normal_(0.0, 0.3, generator=generator)
                layer.bias.normal_(0.0, 0.1, generator=generator)
        net.self_weight.normal_(0.0, 0.2, generator=generator)
    net.set_label_scale(0.31, 0.17)
    return net.eval()


@pytest.mark.parametrize("with_self", [False, True])
def test_inner_products_equal_the_prediction(with_self: bool) -> None:
    d = 12
    rows, cols = embeddings(37, d, 1), embeddings(53, d, 2)
    net = random_network(d)
    self_cols = None
    if with_self:
        self_cols = np.full(37, -1, dtype=np.int64)
        self_cols[:30] = np.random.default_rng(3).permutation(53)[:30]
    expected = predict_pairwise(net, rows, cols, self_cols=self_cols)
    form = inner_product_form(net, rows, cols, self_cols=self_cols, block_rows=10)
    assert form.row_features.dtype == np.float32 and form.row_features.shape == (37, d + 8 + 3)
    assert form.col_features.shape == (53, d + 8 + 3)
    got = form.row_features @ form.col_features.T
    if with_self:
        assert self_cols is not None
        assert np.all(form.self_terms[30:] == 0) and np.all(form.self_terms[:30] != 0)
        got[np.arange(30), self_cols[:30]] += form.self_terms[:30]
        assert not np.allclose(got, form.row_features @ form.col_features.T, atol=1e-3)  # the self terms matter
    else:
        assert np.all(form.self_terms == 0)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_an_anchored_network_is_refused() -> None:
    d = 6
    net = random_network(d)
    rows, cols = embeddings(4, d, 5), embeddings(3, d, 6)
    net.attach_anchors(Anchors.from_block(rows, cols, np.ones((4, 3)), np.ones((4, 3), bool), 0.05, 0.5))
    with pytest.raises(ValueError, match="label anchors"):
        inner_product_form(net, rows, cols)
    net.attach_anchors(None)
    with pytest.raises(ValueError, match="must have 6 columns"):
        inner_product_form(net, rows[:, :5], cols)


def row_blocks(net, rows: np.ndarray, cols: np.ndarray, own: np.ndarray | None):
    """``predict(start, stop)``: the network's predicted rows ``start:stop`` (the graph builder's callback)."""
    return lambda start, stop: predict_pairwise(net, rows[start:stop], cols, self_cols=None if own is None else own[start:stop])


def test_a_network_without_inner_products_builds_its_graph_from_row_blocks() -> None:
    """The paper MLP and an anchored two-tower network: the graph of their predicted row blocks is each row's top K."""
    from nncift.network.paper import InfluenceNetwork
    from nncift.selection.sparse import graph_from_blocks

    d = 8
    rows, cols = embeddings(30, d, 7), embeddings(25, d, 8)
    mlp = InfluenceNetwork(d, (16,))
    mlp.reset_parameters(torch.Generator().manual_seed(0))
    anchored = random_network(d)
    anchored.attach_anchors(Anchors.from_block(rows[:6], cols[:5], np.full((6, 5), 0.5), np.ones((6, 5), bool), 0.05, 0.5))
    self_cols = np.where(np.arange(30) < 25, np.arange(30), -1)
    for net, own in ((mlp.eval(), None), (anchored, self_cols)):
        dense = predict_pairwise(net, rows, cols, self_cols=own)
        graph = graph_from_blocks(row_blocks(net, rows, cols, own), 30, 25, 4, block_rows=7)
        expected = np.sort(np.argsort(-dense, axis=1, kind="stable")[:, :4], axis=1)
        np.testing.assert_array_equal(graph.columns.reshape(30, 4), expected)
        np.testing.assert_allclose(graph.values.reshape(30, 4), np.take_along_axis(dense, expected, 1), atol=1e-6)


@pytest.mark.parametrize("layout", ["fresh", "memmap", "strided", "tiled", "every pair labelled"])
def test_block_prediction_writes_what_the_module_computes(layout: str, tmp_path, monkeypatch) -> None:
    """``predict_two_tower`` fills ``out`` (a fresh array, a memory-mapped file, a strided view) block by block through one reused
    buffer; self-pair terms, label anchors and a row calibration together equal the module's own forward pass, whatever the
    row blocks (the last one shorter) and the anchors' tiles of columns (``tiled``: three)."""
    from nncift.network import towers
    from nncift.network.row_calibration import RowCalibration
    from nncift.network.towers import predict_two_tower

    d = 10
    rows, cols = embeddings(29, d, 4), embeddings(41, d, 5)
    net = random_network(d)
    rng = np.random.default_rng(6)
    mask = np.ones((8, 9), dtype=bool) if layout == "every pair labelled" else rng.random((8, 9)) > 0.2  # the former: sums as an outer product
    net.attach_anchors(Anchors.from_block(rows[:8], cols[:9], rng.standard_normal((8, 9)), mask, 0.05, 1.0))
    labels = rng.standard_normal((6, 9))
    net.attach_row_calibration(RowCalibration.fit(rows[:6], rng.standard_normal((6, 9)), labels, np.ones((6, 9), dtype=bool), temperature=0.05))
    assert net.calibration_lines(torch.from_numpy(rows)) is not None
    self_cols = np.full(29, -1, dtype=np.int64)
    self_cols[:20] = rng.permutation(41)[:20]
    with torch.no_grad():
        expected = net(torch.from_numpy(rows), torch.from_numpy(cols), torch.from_numpy(self_cols)).numpy()
    if layout == "fresh":
        out = None
    elif layout == "memmap":
        out = np.lib.format.open_memmap(tmp_path / "predicted.npy", mode="w+", dtype=np.float32, shape=(29, 41))
    elif layout == "strided":
        out = np.zeros((29, 82), dtype=np.float32)[:, ::2]
    else:
        out = None
        monkeypatch.setattr(towers, "_ANCHOR_TILE", (8 * 16, 4, 16))  # 8 anchor rows: tiles of 16, 16 and 9 columns
    if layout in ("tiled", "every pair labelled"):
        tiles = towers._anchor_columns(net, torch.from_numpy(cols))
        assert tiles is not None and len(tiles) == 3 and all(tile[2].ndim == (1 if layout != "tiled" else 2) for tile in tiles)
    got = predict_two_tower(net, rows, cols, out=out, self_cols=self_cols, block_rows=7)
    assert out is None or got is out
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    if layout == "memmap":
        np.testing.assert_allclose(np.load(tmp_path / "predicted.npy"), expected, atol=1e-5, rtol=0)
