"""InfluenceNetwork: fast prediction is exact, training is seeded and skips NaN labels, saving round-trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nncift.network.files import load_network, load_network_metadata, network_metadata_path, save_network
from nncift.network.pair_kernel import numba_available
from nncift.network.paper import (
    InfluenceNetwork,
    NetworkSettings,
    predict_pairwise,
    predict_pairwise_naive,
    predict_pointwise,
)
from nncift.network.paper_training import train_pairwise, train_pointwise

BACKENDS = ["torch"] + (["numba"] if numba_available() else [])


def embeddings(n: int, d: int, seed: int) -> np.ndarray:
    """(n, d) float32 L2-normalised random embeddings."""
    e = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def network(d: int, hidden: tuple[int, ...], pairwise: bool = True, seed: int = 0) -> InfluenceNetwork:
    net = InfluenceNetwork(d, hidden, pairwise=pairwise)
    net.reset_parameters(torch.Generator().manual_seed(seed))
    with torch.no_grad():  # a larger output bias and last layer than init, so values are not all tiny
        net.linears()[-1].weight.mul_(3.0)
        net.linears()[-1].bias.fill_(0.25)
    return net.eval()


def one_pair_per_call(net: InfluenceNetwork, rows: np.ndarray, cols: np.ndarray, pairs) -> np.ndarray:
    """The reference: for each pair build [e_i, 0, e_j] and call the network."""
    values = []
    with torch.no_grad():
        for i, j in pairs:
            x = torch.cat([torch.from_numpy(rows[i]), torch.zeros(1), torch.from_numpy(cols[j])])[None]
            values.append(float(net(x)[0]))
    return np.array(values, dtype=np.float32)


@pytest.mark.parametrize("hidden,backend", [((100,), b) for b in BACKENDS] + [((48, 20), "torch"), ((48, 20), "auto")])
def test_predict_pairwise_matches_naive_and_per_pair(hidden, backend):
    d = 24
    # 70 × 131: crosses the numba tile (64 × 128) and the 2 × 2 inner blocks with odd remainders
    rows, cols = embeddings(70, d, 1), embeddings(131, d, 2)
    net = network(d, hidden)
    fast = predict_pairwise(net, rows, cols, block_rows=9, backend=backend)
    assert fast.dtype == np.float32 and fast.shape == (70, 131)
    naive = predict_pairwise_naive(net, rows, cols, block_rows=4)
    np.testing.assert_allclose(fast, naive, atol=1e-5, rtol=0)
    rng = np.random.default_rng(3)
    pairs = [(int(i), int(j)) for i, j in zip(rng.integers(0, 70, 300), rng.integers(0, 131, 300))]
    pairs += [(0, 0), (69, 130), (69, 0), (0, 130), (64, 128)]
    reference = one_pair_per_call(net, rows, cols, pairs)
    np.testing.assert_allclose([fast[i, j] for i, j in pairs], reference, atol=1e-5, rtol=0)
    assert np.ptp(fast) > 0.05  # not a degenerate constant output


@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_pairwise_all_pairs_small_and_default_blocks(backend):
    d = 8
    rows, cols = embeddings(5, d, 4), embeddings(3, d, 5)
    net = network(d, (100,))
    fast = predict_pairwise(net, rows, cols, backend=backend)
    reference = one_pair_per_call(net, rows, cols, [(i, j) for i in range(5) for j in range(3)]).reshape(5, 3)
    np.testing.assert_allclose(fast, reference, atol=1e-5, rtol=0)
    one = predict_pairwise(net, rows[:1], cols[:1], backend=backend)
    np.testing.assert_allclose(one, reference[:1, :1], atol=1e-5, rtol=0)
    assert predict_pairwise(net, rows[:0], cols, backend=backend).shape == (0, 3)


@pytest.mark.parametrize("hidden", [(100,), (32, 16)])
def test_predict_pairwise_into_memmap(tmp_path, hidden):
    d = 16
    rows, cols = embeddings(45, d, 6), embeddings(29, d, 7)
    net = network(d, hidden)
    path = tmp_path / "predicted.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(45, 29))
    returned = predict_pairwise(net, rows, cols, out=out, block_rows=10)
    assert returned is out
    out.flush()
    del out, returned
    stored = np.load(path)
    np.testing.assert_allclose(stored, predict_pairwise_naive(net, rows, cols), atol=1e-5, rtol=0)


def test_predict_pairwise_non_contiguous_out_and_bad_out():
    d = 8
    rows, cols = embeddings(11, d, 8), embeddings(13, d, 9)
    net = network(d, (100,))
    wide = np.zeros((11, 26), dtype=np.float32)
    predict_pairwise(net, rows, cols, out=wide[:, ::2], block_rows=4)
    np.testing.assert_allclose(wide[:, ::2], predict_pairwise_naive(net, rows, cols), atol=1e-5, rtol=0)
    assert not wide[:, 1::2].any()
    with pytest.raises(ValueError):
        predict_pairwise(net, rows, cols, out=np.zeros((11, 12), dtype=np.float32))
    with pytest.raises(ValueError):
        predict_pairwise(net, rows, cols, out=np.zeros((11, 13), dtype=np.float64))
    with pytest.raises(ValueError):
        predict_pairwise(network(8, (4, 4)), rows, cols, backend="numba")


def test_predict_pointwise_matches_forward():
    d = 20
    e = embeddings(50, d, 10)
    net = network(d, (100,), pairwise=False)
    with torch.no_grad():
        expected = net(torch.from_numpy(e)).numpy()
    np.testing.assert_allclose(predict_pointwise(net, e), expected, atol=1e-6, rtol=0)
    np.testing.assert_allclose(predict_pointwise(net, e, batch_size=7), expected, atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        predict_pairwise(net, e, e)


def cosine_problem(n_rows=24, n_cols=20, d=12):
    rows, cols = embeddings(n_rows, d, 11), embeddings(n_cols, d, 12)
    return rows, cols, rows @ cols.T


FAST = NetworkSettings(hidden_sizes=(64,), learning_rate=1e-2, epochs=10, batch_size=32, seed=5)


def test_training_is_deterministic_and_learns():
    rows, cols, labels = cosine_problem()
    net1, report1 = train_pairwise(rows, cols, labels, FAST)
    net2, report2 = train_pairwise(rows, cols, labels, FAST)
    assert report1.losses == report2.losses
    for (k1, v1), (k2, v2) in zip(net1.state_dict().items(), net2.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    net3, report3 = train_pairwise(rows, cols, labels, NetworkSettings(**{**FAST.__dict__, "seed": 6}))
    assert report3.losses != report1.losses
    assert report1.n_examples == labels.size and len(report1.losses) == FAST.epochs
    assert report1.losses[-1] < 0.3 * report1.losses[0]
    assert all(b <= a * 1.05 for a, b in zip(report1.losses, report1.losses[1:]))
    predicted = predict_pairwise(net1, rows, cols)
    assert np.mean((predicted - labels) ** 2) < 0.3 * np.mean((labels - 0) ** 2)
    assert not net1.training


def test_nan_labels_are_ignored_exactly():
    rows, cols, labels = cosine_problem()
    with_nan = labels.copy()
    with_nan[3, :] = np.nan  # a whole row and a whole column unlabelled ...
    with_nan[:, 7] = np.nan
    net_nan, report_nan = train_pairwise(rows, cols, with_nan, FAST)
    # ... trains exactly as the same block without that row and column
    keep_rows, keep_cols = np.delete(np.arange(24), 3), np.delete(np.arange(20), 7)
    net_cut, report_cut = train_pairwise(rows[keep_rows], cols[keep_cols], labels[np.ix_(keep_rows, keep_cols)], FAST)
    assert report_nan.n_examples == report_cut.n_examples == 23 * 19
    assert report_nan.losses == report_cut.losses
    for v1, v2 in zip(net_nan.state_dict().values(), net_cut.state_dict().values()):
        assert torch.equal(v1, v2)
    # scattered NaNs: finite losses, only labelled pairs counted
    scattered = labels.copy()
    scattered[np.random.default_rng(0).random(labels.shape) < 0.3] = np.nan
    _, report = train_pairwise(rows, cols, scattered, FAST)
    assert report.n_examples == int(np.isfinite(scattered).sum())
    assert all(np.isfinite(report.losses))


def test_pointwise_training_nan_and_determinism():
    e = embeddings(60, 12, 13)
    labels = e[:, 0] * 2.0
    with_nan = labels.copy()
    with_nan[[4, 10, 33]] = np.nan
    net_nan, report_nan = train_pointwise(e, with_nan, FAST)
    keep = np.isfinite(with_nan)
    net_cut, report_cut = train_pointwise(e[keep], labels[keep], FAST)
    assert report_nan.losses == report_cut.losses and report_nan.n_examples == 57
    for v1, v2 in zip(net_nan.state_dict().values(), net_cut.state_dict().values()):
        assert torch.equal(v1, v2)
    assert not net_nan.pairwise and report_nan.losses[-1] < report_nan.losses[0]


@pytest.mark.parametrize("hidden,pairwise", [((100,), True), ((16, 8), True), ((10,), False)])
def test_save_load_round_trip(tmp_path, hidden, pairwise):
    d = 10
    net = network(d, hidden, pairwise=pairwise)
    path = tmp_path / "network.safetensors"
    save_network(net, path, {"settings": NetworkSettings(hidden_sizes=hidden), "note": "x"})
    assert network_metadata_path(path) == tmp_path / "network.json"
    sidecar = json.loads((tmp_path / "network.json").read_text())
    assert sidecar["architecture"] == {"kind": "paper", "embedding_dim": d, "hidden_sizes": list(hidden), "pairwise": pairwise}
    assert sidecar["settings"]["hidden_sizes"] == list(hidden) and sidecar["note"] == "x"
    assert load_network_metadata(path) == sidecar
    loaded = load_network(path)
    assert loaded.hidden_sizes == tuple(hidden) and loaded.pairwise == pairwise and loaded.embedding_dim == d
    e1, e2 = embeddings(9, d, 14), embeddings(7, d, 15)
    if pairwise:
        assert np.array_equal(predict_pairwise(loaded, e1, e2), predict_pairwise(net, e1, e2))
    else:
        assert np.array_equal(predict_pointwise(loaded, e1), predict_pointwise(net, e1))
    # the header alone also suffices (no pickle anywhere)
    (tmp_path / "network.json").unlink()
    assert load_network(path).architecture() == net.architecture()


def test_parameter_counts_and_shapes():
    def count(net):
        return sum(p.numel() for p in net.parameters())

    assert count(InfluenceNetwork(1024)) == 205_101  # the paper's figure
    assert count(InfluenceNetwork(384)) == (2 * 384 + 1) * 100 + 100 + 100 + 1 == 77_101  # 769·100 + 100 + 100 + 1
    assert count(InfluenceNetwork(384, pairwise=False)) == 384 * 100 + 100 + 101
    net = InfluenceNetwork(8, (256, 100))
    assert net.hidden_sizes == (256, 100) and net.input_dim == 17
    assert net(torch.zeros(5, 17)).shape == (5,)
    with pytest.raises(ValueError):
        net(torch.zeros(5, 8))
    with pytest.raises(ValueError):
        InfluenceNetwork(8, ())


def test_training_is_equivariant_to_affine_label_changes() -> None:
    """Labels are standardised for training and the scale folded back: a·y + b trains to a·f + b."""
    from nncift.network.paper import NetworkSettings, predict_pairwise
    from nncift.network.paper_training import train_pairwise

    rng = np.random.default_rng(5)
    rows = rng.normal(size=(12, 16)).astype(np.float32)
    cols = rng.normal(size=(9, 16)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    cols /= np.linalg.norm(cols, axis=1, keepdims=True)
    labels = (rows @ cols.T).astype(np.float32)
    settings = NetworkSettings(hidden_sizes=(8,), epochs=3, seed=1)
    base, _ = train_pairwise(rows, cols, labels, settings)
    shifted, _ = train_pairwise(rows, cols, (0.05 * labels + 0.55).astype(np.float32), settings)
    np.testing.assert_allclose(predict_pairwise(shifted, rows, cols), 0.05 * predict_pairwise(base, rows, cols) + 0.55, atol=2e-5)


def test_numba_prediction_and_selection_leave_torch_threads_alone() -> None:
    """Numba's OpenMP layer shares the runtime with torch; a numba call must not change torch's thread count."""
    from nncift.network.paper import InfluenceNetwork, predict_pairwise
    from nncift.selection import facility_location

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        rng = np.random.default_rng(0)
        embeddings = rng.normal(size=(300, 16)).astype(np.float32)
        network = InfluenceNetwork(16, (8,), pairwise=True)
        predicted = predict_pairwise(network, embeddings, embeddings, backend="numba")
        assert torch.get_num_threads() == 1
        facility_location(np.abs(predicted) + rng.random((300, 300), dtype=np.float32), 0.1)
        facility_location(rng.random((1100, 1100), dtype=np.float32), 0.01)  # above the parallel threshold
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
