"""CPU cost of the scaled layouts' scale rules: the rule in numpy vs its step table (same run).

    python benchmarks/bench_scaled_cpu.py [--log2n 26] [--repeat 5]

For 2**log2n float32 values (seeded normal, default 2**26) and each layout below, times, best
of ``--repeat`` after a warm-up:

* ``rule``: the stored scales and divisors from the rule itself in numpy
  (``Backend.scaled_scales``' default, as the numpy backend runs it);
* ``table``: the same looked up in the rule's step table (quantbook.scales.steps) by the cpu
  backend (a numba binary search on the maxima's bits, then gathers; the table is built
  once, before timing, and its build time is printed);
* ``quantize()``: ``quantbook.quantize(x, codebook, B, scale=rule, backend="cpu")`` end to end.

It prints ``rule / table`` (the speed-up of the lookup) and checks that the two give the same
stored bytes and factors, and that the cpu backend's packed bytes and stored scales equal the
numpy backend's on the first 2**20 values; exit status 2 if anything differs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _cli import check_floors, run

LAYOUTS = (("NVFP4", "e2m1", "e4m3", 16, 6.0), ("MXFP4", "e2m1", "e8m0:floor", 32, 6.0),
           ("MX rceil", "e2m1", "e8m0:rceil", 32, 6.0), ("f16 scale", "iq4_nl", "float16", 32, 127.0),
           ("bf16 scale", "nf4", "bfloat16", 64, 1.0))


def _best_ms(fn, repeat: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log2n", type=int, default=26)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    check_floors(ap, args, log2n=0, repeat=1)

    import numba

    import quantbook as qb
    from quantbook.bulk.backend import BACKENDS
    from quantbook.scales import get_rule
    from quantbook.scales.steps import _table, step_table

    n = 1 << args.log2n
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    cpu, ref = BACKENDS["cpu"], BACKENDS["numpy"]
    print(f"n = 2^{args.log2n} float32, numba {numba.__version__} on {numba.get_num_threads()} threads, "
          f"best of {args.repeat}")
    head = f"{'layout':10s} {'rule':11s} {'B':>3s} {'blocks':>9s} {'build ms':>9s} {'rule ms':>9s} " \
           f"{'table ms':>9s} {'rule/table':>10s} {'quantize() ms':>14s}"
    print(head)
    print("-" * len(head))
    bad = False
    for label, codebook, spec, B, qmax in LAYOUTS:
        rule = get_rule(spec)
        amax = cpu.scaled_amax(x, B)
        ts = rule.tensor_scale(float(amax.max()), qmax)
        _table.cache_clear()
        t0 = time.perf_counter()
        step_table(rule, qmax, ts)
        build = (time.perf_counter() - t0) * 1e3
        t_rule = _best_ms(lambda: ref.scaled_scales(amax, rule, qmax, ts), args.repeat)
        t_tab = _best_ms(lambda: cpu.scaled_scales(amax, rule, qmax, ts), args.repeat)
        t_q = _best_ms(lambda: qb.quantize(x, codebook, B, scale=spec, qmax=qmax, backend="cpu"), args.repeat)
        a, b = ref.scaled_scales(amax, rule, qmax, ts), cpu.scaled_scales(amax, rule, qmax, ts)
        same = (np.array_equal(a[0].view(np.uint8), b[0].view(np.uint8)) and a[2] == b[2]
                and np.array_equal(a[1].view(np.uint32), b[1].view(np.uint32)))
        m = 1 << min(20, args.log2n)
        pc, sc = qb.quantize(x[:m], codebook, B, scale=spec, qmax=qmax, backend="cpu")
        pn, sn = qb.quantize(x[:m], codebook, B, scale=spec, qmax=qmax, backend="numpy")
        same = same and np.array_equal(pc, pn) and np.array_equal(sc.absmax.view(np.uint8), sn.absmax.view(np.uint8))
        bad = bad or not same
        print(f"{label:10s} {spec:11s} {B:3d} {amax.size:9d} {build:9.1f} {t_rule:9.1f} {t_tab:9.1f} "
              f"{t_rule / t_tab:10.1f} {t_q:14.1f}" + ("" if same else "   DIFFER"))
    print("stored scales, factors and bytes: " + ("DIFFER" if bad else "IDENTICAL (table vs rule; cpu vs numpy)"))
    return 2 if bad else 0


if __name__ == "__main__":
    run(main)
