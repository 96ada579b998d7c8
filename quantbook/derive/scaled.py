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
4/6 and 8/6).  It has no atom (but see ``tensor_size`` below).

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

Nested statistics (bitsandbytes' ``compress_statistics``) are not a scaled layout: the
values are encoded with the exact ``M`` and only the decoded scale is rounded, from
statistics of the other blocks too.  :class:`NestedMeasure` states their law.

Speed.  A float16 scale has 1024 steps per octave, so the sum runs over thousands of
pieces.  Written per piece, ``K_hi Ψ_k(clip(a, b_hi)) - K_lo Ψ_k(clip(a, b_lo))`` with ``a =
u σ_j`` equals ``ΔK_j Ψ_k(a)`` for every ``|u| <= r = min_j b/σ_j`` (no piece clips; ``r``
is just below the extreme value ``M / σ(M)``, 1 - 2**-11 for float16), and the sum over the
pieces is the integral of the smooth ``σ^{p-k} Ψ_k(uσ)`` against the discrete law
``Σ_j ΔK_j σ_j^p δ(σ_j)``.  There it is replaced by that law's Gauss rule (Lanczos;
:data:`_GAUSS_NODES` nodes, the fewest that match the sum to :data:`_GAUSS_TOL` of its
largest value on 17 points of ``[-r, r]``, for ``T`` and the density); beyond ``r`` the sum
over the pieces is kept, in the form above, which does not cancel.

The NVFP4 tensor scale.  Under ``e4m3`` the block scale is ``t · e4m3(M / (qmax t))`` with
``t = G / (qmax · 448)``, ``G`` the tensor's absolute maximum, so where the E4M3 grid lies
relative to the data depends on ``G``; since the grid repeats every power of two, only the
phase ``log2 G mod 1`` matters.  Three models (:class:`TensorModel`):

* default: the phase uniform on [0, 1) (a midpoint rule on :data:`N_PHASE` phases), the
  blocks i.i.d. — a property of the layout, not of one tensor.  It holds while the block
  maxima span less than the E4M3 range below the tensor maximum; a heavy tail (student-t
  with ν up to about 8 at B = 16, fewer at larger B) puts that maximum so far out that
  blocks would sit on the clamp (more than :data:`_PHASE_MASS` of them), and the model is
  refused with a request for one of:
* ``tensor_amax=G``: that tensor maximum (in units of the source), the blocks i.i.d. given
  ``M <= G``;
* ``tensor_size=n`` (a whole number of blocks): ``G`` the maximum of ``n`` i.i.d. values
  (cdf ``G(g)^n``), averaged by a quadrature graded towards both ends of its law
  (:func:`_tensor_maxima`).  Given ``G``, one block in ``n / B`` holds ``G`` itself: its
  scale is ``σ(G)``, one of its values is ``±G`` (masses at ``±G/σ(G)``) and the other
  ``B - 1`` are i.i.d. given ``|x| <= G``; the other blocks are i.i.d. given ``M <= G``.
  That is exact for a tensor of whole blocks.

``tensor_amax`` alone does not say how many blocks share ``G``, so it leaves the block of
``G`` out: its error grows with ``G**2``, and a heavy tail shows it (measured in
docs/scaled-derivation.md).
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.linalg import eigh_tridiagonal

from ..codebooks.blocks import check_derived_block_size
from ..numerics.arguments import Seed, check_int, random_generator
from ..numerics.dots import norm, row_dot
from ..scales import DEFAULT_QMAX, ScaleRule, check_qmax, get_rule
from ..scales.nested import NestedScale
from .block import (_by_chunks, _check_weight_power, _m_nodes,
                    _Measure, _monotone_solve, block_measure, read_only_arrays)
from .conventions import FloatOrArray, Size, at_q, at_x, sample_shape
from .sources import Source, parse_source

__all__ = ["ScaledMeasure", "NestedMeasure", "ScaledBlockDistribution", "scaled_measure", "check_scale",
           "TensorModel", "N_PHASE", "N_TENSOR", "N_NESTED", "DEFAULT_QMAX"]

#: phases of the tensor scale averaged in the default e4m3 model
N_PHASE = 32
#: Gauss–Legendre nodes a panel of the law of the tensor maximum for ``tensor_size=n``
N_TENSOR = 3
#: the law of the tensor maximum stops where the weighted tail left out is below e^-_TAIL
_TAIL = 30.0
#: equal-probability values of the other 255 blocks' largest deviation averaged under nested statistics
N_NESTED = 128
#: z-width of the panels (4 Gauss-Legendre nodes each) of the nested model's block-maximum quadrature:
#: fine enough to resolve the statistics' 8-bit steps in M
_NESTED_DZ = 1.0 / 32
#: Gauss nodes tried in turn for the sum over the pieces (module docstring, "Speed")
_GAUSS_NODES = (48, 96, 192)
#: the Gauss rule is used when it matches the sum to this fraction of the measure's total
_GAUSS_TOL = 1e-13
#: ``P(M < m_lo)`` below this is dropped
_LOW_MASS = 1e-20
#: the uniform-phase model is refused when more than this fraction of the blocks would sit
#: on the rule's smallest scale (:func:`_check_phase_model`)
_PHASE_MASS = 1e-12


def check_scale(scale: Any, amax_encoded: bool = False) -> ScaleRule:
    """The rule named by ``scale``, which must be a function of the block maximum, or (with
    ``amax_encoded``) encode the values with the exact maximum (nested statistics:
    :class:`NestedMeasure`)."""
    rule = get_rule(scale)
    if rule.encodes_with_amax and not amax_encoded:
        raise ValueError(f"scale rule {rule.name!r}: nested statistics are not modelled by this path (its law is "
                         f"quantbook.derive.scaled.scaled_measure(..., scale={rule.name!r}), used by audit --layouts)")
    if not (rule.deterministic or rule.encodes_with_amax):
        raise ValueError(f"scale rule {rule.name!r} is not a function of the block maximum: its law is not "
                         "1-D (fit codes for it on a sample: quantbook derive lloyd --scale RULE, or "
                         "quantbook.derive.search_lloyd)")
    return rule


class TensorModel:
    """How the tensor scale of a two-level rule is modelled (module docstring): ``amax`` or
    ``size`` or neither (uniform phase)."""

    def __init__(self, tensor_amax: Any = None, tensor_size: Any = None) -> None:
        if tensor_amax is not None and tensor_size is not None:
            raise ValueError("give tensor_amax or tensor_size, not both")
        if tensor_amax is not None:
            real = isinstance(tensor_amax, numbers.Real) and not isinstance(tensor_amax, (bool, np.bool_))
            a = float(tensor_amax) if real else math.nan
            if not (math.isfinite(a) and a > 0):
                raise ValueError(f"tensor_amax must be a positive finite number, got {tensor_amax!r}")
            tensor_amax = a
        if tensor_size is not None:
            tensor_size = check_int(tensor_size, "tensor_size", 2)
        self.amax, self.size = tensor_amax, tensor_size

    def key(self) -> tuple[float | None, int | None]:
        return (self.amax, self.size)

    def describe(self) -> str:
        if self.amax is not None:
            return f"tensor amax {self.amax:g}"
        if self.size is not None:
            return f"tensors of {self.size} values"
        return "uniform tensor-scale phase"


def _gauss_rule(x: np.ndarray, w: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n``-point Gauss rule of the discrete measure ``Σ w_i δ(x_i)`` (``w >= 0``): Lanczos
    on ``diag(x)`` with full reorthogonalisation, then the Jacobi matrix's eigenvectors."""
    total = float(w.sum())
    Q = np.zeros((n, x.size))
    a, b = np.zeros(n), np.zeros(n)
    Q[0] = np.sqrt(w / total)
    for i in range(n):   # products by row_dot, not BLAS, whose kernels round by the CPU
        v = x * Q[i]
        a[i] = row_dot(v, Q[i])
        for _ in range(2):  # twice is enough (Kahan)
            v -= row_dot(Q[:i + 1].T, row_dot(Q[:i + 1], v))
        if i + 1 < n:
            b[i] = norm(v)
            Q[i + 1] = v / b[i]
    # QR (LAPACK's steqr) rather than scipy's default divide and conquer, whose merges are BLAS
    # products: rounded by the CPU's kernels
    ev, V = eigh_tridiagonal(a, b[:-1], lapack_driver="stev")
    return ev, total * V[0] ** 2


#: the largest share of E[M**p] that blocks whose scale overflows may carry for the law to
#: leave them out (far below what any result is printed to)
_STORE_SHARE = 1e-12


def _tail(source: Source, b: Any) -> np.ndarray:
    """``P(|X| > b)``, summed from both tails (no cancellation where it is tiny)."""
    b = np.asarray(b, dtype=np.float64)
    return np.clip(source.sf(b) + source.cdf(-b), 0.0, 1.0)


def _K(source: Source, b: np.ndarray, power: int) -> np.ndarray:
    """``P(|X| <= b)**power`` (``b`` may be 0 or inf)."""
    S = _tail(source, b)
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


def _storable_top(source: Source, B: int, rule: ScaleRule, qmax: float, weight_power: int, m_lo: float,
                  m_hi: float) -> float:
    """``m_hi``, or the largest block maximum whose scale the rule stores where that is smaller
    (float16's, about 65520·qmax).  ``quantize`` refuses blocks beyond it, so the law leaves
    them out (their mass goes to the last piece, as beyond ``m_hi``) only where their share of
    ``E[M**weight_power]`` is below :data:`_STORE_SHARE`: bounded by
    ``B·P(|X| > x)·(x / median M)**p`` times ``ν/(ν - p)`` for a tail of ``ν`` moments (2 for
    light tails); otherwise an error."""
    if rule.storable(m_hi, qmax)[()]:
        return m_hi
    if not rule.storable(m_lo, qmax)[()]:
        raise ValueError(f"scale rule {rule.name!r} cannot store the scale of almost any block at qmax={qmax:g}")
    lo, hi = m_lo, m_hi   # lo stores, hi does not
    while True:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if rule.storable(mid, qmax)[()] else (lo, mid)
    p, lim = weight_power, source.moment_limit
    tail = float(_tail(source, lo))
    median = float(source.abs_ppf(0.5 ** (1.0 / B)))
    share = B * tail * (lo / median) ** p * (lim / (lim - p) if math.isfinite(lim) else 2.0)
    if share > _STORE_SHARE:
        raise ValueError(f"{rule.name} scales overflow for block maxima beyond {lo:.6g} (qmax {qmax:g}), which "
                         f"quantize() refuses, and under {source.spec} at B={B} such blocks carry about "
                         f"{share:.2g} of E[M**{p}]: use a wider scale rule (bfloat16, e8m0) or a larger qmax")
    return lo


def _pieces(rule: ScaleRule, qmax: float, t: Any, lo: float, hi: float):
    """Edges ``[0, b_1 .. b_n, hi]`` and the ``σ`` of each piece between ``lo`` and ``hi``."""
    b = np.asarray(rule.breakpoints(qmax, t, lo, hi), dtype=np.float64)
    b = np.unique(b[(b > lo) & (b < hi)])
    edges = np.concatenate([[lo], b, [hi]])
    mid = 0.5 * (edges[:-1] + edges[1:])  # inside each piece: s is constant there
    with np.errstate(over="ignore"):
        sig = qmax * rule.scale(mid, qmax, t).astype(np.float64)
    # a rule without a smallest scale (fouroversix stores 0) gives the blocks far below a huge
    # tensor maximum no scale: they are taken as the first block scale above 0 (they carry
    # about P(M < b) of the mass, where b is ~4e-6 G)
    zero = int(np.argmax(sig > 0)) if np.any(sig > 0) else 0
    if zero and np.all(sig[:zero] == 0):
        edges, sig = np.concatenate([edges[:1], edges[zero + 1:]]), sig[zero:]
    if not np.all(np.isfinite(sig) & (sig > 0)):
        raise ValueError(f"scale rule {rule.name!r} gives no finite positive scale for block maxima in "
                         f"[{lo:.3g}, {hi:.3g}] at qmax={qmax:g}")
    edges[0] = 0.0  # the scale below m_lo is taken as that of the first piece
    return edges, sig


def _terms(source: Source, B: int, rule: ScaleRule, qmax: float, t: Any, m_lo: float, top: float,
           condition: bool):
    """``(σ, b_lo, b_hi, K_lo, K_hi, hi)`` of the pieces of the sum in the module docstring
    for one tensor scale ``t``: blocks with ``M`` up to ``top``; ``condition``: divided by
    ``P(M <= top)`` (a tensor maximum), else the mass beyond ``top`` is given to the last
    piece; ``hi`` the largest ``u``."""
    edges, sig = _pieces(rule, qmax, t, m_lo, top)
    K = _K(source, edges, B - 1)
    if condition:
        K = K / float(_K(source, np.array([top]), B)[0])
    else:
        K[-1] = 1.0
    keep = K[1:] != 0
    return (sig[keep], edges[:-1][keep], edges[1:][keep], K[:-1][keep], K[1:][keep],
            float(np.max(edges[1:] / sig)))


def _tensor_maxima(source: Source, n: int, weight_power: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (summing to 1) of the law of ``G``, the largest of ``n`` magnitudes:
    Gauss–Legendre (:data:`N_TENSOR` nodes a panel) in ``τ = -log2(1 - q)``, ``q = P(max <=
    G)``, on panels halving towards ``τ = 0`` from 1/4 (``G`` grows like ``τ**(1/n)`` there,
    which no polynomial follows), 1/4 wide up to ``τ = 4``, 1 up to 16 and 2 beyond, to where
    the ``G**weight_power``-weighted tail left out is below e^-30 of its total (the tail of a
    weight ``(1 - q)**(-p/ν)`` decays like ``2**(-τ(1 - p/ν))``).  A midpoint rule in ``q``
    missed that tail: a few per cent of ``E[G**2]`` under student-t:5."""
    lim = source.moment_limit
    decay = 1.0 - weight_power / lim if math.isfinite(lim) else 1.0
    top = 16.0 + 2.0 * max(0, math.ceil((_TAIL / (math.log(2.0) * decay) - 16.0) / 2.0))
    edges = np.concatenate([[0.0], np.exp2(np.arange(-12.0, -2.0)), np.arange(0.25, 4.0, 0.25), np.arange(4.0, 16.0),
                            np.arange(16.0, top + 1.0, 2.0)])
    x, w = np.polynomial.legendre.leggauss(N_TENSOR)
    half = np.diff(edges) / 2
    tau = ((edges[:-1] + half)[:, None] + half[:, None] * x[None, :]).reshape(-1)
    wq = (half[:, None] * w[None, :]).reshape(-1) * math.log(2.0) * np.exp2(-tau)   # dq = ln2 2**-τ dτ
    log_q = np.log1p(-np.exp2(-tau))
    gs = np.asarray(source.abs_isf(-np.expm1(log_q / n)), dtype=np.float64)
    return gs, wq / wq.sum()


def _top_block(source: Source, B: int, rule: ScaleRule, qmax: float, t: Any, g: float, weight_power: int):
    """The block that holds the tensor's maximum ``g``: its scale is ``σ(g)``; one of its
    ``B`` values is ``±g`` (atoms at ``±g/σ(g)``, the sign by the density at ``±g``), the
    other ``B - 1`` are i.i.d. given ``|x| <= g``: one piece of the sum in the module
    docstring, ``K = 0`` below and ``(B - 1) / (B·P(|X| <= g))`` at ``g``.  Returns that
    piece (as :func:`_terms`) and the atoms' positions and ``σ**weight_power``-weighted
    masses."""
    with np.errstate(over="ignore"):
        sig = qmax * float(np.asarray(rule.scale(np.array([g]), qmax, t), dtype=np.float64)[0])
    if not (math.isfinite(sig) and sig > 0):
        raise ValueError(f"scale rule {rule.name!r} gives no finite positive scale for the tensor maximum {g:.3g}")
    inside = float(_K(source, np.array([g]), 1)[0])
    piece = (np.array([sig]), np.array([0.0]), np.array([g]), np.array([0.0]),
             np.array([(B - 1) / (B * inside)]), g / sig)
    dens = np.asarray(source.pdf(np.array([-g, g])), dtype=np.float64)
    side = dens / dens.sum() if dens.sum() > 0 else np.array([0.5, 0.5])
    return piece, np.array([-g / sig, g / sig]), side * sig**weight_power / B


def _check_phase_model(source: Source, B: int, rule: ScaleRule, qmax: float, base: float,
                       weight_power: int) -> None:
    """Refuse the uniform-phase model where it does not hold: only the phase of the tensor
    maximum matters while the block scales stay above the rule's clamp, i.e. block maxima
    spanning less than its range below a maximum above them all (module docstring)."""
    b0 = rule.breakpoints(qmax, rule.tensor_scale(2.0 * base, qmax), 0.0, math.inf)
    if b0.size == 0:
        return
    below = float(_K(source, np.array([float(b0[0])]), B)[0])
    if below > _PHASE_MASS:
        raise ValueError(
            f"scale rule {rule.name!r}, {source.spec}, B={B}"
            + (f", weight power {weight_power}" if weight_power else "")
            + f": the law depends on the tensor's maximum, not only on its phase (under a tensor maximum "
            f"above every block, {100 * below:.3g}% of the blocks would sit on the smallest block scale); "
            "give the tensor's size (tensor_size=N, --tensor-size N) or maximum (tensor_amax=G)")


class ScaledMeasure(_Measure):
    """The ``σ(M)**weight_power``-weighted law of ``u`` (module docstring); ``total`` is
    ``E[σ(M)**weight_power]``.  Same interface as :class:`~.block.BlockMeasure`; atoms only
    under ``tensor_size`` (the block of the tensor's maximum)."""

    def __init__(self, source: Source, block_size: int, rule: ScaleRule, qmax: float = DEFAULT_QMAX,
                 weight_power: int = 0, tensor: TensorModel | None = None) -> None:
        B = check_derived_block_size(block_size)
        weight_power = _check_weight_power(weight_power)
        if weight_power >= source.moment_limit:
            raise ValueError(f"{source.spec}: E[scale**{weight_power}] is infinite "
                             f"(needs more than {weight_power} finite moments); use the normalised domain")
        tensor = tensor or TensorModel()
        self.source, self.block_size, self.rule, self.qmax = source, B, rule, float(qmax)
        self.weight_power, self.tensor = weight_power, tensor
        m_lo, m_hi = _m_range(source, B, weight_power)
        parts, weights, atoms = [], [], []
        two_level = rule.tensor_scale(1.0, qmax) is not None
        if not two_level:
            if tensor.amax is not None or tensor.size is not None:
                raise ValueError(f"scale rule {rule.name!r} has no tensor scale: tensor_amax and tensor_size "
                                 "do not apply")
            top = _storable_top(source, B, rule, qmax, weight_power, m_lo, m_hi)
            parts.append(_terms(source, B, rule, qmax, None, m_lo, top, False))
            weights.append(1.0)
        elif tensor.amax is not None or tensor.size is not None:
            if tensor.amax is not None:
                gs, gw = np.array([tensor.amax]), np.array([1.0])
            else:
                gs, gw = _tensor_maxima(source, tensor.size, weight_power)
            # tensor_size: one block of the tensor's n / B holds G itself
            share = 0.0 if tensor.size is None else B / tensor.size
            for g, w in zip(gs, gw):
                if g <= m_lo:
                    raise ValueError(f"tensor maximum {g:.3g} is below almost every block maximum at B={B}")
                t = rule.tensor_scale(g, qmax)
                parts.append(_terms(source, B, rule, qmax, t, m_lo, float(g), True))
                weights.append((1.0 - share) * w)
                if share:
                    part, ax, aw = _top_block(source, B, rule, qmax, t, float(g), weight_power)
                    parts.append(part)
                    weights.append(share * w)
                    atoms.append((ax, aw * share * w))
        else:  # uniform phase: t = 2**phi times a tensor maximum above every block maximum considered
            base = 2.0 ** math.ceil(math.log2(m_hi))
            _check_phase_model(source, B, rule, qmax, base, weight_power)
            for phi in (np.arange(N_PHASE) + 0.5) / N_PHASE:
                g = base * 2.0**phi
                parts.append(_terms(source, B, rule, qmax, rule.tensor_scale(g, qmax), m_lo, m_hi, False))
                weights.append(1.0 / N_PHASE)
        # per piece: σ, its M-range [b_lo, b_hi) and K at both ends (times the part's weight)
        self.sig = np.concatenate([p[0] for p in parts])
        self.b_lo = np.concatenate([p[1] for p in parts])
        self.b_hi = np.concatenate([p[2] for p in parts])
        self.k_lo = np.concatenate([p[3] * w for p, w in zip(parts, weights)])
        self.dk = np.concatenate([(p[4] - p[3]) * w for p, w in zip(parts, weights)])
        # ±G/σ(G) is ±1 but for σ's float32 rounding (±1 ulp), which the law ignores elsewhere:
        # the positions are merged at float32 precision
        ax = (np.concatenate([a[0] for a in atoms]) if atoms else np.zeros(0)).astype(np.float32).astype(np.float64)
        self.atoms_x, where = np.unique(ax, return_inverse=True)
        self.atoms_w = np.bincount(where.reshape(-1), weights=np.concatenate([a[1] for a in atoms]),
                                   minlength=self.atoms_x.size) if atoms else np.zeros(0)
        self.hi = float(max(max(p[5] for p in parts), np.max(np.abs(self.atoms_x), initial=0.0)))
        self.lo = -self.hi
        self.n_pieces = self.sig.size
        lo_clips = self.k_lo > 0  # a piece whose K_lo is 0 (M from 0) clips only at b_hi
        #: no piece clips for |u| <= r: the sum is smooth there (module docstring, "Speed")
        self.r = float(min(np.min(self.b_hi / self.sig), np.min((self.b_lo / self.sig)[lo_clips], initial=np.inf)))
        sp = {k: self.sig ** (weight_power - k) for k in range(3)}
        self._ck = {k: (self.dk * sp[k], self.k_lo * sp[k]) for k in range(3)}
        self._cd = self.sig ** (weight_power + 1)
        self._fast = None
        self._slow_cache: dict[tuple[Any, float], float] = {}   # (key, y) -> value, outside the Gauss rule (_split)
        self._tails: dict = {}   # ±1 -> the source's tail beyond each piece's b_lo and b_hi (tail)
        self._fast = self._compress()
        self.total = float(self.T(0, self.hi) - self.T(0, self.lo) + self.atoms_w.sum())

    def _compress(self):
        """``(r, nodes, weights)`` of the Gauss rule that replaces the sum over the pieces for
        ``|u| <= r``, or None (module docstring, "Speed")."""
        r = self.r
        su, inv = np.unique(self.sig, return_inverse=True)
        if not _GAUSS_NODES or su.size <= _GAUSS_NODES[0] or not r > 0:
            return None
        w = np.maximum(np.bincount(inv, weights=self.dk * self.sig ** self.weight_power), 0.0)
        y = np.linspace(-r, r, 17)

        def sums(x, c):  # T(0..2) and the density for |y| <= r, where no piece clips
            ym = np.multiply.outer(y, x)
            return [row_dot(self.source.partial_moment(k, ym), c * x ** -float(k)) for k in range(3)] \
                + [row_dot(self.source.pdf(ym), c * x)]
        exact = sums(su, w)
        scale = [float(np.max(np.abs(e))) for e in exact]
        for n in _GAUSS_NODES:
            if n >= su.size:
                return None
            nodes, weights = _gauss_rule(su, w, n)
            if all(np.max(np.abs(a - e)) <= _GAUSS_TOL * c for a, e, c in zip(sums(nodes, weights), exact, scale)):
                return (r, nodes, weights)
        return None

    def _split(self, y, fast, slow, key):
        """``fast`` where the Gauss rule holds (``|y| <= r``), ``slow`` elsewhere; slow values
        are kept (the solvers ask for the range ends ±1 at every step)."""
        y = np.asarray(y, dtype=np.float64)
        if self._fast is None:
            return slow(y)
        inside = np.abs(y) <= self._fast[0]
        if inside.all():
            return fast(y)
        out = np.empty(y.shape)
        out[inside] = fast(y[inside])
        rest = y[~inside]
        u, inv = np.unique(rest, return_inverse=True)
        known = self._slow_cache
        if len(known) > 4096:  # bound the memory before looking anything up
            known.clear()
        todo = np.array([v for v in u if (key, v) not in known])
        if todo.size:
            known.update(((key, v), float(r)) for v, r in zip(todo, slow(todo)))
        out[~inside] = np.array([known[(key, v)] for v in u])[inv.reshape(-1)]
        return out

    def _chunked(self, f, y):
        return _by_chunks(f, y, self.sig.size)

    def T(self, k: int, y: ArrayLike) -> FloatOrArray:
        def f(v):  # per piece ΔK Ψ(clip(vσ, b_hi)) + K_lo [Ψ(clip(vσ, b_hi)) - Ψ(clip(vσ, b_lo))]:
            # the second term is 0 unless vσ is beyond b_lo, so nothing large cancels
            a = np.multiply.outer(v, self.sig)
            hi = self.source.partial_moment(k, np.clip(a, -self.b_hi, self.b_hi))
            lo = self.source.partial_moment(k, np.clip(a, -self.b_lo, self.b_lo))
            return row_dot(hi, self._ck[k][0]) + row_dot(hi - lo, self._ck[k][1])

        def fast(v):
            _, nodes, weights = self._fast
            return row_dot(self.source.partial_moment(k, np.multiply.outer(v, nodes)), weights * nodes ** -float(k))
        return self._split(y, fast, lambda v: self._chunked(f, v), k)

    def tail(self, y: ArrayLike) -> np.ndarray:
        """The continuous mass beyond each ``y != 0`` on its side of 0 (``(y, hi]`` or ``[lo,
        y)``), piece by piece: with ``a = min(|y| σ_j, b_hi)`` and ``D(a, b)`` the source's mass
        between ``±a`` and ``±b``, ``ΔK D(a, b_hi) + K_lo D(max(a, b_lo), b_hi)`` (the terms of
        :meth:`T` from the other end; both are positive).  ``D`` is a difference of the
        source's own tail (its ``sf``, its ``cdf`` below 0), which keeps the digits of a small
        mass next to ``±hi``, where ``T(0, hi) - T(0, y)`` of two values near 1/2 cancels."""
        y = np.asarray(y, dtype=np.float64)
        out = np.zeros(y.shape)
        for sign, tail in ((1.0, self.source.sf), (-1.0, lambda x: self.source.cdf(-x))):
            side = sign * y > 0
            if not side.any():
                continue
            if sign not in self._tails:
                self._tails[sign] = (tail(self.b_lo), tail(self.b_hi))
            at_lo, at_hi = self._tails[sign]

            def f(v, tail=tail, at_lo=at_lo, at_hi=at_hi):
                ta = tail(np.minimum(np.multiply.outer(np.abs(v), self.sig), self.b_hi))
                # the tail decreases: at max(a, b_lo) it is the smaller of its values at a and b_lo
                return row_dot(ta - at_hi, self._ck[0][0]) + row_dot(np.minimum(ta, at_lo) - at_hi, self._ck[0][1])
            out[side] = self._chunked(f, y[side])
        return out

    def dens(self, y: ArrayLike) -> FloatOrArray:
        def f(v):
            a = np.multiply.outer(v, self.sig)
            inside = np.abs(a) < self.b_hi
            g = np.where(inside, self.source.pdf(np.where(inside, a, 0.0)), 0.0)
            return row_dot(g, self._cd * self.dk) \
                + row_dot(np.where(np.abs(a) >= self.b_lo, g, 0.0), self._cd * self.k_lo)

        def fast(v):
            _, nodes, weights = self._fast
            return row_dot(self.source.pdf(np.multiply.outer(v, nodes)), weights * nodes)
        return self._split(y, fast, lambda v: self._chunked(f, v), "d")


class NestedMeasure(_Measure):
    r"""The weight-domain law of a value under bitsandbytes' nested statistics (``weight_power``
    1 or 2; the normalised domain is the absmax law itself).

    The values are encoded as ``y = x / M`` with the exact float32 maximum, so the codes have
    the absmax law (:class:`~.block.BlockMeasure`); only the decoded scale ``S`` differs from
    ``M``.  The weight-domain error of a value coded as level ``q`` is ``M y - S q``, so

        E[(M y - S q)^2 1{y in cell}] = ∫ y^2 dμ_{M²} - 2 q ∫ y dμ_{M E[S|M]} + q^2 ∫ dμ_{E[S²|M]}

    where ``μ_w`` is the absmax law of ``y`` weighted by ``w(M)``: this measure's ``T(k, ·)``
    and :meth:`atom_moments` carry the weight of the ``k``-th term (``S²``, ``M·S``, ``M²``),
    so the cell errors and the Lloyd centroids ``∫ y dμ_{MS} / ∫ dμ_{S²}`` of the machinery
    are exact for L2.  For L1 (``weight_power`` 1) :meth:`l1_cells` is exact; ``T(0)`` is
    weighted by ``S`` and ``T(1)`` by ``M``, the first-order split at ``y = q`` in place of
    ``y = q S/M`` that Lloyd's L1 medians use.

    Model of ``S`` given ``M``: a tensor of many blocks, so the offset is ``E[M]`` (its
    spread, ``sd(M)/sqrt(blocks)``, is ignored), and ``S = offset + a·map[code((M - offset)/a)]``
    (:meth:`~quantbook.scales.nested.NestedScale.decoded`, float32) with ``a = max(|M -
    offset|, A)``, ``A`` the largest ``|M_j - offset|`` of the 255 other blocks of the
    256-block: i.i.d., independent of ``M``, cdf ``P(|M - offset| <= α)^255`` — exact for a
    block drawn uniformly from its 256-block (the block holding the maximum decodes exactly).
    ``E[S^j | M]`` is a midpoint rule on :data:`N_NESTED` equal-probability values of ``A``;
    the integral over ``M`` is Gauss-Legendre in the Gumbel variable of
    :mod:`.block` on panels of width :data:`_NESTED_DZ`, split at a sample source's knots
    (:func:`~quantbook.derive.block._knot_nodes`).
    """

    def __init__(self, source: Source, block_size: int, rule: NestedScale, weight_power: int) -> None:
        B = check_derived_block_size(block_size)
        if weight_power not in (1, 2):
            raise ValueError(f"weight_power must be 1 or 2 here, got {weight_power!r}")
        if not source.moment_limit > 2:
            raise ValueError(f"{source.spec}: nested statistics are modelled only for sources with a finite "
                             "variance")
        self.source, self.block_size, self.rule, self.weight_power = source, B, rule, int(weight_power)
        panels = np.concatenate([np.arange(-4.5, 12.0 + 1e-9, _NESTED_DZ), [20.0, 30.0, 45.0]])
        nodes = np.where(np.diff(panels) > 1.0, 32, 4)
        m, omega, G, pplus = _m_nodes(source, B, panels, nodes)   # a sample's split at its knots
        self.m = m
        self.offset = float(np.sum(omega * m) / np.sum(omega))
        alpha = self._deviation_nodes(B)
        self.alpha = alpha
        dev = np.abs(m - self.offset)
        s = rule.decoded(m[:, None], self.offset, np.maximum(dev[:, None], alpha[None, :]).astype(np.float32))
        s = s.astype(np.float64)
        self._omega, self._s = omega / np.sum(omega), s
        s1, s2 = s.mean(axis=1), (s * s).mean(axis=1)
        self.s1, self.s2 = s1, s2
        c = omega * (B - 1) / B / G  # the continuous part of the absmax law, per node
        self._c = c
        if weight_power == 2:
            phi = {0: s2, 1: m * s1, 2: m * m}
        else:
            phi = {0: s1, 1: m, 2: m * s1}
        self._ck = {k: c * phi[k] / m**k for k in range(3)}
        self._cd = c * phi[0] * m
        wa = omega / B  # the node's value is the block's extreme one
        neg, pos = wa * (1 - pplus), wa * pplus
        self._extreme = (neg, pos)
        if weight_power == 2:  # (M y - S q)^2 at y = ±1: weights S², ±M·S, M² by k
            terms = {0: s2, 1: m * s1, 2: m * m}
        else:  # the weights of the first-order L1 terms, which only Lloyd's medians use (l1_cells is exact)
            terms = {0: s1, 1: m, 2: m * s1}
        atoms = {k: [(-1.0) ** k * row_dot(neg, t), row_dot(pos, t)] for k, t in terms.items()}
        self.atoms_x = np.array([-1.0, 1.0])
        self._atoms_k = {k: np.array(v, dtype=np.float64) for k, v in atoms.items()}
        self.atoms_w = self._atoms_k[0]
        self.lo, self.hi = -1.0, 1.0
        self.n_pieces = m.size
        self.total = float(self.T(0, 1.0) - self.T(0, -1.0) + self.atoms_w.sum())

    def scale_error(self) -> tuple[np.ndarray, np.ndarray]:
        """The model's law of a block's ``S - M`` as quadrature atoms ``(values, weights)``."""
        d = (self._s - self.m[:, None]).ravel()
        w = np.repeat(self._omega / self._s.shape[1], self._s.shape[1])
        return d, w

    def _deviation_nodes(self, B: int) -> np.ndarray:
        """:data:`N_NESTED` equal-probability values of the largest ``|M - offset|`` of 255
        i.i.d. blocks (midpoints in probability), by bisection on its cdf."""
        src, off = self.source, self.offset

        def cdf_m(v):  # P(M <= v)
            v = np.maximum(v, 0.0)
            tail = np.clip(src.sf(v) + src.cdf(-v), 0.0, 1.0)
            with np.errstate(divide="ignore"):
                return np.exp(B * np.log1p(-tail))

        target = ((np.arange(N_NESTED) + 0.5) / N_NESTED) ** (1.0 / 255)
        lo = np.zeros(N_NESTED)
        hi = np.full(N_NESTED, float(self.m.max()))
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            h = cdf_m(off + mid) - np.where(off - mid > 0, cdf_m(off - mid), 0.0)
            below = h < target
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def T(self, k: int, y: ArrayLike) -> FloatOrArray:
        y = np.clip(np.asarray(y, dtype=np.float64), -1.0, 1.0)
        return row_dot(self.source.partial_moment(k, np.multiply.outer(y, self.m)), self._ck[k])

    def dens(self, y: ArrayLike) -> FloatOrArray:
        y = np.asarray(y, dtype=np.float64)
        out = row_dot(self.source.pdf(np.multiply.outer(y, self.m)), self._cd)
        return np.where(np.abs(y) < 1, out, 0.0)

    def atom_moments(self, k: int) -> np.ndarray:
        return self._atoms_k[k]

    def l1_cells(self, edges: np.ndarray, levels: np.ndarray) -> np.ndarray:
        """The exact ``E[|M y - S q| 1{y in cell}]`` per cell (``weight_power`` 1): in the
        weight domain ``x = M y`` the error is ``|x - q S|``, split at ``q S`` for each node
        of ``M`` and value of ``S``; the extreme value ``x = ±M`` is the atom.  Other weights:
        :meth:`_Measure.l1_cells`."""
        if self.weight_power != 1:
            return super().l1_cells(edges, levels)
        src, m, s, c = self.source, self.m, self._s, self._c
        e = np.clip(np.asarray(edges, dtype=np.float64), self.lo, self.hi)
        x = np.multiply.outer(e, m)   # the cell edges in the weight domain, per node of M
        p0, p1 = np.asarray(src.partial_moment(0, x)), np.asarray(src.partial_moment(1, x))
        out = np.empty(levels.size)
        for j, q in enumerate(levels):
            qs = q * s
            t = np.clip(qs, x[j][:, None], x[j + 1][:, None])
            t0, t1 = src.partial_moment(0, t), src.partial_moment(1, t)
            # ∫_a^t (qS - x) f + ∫_t^b (x - qS) f, a and b the cell's ends
            v = qs * (2 * t0 - (p0[j] + p0[j + 1])[:, None]) - (2 * t1 - (p1[j] + p1[j + 1])[:, None])
            out[j] = row_dot(c, v.mean(axis=1))
        neg, pos = self._extreme
        for at, w, sign in zip(self.atom_cells(e), (neg, pos), (-1.0, 1.0)):
            out[at] += row_dot(w, np.abs(sign * m[:, None] - levels[at] * s).mean(axis=1))
        return np.maximum(out, 0.0)


@lru_cache(maxsize=64)
def _cached(source: Source, B: int, rule: ScaleRule, qmax: float, weight_power: int, tkey) -> _Measure:
    if rule.encodes_with_amax:
        if tkey != (None, None):
            raise ValueError(f"scale rule {rule.name!r} has no tensor scale: tensor_amax and tensor_size do not apply")
        if weight_power == 0:  # the values are normalised by the exact maximum: the absmax law
            return block_measure(source, B, "absmax", 0)
        if not isinstance(rule, NestedScale):   # the one such rule: NestedMeasure models its statistics
            raise NotImplementedError(f"no law of the values under scale rule {rule.name!r}")
        return read_only_arrays(NestedMeasure(source, B, rule, weight_power))
    return read_only_arrays(ScaledMeasure(source, B, rule, qmax, weight_power, TensorModel(*tkey)))


def scaled_measure(source: Any = "normal", block_size: int = 16, scale: Any = "e4m3", qmax: float = DEFAULT_QMAX,
                   weight_power: int = 0, tensor_amax: Any = None, tensor_size: Any = None) -> _Measure:
    """The (cached) measure for a source spelling, block size and rule: a :class:`ScaledMeasure`;
    for a rule encoded with the exact absmax (nested statistics) a :class:`NestedMeasure`, or at
    ``weight_power=0`` the absmax law itself (:func:`~.block.block_measure`)."""
    rule = check_scale(scale, amax_encoded=True)
    q = check_qmax(qmax)
    B, tensor = check_derived_block_size(block_size), TensorModel(tensor_amax, tensor_size)
    if tensor.size is not None and tensor.size < B:   # its scale bytes would be spread over a part of a block
        raise ValueError(f"tensor_size={tensor.size} holds less than one block of {B} values")
    if tensor.size is not None and tensor.size % B:   # a short last block has a law of its own
        raise ValueError(f"tensor_size={tensor.size} is not a whole number of blocks of {B} values")
    return _cached(parse_source(source), B, rule, q, _check_weight_power(weight_power), tensor.key())


def _log(p):
    with np.errstate(divide="ignore"):   # log 0 = -inf, as scipy's
        return np.log(p)


class ScaledBlockDistribution:
    """The law of ``u`` (module docstring) in the codebook's units (largest level 1), with a
    scipy-like subset: ``pdf``, ``logpdf``, ``cdf``, ``logcdf``, ``sf``, ``logsf``, ``ppf``,
    ``isf``, ``median``, ``support``, ``moment``, ``mean``, ``var``, ``std``, ``rvs``.  NaN in,
    NaN out; a scalar gives a scalar.  The law has no atoms (``atoms`` is empty), except with
    ``tensor_size``: the block that holds the tensor's maximum ``G`` puts masses at
    ``±G/σ(G)`` (``atoms``: positions and probabilities; ``pdf`` is the continuous part's)."""

    def __init__(self, block_size: int = 16, source: Any = "normal", scale: Any = "e4m3",
                 qmax: float = DEFAULT_QMAX, tensor_amax: Any = None, tensor_size: Any = None) -> None:
        self.source = parse_source(source)
        self.rule = check_scale(scale)  # nested statistics: the absmax law (block_distribution)
        self.block_size = check_derived_block_size(block_size)
        self.qmax = check_qmax(qmax)
        self.tensor = TensorModel(tensor_amax, tensor_size)
        self._mu = scaled_measure(self.source, self.block_size, self.rule, self.qmax, 0, tensor_amax, tensor_size)
        self.atoms = (self._mu.atoms_x.copy(), self._mu.atoms_w.copy())   # as BlockDistribution's
        self._at_r: dict = {}   # ±1 -> the mass beyond ±r and T(0, ±r) (_beyond)

    def __repr__(self) -> str:
        return (f"<ScaledBlockDistribution {self.source.spec}, B={self.block_size}, {self.rule.name}, "
                f"qmax={self.qmax:g}>")

    def pdf(self, y: ArrayLike) -> FloatOrArray:
        return at_x(self._mu.dens, y, "y")

    def logpdf(self, y: ArrayLike) -> FloatOrArray:
        return at_x(lambda v: _log(self._mu.dens(v)), y, "y")

    def cdf(self, y: ArrayLike) -> FloatOrArray:
        return at_x(self._cdf, y, "y")

    def logcdf(self, y: ArrayLike) -> FloatOrArray:
        return at_x(lambda v: _log(self._cdf(v)), y, "y")

    def sf(self, y: ArrayLike) -> FloatOrArray:
        return at_x(self._sf, y, "y")

    def logsf(self, y: ArrayLike) -> FloatOrArray:
        return at_x(lambda v: _log(self._sf(v)), y, "y")

    def ppf(self, q: ArrayLike) -> FloatOrArray:
        """Inverse of :meth:`cdf`, solved on the lower tail's own mass (as :meth:`isf`); NaN for
        ``q`` outside ``[0, 1]`` or NaN."""
        mu = self._mu

        def hook(p):
            n = p.size
            x = _monotone_solve(lambda v: (self._lower(v), mu.dens(v)), p, np.full(n, mu.lo), np.full(n, mu.hi))
            x = self._onto_atoms(x, lambda v: self._lower(v) < p)
            return np.where(p <= 0, mu.lo, np.where(p >= 1, mu.hi, x))
        return at_q(hook, q)

    def _onto_atoms(self, x, short):
        """``x`` moved up onto the next atom while ``short(x)`` and the atom is within the
        solver's tolerance above it: the solver stops that close to a jump, perhaps below it,
        and the inverse is the jump's position."""
        ax = self._mu.atoms_x
        for _ in range(ax.size):
            i = np.searchsorted(ax, x, side="right")
            nxt = ax[np.minimum(i, max(ax.size - 1, 0))] if ax.size else x
            move = (i < ax.size) & (nxt - x <= 1e-12 * np.maximum(1.0, np.abs(x)))
            move &= short(x)
            if not move.any():
                break
            x = np.where(move, nxt, x)
        return x

    def isf(self, q: ArrayLike) -> FloatOrArray:
        """Inverse of :meth:`sf`, solved on the upper tail's own mass (no ``1 - q`` cancellation)."""
        mu = self._mu

        def hook(p):
            n = p.size
            x = _monotone_solve(lambda v: (-self._upper(v), mu.dens(v)), -p, np.full(n, mu.lo),
                                np.full(n, mu.hi))
            x = self._onto_atoms(x, lambda v: self._upper(v) > p)
            return np.where(p <= 0, mu.hi, np.where(p >= 1, mu.lo, x))
        return at_q(hook, q)

    def median(self) -> float:
        return float(self.ppf(0.5))

    def _upper(self, v):
        """The mass above ``v``, from the upper tail's own terms (no ``1 - cdf`` cancellation):
        beyond ``r`` the pieces' tails (:meth:`ScaledMeasure.tail`), below it theirs at ``r``
        plus ``T(0, r) - T(0, v)``."""
        return self._beyond(v, 1.0)

    def _lower(self, v):
        """The mass at or below ``v``, as :meth:`_upper` from the lower end."""
        return self._beyond(v, -1.0)

    def _beyond(self, v, side):
        """The mass above ``v`` (``side`` 1) or at or below it (-1), atoms included; continuous
        at ``±r``, where the two rules meet."""
        mu = self._mu
        v = np.asarray(v, dtype=np.float64)
        edge = side * mu.r
        near = side * v > mu.r
        if side not in self._at_r:
            self._at_r[side] = (float(mu.tail(np.array([edge]))[0]), float(mu.T(0, np.array([edge]))[0]))
        tail_r, t_r = self._at_r[side]
        out = tail_r + side * (t_r - mu.T(0, np.where(near, edge, v)))
        if near.any():
            out[near] = mu.tail(v[near])
        for ax, aw in zip(mu.atoms_x, mu.atoms_w):
            out = out + np.where(v < ax if side > 0 else v >= ax, aw, 0.0)
        return out

    def _cdf(self, v):
        mu = self._mu  # exactly 0 below the support and 1 above it
        return np.where(v <= mu.lo, 0.0, np.where(v >= mu.hi, 1.0, np.clip(self._lower(v), 0.0, 1.0)))

    def _sf(self, v):
        mu = self._mu
        return np.where(v <= mu.lo, 1.0, np.where(v >= mu.hi, 0.0, np.clip(self._upper(v), 0.0, 1.0)))

    def support(self) -> tuple[float, float]:
        return self._mu.lo, self._mu.hi

    def moment(self, k: int) -> float:
        check_int(k, "moment order", 0, 2)
        mu = self._mu
        return float(mu.T(k, mu.hi) - mu.T(k, mu.lo) + np.sum(mu.atoms_w * mu.atoms_x**k))

    def mean(self) -> float:
        return self.moment(1)

    def var(self) -> float:
        return self.moment(2) - self.moment(1) ** 2

    def std(self) -> float:
        return math.sqrt(self.var())

    def rvs(self, size: Size = None, random_state: Seed = None) -> FloatOrArray:
        """Monte-Carlo draws of ``u`` with the rule's float32 scale (``size``: an integer or a
        shape; values in whole blocks, the last cut); the tensor scale as the model says
        (uniform phase: one random phase per block; ``tensor_amax=G``: blocks drawn until
        their maximum is at most ``G``, as the law is conditioned).  Not with ``tensor_size``
        under a two-level rule: quantize whole tensors instead."""
        shape = sample_shape(size)
        n = int(np.prod(shape))
        rng = random_generator(random_state)
        B = self.block_size
        nb = -(-n // B)
        if self.tensor.size is not None and self.rule.tensor_scale(1.0, self.qmax) is not None:
            raise ValueError("rvs with tensor_size: quantize whole tensors instead")
        x = self._blocks(nb, rng)
        m = np.abs(x).max(axis=1)
        if self.rule.tensor_scale(1.0, self.qmax) is None:
            s = self.rule.scale(m, self.qmax)
        elif self.tensor.amax is not None:
            s = self.rule.scale(m, self.qmax, self.rule.tensor_scale(self.tensor.amax, self.qmax))
        else:  # t = 2**phi c: s_t(M) = 2**phi s_c(M / 2**phi), so scale the block by 2**-phi
            c = self.rule.tensor_scale(2.0 ** math.ceil(math.log2(float(m.max(initial=0.0)) + 1.0)), self.qmax)
            f = 2.0 ** -rng.random(nb)
            x, m = x * f[:, None], m * f
            s = self.rule.scale(m, self.qmax, c)
        return (x / (self.qmax * np.asarray(s, dtype=np.float64))[:, None]).ravel()[:n].reshape(shape)[()]

    def _blocks(self, nb: int, rng) -> np.ndarray:
        """``nb`` blocks of source draws; under ``tensor_amax=G`` only blocks with ``M <= G``."""
        B, G = self.block_size, self.tensor.amax
        x = np.asarray(self.source.rvs((nb, B), rng))   # blocks: an array
        if G is None:
            return x
        keep = x[np.abs(x).max(axis=1) <= G]
        tries = 1
        while keep.shape[0] < nb:
            if tries >= 1000:
                raise ValueError(f"tensor_amax={G:g}: too few blocks of {B} have their maximum below it to sample")
            more = np.asarray(self.source.rvs((nb, B), rng))
            keep = np.concatenate([keep, more[np.abs(more).max(axis=1) <= G]])
            tries += 1
        return keep[:nb]
