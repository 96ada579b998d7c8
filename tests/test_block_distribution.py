"""The exact block distribution of y = x/scale against Monte Carlo and adaptive quadrature.

Monte Carlo: 2**20 values in blocks of B drawn with numpy (fixed seeds), normalised with a
plain numpy reference.  Values in a block share the scale, so the blocks (not the values)
are the independent units: ECDF deviations and moments are judged by z-scores of block
means (CLT over i.i.d. blocks), |z| <= 5.5 over a 64-point grid.
"""

import math
import warnings
import zlib

import numpy as np
import pytest
from scipy import integrate, stats

from quantbook.derive.block import BlockDistribution, block_measure
from quantbook.derive.sources import Empirical, Laplace, Normal, StudentT, parse_source

N_VALUES = 2**20
# an asymmetric sample for the empirical source (skewed: normal + exponential)
_rng = np.random.default_rng(12345)
ASYM = _rng.standard_normal(400_000) + 0.8 * _rng.exponential(1.0, 400_000)
SOURCES = {"normal": Normal(), "laplace": Laplace(), "student-t:5": StudentT(5), "empirical": Empirical(ASYM)}


def _mc_blocks(src, B, normalization, seed):
    rng = np.random.default_rng(seed)
    nb = max(N_VALUES // B, 1)
    x = src.rvs((nb, B), rng)
    i = np.argmax(np.abs(x), axis=1)
    s = x[np.arange(nb), i]
    if normalization == "absmax":
        s = np.abs(s)
    return x / s[:, None]


def _block_zscores(y_blocks, grid, cdf_vals):
    nb, B = y_blocks.shape
    bins = np.searchsorted(grid, y_blocks, side="right")  # #grid points < ... -> values <= grid[k] have bin <= k
    counts = np.zeros((nb, grid.size + 1))
    np.add.at(counts, (np.repeat(np.arange(nb), B), bins.ravel()), 1.0)
    # per-block fraction of values <= grid[k]: values with bin index <= k
    ecdf_blocks = np.cumsum(counts, axis=1)[:, :-1] / B
    dev = ecdf_blocks - cdf_vals
    se = dev.std(axis=0, ddof=1) / math.sqrt(nb)
    # floor: the binomial standard error of nb*B independent values (where no block varies)
    se = np.maximum(se, np.sqrt(cdf_vals * (1 - cdf_vals) / (nb * B)) + 1e-12)
    return dev.mean(axis=0) / se, np.max(np.abs(ecdf_blocks.mean(axis=0) - cdf_vals))


@pytest.mark.parametrize("name", list(SOURCES))
@pytest.mark.parametrize("normalization", ["absmax", "signed-absmax"])
@pytest.mark.parametrize("B", [4, 64, 1024])
def test_block_distribution_matches_monte_carlo(name, normalization, B):
    src = SOURCES[name]
    dist = BlockDistribution(B, src, normalization)
    seed = zlib.crc32(f"{name}/{normalization}/{B}".encode())
    yb = _mc_blocks(src, B, normalization, seed)
    grid = np.linspace(-0.995, 0.995, 64)
    z, ks = _block_zscores(yb, grid, dist.cdf(grid))
    assert np.max(np.abs(z)) < 5.5, (np.max(np.abs(z)), ks)
    assert ks < 0.01
    # moments by block means
    for k, exact in ((1, dist.mean()), (2, dist.moment(2))):
        bm = (yb**k).mean(axis=1)
        zk = (bm.mean() - exact) / (bm.std(ddof=1) / math.sqrt(bm.size))
        assert abs(zk) < 5.5, (k, bm.mean(), exact)
    # point masses: exactly one value per block at +-1 (all at +1 under signed absmax)
    ax, aw = dist.atoms
    assert math.isclose(aw.sum(), 1 / B, rel_tol=1e-9)
    if normalization == "signed-absmax":
        assert list(ax) == [1.0]
    else:
        frac_plus = np.mean(yb.max(axis=1) == 1.0)  # blocks whose extreme is positive
        p_plus = aw[ax == 1.0].sum() * B
        se = math.sqrt(p_plus * (1 - p_plus) / yb.shape[0]) + 1e-12
        assert abs(frac_plus - p_plus) < 5.5 * se + 1e-9


def _ref_cont_cdf(src, B, y, wp=0):
    """(B-1) ∫ h G^{B-2} m^wp (F(ym) - F(-m)) dm by adaptive quadrature in m, split at M's quantiles."""
    def f(m):
        G = src.cdf(m) - src.cdf(-m)
        h = src.pdf(m) + src.pdf(-m)
        return (B - 1) * h * G ** (B - 2) * m**wp * (src.cdf(y * m) - src.cdf(-m))

    us = np.concatenate([10.0 ** -np.arange(30, 0, -1), np.linspace(0.1, 0.9, 9), 1 - 10.0 ** -np.arange(1, 40)])
    S = -np.expm1(np.log(us) / B)
    ms = np.unique(np.concatenate([[0.0], src.abs_isf(S[S > 0])]))
    ms = ms[np.isfinite(ms)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(integrate.quad(f, a, b, epsabs=1e-17, epsrel=1e-13, limit=200)[0] for a, b in zip(ms[:-1], ms[1:]))


@pytest.mark.parametrize("src", [Normal(), Laplace()])
@pytest.mark.parametrize("B", [2, 16, 64, 4096])
@pytest.mark.parametrize("wp", [0, 2])
def test_quadrature_against_adaptive_reference(src, B, wp):
    mu = block_measure(src, B, "absmax", wp)
    ys = np.array([-0.9, -0.3, 0.0, 0.5, 0.97])
    ours = mu.T(0, ys) - mu.T(0, -1.0)
    ref = np.array([_ref_cont_cdf(src, B, y, wp) for y in ys])
    assert np.max(np.abs(ours - ref)) <= 2e-13 * max(1.0, mu.total)


@pytest.mark.parametrize("B", [2, 64, 10**6])
def test_density_cdf_ppf_consistency(B):
    d = BlockDistribution(B, "normal")
    y = np.linspace(-0.99, 0.99, 41)
    h = 1e-5
    fd = (d.cdf(y + h) - d.cdf(y - h)) / (2 * h)
    assert np.allclose(fd, d.pdf(y), rtol=1e-6, atol=1e-9)
    # continuous part has mass 1 - 1/B; cdf(1) = 1; P(y = -1) = 1/(2B)
    assert abs(float(d.cdf(1.0)) - 1.0) < 1e-12
    assert abs(float(d.cdf(-1.0)) - 0.5 / B) < 1e-12
    assert abs(float(d.cdf(0.0)) - 0.5) < 1e-12
    p = np.concatenate([[0.4 / B], 0.5 / B + (1 - 1 / B) * np.array([0.1, 0.5, 0.9]), [1 - 0.4 / B]])
    yy = d.ppf(p)
    assert yy[0] == -1.0 and yy[-1] == 1.0
    assert np.allclose(d.cdf(yy[1:-1]), p[1:-1], atol=1e-12)
    assert d.var() > 0 and abs(d.mean()) < 1e-12
    # outside [0, 1] (and NaN) there is no quantile, as in scipy.stats
    assert np.all(np.isnan(d.ppf([-0.1, 1.1, np.nan])))
    assert d.ppf(0.0) == -1.0 and d.ppf(1.0) == 1.0


def test_ppf_next_to_a_singular_density():
    """student-t:0.5's density blows up at 0 (like |y|**-0.5): a Newton step from there is
    tiny far from the root.  Quantiles against Monte Carlo (seed 1, 4e5 blocks) and the cdf."""
    B = 64
    d = BlockDistribution(B, "student-t:0.5")
    q = np.array([0.1, 0.3, 0.7, 0.9])
    y = d.ppf(q)
    assert np.allclose(d.cdf(y), q, atol=1e-12)
    assert np.allclose(d.isf(1 - q), y, rtol=1e-9)
    rng = np.random.default_rng(1)
    x = rng.standard_t(0.5, (400_000, B))
    mc = x[:, 0] / np.abs(x).max(axis=1)
    frac = (mc[:, None] <= y).mean(axis=0)
    assert np.all(np.abs(frac - q) < 4 * np.sqrt(q * (1 - q) / mc.size))


def test_large_block_tail_is_finite_and_normalised():
    B = 10**6
    d = BlockDistribution(B, "normal")
    y = np.array([0.5, 0.9, 0.999])
    assert np.all(np.isfinite(d.pdf(y))) and np.all(d.pdf(y) > 0)
    # E[y²] = 1/B + (B-1) ∫ 2φ(m) G(m)^(B-2) (G(m) - 2mφ(m)) / m² dm, G(m) = erf(m/√2), by
    # adaptive quadrature in m (P(M < 2.5) ~ e^-12500, P(M > 12) ~ 4e-27: both negligible)
    def f(m):
        phi = math.exp(-m * m / 2) / math.sqrt(2 * math.pi)
        g = math.erf(m / math.sqrt(2))
        g_pow = math.exp((B - 2) * math.log1p(-math.erfc(m / math.sqrt(2))))  # G^(B-2)
        return (B - 1) * 2 * phi * g_pow * (g - 2 * m * phi) / m**2

    ref = 1 / B + integrate.quad(f, 2.5, 12, points=[4, 4.5, 5, 5.5, 6, 8], epsabs=0, epsrel=1e-13, limit=200)[0]
    assert abs(d.moment(2) - ref) < 1e-13, (d.moment(2), ref)


def test_sources_parse_and_errors():
    assert parse_source("normal") == Normal()
    assert parse_source("student-t:3").nu == 3
    # the spec (recipe record, cache key) keeps every digit of nu
    assert parse_source("student-t:3.0000001") != parse_source("student-t:3")
    assert parse_source(StudentT(3.0000001).spec).nu == 3.0000001 and StudentT(5).spec == "student-t:5"
    assert Empirical(ASYM[:5000]) == Empirical(ASYM[:5000]) != Empirical(ASYM[:5000], knots=64)
    for bad in ("cauchy", "student-t:x", "student-t:-1", "nope.npy", ""):
        with pytest.raises(ValueError):
            parse_source(bad)
    with pytest.raises(ValueError):
        Empirical([1.0, 1.0, 1.0])
    # unit variance sources
    for src in (Normal(), Laplace(), StudentT(5)):
        assert abs(src.var - 1) < 1e-12
    assert abs(stats.kstest(Laplace().rvs(20000, 1), Laplace().cdf).statistic) < 0.02


@pytest.mark.parametrize("nu", [1.0, 1.5, 2.0])
def test_heavy_tail_second_partial_moment(nu):
    # ν <= 2: ∫_0^x t² t_ν(t) dt grows without bound; the block law still has finite moments.
    # Reference: scipy quad of the density over log-spaced pieces (relative 1e-11).
    src = StudentT(nu)
    for x in (1e-3, 0.05, 0.7, 30.0, 1e6, 1e12):
        edges = np.concatenate([[0.0], np.geomspace(min(x, 1e-3), x, 40)])
        ref = sum(integrate.quad(lambda t: t * t * src.pdf(t), a, b, epsabs=0, epsrel=1e-13)[0]
                  for a, b in zip(edges[:-1], edges[1:]))
        got = float(src.partial_moment(2, x))
        assert abs(got - ref) <= 1e-11 * ref, (x, got, ref)
        assert float(src.partial_moment(2, -x)) == -got
    # normalised values of heavy-tailed blocks: E[y²] finite and equal to Monte Carlo
    B = 64
    d = BlockDistribution(B, src, "absmax")
    yb = _mc_blocks(src, B, "absmax", seed=int(10 * nu))
    bm = (yb**2).mean(axis=1)
    z = (bm.mean() - d.moment(2)) / (bm.std(ddof=1) / math.sqrt(bm.size))
    assert math.isfinite(d.moment(2)) and abs(z) < 5.5, (d.moment(2), bm.mean())


def test_sqnr_and_the_bound_of_weights_with_a_mean():
    """SQNR is signal power over error, E[x²]/MSE, and D(R) uses the variance: on a sample
    of N(1, 1) weights (a LayerNorm-like mean) the two differ by 3 dB, so swapping them shows.
    E[x²] and the variance are the sample's own (the smoothed law's moments are within 1e-3)."""
    from quantbook.derive import evaluate
    from quantbook.codebooks.registry import REGISTRY

    x = np.random.default_rng(21).standard_normal(200_000) + 1.0
    ev = evaluate(REGISTRY["nf4"].codebook, 64, source=Empirical(x, standardize=False))
    assert ev.sqnr_db == pytest.approx(10 * math.log10(np.mean(x**2) / ev.mse_weight), abs=0.01)
    assert ev.rd_bound == pytest.approx(np.var(x) * 2.0 ** (-2 * ev.bits_per_weight), rel=0.01)


def test_a_sample_kept_whole_is_split_at_a_bounded_number_of_knots():
    """knots=None keeps every one of 10^5 distinct values: the law's pieces in M stop at
    block._MAX_CUTS knots (memory and time grow with the nodes: 670 MB at 2·10^5 values
    without the bound), and its second moment still agrees with 2^20 Monte Carlo values
    (seed 4) within 5 standard errors."""
    from quantbook.derive import block

    x = np.random.default_rng(3).standard_normal(100_000)
    src = Empirical(x, knots=None)
    mu = block_measure(src, 64, "absmax", 0)
    assert mu.m.size < 4 * block._MAX_CUTS
    dist = BlockDistribution(64, src, "absmax")
    yb = _mc_blocks(src, 64, "absmax", 4)
    bm = (yb**2).mean(axis=1)
    assert abs(bm.mean() - dist.moment(2)) < 5 * bm.std(ddof=1) / math.sqrt(bm.size)


def test_a_samples_law_is_evaluated_in_bounded_memory():
    """A sample kept whole has ~2·10^4 nodes of M; Lloyd's starting density asks for 4097
    values of y at once, which took 2 GB in one (y, node) array.  A sample's sums over the
    nodes are taken by its kernel as the values come, with no such array, and a value does not
    depend on the others asked with it."""
    import tracemalloc

    from quantbook.derive import block

    rng = np.random.default_rng(5)
    src = Empirical(rng.standard_normal(20_000) + 0.5 * rng.exponential(1.0, 20_000), knots=None)
    mu = block.BlockMeasure(src, 64, "signed-absmax", 0)
    y = np.linspace(-1.0, 1.0, 601)   # 10^7 pairs
    want = [mu.dens(y[i:i + 64]) for i in range(0, y.size, 64)], [mu.T(1, y[i:i + 64]) for i in range(0, y.size, 64)]
    tracemalloc.start()
    try:
        got = mu.dens(y), mu.T(1, y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak   # 80 MB as a (y, node) table
    np.testing.assert_array_equal(got[0], np.concatenate(want[0]))
    np.testing.assert_array_equal(got[1], np.concatenate(want[1]))
    assert mu.T(1, 0.5) == mu.T(1, np.array([0.5]))[0]


def test_a_laws_table_of_values_is_evaluated_in_chunks_of_bounded_size(monkeypatch):
    """A source without a kernel for its sums over the nodes fills the (y, node) table, on at
    most block._CHUNK pairs a call, with the same values."""
    from quantbook.derive import block

    mu = block.BlockMeasure(Laplace(), 64, "signed-absmax", 0)
    y = np.linspace(-1.0, 1.0, 601)
    want = mu.dens(y), mu.T(1, y)
    monkeypatch.setattr(block, "_CHUNK", 4096)
    largest = []
    for name in ("pdf", "partial_moment"):
        f = getattr(mu.source, name)
        monkeypatch.setattr(mu.source, name, lambda *a, _f=f: largest.append(np.size(a[-1])) or _f(*a))
    np.testing.assert_allclose(mu.dens(y), want[0], rtol=1e-13)
    np.testing.assert_allclose(mu.T(1, y), want[1], rtol=1e-13, atol=1e-16)
    assert 0 < max(largest) <= 4096


def _knot_tables(src):
    """The knots and the density on each knot segment, from the sample's Voronoi cdf (knots
    and cumulative probabilities) alone."""
    xk, Fk = src._xk, src._Fk
    return xk, np.diff(Fk) / np.diff(xk)


def _psi_reference(src, k, x):
    """``∫_0^x t^k g(t) dt`` for a piecewise-constant density: each knot segment's share of
    ``[0, x]`` (or ``[x, 0]``, negative for even k) integrated exactly, added up segment by
    segment (no table of Ψ at the knots, no search); 256 points at a time."""
    xk, d = _knot_tables(src)
    out = []
    for v in np.array_split(np.asarray(x, dtype=np.float64), max(1, np.size(x) // 256)):
        lo, hi = np.minimum(v, 0.0)[:, None], np.maximum(v, 0.0)[:, None]
        a, b = np.clip(xk[:-1], lo, hi), np.clip(xk[1:], lo, hi)
        out.append(np.where(v >= 0, 1.0, -1.0) * (d * (b ** (k + 1) - a ** (k + 1)) / (k + 1)).sum(axis=1))
    return np.concatenate(out)


def _pdf_reference(src, x):
    xk, d = _knot_tables(src)
    out = []
    for v in np.array_split(np.asarray(x, dtype=np.float64), max(1, np.size(x) // 256)):
        out.append((((v[:, None] >= xk[:-1]) & (v[:, None] < xk[1:])) * d).sum(axis=1))
    return np.concatenate(out)


def _points(src, rng):
    """Points where a lookup can go wrong: the knots, next to them, the edges of the kernel's
    grid cells and next to them, beyond both ends, ±inf, and random ones."""
    from quantbook.derive import sample_kernels

    xk = src._xk
    _, start, x0, inv_h, _ = sample_kernels.grid(xk)
    edges = x0 + np.arange(start.size) / inv_h
    pts = np.concatenate([xk, edges, [-np.inf, np.inf, 0.0, xk[0] - 1.0, xk[-1] + 1.0],
                          rng.uniform(xk[0] - 0.5, xk[-1] + 0.5, 1000)])
    return np.concatenate([pts, np.nextafter(pts, -np.inf), np.nextafter(pts, np.inf)])


@pytest.mark.parametrize("case", ["normal", "outlier", "ties", "raw"])
def test_a_samples_kernel_gives_the_values_of_a_direct_computation(case):
    """An empirical source looks its points up with a numba kernel (a grid over the knots, then
    halvings within a cell): on samples whose cells hold one knot or hundreds (a far outlier),
    rounded values with many ties, and an unstandardised one, at the knots, next to them, at
    the grid's cell edges and beyond the ends, the density and Ψ_0, Ψ_1 equal numpy's search
    and formula bit for bit, and a direct integration of the density within rounding; the
    points looked up one at a time (numpy's search) give the same values."""
    rng = np.random.default_rng(11)
    x = {"normal": rng.standard_normal(1000),
         "outlier": np.concatenate([rng.standard_normal(1000), [4.0e4]]),
         "ties": np.round(rng.standard_normal(5000), 2),
         "raw": 1e-3 * rng.standard_t(3, 1000)}[case]
    src = Empirical(x, knots=None, standardize=case != "raw")
    pts = _points(src, rng)
    xk, d = _knot_tables(src)
    finite = np.isfinite(pts)
    scale = np.max(np.abs(xk))
    seg = np.clip(np.searchsorted(xk, np.clip(pts, xk[0], xk[-1]), side="right") - 1, 0, d.size - 1)
    np.testing.assert_array_equal(src._seg(pts), seg)
    np.testing.assert_array_equal(src.pdf(pts), np.where((pts >= xk[0]) & (pts < xk[-1]), src._dens[seg], 0.0))
    some = pts[finite][::7]   # the direct integration takes a (point, knot) table
    np.testing.assert_allclose(src.pdf(some), _pdf_reference(src, some), rtol=1e-14, atol=0)
    for k in (0, 1):
        got = src.partial_moment(k, pts)
        xc = np.clip(pts, xk[0], xk[-1])
        numpy_formula = (src._Pk[k][seg] + src._dens[seg] * (xc ** (k + 1) - xk[seg] ** (k + 1)) / (k + 1)
                         - src._P0[k])
        np.testing.assert_array_equal(got, numpy_formula)
        np.testing.assert_allclose(got[finite][::7], _psi_reference(src, k, some), rtol=0, atol=1e-13 * scale**k)
        one_by_one = np.array([src.partial_moment(k, v) for v in pts[::97]])
        np.testing.assert_array_equal(one_by_one, got[::97])
    np.testing.assert_array_equal(np.array([src.pdf(v) for v in pts[::97]]), src.pdf(pts)[::97])


def test_a_samples_block_law_is_the_same_on_one_thread_as_on_all():
    """The kernel splits its rows over numba's threads: each row's sum over the nodes is taken
    by one thread in the nodes' order, so a block law's values do not depend on how many."""
    import numba

    from quantbook.derive import block

    src = Empirical(np.random.default_rng(17).standard_normal(5000), knots=None)
    y = np.linspace(-1.0, 1.0, 4097)
    mu = block.BlockMeasure(src, 64, "signed-absmax", 1)
    saved = numba.get_num_threads()
    try:
        got = []
        for n in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(n)
            got.append((mu.dens(y), mu.T(0, y), mu.T(1, y)))
    finally:
        numba.set_num_threads(saved)
    for a, b in zip(*got):
        np.testing.assert_array_equal(a, b)


def test_a_samples_small_lookups_run_on_one_thread_with_the_values_of_all(monkeypatch):
    """A Lloyd step asks a sample's law for a few dozen points at a time, thousands of times, and
    on a busy machine each launch of the kernel on all threads waited milliseconds for them: a
    lookup of fewer (point, node) pairs than ONE_THREAD_PAIRS runs on the calling thread alone
    and leaves numba's thread count as it was; a larger one is not limited.  The values are those
    of all threads, bit for bit, and within rounding of a direct integration."""
    import numba

    from quantbook.derive import block, sample_kernels

    src = Empirical(np.random.default_rng(18).standard_normal(1000))
    mu = block.BlockMeasure(src, 64, "absmax", 1)
    few = np.array([-0.71, -0.2, 0.0, 0.33, 0.9])
    many = np.linspace(-1.0, 1.0, sample_kernels.ONE_THREAD_PAIRS // mu.m.size + 1)
    assert few.size * mu.m.size < sample_kernels.ONE_THREAD_PAIRS <= many.size * mu.m.size
    set_to, setter = [], numba.set_num_threads

    def recording(n):
        set_to.append(n)
        setter(n)
    monkeypatch.setattr(numba, "set_num_threads", recording)
    saved = numba.get_num_threads()
    small = (mu.T(0, few), mu.T(1, few), mu.dens(few))
    assert set_to == [1, saved] * 3 and numba.get_num_threads() == saved
    set_to.clear()
    large = mu.T(0, many)
    assert set_to == []
    monkeypatch.setattr(sample_kernels, "ONE_THREAD_PAIRS", 0)   # every lookup on all threads
    for got, want in zip(small + (large,), (mu.T(0, few), mu.T(1, few), mu.dens(few), mu.T(0, many))):
        np.testing.assert_array_equal(got, want)
    assert set_to == []
    ym = np.multiply.outer(few, mu.m).ravel()
    for k in (0, 1):
        direct = _psi_reference(src, k, ym).reshape(few.size, mu.m.size) @ (mu._cp / mu.m**k)
        np.testing.assert_allclose(small[k], direct, rtol=1e-13, atol=1e-15)


def test_a_laws_mass_below_its_support_is_taken_once(monkeypatch):
    """``cum`` subtracts ``T(0, lo)`` at every call, and Lloyd's medians ask for ``cum`` thousands of
    times: it is taken once per law, so a later ``cum`` of a sample's law launches one kernel, and
    its values are still the continuous mass from -1 plus the atom there."""
    from quantbook.derive import block, sample_kernels

    src = Empirical(np.random.default_rng(19).standard_normal(1000))
    mu = block.BlockMeasure(src, 16, "absmax", 0)
    y = np.array([-0.5, 0.0, 0.25, 0.999])
    mu.cum(y)
    launches, sums = [], sample_kernels.sums

    def counting(*args, **kwargs):
        launches.append(1)
        return sums(*args, **kwargs)
    monkeypatch.setattr(sample_kernels, "sums", counting)
    got = mu.cum(y)
    assert len(launches) == 1
    np.testing.assert_array_equal(got, mu.T(0, y) - mu.T(0, -1.0) + mu.atoms_w[0])   # the atom at -1


def _fresh_law(kind):
    """A law built anew (no values remembered from an earlier call)."""
    from quantbook.derive import block, scaled
    from quantbook.derive.scaled import scaled_measure

    if kind.startswith("scaled:"):
        _, source, B, rule, p = kind.split(":", 4)
        scaled._cached.cache_clear()
        return scaled_measure(source, int(B), rule, weight_power=int(p))
    source, B, normalization = kind.split("|")
    return block.BlockMeasure(parse_source(source), int(B), normalization, 1)


@pytest.mark.parametrize("kind", ["normal|64|absmax", "laplace|256|signed-absmax", "student-t:1.5|64|absmax",
                                  "scaled:normal:16:e4m3:2", "scaled:normal:32:float16:2",
                                  "scaled:normal:64:nested:2"])
def test_a_laws_values_do_not_depend_on_how_many_points_are_asked_at_once(kind, monkeypatch):
    """A law sums its nodes' terms at each point.  As a BLAS matrix-vector product, a point's sum
    was rounded by where the point fell among those asked for together (and by BLAS's thread
    count): asked for all at once, seven at a time, or with the table of (point, node) pairs cut
    into small pieces, the values are the same bits."""
    from quantbook.derive import block

    y = np.linspace(-1.0, 1.0, 1201)

    def values(mu, pieces):
        return [np.concatenate([f(y[i:i + pieces]) for i in range(0, y.size, pieces)])
                for f in (mu.dens, lambda v: mu.T(0, v), lambda v: mu.T(1, v))]

    whole = values(_fresh_law(kind), y.size)
    by_seven = values(_fresh_law(kind), 7)
    monkeypatch.setattr(block, "_CHUNK", 1001)
    small_tables = values(_fresh_law(kind), y.size)
    for a, b, c in zip(whole, by_seven, small_tables):
        np.testing.assert_array_equal(b, a)
        np.testing.assert_array_equal(c, a)



@pytest.mark.parametrize("side", ["sf", "cdf"])
def test_a_laws_mass_next_to_its_end_is_each_points_own(side):
    """Within 1/16 of ±1 a block law's sf and cdf sum a Gauss rule at each point's distance to
    the end: each point gets the bits it gets alone, whatever the points asked with it."""
    d = BlockDistribution(64, "laplace", "absmax")
    t = np.geomspace(1e-9, 0.06, 401)
    f = getattr(d, side)
    y = 1.0 - t if side == "sf" else t - 1.0
    np.testing.assert_array_equal(f(y), [f(v) for v in y])

def test_a_grid_cell_of_half_a_million_knots_takes_every_halving():
    """A far outlier puts 6·10^5 distinct values in one cell of the kernel's grid, whose window
    is then the widest (2^20): each of the twenty unrolled halvings decides some points, and at
    every knot and next to it the segment, density and Ψ_0, Ψ_1 are still numpy's search and
    formula, bit for bit.  (The cases above reach windows of 2^10 at most.)"""
    from quantbook.derive import sample_kernels

    rng = np.random.default_rng(14)
    src = Empirical(np.concatenate([rng.standard_normal(600_000), [1e9]]), knots=None)
    assert src._kernel_grid()[4] == sample_kernels.MAX_WIDTH
    xk = src._xk   # every knot and its neighbours: a halving that compares with the wrong knot shows
    pts = np.concatenate([xk, np.nextafter(xk, -np.inf), np.nextafter(xk, np.inf), [-np.inf, np.inf],
                          rng.uniform(xk[0], xk[-2], 20_000)])
    xc = np.clip(pts, xk[0], xk[-1])
    seg = np.clip(np.searchsorted(xk, xc, side="right") - 1, 0, xk.size - 2)
    np.testing.assert_array_equal(src._seg(pts), seg)
    np.testing.assert_array_equal(src.pdf(pts), np.where((pts >= xk[0]) & (pts < xk[-1]), src._dens[seg], 0.0))
    for k in (0, 1):
        np.testing.assert_array_equal(src.partial_moment(k, pts), src._Pk[k][seg] + src._dens[seg] * (
            xc ** (k + 1) - xk[seg] ** (k + 1)) / (k + 1) - src._P0[k])


def test_a_sample_too_uneven_for_the_kernels_grid_is_searched_by_numpy(monkeypatch):
    """A grid cell of 2^20 knots or more (millions of values and far outliers) is more than the
    kernel's halvings reach: the source then searches with numpy, with the same values (its
    block law's sums in numpy's order, not the kernel's)."""
    from quantbook.derive import block, sample_kernels

    rng = np.random.default_rng(13)
    x = rng.standard_normal(2000) + 0.5 * rng.exponential(1.0, 2000)
    fast = Empirical(x, knots=None)
    assert fast._kernel_grid() is not None   # built now, at the grid's real bound
    monkeypatch.setattr(sample_kernels, "MAX_WIDTH", 1)
    slow = Empirical(x, knots=None)
    assert slow._kernel_grid() is None
    pts = rng.uniform(-6.0, 6.0, 1000)
    np.testing.assert_array_equal(slow.pdf(pts), fast.pdf(pts))
    for k in (0, 1, 2):
        np.testing.assert_array_equal(slow.partial_moment(k, pts), fast.partial_moment(k, pts))
    mu_fast, mu_slow = (block.BlockMeasure(src, 16, "signed-absmax", 1) for src in (fast, slow))
    y = np.linspace(-1.0, 1.0, 33)
    np.testing.assert_allclose(mu_slow.dens(y), mu_fast.dens(y), rtol=1e-13)
    for k in (0, 1):
        np.testing.assert_allclose(mu_slow.T(k, y), mu_fast.T(k, y), rtol=1e-13, atol=1e-16)


@pytest.mark.parametrize("normalization", ["absmax", "signed-absmax"])
def test_a_samples_law_sums_its_nodes_as_the_table_does(normalization):
    """The block law of a sample sums ``c_j f(y m_j)`` over the nodes of M in its kernel; the
    same sums over the table of ``f(y m_j)``, each value from a direct integration of the
    density, agree within rounding (and with the kernel's values looked up one by one)."""
    rng = np.random.default_rng(12)
    src = Empirical(rng.standard_normal(400) + 0.8 * rng.exponential(1.0, 400), knots=None)
    mu = block_measure(src, 16, normalization, 1)
    y = np.concatenate([np.linspace(-1.0, 1.0, 11), [-0.999, 0.3333, 0.999]])
    m = mu.m
    ym = np.multiply.outer(y, m).ravel()
    for k in (0, 1):
        psi, psi_minus = (_psi_reference(src, k, v).reshape(y.size, m.size) for v in (ym, -ym))
        want = psi @ (mu._cp / m**k) + (-1) ** (k + 1) * psi_minus @ (mu._cm / m**k)
        np.testing.assert_allclose(mu.T(k, y), want, rtol=1e-13, atol=1e-15)
    g = _pdf_reference(src, ym).reshape(y.size, m.size)
    g_minus = _pdf_reference(src, -ym).reshape(y.size, m.size)
    want = np.where(np.abs(y) < 1, g @ (mu._cp * m) + g_minus @ (mu._cm * m), 0.0)
    np.testing.assert_allclose(mu.dens(y), want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("normalization", ["absmax", "signed-absmax"])
def test_a_samples_law_gives_its_mass_and_density_in_one_pass(normalization, monkeypatch):
    """A Newton step of Lloyd's medians asks for a block law's mass and density at the same
    points, and a sample's kernel takes both in one pass over the nodes: at points inside, at
    ±1, beyond and NaN, they are the direct integration's (within rounding) and the two
    separate calls' (bit for bit), on the kernel and on numpy's search (a sample too uneven
    for the grid); the kernel's pairs in either order, and with Ψ_1 or the segment, are its
    single sums'."""
    from quantbook.derive import sample_kernels

    rng = np.random.default_rng(15)
    x = rng.standard_normal(400) + 0.8 * rng.exponential(1.0, 400)
    src = Empirical(x, knots=None)
    mu = block_measure(src, 16, normalization, 1)
    m = mu.m
    y = np.concatenate([np.linspace(-1.0, 1.0, 41), [-0.999, 0.3333, 0.999, -1.5, 2.0, np.nan]])
    t0, d = mu.T0_dens(y)
    inner = np.abs(y) < 1
    ym = np.multiply.outer(y[inner], m).ravel()
    psi, psi_minus = (_psi_reference(src, 0, v).reshape(-1, m.size) for v in (ym, -ym))
    g, g_minus = (_pdf_reference(src, v).reshape(-1, m.size) for v in (ym, -ym))
    np.testing.assert_allclose(t0[inner], psi @ mu._cp - psi_minus @ mu._cm, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(d[inner], g @ (mu._cp * m) + g_minus @ (mu._cm * m), rtol=1e-13, atol=1e-15)
    np.testing.assert_array_equal(d[~inner], 0.0)
    np.testing.assert_array_equal(t0, mu.T(0, y))
    np.testing.assert_array_equal(d, mu.dens(y))
    cum, d2 = mu.cum_dens(y)
    np.testing.assert_array_equal(cum, mu.cum(y))
    np.testing.assert_array_equal(d2, d)
    a, b = mu._cp, mu._cp * m
    for k, parts in [(0, [("psi", a), ("pdf", b)]), (0, [("pdf", b), ("psi", a)]), (1, [("psi", a / m), ("pdf", b)]),
                     (0, [("segment", a), ("psi", a)])]:
        for (what, c), got in zip(parts, src._node_sums_of(parts, k, y, m)):
            np.testing.assert_array_equal(got, src._node_sums(what, k, y, m, c))
    monkeypatch.setattr(sample_kernels, "MAX_WIDTH", 1)
    slow = block_measure(Empirical(x, knots=None, label="too uneven"), 16, normalization, 1)
    assert slow.source._kernel_grid() is None
    t0, d = slow.T0_dens(y)
    np.testing.assert_array_equal(t0, slow.T(0, y))
    np.testing.assert_array_equal(d, slow.dens(y))


def test_signed_absmax_std_and_ppf_match_blocks_normalised_by_hand():
    # y = x / x[argmax |x|] (the extreme value becomes +1) on normal blocks of 64
    d = BlockDistribution(64, "normal", "signed-absmax")
    x = np.random.default_rng(4).standard_normal((1 << 15, 64))
    y = x / np.take_along_axis(x, np.argmax(np.abs(x), axis=1)[:, None], axis=1)
    per_block = (y * y).mean(axis=1)
    assert abs(d.std() ** 2 + d.mean() ** 2 - per_block.mean()) < 4 * per_block.std() / math.sqrt(per_block.size)
    assert d.std() == math.sqrt(d.var())
    for p in (0.1, 0.5, 0.9):
        assert d.ppf(p) == pytest.approx(np.quantile(y, p), abs=2e-3)


def test_a_cached_measures_arrays_are_read_only():
    """The measures are cached and shared by every later derivation of the same law: a caller
    that changed one's atoms in place (``atoms_w *= 2``) changed what every later caller got."""
    from quantbook.derive.scaled import scaled_measure

    measures = [block_measure("normal", 64), block_measure("normal", None, "none"),
                scaled_measure("normal", 16, "e4m3", tensor_size=2**16), scaled_measure("normal", 32, "nested", 2)]
    for m in measures:
        arrays = {k: v for k, v in vars(m).items() if isinstance(v, np.ndarray) and not k.startswith("_")}
        assert arrays, type(m).__name__
        for name, a in arrays.items():
            assert not a.flags.writeable, (type(m).__name__, name)
    with pytest.raises(ValueError, match="read-only"):
        measures[0].atoms_w *= 2
    assert measures[2].atoms_x.size > 0   # the block of the tensor's maximum
