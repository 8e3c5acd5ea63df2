"""LESS (arXiv 2402.04333, docs/methods.md §3): gradient similarity after a LoRA warm-up, per checkpoint.

Matrix entry ``[i, j]`` (row = target ``i``, column = candidate ``j``)::

    Σ_c w_c · cos(train_feature_c(candidate j), target_feature_c(target i))

with one term per warm-up checkpoint ``c`` (weights ``w_c`` = the checkpoint epoch's mean learning
rate, normalised to sum 1). The training-side feature of a candidate is its per-example LoRA
gradient turned into Adam's update direction with the checkpoint's moments (``adam_form``: exact by
default, the reference's form as an option), the target-side feature its plain gradient; both are
compressed (``compressor``, ``dim``) and L2-normalised. Targets absent: the pool is its own target
set (its examples then appear on both sides, with their two different features).

Work is lazy: ``prepare`` runs (or reuses) the warm-up, and a block computes only the features of
its own targets and candidates that are not stored yet, so NN-CIFT's sampled block costs features of
the sampled examples only. Under the run folder::

    less/warmup/checkpoint-{c}.safetensors       LoRA weights + Adam moments (see less_warmup)
    less/features/{side}-checkpoint-{c}.npy      (n_side, dim) features, + .done.jsonl + .json

The score of a candidate for the target task (:meth:`Less.candidate_scores`) is the maximum over the
targets' subtasks (their ``task`` labels) of the mean matrix value over that subtask's targets;
selection keeps the highest scores (top-k; the LESS paper keeps the top 5%: ``--budget 0.05``).
"""

from __future__ import annotations

import gc
import hashlib
import json
import sys
import warnings
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np
from tqdm.auto import tqdm

from nncift.data.records import Record
from nncift.gradients import (
    AdamPreconditioner,
    FeatureStore,
    GradientFeaturizer,
    collate,
    encode_example,
    l2_normalise,
    layer_shape,
    make_compressor,
    trainable_layers,
)
from nncift.gradients.batches import EncodedExample
from nncift.influence.base import PairwiseInfluence
from nncift.influence.less_warmup import Checkpoint, add_lora, checkpoint_weights, load_checkpoint, run_warmup, saved_checkpoints, warmup_sample
from nncift.influence.settings import LessSettings
from nncift.models.loading import load_causal_lm


def subtask_scores(matrix: np.ndarray, subtasks: Sequence[str | None], *, max_block_elements: int = 1 << 24) -> np.ndarray:
    """Each subtask's score per candidate: the mean over that subtask's targets.

    Args:
        matrix: ``(n_targets, n_candidates)``, rows = targets; a memory map is read in column blocks
            of at most ``max_block_elements`` entries, never whole.
        subtasks: one label per target (None is a label of its own).

    Returns:
        float64 ``(n_subtasks, n_candidates)``, subtasks in sorted label order. NaN entries are left out of the
        means (a column with no finite entry in a subtask's rows is NaN there).
    """
    n_rows, n_cols = np.shape(matrix) if np.ndim(matrix) == 2 else (-1, -1)
    if n_rows != len(subtasks):
        raise ValueError(f"matrix of shape {np.shape(matrix)} for {len(subtasks)} targets (rows = targets)")
    labels = np.asarray(["\0none" if s is None else str(s) for s in subtasks])
    groups = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    scores = np.empty((len(groups), n_cols), dtype=np.float64)
    width = max(1, max_block_elements // max(n_rows, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a subtask with no finite entry in a column: NaN, as documented
        for start in range(0, n_cols, width):
            block = np.asarray(matrix[:, start : start + width], dtype=np.float64)
            for g, rows in enumerate(groups):
                scores[g, start : start + width] = np.nanmean(block[rows], axis=0)
    return scores


def aggregate_scores(matrix: np.ndarray, subtasks: Sequence[str | None], *, max_block_elements: int = 1 << 24) -> np.ndarray:
    """LESS score per candidate: max over subtasks of the mean over that subtask's targets (:func:`subtask_scores`).

    Returns:
        float64 ``(n_candidates,)``. NaN entries are left out of the means.
    """
    return np.nanmax(subtask_scores(matrix, subtasks, max_block_elements=max_block_elements), axis=0)


def _records_digest(records: Sequence[Record]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps([record.instruction, record.input, record.output]).encode())
    return digest.hexdigest()[:24]


class Less(PairwiseInfluence):
    """LESS influence: checkpoint-weighted cosine of Adam-preconditioned train and plain target LoRA gradients."""

    name: ClassVar[str] = "less"
    default_objective: ClassVar[str] = "topk"
    network_input: ClassVar[str] = "text+response"
    Settings: ClassVar[type] = LessSettings

    def prepare(self, targets: Sequence[Record], candidates: Sequence[Record], workdir: Path) -> None:
        """Load the model with LoRA and run (or reuse) the warm-up on a seeded fraction of ``candidates``."""
        self._records = {"targets": list(targets), "candidates": list(candidates)}
        self._encoded: dict[str, dict[int, EncodedExample]] = {"targets": {}, "candidates": {}}
        self._folder = Path(workdir) / "less"
        if self.progress and len(targets) == len(candidates) and all(a is b for a, b in zip(targets, candidates)):
            print("less: no target set given; the pool is used as the targets", file=sys.stderr)
        settings, run = self.settings, self.run
        self._model, self._tokenizer = load_causal_lm(run.model, device=run.device, dtype=run.dtype, trust_remote_code=run.trust_remote_code)
        self._model = add_lora(self._model, settings, seed=run.seed)
        self._layers = trainable_layers(self._model)
        self._compressor = make_compressor(settings.compressor, [layer_shape(n, m) for n, m in self._layers], settings.dim, run.seed)
        warmup = [self._records["candidates"][i] for i in warmup_sample(len(candidates), settings.warmup_fraction, run.seed)]
        self._checkpoints = saved_checkpoints(self._folder / "warmup", settings, warmup, run)
        if len(self._checkpoints) < settings.warmup_epochs:
            self._checkpoints = run_warmup(self._model, self._tokenizer, warmup, settings, self._folder / "warmup",
                                           run=run, progress=self.progress, counters=self.counters)
        self._model.eval()
        self._weights = checkpoint_weights(self._checkpoints)
        self._stores: dict[tuple[str, int], FeatureStore] = {}

    def compute_block(self, target_indices: np.ndarray, candidate_indices: np.ndarray) -> np.ndarray:
        """Σ_c w_c·cos(train feature of candidate, target feature of target): float32 ``(len(t), len(c))``."""
        target_indices = np.asarray(target_indices, dtype=np.int64)
        candidate_indices = np.asarray(candidate_indices, dtype=np.int64)
        self.ensure_features("targets", target_indices)
        self.ensure_features("candidates", candidate_indices)
        block = np.zeros((len(target_indices), len(candidate_indices)), dtype=np.float64)
        for position, weight in enumerate(self._weights):
            targets = self._store("targets", position).read(target_indices).astype(np.float64)
            candidates = self._store("candidates", position).read(candidate_indices).astype(np.float64)
            block += weight * (targets @ candidates.T)
        self.counters["evaluations"] += block.size
        return block.astype(np.float32)

    def candidate_scores(self, matrix: np.ndarray, targets: Sequence[Record]) -> np.ndarray:
        """LESS aggregation (see :func:`aggregate_scores`) with the targets' ``task`` labels as subtasks."""
        return aggregate_scores(matrix, [record.task for record in targets])

    def candidate_task_scores(self, matrix: np.ndarray, targets: Sequence[Record]) -> np.ndarray | None:
        """Each subtask's mean over its targets (:func:`subtask_scores`): the parts whose maximum is the LESS score."""
        return subtask_scores(matrix, [record.task for record in targets])

    def ensure_features(self, side: str, indices: np.ndarray) -> None:
        """Compute and store the features of ``side`` ("targets" or "candidates") rows ``indices`` that are missing."""
        for position, checkpoint in enumerate(self._checkpoints):
            store = self._store(side, position)
            missing = store.missing(indices)
            if missing.size == 0:
                continue
            state = load_checkpoint(self._model, self._layers, checkpoint)
            preconditioner = AdamPreconditioner(state, self.settings.adam_form) if side == "candidates" else None
            featurizer = GradientFeaturizer(self._model, self._layers, self._compressor, preconditioner)
            examples = {int(i): self._example(side, int(i)) for i in missing}
            order = sorted(examples, key=lambda i: len(examples[i].input_ids))
            size = self.settings.gradient_batch_size
            desc = f"less {side} features, checkpoint {checkpoint.epoch}"
            for start in tqdm(range(0, len(order), size), desc=desc, unit="batch", disable=not self.progress, leave=False):
                rows = order[start : start + size]
                batch = collate([examples[i] for i in rows], self._tokenizer.pad_token_id)
                store.write(np.asarray(rows), l2_normalise(featurizer(batch)))
                self.counters["forward_passes"] += len(rows)
                self.counters["backward_passes"] += len(rows)
                self.counters["tokens"] += int(batch["attention_mask"].sum())

    def _example(self, side: str, index: int) -> EncodedExample:
        cache = self._encoded[side]
        if index not in cache:
            cache[index] = encode_example(self._tokenizer, self._records[side][index], self.settings.max_length)
            self.counters["truncated_examples"] += int(cache[index].truncated)
        return cache[index]

    def _store(self, side: str, position: int) -> FeatureStore:
        key = (side, position)
        if key not in self._stores:
            checkpoint: Checkpoint = self._checkpoints[position]
            description = {
                "side": side, "checkpoint_epoch": checkpoint.epoch, "checkpoint_step": checkpoint.step,
                "model": self.run.model, "dtype": self.run.dtype, "max_length": self.settings.max_length,
                "adam_form": self.settings.adam_form if side == "candidates" else None,
                "records_sha256": _records_digest(self._records[side]), **self._compressor.describe(),
            }
            self._stores[key] = FeatureStore(self._folder / "features", f"{side}-checkpoint-{checkpoint.epoch}",
                                             len(self._records[side]), self._compressor.output_dim, description)
        return self._stores[key]

    def close(self) -> None:
        """Drop the model and the open stores."""
        for attribute in ("_model", "_tokenizer", "_stores"):
            if hasattr(self, attribute):
                delattr(self, attribute)
        gc.collect()

