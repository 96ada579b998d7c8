"""Audit of the published vector codebooks (grids of N points in P dimensions) on N(0, 1).

For every published grid (:mod:`quantbook.codebooks.vector_registry`) this measures, on
i.i.d. N(0, 1) vectors — the law the grids were made for:

* the mean squared error per dimension: by Monte Carlo on a seeded sample (seed, size and
  standard error stated), and exactly by quadrature for P = 1;
* the gap to the Gaussian rate-distortion bound ``D(R) = 2**(-2R)`` at the index's
  ``R = ceil(log2 N) / P`` bits per weight, in dB, and the exact MSE of the best scalar code at
  the same R (Lloyd-Max on N(0, 1), which needs an integer R);
* whether the grid is a fixed point of Lloyd: for each point the distance to the centroid of
  its Voronoi cell on the sample, the largest of these, and the largest in units of the
  centroid's standard error (``z``; values of a few are what sampling alone gives);
* what the derived grid of the same (P, N) gains against it, ``100·(1 - MSE_derived /
  MSE_grid)`` %, with the standard error of the paired difference (same sample).  For P = 1
  the derived grid is the exact Lloyd-Max code; otherwise a derived grid stored in the
  registry (``vq-Pd-N``) when there is one.

The findings never fail: published grids carry no recipe to reproduce.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np

from ..codebooks.codebook import Codebook
from ..codebooks.vector import VectorCodebook
from ..codebooks.vector_registry import vector_registry
from ..derive.vq import cell_stats, check_sample_size, draw_vectors, vector_errors
from ..errors import NotFoundError
from ..numerics.arguments import check_int, did_you_mean

__all__ = ["VectorAuditRow", "audit_vector", "audit_vectors", "AUDIT_SEED", "AUDIT_SAMPLES",
           "exact_mse_1d", "lloyd_max_mse", "derived_counterpart"]

#: seed of the audit's Monte-Carlo sample (derivations default to seed 0: a different sample)
AUDIT_SEED = 20241126
#: default audit sample size, in vectors
AUDIT_SAMPLES = 10**6


@dataclass(frozen=True)
class VectorAuditRow:
    """The audit of one vector codebook: its Monte Carlo error, the bounds it is compared
    with and the derived grid of the same shape."""

    name: str
    dim: int
    size: int
    bits_per_weight: float        # index bits / P (without the group scale)
    samples: int
    seed: int
    mse: float                    # Monte Carlo, per dimension
    mse_se: float
    mse_exact: float | None       # quadrature (P = 1)
    rd_bound: float               # 2**(-2R)
    gap_db: float                 # 10·log10(mse / rd_bound), with the exact mse where there is one
    scalar_mse: float | None      # exact Lloyd-Max on N(0,1) at R bits (integer R)
    centroid_max: float           # largest |centroid(cell) - point|
    centroid_max_z: float         # largest |centroid - point| / its standard error
    empty_cells: int
    derived: str | None           # the derived grid of the same (P, N)
    derived_mse: float | None
    gain_pct: float | None        # 100·(1 - derived / grid)
    gain_se_pct: float | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def exact_mse_1d(levels: Any) -> float:
    """Exact expected squared error of nearest-level quantization of N(0, 1) (quadrature)."""
    from ..derive.metrics import evaluate

    lv = np.unique(np.asarray(levels, dtype=np.float64))
    bits = max(1, math.ceil(math.log2(lv.size)))
    return float(evaluate(Codebook(levels=lv, bits=bits), None, "normal", normalization="none").mse_weight)


@lru_cache(maxsize=16)
def lloyd_max_mse(bits: int) -> float:
    """Exact MSE of the Lloyd-Max (minimum-MSE) ``bits``-bit scalar code of N(0, 1)."""
    return exact_mse_1d(_lloyd_max(bits).levels)


@lru_cache(maxsize=16)
def _lloyd_max(bits: int) -> Codebook:
    from ..derive.lloyd import lloyd

    return lloyd(bits=bits, block_size=None, normalization="none", source="normal", fixed=[])


def derived_counterpart(cb: VectorCodebook) -> VectorCodebook | None:
    """The derived grid of ``cb``'s (P, N): exact Lloyd-Max for P = 1 with N a power of two,
    else the registry's ``vq-Pd-N`` when it holds one."""
    p, n = cb.dim, cb.size
    if p == 1 and n & (n - 1) == 0:
        levels = _lloyd_max(int(math.log2(n))).levels
        return VectorCodebook(name=f"lloyd-max-{n}", points=levels[:, None],
                              source="exact Lloyd-Max code of N(0,1) (quantbook.derive.lloyd)")
    entry = vector_registry().get(f"vq-{p}d-{n}")
    return None if entry is None else entry.codebook


def audit_vector(cb: VectorCodebook, samples: int = AUDIT_SAMPLES, seed: int = AUDIT_SEED,
                 derived: VectorCodebook | None | bool = True) -> VectorAuditRow:
    """The findings of the module docstring for one grid.  ``derived``: the grid to compare
    with (True: :func:`derived_counterpart`; None/False: none)."""
    check_int(samples, "samples", 100)
    check_int(seed, "seed", 0)
    p, n = cb.dim, cb.size
    check_sample_size(int(samples), p)
    x = draw_vectors("normal", p, int(samples), int(seed))
    err = vector_errors(cb.points, x)
    mse = float(err.mean()) / p
    se = float(err.std(ddof=1)) / math.sqrt(err.size) / p
    exact = exact_mse_1d(cb.points[:, 0]) if p == 1 else None
    r_bits = cb.index_bits / p
    rd = 2.0 ** (-2 * r_bits)
    gap = 10 * math.log10((exact if exact is not None else mse) / rd)
    scalar = lloyd_max_mse(int(r_bits)) if float(r_bits).is_integer() and 1 <= r_bits <= 8 else None
    st = cell_stats(cb.points, x)
    full = st.counts > 1
    off = np.sqrt(np.sum((st.centroids - cb.points.astype(np.float64)) ** 2, axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(full, off / np.sqrt(st.spread / np.maximum(st.counts, 1)), 0.0)
    other = derived_counterpart(cb) if derived is True else (derived or None)
    d_mse = gain = gain_se = None
    if other is not None:
        if other.dim != p:
            raise ValueError(f"the derived grid {other.name} has dimension {other.dim}, not {p}")
        e2 = vector_errors(other.points, x)
        d_mse = float(e2.mean()) / p
        diff = (err - e2) / p
        gain = 100.0 * float(diff.mean()) / mse
        gain_se = 100.0 * float(diff.std(ddof=1)) / math.sqrt(diff.size) / mse
    return VectorAuditRow(
        name=cb.name, dim=p, size=n, bits_per_weight=r_bits, samples=int(samples), seed=int(seed),
        mse=mse, mse_se=se, mse_exact=exact, rd_bound=rd, gap_db=gap, scalar_mse=scalar,
        centroid_max=float(off[full].max()) if full.any() else 0.0,
        centroid_max_z=float(z.max()), empty_cells=int(np.sum(st.counts == 0)),
        derived=None if other is None else other.name, derived_mse=d_mse, gain_pct=gain, gain_se_pct=gain_se,
        source=cb.source)


def audit_vectors(samples: int = AUDIT_SAMPLES, seed: int = AUDIT_SEED, names: str | Sequence[str] | None = None,
                  progress: Callable[[str], None] | None = None) -> list[VectorAuditRow]:
    """:func:`audit_vector` for every published grid, in registry order (``names``: a name or
    several, in the order given).
    Derived grids in the registry are compared, not audited themselves."""
    reg = vector_registry()
    if names is None:
        chosen = [k for k, v in reg.items() if v.codebook.recipe is None]
    else:
        chosen = [names] if isinstance(names, str) else list(names)
    for name in chosen:   # every name before any work
        if name not in reg:
            raise NotFoundError(f"no vector grid {name!r}{did_you_mean(name, reg)}; known: {', '.join(reg)}")
    check_int(samples, "samples", 100)   # and the sample: audit_vector's rules, for the largest grid
    check_sample_size(int(samples), max((reg[name].codebook.dim for name in chosen), default=1))
    rows = []
    for name in chosen:
        if progress is not None:
            progress(name)
        rows.append(audit_vector(reg[name].codebook, samples, seed))
    return rows


def format_row(r: VectorAuditRow) -> list[str]:
    """Text lines of one row (``quantbook audit --vector``)."""
    exact = "" if r.mse_exact is None else f"  exact {r.mse_exact:.6e}"
    scalar = "" if r.scalar_mse is None else (
        f"  scalar Lloyd-Max at {r.bits_per_weight:g} bits "
        f"{r.scalar_mse:.4e} ({10 * math.log10(r.scalar_mse / r.rd_bound):.2f} dB)")
    lines = [f"[     vector] {r.name}: {r.size} points in {r.dim}-D, {r.bits_per_weight:g} bits/weight (index)",
             f"         MSE/dim {r.mse:.6e} ± {r.mse_se:.1e} (MC, {r.samples} vectors, seed {r.seed}){exact}",
             f"         gap to D(R)=2^-2R: {r.gap_db:.2f} dB{scalar}",
             f"         Lloyd fixed point: max |centroid - point| {r.centroid_max:.2e} "
             f"(max z {r.centroid_max_z:.1f}; {r.empty_cells} empty cells)"]
    if r.derived is not None:
        lines.append(f"         derived {r.derived}: MSE/dim {r.derived_mse:.6e}, gain {r.gain_pct:+.3f} % "
                     f"± {r.gain_se_pct:.3f} % (paired)")
    return lines
