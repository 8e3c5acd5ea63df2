"""A finished run folder, read back: typed accessors for what ``score``, ``select --add`` and ``inspect`` use.

:func:`read_run` checks the folder (its commit record must match its files) and returns a :class:`RunView`.
The public :func:`nncift.open_run` wraps it in a :class:`nncift.steps.run.Run`, which adds the commands.

The run's selection matrix (rows = ``rows.json``'s rows, columns = the pool; scaled, exact sampled values kept) is read in
row blocks, :meth:`RunView.matrix_block`: from ``predicted.npy`` (or the baseline's ``full.npy``), or, for a run that
selected on a neighbour graph and kept no matrix, predicted block by block by its network (:class:`NetworkMatrix`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nncift.data.records import Record, jsonl_lines
from nncift.files.errors import SettingsMismatch
from nncift.run.commit import changed_inputs, commit_problem
from nncift.run.files import RunNotReady, read_picks, records_digest
from nncift.run.layout import self_columns
from nncift.run.store import read_json_file
from nncift.settings.fields import Checked, build_settings
from nncift.settings.stages import SelectSettings


@dataclass(frozen=True)
class RunCounts:
    """How many records a run selected from, for and picked."""

    pool: int
    """Pool records (candidates), after skips."""
    targets: int
    """Target records (0: the pool represented itself)."""
    selected: int
    """Records in the subset."""


@dataclass
class RunView:
    """A finished run folder, read back: its manifest (``manifest``, the raw record) and typed accessors for the rest."""

    folder: Path
    manifest: dict[str, Any]

    @cached_property
    def settings(self) -> SelectSettings:
        """The :class:`SelectSettings` the run was made with, rebuilt from its manifest (every value checked again)."""
        stored = self.manifest["settings"]
        names = {f.name for f in dataclasses.fields(SelectSettings)}
        values = {key: value for key, value in stored.items() if key in names}
        return build_settings(SelectSettings, values, origins={key: str(self.folder / "manifest.json") for key in values})

    @property
    def command(self) -> str:
        """The command that made the run: ``select``, ``full-select`` (the baseline) or ``select --add``."""
        return str(self.manifest.get("command", "select"))

    @property
    def objective(self) -> str:
        """The selection objective the run used: ``fl``, ``flmi``, ``flcg`` or ``topk``."""
        return str(self.manifest["objective"])

    @property
    def influence(self) -> str:
        """The registered name of the run's influence function."""
        return self.settings.influence

    @property
    def influence_options(self) -> dict[str, Any]:
        """The options of the influence function's own settings the run was given."""
        return dict(self.manifest.get("influence_options") or {})

    @property
    def label_scaling(self) -> tuple[float, float]:
        """(low, high) that map raw influence values to the [0, 1] the selection uses."""
        scaling = self.manifest.get("label_scaling") or {}
        return float(scaling.get("low", 0.0)), float(scaling.get("high", 1.0))

    @property
    def counts(self) -> RunCounts:
        """Pool, target and subset sizes."""
        counts = self.manifest["counts"]
        return RunCounts(int(counts["pool"]), int(counts.get("targets", 0)), int(counts["selected"]))

    @property
    def models(self) -> dict[str, Any]:
        """Fingerprints of the run's models by role (``embedder``; ``lm`` when its influence function runs one)."""
        return dict(self.manifest.get("models") or {})

    @property
    def objective_value(self) -> float | None:
        """The objective's value on the subset."""
        value = self.manifest.get("objective_value")
        return None if value is None else float(value)

    @property
    def shipped_predictor(self) -> str | None:
        """What the network training shipped (``None``: the full-matrix baseline, which trains none)."""
        return (self.manifest.get("network_training") or {}).get("chosen")

    @property
    def positive_gain_picks(self) -> int | None:
        """Facility location: how many picks had a positive gain (the rest were filled by singleton value)."""
        return self.manifest.get("positive_gain_picks")

    @property
    def working_directory(self) -> str | None:
        """The directory the run was started from (relative input paths are read from there)."""
        return (self.manifest.get("environment") or {}).get("cwd")

    @property
    def pairwise(self) -> bool:
        """Whether the influence function is pairwise (a matrix) or pointwise (one score per record)."""
        return (self.folder / "predicted.npy").exists() or (self.folder / "full.npy").exists() or self.sparse

    @property
    def sparse(self) -> bool:
        """Whether the run selected on a neighbour graph (``--selection.neighbours``): it holds no predicted matrix."""
        return self.manifest.get("selection_mode") == "sparse"

    @property
    def scores(self) -> tuple[np.ndarray, np.ndarray]:
        """(pool indices int64, marginal gains or top-k scores float64) of the run's picks, in pick order."""
        return read_picks(self.folder / "selected.jsonl")

    @property
    def subset(self) -> list[dict[str, Any]]:
        """The picked records exactly as they were read (their own fields), in pick order (``subset.jsonl``)."""
        path = self.need("subset.jsonl", "the chosen records")
        return [json.loads(line) for line in jsonl_lines(path.read_text(encoding="utf-8")) if line.strip()]

    def need(self, name: str, why: str) -> Path:
        """Path of artefact ``name``, or :class:`RunNotReady` saying what is missing and why it is needed."""
        path = self.folder / name
        if not path.exists():
            raise RunNotReady(f"{self.folder}: no {name} ({why}); it was made by an older nncift or not finished: "
                              "run the same select again into a new folder")
        return path

    def rows(self) -> dict[str, Any]:
        """``rows.json``: ``n_pool_rows`` and, per matrix row, its kind (pool/target), index, source and task."""
        return json.loads(self.need("rows.json", "what the matrix rows stand for").read_text(encoding="utf-8"))

    def embeddings(self, side: str) -> np.ndarray:
        """The stored ``row`` or ``col`` embeddings (float32, one per row / pool record)."""
        return np.load(self.need(f"{side}_embeddings.npy", "the network's inputs"))

    @property
    def graph(self) -> dict[str, Any] | None:
        """How a sparse run selected (``neighbours``, ``graph_builder``, ``graph_recall`` of its manifest); None for a dense one."""
        if not self.sparse:
            return None
        return {key: self.manifest.get(key) for key in ("neighbours", "graph_builder", "graph_recall")}

    def require_matrix(self, what: str) -> None:
        """Refuse ``what`` (a command's words) on a run that selected on a neighbour graph and kept no matrix (:class:`RunNotReady`)."""
        if self.sparse:
            raise RunNotReady(f"{self.folder}: {what} needs the predicted matrix, which a run on a neighbour graph "
                              "(--selection.neighbours) does not keep: read it in blocks (matrix_block)")

    def matrix(self) -> np.ndarray:
        """The selection matrix (predicted, scaled, exact Q1 values kept; or the full exact matrix), memory-mapped (dense runs)."""
        self.require_matrix("reading the influence matrix")
        name = "predicted.npy" if (self.folder / "predicted.npy").exists() else "full.npy"
        return np.load(self.need(name, "the influence matrix"), mmap_mode="r")

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """(rows, pool records) of the selection matrix (pairwise runs)."""
        if self.sparse:
            return self.network_matrix.shape
        shape = self.matrix().shape
        return int(shape[0]), int(shape[1])

    def matrix_block(self, rows: slice, cols: np.ndarray | None = None) -> np.ndarray:
        """float32 (rows, cols) of the selection matrix: rows ``rows`` (a slice), every column or the columns ``cols``.
        Dense runs read their matrix file; sparse runs predict the block (:class:`NetworkMatrix`): the same values."""
        if self.sparse:
            return self.network_matrix.block(rows, cols)
        part = self.matrix()[rows]
        return np.asarray(part if cols is None else part[:, np.asarray(cols, dtype=np.int64)], dtype=np.float32)

    @cached_property
    def network_matrix(self) -> NetworkMatrix:
        """The selection matrix as the run's network predicts it, block by block (read once)."""
        return NetworkMatrix(self)

    def scaled_labels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(matrix rows, pool columns, float32 labels) of the exact sampled block ``q1.npy``, scaled as the selection scaled
        them (NaN: not labelled); None when the run has no sampled block."""
        if not (self.folder / "q1.npy").exists():
            return None
        low, high = self.label_scaling
        known = np.load(self.folder / "q1.npy")
        return np.load(self.folder / "q1.rows.npy"), np.load(self.folder / "q1.cols.npy"), (known - low) / (high - low)

    def scores_table(self) -> list[dict[str, str]]:
        """The rows of the run's ``scores.csv`` (one per pool record, as strings)."""
        with self.need("scores.csv", "the per-record values").open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))

    def network_path(self) -> Path:
        """The run's trained InfluenceNetwork."""
        if (self.folder / "full.npy").exists() or (self.folder / "scores.npy").exists() and not (self.folder / "predicted_scores.npy").exists():
            raise RunNotReady(f"{self.folder}: a run of the full-matrix baseline has no InfluenceNetwork: use an NN-CIFT select run")
        return self.need("network.safetensors", "the trained InfluenceNetwork")


class NetworkMatrix:
    """A run's selection matrix predicted by its InfluenceNetwork from the stored embeddings, in blocks: the self-pair
    term on the pool rows and the sampled block's exact values (scaled) are included, as in a dense run's ``predicted.npy``.
    A two-tower network without label anchors predicts through its inner-product form (row and column features computed
    once, :func:`~nncift.network.towers.inner_product_form`: the values ``select`` built the run's graph from); any other
    network predicts each block. Memory: the embeddings (and features), the labels and one block; nothing of rows × pool."""

    def __init__(self, view: RunView) -> None:
        from nncift.network.files import load_network
        from nncift.network.towers import TwoTowerNetwork, inner_product_form

        self.network = load_network(view.network_path())
        self.row_embeddings = view.embeddings("row")
        self.col_embeddings = view.embeddings("col")
        self.shape = (len(self.row_embeddings), len(self.col_embeddings))
        self.own = self_columns(self.shape[0], int(view.rows()["n_pool_rows"]))
        self.form = None
        if isinstance(self.network, TwoTowerNetwork) and self.network.anchors is None:
            self.form = inner_product_form(self.network, self.row_embeddings, self.col_embeddings, self_cols=self.own)
        self.labels = view.scaled_labels()
        self.row_position = np.full(self.shape[0], -1, np.int64)
        self.col_position = np.full(self.shape[1], -1, np.int64)
        if self.labels is not None:
            self.row_position[self.labels[0]] = np.arange(len(self.labels[0]))
            self.col_position[self.labels[1]] = np.arange(len(self.labels[1]))

    def block(self, rows: slice, cols: np.ndarray | None = None) -> np.ndarray:
        """float32 (rows, cols): rows ``rows`` of the matrix, every column or the columns ``cols`` (in their order)."""
        row_ids = np.arange(*rows.indices(self.shape[0]))
        col_ids = np.arange(self.shape[1]) if cols is None else np.asarray(cols, dtype=np.int64).reshape(-1)
        local = np.full(self.shape[1], -1, np.int64)  # each pool column's position among col_ids
        local[col_ids[::-1]] = np.arange(len(col_ids))[::-1]  # (the first, if a column is asked twice)
        own = self.own[row_ids]
        self_cols = np.where(own >= 0, local[np.maximum(own, 0)], -1)
        block = self._predicted(rows, row_ids, col_ids if cols is not None else None, self_cols)
        if self.labels is not None:
            at_rows, at_cols = self.row_position[row_ids], self.col_position[col_ids]
            r, c = np.flatnonzero(at_rows >= 0), np.flatnonzero(at_cols >= 0)
            if r.size and c.size:
                exact = self.labels[2][np.ix_(at_rows[r], at_cols[c])]
                block[np.ix_(r, c)] = np.where(np.isfinite(exact), exact, block[np.ix_(r, c)])
        return block

    def _predicted(self, rows: slice, row_ids: np.ndarray, col_ids: np.ndarray | None, self_cols: np.ndarray) -> np.ndarray:
        """The network's float32 block with the self-pair term (``self_cols``: each row's own column in the block, −1: none)."""
        from nncift.network.paper import predict_pairwise

        if self.form is None:
            cols = self.col_embeddings if col_ids is None else self.col_embeddings[col_ids]
            return predict_pairwise(self.network, self.row_embeddings[rows], cols, self_cols=self_cols)  # type: ignore[arg-type]  # pairwise
        col_features = self.form.col_features if col_ids is None else self.form.col_features[col_ids]
        block = np.ascontiguousarray(self.form.row_features[rows] @ col_features.T)
        has = np.flatnonzero(self_cols >= 0)
        block[has, self_cols[has]] += self.form.self_terms[row_ids[has]]
        return block


def read_run(folder: str | Path) -> RunView:
    """Read a finished run folder: its commit record must match its files (:mod:`nncift.run.commit`); :class:`RunNotReady`
    naming the folder or the first file that does not match otherwise."""
    path = Path(folder)
    if not path.is_dir():
        raise RunNotReady(f"{path}: no such run folder")
    manifest_path = path / "manifest.json"
    if not (manifest_path.is_file() and (path / "selected.jsonl").is_file()):
        raise RunNotReady(f"{path}: not a finished nncift run (no manifest.json / selected.jsonl): run select to the end first")
    flat = flat_settings_problem(path)  # first: a folder of that version has no commit record either
    if flat is not None:
        raise RunNotReady(flat)
    problem = commit_problem(path)
    if problem is not None:
        raise RunNotReady(f"{problem}: run the same select again to finish or repair it")
    try:
        manifest = read_json_file(manifest_path)
    except ValueError as error:
        raise RunNotReady(str(error)) from None
    if "settings" not in manifest:
        raise RunNotReady(f"{manifest_path}: not an nncift run manifest (no 'settings')")
    return RunView(path, manifest)


STAGE_SECTIONS = tuple(name for name, value in vars(SelectSettings()).items() if isinstance(value, Checked))
"""The sections of the run settings, one per stage (``sampling``, ``network``, ``selection``, ``executor``)."""


def flat_settings_problem(folder: Path) -> str | None:
    """One line naming the file, when the run folder's ``manifest.json`` or ``settings.json`` holds the flat settings of an
    nncift before the stage sections (``budget``, ``fraction``, ``executor: "local"`` at the top level); else None.

    Such a folder is not read: its settings would be taken for others (a flat ``budget`` is not ``selection.budget``).
    A file that is missing or does not parse is left to the other checks (the commit record names it)."""
    for name in ("manifest.json", "settings.json"):
        try:
            payload = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        stored = payload.get("settings") if name == "manifest.json" and isinstance(payload, dict) else payload
        if not isinstance(stored, dict) or all(isinstance(stored.get(section), dict) for section in STAGE_SECTIONS):
            continue
        flat = [key for key in stored if key not in {f.name for f in dataclasses.fields(SelectSettings)}]
        shown = ", ".join([repr(key) for key in flat[:4]] + ["…"] * (len(flat) > 4)) or "no " + " / ".join(STAGE_SECTIONS)
        return (f"{folder / name}: this run folder was written by an earlier nncift with flat settings ({shown} at the top "
                f"level instead of the sections {', '.join(STAGE_SECTIONS)}), which this version does not read: run it again "
                "with `nncift select` (the same data and settings, a new --out folder)")
    return None


def as_view(run: str | Path | RunView) -> RunView:
    """``run`` itself when it is read already, else :func:`read_run` of the folder."""
    return run if isinstance(run, RunView) else read_run(run)


def check_digest(view: RunView, pool: Sequence[Record], targets: Sequence[Record], reports: Sequence[Any] = ()) -> None:
    """Refuse records that are not the ones the run was computed from, and input files changed since it finished
    (``reports``: the :class:`~nncift.data.records.LoadReport` of each file read again)."""
    stored = read_json_file(view.folder / "records.json").get("records_sha256")
    if stored != records_digest(pool, targets):
        raise SettingsMismatch(f"{view.folder}: its input files ({', '.join(view.settings.data)}) no longer hold the "
                               "records the run was computed from; restore them or select again")
    changed = changed_inputs(view.folder, [report.as_dict() for report in reports])
    if changed is not None:
        raise SettingsMismatch(changed)
