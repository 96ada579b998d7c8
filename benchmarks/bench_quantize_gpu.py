"""GPU block-wise quantize / dequantize throughput: a sweep of dtype x block size x bits, as
ratios to a device-to-device copy and to bitsandbytes measured in the same run.

    python benchmarks/bench_quantize_gpu.py [--log2n 28] [--dtypes float32,float16,bfloat16]
                                            [--blocksizes 16,64,256,1024,4096] [--bits 2,4,8]
                                            [--repeat 10] [--no-bnb] [--check 20] [--profile]
                                            [--waves W] [--warmup 2] [--calls 10]

Codes: 2 bits ``max1960-n4``, 4 bits ``nf4``, 8 bits bitsandbytes' dynamic map (256 values).
For each configuration: quantbook's ``quantize_gpu`` and ``dequantize_gpu`` (CUDA events,
median of ``--repeat`` runs after a warm-up, each run ``--calls`` back-to-back calls, the time
divided by them) and, when ``bitsandbytes`` imports with CUDA,
its ``quantize_4bit``/``dequantize_4bit`` (4 bits, nf4) or ``quantize_blockwise``/
``dequantize_blockwise`` (8 bits) on the same data; the copy (``cudaMemcpyAsync``) is timed
once per dtype.

Bandwidth = bytes moved / time: quantize reads ``n * itemsize`` and writes the packed codes and
``4 * n / B`` bytes of absmax; dequantize the reverse; the copy reads and writes
``n * itemsize``.  Printed ratios: ``vs copy`` (bandwidth / copy bandwidth) and ``vs bnb``
(bitsandbytes time / quantbook time).  Each configuration's bytes (codes, absmax, decoded
values) of the first ``2**--check`` values are compared with the numpy reference; the exit
status is 2 if any differ, 1 when no CUDA device is usable.

Back-to-back calls let the host's work for a call (argument checks, allocation, the launch:
printed first, per call, from calls on 2**12 values) overlap the previous call's kernel, as when
a model's tensors are quantized one after another; ``--calls 1`` times a lone call, whose host
work the GPU waits for (docs/benchmarks.md compares the two).  The public ``quantize()`` and
``dequantize()`` are timed too, once per dtype (NF4, B = 64, all ``n`` values): their state
is kept on the host, so the line shows what that costs against the kernels.

Per dtype (not bfloat16, whose raw bits the sums would read as float16) the line ``error
sums`` times :func:`quantbook.bulk.gpu.backend.error_chunks_gpu` of ``x`` against itself
(evaluate-model's sums: two arrays read, the bytes a copy moves, and the runs' sums copied
back, which waits for the kernel).

``--warmup`` seconds of device copies come first: on a fresh H100 the first configurations
measured 5–10 % slower than the same ones a minute later (2026-11-26).

``--profile`` runs one configuration once after a warm-up (``2**26`` values, lone calls, no
checks, no bitsandbytes) and prints the Nsight Compute command that profiles its quantize
and dequantize kernels.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

_CODES = {2: "max1960-n4", 4: "nf4", 8: "dynamic"}


def _median_ms(fn, repeat: int, sync, make_events, calls: int = 1) -> float:
    """Median over ``repeat`` runs of the time of ``calls`` back-to-back calls, per call."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start, stop = make_events()
        start.record()
        for _ in range(calls):
            fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_ms(stop) / calls)
    return float(np.median(times))


#: calls that time the host work of one
HOST_CALLS = 200


def _host_us(fn, sync) -> float:
    """Microseconds of host time a call of ``fn`` on a tiny array (its kernel is negligible)."""
    fn()
    sync()
    calls = HOST_CALLS
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t = time.perf_counter() - t0
    sync()
    return 1e6 * t / calls


def _end_to_end(x, dname: str, repeat: int, sync, make_events, calls: int, G) -> None:
    """One line: the public ``quantize()``/``dequantize()`` (NF4, B = 64, lone calls) against
    the kernels alone (``calls`` back-to-back calls), on the same values.  ``quantize()`` leaves
    the block scales on the GPU (see ``QuantState``); ``read`` is ``quantize()`` and then the
    state's ``absmax`` read on the host (the copy down).  ``dequantize()`` reads the scales on
    the GPU; ``uploaded`` is the same state with a new host absmax, uploaded and checked by
    each call.  bfloat16 goes through torch."""
    import dataclasses

    import quantbook

    from quantbook.codebooks import registry

    xa = x
    if dname == "bfloat16":
        try:
            import torch

            xa = torch.from_dlpack(x).view(torch.bfloat16)
            why = None if xa.is_cuda else "torch does not see the array on a GPU"
        except Exception as exc:   # no torch: the raw bits are not a bfloat16 array
            why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if why:
            print(f"{dname:9s} end to end: not measured ({why})")
            return
    code, st = registry.get("nf4").code_f32, {}
    raw = "bfloat16" if dname == "bfloat16" else None   # the kernels take bfloat16 as its bits

    def q_api():
        st["p"], st["s"] = quantbook.quantize(xa, "nf4", 64, backend="gpu")

    def q_read():
        q_api()
        st["s"].absmax   # noqa: B018 - the host copy is made on this read

    def d_api():
        quantbook.dequantize(st["p"], st["s"], backend="gpu")

    def d_upload():
        if "u" not in st:
            st["u"] = dataclasses.replace(st["s"], absmax=st["s"].absmax.copy())
        quantbook.dequantize(st["p"], st["u"], backend="gpu")

    def q_k():
        st["kp"], st["ka"] = G.quantize_gpu(x, code, 4, 64, input_dtype=raw)

    def d_k():
        G.dequantize_gpu(st["kp"], st["ka"], code, 4, 64, int(x.size), dname)

    t = [_median_ms(f, repeat, sync, make_events, c)
         for f, c in ((q_api, 1), (q_read, 1), (d_api, 1), (d_upload, 1), (q_k, calls), (d_k, calls))]
    print(f"{dname:9s} end to end (NF4, B = 64): quantize() {t[0]:.3f} ms (read {t[1]:.3f} ms), "
          f"dequantize() {t[2]:.3f} ms (uploaded {t[3]:.3f} ms); the kernels {t[4]:.3f} ms, {t[5]:.3f} ms")


def _csv(text: str, conv) -> list:
    try:
        return [conv(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"expected a comma-separated list, got {text!r}") from None


def _side_lines(x, codes, bitss, in_dt, dname, key, t_copy, args, sync, cp_events, G):
    """The lines printed before a dtype's table: host work a call (2**12 values, NF4 or the
    first code, B = 64), sanitize, the error sums and the end-to-end quantize."""
    xs, cs, bs0 = x[:4096], codes.get(4, codes[bitss[0]]), 4 if 4 in codes else bitss[0]
    hs = {}

    def q_small():
        hs["p"], hs["a"] = G.quantize_gpu(xs, cs, bs0, 64, input_dtype=in_dt)

    h_q = _host_us(q_small, sync)
    h_d = _host_us(lambda: G.dequantize_gpu(hs["p"], hs["a"], cs, bs0, 64, xs.size, dname), sync)
    print(f"{dname:9s} host work a call: quantize {h_q:.0f} us, dequantize {h_d:.0f} us")
    # allow_nonfinite's input, made on the device: reads and writes what a copy does
    t_san = _median_ms(lambda: G.sanitize_gpu(x, 64, input_dtype=in_dt), args.repeat, sync, cp_events,
                       args.calls)
    print(f"{dname:9s} sanitize (allow_nonfinite, B = 64) {t_san:.3f} ms, {t_copy / t_san:.2f} of copy")
    if key != "bf16":   # evaluate-model's error sums: two arrays read, as many bytes as the copy
        t_sum = _median_ms(lambda: G.error_chunks_gpu(x, x), args.repeat, sync, cp_events, args.calls)
        print(f"{dname:9s} error sums (evaluate-model) {t_sum:.3f} ms, {t_copy / t_sum:.2f} of copy")
    _end_to_end(x, dname, args.repeat, sync, cp_events, args.calls, G)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log2n", type=int, default=28)
    ap.add_argument("--dtypes", default="float32,float16,bfloat16")
    ap.add_argument("--blocksizes", default="16,64,256,1024,4096")
    ap.add_argument("--bits", default="2,4,8")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--no-bnb", action="store_true", help="skip bitsandbytes")
    ap.add_argument("--check", type=int, default=20, metavar="LOG2M",
                    help="compare the first 2**LOG2M values' bytes with the numpy reference "
                         "(default 20; 0 = skip)")
    ap.add_argument("--waves", type=int, default=None,
                    help="cap quantize grids at this many GPU-fulls of CTAs (0: no cap; "
                         "default: the backend's)")
    ap.add_argument("--warmup", type=float, default=2.0, metavar="SECONDS",
                    help="device copies before the first measurement (default 2; 0 = none)")
    ap.add_argument("--calls", type=int, default=10,
                    help="back-to-back calls a timed run (default 10; 1 = a lone call)")
    ap.add_argument("--profile", action="store_true",
                    help="one configuration, once, 2**26 values: for Nsight Compute")
    args = ap.parse_args(argv)

    dtypes = _csv(args.dtypes, str)
    blocks = _csv(args.blocksizes, int)
    bitss = _csv(args.bits, int)
    bad = [b for b in bitss if b not in _CODES]
    if bad:
        raise ValueError(f"--bits must be among {sorted(_CODES)}, got {bad}")
    if args.profile:
        dtypes, blocks, bitss = dtypes[:1], blocks[:1], bitss[:1]
        # lone calls: a warm-up and one timed call each of quantize and dequantize
        args.log2n, args.repeat, args.check, args.warmup, args.calls = min(args.log2n, 26), 1, 0, 0.0, 1
    if args.calls < 1:
        raise ValueError(f"--calls must be >= 1, got {args.calls}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0 seconds, got {args.warmup}")
    warmup = args.warmup

    from quantbook.bulk import format as F
    from quantbook.bulk import reference as R
    from quantbook.bulk.gpu import backend as G
    from quantbook.bulk.nested import dynamic_map
    from quantbook.codebooks import registry

    if args.waves is not None:
        G.QUANTIZE_WAVES = args.waves
    ok, device = G.gpu_available()
    if not ok:
        print(f"bench_quantize_gpu: {device}; nothing measured (needs a CUDA GPU and CuPy)",
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

    sync = cp.cuda.Device().synchronize

    torch = bnbF = None
    if not args.no_bnb and not args.profile:
        try:
            import bitsandbytes.functional as bnbF
            import torch

            if not torch.cuda.is_available():
                bnbF = None
        except Exception as exc:  # not installed, or no CUDA build
            print(f"bitsandbytes: not measured ({type(exc).__name__}: {exc})".splitlines()[0])
            bnbF = None

    def t_events():
        class _T:
            def __init__(self):
                self.e = torch.cuda.Event(enable_timing=True)

            def record(self):
                self.e.record()

            def synchronize(self):
                self.e.synchronize()

            def elapsed_ms(self, other):
                return self.e.elapsed_time(other.e)

        return _T(), _T()

    codes = {b: (np.asarray(dynamic_map(), np.float32) if _CODES[b] == "dynamic"
                 else registry.get(_CODES[b]).code_f32) for b in bitss}
    n = 1 << args.log2n
    bnb_ver = ""
    if bnbF is not None:
        import bitsandbytes

        bnb_ver = f"   bitsandbytes {bitsandbytes.__version__}"
    print(f"device: {device}   CuPy {getattr(cp, '__version__', '?')}{bnb_ver}   n = 2^{args.log2n}   "
          f"median of {args.repeat} runs of {args.calls} calls   "
          f"quantize grid waves {G.QUANTIZE_WAVES or 'uncapped'}")
    print("codes: " + ", ".join(f"{b} bits {_CODES[b]}" for b in bitss))
    head = (f"{'dtype':9s} {'B':>5s} {'bits':>4s} | {'quant GB/s':>10s} {'vs copy':>7s} "
            f"{'vs bnb':>6s} | {'deq GB/s':>9s} {'vs copy':>7s} {'vs bnb':>6s}")
    print(head)
    print("-" * len(head))
    status = checked = 0
    bnb_errors: set[str] = set()
    worst = {"q": np.inf, "d": np.inf}
    for dname in dtypes:
        key = G._dtype_key(dname)
        x32 = cp.random.standard_normal(n, dtype=cp.float32)
        if key == "f32":
            x, isz, in_dt = x32, 4, None
        elif key == "f16":
            x, isz, in_dt = x32.astype(cp.float16), 2, None
        else:  # bfloat16 as raw bits, rounded to nearest even
            u = x32.view(cp.uint32)
            x = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(cp.uint16)
            isz, in_dt = 2, "bfloat16"
        del x32
        dst = cp.empty_like(x)

        def copy():
            dst.data.copy_from_device_async(x.data, x.nbytes)

        if warmup > 0:   # clocks settle before the first configuration is timed
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < warmup:
                copy()
                sync()
            warmup = 0.0
        t_copy = _median_ms(copy, args.repeat, sync, cp_events, args.calls)
        bw_copy = 2 * n * isz / t_copy / 1e6
        print(f"{dname:9s} d2d copy {bw_copy:9.1f} GB/s ({t_copy:.3f} ms)")
        if not args.profile:   # lines beside the table: one that fails says so, and the table still comes
            try:
                _side_lines(x, codes, bitss, in_dt, dname, key, t_copy, args, sync, cp_events, G)
            except Exception as exc:   # noqa: BLE001 - a benchmark reports and goes on
                print(f"{dname:9s} side lines FAILED: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
        tx = None
        if bnbF is not None:
            tx = torch.from_dlpack(x)
            if key == "bf16":
                tx = tx.view(torch.bfloat16)
        for B in blocks:
            for bits in bitss:
                code = codes[bits]
                nbytes = n * isz + F.packed_length(n, bits) + 4 * (-(-n // B))
                st = {}

                def quant():
                    st["p"], st["a"] = G.quantize_gpu(x, code, bits, B, input_dtype=in_dt)

                def dequant():
                    st["d"] = G.dequantize_gpu(st["p"], st["a"], code, bits, B, n, dname)

                t_q = _median_ms(quant, args.repeat, sync, cp_events, args.calls)
                t_d = _median_ms(dequant, args.repeat, sync, cp_events, args.calls)
                if args.check:
                    m = min(n, 1 << args.check) // B * B
                    xh = cp.asnumpy(x[:m])
                    if key == "bf16":
                        import ml_dtypes

                        xh = xh.view(ml_dtypes.bfloat16)
                    p_ref, a_ref = R.quantize_reference(xh, code, bits, B)
                    d_ref = R.dequantize_reference(p_ref, a_ref, code, bits, B, m, xh.dtype)
                    d = cp.asnumpy(st["d"][:m].view(cp.uint16 if isz == 2 else cp.uint32))
                    same = (np.array_equal(cp.asnumpy(st["p"][:p_ref.size]), p_ref)
                            and np.array_equal(cp.asnumpy(st["a"][:a_ref.size]).view(np.uint32),
                                               a_ref.view(np.uint32))
                            and np.array_equal(d, d_ref.view(d.dtype)))
                    if not same:
                        print(f"{dname} B={B} bits={bits}: bytes DIFFER from the numpy reference")
                        status = 2
                    checked += 1
                r_q = r_d = float("nan")
                if tx is not None and bits in (4, 8):
                    try:
                        bs = {}
                        if bits == 4:
                            def bq():
                                bs["p"], bs["s"] = bnbF.quantize_4bit(tx, blocksize=B, quant_type="nf4")

                            def bd():
                                bnbF.dequantize_4bit(bs["p"], bs["s"])
                        else:
                            bcode = torch.from_numpy(code).cuda()

                            def bq():
                                bs["p"], bs["s"] = bnbF.quantize_blockwise(tx, code=bcode, blocksize=B)

                            def bd():
                                bnbF.dequantize_blockwise(bs["p"], bs["s"])
                        r_q = _median_ms(bq, args.repeat, torch.cuda.synchronize, t_events, args.calls) / t_q
                        r_d = _median_ms(bd, args.repeat, torch.cuda.synchronize, t_events, args.calls) / t_d
                    except Exception as exc:   # e.g. a block size bitsandbytes does not support: said once
                        why = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                        if why not in bnb_errors:
                            bnb_errors.add(why)
                            print(f"bitsandbytes {dname} B={B} bits={bits} failed (its columns show -): {why}")
                bw_q, bw_d = nbytes / t_q / 1e6, nbytes / t_d / 1e6
                worst["q"] = min(worst["q"], bw_q / bw_copy)
                worst["d"] = min(worst["d"], bw_d / bw_copy)

                def fmt(r):
                    return f"{r:6.2f}" if np.isfinite(r) else f"{'-':>6s}"

                print(f"{dname:9s} {B:5d} {bits:4d} | {bw_q:10.1f} {bw_q / bw_copy:7.2f} {fmt(r_q)} | "
                      f"{bw_d:9.1f} {bw_d / bw_copy:7.2f} {fmt(r_d)}")
                del st
        del x, dst, tx
        cp.get_default_memory_pool().free_all_blocks()
    if args.check:
        print(f"bytes of {checked} configurations: "
              + ("IDENTICAL to the numpy reference" if status == 0 else "some DIFFER (above)"))
    print(f"lowest vs copy: quantize {worst['q']:.2f}, dequantize {worst['d']:.2f}")
    print("vs copy = bandwidth / d2d copy bandwidth; vs bnb = bitsandbytes time / quantbook time")
    if args.profile:
        # a warm-up and a timed launch each of quantize and dequantize: four qb_ kernels
        print("profile with: ncu --set full -k regex:qb_ -c 4 python "
              f"benchmarks/bench_quantize_gpu.py --profile --dtypes {dtypes[0]} "
              f"--blocksizes {blocks[0]} --bits {bitss[0]}")
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, KeyError) as exc:   # bad arguments: one line, status 2
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{Path(__file__).name}: error: {msg}".splitlines()[0], file=sys.stderr)
        sys.exit(2)
