"""Exporting a :class:`~quantbook.Codebook` to files other programs read.

Formats (:data:`FORMATS`):

``json``  the Codebook dict (levels, code, bits, name, source, recipe); float64 values
          written with Python's shortest round-tripping repr, so ``Codebook.from_json``
          and ``quantbook show FILE.json`` give back identical float64 levels (text);
``c``     a C99 / C++ header (:mod:`.c_header`): float32 tables as 9-significant-digit
          literals (exact hex value in a comment), thresholds, code order, size macros,
          include guard, inline encode/decode (text); with a :class:`HeaderLayout`, also the
          scaled layout's rule, block size, qmax, scale bytes and rescaled table;
``cuda``  the same with ``__constant__`` arrays and ``__device__`` functions (text);
``npy``   the float32 index→value table, ``np.save`` format (binary, :mod:`.arrays`);
``bnb``   an ``.npz`` with a bitsandbytes ``quant_map`` and ``quant_type`` (binary, :mod:`.arrays`).

A :class:`~quantbook.codebooks.vector.VectorCodebook` exports as ``json`` (its own dict, with
``"kind": "vector"``), ``c``/``cuda`` (:func:`.c_header.vector_c_header`: the N×P float32
table, decode and nearest-point encode) and ``npy`` (the (N, P) float32 points); ``bnb``
has no vector form.

:func:`export` returns ``str`` for text formats and ``bytes`` for binary ones;
:func:`write_output` (from :mod:`quantbook.io.files`) writes either to a file, atomically.
"""

from __future__ import annotations

from ..codebooks.codebook import Codebook
from ..codebooks.require import require_codebook
from ..codebooks.vector import VectorCodebook
from ..io.files import OutputPathError, check_output_path, write_output
from .arrays import bnb_bytes, bnb_quant_map, bnb_quant_type, npy_bytes, vector_npy_bytes
from .c_header import HeaderLayout, c_float_literal, c_header, vector_c_header
from .identifiers import IdentifierError, c_identifier

__all__ = ["FORMATS", "BINARY_FORMATS", "export", "write_output", "check_output_path", "OutputPathError",
           "c_header", "HeaderLayout", "c_float_literal", "c_identifier", "IdentifierError", "npy_bytes", "bnb_bytes",
           "bnb_quant_map", "bnb_quant_type", "vector_c_header", "vector_npy_bytes", "VECTOR_FORMATS"]

#: the formats `export` writes for a codebook
FORMATS = ("json", "c", "cuda", "npy", "bnb")
#: the formats whose output is bytes (the others are text)
BINARY_FORMATS = frozenset({"npy", "bnb"})
#: the formats a vector codebook has
VECTOR_FORMATS = ("json", "c", "cuda", "npy")


def export(cb: Codebook | VectorCodebook, fmt: str, name: str | None = None,
           layout: HeaderLayout | None = None, spelling: str | None = None) -> str | bytes:
    """``cb`` in format ``fmt``; ``name`` overrides the C identifier (c, cuda, bnb); ``layout``
    (c, cuda) adds a scaled layout's macros and table to the header; ``spelling`` is how the
    command line named the codebook, for the command a header says made it."""
    require_codebook(cb, "export", vector=None)
    if isinstance(cb, VectorCodebook):
        return _export_vector(cb, fmt, name, layout, spelling)
    if layout is not None and fmt not in ("c", "cuda"):
        raise ValueError(f"a scaled layout is written only into c and cuda headers, not format {fmt!r}")
    if fmt == "json":
        return cb.to_json() + "\n"
    if fmt in ("c", "cuda"):
        return c_header(cb, name=name, cuda=fmt == "cuda", layout=layout, spelling=spelling)
    if fmt == "npy":
        return npy_bytes(cb)
    if fmt == "bnb":
        return bnb_bytes(cb, name=name)
    raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")


def _export_vector(cb: VectorCodebook, fmt: str, name: str | None, layout: HeaderLayout | None,
                   spelling: str | None) -> str | bytes:
    if layout is not None:
        raise ValueError("a scaled layout (--scale) applies to scalar codebooks, not to vector codebooks")
    if fmt == "json":
        return cb.to_json() + "\n"
    if fmt in ("c", "cuda"):
        return vector_c_header(cb, name=name, cuda=fmt == "cuda", spelling=spelling)
    if fmt == "npy":
        return vector_npy_bytes(cb)
    raise ValueError(f"a vector codebook exports as {', '.join(VECTOR_FORMATS)}, not {fmt!r}")
