"""Scale rules as lookup tables: the step table of a deterministic rule, for backends that
look block scales up per block, and the decode table of any rule with stored values of at
most 16 bits.

For one ``qmax`` and tensor scale, a deterministic rule's stored scale is a nondecreasing
step function of the block maximum ``M``.  The table lists where it steps, as float32 bit
patterns (for non-negative floats their unsigned order is the order of the values), and on
each step the stored value, the divisor (:meth:`ScaleRule.divisor`) and the decoded scale.
A backend finds a block's step by a binary search on the bits of its ``M``: a few integer
compares instead of the rule's float arithmetic, on the device where the maxima are.

The rule stays the one definition: the table is computed from the rule's own
``_encode`` / ``_divisor`` / ``decode``, exactly.  The steps are found by bisection on the
bits, starting from every power of two: an interval whose ends store the same value holds
no step (the rule is monotone), so only intervals whose ends differ are split, down to
neighbouring floats.  Monotonicity is checked on the result (the decoded scales of the steps
must increase).  A step whose stored value :meth:`ScaleRule.overflow` or
:meth:`ScaleRule.underflow` refuses is marked invalid; a block that lands there is the
rule's error, which the backend raises by asking the rule itself.

Decoding is elementwise in the stored value, so a rule whose stored values have at most 16
bits decodes through a table of every bit pattern (:func:`decode_table`), computed by the
rule's own ``decode``: one gather instead of its float arithmetic per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .rule import ScaleRule, check_qmax, get_rule

__all__ = ["StepTable", "step_table", "decode_table", "BUCKET_SHIFT"]

_F = np.float32
_TOP = np.uint32(0x7F7FFFFF)       # float32's largest finite value
_MAX_STEPS = 1 << 18               # a 16-bit stored scale has at most 2^16 values


@dataclass(frozen=True, eq=False)
class StepTable:
    """Step ``i`` holds the maxima whose float32 bits lie in ``[starts[i], starts[i + 1])``
    (the last step: up to float32's largest finite value).  ``stored``, ``factor``, ``scale``
    and ``valid`` are per step; ``divide`` is the rule's (:meth:`ScaleRule.divisor`).  An
    invalid step has NaN ``factor`` and ``scale``.  ``buckets[k]`` is the step holding the
    bits ``k << BUCKET_SHIFT`` (k = 0 .. 0x7F80), so the step of bits ``v`` lies in
    ``[buckets[v >> BUCKET_SHIFT], buckets[(v >> BUCKET_SHIFT) + 1]]``: a search of a few
    steps at most, whatever the table's size."""

    rule: str
    starts: np.ndarray
    stored: np.ndarray
    factor: np.ndarray
    divide: bool
    scale: np.ndarray
    valid: np.ndarray
    buckets: np.ndarray

    def index(self, amax: np.ndarray) -> np.ndarray:
        """The step of each finite non-negative float32 maximum (int64)."""
        bits = np.ascontiguousarray(amax, dtype=_F).reshape(-1).view(np.uint32)
        return np.searchsorted(self.starts, bits, side="right") - 1


#: a bucket is the maxima sharing their float32 bits above this many (sign, exponent and
#: 7 mantissa bits: a relative width of 1/128)
BUCKET_SHIFT = 16
_N_BUCKETS = (0x7F800000 >> BUCKET_SHIFT) + 1      # through +inf's: the last finite's has a successor


def _as_bits(stored: np.ndarray) -> np.ndarray:
    """Stored values as unsigned integers of their width, to compare them bit for bit."""
    a = np.ascontiguousarray(stored)
    return a.view(f"u{a.dtype.itemsize}")


def _steps(rule: ScaleRule, qmax: float, ts: Any) -> np.ndarray:
    """Sorted bits of every maximum at which the stored value differs from its predecessor's."""
    def stored_at(bits: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return _as_bits(rule._encode(bits.view(_F), qmax, ts))

    pts = np.unique(np.concatenate([np.arange(255, dtype=np.uint32) << np.uint32(23), [_TOP]])
                    ).astype(np.uint32)
    v = stored_at(pts)
    lo, hi, vlo, vhi = pts[:-1], pts[1:], v[:-1], v[1:]
    found = []
    while lo.size:
        if lo.size > _MAX_STEPS:
            raise ValueError(f"{rule.name}: more than {_MAX_STEPS} scale steps; no step table")
        keep = vlo != vhi
        lo, hi, vlo, vhi = lo[keep], hi[keep], vlo[keep], vhi[keep]
        adjacent = hi - lo == 1
        found.append(hi[adjacent])
        lo, hi, vlo, vhi = lo[~adjacent], hi[~adjacent], vlo[~adjacent], vhi[~adjacent]
        mid = lo + (hi - lo) // 2
        vm = stored_at(mid)
        lo, hi = np.concatenate([lo, mid]), np.concatenate([mid, hi])
        vlo, vhi = np.concatenate([vlo, vm]), np.concatenate([vm, vhi])
    return np.sort(np.concatenate(found)).astype(np.uint32)


@lru_cache(maxsize=32)
def _table(name: str, qmax: float, ts_bits: int | None) -> StepTable:
    rule = get_rule(name)
    ts = None if ts_bits is None else np.uint32(ts_bits).view(_F)
    starts = np.concatenate([np.zeros(1, np.uint32), _steps(rule, qmax, ts)])
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        stored = rule._encode(starts.view(_F), qmax, ts)
    valid = ~(rule.overflow(stored) | rule.underflow(stored, ts))
    with np.errstate(invalid="ignore", over="ignore"):
        dec = rule.decode(stored, ts)
    ok = dec[~rule.overflow(stored)]
    if not np.all(ok[1:] > ok[:-1]):
        raise ValueError(f"{rule.name}: its scale is not increasing in amax, so it has no step table")
    factor = np.full(stored.size, np.nan, _F)
    scale = np.full(stored.size, np.nan, _F)
    divide = False
    if valid.any():
        f, divide = rule._divisor(stored[valid], ts)
        factor[valid] = f
        scale[valid] = dec[valid]
    keys = np.arange(_N_BUCKETS, dtype=np.uint32) << np.uint32(BUCKET_SHIFT)
    buckets = (np.searchsorted(starts, keys, side="right") - 1).astype(np.int32)
    for a in (starts, stored, factor, scale, valid, buckets):
        a.setflags(write=False)
    return StepTable(rule.name, starts, stored, factor, bool(divide), scale, valid, buckets)


def step_table(rule: ScaleRule | str, qmax: float, tensor_scale: Any = None) -> StepTable:
    """The step table of a deterministic scaled-layout rule for ``qmax`` and the tensor scale
    (cached: a table is built once per rule, ``qmax`` and tensor scale)."""
    rule = get_rule(rule)
    if not rule.deterministic:
        raise ValueError(f"{rule.name} is not a function of the block maximum; it has no step table")
    if rule.layout != "scaled":
        raise ValueError(f"{rule.name} stores its scales in the {rule.layout} layout, where nearly "
                         "every float is a step; it has no step table")
    ts = None if tensor_scale is None else int(np.asarray(tensor_scale, dtype=_F).view(np.uint32))
    return _table(rule.name, check_qmax(qmax), ts)


@lru_cache(maxsize=32)
def _decode(name: str, ts_bits: int | None) -> np.ndarray:
    rule = get_rule(name)
    ts = None if ts_bits is None else np.uint32(ts_bits).view(_F)
    width = np.dtype(rule.stored_dtype).itemsize
    every = np.arange(1 << (8 * width), dtype=np.uint32).astype(f"u{width}").view(rule.stored_dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        t = np.array(rule.decode(every, ts), dtype=_F, order="C")   # owns its memory (not a view)
    t.setflags(write=False)
    return t


def decode_table(rule: ScaleRule | str, tensor_scale: Any = None) -> np.ndarray | None:
    """The float32 scale of every stored value, indexed by its bits (``2**8`` or ``2**16``
    entries), or None when the stored values are wider (bitsandbytes' float32 absmax)."""
    rule = get_rule(rule)
    if np.dtype(rule.stored_dtype).itemsize > 2:
        return None
    ts = None if tensor_scale is None else int(np.asarray(tensor_scale, dtype=_F).view(np.uint32))
    return _decode(rule.name, ts)
