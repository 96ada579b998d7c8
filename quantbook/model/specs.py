"""Naming codebooks on the command line: registry names, JSON files and derived shorthands.

Grammar (case-insensitive keywords; a comma-separated list in ``--codebooks``)::

    SPEC   := NAME                 a registry entry (`quantbook list`), e.g. nf4, af4, iq4_nl
            | PATH.json            a codebook file (`quantbook export ... --format json`)
            | nfK                  NormalFloat with K bits (2..8), bitsandbytes' float32 recipe
                                   for K = 4 (the registry's nf4), float64 quantiles otherwise
            | lloyd-LOSS[-B][-Kbit][-normalized][@SOURCE]
    LOSS   := l1 | l2              expected absolute / squared error
    B      := block size the table is fitted for (default: the evaluation block size; in
              `plot-sweep`, re-derived at every block size of the sweep)
    K      := bits (default 4)
    -normalized  minimise the error of the normalised values y = x/absmax instead of the
              error of the weights, absmax·(y - q) (the engine's default "weight" domain)
    SOURCE := any source spelling of the derivation engine (default normal), e.g. laplace,
              student-t:5, FILE.npy, FILE.safetensors:GLOBS

``lloyd-l2-64`` is the 4-bit table minimising the expected squared error of the weights of
absmax-normalised N(0,1) blocks of 64, with the levels -1, 0 and +1 kept fixed (as NF4 and
AF4 do); ``lloyd-l1-64-normalized`` minimises the expected absolute error of the normalised
values, AF4's criterion.  Derived tables are computed by
:func:`quantbook.derive.lloyd` and cached for the process.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ..codebooks.codebook import Codebook

__all__ = ["resolve_codebook", "resolve_codebooks", "depends_on_block_size", "LLOYD_FIXED"]

#: levels held fixed in shorthand-derived Lloyd tables (absmax maps the block maximum to ±1)
LLOYD_FIXED = (-1.0, 0.0, 1.0)

_LLOYD = re.compile(r"^lloyd-(?P<loss>l1|l2)(?:-(?P<B>\d+))?(?:-(?P<k>\d+)bits?)?(?P<norm>-normali[sz]ed)?"
                    r"(?:@(?P<src>.+))?$", re.IGNORECASE)
_NF = re.compile(r"^nf(?P<k>\d+)$", re.IGNORECASE)


@lru_cache(maxsize=32)
def _lloyd(loss: str, block_size: int, bits: int, source: str, domain: str) -> Codebook:
    from ..derive.lloyd import lloyd

    return lloyd(bits=bits, block_size=block_size, loss=loss, domain=domain, source=source,
                 fixed=list(LLOYD_FIXED))


def resolve_codebook(spec: str, block_size: int = 64) -> Codebook:
    """The Codebook a spelling names (see the module grammar); ``block_size`` fills a missing ``B``.

    Raises ``KeyError`` / ``FileNotFoundError`` / ``ValueError`` with a one-line message.
    """
    from ..codebooks.registry import REGISTRY, load

    text = spec.strip()
    if text in REGISTRY or text.lower().endswith(".json"):
        return load(text)
    m = _NF.match(text)
    if m:
        k = int(m.group("k"))
        if k == 4:
            return REGISTRY["nf4"].codebook
        if not 2 <= k <= 8:
            raise ValueError(f"{text}: NormalFloat needs 2..8 bits")
        from ..derive.normal_float import nf

        return nf(k).replace(name=text.lower())
    m = _LLOYD.match(text)
    if m:
        B = int(m.group("B")) if m.group("B") else int(block_size)
        k = int(m.group("k")) if m.group("k") else 4
        if not 1 <= k <= 8:
            raise ValueError(f"{text}: bits must be 1..8")
        if B < 2:
            raise ValueError(f"{text}: block size must be at least 2")
        domain = "normalized" if m.group("norm") else "weight"
        if m.group("src"):
            from .source import install_source_parser

            install_source_parser()  # so that @FILE.safetensors[:GLOBS] is a source too
        cb = _lloyd(m.group("loss").lower(), B, k, (m.group("src") or "normal").strip(), domain)
        return cb.replace(name=text)
    raise KeyError(f"unknown codebook {text!r}: expected a registry name ({', '.join(REGISTRY)}), "
                   f"FILE.json, nfK or lloyd-l1|l2[-B][-Kbit][-normalized][@SOURCE]")


def depends_on_block_size(spec: str) -> bool:
    """True for a ``lloyd-...`` spelling without ``B`` (derived for whatever block size is asked)."""
    m = _LLOYD.match(spec.strip())
    return bool(m) and not m.group("B")


def resolve_codebooks(specs: str | list[str], block_size: int = 64) -> list[tuple[str, Codebook]]:
    """``(label, Codebook)`` for a comma-separated string or a list of spellings."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    items = [s.strip() for s in items if s.strip()]
    if not items:
        raise ValueError("no codebooks given")
    return [(s, resolve_codebook(s, block_size)) for s in items]
