"""Exact expected errors of a codebook under the block model (:mod:`quantbook.derive.block`).

:func:`evaluate` integrates over the exact law of ``y`` (and of ``(y, M)`` for the weight
domain) with closed-form cell integrals — no sampling.  Quantisation is nearest level with
ties to the lower level (:meth:`Codebook.encode`); the block scale is taken as exact (a float32
absmax adds a relative error of at most 2**-24 to each scale, which is ignored).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..codebooks.blocks import DEFAULT_BLOCK_SIZE, check_derived_block_size
from ..codebooks.codebook import Codebook, check_numbers
from ..codebooks.require import refuse_name
from ..numerics.losses import check_loss
from ..scales import check_scaled_only, layout_qmax, scaled_peak
from .block import NORMALIZATIONS, _Measure, block_measure
from .scaled import DEFAULT_QMAX, TensorModel, check_scale, scaled_measure
from .sources import parse_source

__all__ = ["Evaluation", "evaluate", "normalized_unit", "cell_errors", "cell_probabilities"]


def _edges(mu, levels):
    return np.concatenate([[mu.lo], 0.5 * (levels[:-1] + levels[1:]), [mu.hi]])


def _check_levels(levels: Any) -> np.ndarray:
    """Sorted finite levels as a float64 vector (one-line ValueError otherwise)."""
    levels = check_numbers(levels, "levels")   # numpy would read '0.5' and True as numbers, and a string as one
    try:
        lv = np.asarray(levels, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"levels must be a sequence of numbers, got {levels!r}") from None
    if lv.ndim != 1 or lv.size == 0:
        raise ValueError(f"levels must be a non-empty 1-D sequence, got shape {lv.shape}")
    if not np.all(np.isfinite(lv)):
        raise ValueError("levels must be finite")
    if np.any(np.diff(lv) < 0):
        raise ValueError("levels must be sorted in increasing order")
    return lv


def cell_probabilities(mu: _Measure, levels: ArrayLike) -> np.ndarray:
    """Mass of each level's cell under the measure ``mu`` (atoms included)."""
    levels = _check_levels(levels)
    return mu.cells(_edges(mu, levels), 0)[0]


def cell_errors(mu: _Measure, levels: ArrayLike, loss: str) -> np.ndarray:
    """Per-cell ``∫ |y - q|`` (L1: the measure's ``l1_cells``) or ``∫ (y - q)²`` (L2) under the
    measure ``mu``.  Levels outside the support ``[mu.lo, mu.hi]`` (e.g. a table beyond ±1
    under absmax) are allowed: their cells hold only the support's end."""
    check_loss(loss)
    levels = _check_levels(levels)
    e = _edges(mu, levels)
    if loss == "l2":
        M0, M1, M2 = mu.cells(e, 2)
        return np.maximum(M2 - 2 * levels * M1 + levels**2 * M0, 0.0)
    return mu.l1_cells(e, levels)


@dataclass
class Evaluation:
    """Exact expected errors.  Weight domain: the error of a weight is ``scale·(y - q)``, in
    units of the source (unit variance for the parametric sources, unit RMS for samples).
    Normalised domain (``mse_normalized``, ``mae_normalized``): the error ``y - q`` of the
    normalised value."""

    codebook: str
    block_size: int | None
    source: str
    normalization: str
    mse_weight: float
    mae_weight: float
    mse_normalized: float
    mae_normalized: float
    sqnr_db: float
    entropy_bits: float  # code-usage entropy (bits per value)
    bits_per_weight: float  # bits + 32/B (float32 scale per block)
    rd_bound: float  # Gaussian D(R) = var · 2**(-2R)
    gap_db: float  # 10·log10(mse_weight / D(R))
    usage: list[float] = field(default_factory=list)  # probability of each sorted level
    scale: str | None = None  # the scale rule (None: the exact float32 absmax)
    qmax: float | None = None  # the table's largest magnitude in the units the scale multiplies (None: none)
    tensor_model: str | None = None  # how a two-level rule's tensor scale is modelled

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON: ``qmax`` always (null where the layout has none, as evaluate-model's
        and plot-sweep's JSON write it); ``scale`` and ``tensor_model`` only where they apply."""
        d = asdict(self)
        for key in ("scale", "tensor_model"):
            if d[key] is None:
                del d[key]  # the absmax law's vocabulary is unchanged
        return d


def normalized_unit(normalization: str, scale: Any = None) -> str:
    """The unit of :func:`evaluate`'s normalised errors (an MSE's is its square) under ``normalization``
    and the scale rule ``scale``: ``"σ"`` without normalisation (``y`` is the weight itself),
    ``"qmax·s"`` in a scaled layout (the table is rescaled to largest magnitude ``qmax``, so ``y`` is
    in units of what its largest entry decodes to, ``qmax`` times the block's scale ``s``), else
    ``"absmax"`` (the block's largest ``|x|``: also under ``float32`` and nested statistics, which
    encode with it)."""
    if normalization == "none":
        return "σ"
    if layout_qmax(scale) is not None:
        return "qmax·s"
    return "absmax"


def as_codebook(codebook: Any, who: str = "evaluate") -> Codebook:
    """A Codebook, or one built from a sequence of level values (one-line errors naming ``who``)."""
    if isinstance(codebook, Codebook):
        return codebook
    refuse_name(codebook, who)
    try:
        levels = _check_levels(codebook)
    except ValueError as exc:
        raise ValueError(f"{who} needs a Codebook or a sequence of levels: {exc}") from None
    return Codebook(levels=levels, bits=max(1, math.ceil(math.log2(levels.size))))


def evaluate(codebook: Codebook | Any, block_size: int | None = DEFAULT_BLOCK_SIZE, source: Any = "normal",
             normalization: str = "absmax", scale: Any = None, qmax: float | None = None,
             tensor_amax: Any = None, tensor_size: Any = None) -> Evaluation:
    """The exact expected errors of ``codebook`` under the block-B law of a source.

    Exact expected MSE/MAE (both domains), SQNR (dB), code-usage entropy (bits), and the gap
    (dB) to the Gaussian rate-distortion bound ``D(R) = σ²·2**(-2R)`` at ``R = bits + 32/B``
    bits per weight (``R = bits`` with ``normalization="none"``, where the levels are in source
    units and both domains coincide).  Accuracy ≲1e-12 relative for the parametric sources.
    Weight-domain errors (and, with ``normalization="none"``, all errors) are ``inf`` when the
    source lacks the needed moment; SQNR and the gap are then NaN.

    ``scale`` (a rule of :mod:`quantbook.scales` or its name; None or ``"float32"``: the exact
    absmax) evaluates the codebook in the scaled layout, as ``quantbook.quantize(x, codebook,
    block_size, scale=scale, qmax=qmax)`` stores it: the table is the codebook times
    ``qmax / max|level|``, values beyond it saturate (:mod:`.scaled`); the normalised domain is
    then in units of the table's largest magnitude, ``R`` is the rule's bits per weight, and
    ``tensor_amax``/``tensor_size`` model a two-level rule's tensor scale (default: its phase
    averaged)."""
    cb = as_codebook(codebook)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    src = parse_source(source)
    levels = cb.levels
    B = None if normalization == "none" else check_derived_block_size(block_size)
    rule = None if scale is None else check_scale(scale, amax_encoded=True)
    if rule is not None and rule.layout == "bnb" and not rule.encodes_with_amax:
        rule = None  # float32: bitsandbytes' exact absmax
    check_scaled_only(rule, qmax=qmax is not None, tensor_amax=tensor_amax is not None,
                      tensor_size=tensor_size is not None)
    if rule is not None:
        if normalization != "absmax" or B is None:
            raise ValueError(f"a scale rule maps the block's absolute maximum: normalization must be absmax, "
                             f"got {normalization!r}")
        return _evaluate_scaled(cb, B, src, normalization, rule, DEFAULT_QMAX if qmax is None else qmax,
                                tensor_amax, tensor_size)
    mu0 = block_measure(src, B, normalization, 0)
    # without normalisation the errors are as heavy-tailed as the source itself
    finite2 = normalization != "none" or src.moment_limit > 2
    finite1 = normalization != "none" or src.moment_limit > 1
    mse_n = float(np.sum(cell_errors(mu0, levels, "l2"))) if finite2 else math.inf
    mae_n = float(np.sum(cell_errors(mu0, levels, "l1"))) if finite1 else math.inf
    probs = cell_probabilities(mu0, levels) / mu0.total
    if B is None:   # no normalisation
        mse_w, mae_w = mse_n, mae_n
        R = float(cb.bits)
    else:
        mse_w = float(np.sum(cell_errors(block_measure(src, B, normalization, 2), levels, "l2"))) \
            if src.moment_limit > 2 else math.inf
        mae_w = float(np.sum(cell_errors(block_measure(src, B, normalization, 1), levels, "l1"))) \
            if src.moment_limit > 1 else math.inf
        R = cb.bits + 32.0 / B
    return _evaluation(cb, B, src, normalization, mse_w, mae_w, mse_n, mae_n, probs, R)


def _evaluation(cb: Codebook, B: Any, src: Any, normalization: str, mse_w: float, mae_w: float,
                mse_n: float, mae_n: float, probs: np.ndarray, R: float, *extra: Any) -> Evaluation:
    """The :class:`Evaluation` of the errors: entropy, SQNR and the gap to ``D(R)`` from them."""
    p = probs[probs > 0]
    entropy = float(-np.sum(p * np.log2(p)))
    ex2 = src.moment(2)
    var = src.var if math.isfinite(ex2) else math.inf
    sqnr = 10 * math.log10(ex2 / mse_w) if (math.isfinite(ex2) and 0 < mse_w < math.inf) else math.nan
    rd = var * 2.0 ** (-2 * R)
    gap = 10 * math.log10(mse_w / rd) if (0 < mse_w < math.inf and 0 < rd < math.inf) else math.nan
    return Evaluation(cb.name, B, src.spec, normalization, mse_w, mae_w, mse_n, mae_n, sqnr, entropy, R, rd, gap,
                      [float(v) for v in probs], *extra)


def _evaluate_scaled(cb: Codebook, B: int, src: Any, normalization: str, rule: Any, qmax: float,
                     tensor_amax: Any, tensor_size: Any) -> Evaluation:
    """:func:`evaluate` in the scaled layout (levels rescaled to largest magnitude 1); ``normalization``
    is absmax."""
    # bitsandbytes' layout (nested statistics) does not rescale the code
    levels = cb.levels if rule.encodes_with_amax else cb.levels / scaled_peak(cb.levels)

    def measure(p):
        return scaled_measure(src, B, rule, qmax, p, tensor_amax, tensor_size)

    mu0 = measure(0)
    mse_n = float(np.sum(cell_errors(mu0, levels, "l2")))
    mae_n = float(np.sum(cell_errors(mu0, levels, "l1")))
    probs = cell_probabilities(mu0, levels) / mu0.total
    mse_w = float(np.sum(cell_errors(measure(2), levels, "l2"))) if src.moment_limit > 2 else math.inf
    mae_w = float(np.sum(cell_errors(measure(1), levels, "l1"))) if src.moment_limit > 1 else math.inf
    R = rule.bits_per_weight(B, cb.bits, tensor_size)
    tm = TensorModel(tensor_amax, tensor_size).describe() if rule.tensor_scale(1.0, qmax) is not None else None
    return _evaluation(cb, B, src, normalization, mse_w, mae_w, mse_n, mae_n, probs, R, rule.name,
                       layout_qmax(rule, qmax), tm)
