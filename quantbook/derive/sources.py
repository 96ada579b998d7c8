"""Source distributions of the weights, before block scaling.

Every source is a continuous distribution on the real line with density ``g``.  Its
``pdf``/``cdf``/``sf``/``ppf``/``isf`` (and ``logpdf``/``logcdf``/``logsf``) behave as
scipy.stats' (NaN in, NaN out; no quantile outside [0, 1]; a scalar in, a scalar out): the base
class checks and masks, and a source implements ``_pdf``/``_cdf``/``_sf``/``_ppf`` on float64
arrays and ``_rvs(shape, rng)`` (``rvs`` checks ``size`` as scipy does: None is one value); the
logs default to the log of those and are overridden where the value underflows long before its
log does (the far tails of the parametric sources).  Besides those, each one provides what the
exact block computations (:mod:`quantbook.derive.block`) need in closed form, as the hooks
``_partial_moment``, ``_abs_isf`` (and, where the generic ones lose digits, ``_abs_ppf``,
``_abs_log_isf``) behind public methods that check and mask the same way:

``partial_moment(k, x)``
    ``Ψ_k(x) = ∫_0^x u**k g(u) du`` for k = 0, 1, 2 (signed: negative for x < 0 when k is
    even).  Differences ``Ψ_k(b) - Ψ_k(a)`` are the partial moments over ``[a, b]``;
    ``x = ±inf`` is allowed where the moment is finite.
``abs_isf(s)`` / ``abs_ppf(G)`` / ``abs_log_isf(log_s)``
    the quantiles of ``|X|``: ``m`` with ``P(|X| > m) = s`` / ``P(|X| <= m) = G``, and
    ``log m`` from ``log s`` for tail probabilities beyond float range (heavy tails).

``isf(q)`` inverts ``sf``; ``moment(k)`` is ``E[X**k]``.

Sources (all but the empirical one are scaled to **unit variance**, so expected errors are in
units of the weight variance):

* ``Normal()`` — N(0, 1);
* ``Laplace()`` — Laplace with scale ``b = 1/sqrt(2)``;
* ``StudentT(nu)`` — Student-t with ``nu`` degrees of freedom (``StudentT.NU_MIN <= nu <=
  StudentT.NU_MAX``), multiplied by ``sqrt((nu-2)/nu)`` when ``nu > 2`` (unit variance); left
  at scale 1 for ``nu <= 2`` (infinite variance: weight-domain errors are then undefined and
  rejected);
* ``Empirical(sample)`` — any 1-D sample (e.g. a model's weights), divided by its RMS
  ``sqrt(mean(x**2))`` (so ``E[x**2] = 1``; the mean is *not* removed, as block quantizers
  do not remove it).  Each distinct value ``v_i`` (count ``c_i``) is spread uniformly over
  its Voronoi cell — from the midpoint to its left neighbour to the midpoint to its right
  neighbour (half a gap beyond the extreme values) — which gives a continuous distribution
  with a piecewise-constant density whose ``ppf`` is close to the sample quantiles and
  which treats rounded data (bf16 weights, many ties) as uniform within each rounding cell;
  that cdf is then interpolated linearly through about ``knots`` (default 4096) of its points,
  uniform in probability in the bulk and geometric in the tails, to smooth the density.
  Its support is bounded by the sample's extremes, so block sizes should be well below the
  sample size.

:func:`parse_source` turns the CLI spellings ``normal``, ``laplace``, ``student-t:NU`` and
``FILE.npy`` into a source; :func:`register_source_parser` lets other modules add spellings
(e.g. ``FILE.safetensors:GLOB``).  A source's ``spec`` is the string a recipe stores.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any, Callable

import mpmath
import numpy as np
from numpy.typing import ArrayLike
from scipy import integrate, special

from ..errors import warn
from ..numerics.arguments import RandomSource, Seed, check_flag, check_int, is_int, one_line, random_generator
from ..numerics.dots import row_dot
from ..numerics.fpstate import ignore_underflow
from ..numerics.reals import real_host_array, real_kind
from ..io.files import check_input_file
from ..io.npy import load_npy
from .conventions import FloatOrArray, Size, apply, at_q, at_x, sample_shape

__all__ = ["Source", "Normal", "Laplace", "StudentT", "Empirical", "parse_source",
           "register_source_parser", "SourceError"]


class SourceError(ValueError):
    """A source specification that cannot be understood or a sample that cannot be used."""


class Source:
    """A distribution of weights that the derivations take (base class; the module docstring
    states the contract)."""

    spec: str = "?"
    symmetric: bool = True
    #: largest k for which E|X|**k is finite (inf for light tails)
    moment_limit: float = math.inf

    # ---- to implement: float64 arrays in, arrays of their shape out
    def _pdf(self, x): raise NotImplementedError  # noqa: E704
    def _cdf(self, x): raise NotImplementedError  # noqa: E704
    def _sf(self, x): raise NotImplementedError  # noqa: E704
    def _ppf(self, p): raise NotImplementedError  # noqa: E704
    def _partial_moment(self, k: int, x):
        raise NotImplementedError(f"{type(self).__name__} must implement _partial_moment(k, x)")

    def _abs_isf(self, s):
        raise NotImplementedError(f"{type(self).__name__} must implement _abs_isf(s)")

    def _rvs(self, shape: tuple[int, ...], rng: RandomSource): raise NotImplementedError  # noqa: E704

    # ---- public, as scipy.stats: NaN in, NaN out; a probability outside [0, 1] has no
    # quantile (NaN); a scalar in, a scalar out
    def pdf(self, x: ArrayLike) -> FloatOrArray:
        return at_x(self._pdf, x)

    def cdf(self, x: ArrayLike) -> FloatOrArray:
        return at_x(self._cdf, x)

    def sf(self, x: ArrayLike) -> FloatOrArray:
        return at_x(self._sf, x)

    def logpdf(self, x: ArrayLike) -> FloatOrArray:
        return at_x(self._logpdf, x)

    def logcdf(self, x: ArrayLike) -> FloatOrArray:
        return at_x(self._logcdf, x)

    def logsf(self, x: ArrayLike) -> FloatOrArray:
        return at_x(self._logsf, x)

    def ppf(self, q: ArrayLike) -> FloatOrArray:
        return at_q(self._ppf, q)

    def isf(self, q: ArrayLike) -> FloatOrArray:
        return at_q(self._isf, q)

    def partial_moment(self, k: int, x: ArrayLike) -> FloatOrArray:
        k = _check_order(k)
        return at_x(lambda a: self._partial_moment(k, a), x)

    def abs_isf(self, s: ArrayLike) -> FloatOrArray:
        return at_q(self._abs_isf, s, "s")

    def abs_ppf(self, G: ArrayLike) -> FloatOrArray:
        return at_q(self._abs_ppf, G, "G")

    def abs_log_isf(self, log_s: ArrayLike) -> FloatOrArray:
        return apply(self._abs_log_isf, log_s, "log_s", lambda a: a <= 0)

    def rvs(self, size: Size = None, random_state: Seed = None) -> FloatOrArray:
        """``size`` draws (None or ``()``: one, a float); ``random_state``: a seed, a Generator or a
        RandomState, which draws with its own methods as in scipy.stats
        (:func:`~quantbook.numerics.arguments.random_generator`)."""
        shape = sample_shape(size)
        return np.asarray(self._rvs(shape, random_generator(random_state)), dtype=np.float64).reshape(shape)[()]

    # ---- generic
    def _logpdf(self, x):
        with np.errstate(divide="ignore"):
            return np.log(self._pdf(x))

    def _logcdf(self, x):
        with np.errstate(divide="ignore"):
            return np.log(self._cdf(x))

    def _logsf(self, x):
        with np.errstate(divide="ignore"):
            return np.log(self._sf(x))

    def _isf(self, q):
        """Inverse of :meth:`sf`; for a symmetric law ``-ppf(q)``, exact for small ``q``."""
        return -self._ppf(q) if self.symmetric else self._ppf(1.0 - q)

    def _abs_ppf(self, G):
        return self.abs_isf(1.0 - np.asarray(G, dtype=np.float64))

    def _abs_log_isf(self, log_s):
        """``log m`` with ``P(|X| > m) = exp(log_s)``: the block quadrature reaches tail
        probabilities below float range for heavy tails (overridden where that happens)."""
        with np.errstate(divide="ignore"):
            return np.log(self.abs_isf(np.exp(np.asarray(log_s, dtype=np.float64))))

    def _piecewise_density(self):
        """``(knots, values)`` when the density is constant between knots, else None."""
        return None

    def _node_sums(self, what: str, k: int, y: np.ndarray, m: np.ndarray, c: np.ndarray) -> np.ndarray:
        """``Σ_j c_j f(y_i m_j)`` for each ``y_i`` (1-D arrays), ``f`` the density (``what="pdf"``)
        or ``Ψ_k`` (``"psi"``): the sums over the nodes ``m_j`` of the block maximum that a block
        law is made of (:mod:`.block`).  A source may take them without the table of all
        ``f(y_i m_j)`` (:class:`Empirical`)."""
        if what not in ("pdf", "psi"):   # a segment is a sample's notion (Empirical)
            raise ValueError(f"no node sums of {what!r} for {self.spec}")
        ym = np.multiply.outer(y, m)
        return row_dot(self.pdf(ym) if what == "pdf" else self.partial_moment(k, ym), c)

    def _node_sums_of(self, parts, k: int, y: np.ndarray, m: np.ndarray) -> list[np.ndarray]:
        """:meth:`_node_sums` of each ``(what, c)`` in ``parts`` at the same points (a block law's
        ``Ψ_0`` and density for a Newton step).  A source may take them in one pass over the
        pairs ``(y_i, m_j)`` (:class:`Empirical`)."""
        return [self._node_sums(what, k, y, m, c) for what, c in parts]

    def _integrate(self, f, lb: float, ub: float) -> float:
        """``∫_[lb, ub] f(x) g(x) dx`` (``f`` maps arrays elementwise) as ``∫ f(x(u)) du`` over
        the probabilities of ``[lb, ub]``, by adaptive quadrature: ``x = ppf(u)`` below the
        median and ``isf(1 - u)`` above it, so that neither tail loses digits; heavy tails
        become integrable end-point singularities in ``u``."""
        def piece(qf, a, b):
            if not a < b:
                return 0.0
            out = integrate.quad(lambda u: float(f(np.atleast_1d(qf(u)))[0]), a, b, limit=200, full_output=1)
            if len(out) > 3:   # full_output turns quad's warnings into this message
                # "probably divergent" (ier 5): the integral has no value, not the last sum
                if "divergent" in out[3]:
                    return math.nan
                warn(out[3], integrate.IntegrationWarning)
            return out[0]

        lower = piece(self.ppf, float(self.cdf(lb)), min(float(self.cdf(ub)), 0.5))
        upper = piece(self.isf, float(self.sf(ub)), min(float(self.sf(lb)), 0.5))
        return float(lower + upper)

    def moment(self, k: int) -> float:
        """``E[X**k]`` (k = 0, 1, 2).  Where ``E|X|**k`` diverges: ``inf`` for an even ``k``,
        NaN for an odd one (both halves infinite: no value), as :class:`quantbook.derive.block.BlockDistribution`."""
        _check_order(k)
        if k >= self.moment_limit:
            return math.inf if k % 2 == 0 else math.nan
        return float(self.partial_moment(k, np.inf) - self.partial_moment(k, -np.inf))

    @property
    def var(self) -> float:
        return self.moment(2) - self.moment(1) ** 2

    def __repr__(self) -> str:
        return f"<source {self.spec}>"

    def _key(self):
        return (type(self).__name__, self.spec)

    def __eq__(self, other):
        return isinstance(other, Source) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())


_GL8_X, _GL8_W = np.polynomial.legendre.leggauss(8)
#: Gauss-Laguerre nodes of the Student-t's far tail for large ν (StudentT._log_abs_sf_deep)
_LAGUERRE_X, _LAGUERRE_W = np.polynomial.laguerre.laggauss(16)
#: log of the smallest P(|T| > u) taken from scipy's stdtr (StudentT._log_abs_sf)
_LOG_STDTR_MIN = math.log(1e-300)




def _order_error(k: Any) -> str:
    return f"moments and partial moments are available for k = 0, 1, 2, got {k!r}"


def _check_order(k: Any) -> int:
    if not is_int(k) or not 0 <= k <= 2:
        raise ValueError(_order_error(k))
    return int(k)


def _ndtr(x):
    """Φ(x): scipy's ``ndtr`` is 0 below about -37.5, where Φ is still subnormal (down to
    -38.5); there from its log."""
    p = np.asarray(special.ndtr(x), dtype=np.float64)
    zero = p == 0
    if zero.any():   # log_ndtr costs twice ndtr: only where it is needed
        with np.errstate(under="ignore"):
            p = np.where(zero, np.exp(special.log_ndtr(x)), p)
    return p


class Normal(Source):
    """The standard normal N(0, 1) (``parse_source("normal")``)."""

    spec = "normal"

    def _pdf(self, x):
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(over="ignore"):   # x² overflows where the density is 0 anyway
            return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)

    def _cdf(self, x):
        return _ndtr(np.asarray(x, dtype=np.float64))

    def _sf(self, x):
        return _ndtr(-np.asarray(x, dtype=np.float64))

    def _logpdf(self, x):
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(over="ignore"):   # -inf where x² overflows: below any float
            return -0.5 * x * x - 0.5 * math.log(2 * math.pi)

    def _logcdf(self, x):
        return special.log_ndtr(np.asarray(x, dtype=np.float64))

    def _logsf(self, x):
        return special.log_ndtr(-np.asarray(x, dtype=np.float64))

    def _ppf(self, p):
        return special.ndtri(np.asarray(p, dtype=np.float64))

    def _partial_moment(self, k, x):
        x = np.asarray(x, dtype=np.float64)
        if k == 0:
            return 0.5 * special.erf(x / math.sqrt(2))
        with np.errstate(over="ignore"):   # x² overflows where Ψ_k has reached its limit
            if k == 1:
                return -np.expm1(-0.5 * x * x) / math.sqrt(2 * math.pi)
            if k == 2:
                return 0.5 * np.sign(x) * special.gammainc(1.5, 0.5 * x * x)
        raise ValueError(_order_error(k))

    def _abs_isf(self, s):
        return math.sqrt(2) * special.erfcinv(np.asarray(s, dtype=np.float64))

    def _abs_ppf(self, G):
        return math.sqrt(2) * special.erfinv(np.asarray(G, dtype=np.float64))

    def _rvs(self, shape, rng):
        return rng.standard_normal(shape)


class Laplace(Source):
    """The Laplace law of unit variance, scale ``b = 1/sqrt(2)`` (``parse_source("laplace")``)."""

    spec = "laplace"
    b = 1 / math.sqrt(2)  # unit variance: 2 b**2 = 1

    def _pdf(self, x):
        return np.exp(-np.abs(np.asarray(x, dtype=np.float64)) / self.b) / (2 * self.b)

    def _cdf(self, x):
        x = np.asarray(x, dtype=np.float64)
        h = 0.5 * np.exp(-np.abs(x) / self.b)
        return np.where(x < 0, h, 1 - h)

    def _sf(self, x):
        return self._cdf(-np.asarray(x, dtype=np.float64))

    def _logpdf(self, x):
        return -np.abs(np.asarray(x, dtype=np.float64)) / self.b - math.log(2 * self.b)

    def _logcdf(self, x):
        x = np.asarray(x, dtype=np.float64)
        log_h = -np.abs(x) / self.b - math.log(2)   # log of the smaller tail, exact
        return np.where(x < 0, log_h, np.log1p(-np.exp(log_h)))

    def _logsf(self, x):
        return self._logcdf(-np.asarray(x, dtype=np.float64))

    def _ppf(self, p):
        p = np.asarray(p, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):  # both branches are evaluated
            return np.where(p < 0.5, self.b * np.log(2 * p), -self.b * np.log(2 * (1 - p)))

    def _partial_moment(self, k, x):
        x = np.asarray(x, dtype=np.float64)
        t = np.abs(x) / self.b
        if k == 0:
            return 0.5 * np.sign(x) * -np.expm1(-t)
        if k == 1:
            return 0.5 * self.b * special.gammainc(2, t)
        if k == 2:
            return np.sign(x) * self.b**2 * special.gammainc(3, t)
        raise ValueError(_order_error(k))

    def _abs_isf(self, s):
        with np.errstate(divide="ignore"):   # s = 0: the support's end, inf
            return -self.b * np.log(np.asarray(s, dtype=np.float64))

    def _abs_ppf(self, G):
        with np.errstate(divide="ignore"):   # G = 1: the support's end, inf
            return -self.b * np.log1p(-np.asarray(G, dtype=np.float64))

    def _rvs(self, shape, rng):
        return rng.laplace(0.0, self.b, shape)


class StudentT(Source):
    """Student-t with ``nu`` degrees of freedom, ``NU_MIN <= nu <= NU_MAX`` (unit variance
    for ``nu > 2``).

    Partial moments (of the unit-scale ``T``, argument ``u``) in Beta form: ``W = T²/(ν + T²)``
    is Beta(1/2, ν/2), so with ``w = u²/(ν + u²)``, ``Ψ_0(u) = ½·I_w(1/2, ν/2)`` and, for
    ν > 2, ``Ψ_2(u) = ½·E[T²; W < w] = ½·ν/(ν-2)·I_w(3/2, ν/2 - 1)`` (``T² = νW/(1-W)``
    turns the Beta(1/2, ν/2) density into ν/(ν-2) times the Beta(3/2, ν/2 - 1) one).  Both
    keep full relative accuracy as ``u → 0``, where the cdf differences ``F(u) - 1/2`` they
    replace cancel; for ``w > 1/2`` the complements in ``1 - w = ν/(ν + u²)`` keep the tail.
    """

    #: range of ``nu`` the block computations are accurate for.  For small ``nu`` the other
    #: values of a block are tiny next to its extreme one (``|y|`` is about ``U**(1/nu)``), so
    #: the law of ``y`` piles up at 0 faster than the fixed quadrature over ``M`` resolves;
    #: beyond ``NU_MAX`` the law is the normal one to within ~1/nu (use ``normal``).
    NU_MIN, NU_MAX = 0.5, 1e6

    def __init__(self, nu: float) -> None:
        if isinstance(nu, (str, bytes)):   # float() would read "5": spellings are parse_source's
            spelled = f"student-t:{nu.strip() if isinstance(nu, str) else 'NU'}"
            raise SourceError(f"StudentT takes the degrees of freedom as a number, got the string {nu!r}; "
                              f"parse_source({spelled!r}) reads a spelling")
        if isinstance(nu, (bool, np.bool_, np.complexfloating)):   # float() takes True as 1, a complex's real part
            raise SourceError(f"student-t degrees of freedom must be a real number, got {nu!r}")
        try:
            nu = float(nu)
        except (TypeError, ValueError):
            raise SourceError(f"student-t degrees of freedom must be a number, got {nu!r}") from None
        if not self.NU_MIN <= nu <= self.NU_MAX:  # also rejects NaN
            raise SourceError(f"student-t needs degrees of freedom nu between {self.NU_MIN:g} and "
                              f"{self.NU_MAX:g} (use normal beyond), got {nu!r}")
        self.nu = nu
        self.scale = math.sqrt((nu - 2) / nu) if nu > 2 else 1.0
        short = f"{nu:g}"  # the spec is the recipe's record and the cache key: it must round-trip
        self.spec = f"student-t:{short if float(short) == nu else repr(nu)}"
        self.moment_limit = nu
        # c = Γ((ν+1)/2) / (Γ(ν/2) √(νπ)); the float log-gamma difference loses digits for large ν
        with mpmath.workdps(30):
            self._c = float(mpmath.gamma((nu + 1) / 2) / mpmath.gamma(nu / 2) / mpmath.sqrt(nu * mpmath.pi))

    def _pdf(self, x):
        # c·(1 + u²/ν)^(-(ν+1)/2), the power through log1p: scipy's t.pdf takes the gamma functions at
        # every point (half of a heavy-tailed block law's time), and loses digits to them for large ν
        with np.errstate(over="ignore"):  # x/scale and u² overflow where the density is 0 anyway
            u = np.asarray(x, dtype=np.float64) / self.scale
            return self._c / self.scale * np.exp(-(self.nu + 1) / 2 * np.log1p(u * u / self.nu))

    def _logpdf(self, x):
        # log c - (ν+1)/2·log(1 + u²/ν) with the log in logaddexp form: scipy's t.logpdf is -inf
        # where u² overflows (|u| > 1e154) and loses digits where the density underflows
        with np.errstate(over="ignore", divide="ignore"):
            L = 2 * np.log(np.abs(np.asarray(x, dtype=np.float64) / self.scale)) - math.log(self.nu)
        return math.log(self._c / self.scale) - (self.nu + 1) / 2 * np.logaddexp(0.0, L)

    def _log_half_tail(self, u):
        """``log P(T > |u|)`` for the unit-scale ``T``."""
        with np.errstate(divide="ignore"):
            return self._log_abs_sf(np.log(np.abs(u))) - math.log(2)

    def _half_tail(self, u):
        """``P(T > |u|)`` for the unit-scale ``T`` (scipy's stdtr underflows to 0 in far tails
        that are still representable, e.g. ν = 0.5 at 1e299)."""
        with np.errstate(divide="ignore"):
            return 0.5 * np.exp(self._log_abs_sf(np.log(np.abs(u))))

    def _logcdf(self, x):
        return self._logsf(-np.asarray(x, dtype=np.float64))

    def _logsf(self, x):
        with np.errstate(over="ignore"):
            u = np.asarray(x, dtype=np.float64) / self.scale
        log_tail = self._log_half_tail(u)
        return np.where(u > 0, log_tail, np.log1p(-np.exp(log_tail)))

    def _cdf(self, x):
        with np.errstate(over="ignore"):
            u = np.asarray(x, dtype=np.float64) / self.scale
        tail = self._half_tail(u)
        return np.where(u < 0, tail, 1.0 - tail)

    def _sf(self, x):
        with np.errstate(over="ignore"):
            u = np.asarray(x, dtype=np.float64) / self.scale
        tail = self._half_tail(u)
        return np.where(u > 0, tail, 1.0 - tail)

    def _ppf(self, p):
        # through the accurate |X| quantiles: scipy's stdtrit loses digits in the far tails
        # (and gives +inf at p = 0)
        p = np.asarray(p, dtype=np.float64)
        lower = p < 0.5
        m = self._abs_isf(np.where(lower, 2 * p, 2 * (1 - p)))
        return np.where(lower, -m, m)

    def _beta_half(self, p, q, u):
        """``½·sign(u)·I_w(p, q)`` at ``w = u²/(ν + u²)``; where ``w > 1/2`` as
        ``½ - ½·I_(1-w)(q, p)`` with ``1 - w = ν/(ν + u²)`` (scipy's ``betaincc`` rounds
        ``1 - tiny`` to 1 there)."""
        with np.errstate(over="ignore", invalid="ignore"):
            s = u * u / self.nu
            w = s / (1 + s)
            wc = 1 / (1 + s)
            # each value through its own branch only: betainc is most of a heavy-tailed block
            # law's cost, and a placeholder argument in the other branch costs as much as a value
            head = w < 0.5
            val = np.empty(np.shape(w))
            val[head] = 0.5 * special.betainc(p, q, w[head])
            tail = ~head
            val[tail] = 0.5 - 0.5 * special.betainc(q, p, wc[tail])
        return np.sign(u) * val

    def _partial_moment(self, k, x):
        nu, sc = self.nu, self.scale
        with np.errstate(over="ignore"):  # ±inf is a valid argument
            u = np.asarray(x, dtype=np.float64) / sc
        if k == 0:
            return self._beta_half(0.5, nu / 2, u)
        with np.errstate(over="ignore"):
            s = u * u / nu
        a = (nu + 1) / 2
        if k == 1:  # c·nu/2·∫_0^s (1+t)^-a dt
            if nu <= 1:
                with np.errstate(over="ignore", invalid="ignore"):
                    r = np.log1p(s) if nu == 1 else np.expm1((1 - a) * np.log1p(s)) / (1 - a)
                return sc * self._c * nu / 2 * r
            return sc * self._c * nu / 2 * (-np.expm1((1 - a) * np.log1p(s)) / (a - 1))
        if k == 2:
            if nu > 2:  # sc² · ν/(ν-2) = 1
                return self._beta_half(1.5, nu / 2 - 1, u)
            return sc * sc * self._second_moment_heavy(u, s)
        raise ValueError(_order_error(k))

    def _second_moment_heavy(self, u, s):
        """``∫_0^u t² t_ν(t) dt`` for ν ≤ 2 (it grows without bound).

        ν = 2: ``asinh(u/√2) - u/√(2 + u²)``.  Otherwise ``c·u³/3·₂F₁(a, 3/2; 5/2; -u²/ν)``,
        multiplied in logs (``u³`` overflows long before the product does); where ``u²/ν``
        overflows, the leading term ``c·ν^a·|u|^(2-ν)/(2-ν)`` (relative error far below 1e-16
        there).  scipy's ``hyp2f1`` is inaccurate for ``a = b`` (ν = 2) at large ``|z|``, hence
        the closed form."""
        nu, a = self.nu, (self.nu + 1) / 2
        au = np.abs(u)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            if nu == 2:
                mag = np.arcsinh(au / math.sqrt(2)) - 1 / np.sqrt(1 + 2 / (au * au))
                # near 0 the closed form cancels: integrate 2^-1.5 t² (1 + t²/2)^-1.5 term by term
                x = au * au / 2
                series, coef = np.zeros_like(au), 1.0
                for j in range(8):  # |u| < 0.1: truncation ≲ (u²/2)^8
                    series = series + coef * x**j / (3 + 2 * j)
                    coef *= -(1.5 + j) / (j + 1)
                mag = np.where(au < 0.1, au**3 / 2**1.5 * series, mag)
            else:
                logc = math.log(self._c)
                lg = logc + 3 * np.log(au) - math.log(3) + np.log(special.hyp2f1(a, 1.5, 2.5, -s))
                lg_inf = logc + a * math.log(nu) + (2 - nu) * np.log(au) - math.log(2 - nu)
                mag = np.exp(np.where(np.isfinite(s), lg, lg_inf))
                mag = np.where(au == 0, 0.0, mag)
        return np.sign(u) * mag

    def _log_abs_sf(self, t):
        """``log P(|T| > e^t)`` for the unit-scale ``T``, ``t`` any real: with
        ``x = ν/(ν + u²)``, ``P(|T| > u) = I_x(ν/2, 1/2) = x^a (1-x)^(1/2) F(a+1/2, 1; a+1; x) /
        (a B(a, 1/2))`` (DLMF 8.17.8, ``a = ν/2``), all in logs, for ``x < 1/2``; the cdf
        elsewhere, but where that nears the subnormal range (large ν, ``u² <= ν``):
        :meth:`_log_abs_sf_deep`."""
        nu, a = self.nu, self.nu / 2
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            L = 2 * t - math.log(nu)  # log(u²/ν)
            lx = -np.logaddexp(0.0, L)  # log x
            x = np.exp(lx)
            tail = (a * lx + 0.5 * (L + lx) - math.log(a) - special.betaln(a, 0.5)
                    + np.log(special.hyp2f1(a + 0.5, 1.0, a + 1.0, np.minimum(x, 0.5))))
            bulk = np.array(np.log(2 * special.stdtr(nu, -np.exp(t))))
            # stdtr keeps its digits down to about 1e-300, then loses them and underflows to 0
            deep = (x >= 0.5) & ~(bulk >= _LOG_STDTR_MIN)
            if deep.any():
                bulk[deep] = self._log_abs_sf_deep(lx[deep], L[deep])
            return np.where(t == np.inf, -np.inf, np.where(x < 0.5, tail, bulk))

    def _log_abs_sf_deep(self, lx, L):
        """``log I_x(a, 1/2)`` (``a = ν/2``) from ``log x`` and ``L = log(1/x - 1)`` where
        ``x^a`` is far below 1: by DLMF 8.17.7 and Euler's integral,
        ``I_x(a, 1/2) = x^a / (a B(a, 1/2)) ∫_0^∞ e^-v (1 - x e^(-v/a))^(-1/2) dv``, whose
        integrand's singularity lies at ``v = a log x``, hundreds of units from the weight
        ``e^-v``: Gauss-Laguerre is exact to rounding.  ``1/(a B(a, 1/2)) = 2c/√ν`` from the
        normalising constant (``betaln`` loses 1e-9 at ν = 10^6)."""
        a = self.nu / 2
        x, wc = np.exp(lx), np.exp(L + lx)   # 1 - x = u²/(ν + u²), without cancellation
        f = (wc[:, None] + x[:, None] * -np.expm1(-_LAGUERRE_X / a)) ** -0.5
        return a * lx + math.log(2 * self._c / math.sqrt(self.nu)) + np.log(row_dot(f, _LAGUERRE_W))

    def _log_isf_unit(self, log_s):
        """``t = log u`` with ``P(|T| > u) = exp(log_s)``, by Newton's method on
        :meth:`_log_abs_sf` (scipy's ``stdtrit`` loses digits and overflows in the far tail;
        its value, or the leading term of the series, is only the start)."""
        nu, a = self.nu, self.nu / 2
        log_s = np.asarray(log_s, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            guess = np.log(-special.stdtrit(nu, 0.5 * np.exp(log_s)))
            lx = (log_s + math.log(a) + special.betaln(a, 0.5)) / a  # P ~ x^a / (a B(a, 1/2))
            deep = 0.5 * (math.log(nu) - lx)
            t = np.where(np.isfinite(guess) & (lx > -40), guess, deep)  # deep: exact to O(x)
            log_c = math.log(self._c)
            found = np.zeros(t.shape, dtype=bool)
            for _ in range(60):
                F = self._log_abs_sf(t)
                L = 2 * t - math.log(nu)
                # d/dt log P(|T| > e^t) = -2 u g(u) / P(|T| > u), g(u) = c (1 + u²/ν)^-(ν+1)/2
                dF = -np.exp(t + math.log(2) + log_c - (nu + 1) / 2 * np.logaddexp(0.0, L) - F)
                step = np.clip((F - log_s) / dF, -50.0, 50.0)
                # a value found stays: further steps would move it by as many ulps as its
                # neighbours in the call take steps
                step = np.where(np.isfinite(step) & ~found, step, 0.0)
                t = t - step
                found |= np.abs(step) <= 4e-16 * np.maximum(1.0, np.abs(t))
                if np.all(found):
                    break
            return np.where(log_s < math.log(0.5), t, np.nan)

    def _polish_isf_unit(self, u, s):
        """``u`` (from :meth:`_log_isf_unit`) after one Newton step on ``log u`` for ``P(|T| > u) =
        s`` where ``u² > ν``, with the ratio ``P/s`` taken from powers, not logs: ``log P`` near
        ``log s`` carries an error of some ulps of ``|log s|`` (up to 745), which is ``1/ν`` of
        itself relative in ``u``.  With ``z = u/√ν``, ``a = ν/2`` and
        ``x = 1/(1 + z²)``, DLMF 8.17.8 reads ``P = 2c/√ν · z^-ν (1 + 1/z²)^-(a+1/2) ·
        F(a + 1/2, 1; a + 1; x)`` and ``d log P / d log u = -ν/F``.  The power is taken as two
        halves of about ``√s`` each, ``s`` dividing between them: none underflows where ``s`` is
        subnormal."""
        nu, a = self.nu, self.nu / 2
        with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
            z = u / math.sqrt(nu)
            r = 1 / (z * z)   # 0 where z² overflows
            half = np.power(z, -a) * np.power(1 + r, -a / 2)
            F = special.hyp2f1(a + 0.5, 1.0, a + 1.0, r / (1 + r))
            ratio = (half / s) * half * (2 * self._c / math.sqrt(nu)) * np.power(1 + r, -0.5) * F
            new = u * np.exp(np.log(ratio) * F / nu)
        return np.where((z > 1) & (s > 0) & np.isfinite(new) & (new > 0), new, u)

    def _small_m(self, G):
        """Unit-scale ``u`` with ``P(|T| <= u) = G <= 1/2``: inverts ``I_w(1/2, ν/2)``,
        ``w = u²/(ν + u²)``, keeping small ``G`` exact (``0.5 + G/2`` would round)."""
        nu = self.nu
        with np.errstate(divide="ignore", invalid="ignore"):
            w = special.betaincinv(0.5, nu / 2, np.minimum(G, 0.5))
            return np.sqrt(nu * w / (1 - w))

    def _abs_isf(self, s):
        s = np.asarray(s, dtype=np.float64)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            s_tail = np.where(s < 0.5, s, 0.25)
            tail = self._polish_isf_unit(np.exp(self._log_isf_unit(np.log(s_tail))), s_tail)
            # 1 - s is exact for s >= 1/2
            return self.scale * np.where(s < 0.5, tail, self._small_m(1.0 - s))

    def _abs_ppf(self, G):
        G = np.asarray(G, dtype=np.float64)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            s_tail = np.where(G <= 0.5, 0.25, 1.0 - G)
            tail = self._polish_isf_unit(np.exp(self._log_isf_unit(np.log(s_tail))), s_tail)
            return self.scale * np.where(G <= 0.5, self._small_m(G), tail)

    def _abs_log_isf(self, log_s):
        log_s = np.asarray(log_s, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            small = log_s < math.log(0.5)
            tail = self._log_isf_unit(np.where(small, log_s, math.log(0.25))) + math.log(self.scale)
            return np.where(small, tail, np.log(self._abs_isf(np.exp(log_s))))

    def _rvs(self, shape, rng):
        return self.scale * rng.standard_t(self.nu, shape)


#: knots of an empirical source's interpolated cdf unless told otherwise
DEFAULT_KNOTS = 4096
#: how the spec of an in-memory sample begins (a label for reports, not a spelling)
EMPIRICAL_PREFIX = "empirical:"


#: the fewest points an empirical source's pdf, cdf and partial moments look up with its kernel
#: (:mod:`.sample_kernels`, the same values): below, numpy's binary search costs no more than a
#: call, and needs no numba.  A block law's sums over its nodes always take the kernel
_KERNEL_FROM = 256
#: the partial moments Ψ_k the kernel takes: Ψ_2 (losses, not Lloyd's cells) keeps numpy's
#: power, whose rounding a kernel need not share
_KERNEL_PSI = (0, 1)
_ONE = np.ones(1)


def _distinct_knots(xk: np.ndarray, Fk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The knots of a piecewise-linear cdf without repeats: midpoints of adjacent floats (or of
    a standardised sample spanning 1e-300 to 1e300), and interpolated knots, can round onto
    each other, and a segment of no width would have an infinite density.  Of a run of equal
    knots the last stays (its mass goes to the segment before), but for the first run, where
    the first knot stays (F = 0; its mass goes to the segment after)."""
    keep = np.concatenate([np.diff(xk) > 0, [True]])
    if not keep[0]:
        keep[np.argmax(keep)], keep[0] = False, True
    if np.count_nonzero(keep) < 2:
        raise SourceError("an empirical sample's values are too close together to tell apart in float64")
    return xk[keep], Fk[keep]


class Empirical(Source):
    """A sample as a continuous distribution (see the module docstring).

    ``sample``: any array of finite real numbers (flattened; not bool), at least 2 distinct values.
    ``standardize``: divide by the RMS (default) so that ``E[X**2] = 1``; ``rms`` keeps the
    factor.  ``knots``: the Voronoi cdf is interpolated through about this many knots
    (uniform in probability in the bulk, geometric in the tails down to the extreme values;
    ``None`` keeps every distinct value), which smooths the density and keeps evaluation
    cheap.  A block law's many lookups of the knots run in a numba kernel
    (:mod:`.sample_kernels`), with numpy's values.  ``spec`` is ``label`` if given (a non-empty
    str, e.g. the file it came from), else ``empirical:<sha256 of the float64 sample, 12 hex
    digits>`` (and ``:knots=N`` or ``:knots=all`` when not :data:`DEFAULT_KNOTS`, ``:raw``
    unstandardised): it tells samples apart but cannot be read back (:data:`EMPIRICAL_PREFIX`).
    """

    moment_limit = math.inf

    @ignore_underflow
    def __init__(self, sample: Any, standardize: bool = True, label: str | None = None,
                 knots: int | None = DEFAULT_KNOTS) -> None:
        standardize = check_flag(standardize, "standardize")
        if label is not None and not (isinstance(label, str) and label):   # it is the source's name in JSON
            raise SourceError(f"label must be a non-empty str or None, got {one_line(label)}")
        raw = real_host_array(sample, "sample", SourceError)
        if knots is not None:
            check_int(knots, "knots", 2, also=" or None", error=SourceError)
        x = raw.astype(np.float64).ravel()
        if x.size < 2:
            raise SourceError("an empirical source needs at least 2 values")
        if not np.all(np.isfinite(x)):
            raise SourceError("an empirical sample must be finite (found NaN or inf)")
        self.rms = _rms(x)
        if self.rms == 0:
            raise SourceError("an empirical sample must not be all zeros")
        if standardize:
            x = x / self.rms
        elif not 1e-100 <= self.rms <= 1e100:
            # partial moments take cubes of the values: keep them far from under/overflow
            raise SourceError(f"an unstandardised empirical sample needs an RMS between 1e-100 and "
                              f"1e100, got {self.rms:.3g} (use standardize=True)")
        v, c = np.unique(x, return_counts=True)
        if v.size < 2:
            raise SourceError("an empirical sample needs at least 2 distinct values")
        self.digest = hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()[:12]
        self.spec = label if label is not None else (EMPIRICAL_PREFIX + self.digest
                              + ("" if knots == DEFAULT_KNOTS else f":knots={'all' if knots is None else knots}")
                              + ("" if standardize else ":raw"))
        self.knots = knots
        self.symmetric = False
        self.size = n = x.size
        mid = 0.5 * (v[1:] + v[:-1])
        xk = np.concatenate([[v[0] - (v[1] - v[0]) / 2], mid, [v[-1] + (v[-1] - v[-2]) / 2]])
        Fk = np.concatenate([[0.0], np.cumsum(c) / n])
        Fk[-1] = 1.0
        if knots is not None and xk.size > knots + 1:
            # coarsen: the same continuous cdf, interpolated through fewer knots at
            # probabilities uniform in the bulk and geometric in both tails (down to 1/n)
            bulk = np.linspace(0.0, 1.0, knots // 2 + 1)
            tail = 0.5 ** np.arange(np.log2(knots // 2) + 1, np.log2(n) + 1)
            p = np.unique(np.concatenate([bulk, tail, 1.0 - tail, Fk[:1], Fk[1:2], Fk[-2:-1], Fk[-1:]]))
            xk, Fk = np.interp(p, Fk, xk), p
        self._xk, self._Fk = xk, Fk = _distinct_knots(xk, Fk)
        self._grid: tuple | None = None   # the knots' grid for the kernels (_kernel_grid)
        self._grid_built = False
        with np.errstate(over="ignore"):
            self._dens = np.diff(Fk) / np.diff(xk)  # density on segment i = [xk_i, xk_{i+1}]
        if not np.all(np.isfinite(self._dens)):
            raise SourceError("an empirical sample's closest values are too close for its density in float64 "
                              "(it spans too many orders of magnitude)")
        # Ψ_k at the knots, measured from -inf; Ψ_k(x) = P_k(x) - P_k(0)
        xl, xr = self._xk[:-1], self._xk[1:]
        self._Pk = {}
        for k in (0, 1, 2):
            seg = self._dens * (xr ** (k + 1) - xl ** (k + 1)) / (k + 1)
            self._Pk[k] = np.concatenate([[0.0], np.cumsum(seg)])
        self._P0 = {k: self._from_left(k, np.float64(0.0)) for k in (0, 1, 2)}
        # |X| cdf is piecewise linear between the breakpoints below
        bp = np.unique(np.abs(np.concatenate([self._xk, [0.0]])))
        self._abs_m = bp
        self._abs_G = np.clip(self.cdf(bp) - self.cdf(-bp), 0.0, 1.0)
        self._abs_G[-1] = 1.0
        self._abs_S = np.clip(self.sf(bp) + self.cdf(-bp), 0.0, 1.0)
        self._abs_S[-1] = 0.0

    def _key(self):
        return ("Empirical", self.spec, self.digest, self.knots)

    def _kernel_grid(self) -> tuple | None:
        """The knots' grid for :mod:`.sample_kernels` (built at the first block law or large lookup), or
        None where a cell of it holds too many knots (numpy's search then)."""
        if not self._grid_built:
            from .sample_kernels import grid

            self._grid, self._grid_built = grid(self._xk), True
        return self._grid

    def _node_sums(self, what: str, k: int, y: np.ndarray, m: np.ndarray, c: np.ndarray) -> np.ndarray:
        return self._node_sums_of([(what, c)], k, y, m)[0]

    def _node_sums_of(self, parts, k: int, y: np.ndarray, m: np.ndarray) -> list[np.ndarray]:
        """:func:`.sample_kernels.sums`: ``Σ_j c_j f(y_i m_j)`` for each ``y_i`` and each ``(what,
        c)`` of ``parts`` (one or two, looked up once for both), ``f`` the knot segment
        (``what="segment"``), the density (``"pdf"``) or ``Ψ_k`` (``"psi"``), summed in the order
        of ``j`` as the values come (numpy's, :meth:`Source._node_sums`, for a ``Ψ_k`` not in
        :data:`_KERNEL_PSI` or a sample too uneven for the grid)."""
        numpy_only = (k not in _KERNEL_PSI and any(what == "psi" for what, _ in parts)) or len(parts) > 2
        grid = None if numpy_only else self._kernel_grid()   # built only where the kernels may use it
        if grid is None:
            numpy_sums = super()._node_sums   # numpy's; Source._node_sums_of would call back here
            return [numpy_sums(what, k, y, m, c) for what, c in parts]
        from . import sample_kernels as kernels

        y = np.asarray(y, dtype=np.float64)
        code = {"segment": kernels.SEGMENT, "pdf": kernels.PDF, "psi": kernels.PSI0 + k}
        what = tuple(code[w] for w, _ in parts)
        coef = np.array([np.asarray(c, dtype=np.float64) for _, c in parts])
        out = np.empty((len(parts), y.size))
        m = np.asarray(m, dtype=np.float64)
        kernels.sums(what, *grid, self._dens, self._Pk[k], self._P0[k], y.reshape(-1), m, coef, out,
                     one_thread=y.size * m.size < kernels.ONE_THREAD_PAIRS)
        return [row.reshape(y.shape) for row in out]

    def _kernel(self, x: np.ndarray) -> bool:
        """Whether the points ``x`` are looked up by the kernel (:meth:`_lookup`)."""
        return x.size >= _KERNEL_FROM and self._kernel_grid() is not None

    def _lookup(self, what: str, x: np.ndarray, k: int = 0) -> np.ndarray:
        """:meth:`_node_sums` over the single node ``m = 1``: ``f(x)`` itself, in the shape of ``x``."""
        return self._node_sums(what, k, x, _ONE, _ONE)

    def _seg(self, x):
        x = np.asarray(x, dtype=np.float64)
        if self._kernel(x):
            return self._lookup("segment", x).astype(np.int64)
        return np.clip(np.searchsorted(self._xk, x, side="right") - 1, 0, self._dens.size - 1)

    def _from_left(self, k, x):
        x = np.asarray(x, dtype=np.float64)
        xc = np.clip(x, self._xk[0], self._xk[-1])
        i = self._seg(xc)
        return self._Pk[k][i] + self._dens[i] * (xc ** (k + 1) - self._xk[i] ** (k + 1)) / (k + 1)

    def _pdf(self, x):
        x = np.asarray(x, dtype=np.float64)
        if self._kernel(x):
            return self._lookup("pdf", x)
        inside = (x >= self._xk[0]) & (x < self._xk[-1])
        return np.where(inside, self._dens[self._seg(x)], 0.0)

    def _cdf(self, x):
        return np.interp(np.asarray(x, dtype=np.float64), self._xk, self._Fk)

    def _sf(self, x):
        return np.interp(np.asarray(x, dtype=np.float64), self._xk, 1.0 - self._Fk)

    def _ppf(self, p):
        return np.interp(np.asarray(p, dtype=np.float64), self._Fk, self._xk)

    def _partial_moment(self, k, x):
        x = np.asarray(x, dtype=np.float64)
        if k in _KERNEL_PSI and self._kernel(x):
            return self._lookup("psi", x, k)
        return self._from_left(k, x) - self._P0[k]

    def _piecewise_density(self):
        return self._xk, self._dens

    def _integrate(self, f, lb, ub):
        # the density is constant on each knot segment: Gauss-Legendre segment by segment
        a = np.clip(self._xk[:-1], lb, ub)
        b = np.clip(self._xk[1:], lb, ub)
        keep = b > a
        a, b, d = a[keep], b[keep], self._dens[keep]
        x = (0.5 * (b - a)[:, None] * _GL8_X + 0.5 * (a + b)[:, None]).ravel()
        w = (0.5 * (b - a)[:, None] * _GL8_W * d[:, None]).ravel()
        return float(np.sum(w * np.asarray(f(x), dtype=np.float64)))

    def _abs_isf(self, s):
        # S decreasing in m: interpolate on reversed arrays
        return np.interp(np.asarray(s, dtype=np.float64), self._abs_S[::-1], self._abs_m[::-1])

    def _abs_ppf(self, G):
        return np.interp(np.asarray(G, dtype=np.float64), self._abs_G, self._abs_m)

    def _rvs(self, shape, rng):
        return self.ppf(rng.random(shape))


@ignore_underflow
def _rms(x: np.ndarray) -> float:
    """``sqrt(mean(x**2))`` without overflow or underflow of the squares."""
    amax = float(np.max(np.abs(x)))
    if 1e-100 < amax < 1e100:  # squares and their sum are exact enough in float64
        return float(np.sqrt(np.mean(x * x)))
    if amax == 0:
        return 0.0
    return amax * float(np.sqrt(np.mean((x / amax) ** 2)))


# ----------------------------------------------------------------------------- parsing
_PARSERS: list[Callable[[str], Source | None]] = []


def register_source_parser(fn: Callable[[str], "Source | None"]) -> None:
    """Add a parser tried (before the built-in ones) by :func:`parse_source`; it returns a
    Source or ``None`` when the spelling is not its own."""
    _PARSERS.insert(0, fn)


def parse_source(spec: Any) -> Source:
    """A Source from a spelling: ``normal``, ``laplace``, ``student-t:NU`` (also ``t:NU``),
    ``FILE.npy`` (an empirical sample), a Source passed through, or an array (numpy, a torch
    tensor: anything with ``__array__``) as its :class:`Empirical` sample.  A path object
    (``pathlib.Path``) is always a file, never a law's name.  Raises :class:`SourceError` (a
    ValueError) with a one-line message for anything else."""
    if isinstance(spec, Source):
        return spec
    if hasattr(spec, "__array__"):
        return Empirical(spec)
    is_path = isinstance(spec, os.PathLike)
    if is_path:   # the name as given: no spaces stripped, no law names
        spec = os.fsdecode(os.fspath(spec))
    if not isinstance(spec, str) or not spec.strip():
        raise SourceError(f"a source must be a name or a file, got {one_line(spec)}")
    text = spec if is_path else spec.strip()
    for fn in _PARSERS:
        src = fn(text)
        if src is not None:
            return src
    low = text.lower()
    if is_path and not low.endswith(".npy"):
        raise SourceError(f"sample file {text!r}: expected FILE.npy or FILE.safetensors")
    if low in ("normal", "gaussian"):
        return Normal()
    if low == "laplace":
        return Laplace()
    for prefix in ("student-t:", "t:"):
        if low.startswith(prefix):
            try:
                nu = float(text[len(prefix):])
            except ValueError:
                raise SourceError(f"bad degrees of freedom in {text!r} (expected e.g. student-t:5)") from None
            return StudentT(nu)
    if low.endswith(".npy"):
        try:
            path = check_input_file(text, SourceError, "sample file")
        except FileNotFoundError as exc:   # a SourceError, as for every spelling that names nothing
            raise SourceError(str(exc)) from None
        try:  # header checked before any data is read (an .npz in disguise, absurd shapes)
            arr = load_npy(path)
        except (OSError, ValueError) as exc:
            raise SourceError(" ".join(str(exc).split())) from None
        if not real_kind(arr.dtype):
            raise SourceError(f"{text}: expected a numeric array, got dtype {arr.dtype}")
        return Empirical(arr, label=text)
    raise SourceError(f"unknown source {text!r} (expected normal, laplace, student-t:NU, FILE.npy "
                      "or FILE.safetensors[:GLOBS])")
