"""Vector quantization on the GPU (the ``gpu`` backend of quantbook.bulk.vq) without a GPU: the
CUDA kernels of quantbook/bulk/gpu/vq_kernels.py compiled by NVRTC (the image is checked) and
run by the host emulation (tests/gpu_emulator.py) through a stand-in ``cupy``.

The oracle is the numpy reference backend (itself checked against scipy's explicit Hadamard
matrix and a brute-force quantizer in tests/test_vq_bulk.py); equality is on bit patterns.
The same comparisons on a real device are in tests/test_gpu_device.py.
"""

import re

import numpy as np
import pytest

try:
    import ml_dtypes
except ImportError:   # bfloat16 cases skip without it
    ml_dtypes = None

import gpu_emulator as E
from gpu_cases import (FakeDeviceArray, bits_equal, fake_device, float64_rounding_cases, grid_ties, load_benchmark,
                       scale_rounding_cases, set_device, use_stand_in_cupy, weights_file)
from quantbook.bulk import vq
from quantbook.bulk.gpu import scaled as GS
from quantbook.bulk.gpu import vq as GV
from quantbook.bulk.gpu import vq_kernels as VK
from quantbook.bulk.gpu.compile import compile_source
from quantbook.bulk.vq import dequantize_vq, quantize_vq
from quantbook.numerics import hadamard

REF = vq.VQ_BACKENDS["numpy"]
GPU = vq.VQ_BACKENDS["gpu"]


@pytest.fixture
def cp(monkeypatch):
    fake = use_stand_in_cupy(monkeypatch, E.any_emulator, build=E.vq_emulator, caches=(GS, GV))
    monkeypatch.setattr(GV, "_MAX_GRID", 2)   # every grid-stride loop takes several passes
    return fake


def _names(cp):
    return [name for name, _, _ in cp.launches]


def _counted(sent, a, dev):
    """``dev``, the device copy of ``a``, its bytes added to ``sent`` when ``a`` is a host
    array (what crossed, after any conversion on the way)."""
    if type(a) is np.ndarray:
        sent.append(dev.nbytes)
    return dev


def _spread(rng, shape):
    """Seeded normals over eight decades, so that the float64 sums round differently from any
    other order of operations."""
    return (rng.standard_normal(shape) * 10.0 ** rng.uniform(-4, 4, shape)).astype(np.float32)


# ------------------------------------------------------------------ the kernels one by one

@pytest.mark.parametrize("n, tile", [(1, 2048), (2, 2048), (64, 2048), (512, 2048), (2048, 2048), (4096, 2048),
                                     (64, 4), (64, 1), (32, 16)])
def test_rotation_is_the_reference_bit_for_bit(cp, monkeypatch, n, tile):
    """Both directions, with the spans beyond a tile (``tile`` < n) in global memory; a row of
    huge values overflows to ±inf as the reference's does, and un-rotating those infinities
    gives the reference's NaN (inf - inf)."""
    monkeypatch.setattr(GV, "FWHT_TILE", tile)
    rng = np.random.default_rng(n + tile)
    x = _spread(rng, (5, n))
    x[2] = 3e38
    got = GPU.rotate(x, hadamard.SEED)
    want = REF.rotate(x, hadamard.SEED)
    assert bits_equal(GPU.to_host(got), want)
    spans = max(0, (n // min(n, tile)).bit_length() - 1)
    assert _names(cp) == ["qbv_fwht_tile"] + ["qbv_butterfly"] * spans
    with np.errstate(over="ignore", invalid="ignore"):   # the reference's inf - inf, and float32 casts
        back = REF.unrotate(want, hadamard.SEED)
    assert bits_equal(GPU.to_host(GPU.unrotate(want, hadamard.SEED)), back)
    with np.errstate(over="ignore", invalid="ignore"):
        wide = hadamard.unrotate(want, n, hadamard.SEED)
    got = GPU.to_host(GPU.unrotate_wide(want, hadamard.SEED))   # not rounded: float64
    nan = np.isnan(wide)
    assert got.dtype == np.float64 and np.array_equal(np.isnan(got), nan) and bits_equal(got[~nan], wide[~nan])
    # rounded to 16 bits on the device as the host rounds the float64 values (a NaN's bits may differ)
    for dt in (np.float16,) + ((ml_dtypes.bfloat16,) if ml_dtypes is not None else ()):
        with np.errstate(over="ignore", invalid="ignore"):
            ref = REF.unrotate_as(want, hadamard.SEED, np.dtype(dt))
        got = GPU.unrotate_as(want, hadamard.SEED, np.dtype(dt))
        assert isinstance(got, FakeDeviceArray) and got.shape == ref.shape
        got = GPU.to_host(got).view(dt)
        assert np.array_equal(np.isnan(got), nan) and bits_equal(got[~nan], ref[~nan]), dt


def test_a_nan_of_the_rotation_has_the_hosts_bits(cp, monkeypatch):
    """The GPU makes a NaN with other bits than x86 (whose arithmetic the reference's is):
    the kernels write the host's, here a stand-in pattern, where the reference has a NaN."""
    monkeypatch.setattr(GV, "_HOST_NAN", 0x7FC00123)
    monkeypatch.setattr(GV, "FWHT_TILE", 2)
    y = np.array([[np.inf, -np.inf, 1.0, 2.0, np.inf, np.inf, 0.0, 0.0]], np.float32)
    with np.errstate(invalid="ignore"):
        want = REF.unrotate(y, hadamard.SEED)
    got = GPU.to_host(GPU.unrotate(y, hadamard.SEED))
    assert np.isnan(want).sum() >= 4 and np.array_equal(np.isnan(got), np.isnan(want))
    assert set(got[np.isnan(got)].view(np.uint32).tolist()) == {0x7FC00123}
    assert bits_equal(got[~np.isnan(got)], want[~np.isnan(want)])


@pytest.mark.parametrize("rule", ["rms", "absmax"])
@pytest.mark.parametrize("group", [2, 6, 64, 96])
def test_group_statistics(cp, rule, group):
    """float64 per group, in index order; a group of zeros, one holding NaN and one holding
    Inf give the reference's 0, NaN and inf; the same from a view off 16-byte alignment (the
    kernel's element-by-element loads, as for groups of 6, whose odd groups start off it) and
    from a strided view (copied contiguous)."""
    rng = np.random.default_rng(group)
    v = _spread(rng, 64 * group)   # enough groups that any other order of the sums shows
    v[:group] = 0.0
    v[group + 1] = np.nan
    v[3 * group] = -np.inf
    got = GPU.group_stat(v, group, rule)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_array_equal(got, REF.group_stat(v, group, rule))
    shifted = fake_device(np.concatenate([[np.float32(7)], v]))[1:]   # 4 bytes past alignment
    assert shifted.data.ptr % 16 and np.array_equal(GPU.group_stat(shifted, group, rule), got, equal_nan=True)
    strided = fake_device(np.repeat(v, 2))[::2]
    assert np.array_equal(GPU.group_stat(strided, group, rule), got, equal_nan=True)


@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
def test_vector_group_scales_are_rounded_on_the_emulated_device(cp, scale_dtype):
    """The stored scale is numpy's rounding of the float64 statistic, once, at float16's
    rounding edges (:func:`gpu_cases.scale_rounding_cases`)."""
    for v, group, rule in scale_rounding_cases():
        stored, scales, stat_of = GPU.group_scales(v, group, rule, scale_dtype)
        want, want_f32, want_stat = REF.group_scales(v, group, rule, scale_dtype)
        assert stored.dtype == want.dtype == np.dtype(scale_dtype) and bits_equal(stored, want)
        assert isinstance(scales, FakeDeviceArray) and bits_equal(scales, want_f32)
        np.testing.assert_array_equal(stat_of(), want_stat())
    inexact = stat_of()[stat_of() != stat_of().astype(np.float32)]
    assert inexact.size > 1000   # the pairs do reach between float32 values


def _tie_points():
    """P = 2 points with exact ties: three at distance 1 from the origin, pairs sharing a
    first coordinate, and points equidistant from two or three of them as inputs (listed out
    of first-coordinate order, so that index order and the scan's order differ)."""
    pts = np.array([[0.5, 1.0], [2.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.5, -1.0],
                    [2.0, 2.0], [-2.0, 2.0]], np.float32)
    y = np.array([[0.0, 0.0], [0.5, 0.0], [0.25, 0.5], [0.0, 2.0], [-0.5, 0.0], [9.0, -9.0]], np.float32)
    return pts, y


@pytest.mark.parametrize("case", ["ties", "p1-uint16", "p3", "p10"])
def test_encode_is_the_brute_force(cp, case):
    """The exact scan picks what the brute force picks (nearest, ties to the lower index),
    with groups of scale 0 (every vector is y = 0) and, for P = 10, coordinates beyond the
    ones a thread keeps in registers."""
    rng = np.random.default_rng(len(case))
    if case == "ties":
        pts, y = _tie_points()
        # scale 41: y·41 is exact, and v / 41 is y, where v · float32(1/41) falls below
        # 0.25 and breaks the tie at (0.25, 0.5) the other way
        v = np.concatenate([y, y, y * np.float32(41), y]).reshape(-1)
        scales, group = np.array([1, 0, 41, 1], np.float32), y.size
    else:
        n, p = {"p1-uint16": (300, 1), "p3": (64, 3), "p10": (20, 10)}[case]
        pts = rng.standard_normal((n, p)).astype(np.float32)
        pts[1, 0] = pts[0, 0]                       # a shared first coordinate
        group = 4 * p
        v = rng.standard_normal(group * 50).astype(np.float32)
        scales = np.abs(rng.standard_normal(50)).astype(np.float32) + 0.25
        scales[7] = 0.0
    got = GPU.encode(v, scales, group, pts)
    assert isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, REF.encode(v, scales, group, pts))
    if case == "ties":   # the expected indices, by hand
        assert got.tolist() == [2, 0, 0, 3, 2, 1] + [2] * 6 + [2, 0, 0, 3, 2, 1] * 2


def _grid_paths(pts, y):
    """How many vectors ``y`` the P = 2 cell grid answers by its three candidates, by a longer
    list, and by the scan (the grid's outer ring and beyond): the lookup redone in numpy."""
    zero, lo0, lo1, inv0, inv1, cells, lut, multi = vq._grid_tables(pts.tobytes(), len(pts))
    fx = np.clip((y[:, 0].astype(np.float64) - lo0) * inv0, 0, cells - 1).astype(int)
    fy = np.clip((y[:, 1].astype(np.float64) - lo1) * inv1, 0, cells - 1).astype(int)
    e = lut[fx * cells + fy, 0]
    listed = multi[np.maximum(-1 - e, 0)] > 0
    return np.array([(e >= 0).sum(), ((e < 0) & listed).sum(), ((e < 0) & ~listed).sum()])


def test_the_grid_search_is_the_brute_force(cp):
    """P = 2 goes through the cell grid: vectors answered by three candidates, by a longer
    list and by the scan (outliers beyond the grid), and groups of scale 0 and 41, with HIGGS'
    grid and random tables of 1000 and 5 points: the brute force's indices (the reference's
    encode), and each path taken."""
    rng = np.random.default_rng(12)
    group, paths = 64, np.zeros(3, int)
    for pts in (np.asarray(_higgs().points), rng.standard_normal((1000, 2)).astype(np.float32),
                rng.standard_normal((5, 2)).astype(np.float32)):
        y = (rng.standard_normal((64 * group // 2, 2)) * 1.5).astype(np.float32)
        y[5] = (60.0, -3.0)
        y[40] = (-0.5, 70.0)
        v = y.reshape(-1).copy()
        scales = np.ones(v.size // group, np.float32)
        scales[3], scales[7] = 0.0, 41.0
        v[7 * group:8 * group] *= np.float32(41.0)
        got = GPU.encode(v, scales, group, pts)
        assert GPU.to_host(got).tolist() == REF.encode(v, scales, group, pts).tolist()
        assert _names(cp)[-1] == "qbv_encode_grid2"
        paths += _grid_paths(pts, np.delete(y, np.s_[3 * group // 2:4 * group // 2], axis=0))
    assert paths.min() > 0, paths


def test_ties_in_the_grid_go_to_the_lower_index(cp):
    """Vectors at exactly equal least distance from two points, answered from a cell's three
    inline candidates and from a longer list (:func:`gpu_cases.grid_ties`): the brute
    force's lower index."""
    pts, y, fast = grid_ties()
    assert fast.sum() > 100 and (~fast).sum() > 100
    v, scales = y.reshape(-1), np.ones(len(y), np.float32)
    got = GPU.to_host(GPU.encode(v, scales, 2, pts))
    assert _names(cp)[-1] == "qbv_encode_grid2"
    np.testing.assert_array_equal(got, REF.encode(v, scales, 2, pts))


def test_decode(cp):
    rng = np.random.default_rng(5)
    pts = rng.standard_normal((300, 2)).astype(np.float32)
    idx = rng.integers(0, 300, 96)
    scales = _spread(rng, 6)
    scales[2] = 0.0
    got = GPU.decode(idx, scales, 32, pts)
    assert bits_equal(GPU.to_host(got), REF.decode(idx, scales, 32, pts))


def test_a_read_only_table_in_fortran_order_decodes_as_its_values(cp):
    """The device copy of a read-only table is reused by identity only when it is in C order
    (the kernels read rows; a device copy keeps the host's order)."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 64)).astype(np.float32)
    idx, st = quantize_vq(x, rng.standard_normal((16, 2)).astype(np.float32), group=32, backend="numpy")
    fortran = np.asfortranarray(st.points)
    fortran.setflags(write=False)
    st.points = fortran
    assert bits_equal(dequantize_vq(idx, st, backend="gpu"), dequantize_vq(idx, st, backend="numpy"))


# ------------------------------------------------------------------ quantize_vq / dequantize_vq

@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("rotate, scale, scale_dtype", [(None, "rms", "float16"), ("hadamard", "absmax", "float16"),
                                                        ("hadamard:32", "rms", "float32")])
def test_quantize_vq_on_the_gpu_is_the_reference(cp, dtype, rotate, scale, scale_dtype):
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    rng = np.random.default_rng(11)
    x = (rng.standard_t(4, (6, 128)) * 0.02).astype(dtype)
    x[1, :64] = 0
    for pts in (np.asarray(vq.as_points(_higgs())[1]), rng.standard_normal((300, 1)).astype(np.float32)):
        kw = dict(group=32, rotate=rotate, scale=scale, scale_dtype=scale_dtype)
        want_i, want_s = quantize_vq(x, pts, backend="numpy", **kw)
        got_i, got_s = quantize_vq(x, pts, backend="gpu", **kw)
        assert got_i.dtype == want_i.dtype and np.array_equal(got_i, want_i)
        assert bits_equal(got_s.scales, want_s.scales)
        back = dequantize_vq(want_i, want_s, backend="gpu")
        assert type(back) is np.ndarray and bits_equal(back, dequantize_vq(want_i, want_s, backend="numpy"))
    assert {"qbv_encode", "qbv_decode", "qbv_group_stat"} <= set(_names(cp))
    assert ("qbv_fwht_tile" in _names(cp)) == (rotate is not None)


def _higgs():
    from quantbook.naming import resolve_vector

    return resolve_vector("higgs-2d-256")


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("rotate", [None, "hadamard"])
def test_device_arrays_in_and_out(cp, dtype, rotate):
    """A device tensor's indices and values stay on the device, equal to the host reference's
    for the same values (the float16/bfloat16 rounding of the result on the device too)."""
    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    rng = np.random.default_rng(21)
    x = (rng.standard_t(3, (4, 128)) * 0.02).astype(dtype)
    pts = np.asarray(_higgs().points)
    want_i, want_s = quantize_vq(x, pts, group=32, rotate=rotate, backend="numpy")
    for backend in ("auto", "gpu"):
        got_i, got_s = quantize_vq(fake_device(x), pts, group=32, rotate=rotate, backend=backend)
        assert isinstance(got_i, FakeDeviceArray) and got_i.dtype == np.uint8 and np.array_equal(got_i, want_i)
        assert bits_equal(got_s.scales, want_s.scales) and got_s.dtype == want_s.dtype
        y = dequantize_vq(fake_device(want_i), want_s, backend=backend)
        assert isinstance(y, FakeDeviceArray) and y.shape == x.shape
        assert bits_equal(y, dequantize_vq(want_i, want_s, backend="numpy"))


def test_device_arrays_run_on_the_device_that_holds_them(cp):
    x = set_device(fake_device(np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)), 1)
    idx, st = quantize_vq(x, _higgs(), group=32)
    dequantize_vq(set_device(idx, 1), st)
    assert cp.launch_devices and set(cp.launch_devices) == {1}


@pytest.mark.parametrize("rotate", [None, "hadamard"])
def test_a_device_array_with_nan_or_inf_is_named(cp, rotate):
    x = np.ones((2, 64), np.float16)
    x[1, 5] = np.inf
    with pytest.raises(ValueError, match=r"NaN or Inf: first .*flat index 69\)?$"):
        quantize_vq(fake_device(x), _higgs(), rotate=rotate)


def test_bad_scales_are_named_as_the_reference_names_them(cp):
    """A float16 scale overflow, NaN in an unrotated group and in a rotated one, and a rotation
    beyond float32: the numpy backend's message, for host and device arrays (the GPU rounds the scales itself and
    fetches the statistics only to say what went wrong)."""
    rng = np.random.default_rng(8)
    huge = rng.standard_normal((2, 64)).astype(np.float32)
    huge[1] *= np.float32(1e6)
    nan = rng.standard_normal((2, 64)).astype(np.float32)
    nan[1, 3] = np.nan
    big = np.full((1, 64), 3e38, np.float32)
    cases = ((huge, dict(rotate=None), "group 1's rms scale .* exceeds float16's range"),
             (nan, dict(rotate=None), r"NaN or Inf: first in group 1 \(flat index 67\)"),
             (nan, dict(rotate="hadamard"), r"NaN or Inf: first at flat index 67$"),
             (big, dict(scale_dtype="float32"), "rotation takes group 0 beyond float32's range"))
    for x, kw, msg in cases:
        with pytest.raises(ValueError, match=msg) as want:
            quantize_vq(x, _higgs(), backend="numpy", **kw)
        for where in (np.asarray, fake_device):
            with pytest.raises(ValueError) as got:
                quantize_vq(where(x), _higgs(), backend="gpu", **kw)
            assert str(got.value) == str(want.value)


def test_device_indices_are_checked_before_any_kernel(cp):
    """Integers of the state's index shape below N, as host indices are: an index past the
    table would make the decode kernel read beyond it."""
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    idx, st = quantize_vq(x, _higgs(), group=32, backend="numpy")
    big, neg = idx.astype(np.int64), idx.astype(np.int64)
    big[1, 3], neg[0, 0] = 256, -1
    for bad, msg in ((idx.astype(np.float32), "indices must be integers, got dtype float32"),
                     (idx.reshape(-1), r"indices have shape \(64,\), expected \(2, 32\)"),
                     (big, r"indices must lie in \[0, 255\], found 256"),
                     (neg, r"indices must lie in \[0, 255\], found -1")):
        for where in (fake_device, np.asarray):
            with pytest.raises(ValueError, match=f"^{msg}$"):
                dequantize_vq(where(bad), st)
    assert not _names(cp)


def test_indices_of_any_integer_type_decode_alike(cp, monkeypatch):
    """uint8 (every value in range for N = 256: not scanned), uint16 (both byte orders),
    int32 and int64 indices, host and device: the reference's values; host uint8 indices
    cross at a byte each."""
    sent = []
    asarray = cp.asarray
    monkeypatch.setattr(cp, "asarray", lambda a, dtype=None: _counted(sent, a, asarray(a, dtype)))
    x = np.random.default_rng(6).standard_normal((8, 256)).astype(np.float32)
    idx, st = quantize_vq(x, _higgs(), group=64, backend="numpy")
    want = dequantize_vq(idx, st, backend="numpy")
    for dt in (np.uint8, np.uint16, ">u2", np.int32, np.int64):
        i = idx.astype(dt)
        for backend in vq.VQ_BACKENDS:
            assert bits_equal(dequantize_vq(i, st, backend=backend), want), (dt, backend)
        assert bits_equal(dequantize_vq(fake_device(i.astype(np.dtype(dt).newbyteorder("="))), st), want)
    sent.clear()
    dequantize_vq(idx, st, backend="gpu")
    assert idx.nbytes in sent and 4 * idx.nbytes not in sent


def test_the_rounding_to_16_bits_on_the_device(cp):
    """float32 to float16 and bfloat16, to nearest even: ties, subnormals, overflow, ±0, ±inf,
    and NaNs of either sign with payloads, as numpy and ml_dtypes round them."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(4)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65520.0, 65519.996, 1e-8, -3e-8,
                        6.1e-5, 3.4e38, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8,
                        1e-40], np.float32)
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7FC12345, 0x7F812345, 0xFF800001], np.uint32).view(np.float32)
    y = np.concatenate([special, nans,
                        (rng.standard_normal(1000) * 10.0 ** rng.uniform(-8, 8, 1000)).astype(np.float32)])
    with np.errstate(over="ignore", invalid="ignore"):
        for dt in (np.float16, ml_dtypes.bfloat16):
            got = GV.cast_gpu(fake_device(y), dt)
            assert isinstance(got, FakeDeviceArray) and bits_equal(got, y.astype(dt))
    assert bits_equal(GV.cast_gpu(fake_device(y), np.float32), y)


def test_the_rounding_of_float64_to_16_bits_on_the_emulated_device(cp):
    """float64 to float16 as numpy rounds it (once, to nearest even) and to bfloat16 as
    ml_dtypes does (to float32 first: 1 + 2^-8 + 2^-30 lands on a tie there and goes to 1,
    where one rounding would go up): ties, sticky bits beyond float32, subnormals of each
    type, overflow, values beyond float32, ±0, ±inf and NaNs of either sign with payloads."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    y = float64_rounding_cases()
    with np.errstate(over="ignore", invalid="ignore"):
        for dt in (np.float16, ml_dtypes.bfloat16):
            got = GV.cast_gpu(fake_device(y), dt)
            assert isinstance(got, FakeDeviceArray) and bits_equal(got, y.astype(dt)), dt
        assert bits_equal(GV.cast_gpu(fake_device(y[np.isfinite(y)]), np.float32), y[np.isfinite(y)].astype(np.float32))
    assert "qbv_cast64" in _names(cp)


def test_a_rotated_tensor_stays_on_the_device(cp, monkeypatch):
    """Rotated values go from the rotation to the statistics and the search without a round
    trip: what comes back is the stored scale of a group and an index a vector, each in its
    stored type."""
    from quantbook.bulk.gpu.backend import CudaBackend

    back = []
    to_host = CudaBackend.to_host
    monkeypatch.setattr(CudaBackend, "to_host", lambda self, a: back.append(a.nbytes) or to_host(self, a))
    x = np.random.default_rng(2).standard_normal((4, 256)).astype(np.float32)
    idx, _ = quantize_vq(x, _higgs(), group=64, backend="gpu")
    assert sorted(back) == [16 * 2, 512] and type(idx) is np.ndarray   # float16 scales, uint8 indices


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", ">f2", ">f4"])
def test_host_values_cross_as_they_are(cp, monkeypatch, dtype):
    """Host 16-bit values go to the device at 2 bytes a value and are widened there, and
    16-bit results come back at 2 bytes a value, rounded there; any byte order gives the
    reference's indices, scales and values."""
    from quantbook.bulk.gpu.backend import CudaBackend

    if dtype == "bfloat16":
        dtype = pytest.importorskip("ml_dtypes").bfloat16
    sent, back = [], []
    asarray, to_host = cp.asarray, CudaBackend.to_host
    monkeypatch.setattr(cp, "asarray", lambda a, dtype=None: _counted(sent, a, asarray(a, dtype)))
    monkeypatch.setattr(CudaBackend, "to_host", lambda self, a: back.append(a.nbytes) or to_host(self, a))
    x = (np.random.default_rng(3).standard_t(4, (16, 256)) * 0.02).astype(dtype)   # larger than the tables
    for rotate in (None, "hadamard"):
        sent.clear()
        got_i, got_s = quantize_vq(x, _higgs(), group=64, rotate=rotate, backend="gpu")
        want_i, want_s = quantize_vq(x, _higgs(), group=64, rotate=rotate, backend="numpy")
        assert np.array_equal(got_i, want_i) and bits_equal(got_s.scales, want_s.scales)
        assert x.nbytes in sent and 2 * x.nbytes not in sent   # as they are, not as float32
        back.clear()
        y = dequantize_vq(want_i, want_s, backend="gpu")
        assert y.dtype == want_s.dtype and bits_equal(y, dequantize_vq(want_i, want_s, backend="numpy"))
        assert back == [x.size * np.dtype(want_s.dtype).itemsize]


@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
def test_a_gpu_made_state_decodes_with_the_scales_its_gpu_kept(cp, monkeypatch, scale_dtype):
    """quantize_vq on the GPU keeps the float32 scales on the device while the state's
    (read-only) stored scales live: dequantize_vq on that GPU uploads none of them.  A new
    array of scales crosses again; the values are numpy's."""
    sent = []
    asarray = cp.asarray
    monkeypatch.setattr(cp, "asarray", lambda a, dtype=None: _counted(sent, a, asarray(a, dtype)))
    x = (np.random.default_rng(5).standard_t(4, (8, 256)) * 0.02).astype(np.float32)
    idx, st = quantize_vq(fake_device(x), _higgs(), group=64, scale_dtype=scale_dtype, backend="gpu")
    want_i, want_s = quantize_vq(x, _higgs(), group=64, scale_dtype=scale_dtype, backend="numpy")
    assert np.array_equal(idx, want_i) and bits_equal(st.scales, want_s.scales) and not st.scales.flags.writeable
    want = dequantize_vq(want_i, want_s, backend="numpy")

    def decodes(moved):
        sent.clear()
        assert bits_equal(dequantize_vq(idx, st, backend="gpu"), want)
        assert (st.scales.nbytes in sent) == moved, sent

    decodes(moved=False)
    with pytest.raises(ValueError, match="WRITEABLE"):
        st.scales.setflags(write=True)
    st.scales = st.scales.copy()
    decodes(moved=True)


def test_evaluate_model_with_a_vector_codebook_on_the_gpu(cp, monkeypatch, tmp_path):
    """evaluate-model --backend gpu with scalar and vector codebooks: the numpy backend's
    report, number for number.  The vector rows start from the tensor's one upload and are
    summed on the device, as the scalar rows, rotated or not (the float16 tensor's rotated
    scalar row is rounded to float16 there): no row comes back."""
    from quantbook.bulk.gpu.backend import CudaBackend
    from quantbook.model import evaluate_model
    from quantbook.model.evaluate import resolve_model_codebooks

    path = weights_file(tmp_path / "m.safetensors", 31, 32, 128)
    cbs = resolve_model_codebooks("nf4,higgs-2d-256", 64)
    kw = dict(block_size=64, rotations=("none", "hadamard"), tensors="*.weight")
    host = evaluate_model(path, cbs, backend="numpy", **kw).to_dict(per_tensor=True)
    back = []
    to_host = CudaBackend.to_host
    monkeypatch.setattr(CudaBackend, "to_host", lambda self, a: back.append(a.size) or to_host(self, a))
    del cp.launches[:]
    gpu = evaluate_model(path, cbs, backend="gpu", **kw).to_dict(per_tensor=True)
    names = _names(cp)
    assert "qbv_encode_grid2" in names and any(n.startswith("qb_quantize_") for n in names)
    assert sum(n.startswith("qb_error_chunks_") for n in names) == 2 * 4   # 2 tensors of 4 rows
    assert not [n for n in back if n in (32 * 128, 16 * 64)]
    assert gpu == host


def test_a_gpu_that_cannot_run_is_named(monkeypatch):
    monkeypatch.setattr(vq.CudaVQ, "unavailable", lambda self: "no CUDA device (stand-in)")
    x = np.ones((2, 64), np.float32)
    for call in (lambda: quantize_vq(x, _higgs(), backend="gpu"),
                 lambda: dequantize_vq(*quantize_vq(x, _higgs(), backend="numpy"), backend="gpu")):
        with pytest.raises(ValueError, match=r"^backend 'gpu' cannot run here: no CUDA device \(stand-in\)$"):
            call()


def test_the_benchmark_times_the_gpu_and_checks_it_against_numba(cp, monkeypatch, capsys):
    pytest.importorskip("numba")
    bench = load_benchmark(cp, monkeypatch, "bench_quantize_vq")
    assert bench.main(["--log2n", "14", "--numpy-log2n", "12", "--repeat", "1", "--rotate", "hadamard"]) == 0
    out = capsys.readouterr().out
    assert "quantize    gpu device" in out and "dequantize  gpu device" in out
    assert "gpu indices, scales and values equal numba's (host and device arrays): True" in out
    assert "qbv_fwht_tile" in _names(cp)


# ------------------------------------------------------------------ what NVRTC makes of the source

def test_ptx_is_plain_ieee(nvrtc):
    """No contraction into fused multiply-adds, no flush-to-zero, no approximate division or
    square root: each kernel does the reference's operations."""
    ptx = compile_source(VK.source(), "compute_90", output="ptx", use_cache=True).decode()
    entries = re.split(r"\.entry ", ptx)[1:]
    assert sorted(e.split("(")[0].strip() for e in entries) == sorted(VK.all_kernel_names())
    for body in entries:
        name = body.split("(")[0].strip()
        assert "fma." not in body and ".ftz" not in body, name
        assert not re.search(r"\.approx|rcp\.", body), name
    body = {e.split("(")[0].strip(): e for e in entries}
    assert "div.rn.f32" in body["qbv_encode"] and "sqrt.rn.f64" in body["qbv_group_stat"]
    assert "cvt.rn.f32.f64" in body["qbv_cast64"]   # bfloat16 through float32, to nearest even
    assert re.search(r"ld\.global(\.nc)?\.v4\.f32", body["qbv_group_stat"])   # 16-byte loads where aligned


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_the_kernels_compile_to_sass(nvrtc, arch):
    cubin = compile_source(VK.source(), arch, output="cubin", use_cache=True)
    assert cubin[:4] == b"\x7fELF" and all(n.encode() in cubin for n in VK.all_kernel_names())


def test_vector_kernel_source_subset_and_unknown_names():
    src = VK.source(["qbv_decode"])
    assert "qbv_decode(" in src and "qbv_encode(" not in src
    with pytest.raises(ValueError, match="unknown kernel"):
        VK.source(["qbv_nope"])
