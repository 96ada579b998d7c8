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
    come from ``torch.linspace`` in **float32** (step ``(end-start)/(steps-1)`` in float32;
    the first half of the points is ``start + step*i``, the second half
    ``end - step*(steps-1-i)``), ``norm.ppf`` runs in float64 on those float32 numbers, the
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

from fractions import Fraction
from typing import Any

import mpmath
import numpy as np
from scipy.stats import norm

from ..codebooks.codebook import Codebook

__all__ = [
    "BNB_OFFSET_LITERAL",
    "PRECISIONS",
    "default_offset",
    "parse_offset",
    "nf",
    "nf_exact",
    "torch_linspace_f32",
]

PRECISIONS = ("exact", "float64", "float32-bnb")

#: bitsandbytes' default ``offset`` argument of ``create_normal_map`` (a decimal literal).
BNB_OFFSET_LITERAL = Fraction("0.9677083")

_EXACT_DPS = 50


def default_offset(bits: int) -> Fraction:
    """Mean of the centre positions of the last of ``2**k - 1`` and of ``2**k`` equal bins.

    ``(1 - 1/(2(2**k - 1)) + 1 - 1/(2**(k+1))) / 2``; 929/960 for k = 4.
    """
    n = 2**bits
    return (1 - Fraction(1, 2 * (n - 1)) + 1 - Fraction(1, 2 * n)) / 2


def parse_offset(offset: Any) -> Fraction:
    """An offset as an exact rational: ``Fraction``, int, ``"P/Q"`` or a decimal string.

    A Python float is taken at its exact binary value.  Must lie strictly in (1/2, 1).
    """
    if isinstance(offset, Fraction):
        value = offset
    elif isinstance(offset, bool):
        raise ValueError(f"offset must be a number, got {offset!r}")
    elif isinstance(offset, (int, float, np.floating, np.integer)):
        if not np.isfinite(offset):
            raise ValueError(f"offset must be finite, got {offset!r}")
        value = Fraction(float(offset))
    elif isinstance(offset, str):
        try:
            value = Fraction(offset.strip())
        except (ValueError, ZeroDivisionError):
            raise ValueError(
                f"offset must be a rational like 929/960 or a decimal like 0.9677083, got {offset!r}"
            ) from None
    else:
        raise ValueError(f"offset must be a rational number, got {offset!r}")
    if not Fraction(1, 2) < value < 1:
        raise ValueError(f"offset must lie strictly between 1/2 and 1, got {value}")
    return value


def _check_bits(bits: Any) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ValueError(f"bits must be an integer, got {bits!r}")
    if not 2 <= bits <= 8:
        raise ValueError(f"NF codebooks are defined for 2 to 8 bits, got {bits}")
    return int(bits)


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps)`` for float32 on the CPU, reproduced with numpy.

    Both ends are cast to float32; ``step = (end - start) / (steps - 1)`` in float32; points
    below ``steps // 2`` are ``start + step * i``, the others ``end - step * (steps - 1 - i)``,
    each operation rounded to float32.
    """
    s, e = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([s], dtype=np.float32)
    step = (e - s) / np.float32(steps - 1)
    i = np.arange(steps)
    lo = s + step * i.astype(np.float32)
    hi = e - step * (steps - 1 - i).astype(np.float32)
    return np.where(i < steps // 2, lo, hi).astype(np.float32)


def _positions_exact(offset: Fraction, n: int) -> list[Fraction]:
    """First ``n`` of ``n + 1`` equally spaced points from ``offset`` to 1/2."""
    return [offset - (offset - Fraction(1, 2)) * i / n for i in range(n)]


def nf_exact(bits: int, offset: Any = None, dps: int = _EXACT_DPS) -> list[mpmath.mpf]:
    """The NFk levels as mpmath numbers with ``dps`` significant digits, sorted."""
    bits = _check_bits(bits)
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


def nf(bits: int = 4, offset: Any = None, precision: str = "float64", name: str | None = None) -> Codebook:
    """The NFk codebook.  ``offset``: exact rational (see :func:`parse_offset`); default
    :func:`default_offset` for ``exact``/``float64`` and bitsandbytes' literal 0.9677083 for
    ``float32-bnb``.  ``precision``: one of :data:`PRECISIONS` (see the module docstring)."""
    bits = _check_bits(bits)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if offset is None:
        off = BNB_OFFSET_LITERAL if precision == "float32-bnb" else default_offset(bits)
    else:
        off = parse_offset(offset)
    half = 2 ** (bits - 1)

    if precision == "exact":
        levels = np.array([float(v) for v in nf_exact(bits, off)], dtype=np.float64)
    elif precision == "float64":
        o = float(off)
        pos = norm.ppf(np.linspace(o, 0.5, half + 1)[:-1])
        neg = -norm.ppf(np.linspace(o, 0.5, half)[:-1])
        vals = np.sort(np.concatenate([pos, [0.0], neg]))
        levels = vals / vals[-1]
    else:  # float32-bnb
        o = float(off)
        pos = norm.ppf(torch_linspace_f32(o, 0.5, half + 1)[:-1].astype(np.float64))
        neg = -norm.ppf(torch_linspace_f32(o, 0.5, half)[:-1].astype(np.float64))
        vals = np.sort(np.concatenate([pos, [0.0], neg]).astype(np.float32))
        levels = (vals / vals.max()).astype(np.float64)

    recipe = {"method": "nf", "bits": bits, "offset": str(off), "precision": precision}
    return Codebook(levels=levels, bits=bits, name=name or f"nf{bits}", source="derived", recipe=recipe)
