"""Tables and the heat map of a u × v sweep (:mod:`nncift_research.sweep`): ``results.md`` and ``grid.png``.

Cells are mean ± standard deviation over the seeds (sample s.d., ddof = 1). The random-subset
references sit in their own row (one per v), the full pool in its own line. When the subsets were judged by the LLM judge
(``judge.mode``), its mean 1–5 score and its share of unparseable judgements get their own tables after ROUGE-L's, and its
score a panel of the heat map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

REFERENCES = {"exact": "exact function's subset (every pair, no network)", "random": "random subset"}
"""Reference rows of the grid tables by subset kind (besides the full pool), in display order."""
METRIC_TITLES = {"exact_match": "exact match", "rouge_l": "ROUGE-L", "embedding_cosine": "embedding cosine", "loss": "loss",
                 "judge_score": "LLM judge, mean 1–5", "judge_unparseable_share": "LLM judge, unparseable share"}
JUDGE_METRICS = ("judge_score", "judge_unparseable_share")
"""The LLM judge's tables (:mod:`nncift.downstream.judge`), shown when any subset was judged."""


def table_metrics(rows: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The metrics of the grid tables: exact match and ROUGE-L, then the judge's when any subset was judged."""
    judged = any("judge_unparseable_share" in r["metrics"] for r in rows)
    return ("exact_match", "rouge_l") + (JUDGE_METRICS if judged else ())


def _values(rows: Sequence[dict[str, Any]], metric: str, mode: str, **match: Any) -> list[float]:
    """The values of ``metric`` in the matching rows (rows without it, or where it is None, left out)."""
    return [float(r["metrics"][metric]) for r in rows if r["mode"] == mode and all(r.get(k) == v for k, v in match.items())
            and r["metrics"].get(metric) is not None]


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def grid_values(rows: Sequence[dict[str, Any]], metric: str, mode: str = "icl") -> tuple[list[float], list[float], np.ndarray]:
    """(u values, v values, mean of ``metric`` per (u, v) over seeds; NaN where absent)."""
    us = sorted({r["u"] for r in rows if r["kind"] == "nncift"})
    vs = sorted({r["v"] for r in rows if r["kind"] == "nncift"})
    means = np.full((len(us), len(vs)), np.nan)
    for i, u in enumerate(us):
        for j, v in enumerate(vs):
            values = _values(rows, metric, mode, kind="nncift", u=u, v=v)
            if values:
                means[i, j] = np.mean(values)
    return us, vs, means


def grid_table(rows: Sequence[dict[str, Any]], metric: str, mode: str = "icl", *, label: str = "NN-CIFT") -> str:
    """Markdown table: one row per u (and the random reference), one column per v; the full pool below."""
    vs = sorted({r["v"] for r in rows if r["kind"] == "nncift"})
    us = sorted({r["u"] for r in rows if r["kind"] == "nncift"})
    header = f"| {METRIC_TITLES.get(metric, metric)} ({mode}) | " + " | ".join(f"v = {v:g}" for v in vs) + " |"
    lines = [header, "|---|" + "---|" * len(vs)]
    for u in us:
        lines.append(f"| {label}, u = {u:g} | " + " | ".join(_cell(_values(rows, metric, mode, kind="nncift", u=u, v=v)) for v in vs) + " |")
    for kind, name in REFERENCES.items():
        if any(r["kind"] == kind for r in rows):
            lines.append(f"| {name} | " + " | ".join(_cell(_values(rows, metric, mode, kind=kind, v=v)) for v in vs) + " |")
    full = _values(rows, metric, mode, kind="full")
    if full:
        lines.append("| full pool (every v) | " + " | ".join(_cell(full) for _ in vs) + " |")
    return "\n".join(lines)


def heat_map(rows: Sequence[dict[str, Any]], path: Path, *, metrics: Sequence[str] = ("exact_match", "rouge_l"), mode: str = "icl",
             title: str = "") -> Path:
    """The paper's grid figure: one heat map per metric (u down, v across), each cell annotated; the random and full
    references are written under each panel."""
    from nncift_research.report_plots import pyplot

    plt = pyplot()
    figure, axes = plt.subplots(1, len(metrics), figsize=(5.6 * len(metrics), 4.2), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        us, vs, means = grid_values(rows, metric, mode)
        image = axis.imshow(means, cmap="viridis", aspect="auto", origin="lower")
        for i in range(len(us)):
            for j in range(len(vs)):
                if np.isfinite(means[i, j]):
                    axis.text(j, i, f"{means[i, j]:.3f}", ha="center", va="center", fontsize=8,
                              color="white" if means[i, j] < np.nanmean(means) else "black")
        axis.set_xticks(range(len(vs)), [f"{v:g}" for v in vs])
        axis.set_yticks(range(len(us)), [f"{u:g}" for u in us])
        axis.set_xlabel("v (subset size)")
        axis.set_ylabel("u (fraction labelled)")
        random_row = [np.mean(_values(rows, metric, mode, kind="random", v=v)) if _values(rows, metric, mode, kind="random", v=v)
                      else float("nan") for v in vs]
        full = _values(rows, metric, mode, kind="full")
        note = "random: " + ", ".join(f"{x:.3f}" for x in random_row) + (f"; full pool: {np.mean(full):.3f}" if full else "")
        axis.set_title(f"{METRIC_TITLES.get(metric, metric)} ({mode})\n{note}", fontsize=8)
        figure.colorbar(image, ax=axis, fraction=0.046)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=96, bbox_inches="tight")
    plt.close(figure)
    return path


def markdown(results: dict[str, Any], image: str = "grid.png") -> str:
    """``results.md``: what ran, the influence cost against independent runs, and the grid tables per mode and metric."""
    manifest, rows = results["manifest"], results["rows"]
    settings = results["settings"]
    influence = manifest["influence"]
    lines = [f"# u × v sweep: {settings['influence']} ({manifest['objective']})", "",
             f"Pool {manifest['counts']['pool']} records, targets {manifest['counts']['targets']}, held-out queries "
             f"{manifest['counts']['heldout']}; seeds {settings['seeds']}; ICL with K = {settings['k']} nearest subset records; "
             f"network {settings['network']['architecture']}.", "",
             f"Influence: {influence['source']}; {influence['evaluations_in_blocks']:,} entries in the largest u's blocks "
             f"(u = {influence['largest_u']:g}), {influence['evaluations_made_by_this_invocation']:,} computed by the last invocation. "
             f"Independent runs would have computed {influence['independent_runs_per_u_would_make']:,} (one per u and seed) or "
             f"{influence['independent_runs_per_cell_would_make']:,} (one per cell).", "",
             f"![grid]({image})", ""]
    modes = sorted({r["mode"] for r in rows}, key=lambda m: m != "icl")
    for mode in modes:
        for metric in table_metrics(rows):
            lines += [grid_table(rows, metric, mode), ""]
    return "\n".join(lines)


def write_sweep_report(results: dict[str, Any], folder: Path) -> None:
    """Write ``results.md`` and ``grid.png`` (and ``grid-finetune.png`` when fine-tuning ran) into ``folder``."""
    panels = table_metrics(results["rows"])[:3]  # exact match, ROUGE-L and the judge's score when judged
    heat_map(results["rows"], folder / "grid.png", metrics=panels, title=f"{results['settings']['influence']}: u × v, ICL")
    if any(r["mode"] == "finetune" for r in results["rows"]):
        heat_map(results["rows"], folder / "grid-finetune.png", metrics=panels, mode="finetune", title="u × v, fine-tuned")
    (folder / "results.md").write_text(markdown(results), encoding="utf-8")
