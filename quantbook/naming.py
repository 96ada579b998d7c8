"""Names of codebooks: one grammar for the Python API and the command line.

Grammar (published names, keywords and the ``.json`` suffix case-insensitive, as
:func:`quantbook.get` reads names; ``resolve_codebooks`` takes a comma-separated list)::

    SPEC   := NAME                 a registry entry (`quantbook list`), e.g. nf4, af4, iq4_nl
            | PATH.json            a codebook file (`quantbook export ... --format json`)
            | nfK                  NormalFloat with K = 2..8 bits: bitsandbytes' float32 table
                                   for K = 4 (the registry's nf4), float64 quantiles otherwise
            | lloyd-LOSS[-B][-Kbit][-normalized][@SOURCE]
    LOSS   := l1 | l2              expected absolute / squared error
    B      := the block size the table is fitted for, 2 .. MAX_BLOCK_SIZE (default: the
              ``block_size`` argument; ``plot-sweep`` re-derives it at every block size)
    K      := bits, 2..8 (default 4; a 1-bit table cannot keep the fixed -1, 0, +1)
    -normalized  minimise the error of the normalised values y = x/absmax instead of the
              error of the weights, absmax·(y - q) (the engine's default "weight" domain)
    SOURCE := any source spelling of the derivation engine (default normal), e.g. laplace,
              student-t:5, FILE.npy, FILE.safetensors:GLOBS

``lloyd-l2-64`` is the 4-bit table minimising the expected squared error of the weights of
absmax-normalised N(0,1) blocks of 64, with the engine's default fixed levels (-1, 0 and +1
under absmax, as NF4 and AF4 keep); ``lloyd-l1-64-normalized`` minimises the expected
absolute error of the normalised values, AF4's criterion.  Everything a shorthand does not
say is left to :func:`quantbook.derive.lloyd`'s defaults, so the two cannot disagree.
Derived tables are cached for the process and named in full (``lloyd-l2`` at B = 64 is
``lloyd-l2-64``).  The derivations name their tables in this grammar wherever it can say
them (:mod:`quantbook.codebooks.spelling` holds the spelled forms), so a derived table's
name resolves back to it.

Vector codebooks (one index per group of P weights, :mod:`quantbook.codebooks.vector`) have
their own, separate grammar, read by :func:`resolve_vector`::

    VSPEC  := NAME                 a published vector grid, e.g. higgs-2d-256, higgs-1d-16
            | PATH.json            a file holding ``"kind": "vector"`` (``derive vq --json``)

A path object (:class:`os.PathLike`) always names a file, whatever its suffix, never a name:
``Path("nf4")`` is the file ``nf4``, as :func:`quantbook.load` reads it.

:func:`is_vector_spec` tells the two grammars apart.  The derivation engine is imported only when a
derived name is asked for, so resolving a registry name or a file stays light.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .codebooks.blocks import DEFAULT_BLOCK_SIZE, MAX_DERIVED_BLOCK_SIZE, check_derived_block_size
from .codebooks.codebook import Codebook, CodebookError
from .codebooks.spelling import LLOYD as _LLOYD, NF as _NF, published_name
from .errors import NotFoundError
from .numerics.arguments import did_you_mean

if TYPE_CHECKING:   # loaded where a vector codebook is named
    from .codebooks.vector import VectorCodebook

__all__ = ["resolve_codebook", "resolve_codebooks", "split_specs", "depends_on_block_size", "UnknownCodebookError",
           "GRAMMAR", "MAX_BLOCK_SIZE", "resolve_vector", "is_vector_spec", "VECTOR_GRAMMAR"]

#: one line naming every accepted spelling (for error messages and help texts)
GRAMMAR = "a registry name, FILE.json, nfK (K = 2..8) or lloyd-l1|l2[-B][-Kbit][-normalized][@SOURCE]"

#: the start of the labels the derivations give tables this grammar cannot spell (lloyd-l2-4b-B32-e8m0-floor,
#: quantile-3b-B128, nf4-float64, lloyd4_search_4over6_b16)
_LABEL = re.compile(r"^(?:lloyd|quantile|nf\d)", re.IGNORECASE)

#: the largest block size B of the derivation engine (its rule: quantbook.codebooks.blocks.check_derived_block_size)
MAX_BLOCK_SIZE = MAX_DERIVED_BLOCK_SIZE


class UnknownCodebookError(CodebookError, NotFoundError):
    """A spelling that names no codebook.  Also a KeyError, as a registry lookup is."""




def _in_range(what: str, lo: int, hi: int) -> Callable[[int, str | None], int]:
    """The rule of a number from ``lo`` to ``hi`` (as :func:`_number` calls it)."""
    def check(value: int, shown: str | None) -> int:
        if not lo <= value <= hi:
            raise ValueError(f"{what} must be from {lo} to {hi}, got {value if shown is None else shown}")
        return value

    return check


def _number(digits: str, check: Callable[[int, str | None], int], spec: str) -> int:
    """``check(value, shown)`` of the number a name spells, its refusal a CodebookError naming the name."""
    huge = len(digits) > 12   # int() of a huge digit string is slow, and the value out of range anyway
    try:
        return check(10**12 if huge else int(digits), f"a {len(digits)}-digit number" if huge else None)
    except ValueError as exc:
        raise CodebookError(f"{spec}: {exc}") from None


@lru_cache(maxsize=32)
def _lloyd(options: tuple[tuple[str, Any], ...]) -> Codebook:
    from .derive.lloyd import lloyd

    return lloyd(**dict(options))


def _spec_text(spec: Any, error: type[Exception], kind: str, grammar: str, also: str = "") -> str:
    """The stripped text of a name or path ``spec``; ``error`` for anything else (``also``
    names the objects accepted as they are) or an empty one."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise error(f"a {kind} is {grammar}{also}; got {type(spec).__name__}")
    text = spec.strip()
    if not text:
        raise error(f"empty {kind} name: expected {grammar}")
    return text


def resolve_codebook(spec: Any, block_size: int = DEFAULT_BLOCK_SIZE) -> Codebook:
    """The Codebook that ``spec`` names (see the module grammar); a Codebook is returned as is.

    ``block_size`` is the ``B`` of a ``lloyd-...`` spelling that gives none.  Raises
    :class:`UnknownCodebookError` for a spelling that names nothing, ``FileNotFoundError``
    for a missing ``.json`` file, and :class:`CodebookError` (a ValueError) for a bad file,
    an out-of-range number or an argument that is neither a string nor a Codebook.
    """
    if isinstance(spec, Codebook):
        return spec
    text = _spec_text(spec, CodebookError, "codebook", GRAMMAR, ", or a Codebook")
    if is_vector_spec(spec):
        raise CodebookError(f"{text!r} is a vector codebook; this takes a scalar one ({GRAMMAR}). Vector codebooks "
                            "go to show, export, evaluate-model and quantbook.bulk.vq.quantize_vq")
    if isinstance(spec, os.PathLike):   # a file, never a name (module docstring)
        from .codebooks.registry import load

        return load(spec)
    from .codebooks.registry import REGISTRY

    name = published_name(text, REGISTRY)
    if name is not None:
        return REGISTRY[name].codebook
    if text.lower().endswith(".json"):
        from .codebooks.registry import load

        # the spelling is read without surrounding spaces; a file whose name has them is still that file
        return load(spec if isinstance(spec, str) and spec != text and os.path.isfile(spec) else text)
    m = _NF.match(text)
    if m:
        k = _number(m.group("k"), _in_range("NormalFloat bits K", 2, 8), text)
        if k == 4:
            from .codebooks.registry import REGISTRY

            return REGISTRY["nf4"].codebook
        from .derive.normal_float import nf

        return nf(k)   # named nfK by its recipe: NF05 reads back as nf5
    m = _LLOYD.match(text)
    if m:
        return _lloyd(_lloyd_options(text, m, block_size))   # named in full: lloyd-l2 at B = 64 is lloyd-l2-64
    hint = ""
    if _LABEL.match(text):   # the derivations print such a label, so it must say why it does not read back
        hint = ("; a derived table the grammar cannot spell (a --scale, --fix or --symmetric derivation, a "
                "quantile or NF variant) is named by a label that does not read back: save the table with "
                "`quantbook derive ... --json > FILE.json` (Codebook.to_json()) and name FILE.json")
    raise UnknownCodebookError(f"unknown codebook {text!r}{did_you_mean(text, REGISTRY)}: expected {GRAMMAR}{hint}")


def _lloyd_options(text: str, m: re.Match, block_size: Any) -> tuple[tuple[str, Any], ...]:
    """The keyword arguments of :func:`quantbook.derive.lloyd` a ``lloyd-...`` match spells."""
    if m.group("B"):
        B = _number(m.group("B"), lambda v, shown: check_derived_block_size(v, "block size B", shown), text)
    else:
        try:
            B = check_derived_block_size(block_size)
        except ValueError as exc:
            raise CodebookError(f"{text}: {exc}") from None
    options: dict[str, Any] = {"loss": m.group("loss").lower(), "block_size": B}
    if m.group("k"):
        if m.group("k").lstrip("0") == "1":  # 2 levels: fewer than the default fixed -1, 0, +1
            raise CodebookError(f"{text}: a 1-bit table's 2 levels cannot hold the fixed -1, 0 and +1 a name "
                                "implies; derive it with free levels: quantbook derive lloyd --bits 1 --fix none")
        options["bits"] = _number(m.group("k"), _in_range("bits K", 2, 8), text)
    if m.group("norm"):
        options["domain"] = "normalized"
    if m.group("src") is not None:
        source = m.group("src").strip()
        if not source:
            raise CodebookError(f"{text}: nothing after '@' (expected a source such as laplace or student-t:5)")
        options["source"] = source
    return tuple(sorted(options.items()))


def depends_on_block_size(spec: Any) -> bool:
    """True for a ``lloyd-...`` spelling without ``B`` (derived for whatever block size is asked)."""
    if not isinstance(spec, str):
        return False
    m = _LLOYD.match(spec.strip())
    return m is not None and not m.group("B")


def split_specs(specs: str | Sequence[Any]) -> list[Any]:
    """The items of a comma-separated string of codebook spellings, or of a sequence.  A string
    that names an existing file is that one file, commas and all (a sequence can name several)."""
    if not isinstance(specs, str):
        return list(specs)
    return [specs] if "," in specs and os.path.isfile(specs) else specs.split(",")


def resolve_codebooks(specs: str | Sequence[Any], block_size: int = DEFAULT_BLOCK_SIZE) -> list[tuple[str, Codebook]]:
    """``(label, Codebook)`` for a comma-separated string (:func:`split_specs`) or a sequence of
    spellings / Codebooks.  The label is the spelling as given (a Codebook's own name)."""
    items = split_specs(specs)
    labelled = []
    for item in items:
        if isinstance(item, Codebook):
            labelled.append((item.name, item))
        elif not (isinstance(item, str) and not item.strip()):
            label = item.strip() if isinstance(item, str) else str(item)
            labelled.append((label, resolve_codebook(item, block_size)))
    if not labelled:
        raise CodebookError("no codebooks given")
    return labelled


#: one line naming every accepted vector-codebook spelling
VECTOR_GRAMMAR = "a published vector grid (e.g. higgs-2d-256) or FILE.json holding a vector codebook"


def is_vector_spec(spec: Any) -> bool:
    """True for a VectorCodebook, a published vector-grid name, or a ``.json`` file that holds
    a vector codebook (``"kind": "vector"``); False for everything else, never an error."""
    from .codebooks.vector import VectorCodebook

    if isinstance(spec, VectorCodebook):
        return True
    from .codebooks.vector_registry import json_is_vector, vector_registry

    if isinstance(spec, os.PathLike):   # a file, never a name (module docstring)
        return json_is_vector(spec)
    if not isinstance(spec, str):
        return False
    text = spec.strip()

    if published_name(text, vector_registry()) is not None:
        return True
    return text.lower().endswith(".json") and json_is_vector(text)


def resolve_vector(spec: Any) -> VectorCodebook:
    """The :class:`~quantbook.codebooks.vector.VectorCodebook` that ``spec`` names (see the
    module grammar); a VectorCodebook is returned as is.

    Raises :class:`UnknownCodebookError` for a spelling that names nothing,
    ``FileNotFoundError`` for a missing file and a one-line ValueError for a bad file.
    """
    from .codebooks.vector import VectorCodebook, VectorCodebookError

    if isinstance(spec, VectorCodebook):
        return spec
    text = _spec_text(spec, VectorCodebookError, "vector codebook", VECTOR_GRAMMAR)
    from .codebooks.vector_registry import get_vector, load_vector, vector_names

    if isinstance(spec, os.PathLike):   # a file, never a name (module docstring)
        return load_vector(spec)
    try:
        return get_vector(text)
    except KeyError:
        pass
    if text.lower().endswith(".json"):
        return load_vector(text)
    raise UnknownCodebookError(f"unknown vector codebook {text!r}{did_you_mean(text, vector_names())}: "
                               f"expected {VECTOR_GRAMMAR} "
                               f"(published: {', '.join(vector_names())})")
