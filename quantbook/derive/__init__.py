"""Derivation of codebooks: distributions and methods.  Data flows distributions → methods → Codebook."""

from .normal_float import PRECISIONS, default_offset, nf, nf_exact, parse_offset
from .nf_offset import derive_offset
from .recipes import derive_from_recipe
from .sources import Empirical, Laplace, Normal, Source, StudentT, parse_source
from .block import BlockDistribution, block_distribution
from .lloyd import LloydResult, lloyd, quantile, solve_lloyd
from .metrics import Evaluation, evaluate

__all__ = ["PRECISIONS", "default_offset", "nf", "nf_exact", "parse_offset", "derive_offset",
           "derive_from_recipe", "Source", "Normal", "Laplace", "StudentT", "Empirical", "parse_source",
           "BlockDistribution", "block_distribution", "lloyd", "solve_lloyd", "quantile", "LloydResult",
           "evaluate", "Evaluation"]
