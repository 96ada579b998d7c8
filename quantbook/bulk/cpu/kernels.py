"""numba kernels of the bulk block-wise format (``backend="cpu"``).

They implement exactly the rules of :mod:`quantbook.bulk.format` and must return the bytes of
the numpy reference; tests/test_conformance.py checks that.

Encoding: for codebooks of at most 16 entries the rank ``#{bounds < y}`` is computed as a sum
of 15 comparisons against bounds held in registers (``+inf`` padding for shorter tables) —
the same count as the encoder's ``searchsorted(..., side="left")``, so the bytes are equal
by construction: no search, no distance ties to fix up, and LLVM vectorises it over the
elements of a block.  Larger tables (5..8 bits) use a branch-free binary search over the
bounds padded with ``+inf`` to ``2**bits - 1`` entries, which yields the same count.

Speed notes: the block absmax is an integer max over the magnitude bits (exact for
non-negative floats; a NaN/Inf shows up as bits >= 0x7F800000); blocks are accessed through
slices so indices are provably non-negative (numba's negative-index wraparound otherwise
turns the vector loads into gathers).

float16 input is read through a 65536-entry float32 table (exact); bfloat16 by a 16-bit shift.
A table read is a gather, which keeps LLVM from vectorising the loop it is in, so the 4-bit
kernel widens a float16 block into a float32 buffer first and compares from there
(docs/benchmarks.md).
float16/bfloat16 output is rounded to nearest even from the float32 product in integer
arithmetic (bit-identical to numpy / ml_dtypes ``astype``).
"""

from __future__ import annotations

import numpy as np
from numba import prange, types
from numba.extending import overload

from ...numerics.kernel_cache import cached_njit
from ...numerics.parallel import parallel_njit
from ..format import TINY as _TINY


# Input/output element types are told apart by the array dtype (numba has no float16):
# float32 arrays hold float32, uint16 arrays hold float16 bits, int16 arrays hold bfloat16 bits.


def _load(x, i, f16tab):  # pragma: no cover - replaced by the overload below inside numba
    raise NotImplementedError


def _ld_f32(x, i, f16tab):
    return x[i]


def _ld_f16(x, i, f16tab):
    return f16tab[x[i]]


def _ld_bf16(x, i, f16tab):
    u = np.int64(x[i]) & 0xFFFF
    return np.uint32(u << 16).view(np.float32)  # bfloat16 bits are the high half of float32


@overload(_load)
def _load_impl(x, i, f16tab):
    dt = x.dtype
    if dt == types.float32 or dt == types.float64:   # float64: only the error sums read it
        return _ld_f32
    if dt == types.uint16:
        return _ld_f16
    if dt == types.int16:
        return _ld_bf16
    return None


def _gathers(x):  # pragma: no cover - replaced by the overload below inside numba
    raise NotImplementedError


@overload(_gathers)
def _gathers_impl(x):
    """Whether loading ``x`` is a table gather (float16), a compile-time constant: a loop
    with a gather in it is not vectorised, so such values are widened into a buffer first."""
    gathers = x.dtype == types.uint16
    return lambda x: gathers


@cached_njit()
def _rank_bsearch(y, b, nb_pow2):
    # b has nb_pow2 - 1 sorted bounds padded with +inf; count of b[k] < y
    pos = 0
    step = nb_pow2 >> 1
    while step > 0:
        pos += step if b[pos + step - 1] < y else 0   # a select, not a branch to mispredict
        step >>= 1
    return pos


@cached_njit()
def _scaled(v, inv, s, division):
    y = v / s if division else v * inv
    if y > np.float32(1.0):
        y = np.float32(1.0)
    elif y < np.float32(-1.0):
        y = np.float32(-1.0)
    return y


@cached_njit()
def _block_absmax(x, start, stop, f16tab):
    m = np.float32(0.0)
    chk = np.float32(0.0)
    for i in range(start, stop):
        v = _load(x, i, f16tab)
        a = abs(v)
        chk += v - v  # NaN as soon as one value is not finite
        if a > m:
            m = a
    if chk != np.float32(0.0):
        return np.float32(np.nan)
    return m


@cached_njit()
def _rank15_scalar(y, b):
    r = 0
    for k in range(15):
        r += 1 if b[k] < y else 0
    return r


@parallel_njit()
def quantize_4bit_small(x, f16tab, bounds15, order, identity, blocksize, packed, absmax):
    """Codebooks with <= 16 entries and 4-bit packing (two codes per byte, first high).

    Per block: absmax as an integer max over the magnitude bits (exact for non-negative
    floats, and a non-finite value shows up as bits >= 0x7F800000), then a vectorisable loop
    ``rank = sum_k (bounds[k] < y)`` into a small buffer, then packing.
    """
    n = x.size
    full = n // blocksize
    half = blocksize // 2
    per_task = max(1, 16384 // blocksize)
    ntask = (full + per_task - 1) // per_task
    b0, b1, b2, b3, b4 = bounds15[0], bounds15[1], bounds15[2], bounds15[3], bounds15[4]
    b5, b6, b7, b8, b9 = bounds15[5], bounds15[6], bounds15[7], bounds15[8], bounds15[9]
    b10, b11, b12, b13, b14 = bounds15[10], bounds15[11], bounds15[12], bounds15[13], bounds15[14]
    one = np.float32(1.0)
    for t in prange(ntask):
        buf = np.empty(blocksize, dtype=np.int32)
        fb = np.empty(blocksize if _gathers(x) else 0, dtype=np.float32)
        for blk in range(t * per_task, min(full, (t + 1) * per_task)):
            start = blk * blocksize
            # slices keep indices provably non-negative: no wraparound code, plain vector loads
            xb = x[start:start + blocksize]
            mb = np.int32(0)
            for i in range(blocksize):
                v = _load(xb, i, f16tab)
                if _gathers(x):
                    fb[i] = v
                u = np.float32(v).view(np.int32) & np.int32(0x7FFFFFFF)
                mb = max(mb, u)
            if mb >= np.int32(0x7F800000):
                absmax[blk] = np.float32(np.nan)
                continue
            m = np.int32(mb).view(np.float32)
            absmax[blk] = m
            s = m if m > _TINY else _TINY
            inv = one / s
            for i in range(blocksize):
                y = (fb[i] if _gathers(x) else _load(xb, i, f16tab)) * inv
                y = min(max(y, -one), one)
                buf[i] = ((b0 < y) + (b1 < y) + (b2 < y) + (b3 < y) + (b4 < y) + (b5 < y) + (b6 < y) + (b7 < y)
                          + (b8 < y) + (b9 < y) + (b10 < y) + (b11 < y) + (b12 < y) + (b13 < y) + (b14 < y))
            pb = packed[blk * half:(blk + 1) * half]
            if identity:
                for j in range(half):
                    pb[j] = np.uint8((buf[2 * j] << 4) | buf[2 * j + 1])
            else:
                for j in range(half):
                    pb[j] = np.uint8((order[buf[2 * j]] << 4) | order[buf[2 * j + 1]])
    rem = n - full * blocksize
    if rem:
        start = full * blocksize
        m = _block_absmax(x, start, n, f16tab)
        s = m if m > _TINY else _TINY
        absmax[full] = s if m == m else m  # bitsandbytes stores the clamped partial-block value
        zero_code = order[_rank15_scalar(np.float32(0.0), bounds15)]
        o = start // 2
        for j in range((rem + 1) // 2):
            i0 = start + 2 * j
            y0 = _scaled(_load(x, i0, f16tab), s, s, True)
            c1 = zero_code
            if i0 + 1 < n:
                y1 = _scaled(_load(x, i0 + 1, f16tab), s, s, True)
                c1 = order[_rank15_scalar(y1, bounds15)]
            packed[o + j] = np.uint8((order[_rank15_scalar(y0, bounds15)] << 4) | c1)


@parallel_njit()
def quantize_generic(x, f16tab, bounds, nb_pow2, order, bits, zero_code, blocksize,
                     packed, absmax):
    """Any codebook of 1..8 bits; bounds padded with +inf to ``nb_pow2 - 1`` entries.

    1/2/4 bits: 8/bits codes per byte, first element in the most significant bits;
    other widths: one byte per code.
    """
    n = x.size
    nblocks = (n + blocksize - 1) // blocksize
    per = 8 // bits if bits in (1, 2, 4) else 1
    for blk in prange(nblocks):
        start = blk * blocksize
        stop = min(start + blocksize, n)
        m = _block_absmax(x, start, stop, f16tab)
        s = m if m > _TINY else _TINY
        partial = stop - start < blocksize
        # bitsandbytes stores the clamped value for the partial last block; NaN stays NaN
        # (the api reports non-finite blocks from absmax)
        absmax[blk] = s if (partial and m == m) else m
        inv = np.float32(1.0) / s
        if per == 1:
            xb = x[start:stop]
            pb = packed[start:stop]
            for i in range(stop - start):
                y = _scaled(_load(xb, i, f16tab), inv, s, partial)
                pb[i] = order[_rank_bsearch(y, bounds, nb_pow2)]
        else:
            nbytes = (stop - start + per - 1) // per
            o = start // per
            for j in range(nbytes):
                byte = 0
                for k in range(per):
                    i = start + j * per + k
                    c = zero_code
                    if i < stop:
                        y = _scaled(_load(x, i, f16tab), inv, s, partial)
                        c = order[_rank_bsearch(y, bounds, nb_pow2)]
                    byte |= c << (8 - bits * (k + 1))
                packed[o + j] = np.uint8(byte)


@cached_njit()
def _f32_to_f16_bits(v):
    """float32 -> IEEE half bits, round to nearest even (numpy's astype); every case is
    computed and one selected, so that the loops calling it have no branch."""
    u = np.int64(np.float32(v).view(np.uint32))
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    # a normal half: exponent rebiased by 112, then + 0xFFF + the kept lsb carries exactly when
    # the dropped 13 bits round up (to even); a carry out of the top gives 0x7C00, inf
    normal = (a - 0x38000000 + 0xFFF + ((a >> 13) & 1)) >> 13
    # a subnormal half or zero: adding 0.5, whose ulp is 2**-24, rounds |v| to the half grid
    f = np.float32(np.float32(abs(np.float32(v))) + np.float32(0.5))
    sub = np.int64(f.view(np.uint32)) - 0x3F000000
    h = sub if a < 0x38800000 else normal
    h = 0x7C00 if a >= 0x47800000 else h   # from 65536 on (65520 to 65536 carry to inf above)
    h = 0x7E00 if a > 0x7F800000 else h    # NaN
    return np.uint16(sign | h)


@cached_njit()
def _f64_to_f16_bits(d):
    """float64 -> IEEE half bits, round to nearest even as numpy's astype rounds a float64 (once:
    through a float32 rounded to nearest it would round twice).  The float32 is rounded to odd
    instead (toward zero, the last bit set when inexact), which keeps what decides the second
    rounding: 24 bits >= the half's 11 + 2 (Boldo and Melquiond, IEEE Trans. Comput. 57(4), 2008)."""
    f = np.float32(d)
    w = np.float64(f)
    if w != d and d == d:
        u = np.int64(f.view(np.uint32))
        if abs(w) > abs(d):   # rounded away from zero (to inf too): one float32 step back toward it
            u -= 1
        f = np.uint32(u | 1).view(np.float32)
    return _f32_to_f16_bits(f)


@cached_njit()
def _f32_to_bf16_bits(v):
    """float32 -> bfloat16 bits, round to nearest even (ml_dtypes' astype)."""
    u = np.int64(np.float32(v).view(np.uint32))
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return np.uint16((u >> 16) | 0x40)
    u = u + 0x7FFF + ((u >> 16) & 1)
    return np.uint16((u >> 16) & 0xFFFF)


def _store(out, i, v):  # pragma: no cover - replaced by the overload below inside numba
    raise NotImplementedError


def _st_f32(out, i, v):
    out[i] = v


def _st_f16(out, i, v):
    out[i] = _f32_to_f16_bits(v)


def _st_bf16(out, i, v):
    h = np.int64(_f32_to_bf16_bits(v))
    out[i] = h - 65536 if h >= 32768 else h


@overload(_store)
def _store_impl(out, i, v):
    dt = out.dtype
    if dt == types.float32:
        return _st_f32
    if dt == types.uint16:
        return _st_f16
    if dt == types.int16:
        return _st_bf16
    return None


@parallel_njit()
def dequantize_4bit(packed, absmax, code, blocksize, n, out):
    """Two codes per byte (first in the high nibble); ``out[i] = code[c] * absmax[i // B]``."""
    nblocks = (n + blocksize - 1) // blocksize
    half = blocksize // 2
    for blk in prange(nblocks):
        s = absmax[blk]
        start = blk * blocksize
        stop = min(start + blocksize, n)
        if stop - start == blocksize:
            pb = packed[blk * half:(blk + 1) * half]
            ob = out[start:stop]
            for j in range(half):
                p = np.int64(pb[j])
                _store(ob, 2 * j, code[p >> 4] * s)
                _store(ob, 2 * j + 1, code[p & 15] * s)
        else:
            for i in range(start, stop):
                p = np.int64(packed[i >> 1])
                c = (p >> 4) if (i & 1) == 0 else (p & 15)
                _store(out, i, code[c] * s)


@parallel_njit()
def dequantize_generic(packed, absmax, code, bits, blocksize, n, out):
    """Any width: 1/2/4 bits packed (first element in the most significant bits), else bytes."""
    nblocks = (n + blocksize - 1) // blocksize
    per = 8 // bits if bits in (1, 2, 4) else 1
    mask = (1 << bits) - 1
    for blk in prange(nblocks):
        s = absmax[blk]
        start = blk * blocksize
        stop = min(start + blocksize, n)
        ob = out[start:stop]
        if per == 1:
            pb = packed[start:stop]
            for i in range(stop - start):
                _store(ob, i, code[np.int64(pb[i])] * s)
        else:
            for i in range(start, stop):
                p = np.int64(packed[i // per])
                c = (p >> (8 - bits * (i % per + 1))) & mask
                _store(ob, i - start, code[c] * s)


# ------------------------------------------------------------------------- nested statistics
@parallel_njit()
def quantize_nested_lut(d, lut, blocksize, q, nabs):
    n = d.size
    nb = (n + blocksize - 1) // blocksize
    for b in prange(nb):
        start = b * blocksize
        stop = min(start + blocksize, n)
        m = np.float32(0.0)
        for i in range(start, stop):
            a = abs(d[i])
            if a > m:
                m = a
        nabs[b] = m
        if m == np.float32(0.0):
            for i in range(start, stop):
                q[i] = 0
            continue
        inv = np.float32(1.0) / m
        for i in range(start, stop):
            v = d[i] * inv
            if v != v:
                v = np.float32(-1.0)
            if v < np.float32(-1.0):
                v = np.float32(-1.0)
            if v > np.float32(1.0):
                v = np.float32(1.0)
            t = np.float32(np.float32(np.float32(np.float32(v + np.float32(1.0)) * np.float32(0.5))
                                      * np.float32(65535.0)) + np.float32(0.5))
            q[i] = lut[np.int64(t)]


# ------------------------------------------------------------------------- allow_nonfinite
@parallel_njit()
def sanitize_bits(u, sign, inf, blocksize, out):
    """format.sanitize_nonfinite on the values' bits ``u`` (uint32 or uint16; ``sign``,
    ``inf``: format.SIGN_INF_BITS of the dtype) into ``out``."""
    n = u.size
    nb = (n + blocksize - 1) // blocksize
    low = sign - 1
    for b in prange(nb):
        start = b * blocksize
        stop = min(start + blocksize, n)
        ub = u[start:stop]   # slices: provably in bounds, so the loops vectorise
        ob = out[start:stop]
        m = 0
        for i in range(ub.size):
            a = np.int64(ub[i]) & low
            m = max(m, a if a < inf else 0)
        for i in range(ub.size):
            v = np.int64(ub[i])
            a = v & low
            ob[i] = v if a < inf else ((v & sign) | m if a == inf else 0)


@parallel_njit()
def error_chunks(x, xhat, has_xhat, f16tab, chunk, out):
    """The runs' sums of :mod:`quantbook.bulk.sums`: ``out[0, c]`` and ``out[1, c]`` are
    ``Σe²`` and ``Σ|e|`` over run ``c``, serially (``e = xhat - x``, or ``-x``)."""
    n = x.size
    for c in prange(out.shape[1]):
        s2 = 0.0
        s1 = 0.0
        for i in range(c * chunk, min(n, (c + 1) * chunk)):
            v = np.float64(_load(x, i, f16tab))
            e = np.float64(_load(xhat, i, f16tab)) - v if has_xhat else -v
            s2 += e * e
            s1 += abs(e)
        out[0, c] = s2
        out[1, c] = s1
