"""The float32-absmax law of a sample source (``Empirical``), whose density is constant
between knots: how far the law's quadrature over the block maximum is from the same rule
with 16 nodes on every piece (the kinks of the partial moments at ``m = knot / y`` are what
limits it), and how far it is from Monte Carlo on a 40-value sample, where the knots are far
apart.  NF4; samples of normal + 0.8·exponential values (seed 7); Monte Carlo seeds 1-4,
2^22 values each, standard errors over blocks.  Then IQ4_NL (no level at +1, so the sign of
a block's extreme value matters) at B=16 under nested statistics, on a sample of 10^4
normal values (seed 7), against quantize() on 4 × 2^24 values (seeds 100-103), standard
errors over 256-block groups.

    python benchmarks/measure_sample_laws.py [--sizes 300,10000,200000] [--blocksizes 2,16,256,4096]
                                             [--mc-log2n 22] [--nested-log2n 24]

``--sizes`` and ``--blocksizes``: the samples and block sizes of the first table; 2**mc-log2n
Monte-Carlo values a seed for the 40-value sample, 2**nested-log2n for IQ4_NL.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import quantbook
from quantbook.codebooks.blocks import check_derived_block_size
import quantbook.derive.block as block
from _cli import check_floors, int_list, run
from quantbook.derive import evaluate
from quantbook.derive.sources import Empirical

KEYS = ("mse_weight", "mae_weight", "mse_normalized", "mae_normalized")


def _sample(n: int) -> Empirical:
    rng, n = np.random.default_rng(7), max(n, 0)   # a negative size: Empirical's refusal of an empty sample
    return Empirical(rng.standard_normal(n) + 0.8 * rng.exponential(1.0, n))


def _metrics(src, B, norm):
    block._cached_measure.cache_clear()
    ev = evaluate(quantbook.get("nf4"), B, src, norm)
    return np.array([getattr(ev, k) for k in KEYS])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="300,10000,200000", help="comma-separated sample sizes of the first table")
    ap.add_argument("--blocksizes", default="2,16,256,4096", help="comma-separated B of the first table")
    ap.add_argument("--mc-log2n", type=int, default=22, help="2**N Monte-Carlo values a seed, 40-value sample")
    ap.add_argument("--nested-log2n", type=int, default=24, help="2**N Monte-Carlo values a seed, IQ4_NL")
    args = ap.parse_args(argv)
    # two blocks of B=2 a seed; one 256-block group of B=16 a seed (four seeds: a spread)
    check_floors(ap, args, mc_log2n=2, nested_log2n=12)
    sizes, blocks = int_list(ap, args.sizes, "--sizes"), int_list(ap, args.blocksizes, "--blocksizes")
    samples = {}
    for flag, items, check in (("--sizes", sizes, lambda n: samples.setdefault(n, _sample(n))),
                               ("--blocksizes", blocks, check_derived_block_size)):
        for v in items:   # the law's own checks, before the table starts
            try:
                check(v)
            except ValueError as exc:
                ap.error(f"{flag}: {exc}")
    print("largest relative difference of MSE/MAE (weight and normalised) from 16 nodes a piece")
    print(f"{'sample':>7} {'B':>5} {'normalization':>14} {'difference':>11} {'seconds':>8}")
    for n in sizes:
        src = samples[n]
        for B in blocks:
            for norm in ("absmax", "signed-absmax"):
                t = time.perf_counter()
                law = _metrics(src, B, norm)
                dt = time.perf_counter() - t
                saved = block._KNOT_GL, block._KNOT_NARROW
                block._KNOT_GL, block._KNOT_NARROW = 16, 0.0
                try:
                    ref = _metrics(src, B, norm)
                finally:
                    block._KNOT_GL, block._KNOT_NARROW = saved
                print(f"{n:>7} {B:>5} {norm:>14} {np.max(np.abs(law / ref - 1)):>11.1e} {dt:>8.2f}")
    src, B, norm = _sample(40), 2, "signed-absmax"
    law = _metrics(src, B, norm)
    print(f"\n40-value sample, B={B}, {norm}: (law - Monte Carlo) / standard error")
    for seed in (1, 2, 3, 4):
        rng = np.random.default_rng(seed)
        x = src.rvs((2**args.mc_log2n // B, B), rng)
        s = x[np.arange(x.shape[0]), np.argmax(np.abs(x), axis=1)][:, None]
        y = x / s
        q = quantbook.get("nf4").quantize(y.ravel()).reshape(y.shape)
        errs = (((y - q) * s) ** 2, np.abs((y - q) * s), (y - q) ** 2, np.abs(y - q))
        z = [(v - e.mean(1).mean()) / (e.mean(1).std(ddof=1) / math.sqrt(e.shape[0])) for v, e in zip(law, errs)]
        print(f"  seed {seed}: " + "  ".join(f"{k} {v:+.2f}" for k, v in zip(KEYS, z)))
    src, B, cb = Empirical(np.random.default_rng(7).standard_normal(10_000)), 16, quantbook.get("iq4_nl")
    ev = evaluate(cb, B, src, scale="nested")
    sq, ab = [], []
    for seed in range(100, 104):
        x = np.asarray(src.rvs(1 << args.nested_log2n, random_state=np.random.default_rng(seed)), np.float32)
        p, st = quantbook.quantize(x, cb, B, backend="cpu", nested=True)
        d = x.astype(np.float64) - quantbook.dequantize(p, st, backend="cpu")
        sq.append((d**2).reshape(-1, 256 * B).mean(1))
        ab.append(np.abs(d).reshape(-1, 256 * B).mean(1))
    print(f"\nIQ4_NL, B={B}, nested statistics, 10^4-value normal sample: law against quantize")
    for key, v in (("MSE", np.concatenate(sq)), ("MAE", np.concatenate(ab))):
        law = ev.mse_weight if key == "MSE" else ev.mae_weight
        se = v.std(ddof=1) / math.sqrt(v.size)
        print(f"  {key}: law {law:.6e}, Monte Carlo {v.mean():.6e} ± {se:.1e} ({(law - v.mean()) / se:+.2f} SE)")


if __name__ == "__main__":
    run(main)
