"""Host-side wrappers of the numba kernels (same contract as :mod:`quantbook.bulk.reference`)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..bulk import reference as R
from ..bulk.dynamic_map import nested_lut
from . import kernels as K

__all__ = ["quantize_cpu", "dequantize_cpu", "quantize_absmax_nested", "dequantize_absmax_nested"]

_F = np.float32


@lru_cache(maxsize=1)
def _f16_table() -> np.ndarray:
    t = np.arange(65536, dtype=np.uint16).view(np.float16).astype(_F)
    t.setflags(write=False)
    return t


def _kernel_view(x: np.ndarray) -> np.ndarray:
    """float32 as is; float16 bits as uint16; bfloat16 bits as int16 (see kernels.py)."""
    name = x.dtype.name
    if name == "float32":
        return x
    if name == "float16":
        return x.view(np.uint16)
    if name == "bfloat16":
        return x.view(np.int16)
    raise ValueError(f"unsupported dtype {name}")


@lru_cache(maxsize=64)
def _tables(code_bytes: bytes, bits: int):
    code = np.frombuffer(code_bytes, dtype=_F)
    bounds, order = R.sorted_bounds(code)
    zero = R.zero_index(bounds, order)
    order = order.astype(np.uint8)
    if code.size <= 16:
        b15 = np.full(15, np.inf, dtype=_F)
        b15[: bounds.size] = bounds
        o16 = np.zeros(16, dtype=np.uint8)
        o16[: order.size] = order
        identity = bool(np.array_equal(order, np.arange(code.size)))
    else:
        b15 = o16 = None
        identity = False
    nb_pow2 = 1 << max(1, int(np.ceil(np.log2(max(code.size, 2)))))
    bp = np.full(nb_pow2 - 1, np.inf, dtype=_F)
    bp[: bounds.size] = bounds
    op = np.zeros(nb_pow2, dtype=np.uint8)
    op[: order.size] = order
    return b15, o16, identity, bp, nb_pow2, op, zero


def quantize_cpu(x: np.ndarray, code_f32: np.ndarray, bits: int, blocksize: int):
    """``(packed uint8, absmax float32)`` of a C-contiguous float array; a block holding a
    non-finite value gets ``absmax = NaN`` (the api turns that into an error)."""
    code = np.ascontiguousarray(code_f32, dtype=_F)
    b15, o16, identity, bp, nb_pow2, op, zero = _tables(code.tobytes(), int(bits))
    xv = _kernel_view(x.reshape(-1))
    n = xv.size
    nb = -(-n // blocksize)
    packed = np.empty(R.packed_length(n, bits), dtype=np.uint8)
    absmax = np.empty(nb, dtype=_F)
    tab = _f16_table()
    if bits == 4 and b15 is not None:
        K.quantize_4bit_small(xv, tab, b15, o16, identity, blocksize, packed, absmax)
    else:
        K.quantize_generic(xv, tab, bp, nb_pow2, op, bits, zero, blocksize, packed, absmax)
    return packed, absmax


def dequantize_cpu(packed: np.ndarray, absmax: np.ndarray, code_f32: np.ndarray, bits: int,
                   blocksize: int, n: int, out_dtype) -> np.ndarray:
    """Flat array of ``n`` values of ``out_dtype`` (float32, float16 or bfloat16).

    Codes past the end of ``code_f32`` decode to NaN (the table is padded to every value a
    stored code can take: 2**bits, or 256 for one byte a code), so corrupt bytes never read
    out of bounds.
    """
    out_dtype = np.dtype(out_dtype)
    c = np.asarray(code_f32, dtype=_F).reshape(-1)
    code = np.full(max(2**bits if bits in (1, 2, 4) else 256, c.size), np.nan, dtype=_F)
    code[: c.size] = c
    out = np.empty(n, dtype=out_dtype)
    ov = _kernel_view(out)
    packed = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)
    absmax = np.ascontiguousarray(absmax, dtype=_F).reshape(-1)
    if bits == 4:
        K.dequantize_4bit(packed, absmax, code, blocksize, n, ov)
    else:
        K.dequantize_generic(packed, absmax, code, bits, blocksize, n, ov)
    return out


def quantize_absmax_nested(absmax: np.ndarray, threads: int = 1):
    """numba version of :func:`quantbook.bulk.reference.quantize_absmax_nested`."""
    a = np.ascontiguousarray(absmax, dtype=_F).reshape(-1)
    total = K.torch_sum_f32(a, int(threads))
    offset = _F(total / _F(a.size))
    d = (a - offset).astype(_F)
    B = R.NESTED_BLOCKSIZE
    q = np.empty(d.size, dtype=np.uint8)
    nabs = np.empty(-(-d.size // B), dtype=_F)
    K.quantize_nested_lut(d, nested_lut(), B, q, nabs)
    return q, nabs, offset


dequantize_absmax_nested = R.dequantize_absmax_nested
