"""Python numbers as float64: an integer or Fraction beyond float64's range is ±inf (``float``
raises OverflowError for them)."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["float_or_inf"]


def float_or_inf(v: Any) -> float:
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf
