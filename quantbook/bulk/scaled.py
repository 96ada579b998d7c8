"""Quantize / dequantize in the scaled layout: a scale rule (:mod:`quantbook.scales`) over the
layout of :mod:`.layouts`, computed by a backend that implements it (docs/scales.md).

Steps: the backend's block maxima; the rule's tensor scale (from their maximum); the
backend's stored block scales and divisors (:meth:`quantbook.bulk.backend.Backend.scaled_scales`: the rule itself, or
its step table, :mod:`quantbook.scales.steps`); the backend's encode.  A search rule has the
backend measure every candidate's block errors (:func:`quantbook.scales.search.block_errors`, so every
backend picks alike), keeps per block the candidate the rule picks, and encodes once with
the picked scales.  ggml's search
(:mod:`quantbook.scales.ggml`) chooses scales and codes together from the values: the
backend's ``scaled_ggml``.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np

from ..codebooks.bnb import bnb_quant_type
from ..scales import ScaleRule
from ..scales.ggml import GgmlSearch
from ..scales.search import SearchScale
from . import format as F
from .layouts import SCALED_BITS, implements, packed_length, scaled_table
from .state import QuantState

__all__ = ["quantize_scaled", "dequantize_scaled", "check_backend"]

_F = np.float32


def check_backend(be: Any) -> None:
    """ValueError unless backend ``be`` implements the scaled layouts."""
    if not implements(be):
        raise ValueError(f"backend {be.name!r} does not implement the scaled layouts "
                         "(NVFP4/MXFP4/float16 scales); use backend='numpy' or 'cpu'")


def _choose(pick: Any, options: list) -> Any:
    """Per block, ``options[pick[block]][block]`` (numpy or CuPy alike: indexing only)."""
    out = options[0].copy()
    for k, o in enumerate(options[1:], 1):
        m = pick == k
        out[m] = o[m]
    return out


def quantize_scaled(x: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, cb: Any,
                    block_size: int, rule: ScaleRule, qmax: float, be: Any,
                    allow_nonfinite: bool) -> tuple[np.ndarray, QuantState]:
    """``(packed, state)`` of a checked flat array ``x`` of the backend's kind (host or device;
    see :func:`quantbook.quantize`).  Only per-block values cross to the host."""
    check_backend(be)
    n = math.prod(map(int, shape))   # torch's .size is a method
    table = scaled_table(cb.code, qmax)
    amax = be.scaled_amax(x, block_size)
    top = float(amax.max())                   # NaN when a block holds NaN/Inf
    if not np.isfinite(top):
        err = F.nonfinite_error(be.to_host(amax), block_size, n)
        if err is not None and not allow_nonfinite:
            raise err
        x = be.sanitize_nonfinite(x, block_size)
        amax = be.scaled_amax(x, block_size)
        top = float(amax.max())
    ts = rule.tensor_scale(top, qmax)
    if isinstance(rule, GgmlSearch):
        d, packed = be.scaled_ggml(x, table, block_size, rule.ntry)
        stored = np.ascontiguousarray(rule.store(d, lambda: be.to_host(amax), qmax))
    elif isinstance(rule, SearchScale):
        cands = [be.scaled_scales(amax, r, q, ts, need_scale=True) for r, q in rule.candidate_rules(qmax)]
        if len({d for _, _, d, _ in cands}) != 1:
            raise AssertionError(f"{rule.name}: candidates scale differently (divide flags differ)")
        divide = cands[0][2]
        errs = [be.scaled_errors(x, f, divide, s, table, block_size, rule.loss) for _, f, _, s in cands]
        pick = rule.pick(errs)                # where the errors are: no transfer
        stored = be.held_scales(_choose(pick, [c[0] for c in cands]))
        packed = be.scaled_encode(x, _choose(pick, [c[1] for c in cands]), divide, table, block_size)
    else:
        stored, f, divide, _ = be.scaled_scales(amax, rule, qmax, ts)
        packed = be.scaled_encode(x, f, divide, table, block_size)
        stored = be.held_scales(stored)   # a device backend's stay there until the host reads them
    state = QuantState(absmax=stored, shape=shape, dtype=dtype,
                       blocksize=block_size, code=table, quant_type=bnb_quant_type(cb, layout_bnb=False)[0],
                       bits=SCALED_BITS,
                       scale_rule=rule.name, tensor_scale=None if ts is None else float(ts))
    return packed, state


def dequantize_scaled(packed: np.ndarray, state: QuantState, be: Any) -> np.ndarray:
    """Values of a scaled-layout state whose fields are checked (``QuantState._check_fields``);
    its stored scales are checked here, where the backend reads them."""
    check_backend(be)
    n = state.size
    size = math.prod(map(int, packed.shape))   # torch's .size is a method
    if size != packed_length(n):
        raise ValueError(f"packed has {size} bytes, expected {packed_length(n)} for {n} "
                         "values of 4 bits")
    lut = state._decode_table()
    table, dtype = np.asarray(state.code, _F), np.dtype(state.dtype)
    if lut is None:
        state._check_scales()
        flat = be.scaled_decode(packed, state.absmax_f32(), table, state.blocksize, n, dtype)
    else:
        # the scales are looked up where the codes are decoded: a device reads the stored
        # bytes its rule made there (valid by the rule's contract), else they are uploaded
        # and checked there
        index = be.kept_copy(state._held_absmax())
        if index is None:
            index = be.from_host(cast(tuple, state.scale_lookup())[1])
            state._check_scales(index, be)
        else:
            index = index.view(f"u{np.dtype(index.dtype).itemsize}")
        flat = be.scaled_decode_lookup(packed, lut, index, table, state.blocksize, n, dtype)
    return flat.reshape(state.shape)
