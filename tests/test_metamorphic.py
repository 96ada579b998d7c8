"""Metamorphic properties of quantize / dequantize: relations between two runs that any correct
implementation of the documented formats has (docs/format.md, docs/scales.md, the layout in
quantbook/bulk/vq_state.py), checked on seeded random inputs and seeded random tables, on
every registered backend (``gpu-emulated`` included, ``gpu`` where a device is usable) and
every layout: bitsandbytes' float32 absmax, nested statistics, each registered scale rule of
the scaled layout, and the vector codebooks.

tests/test_conformance.py compares the backends with the numpy reference and with committed
vectors; these properties hold whatever the reference computes.  Their oracles are
definitions rebuilt here by hand: the nearest level by brute force over the whole table in
float64, the tie rules, exact powers of two, plain float64 sums.

Which layout has which property (each test states why):

* idempotence, quantize(dequantize(quantize(x))) == quantize(x) (codes and scales): it needs
  a block's maximum to decode to its own magnitude.  float32 absmax, float16 and bfloat16 have
  it for any table holding both ends (±1, no value stored twice, the others below 0.98 of
  them): their scales round by at most 2**-8.  The E4M3 and E8M0 scales round by up to 2**-4
  and a binade, so e4m3, fouroversix, e8m0 floor and even and the 4-over-6 searches have it
  with E2M1, whose entries 4 and 6 keep the maximum where it was (with a random table the
  maximum may decode to a lower entry, and the scale follows it).  e8m0 ceil and rceil and
  ggml's searches keep only the decoded values (ceil maps a block's maximum into (2, 4], so
  it may decode a binade lower).  Nested statistics keep the codes of each block whose
  decoded scale is positive: that scale is not the block's maximum.  The two-level rules'
  tensor scale comes back within float32 rounding (a few ulps), and their values with it.
* nearest level: every layout but nested (which encodes with the exact block maximum, not
  the stored scale) from the stored scale; nested from the block maximum.
* sign symmetry on a symmetric table, scale equivariance by 2**k, float16/bfloat16 as their
  float32 upcast: every layout.
* block permutation and concatenation: every layout but nested, whose offset and 256-block
  maxima are statistics of the whole tensor (its codes still permute and concatenate); the
  two-level rules (e4m3, fouroversix, their searches) concatenate when the parts share the
  tensor's maximum.

Seeds: each test draws from ``np.random.default_rng(seed)`` with the seed written in it.
"""

import numpy as np
import pytest

import quantbook as qb
from quantbook import Codebook
from quantbook.bulk import BACKENDS
from quantbook.bulk.vq import VQ_BACKENDS, dequantize_vq, quantize_vq
from quantbook.scales import get_rule, rule_names

from gpu_cases import dequantize_on, quantize_on, scaled_backend, usable_backend

try:
    import ml_dtypes
    BF16 = ml_dtypes.bfloat16
except ImportError:  # only the bfloat16 cases need it
    BF16 = None

_F = np.float32
SCALED = [r for r in rule_names() if get_rule(r).layout == "scaled"]
LAYOUTS = ["absmax", "nested", *SCALED]
#: the two-level rules: a float32 tensor scale from the tensor's maximum
TWO_LEVEL = {"e4m3", "fouroversix:6", "fouroversix:4", "search:4over6", "search:fouroversix"}
#: idempotent in codes and scales for any table holding both ends (entries below 0.98 of them)
IDEMPOTENT = ["absmax", "float16", "bfloat16"]
#: idempotent in codes and scales with E2M1 (its entries 4 and 6 keep a block's maximum)
IDEMPOTENT_E2M1 = ["e4m3", "fouroversix:6", "e8m0:floor", "e8m0:even", "fouroversix:4", "search:4over6",
                   "search:fouroversix"]
#: only the decoded values are idempotent (E2M1)
IDEMPOTENT_VALUES = ["e8m0:ceil", "e8m0:rceil", "search:ggml", "search:ggml-ref"]
assert set(IDEMPOTENT + IDEMPOTENT_E2M1 + IDEMPOTENT_VALUES) == {"absmax", *SCALED}   # a new rule is placed


def _kw(layout):
    if layout == "absmax":
        return {"block_size": 64}
    if layout == "nested":
        return {"block_size": 64, "nested": True}
    return {"block_size": 32, "scale": layout}


def _backend(name, layout):
    return usable_backend(name) if layout in ("absmax", "nested") else scaled_backend(name)


@pytest.fixture(params=list(BACKENDS))
def backend_name(request):
    return request.param


def _q(be, x, cb, layout):
    return quantize_on(be, x, cb, **_kw(layout))


_dq = dequantize_on


def _table(rng, symmetric=False, dyadic=False):
    """A random 4-bit table in a random stored order: 16 distinct entries holding -1 and 1, or
    (symmetric) 0 and seven pairs ±v with 1 among the v; dyadic entries are multiples of 1/64,
    so their sums and midpoints are exact in float32."""
    if symmetric:
        v = np.concatenate([[1.0], rng.uniform(0.02, 0.98, 6)])
        t = np.concatenate([v, -v, [0.0]])
    elif dyadic:
        k = rng.choice(np.arange(-63, 64), 14, replace=False)
        t = np.concatenate([[-64, 64], k]) / 64.0
    else:
        t = np.concatenate([[-1.0, 1.0], rng.uniform(-0.98, 0.98, 14)])
    t = t[rng.permutation(t.size)].astype(_F)
    assert np.unique(t).size == t.size
    return Codebook(np.unique(t), bits=4, code=t, name="random")


def _table_for(rng, layout, symmetric=False):
    """E2M1 for the layouts whose idempotence needs its entries 4 and 6, else a random table."""
    if layout in IDEMPOTENT_E2M1 + IDEMPOTENT_VALUES and not symmetric:
        return qb.get("e2m1")
    return _table(rng, symmetric=symmetric)


def _x(rng, nb, block, tail=0):
    """``nb`` blocks of normal values, each times its own 2**U(-6, 6), block 1 all zeros, then
    ``tail`` more values (a partial block): float32."""
    x = rng.standard_normal((nb, block)) * np.exp2(rng.uniform(-6, 6, (nb, 1)))
    x[1] = 0
    return np.concatenate([x.reshape(-1), rng.standard_normal(tail)]).astype(_F)


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def _scales_equal(s1, s2):
    """Stored scales (and a tensor's statistics) bit for bit."""
    ok = np.array_equal(_bits(s1.absmax), _bits(s2.absmax))
    if s1.nested:
        ok = ok and np.array_equal(_bits(s1.nested_absmax), _bits(s2.nested_absmax)) \
            and s1.nested_offset == s2.nested_offset
    return ok and s1.tensor_scale == s2.tensor_scale


# --------------------------------------------------------------------------- idempotence
@pytest.mark.parametrize("layout", IDEMPOTENT + IDEMPOTENT_E2M1 + IDEMPOTENT_VALUES + ["nested"])
def test_quantizing_the_decoded_values_again(backend_name, layout):
    """A decoded block keeps its maximum when its largest value decodes to its own magnitude
    (absmax · ±1, the float scales' ``qmax · s``): quantizing it again gives the same codes and
    scales.  Seed 1."""
    be = _backend(backend_name, layout)
    rng = np.random.default_rng(1)
    cb = _table_for(rng, layout)
    B = _kw(layout)["block_size"]
    x = _x(rng, 24, B, tail=B // 2 + 3)
    p, st = _q(be, x, cb, layout)
    y = _dq(be, p, st)
    p2, st2 = _q(be, y, cb, layout)
    if layout == "nested":
        # the codes use the exact maximum: a block whose decoded scale S is positive decodes its
        # maximum to ±S, so its codes come back; S may be <= 0 (docs/format.md), flipping them
        keep = st.absmax_f32()[:-1] > 0   # the full blocks (64 values: 32 bytes each)
        full = p[:keep.size * 32].reshape(-1, 32)
        assert keep.sum() > 12 and np.array_equal(p2[:keep.size * 32].reshape(-1, 32)[keep], full[keep])
        return
    y2 = _dq(be, p2, st2)
    if layout in IDEMPOTENT_VALUES:   # (as numbers: a zero's sign may follow the other code)
        assert np.array_equal(y2, y), np.flatnonzero(y2 != y)[:8]
        return
    assert np.array_equal(p2, p), np.flatnonzero(p2 != p)[:8]
    assert np.array_equal(_bits(st2.absmax), _bits(st.absmax))
    if st.tensor_scale is None:
        assert np.array_equal(_bits(y2), _bits(y))
    else:   # the tensor's maximum decodes as float32(qmax · float32(t · 448)) (or G/6 · 6): within ulps
        np.testing.assert_allclose(st2.tensor_scale, st.tensor_scale, rtol=2.0**-22, atol=0)
        np.testing.assert_allclose(y2, y, rtol=2.0**-21, atol=0)


# ------------------------------------------------------------------------- nearest level
def _encode_scales(x, st, layout, block):
    """The scale each block's values were divided by: the stored one (bitsandbytes' absmax
    clamped to float32(1e-38)), except where the format encodes with another: nested
    statistics with the block's exact maximum, ggml's reference quantizer with ``m / v_0``
    (``m`` the block's first value of largest magnitude, ``v_0`` the table's least entry;
    quantbook/scales/ggml.py)."""
    n = x.size
    s = st.absmax_f32().astype(np.float64)
    if layout in ("nested", "search:ggml-ref"):
        pad = np.zeros(-(-n // block) * block)
        pad[:n] = x
        blocks = pad.reshape(-1, block)
        m = blocks[np.arange(blocks.shape[0]), np.abs(blocks).argmax(axis=1)]
        if layout == "nested":
            return np.abs(m)
        return np.where(np.abs(m) < 1e-15, 0.0, m / float(np.min(st.code)))
    return np.maximum(s, float(_F(1e-38))) if layout == "absmax" else s


def _check_nearest(x, y, st, layout, block):
    """Every decoded value is ``float32(table[j] · decoded scale)`` for an entry ``j`` that is
    the nearest of the whole table to ``z = x / (the scale it was encoded with)``, in float64,
    within the float32 rounding of the scaled value and of the midpoints (2**-19 of the
    table's range).  ggml's search encodes with its float32 scale and stores it rounded to
    float16: there ``z`` is known to 2**-11 of itself."""
    table = np.asarray(st.code, _F)
    n = x.size
    dec = np.repeat(st.absmax_f32(), block)[:n].astype(_F)
    enc = np.repeat(_encode_scales(x, st, layout, block), block)[:n]
    prod = table[None, :] * dec[:, None]   # float32 products, rounded once
    match = prod == y.astype(_F)[:, None]
    assert match.any(axis=1).all(), np.flatnonzero(~match.any(axis=1))[:8]
    live = enc != 0   # a zero scale decodes its block to zeros (checked by the match above)
    z = x.astype(np.float64)[live] / enc[live]
    d = np.abs(z[:, None] - table.astype(np.float64)[None, :])
    got = np.where(match[live], d, np.inf).min(axis=1)
    tol = 2.0**-19 * np.abs(table).max() + (2.0**-10 * np.abs(z) if layout == "search:ggml" else 0)
    bad = np.flatnonzero(got > d.min(axis=1) + tol)
    assert not bad.size, (bad[:8], z[bad[:4]], got[bad[:4]], d.min(axis=1)[bad[:4]])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_value_decodes_to_its_nearest_level(backend_name, layout):
    """Seed 2: a random table (E2M1 for the search rules too) and blocks over 2**±6."""
    be = _backend(backend_name, layout)
    rng = np.random.default_rng(2)
    B = _kw(layout)["block_size"]
    for cb in (_table(rng), qb.get("e2m1")):
        x = _x(rng, 24, B, tail=B // 2 + 3)
        p, st = _q(be, x, cb, layout)
        _check_nearest(x, _dq(be, p, st), st, layout, B)


TIE_LAYOUTS = ["absmax", "float16", "bfloat16", "e8m0:floor", "e8m0:ceil", "e8m0:even", "e8m0:rceil"]


def _tie_winner(code, a, b, scaled):
    """The documented winner of a value half-way between the neighbouring entries a < b: the
    lower one (docs/format.md); in the scaled layout the one stored at an even index when
    exactly one of the two is, else the lower (docs/scales.md)."""
    if scaled:
        ia, ib = (int(np.flatnonzero(code == v)[0]) for v in (a, b))
        if (ia % 2 == 0) != (ib % 2 == 0):
            return a if ia % 2 == 0 else b
    return a


@pytest.mark.parametrize("layout", TIE_LAYOUTS)
def test_values_half_way_between_levels_take_the_documented_one(backend_name, layout):
    """Dyadic random tables (seed 3) under scales that are powers of two, so that each value
    exactly half-way between two levels stays exactly half-way after scaling."""
    be = _backend(backend_name, layout)
    rng = np.random.default_rng(3)
    B = _kw(layout)["block_size"]
    for _ in range(3):
        cb = _table(rng, dyadic=True)
        k = int(rng.integers(-5, 6))
        top = _F(2.0**k if layout == "absmax" else 6 * 2.0**k)   # the block maximum
        _, st0 = _q(be, np.concatenate([[top], np.zeros(B - 1, _F)]).astype(_F), cb, layout)
        s = float(st0.absmax_f32()[0])
        table = np.asarray(st0.code, _F)
        lv = np.unique(table.astype(np.float64))
        mids = (lv[:-1] + lv[1:]) / 2
        keep = np.abs(mids * s) < top   # the maximum stays the block's
        mids, lo, hi = mids[keep], lv[:-1][keep], lv[1:][keep]
        x = np.zeros(B * -(-(mids.size + 1) // B), _F)
        x[:mids.size] = mids * s
        x.reshape(-1, B)[:, -1] = top
        p, st = _q(be, x, cb, layout)
        y = _dq(be, p, st)[:mids.size]
        want = [_tie_winner(table, a, b, layout != "absmax") * s for a, b in zip(lo, hi)]
        assert np.array_equal(y, np.asarray(want, _F)), (k, mids[y != np.asarray(want, _F)])


# ------------------------------------------------------------------------- sign, scale
@pytest.mark.parametrize("layout", LAYOUTS)
def test_negated_input_decodes_negated_on_a_symmetric_table(backend_name, layout):
    """A table equal to its negation (seed 4): -x decodes to -(the decoded x), value for value,
    with the same scale magnitudes.  Random float32 values land on a midpoint, where the tie
    rule breaks the symmetry, with probability about 2**-24 each; these seeds do not."""
    be = _backend(backend_name, layout)
    rng = np.random.default_rng(4)
    B = _kw(layout)["block_size"]
    for cb in (_table(rng, symmetric=True), _table(rng, symmetric=True)):
        x = _x(rng, 24, B, tail=B // 2 + 3)
        p, st = _q(be, x, cb, layout)
        pn, stn = _q(be, -x, cb, layout)
        y, yn = _dq(be, p, st), _dq(be, pn, stn)
        assert np.array_equal(yn, -y), np.flatnonzero(yn != -y)[:8]
        assert np.array_equal(np.abs(stn.absmax_f32()), np.abs(st.absmax_f32()))


@pytest.mark.parametrize("k", [-5, 7])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_scaling_by_a_power_of_two_scales_only_the_scales(backend_name, layout, k):
    """x · 2**k (exact in float32, no value or float16 scale leaving the normal range): the same
    codes, every decoded scale (but an all-zero block's) and value times 2**k exactly (e8m0:
    its byte plus k; a tensor scale times 2**k).  rceil's float32 log2 can break this just
    above a power of two (docs/scales.md); these seeded maxima (seed 5) are not there."""
    be = _backend(backend_name, layout)
    rng = np.random.default_rng(5)
    B = _kw(layout)["block_size"]
    cb = _table(rng)
    x = _x(rng, 24, B, tail=B // 2 + 3)
    f = _F(2.0**k)
    p, st = _q(be, x, cb, layout)
    p2, st2 = _q(be, x * f, cb, layout)
    assert np.array_equal(p2, p), np.flatnonzero(p2 != p)[:8]
    # block 1 is all zeros: e8m0 stores byte 0 (2**-127) for it at any k, and a table
    # without 0 decodes it to its entry nearest 0 times that
    live = np.arange(st.absmax.size) != 1
    assert np.array_equal(st2.absmax_f32()[live], st.absmax_f32()[live] * f)
    zero = np.zeros(x.size, bool)
    zero[B:2 * B] = True
    assert np.array_equal(_dq(be, p2, st2)[~zero], _dq(be, p, st)[~zero] * f)
    if st.tensor_scale is not None:
        assert st2.tensor_scale == st.tensor_scale * 2.0**k
    if layout.startswith("e8m0"):
        assert np.array_equal(st2.absmax[live].astype(int), st.absmax[live].astype(int) + k)


# ------------------------------------------------------------------ permutation, concat
@pytest.mark.parametrize("layout", LAYOUTS)
def test_permuting_whole_blocks_permutes_codes_and_scales(backend_name, layout):
    """No state crosses blocks but a two-level rule's tensor scale (the tensor's maximum, the
    same in any order) and nested statistics (whose codes still permute).  Seed 6."""
    be = _backend(backend_name, layout)
    rng = np.random.default_rng(6)
    B = _kw(layout)["block_size"]
    cb = _table(rng)
    nb = 40
    x = _x(rng, nb, B)
    perm = rng.permutation(nb)
    p, st = _q(be, x, cb, layout)
    p2, st2 = _q(be, x.reshape(nb, B)[perm].reshape(-1), cb, layout)
    assert np.array_equal(p2, p.reshape(nb, -1)[perm].reshape(-1))
    if layout == "nested":
        return
    assert np.array_equal(_bits(st2.absmax), _bits(np.asarray(st.absmax)[perm]))
    assert st2.tensor_scale == st.tensor_scale
    assert np.array_equal(_dq(be, p2, st2), _dq(be, p, st).reshape(nb, B)[perm].reshape(-1))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_quantizing_a_concatenation_concatenates(backend_name, layout):
    """a of whole blocks, b ragged: quantize(a ++ b) is quantize(a) ++ quantize(b), codes and
    scales.  Seed 7; for the two-level rules b's maximum is set to a's."""
    be = _backend(backend_name, layout)
    rng = np.random.default_rng(7)
    B = _kw(layout)["block_size"]
    cb = _table(rng)
    a, b = _x(rng, 12, B), _x(rng, 5, B, tail=B // 3 + 1)
    if layout in TWO_LEVEL:
        b[-2] = np.abs(a).max()
        a[3] = -np.abs(b).max()
    pa, sa = _q(be, a, cb, layout)
    pb, sb = _q(be, b, cb, layout)
    p, st = _q(be, np.concatenate([a, b]), cb, layout)
    assert np.array_equal(p, np.concatenate([pa, pb]))
    if layout == "nested":
        return
    assert np.array_equal(_bits(st.absmax), _bits(np.concatenate([sa.absmax, sb.absmax])))
    assert st.tensor_scale == sa.tensor_scale == sb.tensor_scale
    assert np.array_equal(_dq(be, p, st), np.concatenate([_dq(be, pa, sa), _dq(be, pb, sb)]))


# ------------------------------------------------------------------------------- dtypes
_no_bf16 = pytest.mark.skipif(BF16 is None, reason="bfloat16 needs ml_dtypes")


@pytest.mark.parametrize("dtype", [pytest.param(np.float16, id="f16"),
                                   pytest.param(BF16, id="bf16", marks=_no_bf16)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_16_bit_tensor_is_quantized_as_its_float32_upcast(backend_name, layout, dtype):
    """The format converts the input to float32 exactly first, and rounds the float32 decoded
    values to the input's dtype last.  Seed 8."""
    be = _backend(backend_name, layout)
    rng = np.random.default_rng(8)
    B = _kw(layout)["block_size"]
    cb = _table(rng)
    x = _x(rng, 24, B, tail=B // 2 + 3).astype(dtype)
    p, st = _q(be, x, cb, layout)
    p2, st2 = _q(be, x.astype(_F), cb, layout)
    assert np.array_equal(p, p2) and _scales_equal(st, st2)
    y = _dq(be, p, st)
    assert y.dtype == dtype
    assert np.array_equal(_bits(y), _bits(_dq(be, p2, st2).astype(dtype)))


# ---------------------------------------------------------------------------- error sums
@pytest.mark.parametrize("layout", ["absmax", "nested", "e4m3", "e8m0:floor", "search:ggml"])
def test_reported_error_sums_are_those_of_the_decoded_values(backend_name, layout, tmp_path):
    """evaluate_model's Σe², Σ|e|, Σx² of each tensor, and Backend.error_sums, against float64
    sums of dequantize's output (numpy's pairwise order: equal within 1e-12).  Seed 9."""
    from gpu_cases import weights_file
    from quantbook.io.safetensors import open_safetensors
    from quantbook.model.evaluate import evaluate_model

    be = _backend(backend_name, layout)
    rng = np.random.default_rng(9)
    cb = _table(rng)
    path = weights_file(tmp_path / "w.safetensors", 9, 32, 96)
    kw = _kw(layout)
    report = evaluate_model(path, [("t", cb)], kw["block_size"], nested=kw.get("nested", False),
                            scale=kw.get("scale"), backend=be.name)
    f = open_safetensors(path)
    assert report.tensors
    for t in report.tensors:
        x = f.read(t.name)
        p, st = _q(be, x, cb, layout)
        xh = _dq(be, p, st)
        e = xh.astype(np.float64) - x.astype(np.float64)
        got = t.sums["t"]
        assert got.n == x.size
        np.testing.assert_allclose([got.sse, got.sae, got.sx2],
                                   [np.sum(e * e), np.sum(np.abs(e)), np.sum(x.astype(np.float64) ** 2)],
                                   rtol=1e-12, atol=0)
        sse, sae = be.error_sums(be.from_host(np.ascontiguousarray(x)), be.from_host(xh))
        np.testing.assert_allclose([sse, sae], [np.sum(e * e), np.sum(np.abs(e))], rtol=1e-12, atol=0)


# ------------------------------------------------------------------------ vector codebooks
VQ_LAYOUTS = [(scale, sd, rot) for scale in ("rms", "absmax") for sd in ("float16", "float32")
              for rot in (None, "hadamard")]


@pytest.fixture(params=["numpy", "cpu", "gpu-emulated"])
def vq_be(request, monkeypatch):
    """The vector backend's name; ``gpu-emulated`` is the gpu backend's CUDA kernels run on the
    host through a stand-in ``cupy`` (as tests/test_vq_gpu.py runs them)."""
    if request.param == "gpu-emulated":
        import gpu_emulator as E
        from gpu_cases import use_stand_in_cupy
        from quantbook.bulk.gpu import scaled as GS
        from quantbook.bulk.gpu import vq as GV

        use_stand_in_cupy(monkeypatch, E.any_emulator, build=E.vq_emulator, caches=(GS, GV))
        return "gpu"
    why = VQ_BACKENDS[request.param].unavailable()
    if why:
        pytest.skip(f"vector backend {request.param!r} unavailable: {why}")
    return request.param


def _points(rng, n=16, p=2, symmetric=False):
    pts = rng.standard_normal((n // 2 if symmetric else n, p))
    if symmetric:
        pts = np.concatenate([pts, -pts])
    return pts[rng.permutation(n)].astype(_F)


def _vq(x, pts, be, layout, **kw):
    scale, sd, rot = layout
    return quantize_vq(np.ascontiguousarray(x), pts, group=32, scale=scale, scale_dtype=sd, rotate=rot,
                       backend=be, **kw)


def _xv(rng, rows=6, cols=128):
    """Rows of normal values, each group of 32 times its own 2**U(-5, 5); group 1 all zeros."""
    x = rng.standard_normal((rows, cols // 32, 32)) * np.exp2(rng.uniform(-5, 5, (rows, cols // 32, 1)))
    x[0, 1] = 0
    return x.reshape(rows, cols).astype(_F)


def test_vq_index_is_the_nearest_point(vq_be):
    """Unrotated: y = float32(v / s) with s the stored scale, its index the nearest point of
    the whole table by float64 squared distance (summed over the P coordinates in order), the
    lowest on a tie; the decoded values float32(point · s).  Tables of 16 points in 2 and 8 in
    4 dimensions, and a tie-rich one (integer points with repeated distances).  Seed 10."""
    rng = np.random.default_rng(10)
    tables = [_points(rng), _points(rng, 8, 4),
              np.array([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1], [1, 1]], _F)]
    for pts in tables:
        for scale, sd, _ in VQ_LAYOUTS[::2]:
            x = _xv(rng)
            if pts.shape[0] == 6:   # values half-way between integer points after scaling
                x = (rng.integers(-2, 3, x.shape) * 0.5).astype(_F)
            idx, st = _vq(x, pts, vq_be, (scale, sd, None))
            p = pts.shape[1]
            s = np.repeat(st.scales.astype(_F), 32 // p)
            v = x.reshape(-1, p)
            with np.errstate(invalid="ignore", divide="ignore"):
                y = np.where(s[:, None] != 0, v / s[:, None], 0).astype(_F).astype(np.float64)
            d = np.zeros((v.shape[0], pts.shape[0]))
            for j in range(p):
                d += (y[:, j:j + 1] - pts[None, :, j].astype(np.float64)) ** 2
            want = d.argmin(axis=1)
            assert np.array_equal(idx.reshape(-1), want), (scale, sd, np.flatnonzero(idx.reshape(-1) != want)[:8])
            out = dequantize_vq(idx, st, backend=vq_be)
            assert np.array_equal(out.reshape(-1, p), pts[want] * s[:, None])


def test_vq_properties(vq_be):
    """For every scale rule, scale dtype and rotation: a symmetric table decodes -x to -(the
    decoded x); x · 2**k gives the same indices, scales times 2**k; permuted rows permute
    indices and scales; a concatenation of rows concatenates; float16 input is its float32
    upcast (indices and scales; its values the float32 ones rounded).  Seed 11."""
    rng = np.random.default_rng(11)
    for layout in VQ_LAYOUTS:
        pts, sym = _points(rng), _points(rng, symmetric=True)
        x = _xv(rng)
        idx, st = _vq(x, pts, vq_be, layout)
        y = dequantize_vq(idx, st, backend=vq_be)
        i2, s2 = _vq(x, sym, vq_be, layout)
        i3, s3 = _vq(-x, sym, vq_be, layout)
        assert np.array_equal(dequantize_vq(i3, s3, backend=vq_be), -dequantize_vq(i2, s2, backend=vq_be)), layout
        for k in (-6, 5):
            f = _F(2.0**k)
            ik, sk = _vq(x * f, pts, vq_be, layout)
            assert np.array_equal(ik, idx) and np.array_equal(sk.scales, st.scales * sk.scales.dtype.type(f)), layout
            assert np.array_equal(dequantize_vq(ik, sk, backend=vq_be), y * f), layout
        perm = rng.permutation(x.shape[0])
        ip, sp = _vq(x[perm], pts, vq_be, layout)
        assert np.array_equal(ip, idx[perm]), layout
        assert np.array_equal(sp.scales, st.scales.reshape(x.shape[0], -1)[perm].reshape(-1)), layout
        ia, sa = _vq(x[:2], pts, vq_be, layout)
        ib, sb = _vq(x[2:], pts, vq_be, layout)
        assert np.array_equal(np.concatenate([ia, ib]), idx), layout
        assert np.array_equal(np.concatenate([sa.scales, sb.scales]), st.scales), layout
        h = x.astype(np.float16)
        ih, sh = _vq(h, pts, vq_be, layout)
        iu, su = _vq(h.astype(_F), pts, vq_be, layout)
        assert np.array_equal(ih, iu) and np.array_equal(sh.scales, su.scales), layout
        yh = dequantize_vq(ih, sh, backend=vq_be)
        assert yh.dtype == np.float16
        assert np.array_equal(_bits(yh), _bits(dequantize_vq(iu, su, backend=vq_be).astype(np.float16))), layout
