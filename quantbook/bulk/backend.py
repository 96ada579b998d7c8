"""The backend seam: one interface, registered implementations.

A backend computes the bytes of :mod:`quantbook.bulk.format` and nothing else; checks,
codebook names, non-finite handling, nested statistics and the :class:`quantbook.bulk.state.QuantState` live in
:mod:`quantbook.bulk.api`.  A subclass registers itself by naming itself::

    class MyBackend(Backend, name="mine"):
        def quantize_blocks(self, x, code, bits, block_size): ...
        def dequantize_blocks(self, packed, absmax, code, bits, block_size, n, out_dtype): ...

and is then reachable as ``quantize(..., backend="mine")`` and runs the conformance suite
(tests/test_conformance.py), which loops over :data:`BACKENDS`.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import numpy as np

from . import format as F
from .format import DTYPES, sanitize_nonfinite

__all__ = ["Backend", "BACKENDS", "get_backend", "is_device_array", "dtype_name_of", "check_input_dtype",
           "no_device_backend_error", "host_backend_error"]

#: name -> backend instance, in registration order
BACKENDS: dict[str, "Backend"] = {}


def is_device_array(a: Any) -> bool:
    """A GPU array (CuPy, a torch CUDA tensor, ...).  torch raises other errors than
    AttributeError from the interface for some tensors (bfloat16 before torch 2.5, one that
    requires grad), so a CUDA tensor is recognised first by ``is_cuda``."""
    if getattr(a, "is_cuda", False) is True:
        return True
    try:
        return hasattr(a, "__cuda_array_interface__")
    except Exception:   # an interface that raises is still a device array's
        return True


def dtype_name_of(a: Any) -> str:
    """The dtype name of a numpy, CuPy or torch array (``"float16"``, ``"bfloat16"``, ``"int64"``)."""
    dt = a.dtype
    return dt.name if isinstance(dt, np.dtype) else str(dt).replace("torch.", "")


def check_input_dtype(x: Any) -> str:
    """The dtype name of an input to quantize: float32, float16 or bfloat16, else a one-line
    ValueError (float64 with the conversion to make)."""
    name = dtype_name_of(x)
    if name == "float64":
        raise ValueError("float64 input is not supported (the format scales in float32): convert it first, "
                         "x.astype(np.float32) for a numpy or CuPy array, x.float() for a torch tensor, "
                         "np.asarray(x, dtype=np.float32) for a list")
    if name not in DTYPES:
        raise ValueError(f"x must hold {', '.join(DTYPES)} values, got dtype {name}")
    return name


def _native(a: Any) -> Any:
    """A host array in native byte order (the same values; the kernels read native bits); any
    other array as it is."""
    if isinstance(a, np.ndarray) and not a.dtype.isnative:
        return a.astype(a.dtype.newbyteorder("="))
    return a


def no_device_backend_error(registry: dict) -> ValueError:
    """``backend="auto"`` with a device array and no usable device backend in ``registry``."""
    return ValueError("no GPU backend is usable for this device array: "
                      + "; ".join(f"{b.name}: {b.unavailable()}" for b in registry.values() if b.device))


def host_backend_error(name: Any) -> ValueError:
    """A host backend named for a device array."""
    return ValueError(f"a device array needs a GPU backend or 'auto', got backend={name!r}")


class Backend:
    """Base class of the bulk backends.

    ``device`` backends take and return device arrays (``__cuda_array_interface__``); the
    others numpy arrays.  Inputs reach a backend already checked: ``x`` flat, C-contiguous
    float32/float16/bfloat16; ``code`` a finite float32 table of at most ``2**bits`` entries.
    """

    name: ClassVar[str]
    device: ClassVar[bool] = False
    #: ``backend="auto"`` may pick it (the first usable one for host or device input)
    auto: ClassVar[bool] = False
    #: it implements the ``scaled_*`` hooks of the scaled layouts (docs/scales.md)
    scaled_layouts: ClassVar[bool] = False

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            if name in BACKENDS or name == "auto":
                raise ValueError(f"a backend named {name!r} is already registered")
            cls.name = name
            BACKENDS[name] = cls()

    def unavailable(self) -> str | None:
        """Why this backend cannot run here (a missing package or device), or None."""
        return None

    def on_device(self, a: Any) -> AbstractContextManager:
        """A context in which every call works where ``a`` lives (a GPU backend: the device
        that holds ``a``, which need not be the current one); host backends: nothing."""
        return nullcontext()

    def quantize_blocks(self, x: Any, code: np.ndarray, bits: int,
                        block_size: int) -> tuple[Any, Any]:
        """``(packed uint8, absmax float32)``; a block holding NaN/Inf gets a non-finite absmax."""
        raise NotImplementedError

    def dequantize_blocks(self, packed: Any, absmax: Any, code: np.ndarray, bits: int,
                          block_size: int, n: int, out_dtype: np.dtype) -> Any:
        """Flat array of ``n`` values of ``out_dtype``; ``absmax`` the float32 scales as
        :meth:`from_host` or :meth:`nested_scales` made them."""
        raise NotImplementedError

    def quantize_nested(self, absmax: Any, offset: np.float32) -> tuple[np.ndarray, np.ndarray]:
        """``(codes uint8, nested_absmax float32)``, host arrays, of the float32 deviations
        ``absmax - offset``; ``absmax`` as :meth:`quantize_blocks` returned it."""
        from .nested import quantize_nested_reference

        return quantize_nested_reference(self.to_host(absmax) - np.float32(offset))

    def nested_scales(self, qabsmax: np.ndarray, nested_absmax: np.ndarray, offset: np.float32,
                      nested_code: np.ndarray, nested_blocksize: int) -> Any:
        """The float32 block scales of nested statistics (host arrays in;
        :func:`quantbook.bulk.nested.dequantize_nested`), an array of this backend's kind where
        :meth:`dequantize_blocks` reads them; a ValueError when one is not finite."""
        from .nested import dequantize_nested, nonfinite_scales_error

        with np.errstate(over="ignore"):   # an overflow is refused just below, in one line
            scales = dequantize_nested(qabsmax, nested_absmax, offset, nested_code, nested_blocksize)
        if not np.isfinite(scales).all():
            raise nonfinite_scales_error()
        return scales

    def sanitize_nonfinite(self, x: Any, block_size: int) -> Any:
        """What ``allow_nonfinite=True`` quantizes in place of ``x``: flat, of x's dtype, an
        array of this backend's kind (:func:`quantbook.bulk.format.sanitize_nonfinite`).
        Default: that function on a host copy."""
        return self.from_host(sanitize_nonfinite(self.to_host(x), block_size))

    # the scaled layouts (NVFP4, MXFP4, float16 scales; quantbook.bulk.scaled drives them)
    def scaled_amax(self, x: Any, block_size: int) -> Any:
        """Per-block ``max |x|`` (float32, an array of this backend's kind); NaN for a block
        holding NaN/Inf."""
        raise NotImplementedError

    def scaled_scales(self, amax: Any, rule: Any, qmax: float, tensor_scale: Any = None,
                      need_scale: bool = False) -> tuple[Any, Any, bool, Any]:
        """``(stored, factor, divide, scale)`` of a deterministic rule for the block maxima
        ``amax`` (from :meth:`scaled_amax`): the stored scales, the divisor
        (:meth:`quantbook.scales.ScaleRule.divisor`) and, with ``need_scale``, the decoded
        scales (else None).  Default: the rule itself, on the host; a backend may look the
        blocks up in the rule's step table (:mod:`quantbook.scales.steps`) instead, and must
        then raise the rule's own error for a block it refuses."""
        a = self.to_host(amax)
        stored = rule.encode(a, qmax, tensor_scale)
        f, divide = rule.divisor(stored, tensor_scale)
        return stored, f, divide, rule.decode(stored, tensor_scale) if need_scale else None

    def scaled_encode(self, x: Any, factor: Any, divide: bool, table: np.ndarray,
                      block_size: int) -> Any:
        """Packed 4-bit codes of ``y = x / factor`` (``divide``) or ``x * factor`` per block."""
        raise NotImplementedError

    def scaled_decode(self, packed: Any, scale: Any, table: np.ndarray, block_size: int,
                      n: int, out_dtype: np.dtype) -> Any:
        """``float32(table[code] * scale[block])`` cast to ``out_dtype``."""
        raise NotImplementedError

    def scaled_decode_lookup(self, packed: Any, lut: np.ndarray, index: np.ndarray, table: np.ndarray,
                             block_size: int, n: int, out_dtype: np.dtype) -> Any:
        """:meth:`scaled_decode` with block ``b``'s scale ``lut[index[b]]``: the rule's decode
        table and the stored values' bits (:meth:`quantbook.bulk.state.QuantState.scale_lookup`).
        Default: gather the scales, then decode; a device backend looks them up in its kernel
        instead (no per-block float array)."""
        return self.scaled_decode(packed, self.from_host(lut)[self.from_host(index)], table, block_size, n,
                                  out_dtype)

    def scaled_errors(self, x: Any, factor: Any, divide: bool, scale: Any, table: np.ndarray,
                      block_size: int, loss: str) -> Any:
        """Per block (float64, an array of this backend's kind), the error of encoding with
        ``factor`` and decoding with ``scale`` (:func:`quantbook.scales.search.block_errors`).
        Default: this backend's encode and decode, the decoded values copied to the host, on
        :func:`~quantbook.bulk.format.pieces` of whole blocks (block_errors' float64
        temporaries would be several times the tensor)."""
        from ..scales.search import block_errors

        x = x.reshape(-1)
        n = math.prod(map(int, x.shape))
        out = np.empty(F.n_blocks(n, block_size))
        for s in F.pieces(n, block_size):
            b = F.block_slice(s, block_size)
            p = self.scaled_encode(x[s], factor[b], divide, table, block_size)
            deq = self.to_host(self.scaled_decode(p, scale[b], table, block_size, s.stop - s.start,
                                                  np.dtype(np.float32)))
            out[b] = block_errors(self.to_host(x[s]), deq, block_size, loss)
        return self.from_host(out)

    def scaled_ggml(self, x: Any, table: np.ndarray, block_size: int, ntry: int) -> tuple[np.ndarray, Any]:
        """``(d, packed)``: ggml's search (:mod:`quantbook.scales.ggml`) over the blocks of ``x``,
        the float32 scale of each block (host) and the packed codes, the last block padded
        with zeros.  Default: the compiled host search on a host copy."""
        from ..scales.ggml import ggml_search
        from .format import n_blocks
        from .layouts import pack_low_first, scaled_encoder

        xh = self.to_host(x).reshape(-1)
        n = xh.size
        nb = n_blocks(n, block_size)
        xb = np.zeros(nb * block_size, np.float32)   # zeros change neither the sums nor the maximum
        xb[:n] = xh
        d, codes = ggml_search(xb.reshape(nb, block_size), table, ntry)
        return d, self.from_host(pack_low_first(codes.reshape(-1)[:n], scaled_encoder(table).zero_index))

    def error_sums(self, x: Any, xhat: Any = None) -> tuple[float, float]:
        """``(Σe², Σ|e|)`` of ``e = xhat - x`` (``e = -x`` without ``xhat``: ``Σx²``, ``Σ|x|``)
        in float64, in the fixed order of :mod:`quantbook.bulk.sums`: the same bits on every
        backend.  ``x`` and ``xhat``: arrays of this backend's kind, of one size, float16,
        bfloat16, float32 or (host backends) float64, in either byte order."""
        from .sums import combine

        for a in (x,) if xhat is None else (x, xhat):
            name = dtype_name_of(a)
            if name not in (*DTYPES, "float64"):
                raise ValueError(f"error sums need {', '.join(DTYPES)} or float64 values, got dtype {name}")
        size = math.prod(map(int, x.shape))
        other = size if xhat is None else math.prod(map(int, xhat.shape))
        if other != size:
            raise ValueError(f"x and xhat differ in size: {size} and {other}")
        x, xhat = (None if a is None else _native(a) for a in (x, xhat))
        return combine(self._error_chunks(x, xhat))

    def _error_chunks(self, x: Any, xhat: Any) -> np.ndarray:
        """The runs' sums of :meth:`error_sums`, a host float64 ``(2, n_chunks)`` array.
        Default: numpy on host copies."""
        from .sums import error_chunks_reference

        return error_chunks_reference(self.to_host(x), None if xhat is None else self.to_host(xhat))

    def to_host(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def from_host(self, a: np.ndarray) -> Any:
        return a

    def held_scales(self, a: Any) -> Any:
        """What a state holds for the checked block scales ``a`` (float32, or a scale rule's
        stored values; an array of this backend's kind): host backends a contiguous host array;
        a device backend a :class:`~quantbook.bulk.state.DeviceScales`, brought to the host on
        first read."""
        return np.ascontiguousarray(self.to_host(a))

    def kept_copy(self, host: Any) -> Any | None:
        """The device array a device backend kept for ``host``, a read-only host copy it made of
        it (which cannot have changed since), or the device array of a
        :class:`~quantbook.bulk.state.DeviceScales`, on the current device; else None (host
        backends: always)."""
        return None

    def scales_finite_nonnegative(self, s: Any) -> bool:
        """Whether every entry of the float32 scales ``s`` (an array of this backend's kind) is
        finite and non-negative (:func:`quantbook.bulk.format.finite_nonnegative_bits`, a
        sufficient test); a device backend answers on the device."""
        return F.finite_nonnegative_bits(self.to_host(s))


def get_backend(name: str) -> Backend:
    """The registered backend called ``name``; a clear error when unknown or unusable."""
    backend = BACKENDS.get(name) if isinstance(name, str) else None
    if backend is None:
        raise ValueError(f"backend must be one of auto, {', '.join(BACKENDS)}, got {name!r}")
    why = backend.unavailable()
    if why:
        raise ValueError(f"backend={name!r} is unavailable: {why}")
    return backend
