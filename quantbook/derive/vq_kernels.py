"""Numba kernels of the vector Lloyd iteration: exact nearest-point assignment with pruning.

The points are kept sorted by their first coordinate.  For a vector ``x`` the search starts
at the points whose first coordinate is nearest to ``x[0]`` and walks outwards, always to the
side with the smaller first-coordinate gap ``g``; it stops once ``g**2`` exceeds the best
squared distance found, since every point further out is at least that far.  The answer is
exactly the brute-force one (:func:`quantbook.codebooks.vector.nearest_brute`): the same
float64 distance, summed over the coordinates in the same order, and ties to the lowest index.

Work is split into fixed chunks of the sample and each chunk accumulates its own partial
sums; the chunks are combined in order afterwards, so the result does not depend on the
number of threads (the derivation is bit-for-bit reproducible).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..codebooks.vector import cell_candidates
from ..numerics.kernel_cache import cached_njit
from ..numerics.parallel import parallel_njit

__all__ = ["assign_accumulate", "chunk_size", "assign"]


def chunk_size(m: int) -> int:
    """Vectors per chunk for a sample of ``m``: at most 64 chunks, at least 2**14 vectors each."""
    return max(1 << 14, -(-m // 64))


@cached_njit(inline="always")
def _nearest_one(x, i, c, order, c0, n, p):
    x0 = np.float64(x[i, 0])
    # first sorted position with c0 >= x0
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) >> 1
        if c0[mid] < x0:
            lo = mid + 1
        else:
            hi = mid
    left, right = lo - 1, lo
    best = np.inf
    bj = -1
    while left >= 0 or right < n:
        if right >= n or (left >= 0 and x0 - c0[left] <= c0[right] - x0):
            g = x0 - c0[left]
            k = left
            left -= 1
        else:
            g = c0[right] - x0
            k = right
            right += 1
        if g * g > best:
            break
        j = order[k]
        d = 0.0
        for q in range(p):
            t = np.float64(x[i, q]) - c[j, q]
            d += t * t
        if d < best or (d == best and j < bj):
            best = d
            bj = j
    return bj, best


def _assign_accumulate_py(x, c, order, c0, chunk, sums, counts, cell_sse, sse, sse2):
    """For every row of ``x`` (M, P float32) find its nearest row of ``c`` (N, P float64) and
    add, per chunk ``k`` of ``chunk`` rows: the vector to ``sums[k, j]``, 1 to ``counts[k, j]``,
    the squared distance to ``cell_sse[k, j]`` and ``sse[k]``, its square to ``sse2[k]``.
    ``order`` sorts ``c`` by its first coordinate, ``c0`` is that sorted coordinate.
    The output arrays must be zeroed by the caller."""
    m, p = x.shape
    n = c.shape[0]
    nchunks = sums.shape[0]
    for k in prange(nchunks):
        start = k * chunk
        stop = min(m, start + chunk)
        for i in range(start, stop):
            bj, best = _nearest_one(x, i, c, order, c0, n, p)
            for q in range(p):
                sums[k, bj, q] += x[i, q]
            counts[k, bj] += 1
            cell_sse[k, bj] += best
            sse[k] += best
            sse2[k] += best * best


def _assign_py(x, c, order, c0, out):
    """Nearest row of ``c`` for every row of ``x`` into ``out`` (int64), as above."""
    m, p = x.shape
    n = c.shape[0]
    for i in prange(m):
        bj, best = _nearest_one(x, i, c, order, c0, n, p)
        out[i] = bj


# ------------------------------------------------------------------ 2-D cell lists (P = 2)
# A G×G grid over a box around the points; each cell lists every point that can be the
# nearest one to some vector in it (quantbook.codebooks.vector.cell_candidates: the one
# statement of that rule); among the candidates (ascending index) the exact distance and the
# tie rule decide.  Vectors outside the box fall back to the strip search.

def cell_lists(c: np.ndarray):
    """``(lo, w, g, start, cand)``: the grid of candidate lists of the 2-D points ``c``."""
    n = c.shape[0]
    g = int(min(256, max(4, round(4 * np.sqrt(n)))))
    lo = float(np.min(c)) - 1e-3
    hi = float(np.max(c)) + 1e-3
    w = (hi - lo) / g
    counts, cand = cell_candidates(c, (lo, lo), (hi, hi), g)
    start = np.zeros(g * g + 1, dtype=np.int64)
    np.cumsum(counts, out=start[1:])
    return lo, w, g, start, cand


@cached_njit(inline="always")
def _nearest_grid(x, i, c, order, c0, n, lo, w, g, start, cand):
    fa = (np.float64(x[i, 0]) - lo) / w
    fb = (np.float64(x[i, 1]) - lo) / w
    if not (fa >= 0.0 and fa < g and fb >= 0.0 and fb < g):
        return _nearest_one(x, i, c, order, c0, n, 2)
    cell = int(fa) * g + int(fb)
    best = np.inf
    bj = -1
    for k in range(start[cell], start[cell + 1]):
        j = cand[k]
        t0 = np.float64(x[i, 0]) - c[j, 0]
        d = 0.0
        d += t0 * t0
        t1 = np.float64(x[i, 1]) - c[j, 1]
        d += t1 * t1
        if d < best:  # candidates ascend: a tie keeps the lower index
            best = d
            bj = j
    return bj, best


def _assign_accumulate_grid_py(x, c, order, c0, lo, w, g, start, cand, chunk, sums, counts, cell_sse, sse, sse2):
    """:func:`assign_accumulate` for P = 2 with the cell lists of :func:`cell_lists`."""
    m = x.shape[0]
    n = c.shape[0]
    nchunks = sums.shape[0]
    for k in prange(nchunks):
        s0 = k * chunk
        s1 = min(m, s0 + chunk)
        for i in range(s0, s1):
            bj, best = _nearest_grid(x, i, c, order, c0, n, lo, w, g, start, cand)
            sums[k, bj, 0] += x[i, 0]
            sums[k, bj, 1] += x[i, 1]
            counts[k, bj] += 1
            cell_sse[k, bj] += best
            sse[k] += best
            sse2[k] += best * best


def _assign_grid_py(x, c, order, c0, lo, w, g, start, cand, out):
    m = x.shape[0]
    n = c.shape[0]
    for i in prange(m):
        bj, best = _nearest_grid(x, i, c, order, c0, n, lo, w, g, start, cand)
        out[i] = bj


# Each kernel in two builds: threads pay off only on large samples (a parallel launch costs
# far more than a small sample's work, most of all on a busy machine).  Both give the same
# result: the chunks and their order do not depend on the build.
PARALLEL_MIN = 1 << 17

assign_accumulate = parallel_njit()(_assign_accumulate_py)
assign_accumulate_serial = cached_njit()(_assign_accumulate_py)
assign = parallel_njit()(_assign_py)
assign_serial = cached_njit()(_assign_py)
assign_accumulate_grid = parallel_njit()(_assign_accumulate_grid_py)
assign_accumulate_grid_serial = cached_njit()(_assign_accumulate_grid_py)
assign_grid = parallel_njit()(_assign_grid_py)
assign_grid_serial = cached_njit()(_assign_grid_py)


def pick(kernel, m: int):
    """The parallel build of ``kernel`` for ``m`` >= PARALLEL_MIN vectors, else the serial one."""
    return kernel if m >= PARALLEL_MIN else globals()[kernel.py_func.__name__[1:-3] + "_serial"]
