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


def test_a_sampled_block_embeds_only_its_own_records(tmp_path: Path, tiny_lm_dir: Path, monkeypatch) -> None:
    """A labelled block of a large pool asks for a few records: only those are embedded (a million-record pool is not
    embedded by the similarity embedder to label 2,000 of its records), and the values are the same as embedding them all."""
    monkeypatch.setenv("NNCIFT_CACHE", str(tmp_path / "cache"))  # an empty embedding cache: every text costs a pass
    records = demo_records(40)
    own = f"lm:{tiny_lm_dir}"
    function = DeliftSE.from_options({"similarity_embedder": own}, run=RunContext(device="cpu"), progress=False)
    function.prepare(records, records, tmp_path)
    rows, cols = np.array([3, 17, 29]), np.array([3, 5, 17, 38])
    first = function.compute_block(rows, cols)
    again = function.compute_block(rows[::-1], cols)  # seen records: no new pass, rows in the order asked
    assert function.counters["encoder_passes"] == 3 + 4
    assert function.counters["evaluations"] == 24
    np.testing.assert_allclose(again, first[::-1], atol=0)
    embeddings = embed_records(records, model=own, device="cpu", progress=False)
    np.testing.assert_allclose(first, (embeddings[rows] @ embeddings[cols].T + 1.0) / 2.0, atol=1e-5)
