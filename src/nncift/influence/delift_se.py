"""DELIFT-SE: cosine similarity of sentence embeddings, rescaled to [0, 1] as (cos + 1) / 2.

Cost: one encoder pass per example a block asks for (cached, so once per text across runs) and a matrix product. Entry ``[i, j]`` is the
similarity of target ``i`` and candidate ``j`` (symmetric when both come from the same pool).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from nncift.data.records import Record
from nncift.influence.base import PairwiseInfluence
from nncift.influence.settings import DeliftSESettings
from nncift.models.embeddings import embed_records


class DeliftSE(PairwiseInfluence):
    """DELIFT-SE influence: (cos(e_target, e_candidate) + 1) / 2."""

    name: ClassVar[str] = "delift-se"
    label_range: ClassVar[tuple[float, float] | None] = (0.0, 1.0)
    Settings: ClassVar[type] = DeliftSESettings
    uses_language_model: ClassVar[bool] = False
    is_embedding_cosine: ClassVar[bool] = True
    network_input: ClassVar[str] = "text"

    def prepare(self, targets: Sequence[Record], candidates: Sequence[Record], workdir: Path) -> None:
        """Bind the records; each is embedded (through the embedding cache) when a block first asks for it, so a sampled
        block of a large pool embeds only its sampled records."""
        self._records = {"targets": list(targets), "candidates": list(candidates)}
        self._vectors: dict[str, dict[int, np.ndarray]] = {"targets": {}, "candidates": {}}

    def _embedded(self, side: str, indices: np.ndarray) -> np.ndarray:
        """float32 (len(indices), d): the embeddings of ``side``'s records at ``indices``, embedding the ones not seen yet."""
        known = self._vectors[side]
        missing = list(dict.fromkeys(int(i) for i in indices if int(i) not in known))
        if missing:
            embedder = self.settings.similarity_embedder or self.run.embedder
            vectors = embed_records([self._records[side][i] for i in missing], model=embedder, device=self.run.device, progress=False)
            known.update(zip(missing, vectors))
            self.counters["encoder_passes"] += len(missing)
        return np.stack([known[int(i)] for i in indices]).astype(np.float32)

    def compute_block(self, target_indices: np.ndarray, candidate_indices: np.ndarray) -> np.ndarray:
        """(cos + 1) / 2 for the block, float32 (len(target_indices), len(candidate_indices))."""
        cosine = self._embedded("targets", target_indices) @ self._embedded("candidates", candidate_indices).T
        self.counters["evaluations"] += cosine.size
        return ((cosine + 1.0) / 2.0).astype(np.float32)
