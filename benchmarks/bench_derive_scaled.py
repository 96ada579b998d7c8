"""Benchmark: exact Lloyd-Max derivation under a scale rule, per code.

    python benchmarks/bench_derive_scaled.py [--repeat 3]

Derives 4-bit weight-domain L2 and L1 codes (normal source, -1/0/1 fixed, qmax 6) for the
NVFP4 layout (e4m3, B=16, tensor scale phase averaged), MXFP4 (e8m0 in each rounding mode,
B=32) and float16/bfloat16 scales at B=32, and prints the time per code (best of --repeat,
measure cache cleared so the set-up is included), the iterations, the final Lloyd change,
the number of pieces of the scale function, and the expected MSE against E2M1 in the same
layout.  Target: <= 100 ms per code.

    python benchmarks/bench_derive_scaled.py --table

prints instead the results table of docs/scaled-derivation.md: exact expected MSE/MAE of
E2M1, NF4, IQ4_NL and the derived L2/L1 codes per layout, against quantbook.quantize on two
tensors of 2**20 float32 normals (seed 7).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import quantbook
from quantbook.derive import evaluate, solve_lloyd
from quantbook.derive.scaled import _cached, scaled_measure

CASES = [("e4m3", 16), ("e8m0:floor", 32), ("e8m0:ceil", 32), ("e8m0:even", 32), ("e8m0:rceil", 32),
         ("float16", 32), ("bfloat16", 32)]


def _mc(cb, B, rule, n=1 << 20, tensors=2, seed=7):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(tensors):
        x = rng.standard_normal(n, dtype=np.float32)
        p, st = quantbook.quantize(x, cb, B, scale=rule, backend="cpu")
        d = x.astype(np.float64) - quantbook.dequantize(p, st, backend="cpu")
        out.append((d * d).reshape(-1, B).mean(1))
    return np.concatenate(out)


def table() -> None:
    from quantbook.derive import lloyd

    for rule, B in CASES[:-1]:
        rows = [(n, quantbook.get(n)) for n in ("e2m1", "nf4", "iq4_nl")]
        rows += [("lloyd-l2", lloyd(4, B, scale=rule)), ("lloyd-l1", lloyd(4, B, "l1", scale=rule))]
        ref = evaluate(rows[0][1], B, scale=rule).mse_weight
        ref_mc = _mc(rows[0][1], B, rule).mean()
        kw = {"tensor_size": 1 << 20} if rule == "e4m3" else {}
        print(f"### {rule} B={B}")
        for name, cb in rows:
            e, e2, m = evaluate(cb, B, scale=rule), evaluate(cb, B, scale=rule, **kw), _mc(cb, B, rule)
            print(f"| {name} | {e.mse_weight:.5e} | {e.mae_weight:.5e} | {e.mse_weight / ref:.4f} | "
                  f"{e2.mse_weight:.5e} | {m.mean():.5e} ± {m.std() / np.sqrt(m.size):.1e} | "
                  f"{m.mean() / ref_mc:.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    if args.table:
        table()
        return
    e2m1 = quantbook.get("e2m1")
    print(f"{'rule':12} {'B':>3} {'loss':4} {'ms/code':>8} {'iter':>4} {'change':>8} {'pieces':>6} "
          f"{'MSE/E2M1':>8}")
    for rule, B in CASES:
        for loss in ("l2", "l1"):
            best = float("inf")
            for _ in range(args.repeat):
                _cached.cache_clear()
                t = time.perf_counter()
                res = solve_lloyd(4, B, loss, scale=rule)
                best = min(best, time.perf_counter() - t)
            ratio = (evaluate(res.codebook, B, scale=rule).mse_weight
                     / evaluate(e2m1, B, scale=rule).mse_weight)
            pieces = scaled_measure("normal", B, rule).n_pieces
            print(f"{rule:12} {B:3d} {loss:4} {best * 1e3:8.1f} {res.iterations:4d} {res.change:8.1e} "
                  f"{pieces:6d} {ratio:8.4f}")


if __name__ == "__main__":
    main()
