"""Reading model weights from ``.safetensors`` files, one tensor at a time.

The format: an 8-byte little-endian header length ``n``, a JSON header of ``n`` bytes mapping
each tensor name to its ``dtype``, ``shape`` and ``data_offsets`` (begin, end; relative to
the end of the header), then the data, little-endian and C-ordered.  (Format description:
huggingface/safetensors, README.md.)  The header is parsed **once** per
:class:`SafetensorsFile`; each tensor is then read straight from its byte range with numpy,
so reading every tensor of a file costs one header parse however many tensors it holds.
``BF16`` and the ``F8_*`` dtypes are viewed as ``ml_dtypes`` types — the exact stored values.

The header is untrusted: its length, JSON nesting, entries, shapes and byte ranges are
checked (every tensor must lie inside the file and hold exactly ``itemsize·count`` bytes)
before anything is read; a bad file is a one-line :class:`SafetensorsError` naming it.

Floating tensors are those of dtype F16, BF16, F32 and F64; others (integer position ids,
bool masks, FP8) are skipped by :func:`list_tensors` ``(floating_only=True)``.

Tensor selection: ``globs`` are ``fnmatch`` patterns on tensor names (case-sensitive;
``*`` also crosses dots, ``[0-2]`` is a character class), several separated by commas; a
tensor is selected when it matches any of them.  ``None`` selects every tensor.

Every function taking ``path`` also takes an open :class:`SafetensorsFile`, which reuses
its parsed header.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Union

import numpy as np

from ..errors import NotFoundError
from ..numerics.arguments import check_int, check_names, did_you_mean
from ..numerics.fpstate import ignore_underflow
from .files import check_input_file, check_input_path

__all__ = ["SafetensorsError", "SafetensorsFile", "TensorInfo", "open_safetensors", "list_tensors",
           "read_tensor", "iter_tensors", "split_globs", "sample_weights", "FLOAT_DTYPES", "STANDARDIZE",
           "MAX_HEADER_BYTES"]

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")

#: the largest header accepted (the safetensors library's own limit is 100 MB)
MAX_HEADER_BYTES = 100 * 2**20
_MAX_NDIM = 32  # numpy 1.x's limit on array dimensions

# safetensors dtype -> (numpy dtype string or ml_dtypes name, bytes per value)
_DTYPES = {
    "BOOL": ("|b1", 1), "U8": ("|u1", 1), "I8": ("|i1", 1), "U16": ("<u2", 2), "I16": ("<i2", 2),
    "U32": ("<u4", 4), "I32": ("<i4", 4), "U64": ("<u8", 8), "I64": ("<i8", 8),
    "F16": ("<f2", 2), "F32": ("<f4", 4), "F64": ("<f8", 8),
    "BF16": ("bfloat16", 2), "F8_E4M3": ("float8_e4m3fn", 1), "F8_E5M2": ("float8_e5m2", 1),
}


class SafetensorsError(ValueError):
    """A file that is not a readable safetensors file, with a one-line reason naming it."""


@dataclass(frozen=True)
class TensorInfo:
    """A tensor of a ``.safetensors`` file as its header describes it."""

    name: str
    dtype: str  # safetensors dtype string: F32, BF16, ...
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def floating(self) -> bool:
        return self.dtype in FLOAT_DTYPES


@dataclass(frozen=True)
class _Entry:
    info: TensorInfo
    begin: int  # absolute file offsets of the data
    end: int


def _parse_header(path: Path) -> tuple[dict, int, int]:
    """``(header dict, header length, file size)``: the one place the JSON header is read."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise SafetensorsError(f"{path} is not a safetensors file (bad header: shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise SafetensorsError(f"{path} is not a safetensors file (bad header: its length {n} "
                                       f"exceeds the {'file' if n <= MAX_HEADER_BYTES else 'limit'})")
            raw = f.read(n)
    except OSError as exc:
        raise SafetensorsError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        meta = json.loads(raw)
    except RecursionError:
        raise SafetensorsError(f"{path} is not a safetensors file (bad header: JSON nested too deeply)") from None
    except (ValueError, UnicodeDecodeError):  # JSONDecodeError, over-long integers
        raise SafetensorsError(f"{path} is not a safetensors file (bad header)") from None
    if not isinstance(meta, dict):
        raise SafetensorsError(f"{path} is not a safetensors file (bad header: not a JSON object)")
    return meta, n, size


def _entry(path: Path, name: str, entry: object, data_start: int, data_size: int) -> _Entry:
    """The checked entry of tensor ``name`` (``SafetensorsError`` unless it lies inside the file)."""
    bad = f"{path} is not a valid safetensors file: bad or truncated entry for tensor {name!r}"
    if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)):
        raise SafetensorsError(bad)
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and len(shape) <= _MAX_NDIM
            and all(type(s) is int and s >= 0 for s in shape)
            and math.prod(max(s, 1) for s in shape) < 2**60  # numpy cannot even shape an empty array beyond
            and isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] <= data_size):
        raise SafetensorsError(bad)
    dtype = entry["dtype"]
    width = _DTYPES[dtype][1] if dtype in _DTYPES else None
    count = math.prod(shape)
    if width is not None and offsets[1] - offsets[0] != width * count:
        raise SafetensorsError(f"{path}: tensor {name!r} ({dtype}, shape {shape}) has "
                               f"{offsets[1] - offsets[0]} bytes, expected {width * count}")
    return _Entry(TensorInfo(name, dtype, tuple(shape)), data_start + offsets[0], data_start + offsets[1])


def _numpy_dtype(dtype: str, path: Path, name: str) -> np.dtype:
    spec = _DTYPES.get(dtype)
    if spec is None:
        raise SafetensorsError(f"{path}: tensor {name!r} has dtype {dtype!r}, which cannot be read")
    if spec[0][0] not in "<|":  # an ml_dtypes type: numpy has no bfloat16 / float8 of its own
        try:
            import ml_dtypes
        except ImportError:
            raise SafetensorsError(f"reading {dtype} tensors needs the ml_dtypes package: "
                                   "pip install 'quantbook[model]'") from None
        return np.dtype(getattr(ml_dtypes, spec[0]))
    return np.dtype(spec[0])


class SafetensorsFile:
    """A safetensors file whose header has been parsed and checked (once)."""

    def __init__(self, path: str | os.PathLike) -> None:
        p = check_input_path(path, "safetensors file")   # every reader opens the file here
        if os.path.isdir(p):   # Path.is_dir raises for a name too long: check_input_file says so
            raise ValueError(f"{path} is a directory, not a safetensors file (a model directory holds its "
                             "weights in one, e.g. its model.safetensors)")
        check_input_file(p, SafetensorsError, "safetensors file")
        meta, n, size = _parse_header(p)
        self.path = p
        self.metadata = meta.get("__metadata__") if isinstance(meta.get("__metadata__"), dict) else {}
        data_start = 8 + n
        entries = [_entry(p, name, e, data_start, size - data_start)
                   for name, e in meta.items() if name != "__metadata__"]
        entries.sort(key=lambda e: e.begin)  # file order
        self._entries = {e.info.name: e for e in entries}

    def __repr__(self) -> str:
        return f"SafetensorsFile({str(self.path)!r}, {len(self._entries)} tensors)"

    def tensors(self, globs: str | Iterable[str] | None = None, floating_only: bool = True) -> list[TensorInfo]:
        """Tensors in file order, filtered by ``globs`` and, by default, to floating dtypes."""
        pats = split_globs(globs)
        return [e.info for e in self._entries.values()
                if (e.info.floating or not floating_only) and _selected(e.info.name, pats)]

    def left_out(self, globs: str | Iterable[str] | None = None) -> str:
        """Why :meth:`tensors` may be empty: the dtypes of the selected tensors it leaves out,
        as ``" (left out: 2 F8_E4M3, 1 I64; read: F16, BF16, F32, F64)"``, or ``""``."""
        counts: dict[str, int] = {}
        for t in self.tensors(globs, floating_only=False):
            if not t.floating:
                counts[t.dtype] = counts.get(t.dtype, 0) + 1
        if not counts:
            return ""
        return (f" (left out: {', '.join(f'{n} {d}' for d, n in sorted(counts.items()))}; "
                f"read: {', '.join(FLOAT_DTYPES)})")

    def read(self, name: str) -> np.ndarray:
        """One tensor as a numpy array of its stored dtype (bfloat16 via ``ml_dtypes``)."""
        entry = self._entries.get(name)
        if entry is None:
            raise NotFoundError(f"{self.path} has no tensor {name!r}{did_you_mean(name, self._entries)}")
        info = entry.info
        dtype = _numpy_dtype(info.dtype, self.path, name)
        count = info.size  # checked: the entry holds exactly itemsize·count bytes inside the file
        if count == 0:
            return np.empty(info.shape, dtype=dtype)
        try:
            raw = np.fromfile(self.path, dtype=dtype, count=count, offset=entry.begin)
        except (OSError, ValueError) as exc:
            raise SafetensorsError(f"{self.path}: cannot read tensor {name!r}: {exc}") from None
        if raw.size != count:  # the file shrank since its header was read
            raise SafetensorsError(f"{self.path}: tensor {name!r} is truncated")
        return raw.reshape(info.shape)

    def iter(self, globs: str | Iterable[str] | None = None) -> Iterator[tuple[TensorInfo, np.ndarray]]:
        """``(info, array)`` for each selected floating tensor, one at a time (bounded memory)."""
        for info in self.tensors(globs):
            yield info, self.read(info.name)


Source = Union[str, os.PathLike, SafetensorsFile]


def open_safetensors(path: Source) -> SafetensorsFile:
    """``path`` opened (header parsed and checked), or an open file passed through."""
    return path if isinstance(path, SafetensorsFile) else SafetensorsFile(path)


def split_globs(globs: str | Iterable[str] | None) -> list[str] | None:
    """``"a*,b*"`` → ``["a*", "b*"]``; ``None`` or a ``"*"`` among them → ``None``
    (everything); a spelling with no pattern at all (``""``, ``","``) is a ValueError, not
    everything."""
    if globs is None:
        return None
    items = [g.strip() for g in check_names(globs, "globs", "a*,b*")]
    items = [g for g in items if g]
    if not items:
        raise ValueError(f"no tensor name pattern in {globs!r} (give GLOB[,GLOB...], or * for every tensor)")
    if "*" in items:
        return None
    return items


def _selected(name: str, globs: list[str] | None) -> bool:
    return globs is None or any(fnmatch.fnmatchcase(name, g) for g in globs)


def list_tensors(path: Source, globs: str | Iterable[str] | None = None,
                 floating_only: bool = True) -> list[TensorInfo]:
    """Tensors of the file (in file order), filtered by ``globs`` and, by default, to floating dtypes."""
    return open_safetensors(path).tensors(globs, floating_only)


def read_tensor(path: Source, name: str) -> np.ndarray:
    """One tensor as a numpy array of its stored dtype.  Reading many: open the file once
    (:func:`open_safetensors`) and pass it, rather than a path each time."""
    return open_safetensors(path).read(name)


def iter_tensors(path: Source, globs: str | Iterable[str] | None = None) -> Iterator[tuple[TensorInfo, np.ndarray]]:
    """``(info, array)`` for each selected floating tensor, one at a time (bounded memory)."""
    return open_safetensors(path).iter(globs)


STANDARDIZE = ("row", "tensor", "none")


@ignore_underflow
def _standardized(x: np.ndarray, standardize: str) -> np.ndarray:
    """``x`` (float64) divided by the RMS of its rows (last axis), of the whole tensor, or not at all.

    An all-zero row or tensor is left as zeros.
    """
    x = np.asarray(x, dtype=np.float64)
    if standardize == "none" or x.size == 0:
        return x
    if standardize == "tensor" or x.ndim < 2:
        r = math.sqrt(float(np.mean(x * x)))
        return x / r if r > 0 else x
    r = np.sqrt(np.mean(x * x, axis=-1, keepdims=True))
    return np.divide(x, r, out=np.zeros_like(x), where=r > 0)


def _standardized_tensor(f: SafetensorsFile, name: str, standardize: str) -> np.ndarray:
    x = f.read(name)
    if not np.isfinite(x).all():  # NaN would silently zero a row under "row"/"tensor"
        raise SafetensorsError(f"{f.path}: tensor {name!r} holds NaN or Inf values")
    with np.errstate(over="raise"):
        try:
            return _standardized(x, standardize)
        except FloatingPointError:  # x*x beyond float64: the RMS cannot be formed
            raise SafetensorsError(f"{f.path}: tensor {name!r} has values too large to standardise") from None


def sample_weights(path: Source, globs: str | Iterable[str] | None = None, max_samples: int | None = 2**21,
                   seed: int = 0, standardize: str = "none") -> np.ndarray:
    """The selected floating tensors' values as one float64 1-D array.

    ``standardize``: ``"none"`` (the stored values), ``"tensor"`` (each tensor divided by its
    RMS) or ``"row"`` (each row — last axis — divided by its RMS; 1-D tensors as a whole).
    All values, concatenated in file order, when there are at most ``max_samples`` (or
    ``max_samples`` is None); otherwise a uniform sample without replacement of exactly
    ``max_samples`` values: tensor ``i`` (``n_i`` values of ``N``) contributes
    ``max_samples·n_i/N`` values (largest-remainder rounding), drawn with
    ``numpy.random.default_rng(seed)`` — the same file, globs and seed give the same sample.
    Only one tensor is in memory at a time.  NaN or Inf values are a ``ValueError``.
    """
    if standardize not in STANDARDIZE:
        raise ValueError(f"standardize must be one of {', '.join(STANDARDIZE)}, got {standardize!r}")
    check_int(seed, "seed", 0)   # checked even where every value is kept and no draw is made
    if max_samples is not None:
        check_int(max_samples, "max_samples", 2, also=" or None")
    f = open_safetensors(path)
    infos = f.tensors(globs)
    if not infos:
        patterns = split_globs(globs)
        what = "" if patterns is None else f" matching {','.join(patterns)}"
        raise ValueError(f"{f.path} has no floating tensors{what}{f.left_out(globs)}")
    sizes = np.array([i.size for i in infos], dtype=np.int64)  # each at most the file's size
    total = int(sizes.sum())
    if max_samples is None or total <= max_samples:
        return np.concatenate([_standardized_tensor(f, i.name, standardize).ravel() for i in infos])
    share = sizes * (max_samples / total)
    take = np.floor(share).astype(np.int64)
    rest = max_samples - int(take.sum())
    if rest:
        order = np.argsort(-(share - take), kind="stable")[:rest]
        take[order] += 1
    rng = np.random.default_rng(seed)
    parts = []
    for info, k in zip(infos, take):
        if k == 0:
            continue
        x = _standardized_tensor(f, info.name, standardize).ravel()
        idx = np.sort(rng.choice(x.size, size=int(k), replace=False))
        parts.append(x[idx])
        del x
    return np.concatenate(parts)
