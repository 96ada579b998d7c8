"""Error and warning classes shared by every layer, and :func:`warn`, by which quantbook warns
(this module imports only the standard library)."""

import importlib
import os
import sys
import warnings
from types import FrameType

__all__ = ["NotFoundError", "RoundingEdgeWarning", "warn"]


class NotFoundError(KeyError, ValueError):
    """A name that is not there: a published table, a tensor in a file.  A KeyError, as a
    lookup is, and a ValueError, as bad input is, so the command line reports it as a user
    error; a bare KeyError is a bug."""

    __str__ = BaseException.__str__  # KeyError's own str() would quote the message


class RoundingEdgeWarning(UserWarning):
    """A derived float64 level so close to a float32 rounding edge that the last-digit
    differences of another CPU's exp and log could round it to the neighbouring float32."""


#: the package's own files, and importlib's (quantbook loads its subpackages as they are first
#: used): a warning names the first line outside them
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_IMPORTLIB = os.path.dirname(os.path.abspath(importlib.__file__)) + os.sep


def _bootstrap(frame) -> bool:
    """Whether ``frame`` is one of importlib's bootstrap frames, which ``warnings.warn`` leaves out
    when it counts ``stacklevel`` (its own test)."""
    name = frame.f_code.co_filename
    return "importlib" in name and "_bootstrap" in name


def _passed(frame) -> bool:
    """Whether a warning passes ``frame`` by, to the line that called it."""
    name = frame.f_code.co_filename
    return _bootstrap(frame) or os.path.abspath(name).startswith((_PACKAGE, _IMPORTLIB))


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn(message, category)`` attributed to the line that called into quantbook: the
    innermost frame outside the package and the import machinery (the user's script, a test),
    whichever path through quantbook led here.  The filters (``-W``, ``simplefilter``, the once per
    line of the default action) and the report read that line; a fixed ``stacklevel`` named one of
    quantbook's own lines whenever a warning came through another path (a derivation inside a search,
    a name resolved to a derived codebook, a module that warns as it loads)."""
    frame: FrameType | None = sys._getframe(1)
    level = 2   # stacklevel 2: warn's caller
    while frame is not None and _passed(frame):
        frame = frame.f_back
        while frame is not None and _bootstrap(frame):
            frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
