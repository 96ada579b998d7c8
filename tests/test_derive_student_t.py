"""Student-t sources: partial moments, tail quantiles, the block law at B = 2 and the weight
domain for tails just heavier than the needed moment, against independent references
(mpmath quadrature, scipy adaptive quadrature in log M, Monte Carlo with fixed seeds)."""

import math
import warnings

import mpmath as mp
import numpy as np
import pytest
from scipy import integrate, special, stats

from quantbook import get
from quantbook.cli import main
from quantbook.derive import evaluate, solve_lloyd
from quantbook.derive.block import BlockDistribution, block_measure
from quantbook.derive.sources import Normal, SourceError, StudentT, parse_source


def _mp_partial_moment(nu, k, x, scale):
    """∫_0^x t^k g(t) dt for the Student-t scaled by ``scale``, by mpmath quadrature of
    u^(k+1) ∫_0^1 v^k c (1 + u²v²/ν)^-a dv (u = x/scale) on pieces shrinking by 10 toward 0,
    each normalised to O(1) (mp.quad's tolerance is absolute)."""
    with mp.workdps(25):
        nu_ = mp.mpf(nu)
        a = (nu_ + 1) / 2
        c = mp.gamma(a) / mp.gamma(nu_ / 2) / mp.sqrt(nu_ * mp.pi)
        u = mp.mpf(x) / mp.mpf(scale)

        def f(v):
            return v**k * c * (1 + (u * v) ** 2 / nu_) ** (-a)

        pts = [mp.mpf(1)]
        while pts[-1] * u > 1:
            pts.append(pts[-1] / 10)
        pts = [mp.mpf(0)] + pts[::-1]
        total = mp.mpf(0)
        for lo, hi in zip(pts[:-1], pts[1:]):
            mid = f((lo + hi) / 2)
            total += (hi - lo) * mid * mp.quad(lambda s: f(lo + (hi - lo) * s) / mid, [0, 1])
        return float(u ** (k + 1) * total * mp.mpf(scale) ** k)


@pytest.mark.parametrize("nu", [0.5, 1.0, 3.0, 30.0, 1e3, 1e6])
def test_density_matches_mpmath(nu):
    # scipy's t.pdf (which the density took) was 1700 eps off at ν = 1000 inside |u| < 10 (scipy 1.17): its
    # gamma functions lose digits there; c·(1 + u²/ν)^(-(ν+1)/2) with an exact c keeps them
    src = StudentT(nu)
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(-10, 10, 200), 10 ** rng.uniform(1, 60, 60)]) * src.scale
    got = src.pdf(x)
    with mp.workdps(40):
        nu_ = mp.mpf(nu)
        c = mp.gamma((nu_ + 1) / 2) / mp.gamma(nu_ / 2) / mp.sqrt(nu_ * mp.pi) / mp.mpf(src.scale)
        s = [(mp.mpf(v) / mp.mpf(src.scale)) ** 2 / nu_ for v in x]
        ref = np.array([float(c * (1 + si) ** (-(nu_ + 1) / 2)) for si in s])
        # each point's bound, in eps, is what the formula's roundings allow there, not one number fitted to one
        # numpy build (numpy 1.24's AVX-512 log1p is 1.6 eps off here, numpy 2's 0.6): the roundings of
        # s = u²/ν (u = x/scale, u², /ν) add up to κ = (ν+1)·s/(1+s) eps, the density's condition number; log1p's
        # (up to 2 ulp) and the exponent's two (½ ulp each) are multiplied by t = (ν+1)/2·log1p(s); exp and
        # the constant add a few eps
        bound = np.array([float((nu_ + 1) * si / (1 + si) + 3 * (nu_ + 1) / 2 * mp.log1p(si) + 8) for si in s])
    kept = ref > 1e-300   # the density underflows beyond (ν = 0.5: past 1e-300 the reference is 0)
    assert np.all(got[~kept] <= 1e-300)
    err = np.abs(got[kept] - ref[kept]) / ref[kept] / np.finfo(float).eps
    worst = np.argmax(err / bound[kept])
    assert err[worst] <= bound[kept][worst], (x[kept][worst], err[worst], bound[kept][worst])
    assert np.isnan(src.pdf(np.nan)) and src.pdf(np.inf) == 0 and src.pdf(-1e300) == 0


@pytest.mark.parametrize("nu", [0.5, 1.0, 2.0, 2.0001, 3.0, 5.0, 1e6])
def test_partial_moments_match_mpmath_down_to_tiny_arguments(nu):
    # Ψ_k for small |x| used to be a difference of two cdfs that cancelled (Ψ_2 at x=1e-5 for
    # ν=5 came out as -2.2e-16 instead of 1.6e-16), which broke B = 2 (tiny block scales).
    src = StudentT(nu)
    for k in (0, 1, 2):
        for x in (1e-30, 1e-5, 0.3, 3.0, 1e4, 1e12):
            ref = _mp_partial_moment(nu, k, x, src.scale)
            got = float(src.partial_moment(k, x))
            assert abs(got - ref) <= 1e-12 * abs(ref), (nu, k, x, got, ref)
            assert float(src.partial_moment(k, -x)) == (-got if k % 2 == 0 else got)


def test_partial_moments_take_one_incomplete_beta_per_value(monkeypatch):
    # the incomplete beta is most of a heavy-tailed block law's cost (ppf of 1e4 values at
    # B = 4096): Ψ_0 and Ψ_2 took it twice per value, the other branch's on a placeholder
    seen = []
    betainc = special.betainc

    def counted(a, b, x):
        seen.append(np.size(x))
        return betainc(a, b, x)

    monkeypatch.setattr(special, "betainc", counted)
    x = np.array([-40.0, -2.0, -0.5, 0.0, 1e-3, 0.7, 1.5, 3.0, 1e5, np.inf])
    for nu, k in ((3.0, 0), (3.0, 2), (0.5, 0)):
        seen.clear()
        got = StudentT(nu).partial_moment(k, x)
        assert sum(seen) == x.size, (nu, k, seen)
        assert np.all(np.isfinite(got))
        assert float(StudentT(nu).partial_moment(k, np.float64(0.7))) == got[5]   # a scalar takes one too


@pytest.mark.parametrize("nu", [0.5, 1.05, 2.05, 5.0, 1e3])
def test_tail_quantiles_of_abs_x_match_mpmath(nu):
    # scipy's stdtrit is off by e^2 in S around 1e-120..1e-190 (ν = 2.05) and overflows or
    # gives inf below; the weight-domain quadrature needs P(|X| > m) down to e^-2000
    src = StudentT(nu)
    a = mp.mpf(nu) / 2
    for log_s in (-1.0, -30.0, -300.0, -700.0, -2000.0):
        t = float(src.abs_log_isf(np.array(log_s))) - math.log(src.scale)  # log of unit-scale u
        with mp.workdps(30):
            u = mp.e ** mp.mpf(t)
            ref = mp.log(mp.betainc(a, 0.5, 0, nu / (nu + u * u), regularized=True))
        assert abs(float(ref) - log_s) <= 1e-12 * abs(log_s), (log_s, float(ref))
        if log_s > -700:
            m = float(src.abs_isf(np.array(math.exp(log_s))))
            assert math.isclose(math.log(m), t + math.log(src.scale), rel_tol=1e-13, abs_tol=1e-13)
    # ppf: exact ends (scipy's stdtrit(nu, 0) is +inf) and the far tail from the |X| quantile
    assert src.ppf(0.0) == -math.inf and src.ppf(1.0) == math.inf and src.ppf(0.5) == 0.0
    assert np.all(np.isnan(src.ppf([-0.1, 1.1, np.nan])))
    x = float(src.ppf(1e-150))
    assert math.isclose(float(src.cdf(x)), 1e-150, rel_tol=1e-11)
    for q in (1e-6, 0.1, 0.3, 0.7, 0.9, 1 - 1e-9):   # the body, where scipy's stdtrit is good to 2e-9
        u = float(src.ppf(q)) / src.scale
        with mp.workdps(30):
            tail = mp.betainc(a, 0.5, 0, nu / (nu + mp.mpf(u) ** 2), regularized=True) / 2   # P(T > |u|)
        assert math.isclose(float(tail), min(q, 1 - q), rel_tol=1e-12), (q, float(tail))


def _mc_blocks(src, B, seed, n=2**20):
    x = src.rvs((n // B, B), np.random.default_rng(seed))
    return x / np.max(np.abs(x), axis=1, keepdims=True)


@pytest.mark.parametrize("nu", [3.0, 5.0])
def test_block_of_two_moments_match_monte_carlo(nu):
    # B = 2 used to give var 0.5985 for ν=5 (true 0.6273) and -29.66 for ν=3
    d = BlockDistribution(2, StudentT(nu))
    yb = _mc_blocks(StudentT(nu), 2, seed=int(nu))
    for k, exact in ((1, d.mean()), (2, d.moment(2))):
        bm = (yb**k).mean(axis=1)  # blocks are the independent units
        z = (bm.mean() - exact) / (bm.std(ddof=1) / math.sqrt(bm.size))
        assert abs(z) < 5, (k, bm.mean(), exact)
    var_mc = yb.var()
    assert abs(d.var() - var_mc) < 5e-3 and 0.55 < d.var() < 0.7
    # exact NF4 error of the normalised values (it was 5.82) against Monte Carlo
    cb = get("nf4")
    ev = evaluate(cb, 2, StudentT(nu))
    err = ((yb - cb.quantize(yb.ravel()).reshape(yb.shape)) ** 2).mean(axis=1)
    z = (err.mean() - ev.mse_normalized) / (err.std(ddof=1) / math.sqrt(err.size))
    assert abs(z) < 5, (err.mean(), ev.mse_normalized)


def test_large_nu_approaches_the_normal_law():
    # the t law tends to N(0, 1) with var differences ~ C/ν; C from ν = 1e4 predicts ν = 1e6
    var_n = BlockDistribution(64, Normal()).var()
    d4, d6 = (var_n - BlockDistribution(64, StudentT(nu)).var() for nu in (1e4, 1e6))
    assert 0 < d6 < 1e-6
    assert math.isclose(d4 * 1e4, d6 * 1e6, rel_tol=1e-3)


# ------------------------------------------------ weight domain for nu just above the moment order
def _log_abs_sf(nu, scale, t):
    """log P(|X| > e^t) from scipy.stats.t, or the leading terms of the series where x is tiny."""
    ut = t - math.log(scale)
    lx = math.log(nu) - 2 * ut - math.log1p(nu * math.exp(-2 * ut)) if ut > -300 else 0.0
    if lx > -40:
        return min(0.0, math.log(2) + stats.t.logsf(math.exp(ut), nu))
    a = nu / 2  # P(|T| > u) = I_x(a, 1/2) = x^a / (a B(a, 1/2)) (1 + (a+1/2)/(a+1) x + ...)
    return a * lx - math.log(a) - special.betaln(a, 0.5) + math.log1p((a + 0.5) / (a + 1) * math.exp(lx))


def _ref_weighted(nu, B, p, y=None):
    """E[M^p] (y None), or the continuous mass of (-1, y] of the M^p-weighted law of x/M,
    (B-1) ∫ m^p h(m) G(m)^(B-2) P(-m < X <= y m) dm, by adaptive quadrature in t = log m."""
    scale = StudentT(nu).scale
    dec = nu - p

    def f(t):
        ls = _log_abs_sf(nu, scale, t)
        if y is None:  # ∫ p m^(p-1) P(M > m) dm
            if ls > -1e-300:
                return p * math.exp(p * t)
            if ls > -600:
                return p * math.exp(p * t) * -math.expm1(B * math.log1p(-math.exp(ls)))
            return p * B * math.exp(p * t + ls)
        lu = t - math.log(scale)  # log h(m) = log 2 + log t_ν(u) - log scale, in logs of u
        log1p_u2 = np.logaddexp(0.0, 2 * lu - math.log(nu))
        log_h = (math.log(2) + special.gammaln((nu + 1) / 2) - special.gammaln(nu / 2)
                 - 0.5 * math.log(nu * math.pi) - (nu + 1) / 2 * log1p_u2 - math.log(scale))
        gpow = math.exp((B - 2) * math.log1p(-math.exp(ls))) if ls < 0 else 0.0
        um = math.exp(min(t, 700)) / scale
        prob = stats.t.cdf(y * um, nu) - stats.t.cdf(-um, nu)
        return (B - 1) * math.exp(log_h + (p + 1) * t) * gpow * prob

    pts = [-40.0, -5.0, 0.0, 2.0, 5.0, 10.0, 20.0] + [20 * 1.3**i for i in range(1, 200) if 20 * 1.3**i < 60 / dec]
    pts.append(90 / dec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(integrate.quad(f, a, b, epsrel=1e-13, epsabs=0, limit=200)[0] for a, b in zip(pts[:-1], pts[1:]))


@pytest.mark.parametrize("nu, B, p", [(2.05, 64, 2), (2.0001, 64, 2), (2.05, 2, 2), (1.0001, 64, 1)])
def test_weight_domain_heavy_tails_are_finite_and_exact(nu, B, p):
    # E[M^2] is finite for ν > 2, but the quadrature reaches M ~ e^(z/ν) with z in the
    # thousands: M**2 overflowed and the results were NaN (lloyd returned only its 3 fixed levels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mu = block_measure(StudentT(nu), B, "absmax", p)
        assert math.isclose(mu.total, _ref_weighted(nu, B, p), rel_tol=1e-11)
        ys = np.array([-0.5, 0.001, 0.3])
        ours = mu.T(0, ys) - mu.T(0, -1.0)
    if nu > 2:
        ref = np.array([_ref_weighted(nu, B, p, y) for y in ys])
        assert np.allclose(ours, ref, rtol=1e-10, atol=0), (ours, ref)


def test_heavy_tail_codebooks_and_errors_are_finite():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for spec in ("student-t:2.05", "student-t:2.06"):
            ev = evaluate(get("nf4"), 64, spec)
            assert math.isfinite(ev.mse_weight) and ev.mse_weight > 0 and math.isfinite(ev.gap_db)
        res = solve_lloyd(4, 64, "l2", source="student-t:2.0001")
    levels = res.codebook.levels
    assert levels.size == 16 and res.iterations > 0 and math.isfinite(res.loss_value) and res.converged
    assert np.all(np.diff(levels) > 0)


def test_nu_out_of_range_is_a_one_line_source_error(capsys):
    for spec in ("student-t:1e-300", "student-t:0.3", "student-t:1e7", "student-t:inf", "student-t:nan"):
        with pytest.raises(SourceError, match="between"):
            parse_source(spec)
    rc = main(["derive", "lloyd", "--source", "student-t:1e-300", "--domain", "normalized"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "between" in err
    # E[M^2] converging too slowly to compute is an error, not a number
    with pytest.raises(ValueError, match="too slowly"):
        block_measure(StudentT(2.000001), 64, "absmax", 2)


def test_smallest_supported_nu_matches_adaptive_quadrature():
    # at NU_MIN the law of y piles up at 0 (|y| ~ U**(1/nu)); the cdf is still exact:
    # (B-1) ∫ h(m) G(m)^(B-2) P(-m < X <= y m) dm by adaptive quadrature in t = log m
    nu, B = StudentT.NU_MIN, 64
    src = StudentT(nu)

    def f(t, y):
        m = math.exp(t)
        S = 2 * stats.t.sf(m, nu)
        gpow = math.exp((B - 2) * math.log1p(-S)) if S < 1 else 0.0
        return (B - 1) * 2 * stats.t.pdf(m, nu) * m * gpow * (stats.t.cdf(y * m, nu) - stats.t.cdf(-m, nu))

    pts = np.concatenate([np.linspace(-690, -60, 10), np.linspace(-60, 60, 121), np.linspace(60, 690, 10)])
    mu = block_measure(src, B, "absmax", 0)
    for y in (-0.3, 1e-3, 0.97):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = sum(integrate.quad(f, a, b, args=(y,), epsrel=1e-12, epsabs=1e-18, limit=200)[0]
                      for a, b in zip(pts[:-1], pts[1:]))
        assert abs(float(mu.T(0, y) - mu.T(0, -1.0)) - ref) < 1e-13, (y, ref)


@pytest.mark.parametrize("bad", [True, np.True_, np.complex128(4), np.complex64(5)])
def test_student_t_refuses_a_bool_or_complex_nu(bad):
    from quantbook.derive import StudentT
    from quantbook.derive.sources import SourceError

    with pytest.raises(SourceError, match="must be a real number"):
        StudentT(bad)
