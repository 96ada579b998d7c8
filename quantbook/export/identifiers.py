"""Turning a codebook name into a C identifier.

Rule (stated once): every run of characters outside ``[A-Za-z0-9]`` becomes one ``_``
(identifiers with ``__`` are reserved in C++) and a trailing ``_`` is dropped
(``"nf4-torchao"`` → ``nf4_torchao``,
``"max1960-n16"`` → ``max1960_n16``).  The result is rejected — with a message that
suggests ``--name`` — when it is empty, starts with a digit or an underscore (names
starting with ``_`` are reserved in C at file scope), is a C/C++/CUDA keyword, or the
name holds non-ASCII characters.  A name given for the identifier (``--name``) is used as
it is, so it must already be one this rule gives: a letter, then letters, digits and single
inner underscores (``a b``, ``x__y`` and ``nf4_`` are refused, not rewritten).

A header's macros and include guard are spelled with :func:`c_macro` of the identifier: in
capitals (``nf4`` → ``NF4``) when it has none of its own; one with capitals keeps its case
(``MyCb``), and one with no small letters is written in them (``NF4`` → ``nf4``).  Identifiers
that differ only in case so keep distinct guards and macros: with one guard, including both
headers would silently skip the second.  The rule above is not one to one (``nf4-x`` and
``nf4_x`` give ``nf4_x``), and the registry's names keep their identifiers, so the guard also
holds a hash of the definitions it guards (:mod:`.c_header`): two different tables under one
identifier fail to compile together rather than one standing in for the other.
"""

from __future__ import annotations

import re

from ..numerics.arguments import check_flag

__all__ = ["c_identifier", "c_macro", "IdentifierError"]


class IdentifierError(ValueError):
    """A name that cannot be made into a C identifier."""


# C11 + C++ + CUDA qualifiers that would break the generated declarations.
_KEYWORDS = frozenset("""
auto break case char const continue default do double else enum extern float for goto if inline int long
register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while
bool true false class namespace template typename this new delete operator private protected public virtual
friend mutable explicit using try catch throw asm nullptr constexpr decltype noexcept static_assert alignas
alignof thread_local char16_t char32_t wchar_t export
""".split())


_GIVEN = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*")


def c_identifier(name: str, given: bool = False) -> str:
    """The C identifier for ``name`` (see the module docstring); ``given``: ``name`` was chosen
    as the identifier, and is refused rather than rewritten.  Raises :class:`IdentifierError`."""
    given = check_flag(given, "given")
    if given and isinstance(name, str) and name and not _GIVEN.fullmatch(name):
        raise IdentifierError(f"--name {name!r} is not a C identifier as it stands: a letter, then letters, "
                              "digits and single underscores between them")
    if not isinstance(name, str):
        raise IdentifierError(f"a name must be a string to make a C identifier from, got {type(name).__name__}")
    if not name:
        raise IdentifierError("an empty name cannot be a C identifier; give one with --name")
    if not name.isascii():
        raise IdentifierError(f"name {name!r} has non-ASCII characters; give a C identifier with --name")
    ident = re.sub(r"[^A-Za-z0-9]+", "_", name).rstrip("_")
    if not ident or ident.strip("_") == "":
        raise IdentifierError(f"name {name!r} has no letters or digits to make a C identifier from; use --name")
    if ident[0].isdigit() or ident[0] == "_":
        raise IdentifierError(
            f"name {name!r} gives {ident!r}, which does not start with a letter; give a C identifier with --name"
        )
    if ident in _KEYWORDS or ident.startswith("__"):
        raise IdentifierError(f"name {name!r} is a C/C++ keyword; give another with --name")
    return ident


def c_macro(ident: str) -> str:
    """The spelling of a header's macros and include guard for the C identifier ``ident`` (the
    module docstring): one to one, and in capitals for an identifier without any."""
    if not any(c.isupper() for c in ident):
        return ident.upper()
    return ident.lower() if not any(c.islower() for c in ident) else ident
