"""GPU throughput of the scaled layouts (NVFP4, MXFP4) vs a device-to-device copy (same run).

    python benchmarks/bench_scaled_gpu.py [--log2n 28] [--repeat 20] [--codebook e2m1]
                                          [--check 22]

For 2**log2n values (default 2**28) of float32, float16 and bfloat16 input, NVFP4 (``e4m3``,
block 16) and MXFP4 (``e8m0:floor``, block 32): times the gpu kernels of the three scaled
hooks (quantbook.bulk.gpu.scaled) with CUDA events, median of ``--repeat`` runs after a
warm-up, and a device-to-device copy of the input (``cudaMemcpyAsync``).

Rows:
* ``amax``: the block-maxima kernel (the maxima stay on the device);
* ``scales``: the rule's stored scales and factors looked up in its step table on the
  device (quantbook.scales.steps; one kernel, ``qbs_steps``; the table is built once,
  before timing); ``host rule`` the same from the rule in numpy, the maxima copied to the
  host and the factors back (how the backend ran before), for the ratio;
* ``encode``: the encode kernel with the factors already on the device (reads x and the
  factors, writes n/2 bytes); ``encode+H2D`` the hook as the backend calls it, factors
  copied from the host;
* ``decode``: the decode kernel with float32 scales on the device (reads n/2 bytes and the
  scales, writes n values of the input's type); ``decode lut`` the same kernel reading the
  stored scales' bits (1 or 2 bytes a block) and looking them up in the rule's decode table;
* ``errors``: one scale-search candidate's block errors (float64 sums, a thread a block),
  factors and scales on the device, the sums left there: a search rule such as
  ``search:4over6`` runs it once per candidate, then ``encode`` once;
* ``quantize()``: ``quantbook.quantize(x, codebook, B, scale=rule, backend="gpu")`` end to
  end, the stored scales copied to the host into the state;
* ``dequantize()``: ``quantbook.dequantize`` of that result end to end (the state's fields
  checked on the host, the stored scales the GPU kept when it quantized them read as they
  are, then ``decode lut``; the rule's decode table is copied once and kept);
  ``dequantize() up`` the same state with a new host copy of its stored scales, which each
  call uploads and checks on the device;
* ``ggml search``: ggml's IQ4_NL quantizer (``search:ggml``, iq4_nl at qmax 127, block 32),
  the scale search and the codes on the device, the scales copied to the host (the
  float16 rounding runs in numpy).  It is arithmetic-bound (17 passes over each block), so
  ``vs copy`` is expected well below 1.

GB/s is bytes moved / time; ``vs copy`` is that over the copy's GB/s (reads + writes of
n * itemsize).  Also checks the first 2**22 values (``--check``) against the numpy
reference: block maxima, encode bytes, decoded bits, the device's stored scales and factors
(the step-table lookup) against the rule, and ``quantize()``/``dequantize()`` end to end
against the numpy backend; exit status 2 if anything differs.  Without a usable CUDA device
it says so and exits 1 (nothing measured), as bench_quantize_gpu.py does.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

FORMATS = (("NVFP4", "e4m3", 16), ("MXFP4", "e8m0:floor", 32))


def _median_ms(fn, repeat: int, cp) -> float:
    fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(repeat):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return float(np.median(times))


def _bf16_device(x32, cp):
    """``(bfloat16 device array, its uint16 bits as CuPy)`` of the float32 device array
    ``x32`` (nearest even): a CuPy bfloat16 view when CuPy knows ml_dtypes' bfloat16, else a
    torch tensor; ``(None, None)`` if neither."""
    u = x32.view(cp.uint32)
    bits = ((u + cp.uint32(0x7FFF) + ((u >> 16) & cp.uint32(1))) >> 16).astype(cp.uint16)
    try:
        import ml_dtypes

        return bits.view(ml_dtypes.bfloat16), bits
    except Exception:
        pass
    try:
        import torch

        return torch.from_dlpack(bits.view(cp.int16)).view(torch.bfloat16), bits
    except Exception:
        return None, None


def _host_bits(a, cp):
    """Host copy of a device array as raw bytes (any dtype, torch included)."""
    if hasattr(a, "data_ptr") and not hasattr(a, "get"):       # torch
        import torch

        return a.view(torch.int16).cpu().numpy().view(np.uint8)
    if a.dtype.itemsize == 2 and a.dtype.kind not in "fiu":
        a = a.view(cp.uint16)
    return cp.asnumpy(a).view(np.uint8)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log2n", type=int, default=28)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--codebook", default="e2m1")
    ap.add_argument("--check", type=int, default=22, metavar="LOG2M",
                    help="compare the first 2**LOG2M values with the numpy reference (0 = skip)")
    args = ap.parse_args(argv)

    import quantbook as qb
    from quantbook.bulk import format as F
    from quantbook.bulk import layouts as L
    from quantbook.bulk import reference as R
    from quantbook.bulk.api import resolve_codebook
    from quantbook.bulk.backend import BACKENDS
    from quantbook.bulk.gpu import backend as G
    from quantbook.bulk.gpu import scaled as GS
    from quantbook.scales import get_rule
    from quantbook.scales.steps import decode_table

    ok, why = G.gpu_available()
    if not ok:
        print(f"bench_scaled_gpu: {why}; nothing measured (needs a CUDA GPU and CuPy)", file=sys.stderr)
        return 1
    import cupy as cp

    n = 1 << args.log2n
    table = L.scaled_table(resolve_codebook(args.codebook).code, 6.0)
    t_ggml = L.scaled_table(resolve_codebook("iq4_nl").code, 127.0)
    print(f"device: {why}   n = 2^{args.log2n} = {n}   codebook {args.codebook}   "
          f"median of {args.repeat} (CUDA events)")
    header = f"{'format':6s} {'dtype':9s} {'op':12s} {'ms':>9s} {'GB/s':>9s} {'vs copy':>8s}"
    print(header)
    print("-" * len(header))
    bad = False
    x32 = cp.random.standard_normal(n, dtype=cp.float32)
    for dname in ("float32", "float16", "bfloat16"):
        if dname == "float32":
            x = raw = x32
        elif dname == "float16":
            x = raw = x32.astype(cp.float16)
        else:
            x, raw = _bf16_device(x32, cp)
            if x is None:
                print("bfloat16: not measured (CuPy without bfloat16 and no torch)")
                continue
        isz = 4 if dname == "float32" else 2
        dst = cp.empty(n * isz, dtype=cp.uint8)
        t_copy = _median_ms(lambda: dst.data.copy_from_device_async(raw.data, n * isz), args.repeat, cp)
        bw_copy = 2 * n * isz / t_copy / 1e6
        print(f"{'':6s} {dname:9s} {'d2d copy':12s} {t_copy:9.3f} {bw_copy:9.1f} {1.0:8.2f}")
        for fmt, rule_name, B in FORMATS:
            rule = get_rule(rule_name)
            nb = F.n_blocks(n, B)
            amax = GS.scaled_amax_gpu(x, B)
            amax_h = cp.asnumpy(amax)
            ts = rule.tensor_scale(float(amax.max()), 6.0)
            stored = rule.encode(amax_h, 6.0, ts)
            f_host, divide = rule.divisor(stored, ts)
            f_mul, div = GS.exact_multiplier(f_host, divide)
            f_dev = cp.asarray(f_mul)
            scale = rule.decode(stored, ts)
            s_dev = cp.asarray(np.ascontiguousarray(scale, np.float32))
            st = {}

            def enc():
                st["p"] = GS.scaled_encode_gpu(x, f_dev, div, table, B)

            def host_rule():
                st_h = rule.encode(cp.asnumpy(amax), 6.0, ts)
                fh, _ = GS.exact_multiplier(*rule.divisor(st_h, ts))
                return cp.asarray(fh)

            rows = [
                ("amax", lambda: GS.scaled_amax_gpu(x, B), n * isz + 4 * nb),
                ("scales", lambda: GS.scaled_scales_gpu(amax, rule, 6.0, ts), 9 * nb),
                ("host rule", host_rule, 9 * nb),
                ("quantize()", lambda: qb.quantize(x, args.codebook, B, scale=rule_name, backend="gpu"),
                 n * isz + n // 2 + nb),
                ("encode", enc, n * isz + 4 * nb + n // 2),
                ("encode+H2D", lambda: GS.scaled_encode_gpu(x, f_host, divide, table, B),
                 n * isz + 4 * nb + n // 2),
                ("errors", lambda: GS.scaled_errors_gpu(x, f_dev, div, s_dev, table, B, "l2"),
                 n * isz + 16 * nb),
            ]
            for label, fn, nbytes in rows:
                # the host rule takes about 0.2 s a call at 2**26 (docs/benchmarks.md): 3 repeats
                # keep the stage inside gpu_check.sh's limit
                t = _median_ms(fn, min(args.repeat, 3) if label == "host rule" else args.repeat, cp)
                bw = nbytes / t / 1e6
                print(f"{fmt:6s} {dname:9s} {label:12s} {t:9.3f} {bw:9.1f} {bw / bw_copy:8.2f}")
            enc()
            out_dtype = dname
            t = _median_ms(lambda: GS.scaled_decode_gpu(st["p"], s_dev, table, B, n, out_dtype),
                           args.repeat, cp)
            bw = (n // 2 + 4 * nb + n * isz) / t / 1e6
            print(f"{fmt:6s} {dname:9s} {'decode':12s} {t:9.3f} {bw:9.1f} {bw / bw_copy:8.2f}")
            # the stored scales' bits looked up in the rule's decode table by the kernel
            lut = decode_table(rule, ts)
            idx_dev = cp.asarray(stored.view(f"u{stored.dtype.itemsize}"))
            t = _median_ms(lambda: GS.scaled_decode_gpu(st["p"], idx_dev, table, B, n, out_dtype, lut=lut),
                           args.repeat, cp)
            bw = (n // 2 + stored.dtype.itemsize * nb + n * isz) / t / 1e6
            print(f"{fmt:6s} {dname:9s} {'decode lut':12s} {t:9.3f} {bw:9.1f} {bw / bw_copy:8.2f}")
            pq, sq = qb.quantize(x, args.codebook, B, scale=rule_name, backend="gpu")
            t = _median_ms(lambda: qb.dequantize(pq, sq, backend="gpu"), args.repeat, cp)
            bw = (n // 2 + nb + n * isz) / t / 1e6
            print(f"{fmt:6s} {dname:9s} {'dequantize()':12s} {t:9.3f} {bw:9.1f} {bw / bw_copy:8.2f}")
            su = dataclasses.replace(sq, absmax=sq.absmax.copy())   # not the kept copy: uploaded
            t = _median_ms(lambda: qb.dequantize(pq, su, backend="gpu"), args.repeat, cp)
            bw = (n // 2 + nb + n * isz) / t / 1e6
            print(f"{fmt:6s} {dname:9s} {'dequantize() up':12s} {t:9.3f} {bw:9.1f} {bw / bw_copy:8.2f}")
            del pq, sq, su
            if args.check:
                m = min(n, 1 << args.check) // B * B
                xh = cp.asnumpy(raw[:m])
                if dname == "bfloat16":
                    import ml_dtypes

                    xh = xh.view(ml_dtypes.bfloat16)
                same_a = np.array_equal(amax_h[: m // B].view(np.uint32),
                                        R.scaled_amax_reference(xh, B).view(np.uint32))
                p_ref = R.scaled_encode_reference(xh, f_host[: m // B], divide, table, B)
                same_p = np.array_equal(cp.asnumpy(st["p"][: m // 2]), p_ref)
                d = GS.scaled_decode_gpu(st["p"][: m // 2], s_dev, table, B, m, out_dtype)
                d_ref = R.scaled_decode_reference(p_ref, scale[: m // B], table, B, m, xh.dtype)
                same_d = np.array_equal(_host_bits(d, cp), d_ref.view(np.uint8))
                d = GS.scaled_decode_gpu(st["p"][: m // 2], idx_dev[: m // B], table, B, m, out_dtype, lut=lut)
                same_d = same_d and np.array_equal(_host_bits(d, cp), d_ref.view(np.uint8))
                # the device's step-table lookup against the rule (stored scales and factors)
                looked = GS.scaled_scales_gpu(amax, rule, 6.0, ts)
                same_s = (looked is not None and np.array_equal(cp.asnumpy(looked[0]), stored)
                          and np.array_equal(cp.asnumpy(looked[1]).view(np.uint32),
                                             np.asarray(f_mul, np.float32).view(np.uint32))
                          and looked[2] == div)
                # quantize() / dequantize() end to end against the numpy backend on the same values
                pq, sq = qb.quantize(x[:m], args.codebook, B, scale=rule_name, backend="gpu")
                pr, sr = qb.quantize(xh, args.codebook, B, scale=rule_name, backend="numpy")
                same_q = (np.array_equal(cp.asnumpy(pq), pr) and np.array_equal(sq.absmax, sr.absmax)
                          and sq.tensor_scale == sr.tensor_scale
                          and np.array_equal(_host_bits(qb.dequantize(pq, sq, backend="gpu"), cp),
                                             qb.dequantize(pr, sr, backend="numpy").view(np.uint8)))
                del pq, sq
                same = same_a and same_p and same_d and same_s and same_q
                print(f"{fmt:6s} {dname:9s} first {m} values: amax/encode/decode/scales/quantize() "
                      f"{'IDENTICAL to' if same else 'DIFFER from'} the numpy reference "
                      f"({same_a}/{same_p}/{same_d}/{same_s}/{same_q})")
                bad = bad or not same
            del st
        t = _median_ms(lambda: GS.scaled_ggml_gpu(x, t_ggml, 32, 7), args.repeat, cp)
        bw = (n * isz + n // 2 + 4 * F.n_blocks(n, 32)) / t / 1e6
        print(f"{'IQ4NL':6s} {dname:9s} {'ggml search':12s} {t:9.3f} {bw:9.1f} {bw / bw_copy:8.2f}")
        if args.check:
            m = min(n, 1 << args.check) // 32 * 32
            xh = cp.asnumpy(raw[:m])
            if dname == "bfloat16":
                import ml_dtypes

                xh = xh.view(ml_dtypes.bfloat16)
            d, p = GS.scaled_ggml_gpu(x[:m], t_ggml, 32, 7)
            rd, rp = BACKENDS["cpu"].scaled_ggml(xh.astype(np.float32), t_ggml, 32, 7)
            same = np.array_equal(d.view(np.uint32), rd.view(np.uint32)) and np.array_equal(cp.asnumpy(p), rp)
            print(f"{'IQ4NL':6s} {dname:9s} first {m} values: ggml search "
                  f"{'IDENTICAL to' if same else 'DIFFER from'} the host search")
            bad = bad or not same
        del x, raw, dst
        cp.get_default_memory_pool().free_all_blocks()
    print("vs copy = bandwidth / d2d copy bandwidth of the same dtype (reads + writes); "
          "host rule and encode+H2D include host transfers of per-block values; "
          "scales and host rule count 9 bytes a block (maxima in, factor and stored scale out)")
    return 2 if bad else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, KeyError) as exc:   # bad --codebook: one line, status 2
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"{Path(__file__).name}: error: {msg}".splitlines()[0], file=sys.stderr)
        sys.exit(2)
