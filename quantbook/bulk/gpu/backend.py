"""The ``gpu`` backend: CuPy raw kernels (:mod:`.kernels`) for the bulk format.

Bit-identical to the numpy reference by construction (same float32 operations in
the same order, see the kernels' docstring); the device tests check it.  CuPy is imported
lazily: importing this module never needs CuPy or a GPU.

Inputs may be CuPy arrays or anything exposing ``__cuda_array_interface__`` or DLPack
(e.g. torch CUDA tensors, bfloat16 included) — never copied to the host.  Outputs are
CuPy arrays.  Kernels are compiled with NVRTC for the current device on first use
(cached in ``~/.cache/quantbook/gpu``, override with ``QUANTBOOK_CACHE``).  Kernels run on
CuPy's current stream; results are ready when that stream is.
"""

from __future__ import annotations

import sys
from contextlib import AbstractContextManager
from typing import Any, Callable

import numpy as np
from numpy.typing import ArrayLike

from .. import format as F
from ..backend import Backend, dtype_name_of
from ..nested import NESTED_BLOCKSIZE, dynamic_map, nested_lut, nested_offset, nonfinite_scales_error
from ..state import DeviceScales, host_array
from . import kernels as K
from .compile import compile_source, load_nvrtc, supported_archs
from .kept import keep, kept
from .tables import encoder_tables, search_size

__all__ = ["CudaBackend", "quantize_gpu", "dequantize_gpu", "sanitize_gpu", "error_chunks_gpu",
           "quantize_absmax_nested", "dequantize_absmax_nested", "packing_for_bits", "gpu_available",
           "GpuUnavailable"]


class GpuUnavailable(RuntimeError):
    """CuPy, NVRTC or a CUDA device is missing."""


def _cupy():
    loaded = sys.modules.get("cupy")   # every launch asks: skip the import machinery
    if loaded is not None:
        return loaded
    try:
        import cupy  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        raise GpuUnavailable(
            "the gpu backend needs CuPy: pip install 'quantbook[gpu]' (cupy-cuda12x; "
            f"cupy-cuda13x for CUDA 13 drivers) ({exc})") from None
    return cupy


#: (CuPy module, device id) -> name: reading a device's properties takes about a millisecond,
#: and every bulk call asks whether the GPU is there
_NAMES: dict[tuple[int, int], str] = {}


def gpu_available() -> tuple[bool, str]:
    """``(True, device name)`` or ``(False, why not)``; never raises."""
    try:
        cp = _cupy()
        n = cp.cuda.runtime.getDeviceCount()
        if n < 1:
            return False, "no CUDA device"
        dev = cp.cuda.Device().id
        name = _NAMES.get((id(cp), dev))
        if name is None:
            raw = cp.cuda.runtime.getDeviceProperties(dev)["name"]
            name = _NAMES[id(cp), dev] = raw.decode() if isinstance(raw, bytes) else str(raw)
        return True, name
    except Exception as exc:  # CUDARuntimeError, GpuUnavailable, driver errors
        return False, "no usable CUDA device: " + f"{type(exc).__name__}: {exc}".splitlines()[0]


# ---- argument checks (host side, no GPU needed) -----------------------------------------

def packing_for_bits(bits: int) -> int:
    """Kernel packing: the bits of a stored code (1, 2, 4), or 8 for one byte a code."""
    bits = F.check_bits(bits)
    return bits if F.codes_per_byte(bits) > 1 else 8


def _log2_blocksize(blocksize) -> int:
    return F.check_block_size(blocksize).bit_length() - 1


def _dtype_key(dtype) -> str:
    """'f32' | 'f16' | 'bf16' from a numpy/ml_dtypes/torch dtype or its name."""
    try:
        return _KEYS[dtype]
    except (KeyError, TypeError):   # not seen yet, or unhashable
        pass
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(getattr(dtype, "name", dtype)).replace("torch.", "")
    key = {"float32": "f32", "float": "f32", "float16": "f16", "half": "f16",
           "bfloat16": "bf16"}.get(name)
    if key is None:
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    if len(_KEYS) < 64:
        try:
            _KEYS[dtype] = key
        except TypeError:
            pass
    return key


#: dtype (as given) -> key: naming a numpy dtype costs microseconds, and every call asks
_KEYS: dict = {}


# ---- device arrays -----------------------------------------------------------------------

def device_of(a: Any) -> int:
    """The CUDA device that holds the device array ``a`` (CuPy, a torch CUDA tensor, anything
    with ``__cuda_array_interface__``)."""
    cp = _cupy()
    if isinstance(a, cp.ndarray):
        return int(a.device.id)
    index = getattr(getattr(a, "device", None), "index", None)   # torch
    if isinstance(index, int):
        return index
    ptr = a.__cuda_array_interface__["data"][0]
    return int(cp.cuda.runtime.pointerGetAttributes(ptr).device)


def _as_device(x, input_dtype=None):
    """(flat contiguous CuPy array, dtype key, keep-alive) without a host copy."""
    loaded = sys.modules.get("cupy")
    if isinstance(x, np.ndarray) and not (loaded is not None and isinstance(x, loaded.ndarray)):
        raise TypeError("quantize_gpu needs a device array (CuPy, torch CUDA tensor, ...); "
                        "numpy arrays use backend='cpu' or 'numpy'")
    cp = _cupy()
    if not isinstance(x, cp.ndarray) and callable(getattr(x, "detach", None)):
        x = x.detach()   # a torch tensor that requires grad exports no interface
    keep = x
    if not isinstance(x, cp.ndarray):
        tdt = str(getattr(x, "dtype", ""))
        if tdt == "torch.bfloat16" and hasattr(x, "data_ptr"):
            # __cuda_array_interface__ cannot express bfloat16: wrap the pointer as uint16
            if not x.is_cuda:
                raise TypeError("torch tensor must be on a CUDA device")
            t = x.contiguous()
            mem = cp.cuda.UnownedMemory(t.data_ptr(), t.numel() * 2, t)
            arr = cp.ndarray((t.numel(),), dtype=np.uint16, memptr=cp.cuda.MemoryPointer(mem, 0))
            return arr, "bf16", t
        if hasattr(x, "__cuda_array_interface__"):
            x = cp.asarray(x)
        elif hasattr(x, "__dlpack__"):
            x = cp.from_dlpack(x)
        else:
            raise TypeError(f"expected a CUDA device array, got {type(x).__name__}")
    if input_dtype is not None and _dtype_key(input_dtype) == "bf16" and x.dtype == np.uint16:
        key = "bf16"                      # raw bfloat16 bits (CuPy < 14 has no bfloat16)
    else:
        key = _dtype_key(x.dtype)
    x = cp.ascontiguousarray(x).reshape(-1)
    if key == "bf16":
        x = x.view(np.uint16)
    return x, key, keep


_MODULES: dict[tuple[str, int], tuple[Any, Any]] = {}   # (kernel, device) -> (module, function)


def _device_arch() -> tuple[str, str]:
    cp = _cupy()
    cc = int(cp.cuda.Device().compute_capability)
    archs = supported_archs()
    if cc in archs:
        return f"sm_{cc}", "cubin"
    lower = [a for a in archs if a <= cc]
    if not lower:
        raise GpuUnavailable(f"NVRTC supports no architecture <= sm_{cc}")
    return f"compute_{max(lower)}", "ptx"      # the driver JIT-compiles newer GPUs


def _load_module(text: str, filename: str):
    """CUDA source ``text`` compiled for the current device (NVRTC, cached on disk) and loaded."""
    load_nvrtc()
    arch, out = _device_arch()
    image = compile_source(text, arch, output=out, name=filename, use_cache=True)
    mod = _cupy().cuda.function.Module()
    mod.load(image)
    return mod


def _kernel(name: str):
    """The kernel ``name`` of :mod:`.kernels` for the current device, compiled alone (each
    instantiation is its own module)."""
    key = (name, _cupy().cuda.Device().id)
    hit = _MODULES.get(key)
    if hit is None:
        mod = _load_module(K.source([name]), f"{name}.cu")
        hit = _MODULES[key] = (mod, mod.get_function(name))
    return hit[1]


def module_kernel(modules: dict, source: Callable[[], str], filename: str, name: str) -> Any:
    """The kernel ``name`` of a whole kernel module for the current device: ``source()`` is
    compiled once per device (NVRTC, cached on disk as the other kernels) into ``modules``
    (device -> (module, functions)), so one compile serves every kernel of the module."""
    dev = _cupy().cuda.Device().id
    hit: tuple[Any, dict[str, Any]] | None = modules.get(dev)
    if hit is None:
        hit = modules[dev] = (_load_module(source(), filename), {})
    mod, fns = hit
    fn = fns.get(name)
    if fn is None:
        fn = fns[name] = mod.get_function(name)
    return fn


#: device copies of host tables: key -> (the host array for a key by identity, else None; the copy)
_CONSTS: dict[tuple, tuple] = {}


def _device_const(host: np.ndarray):
    """A device copy of a read-only host table, cached per device (no H2D per call).  A table
    that owns its read-only memory is known by identity, so a call does not even read it: by
    convention such a table is never written again (the cached tables of
    :mod:`quantbook.scales.steps` and :mod:`.tables`, up to 256 KB; numpy would let the owner
    make it writable, which nothing here does).  The entry keeps the array, so its id cannot
    pass to another.  Anything else is known by its bytes."""
    cp = _cupy()
    dev = cp.cuda.Device().id
    by_id = (isinstance(host, np.ndarray) and not host.flags.writeable and host.base is None
             and host.flags.c_contiguous)   # the kernels read C order; cp.asarray keeps the host's
    key: tuple[Any, ...]
    if by_id:
        key = (dev, id(host))
    else:
        host = np.ascontiguousarray(host)
        key = (dev, host.dtype.str, host.tobytes())
    hit = _CONSTS.get(key)
    if hit is not None and (not by_id or hit[0] is host):
        return hit[1]
    if len(_CONSTS) > 256:
        _CONSTS.clear()
    arr = cp.asarray(host)
    _CONSTS[key] = (host if by_id else None, arr)
    return arr


def _blocks(count: int, per: int) -> int:
    return max(1, -(-count // per))


def quantize_launch(n: int, dtype_key: str, blocksize: int, packing: int, sms: int | None = None,
                    per_sm: int | None = None) -> tuple[int, int]:
    """(grid, block) of a quantize kernel: V values a thread (``kernels.quantize_vec``),
    blocksize/V threads a quantization block, CTA = max(QUANTIZE_MIN_CTA, blocksize/V).
    The CTAs loop over tiles, so with ``sms`` (the GPU's multiprocessor count) the grid is
    capped at what the GPU holds at once (``per_sm`` CTAs each, when known): one wave, and
    each CTA reads the encoder tables once."""
    v = K.quantize_vec(dtype_key, blocksize, packing)
    cta = max(QUANTIZE_MIN_CTA, blocksize // v)
    grid = _blocks(-(-n // v), cta)
    if sms and QUANTIZE_WAVES:
        grid = min(grid, sms * (per_sm or max(1, 2048 // cta)) * QUANTIZE_WAVES)
    return grid, cta


#: quantize grids hold at most this many times what the GPU runs at once (0: no cap)
QUANTIZE_WAVES = 1
#: threads of a quantize CTA at least (a block's group of threads, blocksize / V, is at most
#: 256 today)
QUANTIZE_MIN_CTA = 256


def _sm_count() -> int:
    cp = _cupy()
    dev = cp.cuda.Device()
    n = _SMS.get(dev.id)
    if n is None:
        n = _SMS[dev.id] = int(cp.cuda.runtime.getDeviceProperties(dev.id)["multiProcessorCount"])
    return n


def _resident(fn, cta: int) -> int | None:
    """CTAs of ``fn`` an SM holds at once (the driver's occupancy calculator), or None."""
    key = (id(fn), cta)
    if key not in _RESIDENT:
        try:
            from cupy_backends.cuda.api import driver  # noqa: PLC0415

            _RESIDENT[key] = int(driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.ptr, cta, 0)) or None
        except Exception:   # an older CuPy, or a stand-in in the tests
            _RESIDENT[key] = None
    return _RESIDENT[key]


_RESIDENT: dict[tuple, int | None] = {}
_SMS: dict[int, int] = {}


def dequantize_launch(n: int) -> tuple[int, int]:
    """(grid, block) of a dequantize kernel: ``DEQ_PER_THREAD`` outputs a thread (in steps of
    one 16-byte store), ``DEQ_CTA`` threads a CTA."""
    per_cta = K.DEQ_PER_THREAD * K.DEQ_CTA
    return _blocks(n, per_cta), K.DEQ_CTA


def sanitize_launch(n: int, blocksize: int) -> tuple[int, int]:
    """(grid, block) of a sanitize kernel: ``min(blocksize, 32)`` threads a quantization
    block, ``SANITIZE_CTA`` threads a CTA."""
    return _blocks(F.n_blocks(n, blocksize) * min(blocksize, 32), K.SANITIZE_CTA), K.SANITIZE_CTA


def nested_launch(n: int) -> tuple[int, int]:
    """(grid, block) of the nested-absmax kernels: one CTA of 256 threads per 256 values."""
    return _blocks(n, 256), 256


# ---- public functions ----------------------------------------------------------------------

def quantize_gpu(x: Any, code_f32: ArrayLike, bits: int, blocksize: int, *,
                 input_dtype: Any = None) -> tuple[Any, Any]:
    """Block-wise quantize a device array (flattened in C order).

    Returns ``(packed, absmax)``: CuPy uint8 ``[packed_length(n, bits)]`` and float32
    ``[ceil(n / blocksize)]``, byte-identical to ``reference.quantize_reference``.  Input
    float32 / float16 / bfloat16; assumed finite (the api checks).  ``code_f32``: the code
    table in stored order (<= 2**bits finite entries).  ``input_dtype="bfloat16"`` marks a
    uint16 array as raw bfloat16 bits (for CuPy < 14, which has no bfloat16 dtype).
    """
    packing = packing_for_bits(bits)
    log2b = _log2_blocksize(blocksize)
    code = F.check_code_table(code_f32, bits)
    xd, key, keep = _as_device(x, input_dtype)  # rejects host arrays before needing CuPy
    cp = _cupy()
    n = int(xd.size)
    nblocks = F.n_blocks(n, blocksize)
    packed = cp.empty(F.packed_length(n, bits), dtype=cp.uint8)
    absmax = cp.empty(nblocks, dtype=cp.float32)
    if n == 0:
        return packed, absmax
    fn, tables = _quantize_plan(code, packing, key, log2b)
    _, cta = quantize_launch(n, key, blocksize, packing)
    grid, cta = quantize_launch(n, key, blocksize, packing, _sm_count(), _resident(fn, cta))
    vec_in = int(xd.data.ptr % 16 == 0)
    fn((grid,), (cta,), (xd, packed, absmax, np.int64(n), np.int32(log2b), *tables, np.int32(vec_in)))
    del keep
    return packed, absmax


#: (CuPy module, device, what the launch is for) -> (kernel, its table arguments): built once
#: per code and layout, since building them took a good part of a call's host work, which the
#: GPU waits for
_PLANS: dict[tuple, tuple] = {}


def _plan(key: tuple, build):
    """The launch plan ``build()`` makes for ``key`` on the current device, made once."""
    cp = _cupy()
    full = (id(cp), cp.cuda.Device().id, *key)
    plan = _PLANS.get(full)
    if plan is None:
        plan = build()
        if len(_PLANS) >= 256:   # many fitted codebooks: keep the memory bounded
            _PLANS.clear()
        _PLANS[full] = plan
    return plan


def _quantize_plan(code: np.ndarray, packing: int, key: str, log2b: int):
    def build():
        tabs = encoder_tables(code, search_size(packing))
        fn = _kernel(K.quantize_name(key, K.quantize_vec(key, 1 << log2b, packing), packing, tabs.search))
        return fn, (_device_const(tabs.bucket), _device_const(tabs.bounds), np.int32(tabs.bounds.size),
                    _device_const(tabs.order), np.int32(tabs.K), np.int32(tabs.ident))

    return _plan(("quantize", code.tobytes(), packing, key, log2b), build)


def _empty_out(n: int, key: str):
    cp = _cupy()
    if key == "f32":
        return cp.empty(n, dtype=cp.float32), None
    if key == "f16":
        return cp.empty(n, dtype=cp.float16), None
    raw = cp.empty(n, dtype=cp.uint16)
    try:  # CuPy >= 14 knows ml_dtypes.bfloat16; older CuPy gets the raw bits (uint16)
        import ml_dtypes  # noqa: PLC0415

        return raw, raw.view(ml_dtypes.bfloat16)
    except Exception:
        return raw, raw


def dequantize_gpu(packed: Any, absmax: Any, code_f32: ArrayLike, bits: int, blocksize: int, n: int,
                   out_dtype: Any) -> Any:
    """Inverse of :func:`quantize_gpu`: ``out = dtype(float32(code[idx] * absmax[block]))``.

    Returns a flat CuPy array of ``out_dtype`` (float32, float16, or bfloat16 — an
    ``ml_dtypes.bfloat16`` view with CuPy >= 14, else uint16 holding the bfloat16 bits).
    Codes past the end of ``code_f32`` (corrupt input) decode to NaN.
    """
    packing = packing_for_bits(bits)
    log2b = _log2_blocksize(blocksize)
    code = F.check_code_table(code_f32, bits)
    key = _dtype_key(out_dtype)
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cp = _cupy()
    pk = cp.ascontiguousarray(cp.asarray(packed)).reshape(-1).view(cp.uint8)
    am = cp.ascontiguousarray(cp.asarray(absmax, dtype=cp.float32)).reshape(-1)
    need = F.packed_length(n, bits)
    if pk.size < need:
        raise ValueError(f"packed holds {pk.size} bytes, {need} needed for n={n}, bits={bits}")
    if am.size < F.n_blocks(n, blocksize):
        raise ValueError(f"absmax holds {am.size} values, {F.n_blocks(n, blocksize)} needed")
    out, view = _empty_out(n, key)
    if n == 0:
        return out if view is None else view
    fn, table = _plan(("dequantize", code.tobytes(), packing, key),
                      lambda: (_kernel(K.dequantize_name(key, packing)), _device_const(code)))
    vec_in = int(pk.data.ptr % 16 == 0)
    vec_out = int(out.data.ptr % 16 == 0)
    grid, cta = dequantize_launch(n)
    fn((grid,), (cta,),
       (pk, am, out, np.int64(n), np.int32(log2b), table, np.int32(code.size),
        np.int32(vec_in), np.int32(vec_out)))
    return out if view is None else view


def sanitize_gpu(x: Any, blocksize: int, *, input_dtype: Any = None) -> Any:
    """:func:`quantbook.bulk.format.sanitize_nonfinite` on the device: a new flat array of
    x's dtype (bfloat16 as :func:`_as_bfloat16` gives it); x is not written."""
    log2b = _log2_blocksize(blocksize)
    xd, key, keep = _as_device(x, input_dtype)
    out = _cupy().empty(int(xd.size), dtype=xd.dtype)
    if out.size:
        grid, cta = sanitize_launch(int(xd.size), blocksize)
        _kernel(K.sanitize_name(key))((grid,), (cta,), (xd, out, np.int64(xd.size), np.int32(log2b)))
    del keep
    return _as_bfloat16(out) if key == "bf16" else out


def error_chunks_gpu(x: Any, xhat: Any = None) -> np.ndarray:
    """The runs' sums of :mod:`quantbook.bulk.sums` on the device, for device arrays of one
    size and dtype (float32, float16 or bfloat16): a host float64 ``(2, runs)`` array, the
    only copy to the host (16 bytes a run)."""
    xd, key, keep = _as_device(x)
    hd, hkey, hkeep = (xd, key, None) if xhat is None else _as_device(xhat)
    if hkey != key:
        raise ValueError(f"x and xhat differ in dtype: {key} and {hkey}")
    n = int(xd.size)
    grid, cta, runs = error_chunks_launch(n)
    out = _cupy().empty(2 * runs, dtype=np.float64)
    if runs:
        vec_in = int(xd.data.ptr % 16 == 0 and hd.data.ptr % 16 == 0)
        _kernel(K.error_chunks_name(key))((grid,), (cta,),
                                          (xd, hd, np.int32(xhat is not None), out, np.int64(n), np.int64(runs),
                                           np.int32(vec_in)))
    del keep, hkeep
    return _cupy().asnumpy(out).reshape(2, runs)


def error_chunks_kernel_takes(x: Any, xhat: Any = None) -> bool:
    """Whether the error-sums kernel takes these arrays: one dtype, and not float64."""
    names = {dtype_name_of(a) for a in ((x,) if xhat is None else (x, xhat))}
    return len(names) == 1 and "float64" not in names


def error_chunks_launch(n: int) -> tuple[int, int, int]:
    """``(grid, cta, runs)`` of the error-sums kernel for ``n`` values: a thread a run,
    ``SUMS_CTA`` runs a CTA (the kernel's shared tile is sized for it), grid-stride beyond
    2**16 CTAs."""
    from ..sums import n_chunks

    runs = n_chunks(n)
    return max(1, min(-(-runs // K.SUMS_CTA), 1 << 16)), K.SUMS_CTA, runs


def _as_bfloat16(raw):
    """Device bfloat16 values from a CuPy array of their bits, as a quantize kernel takes
    them: CuPy >= 14 views them as ``ml_dtypes.bfloat16``; older CuPy has no bfloat16 (a
    bfloat16 input then came from torch), so a torch tensor shares the memory."""
    try:
        import ml_dtypes  # noqa: PLC0415

        return raw.view(ml_dtypes.bfloat16)
    except (ImportError, TypeError, ValueError):
        import torch  # noqa: PLC0415

        return torch.as_tensor(raw.view(np.int16), device=f"cuda:{raw.device.id}").view(torch.bfloat16)


def quantize_absmax_nested(absmax: Any, threads: int = 1) -> tuple[Any, Any, np.float32]:
    """Nested (double) quantization of a device float32 absmax array, as bitsandbytes'
    ``compress_statistics`` on CPU.  Returns ``(qabsmax uint8, nested_absmax float32,
    offset np.float32)`` (CuPy arrays), bit-identical to the numpy reference.

    The offset is torch's float32 mean (:func:`quantbook.bulk.nested.nested_offset`, on the
    host from a copy of ``absmax``: one float32 per block, small); the 256-blocks are
    quantized on the device with the 65536-entry LUT.
    """
    cp = _cupy()
    am = cp.ascontiguousarray(cp.asarray(absmax, dtype=cp.float32)).reshape(-1)
    if int(am.size) == 0:
        raise ValueError("absmax is empty")
    offset = nested_offset(cp.asnumpy(am), threads)
    q, nested = _nested_codes(am, offset)
    return q, nested, offset


def _nested_codes(am, offset):
    cp = _cupy()
    n = int(am.size)
    q = cp.empty(n, dtype=cp.uint8)
    nested = cp.empty(F.n_blocks(n, NESTED_BLOCKSIZE), dtype=cp.float32)
    fn = _kernel(K.NESTED_QUANT_NAME)
    grid, cta = nested_launch(n)
    fn((grid,), (cta,), (am, np.float32(offset), _device_const(nested_lut()), q, nested, np.int64(n)))
    return q, nested


def dequantize_absmax_nested(qabsmax: Any, nested_absmax: Any, offset: float | np.float32,
                             nested_code: ArrayLike | None = None, nested_blocksize: int = NESTED_BLOCKSIZE) -> Any:
    """``float32(float32(code[q] * nested_absmax[i // nested_blocksize]) + offset)`` on the
    device; ``nested_code`` defaults to bitsandbytes' dynamic map (256 float32)."""
    cp = _cupy()
    code = F.check_code_table(dynamic_map() if nested_code is None else nested_code)
    if code.size != 256:
        code = np.concatenate([code, np.full(256 - code.size, np.nan, np.float32)])
    log2b = _log2_blocksize(nested_blocksize)
    q = cp.ascontiguousarray(cp.asarray(qabsmax)).reshape(-1).view(cp.uint8)
    na = cp.ascontiguousarray(cp.asarray(nested_absmax, dtype=cp.float32)).reshape(-1)
    n = int(q.size)
    if na.size < F.n_blocks(n, nested_blocksize):
        raise ValueError("nested_absmax is too short for qabsmax")
    out = cp.empty(n, dtype=cp.float32)
    if n == 0:
        return out
    fn = _kernel(K.NESTED_DEQUANT_NAME)
    grid, cta = nested_launch(n)
    fn((grid,), (cta,),
       (q, na, _device_const(code), np.float32(offset), out, np.int64(n), np.int32(log2b)))
    return out


class CudaBackend(Backend, name="gpu"):
    """CuPy raw kernels on device arrays (CuPy, torch CUDA tensors, DLPack)."""

    auto = True

    device = True

    scaled_layouts = True

    def unavailable(self) -> str | None:
        ok, why = gpu_available()
        return None if ok else why

    def on_device(self, a: Any) -> AbstractContextManager:
        return _cupy().cuda.Device(device_of(a))

    def quantize_blocks(self, x: Any, code: np.ndarray, bits: int,
                        block_size: int) -> tuple[Any, Any]:
        return quantize_gpu(x, code, bits, block_size)

    def dequantize_blocks(self, packed: Any, absmax: Any, code: np.ndarray, bits: int,
                          block_size: int, n: int, out_dtype: np.dtype) -> Any:
        return dequantize_gpu(packed, absmax, code, bits, block_size, n, out_dtype)

    def sanitize_nonfinite(self, x: Any, block_size: int) -> Any:
        return sanitize_gpu(x, block_size)

    def _error_chunks(self, x, xhat):
        if not error_chunks_kernel_takes(x, xhat):   # the host's sums
            return super()._error_chunks(x, xhat)
        return error_chunks_gpu(x, xhat)

    def nested_scales(self, qabsmax: np.ndarray, nested_absmax: np.ndarray, offset: np.float32,
                      nested_code: np.ndarray, nested_blocksize: int) -> Any:
        # the uint8 codes are decoded on the device: those this GPU kept when it made them,
        # else uploaded (a byte a block, not four); the decoded scales are checked there
        dev = self.kept_copy(qabsmax)
        scales = dequantize_absmax_nested(qabsmax if dev is None else dev, nested_absmax, offset,
                                          nested_code, nested_blocksize)
        if not bool(_cupy().isfinite(scales).all()):
            raise nonfinite_scales_error()
        return scales

    def quantize_nested(self, absmax: Any, offset: np.float32) -> tuple[np.ndarray, np.ndarray]:
        # the block maxima are still on the device: the kernel subtracts the offset there
        cp = _cupy()
        q, nested = _nested_codes(cp.ascontiguousarray(cp.asarray(absmax, dtype=cp.float32)).reshape(-1), offset)
        return self.to_host_kept(q), self.to_host(nested)

    # the scaled layouts: block maxima, the rule's step-table lookup, a search's candidate
    # errors and pick, and ggml's search on the device; only the stored scales (ggml's float32
    # scales, for their float16 rounding) reach the host
    def scaled_amax(self, x: Any, block_size: int) -> Any:
        from .scaled import scaled_amax_gpu  # noqa: PLC0415 - gpu/scaled imports this module

        return scaled_amax_gpu(x, block_size)

    def scaled_scales(self, amax: Any, rule: Any, qmax: float, tensor_scale: Any = None,
                      need_scale: bool = False) -> tuple[Any, Any, bool, Any]:
        from .scaled import scaled_scales_gpu  # noqa: PLC0415

        out = scaled_scales_gpu(amax, rule, qmax, tensor_scale, need_scale)
        if out is None:   # a block the rule refuses: the rule raises its own error
            return super().scaled_scales(amax, rule, qmax, tensor_scale, need_scale)
        return out

    def scaled_encode(self, x: Any, factor: Any, divide: bool, table: np.ndarray,
                      block_size: int) -> Any:
        from .scaled import scaled_encode_gpu  # noqa: PLC0415

        return scaled_encode_gpu(x, factor, divide, table, block_size)

    def scaled_decode(self, packed: Any, scale: Any, table: np.ndarray, block_size: int,
                      n: int, out_dtype: np.dtype) -> Any:
        from .scaled import scaled_decode_gpu  # noqa: PLC0415

        return scaled_decode_gpu(packed, scale, table, block_size, n, out_dtype)

    def scaled_decode_lookup(self, packed: Any, lut: np.ndarray, index: np.ndarray, table: np.ndarray,
                             block_size: int, n: int, out_dtype: np.dtype) -> Any:
        from .scaled import scaled_decode_gpu  # noqa: PLC0415

        return scaled_decode_gpu(packed, index, table, block_size, n, out_dtype, lut=lut)

    def scaled_errors(self, x: Any, factor: Any, divide: bool, scale: Any, table: np.ndarray,
                      block_size: int, loss: str) -> Any:
        from .scaled import scaled_errors_gpu  # noqa: PLC0415

        return scaled_errors_gpu(x, factor, divide, scale, table, block_size, loss)

    def scaled_ggml(self, x: Any, table: np.ndarray, block_size: int, ntry: int) -> tuple[np.ndarray, Any]:
        from .scaled import scaled_ggml_gpu  # noqa: PLC0415

        return scaled_ggml_gpu(x, table, block_size, ntry)

    def to_host(self, a: Any) -> np.ndarray:
        if hasattr(a, "get"):  # CuPy
            return a.get()
        return host_array(a)   # torch (bfloat16 through its bits) or numpy

    def to_host_kept(self, a: Any) -> np.ndarray:
        """:meth:`to_host` of an array a state will hold (checked block scales, or nested
        codes), keeping ``a`` for :meth:`kept_copy`: a read-only view that cannot be made
        writable (:mod:`.kept`)."""
        return keep(self.to_host(a), a, device_of(a))

    def held_scales(self, a: Any) -> Any:
        return DeviceScales(a, device_of(a), self.to_host_kept)

    def kept_copy(self, host: Any) -> Any | None:
        device = _cupy().cuda.Device().id
        if isinstance(host, DeviceScales):
            return host.array if host.device == device else None
        return kept(host, device)

    def scales_finite_nonnegative(self, s: Any) -> bool:
        if isinstance(s, _cupy().ndarray):   # one reduction where the scales are, one scalar back
            return F.finite_nonnegative_bits(s)
        return super().scales_finite_nonnegative(s)

    def from_host(self, a: np.ndarray) -> Any:
        try:
            return _cupy().asarray(a)
        except (TypeError, ValueError) as exc:  # bfloat16 before CuPy 14: a torch tensor holds it
            if np.dtype(a.dtype).name != "bfloat16":
                raise
            try:
                import torch  # noqa: PLC0415
            except ImportError:
                raise ValueError(f"CuPy {_cupy().__version__} cannot hold a bfloat16 array ({exc}); "
                                 "install CuPy >= 14 or torch") from None
            bits = torch.from_numpy(np.ascontiguousarray(a).view(np.int16))
            return bits.to(f"cuda:{_cupy().cuda.Device().id}").view(torch.bfloat16)
