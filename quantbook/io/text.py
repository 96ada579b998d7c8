"""Numbers and tables as the command line prints them (the tables of reports too).

A value that is not a finite number is printed as a word: ``inf`` / ``-inf`` where the value
is infinite (the weight-domain MSE of a source without a finite variance, the SQNR of an
error-free quantization), ``undefined`` where it has none (NaN: an SQNR when the signal and the
error are both infinite) — never Python's ``nan`` nor a numpy repr.  ``--json`` writes ``null``
for all of them.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable

__all__ = ["number", "label_width", "UNDEFINED"]

#: how a NaN (a quantity without a value) is printed
UNDEFINED = "undefined"

_ALIGN_WIDTH = re.compile(r"^((?:.?[<>^=])?)[+\- ]?z?#?0?(\d*)")


def number(value: Any, spec: str = "") -> str:
    """``format(value, spec)`` for a finite number; otherwise ``inf``, ``-inf`` or
    :data:`UNDEFINED` (also for ``None``: JSON's null) padded as ``spec`` pads (right-aligned
    unless it says otherwise)."""
    if value is None:
        word = UNDEFINED
    else:
        v = float(value)
        if math.isfinite(v):
            return format(value, spec)
        word = UNDEFINED if math.isnan(v) else ("inf" if v > 0 else "-inf")
    m = _ALIGN_WIDTH.match(spec)
    align, width = m.groups() if m else ("", "")   # each part of the pattern is optional: it matches every spec
    if not width:
        return word
    if not align or align.endswith("="):   # a string cannot pad after its sign
        align = align[:-1] + ">" if align else ">"
    return format(word, f"{align}{width}")


def label_width(header: str, labels: Iterable[str]) -> int:
    """The width of a table's first column: its header's and every label's, so that the columns
    after it line up whatever the names' lengths."""
    return max([len(header), *(len(label) for label in labels)])
