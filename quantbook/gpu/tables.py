"""Host-side encoder tables for the GPU kernels (numpy only; no GPU, no CuPy).

The bulk format's encoding rule (bitsandbytes 0.50.2, ``torch.bucketize`` on float32
midpoints; see ``quantbook.bulk.reference``): ``order`` = stable argsort of the code table
by value, ``bounds[k] = float32(float32(sorted[k] + sorted[k+1]) / 2)``,
``rank = #{k : bounds[k] < y}`` (a value on a bound goes to the lower rank),
``index = order[rank]``.

The clamp of ``y`` to [-1, 1] is folded into the table (bounds >= 1 become +inf; the
bounds < -1 are dropped and the ranks start after them: the same code for every float32
``y``, +-inf included), so the kernel does not clamp.  The quantize kernel binary-searches ``bounds`` padded with ``+inf`` to ``P`` entries
(``P = 2**bits`` for 1/2/4-bit packing, 256 for a byte per code: a compile-time search
depth), held in shared memory with ``order``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..bulk.reference import sorted_bounds as ref_sorted_bounds

__all__ = ["EncoderTables", "encoder_tables", "encode_with_tables", "check_code_table",
           "sorted_bounds", "search_size", "MAX_TABLE"]

MAX_TABLE = 256


def check_code_table(code_f32, bits: int | None = None) -> np.ndarray:
    """Validate a code table: 1-D, 1..256 (and <= 2**bits) finite values.  Returns float32."""
    c = np.ascontiguousarray(np.asarray(code_f32, dtype=np.float32))
    limit = MAX_TABLE if bits is None else min(MAX_TABLE, 1 << int(bits))
    if c.ndim != 1 or not 1 <= c.size <= limit:
        raise ValueError(f"code table must be 1-D with 1..{limit} entries, got shape {c.shape}")
    if not np.isfinite(c).all():
        raise ValueError("code table entries must be finite")
    return c


def sorted_bounds(code_f32) -> tuple[np.ndarray, np.ndarray]:
    """``(bounds float32 [K-1], order int64 [K])`` of the encoding rule (module docstring)."""
    bounds, order = ref_sorted_bounds(check_code_table(code_f32))
    return bounds, order.astype(np.int64)


@dataclass(frozen=True)
class EncoderTables:
    """What the quantize kernel receives: ``bounds`` (float32, length ``P``: the bounds with
    the clamp folded in, then +inf), ``order`` (int32, length ``P``: code index of each
    rank), ``P`` (a power of two >= the table size: the kernel's search depth is log2 P),
    ``K`` (number of reachable ranks: the table size less the bounds below -1; NaN takes
    rank ``K - 1`` as in numpy's searchsorted) and ``ident`` (``order`` is 0..K-1, so
    the kernel skips the lookup)."""

    bounds: np.ndarray
    order: np.ndarray
    P: int
    K: int
    ident: bool


_CACHE: dict[tuple, EncoderTables] = {}


def search_size(packing: int) -> int:
    """P for a kernel packing: 2**bits for 1/2/4-bit packing, 256 for a byte per code."""
    return 1 << (8 if packing == 8 else packing)


def encoder_tables(code_f32, P: int | None = None) -> EncoderTables:
    """Tables for a table of ``K`` codes, padded to ``P`` entries (default: the next power
    of two >= K; the kernels use :func:`search_size` of their packing)."""
    c = check_code_table(code_f32)
    k = c.size
    if P is None:
        P = 1 << max(1, (k - 1).bit_length())
    if P < max(2, k) or P & (P - 1) or P > MAX_TABLE:
        raise ValueError(f"P must be a power of two in [max(2, K), {MAX_TABLE}], got {P} for K={k}")
    key = (c.tobytes(), P)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    bounds, order = sorted_bounds(c)
    # fold the clamp of y to [-1, 1] into the table, for every float32 y (+-inf too):
    # the m bounds < -1 are below every clamped y, so drop them and start the ranks at m;
    # bounds >= 1 are above every clamped y: +inf.
    m = int(np.count_nonzero(bounds < -1))
    kept = bounds[m:]
    b = np.full(P, np.inf, dtype=np.float32)
    b[: kept.size] = np.where(kept >= 1, np.float32(np.inf), kept)
    o = np.zeros(P, dtype=np.int32)
    o[: k - m] = order[m:]
    b.setflags(write=False)
    o.setflags(write=False)
    ident = m == 0 and bool(np.array_equal(order, np.arange(k)))
    tabs = EncoderTables(b, o, int(P), int(k - m), ident)
    _CACHE[key] = tabs
    return tabs


def encode_with_tables(y, tabs: EncoderTables) -> np.ndarray:
    """numpy emulation of the kernel's branchless binary search on float32 ``y`` (scaled,
    NOT clamped: the table does it): documents, and lets CPU tests check, what the device
    computes."""
    y = np.asarray(y, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        k = np.where(tabs.bounds[tabs.P // 2 - 1] < y, tabs.P // 2, 0)
        s = tabs.P >> 2
        while s > 0:
            k = np.where(tabs.bounds[k + s - 1] < y, k + s, k)
            s >>= 1
    k = np.where(np.isnan(y), tabs.K - 1, k)
    return (k if tabs.ident else tabs.order[k]).astype(np.int64)
