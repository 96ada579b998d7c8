"""``quantize_vq`` / ``dequantize_vq``: vector quantization of whole arrays, one index per
group of P weights (HIGGS: Malinovskii et al. 2024, arXiv:2411.17525 — 2-D grids after a
randomized Hadamard rotation, with an RMS scale per group).

The layout is stated once, in :mod:`quantbook.bulk.vq_state`.  This module checks the
arguments, holds what is common to every backend (non-finite input, rounding the scales to
their stored dtype, the state) and a small registry of backends (:class:`VQBackend`):

* ``numpy``: the readable reference: the Hadamard transform of
  :mod:`quantbook.numerics.hadamard`, group statistics with numpy, and the brute-force
  nearest point of :func:`quantbook.codebooks.vector.nearest_brute`;
* ``cpu``: numba (:mod:`quantbook.bulk.cpu.vq_kernels`, parallel), the same numbers bit for
  bit with an exact accelerated search;
* ``gpu``: CUDA kernels (:mod:`quantbook.bulk.gpu.vq_kernels`, CuPy), the same numbers bit for
  bit with that search's exact scan; host arrays in and out, or device arrays in and out.

``backend="auto"`` takes, for host arrays, the first usable backend marked ``auto`` (numba),
else numpy; for device arrays, the first usable ``device`` backend (gpu).
"""

from __future__ import annotations

import math
import os
from contextlib import AbstractContextManager, nullcontext
from functools import lru_cache, partial
from typing import Any, Callable, ClassVar, cast

import numpy as np

from ..codebooks.vector import cell_candidates, nearest_brute
from ..numerics import hadamard
from ..numerics.arguments import host_array
from ..numerics.fpstate import ignore_underflow
from ..numerics.reals import real_kind
from . import format as F
from .backend import (BACKENDS, check_input_dtype, dtype_name_of, host_backend_error, is_device_array,
                      no_device_backend_error)
from .state import dtype_from_name, dtype_name, first_bad_scale
from .vq_state import (MAX_POINTS, SCALE_DTYPES, SCALE_RULES, VQState, check_group, check_points,
                       index_dtype)

__all__ = ["quantize_vq", "dequantize_vq", "VQState", "VQBackend", "VQ_BACKENDS", "vq_backend_names",
           "parse_rotate", "as_points", "rotation_backend"]

_F = np.float32

#: name -> vector-quantization backend instance, in registration order
VQ_BACKENDS: dict[str, "VQBackend"] = {}


class VQBackend:
    """One way of computing the layout: a subclass registers itself by naming itself.

    Inputs reach a backend checked: ``v`` flat C-contiguous float32 (already rotated),
    ``scales`` float32 per group, ``points`` the (N, P) float32 table, indices in range.
    :meth:`rotate`, :meth:`unrotate`, :meth:`encode` and :meth:`decode` may return the
    backend's own arrays (a GPU backend keeps them on the device), which the other hooks take
    back and :meth:`to_host` brings to the host; :meth:`group_stat` returns numpy, and
    :meth:`group_scales` (by default :meth:`group_stat` rounded on the host) the stored
    scales in numpy.  :meth:`quantize_host` runs them for a host input (:meth:`encode_loaded`
    for a loaded one), or in its own way (the cpu backend, one kernel).

    A ``device`` backend also takes device arrays (``x`` and indices), through
    :meth:`as_float32`, :meth:`first_nonfinite`, :meth:`device_indices` and :meth:`cast`, and
    its results for them stay on the device.
    """

    name: ClassVar[str]
    #: ``backend="auto"`` may pick it for host arrays
    auto: ClassVar[bool] = False
    #: it takes device arrays (``backend="auto"`` picks the first usable one for them)
    device: ClassVar[bool] = False

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            if name in VQ_BACKENDS or name == "auto":
                raise ValueError(f"a vector-quantization backend named {name!r} is already registered")
            cls.name = name
            VQ_BACKENDS[name] = cls()

    def unavailable(self) -> str | None:
        """Why this backend cannot run here, or None."""
        return None

    def load(self, x: np.ndarray) -> Any:
        """A host float32, float16 or bfloat16 array as the float32 the other hooks take (exact;
        the backend's own array, any shape that reshapes as ``x`` does)."""
        return np.ascontiguousarray(x, dtype=_F)

    def rotate(self, x: Any, seed: int, overwrite_x: bool = False) -> Any:
        """``float32(x·D·Hₙ/√n)`` of every row of the float32 ``x`` (R, n), ``D`` the signs of
        ``seed``.  ``overwrite_x``: ``x`` is the caller's scratch, which the result may be
        written over (as scipy.fft's ``overwrite_x``: no second array of the tensor's size)."""
        raise NotImplementedError

    def unrotate(self, y: Any, seed: int, overwrite_x: bool = False) -> Any:
        """``float32(y·Hₙᵀ·D/√n)`` of every row of float32 ``y`` (R, n); ``overwrite_x`` as
        :meth:`rotate`'s."""
        raise NotImplementedError

    def unrotate_wide(self, y: Any, seed: int) -> Any:
        """:meth:`unrotate` not rounded: the float64 ``y·Hₙᵀ·D/√n`` of every row of float32
        ``y`` (R, n), :func:`quantbook.numerics.hadamard.unrotate` (which this default runs on
        a host copy)."""
        y = self.to_host(y)
        with np.errstate(over="ignore", invalid="ignore"):   # decoded infinities: the caller names them
            return hadamard.unrotate(y, y.shape[1], seed)

    @ignore_underflow
    def unrotate_as(self, y: Any, seed: int, dtype: np.dtype) -> Any:
        """:meth:`unrotate_wide` rounded to ``dtype`` (float32, float16 or bfloat16) as numpy's
        ``astype`` rounds the float64 values (bfloat16: ml_dtypes', through float32), where
        the backend works (a device backend's array stays on the device); float32 is
        :meth:`unrotate`.  A NaN's bits may differ between backends."""
        if np.dtype(dtype) == _F:
            return self.unrotate(y, seed)
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(self.unrotate_wide(y, seed)).astype(dtype)

    def quantize_host(self, x: np.ndarray, size: int | None, seed: int | None, group: int, rule: str,
                      scale_dtype: str, points: np.ndarray, check: Callable) -> tuple[Any, np.ndarray]:
        """``(indices, stored scales)`` of the host float32, float16 or bfloat16 ``x``: rotated on
        rows of ``size`` (None: not rotated) with the signs of ``seed``, its groups' statistics
        by ``rule`` rounded to ``scale_dtype`` (numpy's), ``check(stored, stat)`` (``stat()``:
        the float64 statistics) raising for stored scales that are not finite, and the search;
        any integer indices.  Default: :meth:`load_scratch`, then :meth:`encode_loaded` (a copy
        that load made is its scratch, rotated in place, not beside itself)."""
        xf, scratch = self.load_scratch(x)
        return self.encode_loaded(xf, size, seed, group, rule, scale_dtype, points, check, overwrite_x=scratch)

    def load_scratch(self, x: np.ndarray) -> tuple[Any, bool]:
        """``(load(x), scratch)``: ``scratch`` when the loaded array is a copy of its own, which
        the hooks may write over (the caller's ``x`` is never written)."""
        xf = self.load(x)
        return xf, not (isinstance(xf, np.ndarray) and np.may_share_memory(xf, x))

    def encode_loaded(self, xf: Any, size: int | None, seed: int | None, group: int, rule: str, scale_dtype: str,
                      points: np.ndarray, check: Callable, overwrite_x: bool = False) -> tuple[Any, np.ndarray]:
        """:meth:`quantize_host` of the float32 that the hooks take (:meth:`load`'s, or a device
        backend's :meth:`as_float32`): :meth:`rotate` (``overwrite_x`` as its), :meth:`group_scales`,
        ``check`` and :meth:`encode`."""
        # a rotated layout has both its size and its seed
        v = (xf if size is None else self.rotate(xf.reshape(-1, size), cast(int, seed), overwrite_x=overwrite_x)
             ).reshape(-1)
        stored, scales, stat_of = self.group_scales(v, group, rule, scale_dtype)
        check(stored, stat_of)
        return self.encode(v, scales, group, points), stored

    def group_stat(self, v: Any, group: int, rule: str) -> np.ndarray:
        """float64 per group: ``sqrt(Σv²/group)`` (squares summed in index order) or ``max|v|``;
        non-finite for a group holding NaN/Inf."""
        raise NotImplementedError

    @ignore_underflow
    def group_scales(self, v: Any, group: int, rule: str,
                     scale_dtype: str) -> tuple[np.ndarray, Any, Callable[[], np.ndarray]]:
        """``(stored, scales, stat)``: the :meth:`group_stat` of each group rounded to nearest
        even to ``scale_dtype`` (numpy; non-finite where the statistic is, or beyond the
        dtype's range), the same as the float32 that :meth:`encode` takes (the backend's own
        array), and a callable giving the float64 statistics (numpy), for error messages."""
        stat = self.group_stat(v, group, rule)
        with np.errstate(over="ignore", invalid="ignore"):
            stored = stat.astype(scale_dtype)
        return stored, self.widen_scales(stored), lambda: stat

    def widen_scales(self, stored: np.ndarray) -> Any:
        """The stored scales (float16 or float32, numpy) as the float32 that :meth:`encode` and
        :meth:`decode` take (exact; the backend's own array)."""
        return stored.astype(_F)

    def encode(self, v: Any, scales: Any, group: int, points: np.ndarray) -> Any:
        """Flat indices (any integer dtype) of ``y = float32(v / s)`` (0 where ``s = 0``)."""
        raise NotImplementedError

    def decode(self, idx: Any, scales: Any, group: int, points: np.ndarray) -> Any:
        """Flat float32 ``points[idx] · s`` (``idx`` flat, of any integer dtype, in range)."""
        raise NotImplementedError

    def decode_unrotated(self, idx: Any, scales: Any, group: int, points: np.ndarray,
                         size: int | None, seed: int | None, dtype: np.dtype) -> Any:
        """The flat values of :meth:`decode`, rotated back by :meth:`unrotate` on rows of
        ``size`` (None: not rotated): float32, or already rounded to ``dtype`` (float32,
        float16 or bfloat16) as :meth:`to_host_as` rounds, where a backend writes that type
        directly; :meth:`to_host_as` and :meth:`cast` take either.  Default: the two hooks,
        the decoded values rotated back in place (they are this call's own)."""
        y = self.decode(idx, scales, group, points)
        if size is None:
            return y
        with np.errstate(over="ignore"):
            return self.unrotate(y.reshape(-1, size), cast(int, seed), overwrite_x=True).reshape(-1)   # as above

    def to_host(self, a: Any) -> np.ndarray:
        """A result of :meth:`rotate`, :meth:`unrotate`, :meth:`encode` or :meth:`decode` as a
        numpy array."""
        return np.asarray(a)

    @ignore_underflow
    def to_host_as(self, y: Any, dtype: np.dtype) -> np.ndarray:
        """The flat float32 result ``y`` as a numpy array of ``dtype``, rounded to nearest even
        (``y`` already of ``dtype``: as it is)."""
        out = self.to_host(y)
        if out.dtype != dtype:
            with np.errstate(over="ignore"):
                out = out.astype(dtype)
        return out

    def on_device(self, a: Any) -> AbstractContextManager:
        """Where the hooks run for input ``a`` (a device backend: the device that holds it)."""
        return nullcontext()

    # ---- device backends only -------------------------------------------------------------
    def as_float32(self, x: Any) -> tuple[Any, Any]:
        """``(flat float32 copy or view, keep-alive)`` of a float32/float16/bfloat16 device array."""
        raise NotImplementedError

    def first_nonfinite(self, v: Any) -> int | None:
        """The flat index of the first NaN or Inf of a device array, or None."""
        raise NotImplementedError

    def device_indices(self, indices: Any) -> Any:
        """Device indices as an array with ``dtype``, ``shape``, ``min``, ``max`` and ``reshape``."""
        raise NotImplementedError

    def cast(self, y: Any, dtype: np.dtype) -> Any:
        """The flat float32 (or float64) result ``y`` rounded to ``dtype`` as the host's casts
        round it (:meth:`unrotate_as`), on the device."""
        raise NotImplementedError


class NumpyVQ(VQBackend, name="numpy"):
    """The reference.  Rows and groups are independent, so each hook takes them
    :func:`~quantbook.bulk.format.pieces` at a time: the float64 temporaries of a whole
    tensor would be several times its size."""

    def rotate(self, x: Any, seed: int, overwrite_x: bool = False) -> Any:
        out = x if overwrite_x and x.dtype == _F else np.empty(x.shape, _F)
        with np.errstate(over="ignore", invalid="ignore"):   # non-finite input is named afterwards
            for r in _row_pieces(x):
                out[r] = hadamard.rotate(x[r].astype(_F), x.shape[1], seed)   # rounded to float32
        return out

    def unrotate(self, y: Any, seed: int, overwrite_x: bool = False) -> Any:
        out = y if overwrite_x and y.dtype == _F else np.empty(y.shape, _F)
        for r in _row_pieces(y):
            out[r] = hadamard.unrotate(y[r], y.shape[1], seed)
        return out

    def group_stat(self, v: Any, group: int, rule: str) -> np.ndarray:
        g = v.reshape(-1, group)
        if rule == "absmax":
            return np.abs(g).max(axis=1).astype(np.float64)
        acc = np.zeros(g.shape[0])
        for j in range(group):  # in index order: the numba kernel sums the same way
            t = g[:, j].astype(np.float64)
            acc += t * t
        return np.sqrt(acc / group)

    @ignore_underflow
    def encode(self, v: Any, scales: Any, group: int, points: np.ndarray) -> Any:
        p = points.shape[1]
        out = np.empty(v.size // p, index_dtype(points.shape[0]))
        for piece in F.pieces(v.size, group):
            g = v[piece].reshape(-1, group)
            y = np.zeros_like(g)
            s = scales[F.block_slice(piece, group)][:, None]
            np.divide(g, s, out=y, where=s != 0)
            out[piece.start // p:piece.stop // p] = nearest_brute(points, y.reshape(-1, p))
        return out

    @ignore_underflow
    def decode(self, idx: Any, scales: Any, group: int, points: np.ndarray,
               out: np.ndarray | None = None) -> Any:
        # out: where to write (the pieces of decode_unrotated reuse one buffer)
        p = points.shape[1]
        out = np.empty(idx.size * p, _F) if out is None else out
        for piece in F.pieces(out.size, group):
            i = idx[piece.start // p:piece.stop // p]
            out[piece] = (points[i].reshape(-1, group) * scales[F.block_slice(piece, group)][:, None]).reshape(-1)
        return out

    def decode_unrotated(self, idx: Any, scales: Any, group: int, points: np.ndarray,
                         size: int | None, seed: int | None, dtype: np.dtype) -> Any:
        if dtype == _F:   # the decoded values are the result, rotated back in place
            return super().decode_unrotated(idx, scales, group, points, size, seed, dtype)
        # pieces of whole rows and groups, each rounded to dtype as it is made: no float32
        # tensor beside the result
        p = points.shape[1]
        out = np.empty(idx.size * p, dtype)
        buf: np.ndarray | None = None   # one float32 piece, reused: a fresh one a piece was slower
        for piece in F.pieces(out.size, math.lcm(group, size or group)):
            buf = np.empty(piece.stop - piece.start, _F) if buf is None else buf[:piece.stop - piece.start]
            y = self.decode(idx[piece.start // p:piece.stop // p], scales[F.block_slice(piece, group)], group,
                            points, out=buf)
            if size is not None:
                with np.errstate(over="ignore"):
                    y = self.unrotate(y.reshape(-1, size), cast(int, seed), overwrite_x=True)   # set with size
            out[piece] = self.to_host_as(y.reshape(-1), dtype)
        return out


def _row_pieces(x: np.ndarray) -> Any:
    """Slices of whole rows of the 2-D ``x``, :func:`~quantbook.bulk.format.pieces` at a time."""
    return (F.block_slice(s, x.shape[1]) for s in F.pieces(x.size, x.shape[1]))


@lru_cache(maxsize=16)
def _signs(n: int, seed: int) -> np.ndarray:
    s = hadamard.signs(n, seed)
    s.setflags(write=False)
    return s


def _vq_kernels():
    from .cpu import vq_kernels

    return vq_kernels


@lru_cache(maxsize=8)
def _scan_tables(points_bytes: bytes, n: int, p: int):
    """The points (float64), and their first coordinates sorted with the permutation."""
    pts = np.frombuffer(points_bytes, dtype=_F).reshape(n, p).astype(np.float64)
    order = np.argsort(pts[:, 0], kind="stable").astype(np.int64)
    tables = pts, np.ascontiguousarray(pts[order, 0]), order
    for t in tables:   # cached: every caller's
        t.setflags(write=False)
    return tables


#: cells × cells × N distance pairs evaluated when building a grid, at most
_GRID_WORK = 1 << 26
#: candidates a grid cell holds inline (encode_grid2 unrolls its fast path for exactly three)
_SLOTS = 3


@lru_cache(maxsize=8)
def _grid_tables(points_bytes: bytes, n: int):
    """The P = 2 cell grid: for every cell, the points that can be nearest to some ``y`` in it;
    ``(zero, lo0, lo1, inv0, inv1, cells, lut, multi)``, ``zero`` the index of ``y = 0`` (a
    group of scale 0), the tables read-only (the GPU keeps one device copy of each, known by
    identity).

    The candidate lists are :func:`quantbook.codebooks.vector.cell_candidates`'s.
    """
    c = np.frombuffer(points_bytes, dtype=_F).reshape(n, 2).astype(np.float64)
    zero = int(nearest_brute(c, np.zeros((1, 2)))[0])
    lo, hi = c.min(axis=0), c.max(axis=0)
    pad = 0.5 * max(float((hi - lo).max()), 1e-30)
    lo, hi = lo - pad, hi + pad  # room for the tails of scaled Gaussian groups
    # fine enough that most cells list at most three candidates (the kernel's fast path),
    # coarse enough that the table stays in cache
    cells = int(max(1, min(16 * np.ceil(np.sqrt(n)), np.sqrt(_GRID_WORK / n), 1024)))
    inv = cells / (hi - lo)
    count, cols = cell_candidates(c, lo, hi, cells)
    # the outer ring of cells also stands for everything beyond the grid (the kernel clamps
    # its lookup): those cells send their vectors to the exact scan, flagged by a count of 0
    square = np.zeros((cells, cells), bool)
    square[[0, -1], :] = square[:, [0, -1]] = True
    ring = square.reshape(-1)
    first = np.concatenate([[0], np.cumsum(count)[:-1]])
    # one lookup per vector: a cell of at most _SLOTS candidates holds them ascending, padded
    # with its first (a repeat never wins a tie against it), so the kernel compares them
    # without a branch; any other cell holds -(1 + pos) first, with the count at multi[pos]
    # and the candidates after it, ascending
    lut = np.stack([cols[first + np.minimum(j, count - 1) * (j < count)] for j in range(_SLOTS)],
                   axis=1).astype(np.int32)
    many = np.flatnonzero((count > _SLOTS) & ~ring)
    sizes = count[many] + 1
    pos = (np.cumsum(sizes) - sizes).astype(np.int64)   # where each cell's entry starts
    multi = np.empty(int(sizes.sum()) + 1, np.int32)
    multi[pos] = count[many]
    for cell, p in zip(many, pos):
        multi[p + 1:p + 1 + count[cell]] = cols[first[cell]:first[cell] + count[cell]]
    lut[many, 0] = -(1 + pos)
    multi[-1] = 0
    lut[ring, 0] = -multi.size  # -(1 + pos) of the last entry, the count 0
    for t in (lut, multi):
        t.setflags(write=False)
    return (zero, float(lo[0]), float(lo[1]), float(inv[0]), float(inv[1]), cells, lut, multi)


class NumbaVQ(VQBackend, name="cpu"):
    """numba kernels (:mod:`quantbook.bulk.cpu.vq_kernels`), parallel."""

    auto = True

    def unavailable(self) -> str | None:
        from .cpu.backend import unavailable

        return unavailable()

    def rotate(self, x: Any, seed: int, overwrite_x: bool = False) -> Any:
        n = x.shape[1]
        x = np.ascontiguousarray(x, dtype=_F)
        # the kernel reads a whole row before it writes it, so out may be x itself
        out = x if overwrite_x else np.empty(x.shape, _F)
        # 1/sqrt(n) rounded once, as the reference's fwht scales
        _vq_kernels().rotate(x, _signs(n, seed), 1.0 / np.sqrt(n), out)
        return out

    def unrotate(self, y: Any, seed: int, overwrite_x: bool = False) -> Any:
        return self._unrotate(y, seed, _F, overwrite_x)

    def unrotate_wide(self, y: Any, seed: int) -> Any:
        return self._unrotate(y, seed, np.float64, False)

    @staticmethod
    def _unrotate(y, seed, dtype, overwrite_x):
        n = y.shape[1]
        y = np.ascontiguousarray(y, dtype=_F)
        out = y if overwrite_x and dtype == _F else np.empty(y.shape, dtype)   # as rotate's
        _vq_kernels().unrotate(y, _signs(n, seed), 1.0 / np.sqrt(n), out)
        return out

    def quantize_host(self, x: np.ndarray, size: int | None, seed: int | None, group: int, rule: str,
                      scale_dtype: str, points: np.ndarray, check: Callable) -> tuple[Any, np.ndarray]:
        # one kernel reads the input (float32 or 16 bits) and writes the indices and stored
        # scales: no widened or rotated copy of the tensor (float32 too: as fast as the hooks or
        # faster, docs/benchmarks.md); it rounds the statistics to float16 as numpy rounds a
        # float64 (kernels._f64_to_f16_bits)
        from .cpu.backend import _f16_table, kernel_view

        xv = kernel_view(np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))).reshape(-1)
        n, p = points.shape
        pts, c0s, order = _scan_tables(points.tobytes(), n, p)
        grid = _grid_tables(points.tobytes(), n) if p == 2 else _no_grid()
        signs = _signs(size, seed) if size is not None else np.empty(0)
        half = scale_dtype == "float16"
        scales = np.empty(xv.size // group, np.uint16 if half else _F)
        out = np.empty(xv.size // p, index_dtype(n))
        _vq_kernels().quantize_rows(xv, _f16_table(), signs, 1.0 / np.sqrt(size or 1), math.lcm(group, size or 1),
                                    group, rule == "absmax", p == 2, *grid, c0s, order, pts, scales, out)
        stored = scales.view(np.float16) if half else scales

        def stat():   # the error's statistics (rarely): by the hooks, never writing the caller's x
            xf, scratch = self.load_scratch(x)
            v = xf if size is None else self.rotate(xf.reshape(-1, size), seed, overwrite_x=scratch)
            return self.group_stat(v.reshape(-1), group, rule)

        check(stored, stat)
        return out, stored

    def group_stat(self, v: Any, group: int, rule: str) -> np.ndarray:
        out = np.empty(v.size // group)
        k = _vq_kernels()
        (k.group_absmax if rule == "absmax" else k.group_rms)(v, group, out)
        return out

    def encode(self, v: Any, scales: Any, group: int, points: np.ndarray) -> Any:
        k = _vq_kernels()
        n, p = points.shape
        pts, c0s, order = _scan_tables(points.tobytes(), n, p)
        out = np.empty(v.size // p, dtype=index_dtype(n))
        if p == 2:
            k.encode_grid2(v, scales, group, *_grid_tables(points.tobytes(), n), c0s, order, pts, out)
        else:
            k.encode_scan(v, scales, group, c0s, order, pts, out)
        return out

    def decode(self, idx: Any, scales: Any, group: int, points: np.ndarray) -> Any:
        out = np.empty(idx.size * points.shape[1], _F)
        _vq_kernels().decode(idx, scales, group, points, out)   # compiled per index type: no int64 copy
        return out

    def decode_unrotated(self, idx: Any, scales: Any, group: int, points: np.ndarray,
                         size: int | None, seed: int | None, dtype: np.dtype) -> Any:
        if dtype == _F:   # the decoded values are the result, rotated back in place: the fused
            # kernel saves nothing there, and it was slower (docs/benchmarks.md)
            return super().decode_unrotated(idx, scales, group, points, size, seed, dtype)
        # one kernel writes the 16 bits itself (kernels._store rounds as numpy and ml_dtypes
        # do): no float32 tensor beside the result; decode_unrotate rotates each row back as
        # it decodes it
        from .cpu.backend import kernel_view

        out = np.empty(idx.size * points.shape[1], dtype)
        k, view = _vq_kernels(), kernel_view(out)
        if size is None:
            k.decode(idx, scales, group, points, view)
        else:
            k.decode_unrotate(idx, scales, group, points, _signs(size, seed), 1.0 / np.sqrt(size),
                              view.reshape(-1, size))
        return out


@lru_cache(maxsize=1)
def _no_grid():
    """:func:`_grid_tables`' arguments where the cpu's fused kernel searches by the scan (P != 2)."""
    lut, multi = np.zeros((1, _SLOTS), np.int32), np.zeros(1, np.int32)
    for t in (lut, multi):
        t.setflags(write=False)
    return (0, 0.0, 0.0, 1.0, 1.0, 1, lut, multi)


@lru_cache(maxsize=8)
def _device_scan_tables(points_bytes: bytes, n: int, p: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_scan_tables` with a 32-bit permutation, read-only (the GPU keeps one device
    copy of each, known by identity)."""
    pts, c0s, order = _scan_tables(points_bytes, n, p)
    tables = (pts.copy(), c0s.copy(), order.astype(np.int32))
    for t in tables:
        t.setflags(write=False)
    return tables


class CudaVQ(VQBackend, name="gpu"):
    """CUDA kernels (:mod:`quantbook.bulk.gpu.vq`, CuPy): host arrays in and out, or device
    arrays (CuPy, torch CUDA tensors) in and out; the rotated tensor kept on the device
    between the hooks; the same numbers bit for bit."""

    device = True

    def unavailable(self) -> str | None:
        from .gpu.backend import gpu_available

        ok, why = gpu_available()
        return None if ok else why

    def on_device(self, a: Any) -> AbstractContextManager:
        return BACKENDS["gpu"].on_device(a) if is_device_array(a) else nullcontext()

    def load(self, x: np.ndarray) -> Any:
        # 16-bit values cross as they are and are widened on the device
        from .gpu.vq import load_gpu

        return load_gpu(x)

    def rotate(self, x: Any, seed: int, overwrite_x: bool = False) -> Any:   # a new device array either way
        from .gpu.vq import rotate_gpu

        n = x.shape[1]
        return rotate_gpu(x, _signs(n, seed), 1.0 / np.sqrt(n))

    def unrotate(self, y: Any, seed: int, overwrite_x: bool = False) -> Any:
        from .gpu.vq import rotate_gpu

        n = y.shape[1]
        return rotate_gpu(y, _signs(n, seed), 1.0 / np.sqrt(n), inverse=True)

    def unrotate_wide(self, y: Any, seed: int) -> Any:
        from .gpu.vq import rotate_gpu

        n = y.shape[1]
        return rotate_gpu(y, _signs(n, seed), 1.0 / np.sqrt(n), inverse=True, wide=True)

    def unrotate_as(self, y: Any, seed: int, dtype: np.dtype) -> Any:
        # rounded on the device from the float64 values: a 16-bit result stays there
        if np.dtype(dtype) == _F:
            return self.unrotate(y, seed)
        return self.cast(self.unrotate_wide(y, seed), dtype).reshape(y.shape)

    def group_stat(self, v: Any, group: int, rule: str) -> np.ndarray:
        from .gpu.vq import group_stat_gpu

        return self.to_host(group_stat_gpu(v, group, rule == "absmax")[0])

    def group_scales(self, v: Any, group: int, rule: str,
                     scale_dtype: str) -> tuple[np.ndarray, Any, Callable[[], np.ndarray]]:
        # rounded on the device: only the stored scales cross to the host
        from .gpu.backend import device_of
        from .gpu.kept import keep
        from .gpu.vq import group_stat_gpu

        stat, scales, bits = group_stat_gpu(v, group, rule == "absmax", scale_dtype == "float16")
        # the state's read-only copy stands for the float32 scales on the device (widened
        # exactly, as widen_scales would): dequantize_vq on this GPU reads those
        stored = keep(self.to_host(scales if bits is None else bits.view(np.float16)), scales, device_of(scales))
        return stored, scales, lambda: self.to_host(stat)

    def widen_scales(self, stored: np.ndarray) -> Any:
        # on the device: those kept for these stored scales, else the stored bytes cross and
        # the host converts nothing
        from .gpu.vq import load_gpu

        dev = BACKENDS["gpu"].kept_copy(stored)
        return load_gpu(stored) if dev is None else dev

    def encode(self, v: Any, scales: Any, group: int, points: np.ndarray) -> Any:
        from .gpu.vq import encode_gpu

        n, p = points.shape
        raw = points.tobytes()
        grid = _grid_tables(raw, n) if p == 2 else None
        return encode_gpu(v, scales, group, *_device_scan_tables(raw, n, p), grid=grid)

    def decode(self, idx: Any, scales: Any, group: int, points: np.ndarray) -> Any:
        from .gpu.vq import decode_gpu

        return decode_gpu(idx, scales, group, points)

    def to_host(self, a: Any) -> np.ndarray:
        return BACKENDS["gpu"].to_host(a)

    def to_host_as(self, y: Any, dtype: np.dtype) -> np.ndarray:
        # rounded on the device: 16-bit results cross at 2 bytes a value
        out = self.to_host(self.cast(y, dtype))
        return out if out.dtype == dtype else out.view(dtype)   # bfloat16 bits (CuPy < 14)

    def as_float32(self, x: Any) -> tuple[Any, Any]:
        from .gpu.vq import as_float32

        return as_float32(x)

    def first_nonfinite(self, v: Any) -> int | None:
        from .gpu.vq import first_nonfinite

        return first_nonfinite(v)

    def device_indices(self, indices: Any) -> Any:
        from .gpu.backend import _cupy

        return _cupy().asarray(indices)

    def cast(self, y: Any, dtype: np.dtype) -> Any:
        from .gpu.vq import cast_gpu

        return cast_gpu(y, dtype)


def vq_backend_names() -> tuple[str, ...]:
    """``"auto"`` and every registered vector-quantization backend."""
    return ("auto", *VQ_BACKENDS)


def rotation_backend(name: Any) -> VQBackend:
    """The vector backend whose Hadamard kernels rotate for the bulk backend ``name``.

    That is ``auto``'s pick for host arrays, else a usable namesake, else numpy.  Each runs the
    float64 operations of :mod:`quantbook.numerics.hadamard`, so the choice changes only where and
    how fast."""
    if name == "auto":
        return _pick_backend("auto")
    b = VQ_BACKENDS.get(name) if isinstance(name, str) else None
    return b if b is not None and b.unavailable() is None else VQ_BACKENDS["numpy"]


def _pick_backend(name: Any, device: bool = False) -> VQBackend:
    if name == "auto":
        for b in VQ_BACKENDS.values():
            if (b.device if device else b.auto) and b.unavailable() is None:
                return b
        if device:
            raise no_device_backend_error(VQ_BACKENDS)
        return VQ_BACKENDS["numpy"]
    named = VQ_BACKENDS.get(name) if isinstance(name, str) else None
    if named is None:
        raise ValueError(f"unknown vector-quantization backend {name!r} (expected {', '.join(vq_backend_names())})")
    if device and not named.device:
        raise host_backend_error(name)
    why = named.unavailable()
    if why is not None:
        raise ValueError(f"backend {name!r} cannot run here: {why}")
    return named


def as_points(codebook: Any) -> tuple[str, np.ndarray]:
    """``(name, points)`` of a vector codebook: a name or ``FILE.json``
    (:func:`quantbook.naming.resolve_vector`), anything with ``.points`` (and ``.name``), or an
    (N, P) array; the points as a C-contiguous float32 (N, P) table, checked."""
    if isinstance(codebook, (str, os.PathLike)):   # as quantize() takes a scalar code's name
        from ..naming import resolve_vector
        codebook = resolve_vector(codebook)   # a path object stays one: a file, never a published name
    name = getattr(codebook, "name", None)   # a torch tensor's is None
    name = name if isinstance(name, str) else "custom"
    pts = getattr(codebook, "points", codebook)
    a = host_array(pts, "vq_codebook")
    if not real_kind(a.dtype) or a.ndim != 2:
        raise ValueError(f"a vector codebook is an (N, P) table of numbers, got {a.dtype} of shape {a.shape}")
    if a.shape[0] > MAX_POINTS:
        raise ValueError(f"a vector codebook has at most {MAX_POINTS} points (16-bit indices), got {a.shape[0]}")
    with np.errstate(over="ignore"):
        f = np.ascontiguousarray(a, dtype=_F)
    if np.isfinite(a).all() and not np.isfinite(f).all():
        raise ValueError("the codebook's points lie beyond float32's range")
    return name, check_points(f)


def parse_rotate(rotate: Any, last: int) -> int | None:
    """The Hadamard size of ``rotate``: None (or ``"none"``), ``"hadamard"`` (the largest power
    of two dividing the last dimension ``last``) or ``"hadamard:N"``."""
    if rotate is None or (isinstance(rotate, str) and rotate.strip().lower() == "none"):
        return None
    if not isinstance(rotate, str):
        raise ValueError(f"rotate must be None, 'hadamard' or 'hadamard:N', got {rotate!r}")
    r = rotate.strip().lower()
    if r == "hadamard":
        return hadamard.default_size(last)
    if r.startswith("hadamard:"):
        try:
            n = int(r.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"rotate {rotate!r}: the Hadamard size must be an integer") from None
        n = hadamard.check_size(n)
        if last % n:
            raise ValueError(f"the Hadamard size {n} does not divide the last dimension {last}")
        return n
    raise ValueError(f"unknown rotation {rotate!r} (expected None, 'hadamard' or 'hadamard:N')")


def _check_input(x: Any) -> tuple[Any, tuple[int, ...], str]:
    """``(x, shape, dtype name)``: a numpy array, or a device array as given (it is converted
    to float32, a copy, so any strides do)."""
    if not is_device_array(x):
        x = host_array(x, "x")
    name = check_input_dtype(x)
    shape = tuple(int(s) for s in x.shape)
    if not shape or 0 in shape:
        raise ValueError(f"cannot quantize an empty or 0-d array (shape {shape})")
    return x, shape, name


def _first_nonfinite(x: np.ndarray) -> int | None:
    """The flat index of the first NaN or Inf of a host array, or None."""
    bad = ~np.isfinite(x.reshape(-1).astype(_F, copy=False))
    return int(bad.argmax()) if bad.any() else None


def _check_scales(first_bad: Callable[[], int | None], size: int | None, scale: str, scale_dtype: str,
                  stored: np.ndarray, stat_of: Callable[[], np.ndarray]) -> None:
    """The one-line ValueError of stored scales that are not finite: NaN or Inf in ``x`` (by
    ``first_bad()``, its first flat index), a rotation beyond float32's range, or a statistic
    beyond ``scale_dtype``'s range."""
    # x is searched for NaN and Inf only when a statistic is not finite: a rotated row
    # holding one is NaN or Inf throughout, so every group it touches shows it
    if first_bad_scale(stored) is None:   # the statistics are >= 0 or NaN
        return
    stat = stat_of()
    bad = np.flatnonzero(~np.isfinite(stat))
    if bad.size:
        g, bad_at = int(bad[0]), first_bad()
        if size is None:
            raise ValueError(f"x holds NaN or Inf: first in group {g} (flat index {bad_at})")
        if bad_at is not None:
            raise ValueError(f"x holds NaN or Inf: first at flat index {bad_at}")
        raise ValueError(f"the Hadamard rotation takes group {g} beyond float32's range")
    over = cast(int, first_bad_scale(stored))   # the statistics are finite: an overflow to inf (checked above)
    raise ValueError(f"group {over}'s {scale} scale {stat[over]:.6g} exceeds {scale_dtype}'s range; "
                     f"pass scale_dtype='float32'")


def quantize_vq(x: Any, vq_codebook: Any, *, group: int = 64, scale: str = "rms", rotate: Any = "hadamard",
                backend: str = "auto", scale_dtype: str = "float16") -> tuple[np.ndarray, VQState]:
    """Vector-quantize ``x``; returns ``(indices, state)`` (layout: :mod:`.vq_state`).

    ``x``: float32, float16 or bfloat16, any shape; groups and vectors run along the last
    axis.  A device array (CuPy, a torch CUDA tensor) goes to a GPU backend (``"auto"`` or
    ``"gpu"``) and its indices stay on the device; the state is on the host.
    ``vq_codebook``: a :class:`~quantbook.codebooks.vector.VectorCodebook`, its name,
    ``FILE.json`` or a path object (always a file; :func:`quantbook.naming.resolve_vector`),
    anything with ``.points``, or an (N, P) array.  ``group``: weights per scale, a multiple of P dividing
    the last dimension.  ``scale``: ``"rms"`` or ``"absmax"``; ``scale_dtype``: how the scale is
    stored (``"float16"``, HIGGS's 16 bits, or ``"float32"``).  ``rotate``: ``"hadamard"``,
    ``"hadamard:N"`` or None.  ``backend``: ``"auto"``, ``"numpy"``, ``"cpu"`` or ``"gpu"``.

    Indices are uint8 for N <= 256, else uint16, of shape ``x.shape[:-1] + (last // P,)``.
    NaN/Inf in ``x`` and a scale above its dtype's largest value are one-line ValueErrors; a
    scale that rounds to zero (a float16 scale below about 3e-8) is stored as 0 and its group
    decodes to zeros, as the layout (:mod:`.vq_state`) and ggml's float16 scales have it.
    """
    name, points = as_points(vq_codebook)
    x, shape, dtype = _check_input(x)
    last = shape[-1]
    n_pts, p = points.shape
    group = check_group(group, p, last)
    if scale not in SCALE_RULES:
        raise ValueError(f"unknown scale rule {scale!r} (expected {' or '.join(SCALE_RULES)})")
    if scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"unknown scale_dtype {scale_dtype!r} (expected {' or '.join(SCALE_DTYPES)})")
    size = parse_rotate(rotate, last)
    device = is_device_array(x)
    be = _pick_backend(backend, device)
    seed = None if size is None else hadamard.SEED
    with be.on_device(x):
        if device:   # float32 on the device, whatever the input's type (keep: the caller's tensor)
            xf, keep = be.as_float32(x)
            check = partial(_check_scales, partial(be.first_nonfinite, xf), size, scale, scale_dtype)
            idx, stored = be.encode_loaded(xf, size, seed, group, scale, scale_dtype, points, check)
        else:
            check = partial(_check_scales, partial(_first_nonfinite, x), size, scale, scale_dtype)
            idx, stored = be.quantize_host(x, size, seed, group, scale, scale_dtype, points, check)
        idx = idx.astype(index_dtype(n_pts), copy=False)   # before any copy
        if not device:
            idx = be.to_host(idx)
        state = VQState(codebook=name, points=points.copy(), scales=stored, shape=shape,
                        dtype=dtype_from_name(dtype), group=group, scale_rule=scale, scale_dtype=scale_dtype,
                        rotate_size=size, rotate_seed=seed)
        return idx.reshape(state.index_shape), state


def dequantize_vq(indices: Any, state: VQState, backend: str = "auto") -> Any:
    """The array that ``indices`` and their ``state`` stand for, of the state's shape and dtype.

    Its values are ``float32(points[i] · s)``, un-rotated (float64, rounded to float32) when the state is
    rotated, then rounded to the state's dtype.  The state is validated first; indices must
    have the state's index shape and lie below N.  Device indices (a GPU backend) give a
    device array (bfloat16 as uint16 bits with a CuPy before 14)."""
    if not isinstance(state, VQState):
        raise ValueError(f"state must be a VQState, got {type(state).__name__}")
    state.validate()
    dt = np.dtype(state.dtype)
    dtype_name(dt)
    device = is_device_array(indices)
    be = _pick_backend(backend, device)
    with be.on_device(indices):
        if not device:
            indices = host_array(indices, "indices")
        name = dtype_name_of(indices)
        if name.rstrip("0123456789") not in ("int", "uint"):
            raise ValueError(f"indices must be integers, got dtype {name}")
        idx = be.device_indices(indices) if device else indices
        if tuple(idx.shape) != state.index_shape:
            raise ValueError(f"indices have shape {tuple(idx.shape)}, expected {state.index_shape}")
        kind = np.dtype(idx.dtype)
        if kind.kind != "u" or np.iinfo(kind).max >= state.n_points:   # else every value is in range
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= state.n_points:
                raise ValueError(f"indices must lie in [0, {state.n_points - 1}], found {lo if lo < 0 else hi}")
        flat = idx.reshape(-1) if device else np.ascontiguousarray(idx, dtype=kind.newbyteorder("=")).reshape(-1)
        y = be.decode_unrotated(flat, be.widen_scales(state.scales), state.group, state.points, state.rotate_size,
                                state.rotate_seed, dt)
        if device:
            return be.cast(y, dt).reshape(state.shape)
        return be.to_host_as(y, dt).reshape(state.shape)
