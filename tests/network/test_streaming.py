"""Prediction in row blocks and selection from disk give exactly what the in-memory path gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from nncift import selection
from nncift.files import npy as npy_files
from nncift.network import streaming
from nncift.network.paper import InfluenceNetwork, predict_pairwise
from nncift.selection import facility_location, fl_conditional_gain, fl_mutual_information, out_of_core, top_k


def _embeddings(n: int, seed: int) -> np.ndarray:
    values = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def _network() -> InfluenceNetwork:
    torch.manual_seed(0)
    return InfluenceNetwork(16, (8,)).eval()


@pytest.fixture()
def tiny_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles of a few hundred bytes: many slabs, row blocks and maps even on small matrices."""
    monkeypatch.setattr(npy_files, "TILE_BYTES", 600)
    monkeypatch.setattr(out_of_core, "_MAP_ROWS", 7)


def test_predict_to_npy_equals_predict_pairwise_with_q1_kept(tmp_path: Path) -> None:
    network, rows, cols = _network(), _embeddings(37, 1), _embeddings(53, 2)
    seen_rows, seen_cols = np.array([0, 5, 36]), np.array([1, 2, 40, 52])
    labels = np.random.default_rng(3).random((3, 4)).astype(np.float32)
    labels[1, 2] = np.nan  # not computed: the prediction stays
    path = streaming.predict_to_npy(network, rows, cols, tmp_path / "p.npy", known=(seen_rows, seen_cols, labels), block_rows=5)
    expected = predict_pairwise(network, rows, cols)
    before = expected[5, 40]
    expected[np.ix_(seen_rows, seen_cols)] = np.where(np.isfinite(labels), labels, expected[np.ix_(seen_rows, seen_cols)])
    stored = np.load(path)
    assert stored.shape == (37, 53)  # rows = targets, cols = candidates
    assert np.array_equal(stored, expected)
    assert stored[5, 40] == before and stored[0, 1] == labels[0, 0]


def _matrix(n_rows: int, n_cols: int, seed: int) -> np.ndarray:
    values = np.random.default_rng(seed).standard_normal((n_rows, n_cols)) * 0.4
    values = np.round(values * 8) / 8  # many ties, some negative entries
    values[3:6] = 0.125  # identical rows
    return values.astype(np.float32)


def _same(a, b) -> None:
    assert a.name == b.name
    assert np.array_equal(a.indices, b.indices)
    assert np.array_equal(a.gains, b.gains)
    assert a.objective == b.objective


@pytest.mark.parametrize("budget", [0.3, 1, 55])
def test_streamed_facility_location_is_bit_identical(tmp_path: Path, tiny_tiles, budget) -> None:
    matrix = _matrix(41, 60, seed=4)  # rows = targets, cols = candidates (non-square)
    np.save(tmp_path / "s.npy", matrix)
    _same(selection.select_from_npy("fl", tmp_path / "s.npy", budget), facility_location(matrix, budget))


@pytest.mark.parametrize("budget", [0.25, 48])  # 48 of 50 runs out of gain: the fill in index order
def test_streamed_flmi_and_flcg_are_bit_identical(tmp_path: Path, tiny_tiles, budget) -> None:
    n_pool, n_targets = 50, 9
    matrix = _matrix(n_pool + n_targets, n_pool, seed=5)  # rows: pool, then targets
    np.save(tmp_path / "s.npy", matrix)
    data, others = np.maximum(matrix[:n_pool], 0.0), np.ascontiguousarray(np.maximum(matrix[n_pool:], 0.0).T)
    streamed = selection.select_from_npy("flmi", tmp_path / "s.npy", budget, n_pool_rows=n_pool, eta=0.8)
    _same(streamed, fl_mutual_information(data, others, budget, eta=0.8))
    streamed = selection.select_from_npy("flcg", tmp_path / "s.npy", budget, n_pool_rows=n_pool, nu=0.9)
    _same(streamed, fl_conditional_gain(data, others, budget, nu=0.9))
    assert not (tmp_path / ".s.by-candidate.npy").exists()  # the working copy is removed


def test_streamed_topk_equals_mean_over_rows(tmp_path: Path, tiny_tiles) -> None:
    matrix = np.random.default_rng(6).random((333, 47)).astype(np.float32)
    np.save(tmp_path / "s.npy", matrix)
    assert np.array_equal(selection.column_means(tmp_path / "s.npy"), np.asarray(matrix, dtype=np.float64).mean(axis=0))
    _same(selection.select_from_npy("topk", tmp_path / "s.npy", 0.2),
          top_k(np.asarray(matrix, dtype=np.float64).mean(axis=0), 0.2))
    seen = []
    own = selection.select_from_npy("topk", tmp_path / "s.npy", 3, candidate_scores=lambda m: seen.append(m.shape) or m[0])
    assert seen == [(333, 47)] and set(own.indices.tolist()) == set(np.argsort(-matrix[0])[:3].tolist())


def test_streaming_rejects_bad_input(tmp_path: Path) -> None:
    matrix = _matrix(10, 12, seed=7)
    matrix[4, 2] = np.nan
    np.save(tmp_path / "s.npy", matrix)
    with pytest.raises(ValueError, match="non-finite"):
        selection.select_from_npy("fl", tmp_path / "s.npy", 3)
    with pytest.raises(ValueError, match="unknown objective"):
        selection.select_from_npy("max", tmp_path / "s.npy", 3)
    np.save(tmp_path / "wide.npy", _matrix(12, 10, seed=8))
    with pytest.raises(ValueError, match="pool items"):
        selection.select_from_npy("flmi", tmp_path / "wide.npy", 3, n_pool_rows=11)
    np.save(tmp_path / "ints.npy", np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="float32"):
        npy_files.npy_layout(tmp_path / "ints.npy")


@pytest.mark.e2e
def test_pipeline_streams_when_the_matrix_does_not_fit(tmp_path: Path, demo_pool, monkeypatch: pytest.MonkeyPatch) -> None:
    from nncift import SelectSettings
    from nncift.steps.select import run_select

    settings = SelectSettings.build(influence="delift-se", **{"sampling.fraction": 0.25, "sampling.min_sampled": 8, "selection.budget": 0.25,
            "network.epochs": 3}, quiet=True, seed=3)
    pool = demo_pool[:48]
    in_memory = run_select(settings, tmp_path / "memory", pool=pool)
    monkeypatch.setattr(selection, "fits_in_memory", lambda shape, share=0.5: False)
    streamed = run_select(settings, tmp_path / "streamed", pool=pool)
    assert np.array_equal(np.load(tmp_path / "memory" / "predicted.npy"), np.load(tmp_path / "streamed" / "predicted.npy"))
    assert np.array_equal(in_memory.indices, streamed.indices) and np.array_equal(in_memory.scores, streamed.scores)
    assert in_memory.objective == streamed.objective
