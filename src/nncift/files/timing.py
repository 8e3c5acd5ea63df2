"""Wall-clock timing of a block of code, for the cost counters every stage reports (the run's cost ledger, an influence
function's counters)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def timed(record: Callable[[float], None]) -> Iterator[None]:
    """Time the block and hand its wall time in seconds to ``record`` at its end, also when it raises."""
    start = time.perf_counter()
    try:
        yield
    finally:
        record(time.perf_counter() - start)
