r"""The law of one normalised value ``y = x / scale`` of a block of B i.i.d. weights.

Model.  ``x_1 … x_B`` are i.i.d. with density ``g`` and cdf ``F`` (a
:class:`~quantbook.derive.sources.Source`); ``M = max_i |x_i|`` with cdf ``G(m)^B``,
``G(m) = F(m) - F(-m)``, density ``B h(m) G(m)^{B-1}``, ``h(m) = g(m) + g(-m)``.

* ``absmax``: ``scale = M``; the extreme element becomes ``sign(x) = ±1``.
* ``signed-absmax``: ``scale`` = the element of largest magnitude, sign included, so the
  extreme element becomes ``+1`` and the others ``y = x·sign / M``.

Pick one of the B values uniformly.  With probability ``1/B`` it is the extreme element
(point masses at ±1); otherwise, given ``M = m`` and the extreme's sign ``+`` (probability
``π₊(m) = g(m)/h(m)``) or ``-``, it is one of the other ``B-1`` values, i.i.d. ``X`` given
``|X| < m``.  So, for ``|y| < 1``, with a weight ``w(M)`` (1 for the normalised domain;
``M`` or ``M²`` for the weight domain, where the error of a value is ``M·(y - q)``)::

    p_w(y) = (B-1) ∫_0^∞ w(m) h(m) G(m)^{B-2} m [π₊(m) g(y m) + π₋(m) g(-y m)] dm
    P_w(y = +1) = E[w(M) π₊(M)] / B          P_w(y = -1) = E[w(M) π₋(M)] / B

under signed absmax, and under absmax the same with ``π₊ ≡ 1, π₋ ≡ 0`` inside the integral
and the atoms split by sign as above (for a symmetric source ``1/(2B)`` each; the continuous
parts of the two normalisations then coincide).  Partial moments
``∫_0^y t^k p_w(t) dt`` have the same form with ``m g(y m)`` replaced by the source's closed-form
``Ψ_k(y m)/m^k`` (:meth:`Source.partial_moment`), so every cdf, cell mass and cell moment is a
1-D integral over ``M`` with closed-form integrand.

Quadrature.  The integral over ``M`` is taken in the Gumbel variable ``z``: ``G(M)^B =
exp(-e^{-z})`` (``P(|X| > M) = -expm1(-e^{-z}/B)``, ``M`` from the source's ``abs_isf``), so
``dP(M) = e^{-z} exp(-e^{-z}) dz`` for every ``B``.  The integrand is smooth and concentrated
on a few units of ``z`` for every B from 2 to 10^6 (the max of many values is Gumbel-like), which
keeps large-B tails well conditioned.  Composite Gauss-Legendre (32 nodes per panel) on
``[-4.5, z_hi]`` with panel edges -4.5, -1, 2, 6, 12, 20, 30, 45 (and growing by 1.5 beyond
for heavy-tailed weights, where ``z_hi`` grows so that the neglected tail ``∝ w(M) e^{-z}`` is
below e^-40 of the total).  For a power tail ``P(|X| > M) ~ M^-ν`` the weighted integrand decays
like ``e^{-(1 - p/ν) z}``: as ν approaches the power ``p`` of the weight, ``z_hi`` reaches the
thousands, and the nodes there are evaluated in logarithms (:class:`BlockMeasure`); closer than
``1 - p/ν = 1e-5`` the rounding of ``log M ≈ z/ν`` no longer allows a result and it is an
error.  Checked against adaptive quadrature in the original variable (tests).  For a
source with a piecewise-constant density (a sample), ``π₊`` jumps wherever ``M`` crosses a
knot's absolute value, which no smooth rule resolves: the Gumbel grid's panels are then split
at the knots, and each piece integrated on its own (:func:`_knot_nodes`).
"""

from __future__ import annotations

import math
import numbers
from functools import cached_property, lru_cache
from typing import Any, Callable, cast

import numpy as np
from numpy.typing import ArrayLike

from ..codebooks.blocks import DEFAULT_BLOCK_SIZE, check_derived_block_size
from ..numerics.arguments import Seed, check_flag, check_int, random_generator
from ..numerics.dots import row_dot
from ..numerics.fpstate import ignore_underflow
from .conventions import FloatOrArray, Size, at_q, at_x, real_array, sample_shape
from .sources import Source, parse_source

__all__ = ["BlockDistribution", "BlockMeasure", "SourceMeasure", "FoldedMeasure", "RestrictedMeasure",
           "block_distribution", "block_measure", "normalize_blocks", "NORMALIZATIONS"]

NORMALIZATIONS = ("absmax", "signed-absmax", "none")

_GL_N = 32
_GL3_X, _GL3_W = np.polynomial.legendre.leggauss(3)
#: the fewest Gauss-Legendre nodes on a piece of a panel split at a sample's knots, and the width
#: below which a piece takes 2 (within about 1e-9 of its mass, near z = -2; the totals of
#: M's law come out within 3e-13 of 1)
_KNOT_GL, _KNOT_NARROW = 4, 0.01
#: the most knots the panels are split at (twice an Empirical's default knots): a sample kept
#: whole (knots=None) is split at evenly spaced ones, its nodes reading the ratio where they fall
_MAX_CUTS = 8192
#: smallest rate ``1 - p/nu`` at which the weight ``M**p`` times the Gumbel density may decay
_MIN_DECAY = 1e-5
#: the most (value, node) pairs a law evaluates at once (memory): a sample's law has up to
#: ~2·10^4 nodes of M, and Lloyd's starting density asks for 4097 values of y in one call (a
#: sample's kernel sums over the nodes without a table of the pairs; other sources fill one)
_CHUNK = 1 << 21
_GL_X, _GL_W = np.polynomial.legendre.leggauss(_GL_N)


#: the Gumbel variable's panel edges up to z = 45 (the module docstring)
_PANEL_EDGES = (-4.5, -1.0, 2.0, 6.0, 12.0, 20.0, 30.0, 45.0)


@ignore_underflow
def _by_chunks(f, y, width: int, outputs: int = 1):
    """``f`` of the values ``y`` (any shape), each of which ``f`` pairs with ``width`` nodes,
    in pieces of at most :data:`_CHUNK` pairs; ``f`` takes 1-D arrays and gives one, or a tuple
    of ``outputs`` of them (then so does this)."""
    y = np.asarray(y, dtype=np.float64)
    flat = y.reshape(-1)
    if not flat.size:
        return np.zeros(y.shape) if outputs == 1 else tuple(np.zeros(y.shape) for _ in range(outputs))
    step = max(1, _CHUNK // max(1, width))
    pieces = [f(flat[i:i + step]) for i in range(0, flat.size, step)]
    if outputs == 1:
        return np.concatenate(pieces).reshape(y.shape)
    return tuple(np.concatenate(p).reshape(y.shape) for p in zip(*pieces))


def _panel_nodes(a, b, n) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on the panels ``[a_i, b_i]``, ``n_i`` nodes each (one
    number or one a panel), in increasing order."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=int), a.shape)
    zs, ws = [], []
    for k in np.unique(n):
        x, w = (_GL_X, _GL_W) if k == _GL_N else np.polynomial.legendre.leggauss(int(k))
        sel = n == k
        zs.append((0.5 * (b - a)[sel, None] * x + 0.5 * (a + b)[sel, None]).ravel())
        ws.append((0.5 * (b - a)[sel, None] * w).ravel())
    z, w = np.concatenate(zs), np.concatenate(ws)
    order = np.argsort(z, kind="stable")
    return z[order], w[order]


def _z_grid(z_hi: float) -> tuple[np.ndarray, np.ndarray]:
    edges = list(_PANEL_EDGES)
    while edges[-1] < z_hi:
        edges.append(min(edges[-1] * 1.5, z_hi))
    return _panel_nodes(edges[:-1], edges[1:], _GL_N)


def _p_plus(source: Source, m: np.ndarray) -> np.ndarray:
    """P(the extreme value is positive | M = m): ``g(m) / (g(m) + g(-m))``."""
    if source.symmetric:
        return np.full(np.shape(m), 0.5)
    with np.errstate(invalid="ignore"):
        gp, gm = source.pdf(m), source.pdf(-m)
        h = gp + gm
        return np.where(h > 0, gp / np.where(h > 0, h, 1), 0.5)


def _m_nodes(source: Source, B: int, panels, nodes) -> tuple[np.ndarray, ...]:
    """``(m, P(M in the node's share), G(m), π₊)`` of the block maximum on the Gumbel grid's
    panels (edges ``panels`` in ``z``, ``nodes`` Gauss-Legendre nodes each): a sample's split at
    its knots (:func:`_knot_nodes`), else the panels' nodes where ``M`` is a positive float."""
    knots = _knot_nodes(source, B, panels, nodes)
    if knots is not None:
        return knots
    z, wz = _panel_nodes(panels[:-1], panels[1:], nodes)
    ez = np.exp(-z)
    omega = wz * ez * np.exp(-ez)  # P(M in the node's share): Gumbel density × GL weight
    S = -np.expm1(-ez / B)  # P(|X| > M)
    G = np.exp(-ez / B)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        m = np.where(S < 0.5, source.abs_isf(S), source.abs_ppf(G))
    keep = np.isfinite(m) & (m > 0) & (omega > 0)
    m, omega, G = m[keep], omega[keep], G[keep]
    return m, omega, G, _p_plus(source, m)


class _Measure:
    """A (weighted) measure on the line with a density, closed-form partial moments and atoms.

    ``T(k, y) = ∫_0^y t^k dμ_cont(t)`` (signed), ``dens(y)``, ``atoms`` = (positions, weights),
    ``lo``/``hi`` the support ends.  Cell integrals add the atoms by the Codebook's encoding rule.
    """

    lo: float
    hi: float
    atoms_x: np.ndarray
    atoms_w: np.ndarray
    total: float

    def T(self, k: int, y: ArrayLike) -> FloatOrArray:  # pragma: no cover - abstract
        raise NotImplementedError

    def dens(self, y: ArrayLike) -> FloatOrArray:  # pragma: no cover - abstract
        raise NotImplementedError

    def T0_dens(self, y: ArrayLike) -> tuple[FloatOrArray, FloatOrArray]:
        """``(T(0, y), dens(y))``: a measure may take both in one pass (:class:`BlockMeasure`)."""
        return self.T(0, y), self.dens(y)

    def cum(self, y):
        """Mass of ``(-inf, y]`` (atoms at ``y`` included)."""
        y = np.asarray(y, dtype=np.float64)
        return self._cum(y, self.T(0, y))

    def cum_dens(self, y):
        """``(cum(y), dens(y))``, the function and derivative of a Newton step, from
        :meth:`T0_dens`."""
        y = np.asarray(y, dtype=np.float64)
        t0, d = self.T0_dens(y)
        return self._cum(y, t0), d

    def _cum(self, y, t0):
        """:meth:`cum` from ``t0 = T(0, y)``."""
        c = t0 - self.t0_lo
        for ax, aw in zip(self.atoms_x, self.atoms_w):
            c = c + np.where(y >= ax, aw, 0.0)
        return c

    @cached_property
    def t0_lo(self) -> float:
        """``T(0, lo)``, which every :meth:`cum` (and the Lloyd start's continuous mass) subtracts:
        taken once (a solver asks for ``cum`` thousands of times, and a sample's law took a kernel
        launch for it each time)."""
        return float(self.T(0, self.lo))

    def atom_moments(self, k: int) -> np.ndarray:
        """What each atom adds to the integral of ``t^k`` (a weighted measure may weight the
        ``k``-th moment differently, see :class:`~.scaled.NestedMeasure`)."""
        return self.atoms_w * self.atoms_x**k

    def atom_cells(self, edges: np.ndarray) -> np.ndarray:
        """The cell of each atom: the one whose (lower-exclusive) range holds it."""
        e = np.clip(np.asarray(edges, dtype=np.float64), self.lo, self.hi)
        return np.clip(np.searchsorted(e[1:-1], self.atoms_x, side="left"), 0, e.size - 2)

    def cells(self, edges: np.ndarray, kmax: int = 1) -> list[np.ndarray]:
        """Integrals of ``t^k`` (k = 0..kmax) over cells ``(e_j, e_{j+1}]``; the first cell
        includes ``e_0``.  Atoms go to :meth:`atom_cells`."""
        e = np.clip(np.asarray(edges, dtype=np.float64), self.lo, self.hi)
        out = [np.diff(self.T(k, e)) for k in range(kmax + 1)]
        if self.atoms_x.size:
            j = self.atom_cells(e)
            for k in range(kmax + 1):
                np.add.at(out[k], j, self.atom_moments(k))
        return out

    def l1_cells(self, edges: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """``∫ |t - q_j|`` over each cell ``(e_j, e_{j+1}]``.  A level outside the support
        ``[lo, hi]`` (a table beyond ±1 under absmax) has a cell holding only the support's
        end: ``|t - q| = |t - q_c| + |q_c - q|`` with ``q_c`` the level clipped to it."""
        e = np.clip(np.asarray(edges, dtype=np.float64), self.lo, self.hi)
        qc = np.clip(levels, self.lo, self.hi)
        fine = np.empty(2 * levels.size + 1)
        fine[0::2] = e
        fine[1::2] = np.maximum(np.minimum(qc, e[1:]), e[:-1])
        M0, M1 = self.cells(fine, 1)
        below = qc * M0[0::2] - M1[0::2]  # (e_j, q_j]: q - t
        above = M1[1::2] - qc * M0[1::2]  # (q_j, e_{j+1}]: t - q
        outside = np.abs(levels - qc) * (M0[0::2] + M0[1::2])  # 0 unless the level is off the support
        return np.maximum(below + above, 0.0) + outside


class SourceMeasure(_Measure):
    """The source itself (``normalization="none"``): unbounded support, no atoms."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.lo, self.hi = -math.inf, math.inf
        self.atoms_x = np.zeros(0)
        self.atoms_w = np.zeros(0)
        self.total = 1.0
        self.weight_power = 0

    def T(self, k: int, y: ArrayLike) -> FloatOrArray:
        return self.source.partial_moment(k, y)

    def dens(self, y: ArrayLike) -> FloatOrArray:
        return self.source.pdf(y)

    def ppf(self, p: ArrayLike) -> FloatOrArray:
        return self.source.ppf(p)


class BlockMeasure(_Measure):
    """The law of ``y`` weighted by ``M**weight_power`` (0: normalised domain; 1, 2: weight
    domain for L1, L2), see the module docstring.  ``total`` = ``E[M**weight_power]``.

    Heavy tails in the weight domain make ``E[M**p]`` converge slowly: the quadrature then
    reaches ``z`` in the thousands, where ``P(|X| > M)`` and the Gumbel weight underflow and
    ``M`` (or ``M**2``, or a coefficient times ``M``) overflows.  Such "extreme" nodes (either
    below 1e-300 or beyond float range) are kept apart and evaluated in logarithms (``log M``
    from the source's ``abs_log_isf``); the others use the plain float formulas."""

    def __init__(self, source: Source, block_size: int, normalization: str = "absmax",
                 weight_power: int = 0) -> None:
        B = check_derived_block_size(block_size)
        if normalization not in ("absmax", "signed-absmax"):
            raise ValueError(f"normalization must be absmax or signed-absmax here, got {normalization!r}")
        weight_power = _check_weight_power(weight_power)
        if weight_power >= source.moment_limit:
            raise ValueError(f"{source.spec}: E[scale**{weight_power}] is infinite "
                             f"(needs more than {weight_power} finite moments); use the normalised domain")
        self.source, self.block_size, self.normalization = source, B, normalization
        self.weight_power = int(weight_power)
        # upper z limit: neglected tail ~ w(M) e^{-z}; for power tails w ~ (B e^z)^{p/nu}
        decay = 1.0 - weight_power / source.moment_limit if math.isfinite(source.moment_limit) else 1.0
        if decay < _MIN_DECAY:
            # the integrand decays like e^{-decay·z}: z reaches ~40/decay, where log M ~ z/nu
            # carries an absolute rounding error ~ z·1e-16 that no longer cancels
            raise ValueError(f"{source.spec}: E[scale**{weight_power}] converges too slowly to compute "
                             f"(needs a tail index above {weight_power / (1 - _MIN_DECAY):.6g}); "
                             f"use the normalised domain")
        knot_nodes = _knot_nodes(source, B)
        if knot_nodes is None:
            m, a, c, G, pplus, logm, log_a, log_c, pplus_e = self._gumbel_nodes(source, B, decay)
        else:   # a sample: bounded, so no extreme nodes
            m, omega, G, pplus = knot_nodes
            a = omega * m**weight_power
            c = a * (B - 1) / B / G
            logm = log_a = log_c = pplus_e = np.zeros(0)
        self.m = m
        self.lo, self.hi = -1.0, 1.0
        with np.errstate(over="ignore"):
            a_e = np.exp(log_a)
        if not np.all(np.isfinite(a_e)):
            raise ValueError(f"{source.spec}: E[scale**{weight_power}] overflows at B={B}")
        self._e_logm = logm
        if normalization == "absmax":
            self._cp, self._cm = c, np.zeros_like(c)
            self._e_lcp, self._e_lcm = log_c, np.full(log_c.shape, -np.inf)
            ax = np.array([-1.0, 1.0])
            aw = np.array([np.sum(a * (1 - pplus)) + np.sum(a_e * (1 - pplus_e)),
                           np.sum(a * pplus) + np.sum(a_e * pplus_e)]) / B
        else:
            self._cp, self._cm = c * pplus, c * (1 - pplus)
            with np.errstate(divide="ignore"):
                self._e_lcp, self._e_lcm = log_c + np.log(pplus_e), log_c + np.log1p(-pplus_e)
            ax, aw = np.array([1.0]), np.array([(np.sum(a) + np.sum(a_e)) / B])
        nz = aw > 0
        self.atoms_x, self.atoms_w = ax[nz], aw[nz]
        self.total = float(np.sum(a)) + float(np.sum(a_e))
        self._has_minus = bool(np.any(self._cm)) or bool(np.any(np.isfinite(self._e_lcm)))

    @ignore_underflow
    def _gumbel_nodes(self, source: Source, B: int, decay: float):
        """Nodes of ``M`` in the Gumbel variable: the regular ones ``(m, a, c, G, π₊)`` and the
        extreme ones in logs ``(log M, log a, log c, π₊)``."""
        weight_power = self.weight_power
        z_hi = 45.0 if decay >= 1.0 else max(45.0, (40.0 + weight_power / source.moment_limit
                                                      * math.log(B)) / decay)
        z, wz = _z_grid(z_hi)
        ez = np.exp(-z)
        omega = wz * ez * np.exp(-ez)  # Gumbel density × GL weight
        S = -np.expm1(-ez / B)  # P(|X| > M)
        G = np.exp(-ez / B)  # P(|X| <= M)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            m = np.where(S < 0.5, source.abs_isf(S), source.abs_ppf(G))
            a = omega * m**weight_power
            c = a * (B - 1) / B / G
            # S and omega near or below the subnormal range have lost digits (e^{-z} underflows
            # at z = 745, while heavy tails need z in the thousands): those nodes go through logs
            regular = (m > 0) & np.isfinite(m) & (omega > 1e-300) & np.isfinite(c * m) & np.isfinite(m * m) \
                & (S > 1e-300)
        extreme = ~regular & (S < 0.5) & ~(m == 0)
        m, a, c, G = m[regular], a[regular], c[regular], G[regular]
        # the extreme nodes, in logs: log M, log a = log(omega M^p), log c = log a + log((B-1)/(B G))
        ze, eze, se = z[extreme], ez[extreme], S[extreme]
        # log P(|X| > M); below 1e-300 S = e^{-z}/B to rounding (and may underflow)
        log_s = np.where(se > 1e-300, np.log(np.maximum(se, 1e-300)), -ze - math.log(B))
        logm = source.abs_log_isf(log_s) if ze.size else np.zeros(0)
        if not np.all(np.isfinite(logm)):
            raise ValueError(f"{source.spec}: the block scale's tail at B={B} is beyond what this source "
                             "can compute")
        log_a = np.log(wz[extreme]) - ze - eze + weight_power * logm
        log_c = log_a + math.log((B - 1) / B) + eze / B
        with np.errstate(over="ignore"):
            pplus_e = _p_plus(source, np.exp(logm))
        return m, a, c, G, _p_plus(source, m), logm, log_a, log_c, pplus_e

    def _extreme_ym(self, y):
        """``y·M`` for the extreme nodes, formed in logs (``M`` itself may overflow)."""
        with np.errstate(divide="ignore", over="ignore"):
            return np.sign(y)[..., None] * np.exp(np.log(np.abs(y))[..., None] + self._e_logm)

    def _extreme_parts(self):
        """(sign, log coefficients) of the extreme nodes' plus and minus parts."""
        return [(sign, lc) for sign, lc in ((1.0, self._e_lcp), (-1.0, self._e_lcm)) if np.any(np.isfinite(lc))]

    def T(self, k: int, y: ArrayLike) -> FloatOrArray:
        return _by_chunks(lambda v: self._T(k, v), y, self.m.size + self._e_logm.size)

    def dens(self, y: ArrayLike) -> FloatOrArray:
        return _by_chunks(self._dens, y, self.m.size + self._e_logm.size)

    def T0_dens(self, y: ArrayLike) -> tuple[FloatOrArray, FloatOrArray]:
        return _by_chunks(self._T0_dens, y, self.m.size + self._e_logm.size, outputs=2)

    def _regular(self, k, y, *whats):
        """The sums over the regular nodes of M at ``y`` of ``Ψ_k(y m)/m^k`` (``"psi"``) or ``m
        g(y m)`` (``"pdf"``), one for each of ``whats`` (the source may take two in one pass):
        the plus part's, and under signed absmax the minus part's at ``-y``, with ``Ψ_k``'s sign
        ``(-1)^(k+1)``."""
        m = self.m
        coef = {"psi": lambda c: c / m**k, "pdf": lambda c: c * m}
        out = self.source._node_sums_of([(w, coef[w](self._cp)) for w in whats], k, y, m)
        if self._has_minus:
            minus = self.source._node_sums_of([(w, coef[w](self._cm)) for w in whats], k, -y, m)
            out = [o + ((-1) ** (k + 1) if w == "psi" else 1) * s for w, o, s in zip(whats, out, minus)]
        return out

    def _T(self, k, y):
        y = np.clip(np.asarray(y, dtype=np.float64), -1.0, 1.0)
        return self._T_extreme(k, y, *self._regular(k, y, "psi"))

    def _dens(self, y):
        y = np.asarray(y, dtype=np.float64)
        # the density at |y| >= 1 is 0 (_dens_extreme), and the sums at a huge y would overflow
        return self._dens_extreme(y, *self._regular(0, np.clip(y, -1.0, 1.0), "pdf"))

    def _T0_dens(self, y):
        y = np.asarray(y, dtype=np.float64)
        yc = np.clip(y, -1.0, 1.0)   # the density at |y| >= 1 is 0, whatever the sums there
        t, d = self._regular(0, yc, "psi", "pdf")
        return self._T_extreme(0, yc, t), self._dens_extreme(y, d)

    def _T_extreme(self, k, y, out):
        """``T(k, y)`` from the regular nodes' sums ``out``: the extreme nodes' added."""
        if self._e_logm.size:
            ym = self._extreme_ym(y)
            for sign, lc in self._extreme_parts():
                psi = self.source.partial_moment(k, sign * ym)
                # Ψ_k(yM) is infinite only for k >= nu (p < nu), where Ψ_k(yM)/M^k·c ~ ω M^(p-nu) -> 0
                with np.errstate(invalid="ignore", over="ignore", under="ignore"):
                    terms = np.where(np.isinf(psi), 0.0, psi) * np.exp(lc - k * self._e_logm)
                out = out + sign ** (k + 1) * terms.sum(axis=-1)
        return out

    def _dens_extreme(self, y, out):
        """``dens(y)`` from the regular nodes' sums ``out``: the extreme nodes' added, 0 off ``(-1, 1)``."""
        if self._e_logm.size:
            ym = self._extreme_ym(y)
            for sign, lc in self._extreme_parts():
                # c·M·g(yM) in logs: c·M overflows where g(yM) underflows
                with np.errstate(divide="ignore", over="ignore"):
                    out = out + np.exp(np.log(self.source.pdf(sign * ym)) + self._e_logm + lc).sum(axis=-1)
        return np.where(np.abs(y) < 1, out, 0.0)


class FoldedMeasure(_Measure):
    """``μ(A) + μ(-A)`` on ``[0, hi]``: the measure of ``|y|`` (for symmetric codebooks)."""

    def __init__(self, base: _Measure) -> None:
        self.base = base
        self.lo, self.hi = 0.0, base.hi
        ax = np.abs(base.atoms_x)
        self.atoms_x = np.unique(ax)
        self._at = [ax == u for u in self.atoms_x]
        self.atoms_w = self.atom_moments(0)
        self.total = base.total
        self.weight_power = getattr(base, "weight_power", 0)

    def T(self, k: int, y: ArrayLike) -> FloatOrArray:
        y = np.asarray(y, dtype=np.float64)
        return self.base.T(k, y) - (-1) ** k * self.base.T(k, -y)

    def dens(self, y: ArrayLike) -> FloatOrArray:
        y = np.asarray(y, dtype=np.float64)
        return self.base.dens(y) + self.base.dens(-y)

    def atom_moments(self, k: int) -> np.ndarray:
        folded = self.base.atom_moments(k) * np.where(self.base.atoms_x < 0, (-1.0) ** k, 1.0)
        return np.array([folded[at].sum() for at in self._at], dtype=np.float64)


class RestrictedMeasure(_Measure):
    """The part of a measure on ``[lo, hi]`` (atoms outside dropped)."""

    def __init__(self, base: _Measure, lo: float, hi: float) -> None:
        self.base, self.lo, self.hi = base, float(lo), float(hi)
        self._keep = (base.atoms_x >= lo) & (base.atoms_x <= hi)
        self.atoms_x, self.atoms_w = base.atoms_x[self._keep], base.atoms_w[self._keep]
        self.total = base.total
        self.weight_power = getattr(base, "weight_power", 0)

    def T(self, k: int, y: ArrayLike) -> FloatOrArray:
        return self.base.T(k, np.clip(np.asarray(y, dtype=np.float64), self.lo, self.hi))

    def dens(self, y: ArrayLike) -> FloatOrArray:
        y = np.asarray(y, dtype=np.float64)
        return np.where((y >= self.lo) & (y <= self.hi), self.base.dens(y), 0.0)

    def atom_moments(self, k: int) -> np.ndarray:
        return self.base.atom_moments(k)[self._keep]


def _knot_nodes(source: Source, B: int, panels=_PANEL_EDGES, nodes=_GL_N):
    """Nodes ``(m, P(M in the node's share), G(m), π₊)`` of ``M`` for a source with a
    piecewise-constant density (None otherwise).  ``π₊ = g(M) / (g(M) + g(-M))`` is constant
    between the knots' absolute values and jumps at them, and ``m(z)`` has a kink there, which
    no smooth rule over all ``M`` resolves: the panels of a Gumbel grid (edges ``panels`` in
    ``z``, ``nodes`` Gauss-Legendre nodes each, one number or one a panel) are split at the
    knots' ``z``, each piece taking nodes in proportion to its width (at least
    :data:`_KNOT_GL`; 2 on a piece narrower than :data:`_KNOT_NARROW`).  Between two knots
    ``G(m) = P(|X| <= m)`` is linear, so ``m`` is recovered from ``G(z)`` exactly.  What the
    rule cannot follow are the kinks of ``Ψ_k(y m)`` in ``m`` at ``m = knot / y``, which limit
    its accuracy (``benchmarks/measure_sample_laws.py``), nor the jumps beyond :data:`_MAX_CUTS`
    knots."""
    pw = source._piecewise_density()
    if pw is None:
        return None
    knots = np.unique(np.abs(np.concatenate([pw[0], [0.0]])))   # |X| from 0, where the support holds 0
    G_k = np.clip(source.cdf(knots) - source.cdf(-knots), 0.0, 1.0)   # P(|X| <= m) at the knots
    with np.errstate(divide="ignore"):
        z_k = -np.log(-B * np.log(G_k))   # -inf at G = 0, +inf at G = 1
    base = np.asarray(panels, dtype=np.float64)
    cuts = z_k[(z_k > base[0]) & (z_k < base[-1])]
    if cuts.size > _MAX_CUTS:   # time and memory grow with the nodes
        cuts = cuts[np.linspace(0, cuts.size - 1, _MAX_CUTS).round().astype(int)]
    edges = np.unique(np.concatenate([base, cuts]))
    a, b = edges[:-1], edges[1:]
    # the panel each piece lies in, for its share of that panel's nodes
    panel = np.clip(np.searchsorted(base, 0.5 * (a + b)) - 1, 0, base.size - 2)
    density = (np.broadcast_to(nodes, (base.size - 1,)) / np.diff(base))[panel]
    # twice the panel's density of nodes: a piece loses the whole panel's spectral accuracy
    n = np.where(b - a <= _KNOT_NARROW, 2, np.maximum(_KNOT_GL, np.ceil(2 * density * (b - a))))
    z, wz = _panel_nodes(a, b, n)
    ez = np.exp(-z)
    omega = wz * ez * np.exp(-ez)   # Gumbel density × GL weight
    G = np.exp(-ez / B)
    seg = np.clip(np.searchsorted(z_k, z) - 1, 0, knots.size - 2)   # the knot segment of each node
    m1, G1 = knots[seg], G_k[seg]
    mid = 0.5 * (m1 + knots[seg + 1])
    gp = source.pdf(mid)
    h = gp + source.pdf(-mid)
    with np.errstate(divide="ignore", invalid="ignore"):
        # G - G1 = G1·expm1(log G - log G1): no cancellation where G is close to 1
        dG = np.where(G1 > 0, G1 * np.expm1(-ez / B - np.log(G1)), G)
        m = np.clip(m1 + dG / h, m1, knots[seg + 1])
    keep = (h > 0) & (omega > 0)
    omega = omega[keep] / np.sum(omega[keep])   # M's law has mass 1 (the rule holds it to 1e-12)
    return m[keep], omega, G[keep], (gp / np.where(h > 0, h, 1.0))[keep]


def _check_weight_power(weight_power: Any) -> int:
    return check_int(weight_power, "weight_power", 0, 2)


def read_only_arrays(measure: _Measure) -> _Measure:
    """``measure`` with its array attributes read-only: a cached measure is every later caller's,
    and one that changed its atoms in place would change their derivations (arrays it makes
    later are its own caches, never handed out)."""
    for v in vars(measure).values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    return measure


@lru_cache(maxsize=64)
def _cached_measure(source: Source, block_size: int, normalization: str, weight_power: int) -> _Measure:
    if normalization == "none":
        return read_only_arrays(SourceMeasure(source))
    return read_only_arrays(BlockMeasure(source, block_size, normalization, weight_power))


def block_measure(source: Any = "normal", block_size: int | None = DEFAULT_BLOCK_SIZE, normalization: str = "absmax",
                  weight_power: int = 0) -> _Measure:
    """The (cached) measure for a source spelling or Source, block size and normalisation."""
    src = parse_source(source)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    weight_power = _check_weight_power(weight_power)
    if normalization == "none":
        if weight_power >= src.moment_limit:
            raise ValueError(f"{src.spec}: E|X|**{weight_power} is infinite")
        return _cached_measure(src, 0, "none", 0)
    return _cached_measure(src, check_derived_block_size(block_size), normalization, _check_weight_power(weight_power))


#: bound on the error of an evaluated ``f`` in :func:`_monotone_solve`, in units of
#: ``eps·max(|target|, fscale)``: the block laws' cum and tail masses scatter by up to 15 around
#: a quadratic fit near their roots (docs/derivation.md)
_F_NOISE = 32.0
#: the solver's lattice is finer than its tolerance by this power of two
_LATTICE_BELOW_TOL = 10
#: the solver's bisection tree covers the lattice numbers in ``(-_ROOT, _ROOT]``
_ROOT = 1 << 62


class _Lattice:
    """The floats ``x`` with ``|x| >= 2**52·h`` and the multiples of ``h`` below that, numbered
    in order by integers (``h`` a power of two): every float near ``±1`` and a fixed step of
    ``h`` near 0, where the floats crowd far below any solver's tolerance."""

    def __init__(self, h: float) -> None:
        self.h = h
        self.top = 2.0**52 * h
        self.top_bits = int(np.float64(self.top).view(np.int64))

    def index(self, x):
        """The number of each finite float's lattice point, rounded toward 0 off the lattice."""
        ax = np.abs(x)
        big = ax >= self.top
        k = np.where(big, ax.view(np.int64) - self.top_bits + (1 << 52),
                     np.trunc(np.where(big, 0.0, ax) / self.h).astype(np.int64))
        return np.where(x < 0, -k, k)

    def value(self, k):
        a = np.abs(k)
        big = a >= (1 << 52)
        v = np.where(big, (np.where(big, a, 0) + (self.top_bits - (1 << 52))).view(np.float64), a * self.h)
        return np.where(k < 0, -v, v)


def _midpoint(lo, hi):
    """``floor((lo + hi) / 2)`` of int64 arrays without overflowing."""
    return (lo >> 1) + (hi >> 1) + (lo & hi & 1)


def _bit_length(v):
    """``int.bit_length`` of positive int64 values."""
    e = np.frexp(v.astype(np.float64))[1].astype(np.int64)
    return e - ((v >> (e - 1)) == 0)   # the float may round up to the next power of two


@ignore_underflow
def _monotone_solve(f_df, targets, lo, hi, x0=None, tol=1e-15, max_iter=200, fscale=1.0, f=None):
    """The least point ``x`` of a lattice in ``[lo, hi]`` with ``f(x) >= target`` for an
    increasing ``f``, per target (``hi`` if there is none); ``f_df(x)`` gives ``(f(x), f'(x))``
    (a measure's :meth:`~_Measure.cum_dens` takes both in one pass).  The lattice
    (:class:`_Lattice`) is the floats down to ``|x| = 2**42·tol``, a step of ``tol/2**10`` below.

    Each answer is a function of its own target and bracket alone, bit for bit, whatever else the
    call holds, and is non-decreasing in the target, although ``f`` as evaluated is not monotone
    from float to float (its rounding scatters it by some ulps of the masses near a root).  The
    answer is that of a bisection of all lattice numbers from the top (``f`` taken as below the
    target under ``lo`` and above it from ``hi`` on), which compares ``f`` with the target at
    fixed points only: monotone for any ``f``.  A safeguarded
    Newton search, each point stopped once its own step is within ``tol·max(1, |x|)``, finds a band
    around the root whose ends lie beyond ``2·E`` of the target in ``f``, with ``E =``
    :data:`_F_NOISE` ``· eps · max(|target|, fscale)`` (``fscale``: the size of the terms ``f``
    cancels; 0 where its error is relative); the bisection evaluates ``f`` inside that band only
    and takes the band's side outside it.  That is the full bisection, hence exactly monotone,
    wherever ``f``'s evaluation error is within ``E``.  ``f`` alone, where it is cheaper than
    ``f_df`` (the same function, perhaps rounded otherwise), serves the band and the bisection.

    A tiny Newton step ends the search only where the residual is tiny too: next to a
    singular density (student-t with ν < 1 at 0) the step is tiny far from the root, and
    there the search bisects instead."""
    targets = np.asarray(targets, dtype=np.float64)
    shape = targets.shape
    t = targets.ravel()
    lo0 = np.broadcast_to(np.asarray(lo, dtype=np.float64), shape).ravel().copy()
    hi0 = np.broadcast_to(np.asarray(hi, dtype=np.float64), shape).ravel().copy()
    lo, hi = lo0.copy(), hi0.copy()
    x = 0.5 * (lo + hi) if x0 is None else np.clip(np.broadcast_to(np.asarray(x0, dtype=np.float64), shape).ravel(),
                                                  lo, hi)
    out = np.full(t.shape, np.nan)
    act = np.flatnonzero(np.isfinite(t))   # a NaN target has no root
    ftol = 1e-10 * np.abs(t)
    slope = np.zeros(t.shape)
    for _ in range(max_iter):
        if not act.size:
            break
        xa, la, ha = x[act], lo[act], hi[act]
        fx, d = f_df(xa)
        r = fx - t[act]
        la = np.where(r <= 0, xa, la)
        ha = np.where(r >= 0, xa, ha)
        with np.errstate(divide="ignore", invalid="ignore"):
            xn = xa - r / d
        # a step that rounds to 0 lands on the bracket's end it came from: that is convergence,
        # not a step out of the bracket (which restarted a bisection of all of it)
        bad = ~np.isfinite(xn) | (((xn <= la) | (xn >= ha)) & (xn != xa))
        xn = np.where(bad, 0.5 * (la + ha), xn)
        width = tol * np.maximum(1.0, np.abs(xa))
        small = np.abs(xn - xa) <= width
        stalled = small & (np.abs(r) > ftol[act])
        xn = np.where(stalled, 0.5 * (la + ha), xn)
        done = (small & ~stalled) | (ha - la <= width)
        x[act], lo[act], hi[act], slope[act] = xn, la, ha, d
        act = act[~done]   # a converged point stays where it is: the others' steps do not move it
    ok = np.flatnonzero(np.isfinite(t))
    f = (lambda v: f_df(v)[0]) if f is None else f
    out[ok] = _on_the_lattice(f, t[ok], lo0[ok], hi0[ok], x[ok], slope[ok], tol, fscale)
    return out.reshape(shape)


def _on_the_lattice(f, t, lo, hi, x, slope, tol, fscale):
    """:func:`_monotone_solve`'s answers on its lattice from Newton's ``x`` and ``f'`` there."""
    lat = _Lattice(2.0 ** (math.floor(math.log2(tol)) - _LATTICE_BELOW_TOL))
    k_lo, k_hi = lat.index(lo), lat.index(hi)
    k_lo = np.maximum(k_lo + (lat.value(k_lo) < lo), 1 - _ROOT)   # beyond ±2**1000: no matter
    k_hi = np.minimum(k_hi - (lat.value(k_hi) > hi), _ROOT)
    # a bracket narrower than the lattice's step holds no point of it: Newton's answer stands
    empty = k_hi < k_lo
    L, H = k_lo - 1, np.maximum(k_hi, k_lo)   # the answer is in (L, H]; H when f < t throughout
    kx = np.clip(lat.index(x), k_lo, H)
    e = _F_NOISE * np.finfo(np.float64).eps * np.maximum(np.abs(t), fscale)
    step = np.maximum(lat.h, np.spacing(np.abs(x)))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        w = 2.25 * e / slope / step   # the ends clear of the target by 2E where f's error is small
    w = (np.where(np.isfinite(w) & (w > 0), np.minimum(w, 2.0**60), 0.0) + 1).astype(np.int64)
    # the band (a, b): f < t - 2E at a, f >= t + 2E at b, then no float beyond lies on the wrong side
    wa, wb = w.copy(), w.copy()
    a, b = kx - np.minimum(wa, kx - L), kx + np.minimum(wb, H - kx)
    check_a, check_b = a > L, b < H
    while check_a.any() or check_b.any():
        ia, ib = np.flatnonzero(check_a), np.flatnonzero(check_b)
        fv = f(lat.value(np.concatenate([a[ia], b[ib]])))
        short_a = fv[:ia.size] >= t[ia] - 2 * e[ia]   # not yet clear of the target: widen
        short_b = fv[ia.size:] < t[ib] + 2 * e[ib]
        check_a[ia[~short_a]], check_b[ib[~short_b]] = False, False
        ia, ib = ia[short_a], ib[short_b]
        wa[ia], wb[ib] = np.minimum(wa[ia], 1 << 61) * 2, np.minimum(wb[ib], 1 << 61) * 2
        a[ia] = kx[ia] - np.minimum(wa[ia], kx[ia] - L[ia])
        b[ib] = kx[ib] + np.minimum(wb[ib], H[ib] - kx[ib])
        check_a[ia], check_b[ib] = a[ia] > L[ia], b[ib] < H[ib]
    # bisect the lattice numbers (-2**62, 2**62] from the top: f at the midpoints inside the band
    # (a, b), the band's side outside it.  Down to the node whose midpoint first falls inside it
    # every step is the band's: the node where a + 1 and b part, found at once
    u1, u2 = a + _ROOT, b + (_ROOT - 1)   # a + 1 and b counted from the root's first number
    s = _bit_length(np.where(b > a + 1, u1 ^ u2, 1))
    L = np.where(b > a + 1, ((u1 >> s) << s) - _ROOT, a)
    half = np.int64(1) << np.maximum(s - 1, 0)
    H = np.where(b > a + 1, L + half + half, b)   # 2**63 itself is past int64
    while True:
        m = _midpoint(L, H)
        live = H > L + 1   # H - L may be 2**63
        outside = live & ((m <= a) | (m >= b))
        while outside.any():
            L = np.where(outside & (m <= a), m, L)
            H = np.where(outside & (m >= b), m, H)
            m = _midpoint(L, H)
            live = H > L + 1   # H - L may be 2**63
            outside = live & ((m <= a) | (m >= b))
        i = np.flatnonzero(live)
        if not i.size:
            break
        up = f(lat.value(m[i])) >= t[i]
        H[i] = np.where(up, m[i], H[i])
        L[i] = np.where(up, L[i], m[i])
    return np.where(empty, x, lat.value(H))


def _graded_edges() -> np.ndarray:
    """Panel edges on [-1, 1] for densities of ``y``: halving toward 0, where heavy tails
    (nu < 1) make the density blow up like ``|y|**(nu-1)``; the two innermost panels, where
    Gauss-Legendre does not resolve that, hold a mass of order ``2**(-100·nu)``, below 1e-15
    for the supported ``nu >= 0.5``."""
    pos = 2.0 ** -np.arange(100, -1, -1)
    return np.concatenate([-pos[::-1], [0.0], pos])


_Y_EDGES = _graded_edges()

#: within a window of ±1 a block law's cdf and sf take the continuous mass between the
#: point and the support's end as a Gauss-Legendre integral of the density (:data:`_EDGE_GL`
#: nodes a panel), and ppf and isf solve for the point's distance to the end on that integral, not
#: on ``T(0, y) - T(0, ∓1)``: those are near ±1/2 and their difference, the whole lower tail under
#: signed absmax (no atom at -1), cancels (relative 1e-5 at a mass of 1e-12).  The window is
#: :data:`_EDGE` wide, doubled by a panel as wide as the window so far while the mass it holds is
#: under :data:`_EDGE_MASS` (below that the difference's rounding, some ulps of 1/2, exceeds 1e-14
#: of the mass).  Past half the support (the whole window ``|y| >= 1/2`` holding under
#: :data:`_EDGE_MASS`: heavy tails at large B, where the density is 1e-4 and less there) the
#: panels halve toward 0 instead, ``[1/4, 1/2]``, ``[1/8, 1/4]``... down to :data:`_EDGE_INNER`, and
#: the points there are taken by their position ``|y|`` (their distance to the end would round),
#: ppf and isf solving for it.  The density is smooth there (a normal
#: ``g(y·m)`` varies on a scale of ``1/m²`` in ``y``, and ``m <= 12`` up to B = 10^7; a power
#: tail's on the scale of ``y`` itself), so the rule is exact to rounding
#: (tests compare with mpmath).  A sample's density jumps: its law keeps the difference.
_EDGE, _EDGE_GL, _EDGE_MASS, _EDGE_INNER = 1.0 / 16, 20, 1.0 / 64, 2.0**-12
_EDGE_X, _EDGE_W = np.polynomial.legendre.leggauss(_EDGE_GL)
_EDGE_S = 0.5 * (1.0 + _EDGE_X)   # the nodes on [0, 1] of the distance from the end
_INSIDE_LO = float(np.nextafter(-1.0, 0.0))


class BlockDistribution:
    """The law of one normalised value ``y`` (see the module docstring).

    It is usable where a frozen scipy.stats distribution is: ``pdf``, ``logpdf``, ``cdf``, ``logcdf``, ``sf``,
    ``logsf``, ``ppf``, ``isf``, ``support``, ``mean``, ``var``, ``std``, ``median``,
    ``moment``, ``entropy``, ``expect``, ``rvs``.

    As in scipy: NaN arguments give NaN, probabilities outside ``[0, 1]`` give NaN in
    ``ppf``/``isf``, a scalar argument gives a scalar (``numpy.float64``, a ``float``) and an
    array keeps its shape.

    The law is mixed.  ``pdf`` is the density of the continuous part on ``(-1, 1)`` (it
    integrates to ``1 - 1/B``; 0 outside, and at ``±1``); ``cdf``/``sf`` include the point
    masses (``atoms``: positions and probabilities, ``1/B`` in total: at ``±1`` under absmax,
    at ``+1`` under signed absmax).  ``ppf(q)`` is the left-continuous inverse of ``cdf``
    (``inf{y: cdf(y) >= q}``), ``isf(q)`` the same for ``sf`` (``inf{y: sf(y) <= q}``), both
    ``-1``/``+1`` inside the atoms' jumps and at ``q = 0, 1``.  ``expect(func)`` and
    ``entropy()`` integrate the continuous part numerically (Gauss-Legendre on panels
    halving toward 0; for an empirical source, whose density is piecewise constant, piece by
    piece) and add the atoms exactly; ``entropy`` is the entropy with respect to
    Lebesgue measure plus counting measure on the atoms, ``-∫ p log p dy - Σ w_i log w_i``
    (nats) — the differential entropy of the continuous part plus the discrete entropy of the
    atoms.  Absolute accuracy of ``cdf`` ≲1e-13 for the parametric sources (tests compare
    with adaptive quadrature and Monte Carlo); within a window of ``±1`` (:data:`_EDGE` and
    wider), where the tails are, ``cdf`` and ``sf`` keep their relative accuracy too, and
    ``ppf`` and ``isf`` invert them there to an ulp or two of ``y`` (tests compare with mpmath).
    ``normalization="none"`` gives the source itself (then ``expect``/``entropy`` use adaptive
    quadrature over its probabilities, ``x = ppf(u)``, or exact segment-by-segment rules for an
    empirical source).
    """

    def __init__(self, block_size: int = DEFAULT_BLOCK_SIZE, source: Any = "normal",
                 normalization: str = "absmax") -> None:
        self.source = parse_source(source)
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
        self.normalization = normalization
        self.block_size = None if normalization == "none" else check_derived_block_size(block_size)
        self._mu = block_measure(self.source, self.block_size, normalization, 0)
        self._plain = normalization == "none"
        self.atoms = (self._mu.atoms_x.copy(), self._mu.atoms_w.copy())
        ax, aw = self.atoms
        self._w_minus = float(aw[ax == -1.0].sum())  # mass at -1
        self._w_plus = float(aw[ax == 1.0].sum())  # mass at +1
        self._pieces_done, self._pieces_val = False, None
        self._rules: dict = {}  # (lb, ub) -> quadrature nodes, weights and density values
        self._window: dict = {}  # ±1 -> the window's panel edges and the masses within them
        self._starts: dict = {}  # (lo, hi) -> the cdf on the graded edges there and those edges (_start)

    def __repr__(self) -> str:
        b = "" if self._plain else f", B={self.block_size}"
        return f"<BlockDistribution {self.source.spec}{b}, {self.normalization}>"

    # ------------------------------------------------------------- public: validate and convert
    def _at_y(self, hook, y):
        return at_x(hook, y, "y")

    def _at_q(self, hook, q):
        return at_q(hook, q)

    def pdf(self, y: ArrayLike) -> FloatOrArray:
        """Density of the continuous part (the atoms are not in it)."""
        return self._at_y(self._pdf, y)

    def logpdf(self, y: ArrayLike) -> FloatOrArray:
        return self._at_y(self._logpdf, y)

    def cdf(self, y: ArrayLike) -> FloatOrArray:
        return self._at_y(self._cdf, y)

    def logcdf(self, y: ArrayLike) -> FloatOrArray:
        return self._at_y(self._logcdf, y)

    def sf(self, y: ArrayLike) -> FloatOrArray:
        return self._at_y(self._sf, y)

    def logsf(self, y: ArrayLike) -> FloatOrArray:
        return self._at_y(self._logsf, y)

    def ppf(self, q: ArrayLike) -> FloatOrArray:
        """Left-continuous inverse of :meth:`cdf`; NaN for ``q`` outside ``[0, 1]`` or NaN."""
        return self._at_q(self._ppf, q)

    def isf(self, q: ArrayLike) -> FloatOrArray:
        """Inverse of :meth:`sf` (``inf{y: sf(y) <= q}``); NaN for ``q`` outside ``[0, 1]``."""
        return self._at_q(self._isf, q)

    def median(self) -> float:
        return float(self.ppf(0.5))

    def support(self) -> tuple[float, float]:
        if self._plain:
            with np.errstate(divide="ignore"):
                return float(self.source.ppf(0.0)), float(self.source.ppf(1.0))
        return -1.0, 1.0

    def moment(self, k: int) -> float:
        """``E[y**k]``: closed form for k = 0, 1, 2, quadrature (:meth:`expect`) above.  Where
        ``E|y|**k`` diverges (plain heavy tails): inf for an even ``k``, NaN for an odd one
        (both halves infinite: no value)."""
        check_int(k, "moment order", 0)
        if self._plain and k >= self.source.moment_limit:
            return math.inf if k % 2 == 0 else math.nan
        if k > 2:
            return self.expect(lambda y: y**k)
        mu = self._mu
        t = float(mu.T(k, mu.hi) - mu.T(k, mu.lo))
        return t + float(np.sum(mu.atoms_w * mu.atoms_x**k))

    def mean(self) -> float:
        return self.moment(1)

    def var(self) -> float:
        if self._plain and self.source.moment_limit <= 1:
            return math.nan  # no mean, so no variance (scipy.stats says the same)
        return self.moment(2) - self.moment(1) ** 2

    def std(self) -> float:
        return math.sqrt(self.var())

    def expect(self, func: Callable[[Any], ArrayLike] | None = None, lb: float | None = None, ub: float | None = None,
               conditional: bool = False) -> float:
        """``E[func(y)]`` over ``lb <= y <= ub`` (default: the support), atoms included when
        they lie in ``[lb, ub]``; ``conditional=True`` divides by ``P(lb <= y <= ub)``.
        ``func`` is called on arrays when it accepts them, else value by value."""
        conditional = check_flag(conditional, "conditional")
        f = (lambda y: y) if func is None else func
        if not callable(f):
            raise ValueError(f"func must be callable, got {func!r}")
        lo, hi = self.support()
        for v, what in ((lb, "lb"), (ub, "ub")):
            if v is not None and (not isinstance(v, numbers.Real) or isinstance(v, (bool, np.bool_))):
                raise ValueError(f"{what} must be a number or None, got {v!r}")
        lb = lo if lb is None else float(lb)
        ub = hi if ub is None else float(ub)
        if math.isnan(lb) or math.isnan(ub):
            raise ValueError("lb and ub must be numbers, got NaN")
        if lb > ub:
            raise ValueError(f"need lb <= ub, got lb={lb}, ub={ub}")
        ax, aw = self.atoms
        inside = (ax >= lb) & (ax <= ub)
        val = self._integrate_cont(lambda y: _call_vectorised(f, y), lb, ub)
        if np.any(inside):
            val += float(np.sum(aw[inside] * _call_vectorised(f, ax[inside])))
        if conditional:
            mass = self._integrate_cont(np.ones_like, lb, ub) + float(np.sum(aw[inside]))
            val = val / mass if mass > 0 else math.nan
        return float(val)

    def entropy(self) -> float:
        """``-∫ p log p dy - Σ w_i log w_i`` in nats (see the class docstring)."""
        lo, hi = self.support()
        h = self._integrate_cont(lambda y, p: -p * np.log(p), lo, hi, with_density=False)
        aw = self.atoms[1]
        return float(h - np.sum(aw * np.log(aw)))

    def rvs(self, size: Size = None, random_state: Seed = None) -> FloatOrArray:
        """Exact Monte-Carlo draws: blocks of B source values normalised, flattened
        (``size`` values, the last block cut).  Values within one block are dependent."""
        shape = sample_shape(size)
        rng = random_generator(random_state)
        n = int(np.prod(shape))
        if self._plain:   # n draws are an array (rvs gives a float for size () alone)
            return np.asarray(self.source.rvs(n, rng)).reshape(shape)[()]
        B = cast(int, self.block_size)   # only the plain law has none
        nb = -(-n // B)
        x = np.asarray(self.source.rvs((nb, B), rng))
        return normalize_blocks(x, self.normalization).ravel()[:n].reshape(shape)[()]   # size=() -> a float

    # ------------------------------------------------------------------ private: compute
    def _pdf(self, y):
        return self.source.pdf(y) if self._plain else self._mu.dens(y)

    def _logpdf(self, y):
        if self._plain:   # the source's own logs: its far tails underflow long before their logs
            return self.source.logpdf(y)
        with np.errstate(divide="ignore"):
            return np.log(self._pdf(y))

    def _cdf(self, y):
        if self._plain:
            return self.source.cdf(y)
        c = self._mu.cum(y)
        edge = (y > -1.0) & (y < 0.0)
        if edge.any() and self._pieces() is None:
            edge &= y < self._edges(-1.0)[0][-1] - 1.0   # the window's width is dyadic: exact
            c[edge] = self._w_minus + self._window_mass(-1.0, y[edge])
        return np.where(y >= 1.0, 1.0, np.clip(c, 0.0, 1.0))  # exact 1 above the support

    def _logcdf(self, y):
        if self._plain:
            return self.source.logcdf(y)
        with np.errstate(divide="ignore"):
            return np.log(self._cdf(y))

    def _sf(self, y):
        if self._plain:
            return self.source.sf(y)
        mu = self._mu
        # mass of (y, 1]: from the top, so that small upper tails keep their digits
        cont = mu.T(0, mu.hi) - mu.T(0, np.clip(y, mu.lo, mu.hi))
        edge = (y > 0.0) & (y < 1.0)
        if edge.any() and self._pieces() is None:
            edge &= y > 1.0 - self._edges(1.0)[0][-1]
            cont[edge] = self._window_mass(1.0, y[edge])
        atoms = np.where(y < 1.0, self._w_plus, 0.0)
        return np.where(y < -1.0, 1.0, np.clip(cont + atoms, 0.0, 1.0))  # exact 1 below the support

    def _logsf(self, y):
        if self._plain:
            return self.source.logsf(y)
        with np.errstate(divide="ignore"):
            return np.log(self._sf(y))

    def _ppf(self, q):
        if self._plain:
            return self.source.ppf(q)
        mu = self._mu
        x = self._invert(q - self._w_minus, (1.0 - q) - self._w_plus,
                         lambda sel, lo, hi: _monotone_solve(mu.cum_dens, q[sel], lo, hi, f=mu.cum,
                                                             x0=self._start(q[sel], lo, hi)))
        x = np.where(q <= self._w_minus, -1.0, x)  # inside the jump at -1 (and q = 0)
        return np.where(q > 1.0 - self._w_plus, 1.0, x)  # inside the jump at +1

    def _isf(self, q):
        if self._plain:
            return self.source.isf(q)
        mu = self._mu
        top = mu.T(0, mu.hi)
        # continuous mass above y equals q - w_plus; solved on -(that mass), increasing in y
        def f_df(y):
            t0, d = mu.T0_dens(y)
            return t0 - top, d
        x = self._invert((1.0 - q) - self._w_minus, q - self._w_plus,
                         lambda sel, lo, hi: _monotone_solve(f_df, self._w_plus - q[sel], lo, hi,
                                                             f=lambda y: mu.T(0, y) - top,
                                                             x0=self._start(1.0 - q[sel], lo, hi)))
        x = np.where(q <= self._w_plus, 1.0, x)  # inside the jump at +1 (and q = 0)
        return np.where(q >= 1.0 - self._w_minus, -1.0, x)  # inside the jump at -1 (and q = 1)

    def _start(self, c, lo, hi):
        """Where the solver starts for the cdf values ``c`` (a 1-D array) between ``lo`` and
        ``hi``: the cdf interpolated linearly on the graded edges, kept for the law's later calls.
        From the bracket's middle Newton took twice the steps for heavy tails, whose cdf rises
        steeply next to 0; a start moves no answer (the solver's lattice search fixes it)."""
        key = (lo, hi)
        if key not in self._starts:
            y = np.concatenate([[lo], _Y_EDGES[(_Y_EDGES > lo) & (_Y_EDGES < hi)], [hi]])
            # the masses' rounding may reorder neighbours next to 0: interp needs them sorted
            self._starts[key] = (np.maximum.accumulate(self._mu.cum(y)), y)
        return np.interp(c, *self._starts[key])

    def _window_mass(self, end, y):
        """The continuous mass between the support's end ``end`` (±1) and each point ``y`` (a 1-D
        array within the end's window): by the distance ``1 - |y|`` (exact) in the window's outer
        half (:meth:`_edge_mass`), by ``|y|`` itself past it (:meth:`_inner_mass`)."""
        v = np.abs(y)
        out = np.empty(v.shape)
        outer = v >= 0.5
        out[outer] = self._edge_mass(end, 1.0 - v[outer])
        out[~outer] = self._inner_mass(end, v[~outer])
        return out

    def _inner_mass(self, end, v):
        """The continuous mass between the end ``end`` and the points ``end·v`` (``v`` a 1-D array
        in the window's inner panels, ``|y| < 1/2``): the masses of the panels beyond the one holding
        ``v`` and Gauss-Legendre from ``v`` to that panel's outer edge (a power of two, within a
        factor 2 of ``v``: the width is exact)."""
        if not v.size:
            return np.zeros(0)
        edges, masses = self._edges(end)
        inner = edges >= 0.5
        ve, me = 1.0 - edges[inner], masses[inner]   # outer edges in |y|, decreasing; 1 - edge is exact
        j = np.clip(np.searchsorted(-ve, -v, side="right") - 1, 0, ve.size - 2)
        return me[j] + self._gl_inner(end, v, ve[j])

    def _gl_inner(self, end, a, b):
        """Gauss-Legendre of the density over the positions ``end·(a, b)`` (``0 < a <= b``)."""
        y = end * (a[:, None] + np.multiply.outer(b - a, _EDGE_S)).ravel()
        return row_dot(self._mu.dens(y).reshape(a.size, _EDGE_GL), _EDGE_W) * (0.5 * (b - a))

    def _edge_mass(self, end, t):
        """The continuous mass between the support's end ``end`` (±1) and each point at a
        distance ``t`` (a 1-D array, within the end's window) inside it, where the density is
        smooth: the masses of the window's panels below ``t`` and Gauss-Legendre over the rest of
        the distance, which keep their digits however small."""
        edges, masses = self._edges(end)
        j = np.clip(np.searchsorted(edges, t) - 1, 0, edges.size - 2)
        return masses[j] + self._gl_mass(end, edges[j], t)

    def _gl_mass(self, end, a, t):
        """Gauss-Legendre of the density over the distances ``(a, t)`` from the end ``end``."""
        y = (end * (1.0 - (a[:, None] + np.multiply.outer(t - a, _EDGE_S)))).ravel()
        # nodes of an interval a few ulps wide round onto ±1, where dens is 0: the limit inside
        y = np.clip(y, _INSIDE_LO, -_INSIDE_LO)
        return row_dot(self._mu.dens(y).reshape(t.size, _EDGE_GL), _EDGE_W) * (0.5 * (t - a))

    def _edges(self, end):
        """The window at ``end`` (:data:`_EDGE`): its panels' edges (distances from the end) and
        the masses between the end and each."""
        if end not in self._window:
            edges, masses = [0.0, _EDGE], [0.0]
            while True:
                a, b = np.array(edges[-2:-1]), np.array(edges[-1:])
                # the inner panels by position: 1 - b and 1 - a are exact
                piece = self._gl_mass(end, a, b) if b[0] <= 0.5 else self._gl_inner(end, 1.0 - b, 1.0 - a)
                masses.append(masses[-1] + float(piece[0]))
                if masses[-1] >= _EDGE_MASS or 1.0 - edges[-1] <= _EDGE_INNER:
                    break
                edges.append(2 * edges[-1] if edges[-1] < 0.5 else 0.5 * (1.0 + edges[-1]))
            self._window[end] = (np.array(edges), np.array(masses))
        return self._window[end]

    def _edge_dens(self, end, t):
        """The density at the distance ``t`` inside the end ``end``, as :meth:`_edge_mass` takes it."""
        return self._mu.dens(np.clip(end * (1.0 - t), _INSIDE_LO, -_INSIDE_LO))

    def _invert(self, below, above, solve):
        """The points with continuous masses ``below`` between -1 and them and ``above`` between
        them and +1 (1-D arrays): where one of those is within the mass of the window at its
        end, the distance to that end solved on :meth:`_edge_mass` (as :meth:`_cdf` and
        :meth:`_sf` take the mass there; ``T(0, ·)`` differences lose its digits), or past half
        the support the point itself on :meth:`_inner_mass`, elsewhere
        ``solve(selection, lo, hi)`` between the windows (the two rules differ by a rounding of
        the mass, which must not reorder the points).  A mass of 0 or less (an atom's jump) is
        the end, and the caller's."""
        x = np.zeros(below.shape)
        rest = np.ones(below.shape, dtype=bool)
        lo, hi = -1.0, 1.0
        if self._pieces() is None:
            lo, hi = self._edges(-1.0)[0][-1] - 1.0, 1.0 - self._edges(1.0)[0][-1]
            for end, mass in ((-1.0, below), (1.0, above)):
                edges, masses = self._edges(end)
                window = masses[-1]
                k = np.flatnonzero(edges <= 0.5)[-1]
                width, half = edges[k], masses[k]   # the window's outer half (all of it up to 1/2 wide)
                x[rest & (mass <= 0)] = end
                inner = rest & (mass > half) & (mass <= window)
                sel = rest & (mass > 0) & (mass <= half)
                rest &= mass > window
                if inner.any():
                    x[inner] = self._solve_inner(end, mass[inner])
                if not sel.any():
                    continue
                m = mass[sel]
                t0 = m / self._edge_dens(end, np.zeros(m.size))   # the density is about flat there
                # width tol·max(1, t): 2e-17 is under an ulp of y near ±1 and over one of t <= 1/16;
                # farther in Newton stops where its step rounds to 0
                # the mass is a sum of positive terms: its error is relative (fscale 0)
                t = _monotone_solve(lambda v, e=end: (self._edge_mass(e, v), self._edge_dens(e, v)),
                                    m, 0.0, width, x0=t0, tol=2e-17, fscale=0.0,
                                    f=lambda v, e=end: self._edge_mass(e, v))
                # a positive mass lies strictly inside: the nearest float to ±1 at least
                x[sel] = np.clip(end * (1.0 - t), _INSIDE_LO, -_INSIDE_LO)
        if rest.any():
            x[rest] = solve(rest, lo, hi)
        return x

    def _solve_inner(self, end, m):
        """The points whose continuous masses between them and the end ``end`` are ``m`` (a 1-D
        array, within the window's inner panels): the least point ``y`` in them where ``-end``
        times that mass reaches ``-end·m`` (increasing in ``y``: ppf's rule at -1, isf's at +1)."""
        edges, masses = self._edges(end)
        inner = edges >= 0.5
        ve, me = 1.0 - edges[inner], masses[inner]
        lo, hi = sorted((end * 0.5, end * ve[-1]))
        # a power of |y| between the panels' edges (a power tail's mass, nearly): Newton from a
        # linear guess overshot the root on the convex side, and the safeguard halved its way back
        y0 = end * np.exp(np.interp(np.log(m), np.log(me), np.log(ve)))

        def f(y):
            return -end * self._inner_mass(end, end * y)
        # the mass is a sum of positive terms: its error is relative (fscale 0); 1e-16 puts the
        # solver's lattice on the floats down to 2**-12 (_EDGE_INNER) and lets Newton stop at an
        # ulp or two of y (below that its steps are the mass's rounding)
        return _monotone_solve(lambda y: (f(y), self._mu.dens(y)), -end * m, lo, hi, x0=y0, tol=1e-16,
                               fscale=0.0, f=f)

    def _integrate_cont(self, f, lb, ub, with_density=True) -> float:
        """``∫_[lb, ub] f(y) p(y) dy`` over the continuous part (``with_density=False``:
        ``f`` receives ``(y, p(y))`` and its values are integrated against ``dy``)."""
        if self._plain:
            if with_density:
                return self.source._integrate(f, lb, ub)
            return self.source._integrate(lambda x: f(x, self.source.pdf(x)) / self.source.pdf(x), lb, ub)
        lb, ub = max(lb, -1.0), min(ub, 1.0)
        if not lb < ub:
            return 0.0
        pieces = self._pieces()
        if pieces is not None:  # exact for a piecewise-constant density: 3-point rule per piece
            a, b, pv = pieces
            a, b = np.clip(a, lb, ub), np.clip(b, lb, ub)
            keep = b > a
            a, b, pv = a[keep], b[keep], pv[keep]
            gx, gw = _GL3_X, _GL3_W
        else:
            e = np.concatenate([[lb], _Y_EDGES[(_Y_EDGES > lb) & (_Y_EDGES < ub)], [ub]])
            a, b, pv = e[:-1], e[1:], None
            gx, gw = _GL_X, _GL_W
        key = (lb, ub)
        if key not in self._rules:  # the density at the nodes is the costly part: keep it
            y = (0.5 * (b - a)[:, None] * gx + 0.5 * (a + b)[:, None]).ravel()
            w = (0.5 * (b - a)[:, None] * gw).ravel()
            p = np.asarray(self._mu.dens(y)) if pv is None else np.repeat(pv, gx.size)
            keep = p > 0
            if len(self._rules) > 8:
                self._rules.clear()
            self._rules[key] = (y[keep], w[keep], p[keep])
        y, w, p = self._rules[key]
        vals = np.asarray(f(y), dtype=np.float64) * p if with_density else np.asarray(f(y, p), dtype=np.float64)
        return float(np.sum(w * vals))

    def _pieces(self):
        """For a source with a piecewise-constant density (an empirical sample), the density of
        ``y`` is too, with a jump wherever ``y·M`` crosses a knot for some quadrature node ``M``:
        ``(left ends, right ends, values)`` of the pieces of ``(-1, 1)``; None otherwise."""
        if self._pieces_done:
            return self._pieces_val
        self._pieces_done = True
        mu, pw = self._mu, self.source._piecewise_density()
        if pw is None or mu._e_logm.size:
            return None
        xk, dens = pw
        m = mu.m
        pos, jump = [], []
        for sign, C in ((1.0, mu._cp), (-1.0, mu._cm)):
            if not np.any(C):
                continue
            lo, hi = np.multiply.outer(1 / m, xk[:-1]), np.multiply.outer(1 / m, xk[1:])  # y = x/M
            if sign < 0:  # extreme negative: y = -x/M
                lo, hi = -hi, -lo
            val = (C * m)[:, None] * dens[None, :]
            lo, hi = np.clip(lo, -1.0, 1.0), np.clip(hi, -1.0, 1.0)  # only |x| < M is in the law
            k = (hi > lo) & (val != 0)
            pos += [lo[k], hi[k]]
            jump += [val[k], -val[k]]
        pos, jump = np.concatenate(pos), np.concatenate(jump)
        order = np.argsort(pos, kind="stable")
        pos, level = pos[order], np.cumsum(jump[order])
        a, b, v = pos[:-1], pos[1:], np.maximum(level[:-1], 0.0)  # the running sum may round below 0
        keep = b > a
        self._pieces_val = (a[keep], b[keep], v[keep])
        return self._pieces_val



def _call_vectorised(f, y: np.ndarray) -> np.ndarray:
    """``f`` on the array ``y`` if it maps arrays elementwise, else value by value."""
    try:
        out = np.asarray(f(y), dtype=np.float64)
        if out.shape == y.shape:
            return out
    except (TypeError, ValueError):
        pass
    return np.array([float(f(float(v))) for v in y])


def normalize_blocks(x: np.ndarray, normalization: str) -> np.ndarray:
    """``x`` of shape (blocks, B) divided by each row's absmax or signed absmax (``"none"``:
    unchanged).  A row of zeros has no scale and stays 0."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    x = real_array(x, "x")
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"x must have shape (blocks, B) with B >= 1, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x must be finite (found NaN or inf)")
    if normalization == "none":
        return x.copy()
    i = np.argmax(np.abs(x), axis=1)
    s = np.take_along_axis(x, i[:, None], axis=1)
    if normalization == "absmax":
        s = np.abs(s)
    return x / np.where(s == 0, 1.0, s)


def block_distribution(block_size: int = DEFAULT_BLOCK_SIZE, source: Any = "normal", normalization: str = "absmax",
                       scale: Any = None, **scale_model: Any) -> Any:
    """Shorthand for :class:`BlockDistribution`; with ``scale`` (a rule of
    :mod:`quantbook.scales`) the law under that rule, :class:`~.scaled.ScaledBlockDistribution`
    (``qmax``, ``tensor_amax``, ``tensor_size`` as keywords).  bitsandbytes' rules (float32,
    nested) encode the values with the exact maximum: their law is the absmax law."""
    from ..scales import check_scaled_only, get_rule

    rule = None if scale is None else get_rule(scale)
    check_scaled_only(rule, **{name: True for name in scale_model})
    if rule is None or rule.layout == "bnb":
        return BlockDistribution(block_size, source, normalization)
    if normalization != "absmax":
        raise ValueError(f"a scale rule maps the block's absolute maximum: normalization must be absmax, "
                         f"got {normalization!r}")
    from .scaled import ScaledBlockDistribution  # built on this module's measures

    return ScaledBlockDistribution(block_size, source, scale, **scale_model)
