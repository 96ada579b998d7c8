"""The :class:`Codebook` value type.

A codebook is the small lookup table of a k-bit block-wise quantizer.  It holds

* ``levels`` — the distinct reconstruction values, sorted, as float64;
* ``code`` — the index→value table in *stored* order (the order a packed nibble
  indexes).  For most tables ``code`` is ``levels`` itself; bitsandbytes' FP4 table is
  stored in bit-pattern order and even holds ``-0.0`` next to ``+0.0``, so the two can
  differ and both are kept for byte-compatible export and bulk quantization;
* ``bits``, ``name``, ``source`` (a citation, or ``"derived"``) and ``recipe`` (the
  parameters that re-derive it, or ``None`` for a table that has no generating recipe).

Encoding: a normalised value ``y`` goes to the nearest level; a value exactly on a decision
threshold goes to the **lower** level.  The rule, its float32 thresholds and the case of a
value stored at several indices are defined once, in :mod:`quantbook.codebooks.encoding`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
from numpy.typing import ArrayLike

from ..errors import RoundingEdgeWarning, warn
from ..io.files import dump_json, parse_json
from ..io.versions import FORMAT_KEY, check_format_version, stamped
from ..numerics.arguments import did_you_mean, host_array, is_int, one_line
from ..numerics.fpstate import ignore_underflow
from ..numerics.reals import real_host_array, real_kind
from .encoding import Encoder, encoder
from .frozen import freeze

__all__ = ["Codebook", "CodebookError", "float32_ulp_distance", "format_recipe", "FLOAT32_EDGE_BOUND",
           "warn_float32_edges"]


class CodebookError(ValueError):
    """Invalid codebook data or invalid input to a codebook operation."""


def check_numbers(values: Any, what: str, error: type[Exception] = ValueError) -> Any:
    """``values`` to read as float64 (``np.array(v, dtype=np.float64)``): a list or tuple as it
    is, anything else as :func:`~quantbook.numerics.arguments.host_array` makes it (a tensor,
    a masked array with nothing masked); ``error`` unless it holds numbers only: numpy would
    read the strings ``" 0.5 "`` and ``"1_0"`` as 0.5 and 10, True as 1, a date as its count of
    seconds, and drop a complex number's imaginary part with a mere warning."""
    raw = values
    if not isinstance(values, (list, tuple)):
        try:
            raw = host_array(values, what)
        except ValueError as exc:
            raise error(str(exc)) from None
        if raw.ndim == 0:   # shown as given (5, not array(5))
            raise error(f"{what} must be a sequence of numbers, got {one_line(values)}")
        values = raw
        if raw.dtype.kind != "O":
            if not real_kind(raw.dtype):
                raise error(f"{what} must be numbers, got an array of {raw.dtype}")
            return values
        raw = raw.tolist()
    for i, v in enumerate(raw):
        for j, x in enumerate(v) if isinstance(v, (list, tuple)) else [(None, v)]:
            if isinstance(x, (bool, np.bool_, str, bytes)) or x is None:
                where = f"entry {i}" if j is None else f"row {i}, column {j}"
                raise error(f"{what} must be numbers: {where} is {x!r}")
    return values


def check_name(name: Any, error: type[Exception] = ValueError) -> None:
    """``error`` unless ``name`` is a non-empty string (a codebook's, scalar or vector)."""
    if not isinstance(name, str):
        raise error(f"name must be a string, got {type(name).__name__}")
    if not name:
        raise error("name must not be empty")


def check_given_name(name: Any) -> None:
    """The CodebookError a :class:`Codebook` raises for ``name`` (its rule: :func:`check_name`);
    None passes (no name given: a derivation spells one).  A derivation checks the name it was
    given with it before its work, not only in the Codebook it builds at the end."""
    if name is not None:
        check_name(name, CodebookError)


def check_misspelt_keys(d: Mapping[str, Any], known: tuple[str, ...], what: str,
                        error: type[Exception] = ValueError) -> None:
    """``error`` for a key of ``d`` that is not one of ``known`` but looks like one (``codes``,
    ``Levels``): read as absent, it would change the codebook silently (a ``code`` left out
    is the sorted levels).  Other keys, such as the results a ``derive --json`` object
    carries beside its codebook, are left alone."""
    for key in d:
        if key not in known and isinstance(key, str):
            hint = did_you_mean(key, known)
            if hint:
                raise error(f"{what} has the key {key!r}, which is not one of its keys ({', '.join(known)}){hint}")


def _as_float64_vector(values: Any, what: str) -> np.ndarray:
    values = check_numbers(values, what, CodebookError)
    try:
        arr = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CodebookError(f"{what} must be a sequence of numbers ({exc})") from None
    if arr.ndim != 1 or arr.size == 0:
        raise CodebookError(f"{what} must be a non-empty 1-D sequence, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise CodebookError(f"{what} must be finite: entry {bad[0]} is {float(arr[bad[0]])!r}")
    # every consumer (byte format, exports, kernels) holds the table in float32: each value
    # must round to a finite one (3.4028235e38, float32's maximum as printed, does)
    with np.errstate(over="ignore"):
        big = np.flatnonzero(np.isinf(arr.astype(np.float32)))
    if big.size:
        raise CodebookError(f"{what} must round to a finite float32, within float32's range "
                            f"(|v| < 3.4028235677973366e38): "
                            f"entry {big[0]} is {float(arr[big[0]])!r}")
    return arr


def _freeze(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _freeze_recipe(recipe: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if recipe is not None and not isinstance(recipe, Mapping):
        raise CodebookError(f"recipe must be a mapping (a JSON object) or None, got {type(recipe).__name__}")
    return None if recipe is None else freeze(recipe, CodebookError)


def format_recipe(recipe: Any) -> str:
    """A recipe mapping as one line, ``method(key=value, ...)``; ``"(none)"`` for no recipe.  Here, not
    in the audit that prints it too, so that ``quantbook show`` does not load the derivations."""
    if not recipe:
        return "(none)"
    parts = [f"{k}={_fmt(v)}" for k, v in recipe.items() if k != "method"]
    return f"{recipe.get('method', '?')}({', '.join(parts)})"


def _fmt(v: Any) -> str:
    if isinstance(v, dict):
        return format_recipe(v)
    if isinstance(v, (list, tuple)) and len(v) > 6:
        return f"[{len(v)} values]"
    return str(v)


@dataclass(frozen=True, eq=False, init=False)
class Codebook:
    """Immutable k-bit codebook.  See the module docstring for the encoding rule.

    Parameters
    ----------
    levels:
        Strictly increasing finite values, distinct in float32 too (``-0.0`` and ``0.0`` count as
        duplicates).
    bits:
        Bit width; ``len(levels) <= 2**bits`` and ``len(code) <= 2**bits``.
    name, source:
        Registry name and citation (``"derived"`` for a freshly derived table).
    recipe:
        Parameters that re-derive the table (a JSON-able mapping, held as a read-only
        copy: :mod:`.frozen`), or ``None``.
    code:
        Optional index→value table in stored order; every entry must equal one of
        ``levels`` (the sign of a zero is kept).  Defaults to ``levels``.
    """

    # the fields as the object holds them: read-only float64 arrays (``code`` always one: the
    # constructor's None is the levels), checked and set by __init__ alone
    levels: np.ndarray
    bits: int
    name: str
    source: str
    recipe: Mapping[str, Any] | None
    code: np.ndarray
    _code_index: np.ndarray = field(init=False, repr=False)

    @ignore_underflow
    def __init__(self, levels: ArrayLike, bits: int, name: str = "unnamed", source: str = "derived",
                 recipe: Mapping[str, Any] | None = None, code: ArrayLike | None = None) -> None:
        if not is_int(bits):
            raise CodebookError(f"bits must be an integer, got {bits!r}")
        bits = int(bits)
        if not 1 <= bits <= 16:
            raise CodebookError(f"bits must be between 1 and 16, got {bits}")
        levels = _as_float64_vector(levels, "levels") + 0.0  # -0.0 -> +0.0
        steps = np.diff(levels)
        if np.any(steps <= 0):
            i = int(np.flatnonzero(steps <= 0)[0])
            kind = "duplicate" if steps[i] == 0 else "unsorted"
            raise CodebookError(
                f"levels must be strictly increasing: {kind} levels at positions {i} and {i + 1} "
                f"({float(levels[i])!r}, {float(levels[i + 1])!r})"
            )
        f32 = levels.astype(np.float32)   # within float32's range (checked)
        same = np.flatnonzero(f32[1:] == f32[:-1])
        if same.size:   # every consumer (the byte format, the kernels, the exports) works in float32
            i = int(same[0])
            raise CodebookError(f"levels must be distinct in float32: levels at positions {i} and {i + 1} "
                                f"({float(levels[i])!r}, {float(levels[i + 1])!r}) are the same float32 number")
        if levels.size > 2**bits:
            raise CodebookError(
                f"{levels.size} levels do not fit in {bits} bits (at most {2**bits})"
            )
        if code is None:
            code = levels.copy()
        else:
            code = _as_float64_vector(code, "code")
            if code.size > 2**bits:
                raise CodebookError(f"code has {code.size} entries, more than 2**{bits}")
        # level position of every code index; every level must be reachable
        pos = np.searchsorted(levels, code)
        pos_ok = (pos < levels.size) & (levels[np.minimum(pos, levels.size - 1)] == code)
        if not np.all(pos_ok):
            i = int(np.flatnonzero(~pos_ok)[0])
            raise CodebookError(f"code entry {i} ({float(code[i])!r}) is not one of the levels")
        code_index = np.empty(levels.size, dtype=np.int64)
        seen = np.zeros(levels.size, dtype=bool)
        for idx in range(code.size):  # lowest code index wins for repeated values
            p = pos[idx]
            if not seen[p]:
                seen[p] = True
                code_index[p] = idx
        if not seen.all():
            i = int(np.flatnonzero(~seen)[0])
            raise CodebookError(f"level {float(levels[i])!r} does not appear in code")
        check_name(name, CodebookError)
        if not isinstance(source, str):
            raise CodebookError(f"source must be a string, got {type(source).__name__}")
        for key, value in (("levels", _freeze(levels)), ("bits", bits), ("name", name), ("source", source),
                           ("recipe", _freeze_recipe(recipe)), ("code", _freeze(code)),
                           ("_code_index", _freeze(code_index))):
            object.__setattr__(self, key, value)

    # ------------------------------------------------------------------ views
    @property
    def n_levels(self) -> int:
        """How many levels the table holds (``2**bits`` or fewer)."""
        return int(self.levels.size)

    @property
    def thresholds(self) -> np.ndarray:
        """Decision thresholds (midpoints of adjacent levels), float64."""
        return 0.5 * (self.levels[:-1] + self.levels[1:])

    @property
    def thresholds_f32(self) -> np.ndarray:
        """The float32 decision thresholds of the byte format: the float32 midpoints of adjacent
        float32 levels, as :mod:`quantbook.codebooks.encoding` defines them."""
        return encoder(self.levels, "float32").bounds

    def encoder(self, precision: str = "float32") -> Encoder:
        """The encoder of the stored code table (:mod:`quantbook.codebooks.encoding`)."""
        return encoder(self.code, precision)

    @property
    @ignore_underflow
    def levels_f32(self) -> np.ndarray:
        """The sorted levels as float32."""
        return self.levels.astype(np.float32)

    @property
    @ignore_underflow
    def code_f32(self) -> np.ndarray:
        """The index→value table as float32 (what a kernel or bitsandbytes holds)."""
        return self.code.astype(np.float32)

    @property
    def level_to_code(self) -> np.ndarray:
        """Code index used for each sorted level (lowest index for repeated values)."""
        return self._code_index

    # --------------------------------------------------------------- encoding
    def encode(self, y: Any, thresholds: str = "float64") -> np.ndarray:
        """Code indices (uint8 for ≤8 bits, else uint16) of normalised values ``y``.

        Nearest level; ties (``y`` exactly on a threshold) go to the lower level.
        ``thresholds="float32"`` encodes exactly as the byte format and every backend do
        (float32 ``y`` against :attr:`thresholds_f32`); ``"float64"`` uses the float64
        midpoints.  NaN is rejected.
        """
        arr = real_host_array(y, "y", CodebookError)
        if arr.dtype.kind == "V":   # ml_dtypes' (bfloat16, float8): float64 holds each exactly
            arr = arr.astype(np.float64)
        if np.isnan(arr).any():
            raise CodebookError("encode got NaN")
        if thresholds not in ("float64", "float32"):
            raise CodebookError(f"thresholds must be 'float64' or 'float32', got {thresholds!r}")
        dtype = np.uint8 if self.bits <= 8 else np.uint16
        return self.encoder(thresholds)(arr).astype(dtype)

    def decode(self, indices: Any) -> np.ndarray:
        """Values (float64) of code indices."""
        idx = host_array(indices, "indices", CodebookError)
        if idx.size == 0 and idx.dtype == np.float64:   # np.asarray([]) of an empty list
            idx = idx.astype(np.intp)
        if not np.issubdtype(idx.dtype, np.integer):
            raise CodebookError(f"decode needs integer indices, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.code.size):
            raise CodebookError(f"indices must lie in [0, {self.code.size - 1}]")
        return self.code[idx]

    def quantize(self, y: Any) -> np.ndarray:
        """Nearest-level values of normalised ``y`` (``decode(encode(y))``)."""
        return self.decode(self.encode(y))

    # ------------------------------------------------------------ comparison
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Codebook):
            return NotImplemented
        return (
            self.bits == other.bits
            and self.name == other.name
            and self.source == other.source
            and self.recipe == other.recipe
            and np.array_equal(self.levels.view(np.int64), other.levels.view(np.int64))
            and np.array_equal(self.code.view(np.int64), other.code.view(np.int64))
        )

    def __hash__(self) -> int:
        return hash((self.name, self.bits, self.levels.tobytes(), self.code.tobytes()))

    def __reduce__(self):
        # rebuilt by the constructor, read-only: numpy unpickles arrays writable below protocol 5
        # (multiprocessing's default is 4), and deepcopy copies them writable
        return (type(self), (self.levels, self.bits, self.name, self.source, self.recipe, self.code))

    def __repr__(self) -> str:
        def listed(levels):
            return ", ".join(f"{v:.6g}" for v in levels)

        lv, more = listed(self.levels) if self.levels.size <= 32 else "", ""
        if self.levels.size > 32:   # a 16-bit table's 65536 levels would make a repr of most of a megabyte
            lv, more = f"{listed(self.levels[:3])}, ..., {listed(self.levels[-3:])}", f", n_levels={self.levels.size}"
        return f"Codebook(name={self.name!r}, bits={self.bits}, levels=[{lv}]{more})"

    def replace(self, **changes: Any) -> "Codebook":
        """A copy with some fields changed (``levels``, ``name``, ``source``, ...)."""
        fields: dict[str, Any] = dict(
            levels=self.levels, bits=self.bits, name=self.name, source=self.source,
            recipe=self.recipe, code=self.code,
        )
        if "levels" in changes and "code" not in changes:
            fields["code"] = None
        fields.update(changes)
        return Codebook(**fields)

    # ----------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; floats are Python floats, whose repr round-trips float64.  It says its
        format's version (:mod:`quantbook.io.versions`), which :meth:`from_dict` checks."""
        d: dict[str, Any] = {
            "name": self.name,
            "bits": self.bits,
            "levels": [float(v) for v in self.levels],
            "source": self.source,
            "recipe": self.recipe,
        }
        if not np.array_equal(self.code.view(np.int64), self.levels.view(np.int64)):
            d["code"] = [float(v) for v in self.code]
        return stamped(d, "codebook file")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Codebook":
        """The Codebook of a :meth:`to_dict` mapping; bad data is a one-line :class:`CodebookError`."""
        if not isinstance(d, Mapping):
            raise CodebookError("a codebook must be a JSON object")
        if d.get("kind") == "vector":   # before the version, which is the vector format's
            raise CodebookError("this is a vector codebook (kind \"vector\"): read it with "
                                "VectorCodebook.from_json; show, export, evaluate-model and quantize_vq take it")
        if "kind" in d:   # a scalar codebook's object has none: "Vector" is a misspelt vector file
            raise CodebookError(f"kind is {d['kind']!r}: a scalar codebook has no kind, a vector codebook's "
                                'is "vector"')
        check_format_version(d, "codebook file", CodebookError)
        check_misspelt_keys(d, (FORMAT_KEY, "name", "bits", "levels", "code", "source", "recipe", "kind"),
                            "a codebook object", CodebookError)
        missing = [k for k in ("bits", "levels") if k not in d]
        if missing:
            raise CodebookError(f"codebook object lacks {', '.join(missing)}")
        values: dict[str, Any] = {}
        for key in ("levels", "code"):
            v = d.get(key)
            if isinstance(v, (list, tuple)):
                # JSON integers are exact Python ints: one beyond float64 (10**400) must be
                # an error here, not an OverflowError from numpy
                for i, x in enumerate(v):
                    if type(x) is int:
                        try:
                            float(x)
                        except OverflowError:
                            raise CodebookError(f"{key} entry {i} is too large for a float "
                                                f"(an integer of {x.bit_length()} bits)") from None
            values[key] = v
        return cls(
            levels=values["levels"], bits=d["bits"], name=d.get("name", "unnamed"),
            source=d.get("source", "derived"), recipe=d.get("recipe"), code=values["code"],
        )

    def to_json(self, indent: int | None = 2) -> str:
        """The JSON text of :meth:`to_dict` (``indent`` as :func:`json.dumps` takes it)."""
        return dump_json(self.to_dict(), indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Codebook":
        """The Codebook of :meth:`to_json` text; bad input is a one-line :class:`CodebookError`."""
        d = parse_json(text, CodebookError, "codebook")
        # any JSON value: from_dict names one that is not an object
        return cls.from_dict(d)   # type: ignore[arg-type]


def float32_ulp_distance(a: Any, b: Any) -> np.ndarray:
    """Distance in float32 units in the last place between float32 values ``a`` and ``b``.

    Uses the ordered-integer view of IEEE-754 binary32, so ``+0`` and ``-0`` are 0 ULP
    apart and adjacent floats are 1 apart across the sign boundary too.
    """
    ia = np.asarray(a, dtype=np.float32).view(np.int32).astype(np.int64)
    ib = np.asarray(b, dtype=np.float32).view(np.int32).astype(np.int64)
    ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
    ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
    return np.abs(ia - ib)


#: how close (relative) a float64 number whose last digits differ between CPUs may come to a rounding
#: edge: :func:`warn_float32_edges` warns within it, and the tests hold what the audit decides (float32
#: tables, published decimals) further away.  The largest move between CPUs measured is 8.5e-13 (an
#: 8-bit Lloyd code, docs/derivation.md); 12 times that leaves room for CPUs not measured, and warns
#: for few codes
FLOAT32_EDGE_BOUND = 1e-11


@ignore_underflow
def warn_float32_edges(values: Any, what: str) -> float:
    """Warn (:class:`~quantbook.errors.RoundingEdgeWarning`) when a float64 value that is about to
    be rounded to float32 lies within :data:`FLOAT32_EDGE_BOUND` (relative) of a rounding edge: the
    midpoint of its two float32 neighbours, where round-half-even decides a tie.  For derived levels,
    whose last float64 digits differ between CPUs; a float32 number lies half a float32 ulp from its
    edges.  Returns the smallest relative distance (inf where there are only zeros)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    f = x.astype(np.float32)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        # float32 numbers are exact in float64, and so are their midpoints
        edges = [(f.astype(np.float64) + np.nextafter(f, np.float32(s)).astype(np.float64)) / 2
                 for s in (np.inf, -np.inf)]
        margin = np.where(x == 0, np.inf, np.minimum(*[np.abs(x - e) for e in edges]) / np.abs(x))
    close = np.flatnonzero(margin < FLOAT32_EDGE_BOUND)
    if close.size:
        i = int(close[np.argmin(margin[close])])
        more = f" (and {close.size - 1} more)" if close.size > 1 else ""
        warn(f"{what}: level {i} ({float(x[i])!r}) lies {margin[i]:.1e} (relative) from a float32 rounding "
             f"edge{more}, closer than {FLOAT32_EDGE_BOUND:g}, a margin over the last digits that another "
             "CPU's exp and log change: this table may round to other float32 numbers on another CPU; its "
             "float32 bits are this machine's (keep its float32 table, not only its recipe)",
             RoundingEdgeWarning)
    return float(margin.min()) if margin.size else np.inf
