"""The CUDA kernels on tensors past 2**31 and 2**32 values, without a GPU or such an array.

Each kernel is launched by the emulator (tests/gpu_emulator.py) with the grid a tensor of
``n`` values gets (2**31 + r or 2**32 + r), but only its last blocks run (``first_block``) and
every array is a :class:`gpu_bounds.Window` on the part those blocks touch: a small array the
kernel's pointer lies far before.  An index kept in 32 bits (a product of ``blockIdx.x`` and
``blockDim.x``, an ``int`` offset) lands far from the window and the launch raises, or reads
other values and the bytes differ from the numpy reference computed on the window's values.
"""

from __future__ import annotations

import ctypes

import gpu_emulator as E
import numpy as np
import pytest
from gpu_bounds import Window, call_guarded
from gpu_cases import bits_equal

from quantbook.bulk import BACKENDS
from quantbook.bulk import format as F
from quantbook.bulk import layouts as L
from quantbook.bulk import vq as VQ
from quantbook.bulk.gpu import kernels as K
from quantbook.bulk.gpu import scaled as GS
from quantbook.bulk.gpu import scaled_kernels as SK
from quantbook.bulk.gpu import vq as GV
from quantbook.bulk.gpu import vq_kernels as VK
from quantbook.bulk.gpu.backend import (_log2_blocksize, dequantize_launch, error_chunks_launch, nested_launch,
                                        packing_for_bits, quantize_launch, sanitize_launch)
from quantbook.bulk.gpu.tables import encoder_tables, search_size
from quantbook.bulk.nested import dynamic_map, nested_lut, quantize_nested_reference
from quantbook.bulk.reference import (dequantize_reference, quantize_reference, scaled_amax_reference,
                                      scaled_decode_reference, scaled_encode_reference)
from quantbook.bulk.sums import CHUNK, error_chunks_reference
from quantbook.codebooks.vector import nearest_brute
from quantbook.numerics import hadamard
from quantbook.scales import get_rule
from quantbook.scales.steps import BUCKET_SHIFT, step_table

#: tensor sizes past 2**31 (a signed 32-bit index) and past 2**32 (an unsigned one); odd, so
#: the last block and the last packed byte are partial
SIZES = (2**31 + 4096 + 37, 2**32 + 4096 + 37)
_STORAGE = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}


def _built(make):
    """``make()``, one of the emulator's libraries; skips where it cannot be built here."""
    try:
        return make()
    except E.EmulatorUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def emu():
    return _built(E.emulator)


def _dtype(key: str) -> np.dtype:
    if key == "bf16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(_STORAGE[key])


def _values(m: int, key: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kernel input, the same values as numpy/ml_dtypes)``: m seeded normal values of ``key``."""
    x = np.random.default_rng(seed).standard_normal(m).astype(np.float32)
    if key == "bf16":
        import ml_dtypes

        xb = x.astype(ml_dtypes.bfloat16)
        return xb.view(np.uint16), xb
    x = x.astype(_STORAGE[key])
    return x, x


_TOY = r"""
/* a copy indexed as blockIdx.x * blockDim.x + threadIdx.x in 32 or 64 bits */
template <typename I>
__global__ void toy_copy(const float* x, float* out, qb_i64 n) {
    const I e = (I)blockIdx.x * blockDim.x + threadIdx.x;
    if ((qb_i64)e < n) out[e] = x[e];
}
extern "C" void emu_toy_copy32(unsigned grid, unsigned block, const float* x, float* out, qb_i64 n)
{ qb_run_grid(grid, block, [&] { toy_copy<qb_u32>(x, out, n); }); }
extern "C" void emu_toy_copy64(unsigned grid, unsigned block, const float* x, float* out, qb_i64 n)
{ qb_run_grid(grid, block, [&] { toy_copy<qb_i64>(x, out, n); }); }
"""


@pytest.mark.parametrize("bits", [32, 64])
def test_a_tail_launch_catches_a_32_bit_index(bits):
    """The check itself: a kernel whose index wraps at 2**32 leaves the window and raises; its
    64-bit twin copies the tail."""
    lib = ctypes.CDLL(str(_built(lambda: E._build_library(
        E._SHIM + "typedef unsigned int qb_u32;\ntypedef long long qb_i64;\n" + _TOY, "emu_toy_large"))))
    lib.emu_toy_copy32.argtypes = lib.emu_toy_copy64.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p,
                                                                 ctypes.c_void_p, ctypes.c_longlong]
    n = SIZES[1]
    grid = -(-n // 256)
    start = (grid - 2) * 256
    x = np.arange(n - start, dtype=np.float32)
    out = np.full(n - start, np.nan, np.float32)
    args = [Window(x, start), Window(out, start), n]
    if bits == 32:
        with pytest.raises(RuntimeError, match="toy_copy32"):
            call_guarded(lib, "toy_copy32", grid, 256, args, first_block=grid - 2)
    else:
        call_guarded(lib, "toy_copy64", grid, 256, args, first_block=grid - 2)
        assert np.array_equal(out, x)


@pytest.mark.parametrize("n,log2b", [(2**31 + 1, np.int32(6)), (np.int32(64), np.int32(6)), (np.int64(64), 6),
                                     (np.int64(64), np.int64(6))])
def test_stand_in_launches_check_each_scalars_width(n, log2b):
    """The stand-in cupy checks every launch's arguments against the kernel's parameter list
    (tests/gpu_cases.py): a count a Python int or 32 bits wide, or an int parameter given 8
    bytes, would shift or cut the arguments on a device."""
    a = np.zeros(4, np.float32)
    E.check_launch(K.sanitize_name("f32"), [a, a, np.int64(64), np.int32(6)])
    with pytest.raises(TypeError, match=K.sanitize_name("f32")):
        E.check_launch(K.sanitize_name("f32"), [a, a, n, log2b])


def _code(bits: int, seed: int) -> np.ndarray:
    """A table of 2**bits values in [-1, 1], shuffled (a stored order that is not sorted) but
    for 1 bit."""
    c = np.linspace(-1, 1, 2**bits).astype(np.float32)
    if bits > 1:
        np.random.default_rng(seed).shuffle(c)
    return c


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("key", K.DTYPES)
@pytest.mark.parametrize("bits,block", [(1, 64), (2, 32), (4, 64), (4, 4096), (6, 128)])
def test_quantize_tail(emu, n, key, bits, block):
    """The last tiles of a quantize grid that covers the tensor (one tile a CTA)."""
    code = _code(bits, bits)
    packing = packing_for_bits(bits)
    cpb = F.codes_per_byte(bits)
    grid, cta = quantize_launch(n, key, block, packing)
    tile = cta * K.quantize_vec(key, block, packing)
    start = (grid - 2) * tile
    assert start % block == 0 and n - start > tile
    xs, xv = _values(n - start, key, bits)
    packed = np.full(F.packed_length(n, bits) - start // cpb, 0xEE, np.uint8)
    absmax = np.full(F.n_blocks(n, block) - start // block, np.nan, np.float32)
    tabs = encoder_tables(code, search_size(packing))
    emu.launch(K.quantize_name(key, K.quantize_vec(key, block, packing), packing, tabs.search), grid, cta,
               Window(xs, start), Window(packed, start // cpb), Window(absmax, start // block), n,
               _log2_blocksize(block), np.ascontiguousarray(tabs.bucket), np.ascontiguousarray(tabs.bounds),
               int(tabs.bounds.size), np.ascontiguousarray(tabs.order), tabs.K, int(tabs.ident), 1,
               first_block=grid - 2)
    want_p, want_a = quantize_reference(xv, code, bits, block)
    assert bits_equal(packed, want_p) and bits_equal(absmax, want_a)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("key", K.DTYPES)
@pytest.mark.parametrize("bits,block", [(1, 64), (2, 32), (4, 64), (8, 256)])
def test_dequantize_tail(emu, n, key, bits, block):
    packing = packing_for_bits(bits)
    cpb = F.codes_per_byte(bits)
    code = _code(bits, 7)[: 2**bits - 1]   # one code past the table: NaN
    grid, cta = dequantize_launch(n)
    start = (grid - 2) * K.DEQ_PER_THREAD * K.DEQ_CTA
    assert start % block == 0
    rng = np.random.default_rng(bits)
    packed = rng.integers(0, 256, F.packed_length(n, bits) - start // cpb, dtype=np.uint8)
    absmax = rng.uniform(0.5, 2, F.n_blocks(n, block) - start // block).astype(np.float32)
    out = np.full(n - start, 0x7E7E, np.uint16) if key != "f32" else np.full(n - start, np.nan, np.float32)
    emu.launch(K.dequantize_name(key, packing), grid, cta, Window(packed, start // cpb),
               Window(absmax, start // block), Window(out, start), n, _log2_blocksize(block), code,
               int(code.size), 1, 1, first_block=grid - 2)
    want = dequantize_reference(packed, absmax, code, bits, block, n - start, _dtype(key))
    assert bits_equal(out, want)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("key", K.DTYPES)
@pytest.mark.parametrize("block", [16, 64, 4096])
def test_sanitize_tail(emu, n, key, block):
    grid, cta = sanitize_launch(n, block)
    g = min(block, 32)
    start = (grid - 2) * cta // g * block
    xs, xv = _values(n - start, key, block)
    bits = xs.view(np.uint32 if key == "f32" else np.uint16)
    bits[::97] = bits[::97] | (0x7F800000 if key == "f32" else 0x7C00 if key == "f16" else 0x7F80)   # Inf / NaN
    out = np.full_like(bits, 0xEE)
    emu.launch(K.sanitize_name(key), grid, cta, Window(bits, start), Window(out, start), n,
               _log2_blocksize(block), first_block=grid - 2)
    assert bits_equal(out.view(xv.dtype), F.sanitize_nonfinite(bits.view(xv.dtype), block))


@pytest.mark.parametrize("key", K.DTYPES)
def test_error_chunks_tail(emu, key):
    """The last two tiles of runs; the grid covers every tile (the backend's grid strides)."""
    n = SIZES[1]
    _, cta, runs = error_chunks_launch(n)
    tiles = -(-runs // K.SUMS_CTA)
    c0 = (tiles - 2) * K.SUMS_CTA
    start = c0 * CHUNK
    xs, xv = _values(n - start, key, 3)
    hs, hv = _values(n - start, key, 4)
    out = np.full(2 * runs - c0, np.nan)   # Σe² of runs c0.., then Σ|e| of every run
    for xhat in (False, True):
        emu.launch(K.error_chunks_name(key), tiles, cta, Window(xs, start), Window(hs, start), int(xhat),
                   Window(out, c0), n, runs, 1, first_block=tiles - 2)
        want = error_chunks_reference(xv, hv if xhat else None)
        assert bits_equal(out[:runs - c0], want[0]) and bits_equal(out[-(runs - c0):], want[1])


@pytest.mark.parametrize("n", SIZES)
def test_nested_tail(emu, n):
    """The nested statistics of 2**31 or 2**32 block maxima (a tensor of 2**37 values and more)."""
    grid, cta = nested_launch(n)
    start = (grid - 2) * 256
    rng = np.random.default_rng(5)
    a = rng.uniform(0, 3, n - start).astype(np.float32)
    offset = np.float32(1.25)
    q = np.full(n - start, 0xEE, np.uint8)
    nested = np.full(2, np.nan, np.float32)
    emu.launch(K.NESTED_QUANT_NAME, grid, cta, Window(a, start), offset, np.ascontiguousarray(nested_lut()),
               Window(q, start), Window(nested, grid - 2), n, first_block=grid - 2)
    want_q, want_n = quantize_nested_reference(a - offset)
    assert bits_equal(q, want_q) and bits_equal(nested, want_n)
    out = np.full(n - start, np.nan, np.float32)
    code = np.ascontiguousarray(dynamic_map(), np.float32)
    emu.launch(K.NESTED_DEQUANT_NAME, grid, cta, Window(q, start), Window(nested, grid - 2), code, offset,
               Window(out, start), n, 8, first_block=grid - 2)
    want = ((code[q] * np.repeat(nested, 256)[: q.size]).astype(np.float32) + offset).astype(np.float32)
    assert bits_equal(out, want)


# ---- the scaled-layout kernels (quantbook/bulk/gpu/scaled_kernels.py) ------------------------


#: E2M1 in its code layout (the symmetric encoder) and a shuffled table (the general one)
_TABLES = {"e2m1": np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], np.float32),
           "shuffled": _code(4, 11) * np.float32(6)}


@pytest.fixture(scope="module")
def semu():
    return _built(E.scaled_emulator)


def _scaled_start(kind: str, n: int, block: int, vec: bool, key: str, sym: bool = False) -> tuple[int, int, int, int]:
    """``(grid, cta, log2B, first element of the last two CTAs)`` of a scaled launch."""
    grid, cta, v, log2b = GS.launch_shape(kind, n, block, vec, key, sym)
    assert v == int(vec)
    if vec:
        per = SK.elements_per_thread(kind, key, sym) * cta
    else:
        per = cta * (block if kind == "amax" else 2)
    return grid, cta, log2b, (grid - 2) * per


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("key", SK.DTYPES)
@pytest.mark.parametrize("block,vec", [(16, True), (512, True), (16, False), (6, False)])
def test_scaled_amax_tail(semu, n, key, block, vec):
    grid, cta, log2b, start = _scaled_start("amax", n, block, vec, key)
    xs, xv = _values(n - start, key, block)
    bits = np.zeros(F.n_blocks(n, block) - start // block, np.uint32)   # zeroed, as the launcher does
    semu.launch(SK.amax_name(key), grid, cta, Window(xs, start), Window(bits, start // block), n, block, log2b,
                int(vec), first_block=grid - 2)
    assert bits_equal(bits.view(np.float32), scaled_amax_reference(xv, block))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("key", SK.DTYPES)
@pytest.mark.parametrize("table", list(_TABLES))
@pytest.mark.parametrize("block,vec", [(16, True), (32, False), (6, False)])
def test_scaled_encode_tail(semu, n, key, table, block, vec):
    t = _TABLES[table]
    args = GS.encoder_args(t)
    grid, cta, log2b, start = _scaled_start("encode", n, block, vec, key, args.sym)
    xs, xv = _values(n - start, key, 2)
    f = np.random.default_rng(3).uniform(0.5, 4, F.n_blocks(n, block) - start // block).astype(np.float32)
    packed = np.full(L.packed_length(n) - start // 2, 0xEE, np.uint8)
    divide = not vec   # the scalar path divides
    semu.launch(SK.encode_name(key, args.sym), grid, cta, Window(xs, start), Window(f, start // block),
                Window(packed, start // 2), n, block, log2b, int(divide), int(vec), args.pad, *args.scalars(),
                first_block=grid - 2)
    lead = start % block   # a block of 6 may begin before the window: the reference sees it whole
    want = scaled_encode_reference(np.concatenate([np.zeros(lead, xv.dtype), xv]), f, divide, t, block)
    assert bits_equal(packed, want[lead // 2:])


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("key", SK.DTYPES)
@pytest.mark.parametrize("block,vec,sbytes", [(16, True, 4), (32, True, 1), (16, False, 2), (6, False, 4)])
def test_scaled_decode_tail(semu, n, key, block, vec, sbytes):
    grid, cta, log2b, start = _scaled_start("decode", n, block, vec, key)
    rng = np.random.default_rng(block)
    packed = rng.integers(0, 256, L.packed_length(n) - start // 2, dtype=np.uint8)
    nb = F.n_blocks(n, block) - start // block
    if sbytes == 4:
        s = rng.uniform(0.5, 2, nb).astype(np.float32)
        lut, scale = s, s
    else:
        lut = rng.uniform(0.5, 2, 1 << (8 * sbytes)).astype(np.float32)
        s = rng.integers(0, lut.size, nb).astype(np.uint8 if sbytes == 1 else np.uint16)
        lut, scale = lut, lut[s]
    out = np.full(n - start, 0x7E7E, np.uint16) if key != "f32" else np.full(n - start, np.nan, np.float32)
    semu.launch(SK.decode_name(key), grid, cta, Window(packed, start // 2), Window(s, start // block),
                Window(lut, start // block) if sbytes == 4 else lut, sbytes, F.decode_table(_TABLES["e2m1"], 4),
                Window(out, start), n, block, log2b, int(vec), first_block=grid - 2)
    lead = start % block   # as in the encode test
    want = scaled_decode_reference(np.concatenate([np.zeros(lead // 2, np.uint8), packed]), scale, _TABLES["e2m1"],
                                   block, lead + n - start, _dtype(key))
    assert bits_equal(out, want[lead:])


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("key", SK.DTYPES)
@pytest.mark.parametrize("block,vec,loss", [(16, True, "l2"), (32, False, "l1"), (6, False, "l2")])
def test_scaled_errors_tail(semu, n, key, block, vec, loss):
    """A thread a block: the last two CTAs' blocks."""
    t = _TABLES["shuffled"]
    args = GS.encoder_args(t)
    nb = F.n_blocks(n, block)
    grid = -(-nb // SK.GGML_CTA)
    b0 = (grid - 2) * SK.GGML_CTA
    start = b0 * block
    xs, xv = _values(n - start, key, 4)
    rng = np.random.default_rng(5)
    f = rng.uniform(0.5, 4, nb - b0).astype(np.float32)
    s = (np.float32(1) / f).astype(np.float32)
    err = np.full(nb - b0, np.nan)
    semu.launch(SK.errors_name(key), grid, SK.GGML_CTA, Window(xs, start), Window(f, b0), Window(s, b0),
                F.decode_table(t, 4), Window(err, b0), n, block, 0, int(loss == "l1"), int(args.sym), int(vec),
                *args.scalars(), first_block=grid - 2)
    assert bits_equal(err, BACKENDS["numpy"].scaled_errors(xv, f, False, s, t, block, loss))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("key", SK.DTYPES)
@pytest.mark.parametrize("block", [32, 40])
def test_scaled_ggml_tail(semu, n, key, block):
    t = _TABLES["shuffled"]
    v, order, nv, delta, pad = GS.ggml_args(t)
    nb = F.n_blocks(n, block)
    grid = -(-nb // SK.GGML_CTA)
    b0 = (grid - 2) * SK.GGML_CTA
    start = b0 * block
    xs, xv = _values(n - start, key, 6)
    d = np.full(nb - b0, np.nan, np.float32)
    packed = np.full(L.packed_length(n) - start // 2, 0xEE, np.uint8)
    semu.launch(SK.ggml_name(key), grid, SK.GGML_CTA, Window(xs, start), Window(d, b0), Window(packed, start // 2),
                n, block, v, order, nv, delta, 1, pad, first_block=grid - 2)
    want_d, want_p = BACKENDS["numpy"].scaled_ggml(xv, t, block, 1)
    assert bits_equal(d, want_d) and bits_equal(packed, want_p)


@pytest.mark.parametrize("nb", SIZES)
def test_scaled_steps_tail(semu, nb):
    """The step lookup of 2**31 or 2**32 blocks: the rule's own stored values and divisors."""
    rule = get_rule("e8m0:floor")
    table = step_table(rule, 6.0)
    grid = -(-nb // SK.CTA)
    b0 = (grid - 2) * SK.CTA
    a = np.random.default_rng(7).uniform(1e-3, 10, nb - b0).astype(np.float32)
    stored = np.full(nb - b0, 0xEE, table.stored.dtype)
    factor = np.full(nb - b0, np.nan, np.float32)
    scale = np.full(nb - b0, np.nan, np.float32)
    bad = np.zeros(1, np.int32)
    semu.launch(SK.STEPS_NAME, grid, SK.CTA, Window(a.view(np.uint32), b0), nb, table.starts, table.buckets,
                table.buckets.size - 2, BUCKET_SHIFT, table.stored, table.stored.itemsize, table.factor,
                table.scale, table.valid.astype(np.uint8), Window(stored, b0), Window(factor, b0),
                Window(scale, b0), 1, bad, first_block=grid - 2)
    want = rule.encode(a, 6.0, None)
    f, divide = rule.divisor(want, None)
    assert bad[0] == 0 and bits_equal(stored, want) and bits_equal(factor, np.asarray(f, np.float32))
    assert bits_equal(scale, np.asarray(rule.decode(want, None), np.float32))


# ---- the vector-quantization kernels (quantbook/bulk/gpu/vq_kernels.py) ------------------------


_NUMPY_VQ = VQ.VQ_BACKENDS["numpy"]


@pytest.fixture(scope="module")
def vemu():
    return _built(E.vq_emulator)


def _points(p: int, count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, p)).astype(np.float32)


@pytest.mark.parametrize("groups", SIZES)
@pytest.mark.parametrize("rule,half", [("rms", True), ("absmax", False)])
def test_vq_group_stat_tail(vemu, groups, rule, half):
    """2**31 or 2**32 groups of 4 (the grid covers them all; the backend's grid strides)."""
    group = 4
    grid = -(-groups // VK.CTA)
    g0 = (grid - 2) * VK.CTA
    v = np.random.default_rng(1).standard_normal((groups - g0) * group).astype(np.float32)
    out = np.full(groups - g0, np.nan)
    scale = np.full(groups - g0, np.nan, np.float32)
    bits = np.full(groups - g0, 0xEEEE, np.uint16)
    vemu.launch("qbv_group_stat", grid, VK.CTA, Window(v, g0 * group), Window(out, g0), Window(scale, g0),
                Window(bits, g0), groups, group, int(rule == "absmax"), int(half), 1, first_block=grid - 2)
    want = _NUMPY_VQ.group_stat(v, group, rule)
    stored = want.astype(np.float16 if half else np.float32)
    assert bits_equal(out, want) and bits_equal(scale, stored.astype(np.float32))
    assert not half or bits_equal(bits, stored)


def _encode_tail(vemu, grid2, grid, pts, head, out):
    """The last two CTAs of a ``grid``-CTA launch of ``qbv_encode`` (``grid2``: the 2-D grid
    search) on ``head`` = (values, scales, vectors, group), indices to ``out``."""
    pd, c0s, order = VQ._device_scan_tables(pts.tobytes(), *pts.shape)
    scan = (c0s, order, pd, pts.shape[0], out)
    if grid2:
        zero, lo0, lo1, inv0, inv1, cells, lut, multi = VQ._grid_tables(pts.tobytes(), pts.shape[0])
        vemu.launch("qbv_encode_grid2", grid, VK.CTA, *head, zero, lo0, lo1, inv0, inv1, cells, lut, multi, *scan,
                    first_block=grid - 2)
    else:
        vemu.launch("qbv_encode", grid, VK.CTA, *head, pts.shape[1], *scan, first_block=grid - 2)


@pytest.mark.parametrize("vectors", SIZES)
@pytest.mark.parametrize("p,grid2", [(4, False), (2, False), (2, True)])
def test_vq_encode_tail(vemu, vectors, p, grid2):
    group = 8
    pts = _points(p, 40, p)
    vectors -= vectors % (group // p)   # whole groups
    grid = -(-vectors // VK.CTA)
    t0 = (grid - 2) * VK.CTA
    rng = np.random.default_rng(2)
    v = rng.standard_normal((vectors - t0) * p).astype(np.float32)
    s = rng.uniform(0.5, 2, -(-(vectors - t0) * p // group)).astype(np.float32)
    s[3] = 0   # a group of scale 0: the index of y = 0
    out = np.full(vectors - t0, -1, np.int32)
    _encode_tail(vemu, grid2, grid, pts, (Window(v, t0 * p), Window(s, t0 * p // group), vectors, group),
                 Window(out, t0))
    assert np.array_equal(out, _NUMPY_VQ.encode(v, s, group, pts).astype(np.int32))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("p", [2, 4])
def test_vq_decode_tail(vemu, n, p):
    """2**31 or 2**32 output values (a thread each)."""
    group = 8
    pts = _points(p, 300, 3)
    n -= n % group   # whole groups
    grid = -(-n // VK.CTA)
    e0 = (grid - 2) * VK.CTA
    rng = np.random.default_rng(4)
    idx = rng.integers(0, pts.shape[0], (n - e0) // p).astype(np.int32)
    s = rng.uniform(0.5, 2, (n - e0) // group).astype(np.float32)
    out = np.full(n - e0, np.nan, np.float32)
    vemu.launch("qbv_decode", grid, VK.CTA, Window(idx, e0 // p), Window(s, e0 // group), pts, Window(out, e0), n,
                group, p, first_block=grid - 2)
    assert bits_equal(out, _NUMPY_VQ.decode(idx, s, group, pts))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("bf16", [False, True])
def test_vq_cast_tail(vemu, n, wide, bf16):
    import ml_dtypes

    grid = -(-n // VK.CTA)
    e0 = (grid - 2) * VK.CTA
    y = (np.random.default_rng(5).standard_normal(n - e0) * 1e3).astype(np.float64 if wide else np.float32)
    out = np.full(n - e0, 0xEEEE, np.uint16)
    vemu.launch("qbv_cast64" if wide else "qbv_cast", grid, VK.CTA, Window(y, e0), Window(out, e0), n, int(bf16),
                first_block=grid - 2)
    assert bits_equal(out, y.astype(ml_dtypes.bfloat16 if bf16 else np.float16))


@pytest.mark.parametrize("total", [2**31 + 5 * 4096, 2**32 + 3 * 4096])
@pytest.mark.parametrize("n", [1024, 4096])
def test_vq_rotate_tail(vemu, total, n):
    """The last two rows of a rotation of ``total`` values: rows of 1024 in one tile pass; rows of
    4096 in tiles of 2048, then the last butterfly span in global memory."""
    rows = total // n
    assert rows * n == total
    x = np.random.default_rng(6).standard_normal((2, n)).astype(np.float32)
    e0 = total - 2 * n
    sg = hadamard.signs(n, hadamard.SEED)
    inv = 1.0 / np.sqrt(n)
    tile = min(n, GV.FWHT_TILE)
    buf = np.full(2 * n, np.nan)
    out = np.full(2 * n, np.nan, np.float32)
    chunks = -(-total // VK.TILE)
    common = (total, n)
    vemu.launch("qbv_fwht_tile", chunks, VK.CTA, Window(x.reshape(-1), e0), sg, Window(buf, e0), Window(out, e0),
                *common, tile, inv, 0, GV._HOST_NAN, 0, first_block=chunks - 2 * n // VK.TILE)
    if tile < n:
        grid = total // 2 // VK.CTA
        vemu.launch("qbv_butterfly", grid, VK.CTA, Window(buf, e0), sg, Window(out, e0), *common, tile, inv, 0, 1,
                    GV._HOST_NAN, 0, first_block=grid - n // VK.CTA)
    assert bits_equal(out.reshape(2, n), _NUMPY_VQ.rotate(x, hadamard.SEED))


#: a group of more than 2**31 weights (one scale for a row of 3·2**30 values, as the numpy
#: and cpu backends take it)
_BIG_GROUP = 3 * 2**30
#: a group of more than 2**31 vectors (of 2 or 4 values): its count of vectors is past an int
_HUGE_GROUP = 5 * 2**31


@pytest.mark.parametrize("group", [_BIG_GROUP, _HUGE_GROUP], ids=["big", "huge"])
@pytest.mark.parametrize("p,grid2", [(4, False), (2, False), (2, True)])
def test_vq_encode_group_past_2_31(vemu, p, grid2, group):
    pts = _points(p, 40, p)
    vectors = (SIZES[1] if group < SIZES[1] else 2 * group) // p   # the last blocks in the second group
    grid = -(-vectors // VK.CTA)
    t0 = (grid - 2) * VK.CTA
    v = np.random.default_rng(8).standard_normal((vectors - t0) * p).astype(np.float32)
    g0 = t0 * p // group
    s = np.array([0.75, 1.5], np.float32)[: (vectors * p - 1) // group - g0 + 1]
    out = np.full(vectors - t0, -1, np.int32)
    _encode_tail(vemu, grid2, grid, pts, (Window(v, t0 * p), Window(s, g0), vectors, group), Window(out, t0))
    e = np.arange(t0, vectors) * p
    y = (v.reshape(-1, p) / s[e // group - g0][:, None]).astype(np.float32)
    assert np.array_equal(out, nearest_brute(pts.astype(np.float64), y.astype(np.float64)))


@pytest.mark.parametrize("p", [2, 4])
def test_vq_decode_group_past_2_31(vemu, p):
    pts = _points(p, 300, 9)
    n = SIZES[1] - SIZES[1] % p
    grid = -(-n // VK.CTA)
    e0 = (grid - 2) * VK.CTA
    rng = np.random.default_rng(10)
    idx = rng.integers(0, pts.shape[0], (n - e0) // p).astype(np.int32)
    g0 = e0 // _BIG_GROUP
    s = np.array([0.75, 1.5], np.float32)[: (n - 1) // _BIG_GROUP - g0 + 1]
    out = np.full(n - e0, np.nan, np.float32)
    vemu.launch("qbv_decode", grid, VK.CTA, Window(idx, e0 // p), Window(s, g0), pts, Window(out, e0), n,
                _BIG_GROUP, p, first_block=grid - 2)
    want = pts[idx].reshape(-1) * s[np.arange(e0, n) // _BIG_GROUP - g0]   # float32 products
    assert bits_equal(out, want)


@pytest.mark.parametrize("n", [*SIZES, 2**36 + 7])
def test_launch_grids_cover_n_within_cudas_limit(n):
    """Every launcher's grid for ``n`` values (2**36: 128 GiB of 16-bit values, beyond any GPU's
    memory) is below CUDA's 2**31 - 1 blocks and its CTAs reach the last value."""
    limit = 2**31 - 1
    for key in K.DTYPES:
        for packing, block in [(1, 64), (4, 16), (4, 4096), (8, 64)]:
            grid, cta = quantize_launch(n, key, block, packing)
            assert grid <= limit and grid * cta * K.quantize_vec(key, block, packing) >= n
        for kind, block, vec in [("amax", 2, False), ("amax", 16, True), ("encode", 2, False), ("encode", 16, True),
                                 ("decode", 2, False), ("decode", 16, True)]:
            grid, cta, _, start = _scaled_start(kind, n, block, vec, key)
            assert grid <= limit and grid * (start // (grid - 2)) >= n   # start: where CTA grid - 2 begins
    grid, cta = dequantize_launch(n)   # one shape for every dtype and packing
    assert grid <= limit and grid * cta * K.DEQ_PER_THREAD >= n
    for block in (16, 4096):
        grid, cta = sanitize_launch(n, block)
        assert grid <= limit and grid * cta // min(block, 32) * block >= n
    grid, cta = nested_launch(n)
    assert grid <= limit and grid * cta >= n
    grid, cta, runs = error_chunks_launch(n)
    assert grid <= limit and runs * CHUNK >= n
    for b in (2, 32):   # a thread a block: the search kernels, and the steps lookup of n blocks
        assert -(-F.n_blocks(n, b) // SK.GGML_CTA) <= limit and -(-n // SK.CTA) <= limit
