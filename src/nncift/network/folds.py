"""What the network is validated and trained on: record folds (repeated, stratified), block folds, and the bounded training sample.

A pool record that is both a row (a target) and a column (a candidate) is one record: it is held out, or
sampled, on both sides at once. Rows that are no pool record (separate targets) are records of their own.

Where the labels lie in several diagonal blocks (``sampling.blocks`` > 1, DELIFT's default), a record fold holds
out a few records of every block, and its held-out pairs — those whose row and column are both in the fold *and* in
the same block — are a scattered handful (on the demo's DELIFT matrix at 830 labelled pairs in 4 blocks, about 40 per
fold, in 4 squares of about 3 × 3). **Block folds** (``by_block``: each fold holds out whole blocks, :func:`labelled_blocks`,
a dense square of records the training never saw) were measured against them and are not the default: on the two
DELIFT matrices (6 budget cells, 3–6 seeds) the mean f_gain was the same (+0.002) and the shipped predictor fell below
the cosine on 10 seed × budget cells against 9 (BENCHMARKS.md, "Block folds"). They stay as an option
(:attr:`~nncift.network.fitting.FitSettings.block_folds`) for the benchmarks.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["MIN_RECORDS_PER_FOLD", "record_folds", "labelled_blocks", "block_folds", "fold_masks", "training_sample", "sampled_self_cols",
           "validation_hold_out"]

MIN_RECORDS_PER_FOLD = 5
"""Fewest held-out records per fold: with fewer, fewer folds are used (and below :data:`MIN_FOLDS`, the prior is shipped)."""


def _record_ids(n_rows: int, n_cols: int, self_cols: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(record id of each row, all record ids): column j is record j; a row is its own column's record, else a new one."""
    own = np.full(n_rows, -1, dtype=np.int64) if self_cols is None else np.asarray(self_cols, dtype=np.int64)
    row_ids = np.where(own >= 0, own, n_cols + np.arange(n_rows))
    return row_ids, np.unique(np.concatenate([np.arange(n_cols), row_ids]))


def record_folds(n_rows: int, n_cols: int, self_cols: np.ndarray | None, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Fold of each row and each column: a row that is the same record as a column shares its fold.

    Stratified: the pool records (columns, with their own rows) and the rows that are no pool record
    (separate targets) are dealt round-robin to the folds separately, after one seeded shuffle each, so every fold
    holds its share of target rows (a LESS block of 6 target rows × 101 candidates in 4 folds: 2, 2, 1 and 1 rows,
    never a fold without a row). Returns ``(row_fold, col_fold, k)`` with ``k`` the number of folds used (at most
    one per record).
    """
    row_ids, ids = _record_ids(n_rows, n_cols, self_cols)
    k = int(max(1, min(folds, len(ids))))
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(ids), dtype=np.int64)
    pool, extra = np.flatnonzero(ids < n_cols), np.flatnonzero(ids >= n_cols)
    fold_of[pool[rng.permutation(len(pool))]] = np.arange(len(pool)) % k
    fold_of[extra[rng.permutation(len(extra))]] = (np.arange(len(extra)) + len(pool)) % k  # continue the deal: folds stay even
    lookup = dict(zip(ids.tolist(), fold_of.tolist()))
    return np.array([lookup[i] for i in row_ids.tolist()], dtype=np.int64), fold_of[:n_cols].copy(), k


def labelled_blocks(mask: np.ndarray, self_cols: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int]:
    """The labelled pairs' blocks: connected groups of rows and columns, linked by a labelled pair or by being the same
    record. Returns ``(row_block, col_block, n)``, −1 for a row or column without a labelled pair.

    One u × u block is one group; ``sampling.blocks`` = g diagonal blocks are g groups (a row and a column are never
    labelled together across blocks)."""
    n_rows, n_cols = mask.shape
    rows, cols = np.nonzero(mask)
    own = np.full(n_rows, -1, dtype=np.int64) if self_cols is None else np.asarray(self_cols, dtype=np.int64)
    same = np.flatnonzero(own >= 0)
    graph = coo_matrix((np.ones(len(rows) + len(same)), (np.concatenate([rows, same]), n_rows + np.concatenate([cols, own[same]]))),
                       shape=(n_rows + n_cols, n_rows + n_cols))
    _, component = connected_components(graph, directed=False)
    used = np.zeros(n_rows + n_cols, dtype=bool)
    used[rows], used[n_rows + cols] = True, True
    block = np.full(n_rows + n_cols, -1, dtype=np.int64)
    names, block[used] = np.unique(component[used], return_inverse=True)
    return block[:n_rows], block[n_rows:], len(names)


def block_folds(row_block: np.ndarray, col_block: np.ndarray, n_blocks: int, records_per_block: np.ndarray, folds: int,
                seed: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Fold of each row and column when whole blocks are held out: blocks dealt to ``k`` folds (seeded, each fold the
    smallest so far gets the next largest block), every fold with at least :data:`MIN_RECORDS_PER_FOLD` records. None
    when there are fewer than 3 such folds (one block: the record folds of :func:`record_folds`)."""
    k = int(min(folds, n_blocks, records_per_block.sum() // MIN_RECORDS_PER_FOLD))
    if n_blocks < 2 or k < 3:
        return None
    order = np.random.default_rng(seed).permutation(n_blocks)
    order = order[np.argsort(-records_per_block[order], kind="stable")]
    fold_of, load = np.empty(n_blocks, dtype=np.int64), np.zeros(k, dtype=np.int64)
    for b in order:
        fold_of[b] = int(np.argmin(load))
        load[fold_of[b]] += records_per_block[b]
    if load.min() < MIN_RECORDS_PER_FOLD:
        return None
    return np.where(row_block >= 0, fold_of[np.maximum(row_block, 0)], -1), np.where(col_block >= 0, fold_of[np.maximum(col_block, 0)], -1), k


def _block_layout(mask: np.ndarray, self_cols: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, int, np.ndarray] | None:
    """(row block, column block, blocks, records per block) when the labels lie in two or more blocks, else None."""
    row_block, col_block, n_blocks = labelled_blocks(mask, self_cols)
    if n_blocks < 2:
        return None
    own = np.full(len(row_block), -1, dtype=np.int64) if self_cols is None else np.asarray(self_cols, dtype=np.int64)
    separate = row_block[(own < 0) & (row_block >= 0)]  # rows that are no pool record are records of their own
    records = np.bincount(col_block[col_block >= 0], minlength=n_blocks) + np.bincount(separate, minlength=n_blocks)
    return row_block, col_block, n_blocks, records


def fold_masks(mask: np.ndarray, self_cols: np.ndarray | None, folds: int, seed: int, repeats: int, held_out: str, by_block: bool = False
               ) -> tuple[list[tuple[int, np.ndarray, np.ndarray]], int, str]:
    """Per fold of every repeat (fold id, training mask, validation mask); the number of held-out units (records or columns);
    and what a fold holds out, in words for the report: ``records``, ``blocks`` or ``columns``.

    ``held_out="records"``: a fold's records are held out on both sides (the unlabelled pairs of a u × u
    block: neither side seen); with ``by_block``, where the labels lie in several blocks, a fold is whole blocks
    (:func:`block_folds`; record folds when the blocks are too few or too small for 3 folds). ``"columns"`` (:func:`validation_hold_out`:
    every row labelled, or top-k): folds hold out columns only and validate on all rows × the fold's columns.
    Repeat ``r`` draws its folds with seed ``seed + r``; fold ids run on across repeats.
    """
    n_rows, n_cols = mask.shape
    n_units = n_cols if held_out == "columns" else len(_record_ids(n_rows, n_cols, self_cols)[1])
    k = max(1, min(folds, n_units // MIN_RECORDS_PER_FOLD))
    blocks = _block_layout(mask, self_cols) if held_out == "records" and by_block else None
    masks, unit = [], held_out
    for repeat in range(max(1, repeats)):
        repeat_seed = seed + repeat
        dealt = None if blocks is None else block_folds(*blocks, folds, repeat_seed)
        if dealt is not None and blocks is not None:
            (row_fold, col_fold, k), unit = dealt, "blocks"
            if repeat and k == blocks[2]:
                break  # one block per fold: every draw is the same folds
        elif held_out == "columns":
            col_fold = np.empty(n_cols, dtype=np.int64)
            col_fold[np.random.default_rng(repeat_seed).permutation(n_cols)] = np.arange(n_cols) % k
            row_fold = np.full(n_rows, -1, dtype=np.int64)
        else:
            row_fold, col_fold, k = record_folds(n_rows, n_cols, self_cols, k, repeat_seed)
        for fold in range(k):
            rows_out = np.ones(n_rows, dtype=bool) if held_out == "columns" else row_fold == fold
            train = mask & ~(row_fold == fold)[:, None] & (col_fold != fold)[None, :]
            val = mask & rows_out[:, None] & (col_fold == fold)[None, :]
            if train.sum() >= 2 and val.sum() >= 2:
                masks.append((repeat * k + fold, train, val))
    return masks, n_units, unit


def training_sample(labels: np.ndarray, self_cols: np.ndarray | None, max_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of a seeded sample of the labelled records whose labelled pairs number at most ``max_pairs`` (all of
    them when they fit, or when ``max_pairs`` is 0). A pool record that is both a row and a column is kept or dropped on both
    sides together; records are kept with the probability that leaves about ``max_pairs`` pairs, then trimmed to the cap."""
    finite = np.isfinite(labels)
    total = int(finite.sum())
    n_rows, n_cols = labels.shape
    if max_pairs <= 0 or total <= max_pairs:
        return np.arange(n_rows), np.arange(n_cols)
    row_ids, ids = _record_ids(n_rows, n_cols, self_cols)
    order = np.random.default_rng(seed).permutation(len(ids))  # records in the order they are kept
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    lookup = dict(zip(ids.tolist(), rank.tolist()))
    row_rank, col_rank = np.array([lookup[i] for i in row_ids.tolist()]), rank[np.searchsorted(ids, np.arange(n_cols))]
    low, high = 1, len(ids)  # the most records (by rank) whose pairs fit
    while low < high:
        middle = (low + high + 1) // 2
        pairs = int(finite[np.ix_(row_rank < middle, col_rank < middle)].sum())
        low, high = (middle, high) if pairs <= max_pairs else (low, middle - 1)
    return np.flatnonzero(row_rank < low), np.flatnonzero(col_rank < low)


def sampled_self_cols(self_cols: np.ndarray, keep_cols: np.ndarray) -> np.ndarray:
    """Each kept row's own column re-indexed into the kept columns (−1: not kept, or none)."""
    position = np.full(int(max(self_cols.max(initial=-1), keep_cols.max(initial=-1))) + 1, -1, dtype=np.int64)
    position[keep_cols] = np.arange(len(keep_cols))
    return np.where(self_cols >= 0, position[np.maximum(self_cols, 0)], -1)


def validation_hold_out(labelled_rows: int, rows: int, objective: str) -> str:
    """What the network's validation holds out: ``columns`` (candidates only: every labelled row × the held-out candidates)
    or ``records`` (both sides of a fold's records).

    ``columns`` when every row is labelled (nothing else is ever predicted), and for top-k: top-k ranks candidates by an
    aggregate over all target rows (LESS: the max over subtasks of the mean over a subtask's targets), so what must hold on
    unseen records is each candidate's aggregated score across the labelled targets of every subtask; a record fold of one
    or two target rows cannot show it. On the LESS benchmark (2,016 records, 120 targets, u = 0.05) validating top-k on
    held-out candidates shipped the learned network on 2 of 3 seeds (f_gain 0.600 against the cosine's 0.540) where
    record folds kept the cosine, and still kept the cosine at u = 0.02, where the network is no better. The labelled
    rows are then seen in training, which flatters a candidate's row terms; facility location, which reads each row on
    its own, keeps record folds.
    """
    return "columns" if labelled_rows == rows or objective == "topk" else "records"
