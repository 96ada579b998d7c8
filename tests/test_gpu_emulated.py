"""The CUDA kernels' source, run on the CPU by quantbook.gpu.emulate, against the numpy reference.

Same kernel text as on the device (compiled as C++ with a shim: one OS thread per CUDA
thread, barriers for __syncthreads/__shfl_xor_sync), same launch shapes as the backend.
Exact equality of bytes (packed codes, absmax bit patterns, dequantized values' bits).
Inputs: seeded normal data plus ties (values exactly on the midpoints), all-zero blocks,
subnormal blocks, odd tails and partial blocks; every bit width's packing, all three dtypes,
block sizes 16..4096.  What this cannot check (real warps, alignment, speed) is left to the
device tests.  Skips only when there is no C++ compiler.
"""

import ml_dtypes
import numpy as np
import pytest

from quantbook.bulk import reference as R
from quantbook.codebooks import registry

from gpu_cases import adversarial_input, bits_equal
from quantbook.gpu import emulate as E

DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16]


@pytest.fixture(scope="module", autouse=True)
def emu():
    try:
        return E.emulator()
    except E.EmulatorUnavailable as exc:
        pytest.skip(f"host emulation of the kernels unavailable: {exc}")


def _check(x, code, bits, blocksize, vec=True):
    n = x.size
    p_ref, a_ref = R.quantize_reference(x, code, bits, blocksize)
    p, a = E.quantize_emulated(x, code, bits, blocksize, vec_in=vec)
    assert bits_equal(p, p_ref), np.flatnonzero(p != p_ref)[:8]
    assert bits_equal(a, a_ref)
    d_ref = R.dequantize_reference(p_ref, a_ref, code, bits, blocksize, n, x.dtype)
    d = E.dequantize_emulated(p_ref, a_ref, code, bits, blocksize, n, x.dtype,
                              vec_in=vec, vec_out=vec)
    assert bits_equal(d, d_ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("blocksize", [16, 64, 256, 1024, 4096])
def test_nf4_all_blocksizes_and_dtypes(dtype, blocksize):
    rng = np.random.default_rng(blocksize)
    code = np.asarray(registry.get("nf4").code, np.float32)
    for n in (1, 3, 2 * blocksize + 1, 3 * blocksize + 17):
        _check(adversarial_input(n, blocksize, code, rng).astype(dtype), code, 4, blocksize)


def _division_sensitive_tail(code, rng):
    """(s, x) with float32 x / s != x * (1 / s) on different sides of a bound: the partial
    last block divides, full blocks multiply by the reciprocal (bitsandbytes)."""
    bounds, order = R.sorted_bounds(code)
    for _ in range(20000):
        s = np.float32(rng.uniform(0.5, 4.0))
        b = bounds[rng.integers(bounds.size)]
        x0 = np.float32(b * s)
        for x in (x0, np.nextafter(x0, np.float32(9)), np.nextafter(x0, np.float32(-9))):
            if abs(x) > s:
                continue
            y_div, y_mul = x / s, x * (np.float32(1) / s)
            if R.encode(np.array([y_div]), bounds, order)[0] != \
                    R.encode(np.array([y_mul]), bounds, order)[0]:
                return s, x
    raise AssertionError("no division-sensitive pair found")


@pytest.mark.parametrize("dtype", [np.float32], ids=["f32"])
def test_partial_last_block_divides_and_stores_clamped_absmax(dtype):
    rng = np.random.default_rng(11)
    code = np.asarray(registry.get("nf4").code, np.float32)
    for blocksize in (16, 64):
        s, x = _division_sensitive_tail(code, rng)
        a = rng.standard_normal(2 * blocksize + 6).astype(np.float32)
        a[2 * blocksize:] = [s, x, -x, x, 0.0, x]     # partial last block: absmax s
        _check(a.astype(dtype), code, 4, blocksize)
        z = rng.standard_normal(blocksize + 5).astype(np.float32)
        z[blocksize:] = 0.0                              # all-zero PARTIAL block: absmax = 1e-38
        _check(z.astype(dtype), code, 4, blocksize)


@pytest.mark.parametrize("name,bits", [("fp4", 4), ("af4", 4), ("int4-sym", 4), ("e2m1", 4),
                                       ("max1960-n2", 1), ("max1960-n4", 2), ("max1960-n8", 3),
                                       ("iq4_nl", 4)])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16", "bf16"])
def test_other_codebooks_and_bit_widths(name, bits, dtype):
    rng = np.random.default_rng(len(name) * 7 + bits)
    code = np.asarray(registry.get(name).code, np.float32)
    for blocksize, n in ((32, 32 * 3 + 5), (128, 128 * 3 + 2)):
        _check(adversarial_input(n, blocksize, code, rng).astype(dtype), code, bits, blocksize)


def test_eight_bit_table_and_unaligned_paths():
    from quantbook.bulk.dynamic_map import dynamic_map

    rng = np.random.default_rng(5)
    code = np.asarray(dynamic_map(), np.float32)
    for dtype in DTYPES:
        x = adversarial_input(64 * 3 + 9, 64, code, rng).astype(dtype)
        _check(x, code, 8, 64, vec=True)
        _check(x, code, 8, 64, vec=False)              # scalar loads/stores
    x = adversarial_input(16 * 5 + 3, 16, code[:64], rng).astype(np.float16)
    _check(x, code[:64], 6, 16, vec=False)


@pytest.mark.parametrize("nb", [1, 7, 256, 257, 900])
def test_nested_absmax_kernels(nb):
    rng = np.random.default_rng(nb)
    a = np.abs(rng.standard_normal(nb)).astype(np.float32)
    if nb > 300:
        a[256:512] = a[256]                  # a block where absmax - offset is constant
    q_ref, n_ref, off = R.quantize_absmax_nested(a)
    q, nested = E.quantize_absmax_nested_emulated(a, off)
    assert bits_equal(q, q_ref) and bits_equal(nested, n_ref)
    r_ref = R.dequantize_absmax_nested(q_ref, n_ref, off)
    assert bits_equal(E.dequantize_absmax_nested_emulated(q_ref, n_ref, off), r_ref)


def test_nested_zero_block_gives_codes_zero():
    a = np.full(300, 0.25, np.float32)       # offset == every value -> d == 0
    q_ref, n_ref, off = R.quantize_absmax_nested(a)
    q, nested = E.quantize_absmax_nested_emulated(a, off)
    assert bits_equal(q, q_ref) and (q == 0).all() and (nested == 0).all()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name,bits", [("nf4", 4), ("max1960-n8", 3)])
def test_nonfinite_blocks_match_reference(bad, name, bits):
    """A non-finite value makes its block's absmax non-finite -- also in the PARTIAL last block,
    whose stored absmax is max(absmax, 1e-38) (a NaN used to become 1e-38 there, hiding it
    from the api's check) -- and the bytes equal the reference's."""
    code = np.asarray(registry.get(name).code, np.float32)
    for dtype in (np.float32, np.float16):
        for n in (70, 133, 128):
            x = np.random.default_rng(n).standard_normal(n).astype(dtype)
            x[3] = x[-1] = bad
            p, a = E.quantize_emulated(x, code, bits, 64)
            p_ref, a_ref = R.quantize_reference(x, code, bits, 64)
            assert not np.isfinite(a[0]) and not np.isfinite(a[-1])
            assert bits_equal(a, a_ref) and bits_equal(p, p_ref)
