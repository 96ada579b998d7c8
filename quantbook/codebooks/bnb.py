"""What bitsandbytes makes of a codebook stored in its absmax layout: the ``quant_type`` a
state or a quant-map file names, and whether the table suits the layout at all.

bitsandbytes' 4-bit kernels decode ``quant_type`` ``"nf4"`` and ``"fp4"`` with built-in
tables, whatever quant map is stored beside them (bitsandbytes-foundation/bitsandbytes,
``bitsandbytes/functional.py``, ``dequantize_4bit``).  So those two names are given only to
tables bit-identical to bitsandbytes' own; any other table keeps its name, prefixed
``custom-`` where the name is one of the two (in any case).
"""

from __future__ import annotations

import numpy as np

from ..errors import warn
from ..numerics.arguments import check_flag
from .codebook import Codebook
from .registry import REGISTRY
from .require import require_codebook

__all__ = ["BNB_TYPES", "bnb_quant_type", "stored_quant_type", "CodebookRangeWarning", "warn_beyond_absmax"]

#: bitsandbytes' built-in 4-bit types and the registry tables bit-identical to each (its CUDA
#: table, and the FP4 its CPU backend rounds)
BNB_TYPES = {"nf4": ("nf4",), "fp4": ("fp4", "fp4-bnb-cpu")}


def bnb_quant_type(cb: Codebook, name: str | None = None, layout_bnb: bool = True) -> tuple[str, bool]:
    """``(quant_type, builtin)``: ``"nf4"`` / ``"fp4"`` and True when ``cb``'s float32 table is
    bitsandbytes' own and it is stored in bitsandbytes' layout (``layout_bnb``); otherwise
    ``name`` (default the codebook's) and False, with ``custom-`` before a name bitsandbytes
    would read as a built-in type."""
    require_codebook(cb, "bnb_quant_type")
    builtin = _builtin_type(cb.code_f32) if check_flag(layout_bnb, "layout_bnb") else None
    if builtin is not None:
        return builtin, True
    label = cb.name if name is None else name
    return (f"custom-{label}" if label.lower() in BNB_TYPES else label), False


def stored_quant_type(quant_type: str, code_f32: np.ndarray, layout_bnb: bool) -> str:
    """The ``quant_type`` a stored state is read with: ``quant_type`` itself, unless it names a
    built-in type (any case): then that type where the float32 table ``code_f32`` in this layout
    is its table, spelt as bitsandbytes reads it, else ``custom-`` before it, as
    :func:`bnb_quant_type` names such a table.  quantbook's states before that rule named any
    table after its codebook (a float64 NF4 called ``nf4``, a scaled layout's table, one called
    ``NF4``), and bitsandbytes decodes ``nf4``/``fp4`` with its own tables."""
    if quant_type.lower() not in BNB_TYPES:
        return quant_type
    builtin = _builtin_type(code_f32) if layout_bnb else None
    return builtin if builtin == quant_type.lower() else f"custom-{quant_type}"


def _builtin_type(code_f32: np.ndarray) -> str | None:
    """The built-in type whose table ``code_f32`` (float32, stored order) is bit for bit, or None."""
    bits = np.ascontiguousarray(code_f32, dtype=np.float32).view(np.uint32)
    for qt, entries in BNB_TYPES.items():
        for entry in entries:
            ref = REGISTRY[entry].codebook.code_f32.view(np.uint32)
            if ref.shape == bits.shape and np.array_equal(ref, bits):
                return qt
    return None


class CodebookRangeWarning(UserWarning):
    """A codebook with levels beyond ±1 stored in bitsandbytes' absmax layout."""


def warn_beyond_absmax(cb: Codebook) -> None:
    """Absmax-normalised values lie in [-1, 1], so a level beyond it (an unnormalised table
    such as Max's quantizers of N(0, 1)) dequantizes past its block's absmax: bytes that
    are well defined, but rarely what was meant."""
    top = float(np.max(np.abs(cb.code_f32)))
    if top > 1:
        warn(f"codebook {cb.name!r} has levels up to {top:.6g} in magnitude, beyond the [-1, 1] of "
             "absmax-normalised values: those codes dequantize past their block's absmax; divide its "
             "levels by the largest, or store it with a scale rule (scale=, --scale), which rescales "
             "the table",
             CodebookRangeWarning)
