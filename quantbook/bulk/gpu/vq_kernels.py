"""CUDA C source of the vector-quantization kernels (the layout: quantbook/bulk/vq_state.py),
their names and parameter lists.

Each kernel repeats, operation for operation, the numpy reference of quantbook/bulk/vq.py, as
the numba kernels do, so the results are equal bit for bit: the Hadamard butterflies in
float64, the group statistics summed in index order, ``float32(v / s)``, squared distances
``(y0 - c0)² + (y1 - c1)² + …`` in float64 summed left to right.  Every float operation is an
explicit round-to-nearest intrinsic and the module is compiled with the NVRTC options of the
other kernels (no contraction into fused multiply-adds).  Header-free; the common part of
:mod:`.kernels` (its typedefs and exact conversions) comes first.

Kernels (``extern "C"``):

* ``qbv_fwht_tile`` — the rows cut in tiles of ``T`` consecutive entries (``T`` a power of
  two dividing the row's ``n``, at most :data:`TILE`); a CTA pass takes :data:`TILE` entries
  (whole tiles), in float64 (times the signs when rotating), and runs the butterflies of spans
  ``1 … T/2`` in shared memory, then writes either the result (``T == n``: scaled by ``inv``,
  and by the signs when un-rotating, rounded to float32; with ``wide``, in float64 into
  ``buf``) or the float64 partial transform for the next kernel.  A float32 NaN result (only
  ``inf - inf``, of decoded infinities) is written with the bits the host's arithmetic gives
  it (``nan_bits``), not the GPU's own, here and below;
* ``qbv_butterfly`` — one butterfly span ``h >= T`` of every row in global memory, a thread
  a pair; the last span writes the result as above (float32, or float64 with ``wide``).
  The spans run in the same order as the reference's, so every output is the same float64
  expression;
* ``qbv_group_stat`` — a thread a group: ``sqrt(Σ v² / group)`` (float64, in index order) or
  ``max |v|`` (NaN when the group holds one), and the scale as stored: that float64 rounded
  to nearest even to float16 (its bits; with ``half``) or float32, and as the float32 the
  encoder divides by (so that only the stored scales cross to the host); ``vec``: 16-byte
  loads (``group`` a multiple of 4 and ``v`` 16-byte aligned);
* ``qbv_encode`` — a thread a vector: ``y = float32(v / s)`` (0 where ``s == 0``), then the
  nearest point by the exact sorted scan of :mod:`quantbook.bulk.cpu.vq_kernels` (the points
  ordered by their first coordinate, walked outward from ``y0`` until ``(y0 - c0)²`` alone
  exceeds the best distance; ties to the lower index);
* ``qbv_encode_grid2`` — the same indices for P = 2, most vectors by one lookup in the cell
  grid of :func:`quantbook.bulk.vq._grid_tables` and at most three distances (the numba
  kernel's search), the rest by the candidate lists and the scan;
* ``qbv_decode`` — a thread an output value: ``float32(points[idx][q] · s[group])``;
* ``qbv_cast`` — float32 to float16 or bfloat16, rounded to nearest even with the exact
  conversions of :mod:`.kernels` (for results that stay on the device); a NaN with the bits
  numpy (float16) and ml_dtypes (bfloat16) give it;
* ``qbv_cast64`` — float64 to float16 or bfloat16 as the host's casts round it: numpy's
  float16 once, to nearest even; ml_dtypes' bfloat16 to float32 first, then to bfloat16
  (twice, each to nearest even); a NaN with the bits each gives it.
"""

from __future__ import annotations

from . import kernels as K

__all__ = ["TILE", "CTA", "PARAMS", "all_kernel_names", "source"]

#: entries a CTA pass of ``qbv_fwht_tile`` holds in shared memory (float64: 16 KB)
TILE = 2048
#: threads a CTA
CTA = 256
#: coordinates of ``y`` an encode thread keeps in registers (the rest are recomputed)
_KEEP = 8

#: each kernel's parameter list, the one statement of its signature (the emulator in the
#: tests builds its launchers from it)
PARAMS = {
    "qbv_fwht_tile": "const float* __restrict__ x, const double* __restrict__ sg, double* __restrict__ buf, "
                     "float* __restrict__ out, qbv_i64 total, qbv_i64 n, int T, double inv, int inverse, "
                     "unsigned nan_bits, int wide",
    "qbv_butterfly": "double* __restrict__ buf, const double* __restrict__ sg, float* __restrict__ out, "
                     "qbv_i64 total, qbv_i64 n, qbv_i64 h, double inv, int inverse, int last, unsigned nan_bits, "
                     "int wide",
    "qbv_group_stat": "const float* __restrict__ v, double* __restrict__ out, float* __restrict__ scale, "
                      "qb_u16* __restrict__ half_bits, qbv_i64 groups, qbv_i64 group, int absmax, int half, int vec",
    "qbv_encode": "const float* __restrict__ v, const float* __restrict__ s, qbv_i64 vectors, qbv_i64 group, "
                  "int p, const double* __restrict__ c0s, const int* __restrict__ order, "
                  "const double* __restrict__ pts, int npts, int* __restrict__ out",
    "qbv_encode_grid2": "const float* __restrict__ v, const float* __restrict__ s, qbv_i64 vectors, qbv_i64 group, "
                        "int zero, double lo0, double lo1, double inv0, double inv1, int cells, "
                        "const int* __restrict__ lut, const int* __restrict__ multi, const double* __restrict__ c0s, "
                        "const int* __restrict__ order, const double* __restrict__ pts, int npts, "
                        "int* __restrict__ out",
    "qbv_decode": "const int* __restrict__ idx, const float* __restrict__ s, const float* __restrict__ pts, "
                  "float* __restrict__ out, qbv_i64 n, qbv_i64 group, int p",
    "qbv_cast": "const float* __restrict__ y, qb_u16* __restrict__ out, qbv_i64 n, int bf16",
    "qbv_cast64": "const double* __restrict__ y, qb_u16* __restrict__ out, qbv_i64 n, int bf16",
}


def all_kernel_names() -> list[str]:
    """Every vector-codebook kernel (one per :data:`PARAMS` entry)."""
    return list(PARAMS)


_COMMON = r"""
typedef long long qbv_i64;
#define QBV_TILE %(tile)d
#define QBV_KEEP %(keep)d

/* a transformed float64 entry as the reference rounds it: times inv, times the sign when
   un-rotating (exact), to float32; a NaN (inf - inf of decoded infinities) as the host's
   arithmetic makes it, whose bits differ from the GPU's */
__device__ __forceinline__ double qbv_finish64(double a, double inv, double sign, int inverse) {
    const double r = __dmul_rn(a, inv);
    return inverse ? __dmul_rn(r, sign) : r;
}
__device__ __forceinline__ float qbv_finish(double a, double inv, double sign, int inverse, unsigned nan_bits) {
    const double r = qbv_finish64(a, inv, sign, inverse);
    return r != r ? __uint_as_float(nan_bits) : (float)r;
}

/* a float64 rounded to nearest even to float16's bits, as numpy's cast (one rounding: going
   through float32 would round twice) */
__device__ __forceinline__ qb_u16 qbv_f64_to_f16(double d) {
    const unsigned long long u = (unsigned long long)__double_as_longlong(d);
    const unsigned sign = (unsigned)(u >> 48) & 0x8000u;
    const unsigned long long a = u & 0x7fffffffffffffffULL;
    if (a >= 0x7ff0000000000000ULL) return (qb_u16)(sign | (a > 0x7ff0000000000000ULL ? 0x7e00u : 0x7c00u));
    const int e = (int)(a >> 52) - 1023;
    if (e > 15) return (qb_u16)(sign | 0x7c00u);
    if (e < -25) return (qb_u16)sign;          /* below half the least subnormal, 2^-25 */
    unsigned long long m = a & 0xfffffffffffffULL, h;
    int shift;
    if (e >= -14) {                            /* normal: keep 10 of the 52 fraction bits */
        shift = 42;
        h = ((unsigned long long)(e + 15) << 10) | (m >> 42);
    } else {                                   /* subnormal: units of 2^-24 */
        m |= 1ULL << 52;
        shift = 28 - e;
        h = m >> shift;
    }
    const unsigned long long rem = m & ((1ULL << shift) - 1), halfway = 1ULL << (shift - 1);
    if (rem > halfway || (rem == halfway && (h & 1ULL))) ++h;   /* a carry may reach inf: right */
    return (qb_u16)(sign | (unsigned)h);
}

/* y[q] of a vector: float32(v / s), 0 where the group's scale is 0 */
__device__ __forceinline__ double qbv_y(const float* __restrict__ v, qbv_i64 b, int q, float sc) {
    return sc == 0.0f ? 0.0 : (double)__fdiv_rn(v[b + q], sc);
}

/* one value into a group's running statistic: acc + t^2 in float64, or the greatest |t|
   (a NaN, once met, stays) */
__device__ __forceinline__ double qbv_sq_step(double acc, float t) {
    const double d = (double)t;
    return __dadd_rn(acc, __dmul_rn(d, d));
}
__device__ __forceinline__ float qbv_absmax_step(float m, float t) {
    const float a = fabsf(t);
    return (m != m || (a <= m && a == a)) ? m : a;
}

/* squared distance of (y0, y1) to point i of a P = 2 table, summed as the scan sums it */
__device__ __forceinline__ double qbv_d2(double y0, double y1, const double* __restrict__ pts, int i) {
    const double a = __dsub_rn(y0, pts[2 * (qbv_i64)i]), c = __dsub_rn(y1, pts[2 * (qbv_i64)i + 1]);
    return __dadd_rn(__dmul_rn(a, a), __dmul_rn(c, c));
}

/* the nearest point to y by the exact sorted scan (the module's docstring states it); y
   holds the first QBV_KEEP coordinates, the rest are recomputed from v */
__device__ __forceinline__ int qbv_scan(const double* y, const float* __restrict__ v, qbv_i64 b, int p,
                                        float sc, const double* __restrict__ c0s,
                                        const int* __restrict__ order, const double* __restrict__ pts,
                                        int npts) {
    const double y0 = y[0];
    int lo = 0, hi = npts;                  /* the first sorted c0 >= y0 */
    while (lo < hi) {
        const int mid = (lo + hi) / 2;
        if (c0s[mid] < y0) lo = mid + 1;
        else hi = mid;
    }
    double best = __longlong_as_double(0x7ff0000000000000LL);   /* +inf */
    int bi = npts;
    for (int dir = 1; dir >= -1; dir -= 2) {
        for (int k = dir == 1 ? lo : lo - 1; 0 <= k && k < npts; k += dir) {
            const double dx = __dsub_rn(y0, c0s[k]);
            double d = __dmul_rn(dx, dx);
            if (d > best) break;
            const int i = order[k];
            for (int q = 1; q < p; ++q) {
                const double yq = q < QBV_KEEP ? y[q] : qbv_y(v, b, q, sc);
                const double e = __dsub_rn(yq, pts[(qbv_i64)i * p + q]);
                d = __dadd_rn(d, __dmul_rn(e, e));
            }
            if (d < best || (d == best && i < bi)) {
                best = d;
                bi = i;
            }
        }
    }
    return bi;
}
"""

_BODIES = {
    "qbv_fwht_tile": r"""
    /* a pass takes QBV_TILE consecutive entries (whole tiles of T: a span below T pairs
       entries of one tile only, so the stages run on all of them at once) */
    __shared__ double s[QBV_TILE];
    const qbv_i64 chunks = (total + QBV_TILE - 1) / QBV_TILE;
    for (qbv_i64 c = blockIdx.x; c < chunks; c += gridDim.x) {     /* the same passes for a CTA */
        const qbv_i64 e0 = c * QBV_TILE;
        const int len = (int)(total - e0 < QBV_TILE ? total - e0 : QBV_TILE);
        for (int j = threadIdx.x; j < len; j += blockDim.x) {
            double a = (double)x[e0 + j];
            if (!inverse) a = __dmul_rn(a, sg[(e0 + j) %% n]);
            s[j] = a;
        }
        __syncthreads();
        for (int h = 1; h < T; h *= 2) {
            for (int k = threadIdx.x; k < len / 2; k += blockDim.x) {
                const int i = (k / h) * 2 * h + (k %% h);
                const double a = s[i], b = s[i + h];
                s[i] = __dadd_rn(a, b);
                s[i + h] = __dsub_rn(a, b);
            }
            __syncthreads();
        }
        /* a thread reads back the entries it loaded, so the next pass needs no barrier first */
        for (int j = threadIdx.x; j < len; j += blockDim.x) {
            const qbv_i64 e = e0 + j;
            if (T != n) buf[e] = s[j];
            else if (wide) buf[e] = qbv_finish64(s[j], inv, sg[e %% n], inverse);
            else out[e] = qbv_finish(s[j], inv, sg[e %% n], inverse, nan_bits);
        }
    }
""",
    "qbv_butterfly": r"""
    for (qbv_i64 k = (qbv_i64)blockIdx.x * blockDim.x + threadIdx.x; k < total / 2;
         k += (qbv_i64)gridDim.x * blockDim.x) {
        const qbv_i64 e = (k / h) * 2 * h + (k %% h);   /* rows are whole multiples of 2h */
        const qbv_i64 i = e %% n;
        const double a = buf[e], b = buf[e + h];
        const double u = __dadd_rn(a, b), w = __dsub_rn(a, b);
        if (last && wide) {
            buf[e] = qbv_finish64(u, inv, sg[i], inverse);
            buf[e + h] = qbv_finish64(w, inv, sg[i + h], inverse);
        } else if (last) {
            out[e] = qbv_finish(u, inv, sg[i], inverse, nan_bits);
            out[e + h] = qbv_finish(w, inv, sg[i + h], inverse, nan_bits);
        } else {
            buf[e] = u;
            buf[e + h] = w;
        }
    }
""",
    "qbv_group_stat": r"""
    for (qbv_i64 g = (qbv_i64)blockIdx.x * blockDim.x + threadIdx.x; g < groups;
         g += (qbv_i64)gridDim.x * blockDim.x) {
        const float* w = v + g * group;
        /* a thread reads its own group, so its loads are far from its neighbours': 16-byte
           loads, several in flight, where alignment allows; the order of the sums is kept */
        const qbv_i64 nv = vec ? group / 4 : 0;
        const float4* w4 = reinterpret_cast<const float4*>(w);
        double r;
        if (absmax) {
            float m = 0.0f;
#pragma unroll 4
            for (qbv_i64 j = 0; j < nv; ++j) {
                const float4 q = w4[j];
                m = qbv_absmax_step(qbv_absmax_step(qbv_absmax_step(qbv_absmax_step(m, q.x), q.y), q.z), q.w);
            }
            for (qbv_i64 j = 4 * nv; j < group; ++j) m = qbv_absmax_step(m, w[j]);
            r = (double)m;
        } else {
            double acc = 0.0;
#pragma unroll 4
            for (qbv_i64 j = 0; j < nv; ++j) {
                const float4 q = w4[j];
                acc = qbv_sq_step(qbv_sq_step(qbv_sq_step(qbv_sq_step(acc, q.x), q.y), q.z), q.w);
            }
            for (qbv_i64 j = 4 * nv; j < group; ++j) acc = qbv_sq_step(acc, w[j]);
            r = __dsqrt_rn(__ddiv_rn(acc, (double)group));
        }
        out[g] = r;
        if (half) {
            const qb_u16 h = qbv_f64_to_f16(r);
            half_bits[g] = h;
            scale[g] = qb_to_f32<QbF16>(h);
        } else {
            scale[g] = __double2float_rn(r);
        }
    }
""",
    "qbv_encode": r"""
    const qbv_i64 per = group / p;
    for (qbv_i64 t = (qbv_i64)blockIdx.x * blockDim.x + threadIdx.x; t < vectors;
         t += (qbv_i64)gridDim.x * blockDim.x) {
        const float sc = s[t / per];
        const qbv_i64 b = t * p;
        double y[QBV_KEEP];
        for (int q = 0; q < p && q < QBV_KEEP; ++q) y[q] = qbv_y(v, b, q, sc);
        out[t] = qbv_scan(y, v, b, p, sc, c0s, order, pts, npts);
    }
""",
    "qbv_encode_grid2": r"""
    const qbv_i64 per = group / 2;
    const double top = (double)(cells - 1);
    for (qbv_i64 t = (qbv_i64)blockIdx.x * blockDim.x + threadIdx.x; t < vectors;
         t += (qbv_i64)gridDim.x * blockDim.x) {
        const float sc = s[t / per];
        if (sc == 0.0f) {
            out[t] = zero;
            continue;
        }
        const qbv_i64 b = 2 * t;
        double y[QBV_KEEP];
        y[0] = qbv_y(v, b, 0, sc);
        y[1] = qbv_y(v, b, 1, sc);
        const double fx = fmin(fmax(__dmul_rn(__dsub_rn(y[0], lo0), inv0), 0.0), top);
        const double fy = fmin(fmax(__dmul_rn(__dsub_rn(y[1], lo1), inv1), 0.0), top);
        const qbv_i64 cell = 3 * ((qbv_i64)(int)fx * cells + (int)fy);
        const int e = lut[cell];
        if (e >= 0) {            /* up to three candidates, ascending, padded with the first */
            const int f = lut[cell + 1], h = lut[cell + 2];
            const double da = qbv_d2(y[0], y[1], pts, e), db = qbv_d2(y[0], y[1], pts, f);
            const double dc = qbv_d2(y[0], y[1], pts, h);
            const bool lt = db < da;         /* strict: at equal distances the lower index stays */
            const double best = lt ? db : da;
            out[t] = dc < best ? h : (lt ? f : e);
            continue;
        }
        const int k = -1 - e, m = multi[k];
        if (m == 0) {            /* beyond the grid, or on its outer ring */
            out[t] = qbv_scan(y, v, b, 2, sc, c0s, order, pts, npts);
            continue;
        }
        double best = __longlong_as_double(0x7ff0000000000000LL);
        int bi = 0;
        for (int q = k + 1; q <= k + m; ++q) {   /* in index order: a tie keeps the lower */
            const int i = multi[q];
            const double d = qbv_d2(y[0], y[1], pts, i);
            if (d < best) {
                best = d;
                bi = i;
            }
        }
        out[t] = bi;
    }
""",
    "qbv_decode": r"""
    for (qbv_i64 e = (qbv_i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (qbv_i64)gridDim.x * blockDim.x) {
        const qbv_i64 t = e / p;
        out[e] = __fmul_rn(pts[(qbv_i64)idx[t] * p + (int)(e - t * p)], s[e / group]);
    }
""",
    "qbv_cast": r"""
    for (qbv_i64 e = (qbv_i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (qbv_i64)gridDim.x * blockDim.x) {
        const float v = y[e];
        const unsigned u = __float_as_uint(v), sign = (u >> 16) & 0x8000u;
        if ((u & 0x7fffffffu) > 0x7f800000u) {
            /* a NaN as numpy (its top payload bits, kept a NaN) and ml_dtypes (the quiet NaN)
               make it; the GPU's conversions give their canonical NaN instead */
            const unsigned h = 0x7c00u | ((u & 0x7fffffu) >> 13);
            out[e] = (qb_u16)(sign | (bf16 ? 0x7fc0u : h == 0x7c00u ? 0x7c01u : h));
        } else {
            out[e] = bf16 ? qb_from_f32<QbBF16>(v) : qb_from_f32<QbF16>(v);
        }
    }
""",
    "qbv_cast64": r"""
    for (qbv_i64 e = (qbv_i64)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (qbv_i64)gridDim.x * blockDim.x) {
        const double d = y[e];
        const unsigned long long u = (unsigned long long)__double_as_longlong(d);
        const unsigned sign = (unsigned)(u >> 48) & 0x8000u;
        if ((u & 0x7fffffffffffffffULL) > 0x7ff0000000000000ULL) {
            /* a NaN: numpy keeps the top payload bits (kept a NaN), ml_dtypes gives the quiet NaN */
            const unsigned h = 0x7c00u | (unsigned)((u & 0xfffffffffffffULL) >> 42);
            out[e] = (qb_u16)(sign | (bf16 ? 0x7fc0u : h == 0x7c00u ? 0x7c01u : h));
        } else if (bf16) {
            out[e] = qb_from_f32<QbBF16>(__double2float_rn(d));   /* ml_dtypes: through float32 */
        } else {
            out[e] = qbv_f64_to_f16(d);
        }
    }
""",
}


def source(names: list[str] | tuple[str, ...] | None = None) -> str:
    """CUDA source holding the kernels ``names`` (default: every vector-quantization kernel)."""
    wanted = list(PARAMS) if names is None else list(names)
    unknown = set(wanted) - set(PARAMS)
    if unknown:
        raise ValueError(f"unknown kernel name(s): {sorted(unknown)}")
    # the typedefs and exact 16-bit conversions of kernels.py, no kernel
    parts = [K.source(()), _COMMON % {"tile": TILE, "keep": _KEEP}]
    for name in PARAMS:
        if name in wanted:
            body = _BODIES[name] % {}   # the bodies' %% are C's modulo
            parts.append(f'extern "C" __global__ void __launch_bounds__({CTA}) {name}({PARAMS[name]}) {{{body}}}\n')
    return "\n".join(parts)
