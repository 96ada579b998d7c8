"""Re-derive a codebook from its recipe (the ``recipe`` mapping every derived Codebook carries).

Derivation methods register themselves here with :func:`register_method`; the audit uses
:func:`derive_from_recipe` to reproduce a table.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from ..codebooks.codebook import Codebook

__all__ = ["RecipeError", "register_method", "derive_from_recipe", "available_methods"]


class RecipeError(ValueError):
    """A recipe that names no known method or has bad parameters."""


_METHODS: dict[str, Callable[[Mapping[str, Any]], Codebook]] = {}


def register_method(name: str, fn: Callable[[Mapping[str, Any]], Codebook]) -> None:
    _METHODS[name] = fn


def available_methods() -> list[str]:
    return sorted(_METHODS)


def derive_from_recipe(recipe: Mapping[str, Any]) -> Codebook:
    """The codebook that ``recipe`` describes.  Raises :class:`RecipeError` for an unknown
    method or a missing or mistyped parameter, and the method's own ValueError for bad values."""
    if not isinstance(recipe, Mapping) or "method" not in recipe:
        raise RecipeError("a recipe must be a mapping with a 'method'")
    fn = _METHODS.get(recipe["method"])
    if fn is None:
        raise RecipeError(f"no derivation method {recipe['method']!r} (known: {', '.join(available_methods())})")
    try:
        return fn(recipe)
    except KeyError as exc:
        raise RecipeError(f"recipe for {recipe['method']!r} lacks the parameter {exc.args[0]!r}") from None
    except TypeError as exc:
        raise RecipeError(f"recipe for {recipe['method']!r} has a parameter of the wrong type ({exc})") from None


def _rounded(recipe: Mapping[str, Any]) -> Codebook:
    """A base recipe's float64 levels rounded to ``decimals`` decimal places (e.g. torchao NF4)."""
    base = derive_from_recipe(recipe["base"])
    decimals = int(recipe["decimals"])
    code = np.array([round(float(v), decimals) for v in base.code])
    return Codebook(levels=np.unique(code), bits=base.bits, name=f"{base.name}-r{decimals}",
                    source="derived", recipe=dict(recipe), code=code)


def _register_builtin() -> None:
    from . import formats
    from .normal_float import nf

    register_method("nf", lambda r: nf(int(r["bits"]), r.get("offset"), r.get("precision", "float64")))
    register_method("e2m1", lambda r: formats.e2m1(bool(r.get("normalise", True))))
    register_method("bnb-fp4", lambda r: formats.bnb_fp4())
    register_method("uniform-symmetric", lambda r: formats.uniform_symmetric(int(r["bits"])))
    register_method("scaled-integers",
                    lambda r: formats.scaled_integers(r["integers"], int(r["divisor"]), int(r["bits"])))
    register_method("rounded", _rounded)
    register_method("lloyd", _lloyd_recipe)
    register_method("quantile", _lloyd_recipe)


def _lloyd_recipe(recipe: Mapping[str, Any]) -> Codebook:
    """Lloyd-Max and equal-probability codes of the block distribution (:mod:`.lloyd`)."""
    from .lloyd import _from_recipe_lloyd, _from_recipe_quantile
    from .sources import SourceError

    try:
        fn = _from_recipe_lloyd if recipe["method"] == "lloyd" else _from_recipe_quantile
        return fn(recipe)
    except SourceError as exc:
        raise RecipeError(str(exc)) from None


_register_builtin()
