"""Float64 sums over whole tensors in one fixed order, the same on every machine.

The terms are formed element by element in float64 (``e = float64(xhat) - float64(x)``, then
``e*e`` and ``|e|``; or ``x*x``).  Each run of :data:`CHUNK` consecutive elements is summed
serially, and the chunks' sums are then added serially, in order.  Chunks run in parallel
(numba), yet the result does not depend on the number of threads, as a BLAS dot product's
does.  float16 and bfloat16 arrays are widened to float32 first (exact).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["CHUNK", "error_sums_ordered", "sum_squares_ordered", "kernel_input"]

#: elements a serial partial sum covers
CHUNK = 4096


def kernel_input(a) -> np.ndarray:
    """``a`` flat, as float32 or float64 (16-bit types widened: exact)."""
    a = np.asarray(a)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32)
    return np.ascontiguousarray(a).reshape(-1)


@njit(parallel=True, cache=True)
def _error_chunks(x, xhat, out):
    n = x.size
    for c in prange(out.shape[1]):
        s2 = 0.0
        s1 = 0.0
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            e = np.float64(xhat[i]) - np.float64(x[i])
            s2 += e * e
            s1 += abs(e)
        out[0, c] = s2
        out[1, c] = s1


@njit(parallel=True, cache=True)
def _square_chunks(x, out):
    n = x.size
    for c in prange(out.shape[0]):
        s2 = 0.0
        for i in range(c * CHUNK, min(n, (c + 1) * CHUNK)):
            v = np.float64(x[i])
            s2 += v * v
        out[c] = s2


@njit(cache=True)
def _in_order(a):
    total = 0.0
    for v in a:
        total += v
    return total


def error_sums_ordered(x, xhat) -> tuple[float, float]:
    """``(Σe², Σ|e|)`` of ``e = xhat - x`` (equal sizes; any float dtypes), in the fixed order."""
    xk, hk = kernel_input(x), kernel_input(xhat)
    if xk.size != hk.size:
        raise ValueError(f"x and xhat differ in size: {xk.size} and {hk.size}")
    out = np.empty((2, -(-xk.size // CHUNK)), np.float64)   # each chunk's Σe² and Σ|e|
    _error_chunks(xk, hk, out)
    return float(_in_order(out[0])), float(_in_order(out[1]))


def sum_squares_ordered(x) -> float:
    """``Σx²`` in the fixed order."""
    xk = kernel_input(x)
    out = np.empty(-(-xk.size // CHUNK), np.float64)
    _square_chunks(xk, out)
    return float(_in_order(out))
