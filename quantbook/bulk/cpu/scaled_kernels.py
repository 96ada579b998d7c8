"""numba kernels of the scaled layout (quantbook/bulk/layouts.py, docs/scales.md).

They compute only the element-wise parts: block maxima, scaling by the rule's per-block
factor and encoding, decoding.  The scale rule itself (stored scales, factors) runs in numpy
on the block maxima, in one place (quantbook.scales).  tests/test_layouts_torchao.py checks
the bytes against the numpy reference.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .kernels import _block_absmax, _load, _store


@njit(parallel=True, cache=True)
def scaled_amax(x, f16tab, blocksize, amax):
    """``amax[b] = max |x|`` over block ``b``; NaN when the block holds NaN/Inf."""
    n = x.size
    for b in prange(amax.size):
        amax[b] = _block_absmax(x, b * blocksize, min((b + 1) * blocksize, n), f16tab)


@njit(cache=True)
def _encode_one(v, f, divide, mids, up, pos, neg):
    y = v / f if divide else v * f
    r = 0
    for k in range(15):
        r += 1 if mids[k] < y else 0
    if r < 15 and y == mids[r] and up[r]:
        r += 1
    if np.float32(y).view(np.uint32) >> 31:
        return neg[r]
    return pos[r]


@njit(parallel=True, cache=True)
def scaled_encode(x, f16tab, factor, divide, mids, up, pos, neg, pad, blocksize, packed):
    """Two codes a byte, the first in the low nibble; a block size is even, so a byte never
    straddles two blocks."""
    n = x.size
    for j in prange(packed.size):
        i = 2 * j
        f = factor[i // blocksize]
        lo = _encode_one(_load(x, i, f16tab), f, divide, mids, up, pos, neg)
        hi = pad
        if i + 1 < n:
            hi = _encode_one(_load(x, i + 1, f16tab), f, divide, mids, up, pos, neg)
        packed[j] = np.uint8(lo | (hi << 4))


@njit(parallel=True, cache=True)
def scaled_decode(packed, scale, table, blocksize, n, out):
    """``out[i] = table[code] * scale[i // B]`` (float32 product, then the output type)."""
    for j in prange(packed.size):
        i = 2 * j
        p = np.int64(packed[j])
        s = scale[i // blocksize]
        _store(out, i, table[p & 15] * s)
        if i + 1 < n:
            _store(out, i + 1, table[p >> 4] * s)
