"""The ``numpy`` backend: the readable reference computation of :mod:`quantbook.bulk.format`.

Every other backend must return exactly these bytes (tests/test_conformance.py).
"""

from __future__ import annotations

import numpy as np

from . import format as F
from .backend import Backend

__all__ = ["NumpyBackend", "quantize_reference", "dequantize_reference"]

_F = np.float32


def quantize_reference(x: np.ndarray, code: np.ndarray, bits: int,
                       block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(packed uint8, absmax float32)`` of a float array (any shape, flattened in C order)."""
    enc = F.code_encoder(code)
    y, absmax = F.scale_blocks(np.asarray(x).reshape(-1).astype(_F), block_size)
    return F.pack_codes(enc(y), bits, enc.zero_index), absmax


def dequantize_reference(packed: np.ndarray, absmax: np.ndarray, code: np.ndarray, bits: int,
                         block_size: int, n: int, out_dtype) -> np.ndarray:
    """Flat array of ``n`` values: ``float32(table[idx] * absmax)`` cast to ``out_dtype``."""
    idx = F.unpack_codes(packed, bits, n)
    scale = np.repeat(np.asarray(absmax, dtype=_F), block_size)[:n]
    return (F.decode_table(code, bits)[idx] * scale).astype(out_dtype)


class NumpyBackend(Backend, name="numpy"):
    """Plain numpy; slow, but every line is a rule of the format."""

    def quantize_blocks(self, x, code, bits, block_size):
        return quantize_reference(x, code, bits, block_size)

    def dequantize_blocks(self, packed, absmax, code, bits, block_size, n, out_dtype):
        return dequantize_reference(packed, absmax, code, bits, block_size, n, out_dtype)
