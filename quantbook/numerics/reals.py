"""What counts as real numbers, and their float64 values: an integer or Fraction beyond
float64's range is ±inf (``float`` raises OverflowError for them)."""

from __future__ import annotations

import math
import numbers
from decimal import Decimal
from typing import Any

import numpy as np

from .arguments import host_array, one_line

__all__ = ["float_or_inf", "real_kind", "real_array", "real_host_array"]


def real_kind(dtype: Any) -> str:
    """``"f"``, ``"i"`` or ``"u"`` for a dtype of real numbers — numpy's floats and integers and
    ml_dtypes' (bfloat16, float8, int4, whose numpy kind is ``"V"``) — else ``""``: bool
    (True is not the number 1), complex, dates, strings, objects and records."""
    dt = np.dtype(dtype)
    if dt.kind in "fiu":
        return dt.kind
    if dt.kind == "V" and dt.names is None and dt.subdtype is None and dt.type.__module__ == "ml_dtypes":
        return "u" if dt.name.startswith("uint") else "i" if dt.name.startswith("int") else "f"
    return ""


def real_host_array(v: Any, what: str, error: type[ValueError] = ValueError) -> np.ndarray:
    """``v`` read by the one rule for arrays (:func:`~.arguments.host_array`), refused unless
    its dtype holds real numbers (:func:`real_kind`): complex would lose its imaginary part,
    bool and dates would be read as numbers.  ``error``: the caller's ValueError subclass."""
    arr = host_array(v, what, error)
    if not real_kind(arr.dtype):
        raise error(f"{what} must be real numbers, got dtype {arr.dtype}")
    return arr


def float_or_inf(v: Any) -> float:
    """``float(v)``, or ±inf where ``v`` is beyond float64's range (a large int)."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def real_array(x: Any, what: str) -> np.ndarray:
    """``x`` as float64; ValueError for anything that is not real numbers."""
    try:
        raw = np.asarray(x)
    except ValueError:   # ragged nesting
        raise ValueError(f"{what} must be real numbers in an array of one shape, got {one_line(x)}") from None
    # strings, None, complex and the like are not real numbers (float() would accept "1.5");
    # a bool array is, as scipy.stats reads it (0 and 1)
    ok = raw.dtype.kind == "b" or real_kind(raw.dtype) or (raw.dtype.kind == "O" and raw.size > 0 and all(
        isinstance(v, (numbers.Real, Decimal)) and not isinstance(v, bool) for v in raw.flat))
    if not ok:   # an array by its dtype, anything else on one line: a repr may span many
        got = f"an array of {raw.dtype}" if isinstance(x, np.ndarray) else one_line(x)
        raise ValueError(f"{what} must be real numbers, got {got}")
    if raw.dtype.kind == "O":   # Fractions, Decimals, integers beyond float64 (to ±inf)
        return np.array([float_or_inf(v) for v in raw.flat], dtype=np.float64).reshape(raw.shape)
    return raw.astype(np.float64, copy=False)
