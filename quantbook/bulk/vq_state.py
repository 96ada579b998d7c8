"""``VQState``: everything needed to dequantize the indices of a vector-quantized array.

The layout (stated once here; :mod:`quantbook.bulk.vq` computes it):

* the array is read as rows along its last axis; with a rotation, each run of
  ``rotate_size`` consecutive values of a row is replaced by ``float32(x·D·Hₙ/√n)``
  (:mod:`quantbook.numerics.hadamard`, float64, signs of seed ``rotate_seed``);
* each run of ``group`` consecutive (rotated) values has one scale: ``rms`` =
  ``sqrt(Σv²/group)`` (the squares summed in float64, in index order) or ``absmax`` =
  ``max|v|``, rounded to nearest in ``scale_dtype`` (float16 or float32);
* each run of ``P`` values ``v`` of a group with stored scale ``s`` is one index: the nearest
  point to ``y = float32(v / s)`` (``y = 0`` when ``s = 0``: a zero group), under
  :func:`quantbook.codebooks.vector.nearest_brute`'s rule (float64 squared distance, ties to
  the lowest index);
* indices are uint8 when ``N <= 256``, else uint16, shaped ``shape[:-1] + (shape[-1] // P,)``;
* dequantizing gives ``float32(points[i] · float32(s))``, un-rotated in float64 and rounded to
  float32 when rotated, then rounded to ``dtype``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..io.versions import FORMAT_KEY, check_format_version, stamped
from ..numerics.arguments import check_int, host_array
from ..numerics.hadamard import check_size
from . import format as F
from .state import check_shape, dtype_from_name, dtype_name, exact_array, first_bad_scale

__all__ = ["VQState", "SCALE_RULES", "SCALE_DTYPES", "MAX_POINTS", "index_dtype", "check_group"]

SCALE_RULES = ("rms", "absmax")
SCALE_DTYPES = ("float16", "float32")
#: 16-bit indices at most
MAX_POINTS = 65536

_KEYS = ("codebook", "points", "scales", "shape", "dtype", "group", "scale_rule", "scale_dtype",
         "rotate_size", "rotate_seed")


def index_dtype(n_points: int) -> np.dtype:
    """uint8 for tables of up to 256 points, else uint16."""
    return np.dtype(np.uint8 if n_points <= 256 else np.uint16)


def check_group(group: Any, dim: int, last: int) -> int:
    """A group size that is a multiple of ``dim`` (P) and divides the last dimension ``last``."""
    group = check_int(group, "group", 1)
    if group % dim:
        raise ValueError(f"the group of {group} weights is not a multiple of the codebook's dimension P = {dim}")
    if last % group:
        raise ValueError(f"the group of {group} weights does not divide the last dimension {last}")
    return group


def check_points(points: Any) -> np.ndarray:
    """The (N, P) float32 table: finite, 2 <= N <= 65536."""
    if not isinstance(points, np.ndarray) or points.dtype != np.float32 or points.ndim != 2:
        got = f"{points.dtype} array of shape {points.shape}" if isinstance(points, np.ndarray) \
            else type(points).__name__
        raise ValueError(f"points must be a 2-D float32 array (N, P), got {got}")
    host_array(points, "points")   # refuses a masked entry, which every decode would read through
    n, p = points.shape
    if p < 1 or not 2 <= n <= MAX_POINTS:
        raise ValueError(f"a vector codebook has 2 to {MAX_POINTS} points of P >= 1 values, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("points must be finite")
    return points


@dataclass(eq=False)
class VQState:
    """State of one vector-quantized array (the layout is the module docstring).

    ``points`` the (N, P) float32 table; ``scales`` one stored scale per group (flat, in
    ``scale_dtype``); ``shape``/``dtype`` the input's; ``rotate_size`` the Hadamard size (None:
    not rotated) and ``rotate_seed`` its signs' seed.  A state that a GPU made holds read-only
    ``scales``: the GPU keeps their float32 form while they live, and ``dequantize_vq`` there
    reads it instead of uploading them; assign a new array to change them.
    """

    codebook: str
    points: np.ndarray
    scales: np.ndarray
    shape: tuple[int, ...]
    dtype: np.dtype
    group: int
    scale_rule: str = "rms"
    scale_dtype: str = "float16"
    rotate_size: int | None = None
    rotate_seed: int | None = None

    @property
    def dim(self) -> int:
        """P: weights per index."""
        return int(self.points.shape[1])

    @property
    def n_points(self) -> int:
        """N: points in the table."""
        return int(self.points.shape[0])

    @property
    def size(self) -> int:
        """How many weights the array holds (the product of ``shape``)."""
        return math.prod(map(int, self.shape))

    @property
    def n_groups(self) -> int:
        """How many groups of ``group`` weights share a scale."""
        return self.size // self.group

    @property
    def index_shape(self) -> tuple[int, ...]:
        """The shape of the indices: ``shape`` with its last dimension divided by P."""
        return tuple(self.shape[:-1]) + (self.shape[-1] // self.dim,)

    @property
    def index_dtype(self) -> np.dtype:
        """The indices' dtype: uint8 for tables of up to 256 points, else uint16."""
        return index_dtype(self.n_points)

    @property
    def index_bits(self) -> int:
        """Bits an index needs: ``ceil(log2 N)``."""
        return max(1, math.ceil(math.log2(self.n_points)))

    @property
    def bits_per_weight(self) -> float:
        """``index_bits / P + scale bits / group`` (indices packed to ``ceil(log2 N)`` bits; the
        table itself, shared by a whole model, is not counted)."""
        return self.index_bits / self.dim + 8 * np.dtype(self.scale_dtype).itemsize / self.group

    def validate(self) -> "VQState":
        """Check that the state describes a decodable array; a ValueError names what is wrong."""
        if not isinstance(self.codebook, str):
            raise ValueError(f"codebook must be a name (str), got {type(self.codebook).__name__}")
        check_points(self.points)
        check_shape(self.shape, positive=True)
        dtype_name(self.dtype)
        # a Python int: an int8 group would overflow size // group
        self.group = check_group(self.group, self.dim, int(self.shape[-1]))
        if self.scale_rule not in SCALE_RULES:
            raise ValueError(f"scale_rule must be one of {', '.join(SCALE_RULES)}, got {self.scale_rule!r}")
        if self.scale_dtype not in SCALE_DTYPES:
            raise ValueError(f"scale_dtype must be one of {', '.join(SCALE_DTYPES)}, got {self.scale_dtype!r}")
        s = self.scales
        if not isinstance(s, np.ndarray) or s.dtype != np.dtype(self.scale_dtype) or s.ndim != 1:
            got = f"{s.dtype} array of shape {s.shape}" if isinstance(s, np.ndarray) else type(s).__name__
            raise ValueError(f"scales must be a flat {self.scale_dtype} array, got {got}")
        host_array(s, "scales")   # refuses a masked entry, which every decode would read through
        if s.size != self.n_groups:
            raise ValueError(f"scales has {s.size} entries, expected {self.n_groups} (one per group)")
        bad = first_bad_scale(s)
        if bad is not None:
            raise ValueError(f"scales must be finite and non-negative: entry {bad} is {s[bad]!r}")
        if self.rotate_size is None:
            if self.rotate_seed is not None:
                raise ValueError("state has a rotate_seed but no rotate_size")
        else:
            if not F.is_int(self.rotate_size):
                raise ValueError(f"rotate_size must be an integer or None, got {self.rotate_size!r}")
            check_size(self.rotate_size)
            if self.shape[-1] % self.rotate_size:
                raise ValueError(f"the Hadamard size {self.rotate_size} does not divide the last dimension "
                                 f"{self.shape[-1]}")
            check_int(self.rotate_seed, "rotate_seed", 0)
        return self

    # --------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """Every field: numpy arrays for ``points``/``scales``, str dtypes, tuple shape; and the
        format's version (:mod:`quantbook.io.versions`), which :meth:`from_dict` checks."""
        return stamped({"codebook": self.codebook, "points": self.points, "scales": self.scales,
                        "shape": tuple(int(v) for v in self.shape), "dtype": dtype_name(self.dtype),
                        "group": int(self.group), "scale_rule": self.scale_rule, "scale_dtype": self.scale_dtype,
                        "rotate_size": None if self.rotate_size is None else int(self.rotate_size),
                        "rotate_seed": None if self.rotate_seed is None else int(self.rotate_seed)}, "VQ state")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VQState":
        """Inverse of :meth:`to_dict`: exactly its keys; arrays of another float dtype (a JSON
        list) are taken only where they hold their dtype's values exactly (no cast that could
        change a value, :func:`~.state.exact_array`), then the state is validated."""
        if not isinstance(d, Mapping):
            raise ValueError("VQState.from_dict needs a mapping")
        check_format_version(d, "VQ state", ValueError, F.as_scalar)
        missing = [k for k in _KEYS if k not in d]
        if missing:
            raise ValueError(f"vq state lacks {', '.join(missing)}")
        extra = sorted(str(k) for k in d if k not in _KEYS and k != FORMAT_KEY)
        if extra:
            raise ValueError(f"vq state has unknown keys: {', '.join(extra)}")
        points = exact_array("points", d["points"], np.float32, "float32 values")
        sd = F.as_scalar(d["scale_dtype"])
        if not isinstance(sd, str) or sd not in SCALE_DTYPES:
            raise ValueError(f"scale_dtype must be one of {', '.join(SCALE_DTYPES)}, got {sd!r}")
        scales = exact_array("scales", d["scales"], sd, f"{sd} values")
        try:   # the integer fields as QuantState.from_dict reads them (format.as_int)
            shape = tuple(F.as_int(v) for v in d["shape"])
            group = F.as_int(d["group"])
            rotate = [None if F.as_scalar(d[k]) is None else F.as_int(d[k]) for k in ("rotate_size", "rotate_seed")]
        except (TypeError, ValueError):
            raise ValueError(f"vq state: shape, group, rotate_size and rotate_seed must be integers, got shape="
                             f"{d['shape']!r}, group={d['group']!r}, rotate_size={d['rotate_size']!r}, "
                             f"rotate_seed={d['rotate_seed']!r}") from None
        return cls(codebook=F.as_scalar(d["codebook"]), points=np.ascontiguousarray(points),
                   scales=np.ascontiguousarray(scales).reshape(-1), shape=shape,
                   dtype=dtype_from_name(d["dtype"]), group=group, scale_rule=F.as_scalar(d["scale_rule"]),
                   scale_dtype=sd, rotate_size=rotate[0], rotate_seed=rotate[1]).validate()

    def __repr__(self) -> str:
        rot = "" if self.rotate_size is None else f", hadamard {self.rotate_size} (seed {self.rotate_seed})"
        return (f"VQState({self.codebook}, N={self.n_points}, P={self.dim}, shape={self.shape}, "
                f"dtype={dtype_name(self.dtype)}, group={self.group}, {self.scale_rule} "
                f"{self.scale_dtype} scales{rot})")
