"""Audit of optimality: does a published table satisfy the optimality conditions it claims?

For a table that claims an objective (AF4: least expected L1 error of the normalised values
of N(0,1) blocks of 64 under absmax, with -1, 0, 1 fixed — Yoshida, arXiv:2306.06965; J. Max's
1960 tables: least MSE for N(0,1) without normalisation) this computes, under the stated model:

* the largest violation of the necessary conditions — ``max |step(q) - q|`` over the free
  levels, ``step`` being the exact centroid (L2) or median (L1) of each nearest-level cell;
* the expected error of the table and of the table that satisfies the conditions
  (:func:`quantbook.derive.lloyd.solve_lloyd`), and the relative excess.

The checks register with :func:`quantbook.verify.audit.register_check` for ``af4`` and
``max1960-n*``; numbers go to ``row.details["optimality"]`` and a sentence to
``row.explanation``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..codebooks.registry import REGISTRY, Published
from ..derive.block import block_measure
from ..derive.lloyd import lloyd_step, solve_lloyd, weight_power
from ..derive.recipes import parse_fixed
from ..derive.metrics import cell_errors
from .audit import AuditRow, register_check

__all__ = ["optimality_report", "sig_round"]


def sig_round(x: float, digits: int = 4) -> float:
    """``x`` rounded to ``digits`` significant digits (how Max printed his table)."""
    if x == 0 or not math.isfinite(x):
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


def optimality_report(levels: Sequence[float] | np.ndarray, loss: str, block_size: int | None, normalization: str,
                      domain: str = "normalized", source: Any = "normal",
                      fixed: Sequence[float] | None = None) -> dict[str, Any]:
    """Optimality conditions and lost expected error of ``levels`` under the stated model.

    Returns a dict: ``objective`` (the model, in words), ``max_violation`` (max over free
    levels of ``|step(q) - q|``, in level units), ``worst_level`` (its value), ``violations``
    (per free level), ``loss_table`` and ``loss_optimum`` (expected L1/L2 error, weight-domain
    errors in unit-variance units), ``excess_percent`` (100·(table/optimum - 1)),
    ``optimum_levels``, ``optimum_change`` (the optimum's last Lloyd change),
    ``max_level_diff`` (None when the optimum has another number of levels).
    """
    fx = list(parse_fixed(fixed, normalization))
    mu = block_measure(source, block_size, normalization, weight_power(loss, domain, normalization))
    q = np.sort(np.asarray(levels, dtype=np.float64))
    free = ~np.isin(q, fx)
    new, _ = lloyd_step(mu, q, free, loss)
    viol = np.abs(new - q)[free]
    opt = solve_lloyd(int(math.ceil(math.log2(q.size))), block_size, loss, domain, normalization, source, fx)
    lt = float(np.sum(cell_errors(mu, q, loss)))
    lo = opt.loss_value
    i = int(np.argmax(viol)) if viol.size else 0
    return {
        "objective": f"{loss.upper()} {domain} domain, {normalization}"
                     + (f", B={block_size}" if normalization != "none" else "") + f", source {source}",
        "max_violation": float(viol.max()) if viol.size else 0.0,
        "worst_level": float(q[free][i]) if viol.size else None,
        "violations": [float(v) for v in viol],
        "loss_table": lt,
        "loss_optimum": lo,
        "excess_percent": 100.0 * (lt / lo - 1.0),
        "optimum_levels": [float(v) for v in opt.codebook.levels],
        "optimum_change": opt.change,
        "max_level_diff": float(np.max(np.abs(opt.codebook.levels - q))) if opt.codebook.levels.size == q.size
        else None,
    }


# --------------------------------------------------------------------------------- AF4
def _af4_check(entry: Published, derived, row: AuditRow) -> None:
    B = int(entry.extra.get("block_size", 64))
    rep = optimality_report(entry.codebook.levels, "l1", B, "absmax", "normalized", "normal", [-1.0, 0.0, 1.0])
    row.details["optimality"] = rep
    halves = derived.recipe.get("partition") == "halves" if derived.recipe else False
    how = ""
    if halves and row.max_abs_diff is not None:
        how = (f"; the recipe (each half [-1,0], [0,1] solved separately, 0 a hard cell boundary, as "
               f"Yoshida's generate_af4.py does) gives the table to {row.max_abs_diff:.1e}")
    row.explanation += (
        f"{how}. Optimality under the claimed objective (min expected |y - q| of normalised N(0,1) "
        f"values, B={B}, absmax, -1/0/1 fixed): the table violates the median conditions by up to "
        f"{rep['max_violation']:.4f} (level {rep['worst_level']:+.5f}; the innermost levels' cells are "
        f"taken to end at 0 instead of at the midpoint to 0) and has expected L1 error "
        f"{rep['loss_table']:.6f} vs {rep['loss_optimum']:.6f} for the true optimum "
        f"(+{rep['excess_percent']:.2f}%); the optimum's levels differ by up to {rep['max_level_diff']:.4f}")


# -------------------------------------------------------------------------------- Max 1960
def _max_check(entry: Published, derived, row: AuditRow) -> None:
    pub = entry.codebook.levels
    exact = derived.levels
    diffs = []
    for p, e in zip(pub, exact):
        if p > 0 and sig_round(float(e)) != p:
            diffs.append({"what": "y", "printed": float(p), "exact": float(e), "exact_4sig": sig_round(float(e))})
    px = np.asarray(entry.extra.get("thresholds", []), dtype=np.float64)
    ex = 0.5 * (exact[:-1] + exact[1:])
    for p, e in zip(px, ex):
        if p > 0 and sig_round(float(e)) != p:
            diffs.append({"what": "x", "printed": float(p), "exact": float(e), "exact_4sig": sig_round(float(e))})
    rep = optimality_report(pub, "l2", None, "none", "normalized", "normal", [])
    mse_exact = rep["loss_optimum"]
    mse_printed = entry.extra.get("mse")
    if mse_printed is not None and sig_round(mse_exact) != mse_printed:
        diffs.append({"what": "mse", "printed": float(mse_printed), "exact": mse_exact,
                      "exact_4sig": sig_round(mse_exact)})
    rep["printed_vs_exact"] = diffs
    rep["mse_of_printed_levels"] = rep["loss_table"]
    row.details["optimality"] = rep
    # Max printed 4 significant digits, not 4 decimals: judge the levels at his precision
    row.reproduced = not any(d["what"] == "y" for d in diffs)
    row.explanation = "compared at Max's 4 significant digits (1.510 is 1.5104 rounded)"
    if diffs:
        listing = ", ".join(f"{d['what']}={d['printed']:#.4g} printed vs {d['exact']:.7g} exact (4 sig. digits "
                            f"{d['exact_4sig']:#.4g})" for d in diffs)
        text = (f"; the exact optimum differs from the print in "
                f"{len(diffs)} number(s): {listing}")
    else:
        text = "; every printed level, end point and the error agree with the exact optimum"
    row.explanation += text + (
        f". The printed levels violate the centroid conditions by up to {rep['max_violation']:.1e} and "
        f"have MSE {rep['loss_table']:.7f} vs {mse_exact:.7f} optimal (+{rep['excess_percent']:.2g}%)")


register_check("af4", _af4_check)
for _name in REGISTRY:
    if _name.startswith("max1960-"):
        register_check(_name, _max_check)
