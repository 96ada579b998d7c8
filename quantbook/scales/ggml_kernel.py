"""The numba kernel of :func:`.ggml.ggml_search`: ggml's scale search as stated in
:mod:`.ggml`, parallel over blocks.  Its functions are defined at module level so that
numba's on-disk cache finds them again in the next process (a kernel defined inside a
function is a new closure each time, compiled anew and cached anew)."""

from __future__ import annotations

import numba
import numpy as np

from ..numerics.kernel_cache import cached_njit
from ..numerics.parallel import parallel_njit


@cached_njit(nogil=True, inline="always")
def nearest(a, v):
    """The index of the level nearest ``a`` in the ascending ``v``, a tie going up (:mod:`.ggml`)."""
    n = v.size
    if a <= v[0]:
        return 0
    if a >= v[n - 1]:
        return n - 1
    lo, hi = 0, n - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a < v[mid]:
            hi = mid
        else:
            lo = mid
    return hi - 1 if a - v[hi - 1] < v[hi] - a else hi


@cached_njit(nogil=True, inline="always")
def fit(x, b, idv, v):
    """The sums ``S_qx``, ``S_qq`` of block ``b`` fitted at ``idv`` (:mod:`.ggml`)."""
    sqx, sqq = np.float32(0), np.float32(0)
    for j in range(x.shape[1]):
        k = nearest(idv * x[b, j], v)
        wq = (x[b, j] * x[b, j]) * v[k]
        sqx += wq * x[b, j]
        sqq += wq * v[k]
    return sqx, sqq


@parallel_njit(nogil=True)
def search(x, v, delta, ntry, d_out, q_out):
    """Each block's scale into ``d_out`` and its codes (indices into ``v``) into ``q_out``."""
    nb, bs = x.shape
    zero, one = np.float32(0), np.float32(1)
    for b in numba.prange(nb):
        m, am = zero, zero
        for j in range(bs):
            if abs(x[b, j]) > am:
                am, m = abs(x[b, j]), x[b, j]
        d, idf = zero, zero
        if not am < np.float32(1e-15):
            id0 = one / (-m / v[0] if ntry > 0 else m / v[0])
            sqx, sqq = fit(x, b, id0, v)
            d = sqx / sqq if sqq > zero else zero
            best = d * sqx
            for t in range(-ntry, ntry + 1):
                sqx, sqq = fit(x, b, (v[0] + np.float32(t) * delta) / m, v)
                if sqq > zero and sqx * sqx > best * sqq:
                    d = sqx / sqq
                    best = d * sqx
            # the codes: of the kept scale (search), of the first fit (ggml's reference)
            idf = (one / d if d != zero else zero) if ntry > 0 else id0
        d_out[b] = d
        for j in range(bs):
            q_out[b, j] = nearest(idf * x[b, j], v)
