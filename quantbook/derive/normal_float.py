"""NormalFloat (NFk) codebooks from normal quantiles (Dettmers et al., QLoRA, arXiv:2305.14314).

Construction (asymmetric, as bitsandbytes' ``create_normal_map(use_extra_value=True)``):

* ``2**(k-1)`` positive levels ``Φ⁻¹(p_i)``, ``p_i`` = the first ``2**(k-1)`` of ``2**(k-1)+1``
  equally spaced points from ``offset`` down to ``1/2`` (the point ``1/2`` itself, Φ⁻¹ = 0,
  is dropped);
* ``2**(k-1) - 1`` negative levels ``-Φ⁻¹(q_j)``, ``q_j`` likewise from ``2**(k-1)`` points;
* an exact zero; everything divided by ``Φ⁻¹(offset)`` so the table spans ``[-1, 1]``.

The offset (where the outermost quantile sits) defaults to :func:`default_offset`, the
exact rational ``929/960`` for k = 4 — see :mod:`quantbook.derive.nf_offset` for its
symbolic derivation.

Three precisions:

``exact``
    Rational probabilities, ``Φ⁻¹`` by mpmath at 50 significant digits, rounded once to
    float64 at the end.
``float64``
    numpy ``linspace`` and ``scipy.stats.norm.ppf`` in float64, division in float64.
``float32-bnb``
    Replays how bitsandbytes' published float32 NF4 table was computed: the offset is the
    *decimal literal* ``0.9677083`` (bitsandbytes' default, for every k), the probabilities
    come from ``torch.linspace`` in **float32** (:func:`quantbook.numerics.torch_f32.linspace`,
    as torch's AVX2 build computes it), ``norm.ppf`` runs in float64 on those float32 numbers, the
    results are stored as float32, sorted, and divided by their maximum **in float32**.

Why a plain float64 computation does not give bitsandbytes' bits: each of those three
steps moves some levels by a few float32 ULPs.  With ``929/960`` and float64 throughout,
12 of the 16 levels differ (up to 8 ULP); switching to the literal ``0.9677083`` leaves 10
differing (up to 6 ULP); adding the float32 ``linspace`` leaves 6 differing by 1 ULP; the
float32 division removes the rest — only all three together reproduce the table bit for
bit (measured with scipy 1.17).  ``float32(0.9677083)`` and
``float32(929/960)`` are different floats (0.9677083 vs 0.96770835).  The audit prints this.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, cast

import mpmath
import numpy as np
from scipy.stats import norm

from ..codebooks.codebook import Codebook, check_given_name, warn_float32_edges
from ..numerics import torch_f32
from ..numerics.arguments import check_int, is_int
from .recipes import NFRecipe

__all__ = [
    "BNB_OFFSET_LITERAL",
    "PRECISIONS",
    "default_offset",
    "parse_offset",
    "offset_text",
    "resolve_nf",
    "MAX_OFFSET_DIGITS",
    "nf",
    "nf_exact",
]

#: the values of `nf`'s `precision`, the arithmetic the levels are computed in (module docstring)
PRECISIONS = ("exact", "float64", "float32-bnb")

#: bitsandbytes' default ``offset`` argument of ``create_normal_map`` (a decimal literal).
BNB_OFFSET_LITERAL = Fraction("0.9677083")

_EXACT_DPS = 50


def default_offset(bits: int) -> Fraction:
    """Mean of the centre positions of the last of ``2**k - 1`` and of ``2**k`` equal bins.

    ``(1 - 1/(2(2**k - 1)) + 1 - 1/(2**(k+1))) / 2``; 929/960 for k = 4.
    """
    n = 2**_check_bits(bits)
    return (1 - Fraction(1, 2 * (n - 1)) + 1 - Fraction(1, 2 * n)) / 2


#: longest offset accepted, in decimal digits (numerator or denominator): far beyond any
#: useful precision, and small enough that no step builds or prints a giant integer
MAX_OFFSET_DIGITS = 1000

_DECIMAL = re.compile(r"^([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$")
_RATIONAL = re.compile(r"^([+-]?\d+)\s*/\s*([+-]?\d+)$")
_OFFSET_RANGE = "offset must lie strictly between 1/2 and 1"


def _shown(text: str) -> str:
    return text if len(text) <= 40 else f"{text[:20]}...{text[-8:]} ({len(text)} characters)"


def _too_long(what: str, n_digits: int) -> ValueError:
    return ValueError(f"offset {what} has {n_digits} digits, more than the {MAX_OFFSET_DIGITS} accepted")


def _parse_offset_text(text: str) -> Fraction:
    """A decimal (with optional exponent) or ``P/Q``, checked for size *before* any big integer is
    built: ``Fraction("1e-999999999")`` would compute 10**999999999."""
    m = _RATIONAL.match(text)
    if m:
        num, den = m.group(1).lstrip("+-"), m.group(2).lstrip("+-")
        for what, digits in (("numerator", num), ("denominator", den)):
            if len(digits) > MAX_OFFSET_DIGITS:
                raise _too_long(what, len(digits))
        if int(den) == 0:
            raise ValueError(f"offset {text} has a zero denominator")
        return Fraction(int(m.group(1)), int(m.group(2)))
    m = _DECIMAL.match(text)
    if not m or not (m.group(2) or m.group(3)):
        raise ValueError(f"offset must be a rational like 929/960 or a decimal like 0.9677083, got {_shown(text)!r}")
    sign, whole, frac, exp = m.group(1), m.group(2), m.group(3) or "", m.group(4) or "0"
    digits = (whole + frac).lstrip("0")
    if len(digits) > MAX_OFFSET_DIGITS:
        raise _too_long("significand", len(digits))
    if sign == "-" or not digits:
        raise ValueError(f"{_OFFSET_RANGE}, got {_shown(text)}")
    # value = int(digits) * 10**k; it lies in [0.1, 1) exactly when k = -len(digits)
    if len(exp.lstrip("+-").lstrip("0")) > 12:  # an exponent of more than 12 digits: far out of range
        raise ValueError(f"{_OFFSET_RANGE}, got {_shown(text)}")
    k = int(exp) - len(frac)
    if k != -len(digits):
        raise ValueError(f"{_OFFSET_RANGE}, got {_shown(text)}")
    return Fraction(int(digits), 10 ** len(digits))


def parse_offset(offset: Any) -> Fraction:
    """An offset as an exact rational: ``Fraction``, int, float, ``"P/Q"`` or a decimal string
    (``"0.9677083"``, ``"9.677083e-1"``).

    A Python float is taken at its exact binary value.  Must lie strictly in (1/2, 1), where the
    outermost quantile of a code with levels on both sides of 0 can sit; numerator and
    denominator may have up to :data:`MAX_OFFSET_DIGITS` digits.
    """
    if isinstance(offset, bool):
        raise ValueError(f"offset must be a number, got {offset!r}")
    if isinstance(offset, str):
        value = _parse_offset_text(offset.strip())
        shown = _shown(offset.strip())
    elif isinstance(offset, (Fraction, int, np.integer)):
        value = Fraction(int(offset)) if not isinstance(offset, Fraction) else offset
        for what, part in (("numerator", value.numerator), ("denominator", value.denominator)):
            if abs(part).bit_length() > MAX_OFFSET_DIGITS * 3.33:  # log2(10) bits per digit
                raise _too_long(what, int(abs(part).bit_length() / 3.3219) + 1)
        shown = str(value) if max(value.numerator.bit_length(), value.denominator.bit_length()) < 200 \
            else f"{float(value):.17g}"
    elif isinstance(offset, (float, np.floating)):
        if not np.isfinite(offset):
            raise ValueError(f"offset must be finite, got {offset!r}")
        value, shown = Fraction(float(offset)), repr(float(offset))
    else:
        raise ValueError(f"offset must be a rational number, got {offset!r}")
    if not Fraction(1, 2) < value < 1:
        raise ValueError(f"{_OFFSET_RANGE}, got {shown}")
    return value


def offset_text(offset: Fraction) -> str:
    """The one spelling of an offset wherever it is shown (a recipe, a name): the shorter of its
    exact decimal and ``P/Q``, ``P/Q`` where they tie or the decimal does not end (bitsandbytes'
    literal ``0.9677083``, not ``9677083/10000000``; ``929/960``, ``15/16``).  :func:`parse_offset`
    reads both back exactly."""
    fraction = f"{offset.numerator}/{offset.denominator}"
    den, places = offset.denominator, 0
    for p in (2, 5):
        n = 0
        while den % p == 0:
            den, n = den // p, n + 1
        places = max(places, n)
    if den != 1 or places >= len(fraction):   # no end, or the decimal is longer anyway
        return fraction
    whole, part = divmod(abs(offset.numerator) * 10**places // offset.denominator, 10**places)
    decimal = ("-" if offset < 0 else "") + f"{whole}" + (f".{part:0{places}d}" if places else "")
    return decimal if len(decimal) < len(fraction) else fraction


def _check_bits(bits: Any) -> int:
    if not is_int(bits):
        raise ValueError(f"bits must be an integer, got {bits!r}")
    if not 2 <= bits <= 8:
        raise ValueError(f"NF codebooks are defined for 2 to 8 bits, got {bits}")
    return int(bits)


def resolve_nf(bits: Any, offset: Any, precision: Any) -> tuple[int, Fraction]:
    """Validated ``bits`` and the offset to use (``None``: :func:`default_offset`, or bitsandbytes'
    literal for ``float32-bnb``); the rules of :class:`~.recipes.NFRecipe`."""
    bits = _check_bits(bits)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if offset is None:
        return bits, (BNB_OFFSET_LITERAL if precision == "float32-bnb" else default_offset(bits))
    return bits, parse_offset(offset)


def _positions_exact(offset: Fraction, n: int) -> list[Fraction]:
    """First ``n`` of ``n + 1`` equally spaced points from ``offset`` to 1/2."""
    return [offset - (offset - Fraction(1, 2)) * i / n for i in range(n)]


def nf_exact(bits: int, offset: Any = None, dps: int = _EXACT_DPS) -> list[mpmath.mpf]:
    """The NFk levels as mpmath numbers with ``dps`` significant digits (a positive integer),
    sorted; ``offset`` as :func:`nf`'s."""
    bits = _check_bits(bits)
    # mpmath takes dps=0 and returns levels rounded to a few bits, silently
    check_int(dps, "dps (significant digits)", 1)
    off = default_offset(bits) if offset is None else parse_offset(offset)
    half = 2 ** (bits - 1)
    with mpmath.workdps(dps + 10):
        def ppf(p: Fraction) -> mpmath.mpf:
            x = mpmath.mpf(p.numerator) / p.denominator
            return mpmath.sqrt(2) * mpmath.erfinv(2 * x - 1)

        pos = [ppf(p) for p in _positions_exact(off, half)]
        neg = [-ppf(p) for p in _positions_exact(off, half - 1)]
        vals = sorted(pos + [mpmath.mpf(0)] + neg)
        top = vals[-1]
        out = [v / top for v in vals]
    with mpmath.workdps(dps):
        return [+v for v in out]


def nf(bits: int = NFRecipe.bits, offset: Any = NFRecipe.offset, precision: str = NFRecipe.precision,
       name: str | None = None) -> Codebook:
    """The NFk codebook.  ``bits``: k, 2 to 8.  ``offset``: exact rational (see
    :func:`parse_offset`); default :func:`default_offset` for ``exact``/``float64`` and
    bitsandbytes' literal 0.9677083 for ``float32-bnb``.  ``precision``: one of
    :data:`PRECISIONS` (see the module docstring).  ``name``: the Codebook's name (default:
    ``nfK`` for the table that name stands for, else a name that says how this one differs)."""
    check_given_name(name)
    return _nf(NFRecipe(bits, offset, precision), name)


def _nf(recipe: NFRecipe, name: str | None = None) -> Codebook:
    offset = cast(str, recipe.offset)   # set by the recipe (None only before)
    bits, off, precision = recipe.bits, Fraction(offset), recipe.precision
    half = 2 ** (bits - 1)

    if precision == "exact":   # mpmath's arithmetic is the same on every CPU
        levels = np.array([float(v) for v in nf_exact(bits, off)], dtype=np.float64)
        rounded = np.zeros(0)
    elif precision == "float64":
        o = float(off)
        pos = norm.ppf(np.linspace(o, 0.5, half + 1)[:-1])
        neg = -norm.ppf(np.linspace(o, 0.5, half)[:-1])
        vals = np.sort(np.concatenate([pos, [0.0], neg]))
        with np.errstate(invalid="ignore"):   # inf/inf where the offset rounds to 1: refused below
            levels = rounded = vals / vals[-1]
    else:  # float32-bnb
        o = float(off)
        pos = norm.ppf(torch_f32.linspace(o, 0.5, half + 1)[:-1].astype(np.float64))
        neg = -norm.ppf(torch_f32.linspace(o, 0.5, half)[:-1].astype(np.float64))
        rounded = np.sort(np.concatenate([pos, [0.0], neg]))   # the float64 quantiles stored as float32
        vals = rounded.astype(np.float32)
        with np.errstate(invalid="ignore"):
            levels = (vals / vals.max()).astype(np.float64)

    if not (np.all(np.isfinite(levels)) and np.all(np.diff(levels.astype(np.float32)) > 0)):
        # the offset rounds to 1 (an infinite quantile) or its positions meet in float64/float32
        raise ValueError(f"offset {recipe.offset} is too close to 1/2 or 1 for {precision} quantiles at "
                         f"{bits} bits (its levels are not distinct and finite); the exact precision (mpmath) may "
                         "resolve them")
    cb = Codebook(levels=levels, bits=bits, name=_name(recipe) if name is None else name, source="derived",
                  recipe=recipe.to_dict())
    warn_float32_edges(rounded, f"the {precision} code {cb.name!r}")
    return cb


def _name(recipe: NFRecipe) -> str:
    """``nfK`` for the table that name stands for (quantbook.naming: bitsandbytes' float32
    table for K = 4, float64 quantiles otherwise, default offsets), else a label that says
    how this one differs, so that two different tables never share a name."""
    named = NFRecipe(recipe.bits, precision="float32-bnb" if recipe.bits == 4 else "float64")
    if recipe == named:
        return f"nf{recipe.bits}"
    default = NFRecipe(recipe.bits, precision=recipe.precision)
    return (f"nf{recipe.bits}-{recipe.precision}"
            + ("" if recipe.offset == default.offset else f"-offset-{recipe.offset}"))
