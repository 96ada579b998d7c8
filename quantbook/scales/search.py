"""Scale search: each block tries several scales and keeps the one with the least error.

A search rule wraps a deterministic base rule and a set of targets: candidate ``k`` maps the
block's amax to ``f_k * qmax`` (the base rule encoded with ``qmax`` replaced by
``f_k * qmax``); the block keeps the candidate whose decoded block has the least sum of
squared (``l2``) or absolute (``l1``) errors (:func:`block_errors`), the first on a tie.  Stored bytes and cost are
the base rule's.  The error is computed by the byte layout (:mod:`quantbook.bulk.layouts`),
which owns the quantizer.

Spec: ``search:PRESET`` or ``search:BASE@f1,f2,...[/l1|/l2]``, e.g.
``search:e8m0:rceil@1,0.75/l1``.  Presets:

* ``ggml`` and ``ggml-ref`` — ggml's IQ4_NL quantizers, a least-squares search over trial
  scales with a signed float16 scale (:mod:`.ggml`); it sees every value of the block, not
  only candidates from its amax.
* ``4over6`` — "Four Over Six" (Cook et al., 2025, arXiv:2512.02010): per NVFP4 block, amax
  mapped to 6 or to 4, lower squared error kept: base ``e4m3``, targets {1, 4/6}, ``l2``.
  The tensor scale is the base rule's (``G / (6 * 448)``, torchao's NVFP4), so a block near
  the tensor's maximum cannot reach 4: its scale would pass E4M3's 448.
* ``fouroversix`` — the same choice with the scales of the authors' package (:mod:`.fouroversix`;
  its bytes but for the cases docs/scales.md lists): base ``fouroversix:6``, targets {1, 4/6},
  ``l2``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..numerics.losses import check_loss
from .ggml import GGML_PRESETS, GgmlSearch
from .rule import DEFAULT_QMAX, ScaleRule, get_rule

__all__ = ["SearchScale", "PRESETS", "block_errors"]

_F = np.float32

#: preset name -> (base spec, target factors, loss)
PRESETS: dict[str, tuple[str, tuple[float, ...], str]] = {
    "4over6": ("e4m3", (1.0, 4.0 / 6.0), "l2"),
    "fouroversix": ("fouroversix:6", (1.0, 4.0 / 6.0), "l2"),
}


def block_errors(x: np.ndarray, deq: np.ndarray, block_size: int, loss: str) -> np.ndarray:
    """The error a search compares: per block, the float64 sum in element order of ``|x - deq|``
    (``l1``) or its square (``l2``), from the float32 values ``x`` and ``deq``; a partial last
    block adds only its values.  Every backend's kernel and the sample fit add in this order."""
    d = np.abs(np.asarray(x, np.float32).reshape(-1).astype(np.float64)
               - np.asarray(deq, np.float32).reshape(-1).astype(np.float64))
    if loss == "l2":
        d = d * d
    nb = -(-d.size // block_size)
    pad = np.zeros(nb * block_size)
    pad[: d.size] = d
    return np.ascontiguousarray(np.cumsum(pad.reshape(nb, block_size), axis=1)[:, -1])


def _spelled(factor: float) -> str:
    """``factor`` as the name writes it: short, unless that reads back as another number (the name
    is the rule's identity: equality, a state's scale_rule, a recipe's scale)."""
    short = f"{factor:g}"
    return short if float(short) == factor else repr(factor)


class SearchScale(ScaleRule, family="search"):
    """``search:...``: per block, the best of several scales of a base rule (module docstring)."""

    deterministic = False
    summary = "the best of several scales per block; also search:BASE@F1,F2,..."

    def __init__(self, base: ScaleRule | str, factors: Sequence[float], loss: str = "l2",
                 preset: str | None = None) -> None:
        base = get_rule(base)
        if not base.deterministic or base.layout != "scaled":
            raise ValueError(f"a search needs a deterministic base rule of the scaled layout, got {base.name!r}")
        f = tuple(float(v) for v in factors)
        if not f or not all(np.isfinite(v) and v > 0 for v in f):
            raise ValueError(f"search targets must be positive finite factors, got {factors!r}")
        check_loss(loss, "search loss")
        self.base, self.factors, self.loss, self.preset = base, f, loss, preset
        self.candidate_rules(DEFAULT_QMAX)   # a base rule refuses targets it cannot map to, here
        self.stored_dtype, self.stored_bytes = base.stored_dtype, base.stored_bytes
        self.tensor_bytes, self.tensor_value, self.fixed_qmax = base.tensor_bytes, base.tensor_value, base.fixed_qmax
        self.format_blocks = base.format_blocks

    @classmethod
    def from_arg(cls, arg: str | None) -> "ScaleRule":
        if arg is None:
            raise ValueError("a search rule needs a preset or BASE@f1,f2[/l1|/l2], "
                             f"e.g. search:4over6 (presets: {', '.join(cls.presets())})")
        if arg in GGML_PRESETS:
            return GgmlSearch(GGML_PRESETS[arg])
        if arg in PRESETS:
            base, f, loss = PRESETS[arg]
            return cls(base, f, loss, preset=arg)
        body, _, loss = arg.partition("/")
        base, at, fs = body.partition("@")
        if not at:
            raise ValueError(f"search rule {arg!r}: expected a preset ({', '.join(cls.presets())}) "
                             "or BASE@f1,f2,...[/l1|/l2]")
        try:
            factors = [float(v) for v in fs.split(",")]
        except ValueError:
            raise ValueError(f"search rule {arg!r}: targets must be numbers") from None
        return cls(base, factors, loss or "l2")

    @staticmethod
    def presets() -> tuple[str, ...]:
        return (*PRESETS, *GGML_PRESETS)

    @classmethod
    def variants(cls) -> tuple[str, ...]:
        return tuple(f"search:{p}" for p in cls.presets())

    @property
    def name(self) -> str:
        if self.preset:
            return f"search:{self.preset}"
        return f"search:{self.base.name}@{','.join(_spelled(v) for v in self.factors)}/{self.loss}"

    def tensor_scale(self, global_amax: float, qmax: float) -> np.float32 | None:
        return self.base.tensor_scale(global_amax, qmax)

    def candidate_rules(self, qmax: float) -> list[tuple[ScaleRule, float]]:
        """Per candidate, in order, the deterministic rule and ``qmax`` that encode it
        (:meth:`ScaleRule.candidate` of the base rule): they share the base rule's stored
        values, decode and divisor."""
        return [self.base.candidate(qmax, f) for f in self.factors]

    def candidates(self, amax: np.ndarray, qmax: float, tensor_scale: Any = None) -> list[np.ndarray]:
        """The stored scales of every candidate, in order."""
        return [r.encode(amax, q, tensor_scale) for r, q in self.candidate_rules(qmax)]

    def pick(self, errors: Sequence[Any]) -> Any:
        """Per block, the index of the candidate with the least error, the first on a tie;
        ``errors`` holds one array per candidate.  Only comparisons and indexing are used, so
        it runs on the errors' own kind of array (numpy, or CuPy on the device)."""
        best = errors[0].copy()
        pick = (best != best).astype(np.int64)             # zeros, of the same kind
        for k, e in enumerate(errors[1:], 1):
            better = e < best
            best[better] = e[better]
            pick[better] = k
        return pick

    def encode(self, amax: np.ndarray, qmax: float, tensor_scale: Any = None) -> np.ndarray:
        raise ValueError(f"{self.name} chooses its scales from the values, not from amax alone; "
                         "quantize through quantbook.quantize")

    def _decode(self, stored, tensor_scale):
        return self.base.decode(stored, tensor_scale)

    def divisor(self, stored: np.ndarray, tensor_scale: Any = None) -> tuple[np.ndarray, bool]:
        return self.base.divisor(stored, tensor_scale)

    def breakpoints(self, qmax: float, tensor_scale: Any = None, lo: float = 0.0,
                    hi: float = float(np.finfo(_F).max)) -> np.ndarray:
        raise ValueError(f"{self.name} has no scale function s(M): its law is not 1-D")
