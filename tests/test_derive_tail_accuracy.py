"""Far tails of the sources and the block laws against mpmath (50 digits): values that
underflow in float64 while their logs do not, and tail masses that a difference of two
values near 1/2 would cancel."""

import math

import mpmath as mp
import numpy as np
import pytest

from quantbook.derive.block import BlockDistribution
from quantbook.derive.scaled import ScaledBlockDistribution
from quantbook.derive.sources import Laplace, Normal, StudentT


def _t_tail(nu, u):
    """P(T > u) for u > 0, unit-scale Student-t: ½ I_{ν/(ν+u²)}(ν/2, 1/2)."""
    nu, u = mp.mpf(nu), mp.mpf(u)
    return mp.betainc(nu / 2, mp.mpf(1) / 2, 0, nu / (nu + u * u), regularized=True) / 2


def _t_logpdf(nu, u):
    nu, u = mp.mpf(nu), mp.mpf(u)
    log_c = mp.loggamma((nu + 1) / 2) - mp.loggamma(nu / 2) - mp.log(nu * mp.pi) / 2
    return log_c - (nu + 1) / 2 * mp.log1p(u * u / nu)


def _log_cases():
    """(source, method, x, mpmath value): each value is finite and its exponent underflows
    (or, for a log of a value near 1, rounds to 0) in float64."""
    b = 1 / mp.sqrt(2)
    out = [(Normal(), "logpdf", 40.0, -mp.mpf(800) - mp.log(2 * mp.pi) / 2),
           (Normal(), "logsf", 40.0, mp.log(mp.ncdf(-40))),
           (Normal(), "logcdf", -1e3, mp.log(mp.ncdf(-1000))),
           (Laplace(), "logpdf", -600.0, -600 / b - mp.log(2 * b)),
           (Laplace(), "logsf", 600.0, -600 / b - mp.log(2)),
           (Laplace(), "logcdf", -1e4, -10000 / b - mp.log(2))]
    for nu, x in ((3.0, 1e300), (30.0, 1e30), (1e6, 1e11)):
        src = StudentT(nu)
        u = mp.mpf(x) / mp.sqrt(mp.mpf(nu - 2) / nu)
        out += [(src, "logpdf", x, _t_logpdf(nu, u) - mp.log(mp.sqrt(mp.mpf(nu - 2) / nu))),
                (src, "logsf", x, mp.log(_t_tail(nu, u))),
                (src, "logcdf", -x, mp.log(_t_tail(nu, u)))]
    # the log of a cdf next to 1: -P(T > x), not 0
    out += [(Laplace(), "logcdf", 40.0, mp.log1p(-mp.exp(-40 / b) / 2)),
            (Laplace(), "logsf", -40.0, mp.log1p(-mp.exp(-40 / b) / 2))]
    u = mp.mpf(1e30) / mp.sqrt(mp.mpf(1) / 3)
    out.append((StudentT(3.0), "logcdf", 1e30, mp.log1p(-_t_tail(3.0, u))))
    return out


@pytest.mark.parametrize("src, name, x, ref", _log_cases(), ids=lambda v: getattr(v, "spec", None))
def test_logs_of_underflowing_tails_match_mpmath(src, name, x, ref):
    # the logs were those of the values: -inf where pdf, cdf or sf underflow (Normal beyond
    # 38.6, Laplace beyond 527, Student-t where u² overflows), and 0 for logcdf next to 1
    with mp.workdps(50):
        ref = float(ref)
    for law in (src, BlockDistribution(None, src, "none")):
        got = float(getattr(law, name)(x))
        assert abs(got - ref) <= 1e-13 * abs(ref), (src.spec, name, x, got, ref)


def test_normal_tail_is_subnormal_not_zero():
    # scipy's ndtr is 0 below -37.5 (it was Normal's sf there); the tail is representable down to -38.5
    for x in (37.6, 38.0, 38.4):
        with mp.workdps(50):
            ref = float(mp.ncdf(-x))
        assert ref > 0
        for got in (Normal().sf(x), Normal().cdf(-x)):
            assert abs(got - ref) <= max(1e-12 * ref, 5e-324), (x, got, ref)   # 5e-324: one subnormal step


def _signed_absmax_lower_tail(B, y):
    """Normal source, signed absmax: P(y' <= y) for y near -1, all of it continuous (no atom
    at -1): (B - 1) ∫ 2φ(m) erf(m/√2)^(B-2) [Φ(y m) - Φ(-m)] dm, by mpmath on pieces of m."""
    with mp.workdps(30):
        y = mp.mpf(y)
        f = lambda m: 2 * mp.npdf(m) * mp.erf(m / mp.sqrt(2)) ** (B - 2) * (mp.ncdf(y * m) - mp.ncdf(-m))  # noqa: E731
        return float((B - 1) * mp.quad(f, [0, 1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 8, 40]))


def test_signed_absmax_lower_tail_keeps_its_digits():
    # the mass below y was T(0, y) - T(0, -1), two values near -1/2: relative 2e-8 at y = -1 + 1e-9
    # and 0 (logcdf -inf) next to -1, where it is about 5e-18
    d = BlockDistribution(64, "normal", "signed-absmax")
    for y in (-1 + 1e-9, float(np.nextafter(-1.0, 0.0))):
        ref = _signed_absmax_lower_tail(64, y)
        assert abs(float(d.cdf(y)) - ref) <= 1e-12 * ref, (y, float(d.cdf(y)), ref)
        assert math.isclose(float(d.logcdf(y)), math.log(ref), rel_tol=1e-13)


def _block_tail(B, y, normalization, upper):
    """Normal source, absmax or signed absmax: P(y' <= y) (``upper``: P(y' > y)) for y inside
    (-1, 1), from the definition: the atom at -1 (+1) that the block's maximum puts there,
    1/(2B) each under absmax, 1/B at +1 under signed absmax, plus the continuous part,
    (B - 1) ∫ 2φ(m) erf(m/√2)^(B-2) P(x in the tail, |x| < m) dm, by mpmath on pieces of m."""
    with mp.workdps(30):
        y, B = mp.mpf(y), int(B)
        atom = (mp.mpf(1) / (2 * B) if normalization == "absmax" else
                (mp.mpf(1) / B if upper else mp.mpf(0)))
        part = (lambda m: mp.ncdf(-y * m) - mp.ncdf(-m)) if upper else (lambda m: mp.ncdf(y * m) - mp.ncdf(-m))
        f = lambda m: 2 * mp.npdf(m) * mp.erf(m / mp.sqrt(2)) ** (B - 2) * part(m)  # noqa: E731
        return float(atom + (B - 1) * mp.quad(f, [0, 1, 1.5, 2, 2.5, 3, 3.5, 4, 5, 6, 8, 40]))


@pytest.mark.parametrize("B, normalization, y, upper", [
    (10**7, "absmax", 1 - 1e-9, True), (10**7, "signed-absmax", 0.95, True),
    (10**7, "absmax", -1 + 1e-9, False), (10**7, "signed-absmax", -1 + 1 / 16 - 1e-4, False)])
def test_block_law_tails_at_both_ends_keep_their_digits_at_a_large_block(B, normalization, y, upper):
    # at B = 10^7 the atoms are 5e-8 to 1e-7 and the continuous mass next to them comes from
    # T(0, ·) values near 1/2: their difference kept 1e-10 of relative accuracy, the integral of
    # the density over the window keeps 1e-15 at its far end (m up to 5.5 there)
    d = BlockDistribution(B, "normal", normalization)
    ref = _block_tail(B, y, normalization, upper)
    got = float(d.sf(y) if upper else d.cdf(y))
    assert abs(got - ref) <= 1e-13 * ref, (B, normalization, y, got, ref)


@pytest.mark.parametrize("normalization", ["absmax", "signed-absmax"])
@pytest.mark.parametrize("B", [64, 4096, 10**7])
def test_block_law_quantiles_next_to_the_ends_keep_their_digits(B, normalization):
    # ppf and isf solved on T(0, ·) differences near ±1/2, which lose the digits of the mass
    # next to ±1: 8 to 10 ulp of y at B = 64, 200 at 4096, 2e5 at 10^7; the rounding of the
    # mpmath probability moves y by under 0.2 ulp here
    d = BlockDistribution(B, "normal", normalization)
    # the last two lie in the windows' far halves (1/32 to 1/16 from the ends)
    for y, upper in ((-1 + 1e-7, False), (1 - 1e-11, True), (-1 + 0.04, False), (1 - 0.05, True)):
        q = _block_tail(B, y, normalization, upper)
        got = float(d.isf(q) if upper else d.ppf(q))
        assert abs(got - y) <= 2 * math.ulp(y), (B, normalization, y, upper, got)


@pytest.mark.parametrize("normalization", ["absmax", "signed-absmax"])
@pytest.mark.parametrize("B", [64, 10**7])
def test_block_law_quantiles_of_a_mass_beside_an_atom_lie_inside_the_support(B, normalization):
    # by the definition ppf(q) = min{y: cdf(y) >= q}: for q just above cdf(-1) (the atom at -1, or 0)
    # the point lies strictly inside (-1, 1), and likewise isf next to the atom at +1
    d = BlockDistribution(B, "normal", normalization)
    q = math.nextafter(float(d.cdf(-1.0)), 1.0)
    x = float(d.ppf(q))
    assert -1.0 < x and float(d.cdf(x)) >= q, (x, q)
    ax, aw = d.atoms
    q = math.nextafter(float(aw[ax == 1.0].sum()), 1.0)
    x = float(d.isf(q))
    assert x < 1.0 and float(d.sf(x)) >= q, (x, q)


def _t_log_tail_quad(nu, u):
    """log P(T > u) for u > 0, unit-scale Student-t, from the density: c ∫_u^∞ (1 + t²/ν)^-(ν+1)/2 dt
    with t = u e^w, on pieces of w from 1/u² (a light tail's scale) to 2^10 (a power tail's), each
    value relative to the one at u (mpmath's betainc does not converge at ν = 10^6)."""
    with mp.workdps(40):
        nu, u = mp.mpf(nu), mp.mpf(u)
        log_c = mp.loggamma((nu + 1) / 2) - mp.loggamma(nu / 2) - mp.log(nu * mp.pi) / 2
        lg = lambda t: -(nu + 1) / 2 * mp.log1p(t * t / nu)  # noqa: E731
        ws = sorted({mp.mpf(k) / (u * u) for k in (1, 4, 16, 64, 256)} | {mp.mpf(2) ** j for j in range(-8, 11)})
        body = mp.quad(lambda w: mp.exp(lg(u * mp.exp(w)) - lg(u) + w), [0] + ws + [mp.inf])
        return log_c + lg(u) + mp.log(u) + mp.log(body)


@pytest.mark.parametrize("nu", [1e4, 1e6])
def test_large_nu_tails_below_the_normal_range_keep_their_digits(nu):
    # for large ν and u² <= ν the tail came from scipy's stdtr, whose value loses its digits as it
    # nears the subnormal range and then is 0: logsf was -inf (ν = 10^6 at x = 40, far below
    # u = 1000 where the tail formula took over) and isf(5e-324) was 4.5e-4 off
    src = StudentT(nu)
    sc = mp.sqrt(mp.mpf(nu - 2) / nu)
    for x in (36.0, 40.0, 60.0):
        with mp.workdps(40):
            ref = float(_t_log_tail_quad(nu, mp.mpf(x) / sc))
        assert abs(float(src.logsf(x)) - ref) <= 1e-14 * abs(ref), (x, float(src.logsf(x)), ref)
        assert abs(float(src.logcdf(-x)) - ref) <= 1e-14 * abs(ref)
    for q in (1e-300, 1e-310, 5e-324):
        x = float(src.isf(q))
        with mp.workdps(40):
            lq = mp.log(q)
            lu = mp.findroot(lambda v: _t_log_tail_quad(nu, mp.exp(v)) - lq, mp.log(x / sc), tol=mp.mpf(10) ** -30)
            ref = float(mp.exp(lu) * sc)
        # the quantile is solved for log u through log(u²/ν), whose rounding (an ulp of log ν)
        # moves u by up to 1e-15 of itself
        assert abs(x - ref) <= 2e-15 * ref, (q, x, ref)
        assert float(src.ppf(q)) == -x


def _mx_floor_sf(B, v):
    """Normal source, e8m0:floor scales, qmax 6 (the OCP MX rule: a block maximum in [2^k, 2^(k+1))
    has the scale 2^(k-2), so u = x / (6·2^(k-2))): P(u > v) for 2/3 < v < 4/3, where only the
    block's largest value reaches: Σ_k P(|X| < 2^(k+1))^(B-1) P(1.5·v·2^k < X < 2^(k+1))."""
    with mp.workdps(40):
        v, total = mp.mpf(v), mp.mpf(0)
        for k in range(-70, 6):
            top = mp.mpf(2) ** (k + 1)
            total += mp.erf(top / mp.sqrt(2)) ** (B - 1) * (mp.ncdf(top) - mp.ncdf(mp.mpf(1.5) * v * mp.mpf(2) ** k))
        return total


def test_scaled_law_quantiles_next_to_the_ends_keep_their_digits():
    # ppf solved on cum, T(0, v) - T(0, lo) next to -hi: up to 11 ulp off where isf, solved on the upper
    # tail's own mass, is within 3; the law of a symmetric source is symmetric, so ppf(q) = -isf(q)
    d = ScaledBlockDistribution(32, "normal", "e8m0:floor")
    hi = d.support()[1]
    for dist in (1e-5, 1e-7, 3e-9, 1e-11):
        v = hi - dist
        q = float(_mx_floor_sf(32, v))
        lo_x, hi_x = float(d.ppf(q)), float(d.isf(q))
        assert abs(lo_x + v) <= 4 * math.ulp(v) and abs(hi_x - v) <= 4 * math.ulp(v), (dist, lo_x, hi_x, v)
        assert abs(lo_x + hi_x) <= 2 * math.ulp(v), (dist, lo_x, hi_x)


def test_scaled_law_tails_next_to_the_ends_are_exact_for_a_neighbouring_point():
    # sf just below the upper end was T(0, hi) - T(0, v), two values near 1/2: 2e-5 off at hi - 1e-10,
    # the value at a point some 10 ulp away.  sf there moves by about ulp(v)/(hi - v) relative per
    # ulp of v, so the test asks for the value at a point within one ulp of v.
    d = ScaledBlockDistribution(32, "normal", "e8m0:floor")
    hi = d.support()[1]
    for dist in (1e-8, 1e-10):
        v = hi - dist
        lo_ref, hi_ref = (float(_mx_floor_sf(32, w)) for w in (math.nextafter(v, 2.0), math.nextafter(v, 0.0)))
        for got in (float(d.sf(v)), float(d.cdf(-v))):   # the normal source is symmetric
            assert lo_ref <= got <= hi_ref, (dist, got, lo_ref, hi_ref)


@pytest.mark.parametrize("nu", [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 30.0])
def test_small_nu_far_quantiles_keep_their_digits(nu):
    # isf was solved on log P alone, whose rounding (ulps of |log q|) is 1/ν of itself relative
    # in the quantile: up to 8e-14 off for ν <= 3 at q <= 1e-100, 5e-15 at ν = 30
    src = StudentT(nu)
    sc = math.sqrt((nu - 2) / nu) if nu > 2 else 1.0
    for q in (1e-30, 1e-100, 1e-150, 1e-250, 1e-300, 1e-310, 5e-324):
        x = float(src.isf(q))
        if x == math.inf:   # beyond float range (ν <= 1)
            continue
        with mp.workdps(50):
            lq = mp.log(mp.mpf(q))
            lu = mp.findroot(lambda v: mp.log(_t_tail(nu, mp.exp(v))) - lq, mp.log(x / sc), tol=mp.mpf(10) ** -40)
            ref = float(mp.exp(lu) * sc)
        assert abs(x - ref) <= 2e-15 * ref, (q, x, ref)
        assert float(src.ppf(q)) == -x


@pytest.mark.parametrize("normalization", ["absmax", "signed-absmax"])
@pytest.mark.parametrize("B", [4096, 10**7])
def test_block_law_quantiles_beyond_the_first_window_keep_their_digits(B, normalization):
    # beyond 1/16 of the ends cdf, sf, ppf and isf took the mass from T(0, ·) differences near ±1/2,
    # some ulps of 1/2 off: cdf 4e-13 relative and ppf 200 ulp of y off at B = 4096 (5e4 at 10^7),
    # where the density is small (4e-3 at B = 4096 and y = -15/16)
    d = BlockDistribution(B, "normal", normalization)
    for dist in (0.08, 0.15, 0.3):
        for y, upper in ((-1 + dist, False), (1 - dist, True)):
            q = _block_tail(B, y, normalization, upper)
            assert abs(float(d.sf(y) if upper else d.cdf(y)) - q) <= 2e-14 * q, (B, y, q)
            got = float(d.isf(q) if upper else d.ppf(q))
            assert abs(got - y) <= 2 * math.ulp(y), (B, normalization, y, upper, got)


def _t_block_sf(nu, B, y):
    """Student-t source (unit variance for ν > 2), absmax: P(y' > y) for 0 < y < 1, from the
    definition: the atom 1/(2B) at +1 plus (B - 1) ∫ 2g(u) (1 - 2S(u))^(B-2) [S(y u) - S(u)] du in
    the unit-scale u (S the tail P(T > u)), by mpmath on pieces of u doubling around the block
    maximum's typical size (found by scipy: it only places the pieces)."""
    from scipy import stats

    with mp.workdps(30):
        nu_, y = mp.mpf(nu), mp.mpf(y)
        log_c = mp.loggamma((nu_ + 1) / 2) - mp.loggamma(nu_ / 2) - mp.log(nu_ * mp.pi) / 2

        def f(u):
            S = _t_tail(nu, u)
            return 2 * mp.exp(_t_logpdf(nu, u) - _t_logpdf(nu, 0) + log_c) * (1 - 2 * S) ** (B - 2) \
                * (_t_tail(nu, y * u) - S)
        u0 = mp.mpf(float(stats.t.isf(1 / (2 * B), nu)))
        pts = [mp.mpf(0)] + [u0 * mp.mpf(2) ** k for k in range(-12, 40)] + [mp.inf]
        return float(mp.mpf(1) / (2 * B) + (B - 1) * mp.quad(f, pts))


@pytest.mark.parametrize("nu, B", [(3.0, 10**7), (1.5, 10**7)])
def test_heavy_tail_block_law_tails_inside_half_the_support_keep_their_digits(nu, B):
    # the windows at ±1 stopped at half the support; inside it cdf, sf, ppf and isf took the mass from
    # T(0, ·) differences near ±1/2 where heavy tails leave 1e-6 of it and a density of 1e-4 and less:
    # sf 2e-11 relative and isf 2.7e5 ulp of y off at ν = 3 and y = 0.45 (2e6 ulp at ν = 1.5)
    d = BlockDistribution(B, f"student-t:{nu:g}")
    for y in (0.2, 0.45):
        q = _t_block_sf(nu, B, y)
        for got in (float(d.sf(y)), float(d.cdf(-y))):   # the law of a symmetric source is symmetric
            assert abs(got - q) <= 3e-15 * q, (nu, B, y, got, q)
        # the quadrature over M (relative 1e-15 here) moves the points by some ulps
        assert abs(float(d.isf(q)) - y) <= 8 * math.ulp(y), (nu, B, y, float(d.isf(q)))
        assert abs(float(d.ppf(q)) + y) <= 8 * math.ulp(y), (nu, B, y, float(d.ppf(q)))
