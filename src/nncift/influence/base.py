"""The two small interfaces every influence function implements.

Orientation, everywhere in nncift: an influence matrix has **rows = targets** (the examples to be
represented or helped) and **columns = candidates** (the pool examples to select from); entry
``[i, j]`` is the influence of candidate ``j`` on target ``i``. Shape ``(n_targets, n_candidates)``.

- :class:`PairwiseInfluence` computes a block of that matrix for given target and candidate indices.
- :class:`PointwiseInfluence` scores given examples.

An influence function is built from an :class:`InfluenceSpec` (its registry name, its own options and the
run's :class:`~nncift.settings.stages.RunContext`: model, device, dtype, seed, ...), plain data, so that any
executor (in process, Ray actors) can rebuild it where the work runs, load its model once, and compute the
blocks handed to it.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np

from nncift.data.records import Record
from nncift.settings.fields import check_options
from nncift.settings.stages import RunContext


@dataclass(frozen=True)
class InfluenceSpec:
    """What to build: the registry name, the options of its settings dataclass, and the run's context.

    Plain data (:meth:`as_dict` is JSON): executors ship it to their workers, which rebuild the function from it.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    """The function's own settings (fields of its ``Settings``), by name."""
    run: RunContext = field(default_factory=RunContext)
    """The run's model, embedder, device, dtype, seed and trust_remote_code."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (what executors ship); :meth:`from_dict` reads it back."""
        return {"name": self.name, "options": dict(self.options), "run": dataclasses.asdict(self.run)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> InfluenceSpec:
        """The spec :meth:`as_dict` wrote."""
        return cls(values["name"], dict(values.get("options") or {}), RunContext(**values.get("run", {})))


class InfluenceFunction(ABC):
    """Common part: settings, progress flag, and the counters that feed the cost ledger."""

    name: ClassVar[str]
    pairwise: ClassVar[bool]
    default_objective: ClassVar[str]
    """Selection that belongs to this function (docs/methods.md §4): ``fl`` or ``topk``."""
    label_range: ClassVar[tuple[float, float] | None] = None
    """Fixed range of the raw values, if known (then no min-max scaling is fitted)."""
    Settings: ClassVar[type]
    """The settings dataclass of this function; its fields are CLI flags and YAML keys."""
    uses_language_model: ClassVar[bool] = True
    """Whether the function runs the causal LM of ``--model`` (then the run fingerprints that model)."""
    cost_per: ClassVar[str] = "record"
    """What the exact function's cost grows with: ``record`` (features or scores per example: LESS, DELIFT-SE,
    SelectIT) or ``pair`` (a model pass per target × candidate: DELIFT). Decides the default sampling design."""
    is_embedding_cosine: ClassVar[bool] = False
    """Whether the function's values are an affine map of the network input's cosine (DELIFT-SE with the run's embedder):
    the network's calibrated prior is then exact and nothing is trained."""
    network_input: ClassVar[str] = "text"
    """What the InfluenceNetwork reads of a record under ``--network.input auto``: ``text`` (the example's sentence
    embedding) or ``text+response`` (that beside its response's, weighted by ``--network.response-weight``). ``text`` unless a
    function was measured to select better with the response (LESS, DELIFT: docs/network.md, "Network inputs")."""
    default_sampling_blocks: ClassVar[int] = 1
    """Sampling design when ``--sampling.blocks`` is 0: 1 block for functions that cost per record; a
    function that costs per pair (DELIFT) labels the same pairs in several blocks over more records."""

    def __init__(self, settings: Any, *, run: RunContext | None = None, progress: bool = True):
        self.settings = settings
        self.run = run or RunContext()
        """The run's model, embedder, device, dtype, seed and trust_remote_code."""
        self.progress = progress
        self.counters: Counter[str] = Counter()

    @classmethod
    def from_options(cls, options: dict[str, Any], *, run: RunContext | None = None, progress: bool = True) -> "InfluenceFunction":
        """Build from a plain dict of the function's own options (each checked; one that is not a field of
        :attr:`Settings` is refused) and the run's context."""
        return cls(check_options(cls.Settings, options), run=run, progress=progress)

    def settings_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (recorded in the manifest)."""
        return dataclasses.asdict(self.settings)

    def close(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Release models and memory (optional)."""


class PairwiseInfluence(InfluenceFunction):
    """An influence function of (target, candidate) pairs."""

    pairwise: ClassVar[bool] = True
    default_objective: ClassVar[str] = "fl"

    @abstractmethod
    def prepare(self, targets: Sequence[Record], candidates: Sequence[Record], workdir: Path) -> None:
        """Bind the data (called once per process before any block); ``workdir`` is for artefacts.

        Blocks may cover only a sample of the records: keep this cheap and compute per-example
        work lazily, for the indices that blocks ask for.
        """

    @abstractmethod
    def compute_block(self, target_indices: np.ndarray, candidate_indices: np.ndarray) -> np.ndarray:
        """Raw influence values, float32 of shape ``(len(target_indices), len(candidate_indices))``."""

    def candidate_scores(self, matrix: np.ndarray, targets: Sequence[Record]) -> np.ndarray:
        """Aggregate a (targets × candidates) matrix into one score per candidate for top-k.

        Default: the mean over targets. Functions with their own rule (LESS) override it.
        """
        return np.asarray(matrix, dtype=np.float64).mean(axis=0)

    def candidate_task_scores(self, matrix: np.ndarray, targets: Sequence[Record]) -> np.ndarray | None:
        """Per-task parts of :meth:`candidate_scores`, ``(n_tasks, n_candidates)``, for functions whose score is the maximum
        over the targets' tasks (LESS); None (the default): the score has no per-task parts. Top-k's task floor
        (``selection.task_share``) keeps each task's best candidates by these parts."""
        return None


class PointwiseInfluence(InfluenceFunction):
    """An influence function that scores each example on its own."""

    pairwise: ClassVar[bool] = False
    default_objective: ClassVar[str] = "topk"

    def __init__(self, settings: Any, *, run: RunContext | None = None, progress: bool = True):
        super().__init__(settings, run=run, progress=progress)
        self.failures: dict[int, str] = {}
        """Examples whose score could not be computed: index → reason (their score is NaN)."""

    @abstractmethod
    def prepare(self, records: Sequence[Record], workdir: Path) -> None:
        """Bind the data (called once per process before any scoring); compute lazily per index."""

    @abstractmethod
    def score(self, indices: np.ndarray) -> np.ndarray:
        """float32 scores of shape ``(len(indices),)``; NaN where it failed (reason in :attr:`failures`)."""
