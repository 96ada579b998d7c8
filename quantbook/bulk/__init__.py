"""Bulk block-wise quantization of whole arrays (bitsandbytes-compatible byte format).

* :mod:`.format` — the byte format, stated once; :mod:`.nested` — nested statistics;
* :mod:`.backend` — the backend interface and registry; the backends: :mod:`.reference`
  (``numpy``), :mod:`.cpu` (``cpu``, numba), :mod:`.gpu` (``gpu``, CuPy) — numba and CuPy
  are imported only when used;
* :mod:`.layouts` / :mod:`.scaled` — the scaled layout of the other scale rules (NVFP4, MXFP4,
  float16; docs/scales.md), computed by backends that declare ``scaled_layouts``;
* :mod:`.api` — ``quantize`` / ``dequantize``; :mod:`.state` — ``QuantState``;
* :mod:`.vq` — vector codebooks: ``quantize_vq`` / ``dequantize_vq``, one index per P
  weights and a scale per group (:mod:`.vq_state` — ``VQState``).
"""

from . import reference, cpu, gpu  # noqa: F401,I001  (each registers its backend)
from .api import CodebookRangeWarning, dequantize, quantize, resolve_codebook
from .backend import BACKENDS, Backend
from .state import QuantState
from .vq import VQState, dequantize_vq, quantize_vq

__all__ = ["quantize", "dequantize", "QuantState", "resolve_codebook", "Backend", "BACKENDS",
           "quantize_vq", "dequantize_vq", "VQState", "CodebookRangeWarning"]
