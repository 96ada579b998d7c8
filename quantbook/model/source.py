"""A model's own weights as the derivation engine's empirical source.

Spelling (accepted by :func:`quantbook.derive.sources.parse_source` once
:func:`install_source_parser` has run — the CLI does this)::

    FILE.safetensors[:GLOBS][@row|@tensor|@none]

``GLOBS`` are comma-separated ``fnmatch`` patterns on tensor names (see
:mod:`quantbook.model.io`; default every floating tensor).  Each selected tensor is first
standardised — by default each **row** (last axis) divided by its RMS (``@row``), else the
whole tensor (``@tensor``) or nothing (``@none``) — then the tensors are pooled: all values
when there are at most :data:`MAX_SAMPLES`, else a fixed-seed uniform sample of that many
(:func:`quantbook.model.io.sample_weights`, seed 0).  The pool goes to
:class:`~quantbook.derive.sources.Empirical`, which models a block as B i.i.d. draws from it
and applies the same absmax block normalisation as for the parametric sources.

Why rows: the engine's model draws a block's values independently from one law, while real
blocks lie inside rows whose scales differ by large factors; pooling raw values mixes those
scales into a heavy-tailed law that no block sees.  On all-MiniLM-L6-v2 (fit on layers 0-2,
evaluate layers 3-5, B = 64, L2) the fitted table's SQNR is 20.533 dB unstandardised, 20.614
dB per tensor and 20.651 dB per row, against 20.528 dB for NF4.  The spelling is kept as the
source's ``spec`` (so it lands in the derived codebook's recipe).
"""

from __future__ import annotations

import re

from .io import STANDARDIZE, sample_weights, split_globs

__all__ = ["MAX_SAMPLES", "safetensors_source", "parse_safetensors_source", "install_source_parser"]

#: values pooled at most (2**21 ≈ 2.1 M: ~17 MB as float64)
MAX_SAMPLES = 2**21

_SPEC = re.compile(r"^(?P<path>.+?\.safetensors)(?::(?P<globs>[^@]*))?(?:@(?P<std>[A-Za-z]+))?$", re.IGNORECASE)


def safetensors_source(path: str, globs: str | None = None, standardize: str = "row",
                       max_samples: int | None = MAX_SAMPLES, seed: int = 0):
    """An :class:`~quantbook.derive.sources.Empirical` source from a safetensors file's weights."""
    from ..derive.sources import Empirical

    sample = sample_weights(path, globs, max_samples=max_samples, seed=seed, standardize=standardize)
    pats = split_globs(globs)
    label = (str(path) if pats is None else f"{path}:{','.join(pats)}") + f"@{standardize}"
    return Empirical(sample, label=label)


def parse_safetensors_source(spec: str):
    """A Source for ``FILE.safetensors[:GLOBS]``, or ``None`` for any other spelling."""
    if not isinstance(spec, str):
        return None
    m = _SPEC.match(spec.strip())
    if m is None:
        return None
    from ..derive.sources import SourceError

    std = (m.group("std") or "row").lower()
    if std not in STANDARDIZE:
        raise SourceError(f"{spec}: unknown standardisation @{m.group('std')} (expected @row, @tensor or @none)")
    try:
        return safetensors_source(m.group("path"), m.group("globs"), std)
    except (FileNotFoundError, KeyError) as exc:
        raise SourceError(str(exc.args[0] if exc.args else exc)) from None


_installed = False


def install_source_parser() -> None:
    """Register :func:`parse_safetensors_source` with the derivation engine (idempotent)."""
    global _installed
    if _installed:
        return
    from ..derive.sources import register_source_parser

    register_source_parser(parse_safetensors_source)
    _installed = True
