"""``quantize`` / ``dequantize``: block-wise k-bit quantization of whole arrays.

The bytes are defined by :mod:`quantbook.bulk.format` (and :mod:`quantbook.bulk.nested` for
nested statistics); the backends registered in :mod:`quantbook.bulk.backend` compute them.
This module holds what is common to all backends: argument checks, codebook names,
non-finite input, nested statistics and the :class:`QuantState`.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np

from ..codebooks import Codebook
from ..codebooks.blocks import DEFAULT_BLOCK_SIZE
from ..numerics.arguments import check_flag, check_int, host_array, is_torch_tensor
from ..codebooks.bnb import CodebookRangeWarning, bnb_quant_type, warn_beyond_absmax
from . import format as F
from .backend import (BACKENDS, Backend, check_input_dtype, get_backend, host_backend_error, is_device_array,
                      no_device_backend_error)
from .nested import NESTED_BLOCKSIZE, dynamic_map, nested_offset
from .scaled import dequantize_scaled, quantize_scaled
from .state import QuantState, dtype_from_name, dtype_name
from ..scales import DEFAULT_QMAX, check_qmax, check_scaled_only, get_rule

__all__ = ["quantize", "dequantize", "resolve_codebook", "host_backend", "CodebookRangeWarning"]

_F = np.float32


def resolve_codebook(codebook: Any, block_size: int = DEFAULT_BLOCK_SIZE) -> Codebook:
    """A :class:`Codebook` from a Codebook, any name of the codebook-name grammar
    (:mod:`quantbook.naming`: registry names, FILE.json, nfK, lloyd-...) or a path object,
    which always names a codebook file."""
    from ..naming import resolve_codebook as resolve

    return resolve(codebook, block_size)


def _pick_backend(name: Any, device: bool) -> Backend:
    if name == "auto":
        for b in BACKENDS.values():
            if b.auto and b.device == device and b.unavailable() is None:
                return b
        if not device:
            return BACKENDS["numpy"]
        raise no_device_backend_error(BACKENDS)
    backend = BACKENDS.get(name) if isinstance(name, str) else None
    if backend is not None and device and not backend.device:
        raise host_backend_error(name)
    if backend is not None and not device and backend.device:
        raise ValueError(f"backend={name!r} needs a device array (e.g. cupy.asarray(x))")
    return get_backend(name)


def host_backend() -> Backend:
    """The backend ``"auto"`` picks for host arrays (numba where it runs, else numpy)."""
    return _pick_backend("auto", False)


def _itemsize(dt: Any) -> int:
    return 4 if str(dt).replace("torch.", "") == "float32" else 2


def _c_contiguous(shape: tuple[int, ...], strides: Any, itemsize: int) -> bool:
    """``__cuda_array_interface__`` strides (None: C-contiguous) describe a C-contiguous array
    (the stride of a dimension of length 1 does not matter)."""
    if strides is None:
        return True
    want = itemsize
    for dim, st in zip(reversed(shape), reversed(tuple(strides))):
        if dim != 1 and int(st) != want:
            return False
        want *= dim
    return True


def _check_input(x: Any) -> tuple[Any, tuple[int, ...], np.dtype]:
    """``(x, shape, dtype)`` of a float32/float16/bfloat16 C-contiguous non-empty array."""
    device = is_device_array(x)
    # numpy cannot copy a torch bfloat16 tensor, and a device array is not numpy's to copy
    copy = "x.contiguous()" if is_torch_tensor(x) else "a contiguous copy" if device else "np.ascontiguousarray(x)"
    if not device:
        x = host_array(x, "x")
    name = check_input_dtype(x)
    shape = tuple(int(s) for s in x.shape)
    if math.prod(map(int, shape)) == 0:
        raise ValueError(f"cannot quantize an empty array (shape {shape})")
    if device:
        if callable(getattr(x, "stride", None)):   # torch: its interface refuses some tensors
            strides = tuple(int(v) * _itemsize(x.dtype) for v in x.stride())
        else:
            strides = x.__cuda_array_interface__.get("strides")
        contiguous = _c_contiguous(shape, strides, _itemsize(x.dtype))
    else:
        if not x.dtype.isnative:  # the kernels read the bits in native order
            raise ValueError(f"x has non-native byte order (dtype {x.dtype.str}); "
                             f"convert with x.astype(np.{name})")
        strides, contiguous = x.strides, x.flags.c_contiguous
    if not contiguous:
        raise ValueError(f"x is not C-contiguous (shape {shape}, strides {tuple(strides)}); "
                         f"pass {copy} — quantize does not copy silently")
    return (x, shape, dtype_from_name(name)) if device else (x.reshape(-1), shape, x.dtype)


def quantize(x: Any, codebook: Any = "nf4", block_size: int = DEFAULT_BLOCK_SIZE, nested: bool = False,
             backend: str = "auto", *, allow_nonfinite: bool = False, bits: int | None = None,
             torch_threads: int = 1, scale: Any = None, qmax: float = DEFAULT_QMAX) -> tuple[Any, QuantState]:
    """Block-wise quantize ``x`` with a codebook; returns ``(packed, state)``.

    Parameters
    ----------
    x:
        C-contiguous float32, float16 or bfloat16 (``ml_dtypes``) array of any shape (a device
        array — CuPy, torch CUDA — for the GPU backend).  Non-contiguous input is an error,
        not a silent copy.
    codebook:
        A Codebook or a name: registry names (``"nf4"``, ``"fp4"``, ``"af4"``, ...),
        ``FILE.json``, ``nfK``, ``lloyd-...`` (:mod:`quantbook.naming`; a derived
        shorthand without a block size is fitted to ``block_size``); a path object always
        names a codebook file.
    block_size:
        Values per scale: a power of two from 16 to 4096; the last block may be partial.
    nested:
        bitsandbytes' double quantization (``compress_statistics``) of the per-block absmax.
    backend:
        ``"auto"`` (the first usable backend for host or device input: numba, else numpy;
        the GPU for device arrays) or a registered name (``"numpy"``, ``"cpu"``, ``"gpu"``).
    allow_nonfinite:
        By default NaN/Inf raise ``ValueError`` naming the first bad block.  With ``True``, NaN
        is quantized as 0 and ±Inf as ± the largest finite magnitude of its block.
    bits:
        Packed width (default: the codebook's).
    torch_threads:
        Only for ``nested=True`` with >= 32768 blocks: torch sums over its threads, so pass
        bitsandbytes' ``torch.get_num_threads()`` for a bit-identical ``nested_offset``.
    scale:
        A scale rule (:mod:`quantbook.scales`; docs/scales.md).  None (the default) and
        ``"float32"`` are the bitsandbytes layout above, ``"nested"`` is ``nested=True``;
        ``"e4m3"`` (NVFP4 at block 16), ``"e8m0[:floor|ceil|even|rceil]"`` (MXFP4 at block
        32), ``"float16"``, ``"bfloat16"`` and ``"search:..."`` store 4-bit codes in the scaled
        layout, with the codebook scaled to ``qmax``.
    qmax:
        The scaled layout's largest code magnitude (E2M1's 6), to which each block's amax is
        mapped; another value with the bitsandbytes layout is an error (it maps to ±1).

    Returns ``(packed, state)``: 1-D uint8 bytes (:func:`quantbook.bulk.format.packed_length`)
    and a :class:`QuantState` with bitsandbytes' field names.
    """
    nested, allow_nonfinite = check_flag(nested, "nested"), check_flag(allow_nonfinite, "allow_nonfinite")
    # checked even where unused, as every argument
    check_int(torch_threads, "torch_threads", 1, also=" (torch.get_num_threads())")
    block_size = F.check_block_size(block_size)
    cb = resolve_codebook(codebook, block_size)
    rule = None if scale is None else get_rule(scale)
    check_scaled_only(rule, qmax=check_qmax(qmax) != DEFAULT_QMAX)
    if rule is not None and rule.layout == "bnb":
        nested = nested or rule.family == "nested"
        rule = None
    if rule is not None and bits not in (None, 4):
        raise ValueError(f"the scaled layouts store 4-bit codes, got bits={bits!r}")
    try:
        bits = F.check_bits(cb.bits if bits is None else bits, cb.code.size)
    except ValueError as exc:
        if bits is not None:
            raise
        raise ValueError(f"codebook {cb.name!r} has {cb.bits}-bit codes: {exc}") from None
    x, shape, dtype = _check_input(x)
    be = _pick_backend(backend, is_device_array(x))
    with be.on_device(x):   # a GPU backend: the device that holds x
        if rule is not None:
            if nested:
                raise ValueError(f"nested=True is bitsandbytes' layout; it does not combine with scale={rule.name!r}")
            return quantize_scaled(x, shape, dtype, cb, block_size, rule, qmax, be, allow_nonfinite)
        warn_beyond_absmax(cb)
        code = cb.code_f32
        packed, absmax = be.quantize_blocks(x, code, bits, block_size)
        # the usual answer (every block finite) from the maxima where they are: one reduction
        err = None if be.scales_finite_nonnegative(absmax) else \
            F.nonfinite_error(be.to_host(absmax), block_size, math.prod(map(int, shape)))
        if err is not None:
            if not allow_nonfinite:
                raise err
            packed, absmax = be.quantize_blocks(be.sanitize_nonfinite(x, block_size), code, bits, block_size)
        # checked scales the state holds: a device backend's stay there until the host reads them
        held = be.to_host(absmax).astype(_F, copy=False) if nested else be.held_scales(absmax)
        state = QuantState(absmax=held, shape=shape, dtype=dtype, blocksize=block_size,
                           code=code.copy(), quant_type=bnb_quant_type(cb)[0], bits=bits)
        if nested:
            offset = nested_offset(held, torch_threads)
            state.absmax, state.nested_absmax = be.quantize_nested(absmax, offset)
            state.nested_quant_map = dynamic_map().copy()
            state.nested_blocksize = NESTED_BLOCKSIZE
            state.nested_offset = float(offset)
        return packed, state


def dequantize(packed: Any, state: QuantState, backend: str = "auto") -> Any:
    """The array that ``packed`` bytes and their ``state`` stand for, of the state's shape and dtype.

    ``out = float32(code[index] * absmax[block])`` rounded (to nearest even) to ``state.dtype``;
    a code index beyond the code table (corrupt input) decodes to NaN on every backend.  The
    state is validated first (:meth:`QuantState.validate`; the per-block scales where the
    backend reads them, so a GPU checks the scales it uploaded, or reads the checked copy it
    kept when it quantized the state: see :class:`QuantState`).
    """
    if not isinstance(state, QuantState):
        raise ValueError(f"state must be a QuantState, got {type(state).__name__}")
    state._check_fields()
    device = is_device_array(packed)
    be = _pick_backend(backend, device)
    if not device:
        packed = host_array(packed, "packed")
    if str(getattr(packed, "dtype", "")).replace("torch.", "") != "uint8":
        raise ValueError(f"packed must be a uint8 array, got dtype {getattr(packed, 'dtype', type(packed).__name__)}")
    if not device:
        packed = np.ascontiguousarray(packed).reshape(-1)
    with be.on_device(packed):
        if state.scaled:
            return dequantize_scaled(packed, state, be)
        n = state.size
        need = F.packed_length(n, state.bits)
        have = math.prod(map(int, packed.shape))   # torch's .size is a method
        if have != need:
            raise ValueError(f"packed has {have} bytes, expected {need} for {n} values of "
                             f"{state.bits} bits")
        if state.nested:   # decoded where the kernels read them; the backend refuses an overflow
            # a nested state holds its statistics (None only in a plain one)
            absmax = be.nested_scales(state.absmax, cast(np.ndarray, state.nested_absmax),
                                      np.float32(state.nested_offset), cast(np.ndarray, state.nested_quant_map),
                                      cast(int, state.nested_blocksize))
        else:   # float32 scales: the backend's checked copy, or uploaded and checked there
            absmax = be.kept_copy(state._held_absmax())
            if absmax is None:
                absmax = be.from_host(np.ascontiguousarray(state.absmax, dtype=_F))
                state._check_scales(absmax, be)
        out_dtype = np.dtype(state.dtype)
        dtype_name(out_dtype)
        flat = be.dequantize_blocks(packed, absmax, np.asarray(state.code, _F), state.bits,
                                    state.blocksize, n, out_dtype)
        return flat.reshape(state.shape)
