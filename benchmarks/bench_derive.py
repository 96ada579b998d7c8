"""Benchmark: exact Lloyd-Max derivation vs a Monte-Carlo Lloyd, in one run; or, with
``--samples``, Lloyd-Max on sample sources.

    python benchmarks/bench_derive.py [--mc-samples 4000000] [--repeat 3] [--blocksizes 16,64] [--losses l2]
    python benchmarks/bench_derive.py --samples [--sample-size 200000] [--repeat 1] [--blocksizes 16] [--losses l2]

Derives 4-bit weight-domain L1 and L2 codes (normal source, absmax, -1/0/1 fixed) for
B = 16, 32, ..., 16384 and prints the time per code (best of --repeat, measure cache cleared
so the quadrature set-up is included), iterations and the final Lloyd change.  Then runs a
plain Monte-Carlo Lloyd (4e6 normal samples in blocks of 64, weighted centroids by
bincount, from the same starting code, until the change is below 1e-6 or 500 iterations)
for the B=64 L2 code and prints its time, its distance from the exact code, and the ratio
of the two times.  Target: <= 50 ms per code and >= 20x faster than Monte Carlo.
``--blocksizes`` and ``--losses`` keep some of the codes (of either run) for a short run.

``--samples``: 4-bit weight-domain L2 and L1 codes (absmax, -1/0/1 fixed, as NF4) of
``--sample-size`` seeded values (seed 0) of a normal and a Student-t(5), kept whole
(``Empirical(x, knots=None)``) and at the default knots, for B = 16 and 64: wall and CPU
seconds per code (best of --repeat, measure cache cleared), iterations, final Lloyd change,
the traced peak of memory (tracemalloc, numpy's arrays included) and a digest of the levels
(to compare two checkouts: run this script with PYTHONPATH at each).  The load average is
printed before and after, since the machine may be shared.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
import tracemalloc

import numpy as np

from _cli import check_floors, int_list, only_in, run
from quantbook.derive.block import _cached_measure
from quantbook.derive.lloyd import solve_lloyd, quantile
from quantbook.derive.recipes import LloydRecipe

MC_BLOCK = 64   # the Monte-Carlo Lloyd's block size


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


def samples(n, repeat, blocks, losses):
    from quantbook.derive.sources import Empirical

    print(f"load average {os.getloadavg()[0]:.2f}; {n} values, seed 0")
    t = time.perf_counter()   # the first lookups import numba and load the compiled kernels
    Empirical(np.arange(3.0)).pdf(np.zeros(1024))
    print(f"first use of a sample source: {time.perf_counter() - t:.2f} s (not in the rows)")
    print(f"{'sample':>8} {'knots':>6} {'B':>3} {'loss':>4} {'wall s':>7} {'cpu s':>7} {'iters':>5} "
          f"{'change':>8} {'peak MB':>8}  levels")
    for kind in ("normal", "t5"):
        rng = np.random.default_rng(0)
        x = rng.standard_normal(n) if kind == "normal" else rng.standard_t(5, n)
        for knots in (None, "default"):
            src = Empirical(x) if knots == "default" else Empirical(x, knots=None)
            for B in blocks:
                for loss in losses:
                    best = (float("inf"), 0.0, 0)
                    for _ in range(repeat):
                        _cached_measure.cache_clear()
                        tracemalloc.start()
                        t, c = time.perf_counter(), time.process_time()
                        res = solve_lloyd(4, B, loss, "weight", source=src)
                        wall, cpu = time.perf_counter() - t, time.process_time() - c
                        peak = tracemalloc.get_traced_memory()[1]
                        tracemalloc.stop()
                        best = min(best, (wall, cpu, peak))
                    digest = hashlib.sha256(res.codebook.levels.tobytes()).hexdigest()[:10]
                    print(f"{kind:>8} {knots or 'all':>6} {B:>3} {loss:>4} {best[0]:7.2f} {best[1]:7.2f} "
                          f"{res.iterations:>5} {res.change:8.1e} {best[2] / 2**20:8.1f}  {digest}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mc-samples", type=int, default=None, help="the Monte-Carlo Lloyd's sample (4000000)")
    ap.add_argument("--repeat", type=int, default=None, help="3, or 1 with --samples")
    ap.add_argument("--samples", action="store_true", help="Lloyd-Max on sample sources (module docstring)")
    ap.add_argument("--sample-size", type=int, default=None, help="--samples: values a source (200000)")
    ap.add_argument("--blocksizes", default=None,
                    help="comma-separated B (default 16,32,...,16384; 16,64 with --samples)")
    ap.add_argument("--losses", default=None, help="comma-separated l1, l2 (default both)")
    args = ap.parse_args()
    # the Monte-Carlo Lloyd needs one block: with none it would compare an empty sample
    check_floors(ap, args, repeat=1, sample_size=2, mc_samples=MC_BLOCK)
    only_in(ap, args, "--samples" if args.samples else "a timing run",
            sample_size="--samples", mc_samples="a timing run")
    default = "16,64" if args.samples else ",".join(str(2**k) for k in range(4, 15))
    blocks = int_list(ap, args.blocksizes or default, "--blocksizes")
    losses = (args.losses or ("l2,l1" if args.samples else "l1,l2")).split(",")
    for B in blocks:   # the recipe's own checks, before any code is timed
        for loss in losses:
            try:
                LloydRecipe(4, B, loss, "weight")
            except ValueError as exc:
                ap.error(str(exc))
    if args.samples:
        samples(args.sample_size or 200_000, args.repeat or 1, blocks, losses)
        return
    args.repeat = args.repeat or 3
    args.mc_samples = args.mc_samples or 4_000_000
    print(f"{'B':>6} {'loss':>4} {'ms/code':>8} {'iters':>5} {'change':>9}")
    worst = 0.0
    for loss in losses:
        for B in blocks:
            res, dt = exact(4, B, loss, args.repeat)
            worst = max(worst, dt)
            print(f"{B:>6} {loss:>4} {dt * 1e3:8.2f} {res.iterations:>5} {res.change:9.1e}")
    print(f"slowest code: {worst * 1e3:.2f} ms (target <= 50 ms)")
    res, dt = exact(4, MC_BLOCK, "l2", args.repeat)
    q_mc, it, change, t_mc = monte_carlo_lloyd(MC_BLOCK, args.mc_samples)
    diff = np.max(np.abs(q_mc - res.codebook.levels))
    print(f"Monte-Carlo Lloyd, B={MC_BLOCK} L2 weight domain, {args.mc_samples:.0e} samples: {t_mc:.2f} s, "
          f"{it} iterations (last change {change:.1e}); max |MC - exact| = {diff:.1e}")
    print(f"exact B={MC_BLOCK} L2: {dt * 1e3:.2f} ms, change {res.change:.1e};  speed-up exact/MC = {t_mc / dt:.0f}x")


if __name__ == "__main__":
    run(main)
