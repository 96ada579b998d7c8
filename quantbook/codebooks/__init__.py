"""The Codebook value type and the registry of published tables."""

from .codebook import Codebook, CodebookError, float32_ulp_distance
from .registry import REGISTRY, Published, get, load, names

__all__ = ["Codebook", "CodebookError", "float32_ulp_distance", "REGISTRY", "Published", "get",
           "load", "names"]
