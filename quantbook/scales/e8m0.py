"""MX's power-of-two shared scale, stored as E8M0 (a biased exponent byte, 255 = NaN).

``emax = floor(log2(qmax))`` is the element format's largest exponent (2 for E2M1).  The
rounding modes are those of torchao's ``ScaleCalculationMode`` (0.18, ``mx_tensor.to_mx``):

* ``floor`` (OCP Microscaling spec v1.0, section 6.3): exponent ``floor(log2 M) - emax``;
* ``ceil``: ``ceil(log2 M) - emax``;
* ``even``: ``M`` first rounded to E2M1's precision (its float32 bits plus ``2**21``, the
  mantissa then cut), then as ``floor`` — so ``M >= 1.75 * 2**k`` counts as ``2**(k+1)``;
* ``rceil``: ``ceil(log2(M / qmax))`` with ``log2`` evaluated in float32 (as torch does on
  the CPU), which is not the exact ceiling just above powers of two; NVIDIA's
  ``cvt.rp.satfinite.ue8m0`` rounds exactly.

The exponent is clamped below at -127 (byte 0).  One above 127 (byte 255 is NaN) is a scale
the format cannot hold, an error (:meth:`ScaleRule.encode`), not a clamp to 2**127 that would
clip the whole block: for ``qmax >= 2`` no float32 maximum reaches it, so only a ``qmax`` below
that does (below 1 for ``floor``).  ``floor``/``ceil``/``even`` divide
the values by ``max(2**e, 2**-126)`` (torchao keeps the divisor normal, so byte 0 stands for
2**-127 but divides by 2**-126); ``rceil`` multiplies them by ``2**-e``, or by 1 for byte 0.
Decoding multiplies by ``2**(byte - 127)``.  An all-zero block stores byte 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..numerics.fpstate import ignore_underflow
from .rule import ScaleRule, check_qmax

__all__ = ["E8M0Scale", "E8M0_MODES", "e8m0_value"]

_F = np.float32
E8M0_MODES = ("floor", "ceil", "even", "rceil")
_TINY = float(np.finfo(_F).tiny)


def e8m0_value(b: np.ndarray) -> np.ndarray:
    """float32 value of E8M0 bytes: ``2**(b - 127)``, NaN for 255 (2**-127 is subnormal)."""
    b = np.asarray(b, dtype=np.uint8).astype(np.int32)
    return np.where(b == 255, np.nan, np.ldexp(1.0, b - 127)).astype(_F)


def _emax(qmax: float) -> int:
    return int(np.floor(np.log2(check_qmax(qmax))))


class E8M0Scale(ScaleRule, family="e8m0"):
    """``e8m0:MODE``: MX's power-of-two block scale, rounded by ``MODE`` (module docstring)."""

    stored_dtype, stored_bytes = "uint8", 1
    summary = "MXFP4"
    format_blocks = ("MXFP4", 32)

    def __init__(self, mode: str = "floor") -> None:
        if mode not in E8M0_MODES:
            raise ValueError(f"e8m0 rounding must be one of {', '.join(E8M0_MODES)}, got {mode!r}")
        self.mode = mode

    @classmethod
    def from_arg(cls, arg: str | None) -> "ScaleRule":
        return cls("floor" if arg is None else arg)

    @classmethod
    def variants(cls) -> tuple[str, ...]:
        return tuple(f"e8m0:{m}" for m in E8M0_MODES)

    @property
    def name(self) -> str:
        return f"e8m0:{self.mode}"

    @ignore_underflow
    def exponent(self, amax: np.ndarray, qmax: float) -> np.ndarray:
        """The unclamped unbiased exponent of each block's scale (int64)."""
        a = np.asarray(amax, dtype=_F)
        m = a.reshape(-1)   # 1-D: a 0-d array cannot change its dtype by view
        if self.mode == "rceil":
            with np.errstate(divide="ignore", over="ignore"):
                d = (m / _F(check_qmax(qmax))).astype(_F)
                lg = np.log2(d.astype(np.float64)).astype(_F)  # torch's float32 log2
            # M / qmax overflows to inf for qmax < 1: beyond every exponent (128, which encode refuses)
            return np.where(d > 0, np.ceil(np.minimum(lg, 128)), -127).astype(np.int64).reshape(a.shape)
        u = m.view(np.uint32).astype(np.int64)
        if self.mode == "even":
            u = (u + (1 << 21)) & 0xFF800000
        e = ((u >> 23) & 0xFF) - 127
        if self.mode == "ceil":
            e = e + ((m.view(np.uint32) & 0x7FFFFF) > 0)
        return (e - _emax(qmax)).reshape(a.shape)

    def _encode(self, amax, qmax, tensor_scale):
        e = self.exponent(amax, qmax)
        return np.where(e > 127, 255, np.maximum(e, -127) + 127).astype(np.uint8)

    def overflow(self, stored: np.ndarray) -> np.ndarray:
        return np.asarray(stored) == 255

    def _decode(self, stored, tensor_scale):
        return e8m0_value(stored)

    def _divisor(self, stored, tensor_scale):
        b = np.asarray(stored, dtype=np.uint8).astype(np.int32)
        if self.mode == "rceil":
            return np.where(b == 0, 1.0, np.ldexp(1.0, 127 - b)).astype(_F), False
        return np.maximum(np.ldexp(1.0, b - 127), _TINY).astype(_F), True

    @ignore_underflow
    def breakpoints(self, qmax: float, tensor_scale: Any = None, lo: float = 0.0,
                    hi: float = float(np.finfo(_F).max)) -> np.ndarray:
        q = check_qmax(qmax)
        k = np.arange(-160, 160)
        if self.mode == "floor":  # s jumps at 2**k to exponent k - emax
            b, after = np.ldexp(1.0, k), k - _emax(q)
        elif self.mode == "ceil":  # just above 2**k to k + 1 - emax
            b, after = np.ldexp(1.0, k), k + 1 - _emax(q)
        elif self.mode == "even":  # at 1.75 * 2**k to k + 1 - emax
            b, after = 1.75 * np.ldexp(1.0, k), k + 1 - _emax(q)
        else:  # float32 log2(M / q) rounds above k once log2 passes k by half the gap to
            # the next float32 up (below a negative power of two that gap is half its ulp)
            kf = k.astype(np.float64)
            half_gap = (np.nextafter(kf.astype(_F), _F(np.inf)).astype(np.float64) - kf) / 2
            b, after = q * np.exp2(kf + half_gap), k + 1
        # the clamp to byte 0 flattens s below the smallest exponent; beyond the largest the
        # rule refuses the block
        b = b[(after >= -126) & (after <= 127) & np.isfinite(b)]
        return b[(b >= lo) & (b <= hi)]
