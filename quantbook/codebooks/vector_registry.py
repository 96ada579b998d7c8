"""Published vector codebooks (grids of N points in P dimensions), read from data files.

The numbers live in ``quantbook/codebooks/data/*.json`` with their provenance (repository,
path, commit); this module only names them.  Published grids carry no recipe: the audit
(:mod:`quantbook.verify.vq`) measures them and compares them with derived grids instead of
re-deriving them.  Derived grids (``vq-Pd-N``, written by ``quantbook derive vq``) are stored
with the recipe that re-derives them bit for bit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from ..errors import NotFoundError
from ..io.files import read_small_file
from .spelling import published_name
from .vector import VectorCodebook, VectorCodebookError

__all__ = ["PublishedVector", "vector_registry", "vector_names", "get_vector", "load_vector"]

_DATA = Path(__file__).with_name("data")

#: the largest vector-codebook JSON file read (65536 points of 32 coordinates fit easily)
MAX_FILE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class PublishedVector:
    """A published vector codebook and where it comes from."""

    codebook: VectorCodebook
    summary: str  # one line for listings
    notes: str = ""

    @property
    def name(self) -> str:
        return self.codebook.name


_HIGGS_PAPER = ("HIGGS: Malinovskii et al. 2024, 'Pushing the Limits of Large Language Model Quantization "
                "via the Linearity Theorem' (arXiv:2411.17525)")


def _higgs() -> list[PublishedVector]:
    data = json.loads((_DATA / "higgs_grids.json").read_text(encoding="utf-8"))
    where = f"{data['repository']}, {data['path']}, get_higgs_grid (commit {data['commit']})"
    out = []
    for g in data["grids"]:
        p, n = g["dim"], g["size"]
        name = f"higgs-{p}d-{n}"
        notes = ("Max's (1960) Lloyd-Max quantizer for N(0,1), to float32" if p == 1 else
                 "a 2-D grid for N(0,1) pairs (rotated, RMS-scaled weights)")
        out.append(PublishedVector(
            VectorCodebook(name=name, points=g["points"], source=f"{_HIGGS_PAPER}; {where}"),
            summary=f"HIGGS {p}-D grid of {n} points for N(0,1) (transformers integrations/higgs.py)",
            notes=notes,
        ))
    return out


def _derived() -> list[PublishedVector]:
    path = _DATA / "vq_derived.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for d in data["codebooks"]:
        cb = VectorCodebook.from_dict(d)
        out.append(PublishedVector(cb, summary=f"derived: min-MSE {cb.size} points in {cb.dim}-D for N(0,1) "
                                               f"(quantbook derive vq; recipe stored)"))
    return out


@lru_cache(maxsize=1)
def vector_registry() -> Mapping[str, PublishedVector]:
    """Every registered vector codebook by name (loaded on first use): the published grids,
    then the derived grids stored with their recipes (``data/vq_derived.json``).  Read-only:
    every caller shares it, so an entry one of them removed was gone for the rest."""
    return MappingProxyType({p.name: p for p in _higgs() + _derived()})


def vector_names() -> list[str]:
    """The names of the published vector codebooks."""
    return list(vector_registry())


def get_vector(name: str) -> VectorCodebook:
    """The published vector codebook ``name`` (case-insensitive); ``KeyError`` if unknown."""
    reg = vector_registry()
    found = published_name(name, reg)
    if found is not None:
        return reg[found].codebook
    raise NotFoundError(f"no published vector codebook {name!r}; known: {', '.join(reg)}")


def load_vector(path: str | os.PathLike) -> VectorCodebook:
    """The vector codebook in a JSON file (``VectorCodebook.to_json``'s format).

    ``FileNotFoundError`` for a missing file; :class:`VectorCodebookError` (one line) for a
    file that cannot be read or holds no valid vector codebook.
    """
    shown = os.fspath(path)
    data = read_small_file(shown, VectorCodebookError, MAX_FILE_BYTES)
    try:
        return VectorCodebook.from_json(data)
    except VectorCodebookError as exc:
        raise VectorCodebookError(f"{shown}: {exc}") from None


def json_is_vector(path: str | os.PathLike) -> bool:
    """Whether a JSON file declares ``"kind": "vector"`` (False when unreadable or not JSON)."""
    try:   # read as the loaders read it: a FIFO, read here, would be empty (or block) for them
        d = json.loads(read_small_file(path, ValueError, MAX_FILE_BYTES))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(d, dict) and d.get("kind") == "vector"
