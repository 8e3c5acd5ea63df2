"""Where influence blocks run. Blocks are independent tasks; an executor computes the pending ones.

The local executor runs them in this process. A distributed executor implements the same two
methods (rebuilding the influence function from its :class:`InfluenceSpec` on each worker), so the
influence functions never know where they run. Results are written by the driver into the run's
:class:`~nncift.run.store.BlockMatrix`, so resumption works the same for every executor.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from nncift.data.records import Record
from nncift.execution.graph_jobs import GraphJob, GraphSource
from nncift.files.errors import UserError
from nncift.influence import InfluenceSpec, build_influence
from nncift.run.store import Block, BlockMatrix
from nncift.selection.distributed import GraphAssembler, GraphPart, graph_row_blocks, run_parts_in_process
from nncift.selection.greedy import Selection
from nncift.selection.sparse import ExactValues, NeighbourGraph
from nncift.settings.choices import DEFAULT_RESPONSE_WEIGHT
from nncift.settings.stages import ExecutorSettings


class ExecutorError(UserError, RuntimeError):
    """The executor cannot run here: its extra is not installed, the cluster is too small for the workers asked for,
    or its workers keep dying; the message says which and what to change."""


class Executor(ABC):
    """Computes the pending blocks of a pairwise matrix, or pending pointwise scores."""

    name: str = "abstract"

    def run_pairwise(
        self, spec: InfluenceSpec, targets: Sequence[Record], candidates: Sequence[Record],
        matrix: BlockMatrix, blocks: list[Block], workdir: Path, *, progress: bool = True,
    ) -> Counter:
        """Fill ``blocks`` of ``matrix`` (rows = targets, cols = candidates); return the cost counters. Blocks finished
        earlier are kept; the pending ones are computed by :meth:`compute_blocks`."""
        pending = matrix.pending(blocks)
        return self.compute_blocks(spec, targets, candidates, matrix, pending, workdir, progress=progress) if pending else Counter()

    def run_pointwise(
        self, spec: InfluenceSpec, records: Sequence[Record], scores: BlockMatrix,
        blocks: list[Block], workdir: Path, *, progress: bool = True,
    ) -> tuple[Counter, dict[int, str]]:
        """Fill ``blocks`` of the 1 × n ``scores`` matrix; return counters and the failures (index → reason) of the blocks
        computed now. Blocks finished earlier are kept; the pending ones are scored by :meth:`score_blocks`."""
        pending = scores.pending(blocks)
        return self.score_blocks(spec, records, scores, pending, workdir, progress=progress) if pending else (Counter(), {})

    @abstractmethod
    def compute_blocks(self, spec: InfluenceSpec, targets: Sequence[Record], candidates: Sequence[Record], matrix: BlockMatrix,
                       pending: list[Block], workdir: Path, *, progress: bool) -> Counter:
        """Compute and write the ``pending`` blocks of ``matrix`` (at least one); return the cost counters."""

    @abstractmethod
    def score_blocks(self, spec: InfluenceSpec, records: Sequence[Record], scores: BlockMatrix, pending: list[Block], workdir: Path, *,
                     progress: bool) -> tuple[Counter, dict[int, str]]:
        """Score and write the ``pending`` blocks of ``scores`` (at least one); return counters and failures (index → reason)."""

    def embed_records(self, records: Sequence[Record], *, model: str, device: str = "auto", progress: bool = True,
                      network_input: str = "text", response_weight: float = DEFAULT_RESPONSE_WEIGHT) -> np.ndarray:
        """L2-normalised sentence embeddings, float32, through the embedding cache, as the network reads them
        (``network_input``, ``response_weight``: see :func:`nncift.models.embeddings.embed_records`).

        Default: in this process; distributed executors embed shards.
        """
        from nncift.models.embeddings import embed_records

        return embed_records(records, model=model, device=device, progress=progress, network_input=network_input,
                             response_weight=response_weight)

    def predict_rows(
        self, network: Any, row_embeddings: np.ndarray, col_embeddings: np.ndarray,
        row_blocks: list[tuple[int, int]], write: Callable[[int, int, np.ndarray], None], *, progress: bool = True,
        self_cols: np.ndarray | None = None,
    ) -> None:
        """Predict row blocks ``(start, stop)`` of the (rows × cols) matrix and hand each to ``write(start, stop,
        values)`` with values float32 (stop − start, n_cols), in any order. ``self_cols``: per row, the
        column of the same record (−1: none), for the network's self-pair term. Default: in this process."""
        from nncift.network.streaming import predict_rows_in_process

        predict_rows_in_process(network, row_embeddings, col_embeddings, row_blocks, write, progress=progress, self_cols=self_cols)

    def neighbour_graph(self, source: GraphSource, neighbours: int, *, n_rows: int | None = None, exact: ExactValues | None = None,
                        block_rows: int | None = None, progress: bool = True) -> NeighbourGraph:
        """The K-nearest-neighbour graph of the first ``n_rows`` rows (default: all) of ``source``'s matrix: each row's
        ``neighbours`` highest values with ``exact`` folded in, computed in the row blocks of
        :func:`~nncift.selection.distributed.graph_row_blocks` by :meth:`graph_blocks` and assembled here. The same
        blocks give the same graph on every executor, bit for bit (and :func:`~nncift.selection.sparse.exact_graph`'s)."""
        n_rows = source.shape[0] if n_rows is None else int(n_rows)
        assembler = GraphAssembler(n_rows, source.shape[1], neighbours)
        self.graph_blocks(source, neighbours, exact, graph_row_blocks(n_rows, source.shape[1], block_rows), assembler.write,
                          progress=progress)
        return assembler.graph(source.method)

    def graph_blocks(self, source: GraphSource, neighbours: int, exact: ExactValues | None, blocks: list[tuple[int, int]],
                     write: Callable[[int, int, np.ndarray, np.ndarray], None], *, progress: bool = True) -> None:
        """Compute graph row blocks ``(start, stop)`` (:class:`~nncift.execution.graph_jobs.GraphJob`) and hand each to
        ``write(start, stop, columns, values)``, in any order. Default: in this process, one after another."""
        job = GraphJob(source, neighbours, exact)
        for start, stop in tqdm(blocks, desc="neighbour graph", unit="block", disable=not progress):
            write(start, stop, *job.block(start, stop))

    def greedy_parts(self, parts: Sequence[GraphPart], cap: np.ndarray | None, initial: np.ndarray | None) -> list[Selection]:
        """GreeDi's first round (:func:`~nncift.selection.distributed.greedi`): each part's lazy greedy, in the parts' order.
        Default: in this process, one after another."""
        return run_parts_in_process(parts, cap, initial)

    def close(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Release workers (and a cluster the executor started); the local executor holds nothing."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """Runs every block in this process, one after another, with one copy of the model."""

    name = "local"

    def compute_blocks(self, spec: InfluenceSpec, targets: Sequence[Record], candidates: Sequence[Record], matrix: BlockMatrix,
                       pending: list[Block], workdir: Path, *, progress: bool) -> Counter:
        """One copy of the influence function, prepared once, computes the blocks one after another."""
        function = build_influence(spec, progress=progress)
        function.prepare(targets, candidates, workdir)
        with tqdm(total=len(pending), desc=f"{spec.name} blocks", unit="block", disable=not progress) as bar:
            for block in pending:
                rows, cols = matrix.block_indices(block)
                matrix.write(block, function.compute_block(rows, cols))
                bar.update(1)
        counters = Counter(function.counters)
        function.close()
        return counters

    def score_blocks(self, spec: InfluenceSpec, records: Sequence[Record], scores: BlockMatrix, pending: list[Block], workdir: Path, *,
                     progress: bool) -> tuple[Counter, dict[int, str]]:
        """One copy of the influence function, prepared once, scores the blocks one after another."""
        failures: dict[int, str] = {}
        function = build_influence(spec, progress=progress)
        function.prepare(records, workdir)
        with tqdm(total=len(pending), desc=f"{spec.name} blocks", unit="block", disable=not progress) as bar:
            for block in pending:
                _, indices = scores.block_indices(block)
                before = set(function.failures)
                values = np.asarray(function.score(indices), dtype=np.float32).reshape(1, -1)
                new = {int(i): function.failures[i] for i in set(function.failures) - before}
                failures.update(new)
                scores.write(block, values, failures={str(k): v for k, v in new.items()})
                bar.update(1)
        counters = Counter(function.counters)
        function.close()
        return counters, failures


def stored_failures(scores: BlockMatrix) -> dict[int, str]:
    """Failures recorded with finished pointwise blocks (also those of earlier, interrupted runs)."""
    import json

    failures: dict[int, str] = {}
    if scores.done_path.exists():
        for line in scores.done_path.read_text(encoding="utf-8").splitlines():
            try:
                failures.update({int(k): v for k, v in json.loads(line).get("failures", {}).items()})
            except (json.JSONDecodeError, AttributeError, ValueError):
                continue
    return failures


def executor_for(settings: ExecutorSettings) -> Executor:
    """The executor a run's executor stage names: ``settings.name``, with its ``workers``, ``address``, ``worker_cpus`` and ``worker_gpus``."""
    return make_executor(settings.name, workers=settings.workers, address=settings.address,
                         worker_cpus=settings.worker_cpus, worker_gpus=settings.worker_gpus)


EXECUTORS: dict[str, str] = {
    "local": "nncift.execution.executor:LocalExecutor",
    "ray": "nncift.execution.ray_cluster:RayExecutor",
}
"""Executors by name (``module:class``, imported on first use). Adding one = one module + one line here."""


def make_executor(name: str = "local", **options: object) -> Executor:
    """Executor by name (:data:`EXECUTORS`): ``local`` (in process; takes no options) or ``ray`` (needs
    ``pip install nncift[ray]``; ``workers``, ``address``, ``worker_cpus``, ``worker_gpus``)."""
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor '{name}': choose from {', '.join(EXECUTORS)}")
    module_name, _, attribute = EXECUTORS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        if error.name is None or error.name.split(".")[0] in ("nncift",):
            raise
        raise ExecutorError(f"the {name} executor needs `pip install nncift[{name}]` ({error})") from None
    executor_class = getattr(module, attribute)
    return executor_class() if name == "local" else executor_class(**options)
