"""JSON text helpers of the data readers and writers: the line of each element of a top-level array, and values
made valid JSON (no ``Infinity`` or ``NaN``)."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Iterator


def array_elements_with_lines(text: str) -> Iterator[tuple[int, Any]]:
    """Yield (line where the element starts, element) for a top-level JSON array."""
    decoder = json.JSONDecoder()
    position = text.index("[") + 1
    line = 1 + text.count("\n", 0, position)
    while True:
        match = _SEPARATORS.match(text, position)
        end = match.end() if match else position  # the pattern matches the empty string: never None
        line += text.count("\n", position, end)
        position = end
        if position >= len(text) or text[position] == "]":
            return
        item, end = decoder.raw_decode(text, position)
        yield line, item
        line += text.count("\n", position, end)
        position = end


_SEPARATORS = re.compile(r"[\s,]*")


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no Infinity or NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    return [finite(item) for item in value] if isinstance(value, (list, tuple)) else value
