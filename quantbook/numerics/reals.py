"""What counts as real numbers, and their float64 values: an integer or Fraction beyond
float64's range is ±inf (``float`` raises OverflowError for them)."""

from __future__ import annotations

import math
import numbers
from decimal import Decimal
from typing import Any

import numpy as np

__all__ = ["float_or_inf", "real_array"]


def float_or_inf(v: Any) -> float:
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def real_array(x: Any, what: str) -> np.ndarray:
    """``x`` as float64; ValueError for anything that is not real numbers."""
    try:
        raw = np.asarray(x)
    except ValueError:   # ragged nesting
        raise ValueError(f"{what} must be real numbers in an array of one shape, got {x!r}") from None
    # strings, None, complex and the like are not real numbers (float() would accept "1.5")
    ok = raw.dtype.kind in "biuf" or (raw.dtype.kind == "O" and raw.size > 0 and all(
        isinstance(v, (numbers.Real, Decimal)) and not isinstance(v, bool) for v in raw.flat))
    if not ok:
        raise ValueError(f"{what} must be real numbers, got {x!r}")
    if raw.dtype.kind == "O":   # Fractions, Decimals, integers beyond float64 (to ±inf)
        return np.array([float_or_inf(v) for v in raw.flat], dtype=np.float64).reshape(raw.shape)
    return raw.astype(np.float64, copy=False)
