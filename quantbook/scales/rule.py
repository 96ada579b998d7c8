"""The scale rule: how a block's scale is computed from its values, stored, and paid for.

A block of weights is stored as codes plus a scale; decoding multiplies the codebook's value
by the scale.  The rule says

* how the scale follows from the block's absolute maximum ``M`` (and, for a two-level
  format, from a float32 per-tensor scale): :meth:`ScaleRule.encode` gives the stored value,
  :meth:`ScaleRule.decode` the float32 scale it stands for, and :meth:`ScaleRule.scale` the
  composition ``s(M)``;
* where ``s(M)`` jumps (:meth:`ScaleRule.breakpoints`), so an exact derivation can integrate
  piecewise over ``M``;
* how the values are divided by it before encoding (:meth:`ScaleRule.divisor`), to the
  float32 operation, because that decides the bytes;
* how it is stored (``stored_dtype``, ``stored_bytes`` per block, ``tensor_bytes`` per
  tensor) and its cost in bits per weight (:meth:`ScaleRule.bits_per_weight`).

``qmax`` is the codebook's largest magnitude in the units the scale multiplies (E2M1's is
6): the rule maps the block's amax to it, so the codebook's range is part of the rule.

Families register by subclassing with ``family=`` (as the bulk backends do); a spec string
``FAMILY[:ARG]`` names a rule (:func:`get_rule`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from ..numerics.arguments import did_you_mean, is_int
from ..numerics.fpstate import ignore_underflow
from ..numerics.reals import real_array

__all__ = ["ScaleRule", "FAMILIES", "get_rule", "rule_names", "rule_spellings", "check_qmax", "check_scaled_only",
           "layout_qmax",
           "SCALED_BITS", "check_scaled_bits", "scaled_peak", "scaled_products", "scaled_values"]

#: the codebook's largest magnitude in the units the scale multiplies (E2M1's 6), the default
#: qmax of quantize, the derivations and the command line
DEFAULT_QMAX = 6.0

_F = np.float32

#: family name -> rule class, in registration order
FAMILIES: dict[str, type["ScaleRule"]] = {}


def _maxima(amax: Any) -> np.ndarray:
    """Block maxima as float32 (beyond float32's range: inf); NaN, a negative value or
    anything but real numbers is an error naming the first such block."""
    if np.asarray(amax).dtype.kind == "b":   # True is not a maximum of 1
        raise ValueError(f"block maxima must be real numbers, got {amax!r}")
    a = real_array(amax, "block maxima")
    with np.errstate(over="ignore"):
        m = a.astype(_F)
    bad = np.flatnonzero(np.isnan(m) | (m < 0))
    if bad.size:
        raise ValueError(f"block {int(bad[0])}: its maximum {m.reshape(-1)[bad[0]]} is not a non-negative number")
    return np.abs(m)   # -0.0 is 0

class ScaleRule:
    """Base class of the scale rules (see the module docstring).

    A rule instance is immutable and named by its full spec (``"e8m0:floor"``).  Arrays are
    float32 numpy arrays; ``amax`` holds finite non-negative block maxima.
    """

    family: ClassVar[str]
    #: ``s(M)`` depends on the block maximum alone (and the tensor scale): false for search
    #: rules and for statistics coded across blocks (nested)
    deterministic: ClassVar[bool] = True
    #: the values are encoded with the exact block maximum (codes in ±1) and only the decoded
    #: scale is rounded, from statistics of other blocks too (bitsandbytes' nested statistics):
    #: the law of the codes is then the absmax law and the error adds the scale's
    encodes_with_amax: ClassVar[bool] = False
    #: the stored scale may be negative (ggml's search: the sign picks which end of an
    #: asymmetric table the block's extreme lands on)
    signed: ClassVar[bool] = False
    #: the byte layout that stores this rule's scales (:mod:`quantbook.bulk`)
    layout: ClassVar[str] = "scaled"
    # stored_dtype to fixed_qmax and format_blocks: a class's, or an instance's where a rule stores
    # as the rule it wraps does (a search as its base), hence no ClassVar
    #: numpy dtype name of one stored block scale, its bytes, and the per-tensor bytes
    stored_dtype: str
    stored_bytes: int
    tensor_bytes: int = 0
    #: what the ``tensor_bytes`` per tensor hold
    tensor_value: str = "float32 tensor scale"
    #: the only ``qmax`` a rule takes whose arithmetic is written for one element format
    #: (None: any)
    fixed_qmax: float | None = None
    #: what the family is, where rules are listed (help texts): ``"MXFP4"``
    summary: ClassVar[str] = ""
    #: the format whose block scales these are and the block size it stores (``("NVFP4", 16)``), where
    #: one format uses the rule: a layout of another block size is not that format
    format_blocks: tuple[str, int] | None = None

    def __init_subclass__(cls, family: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if family is not None:
            if family in FAMILIES:
                raise ValueError(f"a scale rule family named {family!r} is already registered")
            cls.family = family
            FAMILIES[family] = cls

    # ----------------------------------------------------------------- naming
    @classmethod
    def from_arg(cls, arg: str | None) -> "ScaleRule":
        """The rule for ``FAMILY:ARG`` (``arg`` None for a bare family name)."""
        if arg is not None:
            raise ValueError(f"scale rule {cls.family!r} takes no argument, got {arg!r}")
        return cls()

    @classmethod
    def variants(cls) -> tuple[str, ...]:
        """Every spec this family accepts without free parameters."""
        return (cls.family,)

    @property
    def name(self) -> str:
        return self.family

    def __repr__(self) -> str:
        return f"ScaleRule({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScaleRule) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    # ----------------------------------------------------------------- the rule
    def candidate(self, qmax: float, factor: float) -> tuple["ScaleRule", float]:
        """``(rule, qmax)`` that map a block's maximum to ``factor · qmax``: one candidate of a
        search (:mod:`.search`).  Default: this rule with ``qmax`` scaled."""
        return self, float(qmax) * float(factor)

    def tensor_scale(self, global_amax: float, qmax: float) -> np.float32 | None:
        """The float32 per-tensor scale of a two-level rule (None for one-level rules)."""
        return None

    def encode(self, amax: np.ndarray, qmax: float, tensor_scale: Any = None) -> np.ndarray:
        """Stored block scales (``stored_dtype``) for block maxima ``amax``; a block whose
        scale the format cannot hold (:meth:`overflow`) is an error naming it."""
        stored = self._encode(_maxima(amax), check_qmax(qmax), tensor_scale)
        bad = np.flatnonzero(self.overflow(stored))
        if bad.size:
            raise ValueError(f"block {int(bad[0])}: its scale overflows {self.name} (amax beyond the "
                             "scale format's range); use a wider scale rule such as bfloat16 or float32")
        return stored[()]

    def _encode(self, amax: np.ndarray, qmax: float, tensor_scale: Any) -> np.ndarray:
        """The stored values, without checks (float32 ``amax``, a checked ``qmax``)."""
        raise ValueError(f"scale rule {self.name!r} has no stored scale that follows from a block's maximum "
                         "alone; quantize through quantbook.quantize")

    def storable(self, amax: Any, qmax: float, tensor_scale: Any = None) -> np.ndarray:
        """Per block maximum, whether its scale is one the format holds (:meth:`encode` refuses
        the others)."""
        m = _maxima(amax)
        return (~self.overflow(self._encode(m.reshape(-1), check_qmax(qmax), tensor_scale)).reshape(m.shape))[()]

    def overflow(self, stored: np.ndarray) -> np.ndarray:
        """Per block, whether the stored value stands for no finite scale (:meth:`encode`
        refuses it).  Default: never."""
        return np.zeros(np.shape(stored), dtype=bool)

    def underflow(self, stored: np.ndarray, tensor_scale: Any = None) -> np.ndarray:
        """Per block, whether the scale is too small to divide by (:meth:`divisor` refuses
        it).  Default: never."""
        return np.zeros(np.shape(stored), dtype=bool)

    def decode(self, stored: np.ndarray, tensor_scale: Any = None) -> np.ndarray:
        """The float32 scale each stored value stands for: decoding is
        ``float32(table[code] * decode(stored))``."""
        return np.asarray(self._decode(stored, tensor_scale))[()]

    def _decode(self, stored: np.ndarray, tensor_scale: Any) -> np.ndarray:
        raise ValueError(f"scale rule {self.name!r} has no stored scale to decode by itself; dequantize "
                         "through quantbook.dequantize")

    def divisor(self, stored: np.ndarray, tensor_scale: Any = None) -> tuple[np.ndarray, bool]:
        """``(f, divide)``: values are scaled as ``float32(x / f)`` when ``divide``, else as
        ``float32(x * f)`` (float32 per block).  A block :meth:`underflow` names is an error."""
        bad = np.flatnonzero(self.underflow(stored, tensor_scale))
        if bad.size:
            s = float(self.decode(np.asarray(stored).reshape(-1)[bad[:1]], tensor_scale)[0])
            raise ValueError(f"block {int(bad[0])}: its {self.name} scale {s:.3g} is subnormal "
                             "(amax below the scale format's normal range)")
        f, divide = self._divisor(stored, tensor_scale)
        return np.asarray(f)[()], divide

    @ignore_underflow
    def _divisor(self, stored: np.ndarray, tensor_scale: Any) -> tuple[np.ndarray, bool]:
        """:meth:`divisor` without checks.  Default: multiply by the float32 reciprocal of the
        decoded scale, 0 for a zero scale (the block then encodes as zeros)."""
        s = self.decode(stored, tensor_scale)
        with np.errstate(divide="ignore", over="ignore"):
            f = np.where(s > 0, _F(1) / np.where(s > 0, s, _F(1)), _F(0)).astype(_F)
        return f, False

    def scale(self, amax: Any, qmax: float, tensor_scale: Any = None) -> np.ndarray:
        """``s(M)``: the effective float32 scale of blocks with maximum ``amax``."""
        m = _maxima(amax)
        return self.decode(self.encode(m.reshape(-1), qmax, tensor_scale), tensor_scale).reshape(m.shape)[()]

    def breakpoints(self, qmax: float, tensor_scale: Any = None, lo: float = 0.0,
                    hi: float = float(np.finfo(np.float32).max)) -> np.ndarray:
        """Sorted float64 values of ``M`` in ``[lo, hi]`` where ``s(M)`` changes; ``s`` is
        constant between neighbours.  The side a breakpoint itself belongs to is the rule's
        rounding (float16 and bfloat16 round a tie to even, so it alternates): the laws built on
        these pieces are continuous, where a single point carries no mass."""
        raise ValueError(f"scale rule {self.name!r} has no scale function s(M) of a block's maximum alone")

    def bits_per_weight(self, block_size: int, code_bits: int = 4, n: int | None = None) -> float:
        """Code bits plus the stored scales per weight; ``n`` (the tensor's size) adds the
        per-tensor bytes, which vanish for large tensors when ``n`` is None.  The scaled layouts
        store any code of up to 16 entries in :data:`SCALED_BITS` bits, so a code declared wider
        counts those; a narrower one counts its own width."""
        if self.layout == "scaled":
            code_bits = min(code_bits, SCALED_BITS)
        bpw = code_bits + 8.0 * self.stored_bytes / block_size
        if n:
            bpw += 8.0 * self.tensor_bytes / n
        return bpw


def check_scaled_only(rule: "ScaleRule | None", **given: bool) -> None:
    """The layout options (qmax, a tensor maximum or size) mean something only under a rule of
    the scaled layouts; ``given`` maps each option's name (as the caller spells it: ``qmax``,
    ``--qmax``) to whether it was given.  A ValueError naming those given when ``rule`` is None
    or stores bitsandbytes' layout.  The one check of it."""
    if rule is not None and rule.layout == "scaled":
        return
    named = [name for name, on in given.items() if on]
    if named:
        verb = "applies" if len(named) == 1 else "apply"
        raise ValueError(f"{', '.join(named[:-1]) + ' and ' if len(named) > 1 else ''}{named[-1]} {verb} "
                         f"only with a rule of the scaled layouts ({rule_spellings(lambda r: r.layout == 'scaled')});"
                         " float32 and nested keep bitsandbytes' exact absmax")


def layout_qmax(rule: Any, qmax: float = DEFAULT_QMAX) -> float | None:
    """The qmax a result under ``rule`` (a rule, its name, or None) states: ``qmax`` under a rule of
    the scaled layouts, None under bitsandbytes' layout (no rule, float32, nested), which maps
    each block to ±1 and has none."""
    return float(qmax) if rule is not None and get_rule(rule).layout == "scaled" else None


#: the scaled layouts store 4-bit codes
SCALED_BITS = 4


def check_scaled_bits(bits: int) -> int:
    """Bits a code of the scaled layouts: 1 to 4 (its 16 entries hold any narrower code)."""
    if not is_int(bits):
        raise ValueError(f"bits must be an integer from 1 to {SCALED_BITS}, got {bits!r}")
    if not 1 <= bits <= SCALED_BITS:
        raise ValueError(f"the scaled layouts store {SCALED_BITS}-bit codes: bits must be 1 to {SCALED_BITS}, "
                         f"got {bits}")
    return int(bits)


def scaled_peak(levels: Any) -> float:
    """The largest magnitude of a codebook the scaled layouts store (their table is the codebook
    times ``qmax`` over it): one to 16 entries, not all 0.  The one check of it, for quantize,
    the exact laws and the Monte Carlo of a search rule alike.  ``levels``: the values, or a
    Codebook."""
    c = np.asarray(getattr(levels, "levels", levels), dtype=np.float64).reshape(-1)
    if not 1 <= c.size <= 2**SCALED_BITS:
        raise ValueError(f"the scaled layouts store {SCALED_BITS}-bit codes: the codebook must have at most "
                         f"{2**SCALED_BITS} entries, got {c.size}")
    peak = float(np.max(np.abs(c)))
    if not peak > 0:
        raise ValueError("a codebook whose levels are all 0 has no largest magnitude to scale")
    return peak


def scaled_values(levels: Any, qmax: Any) -> np.ndarray:
    """The float32 values the scaled layouts store for a codebook, in its order: ``levels ·
    (qmax / max|levels|)``, quotient and product in float64, the product rounded to float32
    (not always the correctly rounded value; the stored bytes keep it).  The one rule, for the
    layout's table and for the fits and errors that measure it.  ``levels``: the values, or a
    Codebook (its stored code, as the layout stores it: its sorted levels lack E2M1's -0)."""
    return scaled_products(levels, qmax).astype(np.float32)


def scaled_products(levels: Any, qmax: Any) -> np.ndarray:
    """The float64 products that :func:`scaled_values` rounds to float32 (a derivation checks
    them for float32 rounding edges)."""
    c = np.asarray(getattr(levels, "code", levels), dtype=np.float64).reshape(-1)
    peak = scaled_peak(c)
    return c * (check_qmax(qmax) / peak)


def check_tensor_amax(global_amax: Any) -> np.float32:
    """A tensor's absolute maximum as the float32 a tensor scale is made from; a ValueError
    unless it is finite and non-negative (an absolute maximum is never below 0)."""
    g = np.float32(global_amax)
    if not np.isfinite(g) or g < 0:
        raise ValueError(f"the tensor's amax must be finite and non-negative, got {float(g)!r}")
    return g


def check_qmax(qmax: Any) -> float:
    """``qmax`` (the table's largest magnitude in the units the scale multiplies) as a float:
    a real number that the rules, which compute in float32, can use: a positive normal
    float32 value.  The one check of it; a ValueError otherwise."""
    real = isinstance(qmax, (int, float, np.integer, np.floating)) and not isinstance(qmax, (bool, np.bool_))
    q = float(qmax) if real else math.nan
    with np.errstate(over="ignore"):
        q32 = np.float32(q)
    if not (np.isfinite(q) and np.isfinite(q32) and q32 >= np.finfo(np.float32).tiny):
        raise ValueError(f"qmax (the codebook's largest magnitude) must be a positive finite number within "
                         f"float32's normal range, got {qmax!r}")
    return q




def get_rule(spec: Any) -> ScaleRule:
    """The rule named by ``spec`` (``"e4m3"``, ``"e8m0:rceil"``, ``"search:4over6"``, ...)
    or a :class:`ScaleRule` itself."""
    if isinstance(spec, ScaleRule):
        return spec
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"scale must be a rule name such as {', '.join(rule_names()[:4])}, got {spec!r}")
    family, _, arg = spec.strip().lower().partition(":")
    cls = FAMILIES.get(family)
    if cls is None:
        # a format's name (mxfp4, nvfp4) is what users type: point it at its family by the family's summary
        formats = {c.summary.lower(): f for f, c in FAMILIES.items() if c.summary}
        hint = (f" ({spec.strip()} is a format; its block scale rule is {formats[family]!r})" if family in formats
                else did_you_mean(spec.strip(), rule_names()) or did_you_mean(family, FAMILIES))
        raise ValueError(f"unknown scale rule {spec!r}{hint}; known: {', '.join(rule_names())}")
    return cls.from_arg(arg or None)


def rule_names() -> tuple[str, ...]:
    """Every rule spec without free parameters, in registration order."""
    return tuple(v for cls in FAMILIES.values() for v in cls.variants())


def rule_spellings(keep: Any = None) -> str:
    """The rules that ``keep(rule)`` accepts (all by default), one entry a family in
    registration order, for help texts and messages: ``e8m0[:floor|ceil|even|rceil] (MXFP4)``,
    with brackets where the bare family name is a rule too."""
    out = []
    for family, cls in FAMILIES.items():
        names = [v for v in cls.variants() if keep is None or keep(get_rule(v))]
        if not names:
            continue
        args = "|".join(v.partition(":")[2] for v in names if ":" in v)
        try:
            bare = cls.from_arg(None).name in names
        except ValueError:
            bare = False
        text = family if not args else f"{family}[:{args}]" if bare else f"{family}:{args}"
        out.append(f"{text} ({cls.summary})" if cls.summary else text)
    return ", ".join(out)
