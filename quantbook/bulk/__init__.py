"""Bulk block-wise quantization of whole arrays (bitsandbytes-compatible byte format).

* :mod:`.format` — the byte format, stated once; :mod:`.nested` — nested statistics;
* :mod:`.backend` — the backend interface and registry; the backends: :mod:`.reference`
  (``numpy``), :mod:`.cpu` (``cpu``, numba), :mod:`.gpu` (``gpu``, CuPy) — numba and CuPy
  are imported only when used;
* :mod:`.api` — ``quantize`` / ``dequantize``; :mod:`.state` — ``QuantState``.
"""

from . import reference, cpu, gpu  # noqa: F401,I001  (each registers its backend)
from .api import backend_names, dequantize, quantize, resolve_codebook
from .backend import BACKENDS, Backend
from .state import QuantState

__all__ = ["quantize", "dequantize", "QuantState", "resolve_codebook", "Backend", "BACKENDS",
           "backend_names"]
