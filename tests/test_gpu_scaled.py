"""The gpu backend's scaled-layout kernels (quantbook/bulk/gpu/scaled_kernels.py, launched by
quantbook/bulk/gpu/scaled.py) against the numpy reference, bit for bit.

Without a GPU: the host-side preparation is checked directly (the kernel's threshold encoder
against the layout's encoder, the exact multiplier against float32 division); the kernels run
on the CPU through the host emulation (tests/gpu_emulator.py) of the SAME CUDA source, both
through the scaled-layout driver (every rule, codebook, input dtype, odd sizes, ties, zeros,
subnormals, huge values, the vector and the scalar path) and through the real launchers with
a stand-in ``cupy`` (NVRTC still compiles each kernel); NVRTC compiles every kernel for sm_80
and sm_90.  With a GPU: the launchers on device arrays.  Oracle: the numpy backend
(quantbook/bulk/reference.py), itself checked against torchao's bytes in
tests/test_layouts_torchao.py.  Seeds are fixed; every comparison is exact.
"""

import json
import re
import sys
from pathlib import Path
import zlib

import numpy as np
import pytest

import gpu_emulator as E
import quantbook as qb
from quantbook import Codebook
from quantbook.bulk import layouts as L
from quantbook.bulk.api import resolve_codebook
from quantbook.bulk.gpu import backend as G
from quantbook.bulk.gpu import scaled as GS
from quantbook.bulk.gpu import scaled_kernels as SK
from quantbook.bulk.gpu.compile import compile_source
from quantbook.bulk.reference import (scaled_amax_reference, scaled_decode_reference,
                                      scaled_encode_reference)
from quantbook.bulk.scaled import dequantize_scaled, quantize_scaled
from quantbook.bulk.backend import BACKENDS
from quantbook.scales import get_rule
from quantbook.scales.search import block_errors
from quantbook.scales.steps import decode_table

from gpu_cases import (FakeDeviceArray, bits_equal, count_transfers, fake_cupy, fake_device, load_benchmark,
                       ptxas_build, set_device, use_stand_in_cupy, weights_file)

try:
    import ml_dtypes
    BF16 = ml_dtypes.bfloat16
except ImportError:  # only the bfloat16 cases need it
    ml_dtypes = BF16 = None

BACKEND_NUMPY = BACKENDS["numpy"]
_no_bf16 = pytest.mark.skipif(BF16 is None, reason="bfloat16 needs ml_dtypes")
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float16, id="f16"),
          pytest.param(BF16, id="bf16", marks=_no_bf16)]

# a 16-entry table that is not E2M1's: +0 and -0 both, sign-magnitude order, uneven spacing
SIGNED16 = np.array([0.0, 0.3, 0.9, 1.4, 2.0, 2.9, 4.1, 6.0,
                     -0.0, -0.5, -1.0, -1.6, -2.2, -3.0, -4.5, -6.0], np.float32)
# fewer than 16 entries: codes 11..15 are corrupt and decode to NaN
SHORT11 = np.array([-6, -3, -1.5, -0.6, -0.1, 0, 0.2, 0.8, 1.7, 3.3, 6], np.float32)


def _codebook(name):
    if name == "signed16":
        return Codebook(np.unique(SIGNED16.astype(np.float64) + 0.0), bits=4, code=SIGNED16, name="signed16")
    if name == "short11":
        return Codebook(SHORT11.astype(np.float64), bits=4, code=SHORT11, name="short11")
    return resolve_codebook(name)


def _table(name):
    return L.scaled_table(_codebook(name).code, 6.0)


TABLES = ["e2m1", "nf4", "iq4_nl", "af4", "fp4", "signed16", "short11"]


# ------------------------------------------------------------------ host preparation (numpy)
@pytest.mark.parametrize("allow_symmetric", [True, False], ids=["sym", "general"])
@pytest.mark.parametrize("name", TABLES)
def test_threshold_encoder_is_the_layout_encoder(name, allow_symmetric):
    """The kernel's encoder (a count over thresholds, a tie going up as ``y > pred(mid)``)
    gives the layout's codes on every midpoint, its neighbours, signed zeros, subnormals,
    infinities, NaN and a wide random sample."""
    table = _table(name)
    enc = L.scaled_encoder(table)
    args = GS.encoder_args(table, allow_symmetric)
    if not allow_symmetric:
        assert not args.sym
    m = enc.mids
    rng = np.random.default_rng(11)
    y = np.concatenate([m, -m, np.nextafter(m, np.float32(-np.inf)), np.nextafter(m, np.float32(np.inf)),
                        enc.values, -enc.values, [0.0, -0.0, 1e-45, -1e-45, 1e-39, -1e-39, np.inf,
                                                  -np.inf, np.nan, -np.nan, 3.4e38, -3.4e38],
                        rng.standard_normal(20000) * 4, rng.uniform(-7, 7, 20000)]).astype(np.float32)
    assert np.array_equal(GS.encode_with_args(y, args), enc(y))
    assert args.pad == enc.zero_index


def test_e2m1_minus_zero_has_its_own_code():
    y = np.array([-0.0, -0.1, -0.25, 0.0, 0.1, 0.25, -0.2500001, 0.75, -2.5, 5.0, np.nan], np.float32)
    for allow_symmetric in (True, False):
        args = GS.encoder_args(_table("e2m1"), allow_symmetric)
        assert args.sym == allow_symmetric
        assert GS.encode_with_args(y, args).tolist() == [8, 8, 8, 0, 0, 0, 9, 2, 12, 6, 7]


def test_which_tables_are_symmetric():
    # E2M1 is sign-symmetric in its own code layout; bitsandbytes' FP4 is symmetric in
    # another layout, NF4 and the signed16 table are not symmetric: the general encoder
    assert [GS.encoder_args(_table(n)).sym for n in TABLES] == [True] + [False] * 6


def test_entries_near_float32s_maximum_have_finite_midpoints_on_the_gpu_encoder():
    # the float32 sum of two entries near -FLT_MAX overflows; their midpoint is still the finite
    # -2.95e38, so a threshold expresses the tie there, which goes up (the lower entry at an
    # odd index, the upper at an even one), and the gpu encoder takes the table
    big = np.float32(3.0e38)
    for table in (np.array([0.0, -big, np.float32(-2.9e38), big], np.float32),
                  np.array([-big, np.float32(-2.9e38), 0.0, big], np.float32)):
        args = GS.encoder_args(table)
        mid = np.float32(-2.95e38)
        y = np.array([mid, np.nextafter(mid, np.float32(0)), np.nextafter(mid, -big), -big, big, 2.9e38, 0.0],
                     np.float32)
        assert np.array_equal(GS.encode_with_args(y, args), L.scaled_encoder(table)(y))
        lo, hi = (1, 2) if table[0] == 0 else (0, 1)          # indices of -3e38 and -2.9e38
        assert L.scaled_encoder(table)(y[:3]).tolist() == [hi if hi % 2 == 0 else lo, hi, lo]


def test_exact_multiplier_rounds_as_the_division():
    """x / 2^e and x * 2^-e are the same float32 for every x (first principles: both are the
    exact quotient rounded once), subnormal and overflowing results included."""
    rng = np.random.default_rng(12)
    with np.errstate(over="ignore"):
        x = (rng.standard_normal(4000) * np.exp2(rng.integers(-149, 128, 4000))).astype(np.float32)
    f = np.exp2(np.arange(-127, 128)).astype(np.float32)        # e8m0 range (2^-127 subnormal)
    r, divide = GS.exact_multiplier(f, True)
    assert not divide and np.array_equal(r.astype(np.float64), 1.0 / f.astype(np.float64))
    with np.errstate(over="ignore", under="ignore"):
        for k in range(f.size):
            assert bits_equal(x / f[k], x * r[k]), f[k]
    # not powers of two, or a reciprocal that is no float32: the division stays
    for bad in ([3.0], [1.0, 0.75], [2.0 ** -149], [0.0]):
        g, d = GS.exact_multiplier(np.array(bad, np.float32), True)
        assert d and np.array_equal(g, np.array(bad, np.float32))
    g, d = GS.exact_multiplier(np.array([0.3], np.float32), False)
    assert not d and g[0] == np.float32(0.3)


def test_launch_shape():
    assert GS.launch_shape("encode", 2**28, 16, True) == (2**28 // 8192, 256, 1, 4)
    assert GS.launch_shape("encode", 2**28, 16, True, "bf16", sym=True) == (2**28 // 16384, 256, 1, 4)
    assert GS.launch_shape("encode", 2**28, 16, True, "bf16") == (-(-2**28 // 12288), 256, 1, 4)   # 6 chunks
    assert GS.launch_shape("decode", 2**28, 32, True, "f16") == (2**28 // 8192, 256, 1, 5)
    assert GS.launch_shape("amax", 1000, 32, False)[2] == 0
    assert GS.launch_shape("decode", 1000, 18, True)[2:] == (0, -1)   # not a power of two
    assert GS.launch_shape("amax", 1000, 18, False)[0] == 1


# ------------------------------------------------------------------ emulated kernels
@pytest.fixture(scope="module")
def emu():
    try:
        E.scaled_emulator()
    except E.EmulatorUnavailable as exc:
        pytest.skip(f"host emulation unavailable: {exc}")
    return E


def _nasty(n, rule, rng, table):
    """Seeded data over 10 decades with, block-aligned (block 16): an all-zero block, a
    block with max 4 (so e8m0 floor/even divide by 1 and y = x: the midpoints, their
    neighbours and signed zeros are ties and near-ties), subnormals, and huge values."""
    x = (rng.standard_normal(n) * np.exp(rng.uniform(-6, 6, n // 16 + 1)).repeat(16)[:n]).astype(np.float32)
    x[16:32] = 0.0
    x[17] = -0.0
    mids = L.scaled_encoder(table).mids
    probe = np.concatenate([mids, np.nextafter(mids, np.float32(0)), -mids, [-0.0, -0.1]])
    probe = probe[np.abs(probe) <= 4][:31]
    x[32:64] = 0.0
    x[32:32 + probe.size] = probe
    x[63] = 4.0
    if rule != "bfloat16":                    # a subnormal bfloat16 scale is an error
        x[64:80] = [1e-39, -3e-40, 0.0, 1e-45, -1e-39, 2e-38, -1e-41, 5e-45] * 2
    if rule not in ("float16", "search:ggml", "search:ggml-ref") and n > 96:  # a float16 scale would overflow
        x[80:96] = rng.uniform(-3e38, 3e38, 16)
    return x


RULES = ["e4m3", "e8m0:floor", "e8m0:ceil", "e8m0:even", "e8m0:rceil", "float16", "bfloat16",
         "search:4over6", "search:e8m0:floor@1,0.75/l1", "search:ggml", "search:ggml-ref"]


def _check_driver(be, x, codebook, bs, rule):
    cb = _codebook(codebook)
    r = get_rule(rule)
    flat = np.ascontiguousarray(x).reshape(-1)
    with np.errstate(over="ignore"):
        p, st = quantize_scaled(flat, x.shape, x.dtype, cb, bs, r, 6.0, be, False)
        rp, rst = qb.quantize(x, cb, bs, scale=rule, backend="numpy")
    assert bits_equal(p, rp), np.flatnonzero(p != rp)[:8]
    assert bits_equal(st.absmax, rst.absmax) and st.tensor_scale == rst.tensor_scale
    for dt in (np.float32, np.float16) + ((BF16,) if BF16 is not None else ()):
        st.dtype = np.dtype(dt)
        with np.errstate(over="ignore"):
            a = dequantize_scaled(p, st, be)
            b = qb.dequantize(rp, st, backend="numpy")
        assert a.shape == x.shape and bits_equal(a, b), dt


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("codebook", ["e2m1", "nf4", "signed16"])
def test_driver_bytes_equal_numpy(emu, rule, codebook):
    rng = np.random.default_rng(zlib.crc32(f"{rule} {codebook}".encode()))   # fixed across runs (hash() is not)
    be = E.EmulatedScaledBackend()
    bs = 16 if rule.startswith(("e4m3", "search:4over6")) else 32
    x = _nasty(1001, rule, rng, _table(codebook))          # odd: a pad nibble, a partial block
    _check_driver(be, x, codebook, bs, rule)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule,bs", [("e4m3", 16), ("e8m0:floor", 32), ("e8m0:rceil", 32),
                                     ("float16", 64), ("search:4over6", 16)])
def test_half_precision_inputs(emu, dtype, rule, bs):
    rng = np.random.default_rng(bs)
    x = _nasty(2 * 1003, rule, rng, _table("e2m1")).reshape(2, 1003)
    if dtype is np.float16:
        x = np.clip(x, -6e4, 6e4)
    _check_driver(E.EmulatedScaledBackend(), x.astype(dtype), "e2m1", bs, rule)


@pytest.mark.parametrize("rule", ["e4m3", "e8m0:even", "bfloat16"])
@pytest.mark.parametrize("codebook", ["iq4_nl", "e2m1"])
def test_scalar_path(emu, rule, codebook):
    """The scalar kernels (unaligned data, block sizes that are not a power of two)."""
    rng = np.random.default_rng(5)
    x = _nasty(777, rule, rng, _table(codebook))
    _check_driver(E.EmulatedScaledBackend(vec=False), x, codebook, 32, rule)


@pytest.mark.parametrize("rule", ["e4m3", "e8m0:ceil"])
def test_fp4_through_the_driver(emu, rule):
    """bitsandbytes' FP4: 0.0 stored twice, codes in a layout of their own."""
    rng = np.random.default_rng(7)
    x = _nasty(1001, rule, rng, _table("fp4"))
    _check_driver(E.EmulatedScaledBackend(), x, "fp4", 16, rule)


@pytest.mark.parametrize("rule", ["e4m3", "e8m0:floor", "search:4over6"])
def test_general_encoder_on_e2m1(emu, rule):
    """E2M1 through the general (non-symmetric) kernel encoder too."""
    rng = np.random.default_rng(6)
    x = _nasty(1001, rule, rng, _table("e2m1"))
    _check_driver(E.EmulatedScaledBackend(allow_symmetric=False), x, "e2m1", 16, rule)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule", ["search:ggml", "search:ggml-ref"])
def test_ggml_half_precision_inputs(emu, dtype, rule):
    rng = np.random.default_rng(32)
    x = _nasty(2 * 1003, rule, rng, _table("iq4_nl")).reshape(2, 1003)
    if dtype is np.float16:
        x = np.clip(x, -6e4, 6e4)
    _check_driver(E.EmulatedScaledBackend(), x.astype(dtype), "iq4_nl", 32, rule)


GGML = np.load(Path(__file__).parent / "data" / "ggml_vectors.npz")


@pytest.mark.parametrize("case", json.loads(bytes(GGML["meta"]).decode())["cases"])
@pytest.mark.parametrize("mode,ntry", [("ggml", 7), ("ggml-ref", -1)])
def test_ggml_kernel_equals_ggml(emu, case, mode, ntry):
    """The search kernel on ggml's own vectors (tests/data/make_ggml_vectors.py): the scales'
    float16 bits and the codes ggml wrote (live blocks in its reference path, which leaves a
    dead block's codes unset)."""
    x = GGML[f"{case}/x"].reshape(-1)
    table = L.scaled_table(resolve_codebook("iq4_nl").code, 127)
    d, packed = E.scaled_ggml_emulated(x, table, 32, ntry)
    with np.errstate(over="ignore"):
        assert np.array_equal(d.astype(np.float16).view(np.uint16), GGML[f"{case}/{mode}/d"])
    codes = L.unpack_low_first(packed, x.size).reshape(-1, 32)
    live = np.abs(x.reshape(-1, 32)).max(axis=1) >= 1e-15 if ntry < 0 else slice(None)
    assert np.array_equal(codes[live], GGML[f"{case}/{mode}/codes"][live])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bs", [2, 6, 32, 64, 256])
@pytest.mark.parametrize("codebook,ntry", [("iq4_nl", 7), ("nf4", -1), ("signed16", 3), ("short11", 7)])
def test_ggml_hook_equals_host(emu, dtype, bs, codebook, ntry):
    """Any even block size, a partial last block, an odd count (pad nibble), unsorted tables
    with repeats, fewer than 16 entries, 16-bit inputs: the kernel against the host search."""
    from quantbook.bulk.backend import Backend

    rng = np.random.default_rng(bs + ntry)
    n = 5 * bs + 3 if bs > 2 else 41
    x = (rng.standard_t(4, n) * np.exp(rng.uniform(-4, 4))).astype(np.float32)
    x[:bs] = 0.0
    x = x.astype(dtype)
    table = _table(codebook)
    d, p = E.scaled_ggml_emulated(x, table, bs, ntry)
    rd, rp = Backend.scaled_ggml(BACKEND_NUMPY, x.astype(np.float32), table, bs, ntry)
    assert bits_equal(d, rd) and bits_equal(p, rp)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bs", [2, 6, 16, 24, 64, 4096])
@pytest.mark.parametrize("name,divide,loss", [("e2m1", False, "l2"), ("e2m1", True, "l1"),
                                              ("signed16", True, "l2"), ("short11", False, "l1"),
                                              ("iq4_nl", False, "l2")])   # no 0: a value past n would count
def test_errors_hook(emu, dtype, bs, name, divide, loss):
    """A search candidate's block errors (float64, element order) against the host default:
    multiply and divide paths, symmetric and general encoders, partial blocks."""
    rng = np.random.default_rng(bs + len(name))
    n = 3 * bs + 5
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    x[:bs] = 0.0
    x = x.astype(dtype)
    nb = -(-n // bs)
    f = rng.uniform(0.3, 3, nb).astype(np.float32)     # not powers of two: a division stays one
    scale = rng.uniform(0.2, 2, nb).astype(np.float32)
    table = _table(name)
    ref = BACKEND_NUMPY.scaled_errors(x, f, divide, scale, table, bs, loss)
    for vec in (True, False):   # 16-byte chunks (block sizes of whole chunks), and one at a time
        got = E.scaled_errors_emulated(x, f, divide, scale, table, bs, loss, vec=vec)
        assert got.dtype == np.float64 and bits_equal(got, ref), vec
    view = np.empty(n + 1, x.dtype)[1:]   # misaligned: one at a time
    view[:] = x
    assert bits_equal(E.scaled_errors_emulated(view, f, divide, scale, table, bs, loss), ref)


def test_block_errors_add_in_element_order():
    # 1 + 2**-53 + 2**-53: sequential float64 gives 1, a pairwise or reordered sum 1 + 2**-52
    x = np.array([1.0, 2.0**-26.5, 2.0**-26.5, 0.0], np.float32)
    e = block_errors(x, np.zeros(4, np.float32), 4, "l2")
    assert e[0] == 1.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bs", [2, 6, 16, 18, 32, 64, 256, 512, 4096])
def test_amax_hook(emu, dtype, bs):
    """Block maxima for every block size path: warp groups, whole warps, atomicMax across
    warps (> 256), the scalar kernel (not a power of two); NaN for blocks with NaN or Inf."""
    rng = np.random.default_rng(bs)
    n = 3 * bs + 2 * 77 + 1
    x = (rng.standard_normal(n) * 100).astype(np.float32)
    x[min(n - 1, bs + 1)] = np.nan
    x[n - 1] = -np.inf
    x[:min(bs, n)] = -0.0
    x = x.astype(dtype)
    ref = scaled_amax_reference(x, bs)
    assert bits_equal(E.scaled_amax_emulated(x, bs), ref)
    assert bits_equal(E.scaled_amax_emulated(x, bs, vec=False), ref)


@pytest.mark.parametrize("name", TABLES)
def test_encode_decode_hooks(emu, name):
    """Direct hooks: a true division (factors that are not powers of two), odd n, a view at a
    2-byte offset (scalar path), every stored byte (corrupt codes decode to NaN); NaNs of
    either sign and infinities code as numpy's searchsorted ranks them."""
    table = _table(name)
    rng = np.random.default_rng(len(name))
    x = (rng.standard_normal(1203) * 3).astype(np.float32)
    x[[5, 300, 301, 1202]] = [np.nan, -np.nan, np.inf, -np.inf]
    nb = -(-x.size // 16)
    f = rng.uniform(0.3, 3, nb).astype(np.float32)
    for divide in (True, False):
        ref = scaled_encode_reference(x, f, divide, table, 16)
        assert bits_equal(E.scaled_encode_emulated(x, f, divide, table, 16), ref)
    x16 = x.astype(np.float16)
    view = np.empty(x16.size + 1, np.float16)[1:]
    view[:] = x16
    ref = scaled_encode_reference(view, f, True, table, 16)
    assert bits_equal(E.scaled_encode_emulated(view, f, True, table, 16), ref)
    every = np.arange(256, dtype=np.uint8).repeat(3)[: nb * 8]
    scale = rng.uniform(0.01, 10, nb).astype(np.float32)
    n = 2 * every.size - 1
    for dt in (np.float32, np.float16) + ((BF16,) if BF16 is not None else ()):
        ref = scaled_decode_reference(every, scale, table, 16, n, dt)
        assert bits_equal(E.scaled_decode_emulated(every, scale, table, 16, n, dt), ref)
        assert bits_equal(E.scaled_decode_emulated(every, scale, table, 16, n, dt, vec=False), ref)
        for off in (1, 2):                   # odd: scalar path; 2: vector path for float32 only
            moved = np.empty(every.size + off, np.uint8)[off:]
            moved[:] = every
            assert bits_equal(E.scaled_decode_emulated(moved, scale, table, 16, n, dt), ref)


@pytest.mark.parametrize("rule, ts, B", [("e4m3", 0.37, 16), ("e8m0:floor", None, 32), ("float16", None, 16),
                                         ("bfloat16", None, 64), ("search:ggml", None, 32)])
def test_decode_looks_the_stored_scales_up_as_the_host_gathers_them(emu, rule, ts, B):
    """The decode kernel's scale lookup (the stored values' bits into the rule's decode table,
    1 or 2 bytes a block, signed rules too) against the reference decode of the scales the
    host gathers: every stored value that decodes to a finite scale, vector and scalar
    paths, ragged n, a misaligned packed view."""
    rng = np.random.default_rng(B)
    table = _table("e2m1")
    lut = decode_table(rule, None if ts is None else np.float32(ts))
    stored = np.flatnonzero(np.isfinite(lut))
    if stored.size > 256:   # 16-bit scales: both ends, both sides of the sign bit, and a sample
        mid = int(np.searchsorted(stored, lut.size // 2))
        stored = np.unique(np.concatenate([stored[:32], stored[-32:], stored[max(mid - 32, 0):mid + 32],
                                           rng.choice(stored, 256)]))
    index = rng.permutation(np.resize(stored, max(stored.size, 300))).astype(np.uint8 if lut.size == 256 else np.uint16)
    n = B * index.size - 5
    packed = rng.integers(0, 256, -(-n // 2), dtype=np.uint8)
    for dt in (np.float32, np.float16) + ((BF16,) if BF16 is not None else ()):
        ref = scaled_decode_reference(packed, lut[index], table, B, n, dt)
        assert bits_equal(E.scaled_decode_emulated(packed, index, table, B, n, dt, lut=lut), ref)
        assert bits_equal(E.scaled_decode_emulated(packed, index, table, B, n, dt, vec=False, lut=lut), ref)
        moved = np.empty(packed.size + 1, np.uint8)[1:]
        moved[:] = packed
        assert bits_equal(E.scaled_decode_emulated(moved, index, table, B, n, dt, lut=lut), ref)


def test_nonfinite_input_through_the_driver(emu):
    x = np.random.default_rng(6).standard_normal(100).astype(np.float32)
    x[40] = np.inf
    x[70] = np.nan
    be = E.EmulatedScaledBackend()
    with pytest.raises(ValueError, match="block 1"):
        quantize_scaled(x, x.shape, x.dtype, qb.get("e2m1"), 32, get_rule("e8m0"), 6.0, be, False)
    p, st = quantize_scaled(x, x.shape, x.dtype, qb.get("e2m1"), 32, get_rule("e8m0"), 6.0, be, True)
    rp, rst = qb.quantize(x, "e2m1", 32, scale="e8m0", backend="numpy", allow_nonfinite=True)
    assert bits_equal(p, rp) and bits_equal(st.absmax, rst.absmax)


# ------------------------------------------------------------------ NVRTC


@pytest.mark.parametrize("arch", ["sm_80"])   # sm_90: test_kernels_fit_their_registers
def test_kernels_compile_to_sass(nvrtc, arch):
    cubin = compile_source(SK.source(), arch, output="cubin", use_cache=True)
    assert cubin[:4] == b"\x7fELF"
    for name in SK.all_kernel_names():
        assert name.encode() in cubin, name


@pytest.fixture(scope="module")
def sm_90(nvrtc):
    """The scaled kernels for sm_90, once for the PTX and the SASS tests: ``(ptxas' log, cubin, PTX)``."""
    return ptxas_build(SK.source(), "scaled.cu")


def test_kernels_fit_their_registers(sm_90):
    """ptxas' report for sm_90: every kernel compiles to SASS without spilling, and each
    encoder fits the CTAs an SM is to hold (``ENCODE_CTAS``: its launch bounds) in an SM's
    65536 registers."""
    log, cubin, _ = sm_90
    spills = {name: int(st) + int(ld) for name, st, ld in re.findall(
        r"Function properties for (\w+)\n.*?(\d+) bytes spill stores, (\d+) bytes spill loads", log)}
    regs = {m.group(1): int(m.group(2))
            for m in re.finditer(r"Compiling entry function '(\w+)'.*?Used (\d+) registers", log, re.S)}
    assert sorted(spills) == sorted(regs) == sorted(SK.all_kernel_names())
    assert {n: v for n, v in spills.items() if v} == {}
    for d in SK.DTYPES:
        for sym in (False, True):
            name, ctas = SK.encode_name(d, sym), SK.ENCODE_CTAS
            assert -(-regs[name] // 8) * 8 * SK.CTA * ctas <= 65536, (name, regs[name], ctas)
    assert cubin[:4] == b"\x7fELF" and all(n.encode() in cubin for n in SK.all_kernel_names())


def test_the_scaled_kernels_ptx_is_plain_ieee_float32(sm_90):
    """No FMA contraction, no flush-to-zero, IEEE division only, no local memory (the
    thresholds stay in registers)."""
    ptx = sm_90[2]
    entries = re.split(r"\.entry ", ptx)[1:]
    assert sorted(e.split("(")[0].strip() for e in entries) == sorted(SK.all_kernel_names())
    for body in entries:
        name = body.split("(")[0].strip()
        assert "fma." not in body and ".ftz" not in body and ".local" not in body, name
        assert not re.search(r"div\.(approx|full)\.f32|rcp\.approx", body), name
        if name.startswith("qbs_encode_"):
            assert "div.rn.f32" in body, name


def test_scaled_kernel_source_subset_and_unknown_names():
    src = SK.source([SK.decode_name("f16")])
    assert "qbs_decode_f16(" in src and "qbs_encode_f16(" not in src
    with pytest.raises(ValueError, match="unknown kernel"):
        SK.source(["qbs_nope"])


# ------------------------------------------------------------------ the launchers, stand-in cupy


@pytest.fixture
def fake_cp(monkeypatch, nvrtc, emu):
    cp = fake_cupy(E.scaled_emulator)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setattr(GS, "_MODULES", {})
    monkeypatch.setattr(G, "_CONSTS", {})
    return cp


def test_scaled_kernels_run_on_the_device_that_holds_the_input(fake_cp):
    """As tests/test_gpu_backend_fake.py checks for bitsandbytes' layout: an array on GPU 1
    while GPU 0 is current is quantized and decoded with GPU 1 current."""
    x = set_device(fake_device(np.random.default_rng(0).standard_normal(256).astype(np.float32)), 1)
    packed, state = qb.quantize(x, "e2m1", 16, scale="e4m3", backend="gpu")
    qb.dequantize(set_device(packed, 1), state, backend="gpu")
    assert fake_cp.launch_devices and set(fake_cp.launch_devices) == {1}


@pytest.mark.parametrize("codebook, sym", [("e2m1", True), ("nf4", False)])
def test_each_encoder_has_its_kernel(fake_cp, codebook, sym):
    """A sign-symmetric table goes to the symmetric encoder's kernel, any other to the
    general one's; the bytes are numpy's either way (several CTAs, a partial last one)."""
    x = np.random.default_rng(31).standard_normal(16 * 1700 + 3).astype(np.float16)
    packed, _ = qb.quantize(fake_device(x), codebook, 16, scale="e4m3", backend="gpu")
    rp, _ = qb.quantize(x, codebook, 16, scale="e4m3", backend="numpy")
    assert bits_equal(np.asarray(packed), rp)
    encoders = [(n, g[0]) for n, g, _ in fake_cp.launches if n.startswith("qbs_encode_")]
    per_cta = SK.CHUNK * (8 if sym else 6) * SK.CTA   # 16-bit input: 128 or 96 bytes a thread
    assert encoders == [(SK.encode_name("f16", sym), -(-x.size // per_cta))]


def test_stored_scales_are_checked_on_the_device(fake_cp, monkeypatch):
    """dequantize() of a scaled state on the gpu backend checks the stored values it uploaded
    for the decode kernel's lookup where they are, and refuses a bad one with the host's
    message; the values that its quantize() made and kept on the device it reads as they are."""
    from quantbook.bulk import state as S

    x = np.random.default_rng(30).standard_normal(32 * 300 + 7).astype(np.float32)
    seen = []
    good = S._entries_good
    monkeypatch.setattr(S, "_entries_good", lambda g, i: (seen.append(type(i)), good(g, i))[1])
    packed, st = qb.quantize(fake_device(x), "e2m1", 32, scale="e8m0", backend="gpu")
    rp, rst = qb.quantize(x, "e2m1", 32, scale="e8m0", backend="numpy")
    want = qb.dequantize(rp, rst, backend="numpy")
    del seen[:]
    got = qb.dequantize(packed, st, backend="gpu")   # the stored values the gpu kept
    assert seen == [] and not st.absmax.flags.writeable, seen
    assert bits_equal(np.asarray(got), want)
    st.absmax = st.absmax.copy()   # a new array: uploaded and checked there
    got = qb.dequantize(packed, st, backend="gpu")
    assert seen == [FakeDeviceArray], seen
    assert bits_equal(np.asarray(got), want)
    st.absmax[5] = 255   # E8M0's NaN
    msgs = []
    for backend, p in (("numpy", rp), ("gpu", packed)):
        with pytest.raises(ValueError, match="decodes to a") as err:
            qb.dequantize(p, st, backend=backend)
        msgs.append(str(err.value))
    assert msgs[0] == msgs[1] and "absmax entry 5" in msgs[0]


@pytest.mark.parametrize("rule, B", [("e4m3", 16), ("e8m0:floor", 32), ("search:4over6", 16), ("float16", 64)])
def test_a_scaled_state_holds_its_stored_scales_on_the_gpu_until_read(fake_cp, monkeypatch, rule, B):
    """quantize() in a scaled layout on the gpu backend does not bring the stored block scales
    to the host: the state's checks, its size in bytes and dequantize() on that GPU read them
    where they are; reading ``absmax`` brings them down once, and the decode is numpy's."""
    x = np.random.default_rng(41).standard_normal(B * 300 + 5).astype(np.float16)
    nb = -(-x.size // B)
    down, up = count_transfers(monkeypatch, fake_cp)
    rp, rst = qb.quantize(x, "e2m1", B, scale=rule, backend="numpy")
    want = qb.dequantize(rp, rst, backend="numpy")
    packed, st = qb.quantize(fake_device(x), "e2m1", B, scale=rule, backend="gpu")
    assert st.validate() is st and st.absmax_nbytes == rst.absmax.nbytes
    assert bits_equal(np.asarray(qb.dequantize(packed, st, backend="gpu")), want)
    assert nb not in down and nb not in up, (down, up)
    assert bits_equal(st.absmax, rst.absmax) and down.count(nb) == 1 and not st.absmax.flags.writeable
    assert bits_equal(np.asarray(qb.dequantize(packed, st, backend="gpu")), want)
    assert nb not in up and down.count(nb) == 1


@pytest.mark.parametrize("rule, B", [("e4m3", 16), ("e8m0:floor", 32)])
def test_evaluate_model_in_a_scaled_layout_on_the_emulated_gpu_is_the_host_report(monkeypatch, emu, tmp_path, rule, B):
    """evaluate-model --backend gpu --scale RULE: the scaled layouts' report is the numpy
    backend's, number for number (the rotation by the vector kernels, on the device)."""
    from quantbook.bulk.gpu import vq as GV
    from quantbook.model import evaluate_model
    from quantbook.naming import resolve_codebooks

    fake_cp = use_stand_in_cupy(monkeypatch, E.any_emulator, build=lambda: (E.scaled_emulator(), E.vq_emulator()),
                                caches=(GS, GV))
    path = weights_file(tmp_path / "m.safetensors", 22, 32, 128)
    cbs = resolve_codebooks("e2m1,nf4", B)
    kw = dict(block_size=B, scale=rule, rotations=("none", "hadamard"), tensors="*.weight")
    host = evaluate_model(path, cbs, backend="numpy", **kw).to_dict(per_tensor=True)
    gpu = evaluate_model(path, cbs, backend="gpu", **kw).to_dict(per_tensor=True)
    assert any(n.startswith("qbs_") for n, _, _ in fake_cp.launches) and gpu == host
    assert any(n == "qbv_fwht_tile" for n, _, _ in fake_cp.launches)


@pytest.mark.parametrize("rule", ["float16", "e4m3"])
def test_the_scale_decode_table_goes_to_the_device_once(fake_cp, monkeypatch, rule):
    """dequantize looks each block's scale up on the device in the rule's decode table (256 KB
    for 16-bit scales): the table is uploaded on the first call, then reused, while the
    stored values go up on every call."""
    sent = []
    upload = fake_cp.asarray
    def counted(a, dtype=None):   # host arrays only: asarray of a device array copies nothing
        if not isinstance(a, FakeDeviceArray):
            sent.append(np.size(a))
        return upload(a, dtype)

    monkeypatch.setattr(fake_cp, "asarray", counted)
    x = np.random.default_rng(3).standard_normal(16 * 300).astype(np.float32)   # 300 blocks
    packed, state = qb.quantize(x, "e2m1", 16, scale=rule, backend="numpy")
    want = qb.dequantize(packed, state, backend="numpy")
    entries = 256 if rule == "e4m3" else 65536
    for call in range(3):
        del sent[:]
        got = np.asarray(qb.dequantize(fake_device(packed), state, backend="gpu"))
        assert bits_equal(got, want)
        assert sent.count(entries) == (call == 0) and sent.count(300) == 1, (call, sent)


def test_a_scale_lookup_refuses_bits_and_tables_that_do_not_match(fake_cp):
    """The kernel indexes the table with 1 or 2 unsigned bytes: any other pairing is an error,
    never a read past the table."""
    packed = np.zeros(32, np.uint8)
    lut8, lut16 = decode_table("e4m3", np.float32(1.0)), decode_table("float16")
    for index, lut in ((np.zeros(4, np.int8), lut8), (np.zeros(4, np.float16), lut16),
                       (np.zeros(4, np.uint8), lut16), (np.zeros(4, np.uint16), lut8),
                       (np.zeros(4, np.uint32), lut16), (np.zeros(4, np.uint8), lut8.astype(np.float64))):
        with pytest.raises(ValueError, match="a scale lookup takes uint8 or uint16"):
            GS.scaled_decode_gpu(packed, fake_device(index), _table("e2m1"), 16, 64, np.float32, lut=lut)


def test_device_tables_are_known_by_identity_only_when_read_only_and_owned(fake_cp):
    frozen = np.arange(8, dtype=np.float32)
    frozen.setflags(write=False)
    assert G._device_const(frozen) is G._device_const(frozen) and (0, id(frozen)) in G._CONSTS
    loose = np.arange(8, dtype=np.float32)
    first = G._device_const(loose)
    assert G._device_const(loose) is first and (0, id(loose)) not in G._CONSTS
    loose[3] = 99.0   # a writable table is known by its bytes: a change is a new copy
    assert G._device_const(loose) is not first
    view = frozen[2:]   # a read-only view: its base could change, so it is known by its bytes
    assert np.array_equal(G._device_const(view), frozen[2:]) and (0, id(view)) not in G._CONSTS


@pytest.mark.parametrize("dtype", DTYPES)
def test_launchers_through_stand_in_cupy(fake_cp, dtype):
    rng = np.random.default_rng(8)
    table = _table("e2m1")
    x = (rng.standard_normal(4099) * 5).astype(np.float32).astype(dtype)
    a = GS.scaled_amax_gpu(fake_device(x), 32)
    assert isinstance(a, FakeDeviceArray)                     # the maxima stay on the device
    assert bits_equal(np.asarray(a), scaled_amax_reference(x, 32))
    rule = get_rule("e8m0:floor")
    stored = rule.encode(np.asarray(a), 6.0)
    f, divide = rule.divisor(stored)
    got = GS.scaled_scales_gpu(a, rule, 6.0, None, need_scale=True)
    assert all(isinstance(v, FakeDeviceArray) for v in (got[0], got[1], got[3]))
    assert bits_equal(np.asarray(got[0]), stored) and bits_equal(np.asarray(got[3]), rule.decode(stored))
    assert got[2] is False and bits_equal(np.asarray(got[1]), np.float32(1) / f)   # exact multiplier
    p = GS.scaled_encode_gpu(fake_device(x), got[1], got[2], table, 32)
    assert isinstance(p, FakeDeviceArray) and bits_equal(p, scaled_encode_reference(x, f, divide, table, 32))
    s = rule.decode(stored)
    d = GS.scaled_decode_gpu(p, s, table, 32, x.size, dtype)
    assert bits_equal(np.asarray(d).view(np.uint8),
                      scaled_decode_reference(p, s, table, 32, x.size, dtype).view(np.uint8))
    names = [n for n, _, _ in fake_cp.launches]
    key = G._dtype_key(dtype)
    # E2M1: symmetric
    assert names == [SK.amax_name(key), SK.STEPS_NAME, SK.encode_name(key, True), SK.decode_name(key)]


@pytest.mark.parametrize("rule,ts", [("e4m3", 0.0123), ("e8m0:floor", None), ("e8m0:rceil", None),
                                     ("float16", None), ("bfloat16", None)])
def test_step_lookup_kernel_is_the_step_tables_search(fake_cp, rule, ts):
    """qbs_steps against numpy's searchsorted over the step table: on every step's first
    maximum and the float32 just below it, zero and float32's largest (the valid steps), the
    stored bits, factors and decoded scales; a maximum on an invalid step gives None (the
    rule raises)."""
    from quantbook.scales.steps import step_table

    r = get_rule(rule)
    tsf = None if ts is None else np.float32(ts)
    table = step_table(r, 6.0, tsf)
    bits = np.unique(np.concatenate([table.starts, table.starts - 1, [0, 0x7F7FFFFF]]).astype(np.int64))
    bits = bits[(bits >= 0) & (bits <= 0x7F7FFFFF)].astype(np.uint32)
    idx = table.index(bits.view(np.float32))
    ok = table.valid[idx]
    assert ok.any() and ((~ok).any() or rule not in ("float16", "bfloat16"))   # overflow, underflow
    a = bits[ok].view(np.float32)
    f, div = GS.step_args(table)
    for need in (False, True):
        stored, factor, divide, scale = GS.scaled_scales_gpu(fake_device(a), r, 6.0, tsf, need_scale=need)
        assert bits_equal(np.asarray(stored), table.stored[idx[ok]]) and divide == div
        assert bits_equal(np.asarray(factor), f[idx[ok]])
        assert (scale is None) if not need else bits_equal(np.asarray(scale), table.scale[idx[ok]])
    if (~ok).any():
        bad = np.concatenate([a[:5], bits[~ok][:1].view(np.float32), a[5:9]])
        assert GS.scaled_scales_gpu(fake_device(bad), r, 6.0, tsf) is None


@pytest.mark.parametrize("rule", RULES)
def test_gpu_backend_through_stand_in_cupy(fake_cp, rule):
    """The gpu backend's whole path, as quantize() drives it: maxima kept on the device, the
    rule's step table looked up there (CuPy's searchsorted and gathers), then the kernels."""
    be = BACKENDS["gpu"]
    rng = np.random.default_rng(len(rule))
    table = _table("e2m1")
    bs = 16 if rule.startswith(("e4m3", "search:4over6")) else 32
    x = _nasty(1001, rule, rng, table)
    with np.errstate(over="ignore"):
        p, st = quantize_scaled(fake_device(x), x.shape, x.dtype, _codebook("e2m1"), bs, get_rule(rule),
                                6.0, be, False)
        rp, rst = qb.quantize(x, _codebook("e2m1"), bs, scale=rule, backend="numpy")
    assert bits_equal(np.asarray(p), rp), np.flatnonzero(np.asarray(p) != rp)[:8]
    assert type(st.absmax) is np.ndarray and bits_equal(st.absmax, rst.absmax)
    assert st.tensor_scale == rst.tensor_scale
    fake_cp.launches.clear()
    with np.errstate(over="ignore"):
        d = dequantize_scaled(p, st, be)            # stored scales looked up by the decode kernel
        rd = qb.dequantize(rp, rst, backend="numpy")
    assert isinstance(d, FakeDeviceArray) and bits_equal(np.asarray(d), rd)
    assert [n for n, _, _ in fake_cp.launches] == [SK.decode_name("f32")]


@pytest.mark.parametrize("rule,big", [("float16", 1e38), ("bfloat16", 1e-39)])
def test_gpu_backend_raises_the_rules_error(fake_cp, rule, big):
    """A block on a step the rule refuses: the rule's own message, naming the block."""
    x = np.ones(96, np.float32)
    x[40] = big
    x[32:40] = x[41:64] = 0.0
    with pytest.raises(ValueError) as want:
        qb.quantize(x, "e2m1", 32, scale=rule, backend="numpy")
    with pytest.raises(ValueError) as got:
        quantize_scaled(fake_device(x), x.shape, x.dtype, _codebook("e2m1"), 32, get_rule(rule), 6.0,
                        BACKENDS["gpu"], False)
    assert "block 1" in str(want.value) and str(got.value) == str(want.value)


def test_ggml_and_errors_launchers_through_stand_in_cupy(fake_cp):
    rng = np.random.default_rng(10)
    table = L.scaled_table(resolve_codebook("iq4_nl").code, 127)
    x = rng.standard_normal(32 * 40 + 6).astype(np.float32)
    d, p = GS.scaled_ggml_gpu(fake_device(x), table, 32, 7)
    assert isinstance(d, np.ndarray) and not isinstance(d, FakeDeviceArray) and isinstance(p, FakeDeviceArray)
    rd, rp = BACKEND_NUMPY.scaled_ggml(x, table, 32, 7)
    assert bits_equal(d, rd) and bits_equal(np.asarray(p), rp)
    f = rng.uniform(0.5, 2, 41).astype(np.float32)
    e = GS.scaled_errors_gpu(fake_device(x), f, True, f, table, 32, "l2")
    assert isinstance(e, FakeDeviceArray)                     # the sums stay on the device
    assert bits_equal(np.asarray(e), BACKEND_NUMPY.scaled_errors(x, f, True, f, table, 32, "l2"))
    assert [n for n, _, _ in fake_cp.launches] == [SK.ggml_name("f32"), SK.errors_name("f32")]
    with pytest.raises(ValueError, match="loss"):
        GS.scaled_errors_gpu(fake_device(x), f, True, f, table, 32, "l3")


def test_launchers_unaligned_and_errors(fake_cp):
    rng = np.random.default_rng(9)
    table = _table("nf4")
    x = fake_device(rng.standard_normal(1001).astype(np.float32))[1:]      # 4-byte offset: scalar path
    f = rng.uniform(0.5, 2, 63).astype(np.float32)
    p = GS.scaled_encode_gpu(x, f, False, table, 16)
    assert bits_equal(p, scaled_encode_reference(np.asarray(x), f, False, table, 16))
    # an aligned input with a true division (the vector path only multiplies), a packed view
    # at an odd offset (the decoder's 2-byte loads), errors of the misaligned input
    xa = fake_device(np.asarray(x).copy())
    assert xa.data.ptr % 16 == 0 and bits_equal(GS.scaled_encode_gpu(xa, f, True, table, 16),
                      scaled_encode_reference(np.asarray(x), f, True, table, 16))
    moved = fake_device(np.empty(p.size + 1, np.uint8))[1:]
    moved[:] = p
    assert bits_equal(GS.scaled_decode_gpu(moved, f, table, 16, 1000, np.float32),
                      scaled_decode_reference(p, f, table, 16, 1000, np.float32))
    assert bits_equal(np.asarray(GS.scaled_errors_gpu(x, f, False, f, table, 16, "l1")),
                      BACKEND_NUMPY.scaled_errors(np.asarray(x), f, False, f, table, 16, "l1"))
    # blocks of 512: several groups of lanes meet in atomicMax, over maxima the host zeroed
    assert bits_equal(np.asarray(GS.scaled_amax_gpu(xa, 512)), scaled_amax_reference(np.asarray(xa), 512))
    with pytest.raises(ValueError, match="factor holds"):
        GS.scaled_encode_gpu(x, f[:10], False, table, 16)
    with pytest.raises(ValueError, match="even block size"):
        GS.scaled_amax_gpu(x, 15)
    with pytest.raises(ValueError, match="bytes"):
        GS.scaled_decode_gpu(p[:10], f, table, 16, 1000, np.float32)
    with pytest.raises(TypeError, match="device array"):
        GS.scaled_amax_gpu(np.ones(8, np.float32), 16)



@pytest.mark.parametrize("b", [2**31, 2**32])
def test_launchers_refuse_a_block_past_the_kernels_int(fake_cp, b):
    """The kernels take the block size as an int: 2**31 and more are refused by name (numpy 2
    raised its OverflowError at the launch; numpy 1 cut 2**32 to a block size of 0)."""
    table = _table("nf4")
    x = fake_device(np.linspace(-3, 2, 1000, dtype=np.float32))
    f = np.ones(1, np.float32)
    p = fake_device(np.zeros(500, np.uint8))
    for call in (lambda: GS.scaled_amax_gpu(x, b), lambda: GS.scaled_encode_gpu(x, f, False, table, b),
                 lambda: GS.scaled_decode_gpu(p, f, table, b, 1000, np.float32),
                 lambda: GS.scaled_errors_gpu(x, f, False, f, table, b, "l1"),
                 lambda: GS.scaled_ggml_gpu(x, table, b, 7)):
        with pytest.raises(ValueError, match=f"^the gpu's scaled-layout kernels take block sizes up to "
                                             f"{2**31 - 2}, got {b}$"):
            call()
    # the largest one still runs: one block, its maximum |x| = 3
    assert np.asarray(GS.scaled_amax_gpu(x, 2**31 - 2)).tolist() == [3.0]

# ------------------------------------------------------------------ a real device
_OK, _WHY = G.gpu_available()
needs_gpu = pytest.mark.skipif(not _OK, reason=f"needs a CUDA device and CuPy ({_WHY})")


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rule,bs,codebook", [("e4m3", 16, "e2m1"), ("e8m0:floor", 32, "e2m1"),
                                              ("e8m0:rceil", 32, "nf4"), ("bfloat16", 64, "signed16")])
def test_device_hooks_equal_numpy(dtype, rule, bs, codebook):
    rng = np.random.default_rng(bs)
    table = _table(codebook)
    x = _nasty(1 << 20 | 7, rule, rng, table)
    if dtype is np.float16:
        x = np.clip(x, -6e4, 6e4)
    x = x.astype(dtype)
    xd = _to_device(x)
    amax_d = GS.scaled_amax_gpu(xd, bs)
    amax = _host(amax_d)
    assert bits_equal(amax, scaled_amax_reference(x, bs))
    r = get_rule(rule)
    ts = r.tensor_scale(float(amax.max()), 6.0)
    stored = r.encode(amax, 6.0, ts)
    f, divide = r.divisor(stored, ts)
    st_d, f_d, div_d, s_d = GS.scaled_scales_gpu(amax_d, r, 6.0, ts, need_scale=True)
    assert bits_equal(_host(st_d), stored) and bits_equal(_host(s_d), r.decode(stored, ts))
    f_mul, div_mul = GS.exact_multiplier(f, divide)
    assert div_d == div_mul and bits_equal(_host(f_d), f_mul)
    for view, xh in ((xd, x), (xd[1:], x[1:])):                   # aligned, then scalar path
        p = GS.scaled_encode_gpu(view, f, divide, table, bs)
        assert bits_equal(_host(p), scaled_encode_reference(xh, f, divide, table, bs))
    p = GS.scaled_encode_gpu(xd, f, divide, table, bs)
    s = r.decode(stored, ts)
    with np.errstate(over="ignore"):
        ref = scaled_decode_reference(_host(p), s, table, bs, x.size, dtype)
    d = GS.scaled_decode_gpu(p, s, table, bs, x.size, dtype)
    assert bits_equal(_host(d).view(np.uint8), ref.view(np.uint8))
    index = stored.view(f"u{stored.dtype.itemsize}")
    d = GS.scaled_decode_gpu(p, _to_device(index), table, bs, x.size, dtype, lut=decode_table(r, ts))
    assert bits_equal(_host(d).view(np.uint8), ref.view(np.uint8))   # the stored bits looked up by the kernel


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ntry", [7, -1])
def test_device_ggml_equals_host(dtype, ntry):
    rng = np.random.default_rng(12)
    table = L.scaled_table(resolve_codebook("iq4_nl").code, 127)
    x = (rng.standard_normal(1 << 20 | 6) * 3).astype(np.float32)
    x[:32] = 0.0
    x = x.astype(dtype)
    d, p = GS.scaled_ggml_gpu(_to_device(x), table, 32, ntry)
    rd, rp = BACKEND_NUMPY.scaled_ggml(x.astype(np.float32), table, 32, ntry)
    assert bits_equal(d, rd) and bits_equal(_host(p), rp)


def _host(a):
    import cupy as cp

    return cp.asnumpy(a.view(cp.uint16) if a.dtype.itemsize == 2 and a.dtype.kind == "V" else a)


def _to_device(x):
    """A CuPy array; bfloat16 through torch (CuPy < 14 has no bfloat16)."""
    import cupy as cp

    if BF16 is not None and x.dtype == BF16:
        torch = pytest.importorskip("torch", reason="bfloat16 device input needs torch")
        t = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16).cuda()
        return t
    return cp.asarray(x)


def test_scaled_benchmark_runs_and_checks_bytes(fake_cp, monkeypatch, capsys):
    """benchmarks/bench_scaled_gpu.py end to end on the stand-in (timings are fake), so the
    script a device run needs is known to work before the device is there."""
    bench = load_benchmark(fake_cp, monkeypatch, "bench_scaled_gpu")
    assert bench.main(["--log2n", "12", "--repeat", "1", "--check", "12"]) == 0
    out = capsys.readouterr().out
    for row in ("amax", "scales", "host rule", "quantize()", "encode+H2D", "errors", "decode", "decode lut",
                "dequantize()", "dequantize() up", "ggml search"):
        assert f" {row} " in out, row
    assert "DIFFER" not in out and out.count("IDENTICAL") == 3 * 3
