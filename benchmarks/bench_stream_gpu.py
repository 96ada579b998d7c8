"""The bandwidth ceiling of block-wise quantize's traffic on a GPU, as a fraction of a device copy.

    python benchmarks/bench_stream_gpu.py [--log2mib 9] [--repeat 10]

A kernel that does nothing but move quantize's bytes: each thread reads 64 bytes (32 16-bit or
16 float32 values) and writes 16 (16-bit input, the 4:1 traffic of a 4-bit code) or 8 bytes
(float32, 8:1), the output the XOR of the input words so that no load can be dropped. The loads
are lane-contiguous (each warp instruction reads 512 consecutive bytes) or thread-contiguous (a
thread reads its own 64 bytes, as the quantize kernels do); the grid is a CTA a tile or one or
four GPU-fulls of CTAs that loop over tiles. Each row is timed with CUDA events (median of
``--repeat`` launches after one, ``bench_scaled_gpu._median_ms``) against ``cudaMemcpyAsync``
of the input in the same run; what a quantize kernel loses below this is its own cost. Exit
status 1 when no CUDA device is usable.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

_SOURCE = r"""
template <int OUT_WORDS, bool LANE>
__device__ void stream(const uint4* __restrict__ x, unsigned* __restrict__ out, long long ntiles) {
    for (long long t = blockIdx.x; t < ntiles; t += gridDim.x) {
        const long long base = t * 4LL * blockDim.x;
        uint4 r[4];
#pragma unroll
        for (int q = 0; q < 4; ++q)
            r[q] = LANE ? x[base + (long long)q * blockDim.x + threadIdx.x] : x[base + 4LL * threadIdx.x + q];
        unsigned w[4];
#pragma unroll
        for (int k = 0; k < 4; ++k) w[k] = r[k].x ^ r[k].y ^ r[k].z ^ r[k].w;
        const long long o = (t * blockDim.x + threadIdx.x) * OUT_WORDS;
        if (OUT_WORDS == 4) *reinterpret_cast<uint4*>(out + o) = make_uint4(w[0], w[1], w[2], w[3]);
        else *reinterpret_cast<uint2*>(out + o) = make_uint2(w[0] ^ w[1], w[2] ^ w[3]);
    }
}
extern "C" __global__ void s16_lane(const uint4* x, unsigned* o, long long n) { stream<4, true>(x, o, n); }
extern "C" __global__ void s16_thread(const uint4* x, unsigned* o, long long n) { stream<4, false>(x, o, n); }
extern "C" __global__ void s32_lane(const uint4* x, unsigned* o, long long n) { stream<2, true>(x, o, n); }
extern "C" __global__ void s32_thread(const uint4* x, unsigned* o, long long n) { stream<2, false>(x, o, n); }
"""

_CTA = 256


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log2mib", type=int, default=9, help="input of 2**LOG2MIB MiB (default 9: 512 MiB)")
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args(argv)
    if not 4 <= args.log2mib <= 14:
        raise ValueError(f"--log2mib must be from 4 to 14, got {args.log2mib}")
    if args.repeat < 1:
        raise ValueError(f"--repeat must be >= 1, got {args.repeat}")

    from quantbook.bulk.gpu.backend import gpu_available

    ok, device = gpu_available()
    if not ok:
        print(f"bench_stream_gpu: {device}; nothing measured (needs a CUDA GPU and CuPy)", file=sys.stderr)
        return 1
    import cupy as cp
    from bench_scaled_gpu import _median_ms   # the GPU scripts' CUDA-event timer (this folder)

    mod = cp.RawModule(code=_SOURCE, options=("-std=c++17",))
    sms = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["multiProcessorCount"]
    nbytes = 1 << (20 + args.log2mib)
    x = cp.random.randint(0, 2**31, size=nbytes // 4, dtype=cp.uint32)
    dst = cp.empty_like(x)
    t_copy = _median_ms(lambda: dst.data.copy_from_device_async(x.data, nbytes), args.repeat, cp)
    bw_copy = 2 * nbytes / t_copy / 1e6
    print(f"device: {device}   input {nbytes >> 20} MiB   median of {args.repeat} (CUDA events)")
    print(f"d2d copy {t_copy:8.3f} ms {bw_copy:7.0f} GB/s")
    ntiles = nbytes // (64 * _CTA)
    for kind, words, what in (("s16", 4, "16-bit, 4:1"), ("s32", 2, "float32, 8:1")):
        out = cp.empty(ntiles * _CTA * words, dtype=cp.uint32)
        moved = nbytes + out.nbytes
        for loads in ("lane", "thread"):
            fn = mod.get_function(f"{kind}_{loads}")
            for grid_name, grid in (("a CTA a tile", ntiles), ("1 wave", sms * (2048 // _CTA)),
                                    ("4 waves", 4 * sms * (2048 // _CTA))):
                t = _median_ms(lambda: fn((grid,), (_CTA,), (x, out, np.int64(ntiles))), args.repeat, cp)
                bw = moved / t / 1e6
                print(f"{what:13s} {loads:6s} loads  {grid_name:13s} {t:8.3f} ms {bw:7.0f} GB/s "
                      f"{bw / bw_copy:5.2f} of copy")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as exc:   # bad arguments: one line, status 2
        print(f"bench_stream_gpu.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
