"""``list``, ``show`` and ``export``: the codebooks themselves."""

from __future__ import annotations

import argparse
import sys

from .common import UsageError, add_json_flag, load_codebook, output_path, print_codebook, print_json

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
    print_codebook(load_codebook(args.name), args.json)
    return 0


def _cmd_export(args) -> int:
    from ..export import BINARY_FORMATS, export, write_output

    if args.output is not None:
        output_path(args.output)  # fail before doing any work
    cb = load_codebook(args.codebook)
    data = export(cb, args.format, name=args.name)
    if args.output is not None:
        write_output(data, args.output)
        print(f"wrote {args.output} ({args.format}, {len(data)} {'bytes' if isinstance(data, bytes) else 'chars'})",
              file=sys.stderr)
        return 0
    if args.format in BINARY_FORMATS:
        if sys.stdout.isatty():
            raise UsageError(f"format {args.format} is binary: give -o PATH or redirect standard output")
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    sys.stdout.write(data)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from ..export import FORMATS

    s = sub.add_parser("list", help="published codebooks with a one-line source")
    add_json_flag(s)
    s.set_defaults(func=_cmd_list)

    s = sub.add_parser("show", help="print a codebook (registry NAME, FILE.json, nfK or lloyd-...)")
    s.add_argument("name", metavar="NAME|FILE.json")
    add_json_flag(s)
    s.set_defaults(func=_cmd_show)

    s = sub.add_parser(
        "export", help="write a codebook as JSON, a C/CUDA header, .npy or a bitsandbytes quant map",
        description="Write a codebook (registry NAME or FILE.json) to standard output or -o PATH. "
                    "json/c/cuda are text; npy/bnb are binary (written to standard output only when "
                    "it is not a terminal).")
    s.add_argument("codebook", metavar="NAME|FILE.json",
                   help="registry name, FILE.json, nfK or lloyd-... (see evaluate-model; default B 64)")
    s.add_argument("--format", "-f", choices=FORMATS, default="json", help="output format (default json)")
    s.add_argument("-o", "--output", metavar="PATH", default=None, help="file to write (default: standard output)")
    s.add_argument("--name", default=None,
                   help="C identifier for the tables (c, cuda, bnb); default: the codebook name with "
                        "non-identifier characters replaced by '_'")
    s.set_defaults(func=_cmd_export)
