"""Codebooks defined by a number format: minifloats (OCP E2M1), bitsandbytes' FP4, uniform ints.

Each returns the table in **bit-pattern order** as ``code`` (index = the stored bits), so a
packed nibble indexes it directly; the sign bit is the top bit and ``-0.0`` is kept.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..codebooks.codebook import Codebook, check_given_name
from .recipes import BnbFP4Recipe, E2M1Recipe, ScaledIntegersRecipe, UniformSymmetricRecipe

__all__ = ["e2m1", "bnb_fp4", "uniform_symmetric", "scaled_integers"]


def _sign_magnitude_table(magnitudes: np.ndarray) -> np.ndarray:
    """Append the negated magnitudes (sign bit = top bit), ``-0.0`` included."""
    return np.concatenate([magnitudes, -magnitudes])


def _normalise_f32(code: np.ndarray) -> np.ndarray:
    """Divide by the largest magnitude in float32, as a float32 framework table would."""
    c32 = code.astype(np.float32)
    return (c32 / np.abs(c32).max()).astype(np.float64)


def e2m1(normalise: bool = E2M1Recipe.normalise, name: str = "e2m1") -> Codebook:
    """OCP MX FP4 (E2M1): 1 sign, 2 exponent (bias 1), 1 mantissa bit; subnormal at e = 0.

    Magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 (OCP Microscaling Formats v1.0, sec. 5.3.3);
    ``normalise`` divides by 6 so the grid spans [-1, 1].
    """
    recipe = E2M1Recipe(normalise)
    mags = []
    for p in range(8):
        e, m = p >> 1, p & 1
        mags.append(0.5 * m if e == 0 else 2.0 ** (e - 1) * (1 + 0.5 * m))
    code = _sign_magnitude_table(np.array(mags))
    if recipe.normalise:
        code = _normalise_f32(code)
    levels = np.unique(code)
    return Codebook(levels=levels, bits=4, name=name, source="derived", recipe=recipe.to_dict(), code=code)


def bnb_fp4(name: str = "fp4") -> Codebook:
    """bitsandbytes' own FP4: 3 magnitude bits ``e1 e0 m`` read as 2**(4-e)·(1 + m/2) for
    e > 0 and m·2**-4 for e = 0 (magnitudes 0, 0.0625, 8, 12, 4, 6, 2, 3 in bit-pattern
    order, bitsandbytes/functional.py ``get_4bit_type('fp4')``), divided by 12 in float32;
    index 8 is +0.0 as in bitsandbytes' table."""
    mags = []
    for p in range(8):
        e, m = p >> 1, p & 1
        mags.append(m * 2.0**-4 if e == 0 else 2.0 ** (4 - e) * (1 + 0.5 * m))
    # bitsandbytes builds the table from a Python list where "-0" is the integer 0: +0.0
    code = _normalise_f32(_sign_magnitude_table(np.array(mags))) + 0.0
    return Codebook(levels=np.unique(code), bits=4, name=name, source="derived", recipe=BnbFP4Recipe().to_dict(),
                    code=code)


def uniform_symmetric(bits: int = UniformSymmetricRecipe.bits, name: str | None = None) -> Codebook:
    """Symmetric uniform integers j/(2**(k-1) - 1), j = -(2**(k-1) - 1) … 2**(k-1) - 1
    (2**k - 1 levels; the two's-complement minimum is unused), sorted order."""
    check_given_name(name)
    recipe = UniformSymmetricRecipe(bits)
    m = 2 ** (recipe.bits - 1) - 1
    levels = np.arange(-m, m + 1, dtype=np.float64) / m
    return Codebook(levels=levels, bits=recipe.bits, name=f"int{recipe.bits}-sym" if name is None else name,
                    source="derived", recipe=recipe.to_dict())


def scaled_integers(integers: Iterable[int], divisor: int, bits: int, name: str = "scaled") -> Codebook:
    """A published integer table divided by ``divisor`` in float64 (e.g. ggml's IQ4_NL/127): a
    transcription of the integers, not a derivation."""
    recipe = ScaledIntegersRecipe(tuple(integers), divisor, bits)
    code = np.array(recipe.integers, dtype=np.float64) / recipe.divisor
    return Codebook(levels=np.unique(code), bits=recipe.bits, name=name, source="derived",
                    recipe=recipe.to_dict(), code=code)
