"""What an experiment's selections cost, and how well NN-CIFT reproduced the original function.

- :func:`cost_summary`: seconds per stage of the original function (or an extrapolation when its
  arm was omitted) and of NN-CIFT, with the influence evaluations each made;
- :func:`fidelity_summary`: from the full matrix the original arm computed, the InfluenceNetwork's
  MSE per quadrant at several fractions u (docs/methods.md §1, beside the mean and random baselines), a
  sample of predicted-versus-true values at the experiment's u, and the overlap of the two subsets.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import numpy as np

from nncift.data.records import Record, jsonl_lines
from nncift.influence import influence_class, network_reading
from nncift.models.embeddings import embed_records
from nncift.network.folds import validation_hold_out
from nncift.network.paper import predict_pairwise, predict_pointwise
from nncift.network.training import train_network, train_network_pointwise
from nncift.settings.stages import SamplingSettings, SelectSettings
from nncift.steps.select import block_self_cols, plan_layout, resolve_sampling, sample_indices, self_cols_of
from nncift_research.fidelity import evaluate_split, quadrant_masks

_SCATTER_POINTS = 3000


def _manifest(experiment: Any, influence: str, method: str, seed: int) -> dict[str, Any]:
    folder = experiment.selection_folder(influence, method, seed)
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def _mean_stages(manifests: list[dict[str, Any]]) -> dict[str, float]:
    stages: dict[str, list[float]] = {}
    for manifest in manifests:
        for stage, seconds in manifest["cost"]["seconds_by_stage"].items():
            stages.setdefault(stage, []).append(seconds)
    return {stage: float(np.mean(values)) for stage, values in stages.items() if stage != "load data"}


def cost_summary(experiment: Any, influence: str) -> dict[str, Any]:
    """Mean seconds per stage over the seeds, evaluations made and needed, for original and NN-CIFT (empty: none finished).

    An omitted original is extrapolated from NN-CIFT's sampled block: its seconds per evaluation
    (model loading included, so an over-estimate for tiny blocks) times the full matrix's evaluations.
    Only the part of a selection computed by its last invocation is timed (a resumed selection looks cheaper).
    """
    seeds = [s for s in experiment.settings.seeds if experiment.has_selection(influence, "nncift", s)]
    if not seeds:
        return {}
    nncift = [_manifest(experiment, influence, "nncift", seed) for seed in seeds]
    cost = nncift[0]["cost"]
    summary = {"nncift": {"seconds_by_stage": _mean_stages(nncift), "evaluations": cost["influence_evaluations_made"],
                          "full_evaluations": cost["influence_evaluations_full_matrix"], "counters": cost["counters"]}}
    originals = sorted({experiment.original_seed(seed) for seed in experiment.settings.seeds})
    originals = [seed for seed in originals if experiment.has_selection(influence, "original", seed)]
    if influence in experiment.settings.original_omitted or not originals:
        made = max(1, cost["influence_evaluations_made"])
        stage = next((s for s in cost["seconds_by_stage"] if s.startswith("influence")), None)
        per_evaluation = float(np.mean([m["cost"]["seconds_by_stage"].get(stage, 0.0) for m in nncift])) / made
        full = cost["influence_evaluations_full_matrix"]
        summary["original"] = {"seconds_by_stage": {"influence on full matrix (extrapolated)": per_evaluation * full},
                               "evaluations": full, "estimated": True,
                               "reason": experiment.settings.original_omitted.get(influence, "not computed yet")}
    else:
        manifests = [_manifest(experiment, influence, "original", seed) for seed in originals]
        summary["original"] = {"seconds_by_stage": _mean_stages(manifests), "estimated": False,
                               "evaluations": manifests[0]["cost"]["influence_evaluations_made"],
                               "counters": manifests[0]["cost"]["counters"]}
    return summary


def _selected_indices(experiment: Any, influence: str, method: str, seed: int) -> set[int] | None:
    path = experiment.selection_folder(influence, method, seed) / "selected.jsonl"
    if not path.is_file():
        return None
    return {json.loads(line)["index"] for line in jsonl_lines(path.read_text(encoding="utf-8")) if line.strip()}


def _subset_overlap(experiment: Any, influence: str) -> list[float]:
    """Per seed (with both selections finished): share of the original subset that NN-CIFT also picked."""
    overlaps = []
    for seed in experiment.settings.seeds:
        original = _selected_indices(experiment, influence, "original", experiment.original_seed(seed))
        nncift = _selected_indices(experiment, influence, "nncift", seed)
        if original is not None and nncift is not None:
            overlaps.append(len(original & nncift) / max(1, len(original)))
    return overlaps


def _scaled_full(experiment: Any, influence: str, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    folder = experiment.selection_folder(influence, "original", seed)
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    name = "full.npy" if (folder / "full.npy").exists() else "scores.npy"
    values = np.load(folder / name).astype(np.float64)
    low, high = manifest["label_scaling"]["low"], manifest["label_scaling"]["high"]
    return (values - low) / ((high - low) or 1.0), manifest


def fidelity_summary(experiment: Any, influence: str) -> dict[str, Any]:
    """Quadrant MSE rows per fraction, a predicted-versus-true sample, and the subsets' overlap."""
    seed = experiment.original_seed(experiment.settings.seeds[0])
    truth, manifest = _scaled_full(experiment, influence, seed)
    settings = experiment.select_settings(influence, seed)
    fractions = sorted(set(experiment.settings.fidelity_fractions) | {settings.sampling.fraction})
    pool, targets = experiment.splits.pool, experiment.splits.targets
    embed = lambda records: embed_records(records, model=settings.embedder, device=settings.device, progress=False,  # noqa: E731
                                          **network_reading(settings.influence, settings.network))
    if influence_class(influence).pairwise:
        rows, scatter = _pairwise_fidelity(truth, pool, targets, manifest["objective"], settings, fractions, embed)
    else:
        rows, scatter = _pointwise_fidelity(truth[0], embed(pool), settings, fractions)
    return {"rows": rows, "scatter": scatter, "fraction": settings.sampling.fraction, "subset_overlap": _subset_overlap(experiment, influence),
            "label_scaling": manifest["label_scaling"]}


def _pairwise_fidelity(truth: np.ndarray, pool: list[Record], targets: list[Record], objective: str, settings: SelectSettings,
                       fractions: list[float], embed: Callable[[list[Record]], np.ndarray]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Quadrant rows per fraction and a scatter sample of a pairwise function (the full exact matrix ``truth``)."""
    layout_rows = plan_layout(pool, targets, objective, SamplingSettings(fraction=1.0, blocks=1), np.random.default_rng(0)).rows
    col_embeddings = embed(pool)
    row_embeddings = embed(layout_rows)  # the embedding cache makes the pool rows free
    rows, scatter = [], {}
    for fraction in fractions:
        rng = np.random.default_rng(settings.seed)
        sampling = resolve_sampling(dataclasses.replace(settings.sampling, fraction=fraction, design="block"),  # the paper's quadrants
                                    influence_class(settings.influence), len(pool), len(targets), len(layout_rows))
        layout = plan_layout(pool, targets, objective, sampling, rng)
        labels = np.where(layout.labelled(), truth[np.ix_(layout.seen_rows, layout.seen_cols)], np.nan).astype(np.float32)
        network, _ = train_network(row_embeddings[layout.seen_rows], col_embeddings[layout.seen_cols], labels, settings.network,
                                   self_cols=block_self_cols(layout), objective="topk" if objective == "topk" else "fl",
                                   held_out=validation_hold_out(len(layout.seen_rows), len(layout.rows), "topk" if objective == "topk" else "fl"))
        predicted = predict_pairwise(network, row_embeddings, col_embeddings, self_cols=self_cols_of(layout)).astype(np.float64)
        masks = quadrant_masks(truth.shape[0], truth.shape[1], layout.seen_rows, layout.seen_cols)
        for name, mask in masks.items():
            metrics = evaluate_split(truth[mask], predicted[mask], labels[np.isfinite(labels)].astype(np.float64), rng, 0.10)
            rows.append({"fraction": fraction, "split": name, "n_seen_rows": len(layout.seen_rows), "n_seen_cols": len(layout.seen_cols), **metrics})
        if fraction == settings.sampling.fraction:
            scatter = _scatter_sample(truth, predicted, masks, np.random.default_rng(settings.seed))
    return rows, scatter


def _scatter_sample(truth: np.ndarray, predicted: np.ndarray, masks: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, list]:
    labels = np.empty(truth.shape, dtype=object)
    for name, mask in masks.items():
        labels[mask] = name
    pick = rng.choice(truth.size, min(_SCATTER_POINTS, truth.size), replace=False)
    return {"true": truth.ravel()[pick].round(5).tolist(), "predicted": predicted.ravel()[pick].round(5).tolist(),
            "split": labels.ravel()[pick].tolist()}


def _pointwise_fidelity(truth: np.ndarray, embeddings: np.ndarray, settings: SelectSettings,
                        fractions: list[float]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows per fraction and a scatter sample of a pointwise function (exact scores ``truth``)."""
    rows, scatter = [], {}
    ok = np.isfinite(truth)
    for fraction in fractions:
        rng = np.random.default_rng(settings.seed)
        seen = sample_indices(len(truth), fraction, settings.sampling.min_sampled, rng)
        seen_ok = seen[ok[seen]]
        network, _ = train_network_pointwise(embeddings[seen_ok], truth[seen_ok].astype(np.float32), settings.network)
        predicted = predict_pointwise(network, embeddings).astype(np.float64)
        seen_mask = np.zeros(len(truth), dtype=bool)
        seen_mask[seen] = True
        for name, mask in (("seen", seen_mask & ok), ("unseen", ~seen_mask & ok)):
            metrics = evaluate_split(truth[mask], predicted[mask], truth[seen_ok], rng, 0.20)
            rows.append({"fraction": fraction, "split": name, "n_seen_rows": len(seen), "n_seen_cols": len(seen), **metrics})
        if fraction == settings.sampling.fraction:
            scatter = {"true": truth[ok].round(5).tolist(), "predicted": predicted[ok].round(5).tolist(),
                       "split": np.where(seen_mask[ok], "seen", "unseen").tolist()}
    return rows, scatter
