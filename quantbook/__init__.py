"""quantbook: design, derive, audit, export and use the codebooks of block-wise k-bit quantization.

Data flows one way: distributions → derivation (:mod:`quantbook.derive`) → :class:`Codebook`
→ export / quantize / audit (:mod:`quantbook.verify`).
"""

from importlib import metadata as _metadata

from .codebooks import REGISTRY, Codebook, CodebookError, get, load, names
from .bulk import QuantState, dequantize, quantize  # numpy only; numba is imported lazily

try:  # one version number: pyproject.toml's
    __version__ = _metadata.version("quantbook")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"

__all__ = ["Codebook", "CodebookError", "REGISTRY", "get", "load", "names", "__version__",
           "quantize", "dequantize", "QuantState"]
