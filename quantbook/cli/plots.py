"""``plot`` and ``plot-sweep``: codebook levels over the block density, and expected errors
against the block size (matplotlib, ``quantbook[plot]``)."""

from __future__ import annotations

import argparse
import functools
import sys
from typing import TYPE_CHECKING, Any, Callable, Mapping, cast

from ..codebooks.blocks import DEFAULT_BLOCK_SIZE
from ..io.text import label_width, number
from .common import (UsageError, add_block_size, add_domain, add_json_flag, add_normalization, add_output, add_qmax,
                     add_scale, add_source, block_size, error_units, print_json, units_line)

if TYPE_CHECKING:   # loaded where a command reads a codebook
    from ..codebooks.codebook import Codebook

__all__ = ["register"]

_OUTPUT_HELP = "the picture to write; its extension names the format (PNG, PDF, SVG ...)"


def _specs(specs: list[str]) -> list[str]:
    """The codebook spellings of the arguments, each read by the list grammar
    (:func:`quantbook.naming.split_specs`: split at its commas unless it names a file)."""
    from ..naming import split_specs

    return [one for spec in specs for one in split_specs(spec)]


def _fitted_for(recipe: Mapping[str, Any], source: str, normalization: str, scale: str | None) -> str:
    """What a table was fitted for that the picture's law is not (its weights, normalisation,
    scale), as a label says it: `` for normal weights, float32 absmax``, or ''.  A name means one
    table in every command (quantbook.naming): only B is the picture's, and the label says the rest."""
    from ..derive.sources import parse_source

    said = []
    if recipe["source"] != parse_source(source).spec:
        said.append(f"{recipe['source']} weights")
    if recipe["normalization"] != normalization:
        said.append(f"{recipe['normalization']} normalisation")
    if recipe.get("scale") != scale:
        said.append("float32 absmax" if recipe.get("scale") is None else f"scale {recipe['scale']}")
    return f" for {', '.join(said)}" if said else ""


def _resolve(specs: list[str], block_size: int, source: str, normalization: str, scale: str | None = None):
    """``(label, Codebook | B -> Codebook)``: a ``lloyd-...`` without ``B`` is re-fitted at each B,
    its label saying what it is fitted for where that is not the picture's ``source``,
    ``normalization`` and ``scale`` (:func:`_fitted_for`)."""
    from ..naming import depends_on_block_size, resolve_codebook

    out: list[tuple[str, Codebook | Callable[[int], Codebook]]] = []
    for one in (t.strip() for t in _specs(specs)):
        if not one:
            continue
        if depends_on_block_size(one):
            first = resolve_codebook(one, block_size)  # a bad spelling fails now, not inside the plot
            recipe = cast(Mapping[str, Any], first.recipe)   # a derived table carries its recipe
            fitted = _fitted_for(recipe, source, normalization, scale)
            out.append((f"{one} (fit at each B{fitted})", functools.partial(resolve_codebook, one)))
        else:
            out.append((one, resolve_codebook(one, block_size)))
    if not out:
        raise UsageError("no codebooks given")
    labels = [label for label, _ in out]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice:
        raise UsageError(f"codebook listed twice: {', '.join(twice)}")
    return out


def _cmd_plot(args) -> int:
    from ..plots import check_plot_path, plot_levels

    check_plot_path(args.output, (*_specs(args.codebooks), args.source))  # before any work
    cbs = [(label, cb(args.block_size) if callable(cb) else cb)
           for label, cb in _resolve(args.codebooks, args.block_size, args.source, args.normalization)]
    plot_levels(cbs, args.block_size, args.output, source=args.source, normalization=args.normalization)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _check_finite_errors(source: str, domain: str) -> None:
    """The weight domain measures errors in units of the source's standard deviation: a source
    without a finite variance has no finite expected MSE to draw on a log scale."""
    from ..derive.sources import parse_source

    src = parse_source(source)
    if domain == "weight" and src.moment_limit <= 2:
        raise UsageError(f"--source {source}: the weights have no finite variance, so their expected "
                         f"squared error is infinite; use --domain normalized")


def _check_layout(scale: str | None, qmax: float | None) -> dict:
    """``{"scale": NAME, "qmax": Q}``, the layout's arguments to the sweep, checked before any
    work: the exact derivation models only rules that are a function of the block maximum (not
    nested statistics, not search rules).  ``None`` stands for what does not apply (no rule:
    the exact float32 absmax; no qmax for it), so the JSON keeps one vocabulary."""
    from ..derive.scaled import check_scale
    from ..scales import DEFAULT_QMAX, check_qmax, check_scaled_only, layout_qmax

    try:
        rule = None if scale is None else check_scale(scale)
    except ValueError as exc:
        raise UsageError(f"--scale {scale}: {exc}") from None
    try:
        check_scaled_only(rule, **{"--qmax": qmax is not None})
        q = DEFAULT_QMAX if qmax is None else check_qmax(qmax)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return {"scale": None if rule is None else rule.name, "qmax": layout_qmax(rule, q)}


def _cmd_plot_sweep(args) -> int:
    from ..plots import check_plot_path, plot_sweep, sweep_table

    if args.output is not None:   # without a picture only the numbers: no matplotlib needed
        check_plot_path(args.output, (*_specs(args.codebooks), args.source))  # before any work
    if args.min_block > args.max_block:
        raise UsageError(f"--min-block {args.min_block} is larger than --max-block {args.max_block}")
    _check_finite_errors(args.source, args.domain)
    layout = _check_layout(args.scale, args.qmax)
    sizes = []
    B = args.min_block
    while B <= args.max_block:
        sizes.append(B)
        B *= 2
    cbs = _resolve(args.codebooks, args.min_block, args.source, args.normalization, layout["scale"])
    law = dict(source=args.source, normalization=args.normalization, domain=args.domain, **layout)
    errors = sweep_table(cbs, sizes, **law) if args.output is None else plot_sweep(cbs, args.output, sizes, **law)
    # the JSON vocabulary names the domain in the key: mse_weight or mse_normalized (docs/json.md)
    keys = {m: f"{m}_{args.domain}" for m in ("mse", "mae")}
    if args.json:
        print_json({"block_sizes": sizes, "domain": args.domain, "source": args.source,
                    "normalization": args.normalization, **layout,
                    "codebooks": {k: {keys[m]: v.tolist() for m, v in e.items()} for k, e in errors.items()}})
    else:
        width = label_width("codebook", errors)
        where = "".join(f", {k} {v:g}" if k == "qmax" else f", {k} {v}" for k, v in layout.items() if v is not None)
        # evaluate's units: the plotted numbers are its errors of the domain
        unit_of = error_units(args.normalization, layout["scale"])
        units = {m: unit_of[key] for m, key in keys.items()}
        metrics = {m: f"{m} {units[m]}" for m in keys}
        m_width = label_width("metric", metrics.values())
        print(f"expected error ({args.domain} domain, {args.source} source{where}) by block size")
        print(f"{'codebook':<{width}}  {'metric':<{m_width}}  " + "  ".join(f"{b:>9}" for b in sizes))
        for label, e in errors.items():
            for m in keys:
                print(f"{label:<{width}}  {metrics[m]:<{m_width}}  " + "  ".join(number(v, ">9.3e") for v in e[m]))
        print(units_line(units.values()))
    if args.output is not None:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``plot`` and ``plot-sweep`` to the command line's sub-commands ``sub``."""
    from ..scales import rule_spellings   # the rules' one list, for the help texts

    norms = ("absmax", "signed-absmax")
    s = sub.add_parser("plot", help="draw codebook levels over the block-B density (PNG, PDF, SVG ...)",
                       description="Draw each codebook's levels beneath the density of one normalised value "
                                   "x/absmax of a block of B weights from SOURCE.  The output's extension "
                                   "names the image format (PNG without one).")
    s.add_argument("codebooks", nargs="+", metavar="NAME", help="registry names, FILE.json, nfK, lloyd-... "
                                                                "(see evaluate-model)")
    add_block_size(s, f" (default {DEFAULT_BLOCK_SIZE})", default=DEFAULT_BLOCK_SIZE)
    add_source(s, default="normal")
    add_normalization(s, norms, default="absmax", note="; not none: without blocks there is no block density")
    add_output(s, _OUTPUT_HELP, required=True)
    s.set_defaults(func=_cmd_plot)

    s = sub.add_parser("plot-sweep", help="expected MSE/MAE vs block size for several codebooks (PNG, PDF ...)",
                       description="Exact expected MSE and MAE of each codebook for block sizes MIN, 2·MIN, "
                                   "4·MIN, ... up to MAX; a lloyd-LOSS spelling without a block size is re-derived "
                                   "at every block size. Prints the numbers, and with -o draws them.")
    s.add_argument("codebooks", nargs="+", metavar="NAME",
                   help="registry names, FILE.json, nfK, lloyd-... (see evaluate-model; lloyd-LOSS without B: "
                        "fitted at each block size for what the name says, whose label says it where that is not "
                        "--source, --normalization or --scale: lloyd-l2 is fitted for normal weights and float32 "
                        "absmax, lloyd-l2@laplace for laplace)")
    # the ends of the sweep, by the derivations' rule of a block size as every -B of theirs
    s.add_argument("--min-block", type=block_size, default=16, help="smallest block size (default 16)")
    s.add_argument("--max-block", type=block_size, default=16384,
                   help="largest block size: the doublings of --min-block up to it (default 16384)")
    add_source(s, default="normal")
    add_normalization(s, norms, default="absmax", note="; not none: without blocks there is no block size to sweep")
    add_domain(s, "errors shown", "weight", default="weight")
    add_scale(s, "rule in whose scaled layout every codebook is evaluated: "
                 f"{rule_spellings(lambda r: r.layout == 'scaled' and r.deterministic)} "
                 "(default: exact float32 absmax; docs/scales.md)")
    add_qmax(s)
    add_json_flag(s)
    add_output(s, f"{_OUTPUT_HELP}; without it no picture, only the numbers (text or --json; matplotlib not "
                  "needed)")
    s.set_defaults(func=_cmd_plot_sweep)
