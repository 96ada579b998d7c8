"""Audit of the published 4-bit tables in the scaled layouts they were made for.

A table is designed for a layout: E2M1 for NVFP4 (E4M3 block scale, blocks of 16) and MXFP4
(E8M0 shared scale, blocks of 32, in each of torchao's rounding modes), IQ4_NL for ggml's
float16 block scale at blocks of 32, NF4 for bitsandbytes' float32 absmax and its nested
statistics.  For each pair this computes, on Gaussian weights and exactly
(:func:`quantbook.derive.evaluate` with ``scale=``):

* the table's expected weight-domain MSE and MAE in that layout;
* the least expected MSE any 4-bit code reaches in the same layout
  (:func:`quantbook.derive.lloyd` with ``scale=``), with only the levels the layout needs
  fixed — the range ends ``-1, 1``, to which the rule maps the block maximum — and, as a
  second reference, with an exact zero fixed as well (``-1, 0, 1``);
* the table's loss against each optimum, ``100·(MSE_table / MSE_optimum − 1)`` %.

Nested statistics (bitsandbytes' ``compress_statistics``) encode the values with the exact
maximum and round only the stored scale, whose law depends on the other blocks: their
findings use :class:`quantbook.derive.scaled.NestedMeasure` (the model is in its docstring),
the optimum by Lloyd steps on it from the float32 optimum.  What the exact
derivation cannot model is reported as not available with the reason
(:func:`quantbook.derive.scaled.check_scale`).

ggml's IQ4_NL quantizers (``search:ggml``, the least-squares search llama-quantize runs, and
``search:ggml-ref``, ggml's reference quantizer; :mod:`quantbook.scales.ggml`) choose the
scale from all of a block's values, so their law is not 1-D.  Their findings are Monte
Carlo: the errors of :data:`MC_EVAL` N(0, 1) values (seed 1) in the layout
(:func:`quantbook.derive.search_block_errors`, the layout's own error), with the standard
error of the MSE over blocks.  Their optima are the codes fitted by
:func:`quantbook.derive.search_lloyd` on :data:`MC_FIT` values (seed 0) with the search
inside the loop, measured on the evaluation sample (``method = "monte-carlo"``).  Lloyd
with a search inside stops at local optima, so each is the better (on the fitting sample) of
two fits: with both range ends fixed and with only ``-1`` fixed, the end ggml maps a block's
extreme to (and likewise with ``0`` fixed too).

The findings join the audit rows only when asked (:func:`attach_layouts`, ``quantbook audit
--layouts``), so the default audit does not pay for them; they never change a row's verdict.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from typing import Any, Callable, Iterable, TypedDict

from ..codebooks.registry import REGISTRY
from ..scales import DEFAULT_QMAX
from .audit import AuditRow

__all__ = ["Layout", "LayoutFinding", "LAYOUTS", "audit_layout", "layout_findings", "attach_layouts",
           "format_finding"]

#: the fixed levels of the two optima: the layout's range, and the range with an exact zero
FIXED_RANGE = (-1.0, 1.0)
FIXED_ZERO = (-1.0, 0.0, 1.0)


#: Monte Carlo sizes of the search layouts: evaluation sample, fitting sample, Lloyd iterations
MC_EVAL, MC_FIT, MC_ITER = 1 << 21, 1 << 18, 40


@dataclass(frozen=True)
class Layout:
    """A published table and a layout it was made for."""

    codebook: str
    label: str  # e.g. "NVFP4"
    scale: str  # a scale rule spec (quantbook.scales)
    block_size: int
    note: str = ""  # what the model of this layout leaves out
    qmax: float = DEFAULT_QMAX  # the table's largest magnitude in the layout (search layouts only)


_GGML = ("the block maximum maps to the table's largest magnitude, without ggml's search and signed "
         "scale (see search:ggml)")

#: every (table, layout) pair the layout audit covers, in report order
LAYOUTS: tuple[Layout, ...] = (
    Layout("e2m1", "NVFP4", "e4m3", 16, "E4M3 block scale with the float32 tensor scale's phase averaged"),
    Layout("e2m1", "MXFP4", "e8m0:floor", 32, "the OCP MX rounding"),
    Layout("e2m1", "MXFP4", "e8m0:ceil", 32),
    Layout("e2m1", "MXFP4", "e8m0:even", 32),
    Layout("e2m1", "MXFP4", "e8m0:rceil", 32),
    Layout("iq4_nl", "ggml fp16", "float16", 32, _GGML),
    Layout("iq4_nl", "ggml reference quantizer", "search:ggml-ref", 32,
           "ggml's quantize_row_iq4_nl_ref: signed float16 scale, one least-squares fit", 127.0),
    Layout("iq4_nl", "ggml llama-quantize", "search:ggml", 32,
           "ggml's quantize_iq4_nl: least-squares search over 15 trial scales", 127.0),
    Layout("nf4", "bitsandbytes", "float32", 64, "compress_statistics=False"),
    Layout("nf4", "bitsandbytes nested", "nested", 64, "compress_statistics=True"),
)


class _Named(TypedDict):
    """The fields of a :class:`LayoutFinding` that name its table and layout."""

    codebook: str
    layout: str
    scale: str
    block_size: int
    bits_per_weight: float
    note: str


@dataclass
class LayoutFinding:
    """One table in one layout; errors are expected values on N(0, 1) weights."""

    codebook: str
    layout: str
    scale: str
    block_size: int
    bits_per_weight: float
    available: bool
    reason: str = ""  # why not available
    note: str = ""
    mse_weight: float | None = None
    mae_weight: float | None = None
    optimum_mse_weight: float | None = None  # with FIXED_RANGE
    loss_percent: float | None = None
    optimum_zero_mse_weight: float | None = None  # with FIXED_ZERO
    loss_zero_percent: float | None = None
    optimum_levels: list[float] = field(default_factory=list)  # the FIXED_RANGE optimum, in [-1, 1]
    method: str = "exact"  # or "monte-carlo" (module docstring)
    mse_standard_error: float | None = None  # of mse_weight, Monte Carlo only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_finding(f: dict[str, Any]) -> str:
    """A finding (:meth:`LayoutFinding.to_dict`) on one line, as the text audit prints it."""
    where = f"{f['layout']} ({f['scale']}, B{f['block_size']}, {f['bits_per_weight']:g} bits/w)"
    if not f["available"]:
        return f"{where}: not available: {f['reason']}"
    if f.get("method") == "monte-carlo":
        where += f" [Monte Carlo, MSE ± {f['mse_standard_error']:.1e}]"
    return (f"{where}: MSE {f['mse_weight']:.5e}; optimum {f['optimum_mse_weight']:.5e} "
            f"(loss {f['loss_percent']:+.1f} %), with 0 fixed {f['optimum_zero_mse_weight']:.5e} "
            f"(loss {f['loss_zero_percent']:+.1f} %)" + (f"; {f['note']}" if f["note"] else ""))


def _loss(table: float, optimum: float) -> float:
    return 100.0 * (table / optimum - 1.0) if optimum > 0 and math.isfinite(table) else math.nan


def audit_layout(layout: Layout) -> LayoutFinding:
    """The finding for one table in one layout (module docstring)."""
    from ..derive.lloyd import lloyd
    from ..derive.metrics import evaluate
    from ..derive.scaled import check_scale
    from ..scales import get_rule

    cb = REGISTRY[layout.codebook].codebook
    rule = get_rule(layout.scale)
    bpw = rule.bits_per_weight(layout.block_size, cb.bits)
    base = _Named(codebook=cb.name, layout=layout.label, scale=rule.name, block_size=layout.block_size,
                  bits_per_weight=bpw, note=layout.note)
    if rule.encodes_with_amax:
        return _nested_finding(cb, layout, base)
    if not rule.deterministic:   # a copy: the cached finding is every later caller's too
        found = _search_finding(layout, rule.name, cb.bits)
        return replace(found, optimum_levels=list(found.optimum_levels))
    try:
        check_scale(rule)
    except ValueError as exc:
        return LayoutFinding(**base, available=False, reason=str(exc))
    # float32 is bitsandbytes' exact absmax: the derivation's default law, not a scaled layout
    scale = None if rule.layout == "bnb" else rule.name
    ev = evaluate(cb, layout.block_size, scale=scale)
    opt = {fixed: lloyd(cb.bits, layout.block_size, loss="l2", scale=scale, fixed=list(fixed))
           for fixed in (FIXED_RANGE, FIXED_ZERO)}
    mse = {fixed: evaluate(c, layout.block_size, scale=scale).mse_weight for fixed, c in opt.items()}
    return LayoutFinding(**base, available=True, mse_weight=ev.mse_weight, mae_weight=ev.mae_weight,
                         optimum_mse_weight=mse[FIXED_RANGE], loss_percent=_loss(ev.mse_weight, mse[FIXED_RANGE]),
                         optimum_zero_mse_weight=mse[FIXED_ZERO],
                         loss_zero_percent=_loss(ev.mse_weight, mse[FIXED_ZERO]),
                         optimum_levels=[float(v) for v in opt[FIXED_RANGE].levels])


def _lloyd_on(mu, start: Any, fixed: tuple[float, ...], tol: float = 1e-12, max_iter: int = 200) -> Any:
    """The fixed point of the Lloyd (L2) step on the measure ``mu`` from ``start``, by Newton
    steps on ``q - step(q)`` with the step's Jacobian (exact for the absmax law, close for
    nested statistics, so each step gains digits), falling back to the plain step when Newton
    does not shrink the change: the fixed ±1 own everything beyond [-1, 1]."""
    import numpy as np

    from ..derive.block import RestrictedMeasure
    from ..derive.lloyd import lloyd_step, newton_correction

    solve = RestrictedMeasure(mu, -1.0, 1.0)
    q = np.asarray(start, dtype=np.float64)
    free = ~np.isin(q, np.asarray(fixed))
    fi = np.flatnonzero(free)
    new, J = lloyd_step(solve, q, free, "l2", want_jac=True)
    for _ in range(max_iter):
        r = (q - new)[fi]
        if float(np.max(np.abs(r))) <= tol:
            break
        cand = q.copy()
        cand[fi] = q[fi] - newton_correction(J, fi, r)
        ok = np.all(np.diff(cand) > 0)
        if ok:
            new_c, J_c = lloyd_step(solve, cand, free, "l2", want_jac=True)
            ok = np.max(np.abs((cand - new_c)[fi])) < np.max(np.abs(r))
        if not ok:  # the plain step never increases the loss
            cand = new
            new_c, J_c = lloyd_step(solve, cand, free, "l2", want_jac=True)
        q, new, J = cand, new_c, J_c
    return q


def _nested_finding(cb: Any, layout: Layout, base: _Named) -> LayoutFinding:
    """The finding under nested statistics (module docstring)."""
    from ..derive.lloyd import lloyd
    from ..derive.metrics import cell_errors
    from ..derive.scaled import scaled_measure

    mu2 = scaled_measure("normal", layout.block_size, layout.scale, weight_power=2)
    mu1 = scaled_measure("normal", layout.block_size, layout.scale, weight_power=1)
    mse = float(cell_errors(mu2, cb.levels, "l2").sum())
    mae = float(cell_errors(mu1, cb.levels, "l1").sum())
    opt = {fixed: _lloyd_on(mu2, lloyd(cb.bits, layout.block_size, loss="l2", fixed=list(fixed)).levels, fixed)
           for fixed in (FIXED_RANGE, FIXED_ZERO)}
    omse = {fixed: float(cell_errors(mu2, q, "l2").sum()) for fixed, q in opt.items()}
    return LayoutFinding(**base, available=True, mse_weight=mse, mae_weight=mae,
                         optimum_mse_weight=omse[FIXED_RANGE], loss_percent=_loss(mse, omse[FIXED_RANGE]),
                         optimum_zero_mse_weight=omse[FIXED_ZERO],
                         loss_zero_percent=_loss(mse, omse[FIXED_ZERO]),
                         optimum_levels=[float(v) for v in opt[FIXED_RANGE]])


@lru_cache(maxsize=None)
def _search_finding(layout: Layout, scale: str, bits: int) -> LayoutFinding:
    """The Monte-Carlo finding under a search rule (module docstring); cached, since the
    samples are fixed."""
    import numpy as np

    from ..derive.search_lloyd import search_block_errors, solve_search_lloyd
    from ..scales import get_rule

    cb = REGISTRY[layout.codebook].codebook
    B, q = layout.block_size, layout.qmax
    x = np.random.default_rng(1).standard_normal(MC_EVAL).astype(np.float32)

    def errors(code):  # per block, the means of the squared and the absolute errors
        e2, e1 = search_block_errors(code.levels, B, scale, x, qmax=q)
        return e2 / B, e1 / B

    e, e_abs = errors(cb)

    def best(*fixed_sets):  # the least fitting error of the fits (each a local optimum)
        fits = [solve_search_lloyd(bits, B, scale=scale, samples=MC_FIT, seed=0, fixed=f, qmax=q,
                                   max_iter=MC_ITER) for f in fixed_sets]
        return min(fits, key=lambda r: r.mse).codebook

    # ggml maps a block's extreme to the table's negative end only: the positive end may move
    opt = {FIXED_RANGE: best(FIXED_RANGE, (-1.0,)), FIXED_ZERO: best(FIXED_ZERO, (-1.0, 0.0))}
    omse = {fixed: float(np.mean(errors(c)[0])) for fixed, c in opt.items()}
    mse = float(np.mean(e))
    return LayoutFinding(codebook=cb.name, layout=layout.label, scale=scale, block_size=B,
                         bits_per_weight=get_rule(scale).bits_per_weight(B, bits), available=True,
                         note=layout.note, mse_weight=mse, mae_weight=float(np.mean(e_abs)),
                         optimum_mse_weight=omse[FIXED_RANGE], loss_percent=_loss(mse, omse[FIXED_RANGE]),
                         optimum_zero_mse_weight=omse[FIXED_ZERO],
                         loss_zero_percent=_loss(mse, omse[FIXED_ZERO]),
                         optimum_levels=[float(v) for v in opt[FIXED_RANGE].levels], method="monte-carlo",
                         mse_standard_error=float(np.std(e, ddof=1) / np.sqrt(e.size)))


def layout_findings(codebook: str | None = None) -> list[LayoutFinding]:
    """The findings of every layout in :data:`LAYOUTS` (of ``codebook`` only, if given)."""
    return [audit_layout(lay) for lay in LAYOUTS if codebook is None or lay.codebook == codebook]


def attach_layouts(rows: Iterable[AuditRow], progress: Callable[[str], None] | None = None) -> None:
    """Add the findings to the audit rows of the tables in :data:`LAYOUTS`, as
    ``row.details["layouts"]`` (a list of :meth:`LayoutFinding.to_dict`); the rows' verdicts
    are left alone."""
    for row in rows:
        if any(lay.codebook == row.name for lay in LAYOUTS):
            if progress:
                progress(row.name)
            row.details["layouts"] = [f.to_dict() for f in layout_findings(row.name)]
