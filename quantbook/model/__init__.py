"""Real model weights: reading safetensors files, evaluating codebooks on them, fitting to them.

:mod:`.io` reads tensors one at a time (bf16 included); :mod:`.evaluate` measures the
quantization error of each codebook through the bulk API; :mod:`.specs` names codebooks on
the command line (registry, JSON, ``nfK``, ``lloyd-l2-64`` ...); :mod:`.source` makes a
model's weights an empirical source for the derivation engine.
"""

from .evaluate import ErrorSums, ModelReport, evaluate_model, storage_bits
from .io import TensorInfo, iter_tensors, list_tensors, read_tensor, sample_weights
from .source import install_source_parser, safetensors_source
from .specs import resolve_codebook, resolve_codebooks

__all__ = ["ErrorSums", "ModelReport", "evaluate_model", "storage_bits", "TensorInfo", "iter_tensors",
           "list_tensors", "read_tensor", "sample_weights", "install_source_parser", "safetensors_source",
           "resolve_codebook", "resolve_codebooks"]
