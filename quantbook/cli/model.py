"""``evaluate-model``: the quantization error of a .safetensors model's weights, per codebook."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .common import add_json_flag, integer, print_json

__all__ = ["register", "METRIC_NAMES"]

#: ErrorSums.metrics() key -> the JSON vocabulary's name (docs/json.md): these errors are of
#: the weights themselves, in the weights' units
METRIC_NAMES = {"mse": "mse_weight", "mae": "mae_weight"}


def _metrics(m: dict[str, Any]) -> dict[str, Any]:
    return {METRIC_NAMES.get(k, k): v for k, v in m.items()}


def report_json(report, per_tensor: bool) -> dict[str, Any]:
    d = report.to_dict(per_tensor=per_tensor)
    d["codebooks"] = {label: _metrics(m) for label, m in d["codebooks"].items()}
    for t in d.get("per_tensor", []):
        t["codebooks"] = {label: _metrics(m) for label, m in t["codebooks"].items()}
    return d


def _block_size(text: str) -> int:
    """``-B``: the block-wise format's block sizes (quantbook.bulk.format.check_block_size)."""
    from ..bulk.format import check_block_size

    try:
        return check_block_size(integer(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("block_size ", "")) from None


def _cmd_evaluate_model(args) -> int:
    from ..naming import resolve_codebooks
    from ..io.progress import progress_enabled
    from ..model import evaluate_model

    if args.plot is not None:  # fail before doing any work
        import importlib.util

        from ..plots import check_plot_path

        check_plot_path(args.plot)
        if importlib.util.find_spec("matplotlib") is None:
            raise ValueError("--plot needs matplotlib: pip install 'quantbook[plot]'")
    codebooks = resolve_codebooks(args.codebooks, args.block_size)
    report = evaluate_model(args.file, codebooks, block_size=args.block_size, nested=args.nested,
                            tensors=args.tensors, backend=args.backend, progress=progress_enabled(args.progress))
    if args.json:
        print_json(report_json(report, args.per_tensor))
    else:
        print(report.format_table(per_tensor=args.per_tensor))
    if args.plot is not None:
        from ..plots import plot_model_report

        plot_model_report(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
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
    add_json_flag(s)
    s.add_argument("--plot", metavar="FILE", default=None, help="also draw per-tensor SQNR to this picture (PNG, PDF, SVG ...: by extension; matplotlib)")
    s.add_argument("--backend", choices=("auto", "numpy", "cpu"), default="auto",
                   help="bulk quantization backend: cpu (numba, the default) or numpy (reference)")
    s.add_argument("--progress", action="store_true", help="progress on stderr even when it is not a terminal")
    s.set_defaults(func=_cmd_evaluate_model)
