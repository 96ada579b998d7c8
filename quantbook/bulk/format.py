"""The block-wise byte format: one function per rule of docs/format.md, where the format is
stated (bitsandbytes 0.50.2's CPU ``quantize_4bit`` / ``dequantize_4bit``, measured bit for
bit).  The encoder is :mod:`quantbook.codebooks.encoding`, nested statistics
:mod:`quantbook.bulk.nested`.  Every backend computes exactly these bytes.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from ..codebooks.blocks import MAX_BLOCK, MIN_BLOCK, check_block_size, is_int
from ..codebooks.encoding import Encoder, encoder
from ..numerics.fpstate import ignore_underflow

__all__ = ["TINY", "DTYPES", "MIN_BLOCK", "MAX_BLOCK", "check_block_size", "is_int", "as_scalar", "as_int",
           "check_bits", "nonfinite_error", "finite_nonnegative_bits",
           "check_code_table", "codes_per_byte", "packed_length", "n_blocks", "decode_table",
           "code_encoder", "scale_blocks", "pack_codes", "unpack_codes", "PIECE", "pieces", "block_slice"]

_F = np.float32
#: bitsandbytes divides by ``absmax.clamp(min=1e-38)``: 1e-38 rounded to float32 (a subnormal)
TINY = _F(1e-38)
#: input and output dtypes (bfloat16 through ml_dtypes)
DTYPES = ("float32", "float16", "bfloat16")


def as_scalar(v: Any) -> Any:
    """A 0-d array or tensor (as ``np.savez`` and torch hand back a stored state's fields) as
    its Python value; anything else unchanged."""
    return v.item() if hasattr(v, "item") and getattr(v, "ndim", None) == 0 else v


def as_int(v: Any) -> int:
    """An integer field of a stored state (``from_dict``): an integer, a 0-d array of one, or
    a float that is exactly one (64.0, as some writers store numbers); a ValueError for 64.9,
    which must not be cut to 64, and for a bool."""
    v = as_scalar(v)
    if is_int(v) or isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    raise ValueError(f"not an integer: {v!r}")


def check_bits(bits: Any, table_size: int | None = None) -> int:
    """A code width of 1..8 bits (one byte per code at most) that can index the table."""
    if not is_int(bits) or not 1 <= int(bits) <= 8:
        raise ValueError(f"bits must be an integer from 1 to 8 (one byte per code at most), got {bits!r}")
    bits = int(bits)
    if table_size is not None and table_size > 2**bits:
        raise ValueError(f"a code table of {table_size} entries needs more than {bits} bits "
                         f"(at most {2**bits})")
    return bits


def check_code_table(code: Any, bits: int | None = None) -> np.ndarray:
    """The index→value table as a contiguous float32 vector: 1..2**bits finite entries."""
    c = np.ascontiguousarray(np.asarray(code, dtype=_F)).reshape(-1)
    limit = 256 if bits is None else 2 ** check_bits(bits)
    if not 1 <= c.size <= limit:
        raise ValueError(f"the code table must have 1..{limit} entries, got {c.size}")
    if not np.isfinite(c).all():
        raise ValueError("the code table must be finite (float32)")
    return c


#: dtype name -> (its sign bit, +inf's bits): the bits below the sign bit are a value's
#: magnitude, ordered as the magnitudes, so a magnitude below +inf's is finite, one above it NaN
SIGN_INF_BITS = {"float32": (0x80000000, 0x7F800000), "float16": (0x8000, 0x7C00),
                 "bfloat16": (0x8000, 0x7F80)}


def finite_nonnegative_bits(s: np.ndarray) -> bool:
    """Whether every entry of a native float16/float32 array is finite and non-negative, by
    one integer maximum: those are the floats whose bits lie below +inf's (-0.0 is not).  A
    sufficient test, so a caller checks value by value only when it fails."""
    unsigned = np.dtype(f"u{s.dtype.itemsize}")
    return not s.size or bool(s.view(unsigned).max() < SIGN_INF_BITS[s.dtype.name][1])


def nonfinite_error(scales: np.ndarray, block_size: int, n: int) -> ValueError | None:
    """The error for input with NaN or Inf, found by its non-finite block scales (host
    float32), naming the first bad block; None when every scale is finite."""
    if finite_nonnegative_bits(scales):   # block maxima are never negative: the usual answer
        return None
    bad = np.flatnonzero(~np.isfinite(scales))
    if not bad.size:
        return None
    b = int(bad[0])
    return ValueError(f"x holds NaN or Inf: first in block {b} (elements {b * block_size}.."
                      f"{min((b + 1) * block_size, n) - 1} of the flattened array); "
                      "pass allow_nonfinite=True to quantize NaN as 0 and saturate Inf")


def sanitize_nonfinite(x: np.ndarray, block_size: int) -> np.ndarray:
    """What ``allow_nonfinite=True`` quantizes in place of ``x`` (host, any shape; returned
    flat, in x's dtype): NaN -> +0, +-Inf -> +-(the largest finite ``|value|`` of its block,
    0 in a block with none); every other value unchanged."""
    xf = x.reshape(-1).astype(_F)
    fin = np.isfinite(xf)
    mag = np.where(fin, np.abs(xf), _F(0))
    n = xf.size
    pad = np.zeros(n_blocks(n, block_size) * block_size, dtype=_F)
    pad[:n] = mag
    per_elem = np.repeat(pad.reshape(-1, block_size).max(axis=1), block_size)[:n]
    out = np.where(np.isnan(xf), _F(0), xf)
    out = np.where(np.isposinf(xf), per_elem, out)
    out = np.where(np.isneginf(xf), -per_elem, out)
    return out.astype(x.dtype)


def codes_per_byte(bits: int) -> int:
    """8/bits for 1, 2, 4 bits; one code a byte otherwise."""
    return 8 // bits if bits in (1, 2, 4) else 1


def packed_length(n: int, bits: int) -> int:
    """Bytes that hold ``n`` codes of ``bits`` bits."""
    return -(-int(n) // codes_per_byte(check_bits(bits)))


def n_blocks(n: int, block_size: int) -> int:
    """Blocks of ``block_size`` that hold ``n`` values (the last one may be partial)."""
    return -(-int(n) // int(block_size))


#: values a host computation takes at a time where the rule is per block: its temporaries
#: (float64 included) stay a few MB, not multiples of a multi-GB tensor
PIECE = 1 << 18


def pieces(n: int, unit: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of about :data:`PIECE` values, each a whole number of
    ``unit`` values (a block, a run of sums) but the last: a per-block rule computed piece by
    piece gives what it gives on the whole array."""
    step = max(1, PIECE // int(unit)) * int(unit)
    for start in range(0, int(n), step):
        yield slice(start, min(start + step, int(n)))


def block_slice(piece: slice, block_size: int) -> slice:
    """The blocks (their scales) of a piece of :func:`pieces`."""
    return slice(piece.start // block_size, n_blocks(piece.stop, block_size))


def decode_table(code: Any, bits: int) -> np.ndarray:
    """The code table padded with NaN to every index a stored code can take (``2**bits``
    when packed, 256 for a byte a code), so corrupt bytes decode to NaN, never out of bounds."""
    c = check_code_table(code, bits)
    out = np.full(2**bits if codes_per_byte(bits) > 1 else 256, np.nan, dtype=_F)
    out[: c.size] = c
    return out


def code_encoder(code: Any) -> Encoder:
    """The float32 encoder of a code table (docs/format.md, "Encoder")."""
    return encoder(check_code_table(code), "float32")


# ------------------------------------------------------------------ reference computations
@ignore_underflow
def scale_blocks(xf: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(y, absmax)`` of a flat float32 array: per-block absmax and the clamped scaled values
    (docs/format.md, "Scale").  A block holding NaN/Inf gets a non-finite absmax."""
    n = xf.size
    full, rem = divmod(n, block_size)
    absmax = np.zeros(full + (1 if rem else 0), dtype=_F)
    y = np.empty(n, dtype=_F)
    with np.errstate(invalid="ignore", over="ignore"):
        if full:
            blocks = xf[: full * block_size].reshape(full, block_size)
            absmax[:full] = np.abs(blocks).max(axis=1)
            inv = (_F(1) / np.maximum(absmax[:full], TINY)).astype(_F)
            y[: full * block_size] = (blocks * inv[:, None]).reshape(-1)
        if rem:
            tail = xf[full * block_size:]
            absmax[-1] = np.maximum(np.abs(tail).max(), TINY)  # stored clamped, as bitsandbytes
            y[full * block_size:] = tail / absmax[-1]
    np.clip(y, _F(-1), _F(1), out=y)
    return y, absmax


def pack_codes(idx: np.ndarray, bits: int, pad: int) -> np.ndarray:
    """Pack code indices (docs/format.md, "Packing")."""
    idx = np.asarray(idx, dtype=np.uint8).reshape(-1)
    per = codes_per_byte(bits)
    if per == 1:
        return idx.copy()
    full = np.full(packed_length(idx.size, bits) * per, pad, dtype=np.uint8)
    full[: idx.size] = idx
    groups = full.reshape(-1, per)
    out = np.zeros(groups.shape[0], dtype=np.uint8)
    for k in range(per):
        out |= groups[:, k] << np.uint8(8 - bits * (k + 1))
    return out


def unpack_codes(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``n`` code indices (uint8)."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    per = codes_per_byte(bits)
    if per == 1:
        return packed[:n].copy()
    mask = np.uint8((1 << bits) - 1)
    out = np.empty((packed.size, per), dtype=np.uint8)
    for k in range(per):
        out[:, k] = (packed >> np.uint8(8 - bits * (k + 1))) & mask
    return out.reshape(-1)[:n]
