"""Label design × training loss × predictor, judged by what selection loses (the network issue's table).

For a stored full matrix of ``bench/matrices.py`` (rows = targets, or the pool then the targets), for each
fraction u and seed, label the pairs of a sampling design exactly as ``nncift select`` does
(``resolve_sampling`` + ``plan_layout``), train the InfluenceNetwork as the run does (validation by
design, selection-aware criterion with the function's own aggregation) and also force each of its
candidates, predict every pair (exact values kept where labelled) and score the selection on the TRUE
matrix:

- f_gain (1 = the exact function's subset, 0 = a random subset), LESS's top-k of the max-over-subtasks
  mean, or FLMI for DELIFT-SE with targets;
- per-row Spearman on unlabelled candidates (each target's ranking of the candidates it has no label for);
- the on-task share of the picks (records of the targets' families), with the exact function's and a
  random subset's;
- the cost: records whose exact features were computed (per-record functions) or labelled pairs.

Run: ``NNCIFT_BENCH_OUT=~/.cache/nncift/bench OMP_NUM_THREADS=2 .venv/bin/python bench/bench_designs.py less-p3-2k --output bench/results/designs_less_p3_2k.md``

Validation rules: ``--rules`` compares the rules of :data:`VALIDATION_RULES` offline on each shipped fit's per-fold criteria
(``--no-rules-oracle``: force only the candidates some rule picks); ``--fits F.json`` keeps those criteria and each candidate's
true f_gain, and ``--rules-from F.json`` prints the rules table again from them without training.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
from bench_network import setup, summary  # bench/ is on sys.path when a script runs
from benchlib import publish, report_head
from matrices import NAMES

CANDIDATES = ("prior + anchors", "network", "network + anchors", "blend", "blend + anchors", "prior + row calibration",
              "network + row calibration", "blend + row calibration")


def _row_spearman_unlabelled(true: np.ndarray, predicted: np.ndarray, seen_rows: np.ndarray, seen_cols: np.ndarray, rows: np.ndarray) -> float:
    from nncift.network.validation import row_spearman

    unlabelled = np.setdiff1d(np.arange(true.shape[1]), seen_cols)
    return row_spearman(true[np.ix_(rows, unlabelled)], predicted[np.ix_(rows, unlabelled)])


def _cost(seen_rows: np.ndarray, seen_cols: np.ndarray, n_pool_rows: int) -> int:
    """Distinct records with exact features (per-record functions): a pool row and its column are one record."""
    return len(set(seen_rows[seen_rows < n_pool_rows].tolist()) | set(seen_cols.tolist())) + int((seen_rows >= n_pool_rows).sum())


DIFF_RULES = {
    "every fold, mean > SE (shipped)": lambda diff: bool(np.all(diff > 1e-9) and diff.mean() > diff.std(ddof=1) / np.sqrt(diff.size)),
    "every fold, mean > 2 SE": lambda diff: bool(np.all(diff > 1e-9) and diff.mean() > 2 * diff.std(ddof=1) / np.sqrt(diff.size)),
    "no fold worse, mean > SE": lambda diff: bool(np.all(diff > -1e-9) and diff.mean() > diff.std(ddof=1) / np.sqrt(diff.size)),
    "mean > SE": lambda diff: bool(diff.mean() > diff.std(ddof=1) / np.sqrt(diff.size)),
    "mean > corrected SE (Nadeau–Bengio, 4 folds)": lambda diff: bool(diff.mean() > diff.std(ddof=1) * np.sqrt(1 / diff.size + 1 / 3)),
    "mean > 0": lambda diff: bool(diff.mean() > 1e-9),
    "≥ 3 of 4 folds, mean > 0": lambda diff: bool((diff > 1e-9).mean() >= 0.75 and diff.mean() > 1e-9),
}
"""Validation rules on a candidate's per-fold differences to the prior: a candidate may replace the prior when the rule holds; of
those, the best mean criterion is shipped (as :func:`choose_candidate`)."""


def apply_rule(rule, fold_criteria: dict[str, list[float]]) -> str:
    """The candidate a validation rule would ship, from a fit's per-fold criteria (``prior`` when none passes)."""
    if "prior" not in fold_criteria:
        return "prior"
    base = np.asarray(fold_criteria["prior"], dtype=np.float64)
    best, best_value = "prior", -np.inf
    for name, values in fold_criteria.items():
        values = np.asarray(values, dtype=np.float64)
        diff = values - base
        if name == "prior" or diff.size < 3 or not np.all(np.isfinite(diff)) or not rule(diff):
            continue
        if values.mean() > best_value:
            best, best_value = name, float(values.mean())
    return best


def nested_gains(rule, fold_criteria: dict[str, list[float]]) -> np.ndarray:
    """Per fold i, what the whole choice gains over the prior on fold i when it is made on the other folds: the candidate
    ``rule`` picks there, scored on fold i, minus the prior's score on fold i (0 where it picks the prior). Nested
    cross-validation of the choice itself: a candidate that wins on every fold only because it is the luckiest of the nine
    tried gains nothing here."""
    n = len(fold_criteria.get("prior", []))
    gains = np.zeros(n)
    for i in range(n):
        others = {name: [v for j, v in enumerate(values) if j != i] for name, values in fold_criteria.items()}
        chosen = apply_rule(rule, others)
        gains[i] = fold_criteria[chosen][i] - fold_criteria["prior"][i]
    return gains


def nested_rule(rule, confirm):
    """The candidate ``rule`` picks on every fold, shipped only when the choice made out of fold gains over the prior by
    ``confirm`` (its per-fold :func:`nested_gains`)."""
    def choose(fold_criteria: dict[str, list[float]]) -> str:
        chosen = apply_rule(rule, fold_criteria)
        return chosen if chosen == "prior" or confirm(nested_gains(rule, fold_criteria)) else "prior"
    return choose


CONFIRM_RULE = "nested: every fold, mean > SE, its out-of-fold choice loses on no fold (--network.confirm)"
"""The rule that ``--network.confirm`` applies (:func:`library_confirm`)."""

VALIDATION_RULES = {name: functools.partial(apply_rule, rule) for name, rule in DIFF_RULES.items()} | {
    "nested: every fold, mean > SE, its out-of-fold choice gains on average": nested_rule(DIFF_RULES["every fold, mean > SE (shipped)"],
                                                                                        lambda gains: bool(gains.mean() > 1e-9)),
    CONFIRM_RULE: nested_rule(
        DIFF_RULES["every fold, mean > SE (shipped)"], lambda gains: bool(gains.mean() > 1e-9 and np.all(gains > -1e-9))),
    "nested: mean > SE, its out-of-fold choice gains on average": nested_rule(DIFF_RULES["mean > SE"], lambda gains: bool(gains.mean() > 1e-9)),
}
"""Validation rules compared offline on the shipped fit's per-fold criteria: each maps a fit's per-fold criteria (per candidate) to
the candidate it ships."""


def library_confirm(fold_criteria: dict[str, list[float]]) -> str:
    """What ``nncift select --network.confirm`` ships from a fit's per-fold criteria (the library's own functions, one draw of folds)."""
    from nncift.network.fitting import CANDIDATE_ORDER
    from nncift.network.validation import choose_candidate, confirmation_gains, confirmed

    order = [name for name in CANDIDATE_ORDER if name in fold_criteria]
    chosen = choose_candidate({name: [{"criterion": v} for v in values] for name, values in fold_criteria.items()}, order, True, "network")
    usable = ~np.eye(len(fold_criteria["prior"]), dtype=bool)
    return chosen if chosen == "prior" or confirmed(confirmation_gains(fold_criteria, order, usable)) else "prior"


def _with_rule_picks(variants: list[tuple[str, str | None]], fold_criteria: dict[str, dict[str, list[float]]], loss: str, rules: bool):
    """The fits to run for one loss: ``variants`` in order, then (``rules``) every candidate a validation rule picks from the shipped
    fit's per-fold criteria (known once the first variant, the shipped fit, has run) that is not forced already."""
    yield from variants  # lazily: the shipped fit (first) fills ``fold_criteria`` before the rules below read it
    if rules and loss in fold_criteria:
        done = {forced for _, forced in variants}
        for name in dict.fromkeys(["prior", *(rule(fold_criteria[loss]) for rule in VALIDATION_RULES.values())]):
            if name not in done:  # the prior too: where task calibration applies, the shipped prior is not the plain cosine
                yield name, name


def _rule_choices(rule, fits: list[dict], repeats: int, used: int) -> list[str]:
    """What ``rule`` ships for each fit, on the criteria of its first ``used`` repeats of the folds."""
    chosen = []
    for f in fits:
        per_repeat = len(f["fold_criteria"].get("prior", [])) // repeats
        chosen.append(rule({name: values[: per_repeat * used] for name, values in f["fold_criteria"].items()}))
    return chosen


def _below_prior(fits: list[dict], chosen: list[str]) -> str:
    """How many fits' choices select worse than the prior as shipped (true f_gain), and the worst difference."""
    differences = [f["gains"].get(c, float("nan")) - f["gains"]["prior"] for f, c in zip(fits, chosen)]
    below = [d for d in differences if d < -1e-9]
    return f"{len(below)} of {len(fits)} ({min(below):+.3f})" if below else f"0 of {len(fits)}"


def rules_table(fits: list[dict], repeats: int) -> list[str]:
    """Per validation rule, on the first repeat's folds and (with ``repeats`` > 1) on every repeat's: what it ships per (u, design,
    seed), and the true f_gain that follows (the forced candidate's), beside the cosine's and the best candidate's."""
    header = ("| rule | folds | u | design | shipped (per seed) | learned shipped | f_gain | f_gain prior (as shipped) | seeds below the prior (worst) | "
              "f_gain best candidate (oracle) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    views = [("first repeat", 1)] + ([(f"{repeats} repeats", repeats)] if repeats > 1 else [])
    for (rule_name, rule), (view, used) in ((r, v) for r in VALIDATION_RULES.items() for v in views):
        for key in dict.fromkeys((f["fraction"], f["design"]) for f in fits):
            group = [f for f in fits if (f["fraction"], f["design"]) == key]
            chosen = _rule_choices(rule, group, repeats, used)
            gains = [f["gains"].get(c, float("nan")) for f, c in zip(group, chosen)]
            learned = sum(not c.startswith("prior") for c in chosen)
            lines.append(f"| {rule_name} | {view} | {key[0]} | {key[1]} | {' / '.join(chosen)} | {learned} of {len(chosen)} | {summary(gains)} | "
                         f"{summary([f['gains']['prior'] for f in group])} | {_below_prior(group, chosen)} | "
                         f"{summary([max(f['gains'].values()) for f in group]) if all(np.isfinite(v) for f in group for v in f['gains'].values()) else '–'} |")
    return lines


def pooled_rules_table(saved: list[dict]) -> list[str]:
    """Every validation rule over the fits of several matrices (``--fits`` files, first repeat): per matrix, the mean f_gain
    of what it ships minus the prior's, and the fits it ships below the prior; then all matrices' fits together."""
    names = [s["matrix"] for s in saved]
    header = ("| rule | " + " | ".join(f"{name}: f_gain − prior, below the prior" for name in names)
              + " | all fits: f_gain − prior | all fits: below the prior (worst) |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for rule_name, rule in VALIDATION_RULES.items():
        cells, every_fit, every_choice = [], [], []
        for s in saved:
            chosen = _rule_choices(rule, s["fits"], 1, 1)
            gain = np.mean([f["gains"].get(c, float("nan")) - f["gains"]["prior"] for f, c in zip(s["fits"], chosen)])
            cells.append(f"{gain:+.3f}, {_below_prior(s['fits'], chosen)}")
            every_fit += s["fits"]
            every_choice += chosen
        total = np.mean([f["gains"].get(c, float("nan")) - f["gains"]["prior"] for f, c in zip(every_fit, every_choice)])
        lines.append(f"| {rule_name} | {' | '.join(cells)} | {total:+.3f} | {_below_prior(every_fit, every_choice)} |")
    return lines


def rectangle_layout(spec, objective_name: str, sampling, factor: float, rng: np.random.Generator):
    """A one-block layout of the same pairs as ``sampling``'s u × u block, in a different shape: ``factor``·u of the target rows ×
    u/``factor`` of the candidates (stratified by task as `nncift select` samples targets; no minimum sample per side). Between a block (1) and all-targets (1/u)."""
    from nncift.run.layout import Layout, sample_indices, stratified_indices

    if not spec.targets or objective_name in ("flmi", "flcg"):
        raise SystemExit("rect:F needs a matrix whose rows are separate targets only")
    rows_fraction, cols_fraction = min(1.0, sampling.fraction * factor), min(1.0, sampling.fraction / factor)
    seen_cols = sample_indices(len(spec.pool), cols_fraction, 2, rng)  # no minimum sample per side: the same pairs as the block
    tasks = [t.task for t in spec.targets]
    seen_targets = (stratified_indices(tasks, rows_fraction, 2, rng) if sampling.stratify and len(set(tasks)) > 1
                    else sample_indices(len(spec.targets), rows_fraction, 2, rng))
    return Layout(list(spec.targets), seen_targets, seen_cols, 0)


def _plain_columns(group: list[dict]) -> str:
    """The task-floor columns of one designs-table row: f_gain and on-task share of the plain maximum's picks on the same
    predicted matrices, and how many picks the floor changed, per seed."""
    per_seed = " / ".join(f"{r['plain_f_gain']:.3f}" for r in group)
    return (f" {summary([r['floored_f_gain'] for r in group])} | {summary([r['plain_f_gain'] for r in group])} ({per_seed}) | {summary([r['plain_on_task'] for r in group])} | "
            f"{' / '.join(str(r['floor_changed']) for r in group)} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("matrix", choices=NAMES)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--designs", nargs="+", default=["block", "all-targets"],
                        help="block, block:G (the same pairs in G blocks), all-targets, rect:F (separate target rows only: F·u of the targets × u/F of "
                             "the candidates, the same pairs as one block; F = 1/u is all-targets)")
    parser.add_argument("--labels", type=int, nargs="*", default=[],
                        help="label budgets in the function's own units (pairs for DELIFT, records otherwise) instead of --fractions")
    parser.add_argument("--losses", nargs="+", default=["mse", "row-centred"])
    parser.add_argument("--budget", type=float, default=None, help="subset share (default: LESS 0.05, with targets 0.1, else 0.3)")
    parser.add_argument("--forced", nargs="*", default=[], choices=CANDIDATES,
                        help="also ship these candidates whatever validation says (what each would lose)")
    parser.add_argument("--rules", action="store_true",
                        help="force every candidate too, and compare validation rules offline on the shipped fit's per-fold criteria")
    parser.add_argument("--rules-oracle", action=argparse.BooleanOptionalAction, default=True,
                        help="with --rules, force every candidate (the oracle column); --no-rules-oracle forces only the candidates a rule picks")
    parser.add_argument("--held-out", choices=("auto", "records", "columns"), default="auto",
                        help="what validation holds out: auto = as `nncift select` (columns only when every row is labelled)")
    parser.add_argument("--repeats", type=int, default=1, help="repeated cross-validation: record folds drawn this many times")
    parser.add_argument("--criterion-without-exact", action="store_true",
                        help="ablation: score held-out candidates alone, without the fold's exact training candidates beside them")
    parser.add_argument("--inputs", nargs="+", default=["all-MiniLM-L6-v2"],
                        help="network inputs, EMBEDDER[/INPUT[@W]]: an embedder (the bundled all-MiniLM-L6-v2, lm:smollm2-135m-instruct for "
                             "the LM's own mean-pooled states, any id) and what it reads of a record (text when omitted, text+response, or "
                             "auto, nncift's default); W: text+response's response weight (default: nncift's, 0.2)")
    parser.add_argument("--stratify", action=argparse.BooleanOptionalAction, default=True,
                        help="sample the targets within each task (nncift's default since 2026-12-03)")
    parser.add_argument("--task-calibration", choices=("auto", "on", "off"), default="auto",
                        help="network.task_calibration (auto: nncift's default since 2026-12-03: on for LESS's top-k)")
    parser.add_argument("--fits", type=Path, default=None,
                        help="write every shipped fit's per-fold criteria and each candidate's true f_gain here (JSON), for rules compared later")
    parser.add_argument("--rules-from", type=Path, nargs="+", default=[],
                        help="print the rules table of --fits files and stop (no training; files of one matrix are read together, and the matrix "
                             "argument is checked against it); files of several matrices: each one's table, then every rule over all of them")
    parser.add_argument("--task-share", type=float, default=None,
                        help="LESS top-k: selection.task_share of the predicted subsets (default: nncift select's); f_gain compares with the plain maximum's exact subset")
    parser.add_argument("--shrink", type=float, nargs="*", default=[],
                        help="also select with the calibrated cosine shrunk towards the labels' mean by these weights (0 = the mean predictor, 1 = the cosine)")
    parser.add_argument("--block-folds", action="store_true",
                        help="validate on folds of whole blocks where the labels lie in several (FitSettings.block_folds; off in nncift select)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.rules_from:
        matrices: dict[str, dict] = {}  # the files' fits by matrix (runs of one matrix split over seeds are read together)
        for path in args.rules_from:
            saved = json.loads(path.read_text())
            matrices.setdefault(saved["matrix"], {"matrix": saved["matrix"], "fits": []})["fits"] += saved["fits"]
        if len(matrices) == 1 and args.matrix not in matrices:
            parser.error(f"{args.rules_from[0]} holds fits of {next(iter(matrices))}, not {args.matrix}")
        for name, saved in matrices.items():
            print("\n".join([*([f"### {name}", ""] if len(matrices) > 1 else []), *rules_table(saved["fits"], args.repeats), ""]))
        if len(matrices) > 1:
            print("\n".join(["### Every rule over all the matrices", "", *pooled_rules_table(list(matrices.values()))]))
        every_fit = [f for saved in matrices.values() for f in saved["fits"]]
        same = sum(library_confirm(f["fold_criteria"]) == VALIDATION_RULES[CONFIRM_RULE](f["fold_criteria"]) for f in every_fit)
        print(f"\n`--network.confirm` (the library's code) ships what the rule '{CONFIRM_RULE}' ships on {same} of {len(every_fit)} fits.")
        return 0
    if args.rules and args.rules_oracle:
        args.forced = list(CANDIDATES)

    from nncift.influence import influence_class, network_reading
    from nncift.influence.less import aggregate_scores
    from nncift.models.embeddings import embed_records
    from nncift.network.fitting import FitSettings, fit_pairwise
    from nncift.network.folds import validation_hold_out
    from nncift.network.paper import predict_pairwise
    from nncift.run.layout import block_self_columns, plan_layout, resolve_sampling
    from nncift.selection.subset_quality import choose_subset, f_gain
    from nncift.settings.choices import DEFAULT_RESPONSE_WEIGHT, NETWORK_INPUTS
    from nncift.settings.stages import NetworkSettings, SamplingSettings
    from nncift.steps.aggregation import network_task_rows
    from nncift_research.fidelity import calibrated_cosine

    started = time.perf_counter()
    bench = setup(args.matrix, args.budget, args.task_share)
    matrix, spec, budget, objective_name, objective, true, rows = (bench.matrix, bench.spec, bench.budget, bench.objective_name,
                                                                   bench.objective, bench.true, bench.rows)
    n_pool_rows, self_cols, family, on_task_families, true_subset = bench.n_pool_rows, bench.self_cols, bench.family, bench.on_task_families, bench.true_subset
    on_task = bench.on_task
    floored = bool(getattr(objective, "task_scores", None)) and objective.task_share > 0
    plain = dataclasses.replace(objective, task_share=0.0)
    floored_exact = choose_subset(true, objective).indices if floored else None  # the exact function's subset with the floor
    target_rows = np.arange(n_pool_rows, len(rows))
    function_class = influence_class(spec.influence)
    inputs = {}
    for entry in args.inputs:
        embedder, _, reading = entry.rpartition("/")
        network_input, _, weight = reading.partition("@")
        if network_input not in NETWORK_INPUTS:  # an embedder id or path with a slash, no input named
            embedder, network_input, weight = entry, "text", ""
        network_input = network_reading(spec.influence, NetworkSettings(input=network_input))["network_input"]
        response_weight = float(weight) if weight else DEFAULT_RESPONSE_WEIGHT
        embed = functools.partial(embed_records, model=embedder, progress=True, network_input=network_input, response_weight=response_weight)
        label = f"{embedder} / {network_input}" + (f" (w {response_weight:g})" if network_input == "text+response" else "")
        inputs[label] = (embed(rows), embed(spec.pool), (network_input, response_weight))
    tasks = [r.task for r in rows]

    def aggregate(block: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return aggregate_scores(block, [tasks[int(seen_rows[i])] for i in idx])

    results, fits = [], []
    budgets = [("labels", n) for n in args.labels] or [("fraction", f) for f in args.fractions]
    for (input_name, (row_embeddings, col_embeddings, (network_input, response_weight))), (kind, amount), design_name, seed in (
            (i, b, d, s) for i in inputs.items() for b in budgets for d in args.designs for s in args.seeds):
        design, _, groups = design_name.partition(":")
        fraction = amount if kind == "fraction" else f"N={amount}"
        sampling = resolve_sampling(SamplingSettings(design="block" if design == "rect" else design, blocks=1 if design == "rect" else int(groups or 1),
                                                     stratify=args.stratify, **{kind: amount}), function_class, len(spec.pool), len(spec.targets), len(rows))
        layout = (rectangle_layout(spec, objective_name, sampling, float(groups), np.random.default_rng(seed)) if design == "rect"
                  else plan_layout(spec.pool, spec.targets, objective_name, sampling, np.random.default_rng(seed)))
        seen_rows, seen_cols = layout.seen_rows, layout.seen_cols
        labels = np.where(layout.labelled(), true[np.ix_(seen_rows, seen_cols)], np.nan)
        cost = int(layout.labelled().sum()) if function_class.cost_per == "pair" else _cost(seen_rows, seen_cols, n_pool_rows)
        held_out = args.held_out if args.held_out != "auto" else validation_hold_out(len(seen_rows), len(rows), objective_name)
        block_self = block_self_columns(self_cols, seen_rows, seen_cols)
        predictions: dict[str, tuple[np.ndarray, str, float]] = {}
        fold_criteria: dict[str, dict[str, list[float]]] = {}
        for loss in args.losses:
            variants = [("shipped", None)] + [(c, c) for c in args.forced]
            for label, forced in _with_rule_picks(variants, fold_criteria, loss, args.rules):
                if forced and forced.startswith("prior") and loss != args.losses[0]:
                    continue  # the prior does not train: one loss is enough
                net_settings = NetworkSettings(loss=loss, fallback=forced is None, seed=seed, input=network_input, response_weight=response_weight,
                                               task_calibration=args.task_calibration)
                fit = FitSettings(net_settings, validation_repeats=args.repeats, criterion_shows_exact=not args.criterion_without_exact,
                                  block_folds=args.block_folds)
                if forced:
                    fit = dataclasses.replace(fit, force=forced)
                tick = time.perf_counter()
                network, report = fit_pairwise(row_embeddings[seen_rows], col_embeddings[seen_cols], labels, fit, self_cols=block_self,
                                               objective="topk" if objective_name == "topk" else "fl",
                                               candidate_scores=aggregate if spec.influence == "less" else None, held_out=held_out,
                                               tasks=network_task_rows(args.task_calibration, function_class, layout, objective_name, row_embeddings))
                seconds = time.perf_counter() - tick
                predicted = predict_pairwise(network, row_embeddings, col_embeddings, self_cols=self_cols).astype(np.float64)
                name = f"{label} ({loss})" if not (forced or "").startswith("prior") else label
                predictions[name] = (predicted, report.chosen, seconds)
                if forced is None:
                    fold_criteria[loss] = report.fold_criteria
        predictions["cosine"] = (calibrated_cosine(row_embeddings, col_embeddings, seen_rows, seen_cols, labels, self_cols), "-", 0.0)
        predictions["mean"] = (np.full(true.shape, float(np.nanmean(labels))), "-", 0.0)
        for weight in args.shrink:  # mean + w · (cosine − mean): how much of the cosine's spread selection should trust
            predictions[f"cosine, shrunk {weight:g}"] = (float(np.nanmean(labels)) + weight * (predictions["cosine"][0] - float(np.nanmean(labels))), "-", 0.0)
        for name, (predicted, chosen, seconds) in predictions.items():
            block = np.ix_(seen_rows, seen_cols)
            predicted[block] = np.where(np.isfinite(labels), labels, predicted[block])
            picks = choose_subset(predicted, objective).indices
            quality = f_gain(true, predicted, objective, seed=seed, true_subset=true_subset)
            without = {}
            if floored:  # the same predicted matrix selected by the plain maximum: the floor's own effect
                plain_picks = choose_subset(predicted, plain).indices
                without = {"plain_f_gain": f_gain(true, predicted, plain, seed=seed, true_subset=true_subset)["f_gain"],
                           "plain_on_task": on_task(plain_picks), "floor_changed": len(np.setdiff1d(picks, plain_picks)),
                           "floored_f_gain": f_gain(true, predicted, objective, seed=seed, true_subset=floored_exact)["f_gain"]}
            results.append({**without, "input": input_name, "fraction": fraction, "design": design_name, "seed": seed, "predictor": name, "chosen": chosen,
                            "cost": cost, "labelled": int(np.isfinite(labels).sum()), "f_gain": quality["f_gain"], "on_task": on_task(picks),
                            "row_rho": _row_spearman_unlabelled(true, predicted, seen_rows, seen_cols, target_rows) if name != "mean" else float("nan"),
                            "seconds": seconds})
        gain_of = {r["predictor"]: r["f_gain"] for r in results[-len(predictions):]}
        for loss, criteria in fold_criteria.items():
            gains = {"prior": gain_of.get("prior", gain_of["cosine"]), **{c: gain_of.get(c if c.startswith("prior") else f"{c} ({loss})", float("nan")) for c in CANDIDATES}}
            fits.append({"fraction": fraction, "design": f"{design_name} ({loss})" if len(args.losses) > 1 else design_name, "seed": seed,
                         "fold_criteria": criteria, "gains": gains})
        print(f"{input_name} u={fraction} {design_name} seed={seed}: " + ", ".join(f"{r['predictor']} {r['f_gain']:.3f}" for r in results[-len(predictions):]),
              flush=True)

    header = ("| input | u | design | exact cost | predictor | shipped (per seed) | per-row ρ, unlabelled candidates | f_gain | f_gain per seed | "
              "seeds below the cosine (worst) | on-task share | train s |" + (" f_gain against the exact function with the floor | f_gain, plain maximum | on-task, plain maximum | picks the floor changed |"
                                              if floored else ""))
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    cosine_of = {(r["input"], r["fraction"], r["design"], r["seed"]): r["f_gain"] for r in results if r["predictor"] == "cosine"}
    for input_name, fraction in ((i, f) for i in inputs for f in dict.fromkeys(r["fraction"] for r in results)):
        for design in dict.fromkeys(r["design"] for r in results if r["fraction"] == fraction):
            for name in dict.fromkeys(r["predictor"] for r in results):
                group = [r for r in results if r["input"] == input_name and r["fraction"] == fraction and r["design"] == design and r["predictor"] == name]
                if group:
                    below = [r["f_gain"] - cosine_of[(r["input"], r["fraction"], r["design"], r["seed"])] for r in group]
                    per_seed = [f"{r['f_gain']:.3f}" for r in group]
                    lines.append(f"| {input_name} | {fraction} | {design} | {np.mean([r['cost'] for r in group]):,.0f} | {name} | {' / '.join(r['chosen'] for r in group)} | "
                                 f"{summary([r['row_rho'] for r in group])} | {summary([r['f_gain'] for r in group])} | "
                                 f"{' / '.join(per_seed)} | "
                                 f"{sum(b < -1e-9 for b in below)} of {len(below)} ({min(below):+.3f}) | "
                                 f"{summary([r['on_task'] for r in group])} | {summary([r['seconds'] for r in group])} |"
                                 + (_plain_columns(group) if floored else ""))
    random_share = float(np.isin(family, on_task_families).mean()) if on_task_families else float("nan")
    floor_note = (f"; predicted subsets with task share {objective.task_share:g} (selection.task_share), f_gain against the plain maximum "
                  "(the LESS paper's exact subset) unless a column says otherwise; the exact function's own subset with the floor: f_gain "
                  f"{f_gain(true, true, objective, true_subset=true_subset)['f_gain']:.3f} against it") if floored else ""
    unit = "records with exact features" if function_class.cost_per == "record" else "labelled pairs"
    report = [*report_head(f"Label design × loss × predictor: `{args.matrix}`", "bench/bench_designs.py", started),
              f"Matrix: {true.shape[0]} × {true.shape[1]} {spec.influence} ({len(spec.pool)} pool records of {len(set(spec.pool_families))} families, "
              f"{len(spec.targets)} targets of {on_task_families}), computed in {matrix.seconds:,.0f} s by `bench/matrices.py {args.matrix}`; "
              f"options {spec.options}. Objective {objective_name}, budget {budget} ({len(true_subset)} records)"
              f"{floor_note}. Seeds {args.seeds}, mean ± sd. "
              f"Exact cost in {unit} (the full matrix: {len(rows) + len(spec.pool) - n_pool_rows if function_class.cost_per == 'record' else true.size:,}). "
              f"On-task share: exact function {on_task(true_subset):.3f}, random {random_share:.3f}.", "",
              "`shipped (loss)`: what `nncift select` ships (validation by design, per-row Spearman + f_gain criterion, the prior as the floor); "
              "a candidate's name alone (`--forced`): that candidate shipped whatever validation says.", "", *lines]
    if args.rules:
        report += ["", "## Validation rules compared offline", "",
                   "Each rule applied to the shipped fit's per-fold criteria (the prior's against each candidate's); the f_gain is that of "
                   "the candidate it picks, forced to ship (so the same trained networks). Oracle: the best candidate by true f_gain.", "",
                   *rules_table(fits, args.repeats)]
    if args.fits:
        args.fits.write_text(json.dumps({"matrix": args.matrix, "argv": argv if argv is not None else sys.argv[1:], "fits": fits}, indent=1))
    publish("\n".join(report) + "\n", args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
