"""What a function that takes a codebook object says when given something else: a name, the
other kind of codebook (scalar or vector), or any other object.  One check for every helper
below the naming grammar (:mod:`quantbook.naming`, which reads names, sits above them), so each
says the same thing: who refused, what it got, and the call that makes a codebook of a name
(or, for a name of the other kind, that it is one): :func:`require_codebook` for the export
helpers, :func:`refuse_name` for the derivation layer's functions, which take levels too.
"""

from __future__ import annotations

from typing import Any

from .codebook import Codebook
from .registry import REGISTRY
from .spelling import LLOYD, NF, published_name
from .vector import VectorCodebook

__all__ = ["require_codebook", "refuse_name", "name_call"]


def name_call(name: Any, vector: bool = False) -> str:
    """The call that makes the codebook ``name`` names: ``quantbook.get`` for a published
    table (it takes only those), ``quantbook.bulk.resolve_codebook`` for the rest of the scalar
    grammar (it needs the block size a ``lloyd-...`` name leaves out),
    ``quantbook.naming.resolve_vector`` for a published vector grid; a file or an unknown name
    by the kind wanted (``vector``)."""
    kind = _kind(name)
    if kind is False and published_name(name, REGISTRY) is not None:
        return f"quantbook.get({name!r})"
    if kind is True or (kind is None and vector):
        return f"quantbook.naming.resolve_vector({name!r})"
    return f"quantbook.bulk.resolve_codebook({name!r}, block_size)"


def _kind(name: Any) -> bool | None:
    """True for a published vector grid's name, False for the scalar grammar's (a published
    table, ``nfK``, ``lloyd-...``), None for anything else (a file, an unknown name)."""
    from .vector_registry import vector_registry

    text = name if isinstance(name, str) else ""
    if published_name(text, REGISTRY) is not None or NF.match(text) or LLOYD.match(text):
        return False
    return True if published_name(text, vector_registry()) is not None else None


def _named(name: Any, vector: bool | None) -> str:
    """What a helper wanting a codebook of kind ``vector`` (None: either) says of a name: the
    call that resolves it, unless it names the other kind, which that call would give."""
    kind = _kind(name)
    if vector is not None and kind is not None and kind != vector:
        return (f"the name of a {'vector' if kind else 'scalar'} codebook: this takes a "
                f"{'vector' if vector else 'scalar'} one")
    return f"a name: {name_call(name, vector is True)} gives its codebook"


def refuse_name(codebook: Any, who: str) -> None:
    """The ValueError for a codebook given by name to ``who``, a function that takes a scalar
    Codebook or a sequence of levels (the derivation layer reads no names); nothing for
    anything else."""
    if not isinstance(codebook, (str, bytes)):
        return
    if _kind(codebook) is True:
        raise ValueError(f"{who} needs a Codebook or a sequence of levels, got the string {codebook!r}, "
                         f"{_named(codebook, False)}")
    raise ValueError(f"{who} needs a Codebook (e.g. {name_call(codebook)}) or a sequence of levels, "
                     f"got the string {codebook!r}")


def require_codebook(obj: Any, who: str, vector: bool | None = False) -> Any:
    """``obj`` if it is a :class:`Codebook` (``vector=True``: a :class:`VectorCodebook`;
    ``None``: either), else a one-line TypeError naming ``who``, what it got and, for a name,
    the call that resolves it."""
    kinds = {False: (Codebook,), True: (VectorCodebook,), None: (Codebook, VectorCodebook)}[vector]
    if isinstance(obj, kinds):
        return obj
    want = " or a ".join(k.__name__ for k in kinds)
    if isinstance(obj, (str, bytes)):
        got = f"{obj!r}, {_named(obj, vector)}"
    elif isinstance(obj, (Codebook, VectorCodebook)):
        got = f"the {type(obj).__name__} {obj.name!r}: this takes {'a scalar' if vector is False else 'a vector'} one"
    else:
        got = type(obj).__name__
    raise TypeError(f"{who} needs a {want} object, got {got}")
