"""Reading model weights from ``.safetensors`` files, one tensor at a time.

Uses the ``safetensors`` package's numpy side (``safe_open(path, framework="numpy")``; no
torch).  numpy has no bfloat16, and safetensors' numpy side refuses ``BF16`` tensors, so
those are read from the file's raw bytes (the format is an 8-byte little-endian header
length, a JSON header with ``dtype``, ``shape`` and ``data_offsets``, then the data) and
viewed as ``ml_dtypes.bfloat16`` — the exact stored values.

Floating tensors are those of dtype F16, BF16, F32 and F64; others (integer position ids,
bool masks, FP8) are skipped by :func:`list_tensors` ``(floating_only=True)``.

Tensor selection: ``globs`` are ``fnmatch`` patterns on tensor names (case-sensitive;
``*`` also crosses dots, ``[0-2]`` is a character class), several separated by commas; a
tensor is selected when it matches any of them.  ``None`` selects every tensor.
"""

from __future__ import annotations

import fnmatch
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

__all__ = ["TensorInfo", "list_tensors", "read_tensor", "iter_tensors", "split_globs", "sample_weights",
           "FLOAT_DTYPES", "STANDARDIZE"]

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}  # bytes per value of the floating dtypes


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # safetensors dtype string: F32, BF16, ...
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def floating(self) -> bool:
        return self.dtype in FLOAT_DTYPES


def _require_file(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such safetensors file: {path}")
    return p


def _header(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError
            (n,) = struct.unpack("<Q", head)
            if n > 100 * 2**20:
                raise ValueError
            meta = json.loads(f.read(n))
        if not isinstance(meta, dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{path} is not a safetensors file (bad header)") from None
    data_size = path.stat().st_size - 8 - n
    for name, entry in meta.items():
        if name != "__metadata__":
            _check_entry(path, name, entry, data_size)
    meta["__data_start__"] = 8 + n
    return meta


def _check_entry(path: Path, name: str, entry: object, data_size: int) -> None:
    """``ValueError`` (one line) unless ``entry`` is a well-formed tensor entry lying inside the file."""
    ok = isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
    shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if ok else (None, None)
    ok = (ok and isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)
          and isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
          and 0 <= offsets[0] <= offsets[1] <= data_size)
    if not ok:
        raise ValueError(f"{path} is not a valid safetensors file: bad or truncated entry for tensor {name!r}")
    width = _ITEMSIZE.get(entry["dtype"])
    count = math.prod(shape)
    if width is not None and offsets[1] - offsets[0] != width * count:
        raise ValueError(f"{path}: tensor {name!r} ({entry['dtype']}, shape {shape}) has "
                         f"{offsets[1] - offsets[0]} bytes, expected {width * count}")


def split_globs(globs: str | Iterable[str] | None) -> list[str] | None:
    """``"a*,b*"`` → ``["a*", "b*"]``; ``None`` / ``""`` / ``"*"`` → ``None`` (everything)."""
    if globs is None:
        return None
    items = [g.strip() for g in (globs.split(",") if isinstance(globs, str) else globs)]
    items = [g for g in items if g]
    if not items or "*" in items:
        return None
    return items


def _selected(name: str, globs: list[str] | None) -> bool:
    return globs is None or any(fnmatch.fnmatchcase(name, g) for g in globs)


def list_tensors(path: str | Path, globs: str | Iterable[str] | None = None,
                 floating_only: bool = True) -> list[TensorInfo]:
    """Tensors of the file (in file order), filtered by ``globs`` and, by default, to floating dtypes."""
    p = _require_file(path)
    meta = _header(p)
    pats = split_globs(globs)
    out = []
    for name, entry in meta.items():
        if name.startswith("__") or not isinstance(entry, dict):
            continue
        info = TensorInfo(name, str(entry.get("dtype")), tuple(int(s) for s in entry.get("shape", ())))
        if (info.floating or not floating_only) and _selected(name, pats):
            out.append((entry.get("data_offsets", [0, 0])[0], info))
    out.sort(key=lambda t: t[0])
    return [info for _, info in out]


def read_tensor(path: str | Path, name: str) -> np.ndarray:
    """One tensor as a numpy array of its stored dtype (bfloat16 via ``ml_dtypes``)."""
    p = _require_file(path)
    meta = _header(p)
    if name not in meta or name.startswith("__"):
        raise KeyError(f"{path} has no tensor {name!r}")
    entry = meta[name]
    dtype = entry.get("dtype")
    shape = tuple(int(s) for s in entry.get("shape", ()))
    if dtype == "BF16":
        try:
            import ml_dtypes
        except ImportError:
            raise ValueError("reading bfloat16 tensors needs the ml_dtypes package: "
                             "pip install 'quantbook[model]'") from None
        count = math.prod(shape)  # _header checked that the entry holds 2·count bytes inside the file
        raw = np.fromfile(p, dtype="<u2", count=count, offset=meta["__data_start__"] + entry["data_offsets"][0])
        return raw.view(ml_dtypes.bfloat16).reshape(shape)
    try:
        from safetensors import safe_open
    except ImportError:
        raise ValueError("reading safetensors files needs the safetensors package: "
                         "pip install 'quantbook[model]'") from None
    try:
        with safe_open(str(p), framework="numpy") as f:
            return f.get_tensor(name)
    except Exception as exc:  # safetensors_rust.SafetensorError and friends: a damaged file
        raise ValueError(f"{path}: cannot read tensor {name!r}: {exc}") from None


def iter_tensors(path: str | Path, globs: str | Iterable[str] | None = None) -> Iterator[tuple[TensorInfo, np.ndarray]]:
    """``(info, array)`` for each selected floating tensor, one at a time (bounded memory)."""
    for info in list_tensors(path, globs):
        yield info, read_tensor(path, info.name)


STANDARDIZE = ("row", "tensor", "none")


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


def _standardized_tensor(path: str | Path, name: str, standardize: str) -> np.ndarray:
    x = read_tensor(path, name)
    if not np.isfinite(x).all():  # NaN would silently zero a row under "row"/"tensor"
        raise ValueError(f"{path}: tensor {name!r} holds NaN or Inf values")
    return _standardized(x, standardize)


def sample_weights(path: str | Path, globs: str | Iterable[str] | None = None, max_samples: int | None = 2**21,
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
    infos = list_tensors(path, globs)
    if not infos:
        what = "" if split_globs(globs) is None else f" matching {','.join(split_globs(globs))}"
        raise ValueError(f"{path} has no floating tensors{what}")
    sizes = np.array([i.size for i in infos], dtype=np.int64)
    total = int(sizes.sum())
    if max_samples is None or total <= max_samples:
        return np.concatenate([_standardized_tensor(path, i.name, standardize).ravel() for i in infos])
    if max_samples < 2:
        raise ValueError(f"max_samples must be at least 2, got {max_samples}")
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
        x = _standardized_tensor(path, info.name, standardize).ravel()
        idx = np.sort(rng.choice(x.size, size=int(k), replace=False))
        parts.append(x[idx])
        del x
    return np.concatenate(parts)
