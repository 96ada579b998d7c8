"""Inputs of the derivation engine that used to give NaN/inf silently or a raw numpy/scipy
error: each now works or raises a one-line ValueError (SourceError for sources)."""

import importlib
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from quantbook import Codebook, get
from quantbook.derive import evaluate
from quantbook.derive.block import BlockDistribution, block_measure
from quantbook.derive.metrics import cell_errors, cell_probabilities
from quantbook.derive.sources import Empirical, Laplace, Normal, SourceError, StudentT


def _one_line(exc_info):
    msg = str(exc_info.value)
    assert msg and "\n" not in msg
    return msg


def test_empirical_rms_does_not_overflow_or_underflow():
    base = np.random.default_rng(5).standard_normal(5000)
    ref = Empirical(base)
    for scale in (1e200, 1e-200, 1e300):
        # the squares overflowed (inf RMS: "needs at least 2 distinct values") or underflowed
        # ("must not be all zeros")
        e = Empirical(base * scale)
        assert math.isclose(e.rms, ref.rms * scale, rel_tol=1e-13)
        assert np.allclose(e._xk, ref._xk, rtol=1e-12, atol=1e-12)
    # genuinely constant or zero samples keep their own messages
    with pytest.raises(SourceError, match="distinct") as ei:
        Empirical(np.full(10, 3e200))
    _one_line(ei)
    with pytest.raises(SourceError, match="zeros"):
        Empirical(np.zeros(10))
    # without standardisation the cubes in the partial moments would overflow
    with pytest.raises(SourceError, match="standardize") as ei:
        Empirical(base * 1e200, standardize=False)
    _one_line(ei)


@pytest.mark.parametrize("bad, what", [
    (np.array(["1.5", "2"]), "real numbers"), (np.array([1 + 1j, 2]), "real numbers"), ([1.0], "at least 2"),
    ([1.0, np.nan], "finite")])
def test_empirical_bad_samples(bad, what):
    with pytest.raises(SourceError, match=what) as ei:
        Empirical(bad)
    _one_line(ei)


def test_empirical_bad_knots():
    for knots in (1, 2.5, True):
        with pytest.raises(SourceError, match="knots"):
            Empirical([0.0, 1.0, 2.0], knots=knots)


@pytest.mark.parametrize("bad", [3, b"w.npy", ["w.npy"], Path("w.npy"), ""])
def test_empirical_label_is_a_str(bad):
    # the label is the source's spec, shown in names and JSON: any object was taken as it (and "" for none)
    with pytest.raises(SourceError, match=r"^label must be a non-empty str or None, got ") as ei:
        Empirical([0.0, 1.0, 2.0], label=bad)
    _one_line(ei)
    assert Empirical([0.0, 1.0, 2.0], label="w.npy").spec == "w.npy"
    assert Empirical([0.0, 1.0, 2.0]).spec.startswith("empirical:")


def test_evaluate_needs_a_codebook():
    # evaluate("nf4", 64) used to fail inside Codebook with "could not convert string to float"
    with pytest.raises(ValueError, match="Codebook") as ei:
        evaluate("nf4", 64)
    assert "get('nf4')" in _one_line(ei)
    for bad in (5, [[0.0, 1.0]], [], object()):
        with pytest.raises(ValueError, match="Codebook"):
            evaluate(bad, 64)
    for bad_b in (1, 64.0, None, "64"):
        with pytest.raises(ValueError, match="block size"):
            evaluate(get("nf4"), bad_b)
    with pytest.raises(ValueError, match="normalization"):
        evaluate(get("nf4"), 64, "normal", "max")
    # a plain sequence of levels is still a codebook
    assert evaluate([-1.0, 0.0, 1.0], 64).mse_weight == evaluate(Codebook([-1.0, 0.0, 1.0], bits=2), 64).mse_weight


def test_cell_integrals_validate_levels():
    mu = block_measure("normal", 64)
    for bad in ([0.5, -0.5], [0.0, np.nan], "ab", [[0.0]], []):
        with pytest.raises(ValueError) as ei:
            cell_errors(mu, bad, "l2")
        _one_line(ei)
        with pytest.raises(ValueError):
            cell_probabilities(mu, bad)
    with pytest.raises(ValueError, match="loss"):
        cell_errors(mu, [0.0, 1.0], "l3")


def test_orders_and_weight_powers_are_checked():
    for src in (Normal(), Laplace(), StudentT(5), Empirical([0.0, 1.0, 3.0])):
        for k in (3, -1, 1.5):
            with pytest.raises(ValueError, match="k = 0, 1, 2") as ei:  # was ValueError(3) / KeyError
                src.partial_moment(k, 1.0)
            _one_line(ei)
            with pytest.raises(ValueError, match="k = 0, 1, 2"):
                src.moment(k)
    # a fractional power was truncated to an integer without a word
    for wp in (1.5, 3, -1, "2"):
        with pytest.raises(ValueError, match="weight_power"):
            block_measure("normal", 64, "absmax", wp)
    d = BlockDistribution(64)
    with pytest.raises(ValueError, match="moment order"):
        d.moment(2.5)
    with pytest.raises(ValueError, match="callable"):
        d.expect(3)
    with pytest.raises(ValueError, match="lb <= ub"):
        d.expect(lb=0.5, ub=0.1)


def test_no_numpy_warnings_from_heavy_tails():
    # the Student-t density overflowed x² (a RuntimeWarning) far out in the quadrature
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert StudentT(2.5).pdf(1e300) == 0.0
        d = BlockDistribution(64, StudentT(1.0))
        assert np.all(np.isfinite(d.pdf(np.linspace(-0.99, 0.99, 9))))
        assert math.isfinite(d.var()) and d.var() > 0


@pytest.mark.parametrize("src", [Normal(), Laplace(), StudentT(3), StudentT(1.5),
                                 Empirical(np.random.default_rng(2).standard_normal(2000))])
def test_the_quantiles_and_partial_moments_of_a_source_check_their_arguments(src):
    """As pdf/cdf/ppf: NaN in, NaN out; no quantile of |X| for a probability outside [0, 1];
    a scalar gives a float; strings, bools and other orders are errors (abs_ppf(NaN) of the
    Student-t was 0.82, abs_isf(1.5) of the normal -0.67, partial_moment(0, '0.5') 0.19)."""
    for f in (src.abs_isf, src.abs_ppf):
        assert np.isnan(f(np.nan)) and np.isnan(f(1.5)) and np.isnan(f(-0.1))
        assert np.isnan(f([0.3, np.nan])).tolist() == [False, True]
        assert isinstance(f(0.3), float) and f(np.zeros((2, 3)) + 0.3).shape == (2, 3)
    assert np.isnan(src.abs_log_isf(0.5)) and np.isnan(src.abs_log_isf(np.nan))
    assert np.isnan(src.partial_moment(1, np.nan)) and isinstance(src.partial_moment(1, 0.3), float)
    for bad in (lambda: src.partial_moment(0, "0.5"), lambda: src.partial_moment(True, 1.0),
                lambda: src.partial_moment(2.0, 1.0), lambda: src.partial_moment(3, 1.0),
                lambda: src.abs_isf("0.5"), lambda: src.abs_ppf(None)):
        with pytest.raises(ValueError) as e:
            bad()
        _one_line(e)


def test_a_divergent_expectation_is_nan_not_the_last_sum():
    """∫ y² dt over Student-t(1.5) diverges: scipy's quadrature returns a finite (negative) sum
    with a warning; the expectation has no value.  Convergent ones are unchanged."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(BlockDistribution(None, "student-t:1.5", "none").expect(lambda y: y**2))
        assert math.isnan(BlockDistribution(None, "student-t:0.8", "none").expect(lb=0))
        assert math.isclose(BlockDistribution(None, "student-t:3", "none").expect(lambda y: y**2), 1.0,
                            rel_tol=1e-10)


@pytest.mark.parametrize("call", [
    lambda: evaluate(["-1", "0", "1"], 64), lambda: evaluate([False, True], 64),
    lambda: __import__("quantbook.derive", fromlist=["lloyd"]).lloyd(2, 64, fixed=["-1"]),
    lambda: __import__("quantbook.derive", fromlist=["lloyd"]).lloyd(2, 64, fixed=[True]),
    lambda: Codebook(levels=None, bits=2),
    lambda: BlockDistribution(64).expect(lb="a"), lambda: BlockDistribution(64).expect(ub=[1.0]),
    lambda: BlockDistribution(64).pdf([[0.1, 0.2], [0.3]]),
    lambda: evaluate(get("e2m1"), 16, scale="e4m3", tensor_amax=[3.0]),
    lambda: evaluate(get("e2m1"), 16, scale="e4m3", tensor_amax="3"),
], ids=["str-levels", "bool-levels", "str-fixed", "bool-fixed", "no-levels", "str-bound", "list-bound",
        "ragged", "list-tensor-amax", "str-tensor-amax"])
def test_what_is_not_a_number_is_refused_in_one_line(call):
    # each was read as a number ('-1' -> -1, True -> 1, '3' -> 3) or raised a raw TypeError
    with pytest.raises(ValueError) as e:
        call()
    _one_line(e)


def test_quadrature_trouble_other_than_divergence_still_warns():
    # reading quad's message (to tell a divergent integral) must not swallow its other warnings
    from scipy.integrate import IntegrationWarning

    with pytest.warns(IntegrationWarning, match="subdivisions"):
        BlockDistribution(None, "normal", "none").expect(lambda y: np.sin(1e3 * y))


def test_a_source_that_overrides_the_public_abs_isf_keeps_its_other_quantiles():
    from scipy import special

    from quantbook.derive.sources import Source

    class Halfnormal(Source):   # written before the hooks: public abs_isf only
        spec = "old-style"

        def abs_isf(self, s):
            return math.sqrt(2) * special.erfcinv(np.asarray(s, dtype=np.float64))

    src = Halfnormal()
    assert math.isclose(src.abs_ppf(0.5), Normal().abs_ppf(0.5), rel_tol=1e-15)
    assert math.isclose(src.abs_log_isf(-1.0), Normal().abs_log_isf(-1.0), rel_tol=1e-15)
    with pytest.raises(NotImplementedError, match="_partial_moment"):
        src.partial_moment(0, 1.0)


def test_the_nested_law_of_a_laplace_source_is_quiet():
    # its |X| quantile at G = 1 is log1p(-1): a divide warning the law does not use
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert evaluate(get("nf4"), 64, source="laplace", scale="nested").mae_weight > 0


@pytest.mark.parametrize("case", ["two adjacent floats", "adjacent floats in a sample", "coarsened"])
def test_a_samples_knots_never_coincide(case):
    """Voronoi midpoints of adjacent floats round onto a value or onto each other: no segment
    of the sample's cdf may then have zero width (an infinite density, NaN partial moments).
    Oracle: the density's mass over the segments is 1, and the first moment is the sample's
    mean within the Voronoi construction's spread."""
    u = np.spacing(1.0)
    rng = np.random.default_rng(3)
    x = {"two adjacent floats": np.array([1 + u, 1 + 2 * u]),
         "adjacent floats in a sample": np.concatenate([rng.standard_normal(500), 1 + u * np.arange(1, 6)]),
         "coarsened": np.concatenate([rng.standard_normal(5000), 1 + u * np.arange(1, 200)])}[case]
    src = Empirical(x, standardize=False, knots=64 if case == "coarsened" else None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.all(np.diff(src._xk) > 0) and np.all(np.isfinite(src._dens))
        assert np.sum(src._dens * np.diff(src._xk)) == pytest.approx(1.0, rel=1e-12)
        mean = src.partial_moment(1, np.inf) - src.partial_moment(1, -np.inf)
    assert math.isfinite(mean) and abs(mean - x.mean()) <= np.ptp(x) + 4 * u


def test_a_sample_spanning_too_many_magnitudes_is_refused():
    """Standardised, values from 1e-300 to 1e300 leave gaps so small that a segment's density
    overflows float64: a one-line SourceError, not infinite densities and NaN moments."""
    rng = np.random.default_rng(0)
    x = 10.0 ** rng.uniform(-300, 300, 2000) * rng.choice([-1, 1], 2000)
    with pytest.raises(SourceError, match="too close for its density in float64"):
        Empirical(x, knots=None)


def test_student_t_takes_a_number_and_points_a_string_to_parse_source():
    """float("5") read a string silently; spellings are parse_source's."""
    from quantbook.derive.sources import parse_source

    for bad, spelled in (("5", "student-t:5"), (" 5 ", "student-t:5"), (b"5", "student-t:NU")):
        with pytest.raises(SourceError) as info:
            StudentT(bad)
        msg = _one_line(info)
        assert msg.startswith(f"StudentT takes the degrees of freedom as a number, got the string {bad!r}")
        assert f"parse_source({spelled!r})" in msg
    assert parse_source("student-t:5").nu == StudentT(np.float64(5)).nu == StudentT(5).nu == 5.0


def test_parse_fixed_refuses_an_unknown_normalization():
    """"abs" was ignored (fixed levels checked against no range, defaults a KeyError)."""
    from quantbook.derive import parse_fixed

    for fixed in ("-1,0,1", (-1, 0, 1), None, "none"):
        with pytest.raises(ValueError, match="^normalization must be one of absmax, signed-absmax, none, got 'abs'$"):
            parse_fixed(fixed, "abs")
    assert parse_fixed(None, "signed-absmax") == (0.0, 1.0)


def test_a_path_object_source_is_a_sample_file_never_a_law(tmp_path, monkeypatch):
    """``source=Path("w.npy")`` is the file's sample, as the string spelling is (oracle:
    ``Empirical`` of the saved values); ``Path("normal")`` names a file, not the law."""
    from pathlib import Path

    from quantbook.derive.sources import Empirical, SourceError, parse_source

    monkeypatch.chdir(tmp_path)
    w = np.random.default_rng(4).standard_normal(3000).astype(np.float32)
    np.save("w.npy", w)
    for spec in (Path("w.npy"), tmp_path / "w.npy"):
        src = parse_source(spec)
        assert isinstance(src, Empirical)
        np.testing.assert_array_equal(src.cdf([-1.0, 0.0, 0.5]), Empirical(w).cdf([-1.0, 0.0, 0.5]))
    for spec, fragment in ((Path("normal"), "expected FILE.npy"), (Path("x.npy"), "no such sample file"),
                           (Path("student-t:5"), "expected FILE.npy")):
        with pytest.raises(SourceError, match=fragment):
            parse_source(spec)


def test_a_path_object_source_keeps_its_spaces(tmp_path):
    # the name as given: 's.npy ' is not the sample s.npy beside it
    from quantbook.derive.sources import parse_source

    np.save(tmp_path / "s.npy", np.arange(10.0))
    with pytest.raises(SourceError, match="expected FILE.npy"):
        parse_source(tmp_path / "s.npy ")


@pytest.mark.parametrize("derive", ["nf", "lloyd", "quantile", "uniform_symmetric", "search_lloyd"])
@pytest.mark.parametrize("bad", [0, False, "", {}])
def test_a_name_that_is_not_a_name_is_refused_not_replaced(derive, bad):
    # `name or default` took a falsy name (0, False, "", {}) for no name and named the codebook itself;
    # quantile's suffix then failed on it with a TypeError
    from quantbook.codebooks import CodebookError
    from quantbook.derive import lloyd, nf, quantile, search_lloyd
    from quantbook.derive.formats import uniform_symmetric

    f = {"nf": nf, "lloyd": lloyd, "quantile": quantile, "uniform_symmetric": uniform_symmetric,
         "search_lloyd": search_lloyd}[derive]
    kwargs = {"lloyd": dict(bits=2, block_size=16), "quantile": dict(bits=2, block_size=16),
              "search_lloyd": dict(samples=4096, max_iter=1)}.get(derive, {})
    with pytest.raises(CodebookError, match=r"^name must (be a string|not be empty)"):
        f(name=bad, **kwargs)
    assert f(name="mine", **kwargs).name == "mine"


@pytest.mark.parametrize("derive, work", [
    ("nf", "quantbook.derive.normal_float._nf"), ("lloyd", "quantbook.derive.lloyd._measure"),
    ("solve_lloyd", "quantbook.derive.lloyd._measure"), ("quantile", "quantbook.derive.lloyd._measure"),
    ("uniform_symmetric", "quantbook.derive.formats.UniformSymmetricRecipe"),
    ("search_lloyd", "quantbook.derive.lloyd._measure"), ("solve_search_lloyd", "quantbook.derive.lloyd._measure")])
@pytest.mark.parametrize("bad", [3, "", b"nf4"])
def test_a_bad_name_is_refused_before_the_work(monkeypatch, derive, work, bad):
    # the name was checked only by the Codebook built at the end, after the derivation's work (a minute for
    # search_lloyd()); it is refused first, with the Codebook's own error
    import quantbook.derive as D
    from quantbook.codebooks import Codebook, CodebookError
    from quantbook.derive.formats import uniform_symmetric

    with pytest.raises(CodebookError) as want:
        Codebook([0.0, 1.0], bits=1, name=bad)

    def ran(*args, **kwargs):
        raise AssertionError(f"{derive} did its work before checking its name")

    module, attr = work.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), attr, ran)   # quantbook.derive.lloyd is also a function
    f = uniform_symmetric if derive == "uniform_symmetric" else getattr(D, derive)
    with pytest.raises(CodebookError, match=f"^{re.escape(str(want.value))}$"):
        f(name=bad)
