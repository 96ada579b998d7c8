"""What counts as an integer argument and as a True/False flag, for every layer's public
functions: below all of them, so that each reads its arguments by the same rule."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["is_int", "check_flag"]


def is_int(v: Any) -> bool:
    """Whether ``v`` is an integer argument (a block size, a width): a Python or numpy
    integer, not a bool, and not an integral float."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_flag(value: Any, what: str, also: str = "") -> bool:
    """``value`` as a bool: True, False, a numpy bool or the integer 0 or 1; a ValueError
    naming ``what`` (and ``also``, what else the caller takes) otherwise: a string such as
    ``"no"`` is truthy, and would switch it on."""
    if not (isinstance(value, (bool, np.bool_)) or (is_int(value) and value in (0, 1))):
        raise ValueError(f"{what} must be True or False{also}, got {value!r}")
    return bool(value)
