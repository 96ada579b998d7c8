"""Derivation of codebooks: distributions and methods.  Data flows distributions → methods → Codebook."""

from ..errors import RoundingEdgeWarning
from .normal_float import PRECISIONS, default_offset, nf, nf_exact, parse_offset
from .nf_offset import derive_offset
from .recipes import (LloydRecipe, NFRecipe, QuantileRecipe, Recipe, RecipeError, derive_from_recipe,
                      parse_fixed)
from .sources import Empirical, Laplace, Normal, Source, StudentT, parse_source
from . import model_source  # noqa: F401,I001  (registers the FILE.safetensors source spelling)
from .block import BlockDistribution, block_distribution
from .lloyd import DerivationError, LloydResult, LloydWarning, lloyd, quantile, solve_lloyd
from .metrics import Evaluation, evaluate
from .search_lloyd import (SearchLloydResult, evaluate_search, search_block_errors, search_lloyd,
                           solve_search_lloyd)

__all__ = ["PRECISIONS", "default_offset", "nf", "nf_exact", "parse_offset", "derive_offset",
           "derive_from_recipe", "Recipe", "RecipeError", "NFRecipe", "LloydRecipe", "QuantileRecipe",
           "parse_fixed", "Source", "Normal", "Laplace", "StudentT", "Empirical", "parse_source",
           "BlockDistribution", "block_distribution", "lloyd", "solve_lloyd", "quantile", "LloydResult",
           "LloydWarning", "RoundingEdgeWarning", "DerivationError", "evaluate", "Evaluation", "search_lloyd",
           "solve_search_lloyd", "search_block_errors", "evaluate_search", "SearchLloydResult"]
