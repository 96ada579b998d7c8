"""bitsandbytes' signed dynamic 8-bit map (used for the nested / double-quantized absmax).

Recipe (facts, not code, from bitsandbytes ``functional.create_dynamic_map(signed=True,
max_exponent_bits=7, total_bits=8)``, bitsandbytes 0.50.2; Dettmers, "8-Bit Approximations for
Parallelism in Deep Learning", arXiv:1511.04561): for i = 0..6 take ``2**i + 1`` float32
``torch.linspace(0.1, 1, .)`` boundaries, the float32 midpoints of neighbours, scaled by
``10**(i-6)`` (in float32), with both signs; add 0 and 1.0; sort.  2*(1+2+...+64) + 2 = 256 values.

``torch.linspace`` on the CPU (aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp) computes, in
float32, ``step = (end - start) / (steps - 1)`` and element i as ``start + step*i`` for
``i < steps // 2`` and ``end - step*(steps - 1 - i)`` otherwise.  Measured on torch 2.13.0+cpu
(x86-64): each element is rounded ONCE (the multiply-add is fused), which we reproduce by
evaluating it exactly in float64 and rounding to float32.

The nested absmax quantizer of bitsandbytes' CPU library (``quantize_blockwise`` for float32,
C++ ``quantize_cpu``) does not search the map: it maps a scaled value in [-1, 1] to one of 65536
bins and looks the code up in a table built from the map (see :func:`nested_lut`).  Both were
checked bit-for-bit against bitsandbytes 0.50.2 (tests/test_bulk_bnb.py).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["torch_linspace_f32", "dynamic_map", "nested_lut", "LUT_SIZE"]

_F = np.float32
LUT_SIZE = 65536


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float32)`` on the CPU, bit for bit."""
    if steps < 1:
        return np.empty(0, dtype=_F)
    s, e = _F(start), _F(end)
    if steps == 1:
        return np.array([s], dtype=_F)
    step = _F(_F(e - s) / _F(steps - 1))
    i = np.arange(steps)
    half = steps // 2
    out = np.empty(steps, dtype=_F)
    # float32*small-int products and the sums are exact in float64: one rounding, like an FMA
    out[:half] = (np.float64(s) + np.float64(step) * i[:half]).astype(_F)
    out[half:] = (np.float64(e) - np.float64(step) * (steps - 1 - i[half:])).astype(_F)
    return out


@lru_cache(maxsize=None)
def _dynamic_map(signed: bool, max_exponent_bits: int, total_bits: int) -> np.ndarray:
    non_sign_bits = total_bits - 1
    data: list[float] = []
    for i in range(max_exponent_bits):
        extra = 0 if signed else 1
        items = 2 ** (i + non_sign_bits - max_exponent_bits + extra) + 1
        b = torch_linspace_f32(0.1, 1.0, items)
        means = (b[:-1] + b[1:]) / _F(2.0)
        scale = _F(10.0 ** (-(max_exponent_bits - 1) + i))
        data += (scale * means).astype(_F).tolist()
        if signed:
            data += (-scale * means).astype(_F).tolist()
    if 2 ** (non_sign_bits - max_exponent_bits) - 1 > 0:
        raise NotImplementedError("only maps without additional linear items are implemented")
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
    lut = np.searchsorted(mid, val, side="left").astype(np.uint8)  # #{i : mid[i] < val}
    lut.setflags(write=False)
    return lut


def nested_lut(code: np.ndarray | None = None) -> np.ndarray:
    """The 65536-entry bin -> code-index table bitsandbytes' CPU library builds from a sorted map.

    ``mid[i] = float32(0.5 * (code[i] + code[i+1]))``; bin j stands for
    ``float32(-1 + float32(2*j) / 65535)`` and gets ``#{i : mid[i] < value}``.
    """
    c = dynamic_map() if code is None else np.ascontiguousarray(code, dtype=_F)
    return _lut(c.tobytes())
