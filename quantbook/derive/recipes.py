"""Recipes: what derives a codebook, as data.

A recipe is a frozen dataclass, one class per derivation method, whose fields are the method's
parameters **and their defaults** — the one place they are written: :func:`~.lloyd.lloyd`,
:func:`~.lloyd.quantile`, :func:`~.normal_float.nf` and the format functions take their defaults
from these fields.  Each recipe has

* ``derive()`` — the :class:`Codebook` it describes;
* ``to_dict()`` — its JSON form, the plain mapping a Codebook stores as ``recipe`` (the
  ``quantbook.codebooks`` layer knows nothing of these classes);
* ``Recipe.from_dict(mapping)`` — the recipe of such a mapping, validated: an unknown method,
  an unknown, missing or mistyped key, or a bad value is a one-line :class:`RecipeError`.

Constructing a recipe validates it (bad values raise ``ValueError``, with the same rules and
messages as the functions), so every recipe that exists has valid parameters.
:func:`derive_from_recipe` is ``Recipe.from_dict(mapping).derive()``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping, cast

import numpy as np

from ..numerics.arguments import check_flag, check_int, is_int, one_line
from ..codebooks.blocks import DEFAULT_BLOCK_SIZE, check_derived_block_size
from ..codebooks.codebook import Codebook, check_numbers
from ..numerics.losses import LOSSES, check_loss
from ..scales import DEFAULT_QMAX, check_qmax, check_scaled_bits, check_scaled_only, get_rule

__all__ = ["RecipeError", "Recipe", "NFRecipe", "LloydRecipe", "QuantileRecipe", "E2M1Recipe",
           "BnbFP4Recipe", "UniformSymmetricRecipe", "ScaledIntegersRecipe", "RoundedRecipe",
           "derive_from_recipe", "available_methods", "default_fixed", "parse_fixed", "LOSSES",
           "DOMAINS", "PARTITIONS", "recipe_label"]

DOMAINS = ("weight", "normalized")
PARTITIONS = ("nearest", "halves")


class RecipeError(ValueError):
    """A recipe that names no known method, or has a missing, unknown, mistyped or bad parameter."""


_METHODS: dict[str, type["Recipe"]] = {}


def available_methods() -> list[str]:
    """The ``method`` names a recipe may give, sorted."""
    return sorted(_METHODS)


def derive_from_recipe(recipe: Mapping[str, Any]) -> Codebook:
    """The codebook that the mapping ``recipe`` (a Codebook's ``recipe``) describes.

    Raises :class:`RecipeError` for a recipe that cannot be read; a derivation that fails on
    valid parameters raises its own ValueError.
    """
    return Recipe.from_dict(recipe).derive()


# ------------------------------------------------------------------------ JSON value checks
# A recipe read from JSON must hold exactly these types: the field annotations name the check.
def _want_int(key, v):
    return check_int(v, f"parameter {key!r}", error=RecipeError)


def _want_str(key, v):
    if not isinstance(v, str):
        raise RecipeError(f"parameter {key!r} must be a string, got {v!r}")
    return v


def _want_bool(key, v):
    if not isinstance(v, (bool, np.bool_)):
        raise RecipeError(f"parameter {key!r} must be true or false, got {v!r}")
    return bool(v)


def _want_numbers(key, v):
    if isinstance(v, (str, bytes, Mapping)) or not hasattr(v, "__iter__"):
        raise RecipeError(f"parameter {key!r} must be a list of numbers, got {v!r}")
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise RecipeError(f"parameter {key!r} must be a list of numbers, got the entry {x!r}")
        out.append(x)
    return tuple(out)


def _want_number(key, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise RecipeError(f"parameter {key!r} must be a number, got {v!r}")
    return float(v)


def _want_ints(key, v):
    return tuple(_want_int(key, x) for x in _want_numbers(key, v))


def _want_recipe(key, v):
    return Recipe.from_dict(v)


def _optional(check):
    return lambda key, v: None if v is None else check(key, v)


_JSON_CHECKS = {
    "int": _want_int, "int | None": _optional(_want_int), "str": _want_str,
    "str | None": _optional(_want_str), "bool": _want_bool, "Any": _want_str,  # a source spelling
    "tuple[float, ...] | None": _optional(_want_numbers), "tuple[float, ...]": _want_numbers,
    "tuple[int, ...]": _want_ints,
    "Recipe": _want_recipe, "float": _want_number,
}


# ------------------------------------------------------------------------------ base class
@dataclass(frozen=True)
class Recipe:
    """Base class: ``method`` names the derivation (the ``"method"`` key of the JSON form)."""

    method: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.method:
            _METHODS[cls.method] = cls

    def derive(self) -> Codebook:
        raise NotImplementedError

    # ---- JSON form
    def _dict_keys(self) -> list[str]:
        """The fields that ``to_dict`` writes (all of them unless a subclass leaves some out)."""
        return [f.name for f in dataclasses.fields(self)]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method}
        for key in self._dict_keys():
            out[key] = _jsonable(getattr(self, key))
        return out

    @classmethod
    def _optional_keys(cls, mapping: Mapping[str, Any]) -> set[str]:
        """Keys that a stored recipe may leave out (``to_dict`` omits them at their default)."""
        return set()

    @classmethod
    def from_dict(cls, mapping: Any) -> "Recipe":
        """The recipe of a JSON mapping (see the module docstring); ``Recipe.from_dict`` picks the
        class by ``"method"``, a subclass checks that the method is its own."""
        if not isinstance(mapping, Mapping) or "method" not in mapping:
            raise RecipeError("a recipe must be a mapping with a 'method'")
        method = mapping["method"]
        target = _METHODS.get(method) if isinstance(method, str) else None
        if target is None:
            raise RecipeError(f"no derivation method {method!r} (known: {', '.join(available_methods())})")
        if cls is not Recipe and target is not cls:
            raise RecipeError(f"{cls.__name__} reads {cls.method!r} recipes, got method {method!r}")
        return target._read(mapping)

    @classmethod
    def _read(cls, mapping: Mapping[str, Any]) -> "Recipe":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(mapping) - set(fields) - {"method"})
        if unknown:
            raise RecipeError(f"recipe for {cls.method!r} has the unknown parameter {unknown[0]!r} "
                              f"(known: {', '.join(fields)})")
        optional = cls._optional_keys(mapping)
        kwargs = {}
        for name, f in fields.items():
            if name not in mapping:
                if name not in optional:
                    raise RecipeError(f"recipe for {cls.method!r} lacks the parameter {name!r}")
                continue
            try:
                kwargs[name] = _JSON_CHECKS[str(f.type)](name, mapping[name])   # the annotation's text (PEP 563)
            except RecipeError as exc:
                raise RecipeError(f"recipe for {cls.method!r}: {exc}") from None
        try:
            return cls(**kwargs)
        except RecipeError:
            raise
        except ValueError as exc:  # the value rules of the method (bits out of range, ...)
            raise RecipeError(f"recipe for {cls.method!r}: {exc}") from None


def _jsonable(v: Any) -> Any:
    if isinstance(v, Recipe):
        return v.to_dict()
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if hasattr(v, "spec"):  # a Source: its spelling
        return v.spec
    return v


def _check_bits(bits: Any, lo: int, hi: int) -> int:
    return check_int(bits, "bits", lo, hi)


def _choice(what: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _set(obj: Any, **values: Any) -> None:
    for k, v in values.items():
        object.__setattr__(obj, k, v)


def _number_text(v: float) -> str:
    """A float as the shortest text that reads back as it (``-1``, ``0.5``): distinct floats, distinct texts."""
    text = repr(float(v))
    return text[:-2] if text.endswith(".0") else text


#: how a label says a recipe field that is not at its default (any other field: ``-NAME=VALUE``)
_SAID: dict[str, Callable[[Any], str]] = {
    "normalization": lambda v: "unnormalized" if v == "none" else v,
    "domain": str,
    "fixed": lambda v: "fixed=" + (",".join(_number_text(x) for x in v) if v else "none"),
    "symmetric": lambda v: "symmetric",
    "partition": str,
    "scale": lambda v: v.replace(":", "-"),
    "qmax": lambda v: f"qmax={_number_text(v)}",
    "tol": lambda v: f"tol={_number_text(v)}",
}


def recipe_label(head: str, recipe: Recipe, said: tuple[str, ...], defaults: Mapping[str, Any] | None = None) -> str:
    """The label of a derived table that the name grammar cannot spell: ``head`` (which says the
    fields ``said``), then each other field of ``recipe`` that is not at its default (the class's,
    or the one ``defaults`` gives where it depends on other fields), in the recipe's order, then
    ``@SOURCE`` as the grammar writes a source.  Different recipes get different labels."""
    defaults = defaults or {}
    parts = [head]
    for f in dataclasses.fields(recipe):
        value = getattr(recipe, f.name)
        if f.name in said or f.name == "source" or value == defaults.get(f.name, f.default):
            continue
        parts.append(_SAID.get(f.name, lambda v, _n=f.name: f"{_n.replace('_', '-')}={v}")(value))
    source = getattr(recipe, "source", None)
    source = getattr(source, "spec", source)
    return "-".join(parts) + ("" if source in (None, getattr(type(recipe), "source", None)) else f"@{source}")


# --------------------------------------------------------------------------------------- NF
@dataclass(frozen=True)
class NFRecipe(Recipe):
    """NormalFloat NFk (:func:`~.normal_float.nf`).  ``offset`` is an exact rational (text,
    ``Fraction``, int or float); ``None`` picks the precision's default.  After construction
    it is the one text of the offset used (:func:`~.normal_float.offset_text`: ``"0.9677083"``,
    ``"929/960"``)."""

    method: ClassVar[str] = "nf"
    bits: int = 4
    offset: str | None = None
    precision: str = "float64"

    def __post_init__(self) -> None:
        from .normal_float import offset_text, resolve_nf

        bits, offset = resolve_nf(self.bits, self.offset, self.precision)
        _set(self, bits=bits, offset=offset_text(offset))

    def derive(self) -> Codebook:
        from .normal_float import _nf

        return _nf(self)


# ---------------------------------------------------------------- Lloyd-Max and quantile codes
def default_fixed(normalization: str) -> tuple[float, ...]:
    """Levels held fixed unless told otherwise: -1, 0, 1 under absmax (the block maximum maps
    to ±1), 0, 1 under signed absmax (it maps to +1), none without normalisation."""
    return {"absmax": (-1.0, 0.0, 1.0), "signed-absmax": (0.0, 1.0), "none": ()}[normalization]


def parse_fixed(fixed: Any, normalization: str = "absmax") -> tuple[float, ...]:
    """Fixed levels from ``None`` (:func:`default_fixed`), a sequence of numbers or a
    comma-separated string (``"-1,0,1"``; ``"none"`` or ``""`` for no fixed level): sorted,
    without duplicates, finite, and within [-1, 1] under a normalisation."""
    from .block import NORMALIZATIONS

    _choice("normalization", normalization, NORMALIZATIONS)
    if fixed is None:
        return default_fixed(normalization)
    if isinstance(fixed, str):
        text = fixed.strip()
        if text.lower() in ("", "none"):
            return ()
        values = []
        for part in (p for p in text.split(",") if p.strip()):  # a stray comma is harmless
            try:
                values.append(float(part))
            except ValueError:
                raise ValueError(f"fixed levels must be comma-separated numbers like -1,0,1 (or none), "
                                 f"got {one_line(fixed)}") from None
    else:
        # its own one-line errors name what is wrong (a masked entry, '0.5', True: float() reads them)
        values = check_numbers(fixed, "fixed levels")
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ValueError(f"fixed levels must be a sequence of numbers or a string like '-1,0,1', "
                             f"got {one_line(fixed)}") from None
    fx = tuple(sorted(set(v + 0.0 for v in values)))  # + 0.0: -0.0 is 0.0
    if any(not math.isfinite(v) for v in fx):
        raise ValueError(f"fixed levels must be finite, got {one_line(fixed)}")
    if normalization != "none" and any(abs(v) > 1 for v in fx):
        raise ValueError(f"fixed levels must lie in [-1, 1] under {normalization}, got {one_line(list(fx))}")
    return fx


def _check_block_recipe(r: "LloydRecipe | QuantileRecipe", loss: str | None) -> None:
    """The rules shared by Lloyd and quantile recipes; normalises ``source``, ``fixed``,
    ``block_size`` (None without normalisation) and ``domain`` (its default there)."""
    from .block import NORMALIZATIONS
    from .sources import parse_source

    bits = _check_bits(r.bits, 1, 8)
    _choice("domain", r.domain, DOMAINS)
    normalization = _choice("normalization", r.normalization, NORMALIZATIONS)
    symmetric = check_flag(r.symmetric, "symmetric")
    if normalization == "none":
        block_size, domain = None, type(r).domain  # neither applies without normalisation
    else:
        block_size, domain = check_derived_block_size(r.block_size), r.domain
    src = parse_source(r.source)
    fx = parse_fixed(r.fixed, normalization)
    n_levels = 2**bits
    if symmetric:
        if any(-v not in fx for v in fx):
            raise ValueError(f"symmetric codebooks need symmetric fixed levels, got {one_line(list(fx))}")
        n_levels -= 1 if 0.0 in fx else 0
    if len(fx) > n_levels:
        raise ValueError(f"{len(fx)} fixed levels {list(fx)} do not fit in {bits} bit(s); free them with "
                         f"fixed=() (--fix none)")
    if len(fx) == n_levels:
        raise ValueError(f"all {n_levels} levels are fixed; nothing to derive")
    _check_moments(src, loss, domain, normalization)
    _set(r, bits=bits, block_size=block_size, domain=domain, source=src, fixed=fx,
         symmetric=symmetric)


def _check_moments(src: Any, loss: str | None, domain: str, normalization: str) -> None:
    """Which sources a code can be derived for.  The weight domain measures errors in units of
    the source's standard deviation, so it needs a finite variance (for every loss, and for the
    quantile code, whose weight-domain law then has an unbounded density at 0 anyway); without
    normalisation the levels are in source units, and L2 needs a variance, L1 a mean."""
    if normalization == "none":
        if loss == "l2" and src.moment_limit <= 2:
            raise ValueError(f"{src.spec} has infinite variance: no L2 quantizer without normalisation")
        if loss == "l1" and src.moment_limit <= 1:
            raise ValueError(f"{src.spec} has no finite mean: no L1 quantizer without normalisation")
    elif domain == "weight" and src.moment_limit <= 2:
        raise ValueError(f"{src.spec} has no finite variance, which the weight domain (errors in units "
                         f"of the standard deviation) needs; use domain='normalized' (--domain normalized, or the "
                         f"-normalized suffix of a lloyd-... name)")


#: the fields a block-scale rule adds to Lloyd and quantile recipes, and their defaults (written
#: by ``to_dict`` only when ``scale`` is set, so older recipes read and re-derive as before)
_SCALE_KEYS = ("scale", "qmax", "tensor_size")


def _check_scale_fields(r: "LloydRecipe | QuantileRecipe") -> None:
    """Under a scale rule (``scale`` not None) the block maximum maps to the table's largest
    magnitude: absmax normalisation, and -1 and 1 among the fixed levels, so that the derived
    levels stay within [-1, 1] (the scaled layout rescales a table to that range)."""
    from .scaled import check_scale

    rule = None
    if r.scale is not None:
        if not isinstance(r.scale, str):
            raise ValueError(f"scale must be a rule name such as e4m3 or e8m0:floor, got {r.scale!r}")
        rule = check_scale(r.scale, amax_encoded=True)
        if rule.layout == "bnb" and not rule.encodes_with_amax:  # float32: exact absmax, today's law
            _set(r, scale=None)
    check_scaled_only(rule, qmax=check_qmax(r.qmax) != DEFAULT_QMAX, tensor_size=r.tensor_size is not None)
    if rule is None or rule.layout == "bnb":   # none, float32 (its scale dropped above), or nested: the exact absmax
        _set(r, qmax=DEFAULT_QMAX)
    if rule is None or r.scale is None:
        return
    if r.normalization != "absmax":
        raise ValueError(f"a scale rule maps the block's absolute maximum: normalization must be absmax, "
                         f"got {r.normalization!r}")
    if rule.layout == "scaled":   # nested statistics keep bitsandbytes' 1-8 bit codes
        check_scaled_bits(r.bits)
    fixed = cast("tuple[float, ...]", r.fixed)   # set by _check_block_recipe (None only before)
    if -1.0 not in fixed or 1.0 not in fixed:
        raise ValueError(f"a scale rule maps the block maximum to the table's largest magnitude: the fixed "
                         f"levels must include -1 and 1, got {list(fixed)}")
    if getattr(r, "partition", "nearest") != "nearest":
        raise ValueError("partition='halves' is not available with a scale rule")
    from .scaled import TensorModel

    TensorModel(None, r.tensor_size)
    qmax = check_qmax(r.qmax)
    if r.tensor_size is not None and rule.tensor_scale(1.0, qmax) is None:
        raise ValueError(f"scale rule {rule.name!r} has no tensor scale: tensor_size does not apply")
    _set(r, scale=rule.name, qmax=qmax)


def _scale_keys(r: "LloydRecipe | QuantileRecipe") -> list[str]:
    if r.scale is None:
        return []
    if get_rule(r.scale).layout == "bnb":  # nested: the exact absmax, no qmax
        return ["scale"]
    return ["scale", "qmax"] + (["tensor_size"] if r.tensor_size is not None else [])


@dataclass(frozen=True)
class LloydRecipe(Recipe):
    """Lloyd-Max code of the block distribution (:func:`~.lloyd.lloyd`).  ``source`` is a
    spelling or a :class:`~.sources.Source` (stored as its ``spec``); ``fixed`` ``None`` means
    :func:`default_fixed` (after construction: the sorted tuple used)."""

    method: ClassVar[str] = "lloyd"
    bits: int = 4
    block_size: int | None = DEFAULT_BLOCK_SIZE
    loss: str = "l2"
    domain: str = "weight"
    normalization: str = "absmax"
    source: Any = "normal"
    fixed: tuple[float, ...] | None = None
    symmetric: bool = False
    partition: str = "nearest"
    scale: str | None = None
    qmax: float = DEFAULT_QMAX
    tensor_size: int | None = None

    def __post_init__(self) -> None:
        check_loss(self.loss)
        _choice("partition", self.partition, PARTITIONS)
        _check_block_recipe(self, self.loss)
        fixed = cast("tuple[float, ...]", self.fixed)   # set by _check_block_recipe (None only before)
        if self.partition == "halves" and (0.0 not in fixed or self.symmetric):
            raise ValueError("partition='halves' needs 0 among the fixed levels and symmetric=False")
        _check_scale_fields(self)

    def _dict_keys(self) -> list[str]:
        keys = ["bits", "block_size", "loss", "domain", "normalization", "source", "fixed"]
        if self.normalization == "none":
            keys = [k for k in keys if k not in ("block_size", "domain")]
        return keys + (["symmetric"] if self.symmetric else []) + \
            (["partition"] if self.partition != "nearest" else []) + _scale_keys(self)

    @classmethod
    def _optional_keys(cls, mapping: Mapping[str, Any]) -> set[str]:
        return {"symmetric", "partition", *_SCALE_KEYS} | ({"block_size", "domain"}
                                                           if mapping.get("normalization") == "none" else set())

    def derive(self) -> Codebook:
        from .lloyd import _lloyd_codebook

        return _lloyd_codebook(self)


@dataclass(frozen=True)
class QuantileRecipe(Recipe):
    """Equal-probability code of the block distribution (:func:`~.lloyd.quantile`)."""

    method: ClassVar[str] = "quantile"
    bits: int = 4
    block_size: int | None = DEFAULT_BLOCK_SIZE
    normalization: str = "absmax"
    source: Any = "normal"
    fixed: tuple[float, ...] | None = None
    symmetric: bool = False
    domain: str = "normalized"
    scale: str | None = None
    qmax: float = DEFAULT_QMAX
    tensor_size: int | None = None

    def __post_init__(self) -> None:
        _check_block_recipe(self, None)
        _check_scale_fields(self)

    def _dict_keys(self) -> list[str]:
        keys = ["bits", "block_size", "domain", "normalization", "source", "fixed"]
        if self.normalization == "none":
            keys = [k for k in keys if k not in ("block_size", "domain")]
        return keys + (["symmetric"] if self.symmetric else []) + _scale_keys(self)

    @classmethod
    def _optional_keys(cls, mapping: Mapping[str, Any]) -> set[str]:
        return {"symmetric", *_SCALE_KEYS} | ({"block_size", "domain"} if mapping.get("normalization") == "none"
                                              else set())

    def derive(self) -> Codebook:
        from .lloyd import _quantile_codebook

        return _quantile_codebook(self)


#: a search rule's default fitting sample (values; the command line rounds it up to whole blocks)
FIT_SAMPLES = 10**7


@dataclass(frozen=True)
class SearchLloydRecipe(Recipe):
    """Lloyd code fitted on a seeded sample under a scale-search rule
    (:func:`~.search_lloyd.search_lloyd`): the sample and the seed are part of the recipe, so
    the code re-derives bit for bit."""

    method: ClassVar[str] = "search-lloyd"
    bits: int = 4
    block_size: int = 16
    scale: str = "search:4over6"
    samples: int = FIT_SAMPLES
    seed: int = 0
    loss: str = "l2"
    fixed: tuple[float, ...] = (-1.0, 0.0, 1.0)
    source: Any = "normal"
    qmax: float = DEFAULT_QMAX
    tensor_size: int | None = None
    max_iter: int = 100
    tol: float = 1e-6

    def __post_init__(self) -> None:
        from .search_lloyd import check_recipe

        check_loss(self.loss)
        _set(self, **check_recipe(self))

    def derive(self) -> Codebook:
        from .search_lloyd import search_lloyd

        kw = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return search_lloyd(**kw)


# ------------------------------------------------------------------------- number formats
@dataclass(frozen=True)
class E2M1Recipe(Recipe):
    """OCP E2M1 (:func:`~.formats.e2m1`); ``normalise`` divides by 6."""

    method: ClassVar[str] = "e2m1"
    normalise: bool = True

    def __post_init__(self) -> None:
        _set(self, normalise=check_flag(self.normalise, "normalise"))

    def derive(self) -> Codebook:
        from .formats import e2m1

        return e2m1(self.normalise)


@dataclass(frozen=True)
class BnbFP4Recipe(Recipe):
    """bitsandbytes' FP4 (:func:`~.formats.bnb_fp4`); no parameters."""

    method: ClassVar[str] = "bnb-fp4"

    def derive(self) -> Codebook:
        from .formats import bnb_fp4

        return bnb_fp4()


@dataclass(frozen=True)
class UniformSymmetricRecipe(Recipe):
    """Symmetric uniform integers j/(2**(k-1) - 1) (:func:`~.formats.uniform_symmetric`)."""

    method: ClassVar[str] = "uniform-symmetric"
    bits: int = 4

    def __post_init__(self) -> None:
        _set(self, bits=_check_bits(self.bits, 2, 8))

    def derive(self) -> Codebook:
        from .formats import uniform_symmetric

        return uniform_symmetric(self.bits)


@dataclass(frozen=True)
class ScaledIntegersRecipe(Recipe):
    """A table of integers divided by ``divisor`` (:func:`~.formats.scaled_integers`).  The
    integers are data, not derived: a table made this way is a transcription."""

    method: ClassVar[str] = "scaled-integers"
    integers: tuple[int, ...]
    divisor: int
    bits: int

    def __post_init__(self) -> None:
        ints = tuple(self.integers) if isinstance(self.integers, (list, tuple, np.ndarray)) else ()
        if not ints or any(not is_int(i) for i in ints):
            raise ValueError(f"integers must be a non-empty list of integers, got {self.integers!r}")
        ints = tuple(int(i) for i in ints)
        check_int(self.divisor, "divisor", 1)
        bits = _check_bits(self.bits, 1, 8)
        if len(ints) > 2**bits:
            raise ValueError(f"{len(ints)} integers do not fit in {bits} bits")
        if any(abs(i) > 2**53 for i in ints):
            raise ValueError("integers must be at most 2**53 in magnitude (exact in float64)")
        _set(self, integers=ints, divisor=int(self.divisor), bits=bits)

    def derive(self) -> Codebook:
        from .formats import scaled_integers

        return scaled_integers(self.integers, self.divisor, self.bits)


@dataclass(frozen=True)
class RoundedRecipe(Recipe):
    """A base recipe's float64 table rounded to ``decimals`` decimal places (e.g. torchao's NF4,
    which prints bitsandbytes' table to 4 decimals)."""

    method: ClassVar[str] = "rounded"
    base: Recipe
    decimals: int

    def __post_init__(self) -> None:
        base = self.base
        if isinstance(base, Mapping):
            base = Recipe.from_dict(base)
        if not isinstance(base, Recipe):
            raise ValueError(f"base must be a recipe, got {self.base!r}")
        check_int(self.decimals, "decimals", 0, 17)
        _set(self, base=base, decimals=int(self.decimals))

    def derive(self) -> Codebook:
        base = self.base.derive()
        code = np.array([round(float(v), self.decimals) for v in base.code])
        return Codebook(levels=np.unique(code), bits=base.bits, name=f"{base.name}-r{self.decimals}",
                        source="derived", recipe=self.to_dict(), code=code)


def _check_annotations() -> None:
    # every field of every recipe must name one of the JSON checks (else from_dict cannot read it)
    for cls in _METHODS.values():
        for f in dataclasses.fields(cls):
            if f.type not in _JSON_CHECKS:
                raise TypeError(f"{cls.__name__}.{f.name}: no JSON check for the annotation {f.type!r}")


_check_annotations()
