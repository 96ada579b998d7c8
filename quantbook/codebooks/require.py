"""What a function that takes a codebook object says when given something else: a name, the
other kind of codebook (scalar or vector), or any other object.  One check for every helper
below the naming grammar (:mod:`quantbook.naming`, which reads names, sits above them), so each
says the same thing: who refused, what it got, and the call that makes a codebook of a name.
"""

from __future__ import annotations

from typing import Any

from .codebook import Codebook
from .registry import REGISTRY
from .spelling import LLOYD, NF, published_name
from .vector import VectorCodebook

__all__ = ["require_codebook", "name_call"]


def name_call(name: Any, vector: bool = False) -> str:
    """The call that makes the codebook ``name`` names: ``quantbook.get`` for a published
    table (it takes only those), ``quantbook.bulk.resolve_codebook`` for the rest of the scalar
    grammar (it needs the block size a ``lloyd-...`` name leaves out),
    ``quantbook.naming.resolve_vector`` for a published vector grid; a file or an unknown name
    by the kind wanted (``vector``)."""
    from .vector_registry import vector_registry

    text = name if isinstance(name, str) else ""
    if published_name(text, REGISTRY) is not None:
        return f"quantbook.get({name!r})"
    if NF.match(text) or LLOYD.match(text):
        return f"quantbook.bulk.resolve_codebook({name!r}, block_size)"
    if vector or published_name(text, vector_registry()) is not None:
        return f"quantbook.naming.resolve_vector({name!r})"
    return f"quantbook.bulk.resolve_codebook({name!r}, block_size)"


def require_codebook(obj: Any, who: str, vector: bool | None = False) -> Any:
    """``obj`` if it is a :class:`Codebook` (``vector=True``: a :class:`VectorCodebook`;
    ``None``: either), else a one-line TypeError naming ``who``, what it got and, for a name,
    the call that resolves it."""
    kinds = {False: (Codebook,), True: (VectorCodebook,), None: (Codebook, VectorCodebook)}[vector]
    if isinstance(obj, kinds):
        return obj
    want = " or a ".join(k.__name__ for k in kinds)
    if isinstance(obj, (str, bytes)):
        got = f"{obj!r}, a name: {name_call(obj, vector is True)} gives its codebook"
    elif isinstance(obj, (Codebook, VectorCodebook)):
        got = f"the {type(obj).__name__} {obj.name!r}: this takes {'a scalar' if vector is False else 'a vector'} one"
    else:
        got = type(obj).__name__
    raise TypeError(f"{who} needs a {want} object, got {got}")
