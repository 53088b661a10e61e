"""JSON-safe values: what the JSON columns, ``-f json`` and CSV output may hold (imports nothing heavy)."""

from __future__ import annotations

import math
from typing import Any


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN and ±inf (in nested dicts, lists and tuples) as ``None``: what strict JSON (RFC 8259,
    the JSON columns, ``-f json``) and CSV readers take; dict keys as strings, tuples as lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value
