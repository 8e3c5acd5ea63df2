"""Write tests/digests/selection_digests.json: the picks and objective value of fixed selections (the reference that
tests/test_results_unchanged.py compares the current code with).

Runnable against this tree or an older one (the flat layout before the stage packages: ``nncift.pipeline``,
``nncift.demo_data``, ``nncift.experiments``), whichever ``nncift`` is on the path::

    git worktree add /tmp/before 90aca14
    PYTHONPATH=/tmp/before/src .venv/bin/python tests/digests/make_digests.py --commit 90aca14

Run it from the repository root (the benchmark case reads ``bench/experiment_targeted.yaml`` and ``../shared/data``;
without that data the case is left out). Torch runs on one thread, as in the test.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import inspect
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DIGESTS = Path(__file__).resolve().parent / "selection_digests.json"
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"

_SMALL = {"influence": "delift-se", "seed": 3, "quiet": True, "sampling.fraction": 0.25, "sampling.min_sampled": 8,
          "network.max_steps": 60, "network.folds": 3, "network.epochs": 5}
TINY_LM = "tiny-llama"
"""A case's ``model`` that stands for :func:`tiny_lm` (built in a temporary folder). The network cases run DELIFT with it: DELIFT-SE
is the embeddings' cosine, for which the calibrated prior is exact and no network is trained, so DELIFT (in seconds with
this LM) is what makes the picks depend on the two-tower network's training (``network.fallback`` off: the network is shipped)."""
_GRID_POOL = {"source": "demo", "n": 64, "seed": 0, "pool": [0, 48], "targets": [48, 64]}


def _grid() -> dict[str, dict[str, Any]]:
    cases = {}
    for objective in ("fl", "flmi", "flcg", "topk"):
        inputs = {**_GRID_POOL, "targets": None} if objective == "fl" else _GRID_POOL
        for budget in (0.25, 10):
            cases[f"demo-{objective}-budget-{budget}"] = {
                "method": "select", "inputs": inputs, "settings": {**_SMALL, "selection.objective": objective, "selection.budget": budget}}
    return cases


CASES: dict[str, dict[str, Any]] = {
    "demo-defaults": {"method": "select", "inputs": {"source": "demo", "n": 320, "seed": 0, "pool": [0, 320], "targets": None},
                      "settings": {"influence": "delift-se", "seed": 0, "quiet": True}},
    **_grid(),
    **{f"delift-two-tower-network-seed-{seed}": {
        "method": "select", "inputs": {**_GRID_POOL, "pool": [0, 64], "targets": None},
        "settings": {**_SMALL, "influence": "delift", "model": TINY_LM, "seed": seed, "sampling.min_sampled": 16, "network.fallback": False,
                     "selection.objective": "fl", "selection.budget": 0.25}} for seed in (0, 1)},
    "paper-mlp": {"method": "select", "inputs": {**_GRID_POOL, "targets": None},
                  "settings": {**_SMALL, "network.architecture": "paper", "selection.objective": "fl", "selection.budget": 0.25}},
    "full-select-flmi": {"method": "full-select", "inputs": _GRID_POOL,
                         "settings": {**_SMALL, "selection.objective": "flmi", "selection.budget": 0.25}},
    "bench-experiment-targeted-delift-se": {"method": "select", "inputs": {"source": "experiment", "config": "bench/experiment_targeted.yaml"},
                                            "settings": {"influence": "delift-se", "seed": 0}},
}
"""Case name → how to run it: ``method`` (select or full-select), ``inputs`` (the built-in demo records sliced into pool
and targets, or an experiment config's splits), ``settings`` (names as ``SelectSettings.build`` takes them; for an
experiment config, the changes to its ``select`` section) and ``influence_options`` (optional)."""


def _import(*names: str) -> Any:
    """The first of ``module:attribute`` names that imports (the stage packages first, then the flat layout)."""
    for name in names:
        module, attribute = name.split(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {', '.join(names)} imports")


def _full_select() -> Any:
    """The full-matrix baseline: ``run_select(..., full_matrix=True)``, else the earlier ``run_full_select``."""
    run_select = _import("nncift.steps.select:run_select", "nncift.pipeline:run_select")
    if "full_matrix" in inspect.signature(run_select).parameters:
        return functools.partial(run_select, full_matrix=True)
    return _import("nncift.steps.select:run_full_select", "nncift.pipeline:run_full_select")


def _api() -> dict[str, Any]:
    return {
        "SelectSettings": _import("nncift.settings.stages:SelectSettings", "nncift.settings:SelectSettings"),
        "run_select": _import("nncift.steps.select:run_select", "nncift.pipeline:run_select"),
        "run_full_select": _full_select(),
        "demo_records": _import("nncift.data.demo:demo_records", "nncift.demo_data:demo_records"),
        "load_experiment_config": _import("nncift_research.experiment:load_experiment_config",
                                          "nncift.experiments.experiment:load_experiment_config"),
        "build_splits": _import("nncift_research.experiment_data:build_splits", "nncift.experiments.experiment_data:build_splits"),
        "bundled_lm_path": _import("nncift.models.loading:bundled_lm_path", "nncift.models:bundled_lm_path"),
        "added_settings": _added_settings(),
    }


def _added_settings() -> dict[str, Any]:
    """Settings newer than the digests, at the values the code then ran with (``ADDED_SETTINGS``; none in trees older than
    it): every case runs as a folder of that time resumes, so the digests of any tree describe the same selections."""
    try:
        from nncift.steps.select import ADDED_SETTINGS
    except ImportError:
        return {}
    return dict(ADDED_SETTINGS)


def tiny_lm(folder: Path, tokenizer_dir: Path) -> Path:
    """Write a tiny randomly initialised Llama (2 layers, width 32, seed 0) with the tokenizer of ``tokenizer_dir`` into ``folder``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def fresh_cache(folder: Path, models: Path) -> Path:
    """An empty nncift cache in ``folder`` (its ``models`` a link to ``models``). Each case embeds its records in a cache of its
    own: an embedding depends (by float rounding) on the batch the encoder computed it in, so a cache shared between cases would
    make a case's picks depend on the cases before it."""
    folder.mkdir(parents=True)
    (folder / "models").symlink_to(models)
    return folder


def run_case(case: dict[str, Any], folder: Path, api: dict[str, Any], tiny_lm_dir: Path) -> dict[str, Any]:
    """Run one case in ``folder``: its settings, picks (pool indices in order) and objective value (rounded to 1e-6)."""
    inputs = case["inputs"]
    case = {**case, "settings": {**api["added_settings"], **case["settings"]}}
    if inputs["source"] == "demo":
        records = api["demo_records"](inputs["n"], seed=inputs["seed"])
        pool = records[slice(*inputs["pool"])]
        targets = records[slice(*inputs["targets"])] if inputs["targets"] else None
        settings = api["SelectSettings"].build(**{**case["settings"], **({"model": str(tiny_lm_dir)} if case["settings"].get("model") == TINY_LM else {})})
    else:
        config = api["load_experiment_config"](inputs["config"])
        splits = api["build_splits"](config.experiment)
        pool, targets = splits.pool, splits.targets or None
        influence = case["settings"]["influence"]
        objective = config.experiment.objectives.get(influence, config.select.selection.objective)
        settings = config.select.updated(**case["settings"], **{"selection.objective": objective}, quiet=True)
    run = api["run_full_select"] if case["method"] == "full-select" else api["run_select"]
    result = run(settings, folder, pool=pool, targets=targets, influence_options=case.get("influence_options"))
    training = result.manifest.get("network_training") or {}
    used = json.loads(json.dumps(dataclasses.asdict(settings)).replace(json.dumps(str(tiny_lm_dir)), json.dumps(TINY_LM)))
    return {"settings_used": used, "network_shipped": training.get("chosen"),
            "indices": [int(i) for i in result.indices], "objective": round(float(result.objective), 6)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit", required=True, help="the commit of the nncift on the path (recorded in the note)")
    parser.add_argument("--output", type=Path, default=DIGESTS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    api = _api()
    cases = {}
    with tempfile.TemporaryDirectory() as scratch:
        tiny = tiny_lm(Path(scratch) / TINY_LM, api["bundled_lm_path"]())
        models = api["bundled_lm_path"]().parent  # the converted bundled models, shared by every case's cache
        for name, case in CASES.items():
            if case["inputs"]["source"] == "experiment" and not SHARED_DATA.is_dir():
                print(f"{name}: left out ({SHARED_DATA} not found)", file=sys.stderr)
                continue
            os.environ["NNCIFT_CACHE"] = str(fresh_cache(Path(scratch) / name / "cache", models))
            cases[name] = {**case, **run_case(case, Path(scratch) / name / "run", api, tiny)}
            print(f"{name}: {cases[name]['indices'][:8]}... objective {cases[name]['objective']}", file=sys.stderr)
    note = (f"Picks and objective values of nncift at commit {args.commit} (torch on one thread), written by "
            f"`PYTHONPATH=<checkout of {args.commit}>/src .venv/bin/python tests/digests/make_digests.py --commit {args.commit}` "
            "from the repository root. tests/test_results_unchanged.py reruns each case with the current code.")
    lines = [f"  {json.dumps(name)}: {json.dumps(case)}" for name, case in cases.items()]  # one line a case
    args.output.write_text(f'{{\n "note": {json.dumps(note)},\n "cases": {{\n' + ",\n".join(lines) + "\n }\n}\n", encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
