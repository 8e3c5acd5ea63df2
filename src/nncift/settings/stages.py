"""The settings of a selection run: one object per stage, nested in one run object.

::

    SelectSettings            data, targets, influence, seed, models, device, quiet
    ├── sampling   SamplingSettings    which targets and candidates get exact influence (Q1)
    ├── network    NetworkSettings     the InfluenceNetwork that predicts the rest
    ├── selection  SelectionSettings   objective and budget of the subset
    └── executor   ExecutorSettings    where and in what blocks influence is computed
    (+ the influence function's own settings: ``nncift.influence.settings``, passed as ``influence_options``)

The YAML file, the manifest and the command line mirror the nesting: ``selection: {budget: 50}`` in
YAML, ``"selection": {"budget": 50}`` in ``manifest.json``, ``--selection.budget 50`` on the command
line. The flat names of earlier versions (``budget``, ``--budget``, ``sampling_blocks``, ``ray_address``)
stay accepted as aliases (:data:`ALIASES`). Every value is checked when the object is built
(:func:`nncift.settings.fields.check_settings`); the budget rule is :meth:`SelectionSettings` ``.budget``'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nncift.settings.choices import BUNDLED_EMBEDDER, BUNDLED_LM
from nncift.settings.fields import build_settings, check_settings, settings_dict


class Stage:
    """A stage's settings: every field is checked when the object is built (:func:`nncift.settings.fields.check_settings`;
    the budget takes its normal form, :func:`nncift.settings.fields.normalise_budget`)."""

    def __post_init__(self) -> None:
        """Check every field."""
        check_settings(self)


@dataclass(frozen=True)
class SamplingSettings(Stage):
    """Which targets and candidates get the expensive influence function (the labelled block Q1)."""

    fraction: float = 0.05
    """Fraction u of targets and candidates on which the influence function is computed (Q1)."""
    min_sampled: int = 10
    """At least this many sampled targets and candidates (for tiny data sets)."""
    blocks: int = 0
    """Sampling design: 1 = one u×u block; g > 1 = the same number of labelled pairs in g blocks over √g× as many records; 0 = the influence function's
    own default (DELIFT, which costs per pair: 4; the others, which cost per record: 1)."""
    design: str = "auto"
    """Which pairs are labelled: block (u of the rows × u of the candidates, in sampling.blocks blocks), all-targets (every target row × u of the
    candidates: every target row then has exact labels, for a few more records with functions that cost per record), or auto (block: it beat
    all-targets on the LESS benchmark)."""
    labels: int = 0
    """Label budget in absolute units instead of the fraction: labelled pairs for a function that costs per pair (DELIFT), sampled pool
    records for one that costs per record; 0 = use the fraction."""


@dataclass(frozen=True)
class NetworkSettings(Stage):
    """Architecture and training settings of an InfluenceNetwork.

    ``architecture="two-tower"`` (default) uses ``tower_hidden``, ``tower_rank``, ``max_steps``,
    ``folds`` and ``fallback`` (see :class:`nncift.network.fitting.FitSettings`); ``"paper"`` uses
    ``hidden_sizes``, ``learning_rate``, ``epochs`` and ``batch_size`` (the paper's values).
    In a run, ``seed`` is the run's seed.
    """

    architecture: str = "two-tower"
    """InfluenceNetwork: two-tower (calibrated cosine prior + learned towers, validated on held-out records; the default) or paper (the paper's MLP, for
    reproduction)."""
    tower_hidden: int = 128
    """two-tower: hidden width of each tower."""
    tower_rank: int = 64
    """two-tower: rank of the learned target × candidate interaction."""
    max_steps: int = 300
    """two-tower: most optimisation steps; the step count, learning rate and weight decay are chosen on held-out records."""
    folds: int = 4
    """two-tower: record folds of the validation (whole rows and columns held out)."""
    fallback: bool = True
    """two-tower: ship the calibrated prior (or a blend) when it validates better than the network."""
    loss: str = "mse"
    """two-tower: training loss, mse or row-centred (each row's mean error removed: a row's offset changes no selection)."""
    hidden_sizes: tuple[int, ...] = (100,)
    """paper: hidden layer sizes, input side first (the paper: one layer of 100)."""
    learning_rate: float = 1e-4
    """paper: Adam learning rate."""
    epochs: int = 20
    """paper: passes over the labelled examples."""
    batch_size: int = 64
    """paper: examples per mini-batch."""
    seed: int = 0
    """Seed of the weight initialisation and of the shuffling (in a run: the run's seed)."""


@dataclass(frozen=True)
class SelectionSettings(Stage):
    """The subset: which objective picks it and how large it is."""

    budget: float = 0.3
    """Subset size: a fraction of the pool in (0, 1] (1 = the whole pool, ranked), or a whole number of records above 1 (50, or 50.0); 0, negatives and
    non-integral values above 1 such as 1.5 are errors."""
    objective: str = ""
    """Selection: fl, flmi, flcg, topk. Empty: the one that belongs to the influence function."""
    eta: float = 1.0
    """FLMI magnification η."""
    nu: float = 1.0
    """FLCG penalty ν."""


@dataclass(frozen=True)
class ExecutorSettings(Stage):
    """Where influence blocks run. None of these change a result: a run may resume with other values."""

    name: str = "local"
    """Where influence blocks run: local or ray."""
    block_size: int = 64
    """Targets × candidates per block of influence computation (also the resume granularity)."""
    workers: int = 2
    """Ray workers (with --executor.name ray)."""
    address: str = ""
    """Ray cluster address (auto, HOST:PORT); empty starts a local cluster."""
    worker_cpus: float = 1.0
    """CPUs per Ray worker."""
    worker_gpus: float = 0.0
    """GPUs per Ray worker."""


ALIASES: dict[str, str] = {
    **{name: f"{stage}.{name}" for stage, klass in (("sampling", SamplingSettings), ("network", NetworkSettings),
                                                     ("selection", SelectionSettings), ("executor", ExecutorSettings))
       for name in (f.name for f in dataclasses.fields(klass)) if name not in ("blocks", "name", "address", "seed")},
    "sampling_blocks": "sampling.blocks", "executor": "executor.name", "ray_address": "executor.address",
}
"""Flat names (of earlier versions, and short flags such as ``--budget``) → the dotted name of a stage's field."""

SHORT_FLAGS = frozenset({"fraction", "budget", "objective", "architecture", "executor", "workers", "block_size"})
"""Aliases that also stand in ``--help`` as a short form of their dotted flag; the others are accepted but not listed."""



@dataclass(frozen=True)
class SelectSettings:
    """Settings of one NN-CIFT selection run (``nncift select``): the run's own fields and one object per stage.

    Build it with keywords and stage objects, ``SelectSettings(data=("pool.jsonl",), selection=SelectionSettings(budget=50))``,
    or from names as in YAML or on the command line with :meth:`build`: ``SelectSettings.build(data=["pool.jsonl"], budget=50)``.
    """

    data: tuple[str, ...] = ()
    """Pool files (candidates): .json/.jsonl files, folders of them, or hf:NAME[:SPLIT]."""
    targets: tuple[str, ...] = ()
    """Target files (validation data of a task). Empty: the pool represents itself."""
    influence: str = "delift-se"
    """Influence function: delift-se (default), delift, less, selectit. DELIFT-SE is the default because with the bundled 135M model, DELIFT through the
    network selected no better than its cosine fallback on real data, which DELIFT-SE computes exactly without the LM (BENCHMARKS.md)."""
    seed: int = 0
    """Seed for sampling, network training and everything random."""
    model: str = BUNDLED_LM
    """Causal LM id or path for LM-based influence functions."""
    embedder: str = BUNDLED_EMBEDDER
    """Sentence embedder id or path for the InfluenceNetwork's inputs (and DELIFT-SE)."""
    dtype: str = "float32"
    """Causal LM weights of LM-based influence functions: float32, bfloat16 (GPU), float16."""
    trust_remote_code: bool = False
    """Run code shipped with the causal LM (explicit opt-in only)."""
    device: str = "auto"
    """auto, cpu, cuda."""
    quiet: bool = False
    """No progress bars."""
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    """Sampling of the labelled block Q1."""
    network: NetworkSettings = field(default_factory=NetworkSettings)
    """The InfluenceNetwork."""
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    """Objective and budget."""
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    """Where influence blocks run."""

    ALIASES: ClassVar[dict[str, str]] = ALIASES
    """Flat names accepted for stage fields (read by :func:`nncift.settings.fields.build_settings` and :func:`nncift.settings.fields.add_arguments`)."""
    SHORT_FLAGS: ClassVar[frozenset[str]] = SHORT_FLAGS
    """Aliases listed in ``--help``."""
    HIDDEN: ClassVar[frozenset[str]] = frozenset({"network.seed"})
    """Stage fields that are not settings of their own in a run (the network's seed is the run's)."""

    def __post_init__(self) -> None:
        """Check every field (stages given as mappings are built); the network takes the run's seed."""
        check_settings(self)
        object.__setattr__(self, "network", dataclasses.replace(self.network, seed=self.seed))

    @classmethod
    def build(cls, **values: Any) -> Any:
        """Settings from names as YAML and the command line spell them: run fields, stage mappings
        (``selection={"budget": 50}``), dotted names (``**{"selection.budget": 50}``) or the flat aliases (``budget=50``)."""
        return build_settings(cls, values)

    def updated(self, **changes: Any) -> Any:
        """A copy with ``changes`` applied; names as in :meth:`build`."""
        return build_settings(type(self), {**_dotted(settings_dict(self)), **changes}, replace=True)


def nest_flat_settings(stored: dict[str, Any]) -> dict[str, Any]:
    """Run settings recorded by versions before the stages (flat: ``budget``, ``fraction``, ``executor: "local"``, …)
    in today's nested form, so that their run folders resume, re-select and open as before; nested settings come back unchanged."""
    if isinstance(stored.get("selection"), dict) or "budget" not in stored:
        return stored
    nested: dict[str, Any] = {}
    for key, value in stored.items():
        stage, _, name = ALIASES.get(key, "").partition(".")
        if name:
            nested.setdefault(stage, {})[name] = value
        else:
            nested[key] = value
    if "seed" in stored and isinstance(nested.get("network"), dict):
        nested["network"]["seed"] = stored["seed"]
    return nested


def _dotted(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"selection": {"budget": 5}} → {"selection.budget": 5} (one level of stages)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and not prefix:
            out.update(_dotted(value, key + "."))
        else:
            out[prefix + key] = value
    return out

