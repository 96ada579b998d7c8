r"""The law of one value of a block quantized under a scale rule (:mod:`quantbook.scales`).

Model.  ``x_1 … x_B`` i.i.d. with density ``g``; ``M = max_i |x_i|``; the rule gives the
block's scale ``s(M)`` (a step function of ``M``, constant between the rule's breakpoints);
the scaled layout stores the codebook as a table whose largest magnitude is ``qmax``, so in
the codebook's own units (largest magnitude 1) a value becomes

    u = x / σ(M),    σ(M) = qmax · s(M),

and it is encoded as the nearest level, values beyond the outermost levels saturating: the
clipping error counts.  The weight-domain error of a value is ``σ(M)·(u - q(u))``.

Unlike the exact absmax law (:mod:`.block`), ``u`` is not bounded by 1: the extreme value of
a block is ``M / σ(M)``, a saw-tooth in ``M`` (E2M1 under MX's ``floor`` rounding: between
4/6 and 8/6).  It has no atom.

Closed form.  Pick one of the ``B`` values, ``x``, and let ``R`` be the largest magnitude of
the other ``B - 1``, with cdf ``K(r) = G(r)^{B-1}``, ``G(r) = P(|X| <= r)``; ``x`` and ``R``
are independent and ``M = max(|x|, R)``.  On a piece ``b_j <= M < b_{j+1}`` of constant
``σ_j``, for ``a = u σ_j >= 0``,

    E[x^k 1{0 < x <= a} 1{b_j <= M < b_{j+1}}] = Ψ_k(min(a, b_{j+1})) K(b_{j+1})
                                                 - Ψ_k(min(a, b_j)) K(b_j)

(``Ψ_k(v) = ∫_0^v t^k g(t) dt``, :meth:`Source.partial_moment`; ``x <= a`` and ``M < b``
means ``x < min(a, b)`` and ``R < b``), and the same with ``max``/``-b`` for ``a < 0``.  So
every partial moment of the ``σ^p``-weighted law of ``u`` (``p`` = 0: the normalised
domain, 1 or 2: the weight domain for L1 or L2) is a finite sum over the pieces,

    T(k, u) = ∫_0^u t^k dμ_p = Σ_j σ_j^{p-k} [Ψ_k(clip(u σ_j, ±b_{j+1})) K(b_{j+1})
                                               - Ψ_k(clip(u σ_j, ±b_j)) K(b_j)],

with no quadrature at all; the density is its derivative.  The pieces are the rule's
breakpoints (:meth:`ScaleRule.breakpoints`) between ``m_lo`` and ``m_hi``, where
``P(M < m_lo)`` is below 1e-20 and the weighted tail beyond ``m_hi`` below e^-40 of the
total (as in :mod:`.block`); the scale is taken as constant below ``m_lo`` and above
``m_hi``.  Float32 rounding of ``x / s`` and of the decoded value (relative 2**-24) is
ignored, as are ties, which have probability 0.

The NVFP4 tensor scale.  Under ``e4m3`` the block scale is ``t · e4m3(M / (qmax t))`` with
``t = G / (qmax · 448)``, ``G`` the tensor's absolute maximum, so where the E4M3 grid lies
relative to the data depends on ``G``; since the grid repeats every power of two, only the
phase ``log2 G mod 1`` matters.  Three models (:class:`TensorModel`):

* default: the phase uniform on [0, 1) (a midpoint rule on :data:`N_PHASE` phases), the
  blocks i.i.d. — a property of the layout, not of one tensor;
* ``tensor_amax=G``: that tensor maximum (in units of the source), the blocks i.i.d. given
  ``M <= G``;
* ``tensor_size=n``: ``G`` the maximum of ``n`` i.i.d. values (cdf ``G(g)^n``), averaged by
  a midpoint rule on :data:`N_TENSOR` equal-probability values of ``G``, each as above.

The last two neglect that one block of the tensor holds ``G`` itself (a ``1/blocks``
effect).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

from ..scales import ScaleRule, get_rule
from .block import BlockDistribution, _as_real_array, _check_block_size, _check_weight_power, _Measure, _monotone_solve
from .sources import Source, parse_source

__all__ = ["ScaledMeasure", "ScaledBlockDistribution", "scaled_measure", "check_scale", "TensorModel",
           "N_PHASE", "N_TENSOR", "DEFAULT_QMAX"]

#: phases of the tensor scale averaged in the default e4m3 model
N_PHASE = 32
#: values of the tensor maximum averaged for ``tensor_size=n``
N_TENSOR = 48
#: the codebook's largest magnitude in the units the scale multiplies, as in quantbook.quantize
DEFAULT_QMAX = 6.0
#: ``P(M < m_lo)`` below this is dropped
_LOW_MASS = 1e-20
#: values x pieces evaluated at once (memory)
_CHUNK = 1 << 21


def check_scale(scale: Any) -> ScaleRule:
    """The rule named by ``scale``, which must be a function of the block maximum."""
    rule = get_rule(scale)
    if not rule.deterministic:
        raise ValueError(f"scale rule {rule.name!r} is not a function of the block maximum: its law is not "
                         "1-D (derive search rules with a sample Lloyd, nested statistics are not modelled)")
    return rule


class TensorModel:
    """How the tensor scale of a two-level rule is modelled (module docstring): ``amax`` or
    ``size`` or neither (uniform phase)."""

    def __init__(self, tensor_amax: Any = None, tensor_size: Any = None) -> None:
        if tensor_amax is not None and tensor_size is not None:
            raise ValueError("give tensor_amax or tensor_size, not both")
        if tensor_amax is not None:
            a = float(tensor_amax) if not isinstance(tensor_amax, bool) else math.nan
            if not (math.isfinite(a) and a > 0):
                raise ValueError(f"tensor_amax must be a positive finite number, got {tensor_amax!r}")
            tensor_amax = a
        if tensor_size is not None:
            if isinstance(tensor_size, bool) or not isinstance(tensor_size, (int, np.integer)) or tensor_size < 2:
                raise ValueError(f"tensor_size must be an integer >= 2, got {tensor_size!r}")
            tensor_size = int(tensor_size)
        self.amax, self.size = tensor_amax, tensor_size

    def key(self):
        return (self.amax, self.size)

    def describe(self) -> str:
        if self.amax is not None:
            return f"tensor amax {self.amax:g}"
        if self.size is not None:
            return f"tensors of {self.size} values"
        return "uniform tensor-scale phase"


def _K(source: Source, b: np.ndarray, power: int) -> np.ndarray:
    """``P(|X| <= b)**power`` (``b`` may be 0 or inf)."""
    b = np.asarray(b, dtype=np.float64)
    S = np.clip(source.sf(b) + source.cdf(-b), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        return np.exp(power * np.log1p(-S))


def _m_range(source: Source, B: int, weight_power: int) -> tuple[float, float]:
    m_lo = float(source.abs_ppf(math.exp(math.log(_LOW_MASS) / B)))
    lim = source.moment_limit
    decay = 1.0 - weight_power / lim if math.isfinite(lim) else 1.0
    z_hi = 45.0 if decay >= 1.0 else max(45.0, (40.0 + weight_power / lim * math.log(B)) / decay)
    m_hi = float(source.abs_isf(-math.expm1(-math.exp(-z_hi) / B)))
    if not (0 < m_lo < m_hi < math.inf):
        raise ValueError(f"{source.spec}: the block maximum's range at B={B} cannot be computed")
    return m_lo, m_hi


def _pieces(rule: ScaleRule, qmax: float, t: Any, lo: float, hi: float):
    """Edges ``[0, b_1 .. b_n, hi]`` and the ``σ`` of each piece between ``lo`` and ``hi``."""
    b = np.asarray(rule.breakpoints(qmax, t, lo, hi), dtype=np.float64)
    b = np.unique(b[(b > lo) & (b < hi)])
    edges = np.concatenate([[lo], b, [hi]])
    mid = 0.5 * (edges[:-1] + edges[1:])  # inside each piece: s is constant there
    with np.errstate(over="ignore"):
        sig = qmax * rule.scale(mid, qmax, t).astype(np.float64)
    if not np.all(np.isfinite(sig) & (sig > 0)):
        raise ValueError(f"scale rule {rule.name!r} gives no finite positive scale for block maxima in "
                         f"[{lo:.3g}, {hi:.3g}] at qmax={qmax:g}")
    edges[0] = 0.0  # the scale below m_lo is taken as that of the first piece
    return edges, sig


def _terms(source: Source, B: int, rule: ScaleRule, qmax: float, t: Any, m_lo: float, top: float,
           condition: bool):
    """``(σ, b, coef)`` of the sum in the module docstring for one tensor scale ``t``: blocks
    with ``M`` up to ``top``; ``condition``: divided by ``P(M <= top)`` (a tensor maximum),
    else the mass beyond ``top`` is given to the last piece."""
    edges, sig = _pieces(rule, qmax, t, m_lo, top)
    K = _K(source, edges, B - 1)
    if condition:
        K = K / float(_K(source, np.array([top]), B)[0])
    else:
        K[-1] = 1.0
    n = sig.size
    s = np.concatenate([sig, sig])
    b = np.concatenate([edges[1:], edges[:-1]])
    c = np.concatenate([K[1:], -K[:-1]])
    keep = c != 0
    return s[keep], b[keep], c[keep], float(np.max(edges[1:n + 1] / sig))


class ScaledMeasure(_Measure):
    """The ``σ(M)**weight_power``-weighted law of ``u`` (module docstring); ``total`` is
    ``E[σ(M)**weight_power]``.  Same interface as :class:`~.block.BlockMeasure`, no atoms."""

    def __init__(self, source: Source, block_size: int, rule: ScaleRule, qmax: float = DEFAULT_QMAX,
                 weight_power: int = 0, tensor: TensorModel | None = None) -> None:
        B = _check_block_size(block_size)
        weight_power = _check_weight_power(weight_power)
        if weight_power >= source.moment_limit:
            raise ValueError(f"{source.spec}: E[scale**{weight_power}] is infinite "
                             f"(needs more than {weight_power} finite moments); use the normalised domain")
        tensor = tensor or TensorModel()
        self.source, self.block_size, self.rule, self.qmax = source, B, rule, float(qmax)
        self.weight_power, self.tensor = weight_power, tensor
        m_lo, m_hi = _m_range(source, B, weight_power)
        parts, weights = [], []
        two_level = rule.tensor_scale(1.0, qmax) is not None
        if not two_level:
            if tensor.amax is not None or tensor.size is not None:
                raise ValueError(f"scale rule {rule.name!r} has no tensor scale: tensor_amax and tensor_size "
                                 "do not apply")
            parts.append(_terms(source, B, rule, qmax, None, m_lo, m_hi, False))
            weights.append(1.0)
        elif tensor.amax is not None or tensor.size is not None:
            if tensor.amax is not None:
                gs = np.array([tensor.amax])
            else:  # equal-probability values of the maximum of n values: P(max <= g) = G(g)**n
                q = (np.arange(N_TENSOR) + 0.5) / N_TENSOR
                gs = np.asarray(source.abs_isf(-np.expm1(np.log(q) / tensor.size)), dtype=np.float64)
            for g in gs:
                if g <= m_lo:
                    raise ValueError(f"tensor maximum {g:.3g} is below almost every block maximum at B={B}")
                parts.append(_terms(source, B, rule, qmax, rule.tensor_scale(g, qmax), m_lo, float(g), True))
                weights.append(1.0 / gs.size)
        else:  # uniform phase: t = 2**phi times a tensor maximum above every block maximum considered
            base = 2.0 ** math.ceil(math.log2(m_hi))
            for phi in (np.arange(N_PHASE) + 0.5) / N_PHASE:
                g = base * 2.0**phi
                parts.append(_terms(source, B, rule, qmax, rule.tensor_scale(g, qmax), m_lo, m_hi, False))
                weights.append(1.0 / N_PHASE)
        self.sig = np.concatenate([p[0] for p in parts])
        self.bnd = np.concatenate([p[1] for p in parts])
        self.coef = np.concatenate([p[2] * w for p, w in zip(parts, weights)])
        self.hi = float(max(p[3] for p in parts))
        self.lo = -self.hi
        self.atoms_x, self.atoms_w = np.zeros(0), np.zeros(0)
        self.n_pieces = self.sig.size // 2
        self._ck = {k: self.coef * self.sig ** (weight_power - k) for k in range(3)}
        self._cd = self.coef * self.sig ** (weight_power + 1)
        self.total = float(self.T(0, self.hi) - self.T(0, self.lo))

    def _chunked(self, f, y):
        y = np.asarray(y, dtype=np.float64)
        flat = y.reshape(-1)
        step = max(1, _CHUNK // max(1, self.sig.size))
        out = np.concatenate([f(flat[i:i + step]) for i in range(0, flat.size, step)]) if flat.size \
            else np.zeros(0)
        return out.reshape(y.shape)

    def T(self, k, y):
        def f(v):
            a = np.clip(np.multiply.outer(v, self.sig), -self.bnd, self.bnd)
            return self.source.partial_moment(k, a) @ self._ck[k]
        return self._chunked(f, y)

    def dens(self, y):
        def f(v):
            a = np.multiply.outer(v, self.sig)
            inside = np.abs(a) < self.bnd
            return np.where(inside, self.source.pdf(np.where(inside, a, 0.0)), 0.0) @ self._cd
        return self._chunked(f, y)


@lru_cache(maxsize=64)
def _cached(source: Source, B: int, rule: ScaleRule, qmax: float, weight_power: int, tkey) -> ScaledMeasure:
    return ScaledMeasure(source, B, rule, qmax, weight_power, TensorModel(*tkey))


def scaled_measure(source: Any = "normal", block_size: int = 16, scale: Any = "e4m3", qmax: float = DEFAULT_QMAX,
                   weight_power: int = 0, tensor_amax: Any = None, tensor_size: Any = None) -> ScaledMeasure:
    """The (cached) :class:`ScaledMeasure` for a source spelling, block size and rule."""
    rule = check_scale(scale)
    q = _check_qmax(qmax)
    return _cached(parse_source(source), _check_block_size(block_size), rule, q,
                   _check_weight_power(weight_power), TensorModel(tensor_amax, tensor_size).key())


def _check_qmax(qmax: Any) -> float:
    q = math.nan if isinstance(qmax, bool) else float(qmax) if isinstance(qmax, (int, float, np.number)) else math.nan
    if not (math.isfinite(q) and q > 0):
        raise ValueError(f"qmax (the table's largest magnitude in the units the scale multiplies) must be a "
                         f"positive finite number, got {qmax!r}")
    return q


class ScaledBlockDistribution:
    """The law of ``u`` (module docstring) in the codebook's units (largest level 1), with a
    scipy-like subset: ``pdf``, ``cdf``, ``sf``, ``ppf``, ``support``, ``moment``, ``mean``,
    ``var``, ``std``, ``rvs``.  NaN in, NaN out; a scalar gives a scalar."""

    def __init__(self, block_size: int = 16, source: Any = "normal", scale: Any = "e4m3",
                 qmax: float = DEFAULT_QMAX, tensor_amax: Any = None, tensor_size: Any = None) -> None:
        self.source = parse_source(source)
        self.rule = check_scale(scale)
        self.block_size = _check_block_size(block_size)
        self.qmax = _check_qmax(qmax)
        self.tensor = TensorModel(tensor_amax, tensor_size)
        self._mu = scaled_measure(self.source, self.block_size, self.rule, self.qmax, 0, tensor_amax, tensor_size)

    def __repr__(self) -> str:
        return (f"<ScaledBlockDistribution {self.source.spec}, B={self.block_size}, {self.rule.name}, "
                f"qmax={self.qmax:g}>")

    _apply = staticmethod(BlockDistribution._apply)  # the same scipy-style masking

    def pdf(self, y):
        return self._apply(self._mu.dens, y, "y", lambda a: ~np.isnan(a))

    def cdf(self, y):
        mu = self._mu
        return self._apply(lambda v: np.clip(mu.T(0, v) - mu.T(0, mu.lo), 0.0, 1.0), y, "y", lambda a: ~np.isnan(a))

    def sf(self, y):
        mu = self._mu
        return self._apply(lambda v: np.clip(mu.T(0, mu.hi) - mu.T(0, v), 0.0, 1.0), y, "y", lambda a: ~np.isnan(a))

    def ppf(self, q):
        mu = self._mu

        def hook(p):
            n = p.size
            x = _monotone_solve(lambda v: mu.T(0, v) - mu.T(0, mu.lo), mu.dens, p, np.full(n, mu.lo),
                                np.full(n, mu.hi))
            return np.where(p <= 0, mu.lo, np.where(p >= 1, mu.hi, x))
        return self._apply(hook, q, "q", lambda a: (a >= 0) & (a <= 1))

    def support(self) -> tuple[float, float]:
        return self._mu.lo, self._mu.hi

    def moment(self, k: int) -> float:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= 2:
            raise ValueError(f"moment order must be 0, 1 or 2, got {k!r}")
        mu = self._mu
        return float(mu.T(k, mu.hi) - mu.T(k, mu.lo))

    def mean(self) -> float:
        return self.moment(1)

    def var(self) -> float:
        return self.moment(2) - self.moment(1) ** 2

    def std(self) -> float:
        return math.sqrt(self.var())

    def rvs(self, size: int, random_state=None) -> np.ndarray:
        """Monte-Carlo draws of ``u`` with the rule's float32 scale (``size`` values in whole
        blocks, the last cut); the tensor scale as the model says (uniform phase: one random
        phase per block)."""
        n = int(size)
        if n < 0:
            raise ValueError(f"size must be a non-negative integer, got {size!r}")
        rng = random_state if isinstance(random_state, np.random.Generator) else np.random.default_rng(random_state)
        B = self.block_size
        nb = -(-n // B)
        x = self.source.rvs((nb, B), rng)
        m = np.abs(x).max(axis=1)
        if self.rule.tensor_scale(1.0, self.qmax) is None:
            s = self.rule.scale(m, self.qmax)
        elif self.tensor.amax is not None:
            s = self.rule.scale(np.minimum(m, self.tensor.amax), self.qmax,
                                self.rule.tensor_scale(self.tensor.amax, self.qmax))
        elif self.tensor.size is not None:
            raise ValueError("rvs with tensor_size: quantize whole tensors instead")
        else:  # t = 2**phi c: s_t(M) = 2**phi s_c(M / 2**phi), so scale the block by 2**-phi
            c = self.rule.tensor_scale(2.0 ** math.ceil(math.log2(float(m.max()) + 1.0)), self.qmax)
            f = 2.0 ** -rng.random(nb)
            x, m = x * f[:, None], m * f
            s = self.rule.scale(m, self.qmax, c)
        return (x / (self.qmax * np.asarray(s, dtype=np.float64))[:, None]).ravel()[:n]
