"""Quantize / dequantize in the scaled layout: a scale rule (:mod:`quantbook.scales`) over the
layout of :mod:`.layouts`, computed by a backend that implements it (docs/scales.md).

Steps: the backend's block maxima; the rule's tensor scale (from their maximum) and stored
block scales; the rule's divisor; the backend's encode.  A search rule encodes every
candidate, decodes it, and keeps per block the candidate of least error, computed here in
float64 from the decoded float32 values, so every backend picks alike.  ggml's search
(:mod:`quantbook.scales.ggml`) chooses scales and codes together from the values: the
backend's ``scaled_ggml``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..scales import ScaleRule
from ..scales.ggml import GgmlSearch
from ..scales.search import SearchScale
from . import format as F
from .layouts import SCALED_BITS, implements, packed_length, scaled_table
from .state import QuantState

__all__ = ["quantize_scaled", "dequantize_scaled", "check_backend"]

_F = np.float32


def check_backend(be: Any) -> None:
    if not implements(be):
        raise ValueError(f"backend {be.name!r} does not implement the scaled layouts "
                         "(NVFP4/MXFP4/float16 scales); use backend='numpy' or 'cpu'")


def _block_errors(x: np.ndarray, deq: np.ndarray, block_size: int, loss: str) -> np.ndarray:
    d = np.abs(x.astype(np.float64) - deq.astype(np.float64))
    if loss == "l2":
        d = d * d
    nb = F.n_blocks(x.size, block_size)
    pad = np.zeros(nb * block_size)
    pad[: x.size] = d
    return pad.reshape(nb, block_size).sum(axis=1)


def quantize_scaled(x: np.ndarray, shape: tuple[int, ...], dtype: np.dtype, cb: Any,
                    block_size: int, rule: ScaleRule, qmax: float, be: Any,
                    allow_nonfinite: bool,
                    sanitize: Callable[[np.ndarray, int], np.ndarray]) -> tuple[np.ndarray, QuantState]:
    """``(packed, state)`` of a checked flat array ``x`` of the backend's kind (host or device;
    see :func:`quantbook.quantize`).  Only per-block values cross to the host."""
    check_backend(be)
    n = int(np.prod(shape, dtype=np.int64))   # torch's .size is a method
    table = scaled_table(cb.code, qmax)
    amax = be.scaled_amax(x, block_size)
    err = F.nonfinite_error(amax, block_size, n)
    if err is not None:
        if not allow_nonfinite:
            raise err
        x = be.from_host(sanitize(be.to_host(x), block_size))
        amax = be.scaled_amax(x, block_size)
    ts = rule.tensor_scale(float(amax.max()), qmax)
    if isinstance(rule, GgmlSearch):
        d, packed = be.scaled_ggml(x, table, block_size, rule.ntry)
        stored = rule.store(d)
    elif isinstance(rule, SearchScale):
        cands = rule.candidates(amax, qmax, ts)
        packs, errs = [], []
        xf = be.to_host(x).reshape(-1).astype(_F)
        for stored in cands:
            f, divide = rule.divisor(stored, ts)
            p = be.scaled_encode(x, f, divide, table, block_size)
            deq = be.to_host(be.scaled_decode(p, rule.decode(stored, ts), table, block_size, n,
                                              np.dtype(np.float32)))
            packs.append(be.to_host(p))
            errs.append(_block_errors(xf, deq, block_size, rule.loss))
        pick = rule.pick(np.stack(errs))
        stored = np.stack(cands)[pick, np.arange(pick.size)]
        byte_block = (np.arange(packed_length(n)) * 2) // block_size
        packed = be.from_host(np.stack(packs)[pick[byte_block], np.arange(byte_block.size)])
    else:
        stored = rule.encode(amax, qmax, ts)
        f, divide = rule.divisor(stored, ts)
        packed = be.scaled_encode(x, f, divide, table, block_size)
    state = QuantState(absmax=np.ascontiguousarray(stored), shape=shape, dtype=dtype,
                       blocksize=block_size, code=table, quant_type=cb.name, bits=SCALED_BITS,
                       scale_rule=rule.name, tensor_scale=None if ts is None else float(ts))
    return packed, state


def dequantize_scaled(packed: np.ndarray, state: QuantState, be: Any) -> np.ndarray:
    check_backend(be)
    n = state.size
    size = int(np.prod(packed.shape, dtype=np.int64))   # torch's .size is a method
    if size != packed_length(n):
        raise ValueError(f"packed has {size} bytes, expected {packed_length(n)} for {n} "
                         "values of 4 bits")
    scale = state.absmax_f32()
    flat = be.scaled_decode(packed, scale, np.asarray(state.code, _F), state.blocksize, n,
                            np.dtype(state.dtype))
    return flat.reshape(state.shape)
