"""Nested (double-quantized) block statistics, bitsandbytes' ``compress_statistics``: the
offset, the 256-blocks and the decode are stated in docs/format.md, "Nested statistics".

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

__all__ = ["NESTED_BLOCKSIZE", "LUT_SIZE", "dynamic_map", "nested_lut", "nested_offset",
           "quantize_nested_reference", "dequantize_nested"]

_F = np.float32
NESTED_BLOCKSIZE = 256
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


def nested_offset(absmax: np.ndarray, threads: int = 1) -> np.float32:
    """torch's float32 mean of the block absmax values (``threads``: torch's thread count,
    which matters from 32768 blocks on).  Raises when it overflows float32: bitsandbytes
    would store an infinite offset and decode every value to NaN."""
    a = np.ascontiguousarray(absmax, dtype=_F).reshape(-1)
    offset = _F(torch_f32.mean(a, threads))
    if not np.isfinite(offset):
        raise ValueError("nested statistics need a finite mean of the block absmax values, but "
                         "their float32 sum overflows (values near float32's maximum); "
                         "quantize with nested=False")
    return offset


def quantize_nested_reference(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(codes uint8, nested_absmax float32)`` of the deviations ``d = absmax - offset``."""
    d = np.ascontiguousarray(d, dtype=_F).reshape(-1)
    B = NESTED_BLOCKSIZE
    nb = -(-d.size // B)
    lut = nested_lut()
    q = np.empty(d.size, dtype=np.uint8)
    nabs = np.empty(nb, dtype=_F)
    for b in range(nb):
        blk = d[b * B:(b + 1) * B]
        m = _F(np.abs(blk).max())
        nabs[b] = m
        if m == 0:
            q[b * B:(b + 1) * B] = 0
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            v = blk * (_F(1) / m)  # 1/m overflows to inf only for a subnormal m
        v = np.clip(np.where(np.isnan(v), _F(-1), v), _F(-1), _F(1)).astype(_F)
        t = ((((v + _F(1)) * _F(0.5)) * _F(LUT_SIZE - 1)) + _F(0.5)).astype(_F)
        q[b * B:(b + 1) * B] = lut[t.astype(np.int64)]
    return q, nabs


def dequantize_nested(q: np.ndarray, nested_absmax: np.ndarray, offset, nested_code: np.ndarray,
                      nested_blocksize: int) -> np.ndarray:
    """The float32 block scales of nested statistics (module docstring)."""
    code = np.asarray(nested_code, dtype=_F)
    q = np.asarray(q, dtype=np.uint8).reshape(-1)
    scale = np.repeat(np.asarray(nested_absmax, dtype=_F), nested_blocksize)[: q.size]
    return ((code[q] * scale).astype(_F) + _F(offset)).astype(_F)
