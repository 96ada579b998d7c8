"""bitsandbytes' nested statistics (``compress_statistics``): the float32 block absmax values,
less their mean, coded in blocks of 256 with the signed dynamic 8-bit map.

docs/format.md ("Nested statistics") states the layout; :mod:`quantbook.bulk.nested` computes
it for whole tensors.  This module states the rule for one block (:meth:`NestedScale.decoded`:
the float32 scale a block with maximum ``M`` decodes to, given the offset and its 256-block's
maximum deviation), the dynamic map and the lookup table it codes through, and what it stores
and costs.  It is not a function of one block's maximum: the offset and the 256-block maxima
depend on the other blocks, so it is not deterministic in the sense of
:attr:`ScaleRule.deterministic`; the values are encoded with the exact float32 maximum and
only the decoded scale carries the statistics' rounding (:attr:`ScaleRule.encodes_with_amax`),
whose law :mod:`quantbook.derive.scaled` models.

The dynamic map (bitsandbytes ``functional.create_dynamic_map(signed=True,
max_exponent_bits=7, total_bits=8)``; Dettmers, arXiv:1511.04561): for i = 0..6 take
``2**i + 1`` float32 ``torch.linspace(0.1, 1, .)`` points, the float32 midpoints of
neighbours, scaled by ``10**(i-6)`` in float32, with both signs; add 0 and 1; sort.
The LUT of bitsandbytes' CPU library (``csrc/cpu_ops.cpp``): ``mid[i] = float32(0.5 *
(map[i] + map[i+1]))``; bin ``j`` stands for ``float32(-1 + float32(2*j) / 65535)`` and gets
``#{i : mid[i] < value}``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..numerics import torch_f32
from ..numerics.fpstate import ignore_underflow
from .rule import ScaleRule

__all__ = ["NestedScale", "NESTED_BLOCKS", "LUT_SIZE", "dynamic_map", "nested_lut"]

_F = np.float32
#: blocks per nested block (bitsandbytes' fixed 256)
NESTED_BLOCKS = 256
#: bins of the CPU library's lookup table
LUT_SIZE = 65536


@lru_cache(maxsize=None)
def _dynamic_map(signed: bool, max_exponent_bits: int, total_bits: int) -> np.ndarray:
    non_sign_bits = total_bits - 1
    if 2 ** (non_sign_bits - max_exponent_bits) - 1 > 0:
        raise NotImplementedError("only maps without additional linear items are implemented")
    data: list[float] = []
    for i in range(max_exponent_bits):
        items = 2 ** (i + non_sign_bits - max_exponent_bits + (0 if signed else 1)) + 1
        b = torch_f32.linspace(0.1, 1.0, items)
        means = (b[:-1] + b[1:]) / _F(2.0)
        scale = _F(10.0 ** (-(max_exponent_bits - 1) + i))
        data += (scale * means).astype(_F).tolist()
        if signed:
            data += (-scale * means).astype(_F).tolist()
    data += [0.0, 1.0]
    if len(data) != 2**total_bits:
        raise ValueError(f"dynamic map has {len(data)} entries, expected {2**total_bits}")
    out = np.array(sorted(data), dtype=_F)
    out.setflags(write=False)
    return out


def dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> np.ndarray:
    """bitsandbytes' ``create_dynamic_map`` as a read-only float32 array (256 sorted values)."""
    return _dynamic_map(bool(signed), int(max_exponent_bits), int(total_bits))


@lru_cache(maxsize=8)
def _lut(code_bytes: bytes) -> np.ndarray:
    code = np.frombuffer(code_bytes, dtype=_F)
    mid = (_F(0.5) * (code[:-1] + code[1:])).astype(_F)
    j = np.arange(LUT_SIZE).astype(_F)
    val = (_F(-1.0) + (_F(2.0) * j) / _F(LUT_SIZE - 1)).astype(_F)
    lut = np.searchsorted(mid, val, side="left").astype(np.uint8)
    lut.setflags(write=False)
    return lut


def nested_lut(code: np.ndarray | None = None) -> np.ndarray:
    """The 65536-entry bin -> code-index table built from a sorted map (module docstring)."""
    c = dynamic_map() if code is None else np.ascontiguousarray(code, dtype=_F)
    return _lut(c.tobytes())


class NestedScale(ScaleRule, family="nested"):
    """``nested``: bitsandbytes' nested statistics (module docstring)."""

    deterministic = False
    encodes_with_amax = True
    layout = "bnb"
    summary = "bitsandbytes' nested statistics"
    stored_dtype, stored_bytes, tensor_bytes = "uint8", 1, 4  # + the offset

    @ignore_underflow
    def codes(self, deviation: np.ndarray, nested_absmax: np.ndarray) -> np.ndarray:
        """uint8 codes of ``d = absmax - offset`` given the 256-block maxima ``a = max |d|``
        (broadcast against ``d``; ``a >= |d|``): docs/format.md, "Nested statistics"."""
        d, a = np.broadcast_arrays(np.asarray(deviation, dtype=_F), np.asarray(nested_absmax, dtype=_F))
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            v = d * (_F(1) / a)  # 1/a overflows to inf only for a subnormal a
        v = np.clip(np.where(np.isnan(v), _F(-1), v), _F(-1), _F(1)).astype(_F)
        t = ((((v + _F(1)) * _F(0.5)) * _F(LUT_SIZE - 1)) + _F(0.5)).astype(_F)
        return np.where(a == 0, np.uint8(0), nested_lut()[t.astype(np.int64)]).astype(np.uint8)

    def decoded(self, amax: np.ndarray, offset: float, nested_absmax: np.ndarray) -> np.ndarray:
        """The float32 scale blocks with maximum ``amax`` decode to, given the offset and
        their 256-block's maximum deviation ``nested_absmax`` (broadcast; at least
        ``|amax - offset|``)."""
        m = np.asarray(amax, dtype=_F)
        a = np.asarray(nested_absmax, dtype=_F)
        q = self.codes((m - _F(offset)).astype(_F), a)
        return ((dynamic_map()[q] * a).astype(_F) + _F(offset)).astype(_F)

    def bits_per_weight(self, block_size: int, code_bits: int = 4, n: int | None = None) -> float:
        # a uint8 code per block and a float32 maximum per 256 blocks (+ the float32 offset)
        bpw = code_bits + 8.0 / block_size + 32.0 / (NESTED_BLOCKS * block_size)
        if n:
            bpw += 32.0 / n
        return bpw
