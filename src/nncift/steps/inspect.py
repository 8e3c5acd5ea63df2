"""``nncift inspect RUN``: look inside a finished run.

- the run in one paragraph: influence function, objective, sizes, which predictor was shipped;
- the subset's composition by task (or by source file when the data has no task labels);
- the picks with zero gain (chosen after facility location ran out of signal);
- the most valuable pool records on their own (``value`` of ``scores.csv``);
- ``--target I``: the pool records with the highest influence on target I (pool record I when the
  pool represents itself); ``--candidate J``: the targets pool record J serves most. Each value is
  marked ``exact`` (computed by the influence function: the sampled block, or the whole matrix of the
  full-matrix baseline) or ``predicted`` (by the InfluenceNetwork), with the raw value in the
  function's own units beside the scaled one the selection used.

A run that selected on a neighbour graph (``--selection.neighbours``) says so (K, the graph's builder and its recall);
its ``value`` column is on the graph (each row's K neighbours, the rest counting 0), and ``--target`` / ``--candidate``
read one row or one column of its matrix predicted by its network (:meth:`~nncift.run.view.RunView.matrix_block`: the
values a dense run keeps in ``predicted.npy``), never the whole matrix.

Markdown on the terminal (:func:`to_markdown`); ``--json`` for scripts (the command: :mod:`nncift.cli.run_commands`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from nncift.files.errors import InputError
from nncift.run.view import RunView, as_view
from nncift.steps.score import SCORE_BLOCK, block_size


def inspect_run(run: str | Path | RunView, *, target: int | None = None, candidate: int | None = None, top: int = 10) -> dict[str, Any]:
    """Everything ``nncift inspect`` shows, as a JSON-ready dict (see the module docstring); ``run``: its folder, or the run read back."""
    view = as_view(run)
    if top < 1:
        raise InputError(f"--top must be >= 1, got {top}")
    table = view.scores_table()
    picked = [row for row in table if row["picked"] == "1"]
    key = "task" if any(row["task"] for row in picked) else "source_file"
    counts = view.counts
    report: dict[str, Any] = {
        "run": {"folder": str(view.folder), "influence": view.influence, "objective": view.objective,
                "pool": counts.pool, "targets": counts.targets, "selected": counts.selected,
                "shipped": view.shipped_predictor, "positive_gain_picks": view.positive_gain_picks,
                "task_floor_added": view.manifest.get("task_floor_added"),
                "selection_mode": "sparse" if view.sparse else "dense", **({"graph": view.graph} if view.sparse else {})},
        "subset_by": {"key": key, "counts": dict(Counter(row[key] or "(none)" for row in picked).most_common())},
        "zero_gain_picks": [_brief(row) for row in picked if row["gain"] != "" and float(row["gain"]) <= 0.0],
        "most_valuable": [_brief(row) for row in sorted((r for r in table if r["value"] != ""), key=lambda r: -float(r["value"]))[:top]],
    }
    if target is not None or candidate is not None:
        if not view.pairwise:
            raise InputError(f"{view.folder}: a pointwise run ({view.influence}) scores records one by one: "
                             "there are no targets to look up (see most_valuable)")
        lookup = _Lookup(view)
        if target is not None:
            report["target"] = lookup.row(target, top, table)
        if candidate is not None:
            report["candidate"] = lookup.column(candidate, top)
    return report


class _Lookup:
    """Entries of a pairwise run's matrix with their origin (exact or predicted) and raw value."""

    def __init__(self, view: RunView):
        self.view = view
        self.shape = view.matrix_shape
        described = view.rows()
        self.n_pool_rows, self.rows = int(described["n_pool_rows"]), described["rows"]
        self.has_targets = len(self.rows) > self.n_pool_rows
        self.low, self.high = view.label_scaling
        self.full = (view.folder / "full.npy").exists()
        self.q1: np.ndarray | None = None
        if not self.full and (view.folder / "q1.npy").exists():
            self.q1 = np.load(view.folder / "q1.npy", mmap_mode="r")
            self.q_row = {int(r): p for p, r in enumerate(np.load(view.folder / "q1.rows.npy"))}
            self.q_col = {int(c): p for p, c in enumerate(np.load(view.folder / "q1.cols.npy"))}

    def _is_exact(self, r: int, c: int) -> bool:
        """Whether entry (r, c) was computed by the influence function (a labelled pair of the sampled block)."""
        if self.full:
            return True
        if self.q1 is None or r not in self.q_row or c not in self.q_col:
            return False
        return bool(np.isfinite(self.q1[self.q_row[r], self.q_col[c]]))

    def _entry(self, r: int, c: int, value: float) -> dict[str, Any]:
        exact = self._is_exact(r, c)
        return {"value": value, "raw": value * (self.high - self.low) + self.low, "origin": "exact" if exact else "predicted"}

    def row(self, index: int, top: int, table: list[dict[str, str]]) -> dict[str, Any]:
        """The pool records with the highest values for target ``index`` (pool record ``index`` without targets)."""
        n = len(self.rows) - self.n_pool_rows if self.has_targets else len(self.rows)
        if not 0 <= index < n:
            raise InputError(f"--target {index}: the run has {n} {'targets' if self.has_targets else 'pool records as rows'} (0..{n - 1})")
        r = self.n_pool_rows + index if self.has_targets else index
        values = np.asarray(self.view.matrix_block(slice(r, r + 1))[0], dtype=np.float64)
        order = np.argsort(-values, kind="stable")[:top]
        return {"row": r, **self.rows[r], "top_candidates": [{**_brief(table[int(c)]), **self._entry(r, int(c), values[c])} for c in order]}

    def column(self, index: int, top: int) -> dict[str, Any]:
        """The targets (rows) that pool record ``index`` serves most."""
        n_cols = self.shape[1]
        if not 0 <= index < n_cols:
            raise InputError(f"--candidate {index}: the pool has {n_cols} records (0..{n_cols - 1})")
        first = self.n_pool_rows if self.has_targets else 0
        step = block_size(1, SCORE_BLOCK)
        values = np.concatenate([np.zeros(0)] + [self.view.matrix_block(slice(a, min(a + step, len(self.rows))), np.array([index]))[:, 0]
                                                 for a in range(first, len(self.rows), step)]).astype(np.float64)
        order = np.argsort(-values, kind="stable")[:top]
        return {"index": index, "top_targets": [{**self.rows[first + int(r)], "row": first + int(r), **self._entry(first + int(r), index, values[r])}
                                                for r in order]}


def _brief(row: dict[str, str]) -> dict[str, Any]:
    return {"index": int(row["index"]), "source": f"{row['source_file']}:{row['line']}" if row["line"] else row["source_file"],
            "task": row["task"] or None, "value": float(row["value"]) if row["value"] else None,
            "gain": float(row["gain"]) if row["gain"] else None, "picked": row["picked"] == "1", "influence": row["influence"]}


def _graph_lines(graph: dict[str, Any] | None) -> list[str]:
    """A sparse run's paragraph: how it selected, and what its values are."""
    if graph is None:
        return []
    recall = graph.get("graph_recall")
    return [f"Selected on a neighbour graph: {graph['neighbours']} neighbours per row ({graph['graph_builder']} graph"
            + (f", recall@K {recall:.3f}" if recall is not None else "") + "); no predicted matrix is kept. Values below are on the graph "
            "(entries outside a row's neighbours count 0); --target and --candidate predict their row or column with the run's network.", ""]


def to_markdown(report: dict[str, Any]) -> str:
    """The report of :func:`inspect_run` as Markdown."""
    run = report["run"]
    lines = [f"# {run['folder']}", "",
             f"{run['influence']} with {run['objective']}: {run['selected']} of {run['pool']} pool records selected"
             + (f" for {run['targets']} targets" if run["targets"] else "")
             + (f"; predictor shipped: {run['shipped']}" if run["shipped"] else "")
             + (f"; {run['positive_gain_picks']} picks with a positive gain" if run["positive_gain_picks"] is not None else "")
             + (f"; {run['task_floor_added']} picks kept as a target task's own best (top-k's task floor)" if run.get("task_floor_added") else ""), "",
             *_graph_lines(run.get("graph")),
             f"## Subset by {report['subset_by']['key']}", "", "| " + report["subset_by"]["key"] + " | picks |", "|---|---:|"]
    lines += [f"| {name} | {count} |" for name, count in report["subset_by"]["counts"].items()]
    zero = report["zero_gain_picks"]
    lines += ["", f"## Picks with zero gain: {len(zero)}", ""]
    lines += [f"- {row['index']} {row['source']}" for row in zero[:20]] + ([f"- … {len(zero) - 20} more"] if len(zero) > 20 else [])
    lines += ["", "## Most valuable pool records on their own", "", "| index | source | task | value | picked | values |", "|---:|---|---|---:|---|---|"]
    lines += [f"| {r['index']} | {r['source']} | {r['task'] or ''} | {r['value']:.4f} | {'yes' if r['picked'] else ''} | {r['influence']} |"
              for r in report["most_valuable"]]
    if "target" in report:
        t = report["target"]
        lines += ["", f"## Most influential pool records for {t['kind']} {t['index']} ({t['source']})", "",
                  "| index | source | task | scaled | raw | value is | picked |", "|---:|---|---|---:|---:|---|---|"]
        lines += [f"| {c['index']} | {c['source']} | {c['task'] or ''} | {c['value']:.4f} | {c['raw']:.4g} | {c['origin']} | {'yes' if c['picked'] else ''} |"
                  for c in t["top_candidates"]]
    if "candidate" in report:
        c = report["candidate"]
        lines += ["", f"## Targets pool record {c['index']} serves most", "", "| row | kind | index | source | scaled | raw | value is |",
                  "|---:|---|---:|---|---:|---:|---|"]
        lines += [f"| {t['row']} | {t['kind']} | {t['index']} | {t['source']} | {t['value']:.4f} | {t['raw']:.4g} | {t['origin']} |" for t in c["top_targets"]]
    return "\n".join(lines) + "\n"
