"""numba kernels of the scaled layout (quantbook/bulk/layouts.py, docs/scales.md).

They compute only the element-wise parts: block maxima, the step of each block in the scale
rule's step table (quantbook/scales/steps.py, built from the rule in numpy), scaling by the
per-block factor and encoding, decoding.  tests/test_layouts_torchao.py checks
the bytes against the numpy reference.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ...numerics.kernel_cache import cached_njit
from ...numerics.parallel import parallel_njit
from .kernels import _block_absmax, _load, _store


@parallel_njit()
def scaled_amax(x, f16tab, blocksize, amax):
    """``amax[b] = max |x|`` over block ``b``; NaN when the block holds NaN/Inf."""
    n = x.size
    for b in prange(amax.size):
        amax[b] = _block_absmax(x, b * blocksize, min((b + 1) * blocksize, n), f16tab)


@parallel_njit()
def step_index(bits, starts, buckets, shift, idx):
    """``idx[b]``: the last ``i`` with ``starts[i] <= bits[b]`` (``starts[0]`` is 0, sorted),
    searched between the steps of ``bits[b]``'s bucket and the next one's."""
    top = buckets.size - 2
    for b in prange(bits.size):
        v = np.int64(bits[b])
        k = min(v >> shift, top)
        lo, hi = np.int64(buckets[k]), np.int64(buckets[k + 1]) + 1
        while hi - lo > 1:
            mid = (lo + hi) >> 1
            if starts[mid] <= v:
                lo = mid
            else:
                hi = mid
        idx[b] = lo


@cached_njit(inline="always")
def _encode_one(v, f, divide, mids, up, pos, neg):
    y = v / f if divide else v * f
    r = 0
    for k in range(15):
        r += mids[k] < y
    if r < 15 and y == mids[r] and up[r]:
        r += 1
    if math.copysign(1.0, y) < 0:   # the sign bit: -0.0 too
        return neg[r]
    return pos[r]


@parallel_njit()
def scaled_encode(x, f16tab, factor, divide, mids, up, pos, neg, pad, blocksize, packed):
    """Two codes a byte, the first in the low nibble; a block size is even, so a byte never
    straddles two blocks.  A thread takes whole blocks (one factor, no index division)."""
    n = x.size
    half = blocksize // 2
    nb = (packed.size + half - 1) // half
    for b in prange(nb):
        f = factor[b]
        for j in range(b * half, min((b + 1) * half, packed.size)):
            i = 2 * j
            lo = _encode_one(_load(x, i, f16tab), f, divide, mids, up, pos, neg)
            hi = pad
            if i + 1 < n:
                hi = _encode_one(_load(x, i + 1, f16tab), f, divide, mids, up, pos, neg)
            packed[j] = np.uint8(lo | (hi << 4))


@parallel_njit()
def scaled_decode(packed, scale, table, blocksize, n, out):
    """``out[i] = table[code] * scale[i // B]`` (float32 product, then the output type); a
    thread takes whole blocks, as in :func:`scaled_encode`."""
    half = blocksize // 2
    nb = (packed.size + half - 1) // half
    for b in prange(nb):
        s = scale[b]
        for j in range(b * half, min((b + 1) * half, packed.size)):
            i = 2 * j
            p = np.int64(packed[j])
            _store(out, i, table[p & 15] * s)
            if i + 1 < n:
                _store(out, i + 1, table[p >> 4] * s)


@parallel_njit()
def scaled_errors(x, f16tab, factor, divide, mids, up, pos, neg, table, scale, l2, blocksize, out):
    """``out[b]``: block ``b``'s float64 sum, in element order, of ``|x - deq|`` or its square
    (quantbook.scales.search.block_errors), ``deq = float32(table[code] * scale[b])`` of the
    code :func:`scaled_encode` gives; no code or decoded value is stored."""
    n = x.size
    for b in prange(out.size):
        f = factor[b]
        s = scale[b]
        acc = 0.0
        for i in range(b * blocksize, min((b + 1) * blocksize, n)):
            v = _load(x, i, f16tab)
            d = abs(np.float64(v) - np.float64(table[_encode_one(v, f, divide, mids, up, pos, neg)] * s))
            acc += d * d if l2 else d
        out[b] = acc
