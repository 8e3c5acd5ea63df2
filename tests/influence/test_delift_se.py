"""DELIFT-SE's own embedder: the influence is the cosine of that embedder, not of the run's (the network's input)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nncift.data.demo import demo_records
from nncift.influence.delift_se import DeliftSE
from nncift.models.embeddings import embed_records
from nncift.settings.stages import RunContext


def test_its_own_embedder_gives_the_influence(tmp_path: Path, tiny_lm_dir: Path) -> None:
    records = demo_records(8)
    own = f"lm:{tiny_lm_dir}"
    function = DeliftSE.from_options({"similarity_embedder": own}, run=RunContext(device="cpu"), progress=False)
    function.prepare(records[:3], records, tmp_path)
    values = function.compute_block(np.arange(3), np.arange(len(records)))
    embeddings = embed_records(records, model=own, device="cpu", progress=False)
    expected = (embeddings[:3] @ embeddings.T + 1.0) / 2.0
    np.testing.assert_allclose(values, expected, atol=1e-6)
    assert not np.allclose(values, np.ones_like(values))


def test_without_one_it_uses_the_runs_embedder(tmp_path: Path, tiny_lm_dir: Path) -> None:
    records = demo_records(6)
    run_embedder = f"lm:{tiny_lm_dir}"
    function = DeliftSE.from_options({}, run=RunContext(embedder=run_embedder, device="cpu"), progress=False)
    function.prepare(records, records, tmp_path)
    embeddings = embed_records(records, model=run_embedder, device="cpu", progress=False)
    np.testing.assert_allclose(function.compute_block(np.arange(6), np.arange(6)), (embeddings @ embeddings.T + 1.0) / 2.0, atol=1e-6)
