"""Command-line sub-commands for *using* codebooks: ``export``, ``evaluate-model``, ``plot``, ``plot-sweep``.

Kept out of :mod:`quantbook.cli` so that module stays small; :func:`register` adds the
sub-commands to its parser.  Errors follow the CLI's rule: one line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from .cli import _print_json

__all__ = ["register"]


def _usage_error(msg: str):
    from .cli import UsageError

    return UsageError(msg)


# ----------------------------------------------------------------------------------- export
def _cmd_export(args) -> int:
    from .cli import _load_codebook
    from .export import BINARY_FORMATS, check_output_path, export, write_output

    if args.output is not None:
        check_output_path(args.output)  # fail before doing any work
    cb = _load_codebook(args.codebook)
    data = export(cb, args.format, name=args.name)
    if args.output is not None:
        write_output(data, args.output)
        print(f"wrote {args.output} ({args.format}, {len(data)} {'bytes' if isinstance(data, bytes) else 'chars'})",
              file=sys.stderr)
        return 0
    if args.format in BINARY_FORMATS:
        if sys.stdout.isatty():
            raise _usage_error(f"format {args.format} is binary: give -o PATH or redirect standard output")
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return 0
    sys.stdout.write(data)
    return 0


# --------------------------------------------------------------------------- evaluate-model
def _progress_printer(enabled: bool):
    if not enabled:
        return None, lambda: None

    tty = sys.stderr.isatty()  # a terminal: one updating line; else one line per tensor

    def show(i, n, info):
        msg = f"[{i + 1}/{n}] {info.name} {list(info.shape)} {info.dtype}"
        print(f"\r\033[K{msg}" if tty else msg, end="" if tty else "\n", file=sys.stderr, flush=True)

    def done():
        if tty:
            print("\r\033[K", end="", file=sys.stderr, flush=True)

    return show, done


def _block_size(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 16 or v > 4096 or v & (v - 1):
        raise argparse.ArgumentTypeError(f"must be a power of two from 16 to 4096, got {v}")
    return v


def _cmd_evaluate_model(args) -> int:
    from .model import evaluate_model, install_source_parser, resolve_codebooks

    if args.plot is not None:  # fail before doing any work
        import importlib.util

        from .export import check_output_path

        check_output_path(args.plot)
        if importlib.util.find_spec("matplotlib") is None:
            raise _usage_error("--plot needs matplotlib: pip install 'quantbook[plot]'")
    install_source_parser()  # lets lloyd-...@FILE.safetensors:GLOB name a fitted table
    codebooks = resolve_codebooks(args.codebooks, args.block_size)
    show, done = _progress_printer(args.progress or sys.stderr.isatty())
    try:
        report = evaluate_model(args.file, codebooks, block_size=args.block_size, nested=args.nested,
                                tensors=args.tensors, backend=args.backend, progress=show)
    finally:
        done()
    if args.json:
        _print_json(report.to_dict(per_tensor=args.per_tensor))
    else:
        print(report.format_table(per_tensor=args.per_tensor))
    if args.plot is not None:
        from .plots import plot_model_report

        plot_model_report(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------ plots
def _resolve_for_plots(specs: list[str], block_size: int):
    from .model import install_source_parser, resolve_codebook
    from .model.specs import depends_on_block_size

    install_source_parser()
    out = []
    for spec in specs:
        for one in (t.strip() for t in spec.split(",")):
            if not one:
                continue
            if depends_on_block_size(one):
                out.append((f"{one} (fit at each B)", lambda B, _s=one: resolve_codebook(_s, B)))
            else:
                out.append((one, resolve_codebook(one, block_size)))
    if not out:
        raise _usage_error("no codebooks given")
    return out


def _cmd_plot(args) -> int:
    from .export import check_output_path
    from .plots import plot_levels

    check_output_path(args.output)
    cbs = [(label, cb(args.block_size) if callable(cb) else cb)
           for label, cb in _resolve_for_plots(args.codebooks, args.block_size)]
    plot_levels(cbs, args.block_size, args.output, source=args.source, normalization=args.normalization)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _cmd_plot_sweep(args) -> int:
    from .export import check_output_path
    from .plots import plot_sweep

    check_output_path(args.output)
    if args.min_block > args.max_block:
        raise _usage_error(f"--min-block {args.min_block} is larger than --max-block {args.max_block}")
    sizes = []
    B = args.min_block
    while B <= args.max_block:
        sizes.append(B)
        B *= 2
    cbs = _resolve_for_plots(args.codebooks, args.min_block)
    errors = plot_sweep(cbs, args.output, sizes, source=args.source, normalization=args.normalization,
                        domain=args.domain)
    if args.json:
        _print_json({"block_sizes": sizes, "domain": args.domain, "source": args.source,
                     "codebooks": {k: {m: v.tolist() for m, v in e.items()} for k, e in errors.items()}})
    else:
        width = max(len(k) for k in errors)
        print(f"expected error ({args.domain} domain, {args.source} source) by block size")
        print(f"{'codebook':<{width}}  metric  " + "  ".join(f"{b:>9}" for b in sizes))
        for label, e in errors.items():
            for m in ("mse", "mae"):
                print(f"{label:<{width}}  {m:<6}  " + "  ".join(f"{v:>9.3e}" for v in e[m]))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------- register
def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to the ``quantbook`` parser's sub-parsers.

    Imports nothing heavy: the derivation engine is loaded by the commands that use it.
    """
    from .cli import _int_in
    from .export import FORMATS

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

    s = sub.add_parser(
        "evaluate-model", help="quantization error of a .safetensors model's weights, per codebook",
        description="Quantize every floating tensor of FILE (one at a time) with each codebook through the "
                    "bulk API and print MSE, MAE, SQNR (dB), relative Frobenius error and bits per weight "
                    "including the block statistics.  Codebooks: registry NAMEs, FILE.json, nfK, or "
                    "lloyd-l1|l2[-B][-Kbit][-normalized][@SOURCE] (derived for block size B, default --block-size).")
    s.add_argument("file", metavar="FILE.safetensors")
    s.add_argument("--codebooks", "-c", default="nf4,af4,fp4",
                   help="comma-separated codebooks (default nf4,af4,fp4)")
    s.add_argument("--block-size", "-B", type=_block_size, default=64, help="block size, power of 2 (default 64)")
    s.add_argument("--nested", action="store_true", help="double-quantize the absmax statistics (bnb nested)")
    s.add_argument("--tensors", default=None, metavar="GLOBS",
                   help="comma-separated fnmatch patterns of tensor names (default: every floating tensor)")
    s.add_argument("--per-tensor", action="store_true", help="also a table per tensor")
    s.add_argument("--json", action="store_true", help="JSON output")
    s.add_argument("--plot", metavar="PNG", default=None, help="also draw per-tensor SQNR to this PNG (matplotlib)")
    s.add_argument("--backend", choices=("auto", "numpy", "cpu"), default="auto",
                   help="bulk quantization backend: cpu (numba, the default) or numpy (reference)")
    s.add_argument("--progress", action="store_true", help="progress on stderr even when it is not a terminal")
    s.set_defaults(func=_cmd_evaluate_model)

    norms = ("absmax", "signed-absmax")
    s = sub.add_parser("plot", help="draw codebook levels over the block-B density (PNG, matplotlib)",
                       description="Draw each codebook's levels beneath the density of one normalised value "
                                   "x/absmax of a block of B weights from SOURCE.")
    s.add_argument("codebooks", nargs="+", metavar="NAME", help="registry names, FILE.json, nfK, lloyd-... "
                                                                "(see evaluate-model)")
    s.add_argument("--block-size", "-B", type=_int_in(2, 10**6), default=64, help="block size (default 64)")
    s.add_argument("--source", default="normal", help="weight distribution: normal, laplace, student-t:NU, FILE.npy, "
                                                      "FILE.safetensors[:GLOBS] (default normal)")
    s.add_argument("--normalization", choices=norms, default="absmax")
    s.add_argument("-o", "--output", required=True, metavar="PNG")
    s.set_defaults(func=_cmd_plot)

    s = sub.add_parser("plot-sweep", help="expected MSE/MAE vs block size for several codebooks (PNG)",
                       description="Exact expected MSE and MAE of each codebook for block sizes MIN, 2·MIN, ... MAX; "
                                   "a lloyd-LOSS spelling without a block size is re-derived at every block size. "
                                   "Also prints the numbers.")
    s.add_argument("codebooks", nargs="+", metavar="NAME")
    s.add_argument("--min-block", type=_int_in(2, 10**6), default=16, help="smallest block size (default 16)")
    s.add_argument("--max-block", type=_int_in(2, 10**6), default=16384, help="largest block size (default 16384)")
    s.add_argument("--source", default="normal", help="weight distribution (default normal)")
    s.add_argument("--normalization", choices=norms, default="absmax")
    s.add_argument("--domain", choices=("weight", "normalized"), default="weight",
                   help="errors of the weights in units of sigma (default) or of y = x/absmax")
    s.add_argument("--json", action="store_true", help="print the numbers as JSON")
    s.add_argument("-o", "--output", required=True, metavar="PNG")
    s.set_defaults(func=_cmd_plot_sweep)
