"""Benchmark: exact Lloyd-Max derivation vs a Monte-Carlo Lloyd, in one run.

    python benchmarks/bench_derive.py [--mc-samples 4000000] [--repeat 3]

Derives 4-bit weight-domain L1 and L2 codes (normal source, absmax, -1/0/1 fixed) for
B = 16, 32, ..., 16384 and prints the time per code (best of --repeat, measure cache cleared
so the quadrature set-up is included), iterations and the final Lloyd change.  Then runs a
plain Monte-Carlo Lloyd (4e6 normal samples in blocks of 64, weighted centroids by
bincount, from the same starting code, until the change is below 1e-6 or 500 iterations)
for the B=64 L2 code and prints its time, its distance from the exact code, and the ratio
of the two times.  Target: <= 50 ms per code and >= 20x faster than Monte Carlo.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from quantbook.derive.block import _cached_measure
from quantbook.derive.lloyd import solve_lloyd, quantile


def exact(bits, B, loss, repeat):
    best = float("inf")
    for _ in range(repeat):
        _cached_measure.cache_clear()
        t = time.perf_counter()
        res = solve_lloyd(bits, B, loss, "weight")
        best = min(best, time.perf_counter() - t)
    return res, best


def monte_carlo_lloyd(B, n, seed=0, tol=1e-6, max_iter=500):
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n // B, B))
    m = np.abs(x).max(axis=1, keepdims=True)
    y = (x / m).ravel()
    w = np.broadcast_to(m * m, x.shape).ravel()  # weight-domain L2: weight scale**2
    wy = w * y
    q = quantile(4, B).levels.copy()  # same start as the exact solver
    fixed = np.isin(q, [-1.0, 0.0, 1.0])
    it = 0
    for it in range(1, max_iter + 1):
        idx = np.searchsorted(0.5 * (q[1:] + q[:-1]), y, side="left")
        sw = np.bincount(idx, weights=w, minlength=q.size)
        swy = np.bincount(idx, weights=wy, minlength=q.size)
        new = np.where(fixed | (sw == 0), q, swy / np.where(sw == 0, 1, sw))
        change = np.max(np.abs(new - q))
        q = new
        if change < tol:
            break
    return q, it, change, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mc-samples", type=int, default=4_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{'B':>6} {'loss':>4} {'ms/code':>8} {'iters':>5} {'change':>9}")
    worst = 0.0
    for loss in ("l1", "l2"):
        for k in range(4, 15):
            B = 2**k
            res, dt = exact(4, B, loss, args.repeat)
            worst = max(worst, dt)
            print(f"{B:>6} {loss:>4} {dt * 1e3:8.2f} {res.iterations:>5} {res.change:9.1e}")
    print(f"slowest code: {worst * 1e3:.2f} ms (target <= 50 ms)")
    res, dt = exact(4, 64, "l2", args.repeat)
    q_mc, it, change, t_mc = monte_carlo_lloyd(64, args.mc_samples)
    diff = np.max(np.abs(q_mc - res.codebook.levels))
    print(f"Monte-Carlo Lloyd, B=64 L2 weight domain, {args.mc_samples:.0e} samples: {t_mc:.2f} s, "
          f"{it} iterations (last change {change:.1e}); max |MC - exact| = {diff:.1e}")
    print(f"exact B=64 L2: {dt * 1e3:.2f} ms, change {res.change:.1e};  speed-up exact/MC = {t_mc / dt:.0f}x")


if __name__ == "__main__":
    main()
