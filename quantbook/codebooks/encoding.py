"""The encoder of a code table, defined once (the rule is stated in docs/format.md, "Encoder").

Used by :meth:`quantbook.codebooks.codebook.Codebook.encode`, by every bulk backend and by the exported C/CUDA headers,
so that all of them give the same code for the same value: float32 midpoints of the stably
sorted table, ``index = order[#{bounds < y}]`` (a value on a midpoint goes to the lower
value), with a ``float64`` variant for exact-arithmetic uses.

The scaled layouts' encoder (:class:`ScaledEncoder`, docs/scales.md) breaks a tie by the
stored index instead; it is defined here too, below the derivations, so that the search fits
(:mod:`quantbook.derive.search_lloyd`) encode as the layout does, ties included.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike

from ..numerics.fpstate import ignore_underflow

__all__ = ["Encoder", "encoder", "midpoints", "PRECISIONS", "ScaledEncoder", "scaled_encoder"]

PRECISIONS = {"float32": np.float32, "float64": np.float64}
_F = np.float32


@dataclass(frozen=True, eq=False)
class Encoder:
    """``bounds`` (ascending, ``len(code) - 1``) and ``order`` (code index of each rank)."""

    bounds: np.ndarray
    order: np.ndarray

    def ranks(self, y: ArrayLike) -> np.ndarray:
        """``#{k : bounds[k] < y}`` of values already in the working precision."""
        return np.searchsorted(self.bounds, y, side="left")

    @ignore_underflow
    def __call__(self, y: ArrayLike) -> np.ndarray:
        """Code indices of ``y`` (converted to the bounds' precision first)."""
        with np.errstate(over="ignore"):   # beyond float32's range: ±inf, past every bound (the end levels)
            return self.order[self.ranks(np.asarray(y, dtype=self.bounds.dtype))]

    @property
    def zero_index(self) -> int:
        """The code of ``y = 0`` (the byte format pads a last partial byte with it)."""
        return int(self(np.zeros(1))[0])


@ignore_underflow
def encoder(code: ArrayLike, precision: str = "float32") -> Encoder:
    """The :class:`Encoder` of an index→value table (rule in the module docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    c = np.ascontiguousarray(code, dtype=PRECISIONS[precision]).reshape(-1)
    if c.size == 0 or not np.isfinite(c).all():
        raise ValueError("a code table needs at least one entry, all finite")
    return _encoder(c.tobytes(), precision)


@ignore_underflow
def midpoints(s: np.ndarray) -> np.ndarray:
    """The midpoints of neighbouring entries of the ascending ``s``, in its own precision: the
    sum halved, rounded once (the rule of every encoder's thresholds, the scaled layouts' too)."""
    dt = s.dtype.type
    with np.errstate(over="ignore"):
        m = ((s[:-1] + s[1:]) / dt(2)).astype(dt)
    # the sum of two entries near the type's maximum overflows; halving first gives the same
    # rounded midpoint there (the halves are exact away from the subnormal range)
    big = ~np.isfinite(m)
    m[big] = s[:-1][big] / dt(2) + s[1:][big] / dt(2)
    return m


@lru_cache(maxsize=256)
def _encoder(raw: bytes, precision: str) -> Encoder:
    dt = PRECISIONS[precision]
    c = np.frombuffer(raw, dtype=dt)
    order = np.argsort(c, kind="stable")
    bounds = midpoints(c[order])
    order = order.astype(np.int64)
    bounds.setflags(write=False)
    order.setflags(write=False)
    return Encoder(bounds, order)


class ScaledEncoder:
    """The encoder of a scaled-layout table (docs/scales.md, "Encoder"), as arrays the kernels use:
    ``mids`` (float32 midpoints of the sorted distinct values), ``up`` (a tie at ``mids[j]``
    goes up), ``pos``/``neg`` (the index of each distinct value for ``y`` without/with the
    sign bit)."""

    @ignore_underflow
    def __init__(self, table: np.ndarray) -> None:
        t = np.asarray(table, dtype=_F)
        vals = np.unique(t)  # -0.0 and +0.0 are one value
        sign = np.signbit(t)
        pos = np.empty(vals.size, np.uint8)
        neg = np.empty(vals.size, np.uint8)
        low = np.empty(vals.size, np.int64)
        for j, v in enumerate(vals):
            idx = np.flatnonzero(t == v)
            low[j] = idx[0]
            p, n = idx[~sign[idx]], idx[sign[idx]]
            pos[j] = p[0] if p.size else idx[0]
            neg[j] = n[0] if n.size else idx[0]
        self.values = vals
        self.mids = midpoints(vals)   # the encoders' one rule (halved first where the sum overflows)
        self.up = (low[1:] % 2 == 0) & (low[:-1] % 2 == 1)
        self.pos, self.neg = pos, neg
        self.signed = not np.array_equal(pos, neg)
        for a in (self.values, self.mids, self.up, pos, neg):   # scaled_encoder shares one per table
            a.setflags(write=False)
        self.zero_index = int(self(np.zeros(1, _F))[0])

    @ignore_underflow
    def __call__(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=_F)
        # y's rank among the distinct values: the midpoints it is past, one whose tie goes up counting
        # when y is on it (a compare per midpoint beats searchsorted on a table this small).  Counted
        # as "not below", NaN is past every midpoint: it saturates, as sorted last
        r = np.zeros(y.shape, np.uint8)
        for m, up in zip(self.mids, self.up):
            r += ~(y < m) if up else ~(y <= m)
        if not self.signed:   # no value stored twice: y's sign bit picks nothing
            return np.asarray(self.pos[r])   # an array for a 0-d y too
        return np.where(np.signbit(y), self.neg[r], self.pos[r]).astype(np.uint8)

    def padded(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(mids, up, pos, neg)`` padded to 15/15/16/16 entries (``+inf`` midpoints never
        count) for the register kernels."""
        m = np.full(15, np.inf, _F)
        m[: self.mids.size] = self.mids
        u = np.zeros(15, np.bool_)
        u[: self.up.size] = self.up
        p = np.zeros(16, np.uint8)
        p[: self.pos.size] = self.pos
        n = np.zeros(16, np.uint8)
        n[: self.neg.size] = self.neg
        return m, u, p, n


@lru_cache(maxsize=32)
def _scaled_encoder(table_bytes: bytes) -> ScaledEncoder:
    return ScaledEncoder(np.frombuffer(table_bytes, dtype=_F))


@ignore_underflow
def scaled_encoder(table: np.ndarray) -> ScaledEncoder:
    """The :class:`ScaledEncoder` of a table in stored order, one shared per table."""
    return _scaled_encoder(np.ascontiguousarray(table, dtype=_F).tobytes())
