"""Reading ``.npy`` arrays from untrusted files.

``numpy.load`` trusts the file: an ``.npz`` archive renamed ``.npy`` comes back as an archive
object, and a header claiming 10^12 values is allocated before anything checks it.
:func:`load_npy` reads the magic string and the header first
(:func:`numpy.lib.format.read_magic`, ``read_array_header_1_0`` / ``_2_0``), checks them —
a ``.npy`` file, no Python objects, at most ``max_values`` values, as many data bytes as the
header promises — and only then reads the data.  Every problem is a one-line
:class:`NpyError` naming the file.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..numerics.arguments import is_int
from .files import check_input_file

__all__ = ["NpyError", "load_npy", "DEFAULT_MAX_VALUES"]

#: values read at most by default (2**27: 1 GiB as float64)
DEFAULT_MAX_VALUES = 2**27


#: the longest header read, in bytes: numpy's own limit (``max_header_size``, whose default
#: numpy.lib.format.read_array_header_1_0 and _2_0 apply after reading the header)
MAX_HEADER_BYTES = 10000


class NpyError(ValueError):
    """A file that is not a usable ``.npy`` array, with a one-line reason naming it."""


def load_npy(path: str | os.PathLike, max_values: int | None = DEFAULT_MAX_VALUES) -> np.ndarray:
    """The array stored in the ``.npy`` file ``path``, after checking its header.

    ``max_values``: the most values (elements) accepted, ``None`` for no limit.  Raises
    ``FileNotFoundError`` for a missing file and :class:`NpyError` (a ``ValueError``) for
    anything else: not a ``.npy`` file (an ``.npz`` archive, text), an unsupported format
    version, an object or structured dtype, too many values, or truncated data.
    """
    p = check_input_file(path, NpyError, ".npy file")
    fmt = np.lib.format
    try:
        with open(p, "rb") as f:
            head = f.read(6)
            if head != fmt.MAGIC_PREFIX:
                kind = " (it is a zip archive, e.g. an .npz)" if head[:4] == b"PK\x03\x04" else ""
                raise NpyError(f"{path} is not a .npy file{kind}")
            f.seek(0)
            try:
                version = fmt.read_magic(f)
                if version not in ((1, 0), (2, 0)):  # 3.0 only adds UTF-8 field names (structured dtypes)
                    raise NpyError(f"{path}: .npy format version {version[0]}.{version[1]} is not supported")
                # numpy reads the whole header before it checks its length, and version 2 may claim 4 GiB
                width = 2 if version == (1, 0) else 4
                claim = int.from_bytes(f.read(width), "little")
                if claim > MAX_HEADER_BYTES:
                    raise NpyError(f"{path} is not a valid .npy file (bad header: it claims {claim:,} bytes, more "
                                   f"than the {MAX_HEADER_BYTES:,} numpy reads)")
                f.seek(-width, os.SEEK_CUR)
                read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                # numpy 1.24's hints lack the argument its code takes
                shape, fortran, dtype = read_header(  # type: ignore[call-arg, unused-ignore]
                    f, max_header_size=MAX_HEADER_BYTES)
            except NpyError:
                raise
            except (ValueError, SyntaxError, TypeError, OverflowError, MemoryError, RecursionError) as exc:
                reason = " ".join(str(exc).split())[:160] or type(exc).__name__
                raise NpyError(f"{path} is not a valid .npy file (bad header: {reason})") from None
            if dtype.hasobject:
                raise NpyError(f"{path} holds Python objects, which are not read (allow_pickle is off)")
            if dtype.names is not None or dtype.subdtype is not None:
                raise NpyError(f"{path}: structured or sub-array dtype {dtype} is not supported")
            if not all(is_int(d) and d >= 0 for d in shape):
                raise NpyError(f"{path}: bad shape {shape!r} in the header (dimensions must be integers >= 0)")
            count = math.prod(shape)
            if max_values is not None and count > max_values:
                raise NpyError(f"{path}: the header claims {count:,} values, more than the limit of {max_values:,}")
            need = count * dtype.itemsize
            have = p.stat().st_size - f.tell()
            if have < need:
                raise NpyError(f"{path} is truncated: the header promises {need:,} data bytes, the file holds {have:,}")
            data = np.fromfile(f, dtype=dtype, count=count) if count else np.empty(0, dtype=dtype)
    except OSError as exc:
        raise NpyError(f"cannot read {path}: {exc.strerror or exc}") from None
    if data.size != count:
        raise NpyError(f"{path} is truncated")
    try:
        return data.reshape(shape[::-1]).transpose() if fortran else data.reshape(shape)
    except ValueError:  # an empty array with absurd dimensions
        raise NpyError(f"{path}: bad shape {shape} in the header") from None
