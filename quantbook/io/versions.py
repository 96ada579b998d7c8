"""The format version of every file and stored object that quantbook writes and reads back: the
one rule (docs/json.md, "Format versions").

Each format of :data:`FORMATS` has a current version.  A writer stamps it under
:data:`FORMAT_KEY` (:func:`stamped`); a reader checks it before any other key
(:func:`check_format_version`):

* no key: version 1 (what every version wrote before the key existed, and a file written by hand);
* an integer from 1 to the current version: read;
* a larger integer: refused with one line that names the format and says to upgrade quantbook.
  The readers pass over keys they do not know (``derive --json`` puts its results beside the
  codebook), so a key that a later format adds to change what the others mean would be read
  silently wrong;
* anything else: refused as no version.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ..numerics.arguments import is_int, one_line

__all__ = ["FORMAT_KEY", "FORMATS", "stamped", "check_format_version"]

#: the key under which a file says its format's version (no codebook or state has a field of that name)
FORMAT_KEY = "format_version"

#: every versioned format, by the name its messages use, and the version this quantbook writes
#: (and reads, with every earlier one)
FORMATS = {
    "codebook file": 1,          # Codebook.to_dict: show/export --json, derive --json
    "vector codebook file": 1,   # VectorCodebook.to_dict: show/export --json, derive vq --json and -o
    "quantization state": 1,     # QuantState.as_dict beyond bitsandbytes' own layout
    "VQ state": 1,               # VQState.to_dict
}


def stamped(d: Mapping[str, Any], fmt: str) -> dict[str, Any]:
    """``d`` with the current version of the format ``fmt`` first (the first thing a reader sees)."""
    return {FORMAT_KEY: FORMATS[fmt], **d}


def check_format_version(d: Mapping[str, Any], fmt: str, error: type[Exception],
                         scalar: Callable[[Any], Any] | None = None) -> int:
    """The version of the format ``fmt`` that the mapping ``d`` says it is in (1 without
    :data:`FORMAT_KEY`), or ``error`` (one line) for one this quantbook cannot read: a later
    version, or a value that is no version.  ``scalar``: how the reader takes a stored scalar
    (a 0-d array, as ``np.savez`` hands one back)."""
    if FORMAT_KEY not in d:
        return 1
    v = d[FORMAT_KEY] if scalar is None else scalar(d[FORMAT_KEY])
    if not is_int(v) or v < 1:
        raise error(f"{FORMAT_KEY} must be a positive integer (the {fmt} format's version), got {one_line(v)}")
    current = FORMATS[fmt]
    if v > current:
        from ..version import installed_version

        raise error(f"{fmt} format {int(v)}; this quantbook {installed_version()} reads format {current} "
                    "and older: upgrade quantbook")
    return int(v)
