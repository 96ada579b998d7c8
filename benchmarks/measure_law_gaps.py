"""The exact scaled-layout laws where they are hardest, against quantize()'s Monte Carlo:
the NVFP4 tensor-size model under a heavy tail (one block of each tensor holds its maximum G,
and the Monte Carlo without that block shows what it weighs), and the nested statistics'
expected MAE, for a table with the levels ±1 (NF4) and one without (IQ4_NL).
Seeds fixed; standard errors over tensors or blocks.

    python benchmarks/measure_law_gaps.py [--tensors 160] [--log2n 16] [--source student-t:3] [--nested-log2n 23]

``--tensors`` NVFP4 tensors of 2**log2n values of ``--source``; nested statistics on
2**nested-log2n values.  The heavy tail's law is most of the time (about 20 s of CPU); a
short run takes a light one (``--source normal``).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import quantbook
from _cli import check_floors, run
from quantbook.derive import evaluate
from quantbook.derive.sources import parse_source


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tensors", type=int, default=160, help="NVFP4 tensors (standard errors over them)")
    ap.add_argument("--log2n", type=int, default=16, help="2**N values an NVFP4 tensor")
    ap.add_argument("--source", default="student-t:3", help="the NVFP4 tensors' law (quantbook.derive.sources)")
    ap.add_argument("--nested-log2n", type=int, default=23, help="2**N values for the nested statistics")
    args = ap.parse_args(argv)
    # two of each to spread; an NVFP4 tensor of two blocks keeps one without the block of G;
    # two blocks of 64 under nested statistics
    check_floors(ap, args, tensors=2, log2n=5, nested_log2n=7)
    t0 = time.time()
    cb, B, n = quantbook.get("nf4"), 16, 1 << args.log2n
    src, rng = parse_source(args.source), np.random.default_rng(1)
    whole, without = [], []
    for _ in range(args.tensors):
        x = np.asarray(src.rvs(n, random_state=rng), np.float32)
        p, st = quantbook.quantize(x, cb, B, scale="e4m3", backend="cpu")
        blocks = ((x.astype(np.float64) - quantbook.dequantize(p, st, backend="cpu")) ** 2).reshape(-1, B).mean(1)
        whole.append(blocks.mean())
        without.append(np.delete(blocks, int(np.argmax(np.abs(x))) // B).mean())
    law = evaluate(cb, B, source=args.source, scale="e4m3", tensor_size=n).mse_weight
    se = math.sqrt(len(whole))
    print(f"NVFP4 (e4m3, B=16), {args.source}, {args.tensors} tensors of 2^{args.log2n}: law {law:.4e}; Monte Carlo "
          f"{np.mean(whole):.4e} ± {np.std(whole, ddof=1) / se:.1e}; without the block of G "
          f"{np.mean(without):.4e} ± {np.std(without, ddof=1) / se:.1e}")
    for name, B in (("nf4", 64), ("iq4_nl", 16)):
        cb = quantbook.get(name)
        x = np.random.default_rng(13).standard_normal(1 << args.nested_log2n, dtype=np.float32)
        mae = {}
        for rule in ("float32", "nested"):
            p, st = quantbook.quantize(x, cb, B, scale=rule, backend="cpu")
            mae[rule] = np.abs(x.astype(np.float64) - quantbook.dequantize(p, st, backend="cpu")).reshape(-1, B).mean(1)
        inc = mae["nested"] - mae["float32"]
        law = evaluate(cb, B, scale="nested").mae_weight - evaluate(cb, B).mae_weight
        print(f"nested statistics, {name} at B={B}, N(0,1), 2^{args.nested_log2n} values: MAE increment law {law:.3e}; "
              f"Monte Carlo {inc.mean():.3e} ± {inc.std(ddof=1) / math.sqrt(inc.size):.1e}")
    print(f"{time.time() - t0:.0f} s")


if __name__ == "__main__":
    run(main)
