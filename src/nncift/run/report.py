"""What a run reports about itself: the manifest, the line about the network training, the fill rule."""

from __future__ import annotations

from typing import Any, Sequence

from nncift.data.records import LoadReport, Record, skip_counts
from nncift.influence import InfluenceFunction
from nncift.models.loading import model_fingerprint
from nncift.run.ledger import CostLedger
from nncift.selection import Selection
from nncift.settings.fields import environment_info, settings_dict
from nncift.settings.stages import SelectSettings

FILL_RULE = "after the last positive gain: the unchosen candidates by decreasing singleton value f({j}), ties by lowest index"


def selection_info(chosen: Selection) -> dict[str, Any]:
    """What the manifest says about the picks: how many had a positive gain, and how the rest were chosen."""
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


def build_manifest(settings: SelectSettings, function_class: type[InfluenceFunction], options: dict[str, Any], objective: str,
                   pool: Sequence[Record], targets: Sequence[Record], reports: Sequence[LoadReport], ledger: CostLedger,
                   extra: dict[str, Any], n_selected: int, objective_value: float) -> dict[str, Any]:
    """The run's ``manifest.json``: settings, versions, models, inputs, counts, the cost ledger, and ``extra``."""
    skipped = skip_counts(reports)
    return {
        "settings": settings_dict(settings),
        "influence_options": options,
        "objective": objective,
        "environment": environment_info(),
        "models": {"embedder": model_fingerprint(settings.embedder, kind="embedder"),
                   **({"lm": model_fingerprint(settings.model)} if function_class.uses_language_model else {})},
        "inputs": [report.as_dict() for report in reports],
        "counts": {"pool": len(pool), "targets": len(targets), "selected": n_selected, "skipped": skipped},
        "objective_value": objective_value,
        "cost": ledger.as_dict(),
        **extra,
    }
