"""The experiment's report: one self-contained HTML page (inline CSS, images as base64 PNG) and Markdown.

Input is the ``results`` dict written by :mod:`nncift_research.experiment` (``results.json``). The page shows a
headline verdict, the downstream table (mean ± sample standard deviation over seeds; with the LLM judge on, its mean
1–5 score and its share of unparseable judgements next to ROUGE-L), the headline metric per arm, the InfluenceNetwork's
fidelity (MSE per quadrant versus u), predicted versus true influence, the cost of each method per stage, and what the subsets contain.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from nncift.downstream.evaluate import METRICS
from nncift.files.atomic import write_text_atomic

LOWER_IS_BETTER = {"loss", "judge_unparseable_share"}
METRIC_NAMES = {"loss": "loss ↓", "rouge_l": "ROUGE-L", "embedding_cosine": "embedding cosine", "exact_match": "exact match",
                "judge_score": "judge (1–5)", "judge_unparseable_share": "judge unparseable ↓"}
JUDGE_METRICS = ("judge_score", "judge_unparseable_share")
"""The LLM judge's columns (:mod:`nncift.downstream.judge`): shown when any arm was judged."""


def shown_metrics(results: dict[str, Any]) -> tuple[str, ...]:
    """The metrics of the tables: :data:`nncift.downstream.evaluate.METRICS`, then the judge's when any arm was judged
    (the judge's score after ROUGE-L's columns, its unparseable share after it)."""
    arms = list(results["arms"]) + list(results.get("icl_arms") or [])
    judged = any("judge_unparseable_share" in arm.get("metrics", {}) for arm in arms)
    return METRICS + JUDGE_METRICS if judged else METRICS


def _compared_metrics(results: dict[str, Any]) -> tuple[str, ...]:
    """The metrics of the verdicts: the tables' less the judge's unparseable share (a property of the judge, not of the arm)."""
    return tuple(m for m in shown_metrics(results) if m != "judge_unparseable_share")


# ------------------------------------------------------------------------------------ statistics
def arm_order(results: dict[str, Any]) -> list[str]:
    """Arms in display order: base, random, full, then original and NN-CIFT per function."""
    names = ["base", "random", "full"]
    for influence in results["influences"]:
        names += [f"{influence}:original", f"{influence}:nncift"]
    present = {arm["arm"] for arm in results["arms"]}
    return [name for name in names if name in present]


def arm_label(arm: str) -> str:
    """Readable name of an arm."""
    if ":" not in arm:
        return {"base": "no fine-tuning", "random": "random subset", "full": "full pool"}.get(arm, arm)
    influence, method = arm.split(":")
    return f"{influence} (original)" if method == "original" else f"NN-CIFT + {influence}"


def _spread(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def arm_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per arm: seeds, subset size, target share and each metric's mean and spread over seeds."""
    rows = []
    for name in arm_order(results):
        runs = [arm for arm in results["arms"] if arm["arm"] == name]
        row: dict[str, Any] = {"arm": name, "label": arm_label(name), "seeds": len([r for r in runs if r["seed"] is not None]) or 1,
                               "n_train": runs[0].get("n_train", 0)}
        shares = [r["target_share"] for r in runs if r.get("target_share") is not None]
        row["target_share"] = (float(np.mean(shares)), _spread(shares)) if shares else None
        row["finetune_seconds"] = float(np.mean([r["finetune_seconds"] for r in runs]))
        for metric in shown_metrics(results):
            values = [r["metrics"][metric] for r in runs if r["metrics"].get(metric) is not None]  # loss: None when not computed
            row[metric] = (float(np.mean(values)), _spread(values)) if values else (float("nan"), 0.0)
        rows.append(row)
    return rows


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per function with an original arm: NN-CIFT minus original per metric (paired by seed), and on how many seeds NN-CIFT is worse."""
    by_key = {(arm["arm"], arm["seed"]): arm for arm in results["arms"]}
    out = []
    for influence in results["influences"]:
        seeds = [seed for (name, seed) in by_key if name == f"{influence}:nncift" and (f"{influence}:original", seed) in by_key]
        if not seeds:
            continue
        verdict: dict[str, Any] = {"influence": influence, "seeds": len(seeds)}
        for metric in _compared_metrics(results):
            pairs = [(by_key[(f"{influence}:nncift", s)]["metrics"].get(metric), by_key[(f"{influence}:original", s)]["metrics"].get(metric))
                     for s in seeds]
            differences = [new - old for new, old in pairs if new is not None and old is not None]
            if not differences:  # not measured on both arms (a judge that parsed nothing, a loss not computed)
                continue
            sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
            verdict[metric] = {"difference": float(np.mean(differences)), "spread": _spread(differences),
                               "worse_on": int(sum(sign * d > 1e-12 for d in differences)),
                               "better_on": int(sum(-sign * d > 1e-12 for d in differences))}
        out.append(verdict)
    return out


def _fmt(pair: tuple[float, float] | None, digits: int = 3) -> str:
    if pair is None:
        return "–"
    mean, spread = pair
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def _total(cost: dict[str, Any]) -> float:
    return float(sum(cost["seconds_by_stage"].values()))


_COMPARED_STAGES = ("influence", "network", "prediction")
"""Stages of the cost headline: the influence function's work and what replaces it. Loading data,
embeddings (served from a cache warmed by whichever arm ran first) and selection (numba's one-time
compilation lands on the first run) are excluded, so neither arm is charged another's cold start."""


def _compared(cost: dict[str, Any]) -> float:
    return float(sum(v for k, v in cost["seconds_by_stage"].items() if k.startswith(_COMPARED_STAGES)))


def uninformative_metrics(results: dict[str, Any]) -> list[str]:
    """Metrics with the same value for every arm and seed (e.g. exact match 0 on free-form answers): they rank nothing."""
    out = []
    for metric in _compared_metrics(results):
        values = [arm["metrics"][metric] for arm in results["arms"] if arm.get("metrics", {}).get(metric) is not None]
        if values and float(np.ptp(values)) == 0.0:
            out.append(metric)
    return out


def verdict_sentences(results: dict[str, Any]) -> list[str]:
    """Plain sentences: where NN-CIFT is worse than the original function, by how much, over how many seeds."""
    metric = results["config"]["experiment"]["headline_metric"]
    flat = uninformative_metrics(results)
    sentences = [f"{METRIC_NAMES[m]} is {results['arms'][0]['metrics'][m]:.3f} for every arm and seed: it carries no "
                 "information here, and no verdict is drawn from it." for m in flat]
    for verdict in verdicts(results):
        influence, seeds, head = verdict["influence"], verdict["seeds"], verdict.get(metric)
        if head is None:
            sentences.append(f"NN-CIFT + {influence}: no verdict on {METRIC_NAMES.get(metric, metric)} (not measured on both arms).")
            continue
        direction = "lower" if metric in LOWER_IS_BETTER else "higher"
        state = "worse" if head["worse_on"] > seeds / 2 or (head["worse_on"] and head["better_on"] == 0) else "not worse"
        cost = results["cost"].get(influence, {})
        speed = ""
        if cost.get("original") and cost.get("nncift") and _compared(cost["nncift"]) > 0:
            speed = (f" Selection cost (influence computation, network and prediction; embeddings and selection excluded, as they"
                     f" depend on warm caches and one-time compilation): {_compared(cost['nncift']):.1f} s for NN-CIFT vs"
                     f" {_compared(cost['original']):.1f} s for the original"
                     f" ({cost['nncift']['evaluations']:,} vs {cost['original']['evaluations']:,} influence evaluations).")
        if metric in flat:
            sentences.append(f"NN-CIFT + {influence}: no verdict on {METRIC_NAMES[metric]} (the same value for every arm)." + speed)
        else:
            sentences.append(
                f"NN-CIFT + {influence} is {state} than {influence} on {METRIC_NAMES[metric]} ({direction} is better): "
                f"difference {head['difference']:+.3f} ± {head['spread']:.3f} (NN-CIFT − original), worse on {head['worse_on']} "
                f"of {seeds} seed(s), better on {head['better_on']}." + speed)
        others = [f"{METRIC_NAMES[m]} {verdict[m]['difference']:+.3f} (worse on {verdict[m]['worse_on']}/{seeds})"
                  for m in _compared_metrics(results) if m != metric and m not in flat and m in verdict]
        sentences.append(f"Other metrics for {influence}, NN-CIFT − original: " + "; ".join(others) + ".")
    for influence, reason in results.get("original_omitted", {}).items():
        sentences.append(f"{influence}: the original (full-matrix) arm was not run: {reason}.")
    for influence, reason in results.get("unavailable", {}).items():
        sentences.append(f"{influence}: {reason}; not part of this run.")
    if results.get("missing_arms"):
        sentences.append("Not run (yet) within the compute budget: " + ", ".join(results["missing_arms"]) + ".")
    return sentences


# ------------------------------------------------------------------------------------ ICL arms
def icl_results(results: dict[str, Any]) -> dict[str, Any]:
    """The results with the in-context-learning arms in place of the fine-tuning ones (the shared ``base`` arm first)."""
    return {**results, "arms": [arm for arm in results["arms"] if arm["arm"] == "base"] + list(results.get("icl_arms") or [])}


def icl_heading(results: dict[str, Any], table: str) -> list[str]:
    """The line above a downstream table saying how its subsets were scored (none for a fine-tuning-only experiment)."""
    mode = results.get("mode", "finetune")
    if mode == "finetune":
        return []
    k = results["config"]["evaluate"].get("k", 3)
    if table == "icl" or mode == "icl":
        return [f"In-context learning: no fine-tuning; each held-out record is answered with the K = {k} subset records most "
                "similar to it as examples (the 'no fine-tuning' row: no examples).\n"]
    return ["LoRA fine-tuning on each subset, then evaluation without examples:\n"]


# ------------------------------------------------------------------------------------ markdown
def markdown_table(results: dict[str, Any]) -> str:
    """The downstream table in Markdown (mean ± s.d. over seeds; the judge's columns when any arm was judged)."""
    metrics = shown_metrics(results)
    lines = ["| arm | seeds | train records | target share | " + " | ".join(METRIC_NAMES[m] for m in metrics) + " | fine-tune s |",
             "|---|---|---|---|" + "---|" * len(metrics) + "---|"]
    for row in arm_table(results):
        share = _fmt(row["target_share"], 2) if row["target_share"] else "–"
        lines.append(f"| {row['label']} | {row['seeds']} | {row['n_train']} | {share} | "
                     + " | ".join(_fmt(row[m]) for m in metrics) + f" | {row['finetune_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def markdown_report(results: dict[str, Any]) -> str:
    """Markdown summary: sizes, the downstream table, the verdicts, cost and fidelity at the experiment's u."""
    environment = results.get("environment", {})
    finished = results.get("finished", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    parts = [f"## {results['name']}\n", f"Command: `{environment.get('command', '')}` (finished {finished}; "
             f"git {environment.get('git_commit') or 'uncommitted'}; {environment.get('platform', '')}).\n",
             sizes_sentence(results) + "\n", *icl_heading(results, "finetune"), markdown_table(results)]
    if results.get("icl_arms"):
        parts += [*icl_heading(results, "icl"), markdown_table(icl_results(results))]
    parts += ["", *[f"- {s}" for s in verdict_sentences(results)], ""]
    if results["cost"]:
        parts += ["| influence | method | influence evaluations | seconds by stage | total s |", "|---|---|---|---|---|"]
        for influence, cost in results["cost"].items():
            for method in ("original", "nncift"):
                entry = cost[method]
                stages = ", ".join(f"{k} {v:.1f}" for k, v in entry["seconds_by_stage"].items())
                tag = " (extrapolated)" if entry.get("estimated") else ""
                parts.append(f"| {influence} | {method}{tag} | {entry['evaluations']:,} | {stages} | {_total(entry):.1f} |")
        parts.append("")
    for influence, fidelity in results["fidelity"].items():
        rows = [r for r in fidelity["rows"] if r["fraction"] == fidelity["fraction"]]
        parts += [f"Fidelity of the InfluenceNetwork for {influence} at u = {fidelity['fraction']} (labels scaled to [0, 1]); "
                  f"share of the original subset also picked by NN-CIFT per seed: "
                  + ", ".join(f"{x:.2f}" for x in fidelity["subset_overlap"]), "",
                  "| split | pairs | MSE network | MSE mean baseline | MSE random baseline | Spearman |", "|---|---|---|---|---|---|"]
        parts += [f"| {r['split']} | {r['n']} | {r['mse_network']:.4f} | {r['mse_mean']:.4f} | {r['mse_random']:.4f} | {r['spearman']:.3f} |" for r in rows]
        parts.append("")
    return "\n".join(parts) + "\n"


def sizes_sentence(results: dict[str, Any]) -> str:
    """The experiment's sizes in one sentence."""
    data, config = results["data"], results["config"]
    finetune, select = config["finetune"], config["select"]
    targets = f", {data['targets']} target records" if data["targets"] else ""
    arm_seconds = sum(arm.get("finetune_seconds", 0.0) + arm["metrics"].get("seconds", 0.0) for arm in results["arms"])
    return (f"Pool {data['pool']} records ({', '.join(f'{k} {v}' for k, v in data['pool_by_family'].items())}){targets}, "
            f"{data['heldout']} held-out records; subsets of {results['budget']} records (budget {select['selection']['budget']}); "
            f"NN-CIFT at u = {select['sampling']['fraction']}; LoRA r={finetune['lora_r']}, α={finetune['lora_alpha']}, "
            f"lr {finetune['learning_rate']}, {finetune['epochs']} epoch(s), batch {finetune['batch_size']}, "
            f"max length {finetune['max_length']}; model {config['experiment']['model']}; "
            f"seeds {', '.join(str(s) for s in config['experiment']['seeds'])}; fine-tuning + evaluation time summed over arms "
            f"{arm_seconds / 60:.1f} min (wall time of the last invocation {results.get('seconds', 0) / 60:.1f} min).")


# ------------------------------------------------------------------------------------ HTML
_CSS = """
body{font-family:-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f5f6f8;color:#222}
main{max-width:1050px;margin:0 auto;padding:24px 28px;background:#fff;min-height:100vh}
h1{font-size:26px;margin:0 0 4px} h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #e3e3e3;padding-bottom:4px}
.sub{color:#666;font-size:13px} .verdict{background:#fff8e6;border-left:5px solid #ff9f1a;padding:10px 14px;margin:16px 0;font-size:15px}
.verdict p{margin:6px 0} table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border-bottom:1px solid #e6e6e6;padding:5px 9px;text-align:right} th{background:#fafafa}
td:first-child,th:first-child{text-align:left} tr.nncift td{background:#fff4e8} tr.original td{background:#eef5fc}
.best{font-weight:700} figure{margin:12px 0} figcaption{font-size:12px;color:#555;max-width:900px}
img{max-width:100%;border:1px solid #eee} code{background:#f2f2f2;padding:1px 4px;border-radius:3px;font-size:12px}
details{font-size:12px;color:#444;margin-top:24px} .grid{display:flex;flex-wrap:wrap;gap:18px}
"""


def _image(png: bytes, alt: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _table_html(results: dict[str, Any]) -> str:
    rows = arm_table(results)
    metrics = shown_metrics(results)
    best = {}
    for metric in metrics:
        values = [row[metric][0] for row in rows if np.isfinite(row[metric][0])]
        best[metric] = (min(values) if metric in LOWER_IS_BETTER else max(values)) if values else float("nan")
    head = "".join(f"<th>{html.escape(METRIC_NAMES[m])}</th>" for m in metrics)
    out = [f"<table><tr><th>arm</th><th>seeds</th><th>train records</th><th>target share</th>{head}<th>fine-tune s</th></tr>"]
    for row in rows:
        kind = row["arm"].split(":")[-1] if ":" in row["arm"] else ""
        cells = "".join(f"<td class=\"{'best' if abs(row[m][0] - best[m]) < 1e-12 else ''}\">{_fmt(row[m])}</td>" for m in metrics)
        share = _fmt(row["target_share"], 2) if row["target_share"] else "–"
        out.append(f"<tr class=\"{kind}\"><td>{html.escape(row['label'])}</td><td>{row['seeds']}</td><td>{row['n_train']}</td>"
                   f"<td>{share}</td>{cells}<td>{row['finetune_seconds']:.0f}</td></tr>")
    return "".join(out) + "</table>"


def _compositions(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    budget, pool = results["budget"], results["data"]["pool"]
    compositions = {f"pool (scaled to {budget})": {k: v * budget / pool for k, v in results["data"]["pool_by_family"].items()}}
    for name in arm_order(results):
        runs = [arm for arm in results["arms"] if arm["arm"] == name and arm.get("by_family")]
        if not runs or name == "full":
            continue
        families = {family for run in runs for family in run["by_family"]}
        compositions[arm_label(name)] = {f: float(np.mean([run["by_family"].get(f, 0) for run in runs])) for f in families}
    return compositions


def render_html(results: dict[str, Any]) -> str:
    """The report page as one HTML string (no external resources)."""
    from nncift_research import report_plots as plots

    experiment = results["config"]["experiment"]
    metric = experiment["headline_metric"]
    order = arm_order(results)
    labels = {name: arm_label(name) for name in order}
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(results['name'])}</title>"
             f"<style>{_CSS}</style></head><body><main>",
             f"<h1>{html.escape(results['name'])}</h1><div class=\"sub\">NN-CIFT downstream experiment · {when} · "
             f"<code>{html.escape(results['environment'].get('command', ''))}</code></div>",
             "<div class=\"verdict\">" + "".join(f"<p>{html.escape(s)}</p>" for s in verdict_sentences(results)) + "</div>",
             f"<p class=\"sub\">{html.escape(sizes_sentence(results))}</p>",
             "<h2>Downstream quality</h2>", *[f"<p class=\"sub\">{html.escape(line)}</p>" for line in icl_heading(results, "finetune")],
             _table_html(results),
             *([f"<h2>In-context learning</h2><p class=\"sub\">{html.escape(icl_heading(results, 'icl')[0])}</p>",
                _table_html(icl_results(results))] if results.get("icl_arms") else []),
             "<p class=\"sub\">Mean ± sample standard deviation over seeds; bold = best. Target share = part of the subset from "
             "the target family. Loss = cross-entropy per token of the reference answers."
             + (" Judge = mean 1–5 score of the LLM judge over its parsed judgements; judge unparseable = share of judgements "
                "that did not parse (docs/methods.md §6.1)." if "judge_score" in shown_metrics(results) else "") + "</p>",
             _image(plots.metric_bars(results["arms"], order, labels, metric, METRIC_NAMES[metric]), f"{metric} per arm",
                    f"{METRIC_NAMES[metric]} on the held-out records per arm: bars = mean, whiskers = s.d., dots = seeds.")]
    if results["cost"]:
        parts += ["<h2>Cost of selection</h2>",
                  _image(plots.cost_bars(results["cost"]), "cost per stage",
                         "Seconds per stage of the original influence function (full matrix) and of NN-CIFT (sampled block, "
                         "embeddings, network, prediction, selection). Hatched = extrapolated from NN-CIFT's sampled block.")]
    for influence, fidelity in results["fidelity"].items():
        parts += [f"<h2>Fidelity of the InfluenceNetwork: {html.escape(influence)}</h2><div class=\"grid\">",
                  _image(plots.fidelity_plot(fidelity["rows"], f"{influence}: MSE versus u"), "fidelity",
                         "MSE per quadrant versus the sampled fraction u (labels scaled to [0, 1]), against the training-mean "
                         "and random baselines. Q1 = seen×seen (training), Q4 = unseen×unseen (test)."),
                  _image(plots.scatter_plot(fidelity["scatter"], f"u = {fidelity['fraction']}"), "predicted versus true",
                         f"Predicted versus true influence at the experiment's u = {fidelity['fraction']} (a sample of entries)."),
                  "</div><p class=\"sub\">Share of the original subset that NN-CIFT also picked, per seed: "
                  + ", ".join(f"{x:.2f}" for x in fidelity["subset_overlap"]) + "</p>"]
    parts.append("<h2>What the subsets contain</h2>")
    if len(results["data"]["pool_by_family"]) > 1:
        parts.append(_image(plots.composition_bars(_compositions(results), experiment["target_family"]), "subset composition",
                            "Records per task family (mean over seeds); the pool is scaled to the subset size for comparison"
                            + (f"; outlined: the target family {experiment['target_family']}." if experiment["target_family"] else ".")))
    else:
        parts.append("<p class=\"sub\">The pool's records carry no task labels (one file): no per-task composition to show.</p>")
    parts.append("<details><summary>Settings and environment</summary><pre>"
                 + html.escape(_json(results["config"])) + "\n" + html.escape(_json(results["environment"])) + "</pre></details>")
    parts.append("</main></body></html>")
    return "\n".join(parts)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def write_report(results: dict[str, Any], path: str | Path) -> Path:
    """Write the self-contained HTML report; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, render_html(results))
