"""The u × v sweep's engine (:class:`Sweep`): one influence computation per u, a network and a selection per cell,
each subset evaluated in ICL mode (and fine-tuning when asked); resumable. Settings and the command: :mod:`nncift_research.sweep`."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nncift.data.records import Record, read_many
from nncift.downstream.evaluate import (
    EvaluateSettings,
    EvaluationResult,
    generate_from_prompts,
    score_answers,
)
from nncift.files.errors import InputError
from nncift.influence import influence_class, network_reading
from nncift.run.layout import resolve_sampling
from nncift.run.store import RunStore, plan_blocks
from nncift.selection import budget_to_count
from nncift.selection.subset_quality import choose_subset
from nncift.settings.fields import environment_info, settings_dict
from nncift.steps.select import (
    ADDED_SETTINGS,
    Layout,
    block_self_cols,
    influence_spec,
    label_scaling,
    objective_spec,
    records_digest,
    resolve_objective,
    self_cols_of,
)
from nncift_research.sweep_plan import SweepSettings, cell_name, nested_layouts, sample_size, sub_block


class Sweep:
    """One sweep folder: the influence blocks, networks, subsets, answers and evaluations, each computed once."""

    def __init__(self, settings: SweepSettings, out: str | Path, *, pool: Sequence[Record] | None = None,
                 targets: Sequence[Record] | None = None, heldout: Sequence[Record] | None = None,
                 influence_options: dict[str, Any] | None = None, precomputed: np.ndarray | None = None):
        """``precomputed``: the influence matrix of every pair (rows laid out as :func:`nested_layouts` does), read instead of computed."""
        self.settings = settings
        self.options = dict(influence_options or {})
        self.pool = list(pool) if pool is not None else _read(settings.data, "--data")
        self.targets = list(targets) if targets is not None else (_read(settings.targets, "--targets") if settings.targets else [])
        self.heldout = list(heldout) if heldout is not None else _read(settings.heldout, "--heldout")
        self.heldout = self.heldout[: settings.heldout_limit or None]
        self.function_class = influence_class(settings.influence)
        if not self.function_class.pairwise:
            raise InputError(f"the sweep needs a pairwise influence function (delift, delift-se, less), not {settings.influence}")
        if int(settings.sampling.blocks) > 1:
            raise InputError("--sampling.blocks: the sweep samples one u×u block per u (nested); leave it at 0 or 1")
        self.objective = resolve_objective(settings, self.function_class, bool(self.targets))
        for v in settings.v:
            budget_to_count(v, len(self.pool))
        self.spec = influence_spec(settings, self.options)
        sampling = resolve_sampling(settings.sampling, self.function_class, len(self.pool), len(self.targets), len(self.targets))
        self.all_targets = sampling.design == "all-targets"
        self.precomputed = precomputed
        self.store = RunStore(out, {**settings_dict(settings), "influence_options": self.options,
                                    "precomputed": precomputed is not None}, added=ADDED_SETTINGS)
        self.store.check_records(records_digest(self.pool, self.targets + self.heldout))
        self.folder = self.store.folder
        self.counts = {"computed_now": 0, "answers_generated": 0, "answers_reused": 0}
        self._evaluator: Any = None

    # ------------------------------------------------------------------------------ selection
    def influence_block(self, seed: int, largest: Layout) -> tuple[np.ndarray, int]:
        """The influence values of the largest u's block of ``seed`` and how many entries were computed now."""
        if self.precomputed is not None:
            return np.asarray(self.precomputed, dtype=np.float32)[np.ix_(largest.seen_rows, largest.seen_cols)], 0
        from nncift.execution.executor import executor_for

        matrix = self.store.matrix(f"q1-seed{seed}", largest.seen_rows, largest.seen_cols)
        blocks = plan_blocks(*matrix.shape, self.settings.executor.block_size, self.settings.executor.block_size)
        todo = sum((b.row_stop - b.row_start) * (b.col_stop - b.col_start) for b in matrix.pending(blocks))
        with executor_for(self.settings.executor) as executor:
            executor.run_pairwise(self.spec, largest.rows, self.pool, matrix, blocks, self.folder, progress=not self.settings.quiet)
        return np.asarray(matrix.array, dtype=np.float32), todo

    def select_seed(self, seed: int) -> dict[str, Any]:
        """Every (u, v) subset of one seed (stored in ``subsets/``); the block's and each network's record."""
        s = self.settings
        layouts = nested_layouts(self.pool, self.targets, self.objective, s.u, s.sampling.min_sampled, seed, all_targets=self.all_targets,
                                 stratify=s.sampling.stratify)
        largest = layouts[max(s.u)]
        names = {(u, v): cell_name(u, v, seed) for u in s.u for v in s.v}
        info: dict[str, Any] = {"block": [len(largest.seen_rows), len(largest.seen_cols)], "computed_now": 0, "networks": {}}
        if all(self.store.path(f"subsets/{name}.json").is_file() for name in names.values()):
            return info
        values, info["computed_now"] = self.influence_block(seed, largest)
        self.counts["computed_now"] += info["computed_now"]
        col_embeddings, row_embeddings = self._embeddings(largest)
        for u in s.u:
            if all(self.store.path(f"subsets/{names[u, v]}.json").is_file() for v in s.v):
                continue
            layout = layouts[u]
            known = sub_block(values, largest, layout)
            low, high = label_scaling(self.function_class, known)
            labels = ((known - low) / (high - low)).astype(np.float32)
            predicted, report = self._predict(seed, u, layout, labels, row_embeddings, col_embeddings)
            info["networks"][f"u{u:g}"] = {k: report.get(k) for k in ("architecture", "chosen", "n_labelled", "seconds")}
            for v in s.v:
                selection = dataclasses.replace(s.selection, budget=v)
                chosen = choose_subset(predicted, objective_spec(self.objective, layout, selection, self.function_class, self.spec))
                _write_json(self.store.path(f"subsets/{names[u, v]}.json"), {
                    "u": u, "v": v, "seed": seed, "indices": [int(i) for i in chosen.indices], "objective": float(chosen.objective),
                    "labelled_block": [len(layout.seen_rows), len(layout.seen_cols)], "label_scaling": [low, high]})
        return info

    def _embeddings(self, layout: Layout) -> tuple[np.ndarray, np.ndarray]:
        from nncift.models.embeddings import embed_records

        kwargs: dict[str, Any] = {"model": self.settings.embedder, "device": self.settings.device, "progress": False,
                                  **network_reading(self.settings.influence, self.settings.network)}
        cols = embed_records(self.pool, **kwargs)
        extra = layout.rows[layout.n_pool_rows:]
        rows = np.concatenate([cols[: layout.n_pool_rows], embed_records(extra, **kwargs)]) if extra else cols[: layout.n_pool_rows]
        return cols, rows

    def _predict(self, seed: int, u: float, layout: Layout, labels: np.ndarray, row_embeddings: np.ndarray,
                 col_embeddings: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Train (or reload) the network of (seed, u) and predict the whole matrix, exact labels kept on u's block."""
        from nncift.network.files import load_network, load_network_metadata, save_network
        from nncift.network.paper import predict_pairwise
        from nncift.network.training import train_network
        from nncift.steps.aggregation import network_task_rows, network_validation

        path = self.store.path(f"networks/seed{seed}-u{u:g}.safetensors")
        net_settings = self.settings.updated(seed=seed).network
        if path.is_file():
            network, report = load_network(path), load_network_metadata(path).get("report", {})
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            network, report = train_network(row_embeddings[layout.seen_rows], col_embeddings[layout.seen_cols], labels, net_settings,
                                            self_cols=block_self_cols(layout),  # validated as `nncift select` validates it
                                            **network_validation(self.function_class, self.spec, layout, self.objective),
                                            tasks=network_task_rows(net_settings.task_calibration, self.function_class, layout, self.objective,
                                                                    row_embeddings))
            save_network(network, path, {"settings": dataclasses.asdict(net_settings), "report": report})
        predicted = predict_pairwise(network, row_embeddings, col_embeddings,  # type: ignore[arg-type]  # a pairwise network here
                                     self_cols=self_cols_of(layout)).astype(np.float32)
        block = np.ix_(layout.seen_rows, layout.seen_cols)
        predicted[block] = np.where(np.isfinite(labels), labels, predicted[block])
        return predicted, report

    def subsets(self) -> list[dict[str, Any]]:
        """Every subset to evaluate: the grid's (from ``subsets/``), then the references."""
        s = self.settings
        rows = [{"name": cell_name(u, v, seed), "kind": "nncift", "u": u, "v": v, "seed": seed,
                 "indices": self.store.read_json(f"subsets/{cell_name(u, v, seed)}.json")["indices"]}
                for seed in s.seeds for u in s.u for v in s.v]
        if s.references:
            for seed in s.seeds:
                rng = np.random.default_rng([seed, 1])
                for v in s.v:
                    count = budget_to_count(v, len(self.pool))
                    rows.append({"name": cell_name(None, v, seed), "kind": "random", "u": None, "v": v, "seed": seed,
                                 "indices": np.sort(rng.choice(len(self.pool), count, replace=False)).tolist()})
            rows.append({"name": "full", "kind": "full", "u": None, "v": 1.0, "seed": None, "indices": list(range(len(self.pool)))})
        return rows

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self, subset: dict[str, Any], mode: str) -> dict[str, Any]:
        """The metrics of one subset in ``mode`` (icl or finetune), computed once (``evaluations/``)."""
        name = f"evaluations/{subset['name']}-{mode}.json"
        if self.store.path(name).is_file():
            return self.store.read_json(name)["metrics"]
        records = [self.pool[int(i)] for i in subset["indices"]]
        result = self._icl(subset["indices"]) if mode == "icl" else self._finetuned(records, subset)
        result.metrics["n_subset"] = len(records)
        if self.targets:
            families = {record.task for record in self.targets}
            result.metrics["target_share"] = float(np.mean([record.task in families for record in records]))
        _write_json(self.store.path(name), result.as_dict())
        return result.metrics

    def evaluate_settings(self) -> EvaluateSettings:
        """The evaluation settings the sweep's own settings imply (no loss: the ICL prompts are long)."""
        s = self.settings
        return EvaluateSettings(model=s.model, max_new_tokens=s.max_new_tokens, batch_size=s.eval_batch_size, embedder=s.embedder,
                                device=s.device, quiet=s.quiet, with_loss=False, k=s.k, icl_max_length=s.icl_max_length)

    def _icl(self, indices: Sequence[int]) -> EvaluationResult:
        from nncift.downstream.icl import icl_prompts, nearest_examples, query_vectors

        settings = self.evaluate_settings()
        if self._evaluator is None:
            from nncift.downstream.evaluate import load_model_for_evaluation

            model, tokenizer = load_model_for_evaluation(settings)
            self._evaluator = (model, tokenizer, query_vectors(self.pool, settings), query_vectors(self.heldout, settings),
                               _read_answers(self.store.path("answers.jsonl")))
        model, tokenizer, pool_vectors, heldout_vectors, answers = self._evaluator
        start = time.perf_counter()
        chosen = np.asarray(indices, dtype=np.int64)
        neighbours = chosen[nearest_examples(heldout_vectors, pool_vectors[chosen], settings.k)]
        prompts, kept = icl_prompts(tokenizer, self.heldout, self.pool, neighbours, settings)
        keys = [f"{q}:" + ",".join(str(int(i)) for i in row[:used]) for q, (row, used) in enumerate(zip(neighbours, kept))]
        missing = sorted({key: q for q, key in enumerate(keys) if key not in answers}.items(), key=lambda item: item[1])
        self.counts["answers_reused"] += len(keys) - len(missing)
        if missing:
            generated = generate_from_prompts(model, tokenizer, [prompts[q] for _, q in missing], settings)
            with open(self.store.path("answers.jsonl"), "a", encoding="utf-8") as handle:
                for (key, _), answer in zip(missing, generated):
                    answers[key] = answer
                    handle.write(json.dumps({"key": key, "answer": answer}, ensure_ascii=False) + "\n")
            self.counts["answers_generated"] += len(missing)
        result = score_answers(self.heldout, [answers[key] for key in keys], None, None, settings, start)
        for row, chosen, used in zip(result.examples, neighbours, kept):
            row["icl_examples"] = [int(i) for i in chosen[:used]]
        result.metrics.update(mode="icl", k=settings.k)
        return result

    def _finetuned(self, records: list[Record], subset: dict[str, Any]) -> EvaluationResult:
        from nncift.downstream.evaluation import run_evaluate
        from nncift.downstream.finetune import FinetuneSettings, finetune

        s = self.settings
        adapter = self.store.path(f"adapters/{subset['name']}")
        if not (adapter / "finetune.json").is_file():
            finetune(records, FinetuneSettings(model=s.model, seed=subset["seed"] or 0, device=s.device, quiet=s.quiet), adapter)
        result = run_evaluate(dataclasses.replace(self.evaluate_settings(), adapter=str(adapter)), self.heldout)
        result.metrics = {k: v for k, v in result.metrics.items() if k not in ("settings", "environment")}
        result.metrics["mode"] = "finetune"
        return result

    # ------------------------------------------------------------------------------ whole run
    def run(self) -> dict[str, Any]:
        """Select every cell, evaluate every subset, write ``manifest.json``, ``results.json``, ``results.md`` and ``grid.png``."""
        from nncift_research.sweep_report import write_sweep_report

        start = time.perf_counter()
        s = self.settings
        seeds = {str(seed): self.select_seed(seed) for seed in s.seeds}
        modes = ["icl"] + (["finetune"] if s.finetune else [])
        rows = []
        for subset in self.subsets():
            for mode in modes:
                if not s.quiet:
                    print(f"[sweep] {mode}: {subset['name']} ({len(subset['indices'])} records)", flush=True)
                rows.append({k: subset[k] for k in ("name", "kind", "u", "v", "seed")} | {"mode": mode, "metrics": self.evaluate(subset, mode)})
        largest = max(s.u)
        block_entries = {seed: math.prod(info["block"]) for seed, info in seeds.items()}
        per_u = sum(math.prod(_block_shape(self.pool, self.targets, self.objective, u, s.sampling.min_sampled, self.all_targets)) for u in s.u) * len(s.seeds)
        manifest = {
            "settings": settings_dict(s), "influence_options": self.options, "objective": self.objective, "environment": environment_info(),
            "counts": {"pool": len(self.pool), "targets": len(self.targets), "heldout": len(self.heldout), "subsets": len(rows)},
            "influence": {
                "source": "precomputed matrix (read, not computed)" if self.precomputed is not None else "computed in this folder",
                "largest_u": largest, "block_per_seed": {seed: info["block"] for seed, info in seeds.items()},
                "evaluations_in_blocks": sum(block_entries.values()),
                "evaluations_made_by_this_invocation": self.counts["computed_now"],
                "independent_runs_per_u_would_make": per_u,
                "independent_runs_per_cell_would_make": per_u * len(s.v),
            },
            "networks": {seed: info["networks"] for seed, info in seeds.items() if info["networks"]},
            "icl_answers": {"generated_by_this_invocation": self.counts["answers_generated"], "reused": self.counts["answers_reused"]},
            "seconds_this_invocation": round(time.perf_counter() - start, 1),
        }
        self.store.write_json("manifest.json", manifest)
        results = {"settings": settings_dict(s), "manifest": manifest, "rows": rows}
        self.store.write_json("results.json", results)
        write_sweep_report(results, self.folder)
        return results

    def close(self) -> None:
        """Release the folder's lock."""
        self.store.close()


def _block_shape(pool: Sequence[Record], targets: Sequence[Record], objective: str, u: float, minimum: int,
                 all_targets: bool = False) -> tuple[int, int]:
    cols = sample_size(len(pool), u, minimum)
    picked = (len(targets) if all_targets else sample_size(len(targets), u, minimum)) if targets else 0
    rows = cols if not targets else cols + picked if objective in ("flmi", "flcg") else picked
    return rows, cols


def _read(paths: Sequence[str], flag: str) -> list[Record]:
    if not paths:
        raise InputError(f"{flag}: no file given")
    records, _ = read_many(paths)
    return records


def _write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (parent folders created)."""
    from nncift.files.atomic import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, payload)


def _read_answers(path: Path) -> dict[str, str]:
    """Stored ICL answers by key; a line torn by a kill is ignored (its answer is generated again)."""
    answers: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                answers[str(row["key"])] = str(row["answer"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return answers
