"""Lloyd-Max and quantile codebooks against independent references.

References: J. Max (1960) Table I (printed values); a plain-numpy Lloyd iteration on the
normal density (closed-form centroids, 20000 iterations) for the exact optimum; Monte-Carlo
blocks (numpy, fixed seeds) for the block-model claims; the published AF4-64 table.
"""

import math

import numpy as np
import pytest
from scipy.special import ndtr

from quantbook import get
from quantbook.derive import derive_from_recipe, lloyd, quantile, solve_lloyd

MAX_PRINTED = {  # J. Max, IRE Trans. IT-6(1):7-12, 1960, Table I: positive levels and MSE (typed from the paper)
    2: ([0.7980], 0.3634),
    4: ([0.4528, 1.510], 0.1175),
    8: ([0.2451, 0.7560, 1.344, 2.152], 0.03454),
    16: ([0.1284, 0.3881, 0.6568, 0.9424, 1.256, 1.618, 2.069, 2.733], 0.009497),
}


def _plain_lloyd_normal(n):
    """Independent reference: classic Lloyd iteration for N(0,1) with closed-form centroids."""
    phi = lambda x: np.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    q = np.linspace(-2, 2, n)
    for _ in range(20000):
        t = np.concatenate([[-np.inf], (q[1:] + q[:-1]) / 2, [np.inf]])
        q = (phi(t[:-1]) - phi(t[1:])) / (ndtr(t[1:]) - ndtr(t[:-1]))
    t = np.concatenate([[-np.inf], (q[1:] + q[:-1]) / 2, [np.inf]])
    mse = 1 - np.sum(q**2 * (ndtr(t[1:]) - ndtr(t[:-1])))
    return q, mse


@pytest.mark.parametrize("n", [2, 4, 8, 16])
def test_max_1960(n):
    bits = int(math.log2(n))
    res = solve_lloyd(bits, None, "l2", normalization="none", source="normal", fixed=())
    ref, ref_mse = _plain_lloyd_normal(n)
    assert np.max(np.abs(res.codebook.levels - ref)) < 1e-9
    assert abs(res.loss_value - ref_mse) < 1e-12
    assert res.change <= 1e-10 and res.converged
    printed, printed_mse = MAX_PRINTED[n]
    ours = res.codebook.levels[n // 2:]
    unit = lambda v: 10.0 ** (np.floor(np.log10(np.abs(v))) - 3)  # noqa: E731  last of 4 significant digits
    # Max's printed digits hold to within 1.2 units of the last digit (0.7980 vs 0.797885) ...
    assert np.all(np.abs(ours - printed) <= 1.2 * unit(np.array(printed)))
    # ... and so does his error, except N = 16: 0.009497 printed, 0.0095010 exact (4 units)
    err_units = abs(res.loss_value - printed_mse) / unit(printed_mse)
    assert err_units <= (4.1 if n == 16 else 1.0), err_units
    if n == 2:
        assert abs(ours[0] - math.sqrt(2 / math.pi)) < 1e-14
        assert abs(res.loss_value - (1 - 2 / math.pi)) < 1e-14


def test_max_1960_known_print_differences():
    q16 = lloyd(4, None, "l2", normalization="none", fixed=()).levels[8:]
    assert round(q16[1], 4) == 0.3880 and round(q16[3], 4) == 0.9423  # Max printed 0.3881, 0.9424
    q2 = lloyd(1, None, "l2", normalization="none", fixed=()).levels[1]
    assert round(q2, 4) == 0.7979  # Max printed 0.7980


def _mc_blocks(B, n=2**20, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n // B, B))
    m = np.abs(x).max(axis=1, keepdims=True)
    return x / m, m


def _weight_errors(cb, y, m, power):
    q = cb.quantize(y.ravel()).reshape(y.shape)
    return (np.abs(y - q) * m) ** power


@pytest.mark.parametrize("B, loss, power", [(64, "l2", 2), (4096, "l1", 1)])
def test_lloyd_beats_nf4_in_its_objective_by_monte_carlo(B, loss, power):
    cb = lloyd(4, B, loss, "weight")
    y, m = _mc_blocks(B, seed=B)
    e_l = _weight_errors(cb, y, m, power).mean(axis=1)
    e_n = _weight_errors(get("nf4"), y, m, power).mean(axis=1)
    d = e_n - e_l  # paired, per block (blocks are independent)
    z = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    assert z > 5, z


def test_weight_domain_l2_levels_are_mc_centroids():
    B = 64
    cb = lloyd(4, B, "l2", "weight")
    y, m = _mc_blocks(B, n=2**21, seed=7)
    w = np.broadcast_to(m**2, y.shape).ravel()
    yv = y.ravel()
    idx = np.searchsorted(cb.thresholds, yv, side="left")
    for j in range(1, 15):
        if cb.levels[j] == 0.0:
            continue
        sel = idx == j
        c = np.sum(w[sel] * yv[sel]) / np.sum(w[sel])
        assert abs(c - cb.levels[j]) < 2e-3, (j, c, cb.levels[j])


def test_weight_domain_l1_levels_are_mc_weighted_medians():
    # weight-domain L1: each value's |error| is weighted by its block's scale M
    B = 256
    cb = lloyd(4, B, "l1", "weight")
    y, m = _mc_blocks(B, n=2**21, seed=9)
    w = np.broadcast_to(m, y.shape).ravel()
    yv = y.ravel()
    idx = np.searchsorted(cb.thresholds, yv, side="left")
    for j in (1, 5, 10, 14):
        sel = idx == j
        order = np.argsort(yv[sel])
        cw = np.cumsum(w[sel][order])
        med = yv[sel][order][np.searchsorted(cw, 0.5 * cw[-1])]
        assert abs(med - cb.levels[j]) < 2e-3, (j, med, cb.levels[j])
    # the weighting matters: the unweighted (normalised-domain) median code is measurably different
    assert np.max(np.abs(lloyd(4, B, "l1", "normalized").levels - cb.levels)) > 5e-3


def test_l1_normalized_levels_are_mc_medians():
    B = 64
    cb = lloyd(4, B, "l1", "normalized")
    y, _ = _mc_blocks(B, n=2**21, seed=8)
    yv = y.ravel()
    idx = np.searchsorted(cb.thresholds, yv, side="left")
    for j in (1, 4, 9, 14):
        med = np.median(yv[idx == j])
        assert abs(med - cb.levels[j]) < 2e-3


def test_af4_is_reproduced_by_yoshidas_construction_and_is_not_the_l1_optimum():
    af4 = get("af4")
    halves = lloyd(4, 64, "l1", "normalized", fixed=(-1, 0, 1), partition="halves")
    assert np.array_equal(np.round(halves.levels, 8), af4.levels)
    opt = lloyd(4, 64, "l1", "normalized")
    # Monte Carlo: the optimum has the lower expected L1 error of normalised values
    y, _ = _mc_blocks(64, seed=3)
    e_opt = np.abs(y - opt.quantize(y.ravel()).reshape(y.shape)).mean(axis=1)
    e_af4 = np.abs(y - af4.quantize(y.ravel()).reshape(y.shape)).mean(axis=1)
    d = e_af4 - e_opt
    assert d.mean() / (d.std(ddof=1) / math.sqrt(d.size)) > 5


def test_recipe_reproduces_bit_for_bit_and_is_deterministic():
    for kw in (dict(bits=4, block_size=64, loss="l1", domain="normalized"),
               dict(bits=3, block_size=256, loss="l2", normalization="signed-absmax", source="laplace"),
               dict(bits=4, block_size=32, loss="l2", symmetric=True, source="student-t:5")):
        cb = lloyd(**kw)
        again = derive_from_recipe(cb.recipe)
        assert again == cb
    q = quantile(4, 64)
    assert derive_from_recipe(q.recipe) == q


@pytest.mark.parametrize("bits", range(1, 9))
def test_every_bit_width_converges(bits):
    fixed = () if bits == 1 else None
    res = solve_lloyd(bits, 64, "l1", "weight", fixed=fixed)
    assert res.converged and res.change <= 1e-10
    assert res.codebook.n_levels == 2**bits


def test_symmetric_and_signed():
    cb = lloyd(4, 64, "l2", symmetric=True)
    assert cb.n_levels == 15 and np.allclose(cb.levels, -cb.levels[::-1], atol=0)
    sg = lloyd(4, 64, "l2", normalization="signed-absmax")
    assert 1.0 in sg.levels and 0.0 in sg.levels and -1.0 not in sg.levels and sg.n_levels == 16


def test_quantile_code_shares_levels_like_nf4_and_has_equal_mc_probabilities():
    cb = quantile(4, 64)
    assert np.sum(cb.levels < 0) == 7 and np.sum(cb.levels > 0) == 8  # -1 + 6 free, 7 free + 1
    y, _ = _mc_blocks(64, seed=11)
    yv = y.ravel()
    yv = yv[np.abs(yv) < 1]
    # free levels on the positive side sit at probabilities i/8 of the positive continuous part
    pos = yv[yv > 0]
    free_pos = cb.levels[(cb.levels > 0) & (cb.levels < 1)]
    frac = np.array([np.mean(pos <= v) for v in free_pos])
    assert np.allclose(frac, np.arange(1, 8) / 8, atol=3e-3)


def test_bad_arguments_of_lloyd():
    for kw in (dict(bits=0), dict(bits=9), dict(loss="l3"), dict(domain="x"), dict(normalization="max"),
               dict(block_size=1), dict(bits=1), dict(fixed=(2.0,)), dict(source="cauchy"),
               dict(symmetric=True, fixed=(0, 1)), dict(source="student-t:1.5")):
        with pytest.raises(ValueError):
            lloyd(**kw)


@pytest.mark.parametrize("kw", [
    dict(source="student-t:3", loss="l2", domain="weight"),  # E[M^2] finite but heavy
    dict(source="laplace", loss="l1", normalization="signed-absmax", fixed=()),  # atom at +1 in a free cell
    dict(source="normal", loss="l1", block_size=2, fixed=()),  # half the mass in the atoms
])
def test_harder_cases_converge(kw):
    args = dict(bits=3, block_size=256)
    args.update(kw)
    res = solve_lloyd(**args)
    assert res.converged and res.change <= 1e-10
    if kw.get("block_size") == 2:  # the atoms at -1 and +1 pin the outer levels (median of their cells)
        assert res.codebook.levels[0] == -1.0 and res.codebook.levels[-1] == 1.0


def test_quantile_without_normalisation_is_the_source_quantiles():
    # needs no moments: Cauchy (student-t:1, scale 1) levels at probabilities (i - 1/2)/8, whose
    # quantile function is tan(pi (p - 1/2))
    cb = quantile(3, None, normalization="none", source="student-t:1")
    want = np.tan(np.pi * ((np.arange(1, 9) - 0.5) / 8 - 0.5))
    np.testing.assert_allclose(cb.levels, want, rtol=1e-12)


# --------------------------------------------------------------------- bad inputs, budgets
def test_weight_domain_needs_a_finite_variance_for_every_code():
    # one rule for Lloyd (L1 and L2) and the quantile code: Student-t with nu <= 2 has no variance
    for fn, kw in ((quantile, dict(domain="weight")), (lloyd, dict(loss="l1")), (lloyd, dict(loss="l2"))):
        with pytest.raises(ValueError, match="variance"):
            fn(4, 64, source="student-t:1.5", **kw)


def _mc_quantile_fractions(cb, source_draw, B=64, n=2**20, seed=5):
    """Monte-Carlo fraction of the positive continuous part of y = x/absmax below each free
    positive level (for the default -1, 0, 1 fixed: 7 levels at i/8)."""
    x = source_draw(np.random.default_rng(seed), (n // B, B))
    y = (x / np.abs(x).max(axis=1, keepdims=True)).ravel()
    pos = y[(y > 0) & (y < 1)]
    free = cb.levels[(cb.levels > 0) & (cb.levels < 1)]
    return np.array([np.mean(pos <= v) for v in free])


@pytest.mark.parametrize("nu", [1.0, 0.5])
def test_quantile_code_of_heavy_tails_is_right_or_refused(nu):
    # the law of y has an unbounded density at 0 for nu <= 1: the levels must sit at their
    # probabilities (Monte Carlo) or the derivation must refuse; never levels at ±1e-23
    from quantbook.derive import DerivationError

    try:
        cb = quantile(4, 64, source=f"student-t:{nu:g}")
    except DerivationError:
        assert nu < 1
        return
    frac = _mc_quantile_fractions(cb, lambda rng, shape: rng.standard_t(nu, shape))
    assert np.allclose(frac, np.arange(1, 8) / 8, atol=4e-3), frac


def test_no_converged_claim_without_a_full_finite_table():
    # nu slightly above 2: the block quadrature is delicate; a result must have all 16 levels,
    # a finite loss, and "converged" must agree with the reported change
    try:
        res = solve_lloyd(4, 64, source="student-t:2.05")
    except ValueError:
        return
    assert res.codebook.n_levels == 16 and math.isfinite(res.loss_value) and math.isfinite(res.change)
    assert res.converged == (res.change <= 1e-10)


def test_a_broken_block_law_is_an_error_not_a_table():
    from quantbook.derive import DerivationError
    from quantbook.derive.sources import Normal

    class BrokenTails(Normal):  # partial moments that turn NaN, as an overflowing quadrature would
        spec = "broken-tails"

        def partial_moment(self, k, x):
            x = np.asarray(x, dtype=np.float64)
            return np.where(np.abs(x) > 2.5, np.nan, super().partial_moment(k, x))

    for fn in (solve_lloyd, quantile):
        with pytest.raises(DerivationError, match="non-finite"):
            fn(4, 64, source=BrokenTails())


def test_budget_stops_with_a_warning():
    from quantbook.derive import LloydWarning

    with pytest.warns(LloydWarning, match="iteration budget"):
        res = solve_lloyd(6, 4096, "l1", source="laplace", max_iter=1)
    assert not res.converged and res.iterations == 1 and res.codebook.n_levels == 64
    with pytest.warns(LloydWarning, match="time budget"):
        res = solve_lloyd(3, 64, max_time=1e-9)
    assert not res.converged and res.iterations == 0 and res.change > 1e-10
    for bad in (dict(max_iter=-1), dict(max_time=0), dict(tol=0.0), dict(max_iter=2.5)):
        with pytest.raises(ValueError):
            solve_lloyd(3, 64, **bad)


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_8_bit_codes_for_huge_blocks_converge_in_seconds(loss):
    # the equal-probability start left Newton stalled here for hundreds of slow Lloyd steps
    import time

    t = time.perf_counter()
    res = solve_lloyd(8, 10**7, loss, max_time=120)
    assert res.converged and res.change <= 1e-10 and res.codebook.n_levels == 256
    assert time.perf_counter() - t < 40  # about 1 s on an idle core; generous for shared CI


@pytest.mark.parametrize("loss", ["l1", "l2"])
def test_8_bit_gaussian_quantizer_meets_closed_form_conditions(loss):
    # independent reference: N(0,1) cell centroids (phi(a) - phi(b))/(Phi(b) - Phi(a)) and
    # medians ndtri((Phi(a) + Phi(b))/2), with the cells bounded by the midpoints
    from scipy.special import ndtri

    q = lloyd(8, None, loss, normalization="none", fixed=()).levels
    t = np.concatenate([[-np.inf], (q[1:] + q[:-1]) / 2, [np.inf]])
    phi = lambda x: np.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    if loss == "l2":
        want = (phi(t[:-1]) - phi(t[1:])) / (ndtr(t[1:]) - ndtr(t[:-1]))
    else:
        want = ndtri(0.5 * (ndtr(t[:-1]) + ndtr(t[1:])))
    inner = np.abs(q) < 3  # the outer cells' conditions lose digits to 1 - Phi(t) cancellation here
    assert np.max(np.abs(want - q)[inner]) < 1e-9


def test_fixed_levels_from_a_string_or_a_clear_error():
    assert lloyd(4, 64, fixed="-1, 0, 1") == lloyd(4, 64, fixed=(-1, 0, 1)) == lloyd(4, 64)
    assert quantile(4, 64, fixed="none").recipe["fixed"] == []
    for bad, words in (("-1,0,x", "comma-separated"), ("-", "comma-separated"), (5, "sequence"),
                       ((0, float("nan")), "finite"), ("0,2", r"\[-1, 1\]")):
        with pytest.raises(ValueError, match=words):
            lloyd(4, 64, fixed=bad)


def test_the_newton_correction_is_the_dense_systems_solution():
    """Lloyd's Newton step solves ``(I - J) d = r`` on the free levels as a tridiagonal system;
    numpy's dense solve of the same system agrees within rounding."""
    import sys

    from quantbook.derive.block import block_measure
    lloyd_module = sys.modules["quantbook.derive.lloyd"]

    mu = block_measure("normal", 64, "absmax", 2)
    q = np.sort(np.concatenate([[-1.0, 0.0, 1.0], np.random.default_rng(4).uniform(-0.98, 0.98, 61)]))
    free = ~np.isin(q, [-1.0, 0.0, 1.0])
    new, J = lloyd_module.lloyd_step(mu, q, free, "l2", want_jac=True)
    fi = np.flatnonzero(free)
    assert np.count_nonzero(np.triu(J, 2)) == 0 and np.count_nonzero(np.tril(J, -2)) == 0
    r = (q - new)[fi]
    want = np.linalg.solve(np.eye(fi.size) - J[np.ix_(fi, fi)], r)
    np.testing.assert_allclose(lloyd_module.newton_correction(J, fi, r), want, rtol=1e-12, atol=1e-15)


_ON_BLAS_THREADS = """
import numpy as np
from quantbook.derive import BlockDistribution, lloyd
y = np.linspace(-0.999, 0.999, 20001)
for a in (lloyd(8, 64).levels, lloyd(8, 64, scale="nested").levels,
          BlockDistribution(64, "normal", "absmax").pdf(y)):
    print(a.tobytes().hex())
"""


def test_a_derived_code_does_not_depend_on_blas_threads():
    """An 8-bit code's Newton steps (a 253-level system) and a law's values at 20001 points were
    rounded by how many threads OpenBLAS split them over (LAPACK's blocked solve, BLAS's
    matrix-vector products): one thread and four give the same bits."""
    import os
    import subprocess
    import sys

    out = []
    for threads in ("1", "4"):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        r = subprocess.run([sys.executable, "-c", _ON_BLAS_THREADS], capture_output=True, text=True, env=env,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        out.append(r.stdout.split())
    assert len(out[0]) == 3
    for what, a, b in zip(("lloyd(8, 64)", "nested", "pdf"), *out):
        assert a == b, what


def test_a_non_finite_newton_system_gives_a_non_finite_correction():
    """Lloyd takes the plain step where the correction is not finite: a NaN in the Jacobian
    gives a NaN correction, as numpy's dense solve of the same system does, not an error."""
    import sys

    lloyd_module = sys.modules["quantbook.derive.lloyd"]
    J = np.diag([0.2, np.nan, 0.3]) + np.diag([0.1, 0.1], 1) + np.diag([0.1, 0.1], -1)
    r = np.array([1e-3, -2e-3, 5e-4])
    fi = np.arange(3)
    with np.errstate(invalid="ignore"):
        want = np.linalg.solve(np.eye(3) - J, r)
        got = lloyd_module.newton_correction(J, fi, r)
    assert not np.all(np.isfinite(want)) and not np.all(np.isfinite(got))


def test_bad_fixed_levels_are_named_on_one_line():
    """A masked entry among the fixed levels is named (the generic message hid it, over three
    lines), a table of them is shown on one line, and a number as given."""
    masked = np.ma.masked_array([-1.0, 0.0, 1.0], mask=[False, True, False])
    with pytest.raises(ValueError, match=r"^fixed levels is a masked array with 1 masked entry"):
        lloyd(4, 64, fixed=masked)
    with pytest.raises(ValueError, match=r"^fixed levels must be a sequence of numbers or a string like '-1,0,1', "
                                         r"got array\(\[\[0\., 0\., 0\.\], \[0\.") as info:
        lloyd(4, 64, fixed=np.zeros((40, 3)))
    assert len(str(info.value)) < 200
    with pytest.raises(ValueError, match=r"^fixed levels must be a sequence of numbers, got 5$"):
        lloyd(4, 64, fixed=5)
    with pytest.raises(ValueError, match=r"^fixed levels must be finite, got array\(\[-inf, ") as info:
        lloyd(4, 64, fixed=np.concatenate([[-np.inf], np.zeros(100)]))
    assert "\n" not in str(info.value) and len(str(info.value)) < 200
    # out of range and unparsable: a long table or string is clipped too (either ran to megabytes)
    with pytest.raises(ValueError, match=r"^fixed levels must lie in \[-1, 1\] under absmax, got \[-2\.0, ") as info:
        lloyd(4, 64, fixed=np.linspace(-2.0, 2.0, 10**5))
    assert "\n" not in str(info.value) and len(str(info.value)) < 200
    with pytest.raises(ValueError, match=r"^fixed levels must be comma-separated numbers like -1,0,1") as info:
        lloyd(4, 64, fixed="-1,0,x" + ",1" * 10**5)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_a_singular_newton_system_falls_back_to_the_plain_step(monkeypatch):
    """Where ``I - J`` is singular Lloyd takes the plain step, and plain steps still reach the
    code Newton's steps reach."""
    import sys

    lloyd_module = sys.modules["quantbook.derive.lloyd"]
    want = lloyd(3, 64).levels

    def singular(*args):
        raise np.linalg.LinAlgError("singular matrix")

    monkeypatch.setattr(lloyd_module, "newton_correction", singular)
    np.testing.assert_allclose(lloyd(3, 64).levels, want, atol=1e-10)


def test_a_level_set_is_stepped_once(monkeypatch):
    """Where Newton's correction fits the trust region, the full step and the step clipped to it
    are the same levels.  A Lloyd step of a sample's law costs hundreds of launches of its kernel,
    and the second gave the same residual, which could not be better: each level set is stepped
    once, and the code still converges.  (A 1000-value sample: a rough density, where Newton's
    full step seldom halves the residual.)"""
    import sys

    from quantbook.derive.sources import Empirical

    lloyd_module = sys.modules["quantbook.derive.lloyd"]
    stepped, step = [], lloyd_module.lloyd_step

    def recording(mu, levels, *args, **kwargs):
        stepped.append(np.asarray(levels, dtype=np.float64).tobytes())
        return step(mu, levels, *args, **kwargs)
    monkeypatch.setattr(lloyd_module, "lloyd_step", recording)
    res = solve_lloyd(4, 64, "l2", source=Empirical(np.random.default_rng(0).standard_normal(1000)))
    assert res.converged and res.iterations < 60   # all in Newton's phase, which never steps a set again
    assert len(stepped) > res.iterations and len(set(stepped)) == len(stepped)
