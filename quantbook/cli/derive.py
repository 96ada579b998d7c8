"""``derive nf|lloyd|quantile`` and ``evaluate``: codebooks from the derivation engine, and the
exact expected errors of any codebook under the block model."""

from __future__ import annotations

import argparse
import math
import re
from typing import Any, Mapping, cast

from ..codebooks.blocks import DEFAULT_BLOCK_SIZE
from ..io.streams import as_written
from ..io.text import number
from .common import (add_bits, add_block_size, add_domain, add_json_flag, add_normalization, add_output, add_progress,
                     add_qmax, add_sample, add_scale, add_source, add_symmetric, block_size_note, error_units, integer,
                     load_codebook, output_path, point_rows, print_codebook, print_json, text_value, units_line)

__all__ = ["register", "PRECISIONS", "METRICS"]

# quantbook.derive.normal_float.PRECISIONS (a test checks that they agree), spelled out so that
# building the parser does not import the derivation engine (sympy, scipy.stats are slow to import)
PRECISIONS = ("exact", "float64", "float32-bnb")

#: the fields of quantbook.derive.Evaluation that ``derive lloyd|quantile --json`` adds to the codebook
METRICS = ("mse_weight", "mae_weight", "mse_normalized", "mae_normalized", "sqnr_db")


def _cmd_derive_nf(args) -> int:
    from ..derive.normal_float import nf, nf_exact

    cb = nf(**_given(args, "bits", "offset", "precision"))
    recipe = cast(Mapping[str, Any], cb.recipe)   # a derived table carries its recipe
    extra = None
    if recipe["precision"] == "exact":
        import mpmath

        exact = nf_exact(recipe["bits"], recipe["offset"], dps=40)
        extra = {"levels_exact": [mpmath.nstr(v, 32) for v in exact]}
    print_codebook(cb, args.json, extra)
    return 0


def _given(args, *names: str) -> dict[str, Any]:
    """The options the user gave; the others take the library's defaults (for derivations the
    fields of quantbook.derive.recipes), so the command line cannot disagree with the API."""
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if "source" in given:
        from ..derive.sources import parse_source

        given["source"] = parse_source(given["source"])  # parsed once, for the derivation and the metrics
    if "fix" in given:  # the engine reads "-1,0,1" and "none" itself
        given["fixed"] = given.pop("fix")
    from ..scales import check_scaled_only, get_rule

    check_scaled_only(get_rule(given["scale"]) if "scale" in given else None,
                      **{"--qmax": "qmax" in given, "--tensor-size": "tensor_size" in given})
    return given


def _metrics(cb, given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The expected errors of a derived codebook under the block model it was derived for, and
    their units (:func:`~quantbook.cli.common.error_units`)."""
    from ..derive.metrics import evaluate

    recipe = cb.recipe
    layout = {key: recipe[key] for key in _LAYOUT if key in recipe}
    ev = evaluate(cb, recipe.get("block_size"), given.get("source", recipe["source"]),
                  recipe["normalization"], **layout)
    d = ev.to_dict()
    return {key: d[key] for key in METRICS}, error_units(ev.normalization, ev.scale)


#: the scaled layout: the rule, the table's largest magnitude, the NVFP4 tensor model
_LAYOUT = ("scale", "qmax", "tensor_size")
_BLOCK = ("bits", "block_size", "normalization", "source", "fix", "symmetric", "domain", *_LAYOUT)


def _block_needs_blocks(given: dict[str, Any]) -> None:
    """A derivation without normalisation has no block: its recipe leaves ``--block-size`` out,
    so a value given would be dropped.  (``evaluate`` still reads it: a lloyd-... name without
    B is fitted at it.)"""
    if given.get("normalization") == "none" and "block_size" in given:
        raise ValueError("--block-size does not apply with --normalization none: without block scaling the "
                         "law is the source's own")


def _search_rule(spec: Any) -> bool:
    if spec is None:
        return False
    from ..scales import get_rule

    rule = get_rule(spec)
    return not (rule.deterministic or rule.encodes_with_amax)


def _search_defaults(opts: dict[str, Any]) -> dict[str, Any]:
    """A search rule's options with the block size every other command takes by default (the
    library's sample defaults come in whole blocks of it)."""
    return {"block_size": DEFAULT_BLOCK_SIZE, **opts}


def _derive_search(args, given: dict[str, Any]) -> None:
    """A search rule has no 1-D law: Lloyd on a seeded sample with the search inside."""
    from ..derive.search_lloyd import solve_search_lloyd

    bad = [f"--{k.replace('_', '-')}" for k in ("normalization", "symmetric", "domain") if k in given]
    if bad:
        raise ValueError(f"{', '.join(bad)} do not apply to a search rule ({given['scale']}): its codes "
                         "are fitted in the weight domain of the scaled layout")
    opts: dict[str, Any] = {k: given[k] for k in ("bits", "block_size", "scale", "samples", "seed", "loss", "fixed",
                                                  "source", "qmax", "tensor_size") if k in given}
    res = solve_search_lloyd(**_search_defaults(opts), progress=args.progress)
    # the fitted loss: the squared weight error under l2, the absolute one under l1
    loss = cast(Mapping[str, Any], res.codebook.recipe)["loss"]   # a derived table carries its recipe
    unit = error_units()["mse_weight" if loss == "l2" else "mae_weight"]
    print_codebook(res.codebook, args.json, {"mse_weight_fitting_sample": res.mse, "iterations": res.iterations,
                                             "change": res.change, "converged": res.converged},
                   {"mse_weight_fitting_sample": unit})


def _cmd_derive_lloyd(args) -> int:
    from ..derive.lloyd import solve_lloyd

    given = _given(args, "loss", "samples", "seed", *_BLOCK)
    _block_needs_blocks(given)
    note = block_size_note(args)
    if _search_rule(given.get("scale")):
        _derive_search(args, given)
    else:
        if "samples" in given or "seed" in given or args.progress:
            raise ValueError("--samples, --seed and --progress apply only to a search rule (--scale search:...): "
                             "the other rules have an exact derivation")
        res = solve_lloyd(**given)
        extra, units = _metrics(res.codebook, given)
        extra.update(iterations=res.iterations, change=res.change, converged=res.converged)
        print_codebook(res.codebook, args.json, extra, units)
    if note:
        print(note)
    return 0


def _cmd_derive_quantile(args) -> int:
    from ..derive.lloyd import quantile

    given = _given(args, *_BLOCK)
    _block_needs_blocks(given)
    note = block_size_note(args)
    cb = quantile(**given)
    print_codebook(cb, args.json, *_metrics(cb, given))
    if note:
        print(note)
    return 0


def _cmd_derive_vq(args) -> int:
    import math as _math
    import sys

    from ..derive.vq import VQRecipe, draw_vectors, solve_vq, vq_mse
    from ..io.files import write_output

    if args.output is not None:   # fail before doing any work, and never replace the sample's own file
        from ..derive.model_source import safetensors_file

        source = (args.source or "").strip()
        output_path(args.output, tuple(p for p in (source, safetensors_file(source)) if p))
    opts = {"dim": args.dim, "points": args.points, "source": args.source, "scale": args.scale,
            "block_size": args.block_size, "symmetric": args.symmetric, "seed": args.seed,
            "samples": args.samples, "restarts": args.restarts, "init": args.init, "final_passes": args.final_passes}
    recipe = VQRecipe(**{k: v for k, v in opts.items() if v is not None})
    if args.restarts is not None and recipe.init != "kmeans++":
        raise ValueError(f"--restarts counts k-means++ starts; this fit starts once, from the {recipe.init} "
                         "lattice (--init kmeans++ for restarts)")
    res = solve_vq(recipe, progress=args.progress)
    cb = res.codebook
    # the expected error on a fresh sample: another seed, as many vectors as the fit
    eval_seed = recipe.seed + 1
    x = draw_vectors(recipe.source, recipe.dim, recipe.samples, eval_seed, recipe.scale, recipe.block_size)
    mse, se = vq_mse(cb.points, x)
    r_bits = cb.index_bits / cb.dim
    extra = {"mse": mse, "mse_se": se, "eval_samples": int(x.shape[0]), "eval_seed": eval_seed,
             "fit_mse": res.mse, "iterations": res.iterations, "converged": res.converged, "change": res.change,
             "restart_mse": list(res.restart_mse), "bits_per_weight": r_bits,
             "gap_db": 10 * _math.log10(mse / 2.0 ** (-2 * r_bits)) if recipe.scale == "none" and
             recipe.source == "normal" else None,
             "seconds": res.seconds}
    if args.output is not None:
        write_output(cb.to_json() + "\n", args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    if args.json:
        d = cb.to_dict()
        d.update(extra)
        print_json(d)
        return 0
    print(f"{cb.name}: {cb.size} points in {cb.dim}-D, {r_bits:g} bits/weight (index)")
    print(f"source: {cb.source}")
    print(f"MSE/dim {mse:.6e} ± {se:.1e} (fresh sample: {x.shape[0]} vectors, seed {eval_seed}); "
          f"on the fitting sample {res.mse:.6e}")
    if extra["gap_db"] is not None:
        print(f"gap to D(R)=2^-2R: {extra['gap_db']:.3f} dB")
    print(f"Lloyd passes on the whole sample {res.iterations}, converged {text_value(res.converged)}, "
          f"{res.seconds:.1f} s")
    if not res.converged:   # the passes ran out while the error still fell
        # the user's --final-passes cap ran out, or else max_iter (said by a LloydWarning too)
        more = (f"; --final-passes N allows more than {recipe.final_passes}"
                if recipe.dim > 1 and recipe.final_passes is not None else f" after {recipe.max_iter} passes")
        print(f"  not converged: the last pass still lowered the error by {res.change:.1e} of itself "
              f"(tol {recipe.tol:g}){more}")
    if args.output is None:
        print("points:")
        for row in point_rows(cb.points):
            print(f"  {row}")
    return 0


def _evaluate_search(args, cb, given: dict[str, Any]) -> None:
    """A search rule has no exact law: Monte Carlo on a seeded sample."""
    from ..derive.search_lloyd import evaluate_search

    if "normalization" in given:
        raise ValueError(f"--normalization does not apply to a search rule ({given['scale']})")
    opts: dict[str, Any] = {k: given[k] for k in ("block_size", "scale", "samples", "seed", "source", "qmax",
                                                  "tensor_size") if k in given}
    ev = evaluate_search(cb, **_search_defaults(opts))
    if args.json:
        print_json(ev)
        return
    print(f"{cb.name} on {ev['source']} (B={ev['block_size']}, scale {ev['scale']}, qmax {ev['qmax']:g}; "
          f"Monte Carlo: {ev['samples']} values, seed {ev['seed']})")
    unit = error_units()   # the weight domain's: a search rule has no normalised law
    print(f"  MSE  weight {number(ev['mse_weight'], '.6e')} ± {number(ev['mse_standard_error'], '.1e')} "
          f"{unit['mse_weight']}")
    print(f"  MAE  weight {number(ev['mae_weight'], '.6e')} {unit['mae_weight']}")
    # None: an infinite error (no variance), or none at all
    sqnr = ev["sqnr_db"] if ev["sqnr_db"] is not None else math.inf if ev["mse_weight"] == 0 else math.nan
    print(f"  SQNR {number(sqnr, '.3f')} dB   {ev['bits_per_weight']:g} bits/weight")
    print(f"  {units_line([unit['mse_weight']])}")


def _cmd_evaluate(args) -> int:
    cb = load_codebook(args.name, args.block_size)
    given = _given(args, "block_size", "source", "normalization", "samples", "seed", *_LAYOUT)
    note = block_size_note(args)
    if _search_rule(given.get("scale")):
        _evaluate_search(args, cb, given)
    else:
        _evaluate_exact(args, cb, given)
    if note:
        print(note)
    return 0


def _evaluate_exact(args, cb, given: dict[str, Any]) -> None:
    from ..derive.metrics import evaluate

    if "samples" in given or "seed" in given:
        raise ValueError("--samples and --seed apply only to a search rule (--scale search:...): the other "
                         "rules are evaluated exactly")
    ev = evaluate(cb, **given)
    if args.json:
        print_json(ev.to_dict())
        return
    where = "no normalisation" if ev.normalization == "none" else f"{ev.normalization}, B={ev.block_size}"
    if ev.scale is not None:
        qmax = "" if ev.qmax is None else f", qmax {ev.qmax:g}"   # nested: the exact absmax
        where += f", scale {ev.scale}{qmax}" + (f", {ev.tensor_model}" if ev.tensor_model else "")
    print(f"{cb.name} on {ev.source} ({where})")
    unit = {key: as_written(text) for key, text in error_units(ev.normalization, ev.scale).items()}
    w = max(len(unit["mse_weight"]), len(unit["mae_weight"]))   # as spelled on this stream
    print(f"  MSE  weight {number(ev.mse_weight, '.6e')} {unit['mse_weight']:<{w}}   "
          f"normalised {number(ev.mse_normalized, '.6e')} {unit['mse_normalized']}")
    print(f"  MAE  weight {number(ev.mae_weight, '.6e')} {unit['mae_weight']:<{w}}   "
          f"normalised {number(ev.mae_normalized, '.6e')} {unit['mae_normalized']}")
    print(f"  SQNR {number(ev.sqnr_db, '.3f')} {unit['sqnr_db']}   code-usage entropy {ev.entropy_bits:.4f} bits")
    print(f"  D(R) at R = {ev.bits_per_weight:g} bits/weight: {number(ev.rd_bound, '.6e')} {unit['rd_bound']}   "
          f"gap {number(ev.gap_db, '.3f')} dB")
    print(f"  {units_line(unit.values())}")


# Defaults are left to the library (see _given); the help texts only say what they are.
def _add_block_arguments(s: argparse.ArgumentParser, search: bool, block_note: str = "") -> None:
    """The block model's options; ``search``: the command takes the search rules too."""
    from ..scales import rule_spellings   # the rules' one list, for the help texts

    add_block_size(s, f" (default {DEFAULT_BLOCK_SIZE}{block_note})")
    add_normalization(s)
    add_source(s)
    exact = rule_spellings(lambda r: r.deterministic or r.encodes_with_amax)
    searched = rule_spellings(lambda r: not (r.deterministic or r.encodes_with_amax))
    add_scale(s, f"rule: {exact}" + (f", and {searched}, on a seeded sample" if search else "")
              + " (default: exact float32 absmax; docs/scales.md). NVFP4 is e4m3 with -B 16, MXFP4 e8m0 with -B 32: "
              "the text output notes a -B left at its default 64")
    add_qmax(s)
    s.add_argument("--tensor-size", type=integer, dest="tensor_size", metavar="N",
                   help="with --scale e4m3: model the tensor scale of tensors of N values (default: its phase "
                        "averaged)")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``derive`` (``nf``, ``lloyd``, ``quantile``, ``vq``) and ``evaluate`` to the command line's
    sub-commands ``sub``."""
    from .common import Parser

    d = sub.add_parser("derive", help="derive a codebook")
    dsub = d.add_subparsers(dest="method", metavar="METHOD", parser_class=Parser)
    dsub.required = True
    s = dsub.add_parser("nf", help="NormalFloat NFk from normal quantiles")
    s._negative_number_matcher = re.compile(r"^-[\d.]")  # so that --offset -1/2 is a value (then refused)
    add_bits(s, 2)
    s.add_argument("--offset",
                   help="outermost quantile position as an exact rational P/Q or decimal "
                        "(default: 929/960 for k=4; 0.9677083 with float32-bnb)")
    s.add_argument("--precision", choices=PRECISIONS, help="default float64")
    add_json_flag(s)
    s.set_defaults(func=_cmd_derive_nf)
    for meth, helptext in (("lloyd", "Lloyd-Max (L1/L2) codebook of the exact block distribution"),
                           ("quantile", "equal-probability codebook of the exact block distribution")):
        s = dsub.add_parser(meth, help=helptext)
        s._negative_number_matcher = re.compile(r"^-[\d.]")  # so that --fix -1,0,1 is a value
        add_bits(s, 1)
        # the search fit's own default is NVFP4's block (solve_search_lloyd); the command line keeps one
        _add_block_arguments(s, search=meth == "lloyd", block_note=", with a search rule too: the API's "
                             "solve_search_lloyd defaults to NVFP4's 16" if meth == "lloyd" else "")
        if meth == "lloyd":
            s.add_argument("--loss", choices=("l1", "l2"), help="default l2")
            add_sample(s, "with a search rule (--scale search:...): ", "values", "fitting sample", "10^7", "0")
            add_progress(s, "with a search rule: ")
        # the classical quantile code splits y's own law; Lloyd fits the weights' error
        add_domain(s, "error minimised" if meth == "lloyd" else "equal probabilities",
                   "weight" if meth == "lloyd" else "normalized, the classical quantile code", law=meth != "lloyd")
        s.add_argument("--fix", metavar="V1,V2,...",
                       help="fixed levels (default -1,0,1 absmax; 0,1 signed-absmax; none: none)")
        add_symmetric(s, "levels symmetric about 0,")
        add_json_flag(s)
        s.set_defaults(func=_cmd_derive_lloyd if meth == "lloyd" else _cmd_derive_quantile)

    # defaults are quantbook.derive.vq.VQRecipe's: the help only says what they are
    s = dsub.add_parser("vq", help="min-MSE vector codebook: N points in P dimensions, Lloyd on a seeded sample",
                        description="Lloyd (k-means) with exact assignments on a large seeded sample; "
                                    "docs/vector-codebooks.md.")
    s.add_argument("--dim", "-P", type=integer, required=True, help="P, weights per index (1..64)")
    s.add_argument("--points", "-N", type=integer, required=True, help="N, points (2..65536)")
    add_source(s, note="; drawn i.i.d.")
    # not a scalar rule: what evaluate-model calls --vq-scale, over blocks of -B values
    add_scale(s, "of the vectors, not a rule of the scalar codebooks' --scale (evaluate-model's --vq-scale): "
                 "divide each block of --block-size values by its RMS or absmax first (default none)",
              choices=("none", "rms", "absmax"))
    add_block_size(s, " of --scale rms|absmax, a multiple of P", type=integer)
    add_symmetric(s, "points", " and coordinate permutations (N a multiple of 2^P P!)")
    add_sample(s, "", "vectors", "fitting sample", "10^7", "0; the fresh evaluation sample uses seed+1")
    s.add_argument("--restarts", type=integer, help="k-means++ starts on the coarse sample (default 4)")
    s.add_argument("--init", choices=("auto", "hexagonal", "kmeans++"),
                   help="Lloyd's start (default auto: hexagonal for P = 2 and N >= 256, else kmeans++)")
    s.add_argument("--final-passes", type=integer, metavar="N",
                   help="most Lloyd passes on the whole sample, the last level of the schedule (P >= 2): a "
                        "faster fit that may end unconverged, as the output says (default: no cap, up to 500 "
                        "passes like every level: docs/vector-codebooks.md)")
    add_progress(s)
    add_output(s, "the codebook as JSON, besides the output (whose text then leaves out the points)")
    add_json_flag(s)
    s.set_defaults(func=_cmd_derive_vq)

    s = sub.add_parser("evaluate", help="expected errors of a codebook under the block model (exact; Monte "
                                        "Carlo under a search rule)")
    s.add_argument("name", metavar="NAME|FILE.json",
                   help="registry name, FILE.json, nfK or lloyd-... (see evaluate-model; without B, --block-size)")
    _add_block_arguments(s, search=True)
    # another seed than the fit's 0: a fitted codebook is measured on a fresh sample
    add_sample(s, "with a search rule (--scale search:...), whose errors are Monte Carlo: ", "values", "sample",
               "2^22", "1, not the fit's 0: a fresh sample")
    add_json_flag(s)
    s.set_defaults(func=_cmd_evaluate)
