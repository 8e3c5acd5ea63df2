"""Run the expensive parts on a Ray cluster (``pip install nncift[ray]``): influence blocks, embeddings in shards,
the InfluenceNetwork's prediction and the neighbour graph in row blocks, and GreeDi's parts.

- A pool of ``workers`` Ray actors (``worker_cpus`` CPUs and ``worker_gpus`` GPUs each) lives as
  long as the executor. For an influence job every actor rebuilds the influence function from its
  :class:`~nncift.influence.InfluenceSpec` and prepares it once (the records go into the object
  store once per job), then computes the blocks handed to it.
- The driver keeps at most ``in_flight`` tasks queued per actor and writes each result into the run's
  :class:`~nncift.run.store.BlockMatrix` as it arrives, so a re-run after the driver died continues from
  the finished blocks, exactly as with the local executor.
- A task whose worker died (process killed, node lost) is queued again and its actor replaced (and
  prepared again); a task is tried at most ``1 + max_retries`` times. Errors raised by the influence
  function itself are not retried: they stop the job in the driver.
- Embeddings: the texts missing from the driver's cache are cut into the very chunks
  :func:`~nncift.models.embeddings.embed_texts` would encode, so the vectors are bit-identical to a local run.
- Prediction and the neighbour graph: the network (safetensors bytes) or the features, and the embeddings, are shipped
  once per job; actors return row blocks, which the driver writes to disk or into the graph. GreeDi: a part's graph a task.

Only plain values cross process boundaries (numpy arrays, strings, dicts, safetensors bytes); Ray's
transport carries them between the processes of your cluster, and nothing is unpickled from disk.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import tempfile
from collections import Counter, deque
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import ray
from tqdm.auto import tqdm

from nncift.data.records import Record
from nncift.execution.executor import Executor, ExecutorError
from nncift.execution.graph_jobs import GraphSource
from nncift.influence import InfluenceSpec, function_path
from nncift.run.store import Block, BlockMatrix
from nncift.selection.distributed import GraphPart, exact_arrays, part_arrays, selection_from_arrays
from nncift.selection.greedy import Selection
from nncift.selection.sparse import ExactValues
from nncift.settings.choices import DEFAULT_RESPONSE_WEIGHT

log = logging.getLogger(__name__)

_WORKER_LOST = tuple(
    error for error in (getattr(ray.exceptions, name, None) for name in (
        "RayActorError", "ActorUnavailableError", "WorkerCrashedError", "ObjectLostError", "NodeDiedError"))
    if error is not None
)
"""Failures of the worker, not of the task: the task is queued again on a replacement worker."""


class _Worker:
    """One Ray actor: holds one prepared influence function, or one network, at a time."""

    def __init__(self, threads: int) -> None:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch

        torch.set_num_threads(threads)
        try:
            import numba

            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
        except ImportError:  # pragma: no cover - numba is a dependency; prediction falls back to torch
            pass
        self.function: Any = None
        self.prediction: tuple[Any, np.ndarray, np.ndarray, np.ndarray | None] | None = None
        self.graph: Any = None

    def pid(self) -> int:
        """The worker's process id (to watch it, or to kill it in tests)."""
        return os.getpid()

    def prepare(self, spec: dict, path: str, first: list[dict], second: list[dict] | None, workdir: str) -> dict:
        """Build and prepare the influence function of ``spec`` (:meth:`InfluenceSpec.as_dict`: its name as registered in the
        driver, its options and the run's context; ``path``: its import path, registered here too when this worker does not
        know it: a user's function); return the counters of preparing it."""
        from nncift.influence import REGISTRY, build_influence, register

        self.release()
        name = spec["name"]
        if REGISTRY.get(name) != path:
            register(name, path, replace=True)
        function = build_influence(InfluenceSpec.from_dict(spec), progress=False)
        folder = Path(workdir) if Path(workdir).is_dir() else Path(tempfile.mkdtemp(prefix="nncift-worker-"))
        if function.pairwise:
            function.prepare(_records(first), _records(second if second is not None else first), folder)
        else:
            function.prepare(_records(first), folder)
        self.function = function
        return dict(function.counters)

    def compute_block(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, dict]:
        """One block of raw influence values (len(rows), len(cols)) and the counters it added."""
        before = Counter(self.function.counters)
        values = np.asarray(self.function.compute_block(rows, cols), dtype=np.float32)
        return values, dict(Counter(self.function.counters) - before)

    def score(self, indices: np.ndarray) -> tuple[np.ndarray, dict[int, str], dict]:
        """Pointwise scores (len(indices),), the new failures (index → reason) and the counters added."""
        before, known = Counter(self.function.counters), set(self.function.failures)
        values = np.asarray(self.function.score(indices), dtype=np.float32).reshape(-1)
        failures = {int(i): self.function.failures[i] for i in set(self.function.failures) - known}
        return values, failures, dict(Counter(self.function.counters) - before)

    def encode(self, texts: list[str], model: str, device: str) -> np.ndarray:
        """The encoder's vectors for one chunk of texts (:func:`nncift.models.embeddings.encode_texts`)."""
        from nncift.models.embeddings import encode_texts

        return encode_texts(texts, model=model, device=device)

    def load_network(self, weights: bytes, architecture: dict, rows: np.ndarray, cols: np.ndarray,
                     self_cols: np.ndarray | None = None) -> None:
        """Rebuild the InfluenceNetwork from safetensors bytes; keep the embeddings for :meth:`predict`."""
        from safetensors.torch import load

        from nncift.network.files import build_network

        self.release()
        network = build_network(architecture)
        network.load_state_dict(load(weights))
        self.prediction = (network.eval(), np.array(rows, dtype=np.float32), np.array(cols, dtype=np.float32),
                           None if self_cols is None else np.array(self_cols, dtype=np.int64))

    def predict(self, start: int, stop: int) -> np.ndarray:
        """Predicted rows ``start:stop`` against every column: float32 (stop − start, n_cols)."""
        from nncift.network.paper import predict_pairwise

        assert self.prediction is not None, "load_network first"
        network, rows, cols, self_cols = self.prediction
        return predict_pairwise(network, rows[start:stop], cols, self_cols=None if self_cols is None else self_cols[start:stop])

    def load_graph(self, row_features: np.ndarray | None, col_features: np.ndarray | None, exact: dict, neighbours: int) -> None:
        """Keep a :class:`~nncift.execution.graph_jobs.GraphJob` for :meth:`graph_block`: on the features, or (None) on
        the network of :meth:`load_network`, with the exact values (:func:`~nncift.selection.distributed.exact_arrays`)."""
        from nncift.execution.graph_jobs import GraphJob, GraphSource
        from nncift.selection.distributed import exact_from_arrays

        if row_features is None or col_features is None:
            assert self.prediction is not None, "load_network first"
            source = GraphSource.predicted(*self.prediction)
        else:
            self.release()
            source = GraphSource.features(row_features, col_features)
        self.graph = GraphJob(source, neighbours, exact_from_arrays(exact))

    def graph_block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Graph rows ``start:stop``: (columns, values) (:meth:`GraphJob.block <nncift.execution.graph_jobs.GraphJob.block>`)."""
        assert self.graph is not None, "load_graph first"
        return self.graph.block(start, stop)

    def greedy_part(self, part: dict, cap: np.ndarray | None, initial: np.ndarray | None) -> dict:
        """GreeDi's first round on one part (:func:`~nncift.selection.distributed.part_greedy`), as plain values."""
        from nncift.selection.distributed import part_from_arrays, part_greedy, selection_arrays

        return selection_arrays(part_greedy(part_from_arrays(part), None if cap is None else np.array(cap),
                                            None if initial is None else np.array(initial)))

    def release(self) -> None:
        """Drop the influence function, network or graph job (and free GPU memory)."""
        if self.function is not None:
            self.function.close()
        self.function = self.prediction = self.graph = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass


def _weights(network: Any) -> bytes:
    """The network's state as safetensors bytes (what :meth:`_Worker.load_network` loads)."""
    from safetensors.torch import save

    return save({name: tensor.detach().contiguous().cpu() for name, tensor in network.state_dict().items()})


def _plain(records: Sequence[Record]) -> list[dict]:
    return [dataclasses.asdict(record) for record in records]


def _records(plain: list[dict]) -> list[Record]:
    return [Record(**item) for item in plain]


def _same_records(first: Sequence[Record], second: Sequence[Record]) -> bool:
    return len(first) == len(second) and all(a is b for a, b in zip(first, second))


class RayExecutor(Executor):
    """Influence blocks, embeddings and prediction on a pool of Ray actors.

    Args:
        workers: number of actors.
        address: ``""`` (an already initialised Ray, else a new local cluster), ``"auto"`` (the cluster
            started with ``ray start`` on this machine) or ``"HOST:PORT"`` / ``"ray://HOST:PORT"``.
        worker_cpus: CPUs reserved per actor (also its torch/numba threads).
        worker_gpus: GPUs per actor (fractions share a GPU).
        max_retries: how often one task may be queued again after its worker died.
        in_flight: tasks queued per actor at a time (2 keeps an actor busy while the driver writes).
        on_task_done: called as ``on_task_done(job, done, total)`` after each result is stored.
        init_options: extra keyword arguments of ``ray.init`` when this executor starts Ray.
    """

    name = "ray"

    def __init__(
        self, workers: int = 2, address: str = "", worker_cpus: float = 1.0, worker_gpus: float = 0.0, *,
        max_retries: int = 3, in_flight: int = 2, on_task_done: Callable[[str, int, int], None] | None = None,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        if workers < 1 or worker_cpus <= 0 or worker_gpus < 0 or in_flight < 1 or max_retries < 0:
            raise ValueError(f"invalid Ray executor settings: workers={workers}, worker_cpus={worker_cpus}, "
                             f"worker_gpus={worker_gpus}, in_flight={in_flight}, max_retries={max_retries}")
        self.workers, self.worker_cpus, self.worker_gpus = int(workers), float(worker_cpus), float(worker_gpus)
        self.max_retries, self.in_flight, self.on_task_done = int(max_retries), int(in_flight), on_task_done
        self.started_ray = not ray.is_initialized()
        if self.started_ray:
            ray.init(address=address or None, **(init_options or {}))
        self._check_resources(address)
        self._remote = ray.remote(_Worker)
        self._actors: list[Any] = []
        self.stats: Counter[str] = Counter()
        """``retried_tasks`` and ``replaced_workers`` over the executor's life."""

    def _check_resources(self, address: str) -> None:
        total = ray.cluster_resources()
        need = {"CPU": self.workers * self.worker_cpus, "GPU": self.workers * self.worker_gpus}
        short = [f"{need[k]:g} {k}s (the cluster has {total.get(k, 0):g})" for k in need if need[k] > total.get(k, 0)]
        if short and not address:
            raise ExecutorError(f"{self.workers} Ray workers need " + " and ".join(short)
                               + ": lower --workers, --worker-cpus or --worker-gpus")
        if short:
            log.warning("the Ray cluster has too few resources right now for %s workers (%s); waiting for it to grow",
                        self.workers, ", ".join(short))

    # ------------------------------------------------------------------------------------------
    # the pool

    def _new_actor(self) -> Any:
        threads = max(1, int(self.worker_cpus))
        return self._remote.options(num_cpus=self.worker_cpus, num_gpus=self.worker_gpus,
                                    max_restarts=0, max_task_retries=0).remote(threads)

    def _start(self, setup: Callable[[Any], Any] | None) -> Counter:
        """Fill the pool to ``workers`` live actors and run ``setup`` on each; return setup counters."""
        while len(self._actors) < self.workers:
            self._actors.append(self._new_actor())
        counters: Counter = Counter()
        refs = {slot: (setup(actor) if setup else actor.pid.remote()) for slot, actor in enumerate(self._actors)}
        for slot, ref in refs.items():
            result = self._settle(slot, ref, setup)
            if setup is not None and result:
                counters.update(result)
        return counters

    def _settle(self, slot: int, ref: Any, setup: Callable[[Any], Any] | None) -> Any:
        """Wait for one actor's setup (or its pid); replace the actor while it dies during setup."""
        for attempt in range(self.max_retries + 1):
            try:
                return ray.get(ref)
            except _WORKER_LOST as error:
                if attempt == self.max_retries:
                    raise ExecutorError(f"Ray worker {slot} died {attempt + 1} times while starting: {error}") from None
                ref = self._replace(slot, setup)
        return None  # pragma: no cover - the loop returns or raises

    def _replace(self, slot: int, setup: Callable[[Any], Any] | None) -> Any:
        """Kill (if still there) and replace the actor of ``slot``; return the replacement's setup ref."""
        try:
            ray.kill(self._actors[slot])
        except Exception:  # noqa: BLE001 - it is gone already
            pass
        self._actors[slot] = self._new_actor()
        self.stats["replaced_workers"] += 1
        log.warning("Ray worker %d died; started a replacement", slot)
        actor = self._actors[slot]
        return setup(actor) if setup else actor.pid.remote()

    def worker_pids(self) -> list[int]:
        """Process ids of the current actors (starts the pool if needed)."""
        self._start(None)
        return [int(pid) for pid in ray.get([actor.pid.remote() for actor in self._actors])]

    def _release(self) -> None:
        refs = [actor.release.remote() for actor in self._actors]
        for ref in refs:
            try:
                ray.get(ref)
            except _WORKER_LOST:
                pass

    def close(self) -> None:
        """Kill the actors; shut Ray down if this executor started it."""
        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors = []
        if self.started_ray and ray.is_initialized():
            ray.shutdown()

    # ------------------------------------------------------------------------------------------
    # one job: tasks over the pool

    def _run(self, job: str, tasks: Sequence[Any], submit: Callable[[Any, Any], Any], store: Callable[[Any, Any], None],
             *, setup: Callable[[Any], Any] | None = None, progress: bool = True) -> Counter:
        """Run ``submit(actor, task)`` for every task over the pool and ``store(task, result)`` each result.

        Returns the counters of the setup (e.g. preparing the influence function on each worker) and
        ``ray_retried_tasks`` / ``ray_replaced_workers`` when workers died during the job.
        """
        before = Counter(self.stats)
        counters = self._start(setup)
        queue = deque(enumerate(tasks))
        attempts: Counter[int] = Counter()
        flight: dict[Any, tuple[int, Any, int, Any]] = {}
        done = 0
        with tqdm(total=len(tasks), desc=job, unit="task", disable=not progress) as bar:
            while queue or flight:
                for slot, actor in enumerate(self._actors):
                    busy = sum(1 for entry in flight.values() if entry[1] is actor)
                    while queue and busy < self.in_flight:
                        index, task = queue.popleft()
                        flight[submit(actor, task)] = (slot, actor, index, task)
                        busy += 1
                ready, _ = ray.wait(list(flight), num_returns=1)
                slot, actor, index, task = flight.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except _WORKER_LOST as error:
                    attempts[index] += 1
                    if attempts[index] > self.max_retries:
                        raise ExecutorError(f"{job}: task {task} lost its worker {attempts[index]} times; "
                                           f"giving up ({error})") from None
                    self.stats["retried_tasks"] += 1
                    queue.appendleft((index, task))
                    if self._actors[slot] is actor:
                        result = self._settle(slot, self._replace(slot, setup), setup)
                        if setup is not None and result:
                            counters.update(result)
                    continue
                store(task, result)
                done += 1
                bar.update(1)
                if self.on_task_done is not None:
                    self.on_task_done(job, done, len(tasks))
        self._release()
        for name in ("retried_tasks", "replaced_workers"):
            if self.stats[name] > before[name]:
                counters[f"ray_{name}"] += self.stats[name] - before[name]
        return counters

    # ------------------------------------------------------------------------------------------
    # the Executor interface

    def compute_blocks(self, spec: InfluenceSpec, targets: Sequence[Record], candidates: Sequence[Record], matrix: BlockMatrix,
                       pending: list[Block], workdir: Path, *, progress: bool) -> Counter:
        """The blocks as tasks of the workers, each of which prepares the influence function once."""
        first = ray.put(_plain(targets))
        second = None if _same_records(targets, candidates) else ray.put(_plain(candidates))
        counters: Counter = Counter()

        def store(block: Block, result: Any) -> None:
            values, added = result
            matrix.write(block, values)
            counters.update(added)

        counters.update(self._run(
            f"{spec.name} blocks", pending,
            lambda actor, block: actor.compute_block.remote(*matrix.block_indices(block)), store,
            setup=lambda actor: actor.prepare.remote(spec.as_dict(), function_path(spec.name), first, second, str(workdir)),
            progress=progress))
        return counters

    def score_blocks(self, spec: InfluenceSpec, records: Sequence[Record], scores: BlockMatrix, pending: list[Block], workdir: Path, *,
                     progress: bool) -> tuple[Counter, dict[int, str]]:
        """The blocks as tasks of the workers, each of which prepares the influence function once."""
        failures: dict[int, str] = {}
        shipped = ray.put(_plain(records))
        counters: Counter = Counter()

        def store(block: Block, result: Any) -> None:
            values, new, added = result
            failures.update(new)
            scores.write(block, values.reshape(1, -1), failures={str(k): v for k, v in new.items()})
            counters.update(added)

        counters.update(self._run(
            f"{spec.name} blocks", pending,
            lambda actor, block: actor.score.remote(scores.block_indices(block)[1]), store,
            setup=lambda actor: actor.prepare.remote(spec.as_dict(), function_path(spec.name), shipped, None, str(workdir)),
            progress=progress))
        return counters, failures

    def embed_records(self, records: Sequence[Record], *, model: str, device: str = "auto", progress: bool = True,
                      network_input: str = "text", response_weight: float = DEFAULT_RESPONSE_WEIGHT) -> np.ndarray:
        from nncift.models.embeddings import embed_records

        def encode_chunks(chunks: list[list[str]], store: Callable[[int, np.ndarray], None]) -> None:
            self._run("embeddings", list(enumerate(chunks)), lambda actor, item: actor.encode.remote(item[1], model, device),
                      lambda item, vectors: store(item[0], vectors), progress=progress)

        return embed_records(records, model=model, device=device, progress=False, encode_chunks=encode_chunks, network_input=network_input,
                             response_weight=response_weight)

    def predict_rows(self, network: Any, row_embeddings: np.ndarray, col_embeddings: np.ndarray, row_blocks: list[tuple[int, int]],
                     write: Callable[[int, int, np.ndarray], None], *, progress: bool = True, self_cols: np.ndarray | None = None) -> None:
        weights = _weights(network)
        rows = ray.put(np.ascontiguousarray(row_embeddings, dtype=np.float32))
        same = row_embeddings.shape == col_embeddings.shape and np.array_equal(row_embeddings, col_embeddings)
        cols = rows if same else ray.put(np.ascontiguousarray(col_embeddings, dtype=np.float32))
        self._run("predict", list(row_blocks), lambda actor, block: actor.predict.remote(*block),
                  lambda block, values: write(block[0], block[1], values),
                  setup=lambda actor: actor.load_network.remote(weights, network.architecture(), rows, cols, self_cols),
                  progress=progress)

    def graph_blocks(self, source: GraphSource, neighbours: int, exact: ExactValues | None, blocks: list[tuple[int, int]],
                     write: Callable[[int, int, np.ndarray, np.ndarray], None], *, progress: bool = True) -> None:
        """The blocks as tasks of the workers; the features (or the network and its embeddings) and the exact values are
        shipped once per job."""
        shipped = ray.put(exact_arrays(exact))
        if source.by_features:
            rows, cols = ray.put(source.row_features), ray.put(source.col_features)
            setup = lambda actor: actor.load_graph.remote(rows, cols, shipped, neighbours)  # noqa: E731
        else:
            weights, rows, cols = _weights(source.network), ray.put(source.row_embeddings), ray.put(source.col_embeddings)
            setup = lambda actor: [actor.load_network.remote(weights, source.network.architecture(), rows, cols,  # noqa: E731
                                                             source.self_cols), actor.load_graph.remote(None, None, shipped, neighbours)][-1]
        self._run("neighbour graph", list(blocks), lambda actor, block: actor.graph_block.remote(*block),
                  lambda block, result: write(block[0], block[1], *result), setup=setup, progress=progress)

    def greedy_parts(self, parts: Sequence[GraphPart], cap: np.ndarray | None, initial: np.ndarray | None) -> list[Selection]:
        """Each part's greedy as a task of the workers (the part's graph shipped with it; the per-row terms once)."""
        shared_cap, shared_initial = ray.put(cap), ray.put(initial)
        results: dict[int, Selection] = {}
        self._run("greedy on parts", list(range(len(parts))),
                  lambda actor, i: actor.greedy_part.remote(part_arrays(parts[i]), shared_cap, shared_initial),
                  lambda i, result: results.__setitem__(i, selection_from_arrays(result)), progress=False)
        return [results[i] for i in range(len(parts))]
