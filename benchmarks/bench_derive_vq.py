"""Benchmark: vector codebook derivation (quantbook.derive.vq), and the results table of
docs/vector-codebooks.md.

    python benchmarks/bench_derive_vq.py [--cases 2x256] [--samples 10000000]

derives each case (P x N; default: the speed target, P = 2, N = 256, on 10^7 vectors) with
the default recipe, prints its wall time (the target: under one minute on a 2-core CPU) and
CPU time (all threads; on an idle 2-core machine the wall time is about half of it), the
Lloyd passes, and the MSE per dimension on a fresh sample (seed 1 + the recipe's seed) next
to the HIGGS grid of the same (P, N) on the same sample (paired difference and its standard
error).

    python benchmarks/bench_derive_vq.py --table [--cases 1x256,2x16,2x64,2x256,4x256,8x256] [--final-passes N]
                                         [-o vq_derived.json]

prints the table of docs/vector-codebooks.md for every case: MSE per dimension, the gap to
D(R) = 2^(-2R) in dB, and the exact scalar Lloyd-Max code at the same R; ``-o`` writes the
derived grids (with their recipes) in the format of quantbook/codebooks/data/vq_derived.json
(the registry's grids: ``--cases 2x16,2x64,2x256``).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

from _cli import check_floors, run, vq_cases
from quantbook.codebooks.vector_registry import vector_registry
from quantbook.derive.vq import VQRecipe, draw_vectors, solve_vq, vector_errors
from quantbook.verify.vq import lloyd_max_mse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="2x256", help="comma-separated PxN (default 2x256)")
    ap.add_argument("--samples", type=int, default=VQRecipe.samples, help="fitting vectors (default 10^7)")
    ap.add_argument("--eval-samples", type=int, default=10**7, help="fresh vectors for the MSE (default 10^7)")
    ap.add_argument("--final-passes", type=int, help="cap on the whole sample's passes (default: none below "
                    "max_iter, as the registry's vq-2d-N grids were derived)")
    ap.add_argument("--table", action="store_true", help="print the docs table (gap to D(R), scalar code)")
    ap.add_argument("-o", "--output", help="write the derived grids as a vq_derived.json file")
    args = ap.parse_args()
    check_floors(ap, args, eval_samples=2)   # a standard error needs two vectors
    cases = vq_cases(ap, args.cases)
    for p, n in cases:   # the recipes' own checks, before any case is derived
        try:
            VQRecipe(dim=p, points=n, samples=args.samples, final_passes=args.final_passes)
        except ValueError as exc:
            ap.error(str(exc))
    print(f"# {platform.processor() or platform.machine()}, {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    reg = vector_registry()
    derived = []
    if args.table:
        print("| P | N | bits/w | derived MSE/dim | gap to D(R) | HIGGS MSE/dim | derived vs HIGGS | "
              "scalar Lloyd-Max MSE | scalar gap | time (wall, CPU) |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p, n in cases:
        r = VQRecipe(dim=p, points=n, samples=args.samples, final_passes=args.final_passes)
        t0, c0 = time.perf_counter(), time.process_time()
        res = solve_vq(r)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        derived.append(res.codebook.to_dict())
        x = draw_vectors("normal", p, args.eval_samples, r.seed + 1)
        e = vector_errors(res.codebook.points, x) / p
        mse, se = e.mean(), e.std(ddof=1) / math.sqrt(e.size)
        bits = res.codebook.index_bits / p
        rd = 2.0 ** (-2 * bits)
        higgs = reg.get(f"higgs-{p}d-{n}")
        if higgs is not None:
            eh = vector_errors(higgs.codebook.points, x) / p
            d = e - eh
            h_text = (f"{eh.mean():.5e}", f"{100 * d.mean() / eh.mean():+.3f} % ± "
                                          f"{100 * d.std(ddof=1) / math.sqrt(d.size) / eh.mean():.3f} %")
        else:
            h_text = ("-", "-")
        if args.table:
            s = lloyd_max_mse(int(bits)) if float(bits).is_integer() and 1 <= bits <= 8 else float("nan")
            print(f"| {p} | {n} | {bits:g} | {mse:.5e} ± {se:.1e} | {10 * math.log10(mse / rd):.2f} dB | "
                  f"{h_text[0]} | {h_text[1]} | {s:.5e} | {10 * math.log10(s / rd):.2f} dB | "
                  f"{dt:.1f} s ({cpu:.0f} s CPU) |", flush=True)
        else:
            print(f"P={p} N={n}: {dt:.1f} s wall, {cpu:.1f} s CPU ({res.iterations} passes on {r.samples} vectors, "
                  f"restarts {[round(v, 7) for v in res.restart_mse]}); MSE/dim {mse:.6e} ± {se:.1e} on {x.shape[0]} "
                  f"fresh vectors; HIGGS {h_text[0]}, derived vs HIGGS {h_text[1]}", flush=True)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"about": "derived vector grids (benchmarks/bench_derive_vq.py); each recipe re-derives "
                                "its grid bit for bit", "codebooks": derived}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    run(main)
