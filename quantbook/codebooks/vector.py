"""The :class:`VectorCodebook` value type: one index per group of P weights.

A vector codebook is a table of ``N`` points in ``P`` dimensions (float32, shape ``(N, P)``).
A group of ``P`` (scaled) weights is stored as the index of its nearest point, so it costs
``ceil(log2 N) / P`` bits per weight plus the group scale's share.  ``P = 1`` is an ordinary
scalar table held in this shape.

Nearest means least squared Euclidean distance, computed in float64 from the float32 points;
a tie goes to the lowest index.  The rule is stated here once; every consumer (bulk
quantization, the derivation's assignment step, the audit) must agree with
:meth:`quantbook.codebooks.vector.VectorCodebook.nearest`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..io.files import dump_json, parse_json
from ..io.versions import FORMAT_KEY, check_format_version, stamped
from ..numerics.arguments import host_array, is_int
from ..numerics.fpstate import ignore_underflow
from ..numerics.reals import real_host_array
from .codebook import _freeze, check_misspelt_keys, check_name, check_numbers
from .frozen import freeze

__all__ = ["VectorCodebook", "VectorCodebookError", "MAX_POINTS", "nearest_brute", "cell_candidates"]

#: the largest table (16-bit indices)
MAX_POINTS = 65536

# rows of v handled per chunk of the brute-force search (bounds the (rows, N) distance matrix)
_CHUNK_ELEMS = 1 << 22


class VectorCodebookError(ValueError):
    """Invalid vector-codebook data or invalid input to a vector-codebook operation."""


@ignore_underflow
def _as_points(points: Any) -> np.ndarray:
    points = check_numbers(points, "points", VectorCodebookError)
    if isinstance(points, (list, tuple)):
        for i, row in enumerate(points):
            for x in (row if isinstance(row, (list, tuple)) else [row]):
                if type(x) is int:
                    try:
                        float(x)
                    except OverflowError:
                        raise VectorCodebookError(f"points row {i} holds an integer too large for a float") from None
    try:
        arr = np.array(points, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VectorCodebookError(f"points must be an (N, P) array of numbers ({exc})") from None
    if arr.ndim != 2:
        raise VectorCodebookError(f"points must be an (N, P) array, got shape {arr.shape}")
    n, p = arr.shape
    if p < 1:
        raise VectorCodebookError("points must have at least one dimension (P >= 1)")
    if not 2 <= n <= MAX_POINTS:
        raise VectorCodebookError(f"a vector codebook holds 2 to {MAX_POINTS} points, got {n}")
    bad = np.argwhere(~np.isfinite(arr))
    if bad.size:
        i, j = bad[0]
        raise VectorCodebookError(f"points must be finite: row {i}, column {j} is {float(arr[i, j])!r}")
    big = np.argwhere(np.abs(arr) > np.finfo(np.float32).max)
    if big.size:
        i, j = big[0]
        raise VectorCodebookError(f"points must lie within float32's range: row {i}, column {j} is "
                                  f"{float(arr[i, j])!r}")
    f32 = arr.astype(np.float32) + np.float32(0.0)  # -0.0 -> +0.0, so duplicates compare by value
    # duplicates are checked on the float32 rows, the table every consumer holds
    _, first, counts = np.unique(f32.view(np.dtype((np.void, 4 * p))).ravel(), return_index=True,
                                 return_counts=True)
    if np.any(counts > 1):
        row = f32[first[np.flatnonzero(counts > 1)[0]]]
        dup = np.flatnonzero(np.all(f32 == row, axis=1))
        raise VectorCodebookError(f"duplicate points: rows {dup[0]} and {dup[1]} are both {row.tolist()}")
    return f32


def cell_candidates(points: np.ndarray, lo: Any, hi: Any, cells: int,
                    beyond: bool = False) -> tuple[np.ndarray, ...]:
    """For a ``cells`` x ``cells`` grid over the box ``lo``..``hi`` (two coordinates each) and
    2-D ``points``: ``(count, cols)``, the number of candidates of every cell (cell ``i·cells
    + j``: ``i`` along the first coordinate) and, cell after cell, their indices ascending.

    A point can be the nearest (:func:`nearest_brute`'s rule) to some vector in a cell only
    if its least distance to the cell is at most ``U``, the least over all points of their
    greatest distance to the cell; every other point is left out.  The cells are widened by
    1e-6 of their width and ``U`` by a relative 1e-9, both far above the rounding of a cell
    lookup and of a float64 distance, so a list never misses the true nearest point (ties
    included); extra candidates cost only time.  The one statement of this rule: the
    derivation's and the bulk quantizer's exact searches both build on it.

    With ``beyond``, a third array: per cell, the least squared distance of a point left out to
    the widened cell (inf where none is), as computed (a relative 1e-9 below it bounds every
    left-out point's squared distance to any vector that the cell's lookup finds in the cell).
    """
    c = np.asarray(points, dtype=np.float64)
    lo = np.asarray(lo, dtype=np.float64)
    width = (np.asarray(hi, dtype=np.float64) - lo) / cells
    m = 1e-6 * width
    edges = [lo[k] + np.arange(cells + 1) * width[k] for k in range(2)]

    def squares(k):  # (cells, N): least and greatest squared gap along axis k, widened cells
        e0, e1 = edges[k][:-1, None] - m[k], edges[k][1:, None] + m[k]
        near = np.maximum(0.0, np.maximum(e0 - c[None, :, k], c[None, :, k] - e1))
        return near ** 2, np.maximum(np.abs(c[None, :, k] - e0), np.abs(c[None, :, k] - e1)) ** 2

    (x_min, x_max), (y_min, y_max) = squares(0), squares(1)
    n = c.shape[0]
    rows = max(1, (1 << 17) // (cells * max(n, 1)))   # cell columns a step: temporaries that stay in cache
    lists, counts, far = [], [], []
    for i in range(0, cells, rows):
        part = slice(i, min(cells, i + rows))
        dmin = x_min[part, None, :] + y_min[None]   # (columns, cells, N)
        bound = (x_max[part, None, :] + y_max[None]).min(axis=2) * (1 + 1e-9)
        keep = dmin <= bound[..., None]
        cell, cols = np.nonzero(keep.reshape(-1, n))  # row-major: each cell's points ascending
        lists.append(cols)
        counts.append(np.bincount(cell, minlength=keep.shape[0] * cells))
        if beyond:
            far.append(np.where(keep, np.inf, dmin).min(axis=2).reshape(-1))
    out = (np.concatenate(counts), np.concatenate(lists).astype(np.int64))
    return out + (np.concatenate(far),) if beyond else out


def nearest_brute(points: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Index of the nearest row of ``points`` (N, P) for every row of ``v`` (M, P): squared
    Euclidean distance in float64, ties to the lowest index (``argmin``'s first minimum).

    The reference rule, with no checks: callers validate.
    """
    c = np.asarray(points, dtype=np.float64)
    x = np.asarray(v, dtype=np.float64)
    n, p = c.shape
    out = np.empty(x.shape[0], dtype=np.int64)
    step = max(1, _CHUNK_ELEMS // max(n * p, 1))
    for s in range(0, x.shape[0], step):
        xs = x[s:s + step]
        # the exact difference form, not |x|^2 - 2x.c + |c|^2, whose cancellation would pick
        # a wrong point when two distances are close
        d = np.zeros((xs.shape[0], n))
        for j in range(p):
            d += (xs[:, j:j + 1] - c[None, :, j]) ** 2
        out[s:s + step] = np.argmin(d, axis=1)
    return out


@dataclass(frozen=True, eq=False)
class VectorCodebook:
    """Immutable table of ``N`` points in ``P`` dimensions (see the module docstring).

    ``points`` is stored as a read-only C-contiguous float32 ``(N, P)`` array with finite,
    distinct rows, ``2 <= N <= 65536``.  ``source`` is a citation or recipe text; ``recipe``
    the :func:`quantbook.derive.vq.derive_vq` options that re-derive it (``None`` for a
    published grid).
    """

    name: str
    points: np.ndarray
    source: str = ""
    recipe: dict | None = None

    def __post_init__(self) -> None:
        check_name(self.name, VectorCodebookError)
        if not isinstance(self.source, str):
            raise VectorCodebookError(f"source must be a string, got {type(self.source).__name__}")
        if self.recipe is not None and not isinstance(self.recipe, Mapping):
            raise VectorCodebookError(f"recipe must be a mapping (a JSON object) or None, "
                                      f"got {type(self.recipe).__name__}")
        object.__setattr__(self, "points", _freeze(_as_points(self.points)))
        object.__setattr__(self, "recipe", None if self.recipe is None else freeze(self.recipe, VectorCodebookError))

    # ------------------------------------------------------------------ views
    @property
    def dim(self) -> int:
        """P, the number of weights one index stands for."""
        return int(self.points.shape[1])

    @property
    def size(self) -> int:
        """N, the number of points."""
        return int(self.points.shape[0])

    @property
    def index_bits(self) -> int:
        """Bits of one stored index: ``ceil(log2 N)``."""
        return max(1, math.ceil(math.log2(self.size)))

    def bits_per_weight(self, scale_bits: int = 16, group: int | None = None) -> float:
        """Storage per weight: ``index_bits / P + scale_bits / group``.

        ``group`` is the number of weights sharing one stored scale (default ``P``);
        ``scale_bits=0`` counts the indices alone.
        """
        for what, val in (("scale_bits", scale_bits),) + ((("group", group),) if group is not None else ()):
            if not is_int(val):
                raise VectorCodebookError(f"{what} must be an integer, got {val!r}")
        if scale_bits < 0:
            raise VectorCodebookError(f"scale_bits must be >= 0, got {scale_bits}")
        g = self.dim if group is None else int(group)
        if g < 1:
            raise VectorCodebookError(f"group must be >= 1, got {g}")
        return self.index_bits / self.dim + scale_bits / g

    # --------------------------------------------------------------- encoding
    def _rows(self, v: Any) -> np.ndarray:
        arr = real_host_array(v, "v", VectorCodebookError)
        if not np.issubdtype(arr.dtype, np.number):  # ml_dtypes' floats are no numpy subtype; widening is exact
            arr = arr.astype(np.float32)
        if arr.ndim == 1 and arr.shape[0] == self.dim:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise VectorCodebookError(f"nearest needs rows of {self.dim} values (shape (M, {self.dim})), "
                                      f"got shape {arr.shape}")
        if not np.isfinite(arr).all():  # an infinite coordinate makes every distance inf: no nearest point
            raise VectorCodebookError("nearest got NaN or Inf")
        return arr

    def nearest(self, v: Any) -> np.ndarray:
        """Exact index (int64) of the nearest point to every row of ``v`` (shape ``(M, P)``;
        a single row of ``P`` values is taken as ``M = 1``).  Ties go to the lowest index."""
        return nearest_brute(self.points, self._rows(v))

    def decode(self, idx: Any) -> np.ndarray:
        """``points[idx]`` (float32), for integer indices of any shape."""
        i = host_array(idx, "idx", VectorCodebookError)
        if not np.issubdtype(i.dtype, np.integer):
            raise VectorCodebookError(f"decode needs integer indices, got dtype {i.dtype}")
        if i.size and (i.min() < 0 or i.max() >= self.size):
            raise VectorCodebookError(f"indices must lie in [0, {self.size - 1}]")
        return self.points[i]

    def quantize(self, v: Any) -> np.ndarray:
        """The nearest points of the rows of ``v`` (``decode(nearest(v))``)."""
        return self.decode(self.nearest(v))

    # ------------------------------------------------------------ comparison
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VectorCodebook):
            return NotImplemented
        return (self.name == other.name and self.source == other.source and self.recipe == other.recipe
                and self.points.shape == other.points.shape
                and np.array_equal(self.points.view(np.int32), other.points.view(np.int32)))

    def __hash__(self) -> int:
        return hash((self.name, self.points.shape, self.points.tobytes()))

    def __reduce__(self):
        # rebuilt by the constructor, read-only (see Codebook.__reduce__)
        return (type(self), (self.name, self.points, self.source, self.recipe))

    def __repr__(self) -> str:
        return f"VectorCodebook(name={self.name!r}, dim={self.dim}, size={self.size})"

    def replace(self, **changes: Any) -> "VectorCodebook":
        """A copy with some fields changed (``points``, ``name``, ``source``, ``recipe``)."""
        fields: dict[str, Any] = dict(name=self.name, points=self.points, source=self.source, recipe=self.recipe)
        fields.update(changes)
        return VectorCodebook(**fields)

    # ----------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict.  Each coordinate is written as the shortest decimal that reads back
        as the same float32 (so the file is exact and short).  It says its format's version
        (:mod:`quantbook.io.versions`), which :meth:`from_dict` checks."""
        return stamped({
            "kind": "vector",
            "name": self.name,
            "dim": self.dim,
            "size": self.size,
            "points": [[_f32_decimal(x) for x in row] for row in self.points],
            "source": self.source,
            "recipe": self.recipe,
        }, "vector codebook file")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VectorCodebook":
        """The VectorCodebook of a :meth:`to_dict` mapping; bad data is a one-line error."""
        if not isinstance(d, Mapping):
            raise VectorCodebookError("a vector codebook must be a JSON object")
        if d.get("kind") != "vector":   # before the version: another kind's is its own format's
            what = f"kind is {d['kind']!r}" if "kind" in d else 'no "kind": "vector"'
            raise VectorCodebookError(f"not a vector codebook ({what})")
        check_format_version(d, "vector codebook file", VectorCodebookError)
        check_misspelt_keys(d, (FORMAT_KEY, "kind", "name", "dim", "size", "points", "source", "recipe"),
                            "a vector codebook object", VectorCodebookError)
        if "points" not in d:
            raise VectorCodebookError("vector codebook object lacks points")
        cb = cls(name=d.get("name", "unnamed"), points=d["points"], source=d.get("source", ""),
                 recipe=d.get("recipe"))
        for key, val in (("dim", cb.dim), ("size", cb.size)):
            if key in d and d[key] != val:
                raise VectorCodebookError(f"{key} is {d[key]!r} but the points give {val}")
        return cb

    def to_json(self, indent: int | None = 2) -> str:
        """The JSON text of :meth:`to_dict` (``indent`` as :func:`json.dumps` takes it)."""
        return dump_json(self.to_dict(), indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> "VectorCodebook":
        """The VectorCodebook of :meth:`to_json` text; bad input is a one-line error."""
        d = parse_json(text, VectorCodebookError, "vector codebook")
        # any JSON value: from_dict names one that is not an object
        return cls.from_dict(d)   # type: ignore[arg-type]


def _f32_decimal(x: np.float32) -> float:
    """The Python float of the shortest decimal that reads back as float32 ``x``."""
    return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))
