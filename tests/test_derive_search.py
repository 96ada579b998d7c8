"""Lloyd codes under scale-search rules, fitted on samples (quantbook.derive.search_lloyd).

References: quantbook.quantize (the layout's own search) on the same or an independent
sample, and the exact derivation (lloyd(..., scale="e4m3")) for a search with one target.
Samples are N(0, 1) from numpy.random.default_rng(seed); tolerances are stated per test.
"""

import re
from fractions import Fraction

import numpy as np
import pytest

import quantbook as q
from quantbook.derive import lloyd, search_block_errors, search_lloyd, solve_search_lloyd

N = 2**18


@pytest.fixture(scope="module")
def fitted():
    return solve_search_lloyd(4, 16, "search:4over6", samples=N, seed=3)


def _block_mse(x, cb, scale):
    p, st = q.quantize(x, cb, 16, scale=scale, backend="numpy")
    d = (q.dequantize(p, st, backend="numpy").astype(np.float64) - x) ** 2
    return d.reshape(-1, 16).mean(axis=1)


def test_shape_and_fixed_levels(fitted):
    lv = np.asarray(fitted.codebook.levels)
    assert lv.size == 16 and np.all(np.diff(lv) > 0)
    assert {-1.0, 0.0, 1.0} <= set(lv.tolist())
    assert fitted.converged and fitted.params["seed"] == 3 and fitted.params["samples"] == N


def test_loop_error_is_the_layouts_error(fitted):
    # the in-loop search must pick as quantbook.quantize does: same sample, same error
    # (float32 decoding in both; 1e-6 relative covers summation order)
    x = np.random.default_rng(3).standard_normal(N).astype(np.float32)
    assert _block_mse(x, fitted.codebook, "search:4over6").mean() == pytest.approx(fitted.mse, rel=1e-6)


def test_local_optimum_by_the_oracle(fitted):
    # moving any free level by ±0.01 must not lower the layout's MSE on the fitting sample
    # by more than 1e-4 relative (the stopping rule leaves at most ~1e-5)
    x = np.random.default_rng(3).standard_normal(N).astype(np.float32)
    lv = np.asarray(fitted.codebook.levels)
    base = _block_mse(x, fitted.codebook, "search:4over6").mean()
    for j in (1, 4, 8, 12, 14):
        for d in (-0.01, 0.01):
            m = lv.copy()
            m[j] += d
            cb = q.Codebook(levels=m, bits=4, name="probe", source="test")
            assert _block_mse(x, cb, "search:4over6").mean() > base * (1 - 1e-4), (j, d)


def test_against_e2m1_and_the_e4m3_code_on_an_independent_sample(fitted):
    # paired differences on 2**20 fresh values: E2M1 must be worse by 3 standard errors; the
    # e4m3 Lloyd code is within ~1e-4 relative of the optimum under the search, below what
    # 2**18 fitting values resolve, so it only must not be better by 3 standard errors
    x = np.random.default_rng(11).standard_normal(2**20).astype(np.float32)
    ref = _block_mse(x, fitted.codebook, "search:4over6")
    for cb, sign in (("e2m1", 1), (lloyd(4, 16, scale="e4m3"), -1)):
        d = _block_mse(x, cb, "search:4over6") - ref
        se = d.std(ddof=1) / np.sqrt(d.size)
        assert (d.mean() > 3 * se) if sign > 0 else (d.mean() > -3 * se), cb


def test_one_target_search_matches_the_exact_derivation():
    # search with the single target 1 is the e4m3 rule: the sample code must agree with the
    # exact one for tensors of 2**16 values; 0.006 is ~2.5x the largest deviation seen over
    # seeds 0..3 at 2**20 values (Monte-Carlo error plus the stopping rule)
    ex = np.asarray(lloyd(4, 16, scale="e4m3", tensor_size=2**16).levels)
    got = np.asarray(search_lloyd(samples=2**20, seed=0, scale="search:e4m3@1", tensor_size=2**16).levels)
    assert np.abs(got - ex).max() < 0.006


def test_reproducible_bit_for_bit():
    a = search_lloyd(samples=2**14, seed=5, max_iter=5).levels
    b = search_lloyd(samples=2**14, seed=5, max_iter=5).levels
    c = search_lloyd(samples=2**14, seed=6, max_iter=5).levels
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_l1_runs_and_keeps_order():
    r = solve_search_lloyd(samples=2**14, seed=1, loss="l1", max_iter=5)
    lv = np.asarray(r.codebook.levels)
    assert np.all(np.diff(lv) > 0) and r.mse > 0 and r.params["loss"] == "l1"


@pytest.mark.parametrize("kw, msg", [
    (dict(scale="e4m3"), "needs a search rule"),
    (dict(samples=1000), "multiple of block_size"),
    (dict(samples=2**12, tensor_size=3 * 16), "multiple of tensor_size"),
    (dict(loss="l3"), "loss must be"),
    (dict(bits=5), "bits must be"),
    (dict(seed=-1), "seed must be"),
    (dict(fixed=(0,)), "fixed must hold"),
    (dict(samples=2**31), "more than"),
])
def test_bad_input(kw, msg):
    with pytest.raises(ValueError, match=msg):
        search_lloyd(**{"samples": 2**12, **kw})


@pytest.mark.parametrize("kw, msg", [
    (dict(bits=99), "bits must be"), (dict(block_size=1), "at least 2"), (dict(samples=-5), "samples must be"),
    (dict(scale="bogus"), "unknown scale rule"), (dict(source="bogus"), "unknown source"),
    (dict(fixed=(5.0,)), r"\[-1, 1\]"), (dict(fixed=("a",)), "fixed levels must be numbers: entry 0 is 'a'"),
    (dict(tol="x"), "tol must be"),
])
def test_a_recipe_is_checked_when_made(kw, msg):
    """A recipe that exists has valid parameters: made directly or read from JSON."""
    from quantbook.derive.recipes import Recipe, RecipeError, SearchLloydRecipe

    with pytest.raises(ValueError, match=msg):
        SearchLloydRecipe(**kw)
    with pytest.raises(RecipeError):
        Recipe.from_dict({**SearchLloydRecipe().to_dict(), **kw})


def test_the_recipe_re_derives_the_code_bit_for_bit():
    from quantbook.derive import solve_search_lloyd
    from quantbook.derive.recipes import derive_from_recipe

    cb = solve_search_lloyd(4, 16, "search:4over6", samples=2**16, seed=3).codebook
    assert cb.recipe["method"] == "search-lloyd" and cb.recipe["samples"] == 2**16
    again = derive_from_recipe(cb.recipe)
    assert np.array_equal(again.levels.view(np.int64), cb.levels.view(np.int64))


def test_ggml_search_in_the_loop():
    """ggml's search (signed scale, codes chosen with the least-squares scale): the loop's error
    is the layout's error on the fitting sample; the fitted code beats the float16 Lloyd code
    it starts from under the same search on an independent sample (paired, 3 SE); the recipe
    re-derives it bit for bit."""
    from quantbook.derive.recipes import derive_from_recipe

    r = solve_search_lloyd(4, 32, "search:ggml", samples=2**17, seed=5, fixed=(-1,), qmax=127, max_iter=15)
    lv = np.asarray(r.codebook.levels)
    assert lv[0] == -1 and lv.size == 16 and np.all(np.diff(lv) > 0)
    x = np.random.default_rng(5).standard_normal(2**17).astype(np.float32)

    def err(x, cb):
        p, st = q.quantize(x, cb, 32, scale="search:ggml", qmax=127)
        return (q.dequantize(p, st).astype(np.float64) - x) ** 2

    assert err(x, r.codebook).mean() == pytest.approx(r.mse, rel=1e-6)
    y = np.random.default_rng(6).standard_normal(2**20).astype(np.float32)
    start = lloyd(4, 32, scale="float16", qmax=127)
    d = err(y, start) - err(y, r.codebook)
    assert d.mean() > 3 * d.std() / np.sqrt(d.size)
    again = derive_from_recipe(r.codebook.recipe)
    assert np.array_equal(again.levels.view(np.int64), r.codebook.levels.view(np.int64))


def test_a_source_without_the_moment_has_an_infinite_monte_carlo_error(capsys, tmp_path):
    """As evaluate() says for the exact laws: Student-t with ν ≤ 2 has no finite expected
    squared error (ν ≤ 1: absolute), and a sample's mean (46 ± 25 for ν = 1) does not estimate
    it.  The command line printed that mean, and crashed on the missing SQNR."""
    import math

    from quantbook import get
    from quantbook.cli import main
    from quantbook.derive import evaluate_search

    for nu, mae_finite in ((1.0, False), (1.5, True), (3.0, True)):
        ev = evaluate_search(get("nf4"), 64, "search:4over6", samples=1 << 14, source=f"student-t:{nu}")
        assert (ev["mse_weight"] == math.inf) == (nu <= 2) and math.isfinite(ev["mae_weight"]) == mae_finite
        assert (ev["sqnr_db"] is None) == (nu <= 2)
    assert main(["evaluate", "nf4", "--source", "student-t:1", "--scale", "search:4over6", "--samples", "16384"]) == 0
    out = capsys.readouterr().out
    assert "MSE  weight inf" in out and "SQNR undefined dB" in out
    (tmp_path / "d.npy").mkdir()
    assert main(["evaluate", "nf4", "--source", str(tmp_path / "d.npy")]) == 2
    assert "is a directory, not a sample file" in capsys.readouterr().err


def test_default_samples_come_in_whole_blocks():
    """A block size (or tensor size) that does not divide the default sample rounds it up; a
    sample given is taken as given (and checked)."""
    from quantbook.derive.search_lloyd import EVAL_SAMPLES, FIT_SAMPLES, default_samples, evaluate_search

    assert default_samples(None, FIT_SAMPLES, 48) == 10**7 + 32 and default_samples(None, FIT_SAMPLES, 64) == 10**7
    assert default_samples(None, EVAL_SAMPLES, 16, tensor_size=3 * 2**10) == 1366 * 3 * 2**10
    assert default_samples(4096, EVAL_SAMPLES, 48) == 4096
    assert evaluate_search(q.get("nf4"), 48, "search:4over6")["samples"] == -(-EVAL_SAMPLES // 48) * 48
    with pytest.raises(ValueError, match="samples=4096 must be a positive multiple of block_size=48"):
        evaluate_search(q.get("nf4"), 48, "search:4over6", samples=4096)


def test_a_fit_without_a_sample_draws_the_default_in_whole_blocks(monkeypatch, capsys):
    """No sample given: the fit draws the default (here made small), rounded up to whole
    blocks, the same values as that sample given explicitly; on the command line too (the
    docs' `derive lloyd --scale search:4over6` without --samples).  It drew rvs(None), a
    single value, and failed on it with a TypeError."""
    import importlib
    import json

    from quantbook.cli import main

    # the module, not the function of the same name that quantbook.derive exports
    monkeypatch.setattr(importlib.import_module("quantbook.derive.search_lloyd"), "FIT_SAMPLES", 3000)
    whole = -(-3000 // 48) * 48
    got = solve_search_lloyd(4, 48, "search:4over6", max_iter=3)
    given = solve_search_lloyd(4, 48, "search:4over6", samples=whole, max_iter=3)
    assert got.params["samples"] == whole
    assert got.codebook.levels.tolist() == given.codebook.levels.tolist() and got.mse == given.mse
    assert main(["derive", "lloyd", "--scale", "search:4over6", "-B", "48", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"]["samples"] == whole


@pytest.mark.parametrize("kwargs, msg", [
    (dict(block_size=0), "block_size must be an integer >= 2"),                 # was ZeroDivisionError
    (dict(block_size=16.0), "block_size must be an integer >= 2"),
    (dict(n=40), "x.size=40 must be a positive multiple of block_size=16"),   # was a reshape error
    (dict(n=0), "x.size=0 must be a positive multiple of block_size=16"),
    (dict(tensor_size=24), "tensor_size must be a positive multiple of block_size=16"),
    (dict(tensor_size=48), "x.size=64 must be a positive multiple of tensor_size=48"),
])
def test_search_block_errors_checks_its_sizes(kwargs, msg):
    from quantbook.derive import search_block_errors

    x = np.random.default_rng(0).standard_normal(kwargs.pop("n", 64)).astype(np.float32)
    args = dict(block_size=16, tensor_size=None) | kwargs
    with pytest.raises(ValueError, match=re.escape(msg)):
        search_block_errors([-1, 0, 0.5, 1], args["block_size"], "search:4over6", x, tensor_size=args["tensor_size"])


def test_search_errors_take_a_codebook_and_refuse_a_name():
    from quantbook.derive import evaluate_search, search_block_errors

    e2m1 = q.get("e2m1")
    x = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    # a Codebook was a TypeError from float(); it is its levels
    got = search_block_errors(e2m1, 16, "search:4over6", x)
    want = search_block_errors(e2m1.levels, 16, "search:4over6", x)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    with pytest.raises(ValueError, match=r"evaluate_search needs a Codebook .*quantbook\.get\('e2m1'\)"):
        evaluate_search("e2m1", 16, "search:4over6", samples=4096)   # was "could not convert string to float"


def test_evaluate_search_names_itself_for_a_deterministic_rule():
    """It said "search_lloyd needs a search rule"; the exact alternative is evaluate's."""
    from quantbook.derive import evaluate_search

    with pytest.raises(ValueError, match=r"^evaluate_search needs a search rule .*got 'e4m3'; .*"
                                         r"evaluate\(codebook, block_size, scale=RULE\)$"):
        evaluate_search(q.get("e2m1"), 16, "e4m3", samples=4096)


@pytest.mark.parametrize("rule", ["search:4over6", "search:ggml"])
def test_search_block_errors_measure_the_table_quantize_stores(rule):
    # c·(qmax/peak) and (c/peak)·qmax round to different float32 values for this entry (found by a search
    # of random codes); the errors must be those of quantize's own table: the layout's errors of values it
    # decoded itself (zero for every block under ggml's search), summed in float64 (1e-12 relative)
    peak, c, qmax = 1.4554425309821815, 0.10035150660286198, 3.4280803203582764
    lv = np.array([-peak, -0.7, -3 * c, 0.0, c, 0.5, 0.9, peak])
    cb = q.Codebook(levels=lv, bits=3, name="probe", source="test")
    x0 = np.random.default_rng(0).standard_normal(16 * 256).astype(np.float32)
    x = q.dequantize(*q.quantize(x0, cb, 16, scale=rule, qmax=qmax, backend="numpy"), backend="numpy")
    d = q.dequantize(*q.quantize(x, cb, 16, scale=rule, qmax=qmax, backend="numpy"), backend="numpy") - x
    want = (d.astype(np.float64) ** 2).reshape(-1, 16).sum(axis=1)
    got = search_block_errors(lv, 16, rule, x, qmax=qmax)[0]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("narrow", [np.int8, np.uint8])
def test_a_narrow_numpy_integer_block_size_is_its_value(narrow):
    # 4096 // np.int8(16) overflows int8 under numpy 2's rules: the block size is read as a Python int
    from quantbook.derive import evaluate_search

    nf4 = q.get("nf4")
    assert np.array_equal(search_lloyd(block_size=narrow(16), samples=4096, max_iter=1).levels,
                          search_lloyd(block_size=16, samples=4096, max_iter=1).levels)
    assert evaluate_search(nf4, narrow(16), "search:4over6", samples=4096) == \
        evaluate_search(nf4, 16, "search:4over6", samples=4096)
    x = np.linspace(-1, 1, 256, dtype=np.float32)
    got, want = (search_block_errors(nf4, b, "search:4over6", x) for b in (narrow(16), 16))
    assert all(np.array_equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("bad", [0.5, np.float64(1.0), np.int8(1), Fraction(1, 3)])
def test_evaluate_search_refuses_a_number_for_a_codebook(bad):
    from quantbook.derive import evaluate_search

    with pytest.raises(ValueError, match="evaluate_search needs a Codebook or a sequence of levels"):
        evaluate_search(bad, 16, "search:4over6", samples=4096)


def test_search_block_errors_near_float32s_maximum_take_the_nearest_entry():
    # qmax 3e38: the float32 sum of the table's top neighbours overflows, and the search's own midpoints were
    # inf, so 2.6e38 went to 1.5e38 (not 3e38); the layout's encoder takes the nearest.  Independent errors:
    # the nearest entry of levels * (qmax / 6) in float64, the block's e8m0 scale being 1 (byte 127)
    qmax, levels = 3e38, np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6]) * np.array([[1], [-1]])
    table = (np.unique(levels) * (qmax / 6)).astype(np.float32).astype(np.float64)
    x = np.array([2.9e38, 2.6e38, -2.3e38, 1.8e38, 1.6e38, -1.3e38, 0.9e38, 0.3e38] * 2, np.float32)
    rule = "search:e8m0:floor@1"
    assert q.quantize(x, "e2m1", 16, scale=rule, qmax=qmax, backend="numpy")[1].absmax.tolist() == [127]
    d = np.abs(x.astype(np.float64)[:, None] - table[None, :])
    err = d.min(axis=1)
    assert (np.sort(d, axis=1)[:, 1] > err).all()          # no value half-way
    e2, e1 = search_block_errors(q.get("e2m1"), 16, rule, x, qmax=qmax)
    np.testing.assert_allclose([e2[0], e1[0]], [np.sum(err**2), np.sum(err)], rtol=1e-6)   # float32 differences


def test_search_block_errors_take_levels_in_any_order():
    # the levels as a Codebook stores its code (not ascending): the layout's errors all the same, the values
    # decoded by quantize itself (see the test above)
    lv = np.array([0.0, 0.5, 1.0, -0.25, -1.0, 0.25, -0.5, 0.75])
    cb = q.Codebook(levels=np.sort(lv), bits=3, name="probe", source="test")
    x = np.random.default_rng(1).standard_normal(16 * 64).astype(np.float32)
    d = q.dequantize(*q.quantize(x, cb, 16, scale="search:4over6", backend="numpy"), backend="numpy") - x
    want = (d.astype(np.float64) ** 2).reshape(-1, 16).sum(axis=1)
    np.testing.assert_allclose(search_block_errors(lv, 16, "search:4over6", x)[0], want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("qmax", [-6.0, 0.0, float("nan"), 1e39])
def test_search_block_errors_and_the_table_refuse_a_qmax_the_layout_refuses(qmax):
    # the table's rule checks qmax, once: ggml's search would take a negative one (a flipped table) in silence
    from quantbook.bulk.layouts import scaled_table

    x = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    for call in (lambda: search_block_errors([-1.0, 0.0, 1.0], 16, "search:ggml", x, qmax=qmax),
                 lambda: scaled_table([-1.0, 0.0, 1.0], qmax)):
        with pytest.raises(ValueError, match=r"^qmax \(the codebook's largest magnitude\) must be"):
            call()


def test_a_value_half_way_between_two_entries_goes_where_the_layout_sends_it():
    # under search:float16@1 the layout multiplies a block by float32(1/s), s its float16 scale (docs/scales.md):
    # with max 5.358, s = float16(5.358/6) and 0.66979986 scales to exactly 0.75, half-way between E2M1's 0.5
    # (code 1) and 1 (code 2); the layout sends it to the even code 2, and as 0.66979986 is not 0.75·s the two
    # entries are not equally far from it in the weight domain.  The fit's errors are quantize's own
    from quantbook.bulk.layouts import unpack_low_first
    from quantbook.derive import evaluate_search
    from quantbook.derive.sources import Source

    rule, e2m1 = "search:float16@1", q.get("e2m1")
    x = np.zeros(16, np.float32)
    x[:3] = [5.358, 0.66979986, -1.25]
    p, st = q.quantize(x, e2m1, 16, scale=rule, backend="numpy")
    s = np.float32(st.absmax.view(np.float16)[0])
    assert np.float32(x[1] * (np.float32(1) / s)) == np.float32(0.75) and float(x[1]) != 0.75 * float(s)
    assert unpack_low_first(p, 16)[1] == 2
    errors = q.dequantize(p, st, backend="numpy").astype(np.float64) - x
    assert abs(errors[1]) != abs(float(x[1]) - float(np.float32(0.5 * s)))   # the lower entry's error differs
    e2, e1 = search_block_errors(e2m1, 16, rule, x)
    np.testing.assert_allclose([e2[0], e1[0]], [np.sum(errors**2), np.sum(np.abs(errors))], rtol=1e-12, atol=0)
    # levels given as values are the Codebook of them, stored ascending: there 0.5 and 1 are codes 8 and 9,
    # and the tie goes to the lower (even) one, as quantize does
    sorted_cb = q.Codebook(levels=e2m1.levels, bits=4, name="sorted", source="test")
    d = q.dequantize(*q.quantize(x, sorted_cb, 16, scale=rule, backend="numpy"), backend="numpy") - x
    assert d[1] != errors[1]
    np.testing.assert_allclose(search_block_errors(e2m1.levels, 16, rule, x)[0], np.sum(d.astype(np.float64)**2),
                               rtol=1e-12, atol=0)

    class Blocks(Source):   # a sample that is this block over and over
        spec = "tie-blocks"

        def _rvs(self, shape, rng):
            return np.resize(x, shape)

    got = evaluate_search(e2m1, 16, rule, samples=64, source=Blocks())
    assert got["mse_weight"] == pytest.approx(np.mean(errors**2), rel=1e-12, abs=0)
    assert got["mae_weight"] == pytest.approx(np.mean(np.abs(errors)), rel=1e-12, abs=0)
