"""Host-side encoder tables for the GPU kernels (numpy only; no GPU, no CuPy).

The encoder is the format's (:mod:`quantbook.codebooks.encoding`, float32): ``rank =
#{k : bounds[k] < y}``, ``index = order[rank]``.  Here it is laid out for the kernels: the
clamp of ``y`` to [-1, 1] is folded into the table (bounds >= 1 become +inf; the bounds < -1
are dropped and the ranks start after them: the same code for every float32 ``y``, +-inf
included), so the kernel does not clamp; the bounds are padded with ``+inf`` to ``P``
entries (``P = 2**bits`` for 1/2/4-bit packing, 256 for a byte per code: a compile-time
search depth), held in shared memory with ``order``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..format import check_code_table, code_encoder

__all__ = ["EncoderTables", "encoder_tables", "encode_with_tables", "search_size", "MAX_TABLE"]

MAX_TABLE = 256


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
    enc = code_encoder(c)
    bounds, order = enc.bounds, enc.order
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
