"""The u × v grid (``nncift sweep``): NN-CIFT at every labelled fraction u and subset size v, scored in ICL mode.

Per seed, the sampled targets and candidates are **nested**: one seeded permutation of each side,
and u takes its first ``max(round(u·n), min_sampled)`` entries, so a smaller u's sample is part of
a larger u's. The influence function is therefore computed once per seed, on the largest u's block
(resumable, as ``nncift select`` computes its block); every other u reads its sub-block from it.
The manifest counts the entries computed against what independent runs would have computed.

For each (seed, u) the InfluenceNetwork is trained on u's labels only (scaled as ``nncift select``
scales them) and predicts the rest; for each v the run's objective picks the subset. Every subset,
and the references (a random subset per v and seed, the full pool), is evaluated on the held-out
records in in-context-learning mode (:mod:`nncift.downstream.icl`), and by LoRA fine-tuning when asked.

ICL answers are deterministic given the prompt, and a query's prompt depends only on its K
nearest records in the subset, so an answer is generated once per (query, examples) and reused by
every subset that gives the same examples (``answers.jsonl``). Subsets, networks, evaluations and
answers are kept in the sweep folder: an interrupted sweep resumes without redoing finished work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from nncift.data.records import Record
from nncift.run.layout import Layout, sample_size, stratified_order
from nncift.settings.fields import SettingsError, normalise_budget, setting
from nncift.settings.stages import SelectSettings


@dataclass(frozen=True)
class SweepSettings(SelectSettings):
    """Settings of ``nncift sweep`` (the selection settings, less ``fraction``, ``budget`` and ``seed``, which the grid sets)."""

    u: tuple[float, ...] = setting((0.01, 0.05, 0.1, 0.2), above=0, at_most=1)
    """Fractions u of targets and candidates labelled by the influence function (nested: one computation, on the largest)."""
    v: tuple[float, ...] = setting((0.1, 0.2, 0.3, 0.5), normal=normalise_budget)
    """Subset sizes v: fractions of the pool in (0, 1], or record counts above 1."""
    seeds: tuple[int, ...] = setting((0,), at_least=0)
    """Seeds of the sampling, the networks and the random references."""
    heldout: tuple[str, ...] = ()
    """Held-out records (queries) every subset is evaluated on."""
    heldout_limit: int = setting(0, at_least=0)
    """Use only the first N held-out records (0: all)."""
    k: int = setting(3, at_least=1)
    """ICL: examples per query (its K most similar subset records)."""
    max_new_tokens: int = setting(16, at_least=1)
    """ICL and fine-tuning evaluation: most tokens generated per answer."""
    icl_max_length: int = setting(1024, at_least=1)
    """ICL: most prompt tokens (the least similar examples are dropped to fit)."""
    eval_batch_size: int = setting(8, at_least=1)
    """Queries per generation call."""
    references: bool = True
    """Also evaluate a random subset per v and seed and the full pool."""
    finetune: bool = False
    """Also LoRA fine-tune on every subset and evaluate without examples (slow on a CPU)."""

    def __post_init__(self) -> None:
        """Check every field (each v takes the budget's normal form, as --selection.budget does); the grid needs a u and a v."""
        super().__post_init__()
        if not self.u or not self.v:
            raise SettingsError("u" if not self.u else "v", "give at least one value")


def nested_samples(n: int, fractions: Sequence[float], minimum: int, rng: np.random.Generator) -> dict[float, np.ndarray]:
    """Per fraction, a sorted sample of range(n): prefixes of one seeded permutation, so smaller fractions' samples are subsets."""
    order = rng.permutation(n)
    return {u: np.sort(order[: sample_size(n, u, minimum)]).astype(np.int64) for u in fractions}


def nested_layouts(pool: Sequence[Record], targets: Sequence[Record], objective: str, fractions: Sequence[float], minimum: int,
                   seed: int, *, all_targets: bool = False, stratify: bool = False) -> dict[float, Layout]:
    """The matrix layout of every u with nested samples of candidates and targets (rows as :func:`nncift.steps.select.plan_layout` lays them out).

    ``all_targets`` (the all-targets design): every target row is labelled at every u, only the candidates are sampled.
    ``stratify`` (``sampling.stratify``): targets that carry two or more tasks are sampled within each task, nested too
    (prefixes of one :func:`~nncift.run.layout.stratified_order`)."""
    rng = np.random.default_rng(seed)
    cols = nested_samples(len(pool), fractions, minimum, rng)
    tasks = [t.task for t in targets]
    if stratify and len(set(tasks)) > 1:
        order = stratified_order(tasks, rng)
        picked = {u: np.sort(order[: sample_size(len(targets), u, minimum)]).astype(np.int64) for u in fractions}
    else:
        picked = nested_samples(len(targets), fractions, minimum, rng) if targets else {u: np.zeros(0, np.int64) for u in fractions}
    if all_targets and targets:
        picked = {u: np.arange(len(targets), dtype=np.int64) for u in fractions}
    layouts = {}
    for u in fractions:
        if not targets:
            layouts[u] = Layout(list(pool), cols[u], cols[u], len(pool))
        elif objective in ("flmi", "flcg"):
            layouts[u] = Layout(list(pool) + list(targets), np.concatenate([cols[u], len(pool) + picked[u]]), cols[u], len(pool))
        else:
            layouts[u] = Layout(list(targets), picked[u], cols[u], 0)
    return layouts


def sub_block(values: np.ndarray, largest: Layout, layout: Layout) -> np.ndarray:
    """The entries of ``layout``'s block inside the largest block's ``values`` (its rows and columns are subsets)."""
    rows, cols = np.searchsorted(largest.seen_rows, layout.seen_rows), np.searchsorted(largest.seen_cols, layout.seen_cols)
    if not (np.array_equal(largest.seen_rows[rows], layout.seen_rows) and np.array_equal(largest.seen_cols[cols], layout.seen_cols)):
        raise RuntimeError("the samples are not nested")  # cannot happen with nested_layouts
    return np.asarray(values)[np.ix_(rows, cols)]


def cell_name(u: float | None, v: float, seed: int | None) -> str:
    """File name of one subset: ``nncift-u0.05-v0.3-seed0``, ``random-v0.3-seed0`` or ``full``."""
    if u is None and seed is None:
        return "full"
    return f"random-v{v:g}-seed{seed}" if u is None else f"nncift-u{u:g}-v{v:g}-seed{seed}"
