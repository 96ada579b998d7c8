"""CUDA C source of the scaled-layout kernels (NVFP4, MXFP4, float16/bfloat16 block scales;
quantbook/bulk/layouts.py, docs/scales.md), and their names.

Same conventions as :mod:`.kernels`, whose common part (``kernels.source(())``: 16-bit
storage types, the exact PTX conversions ``qb_to_f32`` / ``qb_from_f32``, ``QbWords``) is
prepended: header-free,
explicit round-to-nearest float32 intrinsics, compiled with ``NVRTC_OPTIONS`` (no FMA
contraction, no flush-to-zero), so each value is the numpy reference's bit for bit.

Work split: a *chunk* is 8 consecutive elements, i.e. 4 packed bytes (a power-of-two block
size >= 16 holds whole chunks).  An amax or encode thread takes 128 bytes of input (4 or 8
chunks; 6 for the general encoder of 16-bit input, :func:`encode_chunks`), a decode thread
32 outputs in 16-byte stores (:func:`elements_per_thread`), the
steps strided by the CTA size so that each load / store instruction of a warp covers
consecutive memory; a thread issues all its loads (data and per-block values) before
computing, as the kernels are bound by memory latency.  Vector accesses (16-byte input,
4-byte packed, 16-byte output) need aligned pointers and a power-of-two block size
(``vec``); otherwise a scalar kernel path handles any even block size and any alignment.

Kernels (``extern "C"``, one per dtype ``f32`` / ``f16`` / ``bf16``):

* ``qbs_amax_<dt>`` — per block the largest magnitude, as float32 bits: an unsigned max of
  ``bits(|x|)`` (ordered as the values for non-negative floats; NaN/Inf give bits
  ``>= 0x7f800000``, stored as the NaN 0x7fc00000, which is above every finite value).  Up
  to 32 chunks a block reduce with warp shuffles and one lane stores; larger blocks (> 256
  elements) use ``atomicMax`` into a zeroed output.
* ``qbs_steps`` — a deterministic rule's step of each block (:mod:`quantbook.scales.steps`), a
  thread a block: the last step whose start is at most the block maximum's bits, searched
  between the steps of its bucket and the next one's (the cpu backend's ``step_index``); the
  step's stored value (its 1 or 2 bytes), its factor and, when asked, its decoded scale are
  written, and a block on a step the rule refuses sets a flag.
* ``qbs_encode_<dt>``, ``qbs_encode_sym_<dt>`` — ``y = x * f[block]`` (or ``x / f``), the
  layout's encoder, two codes a byte, the first in the low nibble, the pad code after the
  last element.  The encoder is a count
  ``rank = #{k : t[k] < y}`` over 16 sorted thresholds (branchless binary search in
  registers): ``t[k]`` is the midpoint ``mids[k]``, or the float just below it where a tie
  goes up (``y >= m`` is ``y > pred(m)`` for every float32 ``y``), padded with +inf.  The
  code of a rank comes from 16 nibbles; only the rank of ``0`` can have a second code, for
  ``y`` with the sign bit (E2M1's -0).  NaN takes the rank numpy's searchsorted gives it.
  A sign-symmetric table in E2M1's code layout (``sym``: code = magnitude rank | sign << 3)
  is searched by ``|y|`` over 8 magnitude thresholds, with no lookup: half the comparisons,
  in a kernel of its own (``qbs_encode_sym_<dt>``: fewer registers, more CTAs an SM).
  The vector path multiplies; a division (when the host could not make it an exact
  multiplication) takes the scalar path, which keeps the compiled code small.
* ``qbs_decode_<dt>`` — ``out = T(float32(table[code] * scale[block]))``, the 16-entry
  NaN-padded table in shared memory; ``scale[block]`` is a float32 array (``sbytes`` 4) or
  ``lut[stored[block]]``, the stored values' bits (``sbytes`` 1 or 2) looked up in the
  rule's decode table.  The vector path needs packed 2- (float32 output) or 4-byte
  aligned, the output 16-byte aligned.
* ``qbs_errors_<dt>`` — a scale-search candidate's block errors (``block_errors`` of
  :mod:`quantbook.scales.search`), a thread a block: encode, decode, float64 sum in element
  order; the per-block sums are all that the host needs to pick.  A block of whole chunks
  in an aligned array is read in 16-byte loads (``vec``), else value by value.
* ``qbs_ggml_<dt>`` — ggml's IQ4_NL search (:mod:`quantbook.scales.ggml`), a thread a
  block: the float32 scale of each block and its packed codes, every step in ggml's order
  with the ``_rn`` intrinsics.
"""

from __future__ import annotations

from typing import Callable

from . import kernels as K

__all__ = ["DTYPES", "CHUNK", "CTA", "GGML_CTA", "ENCODE_CTAS", "STEPS_NAME", "elements_per_thread",
           "encode_chunks", "amax_name", "encode_name", "decode_name", "errors_name", "ggml_name",
           "all_kernel_names", "source"]

DTYPES = ("f32", "f16", "bf16")
#: elements a chunk (4 packed bytes)
CHUNK = 8
#: threads a CTA
CTA = 256
#: threads a CTA of the kernels that give a thread a block (errors, ggml search)
GGML_CTA = 128

_TYPE = {"f32": "QbF32", "f16": "QbF16", "bf16": "QbBF16"}


def elements_per_thread(kind: str, dtype: str, sym: bool = False) -> int:
    """Elements a thread of the ``kind`` (amax, encode, decode) vector kernel for ``dtype``
    (``sym``: the symmetric encoder): amax and encode read 128 bytes a thread (4 or 8
    chunks), but the general encoder of 16-bit input 96 (:func:`encode_chunks`); decode
    writes 32 values."""
    if kind == "decode":
        return 32
    if kind == "encode":
        return CHUNK * encode_chunks(dtype, sym)
    return CHUNK * (4 if dtype == "f32" else 8)


def encode_chunks(dtype: str, sym: bool) -> int:
    """Chunks a thread of an encode kernel: 128 bytes of input, except for the general
    encoder of 16-bit input, whose 6 chunks (96 bytes) leave it the registers of 3 CTAs an SM
    (:data:`ENCODE_CTAS`) without spilling; 8 would need 105 registers, 2 CTAs."""
    if dtype == "f32":
        return 4
    return 8 if sym else 6


def amax_name(dtype: str) -> str:
    """The block-maximum kernel for ``dtype``."""
    return f"qbs_amax_{dtype}"


def encode_name(dtype: str, sym: bool = False) -> str:
    """The encoder for ``dtype``: the general one, or with ``sym`` the sign-symmetric one."""
    return f"qbs_encode_sym_{dtype}" if sym else f"qbs_encode_{dtype}"


#: CTAs an SM holds of each encode kernel (its launch bounds' minimum): 3 of 256 threads leave
#: 80 registers a thread, which every encoder fits without spilling (ptxas, sm_90) with its
#: :func:`encode_chunks`
ENCODE_CTAS = 3


def decode_name(dtype: str) -> str:
    """The decoder for ``dtype``."""
    return f"qbs_decode_{dtype}"


def errors_name(dtype: str) -> str:
    """The scale-search candidates' block-errors kernel for ``dtype``."""
    return f"qbs_errors_{dtype}"


def ggml_name(dtype: str) -> str:
    """ggml's IQ4_NL scale search for ``dtype``."""
    return f"qbs_ggml_{dtype}"


#: the step-table lookup (one kernel for every dtype: it reads float32 block maxima)
STEPS_NAME = "qbs_steps"


def all_kernel_names() -> list[str]:
    """Every kernel of the scaled layouts, as the source defines them."""
    per_dtype: tuple[Callable[[str], str], ...] = (amax_name, encode_name, decode_name, errors_name, ggml_name)
    return [f(d) for f in per_dtype for d in DTYPES] \
        + [encode_name(d, True) for d in DTYPES] + [STEPS_NAME]


_SCALED = r"""
#define QBS_CE 8          /* elements a chunk = 4 packed bytes */
#define QBS_NONFINITE 0x7f800000u
#define QBS_NAN 0x7fc00000u

/* the 8 elements of a chunk, from 16-byte loads (x + e0 16-byte aligned) */
template <typename T> struct QbsRaw {
    static const int NW = QBS_CE / QbWords<T>::per_word;     /* 32-bit words: 8 or 4 */
    qb_u32 w[NW];
    __device__ __forceinline__ void load(const typename T::storage* __restrict__ x, qb_i64 e0) {
        const uint4* src = reinterpret_cast<const uint4*>(x + e0);
#pragma unroll
        for (int q = 0; q < NW / 4; ++q) {
            const uint4 r = src[q];
            w[4 * q + 0] = r.x; w[4 * q + 1] = r.y; w[4 * q + 2] = r.z; w[4 * q + 3] = r.w;
        }
    }
    __device__ __forceinline__ float get(int j) const {
        return QbWords<T>::get(w[j / QbWords<T>::per_word], j % QbWords<T>::per_word);
    }
};

/* the chunk's words: a vector load when whole, else element by element (zero bits past n) */
template <typename T>
__device__ __forceinline__ void qbs_load_chunk(const typename T::storage* __restrict__ x,
                                               qb_i64 e0, qb_i64 n, QbsRaw<T>& r) {
    if (e0 + QBS_CE <= n) {
        r.load(x, e0);
    } else {
        constexpr int PW = QbWords<T>::per_word;
#pragma unroll
        for (int k = 0; k < QbsRaw<T>::NW; ++k) {
            qb_u32 acc = 0u;
#pragma unroll
            for (int h = 0; h < PW; ++h) {
                const qb_i64 e = e0 + k * PW + h;
                if (e < n) {
                    if constexpr (PW == 1) acc = __float_as_uint(qb_to_f32<T>(x[e]));
                    else acc |= ((qb_u32)x[e]) << (16 * h);
                }
            }
            r.w[k] = acc;
        }
    }
}

/* chunks a thread for amax: 128 bytes of input in flight (latency, not arithmetic, limits
   this kernel); encode's are a template argument (encode_chunks) */
template <typename T> struct QbsCh { static const int v = 4 * QbWords<T>::per_word; };

/* ---- block maxima ------------------------------------------------------------------ */
template <typename T>
__device__ __forceinline__ void qbs_amax(const typename T::storage* __restrict__ x,
                                         qb_u32* __restrict__ out, qb_i64 n, int B, int log2B,
                                         int vec) {
    if (vec) {                       /* B = 2^log2B >= 8: G = B / 8 chunks a block */
        const int lg = log2B - 3;
        const int gw = lg >= 5 ? 32 : (1 << lg);           /* lanes reduced together */
        constexpr int CH = QbsCh<T>::v;
        QbsRaw<T> raw[CH];
#pragma unroll
        for (int q = 0; q < CH; ++q) {
            const qb_i64 c = ((qb_i64)blockIdx.x * CH + q) * blockDim.x + threadIdx.x;
            qbs_load_chunk<T>(x, c * QBS_CE, n, raw[q]);
        }
#pragma unroll
        for (int q = 0; q < CH; ++q) {
            const qb_i64 e0 = (((qb_i64)blockIdx.x * CH + q) * blockDim.x + threadIdx.x) * QBS_CE;
            qb_u32 m = 0u;
#pragma unroll
            for (int j = 0; j < QBS_CE; ++j) {
                const qb_u32 a = __float_as_uint(raw[q].get(j)) & 0x7fffffffu;
                m = a > m ? a : m;
            }
            for (int off = 1; off < gw; off <<= 1) {           /* every thread takes part */
                const qb_u32 o = __shfl_xor_sync(0xffffffffu, m, off);
                m = o > m ? o : m;
            }
            m = (m >= QBS_NONFINITE) ? QBS_NAN : m;            /* NaN >= every finite */
            if ((threadIdx.x & (gw - 1)) == 0 && e0 < n) {
                if (lg <= 5) out[e0 >> log2B] = m;              /* the group is the block */
                else atomicMax(out + (e0 >> log2B), m);         /* output zeroed by the host */
            }
        }
    } else {                         /* any even B, any alignment: a thread a block */
        const qb_i64 b = (qb_i64)blockIdx.x * blockDim.x + threadIdx.x;
        const qb_i64 e0 = b * (qb_i64)B;
        if (e0 >= n) return;
        const qb_i64 e1 = (e0 + B < n) ? e0 + B : n;
        qb_u32 m = 0u;
        for (qb_i64 e = e0; e < e1; ++e) {
            const qb_u32 a = __float_as_uint(qb_to_f32<T>(x[e])) & 0x7fffffffu;
            m = a > m ? a : m;
        }
        out[b] = (m >= QBS_NONFINITE) ? QBS_NAN : m;
    }
}

/* ---- encoder ----------------------------------------------------------------------- */
struct QbsEnc {
    float t[16];         /* sorted thresholds (module docstring), +inf padded */
    qb_u32 lo, hi;       /* code of rank r: nibble r & 7 of (r < 8 ? lo : hi) */
    int j0;              /* the rank whose code depends on the sign bit (-1: none) */
    qb_u32 neg0;         /* its code for y with the sign bit */
    int rnan;            /* rank of NaN */
};

/* a sign-symmetric table with E2M1's code layout (code = magnitude rank | sign << 3):
   rank of |y| over 8 magnitude thresholds t[0..7] (t[7] = +inf); NaN gets neg0 */
__device__ __forceinline__ qb_u32 qbs_code_sym(float y, const QbsEnc& E) {
    const float a = fabsf(y);        /* folds into the comparisons */
    const bool c4 = E.t[3] < a;
    const bool c2 = (c4 ? E.t[5] : E.t[1]) < a;
    const bool c1 = (c4 ? (c2 ? E.t[6] : E.t[4]) : (c2 ? E.t[2] : E.t[0])) < a;
    const qb_u32 code = (c4 ? 4u : 0u) | (c2 ? 2u : 0u) | (c1 ? 1u : 0u)
                      | ((__float_as_uint(y) >> 28) & 8u);
    return (a != a) ? E.neg0 : code;
}

template <bool SYM>
__device__ __forceinline__ qb_u32 qbs_code_any(float y, const QbsEnc& E);

__device__ __forceinline__ qb_u32 qbs_code(float y, const QbsEnc& E) {
    /* rank = #{k : t[k] < y}: binary search over t[0..15] (t[15] = +inf), the pivots
       picked by selects so the thresholds stay in registers */
    const bool c8 = E.t[7] < y;
    const bool c4 = (c8 ? E.t[11] : E.t[3]) < y;
    const float p1a = c4 ? E.t[5] : E.t[1];
    const float p1b = c4 ? E.t[13] : E.t[9];
    const bool c2 = (c8 ? p1b : p1a) < y;
    const float q0 = c2 ? E.t[2] : E.t[0];
    const float q1 = c2 ? E.t[6] : E.t[4];
    const float q2 = c2 ? E.t[10] : E.t[8];
    const float q3 = c2 ? E.t[14] : E.t[12];
    const bool c1 = (c8 ? (c4 ? q3 : q2) : (c4 ? q1 : q0)) < y;
    int r = (c8 ? 8 : 0) | (c4 ? 4 : 0) | (c2 ? 2 : 0) | (c1 ? 1 : 0);
    if (y != y) r = E.rnan;
    qb_u32 code = (((r & 8) ? E.hi : E.lo) >> ((r & 7) << 2)) & 15u;
    if (r == E.j0 && (__float_as_uint(y) >> 31)) code = E.neg0;
    return code;
}

template <> __device__ __forceinline__ qb_u32 qbs_code_any<false>(float y, const QbsEnc& E) {
    return qbs_code(y, E);
}
template <> __device__ __forceinline__ qb_u32 qbs_code_any<true>(float y, const QbsEnc& E) {
    return qbs_code_sym(y, E);
}

__device__ __forceinline__ float qbs_scale(float v, float f, int divide) {
    return divide ? __fdiv_rn(v, f) : __fmul_rn(v, f);
}

template <typename T, bool SYM, int CH>
__device__ __forceinline__ void qbs_encode_body(const typename T::storage* __restrict__ x,
                                           const float* __restrict__ factor,
                                           qb_u8* __restrict__ packed, qb_i64 n, int B, int log2B,
                                           int divide, int vec, qb_u32 pad, const QbsEnc& E) {
    const qb_i64 nbytes = (n + 1) >> 1;
    if (vec) {                       /* B = 2^log2B >= 8; a multiplication (the host's choice) */
        QbsRaw<T> raw[CH];           /* raw words: fewer registers than floats */
        float fq[CH];                /* loaded with the data: one memory round trip */
#pragma unroll
        for (int q = 0; q < CH; ++q) {
            const qb_i64 c = ((qb_i64)blockIdx.x * CH + q) * blockDim.x + threadIdx.x;
            if (c * QBS_CE < n) {
                qbs_load_chunk<T>(x, c * QBS_CE, n, raw[q]);
                fq[q] = factor[(c * QBS_CE) >> log2B];
            }
        }
#pragma unroll
        for (int q = 0; q < CH; ++q) {
            const qb_i64 c = ((qb_i64)blockIdx.x * CH + q) * blockDim.x + threadIdx.x;
            const qb_i64 e0 = c * QBS_CE;
            if (e0 >= n) continue;
            const float f = fq[q];
            qb_u32 w = 0u;
            if (e0 + QBS_CE <= n) {
#pragma unroll
                for (int j = 0; j < QBS_CE; ++j)
                    w |= qbs_code_any<SYM>(__fmul_rn(raw[q].get(j), f), E) << (4 * j);
                *reinterpret_cast<qb_u32*>(packed + 4 * c) = w;
            } else {                 /* the last chunk: pad codes, only bytes < nbytes */
                for (int j = 0; j < QBS_CE; ++j)
                    w |= ((e0 + j < n) ? qbs_code_any<SYM>(__fmul_rn(raw[q].get(j), f), E) : pad) << (4 * j);
                for (int k = 0; k < 4; ++k)
                    if (4 * c + k < nbytes) packed[4 * c + k] = (qb_u8)(w >> (8 * k));
            }
        }
    } else {                         /* any even B, any alignment, a division: a byte a thread */
        const qb_i64 o = (qb_i64)blockIdx.x * blockDim.x + threadIdx.x;
        if (o >= nbytes) return;
        const qb_i64 e = 2 * o;      /* B is even: e and e + 1 share a block */
        const float f = factor[e / B];
        const qb_u32 lo = qbs_code_any<SYM>(qbs_scale(qb_to_f32<T>(x[e]), f, divide), E);
        const qb_u32 hi = (e + 1 < n) ? qbs_code_any<SYM>(qbs_scale(qb_to_f32<T>(x[e + 1]), f, divide), E) : pad;
        packed[o] = (qb_u8)(lo | (hi << 4));
    }
}

/* ---- decode ------------------------------------------------------------------------ */
/* Block b's scale: a float32 per block (sbytes 4), or the stored value's bits looked up in
   the rule's decode table (sbytes 1 or 2), so no per-block float array is written and read
   back.  sbytes is the same for the whole grid: the branch costs no divergence. */
__device__ __forceinline__ float qbs_block_scale(const void* __restrict__ scale,
                                                 const float* __restrict__ lut, int sbytes,
                                                 qb_i64 b) {
    if (sbytes == 1) return lut[static_cast<const qb_u8*>(scale)[b]];
    if (sbytes == 2) return lut[static_cast<const qb_u16*>(scale)[b]];
    return static_cast<const float*>(scale)[b];
}

/* A step of a thread is one 16-byte store: DE = 16 / sizeof(S) outputs (4 float32, 8 16-bit)
   from DE / 2 packed bytes; QBS_DEC_EPT outputs a thread, the steps strided by the CTA so
   each store instruction of a warp writes 512 consecutive bytes. */
#define QBS_DEC_EPT 32
template <typename T>
__device__ __forceinline__ void qbs_decode(const qb_u8* __restrict__ packed,
                                           const void* __restrict__ scale,
                                           const float* __restrict__ lut, int sbytes,
                                           const float* __restrict__ table,
                                           typename T::storage* __restrict__ out, qb_i64 n, int B,
                                           int log2B, int vec) {
    typedef typename T::storage S;
    __shared__ float s_t[16];
    if (threadIdx.x < 16) s_t[threadIdx.x] = table[threadIdx.x];   /* NaN-padded by the host */
    __syncthreads();
    const qb_i64 nbytes = (n + 1) >> 1;
    if (vec) {                       /* B = 2^log2B >= 8; packed DB-, out 16-byte aligned */
        constexpr int DE = 16 / (int)sizeof(S);
        constexpr int DB = DE / 2;
        constexpr int CH = QBS_DEC_EPT / DE;
        qb_u32 w[CH];
        float sq[CH];                /* loaded with the codes: one memory round trip */
#pragma unroll
        for (int q = 0; q < CH; ++q) {
            const qb_i64 c = ((qb_i64)blockIdx.x * CH + q) * blockDim.x + threadIdx.x;
            sq[q] = (c * DE < n) ? qbs_block_scale(scale, lut, sbytes, (c * DE) >> log2B) : 0.0f;
            w[q] = 0u;
            if (DB * c + DB <= nbytes) {
                if constexpr (DB == 4) w[q] = *reinterpret_cast<const qb_u32*>(packed + 4 * c);
                else w[q] = *reinterpret_cast<const qb_u16*>(packed + 2 * c);
            } else {
                for (int k = 0; k < DB; ++k)
                    if (DB * c + k < nbytes) w[q] |= ((qb_u32)packed[DB * c + k]) << (8 * k);
            }
        }
#pragma unroll
        for (int q = 0; q < CH; ++q) {
            const qb_i64 c = ((qb_i64)blockIdx.x * CH + q) * blockDim.x + threadIdx.x;
            const qb_i64 e0 = c * DE;
            if (e0 >= n) continue;
            float r[DE];
#pragma unroll
            for (int j = 0; j < DE; ++j) r[j] = __fmul_rn(s_t[(w[q] >> (4 * j)) & 15u], sq[q]);
            if (e0 + DE <= n) {
                qb_u32 ww[4];
#pragma unroll
                for (int k = 0; k < 4; ++k) {
                    if constexpr (sizeof(S) == 4) {
                        ww[k] = __float_as_uint(r[k]);
                    } else {
                        ww[k] = ((qb_u32)qb_from_f32<T>(r[2 * k]) & 0xffffu)
                              | ((qb_u32)qb_from_f32<T>(r[2 * k + 1]) << 16);
                    }
                }
                *reinterpret_cast<uint4*>(out + e0) = make_uint4(ww[0], ww[1], ww[2], ww[3]);
            } else {
                for (int j = 0; j < DE; ++j)
                    if (e0 + j < n) out[e0 + j] = qb_from_f32<T>(r[j]);
            }
        }
    } else {                         /* any even B, any alignment: a byte a thread */
        const qb_i64 o = (qb_i64)blockIdx.x * blockDim.x + threadIdx.x;
        if (o >= nbytes) return;
        const qb_i64 e = 2 * o;
        const float s = qbs_block_scale(scale, lut, sbytes, e / B);
        const qb_u32 p = packed[o];
        out[e] = qb_from_f32<T>(__fmul_rn(s_t[p & 15u], s));
        if (e + 1 < n) out[e + 1] = qb_from_f32<T>(__fmul_rn(s_t[p >> 4], s));
    }
}

/* ---- a search candidate's block errors (quantbook/scales/search.py: block_errors) --------- */
/* acc + the error of one value */
template <bool SYM>
__device__ __forceinline__ double qbs_add_error(double acc, float xv, float f, float s, const float* s_t,
                                                int divide, int l1, const QbsEnc& E) {
    const float dq = __fmul_rn(s_t[qbs_code_any<SYM>(qbs_scale(xv, f, divide), E)], s);
    const double d = fabs(__dsub_rn((double)xv, (double)dq));
    return __dadd_rn(acc, l1 ? d : __dmul_rn(d, d));
}

/* a thread a block: encode with the candidate's factor, decode with its scale, add |x - x̂|
   (l1) or its square in float64 in element order; only the per-block sums leave the device */
template <typename T, bool SYM>
__device__ __forceinline__ void qbs_errors_body(const typename T::storage* __restrict__ x,
                                                const float* __restrict__ factor,
                                                const float* __restrict__ scale,
                                                const float* __restrict__ table,
                                                double* __restrict__ err, qb_i64 n, int B,
                                                int divide, int l1, int vec, const QbsEnc& E) {
    __shared__ float s_t[16];
    if (threadIdx.x < 16) s_t[threadIdx.x] = table[threadIdx.x];
    __syncthreads();
    const qb_i64 b = (qb_i64)blockIdx.x * blockDim.x + threadIdx.x;
    const qb_i64 e0 = b * (qb_i64)B;
    if (e0 >= n) return;
    const qb_i64 e1 = (e0 + B < n) ? e0 + B : n;
    const float f = factor[b], s = scale[b];
    double acc = 0.0;
    if (vec) {   /* B a multiple of 8, x 16-byte aligned: a chunk a 16-byte load (or two), so a
                    warp's request touches a sector a lane, not one for every element */
        for (qb_i64 e = e0; e < e1; e += QBS_CE) {
            QbsRaw<T> raw;
            qbs_load_chunk<T>(x, e, n, raw);
#pragma unroll
            for (int j = 0; j < QBS_CE; ++j)
                if (e + j < e1) acc = qbs_add_error<SYM>(acc, raw.get(j), f, s, s_t, divide, l1, E);
        }
    } else {
        for (qb_i64 e = e0; e < e1; ++e)
            acc = qbs_add_error<SYM>(acc, qb_to_f32<T>(x[e]), f, s, s_t, divide, l1, E);
    }
    err[b] = acc;
}

template <typename T>
__device__ __forceinline__ void qbs_errors(const typename T::storage* __restrict__ x,
                                           const float* __restrict__ factor,
                                           const float* __restrict__ scale,
                                           const float* __restrict__ table,
                                           double* __restrict__ err, qb_i64 n, int B, int divide,
                                           int l1, int sym, int vec, const QbsEnc& E) {
    if (sym) qbs_errors_body<T, true>(x, factor, scale, table, err, n, B, divide, l1, vec, E);
    else qbs_errors_body<T, false>(x, factor, scale, table, err, n, B, divide, l1, vec, E);
}

/* ---- ggml's IQ4_NL search (quantbook/scales/ggml.py states each step) -------------------- */
/* ggml's nearest entry of the ascending table v[0..nv-1]: a tie goes up */
__device__ __forceinline__ int qbs_ggml_nearest(float a, const float* v, int nv) {
    if (a <= v[0]) return 0;
    if (a >= v[nv - 1]) return nv - 1;
    int lo = 0, hi = nv - 1;
    while (hi - lo > 1) {
        const int mid = (lo + hi) >> 1;
        if (a < v[mid]) hi = mid; else lo = mid;
    }
    return __fsub_rn(a, v[hi - 1]) < __fsub_rn(v[hi], a) ? hi - 1 : hi;
}

/* A block's values as the search reads them, in 17 passes: up to QBS_GGML_REGS of them in
   registers, read from memory once (a thread's block lies 4 B bytes from its neighbour's, so
   a warp's read from memory touches a sector a lane), or a block of any size from memory. */
#define QBS_GGML_REGS 32
template <typename T> struct QbsGgmlMem {
    const typename T::storage* p;
    __device__ __forceinline__ float operator[](int j) const { return qb_to_f32<T>(p[j]); }
};
struct QbsGgmlRegs {
    float r[QBS_GGML_REGS];
    __device__ __forceinline__ float operator[](int j) const { return r[j]; }
};

/* f(j) for j = 0 .. len-1 in order: unrolled to MAXB (> 0, so that registers can hold the
   values), or a loop */
template <int MAXB, typename Fn>
__device__ __forceinline__ void qbs_each(int len, Fn f) {
    if constexpr (MAXB > 0) {
#pragma unroll
        for (int j = 0; j < MAXB; ++j)
            if (j < len) f(j);
    } else {
        for (int j = 0; j < len; ++j) f(j);
    }
}

/* the sums of one fit: codes of id * x, S_qx = sum (x^2 v_q) x, S_qq = sum (x^2 v_q) v_q */
template <int MAXB, typename X>
__device__ __forceinline__ void qbs_ggml_fit(const X& xb, int len, float id, const float* v, int nv,
                                             float& sqx, float& sqq) {
    sqx = 0.0f; sqq = 0.0f;
    qbs_each<MAXB>(len, [&](int j) {
        const float xv = xb[j];
        const float q = v[qbs_ggml_nearest(__fmul_rn(id, xv), v, nv)];
        const float wq = __fmul_rn(__fmul_rn(xv, xv), q);
        sqx = __fadd_rn(sqx, __fmul_rn(wq, xv));
        sqq = __fadd_rn(sqq, __fmul_rn(wq, q));
    });
}

/* one block b of len values xb: its float32 scale and packed codes */
template <int MAXB, typename X>
__device__ __forceinline__ void qbs_ggml_block(const X& xb, int len, qb_i64 b, qb_i64 e0,
                                               float* __restrict__ d_out, qb_u8* __restrict__ packed,
                                               const float* v, const qb_u32* order, int nv,
                                               float delta, int ntry, qb_u32 pad) {
    float m = 0.0f, am = 0.0f;
    qbs_each<MAXB>(len, [&](int j) {
        const float a = fabsf(xb[j]);
        if (a > am) { am = a; m = xb[j]; }
    });
    float d = 0.0f, idf = 0.0f;
    if (!(am < 1e-15f)) {
        const float id0 = __fdiv_rn(1.0f, __fdiv_rn(ntry > 0 ? -m : m, v[0]));
        float sqx, sqq;
        qbs_ggml_fit<MAXB>(xb, len, id0, v, nv, sqx, sqq);
        d = sqq > 0.0f ? __fdiv_rn(sqx, sqq) : 0.0f;
        float best = __fmul_rn(d, sqx);
        for (int t = -ntry; t <= ntry; ++t) {
            qbs_ggml_fit<MAXB>(xb, len, __fdiv_rn(__fadd_rn(v[0], __fmul_rn((float)t, delta)), m), v, nv,
                               sqx, sqq);
            if (sqq > 0.0f && __fmul_rn(sqx, sqx) > __fmul_rn(best, sqq)) {
                d = __fdiv_rn(sqx, sqq);
                best = __fmul_rn(d, sqx);
            }
        }
        /* the codes: of the kept scale (search), of the first fit (ggml's reference) */
        idf = ntry > 0 ? (d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f) : id0;
    }
    d_out[b] = d;
    qbs_each<MAXB / 2>((len + 1) >> 1, [&](int h) {
        const int j = 2 * h;
        const qb_u32 c0 = order[qbs_ggml_nearest(__fmul_rn(idf, xb[j]), v, nv)];
        const qb_u32 c1 = j + 1 < len ? order[qbs_ggml_nearest(__fmul_rn(idf, xb[j + 1]), v, nv)] : pad;
        packed[(e0 + j) >> 1] = (qb_u8)(c0 | (c1 << 4));
    });
}

/* a thread a block (the search is arithmetic); values past n are absent, as the reference's
   zero padding adds nothing */
template <typename T>
__device__ __forceinline__ void qbs_ggml(const typename T::storage* __restrict__ x,
                                         float* __restrict__ d_out, qb_u8* __restrict__ packed,
                                         qb_i64 n, int B, const float* __restrict__ v_g,
                                         const qb_u8* __restrict__ order_g, int nv, float delta,
                                         int ntry, qb_u32 pad) {
    __shared__ float v[16];
    __shared__ qb_u32 order[16];
    if (threadIdx.x < 16) {
        v[threadIdx.x] = (int)threadIdx.x < nv ? v_g[threadIdx.x] : 0.0f;
        order[threadIdx.x] = (int)threadIdx.x < nv ? (qb_u32)order_g[threadIdx.x] : 0u;
    }
    __syncthreads();
    const qb_i64 b = (qb_i64)blockIdx.x * blockDim.x + threadIdx.x;
    const qb_i64 e0 = b * (qb_i64)B;
    if (e0 >= n) return;
    const int len = (int)((n - e0 < (qb_i64)B) ? n - e0 : (qb_i64)B);
    const typename T::storage* xp = x + e0;
    if (B <= QBS_GGML_REGS) {   /* B is the same for the whole grid: no divergence */
        QbsGgmlRegs xr;
#pragma unroll
        for (int j = 0; j < QBS_GGML_REGS; ++j) xr.r[j] = j < len ? qb_to_f32<T>(xp[j]) : 0.0f;
        qbs_ggml_block<QBS_GGML_REGS>(xr, len, b, e0, d_out, packed, v, order, nv, delta, ntry, pad);
    } else {
        qbs_ggml_block<0>(QbsGgmlMem<T>{xp}, len, b, e0, d_out, packed, v, order, nv, delta, ntry, pad);
    }
}
"""

_STEPS = r"""
/* ---- a deterministic rule's step of each block --------------------------------------- */
/* amax: the maxima's float32 bits (finite: quantize refuses or sanitizes NaN/Inf first);
   starts, buckets (top = its size - 2), shift: the step table (quantbook/scales/steps.py);
   stored (sbytes 1 or 2), factor, scale, valid: per step (scale read only if want_scale).
   The search is the cpu backend's step_index, over integers only.                      */
extern "C" __global__ void __launch_bounds__(256) qbs_steps(
    const qb_u32* __restrict__ amax, qb_i64 nb, const qb_u32* __restrict__ starts,
    const int* __restrict__ buckets, int top, int shift, const void* __restrict__ stored, int sbytes,
    const float* __restrict__ factor, const float* __restrict__ scale, const qb_u8* __restrict__ valid,
    void* __restrict__ stored_out, float* __restrict__ factor_out, float* __restrict__ scale_out,
    int want_scale, int* __restrict__ bad) {
    const qb_i64 b = (qb_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= nb) return;
    const qb_u32 v = amax[b];
    const qb_u32 k = (v >> shift) < (qb_u32)top ? (v >> shift) : (qb_u32)top;
    int lo = buckets[k], hi = buckets[k + 1] + 1;
    while (hi - lo > 1) {
        const int mid = (lo + hi) >> 1;
        if (starts[mid] <= v) lo = mid;
        else hi = mid;
    }
    if (!valid[lo]) atomicOr(bad, 1);   /* the host asks the rule for its error */
    if (sbytes == 1) static_cast<qb_u8*>(stored_out)[b] = static_cast<const qb_u8*>(stored)[lo];
    else static_cast<qb_u16*>(stored_out)[b] = static_cast<const qb_u16*>(stored)[lo];
    factor_out[b] = factor[lo];
    if (want_scale) scale_out[b] = scale[lo];
}
"""

_T_PARAMS = ", ".join(f"float t{k}" for k in range(16))
_T_INIT = ", ".join(f"t{k}" for k in range(16))


def _encode_wrapper(dtype: str, sym: bool) -> str:
    """The general and the sign-symmetric encoder are separate kernels: together, the general
    one's registers would set the occupancy of both."""
    t, name = _TYPE[dtype], encode_name(dtype, sym)
    body = f"qbs_encode_body<{t}, {'true' if sym else 'false'}, {encode_chunks(dtype, sym)}>"
    return (f'extern "C" __global__ void __launch_bounds__({CTA}, {ENCODE_CTAS}) {name}(\n'
            f"    const {t}::storage* x, const float* factor, qb_u8* packed, qb_i64 n, int B,\n"
            f"    int log2B, int divide, int vec, qb_u32 pad, {_T_PARAMS},\n"
            f"    qb_u32 lo, qb_u32 hi, int j0, qb_u32 neg0, int rnan) {{\n"
            f"  const QbsEnc E = {{{{{_T_INIT}}}, lo, hi, j0, neg0, rnan}};\n"
            f"  {body}(x, factor, packed, n, B, log2B, divide, vec, pad, E);\n}}\n")


def _wrappers(dtype: str) -> dict[str, str]:
    """name -> the ``extern "C"`` kernel of that name for one dtype."""
    t = _TYPE[dtype]
    return {
        errors_name(dtype):
        f'extern "C" __global__ void __launch_bounds__({GGML_CTA}) {errors_name(dtype)}(\n'
        f"    const {t}::storage* x, const float* factor, const float* scale, const float* table,\n"
        f"    double* err, qb_i64 n, int B, int divide, int l1, int sym, int vec, {_T_PARAMS},\n"
        f"    qb_u32 lo, qb_u32 hi, int j0, qb_u32 neg0, int rnan) {{\n"
        f"  const QbsEnc E = {{{{{_T_INIT}}}, lo, hi, j0, neg0, rnan}};\n"
        f"  qbs_errors<{t}>(x, factor, scale, table, err, n, B, divide, l1, sym, vec, E);\n}}\n",
        ggml_name(dtype):
        f'extern "C" __global__ void __launch_bounds__({GGML_CTA}) {ggml_name(dtype)}(\n'
        f"    const {t}::storage* x, float* d, qb_u8* packed, qb_i64 n, int B, const float* v,\n"
        f"    const qb_u8* order, int nv, float delta, int ntry, qb_u32 pad) {{\n"
        f"  qbs_ggml<{t}>(x, d, packed, n, B, v, order, nv, delta, ntry, pad);\n}}\n",
        amax_name(dtype):
        f'extern "C" __global__ void __launch_bounds__({CTA}) {amax_name(dtype)}(\n'
        f"    const {t}::storage* x, qb_u32* out, qb_i64 n, int B, int log2B, int vec) {{\n"
        f"  qbs_amax<{t}>(x, out, n, B, log2B, vec);\n}}\n",
        **{encode_name(dtype, sym): _encode_wrapper(dtype, sym) for sym in (False, True)},
        decode_name(dtype):
        f'extern "C" __global__ void __launch_bounds__({CTA}) {decode_name(dtype)}(\n'
        f"    const qb_u8* packed, const void* scale, const float* lut, int sbytes, const float* table,\n"
        f"    {t}::storage* out, qb_i64 n, int B, int log2B, int vec) {{\n"
        f"  qbs_decode<{t}>(packed, scale, lut, sbytes, table, out, n, B, log2B, vec);\n}}\n",
    }


def source(names: list[str] | tuple[str, ...] | None = None) -> str:
    """CUDA source holding the kernels ``names`` (default: every scaled kernel)."""
    wanted = set(all_kernel_names() if names is None else names)
    unknown = wanted - set(all_kernel_names())
    if unknown:
        raise ValueError(f"unknown kernel name(s): {sorted(unknown)}")
    parts = [K.source(()), _SCALED]   # the common helpers of kernels.py, no kernel
    for d in DTYPES:
        parts += [text for name, text in _wrappers(d).items() if name in wanted]
    if STEPS_NAME in wanted:
        parts.append(_STEPS)
    return "\n".join(parts)
