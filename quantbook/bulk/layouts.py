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
  saturate.  Computed by :class:`~quantbook.codebooks.encoding.ScaledEncoder` (the search fits
  of :mod:`quantbook.derive` take it too).
* Packing: two codes per byte, the **first element in the low nibble** (torchao's
  ``pack_uint4``; bitsandbytes puts it in the high nibble); an odd count pads the last high
  nibble with the code of +0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..codebooks.encoding import ScaledEncoder, scaled_encoder
from ..scales import SCALED_BITS, scaled_values
from . import format as F

__all__ = ["SCALED_BITS", "scaled_table", "ScaledEncoder", "scaled_encoder", "pack_low_first",
           "unpack_low_first", "implements"]


def implements(backend: Any) -> bool:
    """Whether a backend computes the scaled layout."""
    return bool(getattr(backend, "scaled_layouts", False))


def scaled_table(code: Any, qmax: float) -> np.ndarray:
    """The float32 table of the layout (:func:`quantbook.scales.scaled_values`), checked as a
    code table."""
    return F.check_code_table(scaled_values(np.asarray(code, dtype=np.float64), qmax), SCALED_BITS)


def pack_low_first(idx: np.ndarray, pad: int) -> np.ndarray:
    """Two 4-bit codes a byte, the first in the low nibble."""
    idx = np.asarray(idx, dtype=np.uint8).reshape(-1)
    if idx.size % 2:
        idx = np.append(idx, np.uint8(pad))
    return (idx[0::2] | (idx[1::2] << np.uint8(4))).astype(np.uint8)


def unpack_low_first(packed: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` 4-bit codes of ``packed``, low nibble first (uint8)."""
    p = np.asarray(packed, dtype=np.uint8).reshape(-1)
    out = np.empty((p.size, 2), np.uint8)
    out[:, 0] = p & np.uint8(0x0F)
    out[:, 1] = p >> np.uint8(4)
    return out.reshape(-1)[:n]


def packed_length(n: int) -> int:
    return -(-int(n) // 2)

