"""C and CUDA headers for a codebook.

The header holds, as float32, written as decimal literals with 9 significant digits (enough
to identify every float32, so a correctly rounding compiler reads back the same bits; valid
C99 and every C++ standard) with the exact C99 hexadecimal value in a comment beside each:

* ``<id>_code[CODE_SIZE]``        — index→value table in stored order (what a packed code indexes);
* ``<id>_levels[N_LEVELS]``       — the sorted distinct levels;
* ``<id>_thresholds[N_THRESHOLDS]`` and ``<id>_order[CODE_SIZE]`` — the encoder of the
  stored table (:mod:`quantbook.codebooks.encoding`, float32): the bounds between the
  sorted code values and the code index of each rank; ``N_THRESHOLDS = CODE_SIZE - 1``
  (a value stored twice, as FP4's zero, has a bound at the value itself);
* ``<id>_code_to_level[CODE_SIZE]`` / ``<id>_level_to_code[N_LEVELS]`` — the code order
  (stored index → sorted level position, and back; the lowest index for a repeated value);
* macros ``<ID>_BITS``, ``<ID>_CODE_SIZE``, ``<ID>_N_LEVELS``, ``<ID>_N_THRESHOLDS``
  (``<ID>``: :func:`~quantbook.export.identifiers.c_macro`, the identifier in capitals
  unless it has capitals of its own);
* inline helpers ``<id>_rank_of(y)`` (number of thresholds ``t`` with ``!(y <= t)``: ties
  go to the lower rank, NaN past every bound, as the encoding module says),
  ``<id>_encode(y)`` (``order[rank]``, the code :meth:`Codebook.encode` gives with float32
  thresholds) and ``<id>_decode(index)``.

With a :class:`HeaderLayout` (``quantbook export --scale RULE``) the header also carries the
scaled layout of docs/scales.md: a comment naming the rule, block size and ``qmax``; macros
``<ID>_SCALE_RULE`` (the rule's name as a string), ``<ID>_BLOCK_SIZE``, ``<ID>_QMAX``,
``<ID>_SCALE_BYTES`` (bytes of one stored block scale) and ``<ID>_TENSOR_SCALE_BYTES``; and
``<id>_layout_table[CODE_SIZE]``, the float32 table that layout decodes with (the code
rescaled to largest magnitude ``qmax``).  Without one the header is unchanged.

The include guard is ``QUANTBOOK_<ID>_<HASH>_H`` (``_CUH`` for CUDA), ``<HASH>`` the first 12
hexadecimal digits (capitals) of the SHA-256 of the definitions it guards: their UTF-8 text with
``\\n`` line ends (whatever a file stores), from the line after the guard's ``#define`` to its
``#endif``, which holds neither the version nor the codebook's name.  A header included twice is
read once, and two headers that define one identifier's symbols otherwise (``nf4-x`` and
``nf4_x``) are both read, so that the program fails to compile instead of using the first one's
tables.

The C flavour uses ``static const`` arrays and ``static inline`` functions (C99, no
includes); the CUDA flavour ``static __constant__`` arrays and ``static __device__``
functions (no includes, so NVRTC compiles it as is).  Constant memory holds 64 KiB, so a
CUDA header whose tables need more (12 bits and wider, large vector grids) puts them in
global memory (``static __device__ const``) instead.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..codebooks.blocks import check_block_size
from ..numerics.arguments import check_flag, one_line
from ..codebooks.codebook import Codebook
from ..codebooks.require import require_codebook
from ..io.files import name_text
from ..scales import check_qmax, get_rule
from .identifiers import c_identifier, c_macro
from ..version import installed_version

__all__ = ["c_header", "c_float_literal", "c_float_hex", "HeaderLayout", "vector_c_header"]


@dataclass(frozen=True)
class HeaderLayout:
    """The scaled layout a header describes: ``rule`` (a scale rule or its name), ``block_size``,
    ``qmax`` and ``table``, the float32 table the layout decodes with
    (:func:`quantbook.bulk.layouts.scaled_table` of the code and ``qmax``; the caller computes
    it, because the byte layouts are a sibling of this package, not below it).  ``block_size``
    is one the byte layouts store (:func:`quantbook.codebooks.blocks.check_block_size`)."""

    rule: Any
    block_size: int
    qmax: float
    table: Any

    def __post_init__(self) -> None:
        rule = get_rule(self.rule)
        if rule.layout != "scaled":
            raise ValueError(f"scale rule {rule.name!r} is not stored in the scaled layout (docs/scales.md); "
                             f"its header is the plain one, without --scale")
        B = check_block_size(self.block_size)
        q = check_qmax(self.qmax)   # the rules' own check: a float32 they can compute with
        table = np.asarray(self.table)
        if table.dtype != np.float32 or table.ndim != 1 or not np.all(np.isfinite(table)):
            raise ValueError("the layout table must be a 1-D array of finite float32 values")
        object.__setattr__(self, "rule", rule)
        object.__setattr__(self, "block_size", B)
        object.__setattr__(self, "qmax", q)
        object.__setattr__(self, "table", table)


def c_float_literal(value: float) -> str:
    """``float32(value)`` as a C/C++ ``float`` literal with 9 significant digits, e.g. ``-0.696192801f``.

    Nine significant digits identify every float32 uniquely, so a correctly rounding compiler
    (gcc, clang, MSVC, nvcc, NVRTC) reads back the same bits; decimal rather than C99 hex
    literals keep the header valid C++ before C++17 (hex floating literals are C99/C++17).
    ``-0.0`` keeps its sign.
    """
    v = np.float32(value)
    if not np.isfinite(v):
        raise ValueError(f"cannot write non-finite value {float(v)!r} as a C literal")
    text = f"{float(v):.9g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text + "f"


def c_float_hex(value: float) -> str:
    """Exact C99 hexadecimal spelling of ``float32(value)`` (for comments), e.g. ``-0x1.647362p-1``."""
    v = float(np.float32(value))
    mant, exp = v.hex().split("p")
    if "." in mant:
        mant = mant.rstrip("0").rstrip(".")
    return f"{mant}p{exp}"


def _command_name(cb: Any, spelling: str | None) -> str:
    """The codebook as the export command names it: the spelling it was given (a file's path,
    quoted for a shell), else its name."""
    import shlex

    if spelling is not None and not isinstance(spelling, str):
        raise ValueError(f"spelling must be a str (how the codebook was named) or None, got {one_line(spelling)}")
    return _comment_text(cb.name if spelling is None else shlex.quote(spelling))


def _generated_by(cb: Any, spelling: str | None, cuda: bool, name: str | None, ident: str, flags: str = "") -> str:
    """The header's "Generated by" line: the version and the export command that writes it."""
    command = (f"quantbook export {_command_name(cb, spelling)} --format {'cuda' if cuda else 'c'}"
               f"{'' if name is None else ' --name ' + ident}{flags}")
    return f"Generated by quantbook {installed_version()} (`{command}`)."


def _comment_text(text: str) -> str:
    """Text safe inside a ``/* */`` comment on one line, in UTF-8 (a file name's bytes that are not
    UTF-8 as U+FFFD).  ``??/`` is a trigraph for a backslash in C99 and before C++17: at the end
    of a line it splices the next one, and gcc -Wall warns."""
    return " ".join(name_text(text).replace("*/", "* /").replace("/*", "/ *").replace("??/", "?? /").split())


def _float_rows(values: np.ndarray, per_line: int = 2) -> str:
    items = [f"{c_float_literal(v)} /* {c_float_hex(v)} */" for v in values]
    lines = []
    for i in range(0, len(items), per_line):
        lines.append("    " + ", ".join(items[i:i + per_line]) + ("," if i + per_line < len(items) else ""))
    return "\n".join(lines)


def _int_rows(values: np.ndarray, per_line: int = 16) -> str:
    items = [str(int(v)) for v in values]
    lines = []
    for i in range(0, len(items), per_line):
        lines.append("    " + ", ".join(items[i:i + per_line]) + ("," if i + per_line < len(items) else ""))
    return "\n".join(lines)


def c_header(cb: Codebook, name: str | None = None, cuda: bool = False,
             layout: HeaderLayout | None = None, spelling: str | None = None) -> str:
    """The header text for ``cb``.

    ``name`` is the C identifier prefix; by default it is made from ``cb.name`` with
    :func:`~quantbook.export.identifiers.c_identifier` (raises ``ValueError`` when that
    is impossible).  ``cuda=True`` gives the CUDA flavour.  ``layout`` adds the scaled
    layout's macros and table (module docstring).  ``spelling``: how the codebook was named
    to the command line (a FILE.json), for the command the header says made it (default:
    ``cb.name``).
    """
    require_codebook(cb, "c_header")
    cb_code = cb.code
    cuda = check_flag(cuda, "cuda")
    if layout is not None and not isinstance(layout, HeaderLayout):
        raise ValueError(f"layout must be a HeaderLayout, got {type(layout).__name__}")
    if layout is not None and layout.table.size != cb_code.size:
        raise ValueError(f"the layout table has {layout.table.size} entries, the code {cb_code.size}")
    ident = c_identifier(cb.name) if name is None else c_identifier(name, given=True)
    macro = c_macro(ident)
    index_t = "unsigned char" if cb.bits <= 8 else "unsigned short"
    code = cb.code_f32
    levels = cb.levels_f32
    enc = cb.encoder("float32")  # the one encoding rule: bounds and rank -> code index
    thresholds = np.asarray(enc.bounds, dtype=np.float32)
    order = np.asarray(enc.order)
    code_to_level = np.searchsorted(cb.levels, cb_code)  # code entries are levels (zero sign aside)
    if cuda:
        index_bytes = 1 if cb.bits <= 8 else 2
        nbytes = (4 * (code.size + levels.size + max(thresholds.size, 1) + (0 if layout is None else code.size))
                  + index_bytes * (order.size + code.size + levels.size))
        arr = _cuda_array(nbytes)
        fn = "static __device__ __forceinline__"
    else:
        arr = "static const"
        fn = "static inline"
    level_to_code = cb.level_to_code
    recipe = json.dumps(cb.recipe, sort_keys=True) if cb.recipe is not None else "none"
    n_thr = max(thresholds.size, 1)  # C forbids zero-length arrays; a 1-entry table gets a dummy
    thr_rows = _float_rows(thresholds) if thresholds.size else "    0.0f /* unused: one code */"
    if thresholds.size:
        # !(y <= t) rather than y > t: NaN counts past every bound, as in the encoding module
        rank_body = (f"    unsigned rank = 0;\n    for (unsigned i = 0; i < {macro}_N_THRESHOLDS; ++i)\n"
                     f"        rank += !(y <= {ident}_thresholds[i]);\n    return rank;")
    else:  # one code: no loop (`i < 0` is a -Wtype-limits warning)
        rank_body = f"    (void)y;\n    (void){ident}_thresholds;\n    return 0;"
    comment = f"""/* {_comment_text(cb.name)}: {cb.bits}-bit codebook, {cb.n_levels} levels, {code.size} codes.
 * Source: {_comment_text(cb.source)}
 * Recipe: {_comment_text(recipe)}
 * {_generated_by(cb, spelling, cuda, name, ident, _layout_flags(layout))}
 *{_layout_comment(layout, ident)}
 * Values are float32 literals with 9 significant digits (they round-trip float32 exactly);
 * the comments give their exact C99 hexadecimal value.
 * Encoding of a normalised value y: rank = number of thresholds t with !(y <= t) (a value
 * exactly on a threshold goes to the LOWER rank; NaN past every threshold); code =
 * {ident}_order[rank].  Decoding: {ident}_code[code].  In bitsandbytes' format (quantbook.quantize
 * without a scale rule, docs/format.md) y = x * (1.0f / absmax) in a full block and x / absmax in
 * the partial last one: the two can round differently, and only these give quantize's bytes.
 */
"""
    body = f"""#define {macro}_BITS {cb.bits}
#define {macro}_CODE_SIZE {code.size}
#define {macro}_N_LEVELS {levels.size}
#define {macro}_N_THRESHOLDS {thresholds.size}

/* index -> value, in stored order (the value a packed code decodes to) */
{arr} float {ident}_code[{code.size}] = {{
{_float_rows(code)}
}};

/* the distinct levels, ascending */
{arr} float {ident}_levels[{levels.size}] = {{
{_float_rows(levels)}
}};

/* decision thresholds: float32 midpoints float32(float32(a + b) / 2) of adjacent code values, ascending */
{arr} float {ident}_thresholds[{n_thr}] = {{
{thr_rows}
}};

/* encoder: rank (number of thresholds below y) -> stored code index */
{arr} {index_t} {ident}_order[{code.size}] = {{
{_int_rows(order)}
}};

/* code order: stored index -> position in {ident}_levels */
{arr} {index_t} {ident}_code_to_level[{code.size}] = {{
{_int_rows(code_to_level)}
}};

/* code order: position in {ident}_levels -> stored index (lowest index for a repeated value) */
{arr} {index_t} {ident}_level_to_code[{levels.size}] = {{
{_int_rows(level_to_code)}
}};

/* rank of y among the sorted code values: thresholds below it; a tie goes to the lower rank */
{fn} unsigned {ident}_rank_of(float y)
{{
{rank_body}
}}

/* stored code index of a normalised value y (the nearest code value) */
{fn} unsigned {ident}_encode(float y)
{{
    return {ident}_order[{ident}_rank_of(y)];
}}

/* value of a stored code index (no range check) */
{fn} float {ident}_decode(unsigned index)
{{
    return {ident}_code[index];
}}

{_layout_block(layout, macro, ident, arr)}"""
    return comment + _guarded(body, macro, cuda)


def _guarded(body: str, macro: str, cuda: bool) -> str:
    """``body`` inside its include guard, spelled from the identifier's macro and a hash of ``body``
    itself: a second header that defines the same symbols otherwise (two names that give one
    identifier, as ``nf4-x`` and ``nf4_x`` do) is then read, and its definitions fail to compile,
    where one guard for both skipped it and left the first one's values in its place.  A header
    with the same definitions keeps the guard, so including it twice is harmless."""
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()[:12].upper()
    guard = f"QUANTBOOK_{macro}_{digest}_{'CUH' if cuda else 'H'}"
    return f"#ifndef {guard}\n#define {guard}\n\n{body}#endif /* {guard} */\n"


def _layout_flags(layout: HeaderLayout | None) -> str:
    if layout is None:
        return ""
    return f" --scale {_comment_text(layout.rule.name)} --block-size {layout.block_size} --qmax {layout.qmax!r}"


def _layout_comment(layout: HeaderLayout | None, ident: str) -> str:
    """Comment lines on the scaled layout, ending where the header's comment goes on (``" *"``)."""
    if layout is None:
        return ""
    r = layout.rule
    tensor = f"; each tensor a {r.tensor_bytes}-byte {r.tensor_value}" if r.tensor_bytes else ""
    return (f" Scaled layout (docs/scales.md): scale rule {_comment_text(r.name)}, block size {layout.block_size}, "
            f"qmax {layout.qmax:g}.\n"
            f" * Each block of {layout.block_size} values stores a {r.stored_bytes}-byte scale ({r.stored_dtype}) "
            f"and 4-bit codes, two per byte, low nibble first{tensor}.\n"
            f" * Decoding: {ident}_layout_table[code] * scale, where {ident}_layout_table is {ident}_code rescaled\n"
            f" * to largest magnitude {layout.qmax:g} ({_scale_choice(r)}).\n"
            + ("" if _is_ggml(r) else
               f" * Encoding in this layout is not {ident}_encode below: a value half-way between two entries\n"
               f" * goes to the one stored at an even index when exactly one of the two is, else to the lower,\n"
               f" * and +-0 by the sign of the value (docs/scales.md).\n")
            + " *")


def _is_ggml(rule) -> bool:
    from ..scales.ggml import GgmlSearch

    return isinstance(rule, GgmlSearch)


def _scale_choice(rule) -> str:
    if rule.deterministic or rule.encodes_with_amax:
        return "the rule maps a block's absmax to it"
    if _is_ggml(rule):
        return ("ggml's search picks each block's signed scale and its codes, with ggml's own\n"
                " * nearest-entry rule (quantbook/scales/ggml.py), not the encoder below")
    return "the rule searches each block's scale"


def _layout_block(layout: HeaderLayout | None, macro: str, ident: str, arr: str) -> str:
    if layout is None:
        return ""
    r = layout.rule
    rule_text = json.dumps(r.name)  # a C string literal: the names are plain ASCII
    title = f"scaled layout: scale rule {_comment_text(r.name)}, block size {layout.block_size}, qmax {layout.qmax:g}"
    return f"""/* {title} */
#define {macro}_SCALE_RULE {rule_text}
#define {macro}_BLOCK_SIZE {layout.block_size}
#define {macro}_QMAX {c_float_literal(layout.qmax)}
#define {macro}_SCALE_BYTES {r.stored_bytes}
#define {macro}_TENSOR_SCALE_BYTES {r.tensor_bytes}

/* index -> value of the scaled layout: {ident}_code * qmax / max|{ident}_code| (float32) */
{arr} float {ident}_layout_table[{layout.table.size}] = {{
{_float_rows(layout.table)}
}};

"""


#: bytes of CUDA constant memory; tables beyond it go to global memory
_CONSTANT_BYTES = 1 << 16


def _cuda_array(nbytes: int) -> str:
    """The storage of a CUDA header's tables, which need ``nbytes`` in all."""
    return "static __constant__" if nbytes <= _CONSTANT_BYTES else "static __device__ const"


def vector_c_header(cb: Any, name: str | None = None, cuda: bool = False, spelling: str | None = None) -> str:
    """The header text for a :class:`~quantbook.codebooks.vector.VectorCodebook`: the
    ``N × P`` float32 table ``<id>_points[SIZE][DIM]`` (9-significant-digit literals, exact hex
    in comments), macros ``<ID>_DIM``, ``<ID>_SIZE``, ``<ID>_INDEX_BITS``, and inline
    ``<id>_decode(index, out)`` and ``<id>_encode(v)`` (nearest point by squared distance in
    double precision, the lowest index on a tie: the rule of ``VectorCodebook.nearest``)."""
    require_codebook(cb, "vector_c_header", vector=True)
    cuda = check_flag(cuda, "cuda")
    ident = c_identifier(cb.name) if name is None else c_identifier(name, given=True)
    macro = c_macro(ident)
    pts = cb.points
    arr = _cuda_array(4 * pts.size) if cuda else "static const"
    fn = "static __device__ __forceinline__" if cuda else "static inline"
    recipe = json.dumps(cb.recipe, sort_keys=True) if cb.recipe is not None else "none"
    rows = []
    for i, row in enumerate(pts):
        vals = ", ".join(c_float_literal(v) for v in row)
        hexes = " ".join(c_float_hex(v) for v in row)
        rows.append(f"    {{{vals}}}{',' if i + 1 < len(pts) else ''} /* {i}: {hexes} */")
    table = "\n".join(rows)
    title = (f"{_comment_text(cb.name)}: vector codebook, {cb.size} points in {cb.dim} dimensions, "
             f"{cb.index_bits}-bit index")
    comment = f"""/* {title}.
 * Source: {_comment_text(cb.source)}
 * Recipe: {_comment_text(recipe)}
 * {_generated_by(cb, spelling, cuda, name, ident)}
 *
 * One index stands for {cb.dim} consecutive (scaled) weights: decode writes {ident}_points[index].
 * Encoding: the nearest point by squared Euclidean distance summed over the coordinates in
 * order, in double precision, the LOWEST index on a tie (as quantbook's VectorCodebook.nearest).
 * Ties agree bit for bit only without contracted multiply-adds (-ffp-contract=off; nvcc --fmad=false).
 * Values are float32 literals with 9 significant digits (they round-trip float32 exactly);
 * the comments give their exact C99 hexadecimal value.
 */
"""
    body = f"""#define {macro}_DIM {cb.dim}
#define {macro}_SIZE {cb.size}
#define {macro}_INDEX_BITS {cb.index_bits}

/* index -> point */
{arr} float {ident}_points[{cb.size}][{cb.dim}] = {{
{table}
}};

/* the point of an index (no range check) */
{fn} void {ident}_decode(unsigned index, float *out)
{{
    for (unsigned q = 0; q < {macro}_DIM; ++q)
        out[q] = {ident}_points[index][q];
}}

/* index of the nearest point to v[0..DIM-1] (exhaustive search; ties to the lowest index) */
{fn} unsigned {ident}_encode(const float *v)
{{
    unsigned best_j = 0;
    double best = -1.0;
    for (unsigned j = 0; j < {macro}_SIZE; ++j) {{
        double d = 0.0;
        for (unsigned q = 0; q < {macro}_DIM; ++q) {{
            double t = (double)v[q] - (double){ident}_points[j][q];
            d += t * t;
        }}
        if (best < 0.0 || d < best) {{
            best = d;
            best_j = j;
        }}
    }}
    return best_j;
}}

"""
    return comment + _guarded(body, macro, cuda)
