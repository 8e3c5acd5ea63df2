"""The NN-CIFT steps (docs/methods.md §1), and nothing else:

1. sample a fraction u of targets and candidates with a seed, compute the influence function on that block only (Q1);
2. train the InfluenceNetwork on Q1 and predict every other entry;
3. run the selection that belongs to the influence function on the predicted matrix (exact Q1
   values kept) and return a subset of the pool.

``run_select(..., full_matrix=True)`` is the baseline: the same layout and selection on the matrix the influence
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

import contextlib
import dataclasses
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from nncift import selection as selection_module
from nncift.data.records import LoadReport, Record, read_many, records_from
from nncift.execution.executor import Executor, executor_for, stored_failures
from nncift.files.errors import InputError
from nncift.influence import (
    InfluenceFunction,
    InfluenceSpec,
    influence_class,
    network_reading,
)
from nncift.models.embeddings import EmbeddingCache
from nncift.network import streaming
from nncift.network.files import NetworkFileError, load_network, load_network_metadata, save_network
from nncift.network.paper import predict_pointwise
from nncift.network.training import train_network, train_network_pointwise
from nncift.run.commit import COMMIT_NAME, check_inputs, commit_problem, committed_settings, remove_temporaries, write_commit
from nncift.run.files import column_origin, read_picks, records_digest, save_pool_embeddings, save_rows, write_selection_files
from nncift.run.layout import (
    Layout,
    block_self_cols,
    matrix_rows,
    plan_layout,
    resolve_sampling,
    sample_indices,
    self_cols_of,
)
from nncift.run.ledger import CostLedger
from nncift.run.report import build_manifest, describe_training, run_models, selection_info
from nncift.run.store import RunStore, plan_blocks
from nncift.selection import ObjectiveSpec, Selection, choose_subset
from nncift.settings.choices import OBJECTIVES
from nncift.settings.fields import settings_dict
from nncift.settings.stages import NetworkSettings, RunContext, SamplingSettings, SelectionSettings, SelectSettings
from nncift.steps.aggregation import network_task_rows, network_validation, topk_scorers
from nncift.steps.preflight import check_labelled_block
from nncift.steps.select_sparse import select_on_graph, selection_plan


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


def resolve_objective(settings: SelectSettings, function_class: type[InfluenceFunction], has_targets: bool) -> str:
    """The objective of the run: explicit, else the influence function's own (docs/methods.md §4)."""
    objective = settings.selection.objective or function_class.default_objective
    if objective not in OBJECTIVES:
        raise InputError(f"unknown objective '{objective}': choose {', '.join(OBJECTIVES)}")
    if objective in ("flmi", "flcg") and not has_targets:
        raise InputError(f"objective {objective} needs --targets (the query set, or the existing set for flcg)")
    if not function_class.pairwise and objective != "topk":
        raise InputError(f"{function_class.name} scores examples one by one: only topk applies")
    return objective


def influence_spec(settings: SelectSettings, options: dict[str, Any]) -> InfluenceSpec:
    """The influence function's spec: its own options and the run's context (model, device, dtype, seed, ...)."""
    return InfluenceSpec(settings.influence, dict(options), RunContext.of(settings))


def label_scaling(function_class: type[InfluenceFunction], known: np.ndarray) -> tuple[float, float]:
    """(low, high) used to scale labels to [0, 1]: the function's fixed range, else min–max of ``known``."""
    if function_class.label_range is not None:
        return function_class.label_range
    finite = known[np.isfinite(known)]
    if finite.size == 0:
        raise InputError("no influence value could be computed on the sampled block")
    low, high = float(finite.min()), float(finite.max())
    return low, (high if high > low else low + 1.0)


def load_inputs(settings: SelectSettings) -> tuple[list[Record], list[Record], list[LoadReport]]:
    """Read the pool and the targets named in the settings."""
    if not settings.data:
        raise InputError("no pool given: pass --data FILE")
    pool, reports = read_many(settings.data)
    targets, target_reports = read_many(settings.targets) if settings.targets else ([], [])
    if not pool:
        raise InputError("the pool is empty after loading (see the skip counts)")
    return pool, targets, reports + target_reports


ADDED_SETTINGS: dict[str, object] = {"selection.partitions": 0, "network.step_pairs": 0, "selection.graph": "auto", "sampling.stratify": False,
                                   "network.input": "text", "network.response_weight": 0.7071067811865476, "network.task_calibration": "off",
                                   "selection.task_share": 0.0, "network.confirm": False}
"""Select settings newer than some run folders, at the values those folders ran with (:class:`~nncift.run.store.RunStore`'s ``added``)."""
RESELECT_KEYS = frozenset({"selection", "network"})
"""The stages whose settings change only the network or the selection: a run folder whose influence block is finished
is re-selected with other values of these (the network is retrained when its settings changed); any
other difference refuses the folder (the seed too: it draws the sample)."""


def finished_selection(store: RunStore, pool: Sequence[Record], settings: SelectSettings, *, progress: bool) -> SelectionResult | None:
    """The stored result of a run that finished in this folder with these settings (its commit record matches its files,
    :mod:`nncift.run.commit`; manifest and cost ledger as they were), or None: then it is selected again from the stored
    influence values (other :data:`RESELECT_KEYS`, an interrupted re-selection, a damaged file). Delete the folder to recompute."""
    committed = committed_settings(store.folder)
    if committed is not None and store.changes_since(committed):
        return None
    problem = None if committed is None and not store.path(COMMIT_NAME).exists() else commit_problem(store.folder)
    if committed is None or problem is not None:
        if problem is not None and progress:
            print(f"{problem}; selecting again from the stored influence values", file=sys.stderr)
        return None
    manifest = store.read_json("manifest.json")
    indices, scores = read_picks(store.path("selected.jsonl"))
    remove_temporaries(store.folder)  # left by a write a kill interrupted
    if progress:
        print(f"{store.folder}: finished earlier; reusing its selection (delete the folder to recompute)", file=sys.stderr)
    return SelectionResult(indices, scores, [pool[int(i)] for i in indices], float(manifest["objective_value"]), manifest, store.folder)


def run_select(
    settings: SelectSettings,
    out: str | Path,
    *,
    pool: Iterable[Any] | None = None,
    targets: Iterable[Any] | None = None,
    influence_options: dict[str, Any] | None = None,
    reports: Sequence[LoadReport] = (),
    full_matrix: bool = False,
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
        full_matrix: select with the original influence function instead, computed on every pair (or example), no
            network: the baseline NN-CIFT is measured against (docs/methods.md §6), with the same matrix layout, label
            scaling (the function's fixed range, else min–max of the whole matrix) and selection; ``settings.sampling``
            is ignored. The matrix is kept in the run folder as ``full.npy`` (rows = ``full.rows.npy``, resumable),
            pointwise scores as ``scores.npy``.

    Returns:
        The selection, with the manifest that is also written to ``out/manifest.json``.
    """
    baseline = {"sampling": "every pair", "command": "full-select"} if full_matrix else {}
    run = _start_run(settings, out, pool, targets, influence_options, reports, baseline)
    with run.store:  # releases the run folder's lock at the end, also on errors
        if run.finished is not None:
            return run.finished
        with executor_for(settings.executor) as executor:
            if full_matrix:
                chosen, extra, origin = _select_full_matrix(run, settings, executor)
            elif run.function_class.pairwise:
                chosen, extra, origin = _select_pairwise(run, settings, executor, np.random.default_rng(settings.seed))
            else:
                chosen, extra, origin = _select_pointwise(run, settings, executor, np.random.default_rng(settings.seed))
        return _finish(run, settings, extra if full_matrix else {**extra, **run.reselected}, chosen, origin)


def _select_full_matrix(run: _Run, settings: SelectSettings, executor: Executor) -> tuple[Selection, dict[str, Any], list[str]]:
    """The baseline: the influence function on every pair (or example), then the selection; (picks, manifest entries, value origins)."""
    ledger, store, spec, function_class, objective = run.ledger, run.store, run.spec, run.function_class, run.objective
    pool, targets, progress = run.pool, run.targets, not settings.quiet
    if function_class.pairwise:
        every_pair = SamplingSettings(fraction=1.0, blocks=1)
        layout = plan_layout(pool, targets, objective, every_pair, np.random.default_rng(settings.seed))
        full = store.matrix("full", np.arange(len(layout.rows)), np.arange(len(pool)))
        with ledger.stage("influence on full matrix"):
            blocks = plan_blocks(*full.shape, settings.executor.block_size, settings.executor.block_size)
            ledger.counters.update(executor.run_pairwise(spec, layout.rows, pool, full, blocks, store.folder, progress=progress))
    else:
        full = store.matrix("scores", np.zeros(1, dtype=np.int64), np.arange(len(pool)))
        with ledger.stage("influence on all examples"):
            block_size = settings.executor.block_size
            counters, _ = executor.run_pointwise(spec, pool, full, plan_blocks(1, len(pool), 1, block_size), store.folder, progress=progress)
            ledger.counters.update(counters)
    ledger.evaluations_made = ledger.evaluations_full = int(full.array.size)
    values = np.asarray(full.array, dtype=np.float32)
    low, high = label_scaling(function_class, values)
    scaled = (values - low) / (high - low)
    with ledger.stage("selection"):
        if function_class.pairwise:
            chosen = choose_subset(np.where(np.isfinite(scaled), scaled, 0.0), objective_spec(objective, layout, settings.selection, function_class, spec))
        else:
            chosen = selection_module.top_k(np.where(np.isfinite(scaled[0]), scaled[0], -1.0), settings.selection.budget)  # failures last
    extra = {"label_scaling": {"low": low, "high": high, "source": "fixed range" if function_class.label_range else "min-max of the full matrix"},
             "matrix_shape": list(full.shape), "not_computed": int(np.isnan(values).sum()), **selection_info(chosen)}
    if function_class.pairwise:
        save_rows(store.folder, layout.rows, layout.n_pool_rows)
    return chosen, extra, column_origin(len(pool), exact=np.arange(len(pool)))


@dataclass
class _Run:
    """What both selections start from: the loaded inputs, the checked run folder and the influence function."""

    ledger: CostLedger
    pool: list[Record]
    targets: list[Record]
    reports: list[LoadReport]
    options: dict[str, Any]
    store: RunStore
    function_class: type[InfluenceFunction]
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
    from nncift.settings.fields import check_options

    ledger = CostLedger()
    reports = list(reports)
    with ledger.stage("load data"):
        if pool is None:
            pool, targets, loaded = load_inputs(settings)
            reports += loaded
            if settings.targets and not targets:
                raise InputError(f"no target records in {', '.join(settings.targets)}: the targets are empty "
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
    check_options(function_class.Settings, spec.options)  # before the folder is made
    selection_module.budget_to_count(settings.selection.budget, len(pool))  # a count above the pool size
    if function_class.pairwise and not store_extra.get("sampling") == "every pair":
        check_labelled_block(settings, function_class, objective, pool, targets)
    store = RunStore(out, {**settings_dict(settings), **store_extra, "influence_options": options,
                           "matrix_rows": matrix_rows(objective, bool(targets))}, rerun_keys=RESELECT_KEYS, added=ADDED_SETTINGS,
                     check=lambda store: check_inputs(store, records_digest(pool, targets), [r.as_dict() for r in reports]))
    try:
        finished = finished_selection(store, pool, settings, progress=not settings.quiet)
        committed = committed_settings(store.folder)  # changed since the last finished selection, even if one was interrupted since
        changed = store.changes_since(committed) if committed is not None else store.changed
    except BaseException:
        store.close()
        raise
    reselected = {"reselected": {"changed": changed, "influence": "reused the stored influence block"}} if changed else {}
    if changed and finished is None and not settings.quiet:
        print(f"{store.folder}: re-selecting with changed {', '.join(changed)}; the stored influence values are reused", file=sys.stderr)
    return _Run(ledger, pool, targets, reports, options, store, function_class, objective, spec, finished, reselected)


def _finish(run: _Run, settings: SelectSettings, extra: dict[str, Any], chosen: selection_module.Selection, origin: list[str]) -> SelectionResult:
    """Write ``selected.jsonl``, ``subset.jsonl``, ``scores.csv``, ``manifest.json`` and (last) the commit record that makes them
    the folder's result; return the :class:`SelectionResult`."""
    write_selection_files(run.store.folder, run.pool, chosen.indices, chosen.gains, values=chosen.values, influence=origin)
    section = {"influence_options": run.options, "objective": run.objective, "objective_value": chosen.objective, **extra}
    manifest = build_manifest(str(run.store.settings.get("command", "select")), settings_dict(settings),
                              models=run_models(settings, run.function_class), reports=run.reports,
                              counts={"pool": len(run.pool), "targets": len(run.targets), "selected": len(chosen.indices)},
                              ledger=run.ledger, section=section)
    run.store.write_json("manifest.json", manifest)
    write_commit(run.store.folder, run.store.settings, manifest["inputs"])
    return SelectionResult(np.asarray(chosen.indices), np.asarray(chosen.gains), [run.pool[i] for i in chosen.indices], chosen.objective,
                           manifest, run.store.folder)


def _select_pairwise(run: _Run, settings: SelectSettings, executor: Executor, rng: np.random.Generator) -> tuple[Selection, dict[str, Any], list[str]]:
    """NN-CIFT for a pairwise function: Q1, embeddings, network, predicted matrix, selection; (picks, manifest entries, value origins)."""
    spec, function_class, objective, pool, targets = run.spec, run.function_class, run.objective, run.pool, run.targets
    store, ledger, progress = run.store, run.ledger, not settings.quiet
    n_rows = len(pool) + len(targets) if objective in ("flmi", "flcg") else len(targets) or len(pool)
    sampling = resolve_sampling(settings.sampling, function_class, len(pool), len(targets), n_rows)
    layout = plan_layout(pool, targets, objective, sampling, rng)
    seen = store.matrix("q1", layout.seen_rows, layout.seen_cols)
    blocks = layout.blocks(settings.executor.block_size)
    with ledger.stage("influence on sampled block"):
        ledger.counters.update(executor.run_pairwise(spec, layout.rows, pool, seen, blocks, store.folder, progress=progress))
    ledger.evaluations_made = int(layout.labelled().sum())
    ledger.evaluations_full = len(layout.rows) * len(pool)
    with ledger.stage("embeddings"):
        row_embeddings, col_embeddings = _embeddings(executor, settings, layout, pool, progress)
        save_rows(store.folder, layout.rows, layout.n_pool_rows, row_embeddings, col_embeddings)
        EmbeddingCache.release_shared()
    known = np.where(layout.labelled(), np.asarray(seen.array, dtype=np.float32), np.nan)
    low, high = label_scaling(function_class, known)
    labels = (known - low) / (high - low)
    validation = network_validation(function_class, spec, layout, objective)
    influence_embedder = spec.options.get("similarity_embedder") or spec.run.embedder
    reading = network_reading(settings.influence, settings.network)
    prior_is_exact = function_class.is_embedding_cosine and influence_embedder == settings.embedder and reading["network_input"] == "text"
    tasks = network_task_rows(settings.network.task_calibration, function_class, layout, objective, row_embeddings)
    with ledger.stage("network training"):
        network, report = _trained_network(store, settings.network, progress, validation["objective"], lambda s: train_network(
            row_embeddings[layout.seen_rows], col_embeddings[layout.seen_cols], labels, s, self_cols=block_self_cols(layout), **validation,
            prior_is_exact=prior_is_exact, tasks=tasks, progress=progress))
    plan = selection_plan(network, layout, len(pool), objective, settings.selection)
    if plan.sparse:  # no (rows × pool) matrix: a stale one of an earlier selection in this folder goes
        store.path("predicted.npy").unlink(missing_ok=True)
        with ledger.stage("prediction and selection on a neighbour graph"):
            chosen, mode = select_on_graph(plan, network, layout, row_embeddings, col_embeddings, labels, objective, settings.selection,
                                           executor=executor, seed=settings.seed, progress=progress)
    else:
        chosen, mode = _select_dense(run, settings, executor, layout, network, (row_embeddings, col_embeddings), labels), {"selection_mode": "dense"}
    extra = {**mode, "label_scaling": {"low": low, "high": high, "source": "fixed range" if function_class.label_range else "min-max of Q1"},
             "sampled_rows": len(layout.seen_rows), "sampled_cols": len(layout.seen_cols), "sampling_blocks": sampling.blocks,
             "sampling_design": sampling.design, "sampled_fraction": sampling.fraction, "labelled_pairs": int(layout.labelled().sum()),
             "matrix_shape": [len(layout.rows), len(pool)], "network_input": reading, "network_training": report, **selection_info(chosen)}
    partly = layout.seen_cols[np.asarray(layout.labelled()).any(axis=0)]
    return chosen, extra, column_origin(len(pool), partly=partly)


def _select_dense(run: _Run, settings: SelectSettings, executor: Executor, layout: Layout, network: Any,
                  embeddings: tuple[np.ndarray, np.ndarray], labels: np.ndarray) -> Selection:
    """Predict the whole matrix into ``predicted.npy`` (Q1 keeps its exact values), then select on it."""
    store, ledger, pool = run.store, run.ledger, run.pool
    with ledger.stage("prediction"):  # row blocks written to disk
        predicted = streaming.predict_to_npy(network, *embeddings, store.path("predicted.npy"), executor=executor,
                                             known=(layout.seen_rows, layout.seen_cols, labels), progress=not settings.quiet,
                                             self_cols=self_cols_of(layout))
    with ledger.stage("selection"):  # on a cluster, or when it would not fit: from disk, same result
        in_memory = executor.name == "local" and selection_module.fits_in_memory((len(layout.rows), len(pool)))
        return choose_subset(np.load(predicted, mmap_mode="r") if in_memory else predicted,
                             objective_spec(run.objective, layout, settings.selection, run.function_class, run.spec), workdir=store.folder)


def _embeddings(executor: Executor, settings: SelectSettings, layout: Layout, pool: Sequence[Record], progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(row embeddings, column embeddings) of a layout, as the network reads them: the pool rows reuse the columns'."""
    embed = functools.partial(executor.embed_records, model=settings.embedder, device=settings.device, progress=progress,
                              **network_reading(settings.influence, settings.network))
    col_embeddings = embed(pool)
    parts = [col_embeddings[: layout.n_pool_rows]]
    if len(layout.rows) > layout.n_pool_rows:
        parts.append(embed(layout.rows[layout.n_pool_rows :]))
    return (np.concatenate(parts) if len(parts) > 1 else parts[0]), col_embeddings


def _trained_network(store: RunStore, network_settings_: NetworkSettings, progress: bool, criterion: str,
                     train: Callable[[NetworkSettings], tuple[Any, dict[str, Any]]]) -> tuple[Any, dict[str, Any]]:
    """Train (or reuse the stored network of an interrupted run or of a re-selection with the same network
    settings and validation criterion) and report what was chosen."""
    path = store.path("network.safetensors")
    wanted = {"settings": json.loads(json.dumps(dataclasses.asdict(network_settings_))), "criterion": criterion}
    if path.exists():
        with contextlib.suppress(NetworkFileError):  # damaged, or a pair a kill left unmatched: trained again
            stored = load_network_metadata(path)
            if {"settings": stored.get("settings"), "criterion": stored.get("criterion")} == wanted:
                return load_network(path), {**stored.get("report", {}), "reused": str(path)}
    network, report = train(network_settings_)
    save_network(network, path, {**wanted, "report": report})
    if progress:
        print(describe_training(report), file=sys.stderr)
    return network, report


def objective_spec(objective: str, layout: Layout, selection: SelectionSettings, function_class: type[InfluenceFunction],
                   spec: InfluenceSpec) -> ObjectiveSpec:
    """The run's selection objective (``objective``: :func:`resolve_objective` of the selection stage) on its matrix layout,
    with the stage's budget, η and ν (top-k with the influence function's aggregation and, for LESS, the task floor)."""
    scorers = topk_scorers(function_class, spec, layout.rows) if objective == "topk" else {}
    return ObjectiveSpec(objective, selection.budget, n_pool_rows=layout.n_pool_rows, eta=selection.eta, nu=selection.nu,
                         task_share=selection.task_share, **scorers)




def _select_pointwise(run: _Run, settings: SelectSettings, executor: Executor, rng: np.random.Generator) -> tuple[Selection, dict[str, Any], list[str]]:
    """NN-CIFT for a pointwise function: sampled scores, embeddings, network, predicted scores, top-k."""
    spec, function_class, pool, store, ledger, progress = run.spec, run.function_class, run.pool, run.store, run.ledger, not settings.quiet
    seen = sample_indices(len(pool), settings.sampling.fraction, settings.sampling.min_sampled, rng)
    scores_store = store.matrix("scores", np.zeros(1, dtype=np.int64), seen)
    blocks = plan_blocks(1, len(seen), 1, settings.executor.block_size)
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
        embeddings = executor.embed_records(pool, model=settings.embedder, device=settings.device, progress=progress,
                                            **network_reading(settings.influence, settings.network))
        save_pool_embeddings(store.folder, embeddings)
        EmbeddingCache.release_shared()
    with ledger.stage("network training"):
        network, report = _trained_network(store, settings.network, progress, "topk", lambda s: train_network_pointwise(
            embeddings[seen[ok]], labels[ok], s, progress=progress))
    with ledger.stage("prediction"):
        predicted = predict_pointwise(network, embeddings).astype(np.float32)
        predicted[seen[ok]] = labels[ok]
        store.save_array("predicted_scores.npy", predicted)
    with ledger.stage("selection"):
        chosen = selection_module.top_k(predicted, settings.selection.budget)
    extra = {"label_scaling": {"low": low, "high": high}, "sampled": len(seen), "failures": {str(k): v for k, v in sorted(failures.items())},
             "network_input": network_reading(settings.influence, settings.network), "network_training": report}
    return chosen, extra, column_origin(len(pool), exact=seen[ok])
