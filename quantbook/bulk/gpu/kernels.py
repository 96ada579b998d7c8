"""CUDA C source of the block-wise quantize / dequantize kernels, and their names.

The source is header-free (no ``cuda_fp16.h`` / ``cuda_bf16.h``): NVRTC from the
``nvidia-cuda-nvrtc-cu12`` wheel ships no CUDA headers, so float16 and bfloat16 are held
as their 16-bit storage (``unsigned short``) and converted with the PTX instructions the
header intrinsics compile to (``cvt.f32.f16``, ``cvt.rn.f16.f32``, ``cvt.rn.bf16.f32``;
bfloat16 -> float32 is a 16-bit shift).  All conversions are exact or round to nearest
even, as numpy / ml_dtypes do.

Float arithmetic uses explicit round-to-nearest intrinsics (``__fdiv_rn``, ``__fmul_rn``,
``__fsub_rn``, ``__fadd_rn``) and the module is compiled with ``--fmad=false`` and
``-ftz=false``, so every operation is one IEEE float32 operation, as in numpy.

Kernels (``extern "C"``; one instantiation per name):

* ``qb_quantize_{f32,f16,bf16}_p{1,2,4,8}`` — one pass: block absmax (NaN-propagating
  max of ``|x|``), ``s = max(absmax, float32(1e-38))`` (a NaN absmax stays NaN, as
  numpy's ``maximum``; stored: absmax; ``s`` for the partial last block, as bitsandbytes
  stores it — so the api sees a non-finite value in any block), full blocks
  ``y = x * float32(1/s)``, the partial last block ``y = x / s`` (bitsandbytes 0.50.2),
  clamp to [-1, 1], encode (``rank = #{k : bounds[k] < y}``, a binary search over the
  float32 midpoints of the stably sorted code table; ``code = order[rank]``; the clamp is
  folded into the bounds by the host, see :mod:`quantbook.bulk.gpu.tables`), pack.
  ``p`` is the packing: 1, 2, 4 bits (8, 4, 2 codes a byte, first element in the most
  significant bits) or 8 (one byte a code, for 3 and 5..8 bits).  Positions past ``n``
  in the last byte hold the code of 0.0.
* ``qb_dequantize_{f32,f16,bf16}_p{1,2,4,8}`` — ``out = T(float32(code[idx] * absmax))``.
* ``qb_quantize_absmax_nested`` — bitsandbytes' CPU 8-bit blockwise quantizer for the
  nested absmax: blocks of 256 over ``d = absmax - offset``, ``a = max|d|`` (0 -> codes 0),
  ``v = clamp(d * float32(1/a))``, ``i16 = trunc(((v + 1) * 0.5) * 65535 + 0.5)`` in
  float32, ``code = lut[i16]`` (the 65536-entry table from the dynamic map).
* ``qb_dequantize_absmax_nested`` — ``float32(float32(code8[q] * nested_absmax[i // 256]) + offset)``.
"""

from __future__ import annotations

DTYPES = ("f32", "f16", "bf16")
PACKINGS = (1, 2, 4, 8)

#: elements a thread quantizes (16-byte or 2x16-byte vector loads)
VEC = {"f32": 8, "f16": 16, "bf16": 16}
#: elements a thread dequantizes
DEQ_EPT = 32
#: largest code table / threshold table a kernel holds in shared memory
MAX_TABLE = 256

_TYPE = {"f32": "QbF32", "f16": "QbF16", "bf16": "QbBF16"}


def quantize_name(dtype: str, packing: int) -> str:
    return f"qb_quantize_{dtype}_p{packing}"


def dequantize_name(dtype: str, packing: int) -> str:
    return f"qb_dequantize_{dtype}_p{packing}"


NESTED_QUANT_NAME = "qb_quantize_absmax_nested"
NESTED_DEQUANT_NAME = "qb_dequantize_absmax_nested"


def all_kernel_names() -> list[str]:
    names = [quantize_name(d, p) for d in DTYPES for p in PACKINGS]
    names += [dequantize_name(d, p) for d in DTYPES for p in PACKINGS]
    names += [NESTED_QUANT_NAME, NESTED_DEQUANT_NAME]
    return names


_COMMON = r"""
typedef unsigned char qb_u8;
typedef unsigned short qb_u16;
typedef unsigned int qb_u32;
typedef long long qb_i64;

#define QB_MAX_TABLE 256
#define QB_ABSMAX_MIN_BITS 0x006ce3eeu   /* float32(1e-38), subnormal */

struct QbF32  { typedef float  storage; };
struct QbF16  { typedef qb_u16 storage; };
struct QbBF16 { typedef qb_u16 storage; };

/* ---- exact conversions storage <-> float32 ------------------------------------- */
template <typename T> __device__ __forceinline__ float qb_to_f32(typename T::storage s);
template <> __device__ __forceinline__ float qb_to_f32<QbF32>(float s) { return s; }
template <> __device__ __forceinline__ float qb_to_f32<QbF16>(qb_u16 s) {
#ifdef __CUDA_ARCH__
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(s));
    return f;
#else
    return qb_host_f16_to_f32(s);   /* host emulation (tests without a GPU) */
#endif
}
template <> __device__ __forceinline__ float qb_to_f32<QbBF16>(qb_u16 s) {
    return __uint_as_float(((qb_u32)s) << 16);
}

/* round to nearest even, as numpy (float16) and ml_dtypes (bfloat16) */
template <typename T> __device__ __forceinline__ typename T::storage qb_from_f32(float v);
template <> __device__ __forceinline__ float qb_from_f32<QbF32>(float v) { return v; }
template <> __device__ __forceinline__ qb_u16 qb_from_f32<QbF16>(float v) {
#ifdef __CUDA_ARCH__
    qb_u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
#else
    return qb_host_f32_to_f16(v);
#endif
}
template <> __device__ __forceinline__ qb_u16 qb_from_f32<QbBF16>(float v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    qb_u16 h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
#else   /* older GPUs and the host emulation: round to nearest even in integers */
    qb_u32 u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (qb_u16)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (qb_u16)(u >> 16);
#endif
}

/* unpack 32-bit words into float32 values (little-endian: lower address = low half) */
template <typename T> struct QbWords;
template <> struct QbWords<QbF32> {
    static const int per_word = 1;
    static __device__ __forceinline__ float get(qb_u32 w, int) { return __uint_as_float(w); }
};
template <> struct QbWords<QbF16> {
    static const int per_word = 2;
    static __device__ __forceinline__ float get(qb_u32 w, int h) {
        return qb_to_f32<QbF16>((qb_u16)(h ? (w >> 16) : (w & 0xffffu)));
    }
};
template <> struct QbWords<QbBF16> {
    static const int per_word = 2;
    static __device__ __forceinline__ float get(qb_u32 w, int h) {
        return qb_to_f32<QbBF16>((qb_u16)(h ? (w >> 16) : (w & 0xffffu)));
    }
};

/* NaN-propagating max (numpy's np.max semantics) */
__device__ __forceinline__ float qb_nanmax(float a, float b) { return (a != a || a > b) ? a : b; }

/* ---- encoder ------------------------------------------------------------------- */
/* bitsandbytes 0.50.2 (torch.bucketize on float32 midpoints): rank = #{k : bounds[k] < clamp(y)}
   by a branchless binary search of LOGP unrolled steps over 2^LOGP entries (bounds padded
   with +inf; the first, uniform, step compares with a register), then the code index
   order[rank] (stable argsort of the code table; skipped when it is the identity).
   NaN ranks last, as numpy.searchsorted(bounds, NaN, 'left') (the api rejects
   non-finite input).                                                                 */
template <int LOGP, bool IDENT>
__device__ __forceinline__ qb_u32 qb_encode(float yraw, const float* s_b, const qb_u8* s_ord,
                                            float b_mid, int K) {
    const float y = yraw;   /* no clamp: the host folded it into the table (bounds >= 1
                               are +inf; bounds < -1 dropped, ranks start after them) */
    unsigned kb = (b_mid < y) ? (4u << (LOGP - 1)) : 0u;   /* rank in bytes */
    if constexpr (LOGP >= 2) {
#pragma unroll
        for (int s = 1 << (LOGP - 2); s > 0; s >>= 1) {      /* s_b[k + s - 1] */
            const float b = *reinterpret_cast<const float*>(
                reinterpret_cast<const char*>(s_b) + kb + 4u * (unsigned)(s - 1));
            if (b < y) kb += 4u * (unsigned)s;
        }
    }
    int k = (int)(kb >> 2);
    if (yraw != yraw) k = K - 1;
    if constexpr (IDENT) return (qb_u32)k;
    else return (qb_u32)s_ord[k];
}

/* encode the V scaled values of a thread; FULL: all valid (no per-element checks) */
template <int LOGP, bool IDENT, int V, bool FULL>
__device__ __forceinline__ void qb_encode_chunk(const float* v, qb_u32* c, int nvalid, qb_u32 zc,
                                                const float* s_b, const qb_u8* s_ord, float b_mid, int K) {
#pragma unroll
    for (int j = 0; j < V; ++j) {
        if (FULL || j < nvalid) c[j] = qb_encode<LOGP, IDENT>(v[j], s_b, s_ord, b_mid, K);
        else c[j] = zc;
    }
}

/* ---- quantize: absmax + scale + encode + pack, one pass -------------------------- */
/* Each thread owns V consecutive elements; a quantization block of B = 2^log2B
   elements is G = B / V consecutive threads.  G <= 32: xor-shuffles inside the warp;
   G > 32: the CTA size is a multiple of G and the warps of a group combine their
   maxima through shared memory.  Every thread takes part in the reductions (threads
   past n hold zeros) and leaves only after the last barrier.                        */
template <typename T, int V, int PB>
__device__ __forceinline__ void qb_quantize(
    const typename T::storage* __restrict__ x, qb_u8* __restrict__ packed,
    float* __restrict__ absmax, qb_i64 n, int log2B,
    const float* __restrict__ bounds, const int* __restrict__ order, int K, int ident,
    int vec_in)
{
    constexpr int LOGP = (PB == 8) ? 8 : PB;              /* search steps; P = 2^LOGP */
    constexpr int P = 1 << LOGP;
    __shared__ float s_b[P];
    __shared__ qb_u8 s_ord[P];
    __shared__ float s_red[32];
    for (int i = threadIdx.x; i < P; i += blockDim.x) {   /* host pads bounds to P */
        s_b[i] = bounds[i];
        s_ord[i] = (qb_u8)order[i];
    }
    const float b_mid = bounds[P / 2 - 1];
    __syncthreads();

    const qb_i64 chunk = (qb_i64)blockIdx.x * blockDim.x + threadIdx.x;
    const qb_i64 e0 = chunk * V;

    float v[V];
    if (vec_in && e0 + V <= n) {
        constexpr int NW = V / QbWords<T>::per_word;      /* 32-bit words */
        const uint4* src = reinterpret_cast<const uint4*>(x + e0);
        qb_u32 w[NW];
#pragma unroll
        for (int q = 0; q < NW / 4; ++q) {
            const uint4 r = src[q];
            w[4 * q + 0] = r.x; w[4 * q + 1] = r.y; w[4 * q + 2] = r.z; w[4 * q + 3] = r.w;
        }
#pragma unroll
        for (int j = 0; j < V; ++j)
            v[j] = QbWords<T>::get(w[j / QbWords<T>::per_word], j % QbWords<T>::per_word);
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j) {
            const qb_i64 e = e0 + j;
            v[j] = (e < n) ? qb_to_f32<T>(x[e]) : 0.0f;
        }
    }

    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < V; ++j) amax = qb_nanmax(fabsf(v[j]), amax);

    const int G = (1 << log2B) / V;
    if (G <= 32) {
        for (int off = 1; off < G; off <<= 1)
            amax = qb_nanmax(__shfl_xor_sync(0xffffffffu, amax, off), amax);
    } else {
#pragma unroll
        for (int off = 1; off < 32; off <<= 1)
            amax = qb_nanmax(__shfl_xor_sync(0xffffffffu, amax, off), amax);
        const int warp = threadIdx.x >> 5;
        if ((threadIdx.x & 31) == 0) s_red[warp] = amax;
        __syncthreads();
        const int wpg = G >> 5;
        const int g0 = (warp / wpg) * wpg;
        amax = s_red[g0];
        for (int q = 1; q < wpg; ++q) amax = qb_nanmax(s_red[g0 + q], amax);
    }
    if (e0 >= n) return;                                  /* no barrier after this */

    /* bnb: s = absmax.clamp(min=1e-38) (a float32 subnormal); full blocks multiply by
       float32(1/s), the partial last block divides by s; the clamp to [-1, 1] is in
       the encoder's table.  Stored absmax: absmax for full blocks, s for the partial
       last block (as bitsandbytes stores them).                                       */
    const float smin = __uint_as_float(QB_ABSMAX_MIN_BITS);
    const float sc = (amax > smin || amax != amax) ? amax : smin;   /* NaN stays NaN */
    const bool partial = (e0 >> log2B) == (n >> log2B);   /* only if n % B != 0 */
    if ((e0 & ((((qb_i64)1) << log2B) - 1)) == 0) absmax[e0 >> log2B] = partial ? sc : amax;
    const float inv = __fdiv_rn(1.0f, sc);
    const int nvalid = (n - e0 >= V) ? V : (int)(n - e0);

    if (partial) {                                        /* rare: one block per call */
#pragma unroll
        for (int j = 0; j < V; ++j) v[j] = __fdiv_rn(v[j], sc);
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j) v[j] = __fmul_rn(v[j], inv);
    }
    qb_u32 c[V];                                          /* encode */
    if (nvalid == V) {
        if (ident) qb_encode_chunk<LOGP, true, V, true>(v, c, V, 0u, s_b, s_ord, b_mid, K);
        else       qb_encode_chunk<LOGP, false, V, true>(v, c, V, 0u, s_b, s_ord, b_mid, K);
    } else {                                              /* the last, partial chunk */
        const qb_u32 zc = qb_encode<LOGP, false>(0.0f, s_b, s_ord, b_mid, K);  /* pad code */
        qb_encode_chunk<LOGP, false, V, false>(v, c, nvalid, zc, s_b, s_ord, b_mid, K);
    }

    constexpr int CPB = (PB == 8) ? 1 : 8 / PB;           /* codes per byte */
    constexpr int NB = V / CPB;                           /* output bytes per thread */
    qb_u32 b[NB];
#pragma unroll
    for (int i = 0; i < NB; ++i) {
        qb_u32 acc = 0u;
#pragma unroll
        for (int k = 0; k < CPB; ++k) acc = (acc << PB) | c[i * CPB + k];
        b[i] = acc & 0xffu;
    }
    const qb_i64 o0 = e0 / CPB;
    const qb_i64 nbytes = (n + CPB - 1) / CPB;
    qb_u8* dst = packed + o0;
    if (o0 + NB <= nbytes) {
        if constexpr (NB == 1) {
            dst[0] = (qb_u8)b[0];
        } else if constexpr (NB == 2) {
            *reinterpret_cast<qb_u16*>(dst) = (qb_u16)(b[0] | (b[1] << 8));
        } else {
            constexpr int NW = NB / 4;
            qb_u32 w[NW];
#pragma unroll
            for (int q = 0; q < NW; ++q)
                w[q] = b[4 * q] | (b[4 * q + 1] << 8) | (b[4 * q + 2] << 16) | (b[4 * q + 3] << 24);
            if constexpr (NB == 4) {
                *reinterpret_cast<qb_u32*>(dst) = w[0];
            } else if constexpr (NB == 8) {
                *reinterpret_cast<uint2*>(dst) = make_uint2(w[0], w[1]);
            } else {
#pragma unroll
                for (int q = 0; q < NW / 4; ++q)
                    reinterpret_cast<uint4*>(dst)[q] =
                        make_uint4(w[4 * q], w[4 * q + 1], w[4 * q + 2], w[4 * q + 3]);
            }
        }
    } else {
        for (int i = 0; i < NB; ++i)
            if (o0 + i < nbytes) dst[i] = (qb_u8)b[i];
    }
}

/* ---- dequantize ------------------------------------------------------------------ */
#define QB_EPT 32
template <typename T, int PB>
__device__ __forceinline__ void qb_dequantize(
    const qb_u8* __restrict__ packed, const float* __restrict__ absmax,
    typename T::storage* __restrict__ out, qb_i64 n, int log2B,
    const float* __restrict__ code, int K, int vec_in, int vec_out)
{
    typedef typename T::storage S;
    constexpr int NT = 1 << PB;                            /* table entries a code can index */
    __shared__ float s_t[NT];
    for (int i = threadIdx.x; i < NT; i += blockDim.x)
        s_t[i] = (i < K) ? code[i] : __uint_as_float(0x7fc00000u);   /* unused codes: NaN */
    __syncthreads();

    constexpr int CPB = (PB == 8) ? 1 : 8 / PB;
    constexpr int NBI = QB_EPT / CPB;                      /* input bytes per thread */
    constexpr qb_u32 MASK = (PB == 8) ? 0xffu : ((1u << PB) - 1u);
    const qb_i64 e0 = ((qb_i64)blockIdx.x * blockDim.x + threadIdx.x) * QB_EPT;
    if (e0 >= n) return;
    const qb_i64 o0 = e0 / CPB;
    const qb_i64 nbytes = (n + CPB - 1) / CPB;

    constexpr int NW = NBI / 4;                            /* 32-bit words: 1, 2, 4, 8 */
    qb_u32 w[NW];
    if (vec_in && o0 + NBI <= nbytes) {
        if constexpr (NW == 1) {
            w[0] = *reinterpret_cast<const qb_u32*>(packed + o0);
        } else if constexpr (NW == 2) {
            const uint2 r2 = *reinterpret_cast<const uint2*>(packed + o0);
            w[0] = r2.x; w[1] = r2.y;
        } else {
#pragma unroll
            for (int q = 0; q < NW / 4; ++q) {
                const uint4 r4 = reinterpret_cast<const uint4*>(packed + o0)[q];
                w[4 * q + 0] = r4.x; w[4 * q + 1] = r4.y; w[4 * q + 2] = r4.z; w[4 * q + 3] = r4.w;
            }
        }
    } else {
#pragma unroll
        for (int q = 0; q < NW; ++q) {
            qb_u32 acc = 0u;
            for (int k = 0; k < 4; ++k) {
                const qb_i64 o = o0 + 4 * q + k;
                if (o < nbytes) acc |= ((qb_u32)packed[o]) << (8 * k);
            }
            w[q] = acc;
        }
    }

    float a_one = 0.0f;
    const bool one_block = (QB_EPT >> log2B) == 0;          /* EPT <= B: one absmax */
    if (one_block) a_one = absmax[e0 >> log2B];

    float r[QB_EPT];
#pragma unroll
    for (int i = 0; i < QB_EPT; ++i) {
        const qb_u32 byte = (w[(i / CPB) / 4] >> (8 * ((i / CPB) % 4))) & 0xffu;
        const qb_u32 idx = (PB == 8) ? byte : ((byte >> ((CPB - 1 - (i % CPB)) * PB)) & MASK);
        const float a = one_block ? a_one
                                  : ((e0 + i < n) ? absmax[(e0 + i) >> log2B] : 0.0f);
        r[i] = __fmul_rn(s_t[idx], a);
    }

    if (vec_out && e0 + QB_EPT <= n) {
        uint4* dst = reinterpret_cast<uint4*>(out + e0);
        constexpr int PER = 16 / (int)sizeof(S);           /* elements per uint4 */
#pragma unroll
        for (int q = 0; q < QB_EPT / PER; ++q) {
            qb_u32 ww[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                if constexpr (sizeof(S) == 4) {
                    ww[k] = __float_as_uint(r[q * PER + k]);
                } else {
                    const qb_u32 lo = (qb_u32)qb_from_f32<T>(r[q * PER + 2 * k]);
                    const qb_u32 hi = (qb_u32)qb_from_f32<T>(r[q * PER + 2 * k + 1]);
                    ww[k] = (lo & 0xffffu) | (hi << 16);
                }
            }
            dst[q] = make_uint4(ww[0], ww[1], ww[2], ww[3]);
        }
    } else {
        for (int i = 0; i < QB_EPT; ++i)
            if (e0 + i < n) out[e0 + i] = qb_from_f32<T>(r[i]);
    }
}
"""


def _quantize_wrapper(dtype: str, packing: int) -> str:
    t = _TYPE[dtype]
    return (
        f'extern "C" __global__ void __launch_bounds__(512) {quantize_name(dtype, packing)}(\n'
        f"    const {t}::storage* x, qb_u8* packed, float* absmax, qb_i64 n, int log2B,\n"
        f"    const float* bounds, const int* order, int K, int ident, int vec_in) {{\n"
        f"  qb_quantize<{t}, {VEC[dtype]}, {packing}>"
        f"(x, packed, absmax, n, log2B, bounds, order, K, ident, vec_in);\n}}\n"
    )


def _dequantize_wrapper(dtype: str, packing: int) -> str:
    t = _TYPE[dtype]
    return (
        f'extern "C" __global__ void __launch_bounds__(256) {dequantize_name(dtype, packing)}(\n'
        f"    const qb_u8* packed, const float* absmax, {t}::storage* out, qb_i64 n, int log2B,\n"
        f"    const float* code, int K, int vec_in, int vec_out) {{\n"
        f"  qb_dequantize<{t}, {packing}>(packed, absmax, out, n, log2B, code, K, vec_in, vec_out);\n}}\n"
    )


_NESTED = r"""
/* one CTA of 256 threads per 256-block of the absmax array */
extern "C" __global__ void __launch_bounds__(256) qb_quantize_absmax_nested(
    const float* absmax, float offset, const qb_u8* lut, qb_u8* q, float* nested_absmax, qb_i64 n) {
  __shared__ float s_red[8];
  const qb_i64 i = (qb_i64)blockIdx.x * 256 + threadIdx.x;
  const float d = (i < n) ? __fsub_rn(absmax[i], offset) : 0.0f;
  float a = fabsf(d);
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) a = qb_nanmax(__shfl_xor_sync(0xffffffffu, a, off), a);
  if ((threadIdx.x & 31) == 0) s_red[threadIdx.x >> 5] = a;
  __syncthreads();
  a = s_red[0];
#pragma unroll
  for (int w = 1; w < 8; ++w) a = qb_nanmax(s_red[w], a);
  if (i >= n) return;
  if (threadIdx.x == 0) nested_absmax[blockIdx.x] = a;
  if (a == 0.0f) { q[i] = 0; return; }
  const float inv = __fdiv_rn(1.0f, a);
  float v = __fmul_rn(d, inv);            /* inv = inf only for a subnormal a */
  if (v != v) v = -1.0f;                  /* bnb: max(v, -1) on x86 turns NaN into -1 */
  v = (v < -1.0f) ? -1.0f : ((v > 1.0f) ? 1.0f : v);
  const float t = __fadd_rn(__fmul_rn(__fmul_rn(__fadd_rn(v, 1.0f), 0.5f), 65535.0f), 0.5f);
  int j = __float2int_rz(t);
  j = j < 0 ? 0 : (j > 65535 ? 65535 : j);
  q[i] = lut[j];
}

extern "C" __global__ void __launch_bounds__(256) qb_dequantize_absmax_nested(
    const qb_u8* q, const float* nested_absmax, const float* code, float offset,
    float* out, qb_i64 n, int log2B) {
  __shared__ float s_t[QB_MAX_TABLE];
  for (int i = threadIdx.x; i < QB_MAX_TABLE; i += blockDim.x) s_t[i] = code[i];
  __syncthreads();
  const qb_i64 i = (qb_i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  out[i] = __fadd_rn(__fmul_rn(s_t[q[i]], nested_absmax[i >> log2B]), offset);
}
"""


def source(names: list[str] | tuple[str, ...] | None = None) -> str:
    """CUDA source holding the kernels ``names`` (default: every kernel)."""
    wanted = set(all_kernel_names() if names is None else names)
    unknown = wanted - set(all_kernel_names())
    if unknown:
        raise ValueError(f"unknown kernel name(s): {sorted(unknown)}")
    parts = [_COMMON]
    for d in DTYPES:
        for p in PACKINGS:
            if quantize_name(d, p) in wanted:
                parts.append(_quantize_wrapper(d, p))
            if dequantize_name(d, p) in wanted:
                parts.append(_dequantize_wrapper(d, p))
    if wanted & {NESTED_QUANT_NAME, NESTED_DEQUANT_NAME}:
        parts.append(_NESTED)
    return "\n".join(parts)
