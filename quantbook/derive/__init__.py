"""Derivation of codebooks: distributions and methods.  Data flows distributions → methods → Codebook."""

from .normal_float import PRECISIONS, default_offset, nf, nf_exact, parse_offset
from .nf_offset import derive_offset
from .recipes import derive_from_recipe

__all__ = ["PRECISIONS", "default_offset", "nf", "nf_exact", "parse_offset", "derive_offset",
           "derive_from_recipe"]
