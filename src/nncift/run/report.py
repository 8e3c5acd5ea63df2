"""What a run reports about itself: the manifest (one schema for every command), the line about the network training, the fill rule."""

from __future__ import annotations

from typing import Any, Sequence

from nncift.data.records import LoadReport, skip_counts
from nncift.influence import InfluenceFunction
from nncift.models.embeddings import embedder_fingerprint
from nncift.models.loading import model_fingerprint
from nncift.run.ledger import CostLedger
from nncift.selection import Selection
from nncift.settings.fields import environment_info
from nncift.settings.stages import SelectSettings

FILL_RULE = "after the last positive gain: the unchosen candidates by decreasing singleton value f({j}), ties by lowest index"


def selection_info(chosen: Selection) -> dict[str, Any]:
    """What the manifest says about the picks: how many had a positive gain, and how the rest were chosen (greedy
    objectives); how many picks top-k's task floor added (top-k with per-task scores)."""
    if chosen.floor_added is not None:
        return {"task_floor_added": int(chosen.floor_added)}
    if chosen.n_positive is None:
        return {}
    return {"positive_gain_picks": int(chosen.n_positive), "fill_rule": FILL_RULE if chosen.n_positive < len(chosen.indices) else None}


def describe_training(report: dict[str, Any]) -> str:
    """One line on what the network training chose (for the terminal)."""
    if report.get("architecture") == "paper":
        losses = report.get("losses") or [float("nan")]
        return f"influence network (paper MLP): {report['n_labelled']} labels, loss {losses[0]:.4g} -> {losses[-1]:.4g}"
    held_out = report.get("held_out", "records")
    folds = f", {report['folds']} folds of {held_out}" if report.get("folds") else ""
    line = f"influence network ({report['architecture']}): {report['n_labelled']} labels{folds}; shipped: {report['chosen']}"
    candidates = report.get("candidates") or {}
    if candidates:
        line += f" (held-out {held_out}, criterion = mean of per-row Spearman and f_gain: " + ", ".join(
            f"{name} {values.get('criterion') if values.get('criterion') is not None else float('nan'):.3f}" for name, values in candidates.items()) + ")"
    if report.get("steps") is not None and not report["chosen"].startswith("prior"):
        line += f"; lr {report['learning_rate']:g}, weight decay {report['weight_decay']:g}, {report['steps']} steps"
    if report.get("note"):
        line += f"; {report['note']}"
    return line


MANIFEST_KEYS = ("command", "settings", "environment", "models", "inputs", "counts", "cost")
"""The keys every ``manifest.json`` begins with, whichever command wrote it (``select``, ``full-select``, ``select --add``,
``score``); the command's own entries follow them (:func:`build_manifest`)."""


def build_manifest(command: str, settings: dict[str, Any], *, models: dict[str, Any], reports: Sequence[LoadReport],
                   counts: dict[str, int], ledger: CostLedger, section: dict[str, Any]) -> dict[str, Any]:
    """The one schema of ``manifest.json``: :data:`MANIFEST_KEYS`, then ``section`` (the command's own entries).

    Args:
        command: the command that wrote the folder.
        settings: its settings, JSON-ready (a selection's: :func:`~nncift.settings.fields.settings_dict` of its ``SelectSettings``).
        models: fingerprints of the models it used, by role (``embedder``, ``lm``).
        reports: the load reports of the input files (``inputs``; their skips go into ``counts["skipped"]``).
        counts: record counts (``pool``, ``targets``, ``selected``, ...).
        ledger: the cost ledger (``cost``: seconds per stage, influence evaluations made, counters).
        section: the command's own entries; a key of the common schema is refused.
    """
    clash = sorted(set(section) & set(MANIFEST_KEYS))
    if clash:
        raise ValueError(f"manifest section of {command} repeats common keys: {', '.join(clash)}")
    return {
        "command": command,
        "settings": settings,
        "environment": environment_info(),
        "models": models,
        "inputs": [report.as_dict() for report in reports],
        "counts": {**counts, "skipped": skip_counts(reports)},
        "cost": ledger.as_dict(),
        **section,
    }


def run_models(settings: SelectSettings, function_class: type[InfluenceFunction]) -> dict[str, Any]:
    """Fingerprints of a selection's models: the embedder, and the language model when the influence function runs one."""
    return {"embedder": embedder_fingerprint(settings.embedder),
            **({"lm": model_fingerprint(settings.model)} if function_class.uses_language_model else {})}
