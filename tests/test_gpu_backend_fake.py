"""quantbook.bulk.gpu.backend end to end without a GPU: a stand-in ``cupy`` module.

The stand-in keeps "device arrays" in host memory (an ndarray subclass with ``.data.ptr``)
and launches kernels through the host emulation (tests/gpu_emulator.py) of the SAME CUDA
source; the kernel images are still really compiled by NVRTC for sm_90 on the way (the
backend's ``_kernel`` path).  This exercises the Python glue — argument order and types of
every launch, launch shapes, dtype handling (bfloat16 as ml_dtypes or raw uint16 bits),
aligned/unaligned flags, table caches, the nested path — against the numpy reference.
"""


import numpy as np
import pytest

import gpu_emulator as E
from gpu_cases import (FakeDeviceArray, bits_equal, count_transfers, fake_device, load_benchmark, set_device,
                       use_stand_in_cupy, weights_file)
from quantbook.bulk import reference as R
from quantbook.bulk.gpu import backend as G
from quantbook.bulk.gpu import kernels as K
from quantbook.bulk.gpu.tables import encoder_tables, search_size
from quantbook.bulk.nested import dequantize_nested, dynamic_map, nested_offset, quantize_nested_reference
from quantbook.codebooks import registry




@pytest.fixture
def cp(monkeypatch):
    return use_stand_in_cupy(monkeypatch, E.emulator)


def test_gpu_available_with_a_device(cp):
    assert G.gpu_available() == (True, "emulated")


def test_kernels_run_on_the_device_that_holds_the_input(cp):
    """An array on GPU 1 while GPU 0 is current: every launch of quantize and dequantize runs
    with GPU 1 current (a kernel reading another GPU's memory faults without peer access;
    the scaled layouts: tests/test_gpu_scaled.py)."""
    import quantbook as qb

    x = set_device(fake_device(np.random.default_rng(0).standard_normal(256).astype(np.float32)), 1)
    packed, state = qb.quantize(x, "nf4", 64, nested=True, backend="gpu")
    qb.dequantize(set_device(packed, 1), state, backend="gpu")
    assert cp.launch_devices and set(cp.launch_devices) == {1}


class TorchLike(FakeDeviceArray):
    """What the api meets in a torch CUDA tensor that requires grad: ``is_cuda``, ``size`` and
    ``stride`` as methods (strides in elements), an interface that raises, and ``detach``."""

    is_cuda = True

    def size(self):
        return self.shape

    def stride(self):
        return tuple(st // self.itemsize for st in self.strides)

    @property
    def __cuda_array_interface__(self):
        raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")

    def detach(self):
        return self.view(FakeDeviceArray)


def test_torch_like_tensors_go_through_the_api(cp):
    import quantbook as qb

    x = np.random.default_rng(1).standard_normal(300).astype(np.float32)
    packed, state = qb.quantize(x.view(TorchLike), "nf4", 64)   # auto: a device array
    assert np.array_equal(packed, R.quantize_reference(x, np.asarray(registry.get("nf4").code, np.float32),
                                                       4, 64)[0])
    out = qb.dequantize(np.asarray(packed).view(TorchLike), state)
    assert np.array_equal(out, qb.dequantize(np.asarray(packed), state, backend="numpy"))


try:
    import ml_dtypes
except ImportError:  # only the bfloat16 cases need it
    ml_dtypes = None
_BF16 = pytest.param(getattr(ml_dtypes, "bfloat16", None), id="bf16",
                     marks=pytest.mark.skipif(ml_dtypes is None, reason="bfloat16 needs ml_dtypes"))


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"), pytest.param(np.float16, id="f16"), _BF16])
@pytest.mark.parametrize("name,bits,bs", [("nf4", 4, 64), ("max1960-n4", 2, 16), ("max1960-n8", 3, 512)])
def test_quantize_dequantize_roundtrip_through_the_backend(cp, dtype, name, bits, bs):
    rng = np.random.default_rng(bits * bs)
    code = np.asarray(registry.get(name).code, np.float32)
    x = rng.standard_normal(3 * bs + 7).astype(dtype)
    p, a = G.quantize_gpu(fake_device(x), code, bits, bs)
    assert isinstance(p, FakeDeviceArray) and p.dtype == np.uint8 and a.dtype == np.float32
    p_ref, a_ref = R.quantize_reference(x, code, bits, bs)
    assert np.array_equal(p, p_ref) and np.array_equal(a.view(np.uint32), a_ref.view(np.uint32))
    d = G.dequantize_gpu(p, a, code, bits, bs, x.size, dtype)
    d_ref = R.dequantize_reference(p_ref, a_ref, code, bits, bs, x.size, dtype)
    assert d.dtype == np.dtype(dtype) and np.array_equal(d.view(np.uint8), d_ref.view(np.uint8))
    qname = [n for n, _, _ in cp.launches if n.startswith("qb_quantize_")][0]
    packing = G.packing_for_bits(bits)
    search = encoder_tables(np.asarray(registry.get(name).code, np.float32), search_size(packing)).search
    assert qname.endswith(f"_p{packing}_{search}")


def test_launch_plans_are_made_once_per_code_and_layout(cp):
    """Two codes of one width, block size and dtype, each quantized and decoded twice in turn:
    every result is the reference's (a plan found under the wrong key would use the other
    code's tables), a code's second round builds nothing, and a new device gets its own."""
    x = np.random.default_rng(3).standard_normal(5 * 64 + 9).astype(np.float16)
    codes = [np.asarray(registry.get(name).code, np.float32) for name in ("nf4", "fp4")]
    for round_ in range(2):
        for code in codes:
            p, a = G.quantize_gpu(fake_device(x), code, 4, 64)
            p_ref, a_ref = R.quantize_reference(x, code, 4, 64)
            assert np.array_equal(p, p_ref) and np.array_equal(a.view(np.uint32), a_ref.view(np.uint32))
            d = G.dequantize_gpu(p, a, code, 4, 64, x.size, np.float16)
            d_ref = R.dequantize_reference(p_ref, a_ref, code, 4, 64, x.size, np.float16)
            assert np.array_equal(d.view(np.uint16), d_ref.view(np.uint16))
        if round_ == 0:
            plans, consts = dict(G._PLANS), dict(G._CONSTS)
    assert len(plans) == 4 and G._PLANS == plans and G._CONSTS.keys() == consts.keys()
    with cp.cuda.Device(1):   # as the api runs a launch: on the device that holds the input
        G.quantize_gpu(set_device(fake_device(x), 1), codes[0], 4, 64)
    assert len(G._PLANS) == 5


def _at_every_bound(code: np.ndarray, rng) -> np.ndarray:
    """float32 blocks of 64 whose maximum is 1 (so y = x): the bounds of ``code``'s encoder and
    their 3 float32 neighbours each side, the levels, +-0, subnormals and +-1, shuffled."""
    from quantbook.bulk import format as F

    pts = [np.float32(0.0), np.float32(-0.0), np.float32(1e-45), np.float32(-1e-45), np.float32(-1.0)]
    for b in np.concatenate([F.code_encoder(code).bounds, code]).astype(np.float32):
        for direction in (np.float32(-2.0), np.float32(2.0)):
            v = b
            for _ in range(3):
                v = np.nextafter(v, direction)
                pts.append(v)
        pts.append(b)
    vals = np.clip(np.array(pts, np.float32), -1, 1)
    rng.shuffle(vals)
    vals = np.concatenate([vals, np.zeros(-vals.size % 63, np.float32)]).reshape(-1, 63)
    return np.concatenate([np.ones((vals.shape[0], 1), np.float32), vals], axis=1).ravel()


@pytest.mark.parametrize("layout", ["word", "coarse"])
@pytest.mark.parametrize("name", ["nf4", "fp4", "iq4_nl", "max1960-n4", "max1960-n2"])
def test_both_encoder_layouts_code_every_bound_as_numpy(cp, monkeypatch, layout, name):
    """The word layout's kernels (what codes of 1, 2 and 4 bits take where it holds them) and
    the coarse layout's (forced here) on every bound of the code and its float32 neighbours:
    the bytes are the numpy reference's."""
    cb = registry.get(name)
    code = np.asarray(cb.code, np.float32)
    packing = G.packing_for_bits(cb.bits)
    monkeypatch.setattr(G, "_PLANS", {})
    monkeypatch.setattr(G, "encoder_tables", lambda c, P: encoder_tables(c, P, layout))
    x = _at_every_bound(code, np.random.default_rng(len(name)))
    p, a = G.quantize_gpu(fake_device(x), code, cb.bits, 64)
    p_ref, a_ref = R.quantize_reference(x, code, cb.bits, 64)
    assert np.array_equal(p, p_ref) and np.array_equal(a.view(np.uint32), a_ref.view(np.uint32))
    qname = [n for n, _, _ in cp.launches if n.startswith("qb_quantize_")][-1]
    assert qname.endswith("_w") == (layout == "word") and f"_p{packing}_" in qname


def test_a_code_with_close_bounds_takes_the_coarse_layout(cp):
    """Two bounds in one bucket of the word layout (relative width 1/8): the coarse layout's
    kernel, with the numpy reference's bytes."""
    code = np.array([-1.0, -0.5, 0.0, 0.5, 0.52, 0.56, 0.7, 1.0], np.float32)   # bounds 0.51, 0.54
    assert encoder_tables(code, 8).layout == "coarse" and encoder_tables(code[:4], 4).layout == "word"
    x = _at_every_bound(code, np.random.default_rng(5))
    p, a = G.quantize_gpu(fake_device(x), code, 4, 64)
    p_ref, a_ref = R.quantize_reference(x, code, 4, 64)
    assert np.array_equal(p, p_ref) and np.array_equal(a.view(np.uint32), a_ref.view(np.uint32))
    assert [n for n, _, _ in cp.launches if n.startswith("qb_quantize_")][-1].endswith("_p4_s1")


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"), pytest.param(np.float16, id="f16")])
@pytest.mark.parametrize("name,bits,bs", [("nf4", 4, 64), ("fp4", 4, 16), ("max1960-n8", 3, 4096)])
def test_nonfinite_blocks_code_as_numpy(cp, dtype, name, bits, bs):
    """quantize_gpu on blocks holding NaN or Inf (the api never lets them through, the kernel
    still defines them): codes and maxima as numpy's, NaN ranking last.  Only such blocks take
    the kernel's NaN test; the finite ones beside them must not.  The ragged last block holds
    a NaN, so the positions past n (0 / NaN) must still get the code of 0.0."""
    rng = np.random.default_rng(bs)
    code = np.asarray(registry.get(name).code, np.float32)
    x = rng.standard_normal(4 * bs + 7).astype(dtype)
    x[3], x[bs + 5], x[2 * bs], x[2 * bs + 1], x[-2] = np.nan, np.inf, -np.inf, np.nan, np.nan
    p, a = G.quantize_gpu(fake_device(x), code, bits, bs)
    p_ref, a_ref = R.quantize_reference(x, code, bits, bs)
    assert np.array_equal(p, p_ref)
    assert np.array_equal(np.isnan(a), np.isnan(a_ref)) and np.array_equal(a[~np.isnan(a)], a_ref[~np.isnan(a_ref)])


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"), pytest.param(np.float16, id="f16"), _BF16])
@pytest.mark.parametrize("name,bits,bs", [("nf4", 4, 16), ("max1960-n4", 2, 32), ("dynamic", 8, 4096),
                                          ("dynamic", 8, 1024), ("nf4", 4, 4096)])
def test_every_vector_width_loops_over_tiles(cp, monkeypatch, dtype, name, bits, bs):
    """Each kernel's values a thread (16 for blocks of 16, 32 for the 16-bit types' larger
    blocks): numpy's bytes, on arrays long enough that every CTA of the capped grid (one SM,
    two CTAs) loops over several tiles, with a ragged end; and dequantize's bytes on them.
    Blocks of 1024 and 4096 make groups of 64 to 256 threads, one to four a CTA, whose
    maxima meet in the halves of shared memory that the tiles take in turn."""
    rng = np.random.default_rng(bs + bits)
    code = (np.asarray(dynamic_map(), np.float32) if name == "dynamic"
            else np.asarray(registry.get(name).code, np.float32))
    x = rng.standard_normal(12 * 8192 + 333).astype(dtype)
    monkeypatch.setattr(G, "_sm_count", lambda: 1)
    monkeypatch.setattr(G, "_resident", lambda fn, cta: 2)
    p, a = G.quantize_gpu(fake_device(x), code, bits, bs)
    p_ref, a_ref = R.quantize_reference(x, code, bits, bs)
    assert np.array_equal(p, p_ref) and np.array_equal(a.view(np.uint32), a_ref.view(np.uint32))
    # dequantize: whole CTA tiles (the vector path) and the ragged end
    d = G.dequantize_gpu(p, a, code, bits, bs, x.size, dtype)
    d_ref = R.dequantize_reference(p_ref, a_ref, code, bits, bs, x.size, dtype)
    assert np.array_equal(np.asarray(d).view(np.uint8), d_ref.view(np.uint8))
    qname = [n for n, _, _ in cp.launches if n.startswith("qb_quantize_")][-1]
    v = 16 if dtype is np.float32 or bs == 16 or bits == 8 else 32
    assert qname.startswith(f"qb_quantize_{G._dtype_key(dtype)}_v{v}_")
    grid, cta = [(g[0], b[0]) for n, g, b in cp.launches if n == qname][-1]
    tile = cta * v
    assert x.size > 3 * grid * tile           # each CTA takes at least three tiles


@pytest.mark.parametrize("dtype, bits, j", [(np.float32, 4, 1), (np.float32, 4, 3), (np.float16, 4, 7),
                                           (np.float16, 2, 5), (np.float32, 8, 2)])
def test_dequantize_stops_at_n_inside_the_last_store(cp, dtype, bits, j):
    """n a few outputs short of two CTA tiles (fewer than a thread writes a step): the last
    tile must go element by element, and the emulator's guards catch any store past n."""
    code = np.asarray(dynamic_map() if bits == 8 else registry.get({2: "max1960-n4", 4: "nf4"}[bits]).code,
                      np.float32)
    tile = K.DEQ_PER_THREAD * K.DEQ_CTA
    assert j < K.dequantize_unit(G._dtype_key(dtype), G.packing_for_bits(bits))
    x = np.random.default_rng(j).standard_normal(2 * tile - j).astype(dtype)
    p_ref, a_ref = R.quantize_reference(x, code, bits, 64)
    d = G.dequantize_gpu(fake_device(p_ref), fake_device(a_ref), code, bits, 64, x.size, dtype)
    assert bits_equal(d, R.dequantize_reference(p_ref, a_ref, code, bits, 64, x.size, dtype))


def test_word_aligned_and_strided_device_arrays(cp):
    """Input 4 bytes off a 16-byte boundary (the element path: a 16-byte load there faults),
    strided and Fortran-ordered input, and strided packed bytes (each copied contiguous)."""
    code = np.asarray(registry.get("nf4").code, np.float32)
    x = np.random.default_rng(11).standard_normal(1001).astype(np.float32)
    p_ref, a_ref = R.quantize_reference(x, code, 4, 64)
    shifted = fake_device(np.concatenate([[0], x]).astype(np.float32))[1:]
    assert shifted.data.ptr % 16 == 4
    for xd in (shifted, fake_device(np.repeat(x, 2))[::2], fake_device(np.asfortranarray(x.reshape(7, 143)))):
        p, a = G.quantize_gpu(xd, code, 4, 64)
        assert bits_equal(p, p_ref) and bits_equal(a, a_ref)
    d = G.dequantize_gpu(fake_device(np.repeat(p_ref, 2))[::2], a_ref, code, 4, 64, x.size, np.float32)
    assert bits_equal(d, R.dequantize_reference(p_ref, a_ref, code, 4, 64, x.size, np.float32))


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"), pytest.param(np.float16, id="f16"), _BF16])
def test_error_sums_over_tiles_tails_and_unaligned_arrays(cp, monkeypatch, dtype):
    """The error-sums kernel's runs bit for bit numpy's (quantbook.bulk.sums), with and
    without xhat: two CTA tiles of runs and part of a third, the last run ragged; arrays an
    element off a 16-byte boundary (the element path: a 16-byte load there faults); and a
    grid of one CTA, which loops over the tiles."""
    from quantbook.bulk.sums import error_chunks_reference

    rng = np.random.default_rng(7)
    n = 2 * K.SUMS_CTA * 256 + 300
    x = (rng.standard_normal(n + 1) * 0.05).astype(dtype)
    xh = (x.astype(np.float32) + (rng.standard_normal(n + 1) * 2e-3).astype(np.float32)).astype(dtype)
    cases = [(fake_device(x[:n]), fake_device(xh[:n])), (fake_device(x)[1:], fake_device(xh)[1:])]
    assert cases[0][0].data.ptr % 16 == 0 and cases[1][0].data.ptr % 16 != 0
    for xd, hd in cases:
        for h in (hd, None):
            got = G.error_chunks_gpu(xd, h)
            want = error_chunks_reference(np.asarray(xd), None if h is None else np.asarray(h))
            assert got.shape == want.shape == (2, 2 * K.SUMS_CTA + 2) and bits_equal(got, want)
    launch = G.error_chunks_launch
    monkeypatch.setattr(G, "error_chunks_launch", lambda n: (1, *launch(n)[1:]))
    xd, hd = cases[0]
    assert bits_equal(G.error_chunks_gpu(xd, hd), error_chunks_reference(np.asarray(xd), np.asarray(hd)))
    assert [g for name, g, _ in cp.launches if name.startswith("qb_error_chunks_")] == [(3,)] * 4 + [(1,)]


@pytest.mark.skipif(ml_dtypes is None, reason="bfloat16 needs ml_dtypes")
def test_bfloat16_as_raw_bits_and_unaligned_views(cp):
    rng = np.random.default_rng(2)
    code = np.asarray(registry.get("nf4").code, np.float32)
    x = rng.standard_normal(1001).astype(ml_dtypes.bfloat16)
    p, a = G.quantize_gpu(fake_device(x.view(np.uint16)), code, 4, 64, input_dtype="bfloat16")
    p_ref, a_ref = R.quantize_reference(x, code, 4, 64)
    assert np.array_equal(p, p_ref) and np.array_equal(a, a_ref)
    xs = fake_device(rng.standard_normal(2001).astype(np.float16))[1:]        # 2-byte offset
    assert xs.data.ptr % 16 != 0
    p, a = G.quantize_gpu(xs, code, 4, 32)
    p_ref, a_ref = R.quantize_reference(np.asarray(xs), code, 4, 32)
    assert np.array_equal(p, p_ref) and np.array_equal(a, a_ref)
    with pytest.raises(ValueError, match="bytes"):
        G.dequantize_gpu(p[:10], a, code, 4, 32, 2000, np.float16)


def test_empty_input(cp):
    code = np.asarray(registry.get("nf4").code, np.float32)
    p, a = G.quantize_gpu(fake_device(np.zeros(0, np.float32)), code, 4, 64)
    assert p.size == 0 and a.size == 0
    assert G.dequantize_gpu(p, a, code, 4, 64, 0, np.float32).size == 0


def test_nested_helpers(cp):
    rng = np.random.default_rng(4)
    a = np.abs(rng.standard_normal(700)).astype(np.float32)
    q, nested, off = G.quantize_absmax_nested(fake_device(a))
    off_ref = nested_offset(a)
    q_ref, n_ref = quantize_nested_reference(a - off_ref)
    assert np.float32(off).view(np.uint32) == np.float32(off_ref).view(np.uint32)
    assert np.array_equal(q, q_ref) and np.array_equal(nested.view(np.uint32), n_ref.view(np.uint32))
    r = G.dequantize_absmax_nested(q, nested, off)
    r_ref = dequantize_nested(q_ref, n_ref, off_ref, dynamic_map(), 256)
    assert np.array_equal(r.view(np.uint32), r_ref.view(np.uint32))



@pytest.mark.parametrize("narrow", [np.int16, np.uint16])
def test_the_launchers_count_blocks_of_a_numpy_integer_size_in_python_ints(cp, narrow):
    """quantize_gpu, dequantize_gpu and the nested decode with a numpy integer block size
    (40000 values): their counts of blocks overflowed its width under numpy 2's rules."""
    x = np.random.default_rng(9).standard_normal(40000).astype(np.float32)
    code = np.asarray(registry.get("nf4").code, np.float32)
    p, a = G.quantize_gpu(fake_device(x), code, 4, narrow(64))
    p_ref, a_ref = R.quantize_reference(x, code, 4, 64)
    assert np.array_equal(p, p_ref) and np.array_equal(a.view(np.uint32), a_ref.view(np.uint32))
    d = G.dequantize_gpu(p, a, code, 4, narrow(64), x.size, np.float32)
    assert np.array_equal(d.view(np.uint32), R.dequantize_reference(p_ref, a_ref, code, 4, 64, x.size,
                                                                   np.float32).view(np.uint32))
    q, nested, off = G.quantize_absmax_nested(fake_device(a_ref))
    r = G.dequantize_absmax_nested(q, nested, off, nested_blocksize=narrow(256))
    r_ref = dequantize_nested(q, nested, off, dynamic_map(), 256)
    assert np.array_equal(r.view(np.uint32), r_ref.view(np.uint32))

def test_nested_quantize_of_a_nan_is_bitsandbytes():
    """A NaN in one warp of a 256-block: its nested maximum is NaN (every warp's maximum
    taken NaN-first, as numpy's) and its codes are those of -1 (bitsandbytes on x86)."""
    a = np.abs(np.random.default_rng(9).standard_normal(600)).astype(np.float32)
    a[256 + 100] = np.nan
    q, nested = E.quantize_absmax_nested_emulated(a, np.float32(0.5))
    q_ref, n_ref = quantize_nested_reference(a - np.float32(0.5))
    assert np.array_equal(q, q_ref) and bits_equal(nested, n_ref)


def test_benchmark_script_runs_and_checks_bytes(cp, monkeypatch, capsys):
    """benchmarks/bench_quantize_gpu.py end to end on the stand-in (timings are fake)."""
    bench = load_benchmark(cp, monkeypatch, "bench_quantize_gpu")
    monkeypatch.setattr(bench, "HOST_CALLS", 2)   # each emulated call takes milliseconds
    assert bench.main(["--log2n", "14", "--repeat", "2", "--no-bnb", "--check", "14", "--warmup", "0.01",
                       "--blocksizes", "16,4096", "--bits", "2,4,8", "--calls", "2"]) == 0
    out = capsys.readouterr().out
    assert "DIFFER" not in out
    assert "bytes of 18 configurations: IDENTICAL to the numpy reference" in out
    assert out.count(" GB/s (") == 3 and "lowest vs copy" in out   # a copy line per dtype
    assert out.count("host work a call: quantize") == 3 and "runs of 2 calls" in out
    assert out.count("sanitize (allow_nonfinite, B = 64) ") == 3
    assert out.count("error sums (evaluate-model) ") == 2   # float32, float16
    # the public api against the kernels, a line per dtype (bfloat16 only through torch)
    assert out.count("end to end (NF4, B = 64): quantize() ") + out.count("end to end: not measured") == 3
    assert "float32   end to end (NF4" in out and "float16   end to end (NF4" in out
    assert out.count("(uploaded ") == out.count("(read ") == out.count("end to end (NF4")


def test_the_kept_scales_are_bounded(cp, monkeypatch):
    """The device bytes kept are at most kept.KEEP_BYTES (the newest always kept), the least
    recently used let go first: a state whose copy went is uploaded, and decodes the same."""
    import gc

    import quantbook as qb
    from quantbook.bulk.gpu import kept

    x = np.random.default_rng(33).standard_normal(64 * 100).astype(np.float32)
    gc.collect()
    monkeypatch.setattr(kept, "_KEPT", {})
    monkeypatch.setattr(kept, "_held", [0])
    monkeypatch.setattr(kept, "_gone", [])
    monkeypatch.setattr(kept, "KEEP_BYTES", 2 * 100 * 4)   # two states' float32 scales

    def quantized():   # the host reads the scales as each state is made: kept from then on
        p, st = qb.quantize(fake_device(x), "nf4", 64, backend="gpu")
        assert st.absmax.size == 100
        return p, st

    states = [quantized() for _ in range(3)]
    assert kept._held == [2 * 400] and len(kept._KEPT) == 2
    assert kept.kept(states[0][1].absmax, 0) is None and kept.kept(states[1][1].absmax, 0) is not None
    kept.kept(states[1][1].absmax, 0)   # the most recently used: the next to stay
    states.append(quantized())
    assert [kept.kept(st.absmax, 0) is not None for _, st in states] == [False, True, False, True]
    want = qb.dequantize(*qb.quantize(x, "nf4", 64, backend="numpy"), backend="numpy")
    for p, st in states:
        assert bits_equal(np.asarray(qb.dequantize(p, st, backend="gpu")), want)
    monkeypatch.setattr(kept, "KEEP_BYTES", 10)   # smaller than one: the newest is kept all the same
    states.append(quantized())
    assert len(kept._KEPT) == 1 and kept.kept(states[-1][1].absmax, 0) is not None
    with kept._lock:   # a host copy collected while the table is in use: dropped by the next call
        del states
        gc.collect()
        assert len(kept._KEPT) == 1 and len(kept._gone) == 1
    assert kept.kept(x, 0) is None and kept._KEPT == {} and kept._held == [0] and not kept._gone


def test_the_benchmark_profiles_the_kernels_its_hint_names(cp, monkeypatch, capsys):
    """--profile launches a warm-up and one timed call each of quantize and dequantize, the
    four ``qb_`` kernels that the printed ``ncu -k regex:qb_ -c 4`` command profiles."""
    bench = load_benchmark(cp, monkeypatch, "bench_quantize_gpu")
    assert bench.main(["--log2n", "12", "--profile", "--dtypes", "float16", "--blocksizes", "64",
                       "--bits", "4", "--calls", "10"]) == 0
    out = capsys.readouterr().out
    names = [n for n, _, _ in cp.launches if n.startswith("qb_")]
    assert [n.split("_")[1] for n in names] == ["quantize", "quantize", "dequantize", "dequantize"], names
    assert "ncu --set full -k regex:qb_ -c 4 python benchmarks/bench_quantize_gpu.py --profile" in out


def test_host_work_benchmark_runs(cp, monkeypatch, capsys):
    """benchmarks/bench_gpu_host_work.py: its own stand-in (launches that do nothing), put
    back with the test's when the test ends."""
    bench = load_benchmark(cp, monkeypatch, "bench_gpu_host_work")
    assert bench.main(["--calls", "3", "--rounds", "1", "--log2n", "10"]) == 0
    out = capsys.readouterr().out
    for name in ("quantize_gpu", "dequantize_gpu", "quantbook.quantize", "quantbook.dequantize"):
        assert f"  {name} " in out and out.count(" us\n") == 4, out


@pytest.mark.parametrize("nested", [False, True])
def test_evaluate_model_on_the_emulated_gpu_is_the_host_report(monkeypatch, tmp_path, nested):
    """evaluate-model --backend gpu (and auto, which picks the GPU when one is usable): each
    tensor goes to the device, the same bytes come out, so every number of the report is the
    numpy backend's (float32 and float16 tensors, a ragged one, a Hadamard rotation, which
    runs on the device both ways).  A tensor is uploaded, and rotated, once for all its
    scalar codebooks."""
    from quantbook.bulk.backend import BACKENDS
    from quantbook.bulk.gpu import vq as GV
    from quantbook.model import evaluate_model
    from quantbook.naming import resolve_codebooks

    cp = use_stand_in_cupy(monkeypatch, E.any_emulator, build=lambda: (E.emulator(), E.vq_emulator()),
                           caches=(GV,))
    path = weights_file(tmp_path / "m.safetensors", 21, 64, 128)
    kw = dict(block_size=64, nested=nested, rotations=("none", "hadamard"), tensors="*.weight")
    cbs = resolve_codebooks("nf4,nf2", 64)
    host = evaluate_model(path, cbs, backend="numpy", **kw).to_dict(per_tensor=True)
    del cp.launches[:]
    gpu_be, uploads, downloads = type(BACKENDS["gpu"]), [], []   # the class: an instance's patch would outlive it
    monkeypatch.setattr(gpu_be, "from_host", lambda self, x, real=gpu_be.from_host: uploads.append(x.shape) or
                        real(self, x))
    monkeypatch.setattr(gpu_be, "to_host", lambda self, a, real=gpu_be.to_host: downloads.append(a.size) or
                        real(self, a))
    gpu = evaluate_model(path, cbs, backend="gpu" if nested else "auto", **kw).to_dict(per_tensor=True)
    assert any(n.startswith("qb_quantize_") for n, _, _ in cp.launches)
    assert any(n.startswith("qb_dequantize_") for n, _, _ in cp.launches)
    # 2 tensors, each rotated once for both codes and rotated back for each
    assert sum(n == "qbv_fwht_tile" for n, _, _ in cp.launches) == 2 * (1 + 2)
    assert len(uploads) == 2   # the unrotated rows: one upload a tensor, not one a code
    # every row's error sums are taken on the device (2 tensors x 2 codes x 2 rotations): a
    # rotated row is rotated back and rounded there (qbv_cast64 for the float16 tensor's,
    # once a code), and no tensor's values come back
    assert sum(n.startswith("qb_error_chunks_") for n, _, _ in cp.launches) == 2 * 2 * 2
    assert sum(n == "qbv_cast64" for n, _, _ in cp.launches) == 2
    assert not [d for d in downloads if d in (32 * 64, 64 * 128)]
    assert gpu == host
    ragged = evaluate_model(path, cbs, backend="gpu", tensors="c.bias", block_size=16, nested=nested)
    assert ragged.to_dict() == evaluate_model(path, cbs, backend="numpy", tensors="c.bias", block_size=16,
                                              nested=nested).to_dict()


@pytest.mark.skipif(ml_dtypes is None, reason="bfloat16 needs ml_dtypes")
@pytest.mark.parametrize("raw_bits", [False, True])
@pytest.mark.parametrize("rotation", ["none", "hadamard"])
def test_a_bfloat16_tensor_round_trips_through_the_gpu_as_on_the_host(monkeypatch, raw_bits, rotation):
    """evaluate-model's round trip of a bfloat16 tensor on the gpu backend equals the numpy
    backend's, plain or rotated (rotated back in float64 and rounded to bfloat16 on the device,
    as ml_dtypes rounds on the host), also where CuPy (before 14) hands back the bfloat16
    outputs as uint16 bits.  Kept on the device where it can be (not as raw bits)."""
    from quantbook.bulk.gpu import vq as GV
    from quantbook.model.evaluate import BlockLayout
    from quantbook.naming import resolve_codebooks

    use_stand_in_cupy(monkeypatch, E.any_emulator, build=lambda: (E.emulator(), E.vq_emulator()), caches=(GV,))
    if raw_bits:
        monkeypatch.setattr(G, "_empty_out", lambda n, key, real=G._empty_out:
                            real(n, key) if key != "bf16" else (lambda r: (r[0], r[0]))(real(n, key)))
    x = (np.random.default_rng(24).standard_normal((32, 128)) * 0.02).astype(ml_dtypes.bfloat16)
    layout = BlockLayout(resolve_codebooks("nf4", 64)[0][1], 64)
    want, bits = layout.roundtrip(x, rotation, "numpy")
    got, gbits = layout.roundtrip(x, rotation, "gpu")
    assert got.dtype == want.dtype and bits_equal(got, want) and gbits == bits
    kept, _ = layout.roundtrip(x, rotation, "gpu", keep=True)
    assert isinstance(kept, FakeDeviceArray) != raw_bits and bits_equal(kept, want)


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"), pytest.param(np.float16, id="f16")])
def test_nested_statistics_are_decoded_on_the_device(cp, monkeypatch, dtype):
    """dequantize of a nested state on the gpu backend: the uint8 codes go up and the nested
    kernel decodes them (no float32 scale a block from the host); the values are the numpy
    backend's, and statistics that decode beyond float32 are refused as on the host."""
    import quantbook as qb

    x = np.random.default_rng(25).standard_normal(64 * 700 + 9).astype(dtype)
    packed, st = qb.quantize(x, "nf4", 64, nested=True, backend="numpy")
    want = qb.dequantize(packed, st, backend="numpy")
    sent = []
    upload = cp.asarray
    monkeypatch.setattr(cp, "asarray", lambda a, dtype=None: (
        sent.append(np.dtype(a.dtype)) if not isinstance(a, FakeDeviceArray) and np.size(a) == st.n_blocks
        else None, upload(a, dtype))[1])
    del cp.launches[:], cp.launch_devices[:]
    got = qb.dequantize(set_device(fake_device(packed), 1), st, backend="gpu")   # GPU 0 is current
    assert bits_equal(np.asarray(got), want)
    assert [n for n, _, _ in cp.launches][0] == K.NESTED_DEQUANT_NAME and sent == [np.dtype(np.uint8)]
    assert set(cp.launch_devices) == {1}
    st.nested_absmax = np.full_like(st.nested_absmax, np.finfo(np.float32).max)
    st.nested_offset = float(np.finfo(np.float32).max)
    for backend in ("numpy", "gpu"):
        with pytest.raises(ValueError, match="decode to non-finite block scales"):
            qb.dequantize(fake_device(packed) if backend == "gpu" else packed, st, backend=backend)


@pytest.mark.parametrize("dtype", [pytest.param(np.float32, id="f32"), pytest.param(np.float16, id="f16"), _BF16])
@pytest.mark.parametrize("scale", [None, "e8m0"])
def test_allow_nonfinite_stays_on_the_device(monkeypatch, dtype, scale):
    """quantize(allow_nonfinite=True) of a device array: the sanitize kernel makes the input
    (no copy of the values to the host and back), for both layouts; the bytes are the numpy
    backend's."""
    import quantbook as qb
    from quantbook.bulk.gpu import scaled as GS

    cp = use_stand_in_cupy(monkeypatch, E.any_emulator, build=lambda: (E.emulator(), E.scaled_emulator()),
                           caches=(GS,))
    rng = np.random.default_rng(26)
    x = rng.standard_normal(32 * 40 + 11).astype(dtype)
    x[[5, 70, 71, 600, -1]] = [np.nan, np.inf, -np.inf, np.nan, -np.inf]
    to_host = G.CudaBackend.to_host
    moved = []
    monkeypatch.setattr(G.CudaBackend, "to_host", lambda self, a: (moved.append(np.size(a)), to_host(self, a))[1])
    kw = {"scale": scale} if scale else {}
    p, st = qb.quantize(fake_device(x), "e2m1" if scale else "nf4", 32, backend="gpu", allow_nonfinite=True, **kw)
    rp, rst = qb.quantize(x, "e2m1" if scale else "nf4", 32, backend="numpy", allow_nonfinite=True, **kw)
    assert bits_equal(np.asarray(p), rp) and bits_equal(st.absmax, rst.absmax)
    assert K.sanitize_name(G._dtype_key(dtype)) in [n for n, _, _ in cp.launches]
    assert x.size not in moved, moved


def test_block_scales_are_checked_on_the_device(cp, monkeypatch):
    """quantize() checks the block maxima for NaN/Inf, and dequantize() the scales it uploaded,
    on the gpu backend where they are: no host pass over a float32 a block.  A bad scale is
    refused with the host's message, -0.0 is a good one, and the values are numpy's."""
    import quantbook as qb
    from quantbook.bulk import format as F

    x = np.random.default_rng(29).standard_normal(64 * 500 + 3).astype(np.float16)
    nb = -(-x.size // 64)
    seen = []
    check = F.finite_nonnegative_bits
    monkeypatch.setattr(F, "finite_nonnegative_bits",
                        lambda s: (seen.append((type(s), np.size(s))), check(s))[1])
    p, st = qb.quantize(fake_device(x), "nf4", 64, backend="gpu")
    assert seen == [(FakeDeviceArray, nb)], seen
    rp, rst = qb.quantize(x, "nf4", 64, backend="numpy")
    assert bits_equal(np.asarray(p), rp) and bits_equal(st.absmax, rst.absmax)
    del seen[:]
    got = qb.dequantize(p, st, backend="gpu")   # the copy the backend kept, checked when made
    assert seen == [], seen
    assert bits_equal(np.asarray(got), qb.dequantize(rp, rst, backend="numpy"))
    st.absmax = st.absmax.copy()   # a new array: uploaded, and checked where it went
    del seen[:]
    got = qb.dequantize(p, st, backend="gpu")
    assert seen == [(FakeDeviceArray, nb)], seen
    assert bits_equal(np.asarray(got), qb.dequantize(rp, rst, backend="numpy"))
    st.absmax[7] = -0.0   # finite, not negative: decodes as on the host
    assert bits_equal(np.asarray(qb.dequantize(p, st, backend="gpu")), qb.dequantize(rp, st, backend="numpy"))
    for bad in (np.nan, -np.inf, -1.0):
        st.absmax[nb - 1] = bad
        msgs = []
        for backend, packed in (("numpy", rp), ("gpu", p)):
            with pytest.raises(ValueError, match="absmax must hold finite non-negative scales") as err:
                qb.dequantize(packed, st, backend=backend)
            msgs.append(str(err.value))
        assert msgs[0] == msgs[1] and f"entry {nb - 1} is" in msgs[0]


def test_nested_quantize_keeps_the_block_maxima_on_the_device(cp, monkeypatch):
    """quantize(nested=True) on the gpu backend: the block maxima come to the host (for the
    offset, torch's mean) but do not go back up; the kernel subtracts the offset from the
    device's copy.  The bytes are the numpy backend's."""
    import quantbook as qb

    x = np.random.default_rng(28).standard_normal(64 * 900 + 5).astype(np.float32)
    sent = []
    upload = cp.asarray
    monkeypatch.setattr(cp, "asarray", lambda a, dtype=None: (
        sent.append(np.size(a)) if not isinstance(a, FakeDeviceArray) else None, upload(a, dtype))[1])
    p, st = qb.quantize(fake_device(x), "nf4", 64, nested=True, backend="gpu")
    rp, rst = qb.quantize(x, "nf4", 64, nested=True, backend="numpy")
    assert bits_equal(np.asarray(p), rp) and st.nested_offset == rst.nested_offset
    assert bits_equal(st.absmax, rst.absmax) and bits_equal(st.nested_absmax, rst.nested_absmax)
    assert st.n_blocks not in sent, sent


def test_a_gpu_quantized_state_holds_its_scales_on_the_gpu_until_read(cp, monkeypatch):
    """quantize() on the gpu backend does not bring the float32 block scales to the host: the
    state's checks, its sizes, storage_bits and dequantize() on that GPU read the device array;
    reading ``absmax`` brings them down once (read-only, kept), as do pickling, copying and a
    host backend's dequantize.  Every decode is numpy's; a state whose fields no longer fit
    the scales is refused as a host one is."""
    import copy
    import pickle

    import quantbook as qb
    from quantbook.model.evaluate import storage_bits

    x = np.random.default_rng(37).standard_normal(64 * 200 + 7).astype(np.float16)
    nb = -(-x.size // 64)
    down, up = count_transfers(monkeypatch, cp)
    rp, rst = qb.quantize(x, "nf4", 64, backend="numpy")
    want = qb.dequantize(rp, rst, backend="numpy")

    p, st = qb.quantize(fake_device(x), "nf4", 64, backend="gpu")
    assert st.validate() is st and st.n_blocks == nb and st.absmax_nbytes == 4 * nb
    assert storage_bits(p, st) == 8 * (np.asarray(p).nbytes + 4 * nb) and "blocks=" in repr(st)
    assert bits_equal(np.asarray(qb.dequantize(p, st, backend="gpu")), want)
    assert nb not in down and nb not in up, (down, up)
    st.blocksize = 128   # the fields no longer fit the scales: refused before any decode
    with pytest.raises(ValueError, match=f"absmax has {nb} entries, expected {-(-x.size // 128)}"):
        qb.dequantize(p, st, backend="gpu")
    st.blocksize = 64
    assert nb not in down

    assert bits_equal(st.absmax, rst.absmax) and not st.absmax.flags.writeable
    assert st.absmax is st.absmax and down.count(nb) == 1   # once
    assert bits_equal(np.asarray(qb.dequantize(p, st, backend="gpu")), want)
    assert nb not in up and down.count(nb) == 1   # the copy kept for the host's

    for bring in (pickle.dumps, copy.copy, copy.deepcopy):
        del down[:]
        p, st = qb.quantize(fake_device(x), "nf4", 64, backend="gpu")
        brought = bring(st)
        assert down.count(nb) == 1
        got = pickle.loads(brought) if isinstance(brought, bytes) else brought
        assert bits_equal(got.absmax, rst.absmax)
        assert bits_equal(np.asarray(qb.dequantize(np.asarray(p), got, backend="numpy")), want)
    del down[:]
    p, st = qb.quantize(fake_device(x), "nf4", 64, backend="gpu")   # a host backend reads the host copy
    assert bits_equal(np.asarray(qb.dequantize(np.asarray(p), st, backend="numpy")), want)
    assert down.count(nb) == 1


def test_a_gpu_quantized_state_reads_the_scales_the_gpu_kept(cp, monkeypatch):
    """quantize() on the gpu backend keeps the device copy of the block scales for as long
    as the state's host copy lives, and gives the state a read-only view that numpy will
    not make writable: dequantize() on the same GPU uploads nothing.  A new array or another
    GPU is uploaded; a nested state's codes are kept, its fields read on every call; every
    decode is numpy's."""
    import gc

    import quantbook as qb
    from quantbook.bulk.gpu import kept

    x = np.random.default_rng(31).standard_normal(64 * 300 + 9).astype(np.float32)
    nb = -(-x.size // 64)
    sent = []
    upload = cp.asarray
    monkeypatch.setattr(cp, "asarray", lambda a, dtype=None: (
        sent.append(np.size(a)) if not isinstance(a, FakeDeviceArray) else None, upload(a, dtype))[1])
    p, st = qb.quantize(fake_device(x), "nf4", 64, backend="gpu")
    rp, rst = qb.quantize(x, "nf4", 64, backend="numpy")
    assert bits_equal(st.absmax, rst.absmax) and not st.absmax.flags.writeable and rst.absmax.flags.writeable

    def decodes_as_numpy(moved):
        del sent[:]
        got = qb.dequantize(p, st, backend="gpu")
        assert bits_equal(np.asarray(got), qb.dequantize(rp, st, backend="numpy"))
        assert (nb in sent) == moved, sent

    decodes_as_numpy(moved=False)
    with pytest.raises(ValueError, match="read-only"):
        st.absmax[3] = 2.0
    with pytest.raises(ValueError, match="WRITEABLE"):   # nor can it be made writable again
        st.absmax.setflags(write=True)
    with pytest.raises(ValueError, match="does not own its data"):
        st.absmax.resize(nb + 1, refcheck=False)
    changed = st.absmax.copy()
    changed[3] *= 2
    st.absmax = changed
    decodes_as_numpy(moved=True)

    p, st = qb.quantize(fake_device(x), "nf4", 64, backend="gpu")
    held = len(kept._KEPT)
    with cp.cuda.Device(1):   # the packed bytes on another GPU: the scales come to the host and go there
        p = set_device(p, 1)
        decodes_as_numpy(moved=True)
    assert len(kept._KEPT) == held + 1
    st.absmax = st.absmax * np.float32(0.5)
    decodes_as_numpy(moved=True)
    gc.collect()   # the replaced host copy is gone, and its device array with it
    assert len(kept._KEPT) == held

    # nested: the uint8 codes are kept, and decoded on every call with the state's fields
    p, st = qb.quantize(fake_device(x), "nf4", 64, nested=True, backend="gpu")
    rp = qb.quantize(x, "nf4", 64, nested=True, backend="numpy")[0]
    assert st.absmax.dtype == np.uint8 and not st.absmax.flags.writeable and len(kept._KEPT) == held + 1
    decodes_as_numpy(moved=False)
    st.nested_offset += 0.25
    decodes_as_numpy(moved=False)
    st.absmax = st.absmax.copy()
    decodes_as_numpy(moved=True)
