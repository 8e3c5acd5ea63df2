"""Run store: block matrices resume, settings mismatches are refused with the differing key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nncift.files.errors import SettingsMismatch
from nncift.run.store import BlockMatrix, RunStore, plan_blocks


def test_plan_blocks_tiles_exactly() -> None:
    blocks = plan_blocks(10, 7, 4, 3)
    covered = np.zeros((10, 7), dtype=int)
    for b in blocks:
        covered[b.row_start : b.row_stop, b.col_start : b.col_stop] += 1
    assert (covered == 1).all() and len(blocks) == 3 * 3


def test_block_matrix_resumes_and_ignores_torn_line(tmp_path: Path) -> None:
    rows, cols = np.array([5, 1, 9]), np.array([0, 2, 4, 6, 8])
    matrix = BlockMatrix(tmp_path, "m", rows, cols)
    assert matrix.shape == (3, 5) and np.isnan(matrix.array).all()
    blocks = plan_blocks(3, 5, 2, 2)
    for block in blocks[:3]:
        r, c = matrix.block_indices(block)
        matrix.write(block, np.add.outer(r, c).astype(np.float32))
    with matrix.done_path.open("a") as handle:
        handle.write('{"block": "2:3,')  # a line torn by a kill
    reopened = BlockMatrix(tmp_path, "m", rows, cols)
    assert [b.key for b in reopened.pending(blocks)] == [b.key for b in blocks[3:]]
    for block in reopened.pending(blocks):
        r, c = reopened.block_indices(block)
        reopened.write(block, np.add.outer(r, c).astype(np.float32))
    assert reopened.complete()
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), np.add.outer(rows, cols).astype(np.float32))


def test_block_matrix_refuses_other_indices_and_wrong_shapes(tmp_path: Path) -> None:
    matrix = BlockMatrix(tmp_path, "m", np.arange(3), np.arange(4))
    with pytest.raises(ValueError, match="expected"):
        matrix.write(plan_blocks(3, 4, 2, 2)[0], np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(SettingsMismatch):
        BlockMatrix(tmp_path, "m", np.arange(3), np.arange(1, 5))


def test_run_store_names_the_differing_setting(tmp_path: Path) -> None:
    RunStore(tmp_path / "run", {"fraction": 0.05, "seed": 0, "quiet": False})
    RunStore(tmp_path / "run", {"fraction": 0.05, "seed": 0, "quiet": True})  # runtime-only key: fine
    with pytest.raises(SettingsMismatch, match=r"fraction: stored 0\.05, now 0\.1"):
        RunStore(tmp_path / "run", {"fraction": 0.1, "seed": 0})


def test_a_folder_older_than_a_setting_resumes_at_that_settings_old_value(tmp_path: Path) -> None:
    old = {"seed": 0, "selection": {"budget": 5}, "packing": False}
    RunStore(tmp_path / "run", {"seed": 0, "selection": {"budget": 5}}).close()  # written before two settings existed
    added = {"selection.partitions": 0, "packing": False}
    RunStore(tmp_path / "run", {**old, "selection": {"budget": 5, "partitions": 0}}, added=added).close()
    with pytest.raises(SettingsMismatch, match=r"selection\.partitions: stored 0, now 4"):  # another value: refused
        RunStore(tmp_path / "run", {**old, "selection": {"budget": 5, "partitions": 4}}, added=added)
    with pytest.raises(SettingsMismatch, match="partitions"):  # without the declaration: refused, as before
        RunStore(tmp_path / "run", {**old, "selection": {"budget": 5, "partitions": 0}})
