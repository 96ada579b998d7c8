"""Four Over Six's NVFP4 scales (quantbook.scales.fouroversix, ``search:fouroversix``) against
the authors' package itself.

Oracle: tests/data/fouroversix_vectors.npz, written by tests/data/make_fouroversix_vectors.py
from ``fouroversix`` 1.0.5's PyTorch reference quantizer (``mse`` and ``mae``).  Scale bytes,
packed codes and the stored tensor maximum compare bit for bit, except where docs/scales.md
says the package's bytes are not NVFP4's: a block stored with scale 0 (the package writes +0
codes, quantbook ±0 by the value's sign; both decode to 0) and a block whose scaled values
reach 7 (the package rounds them to 8, which its packing cannot hold).  E4M3 rounding with
subnormals is checked against ml_dtypes.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from gpu_cases import scaled_backend

import quantbook as qb
from quantbook.bulk import BACKENDS
from quantbook.scales import get_rule, rule_names
from quantbook.scales.e4m3 import e4m3_encode, e4m3_value

DATA = np.load(Path(__file__).parent / "data" / "fouroversix_vectors.npz")
META = json.loads(bytes(DATA["meta"]).decode())
#: the package's scale_rule -> quantbook's spec
SPECS = {"mse": "search:fouroversix", "mae": "search:fouroversix:6@1,0.6666666666666666/l1"}


@pytest.fixture(params=list(BACKENDS))
def be(request):
    return scaled_backend(request.param)


@pytest.mark.parametrize("rule", list(SPECS))
@pytest.mark.parametrize("case", META["cases"])
def test_bytes_equal_fouroversix(be, case, rule):
    x = DATA[f"{case}/x"]
    ref_p, ref_s = DATA[f"{case}/{rule}/packed"], DATA[f"{case}/{rule}/scales"]
    p, st = qb.quantize(be.from_host(x), "e2m1", 16, scale=SPECS[rule], backend=be.name)
    p = be.to_host(p)
    assert np.float32(st.tensor_scale).tobytes() == DATA[f"{case}/{rule}/amax"].tobytes()
    same = ~DATA[f"{case}/reach7"] & (ref_s != 0)
    assert np.array_equal(st.absmax[same], ref_s[same])
    assert np.array_equal(p.reshape(-1, 8)[same], ref_p.reshape(-1, 8)[same])
    zero = ref_s == 0
    assert np.all(st.absmax[zero] == 0)
    y = be.to_host(qb.dequantize(be.from_host(p), st, backend=be.name)).reshape(-1, 16)
    assert np.all(y[zero] == 0)
    # the package's codes of a zero-scale block are +0; quantbook's are ±0 by sign
    assert np.array_equal(p.reshape(-1, 8)[zero] & 0x77, np.zeros_like(ref_p.reshape(-1, 8)[zero]))


def test_vectors_cover_the_exceptions_and_both_candidates():
    s = DATA["wide/mse/scales"]
    assert DATA["wide/reach7"].any() and (s == 0).any() and ((s > 0) & (s < 8)).any()
    for case in ("normal", "heavy", "wide"):
        x = DATA[f"{case}/x"]
        m, g = np.abs(x).reshape(-1, 16).max(axis=1), DATA[f"{case}/mse/amax"][0]
        six, four = (get_rule(f"fouroversix:{t}").encode(m, 6.0, g) for t in "64")
        ref = DATA[f"{case}/mse/scales"]
        assert np.any((ref == six) & (six != four)) and np.any((ref == four) & (six != four)), case


def test_rules_are_registered():
    assert {"fouroversix:6", "fouroversix:4", "search:fouroversix"} <= set(rule_names())
    r = get_rule("search:fouroversix")
    assert [c.name for c, _ in r.candidate_rules(6.0)] == ["fouroversix:6", "fouroversix:4"]
    assert get_rule("fouroversix").name == "fouroversix:6"
    assert get_rule("fouroversix:4").bits_per_weight(16) == 4.5
    assert get_rule("fouroversix:6").tensor_value == "float32 tensor absolute maximum"


def test_bad_settings_are_refused():
    x = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    with pytest.raises(ValueError, match="qmax must be 6"):
        qb.quantize(x, "nf4", 16, scale="search:fouroversix", qmax=4)
    for f in (0.5, 0.7, 0.95):
        with pytest.raises(ValueError, match="6 or 4"):
            get_rule(f"search:fouroversix:6@1,{f}")
    with pytest.raises(ValueError, match="not 2.666667"):
        get_rule("search:fouroversix:4@1,0.6666666666666666")
    r4 = get_rule("search:fouroversix:4@1,1.5")   # targets relative to the base's 4
    assert [c.name for c, _ in r4.candidate_rules(6.0)] == ["fouroversix:4", "fouroversix:6"]
    with pytest.raises(ValueError, match="6 or 4"):
        get_rule("fouroversix:5")
    r = get_rule("fouroversix:6")
    with pytest.raises(ValueError, match="must be finite and non-negative"):
        r.tensor_scale(float("nan"), 6.0)


def test_all_zero_tensor_stores_zeros():
    p, st = qb.quantize(np.zeros(48, np.float32), "e2m1", 16, scale="search:fouroversix")
    assert st.tensor_scale == 1 and np.all(st.absmax == 0) and np.all(p == 0)
    assert np.all(qb.dequantize(p, st) == 0)


def test_e4m3_rounding_equals_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes is not installed")
    # every E4M3 value, the midpoints between neighbours and their float32 neighbours
    g = e4m3_value(np.arange(0x7F, dtype=np.uint8)).astype(np.float64)
    mid = ((g[:-1] + g[1:]) / 2).astype(np.float32)
    v = np.concatenate([g.astype(np.float32), mid, np.nextafter(mid, np.float32(0)), np.nextafter(mid, np.float32(1e9)),
                        np.random.default_rng(0).uniform(0, 464, 10_000).astype(np.float32)])
    want = v.astype(ml_dtypes.float8_e4m3fn).view(np.uint8)
    assert np.array_equal(e4m3_encode(v), want)
    beyond = np.concatenate([[np.nextafter(np.float32(464), np.float32(1e9))], np.linspace(465, 1e6, 1000),
                             [3e38, np.inf]]).astype(np.float32)
    assert np.array_equal(e4m3_encode(beyond), beyond.astype(ml_dtypes.float8_e4m3fn).view(np.uint8))
    assert e4m3_encode(np.float32(np.nan)) == 0x7F


def test_tensor_maxima_at_the_ends_of_float32():
    """The smallest non-zero scale, 2**-9, multiplies by about 1536·512/G, and the largest
    decodes through 448·G: G is refused just where either leaves float32's range."""
    r = get_rule("fouroversix:6")
    fmax = float(np.finfo(np.float32).max)
    small, large = 1536 * 512 / fmax, fmax / 448
    for g, ok in ((0.99 * small, False), (1.01 * small, True), (0.99 * large, True), (1.01 * large, False)):
        if ok:
            assert r.tensor_scale(g, 6.0) == np.float32(g)
        else:
            with pytest.raises(ValueError, match="too small" if g < 1 else "too large"):
                r.tensor_scale(g, 6.0)
    assert np.all(r.encode(np.zeros(3, np.float32), 6.0, np.float32(0)) == 0)


def test_search_candidates_are_the_two_rules():
    """What the sample fit (search_lloyd) reads: the candidates' stored scales in order."""
    m = np.abs(np.random.default_rng(0).standard_normal(4096)).astype(np.float32)
    g = np.float32(m.max())
    c = get_rule("search:fouroversix").candidates(m, 6.0, g)
    assert np.array_equal(c[0], get_rule("fouroversix:6").encode(m, 6.0, g))
    assert np.array_equal(c[1], get_rule("fouroversix:4").encode(m, 6.0, g))
    assert not np.array_equal(c[0], c[1])



def test_decoding_is_the_packages_up_to_rounding():
    """quantbook decodes ``code · float32(float32(e · G) / 1536)``, the package
    ``float32(float32(code · e) · G) / 1536``: the same for codes that are powers of two, and
    both within three roundings (1.5 float32 ulps) of the exact product."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((64, 64)) * np.exp(rng.uniform(-6, 0, (64, 1)))).astype(np.float32)
    p, st = qb.quantize(x, "e2m1", 16, scale="search:fouroversix")
    y = qb.dequantize(p, st).reshape(-1, 16).astype(np.float64)
    codes = np.stack([p & 0x0F, p >> 4], axis=1).reshape(-1, 16)
    e2m1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, 0, -.5, -1, -1.5, -2, -3, -4, -6])
    exact = e2m1[codes] * e4m3_value(st.absmax).astype(np.float64)[:, None] * st.tensor_scale / 1536
    ulp = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(y - exact) <= 1.5 * ulp)
    ce = (e2m1[codes] * e4m3_value(st.absmax)[:, None]).astype(np.float32)
    package = ((ce * np.float32(st.tensor_scale)).astype(np.float32) / np.float32(1536)).astype(np.float32)
    two = np.isin(np.abs(e2m1[codes]), [0.5, 1, 2, 4])
    assert two.sum() > 1000 and np.array_equal(y[two], package[two])


@pytest.mark.parametrize("rule", ["fouroversix:6", "fouroversix:4"])
def test_exact_law_matches_quantize(rule):
    """The exact law of each candidate (the scaled derivation, given the tensor's maximum)
    against one normal tensor quantized with it: mean squared and absolute block errors within
    4 standard errors (seed 8, 2**20 values)."""
    from quantbook.derive import evaluate

    x = np.random.default_rng(8).standard_normal(1 << 20, dtype=np.float32)
    cb = qb.get("e2m1")
    p, st = qb.quantize(x, cb, 16, scale=rule, backend="cpu")
    d = x.astype(np.float64) - qb.dequantize(p, st, backend="cpu").astype(np.float64)
    ev = evaluate(cb, 16, scale=rule, tensor_amax=float(np.abs(x).max()))
    for blocks, want in (((d * d).reshape(-1, 16).mean(1), ev.mse_weight),
                         (np.abs(d).reshape(-1, 16).mean(1), ev.mae_weight)):
        assert abs(blocks.mean() - want) < 4 * blocks.std() / np.sqrt(blocks.size)
