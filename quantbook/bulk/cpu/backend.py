"""The ``cpu`` backend: numba kernels (:mod:`.kernels`, parallel, cached on disk).

numba is imported on first use, so importing quantbook never needs it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from .. import format as F
from .. import layouts as L
from ..backend import Backend
from ..nested import NESTED_BLOCKSIZE, nested_lut
from ...numerics import parallel
from ...scales.steps import BUCKET_SHIFT, step_table

__all__ = ["NumbaBackend", "kernel_view", "unavailable"]

_F = np.float32


def unavailable() -> str | None:
    """Why the numba kernels of the cpu backends (block-wise and vector) cannot run here, or None:
    :func:`quantbook.numerics.parallel.unavailable`, or numba's compiler switched off.  The kernels read and store
    16-bit values through overloads that exist only compiled, and their 4-bit encoder counts
    ``bounds < y`` by adding comparisons, which numba types as integers and numpy's booleans
    would OR: run as Python they would not give the format's bytes."""
    why = parallel.unavailable()
    if why is None:
        import numba

        # numba's config sets its names at import (an untyped numba, before 0.59, needs no ignore)
        if numba.config.DISABLE_JIT:  # type: ignore[attr-defined, unused-ignore]
            why = ("numba's compiler is switched off (NUMBA_DISABLE_JIT is set), and the cpu kernels run only "
                   "compiled; use backend='numpy' (the same bytes) or unset NUMBA_DISABLE_JIT")
    return why


def _kernels():
    from . import kernels

    return kernels


def _scaled_kernels():
    from . import scaled_kernels

    return scaled_kernels


@lru_cache(maxsize=1)
def _f16_table() -> np.ndarray:
    t = np.arange(65536, dtype=np.uint16).view(np.float16).astype(_F)
    t.setflags(write=False)
    return t


def kernel_view(x: np.ndarray) -> np.ndarray:
    """The array as the numba kernels take it (the one rule for every cpu kernel, the vector
    codebooks' too): float32 as is; float16 bits as uint16; bfloat16 bits as int16 (see kernels.py)."""
    if x.dtype.name == "float16":
        return x.view(np.uint16)
    if x.dtype.name == "bfloat16":
        return x.view(np.int16)
    return x


@lru_cache(maxsize=64)
def _tables(code_bytes: bytes):
    """The encoder laid out for the kernels: 15 register bounds (+inf padded) for tables of
    at most 16 entries, else the bounds padded with +inf to a power of two less one."""
    enc = F.code_encoder(np.frombuffer(code_bytes, dtype=_F))
    bounds, order = enc.bounds, enc.order.astype(np.uint8)
    k = order.size
    b15: np.ndarray | None
    o16: np.ndarray | None
    if k <= 16:
        b15 = np.full(15, np.inf, dtype=_F)
        b15[: bounds.size] = bounds
        o16 = np.zeros(16, dtype=np.uint8)
        o16[:k] = order
        identity = bool(np.array_equal(order, np.arange(k)))
    else:
        b15 = o16 = None
        identity = False
    nb_pow2 = 1 << max(1, (k - 1).bit_length())
    bp = np.full(nb_pow2 - 1, np.inf, dtype=_F)
    bp[: bounds.size] = bounds
    op = np.zeros(nb_pow2, dtype=np.uint8)
    op[:k] = order
    for t in (b15, o16, bp, op):   # cached: every caller's
        if t is not None:
            t.setflags(write=False)
    return b15, o16, identity, bp, nb_pow2, op, enc.zero_index


class NumbaBackend(Backend, name="cpu"):
    """numba, ``parallel=True``: all cores, compiled once and cached."""

    auto = True
    scaled_layouts = True

    def unavailable(self) -> str | None:
        return unavailable()

    def quantize_blocks(self, x: Any, code: np.ndarray, bits: int,
                        block_size: int) -> tuple[Any, Any]:
        K = _kernels()
        b15, o16, identity, bp, nb_pow2, op, zero = _tables(np.ascontiguousarray(code, _F).tobytes())
        xv = kernel_view(x.reshape(-1))
        n = xv.size
        packed = np.empty(F.packed_length(n, bits), dtype=np.uint8)
        absmax = np.empty(F.n_blocks(n, block_size), dtype=_F)
        if bits == 4 and b15 is not None:
            K.quantize_4bit_small(xv, _f16_table(), b15, o16, identity, block_size, packed, absmax)
        else:
            K.quantize_generic(xv, _f16_table(), bp, nb_pow2, op, bits, zero, block_size, packed, absmax)
        return packed, absmax

    def dequantize_blocks(self, packed: Any, absmax: Any, code: np.ndarray, bits: int,
                          block_size: int, n: int, out_dtype: np.dtype) -> Any:
        K = _kernels()
        table = F.decode_table(code, bits)
        out = np.empty(n, dtype=out_dtype)
        ov = kernel_view(out)
        packed = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)
        absmax = np.ascontiguousarray(absmax, dtype=_F).reshape(-1)
        if bits == 4:
            K.dequantize_4bit(packed, absmax, table, block_size, n, ov)
        else:
            K.dequantize_generic(packed, absmax, table, bits, block_size, n, ov)
        return out

    def sanitize_nonfinite(self, x: Any, block_size: int) -> Any:
        flat = x.reshape(-1)
        bits = flat.view(np.uint32 if flat.dtype.itemsize == 4 else np.uint16)
        out = np.empty_like(bits)
        sign, inf = F.SIGN_INF_BITS[flat.dtype.name]
        _kernels().sanitize_bits(bits, sign, inf, block_size, out)
        return out.view(flat.dtype)

    def _error_chunks(self, x, xhat):
        from ..sums import CHUNK, n_chunks

        xv = kernel_view(np.ascontiguousarray(x).reshape(-1))
        hv = xv if xhat is None else kernel_view(np.ascontiguousarray(xhat).reshape(-1))
        out = np.empty((2, n_chunks(xv.size)), dtype=np.float64)
        _kernels().error_chunks(xv, hv, xhat is not None, _f16_table(), CHUNK, out)
        return out

    def quantize_nested(self, absmax: Any, offset: np.float32) -> tuple[np.ndarray, np.ndarray]:
        d = np.ascontiguousarray(absmax - np.float32(offset), dtype=_F).reshape(-1)
        q = np.empty(d.size, dtype=np.uint8)
        nabs = np.empty(F.n_blocks(d.size, NESTED_BLOCKSIZE), dtype=_F)
        _kernels().quantize_nested_lut(d, nested_lut(), NESTED_BLOCKSIZE, q, nabs)
        return q, nabs

    # ------------------------------------------------------------- the scaled layout
    def scaled_amax(self, x: Any, block_size: int) -> Any:
        xv = kernel_view(x.reshape(-1))
        amax = np.empty(F.n_blocks(xv.size, block_size), dtype=_F)
        _scaled_kernels().scaled_amax(xv, _f16_table(), block_size, amax)
        return amax

    def scaled_scales(self, amax: Any, rule: Any, qmax: float, tensor_scale: Any = None,
                      need_scale: bool = False) -> tuple[Any, Any, bool, Any]:
        st = step_table(rule, qmax, tensor_scale)
        a = np.ascontiguousarray(amax, dtype=_F).reshape(-1)
        idx = np.empty(a.size, dtype=np.int64)
        _scaled_kernels().step_index(a.view(np.uint32), st.starts, st.buckets, BUCKET_SHIFT, idx)
        if not st.valid[idx].all():   # the rule raises its own error
            return super().scaled_scales(a, rule, qmax, tensor_scale, need_scale)
        return st.stored[idx], st.factor[idx], st.divide, st.scale[idx] if need_scale else None

    def scaled_encode(self, x: Any, factor: Any, divide: bool, table: np.ndarray,
                      block_size: int) -> Any:
        enc = L.scaled_encoder(table)
        mids, up, pos, neg = enc.padded()
        xv = kernel_view(x.reshape(-1))
        packed = np.empty(L.packed_length(xv.size), dtype=np.uint8)
        _scaled_kernels().scaled_encode(xv, _f16_table(), np.ascontiguousarray(factor, _F),
                                        bool(divide), mids, up, pos, neg,
                                        np.int64(enc.zero_index), block_size, packed)
        return packed

    def scaled_errors(self, x: Any, factor: Any, divide: bool, scale: Any, table: np.ndarray,
                      block_size: int, loss: str) -> Any:
        # one pass, encode and decode fused: no codes, decoded values or float64 terms of the tensor
        enc = L.scaled_encoder(table)
        mids, up, pos, neg = enc.padded()
        xv = kernel_view(x.reshape(-1))
        out = np.empty(F.n_blocks(xv.size, block_size))
        _scaled_kernels().scaled_errors(xv, _f16_table(), np.ascontiguousarray(factor, _F), bool(divide),
                                        mids, up, pos, neg, F.decode_table(table, L.SCALED_BITS),
                                        np.ascontiguousarray(scale, _F).reshape(-1), loss == "l2", block_size, out)
        return out

    def scaled_decode(self, packed: Any, scale: Any, table: np.ndarray, block_size: int,
                      n: int, out_dtype: np.dtype) -> Any:
        out = np.empty(n, dtype=out_dtype)
        _scaled_kernels().scaled_decode(np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1),
                                        np.ascontiguousarray(scale, _F).reshape(-1),
                                        F.decode_table(table, L.SCALED_BITS), block_size, n,
                                        kernel_view(out))
        return out
