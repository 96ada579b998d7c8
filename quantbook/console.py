"""The ``quantbook`` console script: the command line (:func:`quantbook.cli.main`), imported inside
:func:`main`.

A Ctrl-C during the command's first fraction of a second ends as one during the command does,
one line and status 130, where the script's own ``from quantbook.cli import main`` left Python's
traceback.  This module, ``quantbook/__init__.py`` and the ``quantbook.cli`` package import
nothing heavy; :func:`quantbook.cli.main` loads numpy, the registry and the command modules
inside its own handling of a Ctrl-C.

What standard output and error cannot encode is written by one rule, :func:`printable_streams`.
"""

import codecs
import sys
from contextlib import contextmanager
from typing import Iterator

__all__ = ["main", "interrupted", "printable_streams"]


#: quantbook's own typographic symbols (help texts, `±` of a Monte Carlo error, the unit `σ` of the
#: weight errors) in ASCII, for a stream whose encoding lacks them
_ASCII_SPELLINGS = {"±": "+/-", "·": "*", "×": "x", "−": "-", "–": "-", "—": "--", "…": "...", "≤": "<=",
                    "≥": ">=", "≈": "~", "→": "->", "²": "^2", "ᵀ": "^T", "‖": "||", "σ": "sigma"}
_STREAM_ERRORS = "quantbook.unencodable"


def _unencodable(exc: UnicodeError) -> tuple[str | bytes, int]:
    """The rule for a character that standard output or error cannot encode (a pipe or a terminal
    in ASCII, Latin-1, a Windows code page), where the strict default failed after the work was
    done: a file name's undecodable byte (held as a surrogate) is written as the byte it was, one
    of quantbook's symbols as its ASCII spelling (``σ²`` as ``sigma^2``), anything else as a Python
    escape (``\\xfc``).  The rule cannot tell quantbook's text from a user's (a file or codebook
    name), so a user's ``σ`` reads ``sigma`` too."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    c = exc.object[exc.start]
    if 0xDC80 <= ord(c) <= 0xDCFF:
        return bytes([ord(c) - 0xDC00]), exc.start + 1
    if c in _ASCII_SPELLINGS:
        return _ASCII_SPELLINGS[c], exc.start + 1
    return c.encode("ascii", "backslashreplace").decode("ascii"), exc.start + 1


codecs.register_error(_STREAM_ERRORS, _unencodable)


@contextmanager
def printable_streams() -> Iterator[None]:
    """Standard output and error, inside the ``with``, with :func:`_unencodable` for what their
    encoding lacks; set back afterwards (the command line may run in a program's own process).
    The command line and the benchmarks' scripts print through it."""
    before = []
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)   # a TextIOWrapper's, not every TextIO's
        if reconfigure is None:   # not a TextIOWrapper (or none, pythonw): leave it
            continue
        try:
            errors = stream.errors
            reconfigure(errors=_STREAM_ERRORS)
        except (AttributeError, ValueError, OSError):
            continue
        before.append((reconfigure, errors))
    try:
        yield
    finally:
        for reconfigure, errors in before:
            try:
                reconfigure(errors=errors)
            except (AttributeError, ValueError, OSError):
                pass


def interrupted() -> int:
    """What the command line does on Ctrl-C: one line on stderr, and the status a shell gives a
    process ended by SIGINT (128 + 2)."""
    print("quantbook: interrupted", file=sys.stderr)
    return 130


def main() -> int:
    """The ``quantbook`` console script: :func:`quantbook.cli.main`'s exit status."""
    try:
        from .cli import main as command_line
    except KeyboardInterrupt:
        return interrupted()
    return command_line()
