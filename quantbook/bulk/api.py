"""``quantize`` / ``dequantize``: block-wise k-bit quantization of whole arrays.

The byte format is defined by :mod:`quantbook.bulk.reference` (the numpy reference) and is
byte-compatible with bitsandbytes 0.50.2's ``quantize_4bit`` / ``dequantize_4bit`` on the CPU
for NF4 and FP4 (including ``compress_statistics=True``).  Backends: ``"numpy"`` (the readable
reference), ``"cpu"`` (numba, parallel), ``"gpu"`` (CuPy, :mod:`quantbook.gpu`); all give
identical bytes.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from ..codebooks import Codebook, get, load
from . import reference as R
from .dynamic_map import dynamic_map
from .state import QuantState, dtype_name

__all__ = ["quantize", "dequantize", "resolve_codebook", "BACKENDS"]

BACKENDS = ("auto", "numpy", "cpu", "gpu")
_F = np.float32


# ---------------------------------------------------------------------------- validation
def resolve_codebook(codebook: Any) -> Codebook:
    """A :class:`Codebook` from a registry name, a JSON file path, or a Codebook.

    ``"fp4"`` is bitsandbytes' FP4 table as its 0.50.2 CPU path really uses it
    (``get_4bit_type("fp4")``: raw values / 12 in float32, +0.0 at index 8).  The older
    4-decimal table of bitsandbytes' pre-0.50 CPU code is available as ``"fp4-bnb-cpu"``.
    """
    if isinstance(codebook, Codebook):
        return codebook
    if isinstance(codebook, str):
        return load(codebook) if codebook.endswith(".json") else get(codebook)
    raise ValueError(f"codebook must be a registry name, a .json path or a Codebook, "
                     f"got {type(codebook).__name__}")


def _check_block_size(block_size: Any) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)):
        raise ValueError(f"block_size must be an integer power of two from 16 to 4096, got {block_size!r}")
    b = int(block_size)
    if b < 16 or b > 4096 or b & (b - 1):
        raise ValueError(f"block_size must be a power of two from 16 to 4096, got {b}")
    return b


def _check_bits(cb: Codebook, bits: Any) -> int:
    if bits is None:
        bits = cb.bits
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= 8:
        raise ValueError(f"bits must be an integer from 1 to 8 (one byte per code at most), got {bits!r}")
    bits = int(bits)
    if cb.code.size > 2**bits:
        raise ValueError(f"codebook {cb.name!r} has {cb.code.size} entries, more than {bits} bits "
                         f"can index (at most {2**bits})")
    return bits


def _is_device_array(a: Any) -> bool:
    return hasattr(a, "__cuda_array_interface__")


def _check_input(x: Any) -> Any:
    if _is_device_array(x):
        return x
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    name = x.dtype.name
    if name == "float64":
        raise ValueError("float64 input is not supported (the format scales in float32): "
                         "convert with x.astype(np.float32)")
    if name not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"x must hold float32, float16 or bfloat16 values, got dtype {name}")
    if not x.dtype.isnative:  # the kernels read the bits in native order
        raise ValueError(f"x has non-native byte order (dtype {x.dtype.str}); "
                         f"convert with x.astype(np.{name})")
    if x.size == 0:
        raise ValueError(f"cannot quantize an empty array (shape {x.shape})")
    if not x.flags.c_contiguous:
        raise ValueError(f"x is not C-contiguous (shape {x.shape}, strides {x.strides}); "
                         "pass np.ascontiguousarray(x) — quantize does not copy silently")
    return x


def _backend_module(backend: str, device: bool):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        backend = "gpu" if device else "cpu"
    if device and backend != "gpu":
        raise ValueError(f"a GPU array needs backend='gpu' or 'auto', got {backend!r}")
    if not device and backend == "gpu":
        raise ValueError("backend='gpu' needs a CuPy (device) array; move it with cupy.asarray(x)")
    if backend == "numpy":
        return backend, None
    if backend == "cpu":
        return backend, importlib.import_module("quantbook.cpu.backend")
    try:
        return backend, importlib.import_module("quantbook.gpu.backend")
    except ImportError as exc:
        raise ValueError(f"backend='gpu' is unavailable: CuPy and a CUDA GPU are needed "
                         f"(pip install 'quantbook[gpu]') ({exc})") from None


# -------------------------------------------------------------------------------- helpers
def _bad_blocks(absmax: np.ndarray) -> np.ndarray:
    return np.flatnonzero(~np.isfinite(absmax))


def _sanitize(x: np.ndarray, block_size: int) -> np.ndarray:
    """allow_nonfinite: NaN -> 0, +-Inf -> +-(largest finite |value| of its block)."""
    xf = x.reshape(-1).astype(_F)
    fin = np.isfinite(xf)
    mag = np.where(fin, np.abs(xf), _F(0))
    n = xf.size
    nb = -(-n // block_size)
    pad = np.zeros(nb * block_size, dtype=_F)
    pad[:n] = mag
    bmax = pad.reshape(nb, block_size).max(axis=1)
    per_elem = np.repeat(bmax, block_size)[:n]
    out = np.where(np.isnan(xf), _F(0), xf)
    out = np.where(np.isposinf(xf), per_elem, out)
    out = np.where(np.isneginf(xf), -per_elem, out)
    return out.astype(x.dtype).reshape(x.shape)


def _quantize_flat(x, code, bits, block_size, backend, mod):
    if backend == "numpy":
        return R.quantize_reference(x, code, bits, block_size)
    if backend == "cpu":
        return mod.quantize_cpu(x, code, bits, block_size)
    return mod.quantize_gpu(x, code, bits, block_size)


def _to_host(a: Any) -> np.ndarray:
    if not _is_device_array(a):
        return np.asarray(a)
    if hasattr(a, "get"):  # CuPy
        return a.get()
    if str(getattr(a, "dtype", "")) == "torch.bfloat16":  # numpy has no bfloat16: go via bits
        import torch

        from .state import dtype_from_name

        return a.detach().view(torch.int16).cpu().numpy().view(dtype_from_name("bfloat16"))
    if hasattr(a, "cpu"):  # torch
        return a.detach().cpu().numpy()
    raise ValueError(f"cannot copy a {type(a).__name__} to the host")


# ------------------------------------------------------------------------------------ api
def quantize(x: Any, codebook: Any = "nf4", block_size: int = 64, nested: bool = False,
             backend: str = "auto", *, allow_nonfinite: bool = False, bits: int | None = None,
             torch_threads: int = 1) -> tuple[Any, QuantState]:
    """Block-wise quantize ``x`` with a codebook; returns ``(packed, state)``.

    Parameters
    ----------
    x:
        C-contiguous float32, float16 or bfloat16 (``ml_dtypes``) array of any shape (a CuPy
        array for ``backend="gpu"``).  Non-contiguous input is an error, not a silent copy.
    codebook:
        Registry name (``"nf4"``, ``"fp4"``, ``"af4"``, ...), a JSON file, or a Codebook.
    block_size:
        Values per scale: a power of two from 16 to 4096; the last block may be partial.
    nested:
        bitsandbytes' double quantization (``compress_statistics``) of the per-block absmax.
    backend:
        ``"auto"`` (numba for numpy input, GPU for CuPy input), ``"numpy"``, ``"cpu"``, ``"gpu"``.
    allow_nonfinite:
        By default NaN/Inf raise ``ValueError`` naming the first bad block.  With ``True``, NaN
        is quantized as 0 and ±Inf as ± the largest finite magnitude of its block (so it
        saturates to the block's extreme code; absmax is taken over the finite values).
    bits:
        Packed width (default: the codebook's); 1, 2, 4 bits pack 8/bits codes per byte
        (first element in the most significant bits), other widths one byte per code.
    torch_threads:
        Only for ``nested=True`` with >= 32768 blocks: torch sums over its threads, so pass
        bitsandbytes' ``torch.get_num_threads()`` for a bit-identical ``nested_offset``.

    Returns
    -------
    packed:
        1-D uint8 array of ``ceil(n*bits/8)`` bytes (1/2/4 bits) or ``n`` bytes.
    state:
        :class:`QuantState` (bitsandbytes' field names).

    Rules (see :mod:`quantbook.bulk.reference`): ``absmax`` per block in float32; scaled
    ``y = x * (1/absmax)`` (the partial last block ``x / absmax``) clamped to [-1, 1]; code =
    nearest table value with float32 midpoints, a value exactly on a midpoint goes to the lower
    value.  An all-zero block decodes to exact zeros (its absmax is 0, or float32(1e-38) for
    an all-zero partial last block, as bitsandbytes stores it).
    """
    cb = resolve_codebook(codebook)
    bits = _check_bits(cb, bits)
    block_size = _check_block_size(block_size)
    x = _check_input(x)
    device = _is_device_array(x)
    backend, mod = _backend_module(backend, device)
    shape = tuple(int(s) for s in x.shape)
    size = int(np.prod(shape, dtype=np.int64))
    if device:  # CuPy array or torch CUDA tensor
        if size == 0:
            raise ValueError(f"cannot quantize an empty array (shape {shape})")
        if str(x.dtype).replace("torch.", "") not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"x must hold float32, float16 or bfloat16 values, got dtype {x.dtype}")
        strides = x.__cuda_array_interface__.get("strides")
        if not _c_contiguous(shape, strides, _itemsize(x.dtype)):
            raise ValueError(f"x is not C-contiguous (shape {shape}, strides {tuple(strides)}); "
                             "pass a contiguous copy — quantize does not copy silently")
    code = cb.code_f32
    packed, absmax = _quantize_flat(x, code, bits, block_size, backend, mod)
    absmax_h = _to_host(absmax).astype(_F, copy=False)
    bad = _bad_blocks(absmax_h)
    if bad.size:
        b = int(bad[0])
        if not allow_nonfinite:
            raise ValueError(
                f"x holds NaN or Inf: first in block {b} (elements {b * block_size}.."
                f"{min((b + 1) * block_size, size) - 1} of the flattened array); "
                "pass allow_nonfinite=True to quantize NaN as 0 and saturate Inf")
        if device:
            import cupy

            xs = cupy.asarray(_sanitize(_to_host(x), block_size))
        else:
            xs = _sanitize(x, block_size)
        packed, absmax = _quantize_flat(xs, code, bits, block_size, backend, mod)
        absmax_h = _to_host(absmax).astype(_F, copy=False)
    state = QuantState(absmax=absmax_h, shape=shape,
                       dtype=np.dtype(x.dtype) if not device else _host_dtype(x.dtype),
                       blocksize=block_size, code=code.copy(), quant_type=cb.name, bits=bits)
    if nested:
        if backend == "cpu":
            q, nabs, off = mod.quantize_absmax_nested(absmax_h, torch_threads)
        else:  # numpy reference; the GPU path uses the host (absmax is small)
            q, nabs, off = R.quantize_absmax_nested(absmax_h, torch_threads)
        state.absmax = q
        state.nested_absmax = nabs
        state.nested_quant_map = dynamic_map().copy()
        state.nested_blocksize = R.NESTED_BLOCKSIZE
        state.nested_offset = float(off)
    return packed, state


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


def _host_dtype(dt: Any) -> np.dtype:
    from .state import dtype_from_name

    return dtype_from_name(str(dt))


def dequantize(packed: Any, state: QuantState, backend: str = "auto") -> Any:
    """Values of ``state.shape`` and ``state.dtype`` from ``packed`` bytes.

    ``out = float32(code[index] * absmax[block])`` rounded (to nearest even) to ``state.dtype``;
    a code index beyond the code table (corrupt input) decodes to NaN on every backend.
    """
    if not isinstance(state, QuantState):
        raise ValueError(f"state must be a QuantState, got {type(state).__name__}")
    device = _is_device_array(packed)
    backend, mod = _backend_module(backend, device)
    if str(getattr(packed, "dtype", "")).replace("torch.", "") not in ("uint8", ""):
        raise ValueError(f"packed must be a uint8 array, got dtype {packed.dtype}")
    if not device:
        packed = np.asarray(packed)
        if packed.dtype != np.uint8:
            raise ValueError(f"packed must be a uint8 array, got dtype {packed.dtype}")
        packed = np.ascontiguousarray(packed).reshape(-1)
    n = state.size
    need = R.packed_length(n, state.bits)
    if int(packed.size) != need:
        raise ValueError(f"packed has {packed.size} bytes, expected {need} for {n} values of "
                         f"{state.bits} bits")
    _check_block_size(state.blocksize)
    absmax = np.ascontiguousarray(state.absmax_f32(), dtype=_F)
    if absmax.size != state.n_blocks:
        raise ValueError(f"state has {absmax.size} scales, expected {state.n_blocks}")
    # every value a stored code can take indexes the table: 2**bits entries when packed, a
    # whole byte (256) for 3 and 5..8 bits; codes past state.code decode to NaN on every backend
    code = np.full(2**state.bits if state.bits in (1, 2, 4) else 256, np.nan, dtype=_F)
    c = np.asarray(state.code, dtype=_F).reshape(-1)
    if c.size > 2**state.bits:
        raise ValueError(f"state.code has {c.size} entries, more than 2**{state.bits}")
    code[: c.size] = c
    out_dtype = np.dtype(state.dtype)
    dtype_name(out_dtype)
    if backend == "numpy":
        flat = R.dequantize_reference(packed, absmax, code, state.bits, state.blocksize, n, out_dtype)
    elif backend == "cpu":
        flat = mod.dequantize_cpu(packed, absmax, code, state.bits, state.blocksize, n, out_dtype)
    else:  # the gpu backend moves absmax to the device and pads a short code table with NaN
        flat = mod.dequantize_gpu(packed, absmax, c, state.bits, state.blocksize, n, out_dtype)
    return flat.reshape(state.shape)
