"""The ``quantbook`` command line.  Thin: parse, call the library, print.

Every user error (bad arguments, bad input files, invalid codebooks) ends with a one-line
``quantbook: error: ...`` on stderr and exit status 2 — never a traceback.  Each
sub-command is one ``_cmd_*`` function plus its arguments in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any, Sequence

import numpy as np

__all__ = ["main", "build_parser", "UsageError"]


class UsageError(Exception):
    """A user error: printed as one line, exit status 2.  ``prog`` names the sub-command."""

    def __init__(self, message: str, prog: str = "quantbook") -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        raise UsageError(message, self.prog)


def _json_safe(obj: Any) -> Any:
    """Standard JSON has no inf/NaN: non-finite floats become null (e.g. the MSE of a source
    without a variance)."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _print_json(obj: Any) -> None:
    print(json.dumps(_json_safe(obj), indent=2, allow_nan=False))


def _progress(msg: str) -> None:
    if sys.stderr.isatty():
        print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)


def _progress_done() -> None:
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ codebooks
def _load_codebook(spec: str, block_size: int = 64):
    """A registry name, FILE.json, or a derived shorthand (nfK, lloyd-...; see model/specs.py)."""
    from .model.specs import resolve_codebook

    try:
        return resolve_codebook(spec, block_size)
    except (KeyError, FileNotFoundError) as exc:
        raise UsageError(str(exc.args[0] if exc.args else exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read {spec}: {exc.strerror or exc}") from None


def _print_codebook(cb, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    if as_json:
        d = cb.to_dict()
        d.update(extra or {})
        _print_json(d)
        return
    print(f"{cb.name}: {cb.bits}-bit, {cb.n_levels} levels")
    print(f"source: {cb.source}")
    from .verify.audit import format_recipe

    print(f"recipe: {format_recipe(cb.recipe)}")
    print(f"{'index':>5}  {'value (float64 repr)':<24}  {'float32 hex':<10}")
    for i, v in enumerate(cb.code):
        print(f"{i:>5}  {float(v)!r:<24}  0x{np.float32(v).view(np.uint32):08x}")
    for key, value in (extra or {}).items():
        print(f"{key}: {value}")


def _cmd_list(args) -> int:
    from .codebooks.registry import REGISTRY

    width = max(len(n) for n in REGISTRY)
    for name, entry in REGISTRY.items():
        print(f"{name:<{width}}  {entry.summary}")
    return 0


def _cmd_show(args) -> int:
    _print_codebook(_load_codebook(args.name), args.json)
    return 0


# -------------------------------------------------------------------------------- derive
def _cmd_derive_nf(args) -> int:
    from .derive.normal_float import nf, nf_exact

    cb = nf(args.bits, args.offset, args.precision)
    extra = None
    if args.precision == "exact":
        import mpmath

        extra = {"levels_exact": [mpmath.nstr(v, 32) for v in nf_exact(args.bits, cb.recipe["offset"], dps=40)]}
    _print_codebook(cb, args.json, extra)
    return 0


# ------------------------------------------------------------ derive lloyd / quantile, evaluate
def _parse_fix(text: str | None):
    """``--fix -1,0,1`` -> [-1.0, 0.0, 1.0]; ``--fix none`` or ``--fix ""`` -> []; absent -> default."""
    if text is None:
        return None
    if text.strip().lower() in ("", "none"):
        return []
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--fix expects comma-separated numbers like -1,0,1 (or none), got {text!r}") from None


def _parse_source(text: str):
    """A ``--source``: the engine's spellings plus ``FILE.safetensors[:GLOBS]`` (quantbook.model)."""
    from .derive.sources import parse_source
    from .model.source import install_source_parser

    install_source_parser()
    return parse_source(text)


def _block_args(args) -> dict[str, Any]:
    return dict(block_size=args.block_size, normalization=args.normalization, source=_parse_source(args.source))


def _eval_extra(cb, args, src) -> dict[str, Any]:
    from .derive.metrics import evaluate

    ev = evaluate(cb, args.block_size, src, args.normalization)
    return {"mse": ev.mse_weight, "mae": ev.mae_weight, "mse_normalized": ev.mse_normalized,
            "mae_normalized": ev.mae_normalized, "sqnr_db": ev.sqnr_db}


def _cmd_derive_lloyd(args) -> int:
    from .derive.lloyd import solve_lloyd

    kw = _block_args(args)
    res = solve_lloyd(args.bits, kw["block_size"], args.loss, args.domain, kw["normalization"], kw["source"],
                      _parse_fix(args.fix), args.symmetric)
    extra = _eval_extra(res.codebook, args, kw["source"])
    extra.update(iterations=res.iterations, change=res.change)
    _print_codebook(res.codebook, args.json, extra)
    return 0


def _cmd_derive_quantile(args) -> int:
    from .derive.lloyd import quantile

    kw = _block_args(args)
    cb = quantile(args.bits, kw["block_size"], kw["normalization"], kw["source"], _parse_fix(args.fix),
                  args.symmetric, args.domain)
    _print_codebook(cb, args.json, _eval_extra(cb, args, kw["source"]))
    return 0


def _cmd_evaluate(args) -> int:
    from .derive.metrics import evaluate

    cb = _load_codebook(args.name, args.block_size)
    ev = evaluate(cb, args.block_size, _parse_source(args.source), args.normalization)
    if args.json:
        _print_json(ev.to_dict())
        return 0
    where = "no normalisation" if args.normalization == "none" else f"{args.normalization}, B={args.block_size}"
    print(f"{cb.name} on {ev.source} ({where})")
    print(f"  MSE  weight {ev.mse_weight:.6e}   normalised {ev.mse_normalized:.6e}")
    print(f"  MAE  weight {ev.mae_weight:.6e}   normalised {ev.mae_normalized:.6e}")
    print(f"  SQNR {ev.sqnr_db:.3f} dB   code-usage entropy {ev.entropy_bits:.4f} bits")
    print(f"  D(R) at R = {ev.bits_per_weight:g} bits/weight: {ev.rd_bound:.6e}   gap {ev.gap_db:.3f} dB")
    return 0


# --------------------------------------------------------------------------------- audit
def _cmd_audit(args) -> int:
    from .verify.audit import audit

    rows = audit(progress=lambda n: _progress(f"auditing {n} ..."))
    _progress_done()
    if args.json:
        _print_json([r.to_dict() for r in rows])
    else:
        for r in rows:
            if r.reproduced is None:
                status = "n/a"  # not judged (no recipe, or report-only): not a failure
            elif r.expect == "report":
                status = "ok" if r.reproduced else "differs"  # reported, not a failure
            else:
                status = "FAIL" if r.failed else "ok"
            fields = (f"bit_exact={'-' if r.bit_exact is None else ('yes' if r.bit_exact else 'no')}"
                      f"  max_ulp={'-' if r.max_ulp is None else r.max_ulp}"
                      f"  max_abs_diff={'-' if r.max_abs_diff is None else f'{r.max_abs_diff:.3g}'}")
            print(f"[{status:>7}] {r.name}: {r.recipe}")
            print(f"         {fields}  expect={r.expect}")
            print(f"         {r.explanation}")
    failed = [r.name for r in rows if r.failed]
    if failed:
        print(f"quantbook: audit: not reproduced: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


# -------------------------------------------------------------------------------- parser
# quantbook.derive.normal_float.PRECISIONS (a test checks they agree), spelled out so that
# building the parser does not import the derivation engine (sympy, scipy.stats: ~0.7 s).
_PRECISIONS = ("exact", "float64", "float32-bnb")

def _int_in(lo: int, hi: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {v}")
        return v

    return parse


def _add_block_arguments(s) -> None:
    s.add_argument("--block-size", type=_int_in(2, 10**7), default=64, help="B (default 64)")
    s.add_argument("--normalization", choices=("absmax", "signed-absmax", "none"), default="absmax")
    s.add_argument("--source", default="normal", help="normal | laplace | student-t:NU | FILE.npy (default normal)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="quantbook", description="Design, derive, audit and use k-bit quantization codebooks.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    s = sub.add_parser("list", help="published codebooks with a one-line source")
    s.set_defaults(func=_cmd_list)

    s = sub.add_parser("show", help="print a codebook (registry NAME, FILE.json, nfK or lloyd-...)")
    s.add_argument("name", metavar="NAME|FILE.json")
    s.add_argument("--json", action="store_true", help="JSON output")
    s.set_defaults(func=_cmd_show)

    d = sub.add_parser("derive", help="derive a codebook")
    dsub = d.add_subparsers(dest="method", metavar="METHOD", parser_class=_Parser)
    dsub.required = True
    s = dsub.add_parser("nf", help="NormalFloat NFk from normal quantiles")
    s.add_argument("--bits", type=_int_in(2, 8), default=4, help="k, 2..8 (default 4)")
    s.add_argument("--offset", default=None,
                   help="outermost quantile position as an exact rational P/Q or decimal "
                        "(default: 929/960 for k=4; 0.9677083 with float32-bnb)")
    s.add_argument("--precision", choices=_PRECISIONS, default="float64")
    s.add_argument("--json", action="store_true", help="JSON output")
    s.set_defaults(func=_cmd_derive_nf)
    for meth, helptext in (("lloyd", "Lloyd-Max (L1/L2) codebook of the exact block distribution"),
                           ("quantile", "equal-probability codebook of the exact block distribution")):
        s = dsub.add_parser(meth, help=helptext)
        s._negative_number_matcher = re.compile(r"^-[\d.]")  # so that --fix -1,0,1 is a value
        s.add_argument("--bits", type=_int_in(1, 8), default=4, help="1..8 (default 4)")
        _add_block_arguments(s)
        if meth == "lloyd":
            s.add_argument("--loss", choices=("l1", "l2"), default="l2", help="default l2")
        s.add_argument("--domain", choices=("weight", "normalized"),
                       default="weight" if meth == "lloyd" else "normalized",
                       help="error measured on weights (scale*(y-q)) or normalised values")
        s.add_argument("--fix", default=None, metavar="V1,V2,...",
                       help="fixed levels (default -1,0,1 absmax; 0,1 signed-absmax; none: none)")
        s.add_argument("--symmetric", action="store_true", help="levels symmetric about 0")
        s.add_argument("--json", action="store_true", help="JSON output")
        s.set_defaults(func=_cmd_derive_lloyd if meth == "lloyd" else _cmd_derive_quantile)

    s = sub.add_parser("evaluate", help="exact expected errors of a codebook under the block model")
    s.add_argument("name", metavar="NAME|FILE.json")
    _add_block_arguments(s)
    s.add_argument("--json", action="store_true", help="JSON output")
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("audit", help="re-derive every published table and compare bit for bit")
    s.add_argument("--json", action="store_true", help="JSON output")
    s.set_defaults(func=_cmd_audit)

    from .cli_usage import register as _register_usage  # export, evaluate-model, plot, plot-sweep (issue 6)

    _register_usage(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"{exc.prog}: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, FileNotFoundError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"quantbook: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quantbook: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # noqa: BLE001 - the CLI never shows a traceback
        print(f"quantbook: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
