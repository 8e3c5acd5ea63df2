"""The Ray executor on a real local Ray cluster (2 CPUs, 2 workers): same results as the local executor,
also when a worker process is killed in the middle of a job, and after the driver died.

One cluster for the whole module; every executor is closed before the next one starts (the cluster
has room for exactly two workers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from nncift import SelectSettings
from nncift.execution.executor import LocalExecutor, make_executor
from nncift.influence import InfluenceSpec
from nncift.run.store import BlockMatrix, RunStore, plan_blocks
from nncift.settings.stages import RunContext
from nncift.steps.select import run_select

SPEC = InfluenceSpec("delift-se", run=RunContext(device="cpu"))


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster started by the test: 2 CPUs, a small object store, no dashboard."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install nncift[ray])")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


def _matrix(folder: Path, n_rows: int, n_cols: int) -> BlockMatrix:
    return RunStore(folder, {}).matrix("q1", np.arange(n_rows), np.arange(n_cols))


def test_missing_ray_gives_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    monkeypatch.delitem(sys.modules, "nncift.execution.ray_cluster", raising=False)
    with pytest.raises(RuntimeError, match=r"pip install nncift\[ray\]"):
        make_executor("ray", workers=2)


@pytest.mark.ray
@pytest.mark.parametrize("objective", ["fl", "flmi"])
def test_select_on_ray_gives_the_same_matrices_and_subset(ray_cluster, tmp_path: Path, demo_pool, objective) -> None:
    pool, targets = demo_pool[:40], (demo_pool[40:52] if objective == "flmi" else [])
    base = dict(influence="delift-se", **{"selection.objective": objective, "sampling.fraction": 0.3, "sampling.min_sampled": 8,
            "selection.budget": 0.25, "network.epochs": 3, "executor.block_size": 4}, quiet=True, seed=5, device="cpu")
    local = run_select(SelectSettings.build(**base), tmp_path / "local", pool=pool, targets=targets)
    on_ray = run_select(SelectSettings.build(**base, **{"executor.name": "ray", "executor.workers": 2, "executor.worker_cpus": 1.0}),
            tmp_path / "ray", pool=pool, targets=targets)
    for name in ("q1.npy", "predicted.npy"):
        assert np.array_equal(np.load(tmp_path / "local" / name), np.load(tmp_path / "ray" / name), equal_nan=False), name
    assert not np.isnan(np.load(tmp_path / "ray" / "q1.npy")).any()
    assert np.array_equal(local.indices, on_ray.indices) and np.array_equal(local.scores, on_ray.scores)
    assert local.objective == on_ray.objective
    assert (tmp_path / "ray" / "selected.jsonl").read_text() == (tmp_path / "local" / "selected.jsonl").read_text()
    assert on_ray.manifest["settings"]["executor"]["name"] == "ray"


@pytest.mark.ray
def test_add_on_a_sparse_greedi_run_on_ray_grows_as_the_local_executor_does(ray_cluster, tmp_path: Path, demo_pool) -> None:
    """``select --add`` on a run that selected on a neighbour graph by GreeDi with the Ray executor builds the union's graph
    and runs GreeDi's parts on Ray (the manifest says so), with the local executor's picks and part objectives."""
    from nncift.steps.add import add_to_run

    base = dict(influence="delift-se", **{"sampling.fraction": 0.3, "sampling.min_sampled": 8, "selection.budget": 8, "network.epochs": 3,
            "selection.neighbours": 6, "selection.partitions": 2, "executor.block_size": 4}, quiet=True, seed=5, device="cpu")
    ray_settings = {"executor.name": "ray", "executor.workers": 2, "executor.worker_cpus": 1.0}
    grown = {}
    for name, extra in (("local", {}), ("ray", ray_settings)):
        run_select(SelectSettings.build(**base, **extra), tmp_path / name, pool=demo_pool[:40])
        grown[name] = add_to_run(tmp_path / name, demo_pool[40:52], tmp_path / f"{name}-grown", budget=12.0, pool=demo_pool[:40], progress=False)
    assert grown["ray"].indices.tolist() == grown["local"].indices.tolist() and len(set(grown["ray"].indices.tolist())) == 12
    manifest = grown["ray"].manifest
    assert manifest["greedi"]["executor"] == "ray" and manifest["graph_executor"] == "ray" and manifest["greedi"]["partitions"] == 2
    # the runs' embeddings were computed in other batches (Ray shards), so their networks agree to float rounding
    assert manifest["greedi"]["part_objectives"] == pytest.approx(grown["local"].manifest["greedi"]["part_objectives"], rel=1e-6)


@pytest.mark.ray
def test_killed_worker_is_replaced_and_the_job_gives_the_same_results(ray_cluster, tmp_path: Path, demo_pool, monkeypatch) -> None:
    from nncift.execution.ray_cluster import RayExecutor
    from nncift.models import embeddings as embed
    from nncift.network.paper import InfluenceNetwork

    pool = demo_pool[:48]
    blocks = plan_blocks(48, 48, 4, 4)  # 144 blocks
    expected = _matrix(tmp_path / "local", 48, 48)
    LocalExecutor().run_pairwise(SPEC, pool, pool, expected, blocks, tmp_path / "local", progress=False)

    executor = RayExecutor(workers=2, worker_cpus=1.0)
    try:
        before = executor.worker_pids()
        killed: list[int] = []

        def kill_once(job: str, done: int, total: int) -> None:
            if done == 5 and not killed:  # mid-job: both workers hold queued blocks
                os.kill(before[0], signal.SIGKILL)
                killed.append(before[0])

        executor.on_task_done = kill_once
        matrix = _matrix(tmp_path / "ray", 48, 48)
        counters = executor.run_pairwise(SPEC, pool, pool, matrix, blocks, tmp_path / "ray", progress=False)
        after = executor.worker_pids()
        assert killed and before[0] not in after and before[1] in after
        assert executor.stats["replaced_workers"] == 1 and executor.stats["retried_tasks"] >= 1
        assert np.array_equal(matrix.array, expected.array) and matrix.complete()
        assert matrix.done() == {block.key for block in blocks}
        assert counters["evaluations"] == 48 * 48  # every block counted once, retried ones too
        assert counters["ray_retried_tasks"] == executor.stats["retried_tasks"] and counters["ray_replaced_workers"] == 1

        # embeddings in shards (the same chunks as the local embedder: bit-identical vectors)
        executor.on_task_done = None
        monkeypatch.setattr(embed, "SHARD_ROWS", 16)  # 3 chunks over 2 workers
        monkeypatch.setenv("NNCIFT_CACHE", str(tmp_path / "cache-ray"))
        sharded = executor.embed_records(pool, model=SelectSettings.build().embedder, device="cpu", progress=False)
        monkeypatch.setenv("NNCIFT_CACHE", str(tmp_path / "cache-local"))
        local = LocalExecutor().embed_records(pool, model=SelectSettings.build().embedder, device="cpu", progress=False)
        assert sharded.shape == (48, 384) and np.array_equal(sharded, local)

        # prediction in row blocks on the workers, with a worker killed again
        killed.clear()
        before = executor.worker_pids()
        executor.on_task_done = lambda job, done, total: kill_once(job, done - 3, total)
        import torch

        torch.manual_seed(0)
        network = InfluenceNetwork(384, (8,)).eval()
        from nncift.network.streaming import predict_to_npy

        predict_to_npy(network, local[:30], local, tmp_path / "ray.npy", executor=executor, block_rows=3)
        predict_to_npy(network, local[:30], local, tmp_path / "local.npy", block_rows=3)
        assert killed and np.array_equal(np.load(tmp_path / "ray.npy"), np.load(tmp_path / "local.npy"))
    finally:
        executor.close()


_DRIVER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np, ray
    from nncift.data.demo import demo_records
    from nncift.influence import InfluenceSpec
    from nncift.settings.stages import RunContext
    from nncift.execution.ray_cluster import RayExecutor
    from nncift.run.store import RunStore, plan_blocks

    ray.init(address=sys.argv[2], log_to_driver=False)
    pool = demo_records(64, seed=0)[:48]
    folder = sys.argv[1]
    matrix = RunStore(folder, {}).matrix("q1", np.arange(48), np.arange(48))
    def die(job, done, total):
        if done == 20:
            os.kill(os.getpid(), signal.SIGKILL)  # the driver dies in the middle of the job
    executor = RayExecutor(workers=2, on_task_done=die)
    executor.run_pairwise(InfluenceSpec("delift-se", run=RunContext(device="cpu")), pool, pool, matrix, plan_blocks(48, 48, 4, 4), folder, progress=False)
""")


@pytest.mark.ray
def test_rerun_after_the_driver_died_continues_from_finished_blocks(ray_cluster, tmp_path: Path, demo_pool) -> None:
    from nncift.execution.ray_cluster import RayExecutor

    pool, blocks = demo_pool[:48], plan_blocks(48, 48, 4, 4)
    address = ray_cluster.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    died = subprocess.run([sys.executable, "-c", _DRIVER, str(tmp_path), address], env=env, capture_output=True, text=True, timeout=600)
    assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
    finished = [json.loads(line)["block"] for line in (tmp_path / "q1.done.jsonl").read_text().splitlines()]
    assert 20 <= len(finished) < len(blocks)

    matrix = _matrix(tmp_path, 48, 48)
    with RayExecutor(workers=2) as executor:
        counters = executor.run_pairwise(SPEC, pool, pool, matrix, blocks, tmp_path, progress=False)
    assert counters["evaluations"] == 16 * (len(blocks) - len(set(finished)))  # only the unfinished blocks
    expected = _matrix(tmp_path / "local", 48, 48)
    LocalExecutor().run_pairwise(SPEC, pool, pool, expected, blocks, tmp_path / "local", progress=False)
    assert np.array_equal(matrix.array, expected.array)
