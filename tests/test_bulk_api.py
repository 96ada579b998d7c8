"""quantize / dequantize API: validation, edge cases, packing widths, QuantState round trip.

Expected values here come from first principles (hand-computed codes, exact zeros), not from the
code's own saved output.
"""

import numpy as np
import pytest

import quantbook as qb
from quantbook import Codebook
from quantbook.bulk import reference as R

ml_dtypes = pytest.importorskip("ml_dtypes")
BACKENDS = ["numpy", "cpu"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_nf4_bytes(backend):
    # absmax 1 so y == x; NF4 codes by value: -1 -> 0, 0 -> 7, 1 -> 15, 0.5626 -> 13
    x = np.array([1.0, -1.0, 0.0, 0.5626170039176941, 0.04, 0.03], dtype=np.float32)
    packed, st = qb.quantize(x, "nf4", 16, backend=backend)
    # 0.04 > midpoint(0, 0.0796)=0.0397901 -> 8; 0.03 -> 7
    assert packed.tolist() == [0xF0, 0x7D, 0x87]
    assert st.absmax.tolist() == [1.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_odd_length_pads_with_code_of_zero(backend):
    x = np.array([1.0, -1.0, 0.5], dtype=np.float32)
    packed, _ = qb.quantize(x, "nf4", 16, backend=backend)
    assert packed.size == 2 and packed[1] & 0x0F == 7  # NF4 index of 0.0
    packed, _ = qb.quantize(x, "fp4", 16, backend=backend)
    assert packed[1] & 0x0F == 0  # FP4: 0.0 -> index 0 (first of the two zeros)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, "bf16"])
def test_all_zero_blocks_decode_to_exact_zeros(backend, dtype, recwarn):
    dt = ml_dtypes.bfloat16 if dtype == "bf16" else dtype
    x = np.random.default_rng(0).standard_normal(64 * 3 + 5).astype(dt)
    x[64:128] = 0
    x[-5:] = 0
    for nested in (False, True):
        packed, st = qb.quantize(x, "nf4", 64, nested=nested, backend=backend)
        if not nested:  # (nested scales are approximations of these)
            assert st.absmax[1] == 0 and st.absmax[-1] == np.float32(1e-38)
        y = qb.dequantize(packed, st, backend=backend)
        assert y.dtype == x.dtype and y.shape == x.shape
        assert np.all(y[64:128] == 0) and np.all(y[-5:] == 0)
        assert np.all(np.isfinite(y.astype(np.float32)))
    assert len(recwarn) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_raises_naming_first_bad_block(backend):
    x = np.ones(64 * 4, dtype=np.float32)
    x[64 * 2 + 3] = np.nan
    x[64 * 3] = np.inf
    with pytest.raises(ValueError, match="block 2 "):
        qb.quantize(x, "nf4", 64, backend=backend)
    y = np.ones(70, dtype=np.float16)
    y[69] = -np.inf
    with pytest.raises(ValueError, match="block 1 "):
        qb.quantize(y, "nf4", 64, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("cb,bits", [("nf4", None), ("nf4", 8), ("max1960-n8", None)])
def test_nonfinite_in_partial_last_block_is_reported(backend, bad, cb, bits):
    # the partial last block stores max(absmax, 1e-38): a NaN there must not become 1e-38
    # (numba's generic kernel for non-4-bit packing used to lose it)
    x = np.ones(64 * 2 + 6, dtype=np.float32)
    x[-1] = bad
    with pytest.raises(ValueError, match="block 2 "):
        qb.quantize(x, cb, 64, backend=backend, bits=bits)


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_codes_decode_to_nan_not_out_of_bounds(backend):
    # 3 bits take a whole byte per code: a byte >= 8 is past the table -> NaN (as the GPU does)
    cb = Codebook(list(np.linspace(-1, 1, 8)), bits=3, name="t3")
    x = np.linspace(-1, 1, 40, dtype=np.float32)
    packed, st = qb.quantize(x, cb, 16, backend=backend)
    packed[[0, 39]] = [200, 8]
    y = qb.dequantize(packed, st, backend=backend)
    assert np.isnan(y[0]) and np.isnan(y[39]) and np.all(np.isfinite(y[1:39]))
    assert y[1] == np.float32(cb.code_f32[packed[1]] * st.absmax[0])
    st.code = np.linspace(-1, 1, 9, dtype=np.float32)   # 9 entries cannot come from 3 bits
    with pytest.raises(ValueError, match=r"more than 2\*\*3"):
        qb.dequantize(packed, st, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_allow_nonfinite_saturates(backend):
    x = np.array([0.5, np.nan, np.inf, -np.inf, -0.25] + [0.1] * 11, dtype=np.float32)
    packed, st = qb.quantize(x, "nf4", 16, backend=backend, allow_nonfinite=True)
    assert st.absmax.tolist() == [0.5]  # over the finite values
    y = qb.dequantize(packed, st, backend=backend)
    assert y[1] == 0 and y[2] == 0.5 and y[3] == -0.5 and y[0] == 0.5


def test_errors_are_clear():
    x = np.ones((4, 64), dtype=np.float32)
    with pytest.raises(ValueError, match="empty"):
        qb.quantize(np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        qb.quantize(x[:, ::2])
    with pytest.raises(ValueError, match="int32"):
        qb.quantize(np.ones(64, np.int32))
    with pytest.raises(ValueError, match="float64"):
        qb.quantize(np.ones(64))
    for dt in (">f4", ">f2"):   # numba would misread (or fail on) byte-swapped values
        with pytest.raises(ValueError, match="byte order"):
            qb.quantize(np.ones(64, dt))
    for b in (48, 8, 8192, 0, True):
        with pytest.raises(ValueError, match="power of two"):
            qb.quantize(x, block_size=b)
    with pytest.raises(ValueError, match="16 entries, more than 3 bits"):
        qb.quantize(x, "nf4", bits=3)
    with pytest.raises(ValueError, match="backend"):
        qb.quantize(x, backend="tpu")
    with pytest.raises(ValueError, match="CuPy"):
        qb.quantize(x, backend="gpu")
    packed, st = qb.quantize(x)
    with pytest.raises(ValueError, match="bytes"):
        qb.dequantize(packed[:-1], st)
    with pytest.raises(KeyError):
        qb.quantize(x, "no-such-codebook")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("levels,bits", [([-1.0, 1.0], 1), ([-1, -0.3, 0.3, 1], 2),
                                          (list(np.linspace(-1, 1, 8)), 3),
                                          (list(np.linspace(-1, 1, 32)), 5),
                                          (list(np.linspace(-1, 1, 256)), 8),
                                          ([-1.0, 0.0, 1.0], 2), ([-1.0, 0.0, 1.0], 8)])
def test_packing_widths(backend, levels, bits):
    cb = Codebook(levels, bits=max(bits, int(np.ceil(np.log2(len(levels))))), name="t")
    x = np.random.default_rng(bits).standard_normal(1000 + 3).astype(np.float32)
    packed, st = qb.quantize(x, cb, 64, backend=backend, bits=bits)
    assert packed.size == (-(-x.size * bits // 8) if bits in (1, 2, 4) else x.size)
    # first element in the most significant bits: unpack by hand
    yb = x[:64] * (np.float32(1) / np.abs(x[:64]).max())
    idx = cb.encode(yb, thresholds="float32")
    if bits in (1, 2):
        per = 8 // bits
        first = packed[0] >> (8 - bits)
        assert first == idx[0]
        assert packed[0] & ((1 << bits) - 1) == idx[per - 1]
    elif bits > 4:
        assert np.array_equal(packed[:64], idx)
    y = qb.dequantize(packed, st, backend=backend)
    lv = np.asarray(levels, dtype=np.float32)
    scale = np.repeat(st.absmax, 64)[: x.size]
    assert np.all(np.isin(np.round(y / np.where(scale == 0, 1, scale), 5), np.round(lv, 5)))


def test_quant_state_dict_roundtrip():
    x = np.random.default_rng(1).standard_normal((7, 33)).astype(ml_dtypes.bfloat16)
    for nested in (False, True):
        packed, st = qb.quantize(x, "fp4", 32, nested=nested)
        d = st.as_dict()
        assert set(d) >= {"absmax", "quant_map", "blocksize", "dtype", "shape", "quant_type"}
        assert d["dtype"] == "bfloat16" and d["shape"] == (7, 33) and d["quant_type"] == "fp4"
        if nested:
            assert d["nested_blocksize"] == 256 and d["nested_dtype"] == "float32"
            assert d["nested_quant_map"].size == 256 and isinstance(d["nested_offset"], float)
        st2 = qb.QuantState.from_dict(d)
        assert np.array_equal(qb.dequantize(packed, st2).view(np.uint16),
                              qb.dequantize(packed, st).view(np.uint16))
    with pytest.raises(ValueError, match="lacks"):
        qb.QuantState.from_dict({"absmax": [1.0]})
    bad = dict(st.as_dict(), blocksize=0)
    with pytest.raises(ValueError, match="power of two"):
        qb.QuantState.from_dict(bad)


def test_fp4_is_bitsandbytes_050_table():
    # bitsandbytes 0.50.2 get_4bit_type("fp4"): raw / 12 in float32, +0.0 at index 8
    raw = np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3], np.float32)
    assert np.array_equal(qb.get("fp4").code_f32.view(np.int32), (raw / np.float32(12)).view(np.int32))
    _, st = qb.quantize(np.ones(16, np.float32), "fp4", 16)
    assert st.quant_type == "fp4" and np.array_equal(st.code, raw / np.float32(12))


def test_fp4_zero_neighbourhood_rule():
    # stable sort puts index 0 before index 8: y in (-0.0026, 0] -> 0, y in (0, 0.0026] -> 8
    bounds, order = R.sorted_bounds(qb.get("fp4").code_f32)
    y = np.array([-0.002, -0.0, 0.0, 1e-6, 0.002, 0.003], dtype=np.float32)
    assert R.encode(y, bounds, order).tolist() == [0, 0, 0, 8, 8, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_dtype_and_shape_preserved(backend):
    for dt in (np.float32, np.float16, ml_dtypes.bfloat16):
        x = np.random.default_rng(2).standard_normal((3, 5, 7)).astype(dt)
        packed, st = qb.quantize(x, "nf4", 16, backend=backend)
        y = qb.dequantize(packed, st, backend=backend)
        assert y.dtype == x.dtype and y.shape == x.shape


class _FakeDevice:
    """Stands in for a CuPy array: has __cuda_array_interface__, lives on the 'device'."""

    def __init__(self, a):
        self.a = np.ascontiguousarray(a)
        self.__cuda_array_interface__ = {"shape": self.a.shape, "typestr": self.a.dtype.str}
        self.shape, self.dtype, self.size = self.a.shape, self.a.dtype, self.a.size

    def get(self):
        return self.a

    def reshape(self, *shape):
        return _FakeDevice(self.a.reshape(*shape))


def test_gpu_dispatch_wiring(monkeypatch):
    """backend='auto' sends device arrays to quantbook.gpu.backend (stubbed by the reference)."""
    gb = pytest.importorskip("quantbook.gpu.backend")
    calls = []

    def q(x, code, bits, blocksize):
        calls.append("q")
        p, a = R.quantize_reference(x.get(), code, bits, blocksize)
        return _FakeDevice(p), _FakeDevice(a)

    def dq(packed, absmax, code, bits, blocksize, n, out_dtype):
        calls.append("dq")
        assert isinstance(absmax, np.ndarray) and code.size == 16
        return _FakeDevice(R.dequantize_reference(packed.get(), absmax, code, bits, blocksize, n, out_dtype))

    monkeypatch.setattr(gb, "quantize_gpu", q)
    monkeypatch.setattr(gb, "dequantize_gpu", dq)
    x = np.random.default_rng(4).standard_normal((5, 40)).astype(np.float16)
    packed, st = qb.quantize(_FakeDevice(x), "nf4", 32, nested=True)
    ref_p, ref_s = qb.quantize(x, "nf4", 32, nested=True)
    assert np.array_equal(packed.get(), ref_p) and np.array_equal(st.absmax, ref_s.absmax)
    assert st.dtype == np.float16 and st.shape == (5, 40)
    with pytest.raises(ValueError, match="uint8"):   # a device array of another dtype
        qb.dequantize(_FakeDevice(packed.get().view(np.int8)), st)
    y = qb.dequantize(packed, st)
    assert calls == ["q", "dq"]
    assert np.array_equal(y.get().view(np.uint16), qb.dequantize(ref_p, ref_s).view(np.uint16))
    with pytest.raises(ValueError, match="backend='gpu' or 'auto'"):
        qb.quantize(_FakeDevice(x), backend="cpu")
    # non-contiguous device arrays are an error too (CAI strides in bytes), never a silent copy
    bad = _FakeDevice(x)
    bad.__cuda_array_interface__ = dict(bad.__cuda_array_interface__, strides=(2, 10))
    with pytest.raises(ValueError, match="C-contiguous"):
        qb.quantize(bad, "nf4", 32)
    ok = _FakeDevice(x[:1])   # a length-1 dimension may carry any stride
    ok.__cuda_array_interface__ = dict(ok.__cuda_array_interface__, strides=(999, 2))
    qb.quantize(ok, "nf4", 32)
    assert calls == ["q", "dq", "q"]
