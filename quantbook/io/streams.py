"""What standard output and error cannot encode: one rule for the command line, the benchmarks'
scripts and any column padded to what a reader sees.  Imports nothing beyond the standard library
(the ``quantbook`` command loads it before anything heavy).
"""

import codecs
import sys
from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["printable_streams", "as_written"]


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


def as_written(text: str, stream: Any = None) -> str:
    """``text`` as :func:`printable_streams` writes it to ``stream`` (default: standard output),
    each character its encoding lacks spelled by :func:`_unencodable` (``σ²`` as ``sigma^2`` on
    ASCII), so that columns can be padded to what a reader sees."""
    stream = sys.stdout if stream is None else stream
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        return text.encode(encoding, _STREAM_ERRORS).decode(encoding, "replace")
    except LookupError:   # an encoding Python does not know: written as it is
        return text
