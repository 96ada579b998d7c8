"""quantbook: design, derive, audit, export and use the codebooks of block-wise k-bit quantization.

Data flows one way: distributions → derivation (:mod:`quantbook.derive`) → :class:`Codebook`
→ export / quantize / audit (:mod:`quantbook.verify`).
"""

from .codebooks import REGISTRY, Codebook, CodebookError, get, load, names
from .bulk import QuantState, dequantize, quantize  # numpy only; numba is imported lazily

__version__ = "0.1.0"

__all__ = ["Codebook", "CodebookError", "REGISTRY", "get", "load", "names", "__version__",
           "quantize", "dequantize", "QuantState"]
