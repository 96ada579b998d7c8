"""A Lloyd pass of the vector derivation (``quantbook.derive.vq._Sums`` and its numba kernels)
against the same pass rebuilt by plain numpy, bit for bit, over a run of passes that keep each
vector's point and bound from pass to pass; the kept bounds and the cell lists' ``beyond``
bound against brute-force distances."""

import itertools

import numpy as np
import pytest

from quantbook.codebooks.vector import cell_candidates, nearest_brute
from quantbook.derive.vq import _Sums
from quantbook.derive.vq_kernels import PARALLEL_MIN


def _pass_by_numpy(x, c, chunk):
    """The pass's definition: each row to its nearest point (brute force, ties to the lowest
    index), the squared distance summed coordinate after coordinate, and per chunk of rows
    the sums added row after row (``np.add.at`` and ``cumsum`` add one element at a time),
    the chunks' sums then combined in chunk order."""
    x64 = x.astype(np.float64)
    idx = nearest_brute(c, x)
    d = np.zeros(x.shape[0])
    for q in range(x.shape[1]):
        t = x64[:, q] - c[idx, q]
        d += t * t
    k = -(-x.shape[0] // chunk)
    n, p = c.shape
    sums, counts, cell = np.zeros((k, n, p)), np.zeros((k, n), np.int64), np.zeros((k, n))
    sse, sse2 = np.zeros(k), np.zeros(k)
    for i in range(k):
        rows = slice(i * chunk, (i + 1) * chunk)
        np.add.at(sums[i], idx[rows], x64[rows])
        np.add.at(counts[i], idx[rows], 1)
        np.add.at(cell[i], idx[rows], d[rows])
        sse[i] = np.cumsum(d[rows])[-1]
        sse2[i] = np.cumsum(d[rows] * d[rows])[-1]
    return sums.sum(axis=0), counts.sum(axis=0), cell.sum(axis=0), float(sse.sum()), float(sse2.sum())


def _lattice_and_sample(p, m, rng):
    """Points on a lattice of spacing 1/2 (exact in float32) and vectors: Gaussian ones, some
    far outside the points' box, and lattice midpoints and centres, equally near two or more
    points (ties)."""
    axis = {2: np.arange(-1.25, 1.3, 0.5), 8: np.array([-0.25, 0.25])}.get(p, np.arange(-0.75, 0.8, 0.5))
    pts = np.array(list(itertools.product(axis, repeat=p)))
    x = rng.standard_normal((m, p)).astype(np.float32)
    x[: m // 50] *= 3   # beyond the grid: the strip search's rows
    ties = (pts[rng.integers(len(pts), size=m // 10)] + 0.25 * rng.integers(0, 3, (m // 10, p))).astype(np.float32)
    x[m // 2: m // 2 + ties.shape[0]] = ties
    return pts, x


@pytest.mark.parametrize("p, m", [(2, 40_000), (2, PARALLEL_MIN + 5_000), (3, 40_000), (4, 20_000), (8, 9_000)])
def test_passes_with_kept_bounds_are_the_numpy_pass_bit_for_bit(p, m):
    """The kernels (2-D cell lists or the strip search, the serial and the parallel build;
    for P > 2 the search from a kept point that fails its bound) keep a vector's point without
    a search where its bound allows; every pass is still the numpy pass to the bit: through
    Lloyd steps, the same points again (ties must be searched again), a move of 1e-13 that
    turns ties the other way and back (a kept point tied with a lower-indexed one), an over-relaxed
    step and a jump."""
    rng = np.random.default_rng(p * 1000 + m)
    c, x = _lattice_and_sample(p, m, rng)
    acc = _Sums(x, c.shape[0], keep=True)
    steps = ["same", "nudge", "back", "lloyd", "same", "nudge", "lloyd", "lloyd", "relaxed", "same", "jump", "lloyd",
             "lloyd"]
    kept = []
    for step in steps + ["end"]:
        got = acc.run(c)
        want = _pass_by_numpy(x, c, acc.chunk)
        for g, w in zip(got, want):
            assert np.array_equal(np.asarray(g), np.asarray(w)), step
        # every kept bound, less the drift since, is below the distance of every other point
        d = np.sqrt(np.sum((x.astype(np.float64)[:, None, :] - c[None]) ** 2, axis=2))
        near = acc.near.astype(np.int64)
        assert np.array_equal(near, nearest_brute(c, x))
        rows = np.arange(m)
        own = d[rows, near]
        d[rows, near] = np.inf
        assert np.all(d.min(axis=1) >= acc.bound - acc.drift)
        kept.append(np.mean(own < acc.bound - acc.drift))
        sums, counts = want[0], want[1]
        cent = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
        if step == "lloyd":
            c = cent
        elif step == "nudge":   # the lower-indexed of each tied pair moves off by 1e-13
            c, before = c + 1e-13 * np.arange(c.shape[0])[:, None], c
        elif step == "back":
            c = before
        elif step == "relaxed":
            c = c + 1.8 * (cent - c)
        elif step == "jump":
            c = c + rng.normal(0, 0.3, c.shape)
    # the bounds let most vectors keep their point once the steps are small
    assert max(kept) > 0.5, kept


def test_beyond_bounds_every_point_a_cell_leaves_out():
    """``cell_candidates(..., beyond=True)``: the lists are those without it, and no point a
    cell leaves out is nearer (squared, brute force) to a vector of the cell, its edges
    included, than the cell's ``beyond`` less a relative 1e-9."""
    rng = np.random.default_rng(3)
    pts = rng.standard_normal((40, 2))
    lo, hi, g = float(pts.min()) - 1e-3, float(pts.max()) + 1e-3, 12
    count, cand, far = cell_candidates(pts, (lo, lo), (hi, hi), g, beyond=True)
    plain = cell_candidates(pts, (lo, lo), (hi, hi), g)
    assert np.array_equal(count, plain[0]) and np.array_equal(cand, plain[1])
    w = (hi - lo) / g
    cells = rng.integers(g, size=(40_000, 2))
    frac = rng.random((40_000, 2))
    frac[:4000] = rng.integers(0, 2, (4000, 2))   # on a cell's corner or edge
    x = lo + (cells + frac) * w
    cells = np.minimum(np.floor((x - lo) / w).astype(np.int64), g - 1)   # the kernel's lookup
    cell = cells[:, 0] * g + cells[:, 1]
    member = np.zeros((g * g, len(pts)), bool)
    member[np.repeat(np.arange(g * g), count), cand] = True
    d = np.sum((x[:, None, :] - pts[None]) ** 2, axis=2)
    left_out = np.where(member[cell], np.inf, d).min(axis=1)
    assert np.all(left_out >= far[cell] * (1 - 1e-9))
    assert np.isfinite(far).all() and (far > 0).all()
