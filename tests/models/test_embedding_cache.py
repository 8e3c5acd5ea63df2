"""The embedding cache shared by a process: read once, then only the shards written since."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nncift.models.embeddings import EmbeddingCache, _text_key


def test_the_shared_cache_reads_new_shards_only(tmp_path: Path, tiny_lm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``EmbeddingCache.shared``: one cache per model and folder in a process; a shard another process wrote since is read on
    the next use, and the shards read before are not opened again."""
    model = f"lm:{tiny_lm_dir}"  # any embedder name: only its fingerprint names the folder
    root = tmp_path / "embeddings"
    shared = EmbeddingCache.shared(model, root)
    assert EmbeddingCache.shared(model, root) is shared
    assert EmbeddingCache.shared(model, tmp_path / "elsewhere") is not shared
    other = EmbeddingCache(model, root)  # as another process would hold it
    other.put([_text_key("a"), _text_key("b")], np.eye(2, 4, dtype=np.float32))
    assert shared.get(_text_key("a")) is None  # not read until the next use
    again = EmbeddingCache.shared(model, root)
    np.testing.assert_array_equal(again.get(_text_key("b")), np.eye(2, 4, dtype=np.float32)[1])

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a shard was read again")

    monkeypatch.setattr("safetensors.safe_open", refuse)
    EmbeddingCache.shared(model, root)  # nothing new on disk: no shard is opened
    monkeypatch.undo()
    EmbeddingCache.release_shared()
    assert EmbeddingCache.shared(model, root) is not shared  # forgotten: the next use reads the folder again
