"""Float64 error sums over whole arrays in one fixed order, the same on every backend.

Each term is formed element by element in float64: ``e = float64(xhat) - float64(x)``
(float16 and bfloat16 widened exactly; without ``xhat``, ``e = -x``), then ``e*e`` and
``|e|``, each rounded once.  Each run of :data:`CHUNK` consecutive elements is summed
serially, left to right, starting from 0; the runs' sums are then added serially, in order
(:func:`combine`).  A backend computes the runs' sums
(:meth:`quantbook.bulk.Backend.error_sums`: this module's numpy spelling, numba, CUDA), in
parallel, and the host adds them, so the sums are the same bits whatever computed them, on
any machine and for any number of threads (a BLAS dot product's order depends on both).
"""

from __future__ import annotations

import numpy as np

from .format import pieces

__all__ = ["CHUNK", "n_chunks", "combine", "error_chunks_reference"]

#: elements a run summed serially covers (small enough that a GPU has a thread for each run
#: of a weight matrix many times over: 65536 runs for 2**24 values)
CHUNK = 256


def n_chunks(n: int) -> int:
    """Chunks of :data:`CHUNK` values that hold ``n`` values (the last one may be partial)."""
    return -(-int(n) // CHUNK)


def _serial(a: np.ndarray) -> float:
    # accumulate is defined element by element (out[i] = out[i-1] + a[i]): the serial sum
    return float(np.add.accumulate(a)[-1]) if a.size else 0.0


def combine(chunks: np.ndarray) -> tuple[float, float]:
    """``(Σe², Σ|e|)`` from the runs' sums: float64 ``(2, n_chunks)``, rows ``Σe²`` and ``Σ|e|``."""
    c = np.asarray(chunks, dtype=np.float64)
    return _serial(c[0]), _serial(c[1])


def _widen(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a).reshape(-1)
    return a.astype(np.float64) if a.dtype != np.float64 else a


def error_chunks_reference(x: np.ndarray, xhat: np.ndarray | None = None) -> np.ndarray:
    """The runs' sums, float64 ``(2, n_chunks)``, in numpy: ``x`` and ``xhat`` host arrays of
    one size (float16, bfloat16, float32 or float64).  Whole runs at a time
    (:func:`~quantbook.bulk.format.pieces`): the float64 terms of a whole tensor would be
    several times its size."""
    x = np.asarray(x).reshape(-1)
    xhat = None if xhat is None else np.asarray(xhat).reshape(-1)
    out = np.empty((2, n_chunks(x.size)))
    for s in pieces(x.size, CHUNK):
        out[:, s.start // CHUNK:n_chunks(s.stop)] = _runs(x[s], None if xhat is None else xhat[s])
    return out


def _runs(x: np.ndarray, xhat: np.ndarray | None) -> np.ndarray:
    xs = _widen(x)
    e = -xs if xhat is None else _widen(xhat) - xs
    runs: np.ndarray = np.zeros(n_chunks(e.size) * CHUNK)   # zeros after the end add nothing
    runs[:e.size] = e
    runs = runs.reshape(-1, CHUNK)
    out = np.empty((2, runs.shape[0]))
    if runs.shape[0]:
        out[0] = np.add.accumulate(runs * runs, axis=1)[:, -1]
        out[1] = np.add.accumulate(np.abs(runs), axis=1)[:, -1]
    return out
