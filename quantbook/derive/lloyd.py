"""Lloyd-Max codebooks (L2 centroids, L1 medians) and equal-probability codebooks of the exact
block distribution (:mod:`quantbook.derive.block`).

Problem.  Choose levels ``q`` (some of them fixed) minimising ``E[w(M)·loss(y - q(y))]`` where
``q(y)`` is the nearest level (ties to the lower level, as :meth:`Codebook.encode`), ``loss`` is
``(·)²`` (L2) or ``|·|`` (L1), and the weight ``w`` is 1 in the normalised domain and ``M²``
(L2) or ``M`` (L1) in the weight domain, where the error of a weight is ``M·(y - q)``.  The
necessary conditions are: each free level is the (weighted) centroid (L2) or median (L1) of
its cell, the cells being bounded by the midpoints.

Solver.  Start from the equal-probability code (:func:`quantile`); iterate Newton's method on
the fixed-point equations ``q = step(q)`` (``step`` = one Lloyd update: centroids or medians
of the current cells, computed exactly from closed-form cell integrals), with the analytic
tridiagonal Jacobian (``∂c/∂b = p(b)(b - c)/m`` for a centroid, ``p(b)/(2p(med))`` for a median).
Each iteration takes the full Newton step if it halves the residual, else the best of
shorter steps clipped to half the gap to the neighbouring levels and the plain Lloyd update;
after 60 iterations without convergence it continues with plain Lloyd updates from the best
point (slow but monotone; needed for very heavy tails).  It stops when the Lloyd change
``max|step(q) - q|`` is ≤ ``tol`` (default 1e-12), reported as ``LloydResult.change``
(normal, Laplace, Student-t ν ≥ 3: 4-10 iterations).  Deterministic: no random numbers,
fixed quadrature.

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
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..codebooks.codebook import Codebook
from .block import (NORMALIZATIONS, FoldedMeasure, RestrictedMeasure, _check_block_size, _monotone_solve,
                    block_measure)
from .metrics import _edges, cell_errors
from .sources import parse_source

__all__ = ["lloyd", "solve_lloyd", "quantile", "LloydResult", "default_fixed", "lloyd_step", "weight_power"]

LOSSES = ("l1", "l2")
DOMAINS = ("weight", "normalized")


def default_fixed(normalization: str) -> list[float]:
    """{-1, 0, 1} under absmax, {0, 1} under signed absmax, none without normalisation."""
    return {"absmax": [-1.0, 0.0, 1.0], "signed-absmax": [0.0, 1.0], "none": []}[normalization]


def weight_power(loss: str, domain: str, normalization: str) -> int:
    """Power ``p`` of the scale ``M`` weighting each value's loss: the weight-domain error is
    ``M·(y - q)``, so ``p = 2`` for L2 and ``1`` for L1; ``0`` in the normalised domain and
    without normalisation (then the levels are already in source units)."""
    if domain != "weight" or normalization == "none":
        return 0
    return 2 if loss == "l2" else 1


@dataclass(frozen=True)
class LloydResult:
    codebook: Codebook
    iterations: int
    change: float  # max |step(q) - q| at the returned levels (the optimality residual)
    converged: bool
    loss_value: float  # E[w · loss] under the model (weight domain: in unit-variance units)


# ----------------------------------------------------------------------------- validation
def _check_common(bits, block_size, loss, domain, normalization):
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an integer from 1 to 8, got {bits!r}")
    if loss is not None and loss not in LOSSES:  # None: no loss (the quantile code)
        raise ValueError(f"loss must be l1 or l2, got {loss!r}")
    if domain not in DOMAINS:
        raise ValueError(f"domain must be weight or normalized, got {domain!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    if normalization != "none":
        _check_block_size(block_size)
    return int(bits)


def _prepare(bits, block_size, loss, domain, normalization, source, fixed, symmetric):
    bits = _check_common(bits, block_size, loss, domain, normalization)
    src = parse_source(source)
    fx = default_fixed(normalization) if fixed is None else [float(v) for v in fixed]
    fx = sorted(set(v + 0.0 for v in fx))
    if any(not math.isfinite(v) for v in fx):
        raise ValueError("fixed levels must be finite")
    if normalization != "none" and any(abs(v) > 1 for v in fx):
        raise ValueError(f"fixed levels must lie in [-1, 1] under {normalization}, got {fx}")
    n_levels = 2**bits
    if symmetric:
        if any(-v not in fx for v in fx):
            raise ValueError(f"symmetric codebooks need symmetric fixed levels, got {fx}")
        n_levels = 2**bits - (1 if 0.0 in fx else 0)
    if len(fx) > n_levels:
        raise ValueError(f"{len(fx)} fixed levels {fx} do not fit in {bits} bit(s); free them with fixed=() (--fix none)")
    if len(fx) == n_levels:
        raise ValueError(f"all {n_levels} levels are fixed; nothing to derive")
    if loss is None:  # quantile code: the M-weighted law in the weight domain
        power = 1 if (domain == "weight" and normalization != "none") else 0
    else:
        power = weight_power(loss, domain, normalization)
    if normalization == "none" and loss == "l2" and src.moment_limit <= 2:
        raise ValueError(f"{src.spec} has infinite variance: no L2 quantizer without normalisation")
    if normalization == "none" and loss == "l1" and src.moment_limit <= 1:
        raise ValueError(f"{src.spec} has no finite mean: no L1 quantizer without normalisation")
    mu = block_measure(src, block_size if normalization != "none" else None, normalization, power)
    return bits, src, fx, n_levels, mu


def _recipe(method, bits, block_size, loss, domain, normalization, src, fx, symmetric, partition="nearest"):
    r: dict[str, Any] = {"method": method, "bits": bits}
    if normalization != "none":
        r["block_size"] = int(block_size)
    if loss is not None:
        r["loss"] = loss
    if normalization != "none":
        r["domain"] = domain
    r["normalization"] = normalization
    r["source"] = src.spec
    r["fixed"] = [float(v) for v in fx]
    if symmetric:
        r["symmetric"] = True
    if partition != "nearest":
        r["partition"] = partition
    return r


# ---------------------------------------------------------------------------- the machinery
def _cont_cum(mu, y):
    return mu.T(0, y) - mu.T(0, mu.lo)


def _inverse_cont(mu, p):
    """y with continuous-part cumulative mass ``p`` (from ``mu.lo``)."""
    p = np.asarray(p, dtype=np.float64)
    lo, hi = mu.lo, mu.hi
    if not math.isfinite(lo) or not math.isfinite(hi):
        a, b = (-1.0 if not math.isfinite(lo) else lo), (1.0 if not math.isfinite(hi) else hi)
        while not math.isfinite(lo) and np.any(_cont_cum(mu, a) > p.min()):
            a *= 2
        while not math.isfinite(hi) and np.any(_cont_cum(mu, b) < p.max()):
            b *= 2
        lo, hi = a, b
    return _monotone_solve(lambda y: _cont_cum(mu, y), mu.dens, p, lo, hi)


def _quantile_levels(mu, n_levels: int, fixed: Sequence[float]) -> np.ndarray:
    """Equal-probability placement of the free levels around the fixed ones (see :func:`quantile`)."""
    fx = np.asarray(sorted(fixed), dtype=np.float64)
    n_free = n_levels - fx.size
    total = float(_cont_cum(mu, mu.hi))
    bounds = np.concatenate([[mu.lo], fx, [mu.hi]])
    Fb = _cont_cum(mu, bounds)
    Fb[0], Fb[-1] = 0.0, total
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
        i = np.arange(1, n + 1, dtype=np.float64)
        if lo_level and hi_level:
            pos = i / (n + 1)
        elif lo_level:  # open upper end
            pos = i / (n + 0.5)
        elif hi_level:  # open lower end
            pos = (i - 0.5) / (n + 0.5)
        else:
            pos = (i - 0.5) / n
        probs.append(Fb[g] + mass * pos)
    p = np.concatenate(probs) if probs else np.zeros(0)
    free = _inverse_cont(mu, p)
    return np.sort(np.concatenate([fx, free]))


def lloyd_step(mu, levels: np.ndarray, free: np.ndarray, loss: str, want_jac: bool = False):
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
        med = _monotone_solve(mu.cum, mu.dens, target, lo, hi, x0=levels[fi])
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


def _expected_loss(mu, levels, loss):
    return float(np.sum(cell_errors(mu, levels, loss)))


_NEWTON_ITERATIONS = 60


def _solve(mu, init: np.ndarray, fixed: Sequence[float], loss: str, tol: float, max_iter: int):
    q = np.asarray(init, dtype=np.float64).copy()
    free = ~np.isin(q, np.asarray(fixed, dtype=np.float64))
    fi = np.flatnonzero(free)
    it = 0
    new, J = lloyd_step(mu, q, free, loss, want_jac=True)
    r = (q - new)[fi]
    res = float(np.max(np.abs(r))) if r.size else 0.0
    nrm = float(np.linalg.norm(r))
    best_q, best_res = q.copy(), res
    while res > tol and it < max_iter:
        it += 1
        if it > _NEWTON_ITERATIONS:  # Newton has not settled: plain Lloyd from the best point so far
            if it == _NEWTON_ITERATIONS + 1:
                q = best_q.copy()
            new = lloyd_step(mu, q, free, loss)[0]
            res = float(np.max(np.abs(new - q)[fi]))
            q = new
            continue
        A = np.eye(fi.size) - J[np.ix_(fi, fi)]
        try:
            delta = np.linalg.solve(A, r)
        except np.linalg.LinAlgError:
            delta = r
        if not np.all(np.isfinite(delta)):
            delta = r
        # trust region: no free level moves by more than half the gap to a neighbour
        # (component-wise clipping keeps the order); compare with the plain Lloyd update
        gaps = np.diff(q)
        room = 0.5 * np.minimum(np.concatenate([[np.inf], gaps])[fi], np.concatenate([gaps, [np.inf]])[fi])
        step = np.clip(delta, -room, room)
        best = None
        for t in (None, 1.0, 0.5, 0.25, 0.125, 0.0625):  # None: the full Newton step
            cand = q.copy()
            cand[fi] = np.clip(q[fi] - (delta if t is None else t * step), mu.lo, mu.hi)
            if not np.all(np.diff(cand) > 0):
                continue
            new_c, J_c = lloyd_step(mu, cand, free, loss, want_jac=True)
            r_c = (cand - new_c)[fi]
            nrm_c = float(np.linalg.norm(r_c))
            if best is None or nrm_c < best[0]:
                best = (nrm_c, cand, new_c, J_c, r_c)
            if nrm_c < 0.5 * nrm:
                break
        if best is None or best[0] >= 0.5 * nrm:  # try the plain Lloyd update too
            cand = new.copy()
            new_c, J_c = lloyd_step(mu, cand, free, loss, want_jac=True)
            r_c = (cand - new_c)[fi]
            nrm_c = float(np.linalg.norm(r_c))
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


def solve_lloyd(bits: int = 4, block_size: int | None = 64, loss: str = "l2", domain: str = "weight",
                normalization: str = "absmax", source: Any = "normal", fixed: Sequence[float] | None = None,
                symmetric: bool = False, tol: float = 1e-12, max_iter: int = 1000,
                name: str | None = None, partition: str = "nearest") -> LloydResult:
    """Lloyd-Max codebook with convergence information; see :func:`lloyd`."""
    bits, src, fx, n_levels, mu = _prepare(bits, block_size, loss, domain, normalization, source, fixed, symmetric)
    if partition not in ("nearest", "halves"):
        raise ValueError(f"partition must be nearest or halves, got {partition!r}")
    if partition == "halves":
        if 0.0 not in fx or symmetric:
            raise ValueError("partition='halves' needs 0 among the fixed levels and symmetric=False")
        neg_fx, pos_fx = [v for v in fx if v < 0], [v for v in fx if v > 0]
        n_neg = (n_levels - 1) // 2  # the extra level goes to the positive half, as NF4/AF4
        n_pos = n_levels - 1 - n_neg
        lo_mu = RestrictedMeasure(mu, mu.lo, 0.0)
        hi_mu = RestrictedMeasure(mu, 0.0, mu.hi)
        qn, itn, rn = _solve(lo_mu, _quantile_levels(lo_mu, n_neg, neg_fx), neg_fx, loss, tol, max_iter)
        qp, itp, rp = _solve(hi_mu, _quantile_levels(hi_mu, n_pos, pos_fx), pos_fx, loss, tol, max_iter)
        levels, it, res = np.concatenate([qn, [0.0], qp]), itn + itp, max(rn, rp)
    elif symmetric:
        fmu = FoldedMeasure(mu)
        pos_fixed = [v for v in fx if v >= 0]
        n_half = n_levels // 2 + (1 if 0.0 in fx else 0)
        init = _quantile_levels(fmu, n_half, pos_fixed)
        half, it, res = _solve(fmu, init, pos_fixed, loss, tol, max_iter)
        pos = half[half > 0]
        levels = np.concatenate([-pos[::-1], [0.0] if 0.0 in fx else [], pos])
    else:
        init = _quantile_levels(mu, n_levels, fx)
        levels, it, res = _solve(mu, init, fx, loss, tol, max_iter)
    recipe = _recipe("lloyd", bits, block_size, loss, domain, normalization, src, fx, symmetric, partition)
    nm = name or f"lloyd-{loss}-{bits}b" + (f"-B{block_size}" if normalization != "none" else "")
    cb = Codebook(levels=levels, bits=bits, name=nm, source="derived", recipe=recipe)
    return LloydResult(cb, it, res, res <= max(tol, 1e-10), _expected_loss(mu, levels, loss))


def lloyd(bits: int = 4, block_size: int | None = 64, loss: str = "l2", domain: str = "weight",
          normalization: str = "absmax", source: Any = "normal", fixed: Sequence[float] | None = None,
          symmetric: bool = False, tol: float = 1e-12, max_iter: int = 1000, name: str | None = None,
          partition: str = "nearest") -> Codebook:
    """The Lloyd-Max codebook minimising the expected L1/L2 error (module docstring).

    Parameters: ``bits`` 1..8; ``block_size`` B (ignored with ``normalization="none"``);
    ``loss`` ``"l1"``/``"l2"``; ``domain`` ``"weight"`` (error ``M·(y - q)``) or
    ``"normalized"`` (error ``y - q``); ``normalization`` ``"absmax"``, ``"signed-absmax"`` or
    ``"none"`` (levels in units of the source's standard deviation); ``source`` a
    :class:`~quantbook.derive.sources.Source` or spelling (``normal``, ``laplace``,
    ``student-t:NU``, ``FILE.npy``); ``fixed`` levels kept as they are (default
    :func:`default_fixed`; ``()`` frees all); ``tol`` the convergence threshold on the Lloyd
    change; ``partition`` ``"nearest"`` (the optimum) or ``"halves"`` (AF4's construction,
    see the module docstring).  The returned Codebook's ``recipe`` re-derives it bit for bit.
    Raises ValueError for bad arguments.  :func:`solve_lloyd` also returns iterations and the
    final change.
    """
    res = solve_lloyd(bits, block_size, loss, domain, normalization, source, fixed, symmetric, tol,
                      max_iter, name, partition)
    if not res.converged:
        warnings.warn(f"Lloyd iteration stopped after {res.iterations} iterations with change {res.change:.1e} "
                      f"(> {max(tol, 1e-10):.0e})", RuntimeWarning, stacklevel=2)
    return res.codebook


def quantile(bits: int = 4, block_size: int | None = 64, normalization: str = "absmax", source: Any = "normal",
             fixed: Sequence[float] | None = None, symmetric: bool = False, domain: str = "normalized",
             name: str | None = None) -> Codebook:
    """The equal-probability ("NF-style") codebook of the exact block-B law of ``y``.

    Levels are equally spaced in probability of the continuous part of the law (the
    ``M``-weighted law with ``domain="weight"``), the fixed levels counting as levels; an open
    end (no fixed level at the support's end) lies half a spacing beyond the outermost level.
    The free levels are shared among the gaps between fixed levels in proportion to their
    probability; an exact tie goes to the upper gap (so with {-1, 0, 1} fixed and a symmetric
    source, 4 bits give 6 negative and 7 positive free levels, as NF4).
    """
    bits, src, fx, n_levels, mu = _prepare(bits, block_size, None, domain, normalization, source, fixed,
                                           symmetric)
    if symmetric:
        fmu = FoldedMeasure(mu)
        pos_fixed = [v for v in fx if v >= 0]
        half = _quantile_levels(fmu, n_levels // 2 + (1 if 0.0 in fx else 0), pos_fixed)
        pos = half[half > 0]
        levels = np.concatenate([-pos[::-1], [0.0] if 0.0 in fx else [], pos])
    else:
        levels = _quantile_levels(mu, n_levels, fx)
    recipe = _recipe("quantile", bits, block_size, None, domain, normalization, src, fx, symmetric)
    nm = name or f"quantile-{bits}b" + (f"-B{block_size}" if normalization != "none" else "")
    return Codebook(levels=levels, bits=bits, name=nm, source="derived", recipe=recipe)


def _from_recipe_lloyd(r) -> Codebook:
    return lloyd(int(r["bits"]), r.get("block_size"), r.get("loss", "l2"), r.get("domain", "weight"),
                 r.get("normalization", "absmax"), r.get("source", "normal"), r.get("fixed"),
                 bool(r.get("symmetric", False)), partition=r.get("partition", "nearest"))


def _from_recipe_quantile(r) -> Codebook:
    return quantile(int(r["bits"]), r.get("block_size"), r.get("normalization", "absmax"), r.get("source", "normal"),
                    r.get("fixed"), bool(r.get("symmetric", False)), r.get("domain", "normalized"))
