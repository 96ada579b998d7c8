"""Nested (double-quantized) block statistics, bitsandbytes' ``compress_statistics``, for
whole tensors: the offset, the 256-blocks and the decode are stated in docs/format.md,
"Nested statistics".  The dynamic map, its lookup table and the coding of one 256-block are
the scale rule's (:mod:`quantbook.scales.nested`).
"""

from __future__ import annotations

import numpy as np

from ..numerics import torch_f32
from ..scales.nested import LUT_SIZE, NESTED_BLOCKS, NestedScale, dynamic_map, nested_lut

__all__ = ["NESTED_BLOCKSIZE", "LUT_SIZE", "dynamic_map", "nested_lut", "nested_offset",
           "quantize_nested_reference", "dequantize_nested", "nonfinite_scales_error"]

_F = np.float32
NESTED_BLOCKSIZE = NESTED_BLOCKS


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
    nabs = np.empty(nb, dtype=_F)
    for b in range(nb):
        nabs[b] = _F(np.abs(d[b * B:(b + 1) * B]).max())
    q = NestedScale().codes(d, np.repeat(nabs, B)[: d.size])
    return q, nabs


def dequantize_nested(q: np.ndarray, nested_absmax: np.ndarray, offset: float | np.float32, nested_code: np.ndarray,
                      nested_blocksize: int) -> np.ndarray:
    """The float32 block scales of nested statistics (module docstring)."""
    code = np.asarray(nested_code, dtype=_F)
    q = np.asarray(q, dtype=np.uint8).reshape(-1)
    scale = np.repeat(np.asarray(nested_absmax, dtype=_F), nested_blocksize)[: q.size]
    return ((code[q] * scale).astype(_F) + _F(offset)).astype(_F)


def nonfinite_scales_error() -> ValueError:
    """The error for nested statistics whose decoded scales are not all finite: each stored
    value can be, and ``code * nested_absmax + offset`` still overflow (a damaged state)."""
    return ValueError("the nested statistics decode to non-finite block scales (damaged state)")
