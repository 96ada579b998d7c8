"""Peak host memory of the bulk paths, bounded as multiples of the input's bytes.

The peaks are tracemalloc's (numpy's allocations: deterministic, unlike the resident set);
what numba allocates inside a kernel is not traced, and no kernel allocates more than a
block's buffer.  Each bound sits between the peak of a whole-tensor temporary and what the
path needs (its result and per-block arrays); docs/benchmarks.md ("Peak host memory") has
the measured multiples.  The values are checked against independent computations: the numba
kernels against the numpy reference, the reference's functions on the whole array against
the backends' pieces.
"""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest

import quantbook as qb
from quantbook.bulk import BACKENDS
from quantbook.bulk import format as F
from quantbook.bulk.reference import (dequantize_reference, quantize_reference, scaled_amax_reference,
                                      scaled_decode_reference, scaled_encode_reference)
from quantbook.bulk.layouts import scaled_table
from quantbook.bulk.sums import CHUNK
from quantbook.bulk.vq import VQ_BACKENDS, VQState, as_points, dequantize_vq, quantize_vq
from quantbook.naming import resolve_codebook
from quantbook.numerics import hadamard
from quantbook.scales.search import block_errors

try:
    import ml_dtypes
    BF16 = ml_dtypes.bfloat16
except ImportError:  # only the bfloat16 cases need it
    BF16 = None

N = 1 << 22   # 16 MB of float32: the pieces' few MB are a small share of it
ROW = 4096


def _x(dtype=np.float32, n=N) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(n, dtype=np.float32).astype(dtype)


def _peak(fn):
    """``(fn(), peak)``: the peak of traced memory during the call over what was traced before."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


LAYOUTS = [pytest.param(dict(codebook="nf4", block_size=64), id="nf4"),
           pytest.param(dict(codebook="nf4", block_size=64, nested=True), id="nested"),
           pytest.param(dict(codebook="e2m1", block_size=32, scale="e8m0"), id="mxfp4"),
           pytest.param(dict(codebook="e2m1", block_size=16, scale="e4m3"), id="nvfp4")]


@pytest.mark.parametrize("kw", LAYOUTS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
def test_the_numpy_backend_quantizes_in_pieces(kw, dtype):
    """The reference's float32 copy, int64 ranks and codes, float scaled values of the whole
    tensor were 5 (bitsandbytes' layout) to 9 (scaled) times a float32 input, twice that for a
    float16 one; the backend now runs the reference on pieces of whole blocks.  What stays:
    the result and, for the scaled layouts, the rule's per-block arrays (NVFP4: 16 values a
    block), whatever the input's type: at most 5 bytes a value (1.25 times a float32 input)."""
    x = _x(dtype)
    (packed, state), peak = _peak(lambda: qb.quantize(x, backend="numpy", **kw))
    assert peak < 5 * x.size, peak / x.nbytes
    want_p, want_s = qb.quantize(x, backend="cpu", **kw)
    assert np.array_equal(packed, want_p)
    assert np.array_equal(np.asarray(state.absmax).view(np.uint8), np.asarray(want_s.absmax).view(np.uint8))
    out, peak = _peak(lambda: qb.dequantize(packed, state, backend="numpy"))
    assert peak - out.nbytes < 2 * x.size, (peak - out.nbytes) / x.size   # 9 to 11 bytes a value before
    assert np.array_equal(out.view(np.uint8), qb.dequantize(want_p, want_s, backend="cpu").view(np.uint8))


def test_a_search_rule_measures_its_errors_without_a_tensor_of_them():
    """search:4over6 measures each candidate's block errors by encoding and decoding the
    tensor: the codes, the decoded float32 and block_errors' float64 terms of the whole tensor
    took 8.7 (cpu) and 10 (numpy) times a float32 input.  The cpu backend now fuses the three
    in one kernel, the numpy backend takes pieces of whole blocks; the per-block arrays of the
    candidates stay (NVFP4: 16 values a block)."""
    x = _x()
    qb.quantize(x[:64], "e2m1", 16, scale="search:4over6", backend="cpu")   # numba loads its kernels
    (packed, state), peak = _peak(lambda: qb.quantize(x, "e2m1", 16, scale="search:4over6", backend="cpu"))
    assert peak < 1.5 * x.nbytes, peak / x.nbytes
    want, peak = _peak(lambda: qb.quantize(x, "e2m1", 16, scale="search:4over6", backend="numpy"))
    assert peak < 2 * x.nbytes, peak / x.nbytes   # the rule's per-block arrays in numpy, and a piece's
    assert np.array_equal(packed, want[0]) and np.array_equal(state.absmax, want[1].absmax)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, pytest.param(BF16, marks=pytest.mark.skipif(
    BF16 is None, reason="bfloat16 needs ml_dtypes"))], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("bs", [16, 32, 4096])
@pytest.mark.parametrize("name,divide,loss", [("e2m1", False, "l2"), ("e2m1", True, "l1"),
                                              ("iq4_nl", True, "l2"), ("nf4", False, "l1")])
def test_the_cpu_errors_kernel_is_block_errors_of_the_reference(dtype, bs, name, divide, loss):
    """The cpu's fused kernel against block_errors of the reference's encode and decode of the
    whole array: multiply and divide paths, partial last block, 16-bit inputs."""
    rng = np.random.default_rng(bs + len(name))
    n = 3 * bs + 5
    x = (rng.standard_normal(n) * 3).astype(dtype)
    nb = -(-n // bs)
    f = rng.uniform(0.3, 3, nb).astype(np.float32)
    scale = rng.uniform(0.2, 2, nb).astype(np.float32)
    table = scaled_table(resolve_codebook(name).code, 6.0)
    deq = scaled_decode_reference(scaled_encode_reference(x, f, divide, table, bs), scale, table, bs, n, np.float32)
    want = block_errors(x, deq, bs, loss)
    got = BACKENDS["cpu"].scaled_errors(x, f, divide, scale, table, bs, loss)
    assert got.dtype == np.float64 and np.array_equal(got.view(np.uint64), want.view(np.uint64))


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
def test_the_numpy_error_sums_take_whole_runs_in_pieces(dtype):
    """The float64 widening, errors, padding and squares of the whole tensor were 40 bytes a
    value (10 times a float32 input) in the numpy spelling of the sums; a piece's are a few MB."""
    x = _x(dtype)
    xhat = (x * np.float32(1.01)).astype(dtype)
    for args in ((x,), (x, xhat)):
        got, peak = _peak(lambda: BACKENDS["numpy"].error_sums(*args))
        assert peak < 4 * x.size, peak / x.size
        assert got == BACKENDS["cpu"].error_sums(*args)   # the kernel's sums, bit for bit


@pytest.mark.parametrize("dtype", [np.float32, np.float16, pytest.param(BF16, marks=pytest.mark.skipif(
    BF16 is None, reason="bfloat16 needs ml_dtypes"))], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("rotate", ["hadamard", None])
def test_the_cpu_vq_quantizes_in_one_kernel_without_a_float32_copy(dtype, rotate):
    """A 16-bit input's float32 copy was rotated in place, measured and searched, and a float32
    input was rotated into a copy: 4.7 bytes a value either way; not rotated, a float32 input's
    float64 statistics and float32 scales lay beside the result (0.72).  One kernel now reads
    the input and writes the indices (half a byte a value here) and the float16 scales (1/32
    of a byte); nothing of the tensor's size beside them."""
    x = _x(dtype).reshape(-1, ROW)
    kept = x.copy()
    quantize_vq(x[:1], "higgs-2d-256", rotate=rotate, backend="cpu")   # the grid's tables, built once and kept
    (idx, state), peak = _peak(lambda: quantize_vq(x, "higgs-2d-256", rotate=rotate, backend="cpu"))
    assert peak < 0.65 * x.size, peak / x.size
    assert np.array_equal(x.view(np.uint8), kept.view(np.uint8))
    rows = slice(0, 16)   # the reference's brute force, on whole rows
    want_idx, want = quantize_vq(x[rows], "higgs-2d-256", rotate=rotate, backend="numpy")
    assert np.array_equal(idx[rows], want_idx)
    assert np.array_equal(state.scales[: want.scales.size].view(np.uint16), want.scales.view(np.uint16))


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_vq_leaves_a_float32_input_alone(backend):
    """Only a copy is rotated in place: a float32 input is the caller's (contiguous: the
    backend reads it as it is; strided: load copies it)."""
    x = _x(n=1 << 16).reshape(-1, 256)
    for arg in (x, x[:, ::2]):
        kept = arg.copy()
        idx, state = quantize_vq(arg, "higgs-2d-16", group=64, backend=backend)
        assert np.array_equal(arg, kept)
        assert np.array_equal(idx, quantize_vq(kept, "higgs-2d-16", group=64, backend=backend)[0])


def test_the_cpu_vq_rotates_the_decoded_values_back_in_place():
    """dequantize_vq held the decoded float32 and its rotation back: twice the output."""
    x = _x().reshape(-1, ROW)
    idx, state = quantize_vq(x, "higgs-2d-256", backend="cpu")
    out, peak = _peak(lambda: dequantize_vq(idx, state, backend="cpu"))
    assert peak - out.nbytes < 0.5 * out.nbytes, (peak - out.nbytes) / out.nbytes
    rows = slice(0, 64)   # 64 rows of 64 groups of 64 values: 32 points of 2 a group
    scales = state.scales[: 64 * 64].astype(np.float32)
    y = state.points[idx[rows].reshape(-1)].reshape(-1, 64) * scales[:, None]
    want = hadamard.unrotate(y.reshape(-1, ROW), ROW, hadamard.SEED).astype(np.float32)
    assert np.array_equal(out[rows], want)


def _dequantized(idx, state, dtype):
    """dequantize_vq's values by numpy on the whole array: ``float32(points[i] · s)``, rotated
    back in float64 by quantbook.numerics.hadamard and rounded to float32, then to ``dtype``."""
    s = np.repeat(state.scales.astype(np.float32), state.group // state.dim)
    with np.errstate(over="ignore", invalid="ignore"):   # the cases with huge scales overflow, as the backends do
        y = (state.points[idx.reshape(-1)] * s[:, None]).reshape(-1)
        if state.rotate_size is not None:
            n = state.rotate_size
            y = hadamard.unrotate(y.reshape(-1, n), n, state.rotate_seed).astype(np.float32)
        return y.astype(dtype).reshape(state.shape)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
@pytest.mark.parametrize("dtype", [np.float16, pytest.param(BF16, marks=pytest.mark.skipif(
    BF16 is None, reason="bfloat16 needs ml_dtypes"))], ids=["f16", "bf16"])
def test_a_16bit_dequantize_vq_holds_no_float32_tensor(backend, dtype):
    """The decoded float32 values (twice a 16-bit result's bytes) lived beside the result they
    were rounded to; the cpu backend's kernel now writes the 16 bits itself, the numpy backend
    rounds pieces of rows as it makes them."""
    x = _x(dtype).reshape(-1, ROW)
    idx, state = quantize_vq(x, "higgs-2d-256", backend="cpu")
    dequantize_vq(idx[:1], quantize_vq(x[:1], "higgs-2d-256", backend="cpu")[1], backend=backend)   # kernels load
    out, peak = _peak(lambda: dequantize_vq(idx, state, backend=backend))
    # twice the result before; a piece's float64 rotation in numpy is a few MB of it
    bound = {"cpu": 0.25, "numpy": 1.5}[backend]
    assert out.dtype == dtype and peak - out.nbytes < bound * out.nbytes, (peak - out.nbytes) / out.nbytes
    rows = slice(0, 64)
    sub = VQState(**{**vars(state), "shape": (64, ROW), "scales": state.scales[: 64 * ROW // state.group]})
    assert np.array_equal(out[rows].view(np.uint16), _dequantized(idx[rows], sub, dtype).view(np.uint16))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, pytest.param(BF16, marks=pytest.mark.skipif(
    BF16 is None, reason="bfloat16 needs ml_dtypes"))], ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("group,rotate,p", [(48, "hadamard:32", 3), (128, "hadamard:32", 2), (16, "hadamard", 4),
                                            (48, None, 3)])
@pytest.mark.parametrize("piece", [None, 200], ids=["whole", "pieces"])
def test_dequantize_vq_where_groups_and_vectors_span_rows(dtype, group, rotate, p, piece, monkeypatch):
    """Groups longer than a rotated row, or not dividing it, vectors of 3 across rows of 32,
    and values beyond float32's range (inf, and NaN where the rotation meets inf - inf): every
    backend gives the values of the numpy formula on the whole array (a NaN's bits may
    differ), the numpy backend's pieces too (small ones: a few rows and groups each)."""
    if piece:
        monkeypatch.setattr(F, "PIECE", piece)
    rng = np.random.default_rng(p + group)
    pts = rng.standard_normal((64, p)).astype(np.float32)
    x = rng.standard_normal((5, 96 * 4)).astype(dtype)
    idx, state = quantize_vq(x, pts, group=group, rotate=rotate, scale_dtype="float32", backend="numpy")
    state.scales[[1, 7]] = np.float32(3e38)   # |point| above 1.14 decodes to inf
    want = _dequantized(idx, state, dtype)
    assert np.isinf(want).any() if rotate is None else np.isnan(want).any()
    for backend in VQ_BACKENDS:
        if VQ_BACKENDS[backend].unavailable() is not None:
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            got = dequantize_vq(idx, state, backend=backend)
        assert got.dtype == dtype and np.array_equal(np.isnan(got), np.isnan(want)), backend
        assert np.array_equal(got[~np.isnan(got)].view(np.uint8), want[~np.isnan(want)].view(np.uint8)), backend


@pytest.mark.parametrize("dtype", [np.float16, pytest.param(BF16, marks=pytest.mark.skipif(
    BF16 is None, reason="bfloat16 needs ml_dtypes"))], ids=["f16", "bf16"])
def test_a_16bit_dequantize_vq_of_a_million_values_is_the_numpy_formula(dtype):
    """A million values rotated back on rows of 32 (1/√32 is no float32: a scale rounded to
    float32 moves a value's rounding about one time in ten thousand), in the numpy backend's
    pieces with a last piece shorter than the others: every backend gives the formula's bits."""
    rng = np.random.default_rng(21)
    pts = rng.standard_normal((64, 3)).astype(np.float32)
    x = rng.standard_normal((2, 96)).astype(dtype)
    state = quantize_vq(x, pts, group=48, rotate="hadamard:32", scale_dtype="float32", backend="numpy")[1]
    rows = 11_000   # 1 056 000 values: four pieces of 262 080 and one of 7 680
    assert rows * 96 % (F.PIECE // 96 * 96) != 0
    state = VQState(**{**vars(state), "shape": (rows, 96),
                       "scales": rng.uniform(0.5, 2.0, rows * 2).astype(np.float32)})
    idx = rng.integers(0, 64, (rows, 32)).astype(np.uint8)
    want = _dequantized(idx, state, dtype)
    for backend in VQ_BACKENDS:
        if VQ_BACKENDS[backend].unavailable() is None:
            got = dequantize_vq(idx, state, backend=backend)
            assert got.dtype == dtype and np.array_equal(got.view(np.uint16), want.view(np.uint16)), backend


@pytest.mark.parametrize("layout", [dict(codebook="nf4", block_size=64),
                                    dict(codebook="e2m1", block_size=16, scale="e4m3")], ids=["nf4", "nvfp4"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
def test_the_numpy_backend_sanitizes_nonfinite_values_in_pieces(layout, dtype):
    """allow_nonfinite=True: format.sanitize_nonfinite's float32 copy, masks and per-value
    block maxima of the whole tensor were 7.6 (float32) and 15 (float16) times the input; the
    numpy backend now runs it on pieces of whole blocks.  What stays: the sanitized copy (the
    input's bytes) and the quantize's own."""
    x = _x(dtype)
    x[[5, 70, 4097]], x[[6, 100_000]], x[-1] = np.nan, np.inf, -np.inf
    (packed, state), peak = _peak(lambda: qb.quantize(x, backend="numpy", allow_nonfinite=True, **layout))
    assert peak < 3.5 * x.nbytes, peak / x.nbytes
    want_p, want_s = qb.quantize(F.sanitize_nonfinite(x, layout["block_size"]), backend="numpy", **layout)
    assert np.array_equal(packed, want_p) and np.array_equal(state.absmax, want_s.absmax)
    got_p, got_s = qb.quantize(x, backend="cpu", allow_nonfinite=True, **layout)   # the kernel's sanitized bits
    assert np.array_equal(packed, got_p) and np.array_equal(state.absmax, got_s.absmax)


def test_the_numpy_vq_takes_rows_and_groups_in_pieces():
    """The reference rotated, searched and rotated back the whole tensor in float64 (10 times
    a float32 input to quantize, 5 to dequantize, beside the result)."""
    x = _x().reshape(-1, ROW)
    (idx, state), peak = _peak(lambda: quantize_vq(x, "higgs-1d-4", backend="numpy"))
    assert peak < 4.0 * x.nbytes, peak / x.nbytes
    want_idx, want = quantize_vq(x, "higgs-1d-4", backend="cpu")
    assert np.array_equal(idx, want_idx) and np.array_equal(state.scales, want.scales)
    out, peak = _peak(lambda: dequantize_vq(idx, state, backend="numpy"))
    assert peak - out.nbytes < 1.0 * x.nbytes, (peak - out.nbytes) / x.nbytes
    assert np.array_equal(out, dequantize_vq(idx, state, backend="cpu"))


# ---- the pieces' seams: small pieces, against the reference's functions on the whole array
@pytest.fixture
def small_pieces(monkeypatch):
    monkeypatch.setattr(F, "PIECE", 200)   # 3 blocks of 64, 12 of 16, 1 run of 256 a piece


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pieces_of_the_byte_format_join_as_the_whole(small_pieces, bits):
    n, code = 64 * 17 + 23, np.linspace(-1, 1, 2**bits - 1).astype(np.float32)   # a partial last block
    x = _x(n=n) * np.float32(3)
    be = BACKENDS["numpy"]
    p, a = be.quantize_blocks(x, code, bits, 64)
    want_p, want_a = quantize_reference(x, code, bits, 64)
    assert np.array_equal(p, want_p) and np.array_equal(a.view(np.uint32), want_a.view(np.uint32))
    d = be.dequantize_blocks(p, a, code, bits, 64, n, np.dtype(np.float16))
    assert np.array_equal(d.view(np.uint16),
                          dequantize_reference(p, a, code, bits, 64, n, np.float16).view(np.uint16))


def test_pieces_of_the_scaled_layout_join_as_the_whole(small_pieces):
    n, B = 16 * 29 + 7, 16   # an odd count: the last byte's pad
    x = _x(n=n)
    table = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float32)
    be = BACKENDS["numpy"]
    amax = be.scaled_amax(x, B)
    assert np.array_equal(amax.view(np.uint32), scaled_amax_reference(x, B).view(np.uint32))
    f = (amax / np.float32(6)).astype(np.float32)
    p = be.scaled_encode(x, f, True, table, B)
    assert np.array_equal(p, scaled_encode_reference(x, f, True, table, B))
    d = be.scaled_decode(p, f, table, B, n, np.dtype(np.float32))
    assert np.array_equal(d.view(np.uint32), scaled_decode_reference(p, f, table, B, n, np.float32).view(np.uint32))
    errs = be.scaled_errors(x, f, True, f, table, B, "l1")
    assert np.array_equal(errs, block_errors(x, d, B, "l1"))


@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
def test_pieces_of_the_sanitized_input_join_as_the_whole(small_pieces, dtype):
    n = 64 * 13 + 9   # a partial last block
    x = _x(dtype, n)
    x[[3, 190, 191, 192, n - 2]] = np.inf   # blocks at a piece's end and the next's start, the last
    x[[0, 64 * 6 + 1]], x[64 * 3:64 * 4] = np.nan, -np.inf   # a block with no finite value
    got = BACKENDS["numpy"].sanitize_nonfinite(x, 64)
    want = F.sanitize_nonfinite(x, 64)
    assert got.dtype == x.dtype and np.array_equal(got.view(np.uint8), want.view(np.uint8))


def test_pieces_of_the_error_sums_join_as_the_whole(small_pieces):
    n = CHUNK * 9 + 100
    x, xhat = _x(n=n), _x(np.float16, n=n)
    got = BACKENDS["numpy"]._error_chunks(x, xhat)
    e = xhat.astype(np.float64) - x.astype(np.float64)
    for c in range(got.shape[1]):   # each run serially, as a Python loop adds
        s2 = s1 = 0.0
        for v in e[c * CHUNK:(c + 1) * CHUNK]:
            s2 += v * v
            s1 += abs(v)
        assert (got[0, c], got[1, c]) == (s2, s1)


def test_pieces_of_the_numpy_vq_join_as_the_whole(small_pieces):
    x = _x(n=64 * 33).reshape(-1, 64)
    be = VQ_BACKENDS["numpy"]
    v = be.rotate(x.copy(), hadamard.SEED, overwrite_x=True)
    assert np.array_equal(v, hadamard.rotate(x, 64, hadamard.SEED).astype(np.float32))
    assert np.array_equal(be.unrotate(v, hadamard.SEED), hadamard.unrotate(v, 64, hadamard.SEED).astype(np.float32))
    pts = np.asarray(as_points("higgs-2d-16")[1])
    s = np.abs(v).reshape(-1, 32).max(axis=1).astype(np.float32)
    s[3] = 0   # a group of scale 0 encodes as y = 0
    idx = be.encode(v.reshape(-1), s, 32, pts)
    y = np.zeros((s.size, 32), np.float32)
    np.divide(v.reshape(-1, 32), s[:, None], out=y, where=s[:, None] != 0)
    d2 = ((y.reshape(-1, 1, 2).astype(np.float64) - pts[None].astype(np.float64)) ** 2).sum(axis=2)
    assert np.array_equal(idx, d2.argmin(axis=1))
    assert np.array_equal(be.decode(idx, s, 32, pts), (pts[idx].reshape(-1, 32) * s[:, None]).reshape(-1))
