"""Scale rules (quantbook.scales): float8 conversions against ml_dtypes, E8M0 against the OCP MX
definition computed independently with math.frexp, costs against the formats' published
bits per weight, and s(M) against its own breakpoints."""

import math

import numpy as np
import pytest

import quantbook
from quantbook.scales import FAMILIES, ScaleRule, get_rule, rule_names
from quantbook.scales.e4m3 import e4m3_bits, e4m3_round, e4m3_value
from quantbook.scales.e8m0 import e8m0_value
from quantbook.scales.floats import bf16_bits, bf16_value

from gpu_cases import usable_backend

try:
    import ml_dtypes
except ImportError:  # only the ml_dtypes cross-checks need it
    ml_dtypes = None
_need_ml = pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes is not installed")


def test_registry_and_names():
    assert {"float32", "float16", "bfloat16", "e4m3", "e8m0", "nested", "search"} <= set(FAMILIES)
    for name in rule_names():
        assert get_rule(name).name == name
    assert get_rule("e8m0").name == "e8m0:floor"
    with pytest.raises(ValueError, match="already registered"):
        class Dup(ScaleRule, family="e4m3"):
            pass


@pytest.mark.parametrize("name,block,bpw", [("e4m3", 16, 4.5), ("e8m0:floor", 32, 4.25),
                                            ("float16", 32, 4.5), ("float32", 64, 4.5),
                                            ("search:4over6", 16, 4.5)])
def test_a_scale_rule_s_bits_per_weight(name, block, bpw):
    # NVFP4 4.5, MXFP4 4.25 (OCP MX v1.0), ggml IQ4_NL 4.5, bitsandbytes NF4 at 64: 4.5
    assert get_rule(name).bits_per_weight(block) == bpw


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_tensor_scales_at_the_ends_of_float32(backend):
    """e4m3: a tensor maximum so small that a clamped block's factor (1/t)/2**-6 overflows, or
    so large that t*448 does, is refused (an all-zero block would decode to NaN, the largest
    scale to inf); just inside, an all-zero block still decodes to +0 on every backend.
    e8m0:rceil with qmax < 1: M/qmax overflows to inf, an exponent beyond 127, which is refused
    (torchao's ``to_mx`` stores the NaN byte 255 there), not saturated to the largest scale."""
    rule = get_rule("e4m3")
    fmax = float(np.finfo(np.float32).max)
    edge = 448 * 6 * 64 / fmax                     # t = 2**6 / fmax
    with pytest.raises(ValueError, match="too small"):
        rule.tensor_scale(0.98 * edge, 6.0)
    with pytest.raises(ValueError, match="too large"):
        rule.tensor_scale(3e38, 0.5)
    x = np.zeros(32, np.float32)
    x[0] = np.float32(1.05 * edge)
    packed, st = quantbook.quantize(x, "e2m1", block_size=16, scale="e4m3", backend=backend)
    assert np.all(packed[8:] == 0) and np.all(quantbook.dequantize(packed, st)[16:] == 0)
    x[0] = np.float32(0.5 * edge)
    with pytest.raises(ValueError, match="too small"):
        quantbook.quantize(x, "e2m1", block_size=16, scale="e4m3", backend=backend)
    top = np.float32(2.0**126)                     # M / qmax = 2**127, the largest E8M0 scale
    assert list(get_rule("e8m0:rceil").encode(np.array([top, 1.0], np.float32), 0.5)) == [254, 128]
    above = np.array([1.001 * 2.0**126, 3e38], np.float32)   # float32 log2 past 127 (module docstring)
    assert not get_rule("e8m0:rceil").storable(above, 0.5).any()
    y = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    y[0] = 2e38
    with pytest.raises(ValueError, match="block 0: its scale overflows e8m0:rceil"):
        quantbook.quantize(y, "e2m1", block_size=32, scale="e8m0:rceil", qmax=0.5, backend=backend)


@_need_ml
def test_e4m3_rounding_matches_ml_dtypes():
    rng = np.random.default_rng(0)
    v = np.exp2(rng.uniform(-6, np.log2(448), 200000)).astype(np.float32)
    g = e4m3_value(np.arange(0x08, 0x7F, dtype=np.uint8))
    ties = ((g[:-1] + g[1:]) / 2).astype(np.float32)  # exact midpoints: ties to even
    v = np.concatenate([v, g, ties, np.nextafter(ties, 0), np.nextafter(ties, np.inf)])
    v = v[(v >= 2.0**-6) & (v <= 448)]
    ref = v.astype(ml_dtypes.float8_e4m3fn)
    r = e4m3_round(v)
    assert np.array_equal(r, ref.astype(np.float32))
    assert np.array_equal(e4m3_bits(r), ref.view(np.uint8))


@_need_ml
def test_float8_decoders_match_ml_dtypes():
    b = np.arange(256, dtype=np.uint8)
    assert np.array_equal(e4m3_value(b[:128]), b[:128].view(ml_dtypes.float8_e4m3fn).astype(np.float32),
                          equal_nan=True)
    assert np.array_equal(e8m0_value(b), b.view(ml_dtypes.float8_e8m0fnu).astype(np.float32),
                          equal_nan=True)


@_need_ml
def test_bfloat16_rounding_matches_ml_dtypes():
    v = np.random.default_rng(1).standard_normal(100000).astype(np.float32) * 1e3
    assert np.array_equal(bf16_bits(v), v.astype(ml_dtypes.bfloat16).view(np.uint16))
    assert np.array_equal(bf16_value(bf16_bits(v)), v.astype(ml_dtypes.bfloat16).astype(np.float32))


def _ocp(m, emax, mode):
    """The MX scale exponent from its definition (math.frexp: m = f * 2**e, 0.5 <= f < 1)."""
    f, e = math.frexp(m)
    lg = e - 1  # floor(log2 m)
    if mode == "floor":
        return lg - emax
    if mode == "ceil":
        return lg + (f != 0.5) - emax
    if mode == "even":  # m rounded to 2 significant bits (E2M1's precision), half up
        return lg + (f >= 0.875) - emax


@pytest.mark.parametrize("mode", ["floor", "ceil", "even"])
def test_e8m0_matches_its_definition(mode):
    rng = np.random.default_rng(2)
    m = np.exp2(rng.uniform(-100, 100, 20000)).astype(np.float32)
    m = np.concatenate([m, np.exp2(np.arange(-100, 100)).astype(np.float32),
                        (1.75 * np.exp2(np.arange(-100, 100))).astype(np.float32)])
    got = get_rule(f"e8m0:{mode}").encode(m, 6.0).astype(int) - 127
    want = np.array([_ocp(float(v), 2, mode) for v in m])
    assert np.array_equal(got, want)


def test_e8m0_spec_range_for_e2m1():
    # OCP MX v1.0 with E2M1 (emax 2): M / X lies in [4, 8)
    m = np.exp2(np.random.default_rng(3).uniform(-50, 50, 5000)).astype(np.float32)
    r = m / get_rule("e8m0:floor").scale(m, 6.0)
    assert (r >= 4).all() and (r < 8).all()


@pytest.mark.parametrize("mode", ["floor", "ceil", "even", "rceil"])
def test_e8m0_refuses_an_exponent_above_127_rather_than_clamp_it(mode):
    """Only qmax < 2 reaches it.  The exponents from the definition (``_ocp``; rceil:
    ceil(log2(M / qmax))): above 127 the block is refused, not stored as 2**127 with its
    values clipped (at qmax = 1e-30 a block of 1e20 decoded to about 1.7e8)."""
    rule = get_rule(f"e8m0:{mode}")
    with pytest.raises(ValueError, match=f"block 0: its scale overflows e8m0:{mode}"):
        rule.encode(np.float32([1e20]), 1e-30)
    for backend in ("numpy", "cpu", "gpu-emulated"):   # the step tables of the device path too
        usable_backend(backend)
        with pytest.raises(ValueError, match=f"block 1: its scale overflows e8m0:{mode}"):
            x = np.concatenate([np.ones(32), np.full(32, 1e20)]).astype(np.float32)
            quantbook.quantize(x, "e2m1", 32, scale=f"e8m0:{mode}", qmax=1e-30, backend=backend)
    # qmax = 1 (emax 0): the largest float32 is 2**127 by floor, 2**128 by the others
    top = np.float32(np.finfo(np.float32).max)
    want = 127 if mode == "floor" else 128
    assert (_ocp(float(top), 0, mode) if mode != "rceil" else math.ceil(math.log2(float(top)))) == want
    if want > 127:
        assert not rule.storable(top, 1.0)
    else:
        assert rule.encode(top, 1.0) == 254 and rule.storable(top, 1.0)
    # qmax = 2 (emax 1): every float32 maximum is held
    assert rule.storable(np.float32([top, 1e-30, 0.0]), 2.0).all()


@pytest.mark.parametrize("name", ["e4m3", "e8m0:floor", "e8m0:ceil", "e8m0:even", "e8m0:rceil",
                                  "float16", "bfloat16"])
def test_scale_is_constant_between_breakpoints(name):
    rule = get_rule(name)
    ts = rule.tensor_scale(3.0, 6.0)
    b = rule.breakpoints(6.0, ts, 1e-3, 1e3)
    assert b.size and np.all(np.diff(b) > 0)
    lo, hi = b[:-1], b[1:]
    inner = np.stack([lo + (hi - lo) * t for t in (0.01, 0.5, 0.99)]).astype(np.float32)
    s = rule.scale(inner, 6.0, ts)
    assert (s == s[1]).all(), "s(M) changes inside a piece"
    assert (s[1, 1:] != s[1, :-1]).all(), "s(M) does not change across a breakpoint"


def test_search_and_nested_are_not_functions_of_m():
    assert not get_rule("search:4over6").deterministic and not get_rule("nested").deterministic
    with pytest.raises(ValueError, match="not 1-D"):
        get_rule("search:4over6").breakpoints(6.0, 1.0)
    assert get_rule("search:e8m0:rceil@1,0.75/l1").name == "search:e8m0:rceil@1,0.75/l1"


def test_search_pick_is_the_first_least_error():
    """numpy's argmin (first on ties) is the oracle; the pick also runs on arrays of another
    kind (here a subclass, as CuPy's arrays on the device)."""
    rule = get_rule("search:e8m0:floor@1,0.75,0.5/l1")
    rng = np.random.default_rng(3)
    errs = [rng.integers(0, 4, 500).astype(np.float64) for _ in range(3)]   # many ties
    pick = rule.pick(errs)
    assert np.array_equal(pick, np.argmin(np.stack(errs), axis=0))

    class Other(np.ndarray):
        pass

    got = rule.pick([e.view(Other) for e in errs])
    assert type(got) is Other and np.array_equal(got, pick)


def test_bfloat16_bits_round_as_ml_dtypes():
    """``bf16_bits`` (the bfloat16 scale's rounding) against ml_dtypes' float32 → bfloat16
    cast: exact ties (low half 0x8000) with even and odd upper halves, their neighbours, and
    random finite values."""
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is the independent bfloat16 rounding")
    from quantbook.scales.floats import bf16_bits

    hi = np.random.default_rng(3).integers(0, 0x7F7F, 4000).astype(np.uint32) << 16
    lows = np.array([0x8000, 0x7FFF, 0x8001, 0x0000, 0xFFFF], np.uint32)
    bits = (hi[:, None] | lows[None, :]).ravel()
    rand = np.random.default_rng(4).integers(0, 0x7F7F0000, 20000).astype(np.uint32)
    v = np.concatenate([bits, rand]).view(np.float32)
    want = v.astype(ml_dtypes.bfloat16).view(np.uint16)
    assert np.array_equal(bf16_bits(v), want)


@pytest.mark.parametrize("qmax", [6.0, 7.0])
def test_half_precision_scales_are_the_float32_quotient_rounded_once(qmax):
    """docs/scales.md: float16 and bfloat16 scales are ``M / qmax`` in float32, then rounded to
    nearest even, against torch's float32 division and casts; maxima where multiplying by the
    float32 reciprocal would store another scale included."""
    torch = pytest.importorskip("torch", reason="torch is the independent float32 division and casts")
    rng = np.random.default_rng(13)
    m = np.concatenate([[883.12494, 794.62494, 878.62494, 968.99994, 956.99994],
                        rng.uniform(0, 1000, 200000)]).astype(np.float32)
    t = torch.from_numpy(m) / torch.full((m.size,), qmax, dtype=torch.float32)
    f16 = t.to(torch.float16).numpy().view(np.uint16)
    bf16 = t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(get_rule("float16").encode(m, qmax).view(np.uint16), f16)
    assert np.array_equal(get_rule("bfloat16").encode(m, qmax), bf16)
    by_reciprocal = (m * (np.float32(1) / np.float32(qmax))).astype(np.float16).view(np.uint16)
    assert np.count_nonzero(by_reciprocal != f16) >= 3   # the test tells the two apart


def test_e4m3_tensor_scale_is_the_documented_float32_formula():
    """docs/scales.md: ``t = G/(qmax·448)`` in float32 (qmax·448 rounded first), for tensor
    maxima and qmax values where float64 arithmetic would round differently."""
    rule = get_rule("e4m3")
    rng = np.random.default_rng(7)
    gs = np.exp(rng.uniform(-20, 20, 4000)).astype(np.float32)
    qs = np.exp(rng.uniform(-3, 5, 4000)).astype(np.float32)
    got = np.array([rule.tensor_scale(g, q) for g, q in zip(gs, qs)], np.float32)
    want = gs / (qs * np.float32(448))   # float32 throughout: numpy keeps the dtype
    assert want.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32))
    f64 = (gs.astype(np.float64) / (qs.astype(np.float64) * 448)).astype(np.float32)
    assert np.count_nonzero(f64 != want) > 100   # the test tells the two apart


@pytest.mark.parametrize("qmax", [7.6e35, 1e36, 3e38])
def test_e4m3_names_a_qmax_too_large_for_its_tensor_scale(qmax):
    # qmax·448 past float32's maximum leaves t = amax / inf = 0 for every amax: it said "the tensor's amax
    # 1e+05 is too small ... (needs about 8.43e+03 or more)", naming an amax above the bound
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.float32(qmax) * np.float32(448))
    with pytest.raises(ValueError, match=r"^qmax=\S+ is too large for the e4m3 rule: qmax·448 must be a finite"):
        get_rule("e4m3").tensor_scale(1e5, qmax)
    x = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    with pytest.raises(ValueError, match="too large for the e4m3 rule"):
        quantbook.quantize(x, "e2m1", 16, scale="e4m3", qmax=qmax, backend="numpy")
    assert get_rule("e4m3").tensor_scale(1e5, 7.5e35) > 0   # qmax·448 = 3.4e38 is finite


@pytest.mark.parametrize("qmax", [4.0, 1.0, 127.0])
def test_a_search_of_one_target_is_its_base_rule(qmax):
    x = np.random.default_rng(1).standard_normal(16 * 64).astype(np.float32)
    p1, s1 = quantbook.quantize(x, "nf4", 16, scale="search:e4m3@1", qmax=qmax, backend="numpy")
    p2, s2 = quantbook.quantize(x, "nf4", 16, scale="e4m3", qmax=qmax, backend="numpy")
    assert np.array_equal(p1, p2) and np.array_equal(s1.absmax, s2.absmax)


@pytest.mark.parametrize("name", [n for n in rule_names() if get_rule(n).layout == "scaled"
                                  and not n.startswith("search:")])
def test_a_scalar_block_maximum_gives_what_an_array_gives(name):
    """0-d inputs: under numpy 1.x a 0-d uint64 mixed with a Python int became int64 (value-based
    casting), so the bit tricks of the float8/bfloat16 roundings raised on scalars."""
    rule, m = get_rule(name), np.float32(3.7)
    t = rule.tensor_scale(3.7 * 64, 6.0)
    stored = rule.encode(m, 6.0, t)
    assert np.shape(stored) == () and not isinstance(stored, np.ndarray)
    assert not isinstance(rule.scale(m, 6.0, t), np.ndarray) and not isinstance(rule.storable(m, 6.0, t), np.ndarray)
    assert rule.scale(np.full((2, 3), m), 6.0, t).shape == (2, 3)
    assert not isinstance(rule.decode(stored, t), np.ndarray) and not isinstance(rule.divisor(stored, t)[0], np.ndarray)
    assert np.array_equal(stored, rule.encode(np.array([m]), 6.0, t)[0])
    assert np.array_equal(rule.decode(stored, t), rule.decode(np.array([stored]), t)[0])
    v = np.float32(3.7)
    assert bf16_value(bf16_bits(v)) == bf16_value(bf16_bits(np.array([v])))[0]
    assert e4m3_round(v) == e4m3_round(np.array([v]))[0]


@pytest.mark.parametrize("name", [n for n in rule_names() if get_rule(n).layout == "scaled"
                                  and not n.startswith("search:")])
def test_a_block_maximum_that_is_no_maximum_is_refused(name):
    """NaN, a negative value or a string: e8m0 stored NaN as the byte of 8.5e37, e4m3 as its
    NaN byte, float32 took -1.5 for a scale of -0.25, and '1.5' was read as 1.5."""
    rule = get_rule(name)
    t = rule.tensor_scale(100.0, 6.0)
    for bad in (np.nan, -1.5, np.array([1.0, np.nan]), "1.5", [True]):
        for f in (rule.encode, rule.scale, rule.storable):
            with pytest.raises(ValueError, match="maxim"):
                f(bad, 6.0, t)


def test_rules_without_a_function_of_the_maximum_say_so():
    # nested statistics depend on the other blocks; the base class's stubs raised a bare NotImplementedError
    rule = get_rule("nested")
    for f in (lambda: rule.encode(1.5, 6.0), lambda: rule.scale(1.5, 6.0), lambda: rule.storable(1.5, 6.0),
              lambda: rule.decode(np.uint8(3)), lambda: rule.breakpoints(6.0)):
        with pytest.raises(ValueError, match="nested"):
            f()
    with pytest.raises(ValueError, match="search:4over6"):
        get_rule("search:4over6").storable(1.5, 6.0, 100.0)


def test_a_subnormal_scale_is_named_whatever_the_shape_of_the_stored_scales():
    # a 2-D array of stored bfloat16 scales indexed by a flat position raised IndexError
    rule = get_rule("bfloat16")
    small = int(bf16_bits(np.float32(1e-39)))
    for stored in (np.array([[16000, small]], np.uint16), np.uint16(small)):
        with pytest.raises(ValueError, match="subnormal"):
            rule.divisor(stored)


def test_block_maxima_beyond_float32_or_as_python_numbers_are_maxima():
    from fractions import Fraction

    assert not get_rule("float16").storable(10**30, 6.0)    # an integer beyond float32: not storable
    assert get_rule("float32").scale(Fraction(3, 2), 6.0) == np.float32(0.25)
    assert np.signbit(get_rule("float32").scale(-0.0, 6.0)) == False   # noqa: E712  (-0.0 is the maximum 0)


@pytest.mark.parametrize("bits", ["4", 4.0, True, None])
def test_check_scaled_bits_refuses_what_is_not_an_integer(bits):
    from quantbook.scales import check_scaled_bits

    # "4" and None were TypeErrors from the comparison, 4.0 and True were taken
    with pytest.raises(ValueError, match="bits must be an integer from 1 to 4"):
        check_scaled_bits(bits)


def test_scaled_bits_refuses_a_bool():
    # True is an int to isinstance: it was read as a 1-bit code
    from quantbook.scales import check_scaled_bits

    for bad in (True, np.True_, 4.0):
        with pytest.raises(ValueError, match="bits must be an integer"):
            check_scaled_bits(bad)
    assert check_scaled_bits(np.int64(4)) == 4


def test_scaled_values_are_the_code_times_qmax_over_its_peak():
    """docs/scales.md's table rebuilt by hand (``qmax / peak`` in float64, times each level, then
    float32), for an entry where ``(c / peak) * qmax`` rounds to another float32; and for a
    Codebook, E2M1's own values in bit-pattern order (OCP MX v1.0, -0 at code 8)."""
    from quantbook.scales import scaled_values

    peak, c, qmax = 1.4554425309821815, 0.10035150660286198, 3.4280803203582764
    lv = np.array([-peak, -0.7, -3 * c, 0.0, c, 0.5, 0.9, peak])
    want = np.array([v * (qmax / peak) for v in lv.tolist()], np.float32)
    assert np.array_equal(scaled_values(lv, qmax).view(np.uint32), want.view(np.uint32))
    assert ((lv / peak) * qmax).astype(np.float32)[4] != want[4]   # the test tells the two apart
    e2m1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)
    assert np.array_equal(scaled_values(quantbook.get("e2m1"), 6).view(np.uint32), e2m1.view(np.uint32))


@pytest.mark.parametrize("spec, message", [
    ("", "scale must be a rule name such as float32, float16, bfloat16, e4m3, got ''"),
    (3, "scale must be a rule name such as float32, float16, bfloat16, e4m3, got 3"),
    ("e4m3:2", "scale rule 'e4m3' takes no argument, got '2'"),
    ("float16:x", "scale rule 'float16' takes no argument, got 'x'"),
    ("search:e4m3", r"search rule 'e4m3': expected a preset \(4over6, fouroversix, ggml, ggml-ref\) or "
                    r"BASE@f1,f2,...\[/l1\|/l2\]"),
    ("search:e4m3@a,b", "search rule 'e4m3@a,b': targets must be numbers"),
    ("search:e4m3@", "search rule 'e4m3@': targets must be numbers"),
    ("search:e4m3@6,-1", r"search targets must be positive finite factors, got \[6.0, -1.0\]"),
    ("search:e4m3@6,inf", r"search targets must be positive finite factors, got \[6.0, inf\]"),
    ("search:nested@6", "a search needs a deterministic base rule of the scaled layout, got 'nested'"),
])
def test_a_bad_rule_spelling_is_one_clear_error(spec, message):
    with pytest.raises(ValueError, match="^" + message + "$"):
        get_rule(spec)


def test_a_search_rule_has_no_scale_from_the_maximum_alone():
    with pytest.raises(ValueError, match="^search:e4m3@6,4/l2 chooses its scales from the values, not from amax "
                                         "alone; quantize through quantbook.quantize$"):
        get_rule("search:e4m3@6,4").encode(np.float32([1.0]), 6.0)


@pytest.mark.parametrize("name", ["e4m3", "fouroversix:6"])
@pytest.mark.parametrize("amax", [-1.0, -np.inf, np.inf, np.nan])
def test_a_tensor_amax_that_no_tensor_has_is_named_as_such(name, amax):
    # an absolute maximum is finite and never negative; -1 was refused as "must be finite"
    with pytest.raises(ValueError, match=r"^the tensor's amax must be finite and non-negative, got "):
        get_rule(name).tensor_scale(np.float32(amax), 6.0)


def test_fouroversix_at_tensor_scale_zero_is_the_zero_scale_everywhere():
    # the rule's formulas at G = 0 (its own tensor_scale gives 1 for an all-zero tensor): every block's scale is
    # 0, so there is no breakpoint, and without G there is no scale at all
    rule = get_rule("fouroversix:6")
    m = np.float32([0.0, 1e-6, 1.0, 3e38])
    assert np.array_equal(rule.scale(m, 6.0, np.float32(0)), np.zeros(4, np.float32))
    assert rule.breakpoints(6.0, np.float32(0)).size == 0
    with pytest.raises(ValueError, match="^the fouroversix rule needs the tensor's float32 absolute maximum$"):
        rule.breakpoints(6.0, None)
    x = np.zeros(64, np.float32)
    packed, st = quantbook.quantize(x, "e2m1", 16, scale="fouroversix:6")
    assert st.tensor_scale == 1.0 and not np.signbit(quantbook.dequantize(packed, st)).any()
    assert np.array_equal(quantbook.dequantize(packed, st), x)


def test_nested_bits_per_weight_counts_its_offset_when_the_size_is_given():
    # bitsandbytes' compress_statistics, by hand: a uint8 per block, a float32 per 256 blocks, one float32 offset
    B, n = 64, 4096
    want = 4 + 8 / B + 32 / (256 * B) + 32 / n
    assert get_rule("nested").bits_per_weight(B, 4, n=n) == pytest.approx(want, rel=1e-15)
    assert get_rule("nested").bits_per_weight(B, 4) == pytest.approx(want - 32 / n, rel=1e-15)
    assert repr(get_rule("e4m3")) == "ScaleRule('e4m3')"
