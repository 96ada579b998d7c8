r"""Lloyd codes for scale-search rules (``search:…``), fitted on samples.

A search rule (:mod:`quantbook.scales.search`) picks each block's scale from its values, not
from its maximum alone, so the law of a normalised value is not 1-D and :mod:`.scaled`
cannot state it.  Here the code is fitted to a fixed sample instead, with the search inside
the loop.  Each iteration, for the current levels ``L`` (largest magnitude 1, table
``qmax·L``):

1. per block, every candidate of the rule (:meth:`SearchScale.candidates`) scales the block,
   encodes each value with the layout's encoder (the nearest table entry, a tie broken as
   the layout breaks it) and decodes it; the rule picks the candidate
   of least block error in its own loss (:meth:`SearchScale.pick`), as the layout does.  Under ggml's search
   (``search:ggml``, :mod:`quantbook.scales.ggml`) the search itself gives each block its
   signed scale and codes;
2. each value ``u = y / qmax`` (``y`` the value scaled by the picked candidate; ``x / σ``
   under ggml's search) goes to the level of its code;
3. every free level moves to the weighted centroid (L2) or weighted median (L1) of its cell,
   the weights ``σ²`` or ``|σ|`` (``σ = qmax · s`` the block's scale), so the fitted error is
   the weight-domain error ``x - σ·L``.

The sample is ``samples`` draws of the source (``numpy.random.default_rng(seed)``), cut into
tensors of ``tensor_size`` values (default: one tensor), each with its own tensor scale as
the scaled layout takes it (docs/scales.md).  The same arguments give the same code bit for
bit.  The start is the Lloyd code of the base rule (:func:`~.lloyd.lloyd`).  Under ggml's
search the codes are ggml's, as in its byte layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..codebooks import Codebook
from ..codebooks.codebook import check_given_name
from ..codebooks.encoding import scaled_encoder
from ..numerics.arguments import check_flag, check_int, is_int
from ..codebooks.require import refuse_name
from ..io.progress import progress_bar
from ..numerics.losses import check_loss
from ..scales import DEFAULT_QMAX, SCALED_BITS, check_qmax, check_scaled_bits, get_rule, scaled_peak, scaled_values
from ..scales.ggml import GgmlSearch
from ..scales.search import SearchScale, block_errors
from .metrics import as_codebook
from .recipes import FIT_SAMPLES, parse_fixed, recipe_label
from .sources import parse_source

__all__ = ["search_lloyd", "solve_search_lloyd", "search_block_errors", "evaluate_search", "SearchLloydResult",
           "FIT_SAMPLES", "EVAL_SAMPLES", "default_samples"]

_F = np.float32
#: the largest fitting sample (2**30 values: about 40 GiB of working memory)
MAX_SAMPLES = 1 << 30
#: the default sample of an evaluation (as :data:`FIT_SAMPLES` of a fit: rounded up to whole
#: blocks, or tensors, of the size it is given; :func:`default_samples`)
EVAL_SAMPLES = 1 << 22


@dataclass(frozen=True)
class SearchLloydResult:
    """What :func:`solve_search_lloyd` returns: the codebook, how its iteration ended and the
    arguments that re-derive it."""

    codebook: Codebook
    iterations: int
    change: float  # max |step(L) - L| of the last step taken
    converged: bool
    mse: float  # mean squared (l2) or absolute (l1) weight-domain error of the levels, fitting sample
    params: dict[str, Any] = field(default_factory=dict)  # the arguments that re-derive it


#: what a deterministic rule takes instead, by who asked for a search rule
_EXACT = {"search_lloyd": "an exact derivation: lloyd(..., scale=RULE)",
          "evaluate_search": "an exact evaluation: evaluate(codebook, block_size, scale=RULE)"}


def _search_rule(rule: Any, who: str = "search_lloyd") -> SearchScale | GgmlSearch:
    if not isinstance(rule, (SearchScale, GgmlSearch)):
        raise ValueError(f"{who} needs a search rule (e.g. search:4over6), got {rule.name!r}; "
                         f"deterministic rules have {_EXACT[who]}")
    return rule


def _check(bits, block_size, rule, samples, seed, loss, tensor_size, max_iter, tol, qmax, who="search_lloyd"):
    _search_rule(rule, who)
    for k, v in (("bits", bits), ("block_size", block_size), ("samples", samples), ("seed", seed),
                 ("max_iter", max_iter)):
        check_int(v, k, 0 if k == "seed" else 1)
    block_size, samples = int(block_size), int(samples)   # an int8 block size would overflow samples // block_size
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    check_scaled_bits(bits)
    check_loss(loss)
    _check_whole("samples", samples, block_size, tensor_size)
    if samples // block_size < 2:
        raise ValueError("samples must hold at least two blocks")
    if samples > MAX_SAMPLES:
        raise ValueError(f"samples={samples} is more than {MAX_SAMPLES} (the fit keeps about 40 bytes a value "
                         "in memory)")
    if not (_real(tol) and np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    check_qmax(qmax)


def _check_whole(what: str, n: int, block_size: int, tensor_size: Any) -> None:
    """``n`` values (``what`` names them: ``samples``, ``x.size``) in whole blocks, and in whole
    tensors of ``tensor_size`` values when it is given: the one rule of the fit and of
    :func:`search_block_errors`."""
    if tensor_size is not None and (not is_int(tensor_size) or tensor_size < 1 or tensor_size % block_size):
        raise ValueError(f"tensor_size must be a positive multiple of block_size={block_size}, got {tensor_size!r}")
    unit, name = (block_size, "block_size") if tensor_size is None else (tensor_size, "tensor_size")
    if n < 1 or n % unit:
        raise ValueError(f"{what}={n} must be a positive multiple of {name}={unit}")


def _real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _fixed(fixed: Any) -> tuple[float, ...]:
    fx = parse_fixed(fixed, "absmax")
    if -1.0 not in fx and 1.0 not in fx:
        raise ValueError("the scaled layout maps the block maximum to the table's largest magnitude: "
                         "fixed must hold -1 or 1")
    return fx


def check_recipe(r: Any) -> dict[str, Any]:
    """The checks of :class:`~.recipes.SearchLloydRecipe` (its fields, which it then holds
    normalised: the rule's name, the sorted fixed levels, the source's spec)."""
    rule = get_rule(r.scale)
    _check(r.bits, r.block_size, rule, r.samples, r.seed, r.loss, r.tensor_size, r.max_iter, r.tol, r.qmax)
    return dict(scale=rule.name, fixed=_fixed(r.fixed), source=parse_source(r.source).spec, tol=float(r.tol),
                qmax=check_qmax(r.qmax), bits=int(r.bits), block_size=int(r.block_size), samples=int(r.samples),
                seed=int(r.seed), max_iter=int(r.max_iter),
                tensor_size=None if r.tensor_size is None else int(r.tensor_size))


class _Sample:
    """The fitting sample as (tensors, blocks, B) float32 with its per-tensor scales and, for a
    candidate search, every candidate's stored block scales, computed once: they do not
    depend on the levels."""

    def __init__(self, rule: Any, x: np.ndarray, block_size: int, n_tensor: int, qmax: float):
        self.x = x.reshape(-1, n_tensor // block_size, block_size)
        self.x64 = self.x.astype(np.float64)
        self.cands = []  # per candidate: (scaled values y, decoded scale s), each (tensors, blocks[, B])
        if isinstance(rule, GgmlSearch):
            return  # its scales depend on the table
        amax = np.abs(self.x).max(axis=2)
        per_t = [rule.tensor_scale(float(a.max()), qmax) for a in amax]
        for k in range(len(rule.factors)):
            fs, ss, div = [], [], False
            for a, ts in zip(amax, per_t):
                stored = rule.candidates(a, qmax, ts)[k]
                f, div = rule.divisor(stored, ts)
                fs.append(f)
                ss.append(rule.decode(stored, ts))
            f, s = np.stack(fs).astype(_F), np.stack(ss).astype(_F)
            # the scaled values do not depend on the levels: scale once
            self.cands.append((_scaled(self.x, f, div), s))


def _scaled(x, f, divide):
    return (x / f[..., None]).astype(_F) if divide else (x * f[..., None]).astype(_F)


def _block_error(smp: _Sample, deq: np.ndarray, loss: str) -> np.ndarray:
    """(tensors, blocks): the layout's block errors (:func:`~quantbook.scales.search.block_errors`)."""
    return block_errors(smp.x, deq, smp.x.shape[2], loss).reshape(smp.x.shape[:2])


def _assign_candidates(rule: SearchScale, smp: _Sample, table: np.ndarray, qmax: float):
    """The layout's decoded values; per value its cell (its index in ``table``, the stored
    order) and ``u = y / qmax``; per block its scale ``σ = qmax·s``: the candidate search with
    the layout's encoder, each block keeping the candidate of least error in the rule's own loss."""
    enc = scaled_encoder(table)   # the layout's own, ties included
    errs, ys, idxs, deqs = [], [], [], []
    for y, s in smp.cands:
        idx = enc(y)
        deqs.append((table[idx] * s[..., None]).astype(_F))
        errs.append(_block_error(smp, deqs[-1], rule.loss))
        ys.append(y)
        idxs.append(idx)
    pick = rule.pick(errs)
    deq, y, idx = deqs[0], ys[0], idxs[0]
    sig = (qmax * smp.cands[0][1]).astype(np.float64)
    for k in range(1, len(errs)):
        m = pick == k
        deq = np.where(m[..., None], deqs[k], deq)
        y = np.where(m[..., None], ys[k], y)
        idx = np.where(m[..., None], idxs[k], idx)
        sig = np.where(m, qmax * smp.cands[k][1].astype(np.float64), sig)
    return deq, y.astype(np.float64) / qmax, idx, sig


def _assign_ggml(rule: GgmlSearch, smp: _Sample, table: np.ndarray, qmax: float):
    """As :func:`_assign_candidates`, with ggml's search choosing each block's (signed)
    scale and codes together; ``u = x / σ`` (0 where the scale is 0)."""
    stored, q = rule.search(smp.x.reshape(-1, smp.x.shape[2]), table)
    s = rule.decode(stored).reshape(smp.x.shape[:2])
    idx = q.reshape(smp.x.shape).astype(np.intp)
    deq = (table[idx] * s[..., None]).astype(_F)
    sig = qmax * s.astype(np.float64)
    safe = np.where(sig != 0, sig, 1.0)[..., None]
    u = np.where(sig[..., None] != 0, smp.x64 / safe, 0.0)
    return deq, u, idx, sig


def _assign(rule: Any, smp: _Sample, table: np.ndarray, qmax: float):
    if isinstance(rule, GgmlSearch):
        return _assign_ggml(rule, smp, table, qmax)
    return _assign_candidates(rule, smp, table, qmax)


def _step(rule: Any, smp: _Sample, levels: np.ndarray, free: np.ndarray, qmax: float, loss: str):
    """``(new levels, mean error at ``levels``)``: one iteration (module docstring)."""
    deq, u, idx, sig = _assign(rule, smp, scaled_values(levels, qmax), qmax)   # the table quantize stores
    best = _block_error(smp, deq, loss)
    w = np.broadcast_to((sig * sig if loss == "l2" else np.abs(sig))[..., None], u.shape).ravel()
    u, idx = u.ravel(), idx.ravel()
    n = levels.size
    new = levels.copy()
    if loss == "l2":
        m0 = np.bincount(idx, weights=w, minlength=n)
        m1 = np.bincount(idx, weights=w * u, minlength=n)
        ok = free & (m0 > 0)
        new[ok] = m1[ok] / m0[ok]
    else:
        order = np.lexsort((u, idx))
        us, ws, cs = u[order], w[order], idx[order]
        cum = np.cumsum(ws)
        starts = np.searchsorted(cs, np.arange(n), side="left")
        ends = np.searchsorted(cs, np.arange(n), side="right")
        for j in np.flatnonzero(free & (ends > starts)):
            lo = cum[starts[j] - 1] if starts[j] else 0.0
            half = lo + 0.5 * (cum[ends[j] - 1] - lo)
            new[j] = us[min(int(np.searchsorted(cum, half, side="left")), ends[j] - 1)]
    return new, float(best.sum() / smp.x.size)


def search_block_errors(levels: Any, block_size: int, scale: Any, x: np.ndarray, qmax: float = DEFAULT_QMAX,
                        tensor_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per block of ``x``, the squared and absolute errors of ``levels`` in the scaled layout under a search rule.

    Per block of ``x`` (float32, a multiple of ``block_size`` values), the sums of squared
    and of absolute weight-domain errors of the code ``levels`` (its values, or a Codebook) in
    the scaled layout under the search rule ``scale``: the error the fit measures, and the
    layout's own (the tests check it against :func:`quantbook.quantize`).  One search serves
    both."""
    rule = get_rule(scale)
    if not isinstance(rule, (SearchScale, GgmlSearch)):
        raise ValueError(f"{rule.name!r} is not a search rule")
    refuse_name(levels, "search_block_errors")
    # a Codebook's table is its stored code, as the layout stores it (the encoder breaks a tie by the
    # stored index); levels given as values are the code of the Codebook of them, ascending
    code = levels if isinstance(levels, Codebook) else np.sort(np.asarray(levels, dtype=np.float64).reshape(-1))
    table = scaled_values(code, qmax)
    x = np.asarray(x, dtype=_F).reshape(-1)
    # below 2: a ZeroDivisionError deep in the search; an int8 one would overflow the block arithmetic
    block_size = check_int(block_size, "block_size", 2)
    _check_whole("x.size", x.size, block_size, tensor_size)
    smp = _Sample(rule, x, block_size, x.size if tensor_size is None else tensor_size, qmax)
    deq = _assign(rule, smp, table, qmax)[0]
    return _block_error(smp, deq, "l2").reshape(-1), _block_error(smp, deq, "l1").reshape(-1)


def default_samples(samples: int | None, default: int, block_size: Any, tensor_size: Any = None) -> int:
    """``samples``, or when None ``default`` rounded up to whole blocks (or tensors): a block
    size that does not divide the default must not be an error about a sample never given.
    A size that is not a positive integer is left for the checks to name."""
    unit = block_size if tensor_size is None else tensor_size
    if samples is not None or not is_int(unit) or unit < 1:
        return default if samples is None else samples
    return -(-default // int(unit)) * int(unit)


def evaluate_search(codebook: Any, block_size: int, scale: Any, samples: int | None = None, seed: int = 1,
                    source: Any = "normal", qmax: float = DEFAULT_QMAX,
                    tensor_size: int | None = None) -> dict[str, Any]:
    """Monte-Carlo errors of ``codebook`` in the scaled layout under the search rule ``scale``.

    A search has no exact law: ``samples`` draws of ``source`` (``default_rng(seed)``;
    default :data:`EVAL_SAMPLES` in whole blocks), the layout's own errors
    (:func:`search_block_errors`).  Returns the weight-domain MSE with its standard error over
    blocks, the MAE, the SQNR against the sample's mean square, and the bits per weight (codes
    and stored scales)."""
    rule = get_rule(scale)
    cb = as_codebook(codebook, "evaluate_search")   # a number would be read as a table of one level
    levels = np.asarray(cb.levels, dtype=np.float64)
    scaled_peak(levels)   # the table the layout stores, as quantize() checks it
    bits = int(cb.bits)
    samples = default_samples(samples, EVAL_SAMPLES, block_size, tensor_size)
    # scaled_peak checked the table; a code declared wider than 4 bits is stored in 4, as quantize does
    _check(min(bits, SCALED_BITS), block_size, rule, samples, seed, "l2", tensor_size, 1, 0.0, qmax,
           who="evaluate_search")
    src = parse_source(source)
    x = np.asarray(src.rvs(samples, random_state=np.random.default_rng(seed)), dtype=_F)
    e2, e1 = (e / block_size for e in search_block_errors(cb, block_size, rule, x, qmax, tensor_size))
    mse, se = float(np.mean(e2)), float(np.std(e2, ddof=1) / np.sqrt(e2.size))
    power = float(np.mean(x.astype(np.float64) ** 2))
    # a source without the moment has an infinite expected error, as evaluate() says: a
    # sample's mean (finite, and larger the larger the sample) does not estimate it
    mae = float(np.mean(e1)) if src.moment_limit > 1 else math.inf
    if src.moment_limit <= 2:
        mse, se, power = math.inf, math.nan, math.nan
    return {"codebook": getattr(codebook, "name", None), "block_size": int(block_size), "source": src.spec,
            "scale": rule.name, "qmax": float(qmax), "method": "monte-carlo", "samples": int(samples),
            "seed": int(seed), "mse_weight": mse,
            "mse_standard_error": se,
            "mae_weight": mae,
            "sqnr_db": float(10 * np.log10(power / mse)) if 0 < mse < math.inf else None,
            "bits_per_weight": rule.bits_per_weight(block_size, bits)}


def solve_search_lloyd(bits: int = 4, block_size: int = 16, scale: Any = "search:4over6",
                       samples: int | None = None, seed: int = 0, loss: str = "l2", fixed: Any = (-1, 0, 1),
                       max_iter: int = 100, tol: float = 1e-6, source: Any = "normal", qmax: float = DEFAULT_QMAX,
                       tensor_size: int | None = None, name: str | None = None,
                       progress: bool = False) -> SearchLloydResult:
    """:func:`search_lloyd` with its iterations, last change, convergence and fitting-sample error.

    ``progress``: a bar on standard error even when it is not a terminal (one step an
    iteration, up to ``max_iter``; drawn on a terminal anyway)."""
    from .recipes import SearchLloydRecipe

    check_given_name(name)
    progress = check_flag(progress, "progress")
    src = parse_source(source)
    recipe = SearchLloydRecipe(bits=bits, block_size=block_size, scale=getattr(scale, "name", scale),
                               samples=default_samples(samples, FIT_SAMPLES, block_size, tensor_size),
                               seed=seed, loss=loss, fixed=fixed, source=src, qmax=qmax,
                               tensor_size=tensor_size, max_iter=max_iter, tol=tol)   # checks them all
    rule, fx, samples = _search_rule(get_rule(recipe.scale)), recipe.fixed, recipe.samples   # the recipe's sample
    block_size = recipe.block_size   # checked, a Python int (an int8 one would overflow the block arithmetic)
    from .lloyd import lloyd  # the exact code under the base rule is the start

    # the base rule's exact code needs both ends fixed; an end left free here moves from it
    start = lloyd(bits, block_size, loss=loss, scale=rule.base.name, qmax=qmax,
                  fixed=sorted(set(fx) | {-1.0, 1.0}), source=src)
    levels = np.asarray(start.levels, dtype=np.float64)
    free = ~np.isin(levels, fx)
    x = np.asarray(src.rvs(samples, random_state=np.random.default_rng(seed)), dtype=_F)
    smp = _Sample(rule, x, block_size, samples if tensor_size is None else tensor_size, qmax)
    # the levels creep on for long (linearly, and blocks that flip candidate keep them
    # jittering) while the error has long stopped falling: stop on the error
    change, it, err, prev, done = np.inf, 0, np.nan, np.inf, False
    last = levels   # never returned: the first step cannot stop (prev is inf)
    with progress_bar(total=max_iter, desc=f"fitting ({rule.name})", unit="iter", force=progress) as bar:
        while it < max_iter:
            bar.step(f"error {prev:.4e}" if np.isfinite(prev) else None)
            new, err = _step(rule, smp, levels, free, qmax, loss)
            done = prev - err <= tol * err
            if done:
                if err > prev:  # the search made the last step worse: return the step before it
                    levels, err = last, prev
                break
            it += 1
            change = float(np.max(np.abs(new - levels)))
            last, levels, prev = levels, np.sort(new), err
    if not done:  # out of iterations: the error at the levels returned
        err = _step(rule, smp, levels, free, qmax, loss)[1]
    if np.unique(levels).size != levels.size:
        raise ValueError("two levels met: the sample is too small for this many levels")
    params = recipe.to_dict()
    nm = _name(recipe) if name is None else name
    cb = Codebook(levels=levels, bits=bits, name=nm, source="derived", recipe=params)
    return SearchLloydResult(cb, it, change, bool(done), err, params)


def _name(r: Any) -> str:
    """The label of a fit (:class:`~.recipes.SearchLloydRecipe` ``r``): ``lloydK_RULE_bB`` and what
    :func:`~.recipes.recipe_label` adds (the sample's default size: whole blocks of ``FIT_SAMPLES``)."""
    head = f"lloyd{r.bits}_{r.scale.replace(':', '_')}_b{r.block_size}"
    return recipe_label(head, r, ("bits", "block_size", "scale"),
                        {"samples": default_samples(None, FIT_SAMPLES, r.block_size, r.tensor_size)})


def search_lloyd(bits: int = 4, block_size: int = 16, scale: Any = "search:4over6", samples: int | None = None,
                 seed: int = 0, loss: str = "l2", fixed: Any = (-1, 0, 1), max_iter: int = 100,
                 tol: float = 1e-6, source: Any = "normal", qmax: float = DEFAULT_QMAX,
                 tensor_size: int | None = None, name: str | None = None, progress: bool = False) -> Codebook:
    """The Lloyd code for the scaled layout under a search rule, fitted on a seeded sample.

    It is fitted on ``samples`` draws of
    ``source`` (seed ``seed``; default :data:`~.recipes.FIT_SAMPLES` in whole blocks, or
    tensors) with the rule's search inside the loop (module docstring).

    ``fixed`` levels stay (largest magnitude 1: ``-1`` or ``1`` must be among them); ``loss``
    ``"l2"``/``"l1"`` (the weight-domain error); ``tensor_size`` cuts the sample into tensors
    of that many values, each with its own tensor scale (None: one tensor).  Stops after
    ``max_iter`` iterations or when an iteration lowers the mean error on the sample by
    less than ``tol`` times itself.  Levels are returned in
    the codebook's units; the layout's table is ``qmax`` times them.  ``progress``: a bar on
    standard error even when it is not a terminal.
    """
    return solve_search_lloyd(bits, block_size, scale, samples, seed, loss, fixed, max_iter, tol, source,
                              qmax, tensor_size, name, progress).codebook
