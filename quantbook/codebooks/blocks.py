"""The block sizes the byte layouts store (docs/format.md, "Arrays and blocks"): powers of two from
``MIN_BLOCK`` to ``MAX_BLOCK``, ``DEFAULT_BLOCK_SIZE`` where none is given.  Stated here, below
both :mod:`quantbook.bulk` (which stores the blocks) and :mod:`quantbook.export` (whose C
headers describe them), so the two agree.

The exact derivations (:mod:`quantbook.derive`) model any block size from 2 to
``MAX_DERIVED_BLOCK_SIZE`` (:func:`check_derived_block_size`): stated here too, below both the
derivations and :mod:`quantbook.naming` (a ``lloyd-...`` name's B), which must not load the
derivation engine to read a name.
"""

from __future__ import annotations

from typing import Any

from ..numerics.arguments import is_int

__all__ = ["MIN_BLOCK", "MAX_BLOCK", "DEFAULT_BLOCK_SIZE", "check_block_size", "is_int", "MAX_DERIVED_BLOCK_SIZE",
           "check_derived_block_size"]

MIN_BLOCK, MAX_BLOCK = 16, 4096
#: the block size where none is given: of quantize, the exact derivations, the model reports and every
#: command's --block-size (the search-rule fit's recipe keeps NVFP4's 16)
DEFAULT_BLOCK_SIZE = 64
#: the largest block size of the exact derivations (their law is computed, not stored: any integer from 2)
MAX_DERIVED_BLOCK_SIZE = 10**7
_DERIVED_RANGE = "between 2 and 10**7"   # as the messages write it


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


def check_derived_block_size(block_size: Any, what: str = "block size", shown: str | None = None) -> int:
    """``block_size`` as an int: an integer from 2 to ``MAX_DERIVED_BLOCK_SIZE``, the exact
    derivations' block sizes; a ValueError naming ``what`` otherwise (``shown``: how to show the
    value given, where it is not the value itself)."""
    if not is_int(block_size):
        raise ValueError(f"{what} must be an integer, got {block_size!r}")
    if not 2 <= block_size <= MAX_DERIVED_BLOCK_SIZE:
        raise ValueError(f"{what} must be {_DERIVED_RANGE}, got {block_size if shown is None else shown}")
    return int(block_size)
