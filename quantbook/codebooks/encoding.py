"""The encoder of a code table, defined once (the rule is stated in docs/format.md, "Encoder").

Used by :meth:`Codebook.encode`, by every bulk backend and by the exported C/CUDA headers,
so that all of them give the same code for the same value: float32 midpoints of the stably
sorted table, ``index = order[#{bounds < y}]`` (a value on a midpoint goes to the lower
value), with a ``float64`` variant for exact-arithmetic uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["Encoder", "encoder", "midpoints", "PRECISIONS"]

PRECISIONS = {"float32": np.float32, "float64": np.float64}


@dataclass(frozen=True, eq=False)
class Encoder:
    """``bounds`` (ascending, ``len(code) - 1``) and ``order`` (code index of each rank)."""

    bounds: np.ndarray
    order: np.ndarray

    def ranks(self, y) -> np.ndarray:
        """``#{k : bounds[k] < y}`` of values already in the working precision."""
        return np.searchsorted(self.bounds, y, side="left")

    def __call__(self, y) -> np.ndarray:
        """Code indices of ``y`` (converted to the bounds' precision first)."""
        return self.order[self.ranks(np.asarray(y, dtype=self.bounds.dtype))]

    @property
    def zero_index(self) -> int:
        """The code of ``y = 0`` (the byte format pads a last partial byte with it)."""
        return int(self(np.zeros(1))[0])


def encoder(code, precision: str = "float32") -> Encoder:
    """The :class:`Encoder` of an index→value table (rule in the module docstring)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    c = np.ascontiguousarray(code, dtype=PRECISIONS[precision]).reshape(-1)
    if c.size == 0 or not np.isfinite(c).all():
        raise ValueError("a code table needs at least one entry, all finite")
    return _encoder(c.tobytes(), precision)


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
