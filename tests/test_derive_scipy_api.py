"""BlockDistribution as a drop-in for a frozen scipy.stats distribution: conventions (NaN,
scalars, shapes, out-of-range probabilities), the extra methods (sf, isf, logpdf, logcdf,
support, entropy, expect) against numerical identities, scipy, adaptive quadrature and
Monte Carlo (fixed seeds)."""

import math
import warnings

import numpy as np
import pytest
from scipy import integrate, stats

from quantbook.derive.block import BlockDistribution, normalize_blocks
from quantbook.derive.scaled import ScaledBlockDistribution
from quantbook.derive.sources import Empirical, Laplace, Normal, StudentT

_rng = np.random.default_rng(99)
ASYM = Empirical(_rng.standard_normal(200_000) + 0.8 * _rng.exponential(1.0, 200_000))
CASES = [(64, "normal", "absmax"), (2, StudentT(3), "absmax"), (16, Laplace(), "signed-absmax"),
         (8, ASYM, "absmax"), (4, StudentT(0.7), "absmax")]
METHODS = ("pdf", "logpdf", "cdf", "logcdf", "sf", "logsf", "ppf", "isf")


@pytest.mark.parametrize("B, src, norm", CASES)
def test_scipy_conventions(B, src, norm):
    d = BlockDistribution(B, src, norm)
    for name in METHODS:
        f = getattr(d, name)
        # NaN propagates (pdf(nan) used to be 0 while cdf/ppf gave NaN)
        assert math.isnan(f(np.nan)), name
        assert np.isnan(f([0.3, np.nan])[1]), name
        # scalar in, scalar out (numpy.float64 is a float, as scipy returns); shapes kept
        v = f(0.3)
        assert isinstance(v, float) and np.ndim(v) == 0, (name, type(v))
        assert isinstance(f(np.float64(0.3)), float) and isinstance(f(np.array(0.3)), float)
        assert f(np.full((2, 3), 0.3)).shape == (2, 3) and f([]).shape == (0,)
        with pytest.raises(ValueError):
            f("0.3")
    # probabilities outside [0, 1] have no quantile
    for name in ("ppf", "isf"):
        assert np.all(np.isnan(getattr(d, name)([-0.1, 1.1])))
    assert d.support() == (-1.0, 1.0)
    assert d.ppf(0.0) == -1.0 and d.ppf(1.0) == 1.0 and d.isf(0.0) == 1.0 and d.isf(1.0) == -1.0
    assert d.cdf(-2.0) == 0.0 and d.cdf(2.0) == 1.0 and d.sf(-2.0) == 1.0 and d.sf(2.0) == 0.0


@pytest.mark.parametrize("nu", [0.7, 3.0, 40.0])
def test_a_student_t_tail_is_each_points_own(nu):
    """The far tail's Newton search (``abs_log_isf``, below scipy's range) went on stepping the
    points it had found, by an ulp or two, until the call's last point was found: each point now
    gets what it gets alone."""
    src = StudentT(nu)
    log_s = np.linspace(-700.0, -5.0, 301)
    np.testing.assert_array_equal(src.abs_log_isf(log_s), [src.abs_log_isf(v) for v in log_s])


@pytest.mark.parametrize("B, src, norm", CASES)
def test_numerical_identities(B, src, norm):
    d = BlockDistribution(B, src, norm)
    y = np.array([-0.95, -0.6, -0.2, 0.0, 0.05, 0.4, 0.8, 0.99])
    assert np.allclose(d.sf(y), 1 - d.cdf(y), rtol=0, atol=2e-15)
    with np.errstate(divide="ignore"):
        assert np.allclose(d.logpdf(y), np.log(d.pdf(y)), rtol=1e-15, atol=0)
        assert np.allclose(d.logcdf(y), np.log(d.cdf(y)), rtol=1e-15, atol=0)
        assert np.allclose(d.logsf(y), np.log(d.sf(y)), rtol=1e-15, atol=0)
    inner = y[np.abs(y) < 0.9]  # where the density is not tiny, the inverses are well conditioned
    assert np.allclose(d.isf(d.sf(inner)), inner, rtol=0, atol=1e-11)
    assert np.allclose(d.ppf(d.cdf(inner)), inner, rtol=0, atol=1e-11)
    # inside the jump at +1 (probability w) isf is +1; just above the atom at -1 it is -1
    ax, aw = d.atoms
    w_plus = aw[ax == 1.0].sum()
    assert d.isf(0.5 * w_plus) == 1.0 and d.sf(1.0) == 0.0 and math.isclose(d.sf(0.999999999), w_plus, abs_tol=1e-8)
    if norm == "absmax":
        w_minus = aw[ax == -1.0].sum()
        assert d.isf(1 - 0.5 * w_minus) == -1.0 and d.ppf(0.5 * w_minus) == -1.0
    # expect includes the atoms: E[1] = 1, E[y²] = var + mean²
    assert math.isclose(d.expect(lambda t: np.ones_like(t)), 1.0, abs_tol=1e-12)
    assert math.isclose(d.expect(lambda t: t**2), d.var() + d.mean() ** 2, rel_tol=1e-11)
    assert math.isclose(d.expect(), d.mean(), abs_tol=1e-12)
    assert math.isclose(d.median(), float(d.ppf(0.5)), abs_tol=0)
    # bounds: [lb, ub] holds the atoms at its ends; conditional divides by its probability
    lo_mass = d.expect(lambda t: np.ones_like(t), ub=0.4)
    assert math.isclose(lo_mass, d.cdf(0.4), abs_tol=1e-12)
    assert math.isclose(d.expect(lambda t: np.ones_like(t), lb=0.4, conditional=True), 1.0, abs_tol=1e-12)
    assert math.isclose(d.expect(lambda t: np.ones_like(t), lb=1.0), w_plus, rel_tol=1e-12)


def test_expect_and_moments_against_monte_carlo():
    d = BlockDistribution(16, StudentT(5), "signed-absmax")
    y = d.rvs((2**16, 16), random_state=3)  # rows are blocks: the independent units
    for f in (np.cos, lambda t: np.abs(t) ** 3, lambda t: np.exp(2 * t)):
        exact = d.expect(f)
        bm = f(y).mean(axis=1)
        z = (bm.mean() - exact) / (bm.std(ddof=1) / math.sqrt(bm.size))
        assert abs(z) < 5, (bm.mean(), exact)
    # math.exp takes one value at a time: expect falls back to calling it value by value
    assert math.isclose(d.expect(math.exp), d.expect(np.exp), rel_tol=1e-14)
    bm = (y**4).mean(axis=1)
    assert abs(bm.mean() - d.moment(4)) < 5 * bm.std(ddof=1) / math.sqrt(bm.size)


def _ref_entropy(d):
    """-∫ p log p over (-1, 1) by adaptive quadrature (pieces halving toward 0) minus Σ w log w."""
    def f(y):
        p = float(d.pdf(y))
        return -p * math.log(p) if p > 0 else 0.0

    edges = np.concatenate([-(2.0 ** -np.arange(0, 60)), [0.0], 2.0 ** -np.arange(59, -1, -1)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = sum(integrate.quad(f, a, b, epsabs=1e-15, epsrel=1e-12, limit=200)[0]
                for a, b in zip(edges[:-1], edges[1:]))
    aw = d.atoms[1]
    return h - float(np.sum(aw * np.log(aw)))


@pytest.mark.parametrize("B, src, norm", CASES[:3])
def test_entropy_continuous_part_plus_atoms(B, src, norm):
    d = BlockDistribution(B, src, norm)
    assert math.isclose(d.entropy(), _ref_entropy(d), rel_tol=1e-9)


def test_plain_source_matches_scipy():
    # normalization="none" is the source itself: compare with scipy.stats directly
    for src, ref in ((StudentT(3), stats.t(3, scale=math.sqrt(1 / 3))), (Laplace(), stats.laplace(scale=Laplace.b)),
                     (None, stats.norm())):
        d = BlockDistribution(None, src or "normal", "none")
        x = np.array([-4.0, -1.0, 0.0, 0.5, 3.0])
        q = np.array([1e-6, 0.1, 0.5, 0.9])
        for name, arg in (("pdf", x), ("logpdf", x), ("cdf", x), ("sf", x)):
            assert np.allclose(getattr(d, name)(arg), getattr(ref, name)(arg), rtol=1e-12, atol=1e-300), name
        # scipy's Student-t inverse (stdtrit) before 1.16 is good to about 2e-9 and gives 4e-17
        # for the median; the inverse is checked against mpmath in test_derive_student_t.py
        for name in ("ppf", "isf"):
            assert np.allclose(getattr(d, name)(q), getattr(ref, name)(q), rtol=1e-8, atol=1e-15), name
        assert math.isclose(d.entropy(), ref.entropy(), rel_tol=1e-10)
        assert math.isclose(d.expect(lambda t: t**2), ref.var(), rel_tol=1e-9)
        assert d.support() == (-math.inf, math.inf)
    heavy = BlockDistribution(None, StudentT(1), "none")
    assert math.isnan(heavy.var()) and math.isclose(heavy.entropy(), stats.cauchy.entropy(), rel_tol=1e-10)
    # an empirical sample: bounded support, entropy of its piecewise-constant density
    d = BlockDistribution(None, ASYM, "none")
    lo, hi = d.support()
    assert lo == ASYM._xk[0] and hi == ASYM._xk[-1]
    seg = np.diff(ASYM._Fk)
    assert math.isclose(d.entropy(), float(-np.sum(seg * np.log(ASYM._dens))), rel_tol=1e-12)


@pytest.mark.parametrize("src", [Normal(), Laplace(), StudentT(5), StudentT(0.7), ASYM], ids=lambda s: s.spec)
def test_sources_follow_scipy_conventions(src):
    """What scipy.stats.norm does at the edges, every source does: NaN in, NaN out; no
    quantile outside [0, 1]; ±inf at 0 and 1 (the sample's extremes for an empirical law);
    a scalar in, a float out; an array keeps its shape."""
    ref = stats.norm()
    edge = np.array([np.nan, -0.1, 0.0, 1.0, 1.1])
    for name in ("ppf", "isf"):
        ours, theirs = getattr(src, name)(edge), getattr(ref, name)(edge)
        assert np.array_equal(np.isnan(ours), np.isnan(theirs)), name
        assert ours.shape == edge.shape
    lo, hi = src.ppf([0.0, 1.0])
    assert (lo, hi) == ((-np.inf, np.inf) if src is not ASYM else (ASYM._xk[0], ASYM._xk[-1]))
    for name in ("pdf", "cdf", "sf", "ppf", "isf"):
        f = getattr(src, name)
        assert isinstance(f(0.3), float) and math.isnan(f(np.nan)), name
        assert f(np.full((2, 3), 0.3)).shape == (2, 3), name
    assert src.pdf(np.inf) == 0.0 and src.cdf(np.inf) == 1.0 and src.sf(-np.inf) == 1.0


def test_rvs_and_normalize_blocks_validate():
    d = BlockDistribution(8)
    assert d.rvs((3, 5), random_state=1).shape == (3, 5) and d.rvs(0, random_state=1).shape == (0,)
    for bad in (-1, 2.5, "x", math.inf):
        with pytest.raises(ValueError, match="size must be"):
            d.rvs(bad)
    # a block of zeros has no scale: its values stay 0 (they were 0/0 = NaN)
    with np.errstate(all="raise"):
        y = normalize_blocks(np.array([[0.0, 0.0], [1.0, -2.0]]), "absmax")
    assert np.array_equal(y, [[0.0, 0.0], [0.5, -1.0]])
    x = np.array([[1.0, -2.0]])
    assert np.array_equal(normalize_blocks(x, "none"), x)  # it silently applied signed absmax
    assert np.array_equal(normalize_blocks(x, "signed-absmax"), [[-0.5, 1.0]])
    for bad_x, norm in ((np.array([[np.nan, 1.0]]), "absmax"), (np.ones(3), "absmax"), (x, "max")):
        with pytest.raises(ValueError):
            normalize_blocks(bad_x, norm)


@pytest.mark.parametrize("law", [Normal(), Laplace(), StudentT(5), ASYM, BlockDistribution(8),
                                 BlockDistribution(16, Laplace(), "signed-absmax")], ids=repr)
def test_rvs_sizes_are_scipys(law):
    """``size`` as scipy.stats.norm.rvs takes it: None and () give one numpy float, an integer
    or a tuple a shape; anything else is one ValueError naming ``size``."""
    ref = stats.norm()
    for size in (None, ()):
        ours, theirs = law.rvs(size, random_state=0), ref.rvs(size=size, random_state=0)
        assert type(ours) is type(theirs) is np.float64, size
    for size in (0, 3, (2, 3)):
        assert law.rvs(size, random_state=0).shape == ref.rvs(size=size, random_state=0).shape
    for bad in (-1, 2.5, "5", (2, -1), math.inf, True):
        with pytest.raises(ValueError, match="size must be"):
            law.rvs(bad)


@pytest.mark.parametrize("law", [Normal(), StudentT(5), ASYM, BlockDistribution(8),
                                 ScaledBlockDistribution(16, "normal", "e4m3", tensor_amax=3.0)], ids=repr)
def test_rvs_seeds(law):
    """An integer ``random_state`` is the Generator ``numpy.random.default_rng`` makes of it
    (the same draws, a numpy integer too), a Generator is used as it is (two calls continue
    one stream); anything numpy refuses, or a bool, is one ValueError naming
    ``random_state`` (it was numpy's TypeError for 2.5, and ``True`` drew as seed 1)."""
    a = law.rvs(7, random_state=5)
    assert np.array_equal(a, law.rvs(7, random_state=np.random.default_rng(5)))
    assert np.array_equal(a, law.rvs(7, random_state=np.int64(5)))
    g = np.random.default_rng(5)
    assert np.array_equal(law.rvs(3, random_state=g), a[:3]) and not np.array_equal(law.rvs(3, random_state=g), a[:3])
    for bad in (-1, 2.5, "5", True, np.True_, np.float64(3.0), object()):
        with pytest.raises(ValueError, match=r"^random_state must be None, a non-negative integer seed"):
            law.rvs(3, random_state=bad)


def test_an_integer_seed_draws_numpys_stream():
    """The independent oracle of the rule: numpy's own draws from ``default_rng(seed)``."""
    assert np.array_equal(Normal().rvs(9, random_state=11), np.random.default_rng(11).standard_normal(9))


def test_exotic_reals_are_numbers():
    """Fractions and Decimals are real numbers, read as their nearest float64; an integer
    beyond float64 is ±inf, not an OverflowError (scipy 1.17 raises on all three)."""
    from decimal import Decimal
    from fractions import Fraction

    for law in (Normal(), BlockDistribution(64)):
        assert law.cdf(Fraction(1, 2)) == law.cdf(0.5) == law.cdf(Decimal("0.5"))
        assert law.cdf([Fraction(1, 3), 0.25]).tolist() == law.cdf([1 / 3, 0.25]).tolist()
        assert (law.cdf(10**400), law.cdf(-10**400), law.sf(10**400)) == (1.0, 0.0, 0.0)


def test_a_divergent_moment_is_inf_when_even_and_undefined_when_odd():
    """E|X|^k = inf: E[X^k] is +inf for an even k, and for an odd one the two halves are
    +inf and -inf, so no value (scipy's Cauchy mean is NaN); the source and its plain block law
    say the same."""
    for nu, k in ((1, 1), (0.7, 1), (2, 2), (1, 2)):
        src = StudentT(nu)
        want = math.inf if k % 2 == 0 else math.nan
        for got in (src.moment(k), BlockDistribution(None, src, "none").moment(k)):
            assert got == want or (math.isnan(got) and math.isnan(want)), (nu, k, got)
    assert math.isnan(stats.cauchy.mean())


def _same_state(a, b):
    """Two RandomStates at the same point of their streams (the Gaussian cache included)."""
    sa, sb = a.get_state(), b.get_state()
    return np.array_equal(sa[1], sb[1]) and sa[2:] == sb[2:]


@pytest.mark.parametrize("law, ref", [(Normal(), stats.norm()), (Laplace(), stats.laplace(scale=Laplace.b)),
                                      (StudentT(5), stats.t(5, scale=math.sqrt(3 / 5)))],
                         ids=["normal", "laplace", "t5"])
def test_a_randomstate_draws_what_scipy_draws_from_it(law, ref):
    """A RandomState is used as scipy.stats uses it, with its own (legacy) methods: where the law's draw
    is scipy's transformation, the same state gives scipy's numbers, and leaves the state where scipy's
    draw leaves it (``default_rng`` of it drew normals and t by other algorithms)."""
    ours, theirs = np.random.RandomState(17), np.random.RandomState(17)
    for size in ((3, 4), 5, None):
        a, b = law.rvs(size, random_state=ours), ref.rvs(size=size, random_state=theirs)
        assert np.array_equal(a, b) and np.shape(a) == np.shape(b), size
        assert _same_state(ours, theirs), size


def _blocks(rs, n, B):
    return rs.standard_normal((-(-n // B), B))


@pytest.mark.parametrize("law, draw", [
    (ASYM, lambda rs, n: ASYM.ppf(rs.random(n))),
    (BlockDistribution(normalization="none"), lambda rs, n: rs.standard_normal(n)),
    (BlockDistribution(8), lambda rs, n: normalize_blocks(_blocks(rs, n, 8), "absmax").ravel()[:n]),
    (ScaledBlockDistribution(16, "normal", "e8m0:floor"),
     lambda rs, n: _scaled_by_hand(ScaledBlockDistribution(16, "normal", "e8m0:floor"), _blocks(rs, n, 16))[:n]),
], ids=["empirical", "plain", "absmax-8", "e8m0-16"])
def test_a_randomstate_is_drawn_from_with_its_own_methods(law, draw):
    """Where quantbook draws by its own transformation, a RandomState feeds it from its own methods:
    the draws are that transformation of a copy's ``rs.random``/``rs.standard_normal``, and the state
    ends where the copy's does."""
    ours, copy = np.random.RandomState(23), np.random.RandomState(23)
    for n in (37, 64):
        assert np.array_equal(law.rvs(n, random_state=ours), draw(copy, n)), n
        assert _same_state(ours, copy), n


def _scaled_by_hand(d, x):
    """The model of ScaledBlockDistribution for a one-level rule: ``u = x / (qmax · s(M))``."""
    m = np.abs(x).max(axis=1)
    return (x / (d.qmax * np.asarray(d.rule.scale(m, d.qmax), dtype=np.float64))[:, None]).ravel()
