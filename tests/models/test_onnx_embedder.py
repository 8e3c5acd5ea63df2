"""The ``onnx:`` and ``onnx-int8:`` embedders: the exported transformer reproduces the torch path on real texts, is
exported once and reused, a broken export in the cache is rebuilt, and the embedding cache keeps backends apart."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import shared_data

from nncift.data.records import read_records
from nncift.data.templates import embedding_text
from nncift.models.embeddings import EmbeddingCache, embed_texts, encode_texts
from nncift.models.loading import ModelError, load_embedder
from nncift.models.onnx_embedder import SortedEncoder, onnx_model_file, onnx_of, onnx_session, session_runner, torch_runner
from nncift.settings.choices import BUNDLED_EMBEDDER

ONNX, INT8, OPENVINO = f"onnx:{BUNDLED_EMBEDDER}", f"onnx-int8:{BUNDLED_EMBEDDER}", f"openvino-bf16:{BUNDLED_EMBEDDER}"
COSINE_TOLERANCE = 1e-6
"""Largest |cos(onnx, torch) − 1| allowed: measured 1.2e-7 to 3.7e-13 (float32 rounding; bench/results/embeddings.md)."""
PAIRWISE_TOLERANCE = 1e-5
"""Largest |difference| between the pairwise cosine matrices: measured 2.6e-7 to 6.6e-7."""
P3_FILES = ("imdb_Reviewer_Enjoyment", "ag_news_classify", "common_gen_Put_together", "glue_mrpc_paraphrase",
            "social_i_qa_Generate_answer")


def test_onnx_names_are_parsed() -> None:
    assert onnx_of(ONNX) == ("onnx", BUNDLED_EMBEDDER)
    assert onnx_of("onnx-int8:/models/my-embedder") == ("onnx-int8", "/models/my-embedder")
    assert onnx_of(OPENVINO) == ("openvino-bf16", BUNDLED_EMBEDDER)
    assert onnx_of(BUNDLED_EMBEDDER) is None and onnx_of("lm:smollm2-135m-instruct") is None
    with pytest.raises(ModelError, match="name the model"):
        onnx_of("onnx:")


@pytest.fixture(scope="module")
def real_texts() -> list[str]:
    """20 real P3 example texts, four from each of five templates (reviews longer than 256 tokens among them)."""
    texts = []
    for stem in P3_FILES:
        records, _ = read_records(shared_data(f"p3/{stem}.jsonl"))
        texts += [embedding_text(record) for record in records[:4]]
    return texts


@pytest.fixture(scope="module")
def minilm() -> Any:
    return load_embedder(BUNDLED_EMBEDDER, device="cpu")


def agreement(new: np.ndarray, today: np.ndarray) -> tuple[float, float]:
    """(max |cos(new, today) − 1| over rows, max |difference| of the pairwise cosine matrices), in float64."""
    new, today = new.astype(np.float64), today.astype(np.float64)
    cosines = (new * today).sum(axis=1) / np.linalg.norm(new, axis=1) / np.linalg.norm(today, axis=1)
    return float(np.abs(cosines - 1).max()), float(np.abs(new @ new.T - today @ today.T).max())


@pytest.mark.e2e
def test_onnx_reproduces_the_torch_path_on_real_texts(real_texts: list[str], minilm: Any) -> None:
    assert int(minilm.preprocess(real_texts)["attention_mask"].sum(dim=1).max()) == 256  # truncation is exercised
    today = encode_texts(real_texts, model=BUNDLED_EMBEDDER, device="cpu")
    onnx = encode_texts(real_texts, model=ONNX, device="cpu")
    assert onnx.shape == today.shape == (20, 384) and onnx.dtype == np.float32
    cosine, pairwise = agreement(onnx, today)
    assert cosine <= COSINE_TOLERANCE and pairwise <= PAIRWISE_TOLERANCE
    np.testing.assert_allclose(onnx, today, atol=1e-5)
    # token-sorted batches on the torch transformer: the same vectors, whatever the batch size
    assert SortedEncoder(minilm, torch_runner(minilm)).encode([]).shape == (0, 384)
    for size in (1, 7):
        assert agreement(SortedEncoder(minilm, torch_runner(minilm), max_batch=size).encode(real_texts), today)[1] <= PAIRWISE_TOLERANCE
    # int8 is another model numerically: close, not equal (see bench/results/embeddings.md)
    int8 = encode_texts(real_texts, model=INT8, device="cpu")
    assert 1e-4 < agreement(int8, today)[0] < 0.2


def _cpu_has_bf16() -> bool:
    import openvino

    return "BF16" in list(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


@pytest.mark.e2e
def test_openvino_bf16_stays_close_to_the_torch_path_or_is_refused_without_bf16_units(tmp_path: Path, real_texts: list[str]) -> None:
    """bfloat16 arithmetic: each vector within 1e-3 in cosine (measured about 3e-5), pairwise cosines within 1e-2 (measured
    up to 4e-3), never equal to the float path; its own cache. On a CPU without bfloat16 units: a clear refusal."""
    from nncift.models.onnx_embedder import load_onnx_embedder

    if not _cpu_has_bf16():
        with pytest.raises(ModelError, match="no bfloat16 units"):
            load_onnx_embedder(OPENVINO, root=tmp_path)
        return
    encoder = load_onnx_embedder(OPENVINO, root=tmp_path, threads=1)
    today = encode_texts(real_texts, model=BUNDLED_EMBEDDER, device="cpu")
    bf16 = encoder.encode(real_texts)
    assert bf16.shape == today.shape and bf16.dtype == np.float32
    cosine, pairwise = agreement(bf16, today)
    assert 1e-8 < cosine < 1e-3 and pairwise < 1e-2  # bfloat16: close to the float path, not equal to it
    assert [p.name for p in sorted(tmp_path.rglob("*.onnx"))] == ["model.onnx"]  # the float export, nothing else
    np.testing.assert_array_equal(encoder.encode(real_texts), bf16)  # deterministic
    assert EmbeddingCache(OPENVINO).folder not in {EmbeddingCache(name).folder for name in (BUNDLED_EMBEDDER, ONNX)}


@pytest.mark.e2e
def test_the_embedding_cache_keeps_backends_apart_and_resumes(real_texts: list[str]) -> None:
    folders = {EmbeddingCache(name).folder for name in (BUNDLED_EMBEDDER, ONNX, INT8)}
    assert len(folders) == 3
    first = embed_texts(real_texts[:10], model=ONNX, progress=False)
    shards = sorted(EmbeddingCache(ONNX).folder.glob("*.safetensors"))
    assert len(shards) == 1
    both = embed_texts(real_texts, model=ONNX, progress=False)  # the first 10 come from the cache, one new shard
    assert len(list(EmbeddingCache(ONNX).folder.glob("*.safetensors"))) == 2
    np.testing.assert_array_equal(both[:10], first)


@pytest.mark.e2e
def test_the_export_is_made_once_and_reused(tmp_path: Path, minilm: Any, real_texts: list[str]) -> None:
    session = onnx_session(minilm, BUNDLED_EMBEDDER, "onnx", root=tmp_path, threads=1)
    path = onnx_model_file(minilm, BUNDLED_EMBEDDER, "onnx", root=tmp_path)
    stamp = (path.stat().st_ino, path.stat().st_mtime_ns)
    assert [p.name for p in path.parent.iterdir()] == ["model.onnx"]  # no temporary file left
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rebuild warns
        again = onnx_session(minilm, BUNDLED_EMBEDDER, "onnx", root=tmp_path, threads=1)
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp
    features = minilm.preprocess(real_texts[:3])
    np.testing.assert_array_equal(session_runner(again)(features), session_runner(session)(features))


@pytest.mark.e2e
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_broken_export_in_the_cache_is_rebuilt(tmp_path: Path, minilm: Any, real_texts: list[str], damage: str) -> None:
    path = onnx_model_file(minilm, BUNDLED_EMBEDDER, "onnx", root=tmp_path)
    good = path.read_bytes()
    path.write_bytes({"truncated": good[: len(good) // 2], "garbage": b"not an onnx model" * 100, "empty": b""}[damage])
    with pytest.warns(UserWarning, match="unusable.*rebuilding"):
        session = onnx_session(minilm, BUNDLED_EMBEDDER, "onnx", root=tmp_path, threads=1)
    assert path.stat().st_size == len(good)
    features = minilm.preprocess(real_texts[:3])
    np.testing.assert_allclose(session_runner(session)(features), torch_runner(minilm)(features), atol=1e-4)


@pytest.mark.e2e
def test_a_broken_float_export_is_rebuilt_before_quantising(tmp_path: Path, minilm: Any) -> None:
    path = onnx_model_file(minilm, BUNDLED_EMBEDDER, "onnx", root=tmp_path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="rebuilding"):
        onnx_session(minilm, BUNDLED_EMBEDDER, "onnx-int8", root=tmp_path, threads=1)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model-int8.onnx", "model.onnx"]


@pytest.mark.e2e
def test_select_runs_with_the_onnx_embedder_from_the_command_line(tmp_path: Path, demo_pool) -> None:
    import json

    from nncift.cli.commands import main
    from nncift.data.records import write_jsonl

    pool = tmp_path / "pool.jsonl"
    write_jsonl(pool, [r.raw for r in demo_pool[:40]])
    code = main(["select", "--data", str(pool), "--influence", "delift-se", "--embedder", ONNX, "--budget", "8", "--quiet",
                 "--out", str(tmp_path / "run")])
    assert code == 0 and len((tmp_path / "run" / "selected.jsonl").read_text().splitlines()) == 8
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["models"]["embedder"]["backend"] == "onnx" and manifest["models"]["embedder"]["name"] == ONNX

