"""Real model weights: evaluating codebooks on them.

:mod:`.evaluate` measures the quantization error of each codebook through the bulk API.
Tensors are read by :mod:`quantbook.io.safetensors` (one at a time, bf16 included); codebooks
are named by :mod:`quantbook.naming`; :func:`safetensors_source` (from
:mod:`quantbook.derive.model_source`, loaded on first use: it imports the derivation engine)
makes a model's weights an empirical source for the derivation engine.
"""

from ..io.safetensors import TensorInfo, iter_tensors, list_tensors, read_tensor, sample_weights
from .evaluate import ErrorSums, ModelReport, evaluate_model, storage_bits

__all__ = ["ErrorSums", "ModelReport", "evaluate_model", "storage_bits", "TensorInfo", "iter_tensors",
           "list_tensors", "read_tensor", "sample_weights", "safetensors_source"]


def __getattr__(name: str):
    if name == "safetensors_source":  # the derivation engine is heavy: load it only when asked for
        from ..derive.model_source import safetensors_source

        return safetensors_source
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
