"""Host-side encoder tables for the GPU kernels (numpy only; no GPU, no CuPy).

The encoder is the format's (:mod:`quantbook.codebooks.encoding`, float32): ``rank =
#{k : bounds[k] < y}``, ``index = order[rank]``.  Here it is laid out for the kernels:

* the clamp of ``y`` to [-1, 1] is folded into the table (bounds >= 1 become +inf; the
  bounds < -1 are dropped and the ranks start after them: the same code for every float32
  ``y``, +-inf included), so the kernel does not clamp;
* a **bucket table** (16 KB) holds the rank of the smallest value of each bucket of ``y``;
  within a bucket the rank can only grow past the bounds that lie inside it, at most
  ``2**steps - 1`` of them, so a binary search of ``steps`` compares over
  ``bounds[lo : lo + 2**steps - 1]`` finishes it (the bounds are padded with +inf).  Three
  layouts (:func:`bucket_index`):

  - *word*, for tables of up to 16 codes whose buckets of this layout each hold at most one
    bound (NF4 and most 4-bit codes): ``y``'s bits ``>> 20`` (sign, exponent and three
    mantissa bits: 4096 buckets of relative width <= 1/8), uint32 entries that hold the rank
    and the bound together, so a value needs one table read and no compare.  The low 20 bits
    of ``y``, complemented for a negative ``y``, grow with ``y`` inside a bucket (``klow``);
    an entry is ``(lo << 20) + 0xFFFFF - t``, with ``t`` the largest ``klow`` of a ``y`` at
    or below the bucket's bound (``0xFFFFF`` without one), so ``(entry + klow) >> 20`` is the
    rank: the sum carries into bit 20 exactly when ``y`` lies above the bound;
  - *coarse*, for the other tables of up to 16 codes: ``y``'s float32 bits ``>> 19`` (sign,
    exponent and four mantissa bits: 8192 buckets, each an interval of relative width
    <= 1/16), uint16 entries holding 4 x the rank.  For NF4 ``steps`` would be 1: one table
    read and one compare a value, where a plain binary search takes four;
  - *fine*, for tables of 256 (codes of a byte): the sign, the exponent's low seven bits
    and six mantissa bits (16384 buckets of relative width <= 1/64), uint8 entries holding
    the rank.  Dropping the exponent's top bit limits it to ``|y| < 2`` (and NaN, whose
    bucket is read and overridden): what the kernel's ``y = x / absmax`` always is.  For
    bitsandbytes' dynamic map ``steps`` is 1 (2 in the coarse layout);
* NaN takes rank ``K - 1``, as numpy's ``searchsorted`` (the kernel tests for it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from ..format import check_code_table, code_encoder

__all__ = ["EncoderTables", "encoder_tables", "encode_with_tables", "search_size", "bucket_index",
           "fine_layout", "MAX_TABLE", "BUCKET_SHIFT", "N_BUCKETS", "FINE_SHIFT", "N_FINE", "FINE_LOW",
           "WORD_SHIFT", "N_WORD", "WORD_LOW", "BUCKET_BYTES", "LAYOUTS", "search_tag"]

MAX_TABLE = 256
#: coarse layout: ``y``'s float32 bits are shifted right by this much to index the table
BUCKET_SHIFT = 19
N_BUCKETS = 1 << (32 - BUCKET_SHIFT)
#: fine layout: the bits are shifted right by this much, and the exponent's top bit dropped
FINE_SHIFT = 17
N_FINE = 1 << (31 - FINE_SHIFT)
#: fine layout: the index bits below the sign (the exponent's low seven, six of the mantissa)
FINE_LOW = N_FINE // 2 - 1
#: word layout: the bits are shifted right by this much; the bits below it are ``klow``
WORD_SHIFT = 20
N_WORD = 1 << (32 - WORD_SHIFT)
WORD_LOW = (1 << WORD_SHIFT) - 1
#: bytes of each layout's table (what a kernel copies to shared memory)
BUCKET_BYTES = 2 * N_BUCKETS
if not BUCKET_BYTES == N_FINE == 4 * N_WORD:   # the kernel copies BUCKET_BYTES of any table; not an assert,
    raise ImportError(f"the tables must be the same size: coarse {BUCKET_BYTES}, "   # which -O strips
                      f"fine {N_FINE}, word {4 * N_WORD} bytes")
#: the layouts, by the number the kernels know them by
LAYOUTS = ("coarse", "fine", "word")


def search_tag(layout: str, steps: int) -> str:
    """The kernels' name for the search after the table read: ``"w"`` for the word layout
    (none), else ``"s"`` and the number of compares."""
    return "w" if layout == "word" else f"s{steps}"


@dataclass(frozen=True)
class EncoderTables:
    """What the quantize kernel receives: ``bucket`` (the coarse layout: uint16, ``N_BUCKETS``,
    4 x the rank of each bucket's smallest value, a byte offset into ``bounds``; the fine
    layout: uint8, ``N_FINE``, the rank; the word layout: uint32, ``N_WORD``, rank and bound
    as the module says), ``layout`` (one of :data:`LAYOUTS`), ``bounds`` (float32: the
    bounds with the clamp folded in, then +inf up to ``K - 1 + 2**steps`` entries), ``order``
    (int32, 256: the code index of each rank), ``steps`` (compares a value needs after the
    table read: 0 in the word layout), ``K``
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
    layout: str

    @property
    def fine(self) -> bool:
        """The fine layout (:func:`fine_layout` of ``P``)."""
        return self.layout == "fine"

    @property
    def search(self) -> str:
        """:func:`search_tag` of these tables."""
        return search_tag(self.layout, self.steps)


#: tables by code table and P, at most _CACHE_SIZE of them (about 18 KB each)
_CACHE: dict[tuple, EncoderTables] = {}
_CACHE_SIZE = 256


def search_size(packing: int) -> int:
    """P for a kernel packing: 2**bits for 1/2/4-bit packing, 256 for a byte per code."""
    return 1 << (8 if packing == 8 else packing)


def fine_layout(P: int) -> bool:
    """Whether the tables of a kernel packing's ``P`` (:func:`search_size`) use the fine
    layout: those of codes of a byte (and only they)."""
    return P == MAX_TABLE


def bucket_index(y: ArrayLike, layout: str) -> np.ndarray:
    """The bucket of float32 ``y`` in a layout (as the kernel computes it).  The fine layout
    keeps the sign and drops the exponent's top bit, so it holds only ``|y| < 2`` (and NaN,
    which lands in some bucket and is overridden): other ``y`` are an error here."""
    bits = np.asarray(y, dtype=np.float32).view(np.uint32)
    if layout != "fine":
        return bits >> np.uint32(WORD_SHIFT if layout == "word" else BUCKET_SHIFT)
    mag = bits & np.uint32(0x7FFFFFFF)
    if np.any((mag >= np.uint32(0x40000000)) & (mag <= np.uint32(0x7F800000))):
        raise ValueError("the fine bucket layout holds only |y| < 2 and NaN")
    t, u = bits >> np.uint32(FINE_SHIFT), bits >> np.uint32(FINE_SHIFT + 1)
    return (t & np.uint32(FINE_LOW)) | (u & ~np.uint32(FINE_LOW))   # u: the sign, one bit higher


def _klow(bits: np.ndarray) -> np.ndarray:
    """The word layout's ``klow`` of float32 bits: the low bits, complemented when negative."""
    flip = np.where(bits >> np.uint32(31) == 1, np.uint32(WORD_LOW), np.uint32(0))
    return (bits ^ flip) & np.uint32(WORD_LOW)


def _bucket_ranges(layout: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(smallest, largest value, is-NaN-only) of every bucket of a layout, as float32."""
    if layout == "fine":   # the index's top bit is y's sign; the exponent's top bit is 0
        idx = np.arange(N_FINE, dtype=np.uint32)
        neg = idx > FINE_LOW
        lo_bits = (neg.astype(np.uint32) << np.uint32(31)) | ((idx & np.uint32(FINE_LOW)) << np.uint32(FINE_SHIFT))
        hi_bits = lo_bits | np.uint32((1 << FINE_SHIFT) - 1)
        a, b = lo_bits.view(np.float32), hi_bits.view(np.float32)
        return np.where(neg, b, a), np.where(neg, a, b), np.zeros(idx.size, bool)
    shift = WORD_SHIFT if layout == "word" else BUCKET_SHIFT
    idx = np.arange(1 << (32 - shift), dtype=np.uint32)
    lo_bits = idx << np.uint32(shift)
    hi_bits = lo_bits | np.uint32((1 << shift) - 1)
    neg = (idx >> np.uint32(31 - shift)) == 1
    a, b = lo_bits.view(np.float32), hi_bits.view(np.float32)
    ymin, ymax = np.where(neg, b, a), np.where(neg, a, b)
    exp_all_ones = ((lo_bits >> np.uint32(23)) & np.uint32(0xFF)) == 0xFF
    top_mant_zero = ((lo_bits >> np.uint32(shift)) & np.uint32((1 << (23 - shift)) - 1)) == 0
    inf = np.where(neg, -np.inf, np.inf).astype(np.float32)
    # the bucket of +-inf also holds NaNs (the kernel tests for NaN): only inf counts
    ymin = np.where(exp_all_ones & top_mant_zero, inf, ymin)
    ymax = np.where(exp_all_ones & top_mant_zero, inf, ymax)
    return ymin, ymax, exp_all_ones & ~top_mant_zero


def _ranks(kept: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, count)`` of every bucket of a layout: the rank of its smallest value and the
    number of bounds inside it (none in a bucket of NaNs alone)."""
    ymin, ymax, nan_only = _bucket_ranges(layout)
    lo = np.searchsorted(kept, ymin, side="left")
    hi = np.searchsorted(kept, ymax, side="left")
    return np.where(nan_only, 0, lo), np.where(nan_only, 0, hi - lo)


def _word_entries(kept: np.ndarray, lo: np.ndarray, count: np.ndarray) -> np.ndarray | None:
    """The word layout's table, or None when a bucket holds more than one bound."""
    if count.max() > 1:
        return None
    inside = count == 1
    b = (kept[np.minimum(lo[inside], kept.size - 1)] + np.float32(0)).view(np.uint32)   # -0.0 as +0.0
    if not np.array_equal(b >> np.uint32(WORD_SHIFT), np.flatnonzero(inside)):
        return None   # a bound outside its bucket's bits (none is): the coarse layout holds any
    t = np.full(lo.size, WORD_LOW, dtype=np.uint32)
    t[inside] = _klow(b)
    return (lo.astype(np.uint32) << np.uint32(WORD_SHIFT)) + (np.uint32(WORD_LOW) - t)


def encoder_tables(code_f32: ArrayLike, P: int | None = None, layout: str | None = None) -> EncoderTables:
    """Tables for a table of ``K`` codes; ``P`` (default: the next power of two >= K) only
    bounds the table size, as the kernels' packing does (:func:`search_size`).  ``layout``
    (default: the fine one for P = 256, else the word one where it holds the table, else the
    coarse one) names one of :data:`LAYOUTS`; a layout that cannot hold the table is an error."""
    c = check_code_table(code_f32)
    k = c.size
    if P is None:
        P = 1 << max(1, (k - 1).bit_length())
    if P < max(2, k) or P & (P - 1) or P > MAX_TABLE:
        raise ValueError(f"P must be a power of two in [max(2, K), {MAX_TABLE}], got {P} for K={k}")
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if layout is not None and (layout == "fine") != fine_layout(int(P)):
        raise ValueError(f"the {layout} layout does not hold tables of P = {P}")
    key = (c.tobytes(), P, layout)
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
    chosen = "fine" if fine_layout(int(P)) else "word" if layout in (None, "word") else "coarse"
    lo, count = _ranks(kept, chosen)
    bucket = _word_entries(kept, lo, count) if chosen == "word" else None
    if chosen == "word" and bucket is None:
        if layout == "word":
            raise ValueError("the word layout holds only tables with at most one bound in each of its buckets")
        chosen = "coarse"
        lo, count = _ranks(kept, chosen)
    # 2**steps - 1 >= every count; the word layout's entries hold their bound: no compare
    steps = 0 if chosen == "word" else int(count.max()).bit_length()
    b = np.full(kept.size + (1 << steps), np.inf, dtype=np.float32)
    b[: kept.size] = kept
    o = np.zeros(MAX_TABLE, dtype=np.int32)
    o[: k - m] = order[m:]
    if bucket is None:
        bucket = lo.astype(np.uint8) if chosen == "fine" else (4 * lo).astype(np.uint16)
    for arr in (b, o, bucket):
        arr.setflags(write=False)
    ident = m == 0 and bool(np.array_equal(order, np.arange(k)))
    tabs = EncoderTables(b, o, bucket, steps, int(P), int(k - m), ident, chosen)
    if len(_CACHE) >= _CACHE_SIZE:   # many fitted codebooks: keep the memory bounded
        _CACHE.clear()
    _CACHE[key] = tabs
    return tabs


def encode_with_tables(y: ArrayLike, tabs: EncoderTables) -> np.ndarray:
    """numpy emulation of the kernel's encoder on float32 ``y`` (scaled, NOT clamped: the
    table does it; the fine layout holds only ``|y| < 2`` and NaN): the bucket read, then
    ``steps`` compares of a branchless binary search, or the word layout's sum.  Documents,
    and lets CPU tests check, what the device computes."""
    y = np.asarray(y, dtype=np.float32)
    entry = tabs.bucket[bucket_index(y, tabs.layout)]
    if tabs.layout == "word":   # uint32, as the kernel adds: the sum stays below 2**26
        k = ((entry + _klow(y.view(np.uint32))) >> np.uint32(WORD_SHIFT)).astype(np.int64)
    else:
        k = entry.astype(np.int64) // (1 if tabs.fine else 4)
        s = (1 << tabs.steps) >> 1
        with np.errstate(invalid="ignore"):
            while s > 0:
                k = np.where(tabs.bounds[k + s - 1] < y, k + s, k)
                s >>= 1
    k = np.where(np.isnan(y), tabs.K - 1, k)
    return (k if tabs.ident else tabs.order[k]).astype(np.int64)
