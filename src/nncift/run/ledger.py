"""The cost ledger: wall time per stage and the influence evaluations actually made."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ContextManager

from nncift.files.timing import timed


@dataclass
class CostLedger:
    """Seconds per stage, counters (forward passes, tokens, ...) and evaluations made vs needed."""

    stages: dict[str, float] = field(default_factory=dict)
    counters: Counter = field(default_factory=Counter)
    evaluations_made: int = 0
    evaluations_full: int = 0

    def stage(self, name: str) -> ContextManager[None]:
        """Time a stage (times add up if a stage runs more than once)."""
        return timed(lambda seconds: self.stages.update({name: self.stages.get(name, 0.0) + seconds}))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the manifest."""
        full = self.evaluations_full
        return {
            "seconds_by_stage": {k: round(v, 4) for k, v in self.stages.items()},
            "seconds_total": round(sum(self.stages.values()), 4),
            "influence_evaluations_made": self.evaluations_made,
            "influence_evaluations_full_matrix": full,
            "share_of_full_matrix": (self.evaluations_made / full) if full else None,
            "counters": dict(self.counters),
        }
