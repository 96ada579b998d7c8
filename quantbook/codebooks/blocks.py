"""The block sizes the byte layouts store (docs/format.md, "Arrays and blocks"): powers of two from
``MIN_BLOCK`` to ``MAX_BLOCK``, ``DEFAULT_BLOCK_SIZE`` where none is given.  Stated here, below
both :mod:`quantbook.bulk` (which stores the blocks) and :mod:`quantbook.export` (whose C
headers describe them), so the two agree.
"""

from __future__ import annotations

from typing import Any

from ..numerics.arguments import is_int

__all__ = ["MIN_BLOCK", "MAX_BLOCK", "DEFAULT_BLOCK_SIZE", "check_block_size", "is_int"]

MIN_BLOCK, MAX_BLOCK = 16, 4096
#: the block size where none is given: of quantize, the exact derivations, the model reports and every
#: command's --block-size (the search-rule fit's recipe keeps NVFP4's 16)
DEFAULT_BLOCK_SIZE = 64


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
