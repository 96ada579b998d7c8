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

* ``qb_quantize_{f32,f16,bf16}_v{V}_p{1,2,4,8}_{s{S},w}`` — one pass: block absmax (the max of
  ``|x|`` taken on the bits: NaN when the block holds one, as numpy's max),
  ``s = max(absmax, float32(1e-38))`` (a NaN absmax stays NaN, as numpy's ``maximum``;
  stored: absmax; ``s`` for the partial last block, as bitsandbytes stores it — so the api
  sees a non-finite value in any block), full blocks ``y = x * float32(1/s)``, the partial
  last block ``y = x / s`` (bitsandbytes 0.50.2), clamp to [-1, 1], encode (``rank =
  #{k : bounds[k] < y}`` over the float32 midpoints of the stably sorted code table: a
  bucket table read then ``S`` compares, or (``w``) one read of the word layout's table and
  an add; ``code = order[rank]``; the clamp is folded into the tables by the host, see
  :mod:`quantbook.bulk.gpu.tables`), pack.  ``p`` is the
  packing: 1, 2, 4 bits (8, 4, 2 codes a byte, first element in the most significant bits)
  or 8 (one byte a code, for 3 and 5..8 bits).  Positions past ``n`` in the last byte hold
  the code of 0.0.  ``V`` values a thread (:func:`quantize_vec`), loaded 16 bytes at a
  time; CTAs loop over tiles (grid-stride).
* ``qb_dequantize_{f32,f16,bf16}_p{1,2,4,8}`` — ``out = T(float32(code[idx] * absmax))``;
  a packed byte's table values come from one shared load (a per-CTA table by byte), and
  each warp-wide store writes one contiguous run (16 bytes a thread; float32 from 1-bit
  codes, 8 outputs a byte: the lanes of a warp trade halves of their bytes by shuffles).
* ``qb_quantize_absmax_nested`` — bitsandbytes' CPU 8-bit blockwise quantizer for the
  nested absmax: blocks of 256 over ``d = absmax - offset``, ``a = max|d|`` (0 -> codes 0),
  ``v = clamp(d * float32(1/a))``, ``i16 = trunc(((v + 1) * 0.5) * 65535 + 0.5)`` in
  float32, ``code = lut[i16]`` (the 65536-entry table from the dynamic map).
* ``qb_dequantize_absmax_nested`` — ``float32(float32(code8[q] * nested_absmax[i // 256]) + offset)``.
* ``qb_error_chunks_{f32,f16,bf16}`` — the runs' sums of :mod:`quantbook.bulk.sums`, a
  thread a run of ``CHUNK`` values, serially in float64 (``e = xh - x`` or ``-x``; ``e*e``
  and ``|e|``): ``out[c]`` is run ``c``'s ``Σe²``, ``out[runs + c]`` its ``Σ|e|``.  The
  CTA's ``SUMS_CTA`` runs reach shared memory 64 bytes of each at a time, in coalesced
  16-byte loads (element by element for the tail and unaligned arrays); CTAs loop over
  tiles of runs.
* ``qb_sanitize_{f32,f16,bf16}`` — what ``allow_nonfinite`` quantizes
  (:func:`quantbook.bulk.format.sanitize_nonfinite`), on the values' bits: NaN -> +0, +-Inf
  -> +- the block's largest finite magnitude.  ``min(B, 32)`` threads a block, strided so
  that a warp's loads are contiguous: the maximum, by shuffles, then a second pass over
  the block (from cache) writes a new array.
"""

from __future__ import annotations

from ..format import SIGN_INF_BITS
from ..sums import CHUNK as SUM_CHUNK
from .tables import BUCKET_BYTES, BUCKET_SHIFT, FINE_LOW, FINE_SHIFT, LAYOUTS, WORD_LOW, WORD_SHIFT, search_tag

DTYPES = ("f32", "f16", "bf16")
#: each dtype key's numpy name
DTYPE_NAMES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
PACKINGS = (1, 2, 4, 8)

#: values a quantize thread may hold, by dtype (64 bytes of input; 32 bytes for the 16-bit
#: types' blocks of 16 and codes of a byte)
VECS = {"f32": (16,), "f16": (16, 32), "bf16": (16, 32)}


def quantize_vecs(dtype: str, packing: int) -> tuple[int, ...]:
    """The values a thread a quantize kernel of this dtype and packing is built for: 32 only
    for sub-byte codes (a byte a code gains nothing from it; docs/benchmarks.md)."""
    return tuple(v for v in VECS[dtype] if v <= 16 or packing < 8)


def quantize_vec(dtype: str, blocksize: int, packing: int) -> int:
    """Values a quantize thread holds: the most of :func:`quantize_vecs` that fit in a block.
    More values a thread make the groups that share a block maximum smaller (fewer warps meet
    at a barrier) and spread each thread's fixed work over more values."""
    return max(v for v in quantize_vecs(dtype, packing) if v <= blocksize)


#: outputs a dequantize thread writes in total (over its steps)
DEQ_PER_THREAD = 32
#: threads of a dequantize CTA
DEQ_CTA = 256


def dequantize_unit(dtype: str, packing: int) -> int:
    """Outputs a dequantize thread writes a step: one 16-byte store (4 float32, 8 float16 or
    bfloat16), or the 8 outputs of a byte of 1-bit codes."""
    per_store = 4 if dtype == "f32" else 8
    return max(per_store, 8 // packing if packing < 8 else 1)


def dequantize_steps(dtype: str, packing: int) -> int:
    return DEQ_PER_THREAD // dequantize_unit(dtype, packing)
#: largest code table / threshold table a kernel holds in shared memory
MAX_TABLE = 256

_TYPE = {"f32": "QbF32", "f16": "QbF16", "bf16": "QbBF16"}


def max_steps(packing: int) -> int:
    """The most compares a value of a ``packing``-bit code can need (tables.py): log2 of the
    largest table."""
    return 8 if packing == 8 else packing


def _searches(packing: int) -> dict[str, tuple[int, int]]:
    """The searches after the table read a kernel of this packing is built for, by
    :func:`~quantbook.bulk.gpu.tables.search_tag`: ``(steps, layout)`` template arguments, the
    layout by its index in ``tables.LAYOUTS``: 0 .. max_steps compares of the coarse (codes of
    a byte: the fine) layout, and the word layout's, for codes of 1, 2 or 4 bits."""
    layout = "fine" if packing == 8 else "coarse"
    out = {search_tag(layout, k): (k, LAYOUTS.index(layout)) for k in range(max_steps(packing) + 1)}
    if packing < 8:
        out[search_tag("word", 0)] = (0, LAYOUTS.index("word"))
    return out


def searches(packing: int) -> tuple[str, ...]:
    """The searches (``EncoderTables.search``) of this packing's kernels."""
    return tuple(_searches(packing))


def quantize_name(dtype: str, vec: int, packing: int, search: str) -> str:
    """The quantize kernel of a dtype, values a thread (:func:`quantize_vec`), packing and
    search (:func:`searches`, from the encoder tables: a compile-time loop count or layout)."""
    return f"qb_quantize_{dtype}_v{vec}_p{packing}_{search}"


def dequantize_name(dtype: str, packing: int) -> str:
    return f"qb_dequantize_{dtype}_p{packing}"


NESTED_QUANT_NAME = "qb_quantize_absmax_nested"
NESTED_DEQUANT_NAME = "qb_dequantize_absmax_nested"


def sanitize_name(dtype: str) -> str:
    return f"qb_sanitize_{dtype}"


#: threads of a sanitize CTA
SANITIZE_CTA = 256


def error_chunks_name(dtype: str) -> str:
    return f"qb_error_chunks_{dtype}"


#: threads of an error-sums CTA
SUMS_CTA = 256


def all_kernel_names() -> list[str]:
    names = [quantize_name(d, v, p, k) for d in DTYPES for p in PACKINGS for v in quantize_vecs(d, p)
             for k in searches(p)]
    names += [dequantize_name(d, p) for d in DTYPES for p in PACKINGS]
    names += [NESTED_QUANT_NAME, NESTED_DEQUANT_NAME]
    names += [sanitize_name(d) for d in DTYPES]
    names += [error_chunks_name(d) for d in DTYPES]
    return names


_COMMON = r"""
typedef unsigned char qb_u8;
typedef unsigned short qb_u16;
typedef unsigned int qb_u32;
typedef long long qb_i64;

#define QB_MAX_TABLE 256
#define QB_MAX_BOUNDS 512               /* 255 bounds + 2^8 of +inf padding */
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

/* ---- block maximum on the bits --------------------------------------------------- */
/* |x| as its bits with the sign cleared: for IEEE formats the unsigned order of these bits
   is the order of |x|, with every NaN above +inf.  So an integer max is the absmax and is
   NaN (some NaN) when the block holds one, as numpy's NaN-propagating max: one integer
   instruction a value (two values a 32-bit word for the 16-bit types).              */
template <typename T> struct QbAbsBits;
template <> struct QbAbsBits<QbF32> {
    static __device__ __forceinline__ qb_u32 word(qb_u32 w) { return w & 0x7fffffffu; }
    static __device__ __forceinline__ qb_u32 fold(qb_u32 m) { return m; }
    static __device__ __forceinline__ float value(qb_u32 m) { return __uint_as_float(m); }
};
template <> struct QbAbsBits<QbF16> {
    static __device__ __forceinline__ qb_u32 word(qb_u32 w) { return w & 0x7fff7fffu; }
    static __device__ __forceinline__ qb_u32 fold(qb_u32 m) {
        const qb_u32 lo = m & 0xffffu, hi = m >> 16;
        return lo > hi ? lo : hi;
    }
    static __device__ __forceinline__ float value(qb_u32 m) { return qb_to_f32<QbF16>((qb_u16)m); }
};
template <> struct QbAbsBits<QbBF16> {
    static __device__ __forceinline__ qb_u32 word(qb_u32 w) { return w & 0x7fff7fffu; }
    static __device__ __forceinline__ qb_u32 fold(qb_u32 m) { return QbAbsBits<QbF16>::fold(m); }
    static __device__ __forceinline__ float value(qb_u32 m) { return __uint_as_float(m << 16); }
};
/* lane-wise unsigned max of two 32-bit words (two 16-bit lanes for the 16-bit types) */
template <typename T> __device__ __forceinline__ qb_u32 qb_umax(qb_u32 a, qb_u32 b);
template <> __device__ __forceinline__ qb_u32 qb_umax<QbF32>(qb_u32 a, qb_u32 b) { return a > b ? a : b; }
template <> __device__ __forceinline__ qb_u32 qb_umax<QbF16>(qb_u32 a, qb_u32 b) { return __vmaxu2(a, b); }
template <> __device__ __forceinline__ qb_u32 qb_umax<QbBF16>(qb_u32 a, qb_u32 b) { return __vmaxu2(a, b); }

/* ---- encoder ------------------------------------------------------------------- */
/* bitsandbytes 0.50.2 (torch.bucketize on float32 midpoints): rank = #{k : bounds[k] < y},
   then the code index order[rank] (stable argsort of the code table; skipped when it is
   the identity).  The rank of the smallest value of y's bucket (a few of its float32
   bits: the coarse or, for codes of a byte, the fine layout) comes from a table; S
   compares of a branchless binary search over the bounds that follow add the bounds
   inside the bucket (quantbook/bulk/gpu/tables.py builds both and defines the layouts).
   NaN ranks last, as numpy.searchsorted(bounds, NaN, 'left') (the api rejects
   non-finite input); only blocks with a non-finite maximum can hold a NaN y, so the
   caller asks for the test (CHECK_NAN) only there.                                    */

/* The layouts of tables.py, QB_COARSE, QB_FINE and QB_WORD: their index in tables.LAYOUTS */
/* Codes leave the encoder shifted left by this much (the packer's shifts absorb it) */
__device__ constexpr int qb_code_shift(int LAYOUT) { return LAYOUT == QB_COARSE ? 2 : 0; }

template <int S, bool IDENT, bool CHECK_NAN, int LAYOUT>
__device__ __forceinline__ qb_u32 qb_encode(float y, const qb_u8* s_bk, const float* s_b,
                                            const qb_u32* s_ord, qb_u32 kmax) {
    /* Returns the code index << qb_code_shift (s_ord and kmax are held so).  No clamp: the
       host folded it into the table (bounds >= 1 are +inf; bounds < -1 dropped, ranks
       start after them).  The coarse layout holds ranks and codes times 4, as byte offsets
       into the 32-bit tables, so a compare needs no scaling; the fine layout, for codes of
       a byte, and the word layout hold them as they are, so a byte needs no shift back.  */
    qb_u32 i = __float_as_uint(y);
    if constexpr (LAYOUT == QB_WORD) {   /* rank and bound in one entry (tables.py) */
        const qb_u32 klow = (i ^ (qb_u32)((int)i >> 31)) & QB_WORD_LOW;   /* one LOP3 after the shift */
        qb_u32 r = (reinterpret_cast<const qb_u32*>(s_bk)[i >> QB_WORD_SHIFT] + klow) >> QB_WORD_SHIFT;
        if constexpr (CHECK_NAN) { if (y != y) r = kmax; }
        if constexpr (IDENT) return r;
        else return s_ord[r];
    }
    if constexpr (LAYOUT == QB_FINE) {   /* codes of a byte: the fine layout (tables.py), |y| < 2 or NaN */
        const qb_u32 t = i >> QB_FINE_SHIFT, u = i >> (QB_FINE_SHIFT + 1);
        qb_u32 k;                                         /* u's sign over t's exponent top bit */
#ifdef __CUDA_ARCH__   /* one bit select (NVVM would split it in two) */
        asm("lop3.b32 %0, %1, %3, %2, 0xe2;" : "=r"(k) : "r"(t), "r"(u), "n"(QB_FINE_LOW));
#else
        k = (t & QB_FINE_LOW) | (u & ~QB_FINE_LOW);
#endif
        qb_u32 r = s_bk[k];
#pragma unroll
        for (int s = (1 << S) >> 1; s > 0; s >>= 1)
            if (s_b[r + (unsigned)(s - 1)] < y) r += (unsigned)s;
        if constexpr (CHECK_NAN) { if (y != y) r = kmax; }
        if constexpr (IDENT) return r;
        else return s_ord[r];
    }
#ifdef __CUDA_ARCH__   /* kept a shift: NVVM would fold it into the index as (>> 18) & ~1 */
    asm("shr.b32 %0, %0, %1;" : "+r"(i) : "n"(QB_BUCKET_SHIFT));
#else
    i >>= QB_BUCKET_SHIFT;
#endif
    qb_u32 kb = reinterpret_cast<const qb_u16*>(s_bk)[i];
#pragma unroll
    for (int s = (1 << S) >> 1; s > 0; s >>= 1) {         /* s_b[k + s - 1] */
        const float b = *reinterpret_cast<const float*>(
            reinterpret_cast<const char*>(s_b) + kb + 4u * (unsigned)(s - 1));
        if (b < y) kb += 4u * (unsigned)s;
    }
    if constexpr (CHECK_NAN) { if (y != y) kb = kmax; }
    if constexpr (IDENT) return kb;
    else return *reinterpret_cast<const qb_u32*>(reinterpret_cast<const char*>(s_ord) + kb);
}

/* ---- quantize: absmax + scale + encode + pack, one pass -------------------------- */
/* A thread's V elements from e0 as 32-bit words: 16-byte loads, or element by element
   for the tail and unaligned arrays (zeros past n). */
template <typename T, int V>
__device__ __forceinline__ void qb_load(const typename T::storage* __restrict__ x, qb_i64 n,
                                        int vec_in, qb_i64 e0, qb_u32 (&w)[V / QbWords<T>::per_word]) {
    constexpr int PW = QbWords<T>::per_word;
    constexpr int NW = V / PW;
    if (vec_in && e0 + V <= n) {
        const uint4* src = reinterpret_cast<const uint4*>(x + e0);
#pragma unroll
        for (int q = 0; q < NW / 4; ++q) {
            const uint4 r = src[q];
            w[4 * q + 0] = r.x; w[4 * q + 1] = r.y; w[4 * q + 2] = r.z; w[4 * q + 3] = r.w;
        }
    } else {                                              /* tail / unaligned: zeros past n */
        const typename T::storage* xs = x + e0;
#pragma unroll
        for (int q = 0; q < NW; ++q) {
            qb_u32 acc = 0u;
#pragma unroll
            for (int h = 0; h < PW; ++h) {
                const qb_i64 e = e0 + q * PW + h;
                qb_u32 bits = 0u;
                if (e < n) {
                    if constexpr (PW == 1) bits = __float_as_uint(qb_to_f32<T>(xs[q * PW + h]));
                    else bits = (qb_u32)xs[q * PW + h];
                }
                acc |= bits << (16 * h);
            }
            w[q] = acc;
        }
    }
}

/* The G threads of one group meet at a barrier of their own (id 1 + group; 0 is
   __syncthreads), so the other groups of the CTA go on meanwhile.                     */
__device__ __forceinline__ void qb_group_sync(int group, int G) {
#ifdef __CUDA_ARCH__
    asm volatile("bar.sync %0, %1;" :: "r"(1 + group), "r"(G) : "memory");
#else   /* host emulation: every thread of the CTA reaches it at the same point */
    __syncthreads();
#endif
}

/* Each thread owns V consecutive elements (16-byte loads); a quantization block of
   B = 2^log2B elements is G = B / V consecutive threads.  G <= 32: xor-shuffles inside
   the warp; G > 32: the CTA size is a multiple of G and the warps of a group combine
   their maxima through shared memory.  Every thread takes part in the reductions
   (threads past n hold zeros) and leaves only after the last barrier.  The maximum is
   taken on the bits (QbAbsBits), the code table lives in shared memory.              */
template <typename T, int V, int PB, int S, bool IDENT, int LAYOUT>
__device__ __forceinline__ void qb_quantize_body(
    const qb_u32 (&w)[V / QbWords<T>::per_word], qb_u8* __restrict__ packed,
    float* __restrict__ absmax, qb_i64 n, int log2B, int K, qb_i64 e0,
    const qb_u8* s_bk, const float* s_b, const qb_u32* s_ord, qb_u32* s_red)
{   /* s_red: this tile's 16 slots (one a warp) of the two the tiles take in turn */
    constexpr int PW = QbWords<T>::per_word;
    constexpr int NW = V / PW;                            /* 32-bit words a thread loads */
    constexpr int CS = qb_code_shift(LAYOUT);
    const qb_u32 kmax = (qb_u32)(K - 1) << CS;

    qb_u32 m = QbAbsBits<T>::word(w[0]);
#pragma unroll
    for (int q = 1; q < NW; ++q) m = qb_umax<T>(m, QbAbsBits<T>::word(w[q]));
    m = QbAbsBits<T>::fold(m);

    const int G = (1 << log2B) / V;
    if (G <= 32) {
        for (int off = 1; off < G; off <<= 1) {
            const qb_u32 o = __shfl_xor_sync(0xffffffffu, m, off);
            m = m > o ? m : o;
        }
    } else {
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
            const qb_u32 o = __shfl_xor_sync(0xffffffffu, m, off);
            m = m > o ? m : o;
        }
        const int warp = threadIdx.x >> 5;
        const int wpg = G >> 5;
        const int g0 = (warp / wpg) * wpg;
        if ((threadIdx.x & 31) == 0) s_red[warp] = m;
        qb_group_sync(warp / wpg, G);
        m = s_red[g0];
        for (int q = 1; q < wpg; ++q) m = m > s_red[g0 + q] ? m : s_red[g0 + q];
    }
    if (e0 >= n) return;                                  /* no barrier after this */
    const float amax = QbAbsBits<T>::value(m);

    /* bnb: s = absmax.clamp(min=1e-38) (a float32 subnormal); full blocks multiply by
       float32(1/s), the partial last block divides by s; the clamp to [-1, 1] is in
       the encoder's table.  Stored absmax: absmax for full blocks, s for the partial
       last block (as bitsandbytes stores them).                                       */
    const float smin = __uint_as_float(QB_ABSMAX_MIN_BITS);
    const float sc = (amax > smin || amax != amax) ? amax : smin;   /* NaN stays NaN */
    const bool partial = (e0 >> log2B) == (n >> log2B);   /* only if n % B != 0 */
    if ((e0 & ((((qb_i64)1) << log2B) - 1)) == 0) absmax[e0 >> log2B] = partial ? sc : amax;
    const float inv = __fdiv_rn(1.0f, sc);

    float y[V];
    if (partial) {                                        /* rare: one block per call */
#pragma unroll
        for (int j = 0; j < V; ++j) y[j] = __fdiv_rn(QbWords<T>::get(w[j / PW], j % PW), sc);
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j) y[j] = __fmul_rn(QbWords<T>::get(w[j / PW], j % PW), inv);
    }
    /* Positions past n (the last, partial chunk, in the partial last block) hold +0.0, so
       y = 0 / s = +0 encodes to the code of 0.0, the pad code, when the maximum is finite;
       only a block with a NaN or Inf needs them set apart.                             */
    qb_u32 c[V];
    if (amax < __uint_as_float(0x7f800000u)) {            /* finite: y is never NaN */
#pragma unroll
        for (int j = 0; j < V; ++j) c[j] = qb_encode<S, IDENT, false, LAYOUT>(y[j], s_bk, s_b, s_ord, kmax);
    } else {                                              /* NaN / Inf in the block: rare */
#pragma unroll
        for (int j = 0; j < V; ++j) c[j] = qb_encode<S, IDENT, true, LAYOUT>(y[j], s_bk, s_b, s_ord, kmax);
        const int nvalid = (n - e0 >= V) ? V : (int)(n - e0);
        if (nvalid < V) {
            const qb_u32 zc = qb_encode<S, IDENT, false, LAYOUT>(0.0f, s_bk, s_b, s_ord, kmax);
#pragma unroll
            for (int j = 0; j < V; ++j)
                if (j >= nvalid) c[j] = zc;
        }
    }

    /* Little-endian 32-bit words of packed codes, the first code of a byte in its top
       bits: code j of a word goes to bit 8 * (j / CPB) + (CPB - 1 - j % CPB) * PB, and
       c = code << CS, so each lands with one shift-add (the codes do not overlap).       */
    constexpr int CPB = (PB == 8) ? 1 : 8 / PB;           /* codes per byte */
    constexpr int NB = V / CPB;                           /* output bytes per thread */
    constexpr int NO = (NB + 3) / 4;                      /* words (NB = 2: half of one) */
    qb_u32 ow[NO];
#pragma unroll
    for (int q = 0; q < NO; ++q) {
        qb_u32 acc = 0u;
#pragma unroll
        for (int j = 0; j < 4 * CPB; ++j) {
            if (q * 4 * CPB + j < V) {
                const int bit = 8 * (j / CPB) + (CPB - 1 - j % CPB) * PB;
                const qb_u32 cj = c[q * 4 * CPB + j];
                acc += (bit >= CS) ? (cj << (bit - CS)) : (cj >> (CS - bit));
            }
        }
        ow[q] = acc;
    }
    const qb_i64 o0 = e0 / CPB;
    const qb_i64 nbytes = (n + CPB - 1) / CPB;
    qb_u8* dst = packed + o0;
    if (o0 + NB <= nbytes) {
        if constexpr (NB == 2) {
            *reinterpret_cast<qb_u16*>(dst) = (qb_u16)ow[0];
        } else if constexpr (NB == 4) {
            *reinterpret_cast<qb_u32*>(dst) = ow[0];
        } else if constexpr (NB == 8) {
            *reinterpret_cast<uint2*>(dst) = make_uint2(ow[0], ow[1]);
        } else {
#pragma unroll
            for (int q = 0; q < NO / 4; ++q)
                reinterpret_cast<uint4*>(dst)[q] =
                    make_uint4(ow[4 * q], ow[4 * q + 1], ow[4 * q + 2], ow[4 * q + 3]);
        }
    } else {
        for (int i = 0; i < NB; ++i)
            if (o0 + i < nbytes) dst[i] = (qb_u8)(ow[i / 4] >> (8 * (i % 4)));
    }
}

/* A CTA quantizes tiles of blockDim * V elements, grid-stride (the grid is capped at what
   the GPU holds at once, or a few times that), so the 16 KB bucket table is read once per
   CTA, not once per tile.                                                             */
template <typename T, int V, int PB, int S, int LAYOUT>
__device__ __forceinline__ void qb_quantize(
    const typename T::storage* __restrict__ x, qb_u8* __restrict__ packed,
    float* __restrict__ absmax, qb_i64 n, int log2B, const qb_u8* __restrict__ bucket,
    const float* __restrict__ bounds, int nbounds, const int* __restrict__ order, int K,
    int ident, int vec_in)
{
    constexpr int NW = V / QbWords<T>::per_word;
    __shared__ __align__(16) qb_u8 s_bk[QB_BUCKET_BYTES];  /* either layout's table */
    __shared__ float s_b[QB_MAX_BOUNDS];
    __shared__ qb_u32 s_ord[QB_MAX_TABLE];
    __shared__ qb_u32 s_red[2 * 16];                      /* two tiles' slots, 16 warps each */
    for (int i = threadIdx.x; i < QB_BUCKET_BYTES / 16; i += blockDim.x)   /* 16-byte copies */
        reinterpret_cast<uint4*>(s_bk)[i] = reinterpret_cast<const uint4*>(bucket)[i];
    for (int i = threadIdx.x; i < nbounds; i += blockDim.x) s_b[i] = bounds[i];
    for (int i = threadIdx.x; i < QB_MAX_TABLE; i += blockDim.x) s_ord[i] = (qb_u32)order[i] << qb_code_shift(LAYOUT);
    const qb_i64 tile = (qb_i64)blockDim.x * V;
    const qb_i64 stride = (qb_i64)gridDim.x * tile;
    __syncthreads();
    /* Tiles take the two halves of s_red in turn, so one barrier a tile is enough: a warp
       writes a half again only two tiles later, after the barrier of the tile between,
       which every warp of its group passes after reading that half.                    */
    int half = 0;
    for (qb_i64 t0 = (qb_i64)blockIdx.x * tile; t0 < n; t0 += stride, half ^= 16) {
        const qb_i64 e0 = t0 + (qb_i64)threadIdx.x * V;
        qb_u32 w[NW];
        qb_load<T, V>(x, n, vec_in, e0, w);
        if (ident)   /* uniform: the code table is sorted (NF4, ...), no order lookup */
            qb_quantize_body<T, V, PB, S, true, LAYOUT>(w, packed, absmax, n, log2B, K, e0,
                                                s_bk, s_b, s_ord, s_red + half);
        else
            qb_quantize_body<T, V, PB, S, false, LAYOUT>(w, packed, absmax, n, log2B, K, e0,
                                                 s_bk, s_b, s_ord, s_red + half);
    }
}

/* ---- dequantize ------------------------------------------------------------------ */
/* Coalesced: a thread handles U consecutive outputs a step (one 16-byte store: 4 float32
   or 8 float16/bfloat16; 8 float32 for 1-bit codes, whose byte holds 8), and the threads
   of a warp hold consecutive units, so each warp-wide store writes one contiguous run (for
   float32 from 1-bit codes, by lanes trading halves of their bytes; see there).
   A CTA covers STEPS * blockDim units; the loads of all steps are issued before the
   first store.  U <= 8 <= B, so a unit lies in one quantization block: one absmax.   */
template <typename T> struct QbPack;     /* two float32 -> two outputs in one 32-bit word */
template <> struct QbPack<QbF32> {
    static __device__ __forceinline__ qb_u32 two(float lo, float hi) { return __float_as_uint(lo); }
};
template <> struct QbPack<QbF16> {
    static __device__ __forceinline__ qb_u32 two(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        qb_u32 r;   /* cvt.rn.f16x2.f32 d, a, b: a -> upper half, b -> lower half */
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
        return r;
#else
        return (qb_u32)qb_from_f32<QbF16>(lo) | ((qb_u32)qb_from_f32<QbF16>(hi) << 16);
#endif
    }
};
template <> struct QbPack<QbBF16> {
    static __device__ __forceinline__ qb_u32 two(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
        qb_u32 r;
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
        return r;
#else
        return (qb_u32)qb_from_f32<QbBF16>(lo) | ((qb_u32)qb_from_f32<QbBF16>(hi) << 16);
#endif
    }
};

template <typename T, int PB, int STEPS>
__device__ __forceinline__ void qb_dequantize(
    const qb_u8* __restrict__ packed, const float* __restrict__ absmax,
    typename T::storage* __restrict__ out, qb_i64 n, int log2B,
    const float* __restrict__ code, int K, int vec_in, int vec_out)
{
    typedef typename T::storage S;
    constexpr int CPB = (PB == 8) ? 1 : 8 / PB;            /* codes per byte */
    constexpr qb_u32 MASK = (PB == 8) ? 0xffu : ((1u << PB) - 1u);
    /* by byte: the CPB table values its codes index, in order (unused codes: NaN), so one
       shared load (8 or 16 bytes) serves a whole byte                                  */
    __shared__ __align__(16) float s_tv[256 * CPB];
    for (int i = threadIdx.x; i < 256 * CPB; i += blockDim.x) {
        const int idx = (i / CPB >> ((CPB - 1 - i % CPB) * PB)) & (int)MASK;
        s_tv[i] = (idx < K) ? code[idx] : __uint_as_float(0x7fc00000u);
    }
    __syncthreads();

    constexpr int E = 16 / (int)sizeof(S);                 /* outputs per 16-byte store */
    constexpr int U = (E > CPB) ? E : CPB;                 /* outputs per thread and step */
    constexpr int IB = U / CPB;                            /* input bytes per thread and step */
    const qb_i64 nbytes = (n + CPB - 1) / CPB;
    const qb_i64 u0 = (qb_i64)blockIdx.x * (STEPS * (qb_i64)blockDim.x) + threadIdx.x;
    const qb_i64 tile_end = (u0 - threadIdx.x + (qb_i64)STEPS * blockDim.x) * U;

    if (vec_in && vec_out && tile_end <= n) {              /* the whole CTA tile is inside */
        qb_u32 w[STEPS][(IB + 3) / 4];
        float a[STEPS];
#pragma unroll
        for (int q = 0; q < STEPS; ++q) {
            const qb_i64 e = (u0 + (qb_i64)q * blockDim.x) * U;
            const qb_u8* src = packed + e / CPB;
            if constexpr (IB == 1) w[q][0] = src[0];
            else if constexpr (IB == 2) w[q][0] = *reinterpret_cast<const qb_u16*>(src);
            else if constexpr (IB == 4) w[q][0] = *reinterpret_cast<const qb_u32*>(src);
            else {
                const uint2 r2 = *reinterpret_cast<const uint2*>(src);
                w[q][0] = r2.x; w[q][1] = r2.y;
            }
            a[q] = absmax[e >> log2B];
        }
        if constexpr (sizeof(S) == 4 && CPB == 8) {
            /* float32 from 1-bit codes: a byte is 8 outputs, two 16-byte stores.  So that each
               warp-wide store is one contiguous run, lane l stores half (l & 1) of the warp's
               bytes l / 2 and 16 + l / 2, each shuffled with its absmax from the lane that
               loaded it (the warp's loads stay one contiguous run too).                  */
            const int lane = threadIdx.x & 31;
#pragma unroll
            for (int q = 0; q < STEPS; ++q) {
                const qb_i64 e = (u0 - lane + (qb_i64)q * blockDim.x) * U;   /* the warp's first output */
#pragma unroll
                for (int v = 0; v < 2; ++v) {
                    const int src = 16 * v + (lane >> 1);
                    const qb_u32 byte = __shfl_sync(0xffffffffu, w[q][0], src);
                    const float am = __shfl_sync(0xffffffffu, a[q], src);
                    const float4 t4 = reinterpret_cast<const float4*>(s_tv)[byte * 2 + (lane & 1)];
                    reinterpret_cast<uint4*>(out + e + 16 * U * v)[lane] = make_uint4(
                        __float_as_uint(__fmul_rn(t4.x, am)), __float_as_uint(__fmul_rn(t4.y, am)),
                        __float_as_uint(__fmul_rn(t4.z, am)), __float_as_uint(__fmul_rn(t4.w, am)));
                }
            }
        } else {
#pragma unroll
            for (int q = 0; q < STEPS; ++q) {
                const qb_i64 e = (u0 + (qb_i64)q * blockDim.x) * U;
                float r[U];
#pragma unroll
                for (int i = 0; i < IB; ++i) {                 /* byte i holds values i*CPB.. */
                    const qb_u32 byte = (w[q][i / 4] >> (8 * (i % 4))) & 0xffu;
                    float t[CPB];
                    if constexpr (CPB == 1) {
                        t[0] = s_tv[byte];
                    } else if constexpr (CPB == 2) {
                        const float2 t2 = reinterpret_cast<const float2*>(s_tv)[byte];
                        t[0] = t2.x; t[1] = t2.y;
                    } else {
#pragma unroll
                        for (int v = 0; v < CPB / 4; ++v) {
                            const float4 t4 = reinterpret_cast<const float4*>(s_tv)[byte * (CPB / 4) + v];
                            t[4 * v] = t4.x; t[4 * v + 1] = t4.y; t[4 * v + 2] = t4.z; t[4 * v + 3] = t4.w;
                        }
                    }
#pragma unroll
                    for (int k = 0; k < CPB; ++k) r[i * CPB + k] = __fmul_rn(t[k], a[q]);
                }
                qb_u32 o[U * (int)sizeof(S) / 4];
#pragma unroll
                for (int i = 0; i < U; i += 2) {
                    if constexpr (sizeof(S) == 4) {
                        o[i] = __float_as_uint(r[i]);
                        o[i + 1] = __float_as_uint(r[i + 1]);
                    } else {
                        o[i / 2] = QbPack<T>::two(r[i], r[i + 1]);
                    }
                }
                uint4* dst = reinterpret_cast<uint4*>(out + e);
#pragma unroll
                for (int v = 0; v < U * (int)sizeof(S) / 16; ++v)
                    dst[v] = make_uint4(o[4 * v], o[4 * v + 1], o[4 * v + 2], o[4 * v + 3]);
            }
        }
        return;
    }
    /* the last tile, or unaligned arrays: element by element */
    for (int q = 0; q < STEPS; ++q) {
        const qb_i64 e0 = (u0 + (qb_i64)q * blockDim.x) * U;
        for (int j = 0; j < U; ++j) {
            const qb_i64 e = e0 + j;
            if (e >= n) break;
            const qb_i64 o = e / CPB;
            const qb_u32 byte = (o < nbytes) ? (qb_u32)packed[o] : 0u;
            out[e] = qb_from_f32<T>(__fmul_rn(s_tv[byte * CPB + (int)(e % CPB)], absmax[e >> log2B]));
        }
    }
}
"""


def _min_ctas(vec: int) -> int:
    """The register budget, as ``__launch_bounds__(512, N)``: N = 3 -> 40 registers, 2 -> 64.  32
    values a thread need 64 (at 40 they spill); 16 fit in 40 (NVRTC 13, sm_90)."""
    return 2 if vec > 16 else 3


def _quantize_wrapper(dtype: str, vec: int, packing: int, search: str) -> str:
    t = _TYPE[dtype]
    steps, layout = _searches(packing)[search]
    return (
        f'extern "C" __global__ void __launch_bounds__(512, {_min_ctas(vec)}) '
        f'{quantize_name(dtype, vec, packing, search)}(\n'
        f"    const {t}::storage* x, qb_u8* packed, float* absmax, qb_i64 n, int log2B,\n"
        f"    const qb_u8* bucket, const float* bounds, int nbounds, const int* order, int K,\n"
        f"    int ident, int vec_in) {{\n"
        f"  qb_quantize<{t}, {vec}, {packing}, {steps}, {layout}>"
        f"(x, packed, absmax, n, log2B, bucket, bounds, nbounds, order, K, ident, vec_in);\n}}\n"
    )


def _dequantize_wrapper(dtype: str, packing: int) -> str:
    t = _TYPE[dtype]
    return (
        f'extern "C" __global__ void __launch_bounds__({DEQ_CTA}) {dequantize_name(dtype, packing)}(\n'
        f"    const qb_u8* packed, const float* absmax, {t}::storage* out, qb_i64 n, int log2B,\n"
        f"    const float* code, int K, int vec_in, int vec_out) {{\n"
        f"  qb_dequantize<{t}, {packing}, {dequantize_steps(dtype, packing)}>"
        f"(packed, absmax, out, n, log2B, code, K, vec_in, vec_out);\n}}\n"
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


_SANITIZE = r"""
/* ---- allow_nonfinite's input (quantbook.bulk.format.sanitize_nonfinite), on the bits ---- */
/* U holds a value's bits; SIGN is its sign bit, INF the bits of +inf.  The bits below the
   sign are the magnitude, ordered as the values: below INF finite, INF infinite, above NaN.
   G = min(B, 32) threads a block (B = 2^log2B); every thread runs the same shuffles, so
   none returns early.                                                                     */
template <typename U, qb_u32 SIGN, qb_u32 INF>
__device__ __forceinline__ void qb_sanitize(const U* __restrict__ x, U* __restrict__ out, qb_i64 n,
                                            int log2B) {
    const int log2G = log2B < 5 ? log2B : 5;
    const int G = 1 << log2G;
    const qb_i64 t = (qb_i64)blockIdx.x * blockDim.x + threadIdx.x;
    const qb_i64 e0 = (t >> log2G) << log2B;
    const qb_i64 e1 = (e0 + ((qb_i64)1 << log2B) < n) ? e0 + ((qb_i64)1 << log2B) : n;
    const qb_i64 first = e0 + (t & (G - 1));
    qb_u32 m = 0u;
    for (qb_i64 e = first; e < e1; e += G) {
        const qb_u32 a = (qb_u32)x[e] & (SIGN - 1u);
        if (a < INF && a > m) m = a;
    }
    for (int off = 1; off < G; off <<= 1) {
        const qb_u32 o = __shfl_xor_sync(0xffffffffu, m, off);
        m = o > m ? o : m;
    }
    for (qb_i64 e = first; e < e1; e += G) {
        const qb_u32 v = x[e], a = v & (SIGN - 1u);
        out[e] = (U)(a < INF ? v : (a == INF ? (v & SIGN) | m : 0u));
    }
}
"""


def _sanitize_wrapper(dtype: str) -> str:
    u = "qb_u32" if dtype == "f32" else "qb_u16"
    sign, inf = SIGN_INF_BITS[DTYPE_NAMES[dtype]]
    return (
        f'extern "C" __global__ void __launch_bounds__({SANITIZE_CTA}) {sanitize_name(dtype)}(\n'
        f"    const {u}* x, {u}* out, qb_i64 n, int log2B) {{\n"
        f"  qb_sanitize<{u}, {sign:#x}u, {inf:#x}u>(x, out, n, log2B);\n}}\n"
    )


_ERRORS = r"""
/* ---- error sums (quantbook.bulk.sums): a thread a run of QB_SUM_CHUNK values, serially ---- */
/* A CTA's QB_SUMS_CTA runs lie QB_SUM_CHUNK values apart, so a thread reading its own run
   would touch a sector a lane each request.  They go through shared memory instead, a slab
   at a time: QB_SUM_SLAB words (64 bytes) of every run, loaded 16 bytes a lane (a warp
   instruction: the slabs of 8 runs, 16 whole sectors); after a barrier each thread adds up
   its own run's slab, in order, so each run's sum is the serial one.  A row is padded to an
   odd number of words, so the threads of a warp reading word j of their rows hit 32 banks;
   a warp's load puts its 8 rows at r..r+3 and r+16..r+19 (r a multiple of 4), so its 32
   stores of one word hit 32 banks too.                                                    */
#define QB_SUM_SLAB 16
#define QB_SUM_ROW (QB_SUM_SLAB + 1)
/* a thread a run and row: launched with blockDim.x == QB_SUMS_CTA, whole warps of rows */
static_assert(QB_SUMS_CTA % 32 == 0, "the load's row order needs whole warps");
template <typename T>
__device__ __forceinline__ void qb_error_chunks(const typename T::storage* __restrict__ x,
                                                const typename T::storage* __restrict__ xh, int has_xh,
                                                double* __restrict__ out, qb_i64 n, qb_i64 runs, int vec_in) {
    constexpr int PW = QbWords<T>::per_word;
    constexpr int SV = QB_SUM_SLAB * PW;                  /* values of a run a slab */
    __shared__ qb_u32 s_x[QB_SUMS_CTA * QB_SUM_ROW];
    __shared__ qb_u32 s_h[QB_SUMS_CTA * QB_SUM_ROW];
    const qb_i64 tiles = (runs + QB_SUMS_CTA - 1) / QB_SUMS_CTA;
    for (qb_i64 tile = blockIdx.x; tile < tiles; tile += gridDim.x) {   /* uniform: barriers inside */
        const qb_i64 c = tile * QB_SUMS_CTA + threadIdx.x;
        const qb_i64 end = (c + 1) * QB_SUM_CHUNK < n ? (c + 1) * QB_SUM_CHUNK : n;
        double s2 = 0.0, s1 = 0.0;
        for (int j0 = 0; j0 < QB_SUM_CHUNK; j0 += SV) {
#pragma unroll
            for (int k = 0; k < QB_SUM_SLAB / 4; ++k) {       /* the slab's 16-byte pieces */
                const int i = k * QB_SUMS_CTA + (int)threadIdx.x, q = i & 3, a = (i >> 2) & 7, g = i >> 5;
                const int r = (g & ~3) * 8 + (g & 3) * 4 + (a & 3) + (a >> 2) * 16;
                const qb_i64 e = (tile * QB_SUMS_CTA + r) * QB_SUM_CHUNK + j0 + q * 4 * PW;
                qb_u32 w[4];
                qb_load<T, 4 * PW>(x, n, vec_in, e, w);       /* zeros past n: every word written */
#pragma unroll
                for (int m = 0; m < 4; ++m) s_x[r * QB_SUM_ROW + 4 * q + m] = w[m];
                if (has_xh) {
                    qb_load<T, 4 * PW>(xh, n, vec_in, e, w);
#pragma unroll
                    for (int m = 0; m < 4; ++m) s_h[r * QB_SUM_ROW + 4 * q + m] = w[m];
                }
            }
            __syncthreads();
            const qb_i64 left = end - (c * QB_SUM_CHUNK + j0);   /* values of the run in this slab */
            const qb_u32* rx = s_x + threadIdx.x * QB_SUM_ROW;
            const qb_u32* rh = s_h + threadIdx.x * QB_SUM_ROW;
#pragma unroll
            for (int j = 0; j < QB_SUM_SLAB; ++j) {
                const qb_u32 xw = rx[j], hw = has_xh ? rh[j] : 0u;
#pragma unroll
                for (int h = 0; h < PW; ++h) {
                    if (j * PW + h < left) {
                        const double v = (double)QbWords<T>::get(xw, h);
                        const double e = has_xh ? __dsub_rn((double)QbWords<T>::get(hw, h), v) : -v;
                        s2 = __dadd_rn(s2, __dmul_rn(e, e));
                        s1 = __dadd_rn(s1, fabs(e));
                    }
                }
            }
            __syncthreads();                                  /* before the next slab overwrites */
        }
        if (c < runs) {
            out[c] = s2;
            out[runs + c] = s1;
        }
    }
}
"""


def _errors_wrapper(dtype: str) -> str:
    t = _TYPE[dtype]
    return (
        f'extern "C" __global__ void __launch_bounds__({SUMS_CTA}) {error_chunks_name(dtype)}(\n'
        f"    const {t}::storage* x, const {t}::storage* xh, int has_xh, double* out, qb_i64 n,"
        f" qb_i64 runs, int vec_in) {{\n"
        f"  qb_error_chunks<{t}>(x, xh, has_xh, out, n, runs, vec_in);\n}}\n"
    )


def source(names: list[str] | tuple[str, ...] | None = None) -> str:
    """CUDA source holding the kernels ``names`` (default: every kernel)."""
    wanted = set(all_kernel_names() if names is None else names)
    unknown = wanted - set(all_kernel_names())
    if unknown:
        raise ValueError(f"unknown kernel name(s): {sorted(unknown)}")
    # the encoder tables' layout, from the one place that builds them
    layouts = "".join(f"#define QB_{name.upper()} {i}\n" for i, name in enumerate(LAYOUTS))
    parts = [f"#define QB_BUCKET_SHIFT {BUCKET_SHIFT}\n#define QB_FINE_SHIFT {FINE_SHIFT}\n"
             f"#define QB_FINE_LOW {FINE_LOW}u\n#define QB_WORD_SHIFT {WORD_SHIFT}\n"
             f"#define QB_WORD_LOW {WORD_LOW}u\n#define QB_BUCKET_BYTES {BUCKET_BYTES}\n{layouts}"
             f"#define QB_SUM_CHUNK {SUM_CHUNK}\n#define QB_SUMS_CTA {SUMS_CTA}\n", _COMMON]
    for d in DTYPES:
        for p in PACKINGS:
            for v in quantize_vecs(d, p):
                for k in searches(p):
                    if quantize_name(d, v, p, k) in wanted:
                        parts.append(_quantize_wrapper(d, v, p, k))
            if dequantize_name(d, p) in wanted:
                parts.append(_dequantize_wrapper(d, p))
    if wanted & {NESTED_QUANT_NAME, NESTED_DEQUANT_NAME}:
        parts.append(_NESTED)
    sanitize = [_sanitize_wrapper(d) for d in DTYPES if sanitize_name(d) in wanted]
    if sanitize:
        parts += [_SANITIZE, *sanitize]
    errors = [_errors_wrapper(d) for d in DTYPES if error_chunks_name(d) in wanted]
    if errors:
        parts += [_ERRORS, *errors]
    return "\n".join(parts)
