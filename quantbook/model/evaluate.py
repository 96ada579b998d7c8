"""Quantization error of real model weights, per codebook (and per tensor).

Every selected floating tensor is read once (:mod:`quantbook.io.safetensors`, one tensor
in memory at a time, the file's header parsed once), then for each codebook quantized and dequantized with the bulk API
(:func:`quantbook.quantize` / :func:`quantbook.dequantize`, block size ``B``, a scale rule of
:mod:`quantbook.scales`: by default bitsandbytes' float32 absmax, optionally nested, else
one of the scaled layouts of docs/scales.md) back to the tensor's own dtype (float64 tensors are
quantized as float32, the format's working precision).  Errors are computed in float64
against the stored values: ``e = dequantized - x``, each sum in the fixed order of
:mod:`quantbook.bulk.sums` (the same numbers for any machine, thread count and backend).

Metrics (per tensor, and for the whole selection by pooling the sums, i.e. weighted by
element count):

``mse``          mean of ``e**2`` (units: the weights' units squared);
``mae``          mean of ``|e|`` (units: the weights' units);
``sqnr_db``      ``10·log10(Σx² / Σe²)`` (``inf`` when there is no error);
``rel_frobenius``  ``‖e‖_F / ‖x‖_F``;
``bits_per_weight``  ``8·(bytes of the packed codes + bytes of the statistics) / n``:
                 non-nested statistics are the float32 ``absmax`` (32/B per weight);
                 nested ones the uint8 absmax codes (8/B), the float32 ``nested_absmax``
                 (32/(256·B)) and the float32 offset (32/n); the partial last block and the
                 padding of an odd count are counted as stored.  Scaled layouts: the
                 stored block scales (``absmax``: 1 byte for e4m3/e8m0, 2 for
                 float16/bfloat16) and the rule's per-tensor bytes (e4m3's float32
                 ``tensor_scale``: 32/n).  The code table itself
                 (quant map, ≤ 2**k floats shared by the whole model) is not counted.
                 Vector codebooks (:func:`quantbook.bulk.vq.quantize_vq`): ``ceil(log2 N)``
                 bits per index of P weights plus the stored group scale (16 bits for
                 float16) per ``group`` weights, i.e. ``index_bits/P + 16/group``; the
                 table of points is not counted either.

Vector codebooks (HIGGS grids, ``FILE.json``; :func:`resolve_model_codebooks`) are quantized
in groups along each tensor's last axis with :class:`VQOptions` (group, rms/absmax scale,
float16/float32 scale); every tensor's last dimension must be a multiple of the group.
``rotations`` (:func:`parse_rotations`) adds rows ``LABEL+hadamard[:N]``: the tensor, as rows
along its last axis, is rotated by the randomized Hadamard transform
(:mod:`quantbook.numerics.hadamard`, N by default the largest power of two dividing the last
dimension), quantized, dequantized and rotated back; for a vector codebook this is
``quantize_vq``'s own rotation.  The errors are those of the rotated-back weights, computed
in float64 and rounded to the tensor's dtype where they were rotated back
(:meth:`~quantbook.bulk.vq.VQBackend.unrotate_as`: numpy's rounding on every backend).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..codebooks.blocks import DEFAULT_BLOCK_SIZE, check_block_size
from ..io.progress import progress_bar
from ..io.safetensors import TensorInfo, open_safetensors
from ..io.text import label_width, number
from ..numerics import hadamard
from ..numerics.arguments import check_flag, check_int, check_names, host_array
from ..numerics.fpstate import ignore_underflow
from ..scales import DEFAULT_QMAX, layout_qmax

__all__ = ["ErrorSums", "TensorResult", "ModelReport", "evaluate_model", "storage_bits", "error_sums",
           "sums_where_made", "resolve_scale", "check_backend", "VQOptions", "TensorInputs", "Layout", "BlockLayout",
           "VectorLayout", "make_layout", "resolve_model_codebooks", "is_vector_codebook", "parse_rotations",
           "rotation_size"]


@dataclass
class ErrorSums:
    """Running float64 sums of one codebook's errors; the metrics are properties."""

    n: int = 0
    sse: float = 0.0  # Σ e²
    sae: float = 0.0  # Σ |e|
    sx2: float = 0.0  # Σ x²
    bits: int = 0  # storage bits, codes + statistics

    def add(self, other: "ErrorSums") -> None:
        self.n += other.n
        self.sse += other.sse
        self.sae += other.sae
        self.sx2 += other.sx2
        self.bits += other.bits

    @property
    def mse(self) -> float:
        return self.sse / self.n if self.n else math.nan

    @property
    def mae(self) -> float:
        return self.sae / self.n if self.n else math.nan

    @property
    def sqnr_db(self) -> float:
        if math.isnan(self.sse) or math.isnan(self.sx2):
            return math.nan
        if self.sse == 0:
            return math.inf
        if self.sx2 == 0 or math.isinf(self.sse):
            return -math.inf
        # two logarithms: the ratio itself can underflow to 0 or overflow
        return 10.0 * (math.log10(self.sx2) - math.log10(self.sse))

    @property
    def rel_frobenius(self) -> float:
        return math.sqrt(self.sse / self.sx2) if self.sx2 else (0.0 if self.sse == 0 else math.inf)

    @property
    def bits_per_weight(self) -> float:
        return self.bits / self.n if self.n else math.nan

    def metrics(self) -> dict[str, float]:
        return {"mse": self.mse, "mae": self.mae, "sqnr_db": self.sqnr_db,
                "rel_frobenius": self.rel_frobenius, "bits_per_weight": self.bits_per_weight}


def error_sums(x: np.ndarray, xhat: np.ndarray, sx2: float | None = None) -> ErrorSums:
    """Float64 error sums of host ``xhat`` against host ``x`` of the same shape (bits left 0),
    each in the fixed order of :mod:`quantbook.bulk.sums` (the same numbers on every machine,
    thread count and backend).

    ``sx2`` (``Σx²``) may be passed to reuse it across codebooks.
    """
    from ..bulk.api import host_backend

    be = host_backend()   # any backend's sums are the same bits
    xs, xh = host_array(x, "x"), host_array(xhat, "xhat")
    if xs.shape != xh.shape:   # one size in another shape (a transpose) pairs the wrong values
        raise ValueError(f"x and xhat differ in shape: {xs.shape} and {xh.shape}")
    if sx2 is None:
        sx2 = be.error_sums(xs)[0]
    sse, sae = be.error_sums(xs, xh)
    return ErrorSums(n=int(xs.size), sse=sse, sae=sae, sx2=sx2)


def sums_where_made(x: np.ndarray, xhat: Any, sx2: float, inputs: "TensorInputs | None" = None,
                    dev: Any = None) -> ErrorSums:
    """:func:`error_sums` of ``xhat`` against host ``x`` where ``xhat`` is: a device backend
    ``dev``'s array against ``x``'s copy there (``inputs.on(dev)``, the one upload; without
    ``inputs``, or with another array's (:meth:`TensorInputs.of`), a copy made for this call),
    else on the host.  The same bits either way; only the runs' sums cross."""
    from ..bulk.backend import is_device_array

    if not is_device_array(xhat):
        return error_sums(x, xhat, sx2=sx2)
    if dev is None:   # which device holds xhat is not ours to guess
        raise ValueError("xhat is a device array: pass dev, the device backend that made it")
    x = host_array(x, "x")
    shape = tuple(map(int, xhat.shape))
    if x.shape != shape:   # as on the host: one size in another shape (a transpose) pairs the wrong values
        raise ValueError(f"x and xhat differ in shape: {x.shape} and {shape}")
    sse, sae = dev.error_sums(TensorInputs.of(x, inputs).on(dev), xhat)
    return ErrorSums(n=int(x.size), sse=sse, sae=sae, sx2=sx2)


def _nbytes(a: Any) -> int:
    """Bytes of a host or device array (a GPU's packed codes are counted where they are)."""
    if a is None:
        return 0
    return int(a.nbytes) if hasattr(a, "nbytes") else int(np.asarray(a).nbytes)


def storage_bits(packed: np.ndarray, state: Any) -> int:
    """Bits stored for one quantized tensor, ``quantbook.quantize``'s ``(packed, state)``: packed
    codes + block statistics (see module doc)."""
    from ..bulk.state import QuantState

    if not isinstance(state, QuantState):   # a VQState has no absmax: an AttributeError before
        hint = " (a VQState: its bits_per_weight times the size)" if hasattr(state, "points") else ""
        raise ValueError(f"storage_bits needs quantbook.quantize's QuantState, got {type(state).__name__}{hint}")
    bits = 8 * _nbytes(packed) + 8 * state.absmax_nbytes   # scales still on a GPU stay there
    if getattr(state, "nested", False):
        bits += 8 * _nbytes(state.nested_absmax) + 32  # + float32 offset
    if getattr(state, "scale_rule", None) is not None:
        from ..scales import get_rule

        bits += 8 * get_rule(state.scale_rule).tensor_bytes  # e4m3's float32 tensor scale
    return bits


def resolve_scale(scale: Any, nested: bool, codebooks: Sequence[tuple[str, Any]],
                  qmax: float = DEFAULT_QMAX) -> tuple[str, Any, bool]:
    """``(name, rule for quantize or None, nested)`` of a scale rule spec (None: bitsandbytes'
    float32 absmax, or nested with ``nested``), checked against every ``(label, Codebook)``
    before any work: a ValueError when the layout cannot store one of them."""
    from ..scales import check_qmax, check_scaled_only, get_rule

    rule = get_rule("nested" if nested and scale is None else (scale or "float32"))
    check_scaled_only(rule, qmax=check_qmax(qmax) != DEFAULT_QMAX)
    if rule.layout == "bnb":
        nested = nested or rule.family == "nested"
        return ("nested" if nested else rule.name), None, nested
    if nested:
        raise ValueError(f"--nested is bitsandbytes' layout; it does not combine with scale {rule.name!r}")
    from ..bulk.layouts import scaled_table

    for label, cb in codebooks:
        try:
            scaled_table(cb.code, qmax)
        except ValueError as exc:
            raise ValueError(f"codebook {label!r} with scale {rule.name!r}: {exc}") from None
    return rule.name, rule, False


def is_vector_codebook(cb: Any) -> bool:
    """A vector codebook (a table of points, one index per P weights) rather than a scalar one."""
    return hasattr(cb, "points") and not hasattr(cb, "levels")


def resolve_model_codebooks(specs: str | Sequence[Any], block_size: int = DEFAULT_BLOCK_SIZE) -> list[tuple[str, Any]]:
    """``(label, codebook)`` of a comma-separated string or a sequence: vector codebooks
    (:func:`quantbook.naming.is_vector_spec`, resolved by ``resolve_vector``) and scalar ones
    (``resolve_codebook``, fitted to ``block_size`` where the name asks).  The label is the
    spelling as given, or a codebook object's own name (a string: :func:`quantbook.naming.split_specs`)."""
    from ..naming import is_vector_spec, resolve_codebook, resolve_vector, split_specs

    out = []
    for item in split_specs(specs):
        if isinstance(item, str) and not item.strip():
            continue
        label = item.strip() if isinstance(item, str) else str(getattr(item, "name", item))
        vector = is_vector_codebook(item) or is_vector_spec(item)
        out.append((label, resolve_vector(item) if vector else resolve_codebook(item, block_size)))
    if not out:
        raise ValueError("no codebooks given")
    return out


def parse_rotations(text: str | Sequence[str] | None) -> list[str]:
    """Rotation spellings, e.g. ``"none,hadamard,hadamard:128"`` → ``["none", "hadamard", "hadamard:128"]``."""
    if text is None:
        return ["none"]
    items = [t.strip().lower() for t in check_names(text, "rotations", "none,hadamard")]
    out = []
    for t in items:
        if t == "none" or t == "hadamard":
            out.append(t)
        elif t.startswith("hadamard:"):
            try:
                n = int(t.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"--rotate {t!r}: the Hadamard size must be an integer") from None
            hadamard.check_size(n)
            out.append(f"hadamard:{n}")
        else:
            raise ValueError(f"unknown rotation {t!r} (expected none, hadamard or hadamard:N)")
    if not out or len(set(out)) != len(out):
        raise ValueError(f"rotations must be distinct and at least one, got {text!r}")
    return out


def rotation_size(rotation: str, columns: int) -> int | None:
    """The Hadamard size of a :func:`parse_rotations` spelling for rows of ``columns`` values."""
    if rotation == "none":
        return None
    return hadamard.default_size(columns) if rotation == "hadamard" else int(rotation.split(":")[1])


def row_label(label: str, rotation: str) -> str:
    return label if rotation == "none" else f"{label}+{rotation}"


@dataclass(frozen=True)
class VQOptions:
    """How vector codebooks store a tensor (:func:`quantbook.bulk.vq.quantize_vq`): weights per
    group scale, the scale rule (``rms`` or ``absmax``) and the scale's stored dtype."""

    group: int = 64
    scale: str = "rms"
    scale_dtype: str = "float16"

    def __post_init__(self) -> None:
        from ..bulk.vq_state import SCALE_DTYPES, SCALE_RULES

        check_int(self.group, "the vector group", 1)
        if self.scale not in SCALE_RULES:
            raise ValueError(f"unknown vector scale rule {self.scale!r} (expected {' or '.join(SCALE_RULES)})")
        if self.scale_dtype not in SCALE_DTYPES:
            raise ValueError(f"unknown vector scale dtype {self.scale_dtype!r} "
                             f"(expected {' or '.join(SCALE_DTYPES)})")

    def to_dict(self) -> dict[str, Any]:
        return {"group": int(self.group), "scale": self.scale, "scale_dtype": self.scale_dtype}

    def describe(self) -> str:
        return f"vector groups of {self.group}, {self.scale} {self.scale_dtype} scales"


class TensorInputs:
    """What the rows of one tensor start from, each made once however many rows use it: the
    copy on a backend's device and the Hadamard-rotated rows (one per rotation and backend).
    The codebooks of a tensor then share one upload, and its scalar codebooks one rotation."""

    def __init__(self, x: np.ndarray):
        self.x = x
        self._made: dict[tuple, Any] = {}

    @staticmethod
    def of(x: np.ndarray, inputs: "TensorInputs | None") -> "TensorInputs":
        """``inputs`` when they are ``x``'s (made of this very array), else new ones: another
        tensor's upload and rotations would pair its values with ``x``'s."""
        return inputs if inputs is not None and inputs.x is x else TensorInputs(x)

    def get(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key not in self._made:
            self._made[key] = make()
        return self._made[key]

    def on(self, be: Any) -> Any:
        """``x`` where backend ``be`` works (uploaded once to a device backend)."""
        return self.get(("on", be.name), lambda: be.from_host(np.ascontiguousarray(self.x)))


def _kept_or_host(xhat: Any, x: np.ndarray, be: Any, keep: bool) -> Any:
    """Values a backend (``be``: bulk or vector) made in ``x``'s dtype: left on a device
    backend with ``keep`` (unless a CuPy without bfloat16 gives their bits), else on the host."""
    from ..bulk.backend import dtype_name_of

    if be is None:
        return xhat
    if keep and be.device and dtype_name_of(xhat) == x.dtype.name:
        return xhat
    xhat = be.to_host(xhat)
    if xhat.dtype == np.uint16 and xhat.dtype != x.dtype:   # a CuPy without bfloat16 gives its bits
        xhat = xhat.view(x.dtype)
    return xhat


class Layout:
    """One codebook in the layout that stores it: :meth:`check` refuses a tensor shape before
    any work, :meth:`roundtrip` quantizes and dequantizes one tensor and counts its bits."""

    def check(self, name: str, shape: tuple[int, ...], rotation: str) -> None:
        n = rotation_size(rotation, shape[-1]) if shape else None
        if n is not None and shape[-1] % n:
            raise ValueError(f"tensor {name!r}: the Hadamard size {n} does not divide its last dimension {shape[-1]}")

    def roundtrip(self, x: np.ndarray, rotation: str, backend: str,
                  inputs: TensorInputs | None = None, keep: bool = False) -> tuple[Any, int]:
        """``(xhat, stored bits)``: ``xhat`` in ``x``'s dtype (rotated back, if rotated, in
        float64 and rounded as numpy rounds to it); a host array, or with ``keep`` where a
        device backend made it.  ``inputs``: ``x``'s :class:`TensorInputs`, shared by the rows
        of one tensor."""
        raise NotImplementedError


class BlockLayout(Layout):
    """A scalar codebook through :func:`quantbook.quantize` (block size, nested, scale rule)."""

    def __init__(self, cb: Any, block_size: int, nested: bool = False, rule: Any = None, qmax: float = DEFAULT_QMAX):
        self.cb, self.block_size, self.nested, self.rule, self.qmax = cb, block_size, nested, rule, qmax

    def roundtrip(self, x: np.ndarray, rotation: str, backend: str,
                  inputs: TensorInputs | None = None, keep: bool = False) -> tuple[Any, int]:
        from ..bulk.api import dequantize, quantize
        from ..bulk.backend import get_backend
        from ..bulk.vq import rotation_backend

        n = rotation_size(rotation, x.shape[-1])
        inputs = TensorInputs.of(x, inputs)
        # a named backend gets the tensor where its kernels run (a GPU's memory: one upload for
        # all the tensor's rows; with keep, each row's values stay there to be summed); for the
        # host backends both moves are no-ops.  It rotates there too, with the Hadamard kernels
        # of its vector-quantization namesake.
        be = None if backend == "auto" else get_backend(backend)
        rot = None if n is None else rotation_backend(backend)
        if rot is not None and n is not None:
            hadamard.check_divides(n, x.shape[-1])

            together = be is not None and be.device and rot.device   # rotated where it is quantized

            def rotated():
                # float32 x: the tensor's one upload serves the rotation too (load would upload it again)
                src = inputs.on(be) if together and x.dtype == np.float32 else rot.load(x)
                xr = rot.rotate(src.reshape(-1, n), hadamard.SEED)      # float32
                return xr if be is None or be.device == rot.device else be.from_host(rot.to_host(xr))

            xr = inputs.get(("rotated", n, backend), rotated)
        elif be is None:
            xr = x
        else:
            xr = inputs.on(be)
        packed, state = quantize(xr, codebook=self.cb, block_size=self.block_size, nested=self.nested,
                                 backend=backend, scale=self.rule, qmax=self.qmax)
        with np.errstate(over="ignore"):  # an overflow is reported by the caller, by name
            xhat = dequantize(packed, state, backend=backend)
        bits = storage_bits(packed, state)
        if rot is not None:   # rotated back in float64 and rounded to x's dtype where it was made
            back = rot.unrotate_as(xhat.reshape(-1, n), hadamard.SEED, x.dtype).reshape(x.shape)
            return _kept_or_host(back, x, rot, keep and together), bits
        return _kept_or_host(xhat, x, be, keep), bits


class VectorLayout(Layout):
    """A vector codebook through :func:`quantbook.bulk.vq.quantize_vq` (:class:`VQOptions`)."""

    def __init__(self, cb: Any, options: "VQOptions | None" = None):
        self.cb, self.options = cb, options or VQOptions()

    def check(self, name: str, shape: tuple[int, ...], rotation: str) -> None:
        from ..bulk.vq_state import check_group

        try:
            check_group(self.options.group, int(self.cb.points.shape[1]), shape[-1])
        except ValueError as exc:
            raise ValueError(f"tensor {name!r} (shape {tuple(shape)}): {exc} (choose another group, or "
                             f"select tensors)") from None
        super().check(name, shape, rotation)

    def roundtrip(self, x: np.ndarray, rotation: str, backend: str,
                  inputs: TensorInputs | None = None, keep: bool = False) -> tuple[Any, int]:
        from ..bulk.backend import get_backend
        from ..bulk.vq import dequantize_vq, quantize_vq

        n = rotation_size(rotation, x.shape[-1])
        o = self.options
        # quantize_vq rotates (its rotation is part of the state); with keep, a device backend
        # starts from the tensor's one upload, and the values stay where they are decoded
        be = get_backend(backend) if keep else None
        src = TensorInputs.of(x, inputs).on(be) if be is not None and be.device else x
        idx, state = quantize_vq(src, self.cb, group=o.group, scale=o.scale, scale_dtype=o.scale_dtype,
                                 rotate=None if n is None else f"hadamard:{n}", backend=backend)
        with np.errstate(over="ignore"):
            xhat = dequantize_vq(idx, state, backend=backend)
        bits = state.size // state.dim * state.index_bits + 8 * state.scales.nbytes
        return _kept_or_host(xhat, x, be, keep), bits


def make_layout(cb: Any, block_size: int = DEFAULT_BLOCK_SIZE, nested: bool = False, rule: Any = None,
                qmax: float = DEFAULT_QMAX, vq: "VQOptions | None" = None) -> Layout:
    """The :class:`Layout` of a scalar or vector codebook."""
    if is_vector_codebook(cb):
        return VectorLayout(cb, vq)
    return BlockLayout(cb, block_size, nested, rule, qmax)


def check_backend(backend: Any, codebooks: Sequence[tuple[str, Any]], scaled: bool = False) -> str:
    """The backend that quantizes ``codebooks`` (in a scaled layout with ``scaled``), before
    any work.  ``"auto"`` is the first usable device backend that runs them all (a GPU: the
    host backends' bytes, sooner), else ``"auto"`` (:func:`quantbook.quantize`'s: the host's
    best).  A name is returned as given, or a ValueError when it cannot run here
    (:func:`quantbook.bulk.backend.get_backend`) or has no kernels for a vector codebook among
    ``codebooks`` (it is not also a backend of :mod:`quantbook.bulk.vq`)."""
    from ..bulk.backend import BACKENDS, get_backend
    from ..bulk.vq import vq_backend_names

    vector = any(is_vector_codebook(cb) for _, cb in codebooks)
    if backend == "auto":
        for b in BACKENDS.values():
            if b.device and b.auto and (not vector or b.name in vq_backend_names()) \
                    and (not scaled or b.scaled_layouts) and b.unavailable() is None:
                return b.name
        return "auto"
    if backend in BACKENDS and vector and backend not in vq_backend_names():
        raise ValueError(f"backend {backend!r} does not quantize vector codebooks (those take "
                         f"{', '.join(vq_backend_names())})")
    get_backend(backend)   # an unknown name, or one that cannot run here
    return backend


def check_codebooks(codebooks: Sequence[tuple[str, Any]]) -> None:
    """Labels and codebooks distinct and at least one; scalar codebooks of 1..8 bits (before any work)."""
    from ..codebooks.codebook import Codebook

    if isinstance(codebooks, (str, bytes)) or not isinstance(codebooks, Sequence):
        raise ValueError(f"codebooks must be a list of (label, codebook) pairs, got {type(codebooks).__name__}")
    for item in codebooks:   # names or bare Codebooks failed as an unpacking or attribute error
        ok = isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str) \
            and (isinstance(item[1], Codebook) or is_vector_codebook(item[1]))
        if not ok:
            raise ValueError(f"codebooks must be (label, codebook) pairs such as ('nf4', quantbook.get('nf4')); "
                             f"got {item!r:.80}: a name resolves with quantbook.bulk.resolve_codebook(name, "
                             "block_size), a vector one with quantbook.naming.resolve_vector(name)")
    labels = [label for label, _ in codebooks]
    if not labels:
        raise ValueError("no codebooks given")
    if len(set(labels)) != len(labels):
        raise ValueError(f"codebook listed twice: {', '.join(sorted({l for l in labels if labels.count(l) > 1}))}")
    for i, (label, cb) in enumerate(codebooks):   # two spellings of one codebook (nf4, NF4): the same rows
        twin = next((other for other, cb2 in codebooks[:i] if type(cb2) is type(cb) and cb2 == cb), None)
        if twin is not None:
            raise ValueError(f"codebook listed twice: {twin!r} and {label!r} are the same codebook")
    for label, cb in codebooks:
        if not is_vector_codebook(cb):
            from ..bulk.format import check_bits

            try:
                check_bits(cb.bits)
            except ValueError as exc:
                raise ValueError(f"codebook {label!r} has {cb.bits} bits: {exc}") from None


@dataclass
class TensorResult:
    """One tensor of a :class:`ModelReport`: its error sums per codebook."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    sums: dict[str, ErrorSums]  # codebook label -> sums


@dataclass
class ModelReport:
    """What :func:`evaluate_model` returns: the error sums of each codebook over the whole
    model and per tensor, and the settings they were measured with."""

    path: str
    block_size: int
    nested: bool
    codebooks: list[str]
    totals: dict[str, ErrorSums]
    tensors: list[TensorResult] = field(default_factory=list)
    scale: str = "float32"  # the scale rule's name (quantbook.scales)
    qmax: float = DEFAULT_QMAX  # the scaled layouts' largest code magnitude
    rotations: list[str] = field(default_factory=lambda: ["none"])
    vq: VQOptions | None = None  # how vector codebooks were stored (None: no vector codebook)

    @property
    def scale_text(self) -> str:
        """The scale rule as headers and plot titles name it."""
        return scale_label(self.scale, self.qmax)

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(t.shape, dtype=np.int64)) for t in self.tensors)

    def to_dict(self, per_tensor: bool = False) -> dict[str, Any]:
        per_tensor = check_flag(per_tensor, "per_tensor")

        def clean(m: dict[str, float]) -> dict[str, float | None]:
            return {k: (None if not math.isfinite(v) else v) for k, v in m.items()}

        d: dict[str, Any] = {
            "file": self.path, "block_size": self.block_size, "nested": self.nested, "scale": self.scale,
            "qmax": layout_qmax(self.scale, self.qmax), "tensors": len(self.tensors), "parameters": self.n_params,
            "codebooks": {c: clean(self.totals[c].metrics()) for c in self.codebooks},
        }
        if self.rotations != ["none"]:
            d["rotations"] = list(self.rotations)
        if self.vq is not None:
            d["vq"] = self.vq.to_dict()
        if per_tensor:
            d["per_tensor"] = [
                {"name": t.name, "dtype": t.dtype, "shape": list(t.shape),
                 "codebooks": {c: clean(t.sums[c].metrics()) for c in self.codebooks}}
                for t in self.tensors
            ]
        return d

    def format_table(self, per_tensor: bool = False) -> str:
        per_tensor = check_flag(per_tensor, "per_tensor")
        nt = len(self.tensors)
        head = (f"{self.path}: {nt} tensor{'s' if nt != 1 else ''}, {self.n_params:,} weights, block size "
                f"{self.block_size}, {self.scale_text}")
        if self.vq is not None:
            head += f"; {self.vq.describe()}"
        if self.rotations != ["none"]:
            head += f"; rotations {', '.join(self.rotations)}"
        width = label_width("codebook", self.codebooks)
        # each column's unit in its header: the errors are in the weights' own units
        cols = f"{'MSE weight²':>11}  {'MAE weight':>11}  {'SQNR dB':>8}  {'rel. Frob.':>10}  {'bits/w':>7}"

        def row(label: str, s: ErrorSums, w: int) -> str:
            return (f"{label:<{w}}  {number(s.mse, '>11.4e')}  {number(s.mae, '>11.4e')}  "
                    f"{number(s.sqnr_db, '>8.3f')}  {number(s.rel_frobenius, '>10.5f')}  "
                    f"{number(s.bits_per_weight, '>7.4f')}")

        lines = [head, "", f"{'codebook':<{width}}  {cols}"]
        lines += [row(c, self.totals[c], width) for c in self.codebooks]
        if per_tensor:
            tw = label_width("tensor", (t.name for t in self.tensors))
            for c in self.codebooks:
                lines += ["", f"{c}:", f"{'tensor':<{tw}}  {cols}"]
                lines += [row(t.name, t.sums[c], tw) for t in self.tensors]
        return "\n".join(lines)


def scale_label(scale: str, qmax: float) -> str:
    """How a report's header names its scale rule."""
    if scale == "nested":
        return "nested (double-quantized) absmax"
    if scale == "float32":
        return "float32 absmax"
    return f"{scale} scales (qmax {qmax:g})"


def evaluate_model(path: str, codebooks: Sequence[tuple[str, Any]], block_size: int = DEFAULT_BLOCK_SIZE,
                   nested: bool = False, tensors: str | Iterable[str] | None = None, backend: str = "auto",
                   progress: bool | Callable[[int, int, TensorInfo], None] | None = None,
                   scale: Any = None, qmax: float = DEFAULT_QMAX, rotations: Sequence[str] = ("none",),
                   vq: VQOptions | None = None) -> ModelReport:
    """Quantize every selected floating tensor of ``path`` with each codebook; see the module doc.

    ``codebooks``: ``(label, Codebook)`` pairs.  ``block_size``, ``nested``: the scalar codes'
    layout, as :func:`quantbook.quantize` takes them.  ``tensors``: glob(s) selecting tensors by
    name (default all floating tensors; empty ones are skipped).  ``progress``: ``True`` draws
    a bar on standard error (:mod:`quantbook.io.progress`, needs ``tqdm``), or a callable
    ``progress(i, count, info)`` is called before tensor ``i`` (0-based).  Raises ``ValueError``
    when nothing is selected, a tensor holds NaN/Inf, or a codebook dequantizes a tensor to
    values its dtype cannot hold.  ``scale``/``qmax``: the scale rule (:func:`resolve_scale`;
    ``quantbook.quantize``'s arguments); a layout that cannot store a codebook (the scaled
    layouts take at most 16 entries) is an error before any tensor is read.
    Codebooks may be vector codebooks, stored as ``vq`` says (default :class:`VQOptions`);
    ``rotations``: :func:`parse_rotations` spellings, one row per codebook and rotation
    (labels ``LABEL`` and ``LABEL+hadamard[:N]``).  A tensor shape that a vector group or a
    rotation does not fit is an error before any tensor is read.  ``backend``: ``"auto"``
    (the GPU when one is usable, else the host's best) or a registered name; ``"gpu"``
    quantizes each tensor on the GPU (the same bytes, so the same report), and a backend
    that cannot run here, or cannot run a vector codebook among ``codebooks``, is an error
    before any tensor is read (:func:`check_backend`).
    """
    nested = check_flag(nested, "nested")
    if progress is not None and not callable(progress):
        progress = check_flag(progress, "progress", ", None or a callable")
    if str(path).lower().endswith(".gguf"):
        raise ValueError(f"{path}: a GGUF model's weights are not read here (safetensors only); measure what its "
                         "outputs lose instead: --task lm (quantbook.model.quality.evaluate_quality)")
    if isinstance(path, (str, os.PathLike)) and os.path.isdir(path):
        raise ValueError(f"{path} is a directory; the weights' error is read from one .safetensors file (e.g. its "
                         "model.safetensors); what a model directory's outputs lose is measured by --task lm|embed "
                         "(quantbook.model.quality.evaluate_quality)")
    f = open_safetensors(path)  # the header is parsed once, whatever the number of tensors
    infos = [i for i in f.tensors(tensors) if i.size > 0]  # empty tensors hold no weights
    if not infos:
        raise ValueError(f"{path}: no floating tensors selected{f.left_out(tensors)}")
    check_codebooks(codebooks)  # fail before reading any tensor
    rotations = parse_rotations(rotations)   # a string is one comma-separated spelling, not its letters
    check_block_size(block_size)   # before any tensor rather than at each; the report records it either way
    scalar = [(label, cb) for label, cb in codebooks if not is_vector_codebook(cb)]
    scale_name, rule, nested = resolve_scale(scale, nested, scalar, qmax)
    backend = check_backend(backend, codebooks, scaled=rule is not None)
    vq = (vq or VQOptions()) if len(scalar) < len(codebooks) else None
    rows = [(row_label(label, rot), make_layout(cb, block_size, nested, rule, qmax, vq), rot)
            for rot in rotations for label, cb in codebooks]
    for info in infos:
        for _, layout, rot in rows:
            layout.check(info.name, tuple(info.shape) or (1,), rot)
    labels = [label for label, _, _ in rows]
    totals = {label: ErrorSums() for label in labels}
    results = []
    bar = progress_bar(total=len(infos), desc="evaluating", unit="tensor", force=True) if progress is True else None
    callback = progress if callable(progress) else None
    try:
        for i, info in enumerate(infos):
            if bar is not None:
                bar.step(info.name)
            if callback is not None:
                callback(i, len(infos), info)
            results.append(_evaluate_tensor(f, info, rows, totals, backend))
    except BaseException:
        if bar is not None:
            bar.close(finished=False)
        raise
    if bar is not None:
        bar.close()
    return ModelReport(str(path), block_size, nested, labels, totals, results, scale_name, float(qmax),
                       list(rotations), vq)


@ignore_underflow
def _evaluate_tensor(f, info: TensorInfo, rows, totals, backend) -> TensorResult:
    from ..bulk.api import host_backend
    from ..bulk.backend import get_backend

    path = f.path
    x = f.read(info.name)
    finite = np.isfinite(x)
    if not finite.all():
        bad = int(np.flatnonzero(~finite.ravel())[0])
        raise ValueError(f"{path}: tensor {info.name!r} holds NaN or Inf values (first at flat index {bad})")
    del finite
    sx2 = host_backend().error_sums(x)[0]
    with np.errstate(over="ignore"):
        xq = x.astype(np.float32) if x.dtype == np.float64 else x  # the format scales in float32
    if xq is not x and not np.isfinite(xq).all():
        raise ValueError(f"{path}: tensor {info.name!r} (float64) has values beyond the float32 range")
    if x.ndim == 0:   # quantize takes a dimension; x too, so that the errors pair the same shapes
        # one array when xq is x: the rows' inputs are then x's own, and its upload serves the sums
        x, xq = (x.reshape(1),) * 2 if xq is x else (x.reshape(1), xq.reshape(1))
    dev = None if backend == "auto" else get_backend(backend)
    # a device backend sums where it dequantized, against its copy of x: x itself, unless
    # x is float64 (quantized as float32); the sums are the host's bits either way
    keep = dev is not None and dev.device and xq.dtype == x.dtype
    sums = {}
    inputs = TensorInputs(xq)
    for label, layout, rot in rows:
        try:
            with np.errstate(over="ignore"):  # an overflow is reported below, once, by name
                xhat, bits = layout.roundtrip(xq, rot, backend, inputs, keep=keep)
        except ValueError as exc:  # say which tensor
            raise ValueError(f"{path}: tensor {info.name!r}: {exc}") from None
        s = sums_where_made(x, xhat, sx2, inputs, dev)
        if not math.isfinite(s.sse):
            # x is finite and within float32, so Σe² is finite unless some xhat is not:
            # level·scale beyond the dtype's range, where every error metric would be inf or NaN
            table = layout.cb.points if is_vector_codebook(layout.cb) else layout.cb.levels
            big = float(np.max(np.abs(table)))
            raise ValueError(f"{path}: tensor {info.name!r}: codebook {label!r} dequantizes it to values beyond "
                             f"the {xhat.dtype} range (its largest level magnitude is {big:.6g})")
        s.bits = bits
        sums[label] = s
        totals[label].add(s)
        del xhat
    return TensorResult(info.name, info.dtype, info.shape, sums)
