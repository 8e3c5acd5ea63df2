"""A user's influence function, defined here, plugs in with one call to ``nncift.influence.register`` and runs
through ``select``, ``score`` and the Ray executor (whose workers import it by ``module:qualname``)."""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest

import nncift
from nncift import influence
from nncift.data.records import Record
from nncift.influence import PairwiseInfluence, register
from nncift.models.embeddings import embed_records
from nncift.network.files import load_network
from nncift.network.paper import predict_pairwise
from nncift.settings.fields import SettingsError


@dataclass(frozen=True)
class BagOfWordsSettings:
    """Options of :class:`BagOfWords`."""

    lowercase: bool = True
    """Count words case-insensitively."""


def _counts(record: Record, lowercase: bool) -> Counter[str]:
    text = f"{record.query}\n{record.output}"
    return Counter(re.findall(r"\w+", text.lower() if lowercase else text))


class BagOfWords(PairwiseInfluence):
    """Cosine of the word counts of a target's and a candidate's texts (in [0, 1]); top-k takes the best target."""

    Settings = BagOfWordsSettings
    uses_language_model = False
    label_range = (0.0, 1.0)

    def prepare(self, targets: Sequence[Record], candidates: Sequence[Record], workdir: Path) -> None:
        self.targets, self.candidates = list(targets), list(candidates)

    def compute_block(self, target_indices: np.ndarray, candidate_indices: np.ndarray) -> np.ndarray:
        rows = [_counts(self.targets[int(i)], self.settings.lowercase) for i in target_indices]
        cols = [_counts(self.candidates[int(j)], self.settings.lowercase) for j in candidate_indices]
        self.counters["bag_of_words_pairs"] += len(rows) * len(cols)
        return np.array([[_cosine(a, b) for b in cols] for a in rows], dtype=np.float32).reshape(len(rows), len(cols))

    def candidate_scores(self, matrix: np.ndarray, targets: Sequence[Record]) -> np.ndarray:
        return np.asarray(matrix, dtype=np.float64).max(axis=0)


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    dot = sum(count * b[word] for word, count in a.items())
    norm = np.sqrt(sum(v * v for v in a.values()) * sum(v * v for v in b.values()))
    return float(dot / norm) if norm else 0.0


NAME = "bag-of-words"
SETTINGS = {"influence": NAME, "quiet": True, "seed": 1, "device": "cpu", "sampling": {"fraction": 0.3, "min_sampled": 8},
            "network": {"epochs": 3, "max_steps": 40, "folds": 3}, "selection": {"budget": 0.25}, "executor": {"block_size": 4}}


@pytest.fixture()
def registered(monkeypatch: pytest.MonkeyPatch) -> str:
    """``bag-of-words`` registered for one test (the registries are restored after it)."""
    for table in ("REGISTRY", "SETTINGS", "_CLASSES"):
        monkeypatch.setattr(influence, table, dict(getattr(influence, table)))
    register(NAME, BagOfWords)
    return NAME


def _exact_q1(folder: Path, rows: Sequence[Record], pool: Sequence[Record]) -> tuple[np.ndarray, np.ndarray]:
    """(stored Q1, the function's exact values for the same pairs)."""
    q1 = np.load(folder / "q1.npy")
    function = BagOfWords(BagOfWordsSettings())
    function.prepare(rows, pool, folder)
    return q1, function.compute_block(np.load(folder / "q1.rows.npy"), np.load(folder / "q1.cols.npy"))


@pytest.mark.e2e
def test_a_registered_function_runs_through_select_and_score(tmp_path: Path, demo_pool, registered: str) -> None:
    assert influence.influence_class(registered) is BagOfWords and influence.settings_class(registered) is BagOfWordsSettings
    assert influence.function_path(registered) == f"{__name__}:BagOfWords" and BagOfWords.name == NAME
    pool, new = demo_pool[:40], demo_pool[40:48]
    result = nncift.select({**SETTINGS, "selection": {"budget": 0.25, "objective": "topk"}}, tmp_path / "run", pool=pool,
                           influence_options={"lowercase": True})
    q1, exact = _exact_q1(tmp_path / "run", pool, pool)
    labelled = np.isfinite(q1)
    assert labelled.sum() > 0 and np.allclose(q1[labelled], exact[labelled], atol=1e-6)
    assert result.manifest["cost"]["counters"]["bag_of_words_pairs"] >= int(labelled.sum()) and len(result.indices) == 10
    run = nncift.open_run(tmp_path / "run")
    assert run.influence == NAME and run.objective == "topk" and run.influence_options == {"lowercase": True}
    scored = run.score(new, tmp_path / "scores", progress=False)
    # top-k values come from the registered function's own aggregation (the best row) of the network's predictions
    block = predict_pairwise(load_network(tmp_path / "run" / "network.safetensors"), run.embeddings("row"), embed_records(new, progress=False))
    np.testing.assert_allclose([row["value"] for row in scored.rows], block.max(axis=0), rtol=1e-5)
    assert not np.allclose(block.max(axis=0), block.mean(axis=0))  # the default aggregation would give other values


def test_a_name_is_registered_once(registered: str) -> None:
    with pytest.raises(SettingsError, match="'bag-of-words' is already registered"):
        register(NAME, BagOfWords)
    with pytest.raises(SettingsError, match="'delift' is already registered"):
        register("delift", BagOfWords)
    register(NAME, f"{__name__}:BagOfWords", replace=True)  # by import path, replacing on purpose
    assert influence.REGISTRY[NAME] == f"{__name__}:BagOfWords"
    with pytest.raises(SettingsError, match="not a subclass of PairwiseInfluence or PointwiseInfluence"):
        register("counts", f"{__name__}:BagOfWordsSettings")
    with pytest.raises(SettingsError, match="cannot import"):
        register("nowhere", "no_such_module_here:Thing")
    assert "counts" not in influence.REGISTRY and "nowhere" not in influence.REGISTRY


@pytest.fixture()
def ray_cluster():
    """A local Ray cluster whose workers can import this test module (its folder on their PYTHONPATH)."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install nncift[ray])")
    root = Path(__file__).resolve().parents[len(__name__.split(".")) - 1]  # where this module is imported from
    source = Path(__file__).resolve().parents[2] / "src"
    path = os.pathsep.join([str(root), str(source), *filter(None, [os.environ.get("PYTHONPATH")])])
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_a_registered_function_runs_on_ray_workers(ray_cluster, tmp_path: Path, demo_pool, registered: str) -> None:
    assert __name__ in sys.modules
    pool = demo_pool[:32]
    local = nncift.select(SETTINGS, tmp_path / "local", pool=pool)
    on_ray = nncift.select({**SETTINGS, "executor": {"name": "ray", "workers": 2, "worker_cpus": 1.0, "block_size": 4}}, tmp_path / "ray", pool=pool)
    q1, exact = _exact_q1(tmp_path / "ray", pool, pool)
    assert not np.isnan(q1).any() and np.allclose(q1, exact, atol=1e-6)
    assert np.array_equal(q1, np.load(tmp_path / "local" / "q1.npy"))
    assert np.array_equal(local.indices, on_ray.indices) and on_ray.manifest["settings"]["executor"]["name"] == "ray"
