"""A model's own weights as the derivation engine's empirical source.

Spelling (registered with :func:`quantbook.derive.sources.parse_source` on import)::

    FILE.safetensors[:GLOBS][@row|@tensor|@none]

``GLOBS`` are comma-separated ``fnmatch`` patterns on tensor names (see
:mod:`quantbook.io.safetensors`; default every floating tensor).  Each selected tensor is
first standardised — by default each **row** (last axis) divided by its RMS (``@row``), else
the whole tensor (``@tensor``) or nothing (``@none``) — then the tensors are pooled: all
values when there are at most :data:`MAX_SAMPLES`, else a fixed-seed uniform sample of that
many (:func:`quantbook.io.safetensors.sample_weights`, seed 0).  The pool goes to
:class:`~quantbook.derive.sources.Empirical`, which models a block as B i.i.d. draws from it
and applies the same absmax block normalisation as for the parametric sources.

Why rows: the engine's model draws a block's values independently from one law, while real
blocks lie inside rows whose scales differ by large factors; pooling raw values mixes those
scales into a heavy-tailed law that no block sees (docs/derivation.md compares the three on
all-MiniLM-L6-v2).  The spelling is kept as the source's ``spec``, so it lands in the
derived codebook's recipe.
"""

from __future__ import annotations

import re
from typing import Any

from ..io.safetensors import STANDARDIZE, sample_weights, split_globs
from .sources import Empirical, SourceError, register_source_parser

__all__ = ["MAX_SAMPLES", "safetensors_source", "parse_safetensors_source", "safetensors_file"]

#: values pooled at most (2**21 ≈ 2.1 M: ~17 MB as float64)
MAX_SAMPLES = 2**21

_SPEC = re.compile(r"^(?P<path>.+?\.safetensors)(?::(?P<globs>[^@]*))?(?:@(?P<std>[A-Za-z]+))?$", re.IGNORECASE)


def safetensors_source(path: str, globs: str | None = None, standardize: str = "row",
                       max_samples: int | None = MAX_SAMPLES, seed: int = 0) -> Empirical:
    """An :class:`~quantbook.derive.sources.Empirical` source from a safetensors file's weights."""
    sample = sample_weights(path, globs, max_samples=max_samples, seed=seed, standardize=standardize)
    pats = split_globs(globs)
    label = (str(path) if pats is None else f"{path}:{','.join(pats)}") + f"@{standardize}"
    return Empirical(sample, label=label)


def _match(spec: Any) -> re.Match | None:
    """The parts of a ``FILE.safetensors[:GLOBS][@STD]`` spelling, or ``None`` for any other."""
    return _SPEC.match(spec.strip()) if isinstance(spec, str) else None


def safetensors_file(spec: str) -> str | None:
    """The file a ``FILE.safetensors[:GLOBS][@STD]`` spelling reads, or ``None`` for any other spelling."""
    m = _match(spec)
    return None if m is None else m.group("path")


def parse_safetensors_source(spec: str) -> Empirical | None:
    """A Source for ``FILE.safetensors[:GLOBS][@STD]``, or ``None`` for any other spelling."""
    m = _match(spec)
    if m is None:
        return None
    std = (m.group("std") or "row").lower()
    if std not in STANDARDIZE:
        raise SourceError(f"{spec}: unknown standardisation @{m.group('std')} (expected @row, @tensor or @none)")
    try:
        return safetensors_source(m.group("path"), m.group("globs"), std)
    except (FileNotFoundError, KeyError) as exc:
        raise SourceError(str(exc.args[0] if exc.args else exc)) from None


register_source_parser(parse_safetensors_source)  # parse_source now reads FILE.safetensors[:GLOBS]
