"""DELIFT-SE: cosine similarity of sentence embeddings, rescaled to [0, 1] as (cos + 1) / 2.

Cost: one encoder pass per example (cached) and a matrix product. Entry ``[i, j]`` is the
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

    def prepare(self, targets: Sequence[Record], candidates: Sequence[Record], workdir: Path) -> None:
        """Embed targets and candidates once (through the embedding cache)."""
        embedder = self.settings.similarity_embedder or self.run.embedder
        self._targets = embed_records(targets, model=embedder, device=self.run.device, progress=self.progress)
        self._candidates = embed_records(candidates, model=embedder, device=self.run.device, progress=self.progress)
        self.counters["encoder_passes"] += len(targets) + len(candidates)

    def compute_block(self, target_indices: np.ndarray, candidate_indices: np.ndarray) -> np.ndarray:
        """(cos + 1) / 2 for the block, float32 (len(target_indices), len(candidate_indices))."""
        cosine = self._targets[target_indices] @ self._candidates[candidate_indices].T
        self.counters["evaluations"] += cosine.size
        return ((cosine + 1.0) / 2.0).astype(np.float32)
