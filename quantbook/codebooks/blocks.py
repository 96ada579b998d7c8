"""The block sizes the byte layouts store (docs/format.md, "Arrays and blocks"): powers of two from
``MIN_BLOCK`` to ``MAX_BLOCK``, and what counts as an integer argument and as a flag.  Stated here, below
both :mod:`quantbook.bulk` (which stores the blocks) and :mod:`quantbook.export` (whose C
headers describe them), so the two agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MIN_BLOCK", "MAX_BLOCK", "check_block_size", "is_int", "check_flag"]

MIN_BLOCK, MAX_BLOCK = 16, 4096


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


def check_block_size(block_size: Any) -> int:
    """``block_size`` as an int: an integer power of two from ``MIN_BLOCK`` to ``MAX_BLOCK``
    (a ValueError otherwise)."""
    if not is_int(block_size):
        raise ValueError(f"block_size must be an integer power of two from {MIN_BLOCK} to "
                         f"{MAX_BLOCK}, got {block_size!r}")
    b = int(block_size)
    if b < MIN_BLOCK or b > MAX_BLOCK or b & (b - 1):
        raise ValueError(f"block_size must be a power of two from {MIN_BLOCK} to {MAX_BLOCK}, got {b}")
    return b
