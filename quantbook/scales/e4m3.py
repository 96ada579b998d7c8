"""NVFP4's two-level scale: an FP8 E4M3 block scale times a float32 per-tensor scale.

As NVIDIA's NVFP4 recipe and torchao's ``prototype.mx_formats.nvfp4_tensor`` (0.18) compute
it, all in float32:

* tensor scale ``t = G / (qmax * 448)``, ``G`` the tensor's absolute maximum (torchao's
  ``per_tensor_amax_to_scale``: ``amax / (448 * 6)``);
* block scale ``e = e4m3(clamp((M / qmax) / t, 2**-6, 448))``, rounded to nearest even —
  the clamp keeps it a normal E4M3 number, never 0 or subnormal (an all-zero block stores
  2**-6);
* values are multiplied by ``float32(float32(1 / t) / e)``; decoding multiplies by
  ``float32(t * e)``.

Not defined by torchao, defined here: an all-zero tensor (``G = 0``; torchao divides 0 by 0)
stores ``t = 1``; a tensor whose ``t`` is so small that a clamped block's factor ``(1/t) /
2**-6`` overflows (``G`` below about ``448 * qmax * 2**-122``), or so large that ``t * 448``
overflows, is an error: an all-zero block would decode to NaN or the largest scale to inf.

The E4M3 rounding is done on the float32 bits (3 mantissa bits, ties to even), which is exact
in the clamped range; tests/test_scales.py checks it against ml_dtypes' ``float8_e4m3fn``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..numerics.fpstate import ignore_underflow
from .rule import ScaleRule, check_qmax, check_tensor_amax

__all__ = ["E4M3Scale", "E4M3_MAX", "E4M3_MIN_NORMAL", "e4m3_round", "e4m3_encode", "e4m3_bits", "e4m3_value",
           "e4m3_grid"]

_F = np.float32
E4M3_MAX = 448.0
E4M3_MIN_NORMAL = 2.0**-6


def e4m3_round(v: np.ndarray) -> np.ndarray:
    """float32 in [2**-6, 448] rounded to E4M3 (nearest, ties to even), as float32."""
    u = np.asarray(v, dtype=_F).view(np.uint32).astype(np.uint64)
    u = (u + np.uint64(0x7FFFF) + ((u >> np.uint64(20)) & np.uint64(1))) & np.uint64(0xFFF00000)
    return u.astype(np.uint32).view(_F)


def e4m3_encode(s: np.ndarray) -> np.ndarray:
    """E4M3 bytes of non-negative float32 values, rounded to nearest even as ml_dtypes'
    ``float8_e4m3fn`` (and torch's cast, up to 464): subnormals (steps of 2**-9) and 0
    included; beyond 464, and for NaN, the byte is 0x7F (NaN)."""
    s = np.asarray(s, dtype=_F)
    s = np.where(np.isnan(s), _F(480), np.minimum(s, _F(480)))
    sub = s < _F(2.0**-6)
    k = np.rint(np.where(sub, s, _F(0)) * _F(2.0**9)).astype(np.uint8)   # exact scaling; ties to even
    with np.errstate(invalid="ignore"):
        normal = e4m3_bits(e4m3_round(np.where(sub, _F(1), s)))
    return np.where(sub, k, normal).astype(np.uint8)


def e4m3_bits(r: np.ndarray) -> np.ndarray:
    """E4M3 byte of a non-negative normal E4M3 value held in float32."""
    u = np.asarray(r, dtype=_F).view(np.uint32)
    exp = ((u >> 23) & 0xFF).astype(np.int64) - 127 + 7
    return ((exp << 3) | ((u >> 20) & 7)).astype(np.uint8)


def e4m3_value(b: np.ndarray) -> np.ndarray:
    """float32 value of E4M3 bytes (sign ignored: scales are non-negative; 0x7F is NaN)."""
    b = np.asarray(b, dtype=np.uint8).astype(np.int64) & 0x7F
    e, m = b >> 3, b & 7
    v = np.where(e == 0, m * 2.0**-9, np.ldexp(1.0 + m / 8.0, (e - 7).astype(np.int32)))
    return np.where(b == 0x7F, np.nan, v).astype(_F)


def _t_bound(qmax: float, low: bool) -> float:
    """About the smallest (``low``) or largest tensor maximum :meth:`E4M3Scale.tensor_scale`
    takes (for messages; the float32 checks there decide)."""
    fmax = float(np.finfo(_F).max)
    t = 1 / (fmax * E4M3_MIN_NORMAL) if low else fmax / E4M3_MAX
    return t * qmax * E4M3_MAX


def e4m3_grid() -> np.ndarray:
    """The normal non-negative E4M3 values, 2**-6 .. 448, as float64."""
    return e4m3_value(np.arange(0x08, 0x7F, dtype=np.uint8)).astype(np.float64)


class E4M3Scale(ScaleRule, family="e4m3"):
    """``e4m3``: NVFP4's E4M3 block scale under a float32 tensor scale (module docstring)."""

    stored_dtype, stored_bytes, tensor_bytes = "uint8", 1, 4
    summary = "NVFP4"
    format_blocks = ("NVFP4", 16)

    @ignore_underflow
    def tensor_scale(self, global_amax: float, qmax: float) -> np.float32 | None:
        g = check_tensor_amax(global_amax)
        qmax = check_qmax(qmax)
        with np.errstate(over="ignore"):
            top = _F(_F(qmax) * _F(E4M3_MAX))
        if not np.isfinite(top):   # every amax would be "too small" for a scale of amax / inf
            raise ValueError(f"qmax={qmax:g} is too large for the e4m3 rule: qmax·448 must be a finite float32 "
                             f"(qmax at most about {float(np.finfo(_F).max) / E4M3_MAX:.4g})")
        if g == 0:
            return _F(1)
        with np.errstate(over="ignore"):
            t = _F(g / top)
            # a block on the clamp 2**-6 multiplies by (1/t)/2**-6; the largest block scale
            # decodes to t*448: both must stay finite
            small = not (t >= np.finfo(_F).tiny and np.isfinite((_F(1) / t) / _F(E4M3_MIN_NORMAL)))
            large = not np.isfinite(t * _F(E4M3_MAX))
        if small:
            raise ValueError(f"the tensor's amax {float(g):.3g} is too small for a float32 tensor scale at "
                             f"qmax={qmax:g} (needs about {_t_bound(qmax, low=True):.3g} or more, or exactly 0)")
        if large:
            raise ValueError(f"the tensor's amax {float(g):.3g} is too large for a float32 tensor scale at "
                             f"qmax={qmax:g} (needs about {_t_bound(qmax, low=False):.3g} or less)")
        return t

    def _t(self, tensor_scale):
        if tensor_scale is None:
            raise ValueError("the e4m3 rule needs the float32 tensor scale")
        return _F(tensor_scale)

    @ignore_underflow
    def _encode(self, amax, qmax, tensor_scale):
        t = self._t(tensor_scale)
        with np.errstate(over="ignore"):   # a block beyond the tensor's amax: inf, saturated by the clip
            r = ((np.asarray(amax, dtype=_F) / _F(qmax)).astype(_F) / t).astype(_F)
        return e4m3_encode(np.clip(r, _F(E4M3_MIN_NORMAL), _F(E4M3_MAX)))

    @ignore_underflow
    def _decode(self, stored, tensor_scale):
        return (self._t(tensor_scale) * e4m3_value(stored)).astype(_F)

    def _divisor(self, stored, tensor_scale):
        t = self._t(tensor_scale)
        return ((_F(1) / t) / e4m3_value(stored)).astype(_F), False

    def breakpoints(self, qmax: float, tensor_scale: Any = None, lo: float = 0.0,
                    hi: float = float(np.finfo(_F).max)) -> np.ndarray:
        g = e4m3_grid()
        b = float(check_qmax(qmax)) * float(self._t(tensor_scale)) * (g[:-1] + g[1:]) / 2
        return b[(b >= lo) & (b <= hi)]
