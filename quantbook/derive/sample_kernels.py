"""The numba kernel of a sample source's lookups (:class:`~.sources.Empirical`): the knot
segment of a point, the density there and the partial moments ``Ψ_0``, ``Ψ_1``, one at a time
or summed over the nodes of a block law (one or two of them from each lookup).

A block law is a sum over the nodes ``m_j`` of the block maximum of ``c_j·f(y·m_j)`` (``f`` the
density or ``Ψ_k``), asked for at up to about 10^8 pairs ``(y, m_j)`` in one derivation,
against up to one knot per distinct value of the sample.  Most of that time went into
``numpy.searchsorted``, a binary search over all knots per point whose branches the processor
cannot predict, and into the tables of the pairs that numpy filled and multiplied.  Here a
point finds its cell of a uniform grid over the knots' range and bisects only the knots of
that cell, in a fixed number of halvings without a branch on the data, and the sum over the
nodes is taken as the values come.  The grid's cells are those of the kernel's own rounded
arithmetic (:func:`grid`), which is monotone, so the search is exact.  The value at a point is
numpy's formula, operation for operation (the same bits); a sum over the nodes is in their
order.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ..numerics.kernel_cache import cached_njit
from ..numerics.parallel import parallel_njit

__all__ = ["grid", "sums", "SEGMENT", "PDF", "PSI0", "ONE_THREAD_PAIRS"]

#: grid cells per knot (a cell of the bulk then holds a few knots at most), and the most cells
_CELLS_PER_KNOT, _MAX_CELLS = 4, 1 << 22
#: what :func:`sums` adds up: the knot segment, the density, the partial moment Ψ_k (k = 0, 1) at PSI0 + k
SEGMENT, PDF, PSI0 = 0, 1, 2
#: the widest cell :func:`sums` halves: its halvings are written out down from 2^19, so this
#: and they change together
MAX_WIDTH = 1 << 20
#: :func:`sums` of fewer (point, node) pairs runs on the calling thread alone (``one_thread`` of
#: :func:`~quantbook.numerics.parallel.parallel_njit`): about a millisecond of work.  A Lloyd step
#: asks for a few dozen points at a time (its medians, its cells), thousands of times in a
#: derivation, and on a machine whose cores were busy each such launch waited milliseconds for
#: the other threads (docs/benchmarks.md)
ONE_THREAD_PAIRS = 1 << 16


def _cell(x, x0: float, inv_h: float, nb: int) -> np.ndarray:
    """The grid cell of each ``x``, rounded as :func:`sums` rounds it (monotone in ``x``)."""
    t = (np.asarray(x, dtype=np.float64) - x0) * inv_h
    return np.where(t > 0, np.minimum(np.floor(t), nb - 1), 0).astype(np.int64)


def grid(xk: np.ndarray) -> tuple | None:
    """The arguments of :func:`sums` that describe the knots ``xk``: ``(knots, start, x0,
    1/h, width)``, the knots followed by ``width`` infinities (a halving may read past the
    last), ``start[b]`` the number of knots in the cells before cell ``b`` of a uniform grid
    over ``[xk[0], xk[-1]]`` (cells of width ``h``) and ``width`` a power of two above the most
    knots a cell holds.  Each knot's cell is computed as :func:`sums` computes a point's, so a
    point of cell ``b`` has between ``start[b]`` and ``start[b+1]`` knots at or below it: the
    cells need not be exact, only monotone.  None if a cell holds :data:`MAX_WIDTH` knots or
    more (a sample of millions of values with far outliers).  (A grid that follows the density,
    finer where the knots are dense, gave heavy tails fewer halvings but cost the bulk more time
    than it saved.)"""
    nb = int(min(_CELLS_PER_KNOT * xk.size, _MAX_CELLS))
    x0 = float(xk[0])
    inv_h = nb / float(xk[-1] - xk[0])
    start = np.searchsorted(_cell(xk, x0, inv_h, nb), np.arange(nb + 1), side="left")
    width = 1 << int(np.max(np.diff(start))).bit_length()
    if width > MAX_WIDTH:
        return None
    return np.concatenate([xk, np.full(width, np.inf)]), start, x0, inv_h, width


@cached_njit(nogil=True, inline="always")
def _value(what, s, x, v, xk, dens, P, P0, lo, hi):
    """``f`` of :func:`sums` at ``x`` (``v`` clipped to the knots) in the segment ``s``."""
    if what == SEGMENT:
        return float(s)
    if what == PDF:
        return dens[s] if lo <= x < hi else 0.0
    if what == PSI0:
        return P[s] + dens[s] * (v - xk[s]) - P0   # numpy's "/ 1" changes no bit
    return P[s] + dens[s] * (v * v - xk[s] * xk[s]) / 2 - P0   # PSI0 + 1: Ψ_1


@parallel_njit(nogil=True)
def sums(what, xk, start, x0, inv_h, width, dens, P, P0, y, m, c, out):
    """``out[r, i] = Σ_j c[r, j]·f_r(y[i]·m[j])`` in the order of ``j``, for the tuple of one
    or two codes ``f_r = what[r]``: ``f(x)`` the knot segment ``s`` of ``x`` (``[xk[s],
    xk[s+1])``, clipped to the first and last), the density, or ``Ψ_k = P[s] +
    dens[s]·(v^(k+1) - xk[s]^(k+1))/(k+1) - P0`` with ``v`` the point clipped to the knots, in
    the numpy formula's order (one ``k``: its ``P`` and ``P0``).  Two codes share each point's
    lookup (a Newton step asks for Ψ_0 and the density at the same points).  NaN for a NaN
    ``y[i]``."""
    # a tuple: numba compiles each length on its own, so one code's loop carries no second sum
    two = len(what) > 1
    w0, w1 = what[0], what[len(what) - 1]
    last = start.size - 2   # the last cell
    n = xk.size - width
    lo, hi = xk[0], xk[n - 1]
    for i in prange(y.size):   # each out[:, i] on its own: the same sums on any number of threads
        if np.isnan(y[i]):
            out[:, i] = np.nan
            continue
        acc = acc1 = 0.0
        for q in range(m.size):
            x = y[i] * m[q]
            v = min(max(x, lo), hi)
            t = (v - x0) * inv_h
            j = start[(int(t) if t < last else last) if t > 0 else 0]
            # the knots <= v, by halving the cell's window; unrolled, because as a loop (or in a
            # function of its own) the halvings compiled to branches and took twice as long
            if width > 524288:
                j += 524288 if xk[j + 524287] <= v else 0
            if width > 262144:
                j += 262144 if xk[j + 262143] <= v else 0
            if width > 131072:
                j += 131072 if xk[j + 131071] <= v else 0
            if width > 65536:
                j += 65536 if xk[j + 65535] <= v else 0
            if width > 32768:
                j += 32768 if xk[j + 32767] <= v else 0
            if width > 16384:
                j += 16384 if xk[j + 16383] <= v else 0
            if width > 8192:
                j += 8192 if xk[j + 8191] <= v else 0
            if width > 4096:
                j += 4096 if xk[j + 4095] <= v else 0
            if width > 2048:
                j += 2048 if xk[j + 2047] <= v else 0
            if width > 1024:
                j += 1024 if xk[j + 1023] <= v else 0
            if width > 512:
                j += 512 if xk[j + 511] <= v else 0
            if width > 256:
                j += 256 if xk[j + 255] <= v else 0
            if width > 128:
                j += 128 if xk[j + 127] <= v else 0
            if width > 64:
                j += 64 if xk[j + 63] <= v else 0
            if width > 32:
                j += 32 if xk[j + 31] <= v else 0
            if width > 16:
                j += 16 if xk[j + 15] <= v else 0
            if width > 8:
                j += 8 if xk[j + 7] <= v else 0
            if width > 4:
                j += 4 if xk[j + 3] <= v else 0
            if width > 2:
                j += 2 if xk[j + 1] <= v else 0
            if width > 1:
                j += 1 if xk[j] <= v else 0
            s = min(max(j - 1, 0), n - 2)
            acc += c[0, q] * _value(w0, s, x, v, xk, dens, P, P0, lo, hi)
            if two:
                acc1 += c[1, q] * _value(w1, s, x, v, xk, dens, P, P0, lo, hi)
        out[0, i] = acc
        if two:
            out[1, i] = acc1
