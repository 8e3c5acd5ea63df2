"""Batched, cached sentence embeddings.

The cache lives in ``$NNCIFT_CACHE/embeddings/<model key>/`` as safetensors shards, each holding the
vectors of one batch of new texts and, in its metadata, the SHA-256 of each text. A text is embedded
once per model, across runs; shards are written atomically, so an interrupted run loses at most the
batch in flight.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from nncift.data.records import Record
from nncift.data.templates import embedding_text, response_text
from nncift.files.atomic import atomic_write, is_temporary
from nncift.models.loading import cache_dir, model_fingerprint
from nncift.settings.choices import BUNDLED_EMBEDDER, DEFAULT_RESPONSE_WEIGHT

SHARD_ROWS = 512
"""Texts per encoder chunk and per cache shard."""

ChunkEncoder = Callable[[list[list[str]], Callable[[int, np.ndarray], None]], None]
"""Encodes chunks of texts somewhere and hands each chunk's vectors to ``store(chunk_number, vectors)``."""


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=4)
def _embedder(name_or_path: str, device: str) -> Any:
    from nncift.models.loading import load_embedder
    from nncift.models.onnx_embedder import load_onnx_embedder, onnx_of

    if onnx_of(name_or_path) is not None:  # onnx:MODEL, onnx-int8:MODEL, openvino-bf16:MODEL: on the CPU
        return load_onnx_embedder(name_or_path)
    return load_embedder(name_or_path, device=device)


def embedder_fingerprint(model: str) -> dict[str, Any]:
    """What identifies an embedder's vectors: :func:`nncift.models.loading.model_fingerprint`, and for ``onnx:``,
    ``onnx-int8:`` and ``openvino-bf16:`` names the base model's, with the backend and the export version."""
    from nncift.models.onnx_embedder import onnx_fingerprint, onnx_of

    return onnx_fingerprint(model) if onnx_of(model) is not None else model_fingerprint(model, kind="embedder")


class EmbeddingCache:
    """On-disk store of text → vector for one embedding model."""

    def __init__(self, model: str, root: Path | None = None):
        fingerprint = embedder_fingerprint(model)
        key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
        self.folder = (root or cache_dir() / "embeddings") / key
        self.folder.mkdir(parents=True, exist_ok=True)
        self._vectors: dict[str, np.ndarray] = {}
        self._read: set[str] = set()
        self.refresh()

    @classmethod
    def shared(cls, model: str, root: Path | None = None) -> EmbeddingCache:
        """This process's cache of ``model`` under ``root`` (default ``$NNCIFT_CACHE/embeddings``), read from disk once and
        then only for the shards written since (by this process or another): a run that embeds in many small calls (an
        influence function that embeds only the records its blocks ask for) does not re-read every shard each time."""
        cache = _shared_cache(model, str(root or cache_dir() / "embeddings"))
        cache.refresh()
        return cache

    @staticmethod
    def release_shared() -> None:
        """Forget this process's shared caches (their vectors are read again on the next use): a run calls it once its
        embeddings are in hand, so a million cached vectors do not stay in memory through selection."""
        _shared_cache.cache_clear()

    def refresh(self) -> None:
        """Read the shards not read yet (one written while another process is writing is skipped until it is complete)."""
        from safetensors import safe_open

        for shard in sorted(self.folder.glob("*.safetensors")):
            if is_temporary(shard) or shard.name in self._read:  # being written by another process, or left by a kill
                continue
            with safe_open(str(shard), framework="numpy") as handle:
                keys = json.loads(handle.metadata()["keys"])
                vectors = handle.get_tensor("vectors")
            self._vectors.update(zip(keys, vectors))
            self._read.add(shard.name)

    def get(self, key: str) -> np.ndarray | None:
        """The cached vector of a text key, or None."""
        return self._vectors.get(key)

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store a batch of vectors as one new shard (atomic)."""
        from safetensors.numpy import save_file

        name = hashlib.sha256("".join(keys).encode()).hexdigest()[:20]
        final = self.folder / f"{name}.safetensors"
        atomic_write(final, lambda tmp: save_file({"vectors": np.ascontiguousarray(vectors, dtype=np.float32)}, str(tmp),
                                                  metadata={"keys": json.dumps(list(keys))}))
        self._vectors.update(zip(keys, vectors))
        self._read.add(final.name)


@functools.lru_cache(maxsize=4)
def _shared_cache(model: str, root: str) -> EmbeddingCache:
    return EmbeddingCache(model, Path(root))


def encode_texts(texts: Sequence[str], *, model: str = BUNDLED_EMBEDDER, batch_size: int = 64, device: str = "auto") -> np.ndarray:
    """The encoder's output for one chunk of texts, no cache: float32 (len(texts), d).

    :func:`embed_texts` calls it once per chunk of at most 512 new texts; distributed executors call
    it on their workers with the same chunks, so that vectors are bit-identical (the composition of
    a chunk changes the padding of its batches, and so the last bits).
    """
    return _embedder(model, device).encode(
        list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False,
    ).astype(np.float32)


def embed_texts(
    texts: Sequence[str],
    *,
    model: str = BUNDLED_EMBEDDER,
    batch_size: int = 64,
    device: str = "auto",
    use_cache: bool = True,
    progress: bool = True,
    encode_chunks: ChunkEncoder | None = None,
) -> np.ndarray:
    """Embed texts with a sentence-transformers model; rows are L2-normalised.

    Args:
        texts: the texts, any number (duplicates are embedded once).
        model: embedder id or path (default the bundled all-MiniLM-L6-v2).
        batch_size: texts per encoder call.
        device: ``auto``, ``cpu``, ``cuda``...
        use_cache: read and write the on-disk cache.
        progress: show a progress bar.
        encode_chunks: where the texts missing from the cache are encoded: called once with the list of
            chunks (lists of texts) and a ``store(chunk_number, vectors)`` to call for each finished chunk,
            in any order (an executor that encodes on other machines passes one); default: in process.

    Returns:
        float32 array of shape (len(texts), embedding_dim).
    """
    keys = [_text_key(text) for text in texts]
    cache = EmbeddingCache.shared(model) if use_cache else None
    missing: dict[str, str] = {}
    for key, text in zip(keys, texts):
        if (cache is None or cache.get(key) is None) and key not in missing:
            missing[key] = text
    computed: dict[str, np.ndarray] = {}
    items = list(missing.items())
    chunks = [items[start : start + SHARD_ROWS] for start in range(0, len(items), SHARD_ROWS)]
    if chunks:
        from tqdm.auto import tqdm

        with tqdm(total=len(items), desc="embeddings", unit="text", disable=not progress) as bar:
            def store(number: int, vectors: np.ndarray) -> None:
                chunk_keys = [key for key, _ in chunks[number]]
                if cache is not None:
                    cache.put(chunk_keys, vectors)
                computed.update(zip(chunk_keys, vectors))
                bar.update(len(chunk_keys))

            if encode_chunks is None:
                for number, chunk in enumerate(chunks):
                    store(number, encode_texts([text for _, text in chunk], model=model, batch_size=batch_size, device=device))
            else:
                encode_chunks([[text for _, text in chunk] for chunk in chunks], store)
    rows = [computed[key] if key in computed else cache.get(key) for key in keys]  # type: ignore[union-attr]
    if not rows:  # (every key is computed now or cached: no None)
        return np.zeros((0, 0), dtype=np.float32)
    matrix = np.stack(rows).astype(np.float32)  # type: ignore[arg-type]
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def embed_records(records: Sequence[Record], *, network_input: str = "text", response_weight: float = DEFAULT_RESPONSE_WEIGHT,
                  **kwargs: Any) -> np.ndarray:
    """Embed records as the network reads them (``kwargs``: those of :func:`embed_texts`).

    ``network_input``:

    - ``text``: the embedding of the NN-CIFT example text (:func:`nncift.data.templates.embedding_text`), (n, d);
    - ``text+response``: that and the embedding of the response alone (:func:`~nncift.data.templates.response_text`),
      each L2-normalised, side by side, the response half scaled by ``response_weight`` = w and the text half by
      √(1 − w²), (n, 2d): still unit vectors, whose cosine is (1 − w²) × the texts' cosine + w² × the responses' cosine
      (w = 1/√2: the mean of the two).
    """
    vectors = embed_texts([embedding_text(record) for record in records], **kwargs)
    if network_input == "text":
        return vectors
    if network_input != "text+response":
        raise ValueError(f"network input must be text or text+response, got {network_input!r}")
    if not 0.0 <= response_weight <= 1.0:
        raise ValueError(f"the response weight must lie in [0, 1], got {response_weight!r}")
    responses = embed_texts([response_text(record) for record in records], **kwargs)  # unit rows, as ``vectors``
    text_weight = math.sqrt(1.0 - response_weight * response_weight)
    return np.concatenate([text_weight * vectors, response_weight * responses], axis=1).astype(np.float32)
