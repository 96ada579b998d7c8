"""Lloyd-Max codebooks (L2 centroids, L1 medians) and equal-probability codebooks of the exact
block distribution (:mod:`quantbook.derive.block`).

Problem.  Choose levels ``q`` (some of them fixed) minimising ``E[w(M)·loss(y - q(y))]`` where
``q(y)`` is the nearest level (ties to the lower level, as :meth:`Codebook.encode`), ``loss`` is
``(·)²`` (L2) or ``|·|`` (L1), and the weight ``w`` is 1 in the normalised domain and ``M²``
(L2) or ``M`` (L1) in the weight domain, where the error of a weight is ``M·(y - q)``.  The
necessary conditions are: each free level is the (weighted) centroid (L2) or median (L1) of
its cell, the cells being bounded by the midpoints.

Solver.  Iterate Newton's method on the fixed-point equations ``q = step(q)`` (``step`` = one
Lloyd update: centroids or medians of the current cells, computed exactly from closed-form cell
integrals), with the analytic tridiagonal Jacobian (``∂c/∂b = p(b)(b - c)/m`` for a centroid,
``p(b)/(2p(med))`` for a median).  Each iteration takes the full Newton step if it halves the
residual, else the best of shorter steps clipped to half the gap to the neighbouring levels and
the plain Lloyd update; after 60 iterations without convergence it continues with plain Lloyd
updates from the best point (slow but monotone; needed for very heavy tails).  It stops when
the Lloyd change ``max|step(q) - q|`` is ≤ ``tol`` (default 1e-12), reported as
``LloydResult.change``; a change ≤ max(tol, 1e-10) counts as converged.

Starting point.  With few free levels, the equal-probability code (:func:`quantile`).  With
:data:`_MANY_FREE` or more the fixed-point map contracts slowly, Newton's step from that code
overshoots and the solve stalls; the start is then the high-resolution approximation: levels
equally spaced in ``∫ p^(1/3)`` (L2) or ``∫ p^(1/2)`` (L1), ``p`` the (weighted) density, the
asymptotically optimal point density ``p^(1/(1+r))`` for the r-th power error (Panter & Dite,
Proc. IRE 39(1), 1951, for r = 2; Gray & Neuhoff, "Quantization", IEEE Trans. Inf. Theory
44(6), 1998).  If Newton has not converged after :data:`_RESTART_AFTER` iterations it starts
once more from the other point and keeps the better result.

Budget.  ``max_iter`` iterations and ``max_time`` seconds; a solve stopped by either is
reported with ``LloydResult.converged`` False and a :class:`LloydWarning`.  A result is
deterministic (no random numbers, fixed quadrature) unless the time budget stopped it.
A derivation whose block law cannot be evaluated (non-finite masses) or that would give fewer
levels than asked raises :class:`DerivationError` instead of returning a table.

``symmetric=True`` restricts to level sets symmetric about 0 (solved on the folded law of
``|y|``); the level count is ``2**bits`` without a zero and ``2**bits - 1`` with one.
``partition="halves"`` (needs 0 among the fixed levels) quantises the negative and the positive
values separately, with 0 as a hard cell boundary: the zero level's cell is empty and the
innermost free levels' cells reach 0 instead of the midpoint to 0.  This is *not* the
nearest-level optimum; it is the construction of D. Yoshida's AF4 (arXiv:2306.06965,
generate_af4.py in github.com/davisyoshida/abnormal-floats builds each half with the last
cell ending at 0), and it reproduces the published AF4-64 table to its 8 decimals.

``normalization="none"`` is the classical unbounded Lloyd-Max quantizer of the source
(J. Max 1960; S. Lloyd 1957/1982).
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, fields
from typing import Any, Literal, Sequence, cast, overload

import numpy as np
from scipy.linalg import solve_banded

from ..codebooks.codebook import Codebook, check_given_name, warn_float32_edges
from ..codebooks.spelling import lloyd_spelling
from ..errors import warn
from ..numerics.arguments import check_int
from ..numerics.dots import norm
from ..scales import get_rule, scaled_products
from .block import FoldedMeasure, RestrictedMeasure, _Measure, _monotone_solve, block_measure
from .metrics import _edges, cell_errors
from .scaled import scaled_measure
from .recipes import DOMAINS, LOSSES, LloydRecipe, QuantileRecipe, default_fixed, parse_fixed, recipe_label
from .sources import EMPIRICAL_PREFIX

__all__ = ["lloyd", "solve_lloyd", "quantile", "LloydResult", "LloydWarning", "DerivationError",
           "default_fixed", "parse_fixed", "lloyd_step", "weight_power", "LOSSES", "DOMAINS", "TOL", "MAX_ITER",
           "MAX_TIME"]

#: default convergence threshold on the Lloyd change max|step(q) - q|
TOL = 1e-12
#: a result counts as converged when its change is at most max(tol, this)
_CONVERGED_AT = 1e-10
#: default iteration budget
MAX_ITER = 1000
#: default wall-time budget in seconds: generous for any well-posed code, a bound for the rest
MAX_TIME = 60.0

_L = LloydRecipe  # the defaults of lloyd() and solve_lloyd()
_Q = QuantileRecipe  # and of quantile()


class LloydWarning(RuntimeWarning):
    """The Lloyd-Max iteration stopped (iteration or time budget) before it converged."""


class DerivationError(ValueError):
    """A Lloyd or quantile derivation that produced no valid codebook (non-finite masses or loss,
    fewer levels than asked, levels the solver could not place)."""


def weight_power(loss: str, domain: str, normalization: str) -> int:
    """Power ``p`` of the scale ``M`` weighting each value's loss: the weight-domain error is
    ``M·(y - q)``, so ``p = 2`` for L2 and ``1`` for L1; ``0`` in the normalised domain and
    without normalisation (then the levels are already in source units)."""
    if domain != "weight" or normalization == "none":
        return 0
    return 2 if loss == "l2" else 1


@dataclass(frozen=True)
class LloydResult:
    """What :func:`solve_lloyd` returns: the codebook and how its iteration ended."""

    codebook: Codebook
    iterations: int
    change: float  # max |step(q) - q| at the returned levels (the optimality residual)
    converged: bool
    loss_value: float  # E[w · loss] under the model (weight domain: in unit-variance units)


# ------------------------------------------------------------------------------ set-up
def _measure(recipe: "LloydRecipe | QuantileRecipe"):
    """The measure the code is fitted to, and the number of levels it has."""
    r = recipe
    if isinstance(r, QuantileRecipe):  # the M-weighted law in the weight domain
        power = 1 if (r.domain == "weight" and r.normalization != "none") else 0
    else:
        power = weight_power(r.loss, r.domain, r.normalization)
    if r.scale is not None:
        B = cast(int, r.block_size)   # a scale rule normalises by absmax: a block size
        mu = scaled_measure(r.source, B, r.scale, r.qmax, power, tensor_size=r.tensor_size)
    else:
        mu = block_measure(r.source, r.block_size, r.normalization, power)
    with np.errstate(invalid="ignore", over="ignore"):
        probe = _cont_cum(mu, np.linspace(max(mu.lo, -1e300), min(mu.hi, 1e300), 65))
    if not np.all(np.isfinite(probe)) or not probe[-1] > 0:
        raise DerivationError(f"the law of the values for the {_describe(r)} has non-finite or no mass: its "
                              f"quadrature failed for this source")
    fixed = cast("tuple[float, ...]", r.fixed)   # set by the recipe (None only before)
    n_levels = 2**r.bits - (1 if r.symmetric and 0.0 in fixed else 0)
    return mu, n_levels


def _solve_measure(mu, r):
    """The measure the levels are solved on: under a scale rule the part in [-1, 1].  The
    fixed -1 and 1 own every value beyond, so no free level's cell changes, and the free levels
    stay inside the range the scaled layout gives the table (the loss uses the whole law)."""
    return mu if r.scale is None else RestrictedMeasure(mu, -1.0, 1.0)


def _describe(r) -> str:
    where = "no normalisation" if r.normalization == "none" else f"{r.normalization}, B={r.block_size}"
    return f"{r.bits}-bit {getattr(r, 'loss', 'quantile')} code of {r.source.spec} ({where}, {r.domain} domain)"


# ---------------------------------------------------------------------------- the machinery
def _cont_cum(mu, y):
    return _above_lo(mu, mu.T(0, y))


def _above_lo(mu, t0):
    """The continuous mass from ``mu.lo`` up to the point where ``T(0, ·)`` is ``t0``."""
    return t0 - mu.t0_lo


def _inverse_cont(mu, p):
    """y with continuous-part cumulative mass ``p`` (from ``mu.lo``)."""
    p = np.asarray(p, dtype=np.float64)
    if isinstance(mu, _Tabulated):
        return mu.inverse(p)
    lo, hi = mu.lo, mu.hi
    if not math.isfinite(lo) or not math.isfinite(hi):
        a, b = (-1.0 if not math.isfinite(lo) else lo), (1.0 if not math.isfinite(hi) else hi)
        while not math.isfinite(lo) and np.any(_cont_cum(mu, a) > p.min()):
            a *= 2
        while not math.isfinite(hi) and np.any(_cont_cum(mu, b) < p.max()):
            b *= 2
        lo, hi = a, b

    def f_df(y):
        t0, d = mu.T0_dens(y)
        return _above_lo(mu, t0), d
    return _monotone_solve(f_df, p, lo, hi, f=lambda y: _cont_cum(mu, y))


def _quantile_levels(mu, n_levels: int, fixed: Sequence[float]) -> np.ndarray:
    """Equal-probability placement of the free levels around the fixed ones (see :func:`quantile`)."""
    fx = np.asarray(sorted(fixed), dtype=np.float64)
    n_free = n_levels - fx.size
    total = float(_cont_cum(mu, mu.hi))
    bounds = np.concatenate([[mu.lo], fx, [mu.hi]])
    Fb = _cont_cum(mu, bounds)
    Fb[0], Fb[-1] = 0.0, total
    if not (math.isfinite(total) and total > 0 and np.all(np.isfinite(Fb))):
        raise DerivationError(f"the law of the values has non-finite or no mass (total {total!r}): the block "
                              f"quadrature failed for this source")
    gaps = []
    for g in range(bounds.size - 1):
        lo_level = g > 0  # lower end is a fixed level
        hi_level = g < bounds.size - 2
        if not lo_level and fx.size and fx[0] <= mu.lo:
            continue  # empty gap below a fixed level at the support's end
        if not hi_level and fx.size and fx[-1] >= mu.hi:
            continue
        mass = max(Fb[g + 1] - Fb[g], 0.0)
        c = (1.0 if lo_level else 0.5) + (1.0 if hi_level else 0.5) - 1.0
        gaps.append((g, mass, c, lo_level, hi_level))
    masses = np.array([m for _, m, _, _, _ in gaps])
    cs = np.array([c for _, _, c, _, _ in gaps])
    inv_delta = (n_free + cs.sum()) / masses.sum()
    want = np.maximum(masses * inv_delta - cs, 0.0)
    want *= n_free / want.sum() if want.sum() > 0 else 0.0
    counts = np.floor(want + 1e-9).astype(int)
    rem = want - counts
    while counts.sum() < n_free:  # largest remainder, ties to the upper gap
        i = max(range(len(gaps)), key=lambda j: (round(rem[j], 9), j))
        counts[i] += 1
        rem[i] = -1.0
    while counts.sum() > n_free:
        counts[int(np.argmax(counts))] -= 1
    probs = []
    for (g, mass, c, lo_level, hi_level), n in zip(gaps, counts):
        if n == 0:
            continue
        rank = np.arange(1, n + 1, dtype=np.float64)
        if lo_level and hi_level:
            pos = rank / (n + 1)
        elif lo_level:  # open upper end
            pos = rank / (n + 0.5)
        elif hi_level:  # open lower end
            pos = (rank - 0.5) / (n + 0.5)
        else:
            pos = (rank - 0.5) / n
        probs.append(Fb[g] + mass * pos)
    p = np.concatenate(probs) if probs else np.zeros(0)
    free = _inverse_cont(mu, p)
    # the inversion must hit its targets: a density that is unbounded near a point (very heavy
    # tails) can stall the solver far from them, and its answer would be silently wrong
    miss = np.abs(_cont_cum(mu, free) - p) if free.size else np.zeros(0)
    if not np.all(np.isfinite(free)) or np.any(miss > 1e-6 * total):
        i = int(np.argmax(np.where(np.isfinite(miss), miss, np.inf)))
        raise DerivationError(f"could not place the equal-probability levels: the law of the values is too "
                              f"concentrated near {free[i]:.3g} (cumulative mass off by {miss[i] / total:.1e})")
    levels = np.sort(np.concatenate([fx, free]))
    if levels.size != n_levels or not np.all(np.diff(levels) > 0):
        raise DerivationError(f"the equal-probability placement gave {np.unique(levels).size} distinct levels, "
                              f"not {n_levels}")
    return levels


class _Tabulated:
    """The measure with density ``p(y)**a`` (``p``: the density of ``mu``'s continuous part),
    tabulated on a grid: the high-resolution point density of the starting levels."""

    _N = 4097

    def __init__(self, mu, a: float) -> None:
        lo, hi = mu.lo, mu.hi
        if not (math.isfinite(lo) and math.isfinite(hi)):  # unnormalised source: its bulk
            tot = float(_cont_cum(mu, mu.hi))
            a_, b_ = _inverse_cont(mu, np.array([1e-12, 1 - 1e-12]) * tot)
            lo, hi = (lo if math.isfinite(lo) else float(a_)), (hi if math.isfinite(hi) else float(b_))
        self.lo, self.hi = mu.lo, mu.hi
        self.y = np.linspace(lo, hi, self._N)
        with np.errstate(invalid="ignore", over="ignore"):
            g = np.where(np.isfinite(self.y), mu.dens(self.y), 0.0)
        g = np.where(np.isfinite(g) & (g > 0), g, 0.0) ** a
        self.g = g
        self.c = np.concatenate([[0.0], np.cumsum(0.5 * (g[1:] + g[:-1]) * np.diff(self.y))])

    def T(self, k, y):
        return np.interp(np.asarray(y, dtype=np.float64), self.y, self.c)

    @property
    def t0_lo(self) -> float:
        return float(self.T(0, self.lo))

    def dens(self, y):
        return np.interp(np.asarray(y, dtype=np.float64), self.y, self.g)

    def inverse(self, p):
        return np.interp(p, self.c, self.y)


@overload
def lloyd_step(mu: _Measure, levels: np.ndarray, free: np.ndarray, loss: str,
               want_jac: Literal[False] = False) -> tuple[np.ndarray, None]:
    ...


@overload
def lloyd_step(mu: _Measure, levels: np.ndarray, free: np.ndarray, loss: str,
               want_jac: Literal[True]) -> tuple[np.ndarray, np.ndarray]:
    ...


def lloyd_step(mu: _Measure, levels: np.ndarray, free: np.ndarray, loss: str,
               want_jac: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """One Lloyd update of the free levels (centroids for L2, medians for L1) and, if asked,
    its Jacobian with respect to all levels (n×n)."""
    levels = np.asarray(levels, dtype=np.float64)
    n = levels.size
    e = _edges(mu, levels)
    M0, M1 = mu.cells(e, 1)
    new = levels.copy()
    fi = np.flatnonzero(free)
    occupied = M0[fi] > 0
    if loss == "l2":
        with np.errstate(invalid="ignore", divide="ignore"):
            c = M1[fi] / M0[fi]
        new[fi] = np.where(occupied, c, levels[fi])
    else:
        below = np.concatenate([[0.0], np.cumsum(M0)[:-1]])  # mass of the cells before each cell
        target = below[fi] + 0.5 * M0[fi]
        lo, hi = e[fi].copy(), e[fi + 1].copy()
        if not np.all(np.isfinite(lo)):  # unbounded first cell: walk down until below target
            step = 1.0
            base = np.minimum(levels[fi], np.where(np.isfinite(hi), hi, levels[fi]))
            lo = np.where(np.isfinite(lo), lo, base - step)
            while np.any(mu.cum(lo) > target) and step < 1e300:
                step *= 2
                lo = np.where(mu.cum(lo) > target, base - step, lo)
        if not np.all(np.isfinite(hi)):
            step = 1.0
            base = np.maximum(levels[fi], lo)
            hi = np.where(np.isfinite(hi), hi, base + step)
            while np.any(mu.cum(hi) < target) and step < 1e300:
                step *= 2
                hi = np.where(mu.cum(hi) < target, base + step, hi)
        med = _monotone_solve(mu.cum_dens, target, lo, hi, x0=levels[fi], f=mu.cum)
        new[fi] = np.where(occupied, med, levels[fi])
    if not want_jac:
        return new, None
    J = np.zeros((n, n))
    fin = np.isfinite(e)
    pe = np.where(fin, mu.dens(np.where(fin, e, 0.0)), 0.0)
    j = fi[M0[fi] > 0]
    a_j, b_j = e[j], e[j + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        if loss == "l2":
            c = new[j]
            da = np.where(np.isfinite(a_j), pe[j] * (c - np.where(np.isfinite(a_j), a_j, 0.0)) / M0[j], 0.0)
            db = np.where(np.isfinite(b_j), pe[j + 1] * (np.where(np.isfinite(b_j), b_j, 0.0) - c) / M0[j], 0.0)
        else:
            pm = mu.dens(new[j])
            ok = pm > 0
            da = np.where(ok, pe[j] / (2 * np.where(ok, pm, 1.0)), 0.0)
            db = np.where(ok, pe[j + 1] / (2 * np.where(ok, pm, 1.0)), 0.0)
    lo_ok = j > 0  # a_j = (q_{j-1} + q_j)/2
    hi_ok = j < n - 1  # b_j = (q_j + q_{j+1})/2
    np.add.at(J, (j[lo_ok], j[lo_ok] - 1), 0.5 * da[lo_ok])
    np.add.at(J, (j[lo_ok], j[lo_ok]), 0.5 * da[lo_ok])
    np.add.at(J, (j[hi_ok], j[hi_ok]), 0.5 * db[hi_ok])
    np.add.at(J, (j[hi_ok], j[hi_ok] + 1), 0.5 * db[hi_ok])
    return new, J


def newton_correction(J: np.ndarray, fi: np.ndarray, r: np.ndarray) -> np.ndarray:
    """``(I - J_ff)⁻¹ r``: the Newton correction of ``q = step(q)`` on the free levels ``fi``,
    given the step's Jacobian ``J`` (:func:`lloyd_step`).  ``J`` is tridiagonal (a cell ends at
    the midpoints to the two neighbours), so the system is solved as a banded one: LAPACK's
    general solver rounds by how many BLAS threads share its blocks, and a derived code would
    change with the machine's core count.  LinAlgError when the system is singular."""
    a = J[np.ix_(fi, fi)]
    ab = np.zeros((3, fi.size))
    ab[0, 1:] = -np.diagonal(a, 1)
    ab[1] = 1.0 - np.diagonal(a)
    ab[2, :-1] = -np.diagonal(a, -1)
    # check_finite=False: a non-finite system gives a non-finite correction, as np.linalg.solve's
    return solve_banded((1, 1), ab, r, check_finite=False)


def _expected_loss(mu, levels, loss):
    return float(np.sum(cell_errors(mu, levels, loss)))


_NEWTON_ITERATIONS = 60


def _solve(mu, init: np.ndarray, fixed: Sequence[float], loss: str, tol: float, max_iter: int,
           deadline: float = math.inf, give_up_after: int | None = None):
    """Newton (then plain Lloyd) from ``init``; returns levels, iterations and the final change.
    ``give_up_after``: stop after that many iterations unless the change is already at the
    converged level (the caller then tries another start)."""
    q = np.asarray(init, dtype=np.float64).copy()
    free = ~np.isin(q, np.asarray(fixed, dtype=np.float64))
    fi = np.flatnonzero(free)
    it = 0
    new, J = lloyd_step(mu, q, free, loss, want_jac=True)
    r = (q - new)[fi]
    res = float(np.max(np.abs(r))) if r.size else 0.0
    nrm = norm(r)
    best_q, best_res = q.copy(), res
    while res > tol and it < max_iter and time.monotonic() < deadline:
        if it == give_up_after and res > max(tol, _CONVERGED_AT):
            break
        it += 1
        if it > _NEWTON_ITERATIONS:  # Newton has not settled: plain Lloyd from the best point so far
            if it == _NEWTON_ITERATIONS + 1:
                q = best_q.copy()
            new = lloyd_step(mu, q, free, loss)[0]
            prev, res = res, float(np.max(np.abs(new - q)[fi]))
            q = new
            if res <= max(tol, _CONVERGED_AT) and res >= prev:
                break  # converged to round-off
            continue
        try:
            delta = newton_correction(J, fi, r)
        except np.linalg.LinAlgError:
            delta = r
        if not np.all(np.isfinite(delta)):
            delta = r
        # trust region: no free level moves by more than half the gap to a neighbour
        # (component-wise clipping keeps the order); compare with the plain Lloyd update
        gaps = np.diff(q)
        room = 0.5 * np.minimum(np.concatenate([[np.inf], gaps])[fi], np.concatenate([gaps, [np.inf]])[fi])
        step = np.clip(delta, -room, room)
        best, tried = None, None
        for t in (None, 1.0, 0.5, 0.25, 0.125, 0.0625):  # None: the full Newton step
            cand = q.copy()
            cand[fi] = np.clip(q[fi] - (delta if t is None else t * step), mu.lo, mu.hi)
            if not np.all(np.diff(cand) > 0):
                continue
            if tried is not None and cand.tobytes() == tried:
                continue  # the full step within the trust region again: the same residual, not better
            tried = cand.tobytes()
            new_c, J_c = lloyd_step(mu, cand, free, loss, want_jac=True)
            r_c = (cand - new_c)[fi]
            nrm_c = norm(r_c)
            if best is None or nrm_c < best[0]:
                best = (nrm_c, cand, new_c, J_c, r_c)
            if nrm_c < 0.5 * nrm:
                break
        if best is None or best[0] >= 0.5 * nrm:  # try the plain Lloyd update too
            cand = new.copy()
            new_c, J_c = lloyd_step(mu, cand, free, loss, want_jac=True)
            r_c = (cand - new_c)[fi]
            nrm_c = norm(r_c)
            lloyd_cand = (nrm_c, cand, new_c, J_c, r_c)
            if best is None or nrm_c < best[0] or best[0] >= nrm:
                best = lloyd_cand  # the Lloyd update never increases the expected loss
        nrm_b, cand, new_c, J_c, r_c = best
        res_b = float(np.max(np.abs(r_c)))
        if nrm_b >= nrm and res <= 1e3 * tol:
            break  # converged to round-off
        q, new, J, r, nrm, res = cand, new_c, J_c, r_c, nrm_b, res_b
        if res < best_res:
            best_q, best_res = q.copy(), res
    if it > _NEWTON_ITERATIONS:  # report the residual at the returned levels
        res = float(np.max(np.abs(lloyd_step(mu, q, free, loss)[0] - q)[fi]))
    return q, it, res


_RESTART_AFTER = 12  # Newton from a good start converges in 2-6 iterations
_MANY_FREE = 24  # from this many free levels on (5 bits and more), start at the high-resolution density


def _solve_levels(mu, n_levels: int, fixed: Sequence[float], loss: str, tol: float, max_iter: int,
                  deadline: float):
    """Levels, iterations and final change, from the two starting points (module docstring)."""
    density_power = 1 / 3 if loss == "l2" else 1 / 2
    starts = [lambda: _quantile_levels(mu, n_levels, fixed),
              lambda: _quantile_levels(_Tabulated(mu, density_power), n_levels, fixed)]
    if n_levels - len(fixed) >= _MANY_FREE:
        starts.reverse()
    try:
        init = starts[0]()
    except DerivationError:  # e.g. an unbounded density the equal-probability placement cannot invert
        return _solve(mu, starts[1](), fixed, loss, tol, max_iter, deadline)
    q, it, res = _solve(mu, init, fixed, loss, tol, max_iter, deadline, give_up_after=_RESTART_AFTER)
    if res > max(tol, _CONVERGED_AT) and it < max_iter and time.monotonic() < deadline:
        try:
            init = starts[1]()
        except DerivationError:
            return q, it, res
        q2, it2, res2 = _solve(mu, init, fixed, loss, tol, max_iter - it, deadline)
        it += it2
        if res2 <= res:
            q, res = q2, res2
    return q, it, res


def _check_budget(tol: Any, max_iter: Any, max_time: Any) -> float:
    """Validates the solver settings; returns the deadline (time.monotonic() units)."""
    # typeshed's numbers.Real declares only < and <= (a Real's own > answers 0 < tol)
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 < tol < 1:  # type: ignore[operator]
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    check_int(max_iter, "max_iter", 0)
    if max_time is None:
        return math.inf
    if (isinstance(max_time, bool) or not isinstance(max_time, numbers.Real)
            or not max_time > 0):  # type: ignore[operator]
        raise ValueError(f"max_time must be a positive number of seconds or None, got {max_time!r}")
    return time.monotonic() + float(max_time)


def _solve_recipe(r: LloydRecipe, tol: float = TOL, max_iter: int = MAX_ITER, max_time: float | None = MAX_TIME,
                  name: str | None = None) -> tuple[LloydResult, str]:
    """The solve behind :func:`solve_lloyd`; also returns why it stopped early ('' if it did not)."""
    deadline = _check_budget(tol, max_iter, max_time)
    full, n_levels = _measure(r)
    mu = _solve_measure(full, r)
    fx = list(cast("tuple[float, ...]", r.fixed))   # set by the recipe (None only before)
    if r.partition == "halves":
        neg_fx, pos_fx = [v for v in fx if v < 0], [v for v in fx if v > 0]
        n_neg = (n_levels - 1) // 2  # the extra level goes to the positive half, as NF4/AF4
        n_pos = n_levels - 1 - n_neg
        qn, itn, rn = _solve_levels(RestrictedMeasure(mu, mu.lo, 0.0), n_neg, neg_fx, r.loss, tol, max_iter,
                                    deadline)
        qp, itp, rp = _solve_levels(RestrictedMeasure(mu, 0.0, mu.hi), n_pos, pos_fx, r.loss, tol, max_iter,
                                    deadline)
        levels, it, res = np.concatenate([qn, [0.0], qp]), itn + itp, max(rn, rp)
    elif r.symmetric:
        pos_fixed = [v for v in fx if v >= 0]
        n_half = n_levels // 2 + (1 if 0.0 in fx else 0)
        half, it, res = _solve_levels(FoldedMeasure(mu), n_half, pos_fixed, r.loss, tol, max_iter, deadline)
        pos = half[half > 0]
        levels = np.concatenate([-pos[::-1], [0.0] if 0.0 in fx else [], pos])
    else:
        levels, it, res = _solve_levels(mu, n_levels, fx, r.loss, tol, max_iter, deadline)
    if levels.size != n_levels or not np.all(np.isfinite(levels)) or not np.all(np.diff(levels) > 0):
        n_valid = np.unique(levels[np.isfinite(levels)]).size
        raise DerivationError(f"the {_describe(r)} came out with {n_valid} valid distinct levels instead of "
                              f"{n_levels}: the block law could not be evaluated")
    loss_value = _expected_loss(full, levels, r.loss)
    if not (math.isfinite(loss_value) and math.isfinite(res)):
        raise DerivationError(f"the {_describe(r)} has a non-finite expected loss or change ({loss_value!r}, "
                              f"{res!r}): the block law could not be evaluated")
    converged = res <= max(tol, _CONVERGED_AT)
    why = ""
    if not converged:
        why = ("the time budget" if time.monotonic() >= deadline else
               "the iteration budget" if it >= max_iter else "no further progress")
    nm = _lloyd_name(r) if name is None else name
    cb = Codebook(levels=levels, bits=r.bits, name=nm, source="derived", recipe=r.to_dict())
    _warn_edges(cb, r)
    return LloydResult(cb, it, res, converged, loss_value), why


def _warn_edges(cb: Codebook, r: LloydRecipe | QuantileRecipe) -> None:
    """:func:`~quantbook.codebooks.codebook.warn_float32_edges` for every float32 table made from
    the derived levels: the code's own (the byte format's, the kernels') and, under a rule of
    the scaled layout, the table that layout stores (levels times qmax, other rounding edges)."""
    warn_float32_edges(cb.levels, f"the {_describe(r)}")
    if r.scale is not None and get_rule(r.scale).layout == "scaled":
        warn_float32_edges(scaled_products(cb, r.qmax), f"the scaled layout's table (levels x {r.qmax:g}) of the "
                           f"{_describe(r)} under {r.scale}")


def _lloyd_name(r: LloydRecipe) -> str:
    """The ``lloyd-…`` name quantbook.naming reads back as ``r`` where the grammar can say
    ``r`` (normalisation, fixed levels, symmetry, partition and scale at their defaults, a
    source given by a spelling), else a label (:func:`_label`)."""
    source = getattr(r.source, "spec", r.source)
    said = ("bits", "block_size", "loss", "domain", "source")
    unsaid = {f.name: getattr(r, f.name) for f in fields(r) if f.name not in said}
    defaults = {f.name: f.default for f in fields(LloydRecipe) if f.name not in said}
    defaults["fixed"] = default_fixed(LloydRecipe.normalization)
    if unsaid == defaults and not source.startswith(EMPIRICAL_PREFIX):
        B = cast(int, r.block_size)   # normalised (the default): a block size
        return lloyd_spelling(r.loss, B, r.bits, r.domain, source, LloydRecipe.bits, LloydRecipe.source)
    return _label(f"lloyd-{r.loss}", r)


def _label(kind: str, r: LloydRecipe | QuantileRecipe) -> str:
    """The label of a table the name grammar cannot spell (naming refuses it with how to use the
    table): ``KIND-Kb[-BN]`` and what :func:`~.recipes.recipe_label` adds."""
    head = f"{kind}-{r.bits}b" + (f"-B{r.block_size}" if r.normalization != "none" else "")
    return recipe_label(head, r, ("bits", "block_size", "loss"), {"fixed": default_fixed(r.normalization)})


def _warn_unconverged(res: LloydResult, why: str, tol: float, r: LloydRecipe) -> None:
    if res.converged:
        return
    tail = ("; a time-limited result may not re-derive bit for bit from its recipe"
            if why == "the time budget" else "")
    warn(f"Lloyd-Max iteration for the {_describe(r)} stopped by {why} after {res.iterations} "
         f"iterations with change {res.change:.1e} (> {max(tol, _CONVERGED_AT):.0e}): the table is "
         f"not optimal{tail}", LloydWarning)


def solve_lloyd(bits: int = _L.bits, block_size: int | None = _L.block_size, loss: str = _L.loss,
                domain: str = _L.domain, normalization: str = _L.normalization, source: Any = _L.source,
                fixed: Any = _L.fixed, symmetric: bool = _L.symmetric, tol: float = TOL,
                max_iter: int = MAX_ITER, name: str | None = None, partition: str = _L.partition,
                max_time: float | None = MAX_TIME, scale: Any = _L.scale, qmax: float = _L.qmax,
                tensor_size: int | None = _L.tensor_size) -> LloydResult:
    """Lloyd-Max codebook with convergence information; see :func:`lloyd`.  Warns
    (:class:`LloydWarning`) when the result did not converge."""
    check_given_name(name)
    r = LloydRecipe(bits, block_size, loss, domain, normalization, source, fixed, symmetric, partition,
                    _scale_spec(scale), qmax, tensor_size)
    res, why = _solve_recipe(r, tol, max_iter, max_time, name)
    _warn_unconverged(res, why, tol, r)
    return res


def lloyd(bits: int = _L.bits, block_size: int | None = _L.block_size, loss: str = _L.loss,
          domain: str = _L.domain, normalization: str = _L.normalization, source: Any = _L.source,
          fixed: Any = _L.fixed, symmetric: bool = _L.symmetric, tol: float = TOL, max_iter: int = MAX_ITER,
          name: str | None = None, partition: str = _L.partition, max_time: float | None = MAX_TIME,
          scale: Any = _L.scale, qmax: float = _L.qmax, tensor_size: int | None = _L.tensor_size) -> Codebook:
    """The Lloyd-Max codebook minimising the expected L1/L2 error (module docstring).

    Parameters (defaults: the fields of :class:`~.recipes.LloydRecipe`): ``bits`` 1..8;
    ``block_size`` B (ignored with ``normalization="none"``); ``loss`` ``"l1"``/``"l2"``;
    ``domain`` ``"weight"`` (error ``M·(y - q)``, needs a source with a finite variance) or
    ``"normalized"`` (error ``y - q``); ``normalization`` ``"absmax"``, ``"signed-absmax"`` or
    ``"none"`` (levels in units of the source's standard deviation); ``source`` a
    :class:`~quantbook.derive.sources.Source` or spelling (``normal``, ``laplace``,
    ``student-t:NU``, ``FILE.npy``); ``fixed`` levels kept as they are (default
    :func:`default_fixed`; ``()`` or ``"none"`` frees all; a string ``"-1,0,1"`` is read as
    numbers); ``tol`` the convergence threshold on the Lloyd change; ``max_iter`` and
    ``max_time`` (seconds, ``None``: unlimited) the budget; ``partition`` ``"nearest"`` (the
    optimum) or ``"halves"`` (AF4's construction, see the module docstring); ``symmetric``
    levels symmetric about 0 (module docstring); ``name`` the Codebook's name (default: one
    spelled from the arguments, in the codebook-name grammar where it can say them).  The returned
    Codebook's ``recipe`` re-derives it bit for bit (unless the time budget stopped it), where
    the source is a spelling or a file (on another CPU: its float32 table, docs/derivation.md);
    an in-memory sample is named in the recipe only by a
    digest (``empirical:…``), which :func:`~.recipes.derive_from_recipe` cannot read back
    (save the sample as FILE.npy and derive from the file to get a recipe that re-derives).
    Raises ValueError for bad arguments and :class:`DerivationError` when no valid table results;
    warns (:class:`LloydWarning`) when the iteration stopped unconverged.  :func:`solve_lloyd`
    also returns iterations and the final change.

    ``scale`` (a rule of :mod:`quantbook.scales` or its name, e.g. ``"e4m3"``,
    ``"e8m0:floor"``, ``"float16"``; None: the exact float32 absmax) derives the code for the
    scaled layout: the block maximum goes to ``qmax`` (the table's largest magnitude in the
    units the scale multiplies, 6 as for E2M1) by the rule, the levels are returned in the
    codebook's units (largest magnitude 1, with -1 and 1 fixed) and values beyond them saturate
    (:mod:`.scaled`).  ``tensor_size`` models the tensor scale of a two-level rule (``e4m3``)
    as that of tensors of that many values; None averages over its phase.
    """
    check_given_name(name)
    r = LloydRecipe(bits, block_size, loss, domain, normalization, source, fixed, symmetric, partition,
                    _scale_spec(scale), qmax, tensor_size)
    res, why = _solve_recipe(r, tol, max_iter, max_time, name)
    _warn_unconverged(res, why, tol, r)
    return res.codebook


def _scale_spec(scale: Any) -> Any:
    """A rule object as its name (recipes hold names); anything else as given."""
    return getattr(scale, "name", scale) if scale is not None and not isinstance(scale, str) else scale


def _lloyd_codebook(r: LloydRecipe) -> Codebook:
    """:meth:`LloydRecipe.derive`: the default solver settings."""
    res, why = _solve_recipe(r)
    _warn_unconverged(res, why, TOL, r)
    return res.codebook


def quantile(bits: int = _Q.bits, block_size: int | None = _Q.block_size, normalization: str = _Q.normalization,
             source: Any = _Q.source, fixed: Any = _Q.fixed, symmetric: bool = _Q.symmetric,
             domain: str = _Q.domain, name: str | None = None, scale: Any = _Q.scale, qmax: float = _Q.qmax,
             tensor_size: int | None = _Q.tensor_size) -> Codebook:
    """The equal-probability ("NF-style") codebook of the exact block-B law of ``y``.

    Levels are equally spaced in probability of the continuous part of the law (the
    ``M``-weighted law with ``domain="weight"``, which needs a source with a finite variance),
    the fixed levels counting as levels; an open end (no fixed level at the support's end) lies
    half a spacing beyond the outermost level.  The free levels are shared among the gaps
    between fixed levels in proportion to their probability; an exact tie goes to the upper
    gap (so with {-1, 0, 1} fixed and a symmetric source, 4 bits give 6 negative and 7 positive
    free levels, as NF4).  Parameters and defaults: :class:`~.recipes.QuantileRecipe`;
    ``scale``, ``qmax`` and ``tensor_size`` as in :func:`lloyd` (the probabilities are those of
    the values inside [-1, 1]).
    """
    check_given_name(name)
    return _quantile_codebook(QuantileRecipe(bits, block_size, normalization, source, fixed, symmetric, domain,
                                             _scale_spec(scale), qmax, tensor_size), name)


def _quantile_codebook(r: QuantileRecipe, name: str | None = None) -> Codebook:
    mu, n_levels = _measure(r)
    mu = _solve_measure(mu, r)
    fx = list(cast("tuple[float, ...]", r.fixed))   # set by the recipe (None only before)
    if r.symmetric:
        pos_fixed = [v for v in fx if v >= 0]
        half = _quantile_levels(FoldedMeasure(mu), n_levels // 2 + (1 if 0.0 in fx else 0), pos_fixed)
        pos = half[half > 0]
        levels = np.concatenate([-pos[::-1], [0.0] if 0.0 in fx else [], pos])
    else:
        levels = _quantile_levels(mu, n_levels, fx)
    if name is None:   # a name given is the name as given (the Codebook checks it)
        name = _label("quantile", r)
    cb = Codebook(levels=levels, bits=r.bits, name=name, source="derived", recipe=r.to_dict())
    _warn_edges(cb, r)
    return cb
