"""The ``numpy`` backend: the readable reference computation of :mod:`quantbook.bulk.format`.

Every other backend must return exactly these bytes (tests/test_conformance.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from ..numerics.fpstate import ignore_underflow
from . import format as F
from . import layouts as L
from .backend import Backend

__all__ = ["NumpyBackend", "quantize_reference", "dequantize_reference", "scaled_amax_reference",
           "scaled_encode_reference", "scaled_decode_reference"]

_F = np.float32


def quantize_reference(x: np.ndarray, code: np.ndarray, bits: int,
                       block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(packed uint8, absmax float32)`` of a float array (any shape, flattened in C order)."""
    enc = F.code_encoder(code)
    y, absmax = F.scale_blocks(np.asarray(x).reshape(-1).astype(_F), block_size)
    return F.pack_codes(enc(y), bits, enc.zero_index), absmax


@ignore_underflow
def dequantize_reference(packed: np.ndarray, absmax: np.ndarray, code: np.ndarray, bits: int,
                         block_size: int, n: int, out_dtype: DTypeLike) -> np.ndarray:
    """Flat array of ``n`` values: ``float32(table[idx] * absmax)`` cast to ``out_dtype``."""
    idx = F.unpack_codes(packed, bits, n)
    scale = np.repeat(np.asarray(absmax, dtype=_F), block_size)[:n]
    return (F.decode_table(code, bits)[idx] * scale).astype(out_dtype)


def scaled_amax_reference(x: np.ndarray, block_size: int) -> np.ndarray:
    """Per-block ``max |x|`` (float32) of the scaled layout; NaN for a block holding NaN/Inf."""
    xf = np.asarray(x).reshape(-1).astype(_F)
    nb = F.n_blocks(xf.size, block_size)
    pad = np.zeros(nb * block_size, dtype=_F)
    pad[: xf.size] = xf
    blocks = pad.reshape(nb, block_size)
    amax = np.abs(blocks).max(axis=1)
    return np.where(np.isfinite(blocks).all(axis=1), amax, _F(np.nan)).astype(_F)


@ignore_underflow
def scaled_encode_reference(x: np.ndarray, factor: np.ndarray, divide: bool, table: np.ndarray,
                            block_size: int) -> np.ndarray:
    """Packed codes of the scaled layout: ``y = x / f`` or ``x * f`` per block (float32)."""
    xf = np.asarray(x).reshape(-1).astype(_F)
    f = np.repeat(np.asarray(factor, dtype=_F), block_size)[: xf.size]
    y = (xf / f if divide else xf * f).astype(_F)
    enc = L.scaled_encoder(table)
    return L.pack_low_first(enc(y), enc.zero_index)


@ignore_underflow
def scaled_decode_reference(packed: np.ndarray, scale: np.ndarray, table: np.ndarray,
                            block_size: int, n: int, out_dtype: DTypeLike) -> np.ndarray:
    """``float32(table[code] * scale[block])`` cast to ``out_dtype``; NaN for codes beyond
    the table."""
    idx = L.unpack_low_first(packed, n)
    s = np.repeat(np.asarray(scale, dtype=_F), block_size)[:n]
    with np.errstate(over="ignore"):  # near float32's max a rounded-up code overflows to inf
        return (F.decode_table(table, L.SCALED_BITS)[idx] * s).astype(_F).astype(out_dtype)


class NumpyBackend(Backend, name="numpy"):
    """Plain numpy; slow, but every line is a rule of the format.  The functions above take a
    whole array; the backend runs them on :func:`~quantbook.bulk.format.pieces` of whole
    blocks (the same bytes), so that their temporaries do not grow with the tensor."""

    scaled_layouts = True

    def quantize_blocks(self, x: Any, code: np.ndarray, bits: int,
                        block_size: int) -> tuple[Any, Any]:
        x = x.reshape(-1)
        packed = np.empty(F.packed_length(x.size, bits), dtype=np.uint8)
        absmax = np.empty(F.n_blocks(x.size, block_size), dtype=_F)
        for s in F.pieces(x.size, block_size):
            packed[_bytes(s, bits)], absmax[F.block_slice(s, block_size)] = \
                quantize_reference(x[s], code, bits, block_size)
        return packed, absmax

    def dequantize_blocks(self, packed: Any, absmax: Any, code: np.ndarray, bits: int,
                          block_size: int, n: int, out_dtype: np.dtype) -> Any:
        absmax = np.asarray(absmax).reshape(-1)
        out = np.empty(n, dtype=out_dtype)
        for s in F.pieces(n, block_size):
            out[s] = dequantize_reference(packed[_bytes(s, bits)], absmax[F.block_slice(s, block_size)], code,
                                          bits, block_size, s.stop - s.start, out_dtype)
        return out

    def sanitize_nonfinite(self, x: Any, block_size: int) -> Any:
        x = x.reshape(-1)
        out = np.empty(x.size, dtype=x.dtype)
        for s in F.pieces(x.size, block_size):   # the largest finite magnitude is per block
            out[s] = F.sanitize_nonfinite(x[s], block_size)
        return out

    def scaled_amax(self, x: Any, block_size: int) -> Any:
        x = x.reshape(-1)
        amax = np.empty(F.n_blocks(x.size, block_size), dtype=_F)
        for s in F.pieces(x.size, block_size):
            amax[F.block_slice(s, block_size)] = scaled_amax_reference(x[s], block_size)
        return amax

    def scaled_encode(self, x: Any, factor: Any, divide: bool, table: np.ndarray,
                      block_size: int) -> Any:
        x, factor = x.reshape(-1), np.asarray(factor).reshape(-1)
        packed = np.empty(L.packed_length(x.size), dtype=np.uint8)
        for s in F.pieces(x.size, block_size):
            packed[_bytes(s, L.SCALED_BITS)] = scaled_encode_reference(x[s], factor[F.block_slice(s, block_size)],
                                                                       divide, table, block_size)
        return packed

    def scaled_decode(self, packed: Any, scale: Any, table: np.ndarray, block_size: int,
                      n: int, out_dtype: np.dtype) -> Any:
        scale = np.asarray(scale).reshape(-1)
        out = np.empty(n, dtype=out_dtype)
        for s in F.pieces(n, block_size):
            out[s] = scaled_decode_reference(packed[_bytes(s, L.SCALED_BITS)], scale[F.block_slice(s, block_size)],
                                             table, block_size, s.stop - s.start, out_dtype)
        return out


def _bytes(piece: slice, bits: int) -> slice:
    """The packed bytes of a piece of whole blocks (a byte never straddles two blocks)."""
    return slice(F.packed_length(piece.start, bits), F.packed_length(piece.stop, bits))
