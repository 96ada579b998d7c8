"""Four Over Six's NVFP4 scales as its authors' package computes them.

Four Over Six (Cook et al., 2025, arXiv:2512.02010) quantizes each NVFP4 block twice, with
the block maximum mapped to 6 and to 4, and keeps the one with the smaller squared error.
Its package (``fouroversix`` 1.0.5, ``quantize/pytorch/reference.py``, ``scale_rule=mse``)
computes the two E4M3 block scales differently from torchao's NVFP4 (:mod:`.e4m3`): the
per-tensor scale leaves room for the factor 1.5 below E4M3's 448 by using 256 in its place,
and nothing is clamped.  For a tensor of absolute maximum ``G`` and a block of maximum ``M``,
all in float32, in this order:

* ``enc = 1536 / G`` (``1536 = 6 · 256``);
* ``s = (M / 6) · enc``, times 1.5 for the candidate that maps the block to 4;
* ``e = e4m3(s)``, rounded to nearest even, subnormals and 0 included;
* values are multiplied by ``1 / (d · e)`` with ``d = 1 / enc``; a block with ``e = 0``
  stores zeros;
* decoding: ``(e · G) / 1536``.

The rules ``fouroversix:6`` and ``fouroversix:4`` are the two candidates; ``search:fouroversix``
(:mod:`.search`) picks between them.  What the tensor stores besides the blocks is ``G``
itself, as the package does (1 for an all-zero tensor, whose blocks all store scale 0; the
package stores 0).  The arithmetic is NVFP4's, so ``qmax`` must be 6.  Where this
differs from the package's bytes, and why (its float32 arithmetic at the ends of the range,
its packing of other shapes than 2-D with an even row length, its +0 codes), is in
docs/scales.md; the vectors are from the package itself (tests/data/make_fouroversix_vectors.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..numerics.fpstate import ignore_underflow
from .e4m3 import e4m3_encode, e4m3_value
from .rule import ScaleRule, check_qmax, check_tensor_amax

__all__ = ["FourOverSixScale", "FOS_TARGETS"]

_F = np.float32
_QMAX = 6.0
_SCALE_MAX = 256.0          # the package's E4M3 maximum for its mse/mae/abs_max rules
_DENOM = _F(_QMAX * _SCALE_MAX)

#: target -> factor on the block scale: the block maximum mapped to 6 or to 4
FOS_TARGETS: dict[str, float] = {"6": 1.0, "4": 1.5}


def _enc_dec(g: np.float32) -> tuple[np.float32, np.float32]:
    """The package's ``enc = 1536 / G`` and ``d = 1 / enc`` (float32, ``G > 0``)."""
    with np.errstate(over="ignore", divide="ignore"):
        enc = _F(_DENOM / g)
        return enc, _F(_F(1) / enc)


def _check_qmax(qmax: float) -> None:
    if check_qmax(qmax) != FourOverSixScale.fixed_qmax:
        raise ValueError(f"fouroversix computes NVFP4's scales: qmax must be {_QMAX:g} (E2M1's largest "
                         f"magnitude), got {float(qmax)!r}")


class FourOverSixScale(ScaleRule, family="fouroversix"):
    """``fouroversix:6`` / ``fouroversix:4``: the two candidate scales of the Four Over Six package
    (module docstring)."""

    stored_dtype, stored_bytes, tensor_bytes = "uint8", 1, 4
    tensor_value = "float32 tensor absolute maximum"
    fixed_qmax = _QMAX
    summary = "Four Over Six's NVFP4 scales"
    format_blocks = ("NVFP4", 16)

    def __init__(self, target: str = "6") -> None:
        if target not in FOS_TARGETS:
            raise ValueError(f"fouroversix maps a block's maximum to {' or '.join(FOS_TARGETS)}, got {target!r}")
        self.target = target
        self.factor = _F(FOS_TARGETS[target])

    @classmethod
    def from_arg(cls, arg: str | None) -> "ScaleRule":
        return cls("6" if arg is None else arg)

    @classmethod
    def variants(cls) -> tuple[str, ...]:
        return tuple(f"fouroversix:{t}" for t in FOS_TARGETS)

    @property
    def name(self) -> str:
        return f"fouroversix:{self.target}"

    def candidate(self, qmax: float, factor: float) -> tuple["ScaleRule", float]:
        _check_qmax(qmax)
        target = float(self.target) * float(factor)
        for t in FOS_TARGETS:
            if abs(target - float(t)) <= 1e-6 * _QMAX:
                return FourOverSixScale(t), qmax
        raise ValueError(f"fouroversix maps a block's maximum to 6 or 4, not {target:.7g} "
                         f"({self.name} with the search target {float(factor):.7g})")

    @ignore_underflow
    def tensor_scale(self, global_amax: float, qmax: float) -> np.float32 | None:
        _check_qmax(qmax)
        g = check_tensor_amax(global_amax)
        if g == 0:
            return _F(1)   # as e4m3: a tensor scale is positive; every block stores scale 0 anyway
        with np.errstate(over="ignore", divide="ignore"):
            # the smallest non-zero block scale (2**-9) multiplies by 1 / (d * 2**-9); the
            # largest decodes through 448 * G: both must stay finite
            d = _enc_dec(g)[1]
            small = not np.isfinite(_F(1) / (d * _F(2.0**-9)).astype(_F))
            large = not np.isfinite(_F(448) * g)
        if small:
            raise ValueError(f"the tensor's amax {float(g):.3g} is too small for fouroversix's float32 scales "
                             "(the smallest block scale's factor overflows); it may be exactly 0")
        if large:
            raise ValueError(f"the tensor's amax {float(g):.3g} is too large for fouroversix's float32 scales "
                             "(448 · amax overflows)")
        return g

    def _g(self, tensor_scale):
        if tensor_scale is None:
            raise ValueError("the fouroversix rule needs the tensor's float32 absolute maximum")
        return _F(tensor_scale)

    @ignore_underflow
    def _encode(self, amax, qmax, tensor_scale):
        _check_qmax(qmax)
        g = self._g(tensor_scale)
        m = np.asarray(amax, dtype=_F)
        if g == 0:
            return np.zeros(m.shape, np.uint8)
        with np.errstate(over="ignore"):   # inf: stored as 0x7F, which encode refuses by name
            s = ((m / _F(_QMAX)).astype(_F) * _enc_dec(g)[0]).astype(_F)
            if self.factor != 1:
                s = (s * self.factor).astype(_F)
        return e4m3_encode(s)

    def overflow(self, stored: np.ndarray) -> np.ndarray:
        return np.asarray(stored) == 0x7F

    def _decode(self, stored, tensor_scale):
        e = e4m3_value(stored)
        return ((e * self._g(tensor_scale)).astype(_F) / _DENOM).astype(_F)

    def _divisor(self, stored, tensor_scale):
        g = self._g(tensor_scale)
        e = e4m3_value(stored)
        if g == 0:
            return np.zeros(e.shape, _F), False
        d = _enc_dec(g)[1]
        with np.errstate(divide="ignore"):
            f = (_F(1) / (d * e).astype(_F)).astype(_F)
        return np.where(e > 0, f, _F(0)).astype(_F), False

    def breakpoints(self, qmax: float, tensor_scale: Any = None, lo: float = 0.0,
                    hi: float = float(np.finfo(_F).max)) -> np.ndarray:
        _check_qmax(qmax)
        g = float(self._g(tensor_scale))
        if g == 0:
            return np.zeros(0)
        grid = e4m3_value(np.arange(0x00, 0x7F, dtype=np.uint8)).astype(np.float64)
        b = (grid[:-1] + grid[1:]) / 2 * _QMAX * g / (float(_DENOM) * float(self.factor))
        return b[(b >= lo) & (b <= hi)]
