"""``list``, ``show`` and ``export``: the codebooks themselves."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from ..codebooks.blocks import DEFAULT_BLOCK_SIZE, MAX_BLOCK, MIN_BLOCK
from .common import (UsageError, add_block_size, add_json_flag, add_output, add_qmax, add_scale, block_size_note,
                     integer, load_codebook, output_path, point_rows, print_codebook, print_json)

if TYPE_CHECKING:
    from ..codebooks.codebook import Codebook
    from ..codebooks.vector import VectorCodebook

__all__ = ["register"]


def _cmd_list(args) -> int:
    from ..codebooks.registry import REGISTRY

    if args.json:
        print_json([{"name": name, "bits": e.codebook.bits, "n_levels": e.codebook.n_levels,
                     "expect": e.expect, "summary": e.summary, "source": e.codebook.source}
                    for name, e in REGISTRY.items()])
        return 0
    width = max(len(n) for n in REGISTRY)
    for name, entry in REGISTRY.items():
        print(f"{name:<{width}}  {entry.summary}")
    return 0


def _cmd_show(args) -> int:
    from ..naming import is_vector_spec

    if is_vector_spec(args.name):
        _print_vector(args.name, args.json)
        return 0
    print_codebook(load_codebook(args.name), args.json)
    return 0


def _print_vector(spec: str, as_json: bool) -> None:
    """``show``'s output for a vector codebook (docs/vector-codebooks.md)."""
    from ..naming import resolve_vector

    cb = resolve_vector(spec)
    if as_json:
        print_json(cb.to_dict())
        return
    print(f"{cb.name}: vector codebook, {cb.size} points in {cb.dim}-D, {cb.index_bits}-bit index "
          f"({cb.index_bits / cb.dim:g} bits/weight before the group scale)")
    print(f"source: {cb.source}")
    print(f"recipe: {'none' if cb.recipe is None else json.dumps(cb.recipe, sort_keys=True)}")
    for i, row in enumerate(point_rows(cb.points)):
        print(f"{i:>5}  {row}")


def _header_layout(cb, scale: str, block_size: int, qmax: float | None):
    """The scaled layout of ``cb`` under ``scale`` for a header: the table is the one the byte
    layout decodes with (quantbook.bulk.layouts), computed here because export sits beside bulk."""
    from ..bulk.layouts import scaled_table
    from ..export import HeaderLayout
    from ..scales import DEFAULT_QMAX

    q = DEFAULT_QMAX if qmax is None else qmax
    return HeaderLayout(scale, block_size, q, scaled_table(cb.code, q))


def _cmd_export(args) -> int:
    from ..export import export, write_output

    if args.output == "-":   # the usual spelling of standard output, the default
        args.output = None
    # a file is named by its path in the header's command; a name by the codebook's (resolved) name
    path = args.codebook if args.codebook.strip().lower().endswith(".json") else None
    if args.output is not None:   # fail before doing any work; the file is read without surrounding spaces
        output_path(args.output, (path, path.strip()) if path else ())
    from ..naming import depends_on_block_size
    from ..scales import check_scaled_only, get_rule

    if args.scale is None and args.block_size is not None and not depends_on_block_size(args.codebook):
        raise UsageError("--block-size applies only with --scale or to a lloyd-... spelling without B")
    if args.scale is not None and args.format not in ("c", "cuda"):
        raise UsageError(f"--scale is written only into c and cuda headers, not --format {args.format}")
    check_scaled_only(None if args.scale is None else get_rule(args.scale), **{"--qmax": args.qmax is not None})
    block_size = DEFAULT_BLOCK_SIZE if args.block_size is None else args.block_size
    from ..naming import is_vector_spec, resolve_vector

    cb: Codebook | VectorCodebook
    if is_vector_spec(args.codebook):
        from ..export import VECTOR_FORMATS

        if args.scale is not None:
            raise UsageError("--scale applies to scalar codebooks, not to vector codebooks")
        if args.format not in VECTOR_FORMATS:
            raise UsageError(f"a vector codebook exports as {', '.join(VECTOR_FORMATS)}, not --format {args.format}")
        cb = resolve_vector(args.codebook)
    else:
        cb = load_codebook(args.codebook, block_size)
    if args.name is not None and args.format not in ("c", "cuda", "bnb"):
        raise UsageError(f"--name names the C identifier of the c, cuda and bnb formats, not of "
                         f"--format {args.format}")
    layout = None if args.scale is None else _header_layout(cb, args.scale, block_size, args.qmax)
    data = export(cb, args.format, name=args.name, layout=layout, spelling=path)
    note = block_size_note(args)
    if note:   # the output is a file format (a header): the note goes beside it, to standard error
        print(note, file=sys.stderr)
    if args.output is not None:
        write_output(data, args.output)
        print(f"wrote {args.output} ({args.format}, {len(data)} {'bytes' if isinstance(data, bytes) else 'chars'})",
              file=sys.stderr)
        return 0
    if isinstance(data, bytes):   # a binary format (export's BINARY_FORMATS)
        if sys.stdout.isatty():
            raise UsageError(f"format {args.format} is binary: give -o FILE or redirect standard output")
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    sys.stdout.write(data)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``list``, ``show`` and ``export`` to the command line's sub-commands ``sub``."""
    from ..scales import rule_spellings   # the rules' one list, for the help texts

    from ..export import FORMATS

    s = sub.add_parser("list", help="published codebooks, one line each (--json: with their citations)")
    add_json_flag(s)
    s.set_defaults(func=_cmd_list)

    s = sub.add_parser("show", help="print a codebook (registry NAME, FILE.json, nfK or lloyd-...; "
                                    "vector grids such as higgs-2d-256)")
    s.add_argument("name", metavar="NAME|FILE.json",
                   help="registry name, FILE.json, nfK, lloyd-... or a vector grid (e.g. higgs-2d-256)")
    add_json_flag(s)
    s.set_defaults(func=_cmd_show)

    s = sub.add_parser(
        "export", help="write a codebook as JSON, a C/CUDA header, .npy or a bitsandbytes quant map",
        description="Write a codebook (registry NAME or FILE.json) to standard output or -o FILE. "
                    "json/c/cuda are text; npy/bnb are binary (written to standard output only when "
                    "it is not a terminal).")
    s.add_argument("codebook", metavar="NAME|FILE.json",
                   help="registry name, FILE.json, nfK or lloyd-... (see evaluate-model; without B, --block-size)")
    s.add_argument("--format", "-f", choices=FORMATS, default="json", help="output format (default json)")
    add_output(s, "the codebook (default: standard output, which - also names)")
    s.add_argument("--name", default=None,
                   help="C identifier for the tables (c, cuda; bnb: its quant_type), used as given; default: "
                        "the codebook name with non-identifier characters replaced by '_'")
    add_scale(s, "rule whose scaled layout the c and cuda headers describe (rule, block size, qmax, scale bytes, "
                 f"rescaled table): {rule_spellings(lambda r: r.layout == 'scaled')} (docs/scales.md)")
    # two rules: the layout's (checked with --scale) and the derivation's (a lloyd-... spelling)
    add_block_size(s, f": with --scale the layout's, a power of two from {MIN_BLOCK} to {MAX_BLOCK} (default "
                      f"{DEFAULT_BLOCK_SIZE}); also the B of a lloyd-... spelling", type=integer)
    add_qmax(s)
    s.set_defaults(func=_cmd_export)
