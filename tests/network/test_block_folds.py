"""Validation folds that follow the labels' blocks (``FitSettings.block_folds``, the benchmarks' option): where a design
labels several diagonal blocks (DELIFT's default), each fold holds out whole blocks, a dense square the training never saw,
instead of a few records of every block. Record folds stay the default (measured: not better; BENCHMARKS.md)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nncift.data.demo import demo_records
from nncift.influence import influence_class
from nncift.network.fitting import FitSettings, fit_pairwise
from nncift.network.folds import fold_masks, labelled_blocks, record_folds
from nncift.run.layout import block_self_cols, plan_layout, resolve_sampling
from nncift.run.report import describe_training
from nncift.settings.stages import NetworkSettings, SamplingSettings

QUICK = FitSettings(NetworkSettings(max_steps=40, folds=5, seed=0), eval_every=10, learning_rates=(3e-3,), weight_decays=(1e-4,))


@pytest.fixture(scope="module")
def records():
    return demo_records(120, seed=0)


def delift_layout(pool, targets, labels: int, seed: int = 0):
    """The block the `nncift select` of DELIFT labels: its own 4 diagonal blocks for ``labels`` pairs."""
    sampling = resolve_sampling(SamplingSettings(labels=labels), influence_class("delift"), len(pool), len(targets), len(targets) or len(pool))
    assert sampling.blocks == 4
    return plan_layout(pool, targets, "fl", sampling, np.random.default_rng(seed))


@pytest.mark.parametrize("with_targets", [False, True])
def test_labelled_blocks_are_the_designs_blocks(records, with_targets: bool) -> None:
    pool, targets = (records[:96], records[96:]) if with_targets else (records[:96], [])
    layout = delift_layout(pool, targets, 830 if not with_targets else 400)
    mask, own = layout.labelled(), block_self_cols(layout)
    row_block, col_block, n = labelled_blocks(mask, own)
    assert n == 4
    assert np.array_equal(mask, row_block[:, None] == col_block[None, :])  # a pair is labelled exactly when both sides share a block
    assert labelled_blocks(np.ones((6, 9), dtype=bool), None)[2] == 1  # one u × u block is one block
    partial = np.zeros((5, 5), dtype=bool)
    partial[:2, :2] = True
    row_block, col_block, n = labelled_blocks(partial, None)
    assert n == 1 and (row_block[2:] == -1).all() and (col_block[2:] == -1).all()  # unlabelled rows and columns belong to no block


def test_each_fold_holds_out_whole_blocks_unseen_in_training(records) -> None:
    layout = delift_layout(records[:96], [], 830)
    mask, own = layout.labelled(), block_self_cols(layout)
    folds, _, unit = fold_masks(mask, own, 5, 0, 1, "records", by_block=True)
    assert len(folds) == 4 and unit == "blocks"
    assert fold_masks(mask, own, 5, 0, 1, "records")[2] == "records"  # the default: record folds
    row_block, col_block, _ = labelled_blocks(mask, own)
    seen = np.zeros_like(mask)
    for _, train, val in folds:
        rows, cols = np.flatnonzero(val.any(axis=1)), np.flatnonzero(val.any(axis=0))
        assert val[np.ix_(rows, cols)].all()  # a dense square: every pair of the held-out block is scored
        assert len(set(row_block[rows].tolist())) == 1 and not train[rows].any() and not train[:, cols].any()
        assert np.array_equal(train, mask & ~val)
        seen |= val
    assert np.array_equal(seen, mask)  # every labelled pair is held out once
    row_fold, col_fold, k = record_folds(*mask.shape, own, 5, 0)  # what record folds score instead: a few pairs per block
    per_fold = [int((mask & (row_fold == i)[:, None] & (col_fold == i)[None, :]).sum()) for i in range(k)]
    assert 30 <= np.mean(per_fold) <= 50  # "about 40 per fold" (docs/network.md)
    assert max(per_fold) < min(int(v.sum()) for _, _, v in folds) / 3


def test_small_or_single_blocks_keep_record_folds(records) -> None:
    def unit(mask: np.ndarray, own: np.ndarray | None, held_out: str = "records") -> str:
        return fold_masks(mask, own, 5, 0, 1, held_out, by_block=True)[2]

    assert unit(np.ones((20, 20), dtype=bool), np.arange(20)) == "records"
    small = np.kron(np.eye(4, dtype=bool), np.ones((2, 2), dtype=bool))  # 4 blocks of 2 records: no fold of 5 records
    assert unit(small, np.arange(8)) == "records"
    assert unit(np.ones((6, 30), dtype=bool), None, "columns") == "columns"
    sixteen = np.kron(np.eye(16, dtype=bool), np.ones((3, 3), dtype=bool))  # 16 blocks of 3 records: dealt to folds of ≥ 5 records
    folds, _, dealt = fold_masks(sixteen, np.arange(48), 5, 0, 1, "records", by_block=True)
    assert dealt == "blocks" and len(folds) == 5
    assert all(len(np.flatnonzero(val.any(axis=0))) >= 5 for _, _, val in folds)


def test_fitting_reports_block_folds_only_when_asked(records) -> None:
    layout = delift_layout(records[:96], [], 830)
    mask, own = layout.labelled(), block_self_cols(layout)
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((96, 16))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    rows, cols = embeddings[layout.seen_rows], embeddings[layout.seen_cols]
    labels = np.where(mask, rows @ cols.T + 0.1 * rng.standard_normal(mask.shape), np.nan)
    _, report = fit_pairwise(rows, cols, labels, dataclasses.replace(QUICK, block_folds=True, validation_repeats=2), self_cols=own)
    assert report.held_out == "blocks" and report.folds == 4 and report.candidates  # one block per fold: the repeat draws nothing new
    assert "4 folds of blocks" in describe_training(report.as_dict())  # what the terminal says
    _, default = fit_pairwise(rows, cols, labels, QUICK, self_cols=own)
    assert default.held_out == "records" and default.folds == 5
