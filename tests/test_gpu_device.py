"""GPU backend on a real CUDA device vs the numpy reference: exact bytes.

Skipped (with the reason) when CuPy or a CUDA device is missing — CI has no GPU.  The same
kernels run on the CPU in tests/test_gpu_emulated.py; this file adds what only hardware
shows (real warps, vector loads and stores, alignment, CuPy/torch interop).
Seeds are fixed; equality is on bit patterns.
"""

import ml_dtypes
import numpy as np
import pytest

from quantbook.bulk import reference as R
from quantbook.codebooks import registry

from gpu_cases import adversarial_input, bits_equal
from quantbook.gpu import backend as G

_OK, _WHY = G.gpu_available()
pytestmark = pytest.mark.skipif(not _OK, reason=f"needs a CUDA device and CuPy ({_WHY})")

DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16]


def _to_device(x):
    import cupy as cp

    if x.dtype == ml_dtypes.bfloat16:
        return cp.asarray(x.view(np.uint16)), {"input_dtype": "bfloat16"}
    return cp.asarray(x), {}


def _host(a):
    import cupy as cp

    return cp.asnumpy(a)


def _check(x, code, bits, blocksize):
    n = x.size
    xd, kw = _to_device(x)
    p, a = G.quantize_gpu(xd, code, bits, blocksize, **kw)
    p_ref, a_ref = R.quantize_reference(x, code, bits, blocksize)
    assert bits_equal(_host(p), p_ref)
    assert bits_equal(_host(a), a_ref)
    d = G.dequantize_gpu(p, a, code, bits, blocksize, n, x.dtype)
    d_ref = R.dequantize_reference(p_ref, a_ref, code, bits, blocksize, n, x.dtype)
    dh = _host(d.view(np.uint16) if x.dtype == ml_dtypes.bfloat16 else d)
    assert bits_equal(dh, d_ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("blocksize", [16, 32, 64, 128, 256, 512, 1024, 2048, 4096])
def test_nf4_bit_identical(dtype, blocksize):
    rng = np.random.default_rng(blocksize)
    code = np.asarray(registry.get("nf4").code, np.float32)
    for n in (1, 3, 2 * blocksize + 1, 3 * blocksize + 17, 100_003):
        _check(adversarial_input(n, blocksize, code, rng).astype(dtype), code, 4, blocksize)


@pytest.mark.parametrize("name,bits", [("fp4", 4), ("af4", 4), ("int4-sym", 4), ("iq4_nl", 4),
                                       ("max1960-n2", 1), ("max1960-n4", 2), ("max1960-n8", 3)])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16", "bf16"])
def test_codebooks_and_bit_widths(name, bits, dtype):
    rng = np.random.default_rng(bits)
    code = np.asarray(registry.get(name).code, np.float32)
    for blocksize, n in ((64, 64 * 40 + 7), (256, 256 * 9 + 2)):
        _check(adversarial_input(n, blocksize, code, rng).astype(dtype), code, bits, blocksize)


def test_unaligned_input_view():
    import cupy as cp

    rng = np.random.default_rng(3)
    code = np.asarray(registry.get("nf4").code, np.float32)
    x = rng.standard_normal(10_001).astype(np.float16)
    xd = cp.asarray(x)[1:]                       # 2-byte offset: scalar-load path
    p, a = G.quantize_gpu(xd, code, 4, 64)
    p_ref, a_ref = R.quantize_reference(x[1:], code, 4, 64)
    assert bits_equal(_host(p), p_ref) and bits_equal(_host(a), a_ref)


@pytest.mark.parametrize("nb", [1, 300, 70_000])
def test_nested_bit_identical(nb):
    import cupy as cp

    rng = np.random.default_rng(nb)
    a = np.abs(rng.standard_normal(nb)).astype(np.float32)
    q, nested, off = G.quantize_absmax_nested(cp.asarray(a))
    q_ref, n_ref, off_ref = R.quantize_absmax_nested(a)
    assert np.float32(off).view(np.uint32) == np.float32(off_ref).view(np.uint32)
    assert bits_equal(_host(q), q_ref) and bits_equal(_host(nested), n_ref)
    r = G.dequantize_absmax_nested(q, nested, off)
    assert bits_equal(_host(r), R.dequantize_absmax_nested(q_ref, n_ref, off_ref))


def test_torch_cuda_tensors_without_host_copy():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    code = np.asarray(registry.get("nf4").code, np.float32)
    for tdt, ndt in ((torch.float16, np.float16), (torch.bfloat16, ml_dtypes.bfloat16),
                     (torch.float32, np.float32)):
        t = torch.randn(4096 + 5, device="cuda", dtype=tdt)
        p, a = G.quantize_gpu(t, code, 4, 64)
        x = t.float().cpu().numpy().astype(ndt)
        p_ref, a_ref = R.quantize_reference(x, code, 4, 64)
        assert bits_equal(_host(p), p_ref) and bits_equal(_host(a), a_ref)
