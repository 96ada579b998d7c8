"""What only a real CUDA device shows, beyond tests/test_conformance.py (which runs every
bulk case on the ``gpu`` backend when a device is present): unaligned device views, the
nested-statistics kernels called directly, and torch CUDA tensors without a host copy.

Skipped (with the reason) when CuPy or a CUDA device is missing — CI has no GPU.  Seeds are
fixed; equality is on bit patterns, against the numpy reference.
"""

import numpy as np
import pytest

from quantbook.bulk.gpu import backend as G
from quantbook.bulk.nested import dequantize_nested, dynamic_map, nested_offset, quantize_nested_reference
from quantbook.bulk.reference import quantize_reference
from quantbook.codebooks import registry

from gpu_cases import bits_equal, float64_rounding_cases, scale_rounding_cases, weights_file

_OK, _WHY = G.gpu_available()
pytestmark = pytest.mark.skipif(not _OK, reason=f"needs a CUDA device and CuPy ({_WHY})")


def _host(a):
    import cupy as cp

    return cp.asnumpy(a)


def test_unaligned_input_view():
    import cupy as cp

    rng = np.random.default_rng(3)
    code = np.asarray(registry.get("nf4").code, np.float32)
    x = rng.standard_normal(10_001).astype(np.float16)
    xd = cp.asarray(x)[1:]                       # 2-byte offset: scalar-load path
    p, a = G.quantize_gpu(xd, code, 4, 64)
    p_ref, a_ref = quantize_reference(x[1:], code, 4, 64)
    assert bits_equal(_host(p), p_ref) and bits_equal(_host(a), a_ref)


@pytest.mark.parametrize("nb", [1, 300, 70_000])
def test_nested_bit_identical(nb):
    import cupy as cp

    rng = np.random.default_rng(nb)
    a = np.abs(rng.standard_normal(nb)).astype(np.float32)
    q, nested, off = G.quantize_absmax_nested(cp.asarray(a))
    off_ref = nested_offset(a)
    q_ref, n_ref = quantize_nested_reference(a - off_ref)
    assert np.float32(off).view(np.uint32) == np.float32(off_ref).view(np.uint32)
    assert bits_equal(_host(q), q_ref) and bits_equal(_host(nested), n_ref)
    r = G.dequantize_absmax_nested(q, nested, off)
    assert bits_equal(_host(r), dequantize_nested(q_ref, n_ref, off_ref, dynamic_map(), 256))


def test_torch_cuda_tensors_without_host_copy():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    code = np.asarray(registry.get("nf4").code, np.float32)
    ml_dtypes = pytest.importorskip("ml_dtypes")
    for tdt, ndt in ((torch.float16, np.float16), (torch.bfloat16, ml_dtypes.bfloat16),
                     (torch.float32, np.float32)):
        t = torch.randn(4096 + 5, device="cuda", dtype=tdt)
        p, a = G.quantize_gpu(t, code, 4, 64)
        x = t.float().cpu().numpy().astype(ndt)
        p_ref, a_ref = quantize_reference(x, code, 4, 64)
        assert bits_equal(_host(p), p_ref) and bits_equal(_host(a), a_ref)


@pytest.mark.parametrize("scale, B, names", [(None, 64, "nf4,nf2,nf8"), ("e4m3", 16, "e2m1,nf4"),
                                            (None, 64, "nf4,higgs-2d-256")])
def test_evaluate_model_on_a_real_device_is_the_host_report(tmp_path, scale, B, names):
    """evaluate-model --backend gpu on the real device: the report of the numpy backend,
    number for number (tests/test_gpu_backend_fake.py, test_gpu_scaled.py and test_vq_gpu.py
    check the same through the emulator)."""
    from quantbook.model import evaluate_model
    from quantbook.model.evaluate import resolve_model_codebooks

    path = weights_file(tmp_path / "m.safetensors", 23, 256, 512)
    cbs = resolve_model_codebooks(names, B)
    kw = dict(block_size=B, scale=scale, rotations=("none", "hadamard"), tensors="*.weight")
    host = evaluate_model(path, cbs, backend="numpy", **kw).to_dict(per_tensor=True)
    assert evaluate_model(path, cbs, backend="gpu", **kw).to_dict(per_tensor=True) == host


@pytest.mark.parametrize("rotate", [None, "hadamard"])
def test_vector_quantization_is_the_host_result(rotate):
    """quantize_vq / dequantize_vq on the device: the numba backend's indices, scales and
    values (numba is checked against the numpy reference in tests/test_vq_bulk.py).  Rows of
    4096 take the rotation's spans beyond a tile through global memory; 4096 points in P = 4
    take the scan far from its start."""
    pytest.importorskip("numba")
    from quantbook.bulk.vq import dequantize_vq, quantize_vq
    from quantbook.naming import resolve_vector

    rng = np.random.default_rng(7)
    x = (rng.standard_t(4, (64, 4096)) * 0.02).astype(np.float16)
    x[3] = 0
    for cb in (resolve_vector("higgs-2d-256"), rng.standard_normal((4096, 4)).astype(np.float32)):
        for scale in ("rms", "absmax"):
            kw = dict(group=64, rotate=rotate, scale=scale)
            want_i, want_s = quantize_vq(x, cb, backend="cpu", **kw)
            got_i, got_s = quantize_vq(x, cb, backend="gpu", **kw)
            assert np.array_equal(got_i, want_i) and bits_equal(got_s.scales, want_s.scales)
            assert bits_equal(dequantize_vq(want_i, want_s, backend="gpu"),
                              dequantize_vq(want_i, want_s, backend="cpu"))


@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
def test_vector_group_scales_are_rounded_on_a_real_device(scale_dtype):
    """The group statistics and their stored scales, rounded by the kernel: numpy's."""
    import cupy as cp

    from quantbook.bulk import vq

    gpu, ref = vq.VQ_BACKENDS["gpu"], vq.VQ_BACKENDS["numpy"]
    for v, group, rule in scale_rounding_cases():
        stored, scales, stat_of = gpu.group_scales(cp.asarray(v), group, rule, scale_dtype)
        want, want_f32, want_stat = ref.group_scales(v, group, rule, scale_dtype)
        assert bits_equal(stored, want) and bits_equal(_host(scales), want_f32)
        np.testing.assert_array_equal(stat_of(), want_stat())


def test_group_statistics_of_an_unaligned_view():
    """A view 4 bytes off 16-byte alignment takes the statistics kernel's element loads (a
    16-byte load there would fault): the reference's statistics."""
    import cupy as cp

    from quantbook.bulk import vq

    v = np.random.default_rng(4).standard_normal(64 * 100 + 1).astype(np.float32)
    for rule in ("rms", "absmax"):
        got = vq.VQ_BACKENDS["gpu"].group_stat(cp.asarray(v)[1:], 64, rule)
        np.testing.assert_array_equal(got, vq.VQ_BACKENDS["numpy"].group_stat(v[1:], 64, rule))


def test_a_nan_of_the_un_rotation_has_the_hosts_bits():
    """inf - inf of decoded infinities: the GPU's own NaN has other bits than the host's,
    which the kernels write instead (as numpy and numba make it)."""
    from quantbook.bulk import vq
    from quantbook.numerics import hadamard

    y = np.array([[np.inf, -np.inf, 1.0, 2.0, np.inf, np.inf, 0.0, 0.0]], np.float32)
    with np.errstate(invalid="ignore"):
        want = vq.VQ_BACKENDS["numpy"].unrotate(y, hadamard.SEED)
    gpu = vq.VQ_BACKENDS["gpu"]
    assert np.isnan(want).any() and bits_equal(gpu.to_host(gpu.unrotate(y, hadamard.SEED)), want)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_vector_quantization_of_device_arrays(dtype):
    """CuPy (float16) and torch CUDA (bfloat16) tensors in, device indices and values out:
    the host reference's, the 16-bit rounding (NaN included) done on the device."""
    import cupy as cp

    from quantbook.bulk.vq import dequantize_vq, quantize_vq
    from quantbook.bulk.gpu.vq import cast_gpu
    from quantbook.naming import resolve_vector

    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(9)
    x = (rng.standard_t(4, (32, 1024)) * 0.02).astype(np.float32)
    pts = resolve_vector("higgs-2d-256")
    if dtype == "float16":
        host, dev = x.astype(np.float16), cp.asarray(x.astype(np.float16))
    else:
        torch = pytest.importorskip("torch")
        host = x.astype(ml_dtypes.bfloat16)
        dev = torch.from_numpy(x).to("cuda").to(torch.bfloat16)
    want_i, want_s = quantize_vq(host, pts, group=64, backend="numpy")
    got_i, got_s = quantize_vq(dev, pts, group=64)
    assert isinstance(got_i, cp.ndarray) and np.array_equal(_host(got_i), want_i)
    assert bits_equal(got_s.scales, want_s.scales)
    y = dequantize_vq(got_i, got_s)
    assert bits_equal(_host(y).view(np.uint16), dequantize_vq(want_i, want_s, backend="numpy").view(np.uint16))
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7FC12345, 0x7F812345, 0xFF800001], np.uint32).view(np.float32)
    dt = np.float16 if dtype == "float16" else ml_dtypes.bfloat16
    with np.errstate(invalid="ignore"):
        want = nans.astype(dt).view(np.uint16)
    assert bits_equal(_host(cast_gpu(cp.asarray(nans), dt)).view(np.uint16), want)


def test_the_rounding_of_float64_to_16_bits_on_a_real_device():
    """qbv_cast64 on the hardware (what a rotated 16-bit tensor's values are rounded with):
    numpy's float16 and ml_dtypes' bfloat16 bits, NaNs included."""
    import cupy as cp

    from quantbook.bulk.gpu.vq import cast_gpu

    ml_dtypes = pytest.importorskip("ml_dtypes")
    y = float64_rounding_cases()
    for dt in (np.float16, ml_dtypes.bfloat16):
        with np.errstate(over="ignore", invalid="ignore"):
            want = y.astype(dt).view(np.uint16)
        assert bits_equal(_host(cast_gpu(cp.asarray(y), dt)).view(np.uint16), want), dt


def test_allow_nonfinite_of_a_torch_bfloat16_tensor(monkeypatch):
    """The sanitize kernel on a torch bfloat16 tensor (no host copy), through quantize; and its
    result as a torch tensor where CuPy cannot view bfloat16 (ml_dtypes hidden), the bits
    unchanged either way."""
    import sys

    import cupy as cp
    torch = pytest.importorskip("torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    import quantbook as qb
    from quantbook.bulk import format as F

    x = np.random.default_rng(27).standard_normal(64 * 33 + 5).astype(ml_dtypes.bfloat16)
    x[[3, 64, 65, 200, -1]] = [np.nan, np.inf, -np.inf, np.nan, np.inf]
    t = torch.from_numpy(x.view(np.int16)).view(torch.bfloat16).cuda()
    p, st = qb.quantize(t, "nf4", 64, backend="gpu", allow_nonfinite=True)
    rp, rst = qb.quantize(x, "nf4", 64, backend="numpy", allow_nonfinite=True)
    assert bits_equal(_host(p), rp) and bits_equal(st.absmax, rst.absmax)
    raw = cp.asarray(F.sanitize_nonfinite(x, 64).view(np.uint16))
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    out = G._as_bfloat16(raw)
    assert out.dtype == torch.bfloat16 and bits_equal(out.view(torch.int16).cpu().numpy(), _host(raw).view(np.int16))


@pytest.mark.parametrize("n", [256, 4096])
def test_the_wide_unrotation_is_the_hosts(n):
    """``unrotate_wide`` on the device (rows of 4096 take the spans beyond a tile through
    global memory): quantbook.numerics.hadamard's float64 values, bit for bit."""
    from quantbook.bulk.vq import VQ_BACKENDS
    from quantbook.numerics import hadamard

    y = (np.random.default_rng(n).standard_normal((8, n)) * 3).astype(np.float32)
    got = _host(VQ_BACKENDS["gpu"].unrotate_wide(y, hadamard.SEED))
    want = hadamard.unrotate(y, n, hadamard.SEED)
    assert got.dtype == np.float64 and bits_equal(got, want)


def test_a_state_reads_the_scales_its_gpu_kept():
    """The device array of the block scales that quantize() kept decodes as the host copy
    does, and is the one dequantize() reads while that copy is unchanged."""
    import cupy as cp

    import quantbook as qb
    from quantbook.bulk.gpu import kept

    x = np.random.default_rng(37).standard_normal(64 * 1000 + 5).astype(np.float16)
    p, st = qb.quantize(cp.asarray(x), "nf4", 64, backend="gpu")
    rp, rst = qb.quantize(x, "nf4", 64, backend="numpy")
    dev = kept.kept(st.absmax, cp.cuda.Device().id)
    assert dev is not None and bits_equal(_host(dev), rst.absmax) and not st.absmax.flags.writeable
    want = qb.dequantize(rp, rst, backend="numpy")
    assert bits_equal(_host(qb.dequantize(p, st, backend="gpu")), want)
    st.absmax = st.absmax.copy()
    assert kept.kept(st.absmax, cp.cuda.Device().id) is None
    assert bits_equal(_host(qb.dequantize(p, st, backend="gpu")), want)
    p, st = qb.quantize(cp.asarray(x), "nf4", 64, nested=True, backend="gpu")
    rp, rst = qb.quantize(x, "nf4", 64, nested=True, backend="numpy")
    assert kept.kept(st.absmax, cp.cuda.Device().id) is not None
    assert bits_equal(_host(qb.dequantize(p, st, backend="gpu")), qb.dequantize(rp, rst, backend="numpy"))
