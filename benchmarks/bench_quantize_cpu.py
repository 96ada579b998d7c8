"""Throughput of bulk quantize / dequantize on the CPU, as ratios measured in one run.

    python benchmarks/bench_quantize_cpu.py            # 2**26 float32 values, B=64, NF4
    python benchmarks/bench_quantize_cpu.py --log2n 24 --skip-numpy
    python benchmarks/bench_quantize_cpu.py --dtype float16 --skip-bnb    # other input types
    python benchmarks/bench_quantize_cpu.py --bits 8 --skip-bnb           # codes a byte each

For each backend: quantize GB/s (bytes of input read per second) and dequantize GB/s (bytes of
output, in the input's dtype, written per second), next to a numpy copy of the same array
(np.copyto into a preallocated buffer, GB/s of input) and, when importable, bitsandbytes'
CPU quantize_4bit / dequantize_4bit on the same data.  Best of --repeat runs after one
warm-up.  Targets: numba quantize >= 0.4x copy and >= 20x bitsandbytes' quantize; numba
dequantize >= bitsandbytes' dequantize.  Also checks that numba gives the numpy reference's bytes, absmax
and decoded values (unless --skip-numpy) and bitsandbytes' bytes (when measured); exit
status 2 if either differs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

from _cli import check_floors, run


def best(fn, repeat):
    fn()  # warm-up (numba compile / page faults)
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log2n", type=int, default=26)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--codebook", default="nf4")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    ap.add_argument("--bits", type=int, default=None, help="stored width (default: the codebook's)")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--skip-numpy", action="store_true", help="skip the (slow) numpy reference")
    ap.add_argument("--skip-bnb", action="store_true")
    args = ap.parse_args(argv)
    check_floors(ap, args, log2n=0, repeat=1)

    import quantbook as qb

    n = 2**args.log2n
    B = args.block_size
    x = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    if args.dtype != "float32":
        from quantbook.bulk.state import dtype_from_name

        x = x.astype(dtype_from_name(args.dtype))
    gb = x.nbytes / 1e9
    dst = np.empty_like(x)
    t_copy = best(lambda: np.copyto(dst, x), args.repeat)

    results = {}
    backends = ["cpu"] + ([] if args.skip_numpy else ["numpy"])
    for be in backends:
        rep = args.repeat if be == "cpu" else 1
        tq = best(lambda: qb.quantize(x, args.codebook, B, backend=be, bits=args.bits), rep)
        packed, st = qb.quantize(x, args.codebook, B, backend=be, bits=args.bits)
        td = best(lambda: qb.dequantize(packed, st, backend=be), rep)
        results[be] = (tq, td, packed, st)

    bnb = None
    if args.bits not in (None, 4):
        print("(bitsandbytes not measured: its quantize_4bit stores 4 bits)", file=sys.stderr)
    elif not args.skip_bnb:
        try:
            import torch
            import torch._dynamo

            torch._dynamo.config.disable = True
            import bitsandbytes.functional as F

            bnb = (torch, F)
        except Exception as exc:  # noqa: BLE001 - report and go on
            print(f"(bitsandbytes not measured: {exc})", file=sys.stderr)
    if bnb is not None:
        torch, F = bnb
        t = torch.from_numpy(x.view(np.int16) if args.dtype == "bfloat16" else x)
        if args.dtype == "bfloat16":
            t = t.view(torch.bfloat16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tq = best(lambda: F.quantize_4bit(t, blocksize=B, quant_type=args.codebook), min(args.repeat, 2))
            p, s = F.quantize_4bit(t, blocksize=B, quant_type=args.codebook)
            td = best(lambda: F.dequantize_4bit(p, s), min(args.repeat, 3))
        results["bitsandbytes"] = (tq, td, p.numpy().reshape(-1), s)
        same = np.array_equal(results["cpu"][2], results["bitsandbytes"][2])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:
        import numba

        nthreads = numba.get_num_threads()
    except Exception:  # noqa: BLE001
        nthreads = "?"
    print(f"n = 2**{args.log2n} {args.dtype} ({gb:.3f} GB), block {B}, {args.codebook}"
          f"{'' if args.bits is None else f' as {args.bits} bits'}; "
          f"{os.cpu_count()} CPUs, numba threads {nthreads}, load avg {load:.2f}")
    if bnb is not None:
        print(f"bitsandbytes torch threads {bnb[0].get_num_threads()}; identical packed bytes "
              f"numba vs bitsandbytes: {same}")
    print(f"{'':14s} {'quantize GB/s':>14s} {'x copy':>8s} {'x bnb':>8s} {'dequant GB/s':>13s} {'x bnb':>8s}")
    print(f"{'numpy copy':14s} {gb / t_copy:14.3f}")
    for be, (tq, td, _, _) in results.items():
        rq = (gb / tq) / (gb / t_copy)
        if "bitsandbytes" in results:
            bq, bd = results["bitsandbytes"][:2]
            xb_q, xb_d = f"{bq / tq:8.2f}", f"{bd / td:8.2f}"
        else:
            xb_q = xb_d = f"{'-':>8s}"
        print(f"{be:14s} {gb / tq:14.3f} {rq:8.2f} {xb_q} {gb / td:13.3f} {xb_d}")
    status = 0
    if "numpy" in results:   # numba against the reference: packed bytes, absmax bits, decoded values
        cpu, ref = results["cpu"], results["numpy"]
        same_ref = (np.array_equal(cpu[2], ref[2])
                    and np.array_equal(cpu[3].absmax.view(np.uint32), ref[3].absmax.view(np.uint32))
                    and np.array_equal(qb.dequantize(cpu[2], cpu[3], backend="cpu").view(np.uint8),
                                       qb.dequantize(ref[2], ref[3], backend="numpy").view(np.uint8)))
        print(f"numba vs the numpy reference: {'IDENTICAL' if same_ref else 'DIFFER'}")
        status = 0 if same_ref else 2
    if bnb is not None and not same:
        status = 2
    return status


if __name__ == "__main__":
    run(main)
