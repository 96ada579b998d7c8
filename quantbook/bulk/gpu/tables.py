"""Host-side encoder tables for the GPU kernels (numpy only; no GPU, no CuPy).

The encoder is the format's (:mod:`quantbook.codebooks.encoding`, float32): ``rank =
#{k : bounds[k] < y}``, ``index = order[rank]``.  Here it is laid out for the kernels:

* the clamp of ``y`` to [-1, 1] is folded into the table (bounds >= 1 become +inf; the
  bounds < -1 are dropped and the ranks start after them: the same code for every float32
  ``y``, +-inf included), so the kernel does not clamp;
* a **bucket table** holds the rank of the smallest value of each bucket of ``y``; within
  a bucket the rank can only grow past the bounds that lie inside it, at most
  ``2**steps - 1`` of them, so a binary search of ``steps`` compares over
  ``bounds[lo : lo + 2**steps - 1]`` finishes it (the bounds are padded with +inf).  Two
  layouts (:func:`bucket_index`):

  - *linear*, for tables of up to 16 codes: ``u = float32(y + 385)`` and its bits ``>> 10``,
    less those of 384: 65 buckets of width 1/32 over ``|y| <= 1`` (``y + 385`` rounds to a
    multiple of 2**-15, so the bucket is a non-decreasing function of ``y``), uint32 entries
    holding 128 x the rank.  The kernel keeps one copy of this table, of the bounds and of
    the order for each of the 32 shared-memory banks (entry ``k`` of lane ``l`` at word
    ``32 k + l``, hence the 128), so a warp's lookups never wait on each other.  For NF4
    ``steps`` is 1: two conflict-free shared reads and one compare a value.  It holds only
    the ``y`` of a finite block, ``|y| <= 1 + 2**-20`` (``x * float32(1/s)`` exceeds 1 by at
    most an ulp), and NaN, whose bucket is read and overridden;
  - *fine*, for larger tables (codes of a byte): the sign, the exponent's low seven bits
    and six mantissa bits (16384 buckets of relative width <= 1/64), uint8 entries holding
    the rank.  Dropping the exponent's top bit limits it to ``|y| < 2`` (and NaN, whose
    bucket is read and overridden): what the kernel's ``y = x / absmax`` always is.  For
    bitsandbytes' dynamic map ``steps`` is 1;
* NaN takes rank ``K - 1``, as numpy's ``searchsorted`` (the kernel tests for it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..format import check_code_table, code_encoder

__all__ = ["EncoderTables", "encoder_tables", "encode_with_tables", "search_size", "bucket_index",
           "fine_layout", "MAX_TABLE", "LIN_ADD", "LIN_SHIFT", "LIN_BASE", "N_LIN", "LIN_ROWS", "LIN_YMAX", "FINE_SHIFT",
           "N_FINE", "FINE_LOW", "BUCKET_BYTES"]

MAX_TABLE = 256
#: linear layout: the bucket of y is (bits(float32(y + LIN_ADD)) >> LIN_SHIFT) - LIN_BASE
LIN_ADD = 385.0
LIN_SHIFT = 10
LIN_BASE = int(np.array(384.0, np.float32).view(np.uint32)) >> LIN_SHIFT
#: linear layout: buckets (y = -1 .. 1 in steps of 1/32, both ends included)
N_LIN = 65
#: linear layout: rows of bounds a kernel holds (15 bounds and 2**4 of +inf padding, at most)
LIN_ROWS = 32
#: linear layout: the largest |y| it holds (a kernel's finite block: at most 1 + 2**-23)
LIN_YMAX = 1.0 + 2.0**-20
#: fine layout: the bits are shifted right by this much, and the exponent's top bit dropped
FINE_SHIFT = 17
N_FINE = 1 << (31 - FINE_SHIFT)
#: fine layout: the index bits below the sign (the exponent's low seven, six of the mantissa)
FINE_LOW = N_FINE // 2 - 1
#: bytes of the fine layout's table (what a kernel copies to shared memory)
BUCKET_BYTES = N_FINE


@dataclass(frozen=True)
class EncoderTables:
    """What the quantize kernel receives: ``bucket`` (the linear layout: uint32, ``N_LIN``,
    128 x the rank of each bucket's smallest value, a byte offset into the kernel's
    bank-replicated bounds; the fine layout, ``fine``: uint8, ``N_FINE``, the rank),
    ``bounds`` (float32: the
    bounds with the clamp folded in, then +inf up to ``K - 1 + 2**steps`` entries), ``order``
    (int32, 256: the code index of each rank), ``steps`` (compares a value needs), ``K``
    (reachable ranks: the table size less the bounds below -1) and ``ident`` (``order`` is
    0..K-1, so the kernel skips the lookup).  ``P`` is the largest table the kernel's packing
    allows (a power of two >= the table size; :func:`search_size`)."""

    bounds: np.ndarray
    order: np.ndarray
    bucket: np.ndarray
    steps: int
    P: int
    K: int
    ident: bool

    @property
    def fine(self) -> bool:
        """The fine layout (:func:`fine_layout` of ``P``)."""
        return fine_layout(self.P)


#: tables by code table and P, at most _CACHE_SIZE of them (at most about 18 KB each)
_CACHE: dict[tuple, EncoderTables] = {}
_CACHE_SIZE = 256


def search_size(packing: int) -> int:
    """P for a kernel packing: 2**bits for 1/2/4-bit packing, 256 for a byte per code."""
    return 1 << (8 if packing == 8 else packing)


def fine_layout(P: int) -> bool:
    """Whether the tables of a ``P`` (:func:`search_size`) use the fine layout: those of
    more than 16 codes (the kernels': codes of a byte); the others use the linear one."""
    return P > 16


def bucket_index(y: ArrayLike, fine: bool) -> np.ndarray:
    """The bucket of float32 ``y`` in a layout (as the kernel computes it).  Each layout holds
    only the ``y`` the kernel can meet, and NaN (which lands in some bucket and is
    overridden): the linear one ``|y| <= LIN_YMAX``, the fine one ``|y| < 2``; other ``y``
    are an error here."""
    bits = np.asarray(y, dtype=np.float32).view(np.uint32)
    mag = bits & np.uint32(0x7FFFFFFF)
    if not fine:
        if np.any((mag > np.array(LIN_YMAX, np.float32).view(np.uint32)) & (mag <= np.uint32(0x7F800000))):
            raise ValueError(f"the linear bucket layout holds only |y| <= {LIN_YMAX!r} and NaN")
        with np.errstate(invalid="ignore"):
            u = (np.asarray(y, dtype=np.float32) + np.float32(LIN_ADD)).view(np.uint32)
        # unsigned, then at most the last bucket: the kernel's clamp (only NaN needs it)
        return np.minimum((u >> np.uint32(LIN_SHIFT)) - np.uint32(LIN_BASE), np.uint32(N_LIN - 1))
    if np.any((mag >= np.uint32(0x40000000)) & (mag <= np.uint32(0x7F800000))):
        raise ValueError("the fine bucket layout holds only |y| < 2 and NaN")
    t, u = bits >> np.uint32(FINE_SHIFT), bits >> np.uint32(FINE_SHIFT + 1)
    return (t & np.uint32(FINE_LOW)) | (u & ~np.uint32(FINE_LOW))   # u: the sign, one bit higher


def _fine_ranges() -> tuple[np.ndarray, np.ndarray]:
    """(smallest, largest value) of every bucket of the fine layout, as float32."""
    idx = np.arange(N_FINE, dtype=np.uint32)   # the index's top bit is y's sign; the exponent's top bit is 0
    neg = idx > FINE_LOW
    lo_bits = (neg.astype(np.uint32) << np.uint32(31)) | ((idx & np.uint32(FINE_LOW)) << np.uint32(FINE_SHIFT))
    hi_bits = lo_bits | np.uint32((1 << FINE_SHIFT) - 1)
    a, b = lo_bits.view(np.float32), hi_bits.view(np.float32)
    return np.where(neg, b, a), np.where(neg, a, b)


def encoder_tables(code_f32: ArrayLike, P: int | None = None) -> EncoderTables:
    """Tables for a table of ``K`` codes; ``P`` (default: the next power of two >= K) only
    bounds the table size, as the kernels' packing does (:func:`search_size`)."""
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
    kept = np.where(bounds[m:] >= 1, np.float32(np.inf), bounds[m:]).astype(np.float32)
    fine = fine_layout(int(P))
    if fine:
        ymin, ymax = _fine_ranges()
        lo = np.searchsorted(kept, ymin, side="left")
        count = np.searchsorted(kept, ymax, side="left") - lo
    else:
        # the bucket is non-decreasing in y: a bound in a lower bucket than y is below y, one
        # in a higher bucket above it, so only those of y's own bucket need a compare
        kb = bucket_index(np.where(np.isfinite(kept), kept, 0), False)
        kb = np.where(np.isfinite(kept), kb, N_LIN)           # +inf: past every bucket
        lo = np.searchsorted(kb, np.arange(N_LIN), side="left")
        count = np.searchsorted(kb, np.arange(N_LIN), side="right") - lo
    steps = int(count.max()).bit_length()                 # 2**steps - 1 >= every count
    b = np.full(kept.size + (1 << steps), np.inf, dtype=np.float32)
    b[: kept.size] = kept
    if not fine and b.size > LIN_ROWS:   # 16 codes: 15 bounds and 16 of padding at most
        raise AssertionError(f"{b.size} bounds for the linear layout's {LIN_ROWS} rows")
    o = np.zeros(MAX_TABLE, dtype=np.int32)
    o[: k - m] = order[m:]
    bucket = lo.astype(np.uint8) if fine else (128 * lo).astype(np.uint32)
    for arr in (b, o, bucket):
        arr.setflags(write=False)
    ident = m == 0 and bool(np.array_equal(order, np.arange(k)))
    tabs = EncoderTables(b, o, bucket, steps, int(P), int(k - m), ident)
    if len(_CACHE) >= _CACHE_SIZE:   # many fitted codebooks: keep the memory bounded
        _CACHE.clear()
    _CACHE[key] = tabs
    return tabs


def encode_with_tables(y: ArrayLike, tabs: EncoderTables) -> np.ndarray:
    """numpy emulation of the kernel's encoder on float32 ``y`` (scaled, NOT clamped: the
    table does it; each layout holds only the ``y`` of :func:`bucket_index`): the bucket read, then
    ``steps`` compares of a branchless binary search.  Documents, and lets CPU tests check,
    what the device computes."""
    y = np.asarray(y, dtype=np.float32)
    k = tabs.bucket[bucket_index(y, tabs.fine)].astype(np.int64) // (1 if tabs.fine else 128)
    s = (1 << tabs.steps) >> 1
    with np.errstate(invalid="ignore"):
        while s > 0:
            k = np.where(tabs.bounds[k + s - 1] < y, k + s, k)
            s >>= 1
    k = np.where(np.isnan(y), tabs.K - 1, k)
    return (k if tabs.ident else tabs.order[k]).astype(np.int64)
