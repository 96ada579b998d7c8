"""The spelled forms of derived tables in :mod:`quantbook.naming`'s grammar, ``nfK`` and
``lloyd-LOSS[-B][-Kbit][-normalized][@SOURCE]``: read there, written by the derivations
(which sit below naming), so that a derived table is named as naming reads it back."""

from __future__ import annotations

import re
from typing import Any, Iterable

__all__ = ["LLOYD", "NF", "lloyd_spelling", "published_name"]

# digits are matched loosely and checked by the reader, so that an out-of-range number gets
# its own message instead of "unknown codebook"
LLOYD = re.compile(r"^lloyd-(?P<loss>l[12])(?:-(?P<B>\d+))?(?:-(?P<k>\d+)bits?)?(?P<norm>-normali[sz]ed)?"
                   r"(?:@(?P<src>.*))?$", re.IGNORECASE | re.DOTALL)
NF = re.compile(r"^nf(?P<k>\d+)$", re.IGNORECASE)


def published_name(text: Any, names: Iterable[str]) -> str | None:
    """The one of ``names`` (a registry's, lower case) that ``text`` spells: itself, else the
    only one equal to it ignoring case (``NF4`` is ``nf4``, as the grammar's keywords are); None
    for anything else.  The one rule for published names, scalar and vector."""
    if not isinstance(text, str):
        return None
    names = list(names)
    if text in names:
        return text
    folded = [name for name in names if name.lower() == text.lower()]
    return folded[0] if len(folded) == 1 else None


def lloyd_spelling(loss: str, block_size: int, bits: int, domain: str, source: str,
                   default_bits: int, default_source: str) -> str:
    """The shortest ``lloyd-…`` spelling of these options (the others at their defaults):
    what a name leaves out is the derivation's default."""
    return (f"lloyd-{loss}-{block_size}" + ("" if bits == default_bits else f"-{bits}bit")
            + ("-normalized" if domain == "normalized" else "")
            + ("" if source == default_source else f"@{source}"))
