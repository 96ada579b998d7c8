"""Where NF4's offset 929/960 = 0.96770833… comes from, derived symbolically with sympy.

For ``n`` equal-probability bins of a distribution, the centre of the last bin sits at
probability ``1 - 1/(2n)``.  NFk has ``2**k`` levels but only ``2**k - 1`` non-zero ones,
so there are two natural choices for the outermost quantile position:

* ``1 - 1/(2(2**k - 1))`` (k = 4: 29/30 = 0.9666…) — ``2**k - 1`` bins;
* ``1 - 1/(2·2**k)``       (k = 4: 31/32 = 0.96875) — ``2**k`` bins.

QLoRA's offset is their mean: ``(29/30 + 31/32)/2 = 929/960``.  bitsandbytes writes it as
the decimal literal ``0.9677083``, which is ``929/960 - 1/30000000`` (3.3e-8 lower); in
float32 the two are different numbers (``0x3f77bbbb`` vs ``0x3f77bbbc``), one of the
reasons a plain float64 derivation misses bitsandbytes' table by a few ULPs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .normal_float import _check_bits

if TYPE_CHECKING:   # sympy is imported at first use: it costs more than the rest of quantbook.derive
    import sympy as sp

__all__ = ["OffsetDerivation", "derive_offset"]


@dataclass(frozen=True)
class OffsetDerivation:
    """The steps of :func:`derive_offset`, as exact rationals; :meth:`lines` prints them."""

    bits: int
    lower_position: sp.Rational  # 1 - 1/(2(2**k - 1))
    upper_position: sp.Rational  # 1 - 1/(2·2**k)
    offset: sp.Rational          # their mean
    bnb_literal: sp.Rational     # 0.9677083 as a rational
    literal_minus_offset: sp.Rational

    def lines(self) -> list[str]:
        import sympy as sp

        k = self.bits
        f32 = lambda r: np.float32(float(r)).view(np.uint32)  # noqa: E731
        out = [
            f"n = 2**{k} levels, {2**k - 1} of them non-zero",
            f"centre of last of 2**k - 1 bins: 1 - 1/(2*{2**k - 1}) = {self.lower_position}"
            f" = {sp.N(self.lower_position, 12)}",
            f"centre of last of 2**k bins:     1 - 1/(2*{2**k}) = {self.upper_position}"
            f" = {sp.N(self.upper_position, 12)}",
            f"offset = mean of the two = {self.offset} = {sp.N(self.offset, 20)}",
        ]
        if k == 4:
            out += [
                f"bitsandbytes literal 0.9677083 = {self.bnb_literal};"
                f" literal - offset = {self.literal_minus_offset}",
                f"float32 bits: offset 0x{f32(self.offset):08x}, literal 0x{f32(self.bnb_literal):08x}",
            ]
        return out


def derive_offset(bits: int = 4) -> OffsetDerivation:
    """Symbolic derivation of the default NFk offset (see the module docstring), for ``bits``
    2..8 as :func:`~.normal_float.default_offset`; returns an :class:`OffsetDerivation`."""
    import sympy as sp

    bits = _check_bits(bits)   # bits 0 gave offset zoo, 4.0 floats, "4" a sympy TypeError
    n = sp.Integer(2) ** bits
    lower = 1 - sp.Rational(1, 2) / (n - 1)
    upper = 1 - sp.Rational(1, 2) / n
    offset = sp.nsimplify((lower + upper) / 2)
    literal = sp.Rational("0.9677083")
    return OffsetDerivation(bits, lower, upper, offset, literal, literal - offset)
