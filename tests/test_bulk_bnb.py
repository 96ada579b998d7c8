"""Live comparison with bitsandbytes (skipped when it is not installed; the live torch checks
of quantbook.numerics.torch_f32 need torch alone).

bitsandbytes' CPU ``quantize_4bit`` / ``dequantize_4bit`` (pure torch + its C++ CPU library) is
an independent implementation of the format; quantbook must give identical bytes, absmax,
nested statistics and dequantized values for NF4 and FP4, block sizes 32..4096, float32 /
float16 (and bfloat16) input, random shapes (seeded).  Dequantized zeros compare as numbers
(bitsandbytes' C++ kernel returns -0.0 for FP4 code 8, its torch path +0.0).  bitsandbytes
0.50.2's C++ CPU dequantize uses wrong scales for some 2-D shapes whose last dimension is not
a multiple of the block size (e.g. (64, 128) at block size 256, (40, 96) at 64 — its quantize is
right); such shapes are dequantized by bitsandbytes flattened to 1-D.
"""

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import quantbook as qb  # noqa: E402
from quantbook.bulk.nested import dynamic_map  # noqa: E402
from quantbook.numerics import torch_f32  # noqa: E402

try:
    import bitsandbytes.functional as _bnb_functional
except ImportError:
    _bnb_functional = None


@pytest.fixture
def F():
    """bitsandbytes.functional, its compiled fallbacks run eagerly (same math, fast tests);
    dynamo's switch is process-wide, so it is put back after the test."""
    if _bnb_functional is None:
        pytest.skip("bitsandbytes is not installed")
    import torch._dynamo

    with torch._dynamo.config.patch(disable=True):
        yield _bnb_functional

try:
    import ml_dtypes
    DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16]
except ImportError:  # pragma: no cover
    DTYPES = [np.float32, np.float16]


def _torch(x):
    if x.dtype.name == "bfloat16":
        return torch.from_numpy(x.view(np.uint16).copy()).view(torch.bfloat16)
    return torch.from_numpy(x.copy())


def _np(t):
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


def _shapes(rng, B):
    shapes = [(int(rng.integers(1, 3 * B)),), (int(rng.integers(1, 40)), int(rng.integers(1, 300))),
              (2, 3, int(rng.integers(1, 100)))]
    return shapes


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("blocksize", [32, 64, 128, 256, 512, 1024, 2048, 4096])
def test_live_against_bitsandbytes(F, quant_type, blocksize):
    rng = np.random.default_rng(blocksize * 7 + (quant_type == "fp4"))
    for shape in _shapes(rng, blocksize):
        for dt in DTYPES:
            for nested in (False, True):
                scale = 10.0 ** rng.integers(-3, 4)
                x = (rng.standard_normal(shape) * scale).astype(dt)
                if x.size > blocksize and rng.random() < 0.5:
                    x.reshape(-1)[:blocksize] = 0  # an all-zero block
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    p, st = F.quantize_4bit(_torch(x), blocksize=blocksize, quant_type=quant_type,
                                            compress_statistics=nested)
                threads = torch.get_num_threads()
                for backend in ("numpy", "cpu"):
                    packed, qs = qb.quantize(x, quant_type, blocksize, nested=nested, backend=backend,
                                             torch_threads=threads)
                    info = (shape, dt, nested, backend)
                    assert np.array_equal(packed, p.numpy().reshape(-1)), info
                    if nested:
                        assert np.array_equal(qs.absmax, st.absmax.numpy()), info
                        assert np.array_equal(_bits(qs.nested_absmax), _bits(st.state2.absmax.numpy())), info
                        assert np.float32(qs.nested_offset) == np.float32(st.offset.item()), info
                        assert np.array_equal(_bits(qs.nested_quant_map), _bits(st.state2.code.numpy()))
                    else:
                        assert np.array_equal(_bits(qs.absmax), _bits(st.absmax.numpy())), info
                    assert np.array_equal(_bits(qs.code), _bits(st.code.numpy())), info
                    if len(shape) > 1 and shape[-1] % blocksize:
                        st.shape = torch.Size((x.size,))  # avoid bnb's 2-D C++ dequantize bug
                    ref = _np(F.dequantize_4bit(p, st)).reshape(-1).astype(np.float32)
                    y = qb.dequantize(packed, qs, backend=backend)
                    assert y.shape == x.shape and y.dtype == x.dtype, info
                    y32 = y.reshape(-1).astype(np.float32)
                    if dt is np.float16 and not np.array_equal(y32, ref):
                        _only_subnormal_ties(F, p, st, y32, ref, info)
                    else:
                        assert np.array_equal(y32, ref), info
                    nz = (ref != 0) & (y32 == ref)   # the same numbers: the same bits, signs too
                    assert np.array_equal(_bits(y32[nz]), _bits(ref[nz])), info


def _only_subnormal_ties(F, p, st, y32, ref, info):
    """Where float16 outputs differ, bitsandbytes' float32 product (its own dequantize to
    float32) must lie exactly halfway between two float16 subnormals, quantbook's the even
    one (round to nearest even, as numpy) and bitsandbytes' the other: its C++ CPU kernel
    rounds such ties away from zero on some machines (seen on a lent H200 machine's host,
    not on the 2-core CI machine)."""
    st32 = copy.copy(st)
    st32.dtype = torch.float32
    prod = _np(F.dequantize_4bit(p, st32)).reshape(-1).astype(np.float64)
    bad = y32 != ref
    ours, theirs = y32[bad].astype(np.float64), ref[bad].astype(np.float64)
    assert np.all(np.abs(ours) < 2.0**-14) and np.all(np.abs(theirs) < 2.0**-14), info  # subnormal
    assert np.all(np.abs(ours - theirs) == 2.0**-24), info                              # neighbours
    assert np.all(prod[bad] == (ours + theirs) / 2), info                               # a tie
    assert np.all(np.rint(ours * 2.0**24) % 2 == 0), info                               # ours even


def test_state_dict_roundtrip_with_bitsandbytes(F):
    """Our as_dict() loads into bitsandbytes' QuantState.from_dict and vice versa."""
    x = np.random.default_rng(3).standard_normal((40, 128)).astype(np.float32)
    packed, qs = qb.quantize(x, "nf4", 64, nested=True)
    d = {k: (torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v)
         for k, v in qs.as_dict().items()}
    st = F.QuantState.from_dict(d, device=torch.device("cpu"))
    ref = F.dequantize_4bit(torch.from_numpy(packed).reshape(-1, 1), st).numpy()
    assert np.array_equal(ref, qb.dequantize(packed, qs))
    back = qb.QuantState.from_dict(st.as_dict())
    assert np.array_equal(qb.dequantize(packed, back), ref)


def test_dynamic_map(F):
    assert np.array_equal(_bits(dynamic_map()), _bits(F.create_dynamic_map().numpy()))


def test_linspace():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b, n = float(rng.uniform(-5, 5)), float(rng.uniform(-5, 5)), int(rng.integers(1, 3000))
        assert np.array_equal(torch_f32.linspace(a, b, n), torch.linspace(a, b, n, dtype=torch.float32).numpy())


def test_torch_mean_emulation_live():
    rng = np.random.default_rng(1)
    old = torch.get_num_threads()
    try:
        for n in [1, 5, 8, 17, 255, 4096, 32767, 32768, 70001]:
            x = (rng.random(n) * 10.0 ** rng.integers(-3, 4)).astype(np.float32) ** 2
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                t = torch.from_numpy(x)
                assert torch_f32.sum(x, threads) == np.float32(t.sum().item()), (n, threads)
                assert torch_f32.mean(x, threads) == np.float32(t.mean().item()), (n, threads)
    finally:
        torch.set_num_threads(old)


def test_nested_offset_is_torchs_mean_at_each_thread_count():
    """Without bitsandbytes: the nested offset is torch's float32 mean of the block maxima as
    torch computes it with ``torch_threads`` threads (70001 blocks: split over the threads)."""
    rng = np.random.default_rng(8)
    x = (rng.random((70001, 16)) * 100).astype(np.float32)
    amax = np.abs(x).max(axis=1)
    old = torch.get_num_threads()
    got = {}
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            want = np.float32(torch.from_numpy(amax).mean().item())
            for backend in ("numpy", "cpu"):
                _, qs = qb.quantize(x, "nf4", 16, nested=True, backend=backend, torch_threads=threads)
                assert np.float32(qs.nested_offset) == want, (threads, backend)
            got[threads] = want
    finally:
        torch.set_num_threads(old)
    assert len(set(got.values())) > 1   # the thread count changes torch's mean here


def test_nested_offset_with_many_blocks_and_threads(F):
    """>= 32768 blocks: torch sums over its threads; torch_threads reproduces each count."""
    x = np.random.default_rng(5).standard_normal(33000 * 32 + 17).astype(np.float32) ** 3
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p, st = F.quantize_4bit(torch.from_numpy(x), blocksize=32, quant_type="nf4",
                                        compress_statistics=True)
            for backend in ("numpy", "cpu"):
                packed, qs = qb.quantize(x, "nf4", 32, nested=True, backend=backend, torch_threads=threads)
                assert np.array_equal(packed, p.numpy().reshape(-1))
                assert np.float32(qs.nested_offset) == np.float32(st.offset.item()), (threads, backend)
                assert np.array_equal(qs.absmax, st.absmax.numpy())
                assert np.array_equal(_bits(qs.nested_absmax), _bits(st.state2.absmax.numpy()))
    finally:
        torch.set_num_threads(old)
