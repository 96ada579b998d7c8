"""Benchmark: exact Lloyd-Max derivation under a scale rule, per code.

    python benchmarks/bench_derive_scaled.py [--repeat 3] [--rules e4m3,nested]

Derives 4-bit weight-domain L2 and L1 codes (normal source, -1/0/1 fixed, qmax 6) for the
NVFP4 layout (e4m3, B=16, tensor scale phase averaged), MXFP4 (e8m0 in each rounding mode,
B=32) and float16/bfloat16 scales at B=32, and prints the time per code (best of --repeat,
measure cache cleared so the set-up is included), the iterations, the final Lloyd change,
the number of pieces of the scale function (nodes of the Gauss rule that replaces most of
the sum, where one is used), and the expected MSE against E2M1 in the same layout.
Target: <= 100 ms per code.  bitsandbytes' nested statistics (B=64, L2 only) are timed as
the audit derives them: the law (NestedMeasure) and Lloyd steps on it from the float32
optimum (quantbook.verify.layouts).  ``--rules`` keeps some of the rows (``nested`` is that
last one) for a short run.

    python benchmarks/bench_derive_scaled.py --table [--rules e4m3] [--mc-log2n 20]

prints instead the results table of docs/scaled-derivation.md: exact expected MSE/MAE of
E2M1, NF4, IQ4_NL and the derived L2/L1 codes per layout (every rule above but bfloat16 and
nested, unless ``--rules`` names them), against quantbook.quantize on two tensors of
2**mc-log2n float32 normals (seed 7); e4m3's tensor-size column is the law at that size.

    python benchmarks/bench_derive_scaled.py --readme [--samples 10000000]

prints the README's per-layout tables (see readme()).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import quantbook
from _cli import check_floors, only_in, run
from quantbook.derive import evaluate, solve_lloyd
from quantbook.derive.scaled import _cached, scaled_measure

CASES = [("e4m3", 16), ("e8m0:floor", 32), ("e8m0:ceil", 32), ("e8m0:even", 32), ("e8m0:rceil", 32),
         ("float16", 32), ("bfloat16", 32)]
RULES = [rule for rule, _ in CASES] + ["nested"]   # the timing run's last row: nested statistics at B=64


def _mc(cb, B, rule, n=1 << 20, tensors=2, seed=7):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(tensors):
        x = rng.standard_normal(n, dtype=np.float32)
        p, st = quantbook.quantize(x, cb, B, scale=rule, backend="cpu")
        d = x.astype(np.float64) - quantbook.dequantize(p, st, backend="cpu")
        out.append((d * d).reshape(-1, B).mean(1))
    return np.concatenate(out)


def table(cases=CASES[:-1], log2n: int = 20) -> None:
    from quantbook.derive import lloyd

    n = 1 << log2n
    for rule, B in cases:
        rows = [(n, quantbook.get(n)) for n in ("e2m1", "nf4", "iq4_nl")]
        rows += [("lloyd-l2", lloyd(4, B, scale=rule)), ("lloyd-l1", lloyd(4, B, "l1", scale=rule))]
        ref = evaluate(rows[0][1], B, scale=rule).mse_weight
        ref_mc = _mc(rows[0][1], B, rule, n).mean()
        kw = {"tensor_size": n} if rule == "e4m3" else {}
        print(f"### {rule} B={B}")
        for name, cb in rows:
            e, e2, m = evaluate(cb, B, scale=rule), evaluate(cb, B, scale=rule, **kw), _mc(cb, B, rule, n)
            print(f"| {name} | {e.mse_weight:.5e} | {e.mae_weight:.5e} | {e.mse_weight / ref:.4f} | "
                  f"{e2.mse_weight:.5e} | {m.mean():.5e} ± {m.std() / np.sqrt(m.size):.1e} | "
                  f"{m.mean() / ref_mc:.4f} |")


#: (label, rule, block size, search rule for search_lloyd or None) of the README's tables
README = [("NVFP4", "e4m3", 16, "search:4over6"), ("MXFP4 floor", "e8m0:floor", 32, "search:e8m0:floor@1,0.5"),
          ("fp16 scale", "float16", 32, "search:float16@1,0.9"), ("bnb nested", "nested", 64, None)]


def readme(samples: int = 10**7) -> None:
    """Expected MSE on N(0,1) weights per layout: E2M1, NF4, IQ4_NL and the derived optimum
    exactly; the optimum under a search rule (search_lloyd fitted on `samples` values, seed 0)
    and those codes under it by Monte Carlo on `samples` independent values (seed 1)."""
    from quantbook.derive import lloyd, solve_search_lloyd
    from quantbook.verify.layouts import Layout, audit_layout

    tables = [(n, quantbook.get(n)) for n in ("e2m1", "nf4", "iq4_nl")]
    for label, rule, B, search in README:
        print(f"### {label} ({rule}, B{B})")
        if rule == "nested":  # the law under nested statistics is reached through the layout audit
            for name, cb in tables:
                f = audit_layout(Layout(name, label, rule, B))
                print(f"| {name} | {f.mse_weight:.5e} |")
            f = audit_layout(Layout("nf4", label, rule, B))
            print(f"| optimum (-1, 1 fixed) | {f.optimum_mse_weight:.5e} |")
            print(f"| optimum (-1, 0, 1 fixed) | {f.optimum_zero_mse_weight:.5e} |")
            continue
        for name, cb in tables + [("optimum (-1, 0, 1 fixed)", lloyd(4, B, scale=rule))]:
            print(f"| {name} | {evaluate(cb, B, scale=rule).mse_weight:.5e} |")
        t = time.perf_counter()
        r = solve_search_lloyd(4, B, search, samples=samples, seed=0)
        fit = time.perf_counter() - t
        x = np.random.default_rng(1).standard_normal(samples).astype(np.float32)
        for name, cb in tables + [("search optimum", r.codebook)]:
            p, st = quantbook.quantize(x, cb, B, scale=search, backend="numpy")
            e = ((quantbook.dequantize(p, st).astype(np.float64) - x) ** 2).reshape(-1, B).mean(axis=1)
            print(f"| {name}, {search} | {e.mean():.5e} ± {e.std(ddof=1) / np.sqrt(e.size):.1e} |")
        print(f"fit {fit:.0f} s, {r.iterations} iterations; levels {np.round(r.codebook.levels, 5).tolist()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    mode = ap.add_mutually_exclusive_group()   # each prints its own tables: together, one would be lost
    mode.add_argument("--table", action="store_true", help="the results table of docs/scaled-derivation.md")
    mode.add_argument("--readme", action="store_true", help="the README's per-layout tables")
    ap.add_argument("--repeat", type=int, default=None, help="timing runs: best of (default 3)")
    ap.add_argument("--rules", default=None,
                    help=f"timing runs and --table: comma-separated of {', '.join(RULES)} (default all; "
                         "--table: all but bfloat16 and nested)")
    ap.add_argument("--mc-log2n", type=int, default=None, help="--table: 2**N values a Monte-Carlo tensor (20)")
    ap.add_argument("--samples", type=int, default=None, help="--readme: fitting and test sample size (10**7)")
    args = ap.parse_args()
    check_floors(ap, args, repeat=1, mc_log2n=5)   # 2**5: one block of the largest B, 32
    run_mode = "--table" if args.table else "--readme" if args.readme else "a timing run"
    only_in(ap, args, run_mode, repeat="a timing run", mc_log2n="--table", samples="--readme",
            rules=("a timing run", "--table"))
    rules = None if args.rules is None else args.rules.split(",")
    for rule in rules or ():
        if rule not in RULES or (args.table and rule == "nested"):
            where, takes = (" with --table", RULES[:-1]) if args.table else ("", RULES)
            ap.error(f"--rules{where} takes {', '.join(takes)}, got {rule!r}")
    if args.readme:   # the fits' own checks of --samples, before any table is printed
        from quantbook.derive.recipes import SearchLloydRecipe

        for _, _, B, search in [case for case in README if case[3] is not None]:
            try:
                SearchLloydRecipe(bits=4, block_size=B, scale=search, samples=args.samples or 10**7)
            except ValueError as exc:
                ap.error(f"--samples: {exc}")
    if args.table:
        table(CASES[:-1] if rules is None else [c for c in CASES if c[0] in rules], args.mc_log2n or 20)
        return
    if args.readme:
        readme(args.samples or 10**7)
        return
    repeat = args.repeat or 3
    e2m1 = quantbook.get("e2m1")
    print(f"{'rule':12} {'B':>3} {'loss':4} {'ms/code':>8} {'iter':>4} {'change':>8} {'pieces':>11} "
          f"{'MSE/E2M1':>8}")
    for rule, B in CASES:
        if rules is not None and rule not in rules:
            continue
        for loss in ("l2", "l1"):
            best = float("inf")
            for _ in range(repeat):
                _cached.cache_clear()
                t = time.perf_counter()
                res = solve_lloyd(4, B, loss, scale=rule)
                best = min(best, time.perf_counter() - t)
            ratio = (evaluate(res.codebook, B, scale=rule).mse_weight
                     / evaluate(e2m1, B, scale=rule).mse_weight)
            mu = scaled_measure("normal", B, rule, weight_power=2 if loss == "l2" else 1)
            pieces = f"{mu.n_pieces}" + (f" ({mu._fast[1].size})" if getattr(mu, "_fast", None) else "")
            print(f"{rule:12} {B:3d} {loss:4} {best * 1e3:8.1f} {res.iterations:4d} {res.change:8.1e} "
                  f"{pieces:>11} {ratio:8.4f}")
    if rules is None or "nested" in rules:
        nested(repeat)


def nested(repeat: int) -> None:
    from quantbook.derive import lloyd
    from quantbook.derive.metrics import cell_errors
    from quantbook.verify.layouts import FIXED_ZERO, _lloyd_on

    B = 64
    start = lloyd(4, B, "l2").levels  # the float32 optimum (-1, 0, 1 fixed)
    best = float("inf")
    for _ in range(repeat):
        _cached.cache_clear()
        t = time.perf_counter()
        mu = scaled_measure("normal", B, "nested", weight_power=2)
        q = _lloyd_on(mu, start, FIXED_ZERO)
        best = min(best, time.perf_counter() - t)
    ratio = cell_errors(mu, q, "l2").sum() / cell_errors(mu, quantbook.get("e2m1").levels, "l2").sum()
    print(f"{'nested':12} {B:3d} {'l2':4} {best * 1e3:8.1f} {'':>4} {'':>8} {mu.n_pieces:>11} {ratio:8.4f}")


if __name__ == "__main__":
    run(main)
