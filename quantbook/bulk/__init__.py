"""Bulk block-wise quantization of whole arrays (bitsandbytes-compatible byte format).

``quantize`` / ``dequantize`` / ``QuantState``; the format is defined by
:mod:`quantbook.bulk.reference`.  numba (``backend="cpu"``) is imported only when used.
"""

from .api import BACKENDS, dequantize, quantize, resolve_codebook
from .state import QuantState

__all__ = ["quantize", "dequantize", "QuantState", "resolve_codebook", "BACKENDS"]
