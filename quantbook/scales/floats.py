"""Block scales stored as plain floats: ``float32`` (bitsandbytes' absmax), ``float16``
(ggml's block formats) and ``bfloat16``.

The scale is ``M / qmax`` in float32, rounded to nearest even in the stored type.  A scale
that would round to infinity is an error; one that underflows to zero stores 0, and the
block then decodes to zeros (ggml's ``id = d ? 1/d : 0``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ..numerics.fpstate import ignore_underflow
from .rule import ScaleRule, check_qmax

__all__ = ["Float32Scale", "Float16Scale", "BFloat16Scale", "bf16_bits", "bf16_value"]

_F = np.float32
_FMAX = float(np.finfo(np.float32).max)


@ignore_underflow
def _ratio(amax: np.ndarray, qmax: float) -> np.ndarray:
    return (np.asarray(amax, dtype=_F) / _F(check_qmax(qmax))).astype(_F)


def _grid_breakpoints(grid: np.ndarray, qmax: float, lo: float, hi: float) -> np.ndarray:
    """``qmax`` times the midpoints of neighbouring grid values (round-to-nearest cells)."""
    g = np.unique(grid[np.isfinite(grid) & (grid >= 0)].astype(np.float64))
    b = qmax * (g[:-1] + g[1:]) / 2
    return b[(b >= lo) & (b <= hi)]


class Float32Scale(ScaleRule, family="float32"):
    """bitsandbytes' float32 absmax (docs/format.md): ``s = M / qmax``, no rounding."""

    layout = "bnb"
    stored_dtype, stored_bytes = "float32", 4
    summary = "bitsandbytes' absmax"

    def _encode(self, amax, qmax, tensor_scale):
        return _ratio(amax, qmax)

    def _decode(self, stored, tensor_scale):
        return np.asarray(stored, dtype=_F)

    def breakpoints(self, qmax: float, tensor_scale: Any = None, lo: float = 0.0,
                    hi: float = _FMAX) -> np.ndarray:
        return np.empty(0)


class Float16Scale(ScaleRule, family="float16"):
    """``float16``: ``M / qmax`` rounded to float16, as ggml's block formats store it."""

    stored_dtype, stored_bytes = "float16", 2

    @ignore_underflow
    def _encode(self, amax, qmax, tensor_scale):
        with np.errstate(over="ignore"):
            return _ratio(amax, qmax).astype(np.float16)

    def overflow(self, stored: np.ndarray) -> np.ndarray:
        return ~np.isfinite(np.asarray(stored, dtype=np.float16))

    def _decode(self, stored, tensor_scale):
        return np.asarray(stored, dtype=np.float16).astype(_F)

    def breakpoints(self, qmax: float, tensor_scale: Any = None, lo: float = 0.0,
                    hi: float = _FMAX) -> np.ndarray:
        return _grid_breakpoints(_f16_grid(), check_qmax(qmax), lo, hi)


@lru_cache(maxsize=1)
def _f16_grid() -> np.ndarray:
    g = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    g.setflags(write=False)   # cached: every caller's
    return g


def bf16_bits(v: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, rounded to nearest even (finite inputs)."""
    u = np.asarray(v, dtype=_F).view(np.uint32).astype(np.uint64)
    return ((u + np.uint64(0x7FFF) + ((u >> np.uint64(16)) & np.uint64(1))) >> np.uint64(16)).astype(np.uint16)


def bf16_value(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(_F)


class BFloat16Scale(ScaleRule, family="bfloat16"):
    """Stored as the uint16 bit patterns (no ml_dtypes needed).  A scale below float32's
    normal range is an error: its float32 reciprocal would overflow."""

    stored_dtype, stored_bytes = "uint16", 2

    def _encode(self, amax, qmax, tensor_scale):
        return bf16_bits(_ratio(amax, qmax))

    def overflow(self, stored: np.ndarray) -> np.ndarray:
        return ~np.isfinite(bf16_value(stored))

    def underflow(self, stored: np.ndarray, tensor_scale: Any = None) -> np.ndarray:
        s = bf16_value(stored)
        return (s > 0) & (s < np.finfo(_F).tiny)

    def _decode(self, stored, tensor_scale):
        return bf16_value(stored)

    def breakpoints(self, qmax: float, tensor_scale: Any = None, lo: float = 0.0,
                    hi: float = _FMAX) -> np.ndarray:
        grid = bf16_value(np.arange(0x7F80, dtype=np.uint16)).astype(np.float64)
        return _grid_breakpoints(grid, check_qmax(qmax), lo, hi)
