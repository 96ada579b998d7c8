"""The scaled byte layout (NVFP4, MXFP4 and the float16/bfloat16 block formats), stated once
in docs/scales.md: the code table, the encoder, the packing.  The scale itself is the rule's
(:mod:`quantbook.scales`); :mod:`.scaled` puts the pieces together, the backends compute them.

* Table: a codebook of at most 16 entries in stored order, times ``qmax / max|code|`` in
  float64, rounded to float32 — so its largest magnitude is ``qmax`` (E2M1's 6) and the
  registered ``e2m1`` table becomes E2M1's own values, index = E2M1 bit pattern.
* Encoder: nearest table value; a value exactly half-way goes to the neighbour stored at an
  even index when exactly one of the two is (for E2M1 this is round-to-nearest-even, as
  torchao's ``f32_to_f4_unpacked``), else to the lower; a value stored twice (``±0``) goes to
  the entry whose sign bit matches ``y``'s (E2M1's ``-0`` is code 8).  Out-of-range values
  saturate.
* Packing: two codes per byte, the **first element in the low nibble** (torchao's
  ``pack_uint4``; bitsandbytes puts it in the high nibble); an odd count pads the last high
  nibble with the code of +0.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from ..codebooks.encoding import midpoints
from ..scales import SCALED_BITS, scaled_values
from . import format as F

__all__ = ["SCALED_BITS", "scaled_table", "ScaledEncoder", "scaled_encoder", "pack_low_first",
           "unpack_low_first", "implements"]

_F = np.float32


def implements(backend: Any) -> bool:
    """Whether a backend computes the scaled layout."""
    return bool(getattr(backend, "scaled_layouts", False))


def scaled_table(code: Any, qmax: float) -> np.ndarray:
    """The float32 table of the layout (:func:`quantbook.scales.scaled_values`), checked as a
    code table."""
    return F.check_code_table(scaled_values(np.asarray(code, dtype=np.float64), qmax), SCALED_BITS)


class ScaledEncoder:
    """The encoder of a scaled-layout table (module docstring), as arrays the kernels use:
    ``mids`` (float32 midpoints of the sorted distinct values), ``up`` (a tie at ``mids[j]``
    goes up), ``pos``/``neg`` (the index of each distinct value for ``y`` without/with the
    sign bit)."""

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
        for a in (self.values, self.mids, self.up, pos, neg):   # scaled_encoder shares one per table
            a.setflags(write=False)
        self.zero_index = int(self(np.zeros(1, _F))[0])

    def __call__(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, dtype=_F)
        r = np.searchsorted(self.mids, y, side="left")
        if self.mids.size:
            rc = np.minimum(r, self.mids.size - 1)
            r = r + ((r < self.mids.size) & (y == self.mids[rc]) & self.up[rc])
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
def _encoder(table_bytes: bytes) -> ScaledEncoder:
    return ScaledEncoder(np.frombuffer(table_bytes, dtype=_F))


def scaled_encoder(table: np.ndarray) -> ScaledEncoder:
    return _encoder(np.ascontiguousarray(table, dtype=_F).tobytes())


def pack_low_first(idx: np.ndarray, pad: int) -> np.ndarray:
    """Two 4-bit codes a byte, the first in the low nibble."""
    idx = np.asarray(idx, dtype=np.uint8).reshape(-1)
    if idx.size % 2:
        idx = np.append(idx, np.uint8(pad))
    return (idx[0::2] | (idx[1::2] << np.uint8(4))).astype(np.uint8)


def unpack_low_first(packed: np.ndarray, n: int) -> np.ndarray:
    p = np.asarray(packed, dtype=np.uint8).reshape(-1)
    out = np.empty((p.size, 2), np.uint8)
    out[:, 0] = p & np.uint8(0x0F)
    out[:, 1] = p >> np.uint8(4)
    return out.reshape(-1)[:n]


def packed_length(n: int) -> int:
    return -(-int(n) // 2)

