"""Published codebooks, each with its exact published values, citation and generating recipe.

Every :class:`Published` entry holds the table *as published* (``codebook.code`` in the
published index order, float64 values that are the published decimals or, for float32
tables, the exact float32 values) and the recipe that should reproduce it.  ``expect``
says how far the audit (:mod:`quantbook.verify.audit`) must reproduce it:

``bit-exact``   every float32 bit of the re-derived table equals the published one;
``decimals``    the re-derived table, rounded to ``decimals`` places, equals the published
                decimals (the table was printed rounded);
``report``      the audit reports the difference but does not fail on it (published numbers
                whose recipe is only approximately known, e.g. a 1960 hand computation);
``transcribed`` the values are copied from their source, not derived (ggml's hand-tuned
                IQ4_NL integers; int4-sym, which *is* its definition j/7).  The recipe only
                restates the copy, so the audit shows the row as a transcription, never as
                reproduced, and never fails on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, TypedDict

import numpy as np

from ..errors import NotFoundError
from ..io.files import read_small_file
from ..numerics.arguments import check_int
from .codebook import Codebook, CodebookError
from .spelling import published_name

__all__ = ["Published", "REGISTRY", "EXPECTATIONS", "get", "names", "load"]

#: what the audit checks for a table (see the module docstring)
EXPECTATIONS = ("bit-exact", "decimals", "report", "transcribed")


@dataclass(frozen=True)
class Published:
    """A registry entry: a published table, where it comes from and how :mod:`quantbook.verify`
    judges its re-derivation (``expect``: one of :data:`EXPECTATIONS`)."""

    codebook: Codebook
    summary: str  # one line for `quantbook list`
    expect: str = "bit-exact"  # bit-exact | decimals | report | transcribed
    decimals: int | None = None
    notes: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)  # other published numbers

    def __post_init__(self) -> None:
        if self.expect not in EXPECTATIONS:
            raise ValueError(f"expect must be one of {', '.join(EXPECTATIONS)}, got {self.expect!r}")
        if self.decimals is not None:   # np.round's places; 17 is float64's last significant digit
            check_int(self.decimals, "decimals", 0, 17, also=" or None")
        elif self.expect == "decimals":
            raise ValueError("expect='decimals' needs the number of decimals the table was published to")

    @property
    def name(self) -> str:
        """The registry name: the codebook's."""
        return self.codebook.name


_BNB_FUNCTIONAL = ("bitsandbytes-foundation/bitsandbytes, bitsandbytes/functional.py, "
                   "get_4bit_type (e.g. commit 01327aa0119fa503ea16322dd72f69f202e4502e)")

NF4_BNB = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
]

# bitsandbytes' FP4 in bit-pattern order before normalisation; -0 in that Python list is
# the integer 0, so index 8 holds +0.0.  Normalised by 12 in float32.
_FP4_RAW = [0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0]
FP4_BNB = [float(np.float32(v) / np.float32(12.0)) for v in _FP4_RAW]

# bitsandbytes' pure-torch CPU backend uses FP4 rounded to 4 decimals.
FP4_BNB_CPU = [0.0, 0.0052, 0.6667, 1.0, 0.3333, 0.5, 0.1667, 0.25,
               0.0, -0.0052, -0.6667, -1.0, -0.3333, -0.5, -0.1667, -0.25]

AF4_64 = [
    -1.0, -0.69441008, -0.51243739, -0.3736951, -0.25607552, -0.14982478, -0.04934812, 0.0,
    0.04273164, 0.12934483, 0.21961274, 0.31675666, 0.42563882, 0.55496234, 0.72424863, 1.0,
]

NF4_TORCHAO = [-1.0, -0.6962, -0.5251, -0.3949, -0.2844, -0.1848, -0.0911, 0.0,
               0.0796, 0.1609, 0.2461, 0.3379, 0.4407, 0.5626, 0.7230, 1.0]

IQ4_NL_INT = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]

_E2M1_MAGS = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
E2M1 = [float(np.float32(m) / np.float32(6.0)) for m in _E2M1_MAGS] + \
       [-float(np.float32(m) / np.float32(6.0)) for m in _E2M1_MAGS]


class _MaxTable(TypedDict):
    y: list[float]
    x: list[float]
    mse: float


# J. Max, "Quantizing for Minimum Distortion", IRE Trans. Inf. Theory IT-6(1):7-12, 1960,
# Table I (unit-variance Gaussian, minimum mean-squared error): positive output levels y_j,
# positive interval end points x_j (0 is an end point for even N) and the printed error.
MAX1960: dict[int, _MaxTable] = {
    2: dict(y=[0.7980], x=[], mse=0.3634),
    4: dict(y=[0.4528, 1.510], x=[0.9816], mse=0.1175),
    8: dict(y=[0.2451, 0.7560, 1.344, 2.152], x=[0.5006, 1.050, 1.748], mse=0.03454),
    16: dict(y=[0.1284, 0.3881, 0.6568, 0.9424, 1.256, 1.618, 2.069, 2.733],
             x=[0.2582, 0.5224, 0.7996, 1.099, 1.437, 1.844, 2.401], mse=0.009497),
}
_MAX_CITE = ("J. Max, 'Quantizing for Minimum Distortion', IRE Trans. Information Theory "
             "IT-6(1):7-12, 1960, Table I")


def _cb(name, values, bits, source, recipe, code_order=True):
    vals = np.asarray(values, dtype=np.float64)
    return Codebook(levels=np.unique(vals), bits=bits, name=name, source=source, recipe=recipe,
                    code=vals if code_order else None)


def _build() -> dict[str, Published]:
    reg: dict[str, Published] = {}

    def add(p: Published) -> None:
        reg[p.name] = p

    nf4_recipe = {"method": "nf", "bits": 4, "offset": "0.9677083", "precision": "float32-bnb"}
    add(Published(
        _cb("nf4", NF4_BNB, 4, f"{_BNB_FUNCTIONAL} 'nf4'; also csrc/kernels.cu; "
            "Dettmers et al., QLoRA, arXiv:2305.14314", nf4_recipe),
        "bitsandbytes NF4 (QLoRA NormalFloat), float32",
        notes="create_normal_map(offset=0.9677083) in float32 with torch.linspace"))
    add(Published(
        _cb("fp4", FP4_BNB, 4, f"{_BNB_FUNCTIONAL} 'fp4' (bit-pattern order, divided by its max 12)",
            {"method": "bnb-fp4"}),
        "bitsandbytes FP4 (own bias-3 minifloat), bit-pattern order, /12 in float32"))
    add(Published(
        _cb("fp4-bnb-cpu", FP4_BNB_CPU, 4,
            "bitsandbytes-foundation/bitsandbytes, bitsandbytes/backends/utils.py _FP4_QUANT_TABLE "
            "(commit 0155ecc672fc1523ae8dfd6440060f1c404fc8c3)",
            {"method": "rounded", "base": {"method": "bnb-fp4"}, "decimals": 4}),
        "bitsandbytes' CPU-backend FP4 table (FP4 rounded to 4 decimals)",
        expect="decimals", decimals=4,
        notes="the table bitsandbytes' pure-torch CPU path quantizes and dequantizes with"))
    add(Published(
        _cb("af4", AF4_64, 4,
            "D. Yoshida, 'NF4 Isn't Information Theoretically Optimal (and that's Good)', "
            f"arXiv:2306.06965, AF4 for block size 64; as in {_BNB_FUNCTIONAL} 'af4' "
            "(stored there in reverse order)",
            {"method": "lloyd", "bits": 4, "block_size": 64, "loss": "l1", "domain": "normalized",
             "normalization": "absmax", "source": "normal", "fixed": [-1.0, 0.0, 1.0],
             "partition": "halves"}),
        "AF4 (AbnormalFloat, Yoshida 2023), block size 64: min expected L1 of normalised values",
        expect="decimals", decimals=8, extra={"block_size": 64},
        notes="reproduced to 8 decimals by median conditions on each half [-1,0], [0,1] separately "
              "(Yoshida's generate_af4.py); not the nearest-level L1 optimum, see the audit"))
    add(Published(
        _cb("nf4-torchao", NF4_TORCHAO, 4,
            "pytorch/ao, torchao/dtypes/nf4tensor.py, NF4Tensor.from_tensor "
            "(commit 0598012907d6f6e88734088a65f788c38d294a65)",
            {"method": "rounded", "base": nf4_recipe, "decimals": 4}),
        "torchao NF4 (bitsandbytes NF4 rounded to 4 decimals)", expect="decimals", decimals=4))
    add(Published(
        _cb("iq4_nl", [v / 127 for v in IQ4_NL_INT], 4,
            "ggml-org/llama.cpp, ggml/src/ggml-common.h, kvalues_iq4nl (int8), divided by 127",
            {"method": "scaled-integers", "integers": IQ4_NL_INT, "divisor": 127, "bits": 4}),
        "ggml IQ4_NL non-linear 4-bit grid, kvalues_iq4nl/127 (no exact zero)",
        expect="transcribed",
        notes="the integers are hand-tuned and copied from ggml-common.h; the recipe only divides them by 127"))
    add(Published(
        _cb("e2m1", E2M1, 4,
            "OCP Microscaling Formats (MX) Specification v1.0 (2023), FP4 E2M1 element type; "
            "magnitudes 0,0.5,1,1.5,2,3,4,6 divided by 6, bit-pattern order (MXFP4/NVFP4 grid)",
            {"method": "e2m1", "normalise": True}),
        "OCP E2M1 (MXFP4 / NVFP4 element grid) scaled to [-1, 1], bit-pattern order"))
    add(Published(
        _cb("int4-sym", [j / 7 for j in range(-7, 8)], 4,
            "symmetric uniform 4-bit integers j/7, j=-7..7 (as bitsandbytes' get_4bit_type 'int4')",
            {"method": "uniform-symmetric", "bits": 4}),
        "symmetric int4: j/7 for j = -7..7 (15 levels)", expect="transcribed",
        notes="the table is its definition j/7; the recipe restates it rather than deriving it"))
    for n, d in MAX1960.items():
        y = np.array(d["y"])
        levels = np.concatenate([-y[::-1], y])
        bits = int(np.log2(n))
        add(Published(
            _cb(f"max1960-n{n}", levels, bits, _MAX_CITE,
                {"method": "lloyd", "bits": bits, "loss": "l2", "normalization": "none",
                 "source": "normal", "fixed": []}, code_order=False),
            f"Max (1960) minimum-MSE quantizer of N(0,1), N={n} levels (unnormalised)",
            expect="report", decimals=4,
            extra={"thresholds": [-v for v in d["x"][::-1]] + [0.0] + list(d["x"]),
                   "mse": d["mse"]}))
    return reg


_ENTRIES: dict[str, Published] = _build()
#: Every published codebook by name, read-only.  Every caller shares it (an entry one replaced or
#: removed was so for the rest), and a table of the user's own is a Codebook or its JSON file.
REGISTRY: Mapping[str, Published] = MappingProxyType(_ENTRIES)


def names() -> list[str]:
    """The registry's names, in registration order (:func:`get` takes each)."""
    return list(REGISTRY)


def get(name: str) -> Codebook:
    """The published codebook called ``name`` (see :func:`names`; case-insensitive, as every
    codebook name: :func:`~quantbook.codebooks.spelling.published_name`)."""
    found = published_name(name, REGISTRY)
    if found is None:
        raise NotFoundError(f"no published codebook {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[found].codebook


def _load_file(path: str) -> Codebook:
    """The Codebook in the JSON file ``path`` (:func:`load`)."""
    # a 16-bit table (65536 levels and codes) is well under 8 MiB of JSON
    data = read_small_file(path, CodebookError, 16 * 2**20)
    try:
        return Codebook.from_json(data)
    except CodebookError as exc:
        raise CodebookError(f"{path}: {exc}") from None


def load(spec: str | os.PathLike) -> Codebook:
    """The Codebook ``spec`` names: a registry name, or the path of a codebook JSON file (as
    written by ``--json``): a string ending in ``.json``, or any :class:`os.PathLike`.

    Registry names and the ``.json`` extension are matched case-insensitively.  Raises ``KeyError`` for an unknown
    name, ``FileNotFoundError`` for a missing file and :class:`CodebookError` (one line) for a
    file that cannot be read or holds no valid codebook.
    """
    if isinstance(spec, os.PathLike):   # a Path is the file it names, as open() takes it, never a registry name
        return _load_file(os.fspath(spec))
    name = published_name(spec, REGISTRY)
    if name is not None:
        return REGISTRY[name].codebook
    if isinstance(spec, str) and spec.rstrip().lower().endswith(".json"):   # "x.json " may name a file
        return _load_file(spec)
    raise NotFoundError(f"no published codebook {spec!r} (and not a .json file); known: {', '.join(REGISTRY)}")
