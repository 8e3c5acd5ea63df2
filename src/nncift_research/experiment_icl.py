"""The in-context-learning arms of an experiment (``mode: icl`` or ``both``).

The same subsets as the fine-tuning arms (random, full pool, each function's original and NN-CIFT
subset, per seed), but nothing is trained: each held-out record is answered with its K most
similar subset records as examples (:mod:`nncift.downstream.icl`; K is the ``evaluate`` section's ``k``).
The reference without examples is the fine-tuning path's ``base`` arm (the model as it is), shared
by both modes. Each arm lives in ``out/arms-icl/<arm>/seed<N>`` and is skipped once its ``arm.json``
exists. Cheap on a CPU (no training), so an ICL-only experiment can afford more seeds and a larger
held-out set than the fine-tuning one.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nncift.settings.fields import environment_info, settings_dict


class Experiment(Protocol):
    """What the ICL arms use of :class:`nncift_research.experiment.Experiment` (typed here, so this module does not
    import the experiment that imports it)."""

    folder: Path
    splits: Any
    config: Any
    settings: Any
    budget: int
    icl_model: Any

    def say(self, message: str) -> None: ...

    def store_json(self, path: Path, payload: Any) -> None: ...

    def selection(self, influence: str, method: str, seed: int) -> Any: ...

    def original_seed(self, seed: int) -> int: ...

MODES = ("finetune", "icl", "both")
"""Values of the experiment's ``mode``: fine-tune on every subset (the default), in-context learning, or both."""


def icl_arm_folder(experiment: Experiment, arm: str, seed: int) -> Path:
    """Folder of one ICL arm."""
    return experiment.folder / "arms-icl" / arm.replace(":", "-") / f"seed{seed}"


def run_icl_arm(experiment: Experiment, arm: str, seed: int, indices: np.ndarray) -> dict[str, Any]:
    """Evaluate the held-out records with examples from the pool records ``indices``; reuse a finished arm."""
    from nncift.downstream.evaluate import load_model_for_evaluation
    from nncift.downstream.icl import evaluate_icl
    from nncift_research.experiment_data import composition

    folder = icl_arm_folder(experiment, arm, seed)
    done = folder / "arm.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    folder.mkdir(parents=True, exist_ok=True)
    records = [experiment.splits.pool[int(i)] for i in indices]
    settings = dataclasses.replace(experiment.config.evaluate, adapter="")
    info: dict[str, Any] = {"arm": arm, "seed": seed, "mode": "icl", "finetune_seconds": 0.0,
                            **composition(records, experiment.settings.target_family), "indices": [int(i) for i in indices]}
    if getattr(experiment, "icl_model", None) is None:
        experiment.icl_model = load_model_for_evaluation(settings)
    model, tokenizer = experiment.icl_model
    experiment.say(f"in-context evaluation of {arm} seed {seed} (K = {settings.k} of {len(records)} records)")
    result = evaluate_icl(model, tokenizer, experiment.splits.heldout, records, settings)
    result.metrics.update(settings=settings_dict(settings), environment=environment_info())
    experiment.store_json(folder / "evaluation.json", result.as_dict())
    info["metrics"] = {k: v for k, v in result.metrics.items() if k not in ("settings", "environment")}
    experiment.store_json(done, info)
    return info


def icl_arms_for_seed(experiment: Experiment, seed: int, influences: list[str]) -> list[dict[str, Any]]:
    """Every ICL arm of one seed: random and full pool, then each function's original and NN-CIFT subset."""
    rng = np.random.default_rng(seed)
    pool_size = len(experiment.splits.pool)
    results = [run_icl_arm(experiment, "random", seed, np.sort(rng.choice(pool_size, experiment.budget, replace=False))),
               run_icl_arm(experiment, "full", seed, np.arange(pool_size))]
    for influence in influences:
        if influence not in experiment.settings.original_omitted:
            chosen = experiment.selection(influence, "original", experiment.original_seed(seed))
            results.append(run_icl_arm(experiment, f"{influence}:original", seed, chosen.indices))
        chosen = experiment.selection(influence, "nncift", seed)
        results.append(run_icl_arm(experiment, f"{influence}:nncift", seed, chosen.indices))
    return results


def finished_icl_arms(experiment: Experiment, expected: list[tuple[str, int | None]]) -> tuple[list[dict[str, Any]], list[str]]:
    """(finished ICL arms, names of the missing ones) among the fine-tuning path's ``expected`` arms (``base`` is shared)."""
    arms, missing = [], []
    for name, seed in expected:
        if seed is None:
            continue
        path = icl_arm_folder(experiment, name, seed) / "arm.json"
        if path.is_file():
            arms.append(json.loads(path.read_text(encoding="utf-8")))
        else:
            missing.append(f"{name} (ICL) seed {seed}")
    return arms, missing
