"""The audit: re-derive every published table from its recipe and compare to the last float32 bit.

For each registry entry (:mod:`quantbook.codebooks.registry`) the audit reports the recipe,
the largest absolute difference (float64), the largest difference in float32 ULPs, whether
the float32 bit patterns are identical, whether the table met its expectation
(``bit-exact``, ``decimals``, ``report`` or ``transcribed``) and a one-line explanation of any
difference.

Row fields: ``bit_exact`` — the float32 bit patterns of the derived and published tables are
identical; ``reproduced`` — the table met ``expect`` (``bit-exact``: bit_exact; ``decimals``:
the derived table rounded to ``decimals`` places equals the published one; ``report``: judged
only where a check defines it, else ``None``; ``None`` also for a table without a recipe and
for a transcription, whose recipe restates copied values and so reproduces nothing);
``failed`` — the table is expected to reproduce (``bit-exact``/``decimals``) and
``reproduced`` is False (which includes a recipe that cannot run); ``status`` — the one-word
verdict (``ok``, ``FAIL``, ``differs``, ``transcribed``, ``n/a``).  ``quantbook audit`` exits 1
exactly when some row failed.

Further checks (e.g. optimality of tables that claim an objective) register with
:func:`register_check`; each adds text and fields to the row of the table it checks.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from ..codebooks.codebook import Codebook, float32_ulp_distance, format_recipe
from ..codebooks.registry import REGISTRY, Published, load
from ..codebooks.spelling import published_name
from ..derive.recipes import derive_from_recipe
from ..errors import NotFoundError
from ..numerics.arguments import did_you_mean

__all__ = ["AuditRow", "Audited", "audit", "audit_entries", "audit_one", "compare", "format_recipe",
           "is_registry_entry", "register_check"]


@dataclass
class AuditRow:
    """The audit of one published table: its re-derivation compared with the table."""

    name: str
    recipe: str
    expect: str
    reproduced: bool | None  # None: not judged (no recipe, or a report-only table)
    bit_exact: bool | None
    max_ulp: int | None
    max_abs_diff: float | None
    explanation: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.expect in _MUST_REPRODUCE and self.reproduced is False

    @property
    def status(self) -> str:
        """``ok`` (met its expectation), ``FAIL`` (expected to reproduce and did not),
        ``differs`` (report-only, differs), ``transcribed`` (copied values: nothing to reproduce)
        or ``n/a`` (not judged: no recipe, or a report-only table without a criterion)."""
        if self.expect == "transcribed":
            return "transcribed"
        if self.reproduced is None:
            return "n/a"
        if self.expect == "report":
            return "ok" if self.reproduced else "differs"
        return "FAIL" if self.failed else "ok"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


#: expectations under which a table that does not reproduce fails the audit
_MUST_REPRODUCE = ("bit-exact", "decimals")


@dataclass(frozen=True)
class Comparison:
    bit_exact: bool
    max_ulp: int
    max_abs_diff: float
    n_differ: int  # entries whose float32 bits differ
    worst_index: int


def compare(derived: np.ndarray, published: np.ndarray) -> Comparison:
    """Element-wise comparison of two equally long float64 tables at float32 precision;
    returns a :class:`Comparison`.  Tables of different lengths, or empty ones, are a ValueError
    (numpy would broadcast a table of one entry against every entry of the other)."""
    d32 = np.asarray(derived, dtype=np.float32).reshape(-1)
    p32 = np.asarray(published, dtype=np.float32).reshape(-1)
    if d32.size != p32.size or d32.size == 0:
        raise ValueError(f"compare needs two non-empty tables of equal length, got {d32.size} derived "
                         f"and {p32.size} published entries")
    bits_differ = d32.view(np.uint32) != p32.view(np.uint32)
    ulp = float32_ulp_distance(d32, p32)
    absd = np.abs(np.asarray(derived, np.float64) - np.asarray(published, np.float64))
    return Comparison(
        bit_exact=not bits_differ.any(), max_ulp=int(ulp.max()), max_abs_diff=float(absd.max()),
        n_differ=int(bits_differ.sum()), worst_index=int(np.argmax(ulp)),
    )


_Check = Callable[[Published, Codebook, AuditRow], None]
_CHECKS: dict[str, list[_Check]] = {}


def register_check(name: str, fn: _Check) -> None:
    """Run ``fn(entry, derived, row)`` for registry entry ``name`` (``"*"``: every entry).
    A name the registry lacks, or an ``fn`` that is not callable, is a ValueError here rather
    than a check that never runs or an error in the middle of an audit."""
    if name != "*":
        name = published_name(name, REGISTRY) or name
    if name != "*" and name not in REGISTRY:
        raise NotFoundError(f"register_check: no published codebook {name!r}{did_you_mean(name, REGISTRY)} "
                            "(quantbook list names them; '*' is every entry)")
    if not callable(fn):
        raise ValueError(f"register_check needs a callable fn(entry, derived, row), got {type(fn).__name__}")
    _CHECKS.setdefault(name, []).append(fn)


def audit_one(entry: Published) -> AuditRow:
    """The :class:`AuditRow` of one registry entry (``quantbook.REGISTRY[name]``)."""
    if not isinstance(entry, Published):
        shown = repr(entry) if isinstance(entry, str) else type(entry).__name__
        raise TypeError(f"audit_one needs a registry entry (quantbook.REGISTRY[name]; audit([name]) takes names), "
                        f"got {shown}")
    cb = entry.codebook
    recipe = format_recipe(cb.recipe)
    if not cb.recipe:
        return AuditRow(cb.name, recipe, entry.expect, None, None, None, None,
                        "published constant without a generating recipe")
    try:
        derived = derive_from_recipe(cb.recipe)
    except ValueError as exc:  # RecipeError, or bad parameters inside the method
        # a table expected to reproduce whose recipe cannot run is not reproduced
        return AuditRow(cb.name, recipe, entry.expect, False if entry.expect in _MUST_REPRODUCE else None,
                        None, None, None, f"recipe failed: {exc}")
    if entry.expect == "transcribed":
        return _transcription_row(entry, derived, recipe)
    # bit-exact means the stored table, in its order; the other verdicts compare the levels
    # when the stored tables differ in size (e.g. a published table without its -0.0)
    pub_code, der_code = cb.code, derived.code
    use_code = entry.expect == "bit-exact" or (der_code.size == pub_code.size and entry.expect != "report")
    pub = pub_code if use_code else cb.levels
    der = der_code if use_code else derived.levels
    if der.size != pub.size:
        what = "stored entries" if use_code else "values"
        return AuditRow(cb.name, recipe, entry.expect, False, False, None, None,
                        f"recipe gives {der.size} {what}, the table has {pub.size}")
    c = compare(der, pub)
    decimals = entry.decimals   # given wherever expect is "decimals" (Published checks it)
    reproduced: bool | None
    if entry.expect == "bit-exact":
        reproduced = c.bit_exact
    elif decimals is None:
        reproduced = None
    else:
        reproduced = bool(np.all(np.round(der, decimals) == pub))
    if c.bit_exact:
        text = "reproduced bit for bit by the recipe"
    elif decimals is not None and entry.expect in ("decimals", "report"):
        n_bad = int(np.sum(np.round(der, decimals) != pub))
        text = (f"published rounded to {entry.decimals} decimals; the recipe rounded likewise "
                + ("matches every entry" if n_bad == 0 else f"differs in {n_bad} entries"))
    else:
        text = (f"{c.n_differ} of {pub.size} entries differ, worst at index {c.worst_index} "
                f"({float(der[c.worst_index])!r} derived vs {float(pub[c.worst_index])!r} published)")
    row = AuditRow(cb.name, recipe, entry.expect, reproduced, c.bit_exact, c.max_ulp,
                   c.max_abs_diff, text)
    if is_registry_entry(entry):   # the checks are written for the registry's tables, not for a file's
        for fn in _CHECKS.get(cb.name, []) + _CHECKS.get("*", []):
            fn(entry, derived, row)
    return row


def _transcription_row(entry: Published, derived: Codebook, recipe: str) -> AuditRow:
    """A transcribed table: its recipe restates the copied values, so agreeing with it proves
    only that the copy and its restatement match; reported as such, never judged."""
    cb = entry.codebook
    same_size = derived.code.size == cb.code.size
    pub, der = (cb.code, derived.code) if same_size else (cb.levels, derived.levels)
    if der.size != pub.size:
        return AuditRow(cb.name, recipe, entry.expect, None, False, None, None,
                        f"transcribed, not derived ({entry.notes or cb.source}); its recipe gives {der.size} "
                        f"values, the table has {pub.size}")
    c = compare(der, pub)
    agree = ("the recipe's restatement agrees bit for bit" if c.bit_exact
             else f"the recipe's restatement differs in {c.n_differ} of {pub.size} entries")
    return AuditRow(cb.name, recipe, entry.expect, None, c.bit_exact, c.max_ulp, c.max_abs_diff,
                    f"transcribed, not derived: {entry.notes or cb.source}; {agree} (a consistency check, "
                    f"not a reproduction)")


def is_registry_entry(entry: Published) -> bool:
    """Whether ``entry`` is the registry's own entry of its name, whose further checks and
    layouts apply (a file's table may carry a published name)."""
    return REGISTRY.get(entry.name) is entry


#: what :func:`audit` and :func:`audit_entries` take: a name, a codebook file's path, or an entry itself
Audited = str | os.PathLike | Published


def audit_entries(names: Iterable[Audited] | Audited | None = None) -> list[Published]:
    """The entries ``names`` name (a name or several; every registry entry by default), in the
    order given, each read before any work.  A ``FILE.json`` (or a path object) is a codebook
    file, read by :func:`quantbook.load`: its table is expected to be its own recipe's bit for bit.
    An entry (:class:`~quantbook.codebooks.registry.Published`) is taken as it is."""
    selected: list[Audited]
    if names is None:
        selected = list(REGISTRY)
    elif isinstance(names, (str, os.PathLike, Published)):
        selected = [names]
    else:
        selected = list(names)
    entries: list[Published] = []
    for name in selected:
        if isinstance(name, Published):
            entries.append(name)
            continue
        published = published_name(name, REGISTRY)
        if published is not None:
            entries.append(REGISTRY[published])
        elif isinstance(name, os.PathLike) or (isinstance(name, str) and name.rstrip().lower().endswith(".json")):
            entries.append(Published(load(name), f"codebook file {os.fspath(name)}"))
        else:
            raise NotFoundError(f"no published codebook {name!r}{did_you_mean(str(name), REGISTRY)} "
                                "(quantbook list names them; a codebook file is FILE.json)")
    return entries


def audit(names: Iterable[Audited] | Audited | None = None,
          progress: Callable[[str], None] | None = None) -> list[AuditRow]:
    """Audit the entries :func:`audit_entries` reads from ``names`` (every registry entry by
    default), in the order given."""
    rows = []
    for entry in audit_entries(names):
        if progress:
            progress(entry.name)
        rows.append(audit_one(entry))
    return rows


# --------------------------------------------------------------------------- NF4 breakdown
def _nf4_breakdown(entry: Published, derived: Codebook, row: AuditRow) -> None:
    """Why a straightforward float64 derivation misses bitsandbytes' float32 NF4 table."""
    from ..derive.normal_float import nf

    pub = entry.codebook.code
    variants = {
        "float64, offset 929/960": nf(4, "929/960", "float64"),
        "float64, offset 0.9677083": nf(4, "0.9677083", "float64"),
        "exact, offset 929/960": nf(4, "929/960", "exact"),
    }
    found = {}
    for label, cb in variants.items():
        c = compare(cb.code, pub)
        found[label] = {"n_differ": c.n_differ, "max_ulp": c.max_ulp}
    row.details["float64_variants"] = found
    f = found["float64, offset 929/960"]
    row.explanation += (
        f"; a plain float64 derivation (offset 929/960) differs in {f['n_differ']} of 16 levels by up "
        f"to {f['max_ulp']} ULP, because bitsandbytes used the decimal 0.9677083 (a different float32 "
        "than 929/960), float32 torch.linspace probabilities, and a float32 division by the maximum"
    )


register_check("nf4", _nf4_breakdown)
