"""The NN-CIFT steps (docs/methods.md §1), and nothing else:

1. sample a fraction u of targets and candidates with a seed, compute the influence function on
   that block only (Q1);
2. train the InfluenceNetwork on Q1 and predict every other entry;
3. run the selection that belongs to the influence function on the predicted matrix (exact Q1
   values kept) and return a subset of the pool.

:func:`run_full_select` is the baseline: the same layout and selection on the matrix the influence
function computes for every pair (no sampling, no network).

Matrix layout (rows = targets, columns = candidates = the pool):

- ``fl`` without targets: rows are the pool itself (represent the pool);
- ``fl`` with targets: rows are the targets (represent the targets);
- ``flmi`` / ``flcg``: rows are the pool followed by the targets; the pool rows give the
  pool × pool similarity, the target rows (transposed) the similarity of each pool item to the
  query set (FLMI) or to the existing set P (FLCG);
- ``topk``: rows are the targets (or the pool); the function aggregates them into one score per candidate.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import selection as selection_module
from . import streaming
from .config import SelectSettings, environment_info, settings_dict
from .data import LoadReport, Record, jsonl_lines, read_many, records_from
from .executor import executor_for, stored_failures
from .influence import InfluenceSpec, PairwiseInfluence, influence_class
from .ledger import CostLedger
from .models import model_fingerprint
from .training import train_network, train_network_pointwise
from .network import NetworkSettings, load_network, load_network_metadata, predict_pointwise, save_network
from .run_files import column_origin, records_digest, save_pool_embeddings, save_rows, write_selection_files
from .store import RUNTIME_KEYS, Block, RunStore, plan_blocks
from .subset_quality import ObjectiveSpec, choose_subset
from .towers import block_self_columns, self_columns


@dataclass
class SelectionResult:
    """What ``nncift select`` returns.

    Attributes:
        indices: pool indices of the chosen records, in pick order.
        scores: the marginal gain (facility location) or score (top-k) of each pick.
        records: the chosen records, in pick order.
        objective: the selection objective's final value.
        manifest: everything recorded about the run (also in ``run_dir/manifest.json``).
        run_dir: the run folder.
    """

    indices: np.ndarray
    scores: np.ndarray
    records: list[Record]
    objective: float
    manifest: dict[str, Any]
    run_dir: Path


@dataclass(frozen=True)
class Layout:
    """Which records the influence matrix's rows stand for, and which are sampled (seen)."""

    rows: list[Record]
    seen_rows: np.ndarray
    seen_cols: np.ndarray
    n_pool_rows: int
    """How many leading rows are pool records (the rest are targets)."""
    row_groups: np.ndarray | None = None
    """Sampling group of each seen row (``sampling_blocks`` > 1); None: one block, every seen pair labelled."""
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


def sample_indices(n: int, fraction: float, minimum: int, rng: np.random.Generator) -> np.ndarray:
    """A sorted random sample of ``max(round(fraction·n), minimum)`` (at most n) indices of range(n)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    size = min(n, max(int(round(fraction * n)), minimum, 1))
    return np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)


def resolve_objective(settings: SelectSettings, function_class: type, has_targets: bool) -> str:
    """The objective of the run: explicit, else the influence function's own (docs/methods.md §4)."""
    objective = settings.objective or function_class.default_objective
    if objective not in ("fl", "flmi", "flcg", "topk"):
        raise ValueError(f"unknown objective '{objective}': choose fl, flmi, flcg or topk")
    if objective in ("flmi", "flcg") and not has_targets:
        raise ValueError(f"objective {objective} needs --targets (the query set, or the existing set for flcg)")
    if not function_class.pairwise and objective != "topk":
        raise ValueError(f"{function_class.name} scores examples one by one: only topk applies")
    return objective


def plan_layout(pool: Sequence[Record], targets: Sequence[Record], objective: str, settings: SelectSettings, rng: np.random.Generator) -> Layout:
    """Decide the matrix rows and sample the seen rows and columns (seeded, never the first rows).

    ``settings.sampling_blocks`` = g > 1 spends the same number of labelled pairs on √g times as many
    records: the sample (u·√g of each side) is split into g seeded groups and only the pairs within a
    group are computed (g diagonal blocks). A pool record that is also a row is in the same group on
    both sides.
    """
    g = int(settings.sampling_blocks) or 1  # 0 (the function's default) is resolved by the caller: see sampling_blocks()
    fraction = min(1.0, settings.fraction * math.sqrt(g))
    minimum = settings.min_sampled * math.ceil(math.sqrt(g))
    seen_cols = sample_indices(len(pool), fraction, minimum, rng)
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


def sampling_blocks(settings: SelectSettings, function_class: type) -> int:
    """The run's sampling design: ``--sampling-blocks``, or when 0 the influence function's default."""
    return int(settings.sampling_blocks) or int(function_class.default_sampling_blocks)


def _groups(n: int, g: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded group of each of n sampled records, g groups of (nearly) equal size (all 0 when g = 1, drawing nothing)."""
    if g == 1:
        return np.zeros(n, dtype=np.int64)
    groups = np.empty(n, dtype=np.int64)
    groups[rng.permutation(n)] = np.arange(n) % g
    return groups


def selection_budget(settings: SelectSettings) -> float | int:
    """The subset size by the one budget rule (:func:`nncift.config.normalise_budget`): a float fraction of
    the pool in (0, 1], or an int count of records above 1."""
    from .config import normalise_budget

    return normalise_budget(settings.budget)


def influence_spec(settings: SelectSettings, options: dict[str, Any]) -> InfluenceSpec:
    """The influence function's spec: the run's shared settings plus its own options."""
    shared = {"model": settings.model, "embedder": settings.embedder, "device": settings.device, "seed": settings.seed}
    return InfluenceSpec(settings.influence, {**shared, **options})


def network_settings(settings: SelectSettings) -> NetworkSettings:
    """The InfluenceNetwork settings of a run: the fields of :class:`NetworkSettings`, read from the run's settings by name."""
    return NetworkSettings(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(NetworkSettings)})


def self_cols_of(layout: Layout) -> np.ndarray:
    """Per matrix row, the column of the same record (the pool rows), else −1."""
    return self_columns(len(layout.rows), layout.n_pool_rows)


def block_self_cols(layout: Layout) -> np.ndarray:
    """Per row of the sampled block Q1, the position in Q1's columns of the same record, else −1."""
    return block_self_columns(self_cols_of(layout), layout.seen_rows, layout.seen_cols)


FILL_RULE = "after the last positive gain: the unchosen candidates by decreasing singleton value f({j}), ties by lowest index"


def label_scaling(function_class: type, known: np.ndarray) -> tuple[float, float]:
    """(low, high) used to scale labels to [0, 1]: the function's fixed range, else min–max of ``known``."""
    if function_class.label_range is not None:
        return function_class.label_range
    finite = known[np.isfinite(known)]
    if finite.size == 0:
        raise RuntimeError("no influence value could be computed on the sampled block")
    low, high = float(finite.min()), float(finite.max())
    return low, (high if high > low else low + 1.0)


def load_inputs(settings: SelectSettings) -> tuple[list[Record], list[Record], list[LoadReport]]:
    """Read the pool and the targets named in the settings."""
    if not settings.data:
        raise ValueError("no pool given: pass --data FILE")
    pool, reports = read_many(settings.data)
    targets, target_reports = read_many(settings.targets) if settings.targets else ([], [])
    if not pool:
        raise ValueError("the pool is empty after loading (see the skip counts)")
    return pool, targets, reports + target_reports


RESELECT_KEYS = frozenset({"budget", "objective", "eta", "nu"} | {f.name for f in dataclasses.fields(NetworkSettings)} - {"seed"})
"""Settings that change only the network or the selection: a run folder whose influence block is finished
is re-selected with other values of these (the network is retrained when its settings changed); any
other difference refuses the folder (the seed too: it draws the sample)."""


def matrix_rows(objective: str, has_targets: bool) -> str:
    """What the influence matrix's rows are for an objective: ``pool``, ``targets`` or ``pool+targets``."""
    if not has_targets:
        return "pool"
    return "pool+targets" if objective in ("flmi", "flcg") else "targets"


def finished_selection(store: RunStore, pool: Sequence[Record], settings: SelectSettings, *, progress: bool) -> SelectionResult | None:
    """The stored result of a run that already finished in this folder with these settings (its
    ``manifest.json`` is written last), or None.

    A finished run is not recomputed: its manifest, with the cost ledger of the run that did the
    work, stays as it is. Delete the folder to recompute. A run finished with other selection or
    network settings (:data:`RESELECT_KEYS`) is re-selected instead.
    """
    manifest_path, selected_path = store.path("manifest.json"), store.path("selected.jsonl")
    if not (manifest_path.is_file() and selected_path.is_file() and store.path("records.json").is_file()):
        return None
    manifest = store.read_json("manifest.json")
    now = settings_dict(settings)
    if any(manifest["settings"].get(key) != now.get(key) for key in RESELECT_KEYS - RUNTIME_KEYS):
        return None
    rows = [json.loads(line) for line in jsonl_lines(selected_path.read_text(encoding="utf-8")) if line.strip()]
    indices = np.array([row["index"] for row in rows], dtype=np.int64)
    if progress:
        print(f"{store.folder}: finished earlier; reusing its selection (delete the folder to recompute)", file=sys.stderr)
    return SelectionResult(indices, np.array([row["score"] for row in rows], dtype=np.float64), [pool[int(i)] for i in indices],
                           float(manifest["objective_value"]), manifest, store.folder)


def run_select(
    settings: SelectSettings,
    out: str | Path,
    *,
    pool: Iterable[Any] | None = None,
    targets: Iterable[Any] | None = None,
    influence_options: dict[str, Any] | None = None,
    reports: Sequence[LoadReport] = (),
) -> SelectionResult:
    """Select a fine-tuning subset of the pool with NN-CIFT.

    Args:
        settings: the run's settings.
        out: the run folder (created; a folder made with other settings is refused).
        pool: records to select from: :class:`Record` objects, plain dicts in any layout the file readers
            accept, or a ``datasets.Dataset``; default: read from ``settings.data``.
        targets: target records, the same kinds; default: read from ``settings.targets`` (none: the pool itself).
        influence_options: options of the influence function's own settings dataclass.
        reports: load reports of records passed in directly (recorded in the manifest).

    Returns:
        The selection, with the manifest that is also written to ``out/manifest.json``.
    """
    run = _start_run(settings, out, pool, targets, influence_options, reports, {})
    with run.store:  # releases the run folder's lock at the end, also on errors
        if run.finished is not None:
            return run.finished
        ledger, store, spec, function_class, objective = run.ledger, run.store, run.spec, run.function_class, run.objective
        pool, targets, progress = run.pool, run.targets, not settings.quiet
        rng = np.random.default_rng(settings.seed)
        with executor_for(settings) as executor:
            if function_class.pairwise:
                chosen, extra, origin = _select_pairwise(settings, spec, function_class, objective, pool, targets, store, executor, ledger, rng, progress)
            else:
                chosen, extra, origin = _select_pointwise(settings, spec, function_class, pool, store, executor, ledger, rng, progress)
        return _finish(run, settings, {**extra, **run.reselected}, chosen, origin)


def run_full_select(
    settings: SelectSettings,
    out: str | Path,
    *,
    pool: Iterable[Any] | None = None,
    targets: Iterable[Any] | None = None,
    influence_options: dict[str, Any] | None = None,
    reports: Sequence[LoadReport] = (),
) -> SelectionResult:
    """Select with the original influence function: computed on every pair (or example), no network.

    The baseline NN-CIFT is measured against (docs/methods.md §6): the same matrix layout, label scaling
    (the function's fixed range, else min–max of the whole matrix) and selection as
    :func:`run_select`, with ``settings.fraction`` ignored. The full matrix is kept in the run
    folder as ``full.npy`` (rows = ``full.rows.npy``, resumable); pointwise scores as ``scores.npy``.
    Arguments and result as :func:`run_select`.
    """
    run = _start_run(settings, out, pool, targets, influence_options, reports, {"fraction": 1.0, "command": "full-select"})
    with run.store:  # releases the run folder's lock at the end, also on errors
        if run.finished is not None:
            return run.finished
        ledger, store, spec, function_class, objective = run.ledger, run.store, run.spec, run.function_class, run.objective
        pool, targets, progress = run.pool, run.targets, not settings.quiet
        with executor_for(settings) as executor:
            if function_class.pairwise:
                layout = plan_layout(pool, targets, objective, dataclasses.replace(settings, fraction=1.0, sampling_blocks=1), np.random.default_rng(settings.seed))
                full = store.matrix("full", np.arange(len(layout.rows)), np.arange(len(pool)))
                with ledger.stage("influence on full matrix"):
                    ledger.counters.update(executor.run_pairwise(spec, layout.rows, pool, full, plan_blocks(*full.shape, settings.block_size, settings.block_size), store.folder, progress=progress))
            else:
                full = store.matrix("scores", np.zeros(1, dtype=np.int64), np.arange(len(pool)))
                with ledger.stage("influence on all examples"):
                    counters, _ = executor.run_pointwise(spec, pool, full, plan_blocks(1, len(pool), 1, settings.block_size), store.folder, progress=progress)
                    ledger.counters.update(counters)
        ledger.evaluations_made = ledger.evaluations_full = int(full.array.size)
        values = np.asarray(full.array, dtype=np.float32)
        low, high = label_scaling(function_class, values)
        scaled = (values - low) / (high - low)
        with ledger.stage("selection"):
            if function_class.pairwise:
                chosen = _run_objective(objective, np.where(np.isfinite(scaled), scaled, 0.0), layout, settings, function_class, spec)
            else:
                chosen = selection_module.top_k(np.where(np.isfinite(scaled[0]), scaled[0], -1.0), selection_budget(settings))  # failures last
        extra = {"label_scaling": {"low": low, "high": high, "source": "fixed range" if function_class.label_range else "min-max of the full matrix"},
                 "matrix_shape": list(full.shape), "not_computed": int(np.isnan(values).sum()), **selection_info(chosen)}
        if function_class.pairwise:
            save_rows(store.folder, layout.rows, layout.n_pool_rows)
        return _finish(run, settings, extra, chosen, column_origin(len(pool), exact=np.arange(len(pool))))


@dataclass
class _Run:
    """What both selections start from: the loaded inputs, the checked run folder and the influence function."""

    ledger: CostLedger
    pool: list[Record]
    targets: list[Record]
    reports: list[LoadReport]
    options: dict[str, Any]
    store: RunStore
    function_class: type
    objective: str
    spec: InfluenceSpec
    finished: SelectionResult | None
    """The stored result when this folder already holds a finished run (nothing else to do)."""
    reselected: dict[str, Any]
    """For the manifest: the selection or network settings changed since the folder's last run (re-selection)."""


def _start_run(settings: SelectSettings, out: str | Path, pool: Iterable[Any] | None, targets: Iterable[Any] | None,
               influence_options: dict[str, Any] | None, reports: Sequence[LoadReport], store_extra: dict[str, Any]) -> _Run:
    """Load the inputs and check everything (targets, objective, influence options, budget) before the run
    folder is created, locked or written; then open (or refuse) it. The caller closes ``store`` (its lock)."""
    from .config import check_options

    ledger = CostLedger()
    reports = list(reports)
    with ledger.stage("load data"):
        if pool is None:
            pool, targets, loaded = load_inputs(settings)
            reports += loaded
            if settings.targets and not targets:
                raise ValueError(f"no target records in {', '.join(settings.targets)}: the targets are empty "
                                 "(leave out --targets to let the pool represent itself)")
        pool, targets = list(pool), None if targets is None else list(targets)
        if not all(isinstance(record, Record) for record in pool):
            pool, pool_report = records_from(pool, "<pool>")
            reports.append(pool_report)
        if targets is not None and not all(isinstance(record, Record) for record in targets):
            targets, target_report = records_from(targets, "<targets>")
            reports.append(target_report)
        pool, targets = list(pool), list(targets or [])
    options = dict(influence_options or {})
    function_class = influence_class(settings.influence)
    objective = resolve_objective(settings, function_class, bool(targets))
    spec = influence_spec(settings, options)
    check_options(function_class.Settings, spec.options)
    selection_module.budget_to_count(selection_budget(settings), len(pool))  # a count above the pool size
    store = RunStore(out, {**settings_dict(settings), **store_extra, "influence_options": options,
                           "matrix_rows": matrix_rows(objective, bool(targets))}, rerun_keys=RESELECT_KEYS)
    try:
        store.check_records(records_digest(pool, targets))  # first: a finished run of other records is never read back
        finished = finished_selection(store, pool, settings, progress=not settings.quiet)
    except BaseException:
        store.close()
        raise
    reselected = {"reselected": {"changed": store.changed, "influence": "reused the stored influence block"}} if store.changed else {}
    if store.changed and not settings.quiet:
        print(f"{store.folder}: re-selecting with changed {', '.join(store.changed)}; the stored influence values are reused", file=sys.stderr)
    return _Run(ledger, pool, targets, reports, options, store, function_class, objective, spec, finished, reselected)


def _finish(run: _Run, settings: SelectSettings, extra: dict[str, Any], chosen: selection_module.Selection, origin: list[str]) -> SelectionResult:
    """Write ``selected.jsonl``, ``subset.jsonl``, ``scores.csv`` and (last) ``manifest.json``; return the :class:`SelectionResult`."""
    write_selection_files(run.store.folder, run.pool, chosen.indices, chosen.gains, values=chosen.values, influence=origin)
    manifest = _manifest(settings, run.function_class, run.options, run.objective, run.pool, run.targets, run.reports, run.ledger, extra, len(chosen.indices), chosen.objective)
    run.store.write_json("manifest.json", manifest)
    return SelectionResult(np.asarray(chosen.indices), np.asarray(chosen.gains), [run.pool[i] for i in chosen.indices], chosen.objective,
                           manifest, run.store.folder)


def _select_pairwise(settings, spec, function_class, objective, pool, targets, store, executor, ledger, rng, progress):
    design = sampling_blocks(settings, function_class)
    layout = plan_layout(pool, targets, objective, dataclasses.replace(settings, sampling_blocks=design), rng)
    seen = store.matrix("q1", layout.seen_rows, layout.seen_cols)
    blocks = layout.blocks(settings.block_size)
    with ledger.stage("influence on sampled block"):
        ledger.counters.update(executor.run_pairwise(spec, layout.rows, pool, seen, blocks, store.folder, progress=progress))
    ledger.evaluations_made = int(layout.labelled().sum())
    ledger.evaluations_full = len(layout.rows) * len(pool)
    with ledger.stage("embeddings"):
        row_embeddings, col_embeddings = _embeddings(executor, settings, layout, pool, progress)
        save_rows(store.folder, layout.rows, layout.n_pool_rows, row_embeddings, col_embeddings)
    known = np.where(layout.labelled(), np.asarray(seen.array, dtype=np.float32), np.nan)
    low, high = label_scaling(function_class, known)
    labels = (known - low) / (high - low)
    criterion = "topk" if objective == "topk" else "fl"
    with ledger.stage("network training"):
        network, report = _trained_network(store, network_settings(settings), progress, criterion, lambda s: train_network(
            row_embeddings[layout.seen_rows], col_embeddings[layout.seen_cols], labels, s, self_cols=block_self_cols(layout),
            objective=criterion, progress=progress))
    with ledger.stage("prediction"):  # row blocks written to disk; Q1 keeps its exact values
        predicted = streaming.predict_to_npy(network, row_embeddings, col_embeddings, store.path("predicted.npy"), executor=executor,
                                             known=(layout.seen_rows, layout.seen_cols, labels), progress=progress,
                                             self_cols=self_cols_of(layout))
    with ledger.stage("selection"):  # on a cluster, or when it would not fit: from disk, same result
        if executor.name == "local" and streaming.fits_in_memory((len(layout.rows), len(pool))):
            chosen = _run_objective(objective, np.load(predicted, mmap_mode="r"), layout, settings, function_class, spec)
        else:
            chosen = _stream_objective(objective, predicted, layout, settings, function_class, spec, store.folder)
    extra = {"label_scaling": {"low": low, "high": high, "source": "fixed range" if function_class.label_range else "min-max of Q1"},
             "sampled_rows": len(layout.seen_rows), "sampled_cols": len(layout.seen_cols), "sampling_blocks": design,
             "labelled_pairs": int(layout.labelled().sum()),
             "matrix_shape": [len(layout.rows), len(pool)], "network_training": report, **selection_info(chosen)}
    partly = layout.seen_cols[np.asarray(layout.labelled()).any(axis=0)]
    return chosen, extra, column_origin(len(pool), partly=partly)


def _embeddings(executor, settings: SelectSettings, layout: Layout, pool: Sequence[Record], progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(row embeddings, column embeddings) of a layout: the pool rows reuse the columns' embeddings."""
    col_embeddings = executor.embed_records(pool, model=settings.embedder, device=settings.device, progress=progress)
    parts = [col_embeddings[: layout.n_pool_rows]]
    if len(layout.rows) > layout.n_pool_rows:
        parts.append(executor.embed_records(layout.rows[layout.n_pool_rows :], model=settings.embedder, device=settings.device, progress=progress))
    return (np.concatenate(parts) if len(parts) > 1 else parts[0]), col_embeddings


def selection_info(chosen: selection_module.Selection) -> dict[str, Any]:
    """What the manifest says about the picks: how many had a positive gain, and how the rest were chosen."""
    if chosen.n_positive is None:
        return {}
    return {"positive_gain_picks": int(chosen.n_positive), "fill_rule": FILL_RULE if chosen.n_positive < len(chosen.indices) else None}


def _trained_network(store: RunStore, network_settings_: NetworkSettings, progress: bool, criterion: str, train):
    """Train (or reuse the stored network of an interrupted run or of a re-selection with the same network
    settings and validation criterion) and report what was chosen."""
    path = store.path("network.safetensors")
    wanted = {"settings": json.loads(json.dumps(dataclasses.asdict(network_settings_))), "criterion": criterion}
    if path.exists():
        stored = load_network_metadata(path)
        if {"settings": stored.get("settings"), "criterion": stored.get("criterion")} == wanted:
            return load_network(path), {**stored.get("report", {}), "reused": str(path)}
    network, report = train(network_settings_)
    save_network(network, path, {**wanted, "report": report})
    if progress:
        print(describe_training(report), file=sys.stderr)
    return network, report


def describe_training(report: dict[str, Any]) -> str:
    """One line on what the network training chose (for the terminal)."""
    if report.get("architecture") == "paper":
        losses = report.get("losses") or [float("nan")]
        return f"influence network (paper MLP): {report['n_labelled']} labels, loss {losses[0]:.4g} -> {losses[-1]:.4g}"
    line = f"influence network ({report['architecture']}): {report['n_labelled']} labels, {report['folds']} record folds; shipped: {report['chosen']}"
    candidates = report.get("candidates") or {}
    if candidates:
        line += " (held-out records, criterion = mean of Spearman and f_gain: " + ", ".join(
            f"{name} {values.get('criterion') if values.get('criterion') is not None else float('nan'):.3f}" for name, values in candidates.items()) + ")"
    if report.get("steps") is not None and report["chosen"] != "prior":
        line += f"; lr {report['learning_rate']:g}, weight decay {report['weight_decay']:g}, {report['steps']} steps"
    if report.get("note"):
        line += f"; {report['note']}"
    return line


def objective_spec(objective: str, layout: Layout, settings: SelectSettings, function_class, spec) -> ObjectiveSpec:
    """The run's selection objective on its matrix layout (top-k with the influence function's aggregation)."""
    scores = None
    if objective == "topk":
        function = function_class.from_options(spec.options, progress=False)
        scores = lambda matrix: function.candidate_scores(matrix, layout.rows)  # noqa: E731
    return ObjectiveSpec(objective, selection_budget(settings), n_pool_rows=layout.n_pool_rows, eta=settings.eta, nu=settings.nu,
                         candidate_scores=scores)


def _run_objective(objective: str, predicted: np.ndarray, layout: Layout, settings: SelectSettings, function_class, spec):
    return choose_subset(predicted, objective_spec(objective, layout, settings, function_class, spec))


def _stream_objective(objective: str, predicted: Path, layout: Layout, settings: SelectSettings, function_class, spec, workdir: Path):
    """:func:`_run_objective` without loading the matrix (:func:`nncift.streaming.select_from_npy`)."""
    function = function_class.from_options(spec.options, progress=False)
    own_scores = type(function).candidate_scores is not PairwiseInfluence.candidate_scores
    return streaming.select_from_npy(
        objective, predicted, selection_budget(settings), n_pool_rows=layout.n_pool_rows, eta=settings.eta, nu=settings.nu,
        candidate_scores=(lambda matrix: function.candidate_scores(matrix, layout.rows)) if own_scores else None, workdir=workdir)


def _select_pointwise(settings, spec, function_class, pool, store, executor, ledger, rng, progress):
    seen = sample_indices(len(pool), settings.fraction, settings.min_sampled, rng)
    scores_store = store.matrix("scores", np.zeros(1, dtype=np.int64), seen)
    blocks = plan_blocks(1, len(seen), 1, settings.block_size)
    with ledger.stage("influence on sampled examples"):
        counters, _ = executor.run_pointwise(spec, pool, scores_store, blocks, store.folder, progress=progress)
        ledger.counters.update(counters)
    failures = stored_failures(scores_store)
    ledger.evaluations_made, ledger.evaluations_full = len(seen), len(pool)
    known = np.asarray(scores_store.array[0], dtype=np.float32)
    low, high = label_scaling(function_class, known)
    labels = (known - low) / (high - low)
    ok = np.isfinite(labels)
    with ledger.stage("embeddings"):
        embeddings = executor.embed_records(pool, model=settings.embedder, device=settings.device, progress=progress)
        save_pool_embeddings(store.folder, embeddings)
    with ledger.stage("network training"):
        network, report = _trained_network(store, network_settings(settings), progress, "topk", lambda s: train_network_pointwise(
            embeddings[seen[ok]], labels[ok], s, progress=progress))
    with ledger.stage("prediction"):
        predicted = predict_pointwise(network, embeddings).astype(np.float32)
        predicted[seen[ok]] = labels[ok]
        store.save_array("predicted_scores.npy", predicted)
    with ledger.stage("selection"):
        chosen = selection_module.top_k(predicted, selection_budget(settings))
    extra = {"label_scaling": {"low": low, "high": high}, "sampled": len(seen),
             "failures": {str(k): v for k, v in sorted(failures.items())}, "network_training": report}
    return chosen, extra, column_origin(len(pool), exact=seen[ok])


def _manifest(settings, function_class, options, objective, pool, targets, reports, ledger, extra, n_selected, objective_value) -> dict[str, Any]:
    skipped: dict[str, int] = {}
    for report in reports:
        for reason, count in report.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + count
    return {
        "settings": settings_dict(settings),
        "influence_options": options,
        "objective": objective,
        "environment": environment_info(),
        "models": {"embedder": model_fingerprint(settings.embedder, kind="embedder"),
                   **({"lm": model_fingerprint(settings.model)} if function_class.uses_language_model else {})},
        "inputs": [report.as_dict() for report in reports],
        "counts": {"pool": len(pool), "targets": len(targets), "selected": n_selected, "skipped": skipped},
        "objective_value": objective_value,
        "cost": ledger.as_dict(),
        **extra,
    }
