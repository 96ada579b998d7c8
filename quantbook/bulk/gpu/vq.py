"""Host launchers of the vector-quantization kernels (:mod:`.vq_kernels`), for the ``gpu``
backend of :mod:`quantbook.bulk.vq`.

Each function takes host or device arrays, already checked by ``quantize_vq`` /
``dequantize_vq``, and returns CuPy arrays: a rotated tensor stays on the device for the
group statistics and the search, and only the statistics (8 bytes a group) and the stored
scales cross to and from the host (and the values and indices, for host arrays).  The
module is compiled once per device (NVRTC, cached on disk as the other kernels).  CuPy is
imported on first use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import backend as G
from . import vq_kernels as VK

__all__ = ["rotate_gpu", "group_stat_gpu", "encode_gpu", "decode_gpu", "as_float32", "load_gpu",
           "first_nonfinite", "cast_gpu", "FWHT_TILE"]

#: entries of a row transformed in shared memory (a power of two, at most ``VK.TILE``); the
#: spans beyond it run in global memory
FWHT_TILE = VK.TILE
#: grid-stride kernels launch at most this many CTAs
_MAX_GRID = 1 << 16
#: the bits of float32(inf - inf) on this host (x86: the negative default NaN; elsewhere
#: the positive one): what the reference's un-rotation gives a NaN
with np.errstate(invalid="ignore"):
    _HOST_NAN = int((np.array([np.inf]) - np.array([np.inf])).astype(np.float32).view(np.uint32)[0])

_MODULES: dict[int, tuple] = {}


def _kernel(name: str):
    return G.module_kernel(_MODULES, VK.source, "qbv_vq.cu", name)


def _grid(count: int) -> int:
    return max(1, min(-(-count // VK.CTA), _MAX_GRID))


def _device(a, dtype):
    cp = G._cupy()
    return cp.ascontiguousarray(cp.asarray(a, dtype=dtype))


def rotate_gpu(x: Any, signs: np.ndarray, inv: float, inverse: bool = False, wide: bool = False) -> Any:
    """``float32(fwht(x · signs) · inv)`` of every row of the (R, n) float32 ``x``, or with
    ``inverse`` ``float32(fwht(x) · inv · signs)``; ``signs`` the n float64 ±1, ``inv`` the
    float64 ``1/√n``.  With ``wide`` the float64 values, not rounded (a NaN has the GPU's
    bits)."""
    cp = G._cupy()
    xd = _device(x, cp.float32)
    rows, n = (int(s) for s in xd.shape)
    total = rows * n
    tile = min(n, FWHT_TILE)
    buf = cp.empty(total if tile < n or wide else 1, dtype=cp.float64)
    out = cp.empty((rows, n) if not wide else 1, dtype=cp.float32)
    if rows == 0:
        return buf.reshape(rows, n) if wide else out
    sg = G._device_const(signs)
    args = (np.int64(total), np.int64(n))
    nan, w = np.uint32(_HOST_NAN), np.int32(wide)
    _kernel("qbv_fwht_tile")((max(1, min(-(-total // VK.TILE), _MAX_GRID)),), (VK.CTA,),
                             (xd, sg, buf, out, *args, np.int32(tile), np.float64(inv), np.int32(inverse), nan, w))
    h = tile
    while h < n:
        _kernel("qbv_butterfly")((_grid(total // 2),), (VK.CTA,),
                                 (buf, sg, out, *args, np.int64(h), np.float64(inv), np.int32(inverse),
                                  np.int32(2 * h == n), nan, w))
        h *= 2
    return buf.reshape(rows, n) if wide else out


def group_stat_gpu(v: Any, group: int, absmax: bool, half: bool = False) -> tuple[Any, Any, Any | None]:
    """Per group of the flat float32 ``v``: ``(stat, scale, bits)``, the float64
    ``sqrt(Σv²/group)`` or ``max |v|``, that rounded to the stored scale (float16 with ``half``,
    else float32) as float32, and with ``half`` its float16 bits (uint16; else None)."""
    cp = G._cupy()
    vd = _device(v, cp.float32).reshape(-1)
    groups = int(vd.size) // group
    out = cp.empty(groups, dtype=cp.float64)
    scale = cp.empty(groups, dtype=cp.float32)
    bits = cp.empty(groups if half else 1, dtype=cp.uint16)   # never written without half
    if groups:
        _kernel("qbv_group_stat")((_grid(groups),), (VK.CTA,),
                                  (vd, out, scale, bits, np.int64(groups), np.int64(group), np.int32(absmax),
                                   np.int32(half), np.int32(group % 4 == 0 and vd.data.ptr % 16 == 0)))
    return out, scale, (bits if half else None)


def encode_gpu(v: Any, scales: Any, group: int, pts: np.ndarray, c0s: np.ndarray, order: np.ndarray,
               grid: tuple[Any, ...] | None = None) -> Any:
    """int32 index of the nearest point to each ``y = float32(v / s)`` (0 where ``s = 0``):
    ``pts`` the (N, P) points in float64, ``c0s`` their first coordinates sorted stably,
    ``order`` that permutation (int32); for P = 2, ``grid`` the cell grid ``(zero, lo0, lo1,
    inv0, inv1, cells, lut, multi)`` of :func:`quantbook.bulk.vq._grid_tables`, or None (the
    scan alone)."""
    cp = G._cupy()
    vd = _device(v, cp.float32).reshape(-1)
    sd = _device(scales, cp.float32).reshape(-1)
    npts, p = (int(s) for s in pts.shape)
    vectors = int(vd.size) // p
    out = cp.empty(vectors, dtype=cp.int32)
    if not vectors:
        return out
    scan = (G._device_const(c0s), G._device_const(order), G._device_const(pts), np.int32(npts), out)
    if grid is None:
        _kernel("qbv_encode")((_grid(vectors),), (VK.CTA,),
                              (vd, sd, np.int64(vectors), np.int64(group), np.int32(p), *scan))
    else:
        zero, lo0, lo1, inv0, inv1, cells, lut, multi = grid
        _kernel("qbv_encode_grid2")((_grid(vectors),), (VK.CTA,),
                                    (vd, sd, np.int64(vectors), np.int64(group), np.int32(zero),
                                     *(np.float64(a) for a in (lo0, lo1, inv0, inv1)), np.int32(cells),
                                     G._device_const(lut), G._device_const(multi), *scan))
    return out


def decode_gpu(idx: ArrayLike, scales: Any, group: int, points: np.ndarray) -> Any:
    """Flat float32 ``points[idx] · s`` (indices already checked to lie below N)."""
    cp = G._cupy()
    idd = cp.ascontiguousarray(cp.asarray(idx)).reshape(-1)   # host indices cross as they are
    if idd.dtype != cp.int32:
        idd = idd.astype(cp.int32)
    sd = _device(scales, cp.float32).reshape(-1)
    p = int(points.shape[1])
    n = int(idd.size) * p
    out = cp.empty(n, dtype=cp.float32)
    if n:
        _kernel("qbv_decode")((_grid(n),), (VK.CTA,),
                              (idd, sd, G._device_const(points), out, np.int64(n), np.int64(group), np.int32(p)))
    return out


def _widen(xd, key: str):
    """The flat device array ``xd`` of dtype ``key`` (bfloat16 as its uint16 bits) as float32,
    exactly, on the device."""
    cp = G._cupy()
    if key == "f16":
        return xd.view(cp.float16).astype(cp.float32)
    if key == "bf16":   # a bfloat16 is the top half of its float32
        return (xd.view(cp.uint16).astype(cp.uint32) << 16).view(cp.float32)
    return xd


def as_float32(x: Any) -> tuple[Any, Any]:
    """``(flat float32 CuPy array, keep-alive)`` of a float32, float16 or bfloat16 device array
    (CuPy, torch CUDA tensors; exact conversions, on the device)."""
    xd, key, keep = G._as_device(x)
    return _widen(xd, key), keep


def load_gpu(x: np.ndarray) -> Any:
    """A host float32, float16 or bfloat16 array (any byte order) as a flat float32 device
    array: its own bytes cross (2 a value for the 16-bit types) and are widened on the device."""
    a = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("=")).reshape(-1)
    key = G._dtype_key(a.dtype)
    return _widen(G._cupy().asarray(a if key == "f32" else a.view(np.uint16)), key)


def first_nonfinite(x: Any) -> int | None:
    """The flat index of the first NaN or Inf of a device array, or None."""
    bad = ~G._cupy().isfinite(x.reshape(-1))
    return int(bad.argmax()) if bool(bad.any()) else None


def cast_gpu(y: Any, dtype: DTypeLike) -> Any:
    """The flat float32 or float64 device array ``y`` rounded to ``dtype`` (float32, float16
    or bfloat16: an ``ml_dtypes.bfloat16`` view with CuPy >= 14, else uint16 bits) as the
    host's casts round it: to nearest even, float64 to bfloat16 through float32 (ml_dtypes)."""
    cp = G._cupy()
    key = G._dtype_key(dtype)
    wide = np.dtype(y.dtype) == np.float64
    yd = _device(y, cp.float64 if wide else cp.float32).reshape(-1)
    if key == "f32":
        return yd.astype(cp.float32) if wide else yd
    n = int(yd.size)
    raw, view = G._empty_out(n, key)
    if n:
        _kernel("qbv_cast64" if wide else "qbv_cast")((_grid(n),), (VK.CTA,),
                                                      (yd, raw.view(cp.uint16), np.int64(n), np.int32(key == "bf16")))
    return raw if view is None else view
