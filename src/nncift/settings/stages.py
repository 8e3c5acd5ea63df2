"""The settings of a selection run: one object per stage, nested in one run object.

::

    SelectSettings            data, targets, influence, quiet
    ├── (RunContext)           model, embedder, device, dtype, seed, trust_remote_code: what every influence function runs with
    ├── sampling   SamplingSettings    which targets and candidates get exact influence (Q1)
    ├── network    NetworkSettings     the InfluenceNetwork that predicts the rest
    ├── selection  SelectionSettings   objective and budget of the subset
    └── executor   ExecutorSettings    where and in what blocks influence is computed
    (+ the influence function's own settings: ``nncift.influence.settings``, passed as ``influence_options``)

The YAML file, the manifest and the command line mirror the nesting: ``selection: {budget: 50}`` in
YAML, ``"selection": {"budget": 50}`` in ``manifest.json``, ``--selection.budget 50`` on the command
line (a few fields have a short flag too, e.g. ``--budget``). The flat names of earlier versions (``budget:`` at the
top of a YAML file, ``--max-steps``, ``--sampling-blocks``) are refused with their spelling now. Every value is checked
when the object is built (:func:`nncift.settings.fields.check_settings`) against its field's rule (:func:`nncift.settings.fields.setting`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from nncift.settings.choices import (
    ARCHITECTURES,
    BUNDLED_EMBEDDER,
    BUNDLED_LM,
    DEFAULT_RESPONSE_WEIGHT,
    DEVICES,
    DTYPES,
    EXECUTORS,
    GRAPH_BUILDERS,
    NETWORK_INPUTS,
    NETWORK_LOSSES,
    OBJECTIVES,
    SAMPLING_DESIGNS,
    TASK_CALIBRATIONS,
)
from nncift.settings.fields import Checked, SettingsError, build_settings, check_settings, normalise_budget, setting, settings_dict

DEVICE: dict[str, Any] = {"choices": DEVICES, "pattern": r"cuda:\d+", "hint": "'cuda:N'"}
"""The rule of every ``device`` field."""


@dataclass(frozen=True)
class SamplingSettings(Checked):
    """Which targets and candidates get the expensive influence function (the labelled block Q1)."""

    fraction: float = setting(0.05, above=0, at_most=1, flag="--fraction")
    """Fraction u of targets and candidates on which the influence function is computed (Q1)."""
    min_sampled: int = setting(10, at_least=1)
    """At least this many sampled targets and candidates (for tiny data sets)."""
    blocks: int = setting(0, at_least=0)
    """Sampling design: 1 = one u×u block; g > 1 = the same number of labelled pairs in g blocks over √g× as many records; 0 = the influence function's
    own default (DELIFT, which costs per pair: 4; the others, which cost per record: 1)."""
    design: str = setting("auto", choices=SAMPLING_DESIGNS)
    """Which pairs are labelled: block (u of the rows × u of the candidates, in sampling.blocks blocks), all-targets (every target row × u of the
    candidates: every target row then has exact labels, for a few more records with functions that cost per record), or auto (block: it beat
    all-targets on the LESS benchmark)."""
    stratify: bool = True
    """Sample the targets within each task label (a P3 file's stem, or a record's ``task``) when they carry two or more: every task
    gets its share of the labelled target rows, and at least one, so no task's scale is left to the prior alone."""
    labels: int = setting(0, at_least=0)
    """Label budget in absolute units instead of the fraction: labelled pairs for a function that costs per pair (DELIFT), sampled pool
    records for one that costs per record; 0 = use the fraction."""


@dataclass(frozen=True)
class NetworkSettings(Checked):
    """Architecture and training settings of an InfluenceNetwork.

    ``architecture="two-tower"`` (default) uses ``tower_hidden``, ``tower_rank``, ``max_steps``,
    ``folds`` and ``fallback`` (see :class:`nncift.network.fitting.FitSettings`); ``"paper"`` uses
    ``hidden_sizes``, ``learning_rate``, ``epochs`` and ``batch_size`` (the paper's values).
    In a run, ``seed`` is the run's seed.
    """

    architecture: str = setting("two-tower", choices=ARCHITECTURES, flag="--architecture")
    """InfluenceNetwork: two-tower (calibrated cosine prior + learned towers, validated on held-out records; the default) or paper (the paper's MLP, for
    reproduction)."""
    tower_hidden: int = setting(128, at_least=1)
    """two-tower: hidden width of each tower."""
    tower_rank: int = setting(64, at_least=1)
    """two-tower: rank of the learned target × candidate interaction."""
    max_steps: int = setting(300, at_least=0)
    """two-tower: most optimisation steps; the step count, learning rate and weight decay are chosen on held-out records."""
    folds: int = setting(4, at_least=3, why=" (the validation that chooses the predictor needs at least 3 folds)")
    """two-tower: record folds of the validation (whole rows and columns held out)."""
    fallback: bool = True
    """two-tower: ship the calibrated prior (or a blend) when it validates better than the network."""
    confirm: bool = False
    """two-tower: check the validation's choice itself out of fold (nested cross-validation): made on the other folds, it must
    gain over the prior on average and lose on no fold, or the prior ships. Fewer learned predictors ship, and fewer below
    the cosine (docs/network.md, "Confirming the choice"); needs at least 4 folds."""
    loss: str = setting("mse", choices=NETWORK_LOSSES)
    """two-tower: training loss, mse or row-centred (each row's mean error removed: a row's offset changes no selection)."""
    input: str = setting("auto", choices=NETWORK_INPUTS)
    """What the network reads of each record: text (the sentence embedding of its example text), text+response (that beside
    the embedding of its response alone, weighted by response_weight), or auto (the default: text for DELIFT-SE, whose
    prior is then the function itself, and for SelectIT; text+response for LESS and DELIFT). See docs/network.md,
    "Network inputs", for what each input gained and where the response pulled the picks off-task."""
    response_weight: float = setting(DEFAULT_RESPONSE_WEIGHT, at_least=0.0, at_most=1.0)
    """text+response: the response half's weight w (the text half's: √(1 − w²)); the calibrated prior is then
    (1 − w²) × the texts' cosine + w² × the responses'. 0.7071 weighs both halves alike (what text+response meant before
    this setting existed)."""
    task_calibration: str = setting("auto", choices=TASK_CALIBRATIONS)
    """two-tower: where the calibrated prior ships, put every target row on its task's scale, fitted on the task's
    labelled rows (docs/network.md, "Task calibration"): auto (the default: where the selection aggregates the targets by task, i.e. LESS's top-k, which takes
    the maximum over subtasks), on (wherever the rows are separate targets of two or more tasks), off."""
    max_training_pairs: int = setting(250_000, at_least=0)
    """two-tower: the network is validated and trained on at most this many labelled pairs: beyond it, a seeded sample of the
    labelled records (rows and columns alike) whose pairs fit, so training time stops growing with the label count; every
    label is still used exactly where it was measured. 0 = all labelled pairs."""
    step_pairs: int = setting(32_768, at_least=0)
    """two-tower: labelled pairs one optimisation step trains on: beyond it, each step takes a seeded random sub-block of the
    labelled rows × columns of about this size (minibatches), so a step costs the same at any label count; validation still
    reads the whole block. 0 = every step on the whole block (full batch)."""
    hidden_sizes: tuple[int, ...] = setting((100,), at_least=1)
    """paper: hidden layer sizes, input side first (the paper: one layer of 100)."""
    learning_rate: float = setting(1e-4, above=0)
    """paper: Adam learning rate."""
    epochs: int = setting(20, at_least=0)
    """paper: passes over the labelled examples."""
    batch_size: int = setting(64, at_least=1)
    """paper: examples per mini-batch."""
    seed: int = setting(0, at_least=0)
    """Seed of the weight initialisation and of the shuffling (in a run: the run's seed)."""

    def __post_init__(self) -> None:
        """Check every field, and that a confirmed choice has three other folds to be made on."""
        super().__post_init__()
        if self.confirm and self.folds < 4:
            raise SettingsError("confirm", f"needs at least 4 folds (the choice is remade on the other folds, and it needs 3); folds is {self.folds}")


@dataclass(frozen=True)
class SelectionSettings(Checked):
    """The subset: which objective picks it and how large it is."""

    budget: float = setting(0.3, normal=normalise_budget, flag="--budget")
    """Subset size: a fraction of the pool in (0, 1] (1 = the whole pool, ranked), or a whole number of records above 1 (50, or 50.0); 0, negatives and
    non-integral values above 1 such as 1.5 are errors."""
    objective: str = setting("", choices=("", *OBJECTIVES), flag="--objective")
    """Selection: fl, flmi, flcg, topk. Empty: the one that belongs to the influence function."""
    eta: float = setting(1.0, at_least=0)
    """FLMI magnification η."""
    nu: float = setting(1.0, at_least=0)
    """FLCG penalty ν."""
    task_share: float = setting(0.1, at_least=0, at_most=1)
    """topk with a function whose score is the maximum over the targets' tasks (LESS): the share of the budget split equally among
    the tasks, each task's best candidates by its own score kept first (at least one each); the rest goes by score. It changes
    nothing where every task already has that many of its best in the plain top-k. 0: the plain maximum (the LESS paper's)."""
    neighbours: int | None = setting(None, at_least=0)
    """fl, flmi, flcg: candidates kept per matrix row (a K-nearest-neighbour graph instead of the whole predicted matrix; no
    predicted.npy). Unset: the graph (K = 64) only when the predicted matrix would not fit in memory; 0: always the whole matrix."""
    graph: str = setting("auto", choices=GRAPH_BUILDERS)
    """fl, flmi, flcg on the neighbour graph: how each row's K best columns are found. auto: exact blocked products up to 10^10
    (row, column) pairs, a FAISS IVF index beyond; exact; ivf (inverted lists, exact scores inside the probed lists); hnsw
    (a navigable small-world graph: faster, lower recall on pools of near-duplicates). The run reports the index's recall@K."""
    partitions: int = setting(0, at_least=0)
    """fl, flmi, flcg on the neighbour graph: two-round distributed greedy (GreeDi) over this many seeded parts of the pool,
    each part's greedy on a worker of the executor, then greedy over the union of their picks. 0 or 1: one greedy."""


@dataclass(frozen=True)
class ExecutorSettings(Checked):
    """Where influence blocks run. None of these change a result: a run may resume with other values."""

    name: str = setting("local", choices=EXECUTORS, flag="--executor")
    """Where influence blocks run: local or ray."""
    block_size: int = setting(64, at_least=1, flag="--block-size")
    """Targets × candidates per block of influence computation (also the resume granularity)."""
    workers: int = setting(2, at_least=1, flag="--workers")
    """Ray workers (with --executor.name ray)."""
    address: str = ""
    """Ray cluster address (auto, HOST:PORT); empty starts a local cluster."""
    worker_cpus: float = setting(1.0, at_least=0)
    """CPUs per Ray worker."""
    worker_gpus: float = setting(0.0, at_least=0)
    """GPUs per Ray worker."""


@dataclass(frozen=True)
class ModelContext(Checked):
    """The causal LM a command runs and how it loads it: declared once, for ``select`` (through :class:`RunContext`),
    ``finetune``, ``evaluate`` and the research commands."""

    model: str = BUNDLED_LM
    """Causal LM id or path (select: of the LM-based influence functions; finetune and evaluate: the base model)."""
    device: str = setting("auto", **DEVICE)
    """auto, cpu, cuda."""
    dtype: str = setting("float32", choices=DTYPES)
    """Causal LM weights: float32, bfloat16 (GPU), float16."""
    trust_remote_code: bool = False
    """Run code shipped with the causal LM (explicit opt-in only)."""


@dataclass(frozen=True)
class Progress(Checked):
    """A command that shows progress bars: ``quiet`` declared once, for ``select``, ``finetune``, ``evaluate`` and the research
    commands (``class FinetuneSettings(Progress, ModelContext)``: listed after the model's fields)."""

    quiet: bool = False
    """No progress bars."""


@dataclass(frozen=True)
class EmbedderChoice(Checked):
    """The sentence embedder of a command: declared once, for ``select`` (through :class:`RunContext`), ``evaluate`` and the
    research commands."""

    embedder: str = BUNDLED_EMBEDDER
    """Sentence embedder id or path: the InfluenceNetwork's inputs and DELIFT-SE (select), the embedding cosine (evaluate).
    Prefixes: ``onnx:MODEL`` runs the same embedder's transformer in ONNX Runtime (exported once, same vectors to float32
    rounding, about 1.8× faster on a CPU), ``openvino-bf16:MODEL`` that export in OpenVINO with bfloat16 arithmetic (CPUs
    with bfloat16 units; about 3×, vectors within about 3e-5 in cosine), ``onnx-int8:MODEL`` int8-quantised (about 4×, but
    another model numerically), ``lm:MODEL`` a causal LM's mean-pooled states."""


@dataclass(frozen=True)
class RunContext(EmbedderChoice, ModelContext):
    """What every influence function of a run runs with: the models, the device, the dtype, the seed.

    Declared once, here: :class:`SelectSettings` is a RunContext (its fields are the run's ``--model``, ``--device``, ...),
    and an influence function receives the run's through its :class:`nncift.influence.InfluenceSpec` (plain data that
    executors ship to their workers), never as copies among its own settings.
    """

    seed: int = setting(0, at_least=0)
    """Seed for sampling, network training and everything random."""

    @classmethod
    def of(cls, settings: Any) -> RunContext:
        """The run context of ``settings`` (a :class:`SelectSettings`, or a mapping such as a manifest's ``settings``)."""
        get = settings.get if isinstance(settings, dict) else lambda name, default: getattr(settings, name, default)
        return cls(**{f.name: get(f.name, getattr(cls, f.name)) for f in dataclasses.fields(cls)})


@dataclass(frozen=True)
class SelectSettings(Progress, RunContext):
    """Settings of one NN-CIFT selection run (``nncift select``): the run's own fields (with those of its
    :class:`RunContext`) and one object per stage.

    Build it with keywords and stage objects, ``SelectSettings(data=("pool.jsonl",), selection=SelectionSettings(budget=50))``,
    or from names as in YAML or on the command line with :meth:`build`: ``SelectSettings.build(data=["pool.jsonl"], selection={"budget": 50})``.
    """

    data: tuple[str, ...] = ()
    """Pool files (candidates): .json/.jsonl files, folders of them, or hf:NAME[:SPLIT]."""
    targets: tuple[str, ...] = ()
    """Target files (validation data of a task). Empty: the pool represents itself."""
    influence: str = "delift-se"
    """Influence function: delift-se (default), delift, less, selectit. DELIFT-SE is the default because with the bundled 135M model, DELIFT through the
    network selected no better than its cosine fallback on real data, which DELIFT-SE computes exactly without the LM (BENCHMARKS.md)."""
    sampling: SamplingSettings = setting(factory=SamplingSettings)
    """Sampling of the labelled block Q1."""
    network: NetworkSettings = setting(factory=NetworkSettings)
    """The InfluenceNetwork."""
    selection: SelectionSettings = setting(factory=SelectionSettings)
    """Objective and budget."""
    executor: ExecutorSettings = setting(factory=ExecutorSettings)
    """Where influence blocks run."""

    HIDDEN: ClassVar[frozenset[str]] = frozenset({"network.seed"})
    """Stage fields that are not settings of their own in a run (the network's seed is the run's)."""
    RENAMED: ClassVar[dict[str, str]] = {"sampling_blocks": "sampling.blocks", "ray_address": "executor.address"}
    """Names of earlier versions that are no stage field's own name: refused, naming their spelling now."""

    def __post_init__(self) -> None:
        """Check every field (stages given as mappings are built); the network takes the run's seed."""
        check_settings(self)
        object.__setattr__(self, "network", dataclasses.replace(self.network, seed=self.seed))

    @classmethod
    def build(cls, **values: Any) -> Any:
        """Settings from names as YAML and the command line spell them: run fields, stage mappings
        (``selection={"budget": 50}``) or dotted names (``**{"selection.budget": 50}``)."""
        return build_settings(cls, values)

    def updated(self, **changes: Any) -> Any:
        """A copy with ``changes`` applied; names as in :meth:`build`."""
        return build_settings(type(self), {**_dotted(settings_dict(self)), **changes}, replace=True)


def _dotted(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"selection": {"budget": 5}} → {"selection.budget": 5} (one level of stages)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and not prefix:
            out.update(_dotted(value, key + "."))
        else:
            out[prefix + key] = value
    return out
