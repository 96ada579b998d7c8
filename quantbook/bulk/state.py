"""``QuantState``: everything needed to dequantize a packed array, with bitsandbytes' keys."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, cast

import numpy as np

from ..codebooks.bnb import stored_quant_type
from ..io.versions import check_format_version, stamped
from ..numerics.arguments import bfloat16, host_array, one_line
from ..numerics.reals import real_kind
from ..scales import get_rule
from ..scales.steps import decode_table
from . import format as F
from .nested import dequantize_nested

__all__ = ["QuantState", "DeviceScales", "dtype_name", "dtype_from_name", "first_bad_scale", "check_shape"]

_DTYPE_NAMES = F.DTYPES


def dtype_name(dtype: Any) -> str:
    """``"float32"``, ``"float16"`` or ``"bfloat16"`` (bitsandbytes spells dtypes this way), in
    native byte order: the kernels write a state's output in that order, as quantize reads its
    input (``>f4`` is refused, not decoded as float32 by one backend and as ``>f4`` by another)."""
    dt = np.dtype(dtype)
    if dt.name not in _DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {dt.name}; expected one of {', '.join(_DTYPE_NAMES)}")
    if not dt.isnative:
        raise ValueError(f"unsupported dtype {dt.str} (non-native byte order); expected {dt.name} in native order")
    return dt.name


def dtype_from_name(name: Any) -> np.dtype:
    """numpy dtype from a name such as ``"float16"``, ``"torch.bfloat16"`` or a dtype."""
    if not isinstance(name, str):
        name = getattr(name, "name", None) or str(name)
    name = name.replace("torch.", "")
    if name == "bfloat16":
        return bfloat16()
    if name not in _DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {name!r}; expected one of {', '.join(_DTYPE_NAMES)}")
    return np.dtype(name)


def check_shape(shape: Any, positive: bool = False) -> None:
    """A state's ``shape``: a tuple (``from_dict`` makes one of a stored list) of non-negative
    integers; with ``positive`` (a VQ state reads rows along the last axis) a non-empty tuple of
    positive ones."""
    low = 1 if positive else 0
    if not isinstance(shape, tuple) or (positive and not shape) or not all(F.is_int(s) and s >= low for s in shape):
        what = "a non-empty tuple of positive" if positive else "a tuple of non-negative"
        raise ValueError(f"shape must be {what} integers, got {shape!r}")


def _finite_number(v: Any) -> bool:
    """A state's scalar field (``nested_offset``, ``tensor_scale``) is a finite real number, as
    ``from_dict`` makes it of a stored one (a 0-d array or tensor there, ``format.as_scalar``)."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) \
        and bool(np.isfinite(np.float32(v)))


class DeviceScales:
    """Block scales (float32, or a scale rule's stored values) that a state holds on the device
    that computed them (checked there, or valid by the rule that made them): the host copy is
    made when the state's ``absmax`` is first read, by ``fetch(array)``, and a backend on that
    device reads ``array`` itself meanwhile."""

    __slots__ = ("array", "device", "dtype", "size", "nbytes", "_fetch")

    def __init__(self, array: Any, device: int, fetch: Callable[[Any], np.ndarray]):
        self.array, self.device, self._fetch = array, int(device), fetch
        self.dtype, self.size = np.dtype(array.dtype), int(array.size)
        self.nbytes = self.size * self.dtype.itemsize

    def fetch(self) -> np.ndarray:
        return self._fetch(self.array)


#: one host copy a state, whichever thread reads it first
_FETCH_LOCK = threading.Lock()


def _expect_array(what: str, a: Any, dtype, size: int | None, scales: bool = False) -> np.ndarray:
    if isinstance(a, DeviceScales):   # checked where it was made; its dtype and size still count
        if a.dtype != dtype:
            raise ValueError(f"{what} must be a {np.dtype(dtype).name} array, got {a.dtype}")
        if size is not None and a.size != size:
            raise ValueError(f"{what} has {a.size} entries, expected {size}")
        return cast(np.ndarray, a)
    if not isinstance(a, np.ndarray) or a.dtype != dtype:
        got = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{what} must be a {np.dtype(dtype).name} array, got {got}")
    host_array(a, what)   # refuses a masked entry, which every decode would read through
    if size is not None and a.size != size:
        raise ValueError(f"{what} has {a.size} entries, expected {size}")
    if scales:
        _expect_scales(what, a)
    return a


def _expect_scales(what: str, a: Any, backend: Any = None) -> None:
    bad = first_bad_scale(a, backend)
    if bad is not None:
        host = a if backend is None else backend.to_host(a)
        raise ValueError(f"{what} must hold finite non-negative scales: entry {bad} is "
                         f"{host.reshape(-1)[bad]!r}")


def first_bad_scale(s: Any, backend: Any = None) -> int | None:
    """The index of the first entry of a native float16 or float32 array that is NaN, infinite
    or negative, or None.  The bits of a finite non-negative float lie below those of +inf, so
    one integer maximum clears a good array (numpy's value checks of float16 are slow); only
    an array that fails it (-0.0 included) is checked value by value.  With a ``backend``,
    ``s`` is an array of its kind (float32 scales), cleared where it lives
    (``Backend.scales_finite_nonnegative``) and brought to the host only when that fails."""
    if F.finite_nonnegative_bits(s) if backend is None else backend.scales_finite_nonnegative(s):
        return None
    s = s if backend is None else backend.to_host(s)
    bad = ~(np.isfinite(s) & (s >= 0))
    return int(bad.argmax()) if bad.any() else None


def _entries_good(good: np.ndarray, index: Any) -> bool:
    """Whether every ``good`` entry from the smallest to the largest ``index`` below the sign
    bit, and likewise at or above it, is True: a sufficient test that every block's entry is
    good (a signed rule's codes lie on both sides of the sign bit), in four passes over the
    stored bytes instead of a gather (where ``index`` lives: a host or a device array)."""
    if not index.size:
        return True
    half = 1 << (8 * index.itemsize - 1)
    umin, umax = int(index.min()), int(index.max())
    signed_view = index.view(f"i{index.itemsize}")   # codes at or above the sign bit first
    smin, smax = int(signed_view.min()), int(signed_view.max())
    if umin < half and not good[umin:smax + 1].all():          # codes below the sign bit
        return False
    return not (umax >= half and not good[smin + 2 * half:umax + 1].all())


def exact_array(what: str, v: Any, dtype: Any, expected: str) -> np.ndarray:
    """A contiguous copy of a stored field as ``dtype``, refusing casts that would change its
    values: floats read as integer codes or the reverse, integers (a JSON list, int64) outside
    the unsigned type's range, and floats that do not round-trip (a float64 from JSON is
    taken as float32 or float16 only when it holds such a value exactly)."""
    # at least 1-D, as the array returned is: a scalar compared with it would match no entry
    a, dtype = np.atleast_1d(host_array(v, what)), np.dtype(dtype)
    if dtype.kind == "u":
        if real_kind(a.dtype) not in ("u", "i"):
            raise ValueError(f"{what} must hold {expected}, got dtype {a.dtype}")
        top = np.iinfo(dtype).max
        if a.size and (a.min() < 0 or a.max() > top):
            raise ValueError(f"{what} must hold {expected} (0..{top})")
    elif real_kind(a.dtype) != "f":
        raise ValueError(f"{what} must hold {expected}, got dtype {a.dtype}")
    with np.errstate(over="ignore"):   # a value beyond the type's range is refused below, not warned about
        out = np.ascontiguousarray(a, dtype=dtype)
    if dtype.kind == "f" and a.dtype != dtype:
        back = out.astype(a.dtype)
        if not np.array_equal(back, a, equal_nan=True):
            i = int(np.flatnonzero(~((back == a) | (np.isnan(back) & np.isnan(a))))[0])
            raise ValueError(f"{what} must hold {expected}: its {a.dtype} value {a.reshape(-1)[i].item()!r} "
                             f"(entry {i}) is not one")
    return out


def _array(what: str, v: Any, dtype) -> np.ndarray:
    """A field of the bitsandbytes layout, flat (:func:`exact_array`)."""
    return exact_array(what, v, dtype, f"{np.dtype(dtype).name} values").reshape(-1)


def _stored_array(v: Any, dtype: np.dtype) -> np.ndarray:
    """A scale rule's stored scales, flat (:func:`exact_array`)."""
    return exact_array("absmax", v, dtype, f"{np.dtype(dtype).name} values for this scale rule").reshape(-1)


@dataclass(eq=False)
class QuantState:
    """Quantization state of one array (bitsandbytes' field names).

    ``absmax`` holds one float32 scale per block — or, when ``nested``, the uint8 codes of the
    double-quantized scales (as bitsandbytes stores them); :meth:`absmax_f32` always gives the
    float32 scales used for dequantization.  ``code`` is the index→value table (float32, stored
    order, bitsandbytes' ``quant_map``); ``quant_type`` the codebook's name, or bitsandbytes'
    ``nf4``/``fp4`` for its own tables (:func:`quantbook.codebooks.bnb.bnb_quant_type`);
    ``bits`` the packed width.  Nested fields: ``nested_absmax`` (float32 per 256 blocks), ``nested_quant_map``
    (bitsandbytes' signed dynamic map), ``nested_blocksize`` (256), ``nested_offset`` (the
    float32 mean subtracted before quantizing, as a Python float).  Scaled layout
    (docs/scales.md): ``scale_rule`` (the rule's name; ``absmax`` then holds its stored scales)
    and ``tensor_scale`` (the float32 per-tensor scale of a two-level rule, as a Python float).

    A state that a GPU quantized (any layout but ggml's search) holds a read-only
    ``absmax``: the backend keeps the device array it was copied from, and
    :func:`quantbook.dequantize` on that GPU reads it instead of uploading (and, but for
    nested codes, checking) the host copy again (up to a bound: :mod:`quantbook.bulk.gpu.kept`).
    The block scales (float32, or a scale rule's stored values; not nested codes, nor ggml's
    search) stay on the GPU until ``absmax`` is first read (or the state is pickled or
    copied): :func:`quantbook.quantize` does not wait for them to reach the host, and a state
    dequantized on that GPU and never read on the host never sends them; such a state holds
    their device memory meanwhile.
    To change the scales, assign a new array (``st.absmax = st.absmax.copy()``); that one is
    uploaded and checked as any other.
    """

    absmax: np.ndarray
    shape: tuple[int, ...]
    dtype: np.dtype
    blocksize: int
    code: np.ndarray
    quant_type: str
    bits: int = 4
    nested_absmax: np.ndarray | None = None
    nested_quant_map: np.ndarray | None = None
    nested_blocksize: int | None = None
    nested_offset: float | None = None
    scale_rule: str | None = None
    tensor_scale: float | None = None

    def _held_absmax(self) -> Any:
        """The ``absmax`` field as held: a host array, or :class:`DeviceScales` not yet read."""
        return self.__dict__["_absmax"]

    @property
    def absmax_nbytes(self) -> int:
        """Bytes of the stored ``absmax`` field, without bringing scales held on a GPU to the host."""
        held = self._held_absmax()
        return int(held.nbytes if hasattr(held, "nbytes") else np.asarray(held).nbytes)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled and copied with the host copy of the scales (a device array is not sent along)."""
        _get_absmax(self)   # the host copy, in place of the device's
        return dict(self.__dict__)

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        state = dict(state)
        if "absmax" in state:   # pickled while the field was a plain attribute
            state["_absmax"] = state.pop("absmax")
        self.__dict__.update(state)

    @property
    def nested(self) -> bool:
        """Whether the block scales are stored as nested statistics (``nested_absmax`` is set)."""
        return self.nested_absmax is not None

    @property
    def scaled(self) -> bool:
        """Stored in the scaled layout (docs/scales.md): ``absmax`` holds the rule's stored
        scales, ``code`` the table in the layout's units, ``tensor_scale`` the float32
        per-tensor scale of a two-level rule."""
        return self.scale_rule is not None

    @property
    def size(self) -> int:
        """How many values the array holds (the product of ``shape``)."""
        return math.prod(map(int, self.shape))

    @property
    def n_blocks(self) -> int:
        """How many blocks of ``blocksize`` values the array is stored in (the last may be short)."""
        return F.n_blocks(self.size, self.blocksize)

    def absmax_f32(self) -> np.ndarray:
        """Per-block float32 scales (dequantizing the nested statistics, or decoding the
        scale rule's stored values, if needed)."""
        if self.scaled:
            lookup = self.scale_lookup()
            if lookup is None:
                ts = None if self.tensor_scale is None else np.float32(self.tensor_scale)
                return get_rule(self.scale_rule).decode(self.absmax, ts)
            table, index = lookup
            return table[index]
        if not self.nested:
            return self.absmax
        stats, qmap, blocksize, offset = self._nested_fields()
        return dequantize_nested(self.absmax, stats, np.float32(offset), qmap, blocksize)

    def _nested_fields(self) -> tuple[np.ndarray, np.ndarray, int, float]:
        """``nested_absmax, nested_quant_map, nested_blocksize, nested_offset`` of a nested state,
        which :meth:`_check_fields` holds set together."""
        return cast(tuple[np.ndarray, np.ndarray, int, float],
                    (self.nested_absmax, self.nested_quant_map, self.nested_blocksize, self.nested_offset))

    def scale_lookup(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(table, index)`` with block ``b``'s float32 scale ``table[index[b]]``: the rule's
        decode table (:func:`quantbook.scales.steps.decode_table`) and the stored values' bits,
        for a scaled state whose stored values have at most 16 bits; else None."""
        table = self._decode_table()
        if table is None:
            return None
        return table, self.absmax.view(f"u{self.absmax.dtype.itemsize}")

    def _decode_table(self) -> np.ndarray | None:
        """The table of :meth:`scale_lookup`, without reading the stored values."""
        if self.scale_rule is None:   # not scaled
            return None
        ts = None if self.tensor_scale is None else np.float32(self.tensor_scale)
        return decode_table(self.scale_rule, ts)

    def validate(self) -> "QuantState":
        """Check that the state describes a decodable array; a ValueError names what is wrong.

        A tampered or damaged state must never decode silently to NaN, flipped signs or
        wrapped integers: scales must be finite and non-negative float32, nested codes uint8.
        """
        return self._check_fields()._check_scales()

    def _check_fields(self) -> "QuantState":
        """:meth:`validate` but the values of the per-block scales (the plain layout's absmax,
        a scaled state's stored values), which :meth:`_check_scales` checks."""
        F.check_bits(self.bits)
        # Python ints: a numpy integer block size would carry its width into every count
        # (size // np.int16(64) overflows int16 under numpy 2's rules)
        self.blocksize = F.check_block_size(self.blocksize)
        check_shape(self.shape)
        try:   # np.dtype(None) would be float64
            ok = self.dtype is not None and bool(dtype_name(self.dtype))
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPE_NAMES)} in native byte order, "
                             f"got {self.dtype!r}")
        if not real_kind(host_array(self.code, "code").dtype):
            raise ValueError(f"code must be a table of float32 levels, got {one_line(self.code)}")
        F.check_code_table(self.code, self.bits)
        nb = self.n_blocks
        if self.scaled:
            return self._check_scaled_fields(nb)
        if self.tensor_scale is not None:
            raise ValueError("state has a tensor_scale but no scale_rule")
        if self.nested:
            _expect_array("absmax", self.absmax, np.uint8, nb)
            try:   # the byte format's block sizes: every backend's nested decode takes them
                self.nested_blocksize = F.check_block_size(self.nested_blocksize)
            except ValueError:
                raise ValueError(f"nested_blocksize must be a power of two from {F.MIN_BLOCK} to {F.MAX_BLOCK}, "
                                 f"got {self.nested_blocksize!r}") from None
            _expect_array("nested_absmax", self.nested_absmax, np.float32,
                          F.n_blocks(nb, self.nested_blocksize), scales=True)
            qmap = _expect_array("nested_quant_map", self.nested_quant_map, np.float32, None)
            if qmap.size != 256 or not np.isfinite(qmap).all():
                raise ValueError(f"nested_quant_map must hold 256 finite float32 values, got {qmap.size}")
            if not _finite_number(self.nested_offset):
                raise ValueError(f"nested_offset must be a finite number, got {self.nested_offset!r}")
        else:
            if self.nested_offset is not None or self.nested_quant_map is not None:
                raise ValueError("state has nested fields but no nested_absmax")
            _expect_array("absmax", self._held_absmax(), np.float32, nb)
        return self

    def _check_scaled_fields(self, nb: int) -> "QuantState":
        rule = get_rule(self.scale_rule)
        if rule.layout != "scaled":
            raise ValueError(f"scale_rule {self.scale_rule!r} is not stored in the scaled layout")
        if self.nested_absmax is not None or self.nested_offset is not None:
            raise ValueError("a scaled-layout state has no nested statistics")
        if self.bits != 4:
            raise ValueError(f"the scaled layouts store 4-bit codes, got bits={self.bits}")
        _expect_array("absmax", self._held_absmax(), np.dtype(rule.stored_dtype), nb)
        ts = self.tensor_scale
        if rule.tensor_bytes:
            if not _finite_number(ts) or np.float32(ts) <= 0:
                raise ValueError(f"scale rule {rule.name} needs a tensor_scale that is a positive finite number, "
                                 f"got {ts!r}")
        elif ts is not None:
            raise ValueError(f"scale rule {rule.name} has no tensor scale, got tensor_scale={ts!r}")
        return self

    def _check_scales(self, stored: Any = None, backend: Any = None) -> "QuantState":
        """The values of the per-block scales of a state whose fields :meth:`_check_fields`
        has checked: the plain layout's absmax must be finite and non-negative, a scaled
        state's stored values must decode to valid scales (nested statistics are checked
        with the fields).  ``stored``: the array ``backend`` reads, of its kind — the absmax,
        or a lookup rule's stored bits (:meth:`scale_lookup`) — checked where it lives and
        brought to the host only to name a bad entry; default the host field."""
        held = self._held_absmax() if stored is None else stored
        if self.nested or isinstance(held, DeviceScales):   # those were checked (or made valid by
            return self                                   # the rule) when made, and are the state's alone
        if not self.scaled:
            _expect_scales("absmax", held, backend)
            return self
        rule = get_rule(self.scale_rule)

        def valid(v: np.ndarray) -> np.ndarray:
            return np.isfinite(v) & ((v >= 0) | rule.signed)

        lookup = self.scale_lookup()
        if lookup is None:
            ok = valid(self.absmax_f32())
        else:   # the decode table's entries, and the blocks one by one only when a bad entry
            table, index = lookup   # lies within the stored values' ranges
            index = index if stored is None else stored
            good = valid(table)
            if _entries_good(good, index):
                return self
            ok = good[index if stored is None else backend.to_host(index)]
        if ok.size and not ok.all():
            bad = int(np.flatnonzero(~ok)[0])
            what = "non-finite" if rule.signed else "negative or non-finite"
            raise ValueError(f"absmax entry {bad} ({self.absmax[bad]!r}) decodes to a {what} "
                             f"{rule.name} scale")
        return self

    # --------------------------------------------------------------- (de)serialise
    def as_dict(self) -> dict[str, Any]:
        """Dict with bitsandbytes' keys (numpy arrays, str dtypes, tuple shape).

        Keys: ``quant_type, absmax, blocksize, quant_map, dtype, shape`` and, when nested,
        ``nested_absmax, nested_blocksize, nested_quant_map, nested_dtype, nested_offset``.
        ``bits`` is added only when it is not 4 (bitsandbytes has no such key), and with it or a
        scale rule the format's version (:mod:`quantbook.io.versions`, checked by :meth:`from_dict`).
        The fields are checked first (:meth:`validate` but the scales' values): a state put together by hand
        gets one line naming a bad field, not an error from inside the conversion.
        """
        self._check_fields()
        d: dict[str, Any] = {
            "quant_type": self.quant_type,
            "absmax": self.absmax,
            "blocksize": int(self.blocksize),
            "quant_map": self.code,
            "dtype": dtype_name(self.dtype),
            "shape": tuple(int(s) for s in self.shape),
        }
        if self.nested:
            stats, qmap, blocksize, offset = self._nested_fields()
            d.update(
                nested_absmax=stats,
                nested_blocksize=int(blocksize),
                nested_quant_map=qmap,
                nested_dtype="float32",
                nested_offset=float(offset),
            )
        if self.bits != 4:
            d["bits"] = int(self.bits)
        if self.scaled:
            d["scale_rule"] = self.scale_rule
            if self.tensor_scale is not None:
                d["tensor_scale"] = float(self.tensor_scale)
        # bitsandbytes' own layout is bitsandbytes' format, and its from_dict refuses any key it
        # does not know; a state with quantbook's keys, which bitsandbytes cannot read, says its version
        return d if self.bits == 4 and not self.scaled else stamped(d, "quantization state")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "QuantState":
        """Inverse of :meth:`as_dict`; also accepts bitsandbytes' unpacked ``as_dict()``
        (torch tensors, ``"torch.float16"``-style dtypes).  A ``quant_type`` that names a
        bitsandbytes type the stored table is not is read as ``custom-`` before it
        (:func:`quantbook.codebooks.bnb.stored_quant_type`)."""
        if not isinstance(d, Mapping):
            raise ValueError("QuantState.from_dict needs a mapping")
        check_format_version(d, "quantization state", ValueError, F.as_scalar)
        missing = [k for k in ("absmax", "blocksize", "quant_map", "dtype", "shape") if k not in d]
        if missing:
            raise ValueError(f"quant state lacks {', '.join(missing)}")
        nested = "nested_absmax" in d
        if nested:
            miss = [k for k in ("nested_blocksize", "nested_quant_map", "nested_offset") if k not in d]
            if miss:
                raise ValueError(f"nested quant state lacks {', '.join(miss)}")
        try:
            bits = F.as_int(d.get("bits", 4))
            blocksize = F.as_int(d["blocksize"])
            shape = tuple(F.as_int(v) for v in d["shape"])
        except (TypeError, ValueError):
            raise ValueError(f"quant state: bits, blocksize and shape must be integers, got bits="
                             f"{one_line(d.get('bits', 4))}, blocksize={one_line(d['blocksize'])}, "
                             f"shape={one_line(d['shape'])}") from None
        scale_rule = F.as_scalar(d.get("scale_rule"))
        rule = get_rule(scale_rule) if scale_rule is not None else None
        if rule is not None:
            absmax = _stored_array(d["absmax"], np.dtype(rule.stored_dtype))
        else:
            absmax = _array("absmax", d["absmax"], np.uint8 if nested else np.float32)
        code = _array("quant_map", d["quant_map"], np.float32)
        st = cls(
            absmax=absmax,
            shape=shape,
            dtype=dtype_from_name(d["dtype"]),
            blocksize=blocksize,
            code=code,
            quant_type=stored_quant_type(str(d.get("quant_type") or "custom"), code, layout_bnb=rule is None),
            bits=bits,
        )
        if rule is not None:
            st.scale_rule = rule.name
            st.tensor_scale = F.as_scalar(d.get("tensor_scale"))
        if nested:
            st.nested_absmax = _array("nested_absmax", d["nested_absmax"], np.float32)
            st.nested_quant_map = _array("nested_quant_map", d["nested_quant_map"], np.float32)
            try:
                st.nested_blocksize = F.as_int(d["nested_blocksize"])
            except (TypeError, ValueError):
                raise ValueError(f"quant state: nested_blocksize must be an integer, got "
                                 f"{one_line(d['nested_blocksize'])}") from None
            st.nested_offset = F.as_scalar(d["nested_offset"])
        return st.validate()

    def __repr__(self) -> str:
        nest = f", nested (offset={self.nested_offset:.6g})" if self.nested else ""
        if self.scaled:
            nest = f", scale {self.scale_rule}"
        return (f"QuantState({self.quant_type}, bits={self.bits}, shape={self.shape}, "
                f"dtype={dtype_name(self.dtype)}, blocksize={self.blocksize}, "
                f"blocks={self.n_blocks}{nest})")


def _get_absmax(self: QuantState) -> np.ndarray:
    """One float32 scale a block, the uint8 codes of nested statistics, or a scale rule's stored
    values (see the class); scales still on the GPU that made them come to the host on this read."""
    held = self._held_absmax()
    if isinstance(held, DeviceScales):
        with _FETCH_LOCK:
            held = self._held_absmax()
            if isinstance(held, DeviceScales):
                held = self.__dict__["_absmax"] = held.fetch()
    return held


def _set_absmax(self: QuantState, value: Any) -> None:
    self.__dict__["_absmax"] = value


# a property over the dataclass field: its __init__ and dataclasses.replace go through the setter
setattr(QuantState, "absmax", property(_get_absmax, _set_absmax))
