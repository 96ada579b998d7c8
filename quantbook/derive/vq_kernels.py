"""Numba kernels of the vector Lloyd iteration: exact nearest-point assignment with pruning.

The points are kept sorted by their first coordinate.  For a vector ``x`` the search starts
at the points whose first coordinate is nearest to ``x[0]`` and walks outwards, always to the
side with the smaller first-coordinate gap ``g``; it stops once ``g**2`` exceeds the best
squared distance found, since every point further out is at least that far.  The answer is
exactly the brute-force one (:func:`quantbook.codebooks.vector.nearest_brute`): the same
float64 distance, summed over the coordinates in the same order, and ties to the lowest index.

Between Lloyd passes (:func:`assign_accumulate` with kept bounds) a vector keeps its point
without a search when no other point can have come near enough (Hamerly's bound): a search
also leaves a lower bound on the distance to every other point (the second-nearest distance
found, or for P = 2 the least distance of the points its cell list leaves out), and a later
pass lowers it by the sum of the largest moves of a point since.  Every step of that is
rounded the safe way: the bound taken a relative 1e-9 down and stored rounded down into
float32 (a relative 1e-6), the moves rounded up, the test's side a relative 1e-9 up; a
float64 distance is within a few ulp (2**-50) of the exact one.  Where the test passes, the
kept point is therefore nearer than any other by far more than the rounding, so the search
would find it (no tie can decide) and computes its distance by the same operations: the sums
are the same bits.

For P > 2 a row whose kept point ``b`` fails that test is searched from ``b`` instead: the
points in order of their distance ``e`` from ``b`` (:func:`neighbours`, up to
:data:`NEIGHBOURS_MAX` points), until ``e`` exceeds ``|x - b|`` plus the second-nearest
distance found so far, the two taken a relative 1e-9 up and ``e`` 1e-9 down: by the triangle
inequality every point further on is then farther from ``x`` than that second-nearest point
by far more than the rounding.  Every point that can be the nearest, tie with it or be the
second-nearest is therefore visited, each distance by the same operations, with the same
tie rule: the same point, distance and bound as the strip search.  (A partial distance
search, stopping a point's sum once it passes the bound, gives the same bits too but made
the strip search slower: docs/vector-codebooks.md.)

Work is split into fixed chunks of the sample and each chunk accumulates its own partial
sums, row after row; the chunks are combined in order afterwards, so the result does not
depend on the number of threads (the derivation is bit-for-bit reproducible).
"""

from __future__ import annotations

import numpy as np
from numba import prange
from scipy.spatial.distance import cdist

from ..codebooks.vector import cell_candidates
from ..numerics.kernel_cache import cached_njit
from ..numerics.parallel import parallel_njit

__all__ = ["assign_accumulate", "chunk_size", "assign", "no_bounds", "search_grid"]

#: rows searched per call of a row helper.  A call of a compiled helper with array arguments
#: (inlined or not) costs numba a reference-count update per array; made per vector, that was
#: about two thirds of a single-threaded pass.
BLOCK = 256
#: the relative margin of the kept bounds (module docstring)
_MARGIN = 1e-9


def chunk_size(m: int) -> int:
    """Vectors per chunk for a sample of ``m``: at most 64 chunks, at least 2**14 vectors each."""
    return max(1 << 14, -(-m // 64))


@cached_njit()
def no_bounds():
    """The ``near`` and ``bound`` arguments of a pass that keeps no bounds (empty arrays); compiled,
    so that the assignment-only kernels take theirs from here too."""
    return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float32)


@cached_njit(inline="always")
def _reusable(d, drift, bound):
    """Whether a row whose kept point is at squared distance ``d`` keeps it (module docstring).
    Scalar arguments: free to call per row."""
    return (np.sqrt(d) * (1.0 + _MARGIN) + drift) * (1.0 + _MARGIN) < bound


@cached_njit(inline="always")
def _kept_bound(second, drift):
    """The bound kept for a row searched in this pass: the distance of its second-nearest point
    (``second``, squared, or less), raised by ``drift`` so that a later pass subtracts its own,
    rounded down into float32."""
    return np.float32((np.sqrt(second) * (1.0 - _MARGIN) + drift) * (1.0 - 1e-6))


@cached_njit()
def _strip_rows(x, s0, s1, c, order, c0, idx, dist, only_missing, drift, near, bound, reuse, nbr, nbr_d):
    """Rows ``s0 .. s1`` of ``x``: the nearest row of ``c`` by the strip search into
    ``idx[i - s0]`` and its squared distance into ``dist[i - s0]``; with ``only_missing``, only
    the rows whose ``idx`` is negative.  Where bounds are kept (``near`` not empty), a searched
    row's walk goes on past the second-nearest point, and its point and bound are stored; with
    ``reuse`` too, a row whose kept point passes :func:`_reusable` keeps it without a search,
    and one whose kept point fails it is searched from that point by :func:`neighbours`'
    ``nbr``, ``nbr_d`` where they are not empty."""
    n, p = c.shape
    keep = near.shape[0] > 0
    reuse = reuse and keep
    for i in range(s0, s1):
        r = i - s0
        if only_missing and idx[r] >= 0:
            continue
        if reuse:
            j = near[i]
            if j >= 0:
                d = 0.0
                for q in range(p):
                    t = np.float64(x[i, q]) - c[j, q]
                    d += t * t
                if _reusable(d, drift, bound[i]):
                    idx[r] = j
                    dist[r] = d
                    continue
                if nbr.shape[0] > 0:
                    # the points in order of their distance from the kept one, up to the last that
                    # can be within the second-nearest distance (module docstring)
                    best, second, bj = d, np.inf, j
                    rb = np.sqrt(d)
                    for k in range(nbr.shape[1]):
                        if nbr_d[j, k] * (1.0 - _MARGIN) > (rb + np.sqrt(second)) * (1.0 + _MARGIN):
                            break
                        jj = nbr[j, k]
                        if jj == j:
                            continue
                        d = 0.0
                        for q in range(p):
                            t = np.float64(x[i, q]) - c[jj, q]
                            d += t * t
                        second = min(second, max(d, best))
                        if d < best or (d == best and jj < bj):
                            best = d
                            bj = jj
                    idx[r] = bj
                    dist[r] = best
                    near[i] = bj
                    bound[i] = _kept_bound(second, drift)
                    continue
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
        second = np.inf
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
            if g * g > (second if keep else best):
                break
            j = order[k]
            d = 0.0
            for q in range(p):
                t = np.float64(x[i, q]) - c[j, q]
                d += t * t
            second = min(second, max(d, best))  # the second-nearest so far, without a branch
            if d < best or (d == best and j < bj):
                best = d
                bj = j
        idx[r] = bj
        dist[r] = best
        if keep:
            near[i] = bj
            bound[i] = _kept_bound(second, drift)


@cached_njit()
def _add_rows(x, s0, s1, idx, dist, k, sums, counts, cell_sse, sse, sse2):
    """Add rows ``s0 .. s1`` of ``x``, in order, to chunk ``k``'s sums of their points ``idx``
    (see :func:`_assign_accumulate_py`)."""
    p = x.shape[1]
    for i in range(s0, s1):
        bj = idx[i - s0]
        best = dist[i - s0]
        for q in range(p):
            sums[k, bj, q] += x[i, q]
        counts[k, bj] += 1
        cell_sse[k, bj] += best
        sse[k] += best
        sse2[k] += best * best


def _assign_accumulate_py(x, c, order, c0, grid, drift, near, bound, chunk, sums, counts, cell_sse, sse, sse2):
    """For every row of ``x`` (M, P float32) find its nearest row of ``c`` (N, P float64) and
    add, per chunk ``k`` of ``chunk`` rows: the vector to ``sums[k, j]``, 1 to ``counts[k, j]``,
    the squared distance to ``cell_sse[k, j]`` and ``sse[k]``, its square to ``sse2[k]``.
    ``order`` sorts ``c`` by its first coordinate, ``c0`` is that sorted coordinate; ``grid``
    is :func:`search_grid`'s (with ``beyond`` where bounds are kept).
    ``near`` (int32, -1: none yet) and ``bound`` (float32) are each row's kept point and bound,
    ``drift`` the bounds' offset (module docstring): read, and written where a row was
    searched; empty arrays (:func:`no_bounds`) keep none.  The sums must be zeroed by the caller."""
    m = x.shape[0]
    nchunks = sums.shape[0]
    idx = np.empty((nchunks, BLOCK), dtype=np.int64)
    dist = np.empty((nchunks, BLOCK))
    # unpacked once, and the search chosen once a block in the kernel itself: a helper that chose it
    # (called, or inlined by numba) slowed the passes where most rows keep their point (docs/vector-codebooks.md)
    lo, w, g, start, cand, far, nbr, nbr_d = grid
    keep = near.shape[0] > 0
    for k in prange(nchunks):
        stop = min(m, (k + 1) * chunk)
        for s0 in range(k * chunk, stop, BLOCK):
            s1 = min(stop, s0 + BLOCK)
            if g > 0:
                _grid_rows(x, s0, s1, c, order, c0, lo, w, g, start, cand, far, idx[k], dist[k], drift, near, bound,
                           nbr, nbr_d)
            else:
                _strip_rows(x, s0, s1, c, order, c0, idx[k], dist[k], False, drift, near, bound, keep, nbr, nbr_d)
            _add_rows(x, s0, s1, idx[k], dist[k], k, sums, counts, cell_sse, sse, sse2)


#: parts of the sample the assignment-only kernels split it into (a scratch row each)
_PARTS = 64


def _assign_py(x, c, order, c0, grid, out):
    """Nearest row of ``c`` for every row of ``x`` into ``out`` (int64), as above."""
    m = x.shape[0]
    per = -(-m // (_PARTS * BLOCK)) * BLOCK
    dist = np.empty((_PARTS, BLOCK))
    near, bound = no_bounds()
    lo, w, g, start, cand, far, nbr, nbr_d = grid   # as in _assign_accumulate_py
    for t in prange(_PARTS):
        stop = min(m, (t + 1) * per)
        for s0 in range(t * per, stop, BLOCK):
            s1 = min(stop, s0 + BLOCK)
            if g > 0:
                _grid_rows(x, s0, s1, c, order, c0, lo, w, g, start, cand, far, out[s0:s1], dist[t], 0.0, near, bound,
                           nbr, nbr_d)
            else:
                _strip_rows(x, s0, s1, c, order, c0, out[s0:s1], dist[t], False, 0.0, near, bound, False, nbr, nbr_d)


# ------------------------------------------------------------------ 2-D cell lists (P = 2)
# A G×G grid over a box around the points; each cell lists every point that can be the
# nearest one to some vector in it (quantbook.codebooks.vector.cell_candidates: the one
# statement of that rule); among the candidates (ascending index) the exact distance and the
# tie rule decide.  Vectors outside the box fall back to the strip search.

def cell_lists(c: np.ndarray, beyond: bool = False):
    """``(lo, w, g, start, cand, far)``: the grid of candidate lists of the 2-D points ``c``;
    ``far`` is :func:`~quantbook.codebooks.vector.cell_candidates`'s ``beyond`` array with
    ``beyond``, else empty."""
    n = c.shape[0]
    g = int(min(256, max(4, round(4 * np.sqrt(n)))))
    lo = float(np.min(c)) - 1e-3
    hi = float(np.max(c)) + 1e-3
    w = (hi - lo) / g
    counts, cand, *far = cell_candidates(c, (lo, lo), (hi, hi), g, beyond=beyond)
    start = np.zeros(g * g + 1, dtype=np.int64)
    np.cumsum(counts, out=start[1:])
    return lo, w, g, start, cand, (far[0] if far else np.empty(0)), *_NO_NEIGHBOURS


@cached_njit()
def _grid_rows(x, s0, s1, c, order, c0, lo, w, g, start, cand, far, idx, dist, drift, near, bound, nbr, nbr_d):
    """:func:`_strip_rows` (all rows, reusing kept points) for P = 2 by the cell lists of
    :func:`cell_lists` (the strip search for the rows outside the grid).  A searched row's
    bound is the least of its other candidates' distances and its cell's ``far``."""
    keep = near.shape[0] > 0
    outside = False
    for i in range(s0, s1):
        r = i - s0
        if keep:
            j = near[i]
            if j >= 0:
                d = 0.0
                for q in range(2):
                    t = np.float64(x[i, q]) - c[j, q]
                    d += t * t
                if _reusable(d, drift, bound[i]):
                    idx[r] = j
                    dist[r] = d
                    continue
        fa = (np.float64(x[i, 0]) - lo) / w
        fb = (np.float64(x[i, 1]) - lo) / w
        if not (fa >= 0.0 and fa < g and fb >= 0.0 and fb < g):
            idx[r] = -1
            outside = True
            continue
        cell = int(fa) * g + int(fb)
        best = np.inf
        second = far[cell] if keep else np.inf
        bj = -1
        for k in range(start[cell], start[cell + 1]):
            j = cand[k]
            d = 0.0
            for q in range(2):
                t = np.float64(x[i, q]) - c[j, q]
                d += t * t
            second = min(second, max(d, best))
            if d < best:  # candidates ascend: a tie keeps the lower index
                best = d
                bj = j
        idx[r] = bj
        dist[r] = best
        if keep:
            near[i] = bj
            bound[i] = _kept_bound(second, drift)
    if outside:
        _strip_rows(x, s0, s1, c, order, c0, idx, dist, True, drift, near, bound, False, nbr, nbr_d)


#: the most points for which a pass with kept bounds builds :func:`neighbours` (N * N entries)
NEIGHBOURS_MAX = 1024
#: ... and the fewest vectors a point it needs: building them costs about 60-100 ns a pair of points,
#: up to several passes of the strip search on a small sample (docs/vector-codebooks.md)
NEIGHBOURS_ROWS = 1 / 8
_NO_NEIGHBOURS = (np.empty((0, 0), dtype=np.int64), np.empty((0, 0)))


def neighbours(c: np.ndarray):
    """``(nbr, nbr_d)``: row ``j`` of ``nbr`` the indices of all points ``c`` in order of their
    distance from point ``j`` (itself included), row ``j`` of ``nbr_d`` those distances."""
    # pair by pair (no N x N x P temporary): any rounding of these is within the search's margin
    d = cdist(c, c)
    nbr = np.argsort(d, axis=1, kind="stable")
    return nbr, np.ascontiguousarray(np.take_along_axis(d, nbr, axis=1))


def search_grid(c: np.ndarray, beyond: bool = False, rows: int = 0):
    """The ``grid`` argument of the kernels for the points ``c``: :func:`cell_lists` for P = 2,
    else a grid of no cells (every row by the strip search) and, with ``beyond`` (bounds kept),
    N <= :data:`NEIGHBOURS_MAX` points and ``rows`` >= :data:`NEIGHBOURS_ROWS` * N**2 vectors
    to search, :func:`neighbours` for the rows whose kept point fails its bound."""
    if c.shape[1] == 2:
        return cell_lists(c, beyond=beyond)
    n = c.shape[0]
    use = beyond and n <= NEIGHBOURS_MAX and rows >= NEIGHBOURS_ROWS * n * n
    # the types of cell_lists' answer, so that every P runs the same compiled kernel
    nb = neighbours(c) if use else _NO_NEIGHBOURS
    return 0.0, 1.0, 0, np.zeros(1, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0), *nb


# Each kernel in two builds: threads pay off only on large samples (a parallel launch costs
# far more than a small sample's work, most of all on a busy machine).  Both give the same
# result: the chunks and their order do not depend on the build.
PARALLEL_MIN = 1 << 17

assign_accumulate = parallel_njit()(_assign_accumulate_py)
assign_accumulate_serial = cached_njit()(_assign_accumulate_py)
assign = parallel_njit()(_assign_py)
assign_serial = cached_njit()(_assign_py)


def pick(kernel, m: int):
    """The parallel build of ``kernel`` for ``m`` >= PARALLEL_MIN vectors, else the serial one."""
    return kernel if m >= PARALLEL_MIN else globals()[kernel.py_func.__name__[1:-3] + "_serial"]
