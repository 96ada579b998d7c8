"""Exact derivation and evaluation under a scale rule (quantbook.derive.scaled).

Oracles: Monte Carlo with stated seeds -- the law of u = x / (qmax s(M)) sampled with the
scale rule's own float32 arithmetic (quantbook.scales, checked against torchao in
test_scales.py), and whole tensors quantized by quantbook.quantize (byte-identical to torchao
for E2M1); tolerances are 4 standard errors (or the KS 0.1 % critical value).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import quantbook
from quantbook.derive import Recipe, derive_from_recipe, evaluate, lloyd, quantile, solve_lloyd
from quantbook.derive.scaled import ScaledBlockDistribution, scaled_measure
from quantbook.derive.sources import parse_source
from quantbook.scales import get_rule, rule_names


def _sample_u(rule, B, n_blocks, seed, qmax=6.0, tensor_amax=None):
    """One value per block (independent draws) of u = x / (qmax s(M)), the value's block
    drawn as B standard normals."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_blocks, B), dtype=np.float32)
    m = np.abs(x).max(axis=1)
    r = get_rule(rule)
    t = None if tensor_amax is None else r.tensor_scale(tensor_amax, qmax)
    if t is not None:
        m = np.minimum(m, np.float32(tensor_amax))
    s = r.scale(m, qmax, t).astype(np.float64)
    return x[:, 0] / (qmax * s)


@pytest.mark.parametrize("rule,B,amax", [("e8m0:floor", 32, None), ("e8m0:rceil", 32, None),
                                         ("float16", 32, None), ("e4m3", 16, 5.3)])
def test_law_matches_monte_carlo(rule, B, amax):
    n = 1 << 20
    u = np.sort(_sample_u(rule, B, n, seed=11, tensor_amax=amax))
    d = ScaledBlockDistribution(B, "normal", rule, tensor_amax=amax)
    lo, hi = d.support()
    assert u.min() >= lo - 1e-6 and u.max() <= hi + 1e-6
    # the extreme values crowd near |u| = 1 (float16: within 2**-12): a finer grid there
    ends = np.linspace(0.98 * hi, hi, 2001)
    grid = np.unique(np.concatenate([np.linspace(lo, hi, 4001), ends, -ends]))
    F = np.interp(u, grid, d.cdf(grid))
    i = np.arange(1, n + 1)
    ks = max(np.max(i / n - F), np.max(F - (i - 1) / n))
    assert ks < 1.95 / math.sqrt(n)  # KS 0.1 % critical value
    for k in (1, 2):
        mc = u**k
        assert abs(mc.mean() - d.moment(k)) < 4 * mc.std() / math.sqrt(n)
    assert d.moment(0) == pytest.approx(1.0, abs=1e-12)


def test_rvs_is_the_law_it_samples():
    """rvs under a tensor maximum draws blocks given M <= G, as the law is conditioned: inside
    the support, and the cdf within 4 standard errors; sizes as scipy's."""
    d = ScaledBlockDistribution(16, "normal", "e4m3", tensor_amax=3.0)
    u = d.rvs(1 << 20, random_state=1)
    lo, hi = d.support()
    assert lo <= u.min() and u.max() <= hi
    for y in (-0.9, 0.1, 0.5, 1.0):
        p = float(d.cdf(y))
        assert abs((u <= y).mean() - p) < 4 * math.sqrt(p * (1 - p) / u.size)
    assert d.rvs((2, 3), random_state=0).shape == (2, 3)
    for one in ((), None):      # one value, a numpy float, as scipy's
        assert type(d.rvs(one, random_state=0)) is np.float64
    for bad in (2.5, "5", (2, -1)):
        with pytest.raises(ValueError, match="size must be"):
            d.rvs(bad)
    e8 = ScaledBlockDistribution(32, "normal", "e8m0:floor")
    assert (e8.cdf(-np.inf), e8.sf(np.inf), e8.cdf(np.inf), e8.sf(-np.inf)) == (0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize("rule", ["e4m3", "fouroversix:6"])
def test_rvs_under_the_tensor_scales_phase_is_the_law_it_samples(rule):
    """A two-level rule with no tensor maximum given: the law averages the tensor scale over its
    phase, and rvs draws one phase a block; the law's cdf (quadrature) and moments hold the
    draws within 4 standard errors (2^22 draws: the phase shows past |u| = 1, where a block's
    maximum lands when its scale rounds down; a fixed phase is 5.6-9 errors off there).  With
    tensor_size the law models whole tensors, which rvs does not draw: it says so."""
    d = ScaledBlockDistribution(16, "normal", rule)
    u = d.rvs(1 << 22, random_state=2)
    lo, hi = d.support()
    assert lo <= u.min() and u.max() <= hi
    for y in (-1.03, -0.4, 0.05, 0.98, 1.02, 1.03, 1.04):
        p = float(d.cdf(y))
        assert abs((u <= y).mean() - p) < 4 * math.sqrt(p * (1 - p) / u.size)
    for k in (1, 2):
        assert abs((u**k).mean() - d.moment(k)) < 4 * (u**k).std() / math.sqrt(u.size)
    with pytest.raises(ValueError, match="rvs with tensor_size: quantize whole tensors instead"):
        ScaledBlockDistribution(16, "normal", rule, tensor_size=1 << 12).rvs(16)


@pytest.mark.parametrize("B,rule,amax", [(16, "e4m3", None), (32, "e8m0:floor", None), (16, "e4m3", 3.0)])
def test_the_scaled_law_has_the_scipy_methods_of_the_block_law(B, rule, amax):
    """logpdf/logcdf/logsf are the logs of pdf/cdf/sf (-inf outside the support), isf inverts
    sf from the upper tail (where ppf(1 - q) loses digits), median is ppf(1/2); NaN in, NaN
    out; no atoms."""
    d = ScaledBlockDistribution(B, "normal", rule, tensor_amax=amax)
    lo, hi = d.support()
    y = np.linspace(lo, hi, 41)[1:-1]
    with np.errstate(divide="ignore"):
        for name, base in (("logpdf", "pdf"), ("logcdf", "cdf"), ("logsf", "sf")):
            assert np.allclose(getattr(d, name)(y), np.log(getattr(d, base)(y)), rtol=1e-15, atol=0), name
            assert math.isnan(getattr(d, name)(np.nan)) and type(getattr(d, name)(0.2)) is np.float64
    assert d.logcdf(lo - 1) == -np.inf and d.logsf(hi + 1) == -np.inf and d.logpdf(hi + 1) == -np.inf
    q = np.array([1e-9, 1e-4, 0.02, 0.3, 0.5, 0.8, 0.999])
    x = d.isf(q)
    # sf(isf(q)) is q to the solver's tolerance in x (1e-15 relative) and sf's own rounding
    # (a difference of two partial masses of order 1)
    err = np.abs(d.sf(x) - q)
    assert np.all(np.diff(x) < 0) and np.all(err <= 1e-12 * q + 2e-15 * np.maximum(1, np.abs(x)) * d.pdf(x) + 2e-16)
    assert np.allclose(x[2:], d.ppf(1 - q[2:]), rtol=0, atol=1e-10)
    assert (d.isf(0.0), d.isf(1.0)) == (hi, lo) and np.isnan(d.isf([-0.1, 1.1, np.nan])).all()
    assert d.median() == float(d.ppf(0.5))
    assert d.atoms[0].size == d.atoms[1].size == 0


def _mc_mse(cb, B, rule, n, tensors, seed):
    """Per-block mean squared and absolute errors of whole tensors quantized by quantbook.quantize."""
    rng = np.random.default_rng(seed)
    sq, ab, per_tensor = [], [], []
    for _ in range(tensors):
        x = rng.standard_normal(n, dtype=np.float32)
        p, st = quantbook.quantize(x, cb, B, scale=rule, backend="cpu")
        d = x.astype(np.float64) - quantbook.dequantize(p, st, backend="cpu").astype(np.float64)
        sq.append((d * d).reshape(-1, B).mean(1))
        ab.append(np.abs(d).reshape(-1, B).mean(1))
        per_tensor.append((d * d).mean())
    return np.concatenate(sq), np.concatenate(ab), np.array(per_tensor)


# every registered rule of the scaled layout with a 1-D law (the searches' laws are not 1-D;
# nested statistics have their own tests in test_scale_nested.py)
LAW_RULES = [n for n in rule_names() if get_rule(n).layout == "scaled" and not n.startswith("search:")]


@pytest.mark.parametrize("rule", LAW_RULES)
def test_expected_errors_match_quantize(rule):
    """MSE and MAE of E2M1 and of the rule's own Lloyd code, within 4 standard errors of
    quantize() on 2**20 N(0, 1) values (seed 5).  A two-level rule is evaluated given the
    tensor's maximum (tensor_amax), the one tensor scale the sample has."""
    B = 32
    for cb in (quantbook.get("e2m1"), lloyd(4, B, scale=rule)):
        sq, ab, _ = _mc_mse(cb, B, rule, 1 << 20, 1, seed=5)
        two_level = get_rule(rule).tensor_scale(1.0, 6.0) is not None
        g = float(np.abs(np.random.default_rng(5).standard_normal(1 << 20, dtype=np.float32)).max())
        ev = evaluate(cb, B, scale=rule, tensor_amax=g if two_level else None)
        assert abs(sq.mean() - ev.mse_weight) < 4 * sq.std() / math.sqrt(sq.size), (cb.name, sq.mean(), ev.mse_weight)
        assert abs(ab.mean() - ev.mae_weight) < 4 * ab.std() / math.sqrt(ab.size), (cb.name, ab.mean(), ev.mae_weight)


def test_nvfp4_tensor_models_match_quantize():
    B, n = 16, 1 << 16
    cb = quantbook.get("e2m1")
    sq, _, per_tensor = _mc_mse(cb, B, "e4m3", n, 24, seed=3)
    ev = evaluate(cb, B, scale="e4m3", tensor_size=n)
    assert abs(per_tensor.mean() - ev.mse_weight) < 4 * per_tensor.std(ddof=1) / math.sqrt(per_tensor.size)
    # one tensor, its own maximum: blocks given M <= G
    rng = np.random.default_rng(8)
    x = rng.standard_normal(1 << 20, dtype=np.float32)
    p, st = quantbook.quantize(x, cb, B, scale="e4m3", backend="cpu")
    d = (x.astype(np.float64) - quantbook.dequantize(p, st, backend="cpu")) ** 2
    blocks = d.reshape(-1, B).mean(1)
    ev = evaluate(cb, B, scale="e4m3", tensor_amax=float(np.abs(x).max()))
    assert abs(blocks.mean() - ev.mse_weight) < 4 * blocks.std() / math.sqrt(blocks.size)


def test_the_tensor_size_model_holds_the_block_of_the_maximum():
    """Under tensor_size=n one block in n/B holds the tensor's maximum G, with atoms at
    ±G/σ(G): against 400 Laplace tensors of 256 values quantized by quantize (seed 3), within
    4 standard errors.  Leaving that block out (all blocks i.i.d. given M <= G) is 9 standard
    errors low here."""
    B, n, T = 16, 256, 400
    cb = quantbook.get("nf4")
    x = np.asarray(parse_source("laplace").rvs(T * n, random_state=np.random.default_rng(3)), np.float32)
    x = x.reshape(T, n)
    per_tensor = []
    for row in x:   # numpy: the cpu backend builds a step table for each tensor scale
        p, st = quantbook.quantize(row, cb, B, scale="e4m3", backend="numpy")
        per_tensor.append(((row.astype(np.float64) - quantbook.dequantize(p, st, backend="numpy")) ** 2).mean())
    ev = evaluate(cb, B, source="laplace", scale="e4m3", tensor_size=n)
    se = np.std(per_tensor, ddof=1) / math.sqrt(T)
    assert abs(np.mean(per_tensor) - ev.mse_weight) < 4 * se
    d = ScaledBlockDistribution(B, "laplace", "e4m3", tensor_size=n)
    ax, aw = d.atoms
    assert np.allclose(np.abs(ax), 1.0, atol=1e-6) and math.isclose(aw.sum(), B / n / B, rel_tol=1e-12)
    jump = d.cdf(1 + 1e-6) - d.cdf(1 - 1e-6)
    assert aw[ax > 0].sum() <= jump < aw[ax > 0].sum() + 1e-4
    assert math.isclose(d.moment(0), 1.0, rel_tol=1e-12)


@pytest.mark.parametrize("source", ["normal", "student-t:5"])
@pytest.mark.parametrize("rule", ["e4m3", "fouroversix:6"])
def test_a_tensor_of_one_block_has_the_absmax_law(source, rule):
    """tensor_size=B: the one block holds G and its scale maps G to the table's end, so the
    law is bitsandbytes' absmax law (quantbook.derive.block, another code path), up to the
    quadrature over G (3e-7 relative) and σ(G)'s float32 rounding."""
    cb = quantbook.get("nf4")
    ev = evaluate(cb, 16, source=source, scale=rule, tensor_size=16)
    ref = evaluate(cb, 16, source=source)
    assert math.isclose(ev.mse_weight, ref.mse_weight, rel_tol=2e-6)
    assert math.isclose(ev.mae_weight, ref.mae_weight, rel_tol=2e-6)


def test_the_tensor_size_law_inverts_across_its_atoms():
    d = ScaledBlockDistribution(16, "normal", "e4m3", tensor_size=32)
    ax, aw = d.atoms
    top = float(d.cdf(1 - 1e-6))
    q = np.concatenate([np.linspace(1e-6, 1 - 1e-6, 501), top + aw[ax > 0].cumsum() * np.array([0.5] + [1.0] * 3)])
    x = d.ppf(q)
    assert np.all(d.cdf(x) >= q - 1e-15) and np.all(np.diff(x[:501]) >= 0)
    xi = d.isf(1 - q)
    assert np.all(d.sf(xi) <= 1 - q + 1e-15)
    with pytest.raises(ValueError, match="whole number of blocks"):
        ScaledBlockDistribution(16, "normal", "e4m3", tensor_size=40)
    # the recipe's qmax reaches the rule (fouroversix takes 6 only)
    assert lloyd(4, 16, scale="fouroversix:4", tensor_size=32).recipe["tensor_size"] == 32


def test_heavy_tails_need_the_tensor_maximum():
    """Under student-t:3 only a tensor's own maximum places the E4M3 grid: the uniform-phase
    model (a maximum above every block) is refused, and the tensor_amax model matches whole
    tensors quantized by quantbook.quantize."""
    B, nu = 16, 3.0
    cb = quantbook.get("e2m1")
    with pytest.raises(ValueError, match="tensor_size=N"):
        evaluate(cb, B, source="student-t:3", scale="e4m3")
    with pytest.raises(ValueError, match="tensor_size=N"):
        ScaledBlockDistribution(B, "student-t:3", "e4m3")
    rng = np.random.default_rng(12)
    x = (rng.standard_t(nu, 1 << 20) / math.sqrt(nu / (nu - 2))).astype(np.float32)  # unit variance
    p, st = quantbook.quantize(x, cb, B, scale="e4m3", backend="cpu")
    d = (x.astype(np.float64) - quantbook.dequantize(p, st, backend="cpu")) ** 2
    blocks = d.reshape(-1, B).mean(1)
    ev = evaluate(cb, B, source="student-t:3", scale="e4m3", tensor_amax=float(np.abs(x).max()))
    assert abs(blocks.mean() - ev.mse_weight) < 4 * blocks.std() / math.sqrt(blocks.size)
    # light tails keep the default model
    assert evaluate(cb, B, source="student-t:10", scale="e4m3").mse_weight > 0


def test_layout_targets():
    """Derived 4-bit codes against E2M1 in its own layout, exactly and by quantbook.quantize."""
    for rule, B, target in (("e4m3", 16, 0.30), ("e8m0:floor", 32, 0.20)):
        best = lloyd(4, B, scale=rule)
        e2m1 = quantbook.get("e2m1")
        exact = evaluate(best, B, scale=rule).mse_weight / evaluate(e2m1, B, scale=rule).mse_weight
        assert exact < 1 - target
        sq_b, _, _ = _mc_mse(best, B, rule, 1 << 20, 1, seed=2)
        sq_e, _, _ = _mc_mse(e2m1, B, rule, 1 << 20, 1, seed=2)
        assert sq_b.mean() / sq_e.mean() < 1 - target


@pytest.mark.parametrize("rule", ["e4m3", "e8m0:floor", "float16"])
def test_lloyd_levels_are_stationary_under_monte_carlo(rule):
    """Each free level is the weighted centroid of its cell (the necessary condition), checked
    on sampled blocks: weight s(M)**2, cells by nearest level of the table."""
    B = 16 if rule == "e4m3" else 32
    cb = lloyd(4, B, scale=rule)
    lv = cb.levels
    assert lv[0] == -1 and lv[-1] == 1 and np.all(np.abs(lv) <= 1)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1 << 17, B))
    m = np.abs(x).max(axis=1)
    r = get_rule(rule)
    t = None
    if rule == "e4m3":  # uniform phase: t = c 2**phi, i.e. blocks scaled by 2**-phi at t = c
        f = 2.0 ** -rng.random(m.size)
        x, m = x * f[:, None], m * f
        t = r.tensor_scale(64.0, 6.0)
    sig = 6.0 * r.scale(m, 6.0, t).astype(np.float64)
    u = (x / sig[:, None]).ravel()
    w = np.repeat(sig**2, B)
    j = np.clip(np.searchsorted((lv[1:] + lv[:-1]) / 2, u), 0, lv.size - 1)
    for i in range(1, lv.size - 1):
        if lv[i] == 0:
            continue
        sel = j == i
        c = np.sum(w[sel] * u[sel]) / np.sum(w[sel])
        se = np.sqrt(np.sum(w[sel] ** 2 * (u[sel] - c) ** 2)) / np.sum(w[sel])
        assert abs(c - lv[i]) < 5 * se + 1e-4


def test_no_scale_is_todays_law():
    a = solve_lloyd(4, 32, "l2")
    b = solve_lloyd(4, 32, "l2", scale="float32")
    assert np.array_equal(a.codebook.levels, b.codebook.levels)
    assert a.codebook.recipe == b.codebook.recipe and "scale" not in a.codebook.recipe
    e = evaluate(quantbook.get("nf4"), 64)
    assert e == evaluate(quantbook.get("nf4"), 64, scale="float32")
    assert "scale" not in e.to_dict()


def test_recipes_round_trip():
    cb = lloyd(4, 16, scale="e4m3")
    assert cb.recipe["scale"] == "e4m3" and cb.recipe["qmax"] == 6.0
    assert np.array_equal(derive_from_recipe(cb.recipe).levels, cb.levels)
    q = quantile(4, 32, scale="e8m0")
    assert q.recipe["scale"] == "e8m0:floor"
    assert np.array_equal(Recipe.from_dict(q.recipe).derive().levels, q.levels)
    assert np.all(np.abs(q.levels) <= 1)
    old = {"method": "lloyd", "bits": 4, "block_size": 64, "loss": "l2", "domain": "weight",
           "normalization": "absmax", "source": "normal", "fixed": [-1.0, 0.0, 1.0]}
    assert Recipe.from_dict(old).scale is None


@pytest.mark.parametrize("kwargs,match", [
    (dict(scale="search:4over6"), "not a function of the block maximum"),
    (dict(scale="e9m9"), "unknown scale rule"),
    (dict(scale="e4m3", fixed="0"), "must include -1 and 1"),
    (dict(scale="e4m3", normalization="signed-absmax", fixed="-1,0,1"), "normalization must be absmax"),
    (dict(qmax=4.0), "only with a rule of the scaled layouts"),
    (dict(scale="e8m0", tensor_size=1000), "no tensor scale"),
    (dict(scale="e4m3", qmax=-1.0), "qmax"),
])
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lloyd(4, 32, **kwargs)


def test_evaluate_bad_inputs():
    cb = quantbook.get("e2m1")
    with pytest.raises(ValueError, match="only with a rule of the scaled layouts"):
        evaluate(cb, 32, tensor_size=100)
    with pytest.raises(ValueError, match="give tensor_amax or tensor_size"):
        evaluate(cb, 16, scale="e4m3", tensor_amax=5.0, tensor_size=100)
    with pytest.raises(ValueError, match="no tensor scale"):
        scaled_measure("normal", 32, "e8m0", tensor_amax=5.0)


def test_block_distribution_shorthand():
    from quantbook.derive import block_distribution

    d = block_distribution(32, "normal", scale="e8m0:floor")
    assert d.support() == pytest.approx((-4 / 3, 4 / 3))
    assert float(d.cdf(0.0)) == pytest.approx(0.5, abs=1e-12)
    assert float(d.ppf(d.cdf(0.3))) == pytest.approx(0.3, abs=1e-9)
    assert type(block_distribution(32, "normal", scale="float32")).__name__ == "BlockDistribution"
    with pytest.raises(ValueError, match="only with a rule of the scaled layouts"):
        block_distribution(32, qmax=4.0)


@pytest.mark.parametrize("scale", [None, "float32", "nested"])
def test_layout_options_are_refused_by_name_outside_the_scaled_layouts(scale):
    """One check serves the library and the command line: it names the options given, and
    only those; under a scaled rule it passes them."""
    from quantbook.scales import check_scaled_only, get_rule

    rule = None if scale is None else get_rule(scale)
    with pytest.raises(ValueError, match=r"^tensor_size applies only with a rule of the scaled layouts"):
        check_scaled_only(rule, qmax=False, tensor_size=True)
    with pytest.raises(ValueError, match=r"^--qmax and --tensor-size apply only with"):
        check_scaled_only(rule, **{"--qmax": True, "--tensor-size": True})
    check_scaled_only(rule, qmax=False)
    for name in ("e4m3", "e8m0:floor", "float16", "search:ggml"):
        check_scaled_only(get_rule(name), qmax=True, tensor_size=True)


def test_qmax_without_a_scale_rule_is_an_error_not_ignored():
    import quantbook
    from quantbook.derive import evaluate

    with pytest.raises(ValueError, match="only with a rule of the scaled layouts"):
        evaluate(quantbook.get("nf4"), 64, qmax=3.0)


@pytest.mark.parametrize("rule, B", [("float16", 32), ("e4m3", 16)])
def test_gauss_rule_matches_the_sum_over_pieces(monkeypatch, rule, B):
    """Inside (-r, r), where no piece clips, the sum over the pieces is replaced by a Gauss
    rule of the discrete law of σ (module docstring, "Speed"): the expected errors must equal
    those of the plain sum to 1e-10 relative (the sum's own rounding is about 1e-12)."""
    import quantbook.derive.scaled as S

    S._cached.cache_clear()
    assert scaled_measure("normal", B, rule, weight_power=2)._fast is not None
    cbs = [quantbook.get(n) for n in ("e2m1", "nf4", "iq4_nl")]
    fast = [evaluate(cb, B, scale=rule) for cb in cbs]
    monkeypatch.setattr(S, "_GAUSS_NODES", ())
    S._cached.cache_clear()
    try:
        assert scaled_measure("normal", B, rule, weight_power=2)._fast is None
        slow = [evaluate(cb, B, scale=rule) for cb in cbs]
    finally:
        S._cached.cache_clear()
    for f, s in zip(fast, slow):
        assert f.mse_weight == pytest.approx(s.mse_weight, rel=1e-10)
        assert f.mae_weight == pytest.approx(s.mae_weight, rel=1e-10)
        assert f.mse_normalized == pytest.approx(s.mse_normalized, rel=1e-10)


def test_nested_law_in_evaluate_and_lloyd_agrees_with_bulk_monte_carlo():
    """evaluate / lloyd under scale="nested" against bitsandbytes' layout run by the numpy
    reference on 2**21 N(0,1) values (seed 5): within 4 standard errors (per 256-block group)."""
    import quantbook as qb
    from quantbook.derive import evaluate, lloyd

    x = np.random.default_rng(5).standard_normal(1 << 21).astype(np.float32)

    def mc(cb):
        p, s = qb.quantize(x, cb, 64, nested=True, backend="numpy")
        e = (qb.dequantize(p, s, backend="numpy").astype(np.float64) - x) ** 2
        g = e.reshape(-1, 64 * 256).mean(axis=1)
        return g.mean(), g.std(ddof=1) / np.sqrt(g.size)

    nf4 = qb.get("nf4")
    derived = lloyd(4, 64, scale="nested")
    for cb in (nf4, derived):
        mean, se = mc(cb)
        assert abs(evaluate(cb, 64, scale="nested").mse_weight - mean) < 4 * se
    assert mc(derived)[0] < mc(nf4)[0]


def test_scaled_law_cache_survives_being_emptied():
    """The law's cache of values outside the Gauss rule's range is emptied when it grows past
    4096 entries; values asked again right after must still be there (they were looked up
    before the cache was emptied, and raised KeyError)."""
    mu = scaled_measure("normal", 16, "e4m3", 6.0, 0)
    r = mu._fast[0]                                      # beyond it, values are summed and cached
    y = np.linspace(r, mu.hi, 3001)[1:]
    first = mu.T(0, y)
    mu.T(0, np.linspace(r, mu.hi, 2999)[1:])             # the cache now holds more than 4096 values
    both = mu.T(0, np.concatenate([y, np.linspace(r, mu.hi, 2997)[1:]]))   # known and new ones at once
    assert np.allclose(both[:y.size], first, rtol=1e-14, atol=0)


def test_a_tensor_smaller_than_a_block_is_refused():
    """Its tensor-scale bytes would be spread over part of a block (tensors of 2 values at
    B = 16 gave 20.5 bits a weight)."""
    from quantbook import get
    from quantbook.derive import evaluate, lloyd

    for call in (lambda: evaluate(get("nf4"), 64, scale="e4m3", tensor_size=10),
                 lambda: lloyd(4, 16, scale="e4m3", tensor_size=2),
                 lambda: ScaledBlockDistribution(16, "normal", "e4m3", tensor_size=8)):
        with pytest.raises(ValueError, match="holds less than one block of"):
            call()
    assert evaluate(get("nf4"), 64, scale="e4m3", tensor_size=64).mse_weight > 0   # one block: fine


@pytest.mark.parametrize("rule", ["e4m3", "e8m0:floor", "float16", "search:4over6"])
def test_a_code_declared_wider_than_4_bits_counts_the_4_the_layout_stores(rule):
    """quantize() stores a 16-entry code in nibbles whatever width it declares: the bytes it
    writes are the oracle for what evaluate and the search's Monte Carlo count."""
    from quantbook.derive import evaluate_search
    from quantbook.model.evaluate import storage_bits

    nf4 = quantbook.get("nf4")
    wide = quantbook.Codebook(levels=nf4.levels, bits=8, name="nf4-in-a-byte")
    n, B = 1 << 16, 32
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    p, st = quantbook.quantize(x, wide, B, scale=rule, backend="numpy")
    stored = (storage_bits(p, st) - 8 * get_rule(rule).tensor_bytes) / n
    if get_rule(rule).deterministic:
        got = [evaluate(c, B, scale=rule).bits_per_weight for c in (wide, nf4)]
    else:
        got = [evaluate_search(c, B, rule, samples=4096)["bits_per_weight"] for c in (wide, nf4)]
    assert got == [stored, stored]


def test_float16_scales_under_a_heavy_tail_leave_out_only_blocks_that_do_not_matter():
    """float16 scales overflow for block maxima beyond about 65520·qmax, which quantize()
    refuses.  Under student-t:5 such blocks carry about 1e-16 of E[M²]: the law leaves them out
    and matches quantize's Monte Carlo (2**21 values, seed 4, 4 standard errors over blocks).
    Under student-t:3 they carry about 1e-5 of it: an error that says so."""
    B, rule = 32, "float16"
    cb = quantbook.get("nf4")
    from quantbook.derive.sources import parse_source

    x = np.asarray(parse_source("student-t:5").rvs(1 << 21, random_state=np.random.default_rng(4)), np.float32)
    p, st = quantbook.quantize(x, cb, B, scale=rule, backend="numpy")
    d = x.astype(np.float64) - quantbook.dequantize(p, st, backend="numpy").astype(np.float64)
    sq = (d * d).reshape(-1, B).mean(1)
    ev = evaluate(cb, B, source="student-t:5", scale=rule)
    assert abs(sq.mean() - ev.mse_weight) < 4 * sq.std() / math.sqrt(sq.size)
    with pytest.raises(ValueError, match=r"float16 scales overflow for block maxima beyond 393120 \(qmax 6\).*"
                                         r"student-t:3 at B=32 such blocks carry about 1.6e-05 of E\[M\*\*2\]"):
        evaluate(cb, B, source="student-t:3", scale=rule)


def test_nested_statistics_report_no_qmax():
    """Nested statistics map each block to ±1 (bitsandbytes' layout): no qmax to report (null)."""
    d = evaluate(quantbook.get("nf4"), 64, scale="nested").to_dict()
    assert d["scale"] == "nested" and d["qmax"] is None
    assert evaluate(quantbook.get("nf4"), 32, scale="e8m0:floor").to_dict()["qmax"] == 6.0


def test_moments_of_the_mxfp4_law_match_blocks_scaled_by_hand():
    # y = x / (qmax · 2**(floor(log2 M) - emax)) with emax = floor(log2 6) = 2 (OCP MX v1.0, 6.3), on normal
    # blocks of 32: the law's mean, variance and standard deviation against the sample's
    d = ScaledBlockDistribution(32, "normal", "e8m0:floor")
    x = np.random.default_rng(3).standard_normal((1 << 15, 32))
    m = np.abs(x).max(axis=1).astype(np.float32)
    y = x / (6.0 * 2.0 ** (np.floor(np.log2(m)) - 2))[:, None]
    per_block = (y * y).mean(axis=1)   # blocks are independent; values within one are not
    se = per_block.std() / math.sqrt(per_block.size)
    assert d.mean() == 0.0 and abs(y.mean()) < 4 * y.mean(axis=1).std() / math.sqrt(per_block.size)
    assert abs(d.var() - per_block.mean()) < 4 * se
    assert d.std() == math.sqrt(d.var())
    assert repr(d) == "<ScaledBlockDistribution normal, B=32, e8m0:floor, qmax=6>"
