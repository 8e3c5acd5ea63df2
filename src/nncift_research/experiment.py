"""The downstream experiment (docs/methods.md §6): does the NN-CIFT subset fine-tune as well as the original?

For every seed, the same base model is fine-tuned with LoRA on, and evaluated after:

- ``base``: no fine-tuning (evaluated once: greedy decoding has no seed);
- ``random``: a random subset of the pool (same size as the selections);
- ``full``: the whole pool;
- ``<function>:original``: the subset of the influence function computed on every pair
  (:func:`nncift.steps.select.run_select` with ``full_matrix``), once with the first seed unless ``original_per_seed``;
- ``<function>:nncift``: the subset of NN-CIFT at fraction u (:func:`nncift.steps.select.run_select`).

Every arm lives in its own folder under ``out/arms`` and is skipped when its ``arm.json``
exists, so an interrupted experiment resumes, and adding a seed or an influence function to the
config runs only the new arms. The results go to ``results.json``, ``report.html`` (self-contained)
and ``results.md``.

Config file (YAML): the fields of :class:`ExperimentSettings` at the top level, plus the sections
``select`` (:class:`~nncift.settings.stages.SelectSettings`), ``finetune``
(:class:`~nncift.downstream.finetune.FinetuneSettings`), ``evaluate`` (:class:`~nncift.downstream.evaluate.EvaluateSettings`)
and ``influence_options`` (per function name, the options of its settings dataclass).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from nncift.downstream.evaluate import EvaluateSettings
from nncift.downstream.evaluation import run_evaluate
from nncift.downstream.finetune import FinetuneSettings, finetune
from nncift.downstream.judge import JudgeSettings
from nncift.files.atomic import write_json_atomic
from nncift.files.errors import InputError, UserError
from nncift.influence import REGISTRY, influence_class
from nncift.run.store import RunStore
from nncift.settings.fields import build_settings, environment_info, settings_dict
from nncift.settings.sources import load_yaml
from nncift.settings.stages import ModelContext, SelectSettings
from nncift_research.experiment_data import ExperimentSettings, Splits, build_splits, composition

SECTIONS = {"select": SelectSettings, "finetune": FinetuneSettings, "evaluate": EvaluateSettings}
_ADDED_EVALUATE_FIELDS: dict[str, Any] = {"with_loss": True, "icl_pool": "", "k": 3, "icl_max_length": 1024,
                                         "judge": settings_dict(JudgeSettings())}
"""Evaluation settings newer than some experiment folders: left out of the folder's settings at these defaults, so
that a folder made before they existed still resumes (a changed value is recorded, and a mismatch refused, as usual)."""
_SHARED = tuple(f.name for f in dataclasses.fields(ModelContext)) + ("embedder",)
"""The experiment's model, device, dtype, trust_remote_code and embedder: every stage's, unless its section sets them."""


@dataclass(frozen=True)
class ExperimentConfig:
    """The settings of every stage of an experiment."""

    experiment: ExperimentSettings
    select: SelectSettings = SelectSettings()
    finetune: FinetuneSettings = FinetuneSettings()
    evaluate: EvaluateSettings = EvaluateSettings()
    influence_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (what results.json records)."""
        return {"experiment": settings_dict(self.experiment), **{k: settings_dict(getattr(self, k)) for k in SECTIONS},
                "influence_options": self.influence_options}


def config_from_dict(values: dict[str, Any]) -> ExperimentConfig:
    """Build the config from a YAML mapping; unknown keys are an error naming the section."""
    values = dict(values)
    sections = {name: dict(values.pop(name, None) or {}) for name in (*SECTIONS, "influence_options")}
    experiment = build_settings(ExperimentSettings, values)
    shared = {name: getattr(experiment, name) for name in _SHARED}
    built = {}
    for name, klass in SECTIONS.items():
        section = {k.replace("-", "_"): v for k, v in sections[name].items()}
        own = {f.name for f in dataclasses.fields(klass)}
        try:
            built[name] = build_settings(klass, {**{k: v for k, v in shared.items() if k in own}, "quiet": experiment.quiet, **section})
        except UserError as error:  # a bug in the settings classes is no user error: it keeps its traceback
            raise InputError(f"section '{name}': {error}") from None
    return ExperimentConfig(experiment, influence_options=sections["influence_options"], **built)


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Read an experiment config file (see the module docstring)."""
    return config_from_dict(load_yaml(path))


def available_influences(names: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """(functions that can be imported, {function: why not} for the others)."""
    ready, missing = [], {}
    for name in names:
        if name not in REGISTRY:
            raise InputError(f"unknown influence function '{name}'; choose from: {', '.join(sorted(REGISTRY))}")
        try:
            influence_class(name)
            ready.append(name)
        except ImportError as error:
            missing[name] = f"not available in this build ({error})"
    return ready, missing


class Experiment:
    """One experiment folder: splits, selections and arms, each computed once and reused."""

    def __init__(self, config: ExperimentConfig, out: str | Path | None = None):
        self.config = config
        self.settings = config.experiment
        if self.settings.threads:
            import torch

            torch.set_num_threads(self.settings.threads)
        self.folder = Path(out or self.settings.out)
        defining = {k: v for k, v in config.as_dict()["experiment"].items()
                    if k not in ("name", "out", "influences", "objectives", "original_omitted", "original_per_seed", "seeds",
                                 "fidelity_fractions", "headline_metric", "device", "threads", "quiet", "mode", "dtype", "trust_remote_code")}
        stages = {k: {n: v for n, v in config.as_dict()[k].items() if n not in ("seed", "device", "quiet")
                      and not (k == "evaluate" and _ADDED_EVALUATE_FIELDS.get(n, object()) == v)} for k in SECTIONS}
        # several processes may work on one experiment (each selection and arm has its own lock), so the
        # experiment folder itself is not held exclusively; each selection's run folder is
        stages["select"]["network"] = {n: v for n, v in stages["select"]["network"].items() if n != "seed"}  # the run's seed, per arm
        self.store = RunStore(self.folder, {"data": defining, **stages}, exclusive=False)
        self.splits: Splits = build_splits(self.settings)
        self.splits.write(self.folder / "data")
        from nncift.selection import budget_to_count  # numba: not needed to build the command line

        self.budget = budget_to_count(config.select.selection.budget, len(self.splits.pool))
        self.log: list[str] = []
        self._warm: set[str] = set()
        self.icl_model: Any = None

    # ---------------------------------------------------------------------------- selections
    def select_settings(self, influence: str, seed: int) -> SelectSettings:
        """The selection settings of one function and seed."""
        objective = self.settings.objectives.get(influence, self.config.select.selection.objective)
        return self.config.select.updated(influence=influence, seed=seed, **{"selection.objective": objective})

    def selection(self, influence: str, method: str, seed: int) -> Any:
        """The subset of ``influence`` by ``method`` (original or nncift) for ``seed`` (computed once)."""
        from nncift.steps.select import run_select

        folder = self.selection_folder(influence, method, seed)
        options = self.config.influence_options.get(influence, {})
        if not (folder / "manifest.json").is_file():
            self.warm_up(influence)
        with _exclusive(folder.parent / ".locks" / folder.name):  # another process on the same folder: wait, then reuse
            return run_select(self.select_settings(influence, seed), folder, pool=self.splits.pool, targets=self.splits.targets,
                              influence_options=options, full_matrix=method == "original")

    def warm_up(self, influence: str) -> None:
        """Fill the embedding cache of the pool and targets and compile the selection kernels, untimed, once per
        process and embedder: every arm's cost is then measured warm, none is charged another's cold start."""
        from nncift.models.embeddings import embed_records
        from nncift.network.pair_kernel import warm_up_kernel
        from nncift.selection import facility_location

        options = self.config.influence_options.get(influence, {})
        embedders = {self.config.select.embedder, str(options.get("embedder", self.config.select.embedder))}
        todo = sorted(embedders - self._warm)
        if not todo:
            return
        start = time.perf_counter()
        for embedder in todo:
            embed_records(list(self.splits.pool) + list(self.splits.targets), model=embedder, device=self.settings.device, progress=False)
        warm_up_kernel()
        facility_location(np.eye(3, dtype=np.float32), 2)
        self._warm.update(todo)
        self.say(f"warm-up (embedding cache of {', '.join(todo)}, compiled kernels): {time.perf_counter() - start:.1f} s, charged to no arm")

    def selection_folder(self, influence: str, method: str, seed: int) -> Path:
        """Run folder of the selection of ``influence`` by ``method`` (original or nncift) for ``seed``."""
        return self.folder / "selections" / f"{influence}-{method}-seed{seed}"

    def arm_folder(self, arm: str, seed: int | None) -> Path:
        """Folder of one fine-tuned and evaluated arm (``seed`` None: the arm without fine-tuning)."""
        return self.folder / "arms" / arm.replace(":", "-") / ("once" if seed is None else f"seed{seed}")

    def original_seed(self, seed: int) -> int:
        """The seed whose original selection an arm of ``seed`` uses."""
        return seed if self.settings.original_per_seed else self.settings.seeds[0]

    # ---------------------------------------------------------------------------- arms
    def run_arm(self, arm: str, seed: int | None, indices: np.ndarray | None) -> dict[str, Any]:
        """Fine-tune on the pool records ``indices`` (None: no fine-tuning) and evaluate; reuse a finished arm."""
        folder = self.arm_folder(arm, seed)
        done = folder / "arm.json"  # written last: an arm stopped before it is redone from its saved adapter
        if done.is_file():
            return json.loads(done.read_text(encoding="utf-8"))
        folder.mkdir(parents=True, exist_ok=True)
        info: dict[str, Any] = {"arm": arm, "seed": seed, "finetune_seconds": 0.0}
        adapter = ""
        if indices is not None:
            records = [self.splits.pool[int(i)] for i in indices]
            info.update(composition(records, self.settings.target_family), indices=[int(i) for i in indices])
            adapter_dir = folder / "adapter"
            if not (adapter_dir / "finetune.json").is_file():
                self.say(f"fine-tuning {arm} seed {seed} on {len(records)} records")
                assert seed is not None  # arms with a subset have a seed (only the base model has none)
                result = finetune(records, dataclasses.replace(self.config.finetune, seed=seed), adapter_dir)
                info["finetune_seconds"] = round(result.seconds, 3)
            summary = json.loads((adapter_dir / "finetune.json").read_text(encoding="utf-8"))
            info.update(finetune_seconds=summary["seconds"], truncated=summary["truncated"],
                        final_train_loss=float(np.mean(summary["losses"][-max(1, len(summary["losses"]) // 10):])))
            adapter = str(adapter_dir)
        self.say(f"evaluating {arm} seed {seed}")
        evaluation = run_evaluate(dataclasses.replace(self.config.evaluate, adapter=adapter), self.splits.heldout, folder / "evaluation.json")
        info["metrics"] = {k: v for k, v in evaluation.metrics.items() if k not in ("settings", "environment")}
        self.store_json(done, info)
        return info

    def arms_for_seed(self, seed: int, influences: list[str]) -> list[dict[str, Any]]:
        """Run every arm of one seed; return their records."""
        rng = np.random.default_rng(seed)
        pool_size = len(self.splits.pool)
        results = [self.run_arm("random", seed, np.sort(rng.choice(pool_size, self.budget, replace=False))),
                   self.run_arm("full", seed, np.arange(pool_size))]
        for influence in influences:
            if influence not in self.settings.original_omitted:
                chosen = self.selection(influence, "original", self.original_seed(seed))
                results.append(self.run_arm(f"{influence}:original", seed, chosen.indices))
            chosen = self.selection(influence, "nncift", seed)
            results.append(self.run_arm(f"{influence}:nncift", seed, chosen.indices))
        return results

    def select_all(self) -> list[dict[str, Any]]:
        """Only the selections (original and NN-CIFT, every function and seed), no fine-tuning; their compositions."""
        influences, unavailable = available_influences(self.settings.influences)
        for name, reason in unavailable.items():
            self.say(f"{name}: {reason}")
        rows = []
        for seed in self.settings.seeds:
            for influence in influences:
                methods = ["nncift"] if influence in self.settings.original_omitted else ["original", "nncift"]
                for method in methods:
                    used_seed = self.original_seed(seed) if method == "original" else seed
                    self.say(f"selecting with {influence} ({method}) seed {used_seed}")
                    chosen = self.selection(influence, method, used_seed)
                    records = [self.splits.pool[int(i)] for i in chosen.indices]
                    rows.append({"influence": influence, "method": method, "seed": used_seed,
                                 **composition(records, self.settings.target_family)})
        return rows

    def expected_arms(self, influences: list[str]) -> list[tuple[str, int | None]]:
        """(arm, seed) of every arm the settings ask for, in run order."""
        expected: list[tuple[str, int | None]] = [("base", None)]
        for seed in self.settings.seeds:
            expected += [("random", seed), ("full", seed)]
            for influence in influences:
                if influence not in self.settings.original_omitted:
                    expected.append((f"{influence}:original", seed))
                expected.append((f"{influence}:nncift", seed))
        return expected

    def finished_arm(self, arm: str, seed: int | None) -> dict[str, Any] | None:
        """The record of a finished arm, or None."""
        path = self.arm_folder(arm, seed) / "arm.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def run(self, *, report_only: bool = False) -> dict[str, Any]:
        """Every arm, then the fidelity and cost analysis; writes results.json, results.md and report.html.

        With ``report_only`` nothing is computed: the report covers the arms and selections finished so far
        and lists the missing arms.
        """
        from nncift_research.experiment_analysis import cost_summary, fidelity_summary
        from nncift_research.report import markdown_report, write_report

        start = time.perf_counter()
        influences, unavailable = available_influences(self.settings.influences)
        from nncift_research.experiment_icl import finished_icl_arms, icl_arms_for_seed

        mode = self.settings.mode
        icl_arms: list[dict[str, Any]] = []
        if report_only:
            expected = self.expected_arms(influences)
            found = [(key, self.finished_arm(*key)) for key in (expected if mode != "icl" else expected[:1])]
            arms = [arm for _, arm in found if arm is not None]
            missing = [f"{name}" + ("" if seed is None else f" seed {seed}") for (name, seed), arm in found if arm is None]
            if mode != "finetune":
                icl_arms, icl_missing = finished_icl_arms(self, expected)
                missing += icl_missing
        else:
            arms = [self.run_arm("base", None, None)]
            for seed in self.settings.seeds:
                if mode != "icl":
                    arms += self.arms_for_seed(seed, influences)
                if mode != "finetune":
                    icl_arms += icl_arms_for_seed(self, seed, influences)
            missing = []
        if mode == "icl":  # the table of an ICL-only experiment: the model without examples, then the ICL arms
            arms, icl_arms = arms + icl_arms, []
        results: dict[str, Any] = {
            "name": self.settings.name, "config": self.config.as_dict(), "environment": environment_info(),
            "data": self.splits.summary(), "budget": self.budget, "influences": influences, "unavailable": unavailable,
            "original_omitted": {k: v for k, v in self.settings.original_omitted.items() if k in influences},
            "arms": arms, "missing_arms": missing, "cost": {}, "fidelity": {}, "mode": mode, "icl_arms": icl_arms,
        }
        for influence in influences:
            cost = cost_summary(self, influence)
            if cost:
                results["cost"][influence] = cost
            if influence not in self.settings.original_omitted and self.has_selection(influence, "original", self.original_seed(self.settings.seeds[0])):
                results["fidelity"][influence] = fidelity_summary(self, influence)
        results["seconds"] = round(time.perf_counter() - start, 1)
        results["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.store_json(self.folder / "results.json", results)
        (self.folder / "results.md").write_text(markdown_report(results), encoding="utf-8")
        write_report(results, self.folder / "report.html")
        return results

    def has_selection(self, influence: str, method: str, seed: int) -> bool:
        """True when that selection has finished (its manifest exists)."""
        return (self.selection_folder(influence, method, seed) / "manifest.json").is_file()

    # ---------------------------------------------------------------------------- helpers
    def say(self, message: str) -> None:
        """Log a progress message (printed unless quiet)."""
        self.log.append(message)
        if not self.settings.quiet:
            print(f"[experiment] {message}", flush=True)

    @staticmethod
    def store_json(path: Path, payload: Any) -> None:
        """Write JSON atomically."""
        write_json_atomic(path, payload)


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (POSIX ``flock``; no lock where it does not exist)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_experiment(config: ExperimentConfig, out: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume) the experiment described by ``config``; return the results (also in ``out/results.json``)."""
    return Experiment(config, out).run()


def register_cli(subparsers: Any) -> None:
    """Add ``nncift experiment`` to the command line."""
    parser = subparsers.add_parser("experiment", help="fine-tune on each method's subset and compare (report.html)")
    parser.add_argument("--config", required=True, help="experiment YAML file (see bench/experiment_*.yaml)")
    parser.add_argument("--out", help="experiment folder (default: the config's out)")
    parser.add_argument("--seeds", type=lambda text: [int(s) for s in text.split(",")], help="override the seeds, e.g. 0,1")
    parser.add_argument("--select-only", action="store_true", help="compute the subsets only (no fine-tuning); a later run reuses them")
    parser.add_argument("--report-only", action="store_true", help="compute nothing: report the arms finished so far and list the missing ones")
    parser.set_defaults(handler=_cmd_experiment)


def _cmd_experiment(args: argparse.Namespace) -> int:
    config = load_experiment_config(args.config)
    if args.seeds:
        config = dataclasses.replace(config, experiment=dataclasses.replace(config.experiment, seeds=tuple(args.seeds)))
    if args.select_only:
        for row in Experiment(config, args.out).select_all():
            share = "" if row["target_share"] is None else f", target share {row['target_share']:.2f}"
            print(f"{row['influence']} {row['method']} seed {row['seed']}: {row['n_train']} records{share}; {row['by_family']}")
        return 0
    results = Experiment(config, args.out).run(report_only=True) if args.report_only else run_experiment(config, args.out)
    from nncift_research.report import markdown_table

    print(markdown_table(results))
    folder = Path(args.out or config.experiment.out)
    print(f"results in {folder / 'results.json'}, report in {folder / 'report.html'}")
    return 0


__all__ = ["ExperimentConfig", "ExperimentSettings", "Experiment", "config_from_dict", "load_experiment_config",
           "run_experiment", "composition", "available_influences", "register_cli"]
