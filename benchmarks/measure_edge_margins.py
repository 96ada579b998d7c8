"""How close derived codes come to a float32 rounding edge, and how often the check warns.

A derived float64 level whose last digits differ between CPUs keeps its float32 bits only
when it lies further from a float32 rounding edge than it moves; derivations warn
(RoundingEdgeWarning) within ``FLOAT32_EDGE_BOUND`` of an edge (docs/derivation.md).  This
derives a grid of Lloyd (L2, L1) and quantile codes, plain and under every rule of the
scaled layout (whose table, the levels times ``qmax``, has edges of its own), and reports per
kind how many warned and the smallest margin of the rest.

    python benchmarks/measure_edge_margins.py [--bits 2,3,4] [--block-sizes 16,32,64]
        [--sources normal,laplace,student-t:5] [--qmax 6]

A derivation the library refuses (a law it cannot model) is counted as skipped.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from _cli import int_list, run
from quantbook.codebooks.codebook import FLOAT32_EDGE_BOUND, warn_float32_edges
from quantbook.derive import RoundingEdgeWarning, lloyd, quantile
from quantbook.derive.sources import parse_source
from quantbook.scales import SCALED_BITS, check_qmax, get_rule, rule_names, scaled_products


def _margin(values) -> float:
    """The smallest relative distance to a float32 rounding edge (the check's own measure)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RoundingEdgeWarning)
        return warn_float32_edges(values, "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bits", default="2,3,4", help="code widths (default 2,3,4)")
    ap.add_argument("--block-sizes", default="16,32,64", help="block sizes B (default 16,32,64)")
    ap.add_argument("--sources", default="normal,laplace,student-t:5", help="source spellings")
    ap.add_argument("--qmax", type=float, default=6.0, help="the scaled layouts' largest magnitude (default 6)")
    args = ap.parse_args(argv)
    bits, sizes = int_list(ap, args.bits, "--bits"), int_list(ap, args.block_sizes, "--block-sizes")
    # checked here: below, a refused derivation only counts as refused
    if not all(2 <= k <= SCALED_BITS for k in bits):
        ap.error(f"--bits takes widths from 2 to {SCALED_BITS} (the scaled layouts' most), got {args.bits}")
    if not all(b >= 2 for b in sizes):
        ap.error(f"--block-sizes must be at least 2, got {args.block_sizes}")
    sources = [parse_source(s).spec for s in args.sources.split(",")]
    check_qmax(args.qmax)
    rules = [None] + [r for r in rule_names() if get_rule(r).layout == "scaled" and not r.startswith("search:")]
    kinds = {"levels": [], "scaled table": []}   # per kind: (margin, what)
    skipped = 0
    for rule in rules:
        for source in sources:
            for k in bits:
                for b in sizes:
                    for method, loss in (("lloyd", "l2"), ("lloyd", "l1"), ("quantile", None)):
                        what = f"{method} {loss or ''} {k}b B={b} {source} {rule or 'absmax'}"
                        kw = dict(source=source, scale=rule, **({"qmax": args.qmax} if rule else {}))
                        try:
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore")
                                cb = (lloyd(k, b, loss, **kw) if method == "lloyd" else quantile(k, b, **kw))
                        except ValueError:
                            skipped += 1
                            continue
                        kinds["levels"].append((_margin(cb.levels), what))
                        if rule is not None:
                            kinds["scaled table"].append((_margin(scaled_products(cb, args.qmax)), what))
    print(f"bound {FLOAT32_EDGE_BOUND:g}; {len(kinds['levels'])} codes derived, {skipped} refused")
    for kind, rows in kinds.items():
        m = np.array([r[0] for r in rows])
        warned = sorted(r for r in rows if r[0] < FLOAT32_EDGE_BOUND)
        clear = m[m >= FLOAT32_EDGE_BOUND]
        print(f"{kind}: {len(rows)} codes, {len(warned)} warn; smallest margin of the rest "
              f"{clear.min() if clear.size else float('nan'):.2e}")
        for margin, what in warned:
            print(f"    {margin:.2e}  {what}")
    return 0


if __name__ == "__main__":
    run(main)
