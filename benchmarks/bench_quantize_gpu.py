"""GPU block-wise quantize / dequantize throughput vs a device-to-device copy (same run).

    python benchmarks/bench_quantize_gpu.py [--log2n 28] [--blocksize 64] [--codebook nf4]
                                            [--repeat 20] [--no-bnb]

For float16 and float32 input of 2**log2n values (default 2**28), NF4, block size 64:
times quantbook's ``quantize_gpu`` and ``dequantize_gpu`` (CUDA events, median of
``--repeat`` runs after a warm-up), a device-to-device copy of the input
(``cudaMemcpyAsync``) and, if ``bitsandbytes`` and torch with CUDA import, bitsandbytes'
``quantize_4bit`` / ``dequantize_4bit`` on the same data and GPU.

Bandwidth is bytes moved / time: quantize reads n*itemsize and writes n/2 + 4*n/B bytes;
dequantize the reverse; the copy reads and writes n*itemsize.  Ratios printed:
``quantize / copy`` and ``quantbook / bitsandbytes`` (targets: >= 0.8 and >= 1).
Also checks the bytes of the first 2**22 values against the numpy reference (``--check``;
exit status 2 if they differ).  Exits with status 1 and a one-line message when no CUDA
device is usable.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def _median_ms(fn, repeat: int, sync, event_pair) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start, stop = event_pair()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_ms(stop))
    return float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log2n", type=int, default=28)
    ap.add_argument("--blocksize", type=int, default=64)
    ap.add_argument("--codebook", default="nf4")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--no-bnb", action="store_true", help="skip bitsandbytes")
    ap.add_argument("--check", type=int, default=22, metavar="LOG2M",
                    help="compare the first 2**LOG2M values' bytes with the numpy reference "
                         "(default 22; 0 = skip)")
    args = ap.parse_args(argv)

    from quantbook.codebooks import registry
    from quantbook.bulk import format as F
    from quantbook.bulk.gpu import backend as G

    ok, why = G.gpu_available()
    if not ok:
        print(f"bench_quantize_gpu: {why}; nothing measured (needs a CUDA GPU and CuPy)",
              file=sys.stderr)
        return 1
    import cupy as cp

    class _Ev:
        def __init__(self):
            self.e = cp.cuda.Event()

        def record(self):
            self.e.record()

        def synchronize(self):
            self.e.synchronize()

        def elapsed_ms(self, other):
            return cp.cuda.get_elapsed_time(self.e, other.e)

    def cp_events():
        return _Ev(), _Ev()

    n = 1 << args.log2n
    B = args.blocksize
    cb = registry.get(args.codebook)
    code = np.asarray(cb.code, np.float32)
    bits = cb.bits
    print(f"device: {why}   n = 2^{args.log2n} = {n}   blocksize {B}   codebook {cb.name}   "
          f"median of {args.repeat}")

    bnb = torch = None
    if not args.no_bnb:
        try:
            import bitsandbytes as bnb  # noqa: F401
            import torch

            if not torch.cuda.is_available():
                bnb = None
        except Exception as exc:  # not installed, or no CUDA build
            print(f"bitsandbytes: not measured ({type(exc).__name__}: {exc})".splitlines()[0])
            bnb = None

    header = f"{'dtype':8s} {'op':22s} {'ms':>9s} {'GB/s':>9s} {'vs copy':>8s} {'vs bnb':>8s}"
    print(header)
    print("-" * len(header))
    for dtype in (np.float16, np.float32):
        isz = np.dtype(dtype).itemsize
        x = cp.random.standard_normal(n, dtype=cp.float32).astype(dtype)
        dst = cp.empty_like(x)
        nb = -(-n // B)
        q_bytes = n * isz + F.packed_length(n, bits) + 4 * nb
        c_bytes = 2 * n * isz

        def copy():   # cudaMemcpyAsync device-to-device on the current stream
            dst.data.copy_from_device_async(x.data, x.nbytes)

        t_copy = _median_ms(copy, args.repeat, cp.cuda.Device().synchronize, cp_events)
        bw_copy = c_bytes / t_copy / 1e6
        state = {}

        def quant():
            state["p"], state["a"] = G.quantize_gpu(x, code, bits, B)

        t_q = _median_ms(quant, args.repeat, cp.cuda.Device().synchronize, cp_events)

        def dequant():
            G.dequantize_gpu(state["p"], state["a"], code, bits, B, n, dtype)

        t_d = _median_ms(dequant, args.repeat, cp.cuda.Device().synchronize, cp_events)
        if args.check:
            from quantbook.bulk import reference as R

            m = min(n, 1 << args.check) // B * B
            xh = cp.asnumpy(x[:m])
            p_ref, a_ref = R.quantize_reference(xh, code, bits, B)
            same = (np.array_equal(cp.asnumpy(state["p"][:p_ref.size]), p_ref)
                    and np.array_equal(cp.asnumpy(state["a"][:a_ref.size]).view(np.uint32),
                                       a_ref.view(np.uint32)))
            print(f"{np.dtype(dtype).name}: bytes of the first {m} values "
                  f"{'IDENTICAL to' if same else 'DIFFER from'} the numpy reference")
            if not same:
                return 2
        bw_q, bw_d = q_bytes / t_q / 1e6, q_bytes / t_d / 1e6

        r_bnb_q = r_bnb_d = float("nan")
        rows_bnb = []
        if bnb is not None and bits == 4 and cb.name in ("nf4", "fp4"):
            import bitsandbytes.functional as F

            tx = torch.from_dlpack(x)
            st = {}

            def bq():
                st["p"], st["s"] = F.quantize_4bit(tx, blocksize=B, quant_type=cb.name)

            def bd():
                F.dequantize_4bit(st["p"], st["s"])

            def tevents():
                a = torch.cuda.Event(enable_timing=True)
                b = torch.cuda.Event(enable_timing=True)

                class _T:
                    def __init__(self, e):
                        self.e = e

                    def record(self):
                        self.e.record()

                    def synchronize(self):
                        self.e.synchronize()

                    def elapsed_ms(self, other):
                        return self.e.elapsed_time(other.e)

                return _T(a), _T(b)

            t_bq = _median_ms(bq, args.repeat, torch.cuda.synchronize, tevents)
            t_bd = _median_ms(bd, args.repeat, torch.cuda.synchronize, tevents)
            r_bnb_q, r_bnb_d = t_bq / t_q, t_bd / t_d
            rows_bnb = [("bnb quantize_4bit", t_bq, q_bytes / t_bq / 1e6),
                        ("bnb dequantize_4bit", t_bd, q_bytes / t_bd / 1e6)]

        name = np.dtype(dtype).name
        print(f"{name:8s} {'d2d copy':22s} {t_copy:9.3f} {bw_copy:9.1f} {1.0:8.2f} {'':>8s}")
        def fmt(r):
            return f"{r:8.2f}" if np.isfinite(r) else f"{'-':>8s}"

        print(f"{name:8s} {'quantbook quantize':22s} {t_q:9.3f} {bw_q:9.1f} {bw_q / bw_copy:8.2f} "
              f"{fmt(r_bnb_q)}")
        print(f"{name:8s} {'quantbook dequantize':22s} {t_d:9.3f} {bw_d:9.1f} {bw_d / bw_copy:8.2f} "
              f"{fmt(r_bnb_d)}")
        for label, t, bw in rows_bnb:
            print(f"{name:8s} {label:22s} {t:9.3f} {bw:9.1f} {bw / bw_copy:8.2f} {'':>8s}")
        del x, dst, state
        cp.get_default_memory_pool().free_all_blocks()
    print("vs copy = bandwidth / copy bandwidth (target >= 0.80); "
          "vs bnb = bitsandbytes time / quantbook time (target >= 1)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, KeyError) as exc:   # bad --block-size / --codebook: one line, status 2
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{Path(__file__).name}: error: {msg}".splitlines()[0], file=sys.stderr)
        sys.exit(2)
