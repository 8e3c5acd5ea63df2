"""Per-row calibration: each labelled row's own line, carried into every prediction path, chosen only where it validates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from test_inner_product import embeddings, random_network

from nncift.influence.less import aggregate_scores
from nncift.network.files import load_network, save_network
from nncift.network.fitting import FitSettings, fit_pairwise
from nncift.network.paper import predict_pairwise
from nncift.network.row_calibration import CALIBRATION_SHRINK, RowCalibration
from nncift.network.towers import TwoTowerNetwork, inner_product_form
from nncift.settings.stages import NetworkSettings


def test_each_labelled_row_gets_its_own_line_and_a_far_row_keeps_the_prediction() -> None:
    rows = np.eye(4, 8, dtype=np.float32)  # orthogonal rows: no row borrows from another
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4, 30))
    slopes, offsets = np.array([0.5, 2.0, 1.0, 3.0]), np.array([0.3, -1.0, 0.0, 2.0])
    labels = slopes[:, None] * base + offsets[:, None]
    mask = np.ones_like(base, dtype=bool)
    mask[3, 2:] = False  # two labels: too few for a line of its own
    calibration = RowCalibration.fit(rows, base, labels, mask, temperature=0.02)
    assert calibration.rows.shape[0] == 3
    a, b = (v.numpy() for v in calibration.lines(torch.from_numpy(rows)))
    keep = 1.0 / (1.0 + CALIBRATION_SHRINK)
    np.testing.assert_allclose(a[:3], 1.0 + keep * (slopes[:3] - 1.0), atol=1e-5)
    np.testing.assert_allclose(b[:3], keep * offsets[:3], atol=1e-5)
    assert abs(a[3] - 1.0) < 1e-6 and abs(b[3]) < 1e-6  # unlabelled enough and far: unchanged


def test_a_negative_fit_never_flips_a_row() -> None:
    rows = np.eye(2, 4, dtype=np.float32)
    base = np.tile(np.arange(10.0), (2, 1))
    labels = np.stack([-base[0], base[1]])
    calibration = RowCalibration.fit(rows, base, labels, np.ones_like(base, dtype=bool), temperature=0.02)
    a, _ = calibration.lines(torch.from_numpy(rows))
    assert float(a[0]) > 0  # slope clipped at 0, then shrunk towards 1: the row's ranking is kept


def test_every_prediction_path_applies_the_calibration_and_it_survives_saving(tmp_path: Path) -> None:
    d = 12
    rows, cols = embeddings(25, d, 1), embeddings(40, d, 2)
    net = random_network(d)
    rng = np.random.default_rng(4)
    with torch.no_grad():
        base = net.standardised_block(torch.from_numpy(rows), torch.from_numpy(cols)).numpy()
    labels = rng.uniform(0.2, 3.0, (25, 1)) * base + rng.normal(0, 1, (25, 1))
    mask = np.zeros(base.shape, dtype=bool)
    mask[:10, :15] = True
    before = predict_pairwise(net, rows, cols)
    net.attach_row_calibration(RowCalibration.fit(rows, base, labels, mask, temperature=0.05))
    self_cols = np.full(25, -1, dtype=np.int64)
    self_cols[:20] = rng.permutation(40)[:20]
    expected = predict_pairwise(net, rows, cols, self_cols=self_cols)
    assert not np.allclose(expected[:10], before[:10], atol=1e-2)  # the labelled rows moved
    loaded = assert_every_path_agrees(net, rows, cols, self_cols, tmp_path)
    assert loaded.architecture()["row_calibration"]["rows"] == 10


def assert_every_path_agrees(net: TwoTowerNetwork, rows: np.ndarray, cols: np.ndarray, self_cols: np.ndarray, folder: Path) -> TwoTowerNetwork:
    """``predict_pairwise``, the module's forward, the inner-product form (in row blocks) and the network saved and loaded
    again all predict the same; the loaded network is returned."""
    expected = predict_pairwise(net, rows, cols, self_cols=self_cols)
    with torch.no_grad():
        direct = net(torch.from_numpy(rows), torch.from_numpy(cols), torch.from_numpy(self_cols)).numpy()
    np.testing.assert_allclose(expected, direct, atol=1e-4)
    form = inner_product_form(net, rows, cols, self_cols=self_cols, block_rows=7)
    got = form.row_features @ form.col_features.T
    own = np.flatnonzero(self_cols >= 0)
    got[own, self_cols[own]] += form.self_terms[own]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    save_network(net, folder / "network.safetensors", {})
    loaded = load_network(folder / "network.safetensors")
    np.testing.assert_allclose(predict_pairwise(loaded, rows, cols, self_cols=self_cols), expected, atol=1e-6)
    return loaded


def test_validation_ships_row_calibration_where_rows_differ_in_scale_and_top_k_improves() -> None:
    """Two subtasks whose cosines have different scales but whose labels do not: the global fit favours one subtask,
    each row's own line does not; with every row labelled (held-out candidates) the calibration must be shipped."""
    rng = np.random.default_rng(0)
    d, n_rows, n_cols = 16, 20, 300
    cols = embeddings(n_cols, d, 5)
    rows = embeddings(n_rows, d, 6)
    cos = rows @ cols.T
    scale = np.where(np.arange(n_rows) < 10, 3.0, 0.4)[:, None]  # subtask A's labels move 3 per unit cosine, B's 0.4
    true = scale * cos + 0.02 * rng.standard_normal(cos.shape)
    tasks = ["a"] * 10 + ["b"] * 10
    labelled_cols = np.sort(rng.choice(n_cols, 60, replace=False))
    labels = np.full(true.shape, np.nan)
    labels[:, labelled_cols] = true[:, labelled_cols]
    settings = FitSettings(NetworkSettings(max_steps=20, folds=4, seed=0))
    network, report = fit_pairwise(rows, cols[labelled_cols], labels[:, labelled_cols], settings, objective="topk", held_out="columns",
                                   candidate_scores=lambda m, idx: aggregate_scores(m, [tasks[int(i)] for i in idx]))
    assert report.chosen.endswith("+ row calibration"), report.note
    assert report.row_calibration["rows"] == n_rows
    predicted = predict_pairwise(network, rows, cols)
    k = 30
    exact = set(np.argsort(-aggregate_scores(true, tasks))[:k])
    calibrated = set(np.argsort(-aggregate_scores(predicted, tasks))[:k])
    global_fit = set(np.argsort(-aggregate_scores(cos, tasks))[:k])  # any single line of the cosine picks these
    assert len(calibrated & exact) > len(global_fit & exact) + 5
