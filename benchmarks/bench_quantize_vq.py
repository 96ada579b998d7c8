"""Throughput of vector quantization (quantize_vq / dequantize_vq), ratios measured in one run.

    python benchmarks/bench_quantize_vq.py                       # 2**24 float32, HIGGS 2-D 256, group 64
    python benchmarks/bench_quantize_vq.py --rotate hadamard --numpy-log2n 18
    python benchmarks/bench_quantize_vq.py --rotate hadamard --log2n 26      # on a GPU machine

GB/s are bytes of float32 input read (quantize) or float32 output written (dequantize) per
second, best of --repeat runs after one warm-up (numba compiles then).  The numpy reference
(brute force over all N points) runs on the first 2**--numpy-log2n rows only, to keep it
short; its GB/s are per byte all the same, so the ratio compares like with like.  Also
checks that the numba indices and scales equal the reference's on that prefix.  The numba
row also gives the CPU seconds of its best run (all threads): on a machine shared with other
jobs the wall clock measures the load as much as the code.  Target: numba quantize >= 0.5
GB/s for 2**24 weights, P = 2, N = 256, no rotation, on 2 cores.

When the ``gpu`` backend can run (CuPy and a CUDA device; ``--no-gpu`` skips it), it is timed
too: with host arrays in and out (the transfers counted), and with device arrays in and out
(``device`` rows: the tensor already on the GPU, the device synchronized before the clock
stops).  Its indices, scales and dequantized values must equal the numba backend's on the
whole tensor, for both.
The exit status is 1 when any comparison differs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from _cli import check_floors, run


def best(fn, repeat, cpu=None):
    """Best wall-clock seconds of ``repeat`` runs after a warm-up; ``cpu`` (a list) receives
    the process CPU seconds of that best run (all threads)."""
    fn()  # warm-up: numba compilation, page faults, the search tables
    ts = []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0, time.process_time() - c0))
    wall, c = min(ts)
    if cpu is not None:
        cpu.append(c)
    return wall


def higgs_points(dim: int, size: int) -> np.ndarray:
    """The published HIGGS grid, from quantbook's registry when it resolves, else its data file."""
    try:
        from quantbook.naming import resolve_vector

        return resolve_vector(f"higgs-{dim}d-{size}").points
    except (ImportError, ValueError):
        import quantbook

        path = Path(quantbook.__file__).parent / "codebooks" / "data" / "higgs_grids.json"
        grids = json.loads(path.read_text(encoding="utf-8"))["grids"]
        points = next((g["points"] for g in grids if g["dim"] == dim and g["size"] == size), None)
        if points is None:
            have = ", ".join(f"{g['dim']}x{g['size']}" for g in grids)
            raise ValueError(f"no HIGGS grid of --dim {dim} and --size {size} (P x N: {have})")
        return np.array(points, np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log2n", type=int, default=24)
    ap.add_argument("--dim", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--scale", default="rms")
    ap.add_argument("--rotate", default=None, help="none (default), hadamard or hadamard:N")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--numpy-log2n", type=int, default=20, help="weights the numpy reference quantizes")
    ap.add_argument("--no-gpu", action="store_true", help="skip the gpu backend even when it can run")
    args = ap.parse_args(argv)
    check_floors(ap, args, log2n=12, repeat=1)   # rows of 4096 values: fewer would leave an empty tensor

    from quantbook.bulk.vq import VQ_BACKENDS, dequantize_vq, quantize_vq

    pts = higgs_points(args.dim, args.size)
    n = 2**args.log2n
    cols = 4096
    x = np.random.default_rng(0).standard_normal((n // cols, cols), dtype=np.float32)
    kw = dict(group=args.group, scale=args.scale, rotate=args.rotate)
    gb = x.nbytes / 1e9
    load = os.getloadavg()[0]
    dst = np.empty_like(x)
    t_copy = best(lambda: np.copyto(dst, x), args.repeat)

    cpu_q = []
    tq = best(lambda: quantize_vq(x, pts, backend="cpu", **kw), args.repeat, cpu_q)
    idx, st = quantize_vq(x, pts, backend="cpu", **kw)
    td = best(lambda: dequantize_vq(idx, st, backend="cpu"), args.repeat)

    rows = max(1, 2**args.numpy_log2n // cols)
    xs = x[:rows]
    t_np = best(lambda: quantize_vq(xs, pts, backend="numpy", **kw), 1)
    idx_np, st_np = quantize_vq(xs, pts, backend="numpy", **kw)
    td_np = best(lambda: dequantize_vq(idx_np, st_np, backend="numpy"), 1)
    same = np.array_equal(idx_np, idx[:rows]) and np.array_equal(st_np.scales, st.scales[:st_np.scales.size])

    gbs, gbs_np = gb / tq, xs.nbytes / 1e9 / t_np
    dgbs, dgbs_np = gb / td, xs.nbytes / 1e9 / td_np
    print(f"{n:,} float32 weights ({x.shape[0]} x {cols}), P={pts.shape[1]}, N={pts.shape[0]}, "
          f"group {args.group}, {args.scale} scale, rotate {args.rotate or 'none'}; "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the start; "
          f"numpy reference on {xs.size:,} weights")
    print(f"copy                      {gb / t_copy:7.3f} GB/s")
    print(f"quantize    numba (cpu)   {gbs:7.3f} GB/s   {tq * 1e3:8.1f} ms wall, {cpu_q[0] * 1e3:8.1f} ms CPU "
          f"({gb / cpu_q[0]:.3f} GB per CPU-second)")
    print(f"quantize    numpy         {gbs_np:7.3f} GB/s   ratio numba/numpy {gbs / gbs_np:7.1f}x")
    print(f"dequantize  numba (cpu)   {dgbs:7.3f} GB/s   {td * 1e3:8.1f} ms")
    print(f"dequantize  numpy         {dgbs_np:7.3f} GB/s   ratio numba/numpy {dgbs / dgbs_np:7.1f}x")
    print(f"numba indices and scales equal the reference's: {same}")
    why = "skipped (--no-gpu)" if args.no_gpu else VQ_BACKENDS["gpu"].unavailable()
    if why is None:
        import cupy as cp

        from quantbook.bulk.gpu.backend import gpu_available

        def synced(fn):
            def run():
                out = fn()
                cp.cuda.Device().synchronize()
                return out
            return run

        tq_g = best(lambda: quantize_vq(x, pts, backend="gpu", **kw), args.repeat)
        idx_g, st_g = quantize_vq(x, pts, backend="gpu", **kw)
        td_g = best(lambda: dequantize_vq(idx, st, backend="gpu"), args.repeat)
        y_g, y_c = dequantize_vq(idx, st, backend="gpu"), dequantize_vq(idx, st, backend="cpu")
        xd, idx_d = cp.asarray(x), cp.asarray(idx)
        tq_d = best(synced(lambda: quantize_vq(xd, pts, **kw)), args.repeat)
        td_d = best(synced(lambda: dequantize_vq(idx_d, st)), args.repeat)
        i_d, s_d = quantize_vq(xd, pts, **kw)
        same_g = (np.array_equal(idx_g, idx) and np.array_equal(st_g.scales, st.scales)
                  and np.array_equal(y_g.view(np.uint32), y_c.view(np.uint32))
                  and np.array_equal(cp.asnumpy(i_d), idx) and np.array_equal(s_d.scales, st.scales)
                  and np.array_equal(cp.asnumpy(dequantize_vq(idx_d, st)).view(np.uint32), y_c.view(np.uint32)))
        print(f"gpu: {gpu_available()[1]}")
        for what, t, ref in (("quantize    gpu        ", tq_g, tq), ("quantize    gpu device ", tq_d, tq),
                             ("dequantize  gpu        ", td_g, td), ("dequantize  gpu device ", td_d, td)):
            print(f"{what}   {gb / t:7.3f} GB/s   {t * 1e3:8.1f} ms   ratio gpu/numba {ref / t:7.1f}x")
        print(f"gpu indices, scales and values equal numba's (host and device arrays): {same_g}")
        same = same and same_g
    else:
        print(f"gpu: {why}")
    target = 0.5
    print(f"target quantize >= {target} GB/s: {'met' if gbs >= target else 'NOT met'}")
    return 0 if same else 1


if __name__ == "__main__":
    run(main)
