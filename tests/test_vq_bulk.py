"""Vector quantization in bulk (quantbook.bulk.vq): the layout of quantbook/bulk/vq_state.py.

References, none of them the code under test:
* a brute-force quantizer written here from the layout's statement, one group and one
  vector at a time (sums in index order, distances to all N points in float64, first minimum);
* the explicit Hadamard matrix of scipy.linalg.hadamard for the rotation;
* the numba backend must equal the numpy reference bit for bit (indices, scales, values).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

try:
    import ml_dtypes
except ImportError:   # bfloat16 cases skip without it
    ml_dtypes = None

from quantbook.bulk import vq
from quantbook.bulk.vq import VQState, dequantize_vq, quantize_vq
from quantbook.numerics import hadamard

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed (the cpu backend)")


def _rng(seed=0):
    return np.random.default_rng(seed)


def gaussian_grid(n, p, seed=1):
    """A random table of distinct points (stands in for a published grid)."""
    return _rng(seed).standard_normal((n, p)).astype(np.float32)


def brute(x, points, group, rule="rms", scale_dtype="float16", v=None):
    """(indices int64 flat, stored scales) by the layout's words, one group at a time.
    ``v``: the (rotated) float32 values, default ``x`` itself."""
    v = np.asarray(x, dtype=np.float32).reshape(-1) if v is None else v.reshape(-1)
    pts = points.astype(np.float64)
    n, p = points.shape
    idx, scales = [], []
    for g in range(v.size // group):
        grp = v[g * group:(g + 1) * group]
        if rule == "rms":
            acc = 0.0
            for t in grp:
                acc += float(t) * float(t)
            stat = math.sqrt(acc / group)
        else:
            stat = float(max(abs(float(t)) for t in grp))
        s = np.array(stat).astype(scale_dtype)
        scales.append(s)
        s32 = np.float32(s)
        for k in range(group // p):
            vec = grp[k * p:(k + 1) * p]
            y = np.zeros(p, np.float32) if s32 == 0 else (vec / s32).astype(np.float32)
            d = [sum((float(y[q]) - pts[j, q]) ** 2 for q in range(p)) for j in range(n)]
            idx.append(int(np.argmin(d)))
    return np.array(idx), np.array(scales, dtype=scale_dtype)


BACKENDS = ["numpy"] + (["cpu"] if HAVE_NUMBA else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", ["rms", "absmax"])
def test_matches_brute_force_on_gaussian_weights(backend, rule):
    pts = gaussian_grid(64, 2)
    x = _rng(2).standard_normal((4, 64)).astype(np.float32)
    idx, st = quantize_vq(x, pts, group=16, scale=rule, rotate=None, backend=backend)
    want, scales = brute(x, pts, 16, rule)
    assert idx.dtype == np.uint8 and idx.shape == (4, 32)
    np.testing.assert_array_equal(idx.reshape(-1), want)
    np.testing.assert_array_equal(st.scales.view(np.uint16), scales.view(np.uint16))


def tie_case():
    """A lattice of step 1/4 and values on the lattice of step 1/8: many scaled vectors lie
    exactly between two or four points.  Each group of 8 holds a 1, so its absmax scale is
    exactly 1 and ``y = x``."""
    k = np.arange(-4, 5) / 4
    pts = np.array([(a, b) for a in k for b in k], np.float32)
    x = _rng(3).integers(-8, 9, size=(64, 8)).astype(np.float32) / 8
    x[:, 0] = 1.0
    return pts, x.reshape(-1, 64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_lowest_index(backend):
    pts, x = tie_case()
    idx, st = quantize_vq(x, pts, group=8, scale="absmax", rotate=None, backend=backend, scale_dtype="float32")
    want, _ = brute(x, pts, 8, "absmax", "float32")
    np.testing.assert_array_equal(idx.reshape(-1), want)
    # the lattice makes ties common: the test would catch "ties to the highest index"
    y = x.reshape(-1, 2).astype(np.float64)
    d = ((y[:, None, :] - pts[None].astype(np.float64)) ** 2).sum(-1)
    assert ((d == d.min(1, keepdims=True)).sum(1) > 1).mean() > 0.3
    # origin: equidistant from the four points around it on a shifted lattice
    four = np.array([[-1, 0], [0, -1], [0, 1], [1, 0]], np.float32)
    i0, _ = quantize_vq(np.zeros(4, np.float32), four, group=4, rotate=None, backend=backend)
    assert i0.tolist() == [0, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_go_to_the_lowest_index_in_three_dimensions(backend):
    """The generic scan (P = 3): a lattice of step 1/2 and values on the lattice of step 1/4,
    each group of 6 holding a 1 (absmax scale exactly 1), against brute force (argmin's first
    minimum), for the lattice in both orders."""
    k = np.arange(-2, 3) / 2
    lattice = np.array([(a, b, c) for a in k for b in k for c in k], np.float32)
    x = _rng(4).integers(-4, 5, size=(64, 6)).astype(np.float32) / 4
    x[:, 0] = 1.0
    x = x.reshape(-1, 48)
    for pts in (lattice, lattice[::-1].copy()):
        idx, _ = quantize_vq(x, pts, group=6, scale="absmax", rotate=None, backend=backend, scale_dtype="float32")
        want, _ = brute(x, pts, 6, "absmax", "float32")
        np.testing.assert_array_equal(idx.reshape(-1), want)
    y = x.reshape(-1, 3).astype(np.float64)
    d = ((y[:, None, :] - lattice[None].astype(np.float64)) ** 2).sum(-1)
    assert ((d == d.min(1, keepdims=True)).sum(1) > 1).mean() > 0.3   # ties are common


@pytest.mark.parametrize("backend", BACKENDS)
def test_zero_groups_and_underflowing_scales(backend):
    pts = gaussian_grid(16, 2)
    x = _rng(4).standard_normal((3, 16)).astype(np.float32)
    x[1] = 0.0  # a zero group: y = 0, the point nearest the origin, decoded as 0
    x[2] = 1e-30  # below float16's smallest subnormal: the float16 scale is 0
    idx, st = quantize_vq(x, pts, group=16, rotate=None, backend=backend)
    origin = int(np.argmin((pts.astype(np.float64) ** 2).sum(1)))
    assert st.scales[1] == 0 and st.scales[2] == 0
    assert set(idx[1].tolist()) == {origin} and set(idx[2].tolist()) == {origin}
    y = dequantize_vq(idx, st, backend=backend)
    assert (y[1:] == 0).all()
    want, _ = brute(x, pts, 16)
    np.testing.assert_array_equal(idx.reshape(-1), want)
    # in float32 the tiny group keeps its shape
    idx32, st32 = quantize_vq(x, pts, group=16, rotate=None, backend=backend, scale_dtype="float32")
    y32 = dequantize_vq(idx32, st32, backend=backend)
    rel = np.abs(y32[2] - x[2]).max() / 1e-30
    assert st32.scales[2] > 0 and rel < 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_values_and_outliers(backend):
    pts = gaussian_grid(256, 2)
    x = _rng(5).standard_normal((2, 64)).astype(np.float32)
    x[0] *= np.float32(1e30)
    x[1, 7] = 1e3  # an outlier: y far outside the grid's cells (the scan's path)
    with pytest.raises(ValueError, match="exceeds float16's range; pass scale_dtype='float32'"):
        quantize_vq(x, pts, group=64, rotate=None, backend=backend)
    idx, st = quantize_vq(x, pts, group=64, rotate=None, backend=backend, scale_dtype="float32")
    want, _ = brute(x, pts, 64, "rms", "float32")
    np.testing.assert_array_equal(idx.reshape(-1), want)
    assert np.isfinite(dequantize_vq(idx, st, backend=backend)).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_vector_state_dtype_in_the_other_byte_order_is_refused(backend, dtype):
    """A byte-swapped dtype (a state edited by hand) is one line on every backend, not
    byte-swapped values on one and a numba TypingError on another."""
    x = _rng(6).standard_normal((2, 64)).astype(dtype)
    idx, st = quantize_vq(x, gaussian_grid(16, 2), group=32, backend=backend)
    st.dtype = np.dtype(dtype).newbyteorder("S")
    with pytest.raises(ValueError, match=r"non-native byte order"):
        dequantize_vq(idx, st, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,p", [(16, 1), (300, 2), (64, 4), (1000, 2)])
def test_dimensions_and_index_dtypes(backend, n, p):
    pts = gaussian_grid(n, p, seed=n)
    x = _rng(6).standard_normal((2, 48 * p)).astype(np.float32)
    x[0, :p] = 9.0  # beyond the grid
    idx, st = quantize_vq(x, pts, group=4 * p, rotate=None, backend=backend)
    assert idx.dtype == (np.uint8 if n <= 256 else np.uint16)
    assert idx.shape == (2, 48)
    want, _ = brute(x, pts, 4 * p)
    np.testing.assert_array_equal(idx.reshape(-1), want)


@needs_numba
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("rotate", [None, "hadamard", "hadamard:32"])
@pytest.mark.parametrize("rule", ["rms", "absmax"])
def test_numba_equals_numpy_bit_for_bit(dtype, rotate, rule):
    if dtype == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
        dt = np.dtype(ml_dtypes.bfloat16)
    else:
        dt = np.dtype(dtype)
    rng = _rng(7)
    x = (rng.standard_t(3, size=(8, 256)) * 0.02).astype(dt)
    x[2, :64] = 0
    for pts in (gaussian_grid(256, 2), gaussian_grid(16, 1), gaussian_grid(256, 4, seed=9)):
        a, sa = quantize_vq(x, pts, group=64, scale=rule, rotate=rotate, backend="numpy")
        b, sb = quantize_vq(x, pts, group=64, scale=rule, rotate=rotate, backend="cpu")
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(sa.scales.view(np.uint16), sb.scales.view(np.uint16))
        ya, yb = dequantize_vq(a, sa, backend="numpy"), dequantize_vq(b, sb, backend="cpu")
        assert ya.dtype == dt and ya.shape == x.shape
        np.testing.assert_array_equal(ya.view(np.uint8), yb.view(np.uint8))


def _as_dtype(dtype):
    if dtype == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes").bfloat16)
    return np.dtype(dtype)


def _hooks_search(*args):
    raise AssertionError("the cpu backend searched through its encode hook, not its one kernel")


def _same_bytes(x, pts, **kw):
    """The cpu backend's indices and stored scales, from its one kernel (its encode hook is not
    called), are the numpy reference's, byte for byte."""
    a, sa = quantize_vq(x, pts, backend="numpy", **kw)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(vq.VQ_BACKENDS["cpu"], "encode", _hooks_search)
        b, sb = quantize_vq(x, pts, backend="cpu", **kw)
    assert a.dtype == b.dtype and np.array_equal(a, b)
    assert sa.scales.dtype == sb.scales.dtype and np.array_equal(sa.scales.view(np.uint8), sb.scales.view(np.uint8))
    return sa.scales


@needs_numba
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("group,rotate,p", [(128, "hadamard:32", 2), (48, "hadamard:32", 3), (16, "hadamard", 4),
                                            (96, "hadamard:32", 1), (6, None, 3), (2, None, 1), (64, None, 2)])
@pytest.mark.parametrize("scale_dtype", ["float16", "float32"])
@pytest.mark.parametrize("rule", ["rms", "absmax"])
def test_an_input_in_one_numba_pass_is_the_numpy_reference(dtype, group, rotate, p, scale_dtype, rule):
    """The cpu backend rotates, measures, rounds the scales and searches its input (float32 or
    16 bits) in one kernel: groups longer than a rotated row, or not dividing it, odd groups,
    vectors of 1 to 4 (the scan) and of 2 (the grid), a zero group, a group whose float16
    scale underflows to 0, outliers beyond the grid: the numpy reference's bytes."""
    dt = _as_dtype(dtype)
    rng = _rng(group + p)
    x = (rng.standard_t(4, size=(24, 384)) * 0.05).astype(dt)
    x[1] = 0
    x[2] = np.float32(1e-30)   # float32 and bfloat16 hold it: a scale below float16's smallest subnormal
    x[3, 5] = 40
    pts = gaussian_grid(256 if p == 2 else 64, p, seed=p)
    scales = _same_bytes(x, pts, group=group, scale=rule, rotate=rotate, scale_dtype=scale_dtype)
    # the zero row, and the tiny one unless the input keeps it and float32 scales hold it
    kept = dtype != "float16" and scale_dtype == "float32"
    assert (scales == 0).sum() == 384 // group * (1 if kept else 2)


@needs_numba
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_numba_rounds_the_scales_once_as_numpy(dtype):
    """numpy rounds a group's float64 statistic to float16 once; through float32 it would
    round twice, and differ where the float32 falls on a midpoint between two float16 values.
    Groups of two with such statistics (found among two million random pairs, by
    quantbook.numerics.hadamard's rotation and numpy's casts) keep numpy's scales."""
    dt = _as_dtype(dtype)
    pairs = _rng(17).standard_normal((1 << 21, 2)).astype(dt)
    # rotated on rows of 2 (bfloat16 pairs' own squares have too few bits to fall near a midpoint)
    v = hadamard.rotate(pairs.astype(np.float32), 2).astype(np.float32).astype(np.float64)
    stat = np.sqrt((v[:, 0] * v[:, 0] + v[:, 1] * v[:, 1]) / 2)   # the layout's rms, summed in order
    twice = np.flatnonzero(stat.astype(np.float32).astype(np.float16) != stat.astype(np.float16))
    assert twice.size >= 16
    twice = twice[: twice.size // 8 * 8]
    scales = _same_bytes(pairs[twice].reshape(-1, 16), gaussian_grid(16, 2), group=2, rotate="hadamard:2")
    assert np.array_equal(scales, stat[twice].astype(np.float16))


@needs_numba
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("rotate", [None, "hadamard", "hadamard:16"])
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "huge"])
def test_bad_scales_are_named_as_numpy_names_them(dtype, rotate, bad):
    """NaN and Inf in the input, and a scale beyond float16's range (float32's and bfloat16's
    1e30; float16's largest values, whose rms exceeds nothing but whose rotation may): the cpu
    backend's fused kernel raises numpy's one-line error, or gives its bytes; the input is
    left as it was (the error's statistics are measured again without writing it)."""
    dt = _as_dtype(dtype)
    x = _rng(9).standard_normal((3, 64)).astype(dt)
    x.reshape(-1)[64 + 37] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf,
                              "huge": 65504 if dtype == "float16" else 1e30}[bad]
    kept = x.copy()
    kw = dict(group=16, rotate=rotate)
    try:
        want = quantize_vq(x, gaussian_grid(16, 2), backend="numpy", **kw)
    except ValueError as e:
        with pytest.raises(ValueError, match=f"^{re.escape(str(e))}$"):
            quantize_vq(x, gaussian_grid(16, 2), backend="cpu", **kw)
        assert np.array_equal(x.view(np.uint8), kept.view(np.uint8))
        assert bad != "huge" or dtype != "float16" or rotate is not None
    else:
        assert bad == "huge" and dtype == "float16"
        _same_bytes(x, gaussian_grid(16, 2), **kw)
        assert np.isfinite(want[1].scales).all()


_PER_GROUP = re.compile(r"call [^\n]*@_ZN\w*?vq_kernels\d+(_rms|_absmax|_encode_grid2_group|_encode_scan_group|_scan)B")


@needs_numba
def test_the_kernels_per_group_helpers_are_compiled_into_their_loops(tmp_path):
    """The group statistics and the per-group searches are shared helpers; called as functions,
    once per group of 64 values (seventy-odd arguments each), they made the searches about 15%
    slower (docs/benchmarks.md).  No compiled kernel calls them; the exact scan, rare, is still
    called (which shows that the check sees calls).  Fresh compilations in a child process:
    numba shows no code it loaded from its cache."""
    code = """if True:
        import sys, numpy as np, ml_dtypes
        from quantbook.bulk.cpu import vq_kernels as k
        from quantbook.bulk.vq import VQ_BACKENDS, quantize_vq
        x = np.random.default_rng(0).standard_normal((4, 384)).astype(np.float32)
        for p in (2, 3):
            pts = np.random.default_rng(p).standard_normal((64, p)).astype(np.float32)
            for rule in ("rms", "absmax"):
                for dt in (np.float32, ml_dtypes.bfloat16):
                    quantize_vq(x.astype(dt), pts, group=48, scale=rule, rotate=None, backend="cpu")
                # the hooks' kernels (quantize_vq of a host array runs quantize_rows alone)
                VQ_BACKENDS["cpu"].encode_loaded(x.reshape(-1), None, None, 48, rule, "float16", pts,
                                                 lambda stored, stat: None)
        for name in ("quantize_rows", "encode_grid2", "encode_scan", "group_rms", "group_absmax"):
            for ir in getattr(k, name).dispatcher.inspect_llvm().values():
                sys.stdout.write(name + "\\n" + ir + "\\n")
    """
    pytest.importorskip("ml_dtypes")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    kernels = re.split(r"^(quantize_rows|encode_grid2|encode_scan|group_rms|group_absmax)$", out, flags=re.M)[1:]
    calls = {}
    for name, ir in zip(kernels[::2], kernels[1::2]):
        calls.setdefault(name, set()).update(_PER_GROUP.findall(ir))
    assert set(calls) == {"quantize_rows", "encode_grid2", "encode_scan", "group_rms", "group_absmax"}
    assert {name: c - {"_scan"} for name, c in calls.items()} == {name: set() for name in calls}
    assert "_scan" in calls["quantize_rows"] and "_scan" in calls["encode_grid2"]


def _small_tables():
    from quantbook.codebooks.vector_registry import vector_registry

    tables = {name: e.codebook.points for name, e in vector_registry().items()}
    tables.update({f"random-{n}x2": gaussian_grid(n, 2, seed=n) for n in (2, 3, 5)})
    tables["diagonal-2x2"] = np.array([[-1, -1], [1, 1]], np.float32)
    return tables


@pytest.mark.parametrize("name", sorted(_small_tables()))
def test_every_published_and_tiny_table_on_every_backend(name):
    """The registry's grids and tables too small for a cell to hold more than three
    candidates: the numpy reference equals brute force, and the cpu backend (numba) equals
    the numpy reference."""
    pts = _small_tables()[name]
    x = _rng(11).standard_normal((4, 64)).astype(np.float32)
    if pts.shape[0] <= 16:
        c, _ = quantize_vq(x, pts, group=64, rotate=None, backend="numpy")
        np.testing.assert_array_equal(c.reshape(-1), brute(x, pts, 64)[0])
    if not HAVE_NUMBA:
        pytest.skip("the cpu backend needs numba")
    a, sa = quantize_vq(x, pts, group=64, backend="numpy")
    b, sb = quantize_vq(x, pts, group=64, backend="cpu")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sa.scales.view(np.uint16), sb.scales.view(np.uint16))
    if pts.shape[0] <= 16:
        c, _ = quantize_vq(x, pts, group=64, rotate=None, backend="cpu")
        np.testing.assert_array_equal(c.reshape(-1), brute(x, pts, 64)[0])


@needs_numba
def test_ties_in_the_numba_grid_go_to_the_lower_index():
    """Exact ties answered from a cell's inline candidates and from a longer list
    (:func:`gpu_cases.grid_ties`): the brute force's lower index."""
    from gpu_cases import grid_ties

    pts, y, fast = grid_ties()
    assert fast.sum() > 100 and (~fast).sum() > 100
    v, scales = y.reshape(-1), np.ones(len(y), np.float32)
    np.testing.assert_array_equal(vq.VQ_BACKENDS["cpu"].encode(v, scales, 2, pts),
                                  vq.VQ_BACKENDS["numpy"].encode(v, scales, 2, pts))


@needs_numba
def test_numba_equals_numpy_on_a_larger_tensor():
    pts = gaussian_grid(256, 2)
    x = _rng(8).standard_normal((64, 1024)).astype(np.float32)
    x[3, 100] = 40.0
    a, sa = quantize_vq(x, pts, group=64, backend="numpy")
    b, sb = quantize_vq(x, pts, group=64, backend="cpu")
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sa.scales, sb.scales)


def test_rotation_is_the_explicit_randomized_hadamard_matrix():
    n = 64
    h = np.diag(hadamard.signs(n)) @ scipy.linalg.hadamard(n) / np.sqrt(n)
    x = _rng(10).standard_normal((3, 2 * n)).astype(np.float32)
    for backend in BACKENDS:
        v = vq.VQ_BACKENDS[backend].rotate(x.reshape(-1, n), hadamard.SEED)
        np.testing.assert_allclose(v, x.reshape(-1, n).astype(np.float64) @ h, rtol=0, atol=1e-6)
        back = vq.VQ_BACKENDS[backend].unrotate(v, hadamard.SEED)
        np.testing.assert_allclose(back, x.reshape(-1, n), rtol=0, atol=1e-6)


@needs_numba
def test_the_rotation_runs_where_the_bulk_backend_quantizes(monkeypatch):
    """evaluate-model's scalar layouts rotate with vq.rotation_backend: auto's host pick (numba
    when it is there), a bulk backend's namesake, numpy for a bulk backend without one."""
    assert vq.rotation_backend("cpu") is vq.VQ_BACKENDS["cpu"]
    assert vq.rotation_backend("numpy") is vq.VQ_BACKENDS["numpy"]
    assert vq.rotation_backend("no-such-backend") is vq.VQ_BACKENDS["numpy"]
    assert vq.rotation_backend("auto") is vq.VQ_BACKENDS["cpu"]
    monkeypatch.setattr(type(vq.VQ_BACKENDS["cpu"]), "unavailable", lambda self: "numba is not installed")
    assert vq.rotation_backend("auto") is vq.VQ_BACKENDS["numpy"]
    assert vq.rotation_backend("cpu") is vq.VQ_BACKENDS["numpy"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_wide_unrotation_is_hadamard_unrotate(backend):
    """``unrotate_wide`` (what evaluate-model's scalar layouts rotate back with) is the float64
    un-rotation of quantbook.numerics.hadamard bit for bit, itself within 1e-12 of the
    explicit matrix's product; rounded, it is ``unrotate``, and rounded to 16 bits as numpy
    (float16) and ml_dtypes (bfloat16) round it, ``unrotate_as``."""
    n = 256
    h = np.diag(hadamard.signs(n)) @ scipy.linalg.hadamard(n) / np.sqrt(n)
    y = (_rng(11).standard_normal((6, n)) * 10.0 ** _rng(12).uniform(-3, 3, (6, n))).astype(np.float32)
    be = vq.VQ_BACKENDS[backend]
    got = be.unrotate_wide(y, hadamard.SEED)
    want = hadamard.unrotate(y, n, hadamard.SEED)
    assert got.dtype == np.float64 and np.array_equal(got.view(np.uint64), want.view(np.uint64))
    np.testing.assert_allclose(got, y.astype(np.float64) @ h.T, rtol=1e-12, atol=0)
    assert np.array_equal(got.astype(np.float32), be.unrotate(y, hadamard.SEED))
    dtypes = [np.float32, np.float16] + ([ml_dtypes.bfloat16] if ml_dtypes is not None else [])
    for dt in dtypes:
        with np.errstate(over="ignore"):
            back = be.unrotate_as(y, hadamard.SEED, np.dtype(dt))
            assert back.dtype == dt and back.shape == y.shape
            assert np.array_equal(back.view(np.uint8), want.astype(dt).view(np.uint8)), dt


@pytest.mark.parametrize("backend", BACKENDS)
def test_rotated_round_trip(backend):
    """dequantize = points[idx]·s, un-rotated with Hᵀ (the explicit matrix), and the indices
    are the brute force of the rotated values."""
    n = 128
    pts = gaussian_grid(256, 2)
    x = _rng(11).standard_normal((4, 256)).astype(np.float32)
    idx, st = quantize_vq(x, pts, group=32, rotate="hadamard:128", backend=backend)
    assert (st.rotate_size, st.rotate_seed) == (n, hadamard.SEED)
    v = hadamard.rotate(x.reshape(-1, n), n).astype(np.float32)
    want, _ = brute(None, pts, 32, v=v)
    np.testing.assert_array_equal(idx.reshape(-1), want)
    h = np.diag(hadamard.signs(n)) @ scipy.linalg.hadamard(n) / np.sqrt(n)
    q = (pts[idx.reshape(-1)].reshape(-1, 32) * st.scales.astype(np.float32)[:, None]).reshape(-1, n)
    y = dequantize_vq(idx, st, backend=backend)
    np.testing.assert_allclose(y.reshape(-1, n), q.astype(np.float64) @ h.T, rtol=0, atol=1e-6)
    # and the error is that of a 4.25-bit code: far below the signal
    sqnr = 10 * np.log10((x.astype(np.float64) ** 2).sum() / ((y - x).astype(np.float64) ** 2).sum())
    assert 15 < sqnr < 30


@pytest.mark.parametrize("backend", BACKENDS)
def test_unrotated_round_trip_is_points_times_scale(backend):
    pts = gaussian_grid(64, 2)
    x = _rng(12).standard_normal((2, 32)).astype(np.float16)
    idx, st = quantize_vq(x, pts, group=32, rotate=None, backend=backend)
    y = dequantize_vq(idx, st, backend=backend)
    want = (pts[idx.reshape(-1)].reshape(-1, 32) * st.scales.astype(np.float32)[:, None]).astype(np.float16)
    np.testing.assert_array_equal(y.reshape(-1, 32), want)


def test_bits_per_weight_and_state_round_trip():
    pts = gaussian_grid(256, 2)
    x = _rng(13).standard_normal((2, 128)).astype(np.float32)
    idx, st = quantize_vq(x, pts, group=64, backend="numpy")
    assert st.bits_per_weight == 8 / 2 + 16 / 64
    d = st.to_dict()
    st2 = VQState.from_dict(d)
    np.testing.assert_array_equal(dequantize_vq(idx, st2, backend="numpy"), dequantize_vq(idx, st, backend="numpy"))
    for bad, msg in (({**d, "extra": 1}, "unknown keys: extra"),
                     ({k: v for k, v in d.items() if k != "group"}, "lacks group"),
                     ({**d, "scales": d["scales"].astype(np.float32) * np.float32(1 + 2**-20)},
                      "scales must hold float16 values: its float32 value"),
                     ({**d, "points": d["points"].astype(np.float64) + 2**-40}, "points must hold float32 values"),
                     ({**d, "scales": d["scales"].astype(np.int64)}, "scales must hold float16 values, got dtype"),
                     ({**d, "scales": -d["scales"]}, "finite and non-negative"),
                     ({**d, "group": 48}, "does not divide the last dimension"),
                     ({**d, "rotate_size": 3}, "power of two"),
                     ({**d, "scale_rule": "max"}, "scale_rule")):
        with pytest.raises(ValueError, match=msg):
            VQState.from_dict(bad)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_a_bad_scale_is_found_where_numpy_finds_it(dtype):
    """first_bad_scale (an integer maximum of the bits first) against numpy's value checks,
    over every float16 bit pattern and float32's special values; -0.0 is good."""
    from quantbook.bulk.state import first_bad_scale

    if dtype == np.float16:
        specials = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    else:
        specials = np.array([0.0, -0.0, 1e-45, -1e-45, 3.4e38, np.inf, -np.inf, np.nan, -np.nan, -1.0],
                            dtype=np.float32)
    good = np.abs(_rng(21).standard_normal(37)).astype(dtype)
    for v in specials:
        arr = good.copy()
        arr[[5, 11]] = v
        want = None if (np.isfinite(v) and v >= 0) else 5
        assert first_bad_scale(arr) == want, (dtype, v)
    assert first_bad_scale(good[:0]) is None


def test_state_survives_np_savez_and_reads_integers_as_quant_state_does(tmp_path):
    """np.savez hands every field back as an array (0-d for scalars, 1-D for the shape); the
    integer fields read as QuantState.from_dict reads them: 64.0 is 64, 64.5 is refused."""
    import quantbook as qb

    pts = gaussian_grid(256, 2)
    x = _rng(15).standard_normal((2, 128)).astype(np.float32)
    idx, st = quantize_vq(x, pts, group=64, backend="numpy")
    assert st.rotate_size is not None   # every field is then a number or a string
    np.savez(tmp_path / "v.npz", **{k: np.asarray(v) for k, v in st.to_dict().items()})
    back = VQState.from_dict(dict(np.load(tmp_path / "v.npz")))
    assert (back.shape, back.group, back.rotate_size, back.rotate_seed) == (st.shape, st.group, st.rotate_size,
                                                                              st.rotate_seed)
    np.testing.assert_array_equal(dequantize_vq(idx, back, backend="numpy"), dequantize_vq(idx, st, backend="numpy"))
    d = st.to_dict()
    assert VQState.from_dict({**d, "group": 64.0}).group == 64
    _, qst = qb.quantize(x, "nf4", 64, backend="numpy")
    qd = qst.as_dict()
    assert qb.QuantState.from_dict({**qd, "blocksize": 64.0}).blocksize == 64
    for key, value in (("group", 64.5), ("group", True), ("shape", (2, 128.5)), ("rotate_seed", 1.5)):
        with pytest.raises(ValueError, match="must be integers"):
            VQState.from_dict({**d, key: value})
    for key, value in (("blocksize", 64.5), ("blocksize", True), ("shape", (2, 128.5))):
        with pytest.raises(ValueError, match="must be integers"):
            qb.QuantState.from_dict({**qd, key: value})


def test_vector_codebook_objects_are_accepted():
    from quantbook.codebooks.vector import VectorCodebook

    cb = VectorCodebook("grid", gaussian_grid(256, 2))
    x = _rng(14).standard_normal((2, 64)).astype(np.float32)
    idx, st = quantize_vq(x, cb, group=64, rotate=None, backend="numpy")
    assert st.codebook == "grid"
    assert st.bits_per_weight == cb.bits_per_weight(16, 64)
    v = (x.reshape(-1, 64) / st.scales.astype(np.float32)[:, None]).astype(np.float32)
    np.testing.assert_array_equal(idx.reshape(-1), cb.nearest(v.reshape(-1, 2)))


def test_vector_codebook_names_and_files_are_accepted(tmp_path):
    """As quantize() takes a scalar code's name: a registry name or a FILE.json, read by
    naming.resolve_vector; an unknown name is its one-line error."""
    from quantbook.codebooks.vector import VectorCodebook
    from quantbook.naming import UnknownCodebookError, resolve_vector

    x = _rng(15).standard_normal((2, 64)).astype(np.float32)
    want = quantize_vq(x, resolve_vector("higgs-2d-64"), group=32, backend="numpy")
    got = quantize_vq(x, "higgs-2d-64", group=32, backend="numpy")
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1].codebook == "higgs-2d-64"
    path = tmp_path / "grid.json"
    path.write_text(VectorCodebook("mine", gaussian_grid(16, 2)).to_json(), encoding="utf-8")
    idx, st = quantize_vq(x, str(path), group=32, backend="numpy")
    assert st.codebook == "mine"
    np.testing.assert_array_equal(idx, quantize_vq(x, gaussian_grid(16, 2), group=32, backend="numpy")[0])
    with pytest.raises(UnknownCodebookError, match="unknown vector codebook"):
        quantize_vq(x, "higgs-2d-65")


@pytest.mark.parametrize("kwargs,msg", [
    (dict(group=15), "not a multiple of the codebook's dimension P = 2"),
    (dict(group=48), "does not divide the last dimension 64"),
    (dict(scale="mean"), "unknown scale rule 'mean'"),
    (dict(scale_dtype="bfloat16"), "unknown scale_dtype"),
    (dict(rotate="givens"), "unknown rotation 'givens'"),
    (dict(rotate="hadamard:48"), "power of two"),
    (dict(rotate="hadamard:128"), "does not divide the last dimension 64"),
    (dict(backend="tpu"), "unknown vector-quantization backend 'tpu'"),
])
def test_argument_errors(kwargs, msg):
    x = np.ones((2, 64), np.float32)
    with pytest.raises(ValueError, match=msg) as e:
        quantize_vq(x, gaussian_grid(16, 2), **kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", ["nan", "inf", "inf-inf", "-inf"])
@pytest.mark.parametrize("rotate", ["hadamard", "hadamard:16"])
def test_non_finite_input_to_a_rotation_is_named(backend, bad, rotate):
    """The first NaN or Inf of x by its flat index, in a later rotation row than the first
    (hadamard:16 makes four a row), whatever the rotation makes of it (±inf, or NaN where
    infinities of both signs meet); no warning on the way."""
    x = _rng(6).standard_normal((3, 64)).astype(np.float32)
    first = 64 + 37
    x.reshape(-1)[first] = {"nan": np.nan, "inf": np.inf, "inf-inf": np.inf, "-inf": -np.inf}[bad]
    if bad == "inf-inf":
        x.reshape(-1)[first + 2] = -np.inf
    x[2, 60] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=rf"^x holds NaN or Inf: first at flat index {first}$"):
            quantize_vq(x, gaussian_grid(16, 2), group=16, rotate=rotate, backend=backend)


def test_input_errors():
    pts = gaussian_grid(16, 2)
    x = np.ones((2, 64), np.float32)
    x[1, 5] = np.nan
    for rotate in (None, "hadamard"):
        with pytest.raises(ValueError, match="NaN or Inf: first .*flat index 69"):
            quantize_vq(x, pts, rotate=rotate)
    x[1, 5] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        quantize_vq(x, pts, rotate=None, backend="numpy")
    with pytest.raises(ValueError, match="at most 65536 points"):
        quantize_vq(np.ones(64, np.float32), np.zeros((65537, 1), np.float32))
    with pytest.raises(ValueError, match="float64"):
        quantize_vq(np.ones(64), pts)
    with pytest.raises(ValueError, match="finite"):
        quantize_vq(np.ones(64, np.float32), np.array([[0, 1], [np.nan, 2]], np.float32))
    big = np.full((1, 64), 3e38, np.float32)
    with pytest.raises(ValueError, match="rotation takes group 0 beyond float32's range"):
        quantize_vq(big, pts, rotate="hadamard", scale_dtype="float32")



def test_input_types():
    """Big-endian input is quantized as its values; float64 is refused with the conversion to
    make, as quantize() refuses it."""
    pts = gaussian_grid(16, 2)
    x = _rng(3).standard_normal((2, 64)).astype(np.float32)
    a, sa = quantize_vq(x, pts, backend="numpy")
    b, sb = quantize_vq(x.astype(">f4"), pts, backend="numpy")
    assert np.array_equal(a, b) and np.array_equal(sa.scales, sb.scales)
    with pytest.raises(ValueError, match=r"^float64 input is not supported .*x\.astype\(np\.float32\) for a numpy"):
        quantize_vq(x.astype(np.float64), pts)


def test_a_device_array_needs_a_gpu_backend(monkeypatch):
    """A device array (here torch's CUDA tensor that requires grad, whose interface raises) goes
    to a GPU backend only: a host backend is refused, and ``auto`` names why no GPU one can
    run (tests/test_vq_gpu.py runs the GPU one)."""
    class CudaTensorRequiringGrad:
        is_cuda = True
        dtype, shape = "torch.float32", (2, 64)

        @property
        def __cuda_array_interface__(self):
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires grad")

    monkeypatch.setattr(vq.CudaVQ, "unavailable", lambda self: "no CUDA device (stand-in)")
    pts = gaussian_grid(16, 2)
    idx, st = quantize_vq(np.ones((2, 64), np.float32), pts, backend="numpy")
    for call in (lambda b: quantize_vq(CudaTensorRequiringGrad(), pts, backend=b),
                 lambda b: dequantize_vq(CudaTensorRequiringGrad(), st, backend=b)):
        with pytest.raises(ValueError, match=r"^a device array needs a GPU backend or 'auto', got backend='numpy'$"):
            call("numpy")
        with pytest.raises(ValueError, match=r"^no GPU backend is usable for this device array: "
                                             r"gpu: no CUDA device \(stand-in\)$"):
            call("auto")


def test_dequantize_checks_the_indices():
    pts = gaussian_grid(16, 2)
    idx, st = quantize_vq(np.ones((2, 64), np.float32), pts, rotate=None, backend="numpy")
    with pytest.raises(ValueError, match="shape"):
        dequantize_vq(idx.reshape(-1), st)
    bad = idx.copy()
    bad[0, 0] = 16
    with pytest.raises(ValueError, match=r"lie in \[0, 15\]"):
        dequantize_vq(bad, st)
    with pytest.raises(ValueError, match="VQState"):
        dequantize_vq(idx, st.to_dict())


def test_auto_falls_back_to_numpy_without_numba(monkeypatch):
    monkeypatch.setattr(vq.NumbaVQ, "unavailable", lambda self: "numba is not installed")
    assert vq._pick_backend("auto").name == "numpy"
    with pytest.raises(ValueError, match="cannot run here: numba is not installed"):
        vq._pick_backend("cpu")


def test_the_transform_lives_in_one_place():
    from quantbook.model import hadamard as model_hadamard

    for name in ("fwht", "signs", "rotate", "unrotate", "check_size", "default_size", "SEED"):
        assert getattr(model_hadamard, name) is getattr(hadamard, name)


def test_state_round_trips_through_json():
    # a JSON list comes back as float64: taken where it holds the float32 points and float16 scales exactly
    # (it was refused for its dtype); values that would round are refused above
    import json

    x = _rng(14).standard_normal((2, 128)).astype(np.float32)
    idx, st = quantize_vq(x, "higgs-2d-256", group=64, backend="numpy")
    d = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in st.to_dict().items()}
    st2 = VQState.from_dict(json.loads(json.dumps(d)))
    assert st2.points.dtype == np.float32 and st2.scales.dtype == np.float16
    np.testing.assert_array_equal(st2.points, st.points)
    np.testing.assert_array_equal(dequantize_vq(idx, st2, backend="numpy"), dequantize_vq(idx, st, backend="numpy"))



def test_a_path_object_naming_a_published_grid_is_a_missing_file(tmp_path, monkeypatch):
    # a path object is always a file: Path('higgs-2d-256') is no published grid
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="higgs-2d-256"):
        quantize_vq(np.ones((1, 64), np.float32), Path("higgs-2d-256"), backend="numpy")


@pytest.mark.parametrize("field", ["points", "scales"])
def test_vq_from_dict_reads_a_scalar_array_field_as_one_entry(field):
    x = np.linspace(-1, 1, 256, dtype=np.float32).reshape(4, 64)
    _, st = quantize_vq(x, "higgs-2d-16", backend="numpy")
    with pytest.raises(ValueError, match=field):
        VQState.from_dict({**st.to_dict(), field: 1.5})


@pytest.mark.parametrize("narrow", [np.int8, np.uint8, np.int16])
def test_a_narrow_numpy_integer_group_is_its_value(narrow):
    # size // np.int8(64) overflows int8 under numpy 2's rules: validate keeps a Python int
    x = np.linspace(-1, 1, 1024, dtype=np.float32).reshape(4, 256)
    idx, st = quantize_vq(x, "higgs-2d-16", backend="numpy")
    want = dequantize_vq(idx, st, "numpy")
    fields = {k: getattr(st, k) for k in ("codebook", "points", "scales", "shape", "dtype", "scale_rule",
                                          "scale_dtype", "rotate_size", "rotate_seed")}
    got = dequantize_vq(idx, VQState(**fields, group=narrow(64)), "numpy")
    assert np.array_equal(got, want)


@needs_numba
@pytest.mark.parametrize("dtype", [">f4", ">f2"])
@pytest.mark.parametrize("rotate", [None, "hadamard"])
def test_big_endian_input_on_the_cpu_backend_is_quantized_as_its_values(dtype, rotate):
    # the fused kernel reads the bytes as they lie: a big-endian input is made native first (float32 crashed
    # numba's typing without it, float16 read swapped bytes); the numpy reference of the native array
    x = (_rng(4).standard_normal((4, 128)) * 0.05).astype(dtype)
    pts = gaussian_grid(16, 2)
    a, sa = quantize_vq(x.astype(x.dtype.newbyteorder("=")), pts, rotate=rotate, backend="numpy")
    b, sb = quantize_vq(x, pts, rotate=rotate, backend="cpu")
    assert np.array_equal(a, b) and np.array_equal(sa.scales.view(np.uint8), sb.scales.view(np.uint8))


def test_the_cached_encoder_tables_are_read_only():
    """The encoders' tables are cached by the table's bytes and shared by every later call: one
    a caller (or a kernel) changed in place would change every later encoding of that table."""
    from quantbook.bulk.cpu.backend import _tables
    from quantbook.bulk.vq import _scan_tables
    from quantbook.scales.floats import _f16_grid

    code = np.linspace(-1, 1, 16, dtype=np.float32)
    points = np.arange(8, dtype=np.float32)
    arrays = [a for a in _tables(code.tobytes()) if isinstance(a, np.ndarray)]
    arrays += list(_scan_tables(points.tobytes(), 4, 2)) + [_f16_grid()]
    assert len(arrays) == 8
    assert not any(a.flags.writeable for a in arrays)
