"""numba kernels of vector quantization (the layout: quantbook/bulk/vq_state.py).

Each kernel repeats, operation for operation, the numpy reference of quantbook/bulk/vq.py,
so the results are equal bit for bit (tests/test_vq_bulk.py): the Hadamard butterflies in
float64, the group statistics summed in index order, ``float32(v / s)``, and squared
distances ``(y0 - c0)² + (y1 - c1)² + …`` in float64 summed left to right (no fused
multiply-add: numba leaves contraction off without ``fastmath``).

The nearest-point search is exact but not brute force:

* :func:`encode_grid2` (P = 2) looks ``y`` up in a uniform grid of cells, each listing, in
  index order, every point that can be nearest anywhere in the cell (built by
  ``quantbook.bulk.vq``; fine enough that most cells list at most three); a ``y`` beyond
  the grid, clamped to its outer ring of cells, goes to the scan below;
* :func:`encode_scan` (any P) walks the points sorted by their first coordinate outward from
  ``y0`` and stops in a direction once ``(y0 - c0)²`` alone exceeds the best distance: a
  float64 sum of non-negative terms never falls below its first term, so no skipped point
  can be nearer, and a point at exactly the best distance is still compared by index.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange, types
from numba.extending import overload

from ...numerics.kernel_cache import cached_njit
from ...numerics.parallel import parallel_njit
from .kernels import _f64_to_f16_bits, _load, _store

_ROWS = 64  # rows of a rotation handled per parallel task (amortizes its buffer)
_GROUPS = 256  # groups per parallel task of the generic scan
_VALUES = 1 << 14  # values per parallel task of quantize_rows, in whole spans


@cached_njit()
def _fwht(buf, n):
    h = 1
    while h < n:
        for i in range(0, n, 2 * h):
            for j in range(i, i + h):
                a = buf[j]
                b = buf[j + h]
                buf[j] = a + b
                buf[j + h] = a - b
        h *= 2


@parallel_njit()
def rotate(x, signs, inv, out):
    """``out[r] = float32(fwht(x[r] · signs) · inv)`` for every row of ``x`` (R, n), float32."""
    rows, n = x.shape
    for c in prange((rows + _ROWS - 1) // _ROWS):
        buf = np.empty(n, np.float64)
        for r in range(c * _ROWS, min(rows, (c + 1) * _ROWS)):
            for j in range(n):
                buf[j] = np.float64(x[r, j]) * signs[j]
            _fwht(buf, n)
            for j in range(n):
                out[r, j] = np.float32(buf[j] * inv)


@parallel_njit()
def unrotate(y, signs, inv, out):
    """``out[r] = fwht(y[r]) · inv · signs``: the inverse of :func:`rotate`, rounded to
    ``out``'s dtype (float32, or float64: not rounded)."""
    rows, n = y.shape
    for c in prange((rows + _ROWS - 1) // _ROWS):
        buf = np.empty(n, np.float64)
        for r in range(c * _ROWS, min(rows, (c + 1) * _ROWS)):
            for j in range(n):
                buf[j] = np.float64(y[r, j])
            _fwht(buf, n)
            for j in range(n):
                out[r, j] = buf[j] * inv * signs[j]   # the store rounds to out's dtype


@cached_njit(inline="always")
def _rms(v, b, group):
    """``sqrt(Σ v² / group)`` of ``v[b:b + group]`` (float32), the squares summed in float64 in order."""
    acc = 0.0
    for j in range(group):
        t = np.float64(v[b + j])
        acc += t * t
    return math.sqrt(acc / group)


@cached_njit(inline="always")
def _absmax(v, b, group):
    """``max |v|`` of ``v[b:b + group]`` as float64; NaN when the group holds NaN."""
    m = np.float32(0.0)
    for j in range(group):
        a = abs(v[b + j])
        if a > m or a != a:
            m = a
        if m != m:
            break
    return np.float64(m)


@parallel_njit()
def group_rms(v, group, out):
    """``out[g] = sqrt(Σ v² / group)`` over group ``g`` of flat float32 ``v`` (float64, in order)."""
    for g in prange(out.size):
        out[g] = _rms(v, g * group, group)


@parallel_njit()
def group_absmax(v, group, out):
    """``out[g] = max |v|`` over group ``g``; NaN when the group holds NaN."""
    for g in prange(out.size):
        out[g] = _absmax(v, g * group, group)


@cached_njit()
def _lower(c0s, y0):
    lo, hi = 0, c0s.size
    while lo < hi:
        mid = (lo + hi) // 2
        if c0s[mid] < y0:
            lo = mid + 1
        else:
            hi = mid
    return lo


@cached_njit()
def _scan(y, c0s, order, pts):
    """The nearest point to ``y`` (float64, P values) by the sorted first-coordinate scan."""
    n, p = pts.shape
    y0 = y[0]
    start = _lower(c0s, y0)
    best = np.inf
    bi = n
    for direction in (1, -1):
        k = start if direction == 1 else start - 1
        while 0 <= k < n:
            dx = y0 - c0s[k]
            d = dx * dx
            if d > best:
                break
            i = order[k]
            for q in range(1, p):
                t = y[q] - pts[i, q]
                d += t * t
            if d < best or (d == best and i < bi):
                best = d
                bi = i
            k += direction
    return bi


@cached_njit(inline="always")
def _encode_scan_group(v, b, sc, per, y, c0s, order, pts, out, o):
    """``out[o:o + per]``: the indices of the ``per`` vectors of ``v`` from ``b`` with scale
    ``sc`` (any P; ``y`` a float64 buffer of P)."""
    p = pts.shape[1]
    for t in range(per):
        for q in range(p):
            y[q] = 0.0 if sc == 0 else np.float64(v[b + t * p + q] / sc)
        out[o + t] = _scan(y, c0s, order, pts)


@cached_njit()
def _encode_scan_groups(v, s, ng, per, y, c0s, order, pts, out, o):
    """:func:`_encode_scan_group` of the first ``ng`` groups of ``v`` in turn, ``s`` their
    scales, from ``out[o]`` on: for :func:`quantize_rows`, a function of its own, called once
    per task, so that its search loop is compiled alone, as in :func:`encode_scan` (inlined
    into the larger kernel, the loop's constants were spilled to the stack)."""
    group = per * pts.shape[1]
    for k in range(ng):
        _encode_scan_group(v, k * group, s[k], per, y, c0s, order, pts, out, o + k * per)


@parallel_njit()
def encode_scan(v, s, group, c0s, order, pts, out):
    """Indices of flat float32 ``v`` with float32 group scales ``s`` (any P)."""
    p = pts.shape[1]
    per = group // p
    ng = s.size
    for c in prange((ng + _GROUPS - 1) // _GROUPS):
        y = np.empty(p, np.float64)
        for g in range(c * _GROUPS, min(ng, (c + 1) * _GROUPS)):
            _encode_scan_group(v, g * group, s[g], per, y, c0s, order, pts, out, g * per)


@cached_njit(inline="always")
def _encode_grid2_group(v, b, sc, per, zero, lo0, lo1, inv0, inv1, cells, lut, multi, c0s, order, pts, y,
                        out, o):
    """``out[o:o + per]``: the indices of the ``per`` vectors of ``v`` from ``b`` with scale
    ``sc`` for P = 2 (the tables: :func:`encode_grid2`'s; ``y`` a float64 buffer of 2)."""
    if sc == 0:
        for t in range(per):
            out[o + t] = zero
        return
    top = cells - 1.0
    for t in range(per):
        y0 = np.float64(v[b + 2 * t] / sc)
        y1 = np.float64(v[b + 2 * t + 1] / sc)
        fx = min(max((y0 - lo0) * inv0, 0.0), top)
        fy = min(max((y1 - lo1) * inv1, 0.0), top)
        cell = int(fx) * cells + int(fy)
        e = lut[cell, 0]
        if e >= 0:  # most vectors: up to three candidates, compared without a branch
            f = lut[cell, 1]
            h = lut[cell, 2]
            a0 = y0 - pts[e, 0]
            a1 = y1 - pts[e, 1]
            b0 = y0 - pts[f, 0]
            b1 = y1 - pts[f, 1]
            c0 = y0 - pts[h, 0]
            c1 = y1 - pts[h, 1]
            da = a0 * a0 + a1 * a1
            db = b0 * b0 + b1 * b1
            dc = c0 * c0 + c1 * c1
            # ascending candidates, strict <: at equal distances the lower index stays
            lt = db < da
            bi = f if lt else e
            best = db if lt else da
            out[o + t] = h if dc < best else bi
            continue
        k = -1 - e
        if multi[k] == 0:  # beyond the grid, or on its outer ring
            y[0] = y0
            y[1] = y1
            out[o + t] = _scan(y, c0s, order, pts)
            continue
        best = np.inf
        bi = 0
        for q in range(k + 1, k + 1 + multi[k]):
            i = multi[q]
            d0 = y0 - pts[i, 0]
            d1 = y1 - pts[i, 1]
            d = d0 * d0 + d1 * d1
            if d < best:  # candidates in index order: a tie keeps the lower index
                best = d
                bi = i
        out[o + t] = bi


@cached_njit()
def _encode_grid2_groups(v, s, ng, per, zero, lo0, lo1, inv0, inv1, cells, lut, multi, c0s, order, pts, y, out, o):
    """:func:`_encode_grid2_group` of the first ``ng`` groups of ``v``: as :func:`_encode_scan_groups`."""
    for k in range(ng):
        _encode_grid2_group(v, k * 2 * per, s[k], per, zero, lo0, lo1, inv0, inv1, cells, lut, multi, c0s, order, pts,
                            y, out, o + k * per)


@parallel_njit()
def encode_grid2(v, s, group, zero, lo0, lo1, inv0, inv1, cells, lut, multi, c0s, order, pts, out):
    """Indices of flat float32 ``v`` with float32 group scales ``s`` for P = 2 (``zero``: the
    index of ``y = 0``, for groups whose scale is 0).

    The cell grid is ``cells`` × ``cells``; row ``lut[i·cells + j]`` holds the cell's three
    candidates, padded with its first, or ``-(1 + k)`` first, with the count at ``multi[k]``
    and the candidates after it.  A lookup beyond the grid is clamped to the outer ring of
    cells, whose count 0 sends the vector to the exact scan."""
    per = group // 2
    ng = s.size
    for c in prange((ng + _GROUPS - 1) // _GROUPS):
        y = np.empty(2, np.float64)
        for g in range(c * _GROUPS, min(ng, (c + 1) * _GROUPS)):
            _encode_grid2_group(v, g * group, s[g], per, zero, lo0, lo1, inv0, inv1, cells, lut, multi, c0s, order,
                                pts, y, out, g * per)


def _put_scale(scales, g, stat, f16tab):  # pragma: no cover - replaced by the overload below inside numba
    raise NotImplementedError


def _put_f32(scales, g, stat, f16tab):
    scales[g] = np.float32(stat)
    return scales[g]


def _put_f16(scales, g, stat, f16tab):
    h = _f64_to_f16_bits(stat)
    scales[g] = h
    return f16tab[h]


@overload(_put_scale)
def _put_scale_impl(scales, g, stat, f16tab):
    """``scales[g]`` = the float64 ``stat`` rounded to nearest even to the stored type (float32,
    or float16 bits in uint16) as numpy's astype rounds it; returns the stored value as float32."""
    if scales.dtype == types.float32:
        return _put_f32
    if scales.dtype == types.uint16:
        return _put_f16
    return None


@parallel_njit()
def quantize_rows(x, f16tab, signs, inv, span, group, absmax, grid, zero, lo0, lo1, inv0, inv1, cells, lut, multi,
                  c0s, order, pts, scales, out):
    """:func:`rotate`, :func:`group_rms` or :func:`group_absmax`, the statistics rounded to
    ``scales``' type as numpy rounds them, and :func:`encode_grid2` (``grid``) or
    :func:`encode_scan`, in one pass over flat ``x`` (float32, or 16-bit bits as ``kernels``
    reads them), without the rotated tensor: each task rotates a whole number of spans of
    ``span`` values (whole rows of ``signs.size`` and whole groups; no signs: not rotated)
    into its own float32 buffer, measures its groups, then searches them all.  A group whose
    stored scale is not finite is searched as a zero group: the caller raises."""
    n = signs.size
    p = pts.shape[1]
    per = group // p
    spans = x.size // span
    each = max(1, _VALUES // span)
    for c in prange((spans + each - 1) // each):
        v = np.empty(each * span, np.float32)
        s = np.empty(each * span // group, np.float32)
        buf = np.empty(n, np.float64)
        y = np.empty(p, np.float64)
        b = c * each * span
        m = min(spans - c * each, each) * span
        # read through slices: indices provably non-negative, so the loops vectorize (kernels.py)
        if n == 0:
            xs = x[b:b + m]
            for j in range(m):
                v[j] = _load(xs, j, f16tab)
        else:
            for r in range(0, m, n):
                xs = x[b + r:b + r + n]
                for j in range(n):
                    buf[j] = np.float64(_load(xs, j, f16tab)) * signs[j]
                _fwht(buf, n)
                vs = v[r:r + n]
                for j in range(n):
                    vs[j] = np.float32(buf[j] * inv)
        g0, ng = b // group, m // group
        for k in range(ng):
            stat = _absmax(v, k * group, group) if absmax else _rms(v, k * group, group)
            sc = _put_scale(scales, g0 + k, stat, f16tab)
            s[k] = sc if math.isfinite(sc) else np.float32(0.0)
        # the searches after the statistics, not group by group: their loop runs as fast as encode_grid2's
        if grid:
            _encode_grid2_groups(v, s, ng, per, zero, lo0, lo1, inv0, inv1, cells, lut, multi, c0s, order, pts, y,
                                 out, g0 * per)
        else:
            _encode_scan_groups(v, s, ng, per, y, c0s, order, pts, out, g0 * per)


@parallel_njit()
def decode(idx, s, group, pts, out):
    """``out = float32(pts[idx] · s[group])``, rounded to ``out``'s type (flat; float32, or the
    16-bit kinds of ``kernels._store``; indices already checked)."""
    p = pts.shape[1]
    per = group // p
    for g in prange(s.size):
        sc = s[g]
        for t in range(per):
            i = idx[g * per + t]
            b = g * group + t * p
            for q in range(p):
                _store(out, b + q, pts[i, q] * sc)


@parallel_njit()
def decode_unrotate(idx, s, group, pts, signs, inv, out):
    """:func:`decode` then :func:`unrotate` of each row of ``out`` (R, n), without the decoded
    tensor: ``float32(fwht(float32(pts[idx] · s)) · inv · signs)``, rounded to ``out``'s type
    as :func:`decode` rounds.  A group or a vector may span rows."""
    rows, n = out.shape
    p = pts.shape[1]
    for c in prange((rows + _ROWS - 1) // _ROWS):
        buf = np.empty(n, np.float64)
        for r in range(c * _ROWS, min(rows, (c + 1) * _ROWS)):
            f = r * n   # the flat index of the row's first value: its group, vector and coordinate
            g, in_g = f // group, f % group
            t, q = f // p, f % p
            for j in range(n):
                buf[j] = np.float64(pts[idx[t], q] * s[g])
                q += 1
                if q == p:
                    q = 0
                    t += 1
                in_g += 1
                if in_g == group:
                    in_g = 0
                    g += 1
            _fwht(buf, n)
            for j in range(n):
                _store(out[r], j, np.float32(buf[j] * inv * signs[j]))
