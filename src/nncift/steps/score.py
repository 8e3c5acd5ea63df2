"""``nncift score``: value new records with a finished run's InfluenceNetwork, without the language model.

The paper's third result: a trained InfluenceNetwork values data it has never seen. The new records
are embedded (cached) with the run's embedder and put through the run's stored network against the
run's own rows (its targets, or the pool when the pool represented itself), whose embeddings the run
keeps. Nothing else is needed: no influence function is built, no language model is loaded (the
manifest counts both).

Per new record:

- ``value``: what it is worth on its own under the run's objective: facility location (``fl``): the
  singleton value ``Σ_i max(s_ij, 0)`` over the rows it represents; ``flmi``: the same with every
  pool row capped at η × its best target similarity; ``flcg``: the coverage beyond ν × the existing
  set's; ``topk``: the influence function's aggregated score; pointwise functions: the predicted score;
- ``gain``: facility-location forms only: what it would add to the run's chosen subset now,
  ``f(S ∪ {j}) − f(S)`` (0: the subset already covers everything it would);
- ``top_targets``: pairwise functions: the rows it influences most (targets when the run has them),
  with the predicted value.

Values are on the scale the selection used (the run's label scaling, ~[0, 1]). A run that selected on a neighbour graph
(``--selection.neighbours``) keeps no predicted matrix: its rows' caps, starts and coverage by the subset are predicted
by its network block by block (:meth:`~nncift.run.view.RunView.matrix_block`), the same values a dense run reads from
``predicted.npy``; no array of the run's rows × pool is formed, on either kind of run.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from nncift.data.records import LoadReport, Record
from nncift.files.atomic import atomic_write
from nncift.files.errors import InputError
from nncift.run.commit import remove_temporaries
from nncift.run.files import split_source, write_jsonl_atomic
from nncift.run.ledger import CostLedger
from nncift.run.report import build_manifest
from nncift.run.store import RunStore
from nncift.run.view import RunView, as_view
from nncift.settings.fields import settings_dict

SCORE_BLOCK = 16384
"""New records (or the run's rows) per block, at most (bounds memory: rows × block float32 values at a time)."""
BLOCK_ENTRIES = 1 << 24
"""Entries of one predicted or read block (64 MiB of float32): new records per block, rows per coverage block."""


def block_size(n_other: int, most: int | None = None) -> int:
    """How many rows (or columns) go in one block beside ``n_other`` of the other side: about :data:`BLOCK_ENTRIES` entries."""
    size = max(1, BLOCK_ENTRIES // max(1, n_other))
    return size if most is None else min(size, most)


@dataclass
class ObjectiveState:
    """A run's facility-location objective, ready to value new columns: which rows count, their caps
    (FLMI) or starting coverage (FLCG), and the coverage of the run's chosen subset."""

    name: str
    n_data_rows: int
    cap: np.ndarray | None
    start: np.ndarray
    coverage: np.ndarray

    @classmethod
    def of(cls, name: str, matrix: np.ndarray, n_pool_rows: int, picks: np.ndarray, *, eta: float = 1.0, nu: float = 1.0) -> "ObjectiveState":
        """The state of objective ``name`` on a run's selection ``matrix`` (rows × pool) with ``picks`` chosen."""
        from nncift.selection import ObjectiveSpec, objective_terms

        data, cap, initial = objective_terms(matrix, ObjectiveSpec(name, 1, n_pool_rows=n_pool_rows, eta=eta, nu=nu))
        n_data = data.shape[0]
        start = initial if initial is not None else np.zeros(n_data)
        coverage = start.copy()
        if len(picks):
            chosen = np.asarray(data[:, np.asarray(picks)], dtype=np.float64)
            if cap is not None:
                chosen = np.minimum(chosen, cap[:, None])
            coverage = np.maximum(coverage, chosen.max(axis=1))
        return cls(name, n_data, cap, start, coverage)

    @classmethod
    def of_run(cls, view: RunView, picks: np.ndarray) -> "ObjectiveState":
        """:meth:`of` the run's own objective, matrix and η / ν, read (dense runs) or predicted (sparse runs) in row blocks:
        FLMI's caps and FLCG's starts from the target rows (:func:`~nncift.selection.sparse.column_maxima`), the coverage
        from the data rows × ``picks``; the same values as :meth:`of` on the whole matrix."""
        from nncift.selection.sparse import column_maxima

        name, selection = view.objective, view.settings.selection
        n_rows, n_cols = view.matrix_shape
        n_pool_rows = int(view.rows()["n_pool_rows"])
        n_data = n_rows if name == "fl" else n_pool_rows
        cap, start = None, np.zeros(n_data)
        if name != "fl":
            row_max = column_maxima(lambda a, b: view.matrix_block(slice(a, b)), n_pool_rows, n_rows, n_cols)[:n_data].astype(np.float64)
            cap, start = (selection.eta * row_max, start) if name == "flmi" else (None, selection.nu * row_max)
        coverage = start.copy()
        picks = np.asarray(picks, dtype=np.int64)
        step = block_size(len(picks), SCORE_BLOCK)
        for first in range(0, n_data if len(picks) else 0, step):
            last = min(n_data, first + step)
            best = np.maximum(view.matrix_block(slice(first, last), picks).max(axis=1), 0.0).astype(np.float64)
            if cap is not None:  # max_j min(s_ij, cap_i) = min(max_j s_ij, cap_i)
                best = np.minimum(best, cap[first:last])
            coverage[first:last] = np.maximum(coverage[first:last], best)
        return cls(name, n_data, cap, start, coverage)

    def values_and_gains(self, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(singleton value, gain over the chosen subset) of each column of ``columns`` (data rows first)."""
        c = np.maximum(np.asarray(columns[: self.n_data_rows], dtype=np.float64), 0.0)
        if self.cap is not None:
            c = np.minimum(c, self.cap[:, None])
        values = np.maximum(c - self.start[:, None], 0.0).sum(axis=0)
        gains = np.maximum(c - self.coverage[:, None], 0.0).sum(axis=0)
        return values, gains


@dataclass
class ScoreResult:
    """What ``nncift score`` returns: one row per new record (also in ``scores.jsonl`` / ``scores.csv``) and the manifest."""

    rows: list[dict[str, Any]]
    manifest: dict[str, Any]
    out: Path


def _run_function(view: RunView) -> Any:
    """The run's pairwise influence function, built from its options (no model is loaded until it computes)."""
    from nncift.influence import PairwiseInfluence, influence_class
    from nncift.settings.stages import RunContext

    function = influence_class(view.influence).from_options(view.influence_options, run=RunContext.of(view.settings), progress=False)
    if not isinstance(function, PairwiseInfluence):
        raise InputError(f"{view.folder}: {view.influence} is not a pairwise influence function")
    return function


def run_aggregation(view: RunView) -> Callable[[np.ndarray, Sequence[Record]], np.ndarray]:
    """The run's influence function's top-k aggregation: (rows × candidates block, row records) → one score per candidate."""
    function = _run_function(view)
    return lambda block, rows: np.asarray(function.candidate_scores(block, rows), dtype=np.float64)


def run_task_scores(view: RunView) -> Callable[[np.ndarray, Sequence[Record]], np.ndarray] | None:
    """The per-task parts of the run's top-k aggregation (LESS: each task's mean; the score is their maximum), which top-k's
    task floor ranks by; None for a function whose score has no per-task parts."""
    from nncift.influence import PairwiseInfluence

    function = _run_function(view)
    if type(function).candidate_task_scores is PairwiseInfluence.candidate_task_scores:
        return None
    return lambda block, rows: np.asarray(function.candidate_task_scores(block, rows), dtype=np.float64)


def row_records(view: RunView) -> list[Record]:
    """Stand-ins for a run's matrix rows (source and task; enough for a function's top-k aggregation)."""
    return [Record("", "", "", source=row["source"], task=row["task"]) for row in view.rows()["rows"]]


def score_records(run: str | Path | RunView, records: Sequence[Record], out: str | Path, *, reports: Sequence[LoadReport] = (),
                  top_targets: int = 5, device: str = "auto", progress: bool = True) -> ScoreResult:
    """Value ``records`` with the finished run ``run``'s network; write ``scores.jsonl``, ``scores.csv``, ``manifest.json`` into ``out``.

    Args:
        run: a finished ``nncift select`` run (its folder, or the run read back; NN-CIFT, not the full-matrix baseline: that has no network).
        records: the new records.
        out: output folder (created; one writer at a time; a folder that scored against another run, or with another
            ``top_targets``, is refused).
        reports: load reports of ``records`` (their skips go into the manifest).
        top_targets: pairwise runs: how many most-influenced rows to list per record.
        device: where the embedder runs.
        progress: progress bars.
    """
    from nncift.influence import network_reading
    from nncift.models import loading as models
    from nncift.models.embeddings import embed_records
    from nncift.network.files import load_network
    from nncift.network.paper import predict_pairwise, predict_pointwise

    view = as_view(run)
    if not records:
        raise InputError("no records to score")
    if top_targets < 0:
        raise InputError(f"--top must be >= 0, got {top_targets}")
    network_path = view.network_path()
    settings = {"run": str(view.folder.resolve()), "top_targets": top_targets, "device": device}
    with RunStore(out, settings) as store:
        folder = store.folder
        ledger, loads_before = CostLedger(), models.LOADS["causal_lm"]
        with ledger.stage("embeddings"):
            embeddings = embed_records(records, model=view.settings.embedder, device=device, progress=progress,
                                        **network_reading(view.settings.influence, view.settings.network))
        network = load_network(network_path)
        if view.pairwise:
            rows = _score_pairwise(view, network, embeddings, records, top_targets, ledger, predict_pairwise)
        else:
            with ledger.stage("prediction"):
                scores = predict_pointwise(network, embeddings).astype(np.float64)  # type: ignore[arg-type]  # a pointwise run's network
            rows = [{"index": i, "source": r.source, "task": r.task, "value": float(v)} for i, (r, v) in enumerate(zip(records, scores))]
        write_jsonl_atomic(folder / "scores.jsonl", rows)
        _write_csv(folder / "scores.csv", rows)
        ledger.counters["language_model_loads"] = models.LOADS["causal_lm"] - loads_before
        section = {"run": {"folder": settings["run"], "influence": view.influence, "objective": view.objective,
                           "settings": settings_dict(view.settings), **({"selection_mode": "sparse"} if view.sparse else {})},
                   "network_sha256": hashlib.sha256(network_path.read_bytes()).hexdigest()}
        manifest = build_manifest("score", settings, models={"embedder": view.models.get("embedder", {"name": view.settings.embedder})},
                                  reports=reports, counts={"records": len(records)}, ledger=ledger, section=section)
        store.write_json("manifest.json", manifest)
        remove_temporaries(folder)  # of an earlier score into this folder that was killed
    return ScoreResult(rows, manifest, folder)


def _score_pairwise(view: RunView, network: Any, embeddings: np.ndarray, records: Sequence[Record], top_targets: int,
                    ledger: CostLedger, predict: Any) -> list[dict[str, Any]]:
    objective = view.objective
    described = view.rows()
    n_pool_rows, row_info = int(described["n_pool_rows"]), described["rows"]
    row_embeddings = np.asarray(view.embeddings("row"))
    shown = np.arange(n_pool_rows, len(row_info)) if len(row_info) > n_pool_rows else np.arange(len(row_info))
    state: ObjectiveState | None = None
    aggregate: Callable[[np.ndarray], np.ndarray] | None = None
    with ledger.stage("aggregation"):
        if objective == "topk":
            scores_of, stand_ins = run_aggregation(view), row_records(view)
            aggregate = lambda block: scores_of(block, stand_ins)  # noqa: E731
        else:
            state = ObjectiveState.of_run(view, view.scores[0])
    rows: list[dict[str, Any]] = []
    step = block_size(len(row_info), SCORE_BLOCK)
    for start in range(0, len(records), step):
        stop = min(start + step, len(records))
        with ledger.stage("prediction"):
            block = predict(network, row_embeddings, embeddings[start:stop])
        with ledger.stage("aggregation"):
            if state is not None:
                values, gains = state.values_and_gains(block)
            else:
                assert aggregate is not None  # top-k
                values, gains = aggregate(block), None
            best = _top_rows(block[shown], top_targets)
        for offset in range(stop - start):
            j = start + offset
            top = [{**row_info[shown[r]], "row": int(shown[r]), "value": float(block[shown[r], offset])} for r in best[:, offset]]
            rows.append({"index": j, "source": records[j].source, "task": records[j].task, "value": float(values[offset]),
                         "gain": None if gains is None else float(gains[offset]), "top_targets": top})
    return rows


def _top_rows(block: np.ndarray, k: int) -> np.ndarray:
    """(k, n_cols) row positions of the k largest values of each column, largest first (ties: lower row)."""
    k = min(k, block.shape[0])
    if k == 0:
        return np.zeros((0, block.shape[1]), dtype=np.int64)
    kth = -np.partition(-block, k - 1, axis=0)[k - 1]  # the k-th largest value of each column: O(rows) per column, no full sort
    rows, cols = np.nonzero((block >= kth).T)[::-1]  # the candidates (ties at the k-th value included), column by column
    order = np.lexsort((rows, -block[rows, cols], cols))  # by column, then value (largest first), then row (lower first)
    rows, cols = rows[order], cols[order]
    first = np.searchsorted(cols, np.arange(block.shape[1]))
    return rows[first[None, :] + np.arange(k)[:, None]]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["index", "source_file", "line", "task", "value", "gain", "top_targets"])
            for row in rows:
                file, line = split_source(row["source"])
                top = ";".join(f"{t['kind']}:{t['index']}={t['value']:.4g}" for t in row.get("top_targets", []))
                gain = row.get("gain")
                writer.writerow([row["index"], file, line, row["task"] or "", f"{row['value']:.6g}", "" if gain is None else f"{gain:.6g}", top])

    atomic_write(path, write)  # a killed run never leaves a torn file
