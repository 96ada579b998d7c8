"""Host work of a gpu-backend call, on a machine without a GPU.

    python benchmarks/bench_gpu_host_work.py [--calls 2000] [--rounds 5] [--log2n 12]

The tests' stand-in ``cupy`` (tests/gpu_cases.py: arrays in host memory, kernels compiled by
NVRTC) with every launch a no-op, so what is timed is quantbook's Python between the call and
the launch: ``quantize_gpu``/``dequantize_gpu`` (the kernels' launchers) and the public
``quantbook.quantize``/``quantbook.dequantize`` (float16, NF4, B = 64, 2**log2n values), best
of ``rounds`` rounds of ``calls`` calls, in microseconds a call.  CuPy's own work (allocation,
the launch, copies) is not in it: on a GPU machine ``bench_quantize_gpu.py`` prints the whole
host work a call.  Needs what the tests' stand-in needs: the test extra (pytest), NVRTC
(``pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12``) and a C++ compiler.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _cli import check_floors, run  # noqa: E402


class _NoLaunch:
    def launch(self, name, grid, block, *args):
        if name.startswith("qb_quantize_"):   # block maxima a real launch would write: good scales
            args[2][:] = 1.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--log2n", type=int, default=12)
    args = ap.parse_args(argv)
    check_floors(ap, args, calls=1, rounds=1, log2n=0)

    from gpu_cases import fake_cupy, fake_device   # noqa: PLC0415 - the tests' stand-in

    from quantbook.bulk.gpu.compile import NvrtcUnavailable, load_nvrtc

    try:
        load_nvrtc()
    except NvrtcUnavailable as exc:
        print(f"bench_gpu_host_work: needs NVRTC: {exc}", file=sys.stderr)
        return 1
    sys.modules["cupy"] = fake_cupy(_NoLaunch)
    import quantbook as qb
    from quantbook.bulk.gpu import backend as G
    from quantbook.codebooks import registry

    n = 1 << args.log2n
    code = np.asarray(registry.get("nf4").code, np.float32)
    x = fake_device(np.random.default_rng(0).standard_normal(n).astype(np.float16))
    p, a = G.quantize_gpu(x, code, 4, 64)
    pq, sq = qb.quantize(x, "nf4", 64, backend="gpu")
    cases = {"quantize_gpu": lambda: G.quantize_gpu(x, code, 4, 64),
             "dequantize_gpu": lambda: G.dequantize_gpu(p, a, code, 4, 64, n, np.float16),
             "quantbook.quantize": lambda: qb.quantize(x, "nf4", 64, backend="gpu"),
             "quantbook.dequantize": lambda: qb.dequantize(pq, sq, backend="gpu")}
    print(f"host work a call (stand-in cupy, launches are no-ops), float16 NF4 B = 64, n = 2^{args.log2n}, "
          f"best of {args.rounds} x {args.calls} calls")
    for name, fn in cases.items():
        best = float("inf")
        for _ in range(args.rounds):
            t = time.perf_counter()
            for _ in range(args.calls):
                fn()
            best = min(best, (time.perf_counter() - t) / args.calls)
        print(f"  {name:22s} {best * 1e6:7.1f} us")
    return 0


if __name__ == "__main__":
    run(main)
