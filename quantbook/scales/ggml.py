"""ggml's scale search for non-linear 4-bit tables (IQ4_NL): a signed float16 block scale,
fitted by least squares over trial scales.

Stated from llama.cpp's ``quantize_row_iq4_nl_impl`` (ggml/src/ggml-quants.c, ggml commit
0c1e570 as vendored by llama-cpp-python 0.3.36), for one block ``x`` of ``B`` values and
the layout's table sorted ascending, ``v_0 ≤ … ≤ v_{n-1}`` with ``v_0 < 0``:

* weights ``w_j = x_j²``; ``m`` is the first ``x_j`` of largest magnitude;
* ``nearest(a)`` is ``0`` if ``a ≤ v_0``, ``n-1`` if ``a ≥ v_{n-1}``, else, with
  ``v_{k-1} ≤ a < v_k``, ``k-1`` if ``a - v_{k-1} < v_k - a`` and ``k`` otherwise (a tie
  goes up);
* ``fit(id)``: codes ``q_j = nearest(id·x_j)``, sums ``S_qx = Σ (w_j·v_{q_j})·x_j`` and
  ``S_qq = Σ (w_j·v_{q_j})·v_{q_j}`` in ``j`` order, scale ``S_qx / S_qq`` (0 when
  ``S_qq = 0``);
* ``search:ggml`` (ggml's ``quantize_iq4_nl``, which llama-quantize runs): ``d = fit(1/d0)``
  with ``d0 = -m / v_0``, ``best = d·S_qx``; then for ``t = -7 … 7`` the fit at
  ``id = (v_0 + t·δ) / m`` replaces ``d`` when ``S_qq > 0`` and ``S_qx² > best·S_qq``; the
  codes are ``nearest((1/d)·x_j)`` for the ``d`` kept;
* ``search:ggml-ref`` (ggml's ``quantize_row_iq4_nl_ref``): ``d0 = m / v_0``, no trials,
  and the codes of the first fit;
* stored: ``d`` rounded to float16, nearest even.  A block with ``max|x| < 1e-15`` stores 0
  and codes ``nearest(0)`` (ggml's reference path leaves that block's codes unset; they
  decode to 0 either way).

``δ = |v_0| / 127`` is one step of IQ4_NL's integers: with ``qmax = 127`` the layout's table
is exactly ggml's ``kvalues_iq4nl``, and the codes and scales are ggml's bit for bit
(tests/data/make_ggml_vectors.py); other tables and ``qmax`` run the same steps.  Every
operation is float32, in ggml's order.  ggml packs a block's codes ``j`` and ``j + 16``
into one byte, the scaled layout neighbours (docs/scales.md): the bytes differ by that
permutation only.  The scale can be negative; decoding is ``table[code] · d`` as for the
other rules.

:func:`ggml_search_reference` (numpy) defines the result; :func:`ggml_search` runs the same
steps compiled with numba, and the gpu backend as a CUDA kernel (``qbs_ggml_<dtype>``), both
checked against it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..numerics.fpstate import ignore_underflow
from .floats import Float16Scale
from .rule import ScaleRule

__all__ = ["GgmlSearch", "ggml_search", "ggml_search_reference", "ggml_table", "GGML_PRESETS"]

_F = np.float32
_EPS = _F(1e-15)  # ggml's GROUP_MAX_EPS
_NTRY = 7

#: preset name -> trials each side (-1: ggml's reference quantizer, no trials)
GGML_PRESETS: dict[str, int] = {"ggml": _NTRY, "ggml-ref": -1}


def ggml_table(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """``(v, order, δ)``: the table sorted ascending (float32), the stored index of each sorted
    entry (uint8, stable), and the trial step ``δ = |v_0| / 127`` (float32)."""
    t = np.asarray(table, dtype=_F).reshape(-1)
    if not 2 <= t.size <= 16 or not np.all(np.isfinite(t)):
        raise ValueError(f"ggml's search needs a finite table of 2..16 values, got {t.size}")
    order = np.argsort(t, kind="stable")
    v = t[order]
    if not (v[0] < 0 < v[-1]):
        raise ValueError("ggml's search maps a block's extreme value to the table's most negative "
                         f"entry: the table needs negative and positive values, got {v[0]:g} … {v[-1]:g}")
    return v, order.astype(np.uint8), _F(abs(v[0]) / _F(127))


def _nearest(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    n = v.size
    k = np.clip(np.searchsorted(v, a, side="right"), 1, n - 1)
    lo, hi = v[k - 1], v[k]
    r = np.where((a - lo) < (hi - a), k - 1, k)
    return np.where(a <= v[0], 0, np.where(a >= v[-1], n - 1, r))


def _fit(x: np.ndarray, w: np.ndarray, idv: np.ndarray, v: np.ndarray):
    """codes, S_qx, S_qq for ``id`` per block (x, w: (B, blocks); idv: (blocks,))."""
    q = _nearest((idv[None, :] * x).astype(_F), v)
    qv = v[q]
    sqx = np.zeros(x.shape[1], _F)
    sqq = np.zeros(x.shape[1], _F)
    for j in range(x.shape[0]):
        wq = w[j] * qv[j]
        sqx = sqx + wq * x[j]
        sqq = sqq + wq * qv[j]
    return q, sqx, sqq


def _refit(sqx, sqq):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sqq > 0, sqx / np.where(sqq > 0, sqq, _F(1)), _F(0)).astype(_F)


@ignore_underflow
def ggml_search_reference(blocks: np.ndarray, table: np.ndarray, ntry: int = _NTRY
                          ) -> tuple[np.ndarray, np.ndarray]:
    """``(d, codes)`` of ggml's search (module docstring) for float32 ``blocks`` of shape
    ``(blocks, B)`` and a layout ``table``: the float32 scale ``d`` per block (before the
    float16 rounding) and the uint8 table index of each value (in ``table``'s order)."""
    xb = np.asarray(blocks, dtype=_F)
    v, order, delta = ggml_table(table)
    x = np.ascontiguousarray(xb.T)
    nb = x.shape[1]
    with np.errstate(over="ignore"):     # as C: inf, refused by store
        w = (x * x).astype(_F)
    j = np.argmax(np.abs(x), axis=0)
    m = x[j, np.arange(nb)]
    live = np.abs(m) >= _EPS
    m = np.where(live, m, _F(1)).astype(_F)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # as C: inf, NaN
        d0 = ((-m if ntry > 0 else m) / v[0]).astype(_F)
        q, sqx, sqq = _fit(x, w, (_F(1) / d0).astype(_F), v)
        d = _refit(sqx, sqq)
        best = (d * sqx).astype(_F)
        for t in range(-ntry, ntry + 1):
            idv = ((v[0] + _F(t) * delta) / m).astype(_F)
            _, sqx, sqq = _fit(x, w, idv, v)
            take = (sqq > 0) & (sqx * sqx > best * sqq)
            dn = _refit(sqx, sqq)
            d = np.where(take, dn, d)
            best = np.where(take, (dn * sqx).astype(_F), best)
        d = np.where(live, d, _F(0)).astype(_F)
        if ntry > 0 or not np.all(live):
            idv = np.where(d != 0, _F(1) / np.where(d != 0, d, _F(1)), _F(0)).astype(_F)
            q2 = _nearest((idv[None, :] * x).astype(_F), v)
            q = q2 if ntry > 0 else np.where(live[None, :], q, q2)
    return d, order[np.asarray(q).T]


def ggml_search(blocks: np.ndarray, table: np.ndarray, ntry: int = _NTRY) -> tuple[np.ndarray, np.ndarray]:
    """:func:`ggml_search_reference`, compiled (numba, parallel over blocks)."""
    x = np.ascontiguousarray(blocks, dtype=_F)
    if x.ndim != 2:
        raise ValueError(f"blocks must be 2-D (blocks, block size), got shape {x.shape}")
    v, order, delta = ggml_table(table)
    d = np.empty(x.shape[0], _F)
    q = np.empty(x.shape, np.uint8)
    if x.size:
        from .ggml_kernel import search   # numba is imported at the first search, not with the rules

        search(x, v, delta, int(ntry), d, q)
    return d, order[q]


class GgmlSearch(ScaleRule):
    """``search:ggml`` / ``search:ggml-ref`` (module docstring): float16 scales, 2 bytes a
    block, chosen from the block's values.  Named through :class:`~.search.SearchScale`."""

    family = "search"
    deterministic = False
    signed = True
    stored_dtype, stored_bytes = "float16", 2
    loss = "l2"
    format_blocks = ("llama.cpp's IQ4_NL", 32)   # ggml's QK4_NL

    def __init__(self, ntry: int = _NTRY) -> None:
        names = {n: k for k, n in GGML_PRESETS.items()}
        if ntry not in names:
            raise ValueError("ntry must be " + " or ".join(f"{n} (search:{k})" for n, k in names.items())
                             + f", got {ntry!r}")
        self.ntry = int(ntry)
        self.preset = names[self.ntry]
        self.base = Float16Scale()

    @property
    def name(self) -> str:
        return f"search:{self.preset}"

    def search(self, blocks: np.ndarray, table: np.ndarray, reference: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
        """``(stored float16 scales, uint8 codes)`` of float32 ``blocks`` (blocks, B)."""
        d, q = (ggml_search_reference if reference else ggml_search)(blocks, table, self.ntry)
        return self.store(d, lambda: np.max(np.abs(blocks), axis=1), float(np.max(np.abs(table)))), q

    @ignore_underflow
    def store(self, d: np.ndarray, amax: Any = None, qmax: float | None = None) -> np.ndarray:
        """The stored float16 scales of the searched float32 scales ``d``; one beyond float16's
        range is an error.  Given the blocks' maxima ``amax`` (or a function returning them on
        the host, called only when some ``d`` is 0 or not finite) and the layout's ``qmax``, so
        is a block whose sums leave float32's range (values far beyond ggml's, or a qmax far
        from its 127): ``d`` NaN (inf - inf, inf / inf), infinite where the block's scale, about
        ``amax / qmax``, is a float16 number, or 0 (an underflow, or a NaN sum failing
        ``S_qq > 0``) for a block above ggml's 1e-15 whose scale does not round to 0."""
        d = np.asarray(d, dtype=_F)
        if amax is not None and not np.all(np.isfinite(d) & (d != 0)):
            a = np.asarray(amax() if callable(amax) else amax, dtype=_F).reshape(d.shape)
            with np.errstate(over="ignore"):
                ref = (a / _F(qmax)).astype(_F).astype(np.float16)
            bad = np.flatnonzero(np.isnan(d) | (np.isinf(d) & np.isfinite(ref)) | ((d == 0) & (a >= _EPS) & (ref != 0)))
            if bad.size:
                b = int(bad[0])
                raise ValueError(f"block {b}: ggml's search leaves float32's range at qmax={qmax:g} (its sums "
                                 f"over- or underflow for the block's maximum {float(a[b]):.3g}); use another "
                                 "scale rule, or a qmax nearer ggml's 127")
        s = self.base.encode(np.abs(d), 1.0)     # float16 rounding is symmetric
        return np.where(np.signbit(d), -s, s)

    def encode(self, amax: np.ndarray, qmax: float, tensor_scale: Any = None) -> np.ndarray:
        raise ValueError(f"{self.name} chooses its scales from the values, not from amax alone; "
                         "quantize through quantbook.quantize")

    def _decode(self, stored, tensor_scale):
        return self.base.decode(stored)

    def breakpoints(self, qmax: float, tensor_scale: Any = None, lo: float = 0.0,
                    hi: float = float(np.finfo(_F).max)) -> np.ndarray:
        raise ValueError(f"{self.name} has no scale function s(M): its law is not 1-D")
