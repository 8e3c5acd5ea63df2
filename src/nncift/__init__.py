"""nncift: NN-CIFT data valuation and selection for instruction fine-tuning.

Compute an expensive influence function on a small random fraction of the data, train a tiny
InfluenceNetwork on sentence embeddings to predict the rest, and select the fine-tuning subset.

Typical use::

    from nncift import open_run, read_records, select
    pool, report = read_records("pool.json")
    result = select({"influence": "delift-se", "selection": {"budget": 0.3}}, "runs/x", pool=pool, reports=[report])
    run = open_run("runs/x")        # later: run.subset, run.scores, run.settings, run.score(new, "runs/x-new"), run.add(...), run.inspect()

Influence functions of your own: :func:`nncift.influence.register`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SelectSettings": "settings.stages", "SamplingSettings": "settings.stages", "NetworkSettings": "settings.stages", "SelectionSettings": "settings.stages",
    "ExecutorSettings": "settings.stages",
    "DataError": "data.records", "LoadReport": "data.records", "Record": "data.records", "read_many": "data.records", "read_records": "data.records",
    "demo_records": "data.demo",
    "InfluenceSpec": "influence", "PairwiseInfluence": "influence", "PointwiseInfluence": "influence", "build_influence": "influence",
    "SelectionResult": "steps.select", "ScoreResult": "steps.score", "Run": "steps.run", "open_run": "steps.run", "select": "steps.run",
    "RunNotReady": "run.files", "UserError": "files.errors",
}
"""Public names and the module each lives in: imported on first use, so ``import nncift`` (and the
command line's ``--help``) does not load torch."""

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nncift' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
