"""The figures of the experiment report, each returned as PNG bytes (matplotlib, Agg backend)."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

_COLOURS = {"base": "#9e9e9e", "random": "#bdbdbd", "full": "#616161", "original": "#1f77b4", "nncift": "#ff7f0e"}
_SPLIT_COLOURS = {"Q1": "#2ca02c", "Q2": "#1f77b4", "Q3": "#9467bd", "Q4": "#ff7f0e", "seen": "#2ca02c", "unseen": "#ff7f0e"}


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    pyplot().close(figure)
    return buffer.getvalue()


def arm_colour(arm: str) -> str:
    """Colour of an arm: grey for the baselines, blue for original functions, orange for NN-CIFT."""
    return _COLOURS[arm.split(":")[-1]] if ":" in arm else _COLOURS.get(arm, "#333333")


def metric_bars(arms: list[dict[str, Any]], order: list[str], labels: dict[str, str], metric: str, title: str) -> bytes:
    """Mean of ``metric`` per arm (bars), ± s.d. (error bars), and each seed's value (dots)."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(max(5.0, 1.1 * len(order)), 3.2))
    for position, name in enumerate(order):
        values = [arm["metrics"][metric] for arm in arms if arm["arm"] == name]
        spread = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        axis.bar(position, np.mean(values), yerr=spread, color=arm_colour(name), capsize=4, alpha=0.9)
        axis.scatter(np.full(len(values), position) + np.linspace(-0.15, 0.15, len(values)), values, color="black", s=10, zorder=3)
    axis.set_xticks(range(len(order)), [labels[name] for name in order], rotation=20, ha="right", fontsize=8)
    axis.set_ylabel(title)
    axis.grid(axis="y", alpha=0.3)
    return _png(figure)


def fidelity_plot(rows: list[dict[str, Any]], title: str) -> bytes:
    """MSE per quadrant versus u (network and the two baselines), via :func:`nncift_research.fidelity.plot_fidelity`."""
    from nncift_research.fidelity import plot_fidelity

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fidelity.png"
        plot_fidelity(rows, path, title=title)
        return path.read_bytes()


def scatter_plot(scatter: dict[str, list], title: str) -> bytes:
    """Predicted versus true influence (scaled), coloured by quadrant; the diagonal is a perfect network."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(4.2, 3.8))
    true, predicted, splits = np.asarray(scatter["true"]), np.asarray(scatter["predicted"]), np.asarray(scatter["split"])
    for split in dict.fromkeys(splits.tolist()):
        mask = splits == split
        axis.scatter(true[mask], predicted[mask], s=4, alpha=0.5, color=_SPLIT_COLOURS.get(split), label=f"{split} ({mask.sum()})")
    low, high = float(min(true.min(), predicted.min())), float(max(true.max(), predicted.max()))
    axis.plot([low, high], [low, high], "k--", linewidth=0.8)
    axis.set_xlabel("true influence (scaled)")
    axis.set_ylabel("predicted by the network")
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, markerscale=3)
    return _png(figure)


def cost_bars(costs: dict[str, dict[str, Any]]) -> bytes:
    """Stacked horizontal bars: seconds per stage of the original function and of NN-CIFT (hatched: extrapolated)."""
    plt = pyplot()
    bars = [(f"{influence} original", entry["original"]) for influence, entry in costs.items()]
    bars += [(f"NN-CIFT + {influence}", entry["nncift"]) for influence, entry in costs.items()]
    bars.sort(key=lambda item: item[0].split()[-1] if item[0].startswith("NN") else item[0].split()[0])
    stages = list(dict.fromkeys(stage for _, cost in bars for stage in cost["seconds_by_stage"]))
    colours = dict(zip(stages, plt.get_cmap("tab10").colors))
    figure, axis = plt.subplots(figsize=(7.5, 0.55 * len(bars) + 1.4))
    for position, (_, cost) in enumerate(bars):
        left = 0.0
        for stage in stages:
            seconds = cost["seconds_by_stage"].get(stage, 0.0)
            if seconds > 0:
                axis.barh(position, seconds, left=left, color=colours[stage], hatch="//" if cost.get("estimated") else None,
                          edgecolor="white", label=stage)
                left += seconds
        axis.text(left, position, f" {left:,.1f} s", va="center", fontsize=8)
    axis.set_yticks(range(len(bars)), [label for label, _ in bars], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel("seconds (mean over seeds)")
    handles, names = axis.get_legend_handles_labels()
    unique = dict(zip(names, handles))
    axis.legend(unique.values(), unique.keys(), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2 - 0.15 / len(bars)),
                ncol=3, frameon=False)
    axis.set_xlim(0, axis.get_xlim()[1] * 1.15)
    return _png(figure)


def composition_bars(compositions: dict[str, dict[str, float]], target_family: str) -> bytes:
    """Stacked bars: records per task family in the pool and in each arm's subset (mean over seeds)."""
    plt = pyplot()
    families = sorted({family for counts in compositions.values() for family in counts})
    if target_family in families:
        families.remove(target_family)
        families.insert(0, target_family)
    colours = dict(zip(families, plt.get_cmap("tab20").colors))
    figure, axis = plt.subplots(figsize=(max(5.0, 0.9 * len(compositions) + 2.5), 3.4))
    for position, (_, counts) in enumerate(compositions.items()):
        bottom = 0.0
        for family in families:
            value = counts.get(family, 0.0)
            axis.bar(position, value, bottom=bottom, color=colours[family], label=family,
                     edgecolor="black" if family == target_family else "white", linewidth=0.8)
            bottom += value
    axis.set_xticks(range(len(compositions)), list(compositions), rotation=20, ha="right", fontsize=8)
    axis.set_ylabel("records")
    handles, names = axis.get_legend_handles_labels()
    unique = dict(zip(names, handles))
    axis.legend(unique.values(), unique.keys(), fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _png(figure)
