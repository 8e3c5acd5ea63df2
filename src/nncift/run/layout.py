"""The matrix layout of a run: which records the influence matrix's rows stand for, and which rows and
columns are sampled (seen) for the exact influence function (docs/methods.md §1)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from nncift.data.records import Record
from nncift.influence import InfluenceFunction
from nncift.run.store import Block, plan_blocks
from nncift.settings.stages import SamplingSettings


@dataclass(frozen=True)
class Layout:
    """Which records the influence matrix's rows stand for, and which are sampled (seen)."""

    rows: list[Record]
    seen_rows: np.ndarray
    seen_cols: np.ndarray
    n_pool_rows: int
    """How many leading rows are pool records (the rest are targets)."""
    row_groups: np.ndarray | None = None
    """Sampling group of each seen row (``sampling.blocks`` > 1); None: one block, every seen pair labelled."""
    col_groups: np.ndarray | None = None
    """Sampling group of each seen column."""

    def labelled(self) -> np.ndarray:
        """(len(seen_rows), len(seen_cols)) mask of the pairs of Q1 the influence function computes."""
        if self.row_groups is None or self.col_groups is None:
            return np.ones((len(self.seen_rows), len(self.seen_cols)), dtype=bool)
        return self.row_groups[:, None] == self.col_groups[None, :]

    def blocks(self, block_size: int) -> list[Block]:
        """The blocks of Q1 to compute: all of it, or each group's rectangle (rows and columns are ordered by group)."""
        if self.row_groups is None or self.col_groups is None:
            return plan_blocks(len(self.seen_rows), len(self.seen_cols), block_size, block_size)
        blocks = []
        for group in np.unique(self.col_groups):
            rows, cols = np.flatnonzero(self.row_groups == group), np.flatnonzero(self.col_groups == group)
            for block in plan_blocks(len(rows), len(cols), block_size, block_size):
                blocks.append(Block(rows[0] + block.row_start, rows[0] + block.row_stop, cols[0] + block.col_start, cols[0] + block.col_stop))
        return blocks


def sample_size(n: int, fraction: float, minimum: int) -> int:
    """How many of n records fraction u samples: ``max(round(u·n), minimum, 1)``, at most n."""
    return min(n, max(int(round(fraction * n)), minimum, 1))


def sample_indices(n: int, fraction: float, minimum: int, rng: np.random.Generator) -> np.ndarray:
    """A sorted random sample of :func:`sample_size` indices of range(n)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return np.sort(rng.choice(n, size=sample_size(n, fraction, minimum), replace=False)).astype(np.int64)


def stratified_order(groups: Sequence[object], rng: np.random.Generator) -> np.ndarray:
    """A seeded order of range(len(groups)) whose every prefix is a stratified sample of ``groups`` (one label per index, e.g.
    each target's task): one random member of every group first (the groups in random order), then the rest by systematic
    sampling within each group (member r of a group of c at (r + o)/c, o one random offset a group), so a prefix of m
    indices holds every group once m reaches the number of groups, and each group's share of it within one of proportional."""
    labels = {label: i for i, label in enumerate(dict.fromkeys(groups))}
    ids = np.array([labels[g] for g in groups], dtype=np.int64)
    counts = np.bincount(ids, minlength=len(labels)).astype(np.float64)
    offsets = rng.random(len(labels))
    rank = np.empty(len(ids), dtype=np.float64)
    for group in range(len(labels)):
        members = np.flatnonzero(ids == group)
        rank[members[rng.permutation(len(members))]] = np.arange(len(members))
    key = (rank + offsets[ids]) / counts[ids]
    return np.lexsort((key, rank > 0)).astype(np.int64)


def stratified_indices(groups: Sequence[object], fraction: float, minimum: int, rng: np.random.Generator) -> np.ndarray:
    """A sorted sample of :func:`sample_size` indices, the first of :func:`stratified_order`."""
    return np.sort(stratified_order(groups, rng)[: sample_size(len(groups), fraction, minimum)]).astype(np.int64)


def plan_layout(pool: Sequence[Record], targets: Sequence[Record], objective: str, sampling: SamplingSettings, rng: np.random.Generator) -> Layout:
    """Decide the matrix rows and sample the seen rows and columns (seeded, never the first rows).

    ``sampling.design`` (resolved by :func:`resolve_sampling`; ``auto`` reads as ``block`` here):

    - ``block``: u of the rows × u of the candidates. ``sampling.blocks`` = g > 1 spends the same
      number of labelled pairs on √g times as many records: the sample (u·√g of each side) is split
      into g seeded groups and only the pairs within a group are computed (g diagonal blocks). A pool
      record that is also a row is in the same group on both sides.
    - ``all-targets`` (with targets): every target row × u of the candidates (and, where the pool's
      own rows come first, u of them too): every target row has exact labels.

    A fraction of 1 labels every pair, whatever the design. ``sampling.stratify``: separate targets that carry two or more
    task labels are sampled within each task (:func:`stratified_indices`), so that every task has labelled target rows.
    """
    g = int(sampling.blocks) or 1  # 0 (the function's default) is resolved by the caller: see resolve_sampling()
    every_pair = sampling.fraction >= 1
    if every_pair:
        g = 1
    fraction = min(1.0, sampling.fraction * math.sqrt(g))
    minimum = sampling.min_sampled * math.ceil(math.sqrt(g))
    seen_cols = sample_indices(len(pool), fraction, minimum, rng)
    all_targets = sampling.design == "all-targets" and bool(targets)
    tasks = [t.task for t in targets]
    if all_targets or every_pair:
        seen_targets = np.arange(len(targets), dtype=np.int64)
    elif sampling.stratify and len(set(tasks)) > 1:
        seen_targets = stratified_indices(tasks, fraction, minimum, rng)
    else:
        seen_targets = sample_indices(len(targets), fraction, minimum, rng) if targets else np.zeros(0, np.int64)
    col_groups = _groups(len(seen_cols), g, rng)
    target_groups = _groups(len(seen_targets), g, rng)
    if not targets:
        rows, row_ids, row_groups, n_pool_rows = list(pool), seen_cols, col_groups, len(pool)
    elif objective in ("flmi", "flcg"):
        rows, n_pool_rows = list(pool) + list(targets), len(pool)
        row_ids, row_groups = np.concatenate([seen_cols, len(pool) + seen_targets]), np.concatenate([col_groups, target_groups])
    else:
        rows, row_ids, row_groups, n_pool_rows = list(targets), seen_targets, target_groups, 0
    if g == 1:
        return Layout(rows, row_ids, seen_cols, n_pool_rows)
    row_order = np.lexsort((row_ids, row_groups))  # by group, then pool rows before targets, then index
    col_order = np.lexsort((seen_cols, col_groups))
    return Layout(rows, row_ids[row_order], seen_cols[col_order], n_pool_rows, row_groups[row_order], col_groups[col_order])


def resolve_sampling(sampling: SamplingSettings, function_class: type[InfluenceFunction], n_pool: int, n_targets: int,
                     n_rows: int) -> SamplingSettings:
    """The sampling stage with every "the function's own" choice made: the design, the blocks and, from a label budget
    (``sampling.labels``), the fraction.

    ``auto`` is ``block`` (in ``function_class.default_sampling_blocks`` blocks when ``sampling.blocks``
    is 0): on the LESS benchmark of 2,016 P3 records the all-targets design, which labels every target
    row, lost selection quality against a u × u block at the same fraction (BENCHMARKS.md), so it is
    an explicit choice. A label budget N is labelled pairs for a function that costs per pair (block
    designs label u²·R·C pairs, all-targets R·u·C), sampled pool records for one that costs per record
    (u = N / pool size).
    """
    design = "block" if sampling.design == "auto" else sampling.design
    if design == "all-targets" and not n_targets:
        design = "block"  # the pool represents itself: its rows are its candidates
    blocks = 1 if design == "all-targets" else int(sampling.blocks) or int(function_class.default_sampling_blocks)
    fraction = sampling.fraction
    if sampling.labels:
        if function_class.cost_per == "pair":
            fraction = sampling.labels / (n_rows * n_pool) if design == "all-targets" else math.sqrt(sampling.labels / (n_rows * n_pool))
        else:
            fraction = sampling.labels / n_pool
        fraction = min(1.0, max(fraction, 1e-9))
    if fraction >= 1:
        design, blocks = "block", 1
    return dataclasses.replace(sampling, design=design, blocks=blocks, fraction=fraction)


def _groups(n: int, g: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded group of each of n sampled records, g groups of (nearly) equal size (all 0 when g = 1, drawing nothing)."""
    if g == 1:
        return np.zeros(n, dtype=np.int64)
    groups = np.empty(n, dtype=np.int64)
    groups[rng.permutation(n)] = np.arange(n) % g
    return groups


def self_cols_of(layout: Layout) -> np.ndarray:
    """Per matrix row, the column of the same record (the pool rows), else −1."""
    return self_columns(len(layout.rows), layout.n_pool_rows)


def block_self_cols(layout: Layout) -> np.ndarray:
    """Per row of the sampled block Q1, the position in Q1's columns of the same record, else −1."""
    return block_self_columns(self_cols_of(layout), layout.seen_rows, layout.seen_cols)


def matrix_rows(objective: str, has_targets: bool) -> str:
    """What the influence matrix's rows are for an objective: ``pool``, ``targets`` or ``pool+targets``."""
    if not has_targets:
        return "pool"
    return "pool+targets" if objective in ("flmi", "flcg") else "targets"


def self_columns(n_rows: int, n_self_rows: int) -> np.ndarray:
    """Column index of each row's own record (``i`` for the first ``n_self_rows`` rows), else −1."""
    out = np.full(n_rows, -1, dtype=np.int64)
    out[:n_self_rows] = np.arange(min(n_self_rows, n_rows))
    return out


def block_self_columns(self_cols: np.ndarray, seen_rows: np.ndarray, seen_cols: np.ndarray) -> np.ndarray:
    """:func:`self_columns` restricted to a block: per seen row, the position among ``seen_cols`` of its own record, else −1."""
    position = {int(c): p for p, c in enumerate(seen_cols)}
    return np.array([position.get(int(self_cols[r]), -1) if self_cols[r] >= 0 else -1 for r in seen_rows], dtype=np.int64)
