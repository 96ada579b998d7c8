"""Binary array exports: ``npy`` (the index→value table) and ``bnb`` (a bitsandbytes quant map).

``npy``: ``np.save`` of :attr:`Codebook.code_f32` — the float32 index→value table in
stored order (``np.load(path)[index]`` decodes a code).

``bnb``: an ``.npz`` archive (``np.savez``) holding

* ``quant_map`` — float32, ``2**bits`` entries (4-bit: 16; 8-bit: 256), the table in
  stored order, so that every index decodes to a level.  A 4-bit table with fewer entries
  is padded with ``0.0`` when zero is one of its levels, else with its last entry.  An 8-bit
  table must be ascending, as bitsandbytes' 8-bit quantizer (``quantize_blockwise``) finds
  a value's code by a binary search of the map; a shorter one is padded with its last
  (largest) entry, which keeps it ascending and every index in place (bitsandbytes'
  ``create_dynamic_map`` pads with zeros and sorts, which would move the indices);
* ``quant_type`` — 0-d unicode array: ``"nf4"`` / ``"fp4"`` when the float32 table is
  bit-identical to bitsandbytes' own NF4 / FP4 table (``get_4bit_type``, or the CPU
  backend's rounded FP4), otherwise the codebook's name or ``name``, as
  :func:`quantbook.codebooks.bnb.bnb_quant_type` gives it (the same as a
  :class:`quantbook.QuantState`'s); a table beyond ±1 is warned about as ``quantize`` does;
* ``bnb_builtin`` — 0-d bool: whether ``quant_type`` names a bitsandbytes type;
* ``name``, ``bits``.

Where bitsandbytes expects a quant map — ``QuantState(absmax, shape, code=quant_map,
blocksize, quant_type, dtype)``, the ``"quant_map"`` entry of ``QuantState.as_dict()`` /
``from_dict()``, or the ``code=`` argument of ``dequantize_blockwise`` — load it with::

    d = np.load("table.npz"); quant_map = torch.from_numpy(d["quant_map"]); quant_type = str(d["quant_type"])

Caveat: ``QuantState.from_dict`` only accepts ``quant_type`` ``"nf4"`` or ``"fp4"``, and
bitsandbytes' 4-bit kernels decode those two with built-in tables rather than the stored
quant map; a custom table (``bnb_builtin`` false) is honoured only by code that reads
``quant_state.code`` (e.g. ``dequantize_blockwise`` on one code per byte, or quantbook's
own :func:`quantbook.dequantize`).
(bitsandbytes-foundation/bitsandbytes, bitsandbytes/functional.py, class QuantState.)
"""

from __future__ import annotations

import io

import numpy as np

from ..codebooks.bnb import BNB_TYPES, bnb_quant_type, warn_beyond_absmax
from ..codebooks.codebook import Codebook
from ..codebooks.require import require_codebook
from ..codebooks.vector import VectorCodebook

__all__ = ["npy_bytes", "bnb_quant_map", "bnb_quant_type", "bnb_bytes", "vector_npy_bytes"]


def npy_bytes(cb: Codebook) -> bytes:
    """``.npy`` file contents: the float32 index→value table of ``cb``."""
    require_codebook(cb, "npy_bytes")
    buf = io.BytesIO()
    np.save(buf, cb.code_f32, allow_pickle=False)
    return buf.getvalue()


def vector_npy_bytes(cb: VectorCodebook) -> bytes:
    """``.npy`` file contents: the float32 ``(N, P)`` points of a vector codebook
    (``np.load(path)[index]`` decodes an index)."""
    require_codebook(cb, "vector_npy_bytes", vector=True)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(cb.points, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


def bnb_quant_map(cb: Codebook) -> np.ndarray:
    """The float32 quant map of ``cb``: ``2**bits`` entries (``bits`` must be 4 or 8)."""
    require_codebook(cb, "bnb_quant_map")
    if cb.bits not in (4, 8):
        raise ValueError(
            f"bnb format needs a 4-bit or 8-bit codebook (bitsandbytes quant maps have 16 or 256 "
            f"entries); {cb.name!r} has {cb.bits} bits"
        )
    code = cb.code_f32
    size = 2**cb.bits
    if cb.bits == 8 and np.any(np.diff(code) < 0):
        raise ValueError(f"{cb.name!r}: bitsandbytes' 8-bit quantizer searches its quant map as an ascending "
                         "table, and this one is stored in another order")
    if code.size < size:
        pad = np.float32(0.0) if cb.bits == 4 and np.any(cb.levels == 0.0) else code[-1]
        code = np.concatenate([code, np.full(size - code.size, pad, dtype=np.float32)])
    return code


def bnb_bytes(cb: Codebook, name: str | None = None) -> bytes:
    """``.npz`` file contents for the ``bnb`` format (see the module docstring)."""
    require_codebook(cb, "bnb_bytes")
    quant_type, builtin = bnb_quant_type(cb, name)
    if name is not None and not builtin and name.lower() in BNB_TYPES:
        raise ValueError(f"--name {name!r} is a type bitsandbytes decodes with its built-in table, and "
                         f"{cb.name!r} is not that table: give another name")
    warn_beyond_absmax(cb)
    buf = io.BytesIO()
    np.savez(
        buf,
        quant_map=bnb_quant_map(cb),
        quant_type=np.array(quant_type),
        bnb_builtin=np.array(builtin),
        name=np.array(cb.name),
        bits=np.array(cb.bits),
    )
    return buf.getvalue()
