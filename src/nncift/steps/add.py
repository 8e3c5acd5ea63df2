"""``nncift select --run RUN --add NEW --out RUN2``: grow a finished selection with new records.

Nothing already known is recomputed: the run's predicted matrix (with its exact sampled values) is
kept, the influence of the new records (as candidates, and as rows where the pool represents
itself) is predicted by the run's stored network from their embeddings, and the greedy continues
from the existing subset on the union: facility location's conditional gain ``f(A | S)`` with the
old picks ``S`` kept first (top-k: the best-scored of the rest). The budget counts over the union (a
fraction of old + new records, or a count). No influence function is built and no language model is
loaded.

A run that selected on a neighbour graph (``--selection.neighbours``, no predicted matrix) grows on a graph: the union's
graph (old pool and new records as rows where the pool represents itself, then the targets) is built as ``select`` builds
one (:mod:`nncift.steps.select_sparse`): with the run's K and builder, from the run's network, the exact sampled values and
the self-pair term folded in, on the run's executor; the greedy then continues from the kept picks on it
(:func:`~nncift.selection.sparse.extend_on_graph`; by GreeDi's two rounds, :func:`~nncift.selection.distributed.extend_greedi`,
where the run selected with ``selection.partitions`` > 1). The picks are those a fresh sparse ``select`` over the union
with the same network would add to the kept ones; no (rows × union) matrix is formed and none is written.

The new folder is a complete run of the union (its ``data`` lists the run's files and then the new
ones), so ``score``, ``inspect`` and another ``--add`` work on it. Its manifest says which picks were
kept and which were added, and which of the added ones are new records.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from nncift.data.records import LoadReport, Record, read_many
from nncift.files.atomic import atomic_write, save_npy_atomic
from nncift.files.errors import InputError
from nncift.influence import network_reading
from nncift.run.check import recorded_inputs
from nncift.run.commit import write_commit
from nncift.run.files import records_digest, save_rows, write_selection_files
from nncift.run.layout import self_columns
from nncift.run.ledger import CostLedger
from nncift.run.report import build_manifest
from nncift.run.store import RunStore
from nncift.run.view import RunView, as_view, check_digest
from nncift.selection import Selection, budget_to_count, extend_greedy, fits_in_memory, top_k_with_task_floor
from nncift.selection.sparse import (
    BlockPredictor,
    ExactValues,
    NeighbourGraph,
    column_maxima,
    graph_objective,
    graph_values,
    row_terms,
)
from nncift.selection.subset_quality import ObjectiveSpec, objective_on
from nncift.settings.fields import settings_dict
from nncift.settings.stages import ExecutorSettings, SelectSettings

if TYPE_CHECKING:
    from nncift.execution.executor import Executor
    from nncift.steps.select import SelectionResult

CARRIED = ("label_scaling", "network_input", "network_training")
"""Manifest entries of the run that hold for the union too (its network and the scale of its values)."""


def run_inputs(view: RunView) -> tuple[list[Record], list[Record]]:
    """Read a run's pool and targets again from its input files and check they are the records it was computed from."""
    if not view.settings.data:
        raise InputError(f"{view.folder}: the run's pool was passed in code, not as files: pass pool= (and targets=) to add_to_run")
    pool, reports = read_many(recorded_inputs(view, "data"))  # relative paths: from the run's working directory, not the current one
    targets, target_reports = read_many(recorded_inputs(view, "targets")) if view.settings.targets else ([], [])
    check_digest(view, pool, targets, reports + target_reports)  # and files changed since the run finished
    return pool, targets


@dataclass
class _Grown:
    """The union's selection, before its files are written: the added picks, every candidate's value, the union's matrix."""

    chosen: Selection
    values: np.ndarray
    matrix: np.ndarray | None
    n_pool_rows: int
    ledger: CostLedger
    total: float | None = None
    """The objective of the whole subset when it is not read from ``matrix`` (on the union's graph)."""
    graph: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Sparse runs: the manifest entries of the union's graph."""


def add_to_run(run: str | Path | RunView, new: Sequence[Record], out: str | Path, *, budget: float | None = None,
               pool: Sequence[Record] | None = None, targets: Sequence[Record] | None = None,
               reports: Sequence[LoadReport] = (), new_paths: Sequence[str] = (), executor: ExecutorSettings | None = None,
               progress: bool = True) -> SelectionResult:
    """Grow the selection of the finished run ``run`` with the records ``new``; write the union's run into ``out``.

    Args:
        run: a finished NN-CIFT ``select`` run (its folder, or the run read back): it holds the network and the predicted matrix.
        new: the new candidate records.
        out: the new run folder (a folder made with other settings or records is refused).
        budget: subset size over the union (fraction in (0, 1] or count); default: the run's budget.
        pool, targets: the run's records when they were passed in code (default: read from its files, checked).
        reports: load reports of ``new``; new_paths: the files ``new`` was read from (recorded as the union's data).
        executor: where a sparse run's union graph and GreeDi's parts run (default: the run's executor; every executor gives
            the same picks, so a run made on a Ray cluster can grow on one machine).
        progress: progress bars.

    Returns:
        A :class:`~nncift.steps.select.SelectionResult` over the union (pool indices: the run's pool, then ``new``).
    """
    from nncift.steps.select import SelectionResult

    view = as_view(run)
    if not new:
        raise InputError("no new records to add")
    if not view.pairwise and not (view.folder / "predicted_scores.npy").exists():
        raise InputError(f"{view.folder}: no predicted scores (a run of the full-matrix baseline has no network to predict with)")
    settings = view.settings.updated(**{"selection.budget": budget}) if budget is not None else view.settings
    settings = dataclasses.replace(settings, executor=executor) if executor is not None else settings
    if pool is None:
        pool, targets = run_inputs(view)
    pool, targets, new = list(pool), list(targets or []), list(new)
    union = pool + new
    k = budget_to_count(settings.selection.budget, len(union))
    kept, kept_gains = view.scores
    if k < len(kept):
        raise InputError(f"the budget over the union is {k} records, fewer than the run's {len(kept)} picks: give a larger --budget")
    union_settings = dataclasses.replace(settings, data=view.settings.data + tuple(new_paths))
    store_settings = {**settings_dict(union_settings), "command": "select --add", "added_to": str(view.folder.resolve())}
    with RunStore(out, store_settings) as store:
        store.check_records(records_digest(union, targets))
        grown = _grow(view, store, settings, pool, targets, new, kept, k, progress)
        indices = np.concatenate([kept, grown.chosen.indices])
        gains = np.concatenate([kept_gains, grown.chosen.gains])
        origin = [row["influence"] for row in view.scores_table()] + ["predicted"] * len(new)
        write_selection_files(store.folder, union, indices, gains, values=grown.values, influence=origin)
        total = grown.total if grown.total is not None else _objective_total(
            view.objective, settings, union_matrix=grown.matrix, scores=grown.values, indices=indices, n_pool_rows=grown.n_pool_rows)
        manifest = _manifest(view, union_settings, grown, reports, pool=pool, new=new, targets=targets, kept=kept, total=total)
        store.write_json("manifest.json", manifest)
        write_commit(store.folder, store.settings, manifest["inputs"])
    return SelectionResult(indices, gains, [union[i] for i in indices], total, manifest, store.folder)


def _grow(view: RunView, store: RunStore, settings: SelectSettings, pool: list[Record], targets: list[Record], new: list[Record],
          kept: np.ndarray, k: int, progress: bool) -> _Grown:
    """Embed the new records, predict their influence with the run's network, continue the selection; store the union's
    matrix (or scores), embeddings and network in ``store``."""
    from nncift.models import loading as models
    from nncift.models.embeddings import embed_records
    from nncift.network.files import load_network

    ledger, loads_before = CostLedger(), models.LOADS["causal_lm"]
    with ledger.stage("embeddings"):
        new_embeddings = embed_records(new, model=settings.embedder, device=settings.device, progress=progress,
                                       **network_reading(settings.influence, settings.network))
    network = load_network(view.network_path())
    col_embeddings = np.concatenate([np.asarray(view.embeddings("col")), new_embeddings])
    total, graph = None, {}
    if view.sparse:  # no (rows × union) matrix: the union's neighbour graph
        with ledger.stage("prediction and selection on a neighbour graph"):
            grown = _grow_on_graph(view, network, new_embeddings, col_embeddings, (pool, targets, new), kept, k, settings, progress)
        save_rows(store.folder, grown.rows, grown.n_pool_rows, grown.row_embeddings, col_embeddings)
        _copy_q1(view, store.folder, len(new), grown.n_pool_rows)
        chosen, values, matrix, n_pool_rows, total, graph = grown.chosen, grown.values, None, grown.n_pool_rows, grown.total, grown.info
    elif view.pairwise:
        with ledger.stage("prediction"):
            matrix, n_pool_rows, rows = _union_matrix(view, network, new_embeddings, pool, targets, new)
        with ledger.stage("selection"):
            chosen, values = _continue(view.objective, matrix, n_pool_rows, rows, kept, k, settings, view)
        store.save_array("predicted.npy", matrix)
        save_rows(store.folder, rows, n_pool_rows, np.concatenate(_row_embeddings(view, new_embeddings, n_pool_rows)), col_embeddings)
        _copy_q1(view, store.folder, len(new), n_pool_rows)
    else:
        from nncift.network.paper import predict_pointwise

        matrix, n_pool_rows = None, 0
        with ledger.stage("prediction"):
            new_scores = predict_pointwise(network, new_embeddings)  # type: ignore[arg-type]  # a pointwise run's network
            values = np.concatenate([np.load(view.folder / "predicted_scores.npy"), new_scores]).astype(np.float64)
        with ledger.stage("selection"):
            chosen = _continue_top_k(values, kept, k)
        store.save_array("predicted_scores.npy", values.astype(np.float32))
        store.save_array("col_embeddings.npy", col_embeddings)
    for name in ("network.safetensors", "network.json"):
        copy_atomic(view.folder / name, store.path(name))
    ledger.counters["language_model_loads"] = models.LOADS["causal_lm"] - loads_before
    return _Grown(chosen, values, matrix, n_pool_rows, ledger, total, graph)


def _manifest(view: RunView, settings: SelectSettings, grown: _Grown, reports: Sequence[LoadReport], *, pool: list[Record],
              new: list[Record], targets: list[Record], kept: np.ndarray, total: float) -> dict[str, Any]:
    """The union run's manifest: which picks were kept and which were added (and which of those are new records)."""
    added = grown.chosen.indices
    section = {
        "influence_options": view.influence_options,
        **{key: view.manifest[key] for key in CARRIED if key in view.manifest},
        "objective": view.objective,
        "objective_value": total,
        "added_to": {"folder": str(view.folder.resolve()), "pool": len(pool), "selected": len(kept), "objective_value": view.objective_value},
        "picks": {"kept": [int(i) for i in kept], "added": [int(i) for i in added],
                  "added_new_records": [int(i) for i in added if i >= len(pool)]},
        "positive_gain_picks_added": grown.chosen.n_positive,
        **({"task_floor_added": int(grown.chosen.floor_added)} if grown.chosen.floor_added is not None else {}),
        **({"selection_mode": "sparse", **grown.graph} if grown.graph else {}),
    }
    counts = {"pool": len(pool) + len(new), "old_pool": len(pool), "new_records": len(new), "targets": len(targets),
              "selected": len(kept) + len(added), "kept": len(kept), "added": len(added), "added_from_new_records": int((added >= len(pool)).sum())}
    return build_manifest("select --add", settings_dict(settings), models=view.models, reports=reports, counts=counts,
                          ledger=grown.ledger, section=section)


def _row_embeddings(view: RunView, new_embeddings: np.ndarray, n_pool_rows: int) -> list[np.ndarray]:
    """The union's row embeddings: old pool rows, new records (when the pool is represented), then targets."""
    old = np.asarray(view.embeddings("row"))
    old_pool_rows = int(view.rows()["n_pool_rows"])
    if old_pool_rows == 0:
        return [old]
    return [old[:old_pool_rows], new_embeddings, old[old_pool_rows:]]


def _union_matrix(view: RunView, network: Any, new_embeddings: np.ndarray, pool: list[Record], targets: list[Record],
                  new: list[Record]) -> tuple[np.ndarray, int, list[Record]]:
    """The predicted matrix of the union, its number of pool rows and its row records; the run's block is copied as it is."""
    from nncift.network.paper import predict_pairwise

    old = view.matrix()
    old_pool_rows = int(view.rows()["n_pool_rows"])
    n_old, m = len(pool), len(new)
    n_rows = old.shape[0] + (m if old_pool_rows else 0)
    if not fits_in_memory((n_rows, n_old + m)):
        raise InputError(f"the union's matrix ({n_rows} × {n_old + m}) does not fit in memory: select on the union afresh")
    row_embeddings = np.asarray(view.embeddings("row"))
    col_embeddings = np.asarray(view.embeddings("col"))
    matrix = np.empty((n_rows, n_old + m), dtype=np.float32)
    if old_pool_rows == 0:  # rows = targets
        matrix[:, :n_old] = old
        matrix[:, n_old:] = predict_pairwise(network, row_embeddings, new_embeddings)
        return matrix, 0, list(targets)
    matrix[:old_pool_rows, :n_old] = old[:old_pool_rows]
    matrix[:old_pool_rows, n_old:] = predict_pairwise(network, row_embeddings[:old_pool_rows], new_embeddings)
    matrix[old_pool_rows : old_pool_rows + m, :n_old] = predict_pairwise(network, new_embeddings, col_embeddings)
    matrix[old_pool_rows : old_pool_rows + m, n_old:] = predict_pairwise(network, new_embeddings, new_embeddings, self_cols=np.arange(m))
    if old.shape[0] > old_pool_rows:  # the targets follow the pool rows
        matrix[old_pool_rows + m :, :n_old] = old[old_pool_rows:]
        matrix[old_pool_rows + m :, n_old:] = predict_pairwise(network, row_embeddings[old_pool_rows:], new_embeddings)
    return matrix, n_old + m, pool + new + list(targets)


@dataclass
class _GraphGrowth:
    """The union of a sparse run, selected on its graph: rows, embeddings, the added picks and the graph's description."""

    rows: list[Record]
    n_pool_rows: int
    row_embeddings: np.ndarray
    chosen: Selection
    values: np.ndarray
    total: float
    info: dict[str, Any]


def _grow_on_graph(view: RunView, network: Any, new_embeddings: np.ndarray, col_embeddings: np.ndarray,
                   records: tuple[list[Record], list[Record], list[Record]], kept: np.ndarray, k: int, settings: SelectSettings,
                   progress: bool = False) -> _GraphGrowth:
    """A sparse run's union: its neighbour graph (the run's K and builder, on the run's executor), the greedy continued from
    ``kept`` on it (GreeDi's two rounds where the run selected with ``selection.partitions`` > 1), every candidate's value on
    the graph (as a fresh sparse select writes them) and the whole subset's objective on the graph."""
    from nncift.execution.executor import executor_for
    from nncift.selection.distributed import extend_greedi
    from nncift.selection.sparse_index import DEFAULT_NEIGHBOURS

    pool, targets, new = records
    n_pool_rows = len(pool) + len(new) if int(view.rows()["n_pool_rows"]) else 0
    rows = pool + new + targets if n_pool_rows else list(targets)
    row_embeddings = np.concatenate(_row_embeddings(view, new_embeddings, n_pool_rows))
    wanted = view.settings.selection.neighbours
    neighbours = min(DEFAULT_NEIGHBOURS if wanted is None else int(wanted), len(col_embeddings))
    with executor_for(settings.executor) as executor:
        graph, predict, exact = union_graph(view, network, (row_embeddings, col_embeddings), n_pool_rows, len(new), neighbours, executor=executor,
                                             progress=progress)
        cap = start = None
        if view.objective in ("flmi", "flcg"):
            maxima = column_maxima(predict, n_pool_rows, len(rows), graph.n_columns, exact=exact)
            cap, start = row_terms(view.objective, maxima, graph.n_rows, eta=settings.selection.eta, nu=settings.selection.nu)
        added, greedi_info = extend_greedi(graph, k - len(kept), kept, settings.selection.partitions, seed=settings.seed, cap=cap,
                                           initial=start, name=view.objective, run_parts=executor.greedy_parts)
        name = executor.name
    values = graph_values(graph, cap=cap, initial=start)
    total = graph_objective(graph, np.concatenate([kept, added.indices]), cap=cap, initial=start)
    info: dict[str, Any] = {"neighbours": int(graph.neighbours), "graph_builder": graph.method, "graph_recall": graph.recall,
                            "graph_executor": name if graph.method in ("exact", "blocks") else "in process"}
    if settings.selection.partitions > 1:
        info["greedi"] = {**greedi_info, "executor": name}
    return _GraphGrowth(rows, n_pool_rows, row_embeddings, added, values, total, info)


def union_graph(view: RunView, network: Any, embeddings: tuple[np.ndarray, np.ndarray], n_pool_rows: int, n_new: int,
                neighbours: int, *, executor: Executor | None = None, progress: bool = False) -> tuple[NeighbourGraph, BlockPredictor, ExactValues]:
    """The union's neighbour graph as :func:`~nncift.steps.select_sparse.select_on_graph` builds a run's, with the run's builder
    (the exact and predicted-blocks graphs on ``executor``, default: local): (graph, the predictor of its row blocks, the
    exact values folded in). ``embeddings``: the union's (rows, columns); rows: the union's pool rows (``n_pool_rows``, old
    then new) then the targets; the graph keeps FLMI's and FLCG's pool rows."""
    from nncift.execution.executor import LocalExecutor
    from nncift.execution.graph_jobs import GraphSource
    from nncift.network.towers import inner_product_form
    from nncift.selection.sparse_index import faiss_graph

    executor = executor or LocalExecutor()
    row_embeddings, col_embeddings = embeddings
    own = self_columns(len(row_embeddings), n_pool_rows)
    n_graph = n_pool_rows if view.objective in ("flmi", "flcg") else len(row_embeddings)
    builder = str((view.graph or {}).get("graph_builder"))
    if builder == "blocks":  # the paper MLP or an anchored network: its blocks hold the self-pair term
        exact = _union_labels(view, n_new, n_pool_rows, None, None)
        source = GraphSource.predicted(network, row_embeddings, col_embeddings, own)
        return executor.neighbour_graph(source, neighbours, n_rows=n_graph, exact=exact, progress=progress), source.predictor(), exact
    form = inner_product_form(network, row_embeddings, col_embeddings, self_cols=own)
    exact = _union_labels(view, n_new, n_pool_rows, own, form.self_terms)
    row_features, col_features = form.row_features, form.col_features
    predict: BlockPredictor = lambda start, stop: row_features[start:stop] @ col_features.T  # noqa: E731
    if builder == "exact":
        graph = executor.neighbour_graph(GraphSource.features(row_features, col_features), neighbours, n_rows=n_graph, exact=exact, progress=progress)
        return graph, predict, exact
    if builder in ("faiss-hnsw", "faiss-ivf"):
        graph = faiss_graph(row_features[:n_graph], col_features, neighbours, exact=exact, index="ivf" if builder == "faiss-ivf" else "hnsw")
        return graph, predict, exact
    raise InputError(f"{view.folder / 'manifest.json'}: unknown graph_builder {builder!r}: select the union afresh")


def _union_labels(view: RunView, n_new: int, n_pool_rows: int, own: np.ndarray | None, self_terms: np.ndarray | None) -> ExactValues:
    """The run's exact sampled values (scaled) at the union's rows (targets move down by ``n_new`` below the new pool rows)."""
    labels = view.scaled_labels()
    if labels is None:
        return ExactValues(own, self_terms)
    rows, cols, values = labels
    old_pool_rows = int(view.rows()["n_pool_rows"])
    if old_pool_rows and n_pool_rows:
        rows = np.where(rows >= old_pool_rows, rows + n_new, rows)
    return ExactValues(own, self_terms, rows, cols, values)


def _continue(objective: str, matrix: np.ndarray, n_pool_rows: int, rows: list[Record], kept: np.ndarray, k: int,
              settings: SelectSettings, view: RunView) -> tuple[Selection, np.ndarray]:
    """The added picks (greedy from the kept ones) and every candidate's value on its own."""
    from nncift.steps.score import ObjectiveState, run_aggregation, run_task_scores

    if objective == "topk":
        scores = run_aggregation(view)(matrix, rows)
        task_parts = run_task_scores(view) if settings.selection.task_share > 0 else None
        if task_parts is not None:  # the run's task floor, over the union's budget (the kept picks count towards it)
            return top_k_with_task_floor(task_parts(matrix, rows), k, settings.selection.task_share, kept=kept), scores
        return _continue_top_k(scores, kept, k), scores
    state = ObjectiveState.of(objective, matrix, n_pool_rows, np.zeros(0, np.int64), eta=settings.selection.eta, nu=settings.selection.nu)
    values, _ = state.values_and_gains(matrix)
    added = extend_greedy(matrix[: state.n_data_rows], k - len(kept), kept, cap=state.cap,
                          initial=None if objective != "flcg" else state.start, name=objective)
    return added, values


def _continue_top_k(scores: np.ndarray, kept: np.ndarray, k: int) -> Selection:
    """The ``k − len(kept)`` best-scored candidates that are not kept (highest first, ties by lower index)."""
    rest = np.setdiff1d(np.arange(len(scores)), kept)
    order = rest[np.argsort(-scores[rest], kind="stable")][: k - len(kept)]
    return Selection(order.astype(np.int64), scores[order], float(scores[order].sum()), "topk", values=scores)


def _objective_total(objective: str, settings: SelectSettings, *, union_matrix: np.ndarray | None, scores: np.ndarray,
                     indices: np.ndarray, n_pool_rows: int) -> float:
    """The objective of the whole union subset (kept + added) on the union's matrix."""
    if union_matrix is None or objective == "topk":
        return float(np.asarray(scores)[indices].sum())
    spec = ObjectiveSpec(objective, len(indices), n_pool_rows=n_pool_rows, eta=settings.selection.eta, nu=settings.selection.nu)
    return objective_on(union_matrix, indices, spec)


def _copy_q1(view: RunView, folder: Path, m: int, n_pool_rows_union: int) -> None:
    """The run's exact sampled block, its row positions moved to the union's rows (targets move down by m)."""
    source = view.folder / "q1.npy"
    if not source.exists():
        return
    old_pool_rows = int(view.rows()["n_pool_rows"])
    rows = np.load(view.folder / "q1.rows.npy")
    if old_pool_rows and n_pool_rows_union:
        rows = np.where(rows >= old_pool_rows, rows + m, rows)
    copy_atomic(source, folder / "q1.npy")
    save_npy_atomic(folder / "q1.rows.npy", rows)
    copy_atomic(view.folder / "q1.cols.npy", folder / "q1.cols.npy")


def copy_atomic(source: Path, target: Path) -> None:
    """Copy a file all or nothing."""
    atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
