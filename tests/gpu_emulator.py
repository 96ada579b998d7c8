"""Test infrastructure: run the CUDA kernels on the CPU, for machines without a GPU.

The kernel source of :mod:`quantbook.bulk.gpu.kernels` is compiled as C++ with a
small shim (``g++``, IEEE float32 with ``-ffp-contract=off``): every CUDA thread is a fiber
(``ucontext``) on one OS thread, the thread blocks run one after another, ``__shared__``
variables are shared by the threads of the running block (and start it as poison: a read of
one before any thread of the block wrote it raises), ``__syncthreads`` is a barrier
(a thread that passes a different number of barriers than the others is an error) and
``__shfl_xor_sync`` / ``__shfl_sync`` an exchange through memory between two barriers (the
kernels call them uniformly, before any thread leaves).  float16 conversions use the compiler's
``_Float16`` (round to nearest even), bfloat16 the kernels' integer path for pre-sm_80 GPUs.

This checks the kernels' logic — indexing, reductions, tails, partial blocks, packing and
every float32 operation — against the numpy reference without a device, that no access
is misaligned for its type (``uint4`` and ``float4`` 16 bytes, as CUDA's; a GPU faults on
one: the launch raises), and that none leaves its array, a launch's or a ``__shared__`` one
(each lies between inaccessible pages and canary bytes that every load and store is checked
against, :mod:`gpu_bounds`: the launch raises).  The source is unchanged but for the
``__shared__`` declarations, made references to that memory.  It does not check what only
hardware shows (real warp lock-step, launch limits, speed) nor the code under
``__CUDA_ARCH__`` (inline PTX).  Slow: meant for a few thousand elements.

Within :func:`recording`, launches run on a measuring build of each library instead, which
notes every access to a launch's arrays (:mod:`gpu_traffic`: the warp-wide requests and the
32-byte sectors they touch).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import gpu_traffic
import numpy as np
from gpu_bounds import SHIM as _BOUNDS_SHIM
from gpu_bounds import call_guarded, check_flags, guard_shared

from quantbook.bulk import format as F
from quantbook.bulk.backend import Backend
from quantbook.bulk.gpu import kernels as K
from quantbook.bulk.gpu.backend import (_dtype_key, _log2_blocksize, dequantize_launch, error_chunks_kernel_takes,
                                        error_chunks_launch, nested_launch, packing_for_bits, quantize_launch,
                                        sanitize_launch)
from quantbook.bulk.gpu.compile import cache_dir
from quantbook.bulk.gpu.tables import encoder_tables, search_size
from quantbook.bulk.nested import dynamic_map, nested_lut

__all__ = ["Emulator", "EmulatorUnavailable", "emulator", "quantize_emulated", "dequantize_emulated",
           "quantize_absmax_nested_emulated", "dequantize_absmax_nested_emulated", "sanitize_emulated",
           "EmulatedCudaBackend", "recording"]


class EmulatorUnavailable(RuntimeError):
    """No C++ compiler (g++ / c++) to build the host emulation."""


_SHIM = r"""
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <vector>
#include <functional>
#include <csetjmp>
#include <csignal>
#include <ucontext.h>

struct qb_dim3 { unsigned x, y, z; };
static qb_dim3 threadIdx, blockIdx, blockDim, gridDim;

/* aligned as CUDA's: a vector access through a misaligned pointer faults on a GPU, and here
   the alignment sanitizer reports it (qb_misaligned, below) */
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
extern "C" {
int qb_misaligned = 0;
unsigned long long qb_misaligned_at = 0;
/* the handler -fsanitize=alignment calls (recoverable): noted, and the launcher raises */
void __ubsan_handle_type_mismatch_v1(void*, void* ptr) {
    if (!qb_misaligned) qb_misaligned_at = (unsigned long long)ptr;
    qb_misaligned = 1;
}
}
static inline uint2 make_uint2(unsigned a, unsigned b) { uint2 r{a, b}; return r; }
static inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { uint4 r{a, b, c, d}; return r; }

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

static inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
static inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
static inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
static inline float __fsub_rn(float a, float b) { volatile float r = a - b; return r; }
static inline double __dadd_rn(double a, double b) { volatile double r = a + b; return r; }
static inline double __dsub_rn(double a, double b) { volatile double r = a - b; return r; }
static inline double __dmul_rn(double a, double b) { volatile double r = a * b; return r; }
static inline float __fdiv_rn(float a, float b) { volatile float r = a / b; return r; }
static inline int __float2int_rz(float x) {
    if (x != x) return 0;
    if (x >= 2147483648.0f) return 2147483647;
    if (x <= -2147483648.0f) return (-2147483647 - 1);
    return (int)x;
}
static inline float qb_host_f16_to_f32(unsigned short h) { _Float16 v; std::memcpy(&v, &h, 2); return (float)v; }
static inline unsigned short qb_host_f32_to_f16(float f) {
    _Float16 v = (_Float16)f; unsigned short h; std::memcpy(&h, &v, 2); return h;
}

/* The threads of a block are fibers (ucontext) on one OS thread; a barrier hands control
   back to the scheduler, which runs every live fiber up to its next barrier before any
   passes it.  A shuffle is a barrier of the warp only: the scheduler runs one warp at a
   time, from the last, on through its shuffles up to its next CTA barrier, so a warp
   reads shared memory the warps after it may have written again since (as on a GPU,
   where warps meet only at barriers).  Fibers run in descending thread order: a read that
   lacks its barrier then tends to see an unwritten value (thread 0 writes last).  All
   threads must pass the same barriers; a block where some finish or reach a CTA barrier
   while others still wait sets qb_barrier_mismatch (the launcher raises). */
struct QbFiber { ucontext_t ctx; unsigned t, b; bool done, at_warp; };
static ucontext_t qb_sched;
static QbFiber* qb_fibers = nullptr;
static unsigned qb_nfibers = 0;
static QbFiber* qb_cur = nullptr;
static std::vector<char*> qb_stacks;
static const std::function<void()>* qb_body = nullptr;
extern "C" { int qb_barrier_mismatch = 0; }
static const size_t QB_STACK = 1u << 18;

struct QbBarrier {
    void wait() { qb_cur->at_warp = false; swapcontext(&qb_cur->ctx, &qb_sched); }
    void warp_wait() { qb_cur->at_warp = true; swapcontext(&qb_cur->ctx, &qb_sched); }
};
static QbBarrier qb_bar;
static float qb_shfl_slot[1024];
static inline void __syncthreads() { qb_bar.wait(); }
static inline float __shfl_xor_sync(unsigned, float v, int off) {
    const unsigned t = threadIdx.x;
    qb_shfl_slot[t] = v;
    qb_bar.warp_wait();
    const float r = qb_shfl_slot[(t & ~31u) | ((t & 31u) ^ (unsigned)off)];
    qb_bar.warp_wait();
    return r;
}
static inline unsigned __shfl_xor_sync(unsigned mask, unsigned v, int off) {
    return __float_as_uint(__shfl_xor_sync(mask, __uint_as_float(v), off));
}
static inline float __shfl_sync(unsigned, float v, int src) {
    const unsigned t = threadIdx.x;
    qb_shfl_slot[t] = v;
    qb_bar.warp_wait();
    const float r = qb_shfl_slot[(t & ~31u) | ((unsigned)src & 31u)];
    qb_bar.warp_wait();
    return r;
}
static inline unsigned __shfl_sync(unsigned mask, unsigned v, int src) {
    return __float_as_uint(__shfl_sync(mask, __uint_as_float(v), src));
}
/* lane-wise unsigned max of two 16-bit halves */
static inline unsigned __vmaxu2(unsigned a, unsigned b) {
    const unsigned lo = (a & 0xffffu) > (b & 0xffffu) ? (a & 0xffffu) : (b & 0xffffu);
    const unsigned hi = (a >> 16) > (b >> 16) ? (a >> 16) : (b >> 16);
    return lo | (hi << 16);
}
using std::min;

/* each fiber walks the thread blocks in order, with a barrier between blocks (the kernels
   have no barrier after a thread may return); the first to start a block counts a new CTA,
   whose shared arrays start over (gpu_bounds: poisoned, unwritten) */
static unsigned long long qb_cta_seq = 0, qb_cta_block = ~0ull;
/* the first block a launch runs: a test of a grid's last blocks skips the others */
extern "C" { unsigned qb_block0 = 0; }
static void qb_fiber_main(unsigned t) {
    QbFiber& f = qb_fibers[t];
    for (unsigned b = qb_block0; b < gridDim.x; ++b) {
        f.b = b;
        blockIdx = qb_dim3{b, 0, 0};
        if (qb_cta_block != b) { qb_cta_block = b; ++qb_cta_seq; }
        (*qb_body)();
        qb_bar.wait();
    }
    f.done = true;
}

/* The launcher places every array between inaccessible pages (gpu_bounds.call_guarded):
   an access past one faults, and the handler, armed only while a grid runs, leaves the
   grid at once (its fibers are abandoned, made afresh by the next launch) and notes where. */
static sigjmp_buf qb_fault_jmp;
static struct sigaction qb_old_segv, qb_old_bus;
extern "C" {
int qb_faulted = 0;
unsigned long long qb_fault_at = 0;
}
static void qb_on_fault(int, siginfo_t* si, void*) {
    qb_faulted = 1;
    qb_fault_at = (unsigned long long)si->si_addr;
    siglongjmp(qb_fault_jmp, 1);
}

static void qb_run_fibers(unsigned grid, unsigned block, const std::function<void()>& body);
static void qb_bounds_arm(int on);

static void qb_run_grid(unsigned grid, unsigned block, const std::function<void()>& body) {
    qb_faulted = 0;
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = qb_on_fault;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &qb_old_segv);
    sigaction(SIGBUS, &sa, &qb_old_bus);
    qb_bounds_arm(1);
    if (!sigsetjmp(qb_fault_jmp, 1)) qb_run_fibers(grid, block, body);
    qb_bounds_arm(0);
    sigaction(SIGSEGV, &qb_old_segv, nullptr);
    sigaction(SIGBUS, &qb_old_bus, nullptr);
}

static void qb_run_fibers(unsigned grid, unsigned block, const std::function<void()>& body) {
    blockDim = qb_dim3{block, 1, 1}; gridDim = qb_dim3{grid, 1, 1};
    qb_body = &body;
    qb_cta_block = ~0ull;   /* block 0 of this launch is a new CTA too */
    qb_barrier_mismatch = 0;
    qb_misaligned = 0;
    while (qb_stacks.size() < block) qb_stacks.push_back(static_cast<char*>(std::malloc(QB_STACK)));
    if (qb_nfibers < block) {   /* never moved once made: a ucontext points into itself */
        delete[] qb_fibers;
        qb_fibers = new QbFiber[block];
        qb_nfibers = block;
    }
    for (unsigned t = 0; t < block; ++t) {
        QbFiber& f = qb_fibers[t];
        f.t = t; f.b = 0; f.done = false; f.at_warp = false;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = qb_stacks[t];
        f.ctx.uc_stack.ss_size = QB_STACK;
        f.ctx.uc_link = &qb_sched;
        makecontext(&f.ctx, reinterpret_cast<void (*)()>(qb_fiber_main), 1, t);
    }
    for (;;) {
        unsigned waiting = 0, finished = 0;
        for (unsigned w = (block + 31) / 32; w-- > 0;) {
            for (;;) {   /* the warp, round after round while its threads meet at shuffles */
                unsigned at_warp = 0, at_cta = 0, ended = 0;
                for (unsigned k = min(block, 32 * w + 32); k-- > 32 * w;) {
                    QbFiber& f = qb_fibers[k];
                    if (f.done) continue;
                    qb_cur = &f;
                    threadIdx = qb_dim3{f.t, 0, 0};
                    blockIdx = qb_dim3{f.b, 0, 0};
                    swapcontext(&qb_sched, &f.ctx);
                    if (f.done) ++ended; else if (f.at_warp) ++at_warp; else ++at_cta;
                }
                finished += ended;
                if (!at_warp) { waiting += at_cta; break; }
                if (at_cta || ended) {   /* a shuffle some lanes of the warp never reach */
                    qb_barrier_mismatch = 1;
                    return;
                }
            }
        }
        if (!waiting) break;
        if (finished) {   /* the rest wait at a barrier no other thread reaches */
            qb_barrier_mismatch = 1;
            break;
        }
    }
}
""" + _BOUNDS_SHIM


def _launchers() -> str:
    out = []
    for d in K.DTYPES:
        st = "float" if d == "f32" else "unsigned short"
        for p in K.PACKINGS:
            for v, k in ((v, k) for v in K.quantize_vecs(d, p) for k in K.searches(p)):
                q = K.quantize_name(d, v, p, k)
                out.append(
                    f'extern "C" void emu_{q}(unsigned grid, unsigned block, const {st}* x, qb_u8* packed,'
                    f" float* absmax, qb_i64 n, int log2B, const qb_u8* bucket, const float* bounds,"
                    f" int nbounds, const int* order, int K, int ident, int vec_in) {{ qb_run_grid(grid,"
                    f" block, [&] {{ {q}(x, packed, absmax, n, log2B, bucket, bounds, nbounds, order, K,"
                    f" ident, vec_in); }}); }}")
            dq = K.dequantize_name(d, p)
            out.append(
                f'extern "C" void emu_{dq}(unsigned grid, unsigned block, const qb_u8* packed,'
                f" const float* absmax, {st}* o, qb_i64 n, int log2B, const float* code, int K,"
                f" int vec_in, int vec_out) {{ qb_run_grid(grid, block, [&] {{ {dq}(packed, absmax,"
                f" o, n, log2B, code, K, vec_in, vec_out); }}); }}")
    out.append(
        f'extern "C" void emu_{K.NESTED_QUANT_NAME}(unsigned grid, unsigned block, const float* a,'
        f" float offset, const qb_u8* lut, qb_u8* q, float* nested, qb_i64 n) {{ qb_run_grid(grid,"
        f" block, [&] {{ {K.NESTED_QUANT_NAME}(a, offset, lut, q, nested, n); }}); }}")
    out.append(
        f'extern "C" void emu_{K.NESTED_DEQUANT_NAME}(unsigned grid, unsigned block, const qb_u8* q,'
        f" const float* nested, const float* code, float offset, float* o, qb_i64 n, int log2B)"
        f" {{ qb_run_grid(grid, block, [&] {{ {K.NESTED_DEQUANT_NAME}(q, nested, code, offset, o,"
        f" n, log2B); }}); }}")
    for d in K.DTYPES:
        u = "qb_u32" if d == "f32" else "qb_u16"
        out.append(
            f'extern "C" void emu_{K.sanitize_name(d)}(unsigned grid, unsigned block, const {u}* x, {u}* o,'
            f" qb_i64 n, int log2B) {{ qb_run_grid(grid, block, [&] {{ {K.sanitize_name(d)}(x, o, n, log2B);"
            f" }}); }}")
        st = "float" if d == "f32" else "unsigned short"
        out.append(
            f'extern "C" void emu_{K.error_chunks_name(d)}(unsigned grid, unsigned block, const {st}* x,'
            f" const {st}* xh, int has_xh, double* o, qb_i64 n, qb_i64 runs, int vec_in) {{ qb_run_grid(grid,"
            f" block, [&] {{ {K.error_chunks_name(d)}(x, xh, has_xh, o, n, runs, vec_in); }}); }}")
    return "\n".join(out)


def emulator_source() -> str:
    return _SHIM + K.source() + "\n" + _launchers() + "\n"


def _compiler() -> str | None:
    for c in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if c and shutil.which(c):
            return c
    return None


_P = ctypes.c_void_p
_I64 = ctypes.c_longlong
_I32 = ctypes.c_int
_U32 = ctypes.c_uint
_F32 = ctypes.c_float


#: the numpy scalar a launch passes for each scalar parameter type: real CuPy packs a numpy
#: scalar by its own width and a Python int as 8 bytes, so any other type shifts the later
#: arguments on a device, and a 32-bit one cuts a count past 2**31
_SCALAR_NUMPY = {"qb_i64": np.int64, "qbv_i64": np.int64, "int": np.int32, "unsigned": np.uint32,
                 "qb_u32": np.uint32, "float": np.float32, "double": np.float64}


@functools.lru_cache(maxsize=None)
def kernel_signature(name: str) -> tuple[tuple[str, str], ...]:
    """``(type, name)`` of each parameter of any kernel of the three libraries, pointers as
    ``T*``, from the source the device compiles."""
    if name.startswith("qbv_"):
        return tuple(_vq_params(name))
    src = _SK.source([name]) if name.startswith("qbs_") else K.source([name])
    m = re.search(rf"\b{re.escape(name)}\(([^)]*)\)\s*\{{", src)
    out = []
    for part in m[1].split(","):
        toks = part.replace("const ", "").replace("__restrict__", "").split()
        out.append(("".join(toks[:-1]), toks[-1]))
    return tuple(out)


def check_launch(name: str, args) -> None:
    """What a launch passes, as kernel ``name`` declares it: an array for each pointer, a numpy
    scalar of the exact width for each scalar parameter (:data:`_SCALAR_NUMPY`)."""
    params = kernel_signature(name)
    if len(args) != len(params):
        raise TypeError(f"{name}: {len(args)} arguments, the kernel takes {len(params)}")
    for (typ, pname), a in zip(params, args):
        if typ.endswith("*"):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{name}: {pname} ({typ}) given {type(a).__name__}, not an array")
        elif type(a) is not _SCALAR_NUMPY[typ]:
            raise TypeError(f"{name}: {pname} ({typ}) given {type(a).__name__}, not "
                            f"numpy.{_SCALAR_NUMPY[typ].__name__}")


class Emulator:
    """The kernels compiled for the host; ``launch(name, grid, block, *args)`` with numpy
    arrays for pointers.  Use :func:`emulator` to get the shared instance."""

    check = staticmethod(check_launch)

    def __init__(self, lib_path: Path, measure: bool = False):
        self.lib = ctypes.CDLL(str(lib_path))
        self.measure = measure
        for name in K.all_kernel_names():
            fn = getattr(self.lib, f"emu_{name}")
            fn.restype = None
            if name.startswith("qb_quantize_") and name != K.NESTED_QUANT_NAME:
                fn.argtypes = [_U32, _U32, _P, _P, _P, _I64, _I32, _P, _P, _I32, _P, _I32, _I32, _I32]
            elif name.startswith("qb_dequantize_") and name != K.NESTED_DEQUANT_NAME:
                fn.argtypes = [_U32, _U32, _P, _P, _P, _I64, _I32, _P, _I32, _I32, _I32]
            elif name.startswith("qb_sanitize_"):
                fn.argtypes = [_U32, _U32, _P, _P, _I64, _I32]
            elif name.startswith("qb_error_chunks_"):
                fn.argtypes = [_U32, _U32, _P, _P, _I32, _P, _I64, _I64, _I32]
            elif name == K.NESTED_QUANT_NAME:
                fn.argtypes = [_U32, _U32, _P, _F32, _P, _P, _P, _I64]
            else:
                fn.argtypes = [_U32, _U32, _P, _P, _P, _F32, _P, _I64, _I32]

    def launch(self, name: str, grid: int, block: int, *args, first_block: int = 0):
        """``first_block``: the grid's blocks before it do not run (a test of its last blocks)."""
        call_guarded(self.lib, name, int(grid), int(block), args, trace=_trace(self), first_block=first_block)


# ---- the measuring builds (gpu_traffic): every access to a launch's arrays noted ------------

_RECORDER: gpu_traffic.Recorder | None = None


def _trace(emu) -> gpu_traffic.Recorder | None:
    return _RECORDER if emu.measure else None


def kernel_params(name: str) -> list[str]:
    """The parameter names of any emulated kernel, from its library's source."""
    src = _VK.source() if name.startswith("qbv_") else _SK.source() if name.startswith("qbs_") else K.source()
    return gpu_traffic.kernel_params(src, name)


@contextlib.contextmanager
def recording():
    """Within it, every launch runs on the measuring build of its library (built once, cached
    apart from the plain one) and is noted in the :class:`gpu_traffic.Recorder` it yields."""
    global _RECORDER
    outer, _RECORDER = _RECORDER, gpu_traffic.Recorder(kernel_params)
    try:
        yield _RECORDER
    finally:
        _RECORDER = outer


_EMU: dict[bool, Emulator] = {}


def _flags(cxx: str, measure: bool) -> list[str]:
    # the alignment and bounds checks call the shim's handlers; linked without the sanitizers' runtimes
    flags = ["-std=c++17", "-O1", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-w",
             "-fsanitize=alignment", "-fsanitize-recover=alignment", *check_flags(cxx)]
    return flags + gpu_traffic.FLAGS if measure else flags


def measuring_unavailable() -> str | None:
    """Why no measuring build (:func:`recording`) can be made here, or None: no compiler, or
    one that lacks an option it needs."""
    cxx = _compiler()
    if cxx is None:
        return "no C++ compiler (g++/c++/clang++) found"
    with tempfile.TemporaryDirectory() as td:
        cpp = Path(td) / "probe.cpp"
        cpp.write_text("int qb_probe(const int* p) { return *p; }\n", encoding="utf-8")
        r = subprocess.run([cxx, *_flags(cxx, True), "-c", str(cpp), "-o", str(Path(td) / "probe.o")],
                           capture_output=True, text=True)
    if r.returncode:
        return f"{cxx} cannot build the measuring emulator: {r.stderr.strip()[-300:]}"
    return None


def _build_library(src: str, stem: str, measure: bool = False) -> Path:
    """Compile ``src`` as a shared library for the host (cached on disk by its hash), its
    ``__shared__`` arrays guarded (:func:`gpu_bounds.guard_shared`); with ``measure``, each
    access to a launch's arrays noted too (:mod:`gpu_traffic`)."""
    cxx = _compiler()
    if cxx is None:
        raise EmulatorUnavailable("no C++ compiler (g++/c++/clang++) found")
    src = guard_shared(src)
    if measure:
        src, stem = gpu_traffic.HEAD + src + gpu_traffic.TAIL, stem + "_measure"
    flags = _flags(cxx, measure)
    h = hashlib.sha256((src + repr(flags) + cxx).encode()).hexdigest()[:24]
    lib = cache_dir() / f"{stem}_{h}.so"
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as td:
            cpp = Path(td) / "emu.cpp"
            cpp.write_text(src, encoding="utf-8")
            obj, tmp = Path(td) / "emu.o", Path(td) / "emu.so"
            r = subprocess.run([cxx, *flags, "-c", str(cpp), "-o", str(obj)], capture_output=True, text=True)
            if r.returncode == 0:
                r = subprocess.run([cxx, "-shared", str(obj), "-o", str(tmp)], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"building the host emulation failed:\n{r.stderr[-4000:]}")
            part = lib.with_suffix(f".tmp{os.getpid()}")
            shutil.copyfile(tmp, part)
            os.replace(part, lib)   # atomic: parallel test runs never load a partial file
    return lib


def emulator() -> Emulator:
    """Build (once; cached on disk) and load the host emulation library (its measuring build
    within :func:`recording`)."""
    m = _RECORDER is not None
    if m not in _EMU:
        _EMU[m] = Emulator(_build_library(emulator_source(), "emu", m), m)
    return _EMU[m]


# ---- host-array versions of the backend functions (same launch configuration) ---------------

def quantize_emulated(x: np.ndarray, code_f32, bits: int, blocksize: int, *, vec_in: bool = True):
    """:func:`quantbook.bulk.gpu.backend.quantize_gpu` run by the emulator on a numpy array."""
    packing = packing_for_bits(bits)
    log2b = _log2_blocksize(blocksize)
    code = F.check_code_table(code_f32, bits)
    key = _dtype_key(x.dtype)
    xs = np.ascontiguousarray(x).reshape(-1)
    if key == "bf16":
        xs = xs.view(np.uint16)
    n = xs.size
    packed = np.full(F.packed_length(n, bits), 0xEE, dtype=np.uint8)   # poison: all bytes written?
    absmax = np.full(-(-n // blocksize), np.nan, dtype=np.float32)
    if n == 0:
        return packed, absmax
    tabs = encoder_tables(code, search_size(packing))
    # a grid of two CTAs: each loops over several tiles, as on a GPU (grid-stride)
    grid, cta = quantize_launch(n, key, blocksize, packing, sms=2, per_sm=1)
    name = K.quantize_name(key, K.quantize_vec(key, blocksize, packing), packing, tabs.search)
    emulator().launch(name, grid, cta, xs, packed, absmax, n,
                      log2b, np.ascontiguousarray(tabs.bucket), np.ascontiguousarray(tabs.bounds),
                      int(tabs.bounds.size), np.ascontiguousarray(tabs.order), tabs.K,
                      int(tabs.ident), int(vec_in and _aligned(xs, 16)))   # as the gpu backend tests it
    return packed, absmax


def dequantize_emulated(packed, absmax, code_f32, bits: int, blocksize: int, n: int, out_dtype,
                        *, vec_in: bool = True, vec_out: bool = True):
    packing = packing_for_bits(bits)
    log2b = _log2_blocksize(blocksize)
    code = F.check_code_table(code_f32, bits)
    key = _dtype_key(out_dtype)
    st = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}[key]
    # poison (a NaN bit pattern) so that an element the kernel does not write shows up
    out = np.full(n, np.nan, np.float32) if key == "f32" else np.full(n, 0x7E7E, np.uint16).view(st)
    if n:
        grid, cta = dequantize_launch(n)
        pk = np.ascontiguousarray(packed, dtype=np.uint8)
        emulator().launch(K.dequantize_name(key, packing), grid, cta, pk,
                          np.ascontiguousarray(absmax, dtype=np.float32), out, n, log2b, code, int(code.size),
                          int(vec_in and _aligned(pk, 16)), int(vec_out and _aligned(out, 16)))   # as the gpu backend
    if key == "bf16":
        import ml_dtypes

        return out.view(ml_dtypes.bfloat16)
    return out


def quantize_absmax_nested_emulated(absmax: np.ndarray, offset):
    a = np.ascontiguousarray(absmax, dtype=np.float32).reshape(-1)
    n = a.size
    q = np.full(n, 0xEE, dtype=np.uint8)
    nested = np.full(-(-n // 256), np.nan, dtype=np.float32)
    grid, cta = nested_launch(n)
    emulator().launch(K.NESTED_QUANT_NAME, grid, cta, a, np.float32(offset),
                      np.ascontiguousarray(nested_lut()), q, nested, n)
    return q, nested


def dequantize_absmax_nested_emulated(q, nested, offset, code=None):
    c = np.ascontiguousarray(dynamic_map() if code is None else code, dtype=np.float32)
    q = np.ascontiguousarray(q, dtype=np.uint8)
    out = np.full(q.size, np.nan, dtype=np.float32)
    grid, cta = nested_launch(q.size)
    emulator().launch(K.NESTED_DEQUANT_NAME, grid, cta, q,
                      np.ascontiguousarray(nested, dtype=np.float32), c, np.float32(offset),
                      out, q.size, 8)
    return out


def sanitize_emulated(x: np.ndarray, blocksize: int) -> np.ndarray:
    """:func:`quantbook.bulk.gpu.backend.sanitize_gpu` run by the emulator on a numpy array."""
    log2b = _log2_blocksize(blocksize)
    key = _dtype_key(x.dtype)
    xs = np.ascontiguousarray(x).reshape(-1)
    bits = xs.view(np.uint32 if key == "f32" else np.uint16)
    out = np.full(bits.shape, 0xEEEEEEEE if key == "f32" else 0xEEEE, bits.dtype)   # poison: all written?
    if xs.size:
        grid, cta = sanitize_launch(xs.size, blocksize)
        emulator().launch(K.sanitize_name(key), grid, cta, bits, out, xs.size, log2b)
    return out.view(xs.dtype)


def error_chunks_emulated(x: np.ndarray, xhat: np.ndarray | None = None, *, vec_in: bool = True,
                          grid: int | None = None) -> np.ndarray:
    """:func:`quantbook.bulk.gpu.backend.error_chunks_gpu` run by the emulator on numpy arrays
    (``vec_in=False`` forces the element-by-element loads; ``grid`` fewer CTAs, which then loop)."""
    key = _dtype_key(x.dtype)
    xs = np.ascontiguousarray(x).reshape(-1)
    hs = xs if xhat is None else np.ascontiguousarray(xhat).reshape(-1)
    assert _dtype_key(hs.dtype) == key and hs.size == xs.size
    if key != "f32":
        xs, hs = xs.view(np.uint16), hs.view(np.uint16)
    full, cta, runs = error_chunks_launch(xs.size)
    out = np.full(2 * runs, np.nan)   # poison: every run written?
    if runs:
        vec = int(vec_in and _aligned(xs, 16) and _aligned(hs, 16))   # as the gpu backend tests it
        emulator().launch(K.error_chunks_name(key), grid or full, cta, xs, hs, int(xhat is not None), out,
                          xs.size, runs, vec)
    return out.reshape(2, runs)


# ---- the scaled-layout kernels (quantbook/bulk/gpu/scaled_kernels.py) -------------------------
# A separate library: its own source, the same shim plus the two intrinsics only these kernels
# use.  The host side (encoder tables, exact multipliers, launch shapes) is the gpu backend's
# own (quantbook.bulk.gpu.scaled), so only the device arrays are emulated.

from quantbook.bulk import layouts as _L  # noqa: E402
from quantbook.bulk.gpu import scaled as _GS  # noqa: E402
from quantbook.bulk.gpu import scaled_kernels as _SK  # noqa: E402

# templates, so that an exact (non-template) overload in _SHIM, if it has one, wins
_SCALED_SHIM = r"""
static unsigned qbs_shfl_slot[1024];
template <typename U> static inline U __shfl_xor_sync(unsigned, U v, int off) {
    static_assert(sizeof(U) == 4, "32-bit shuffles only");
    const unsigned t = threadIdx.x;
    unsigned u;
    std::memcpy(&u, &v, 4);
    qbs_shfl_slot[t] = u;
    qb_bar.warp_wait();
    u = qbs_shfl_slot[(t & ~31u) | ((t & 31u) ^ (unsigned)off)];
    qb_bar.warp_wait();
    std::memcpy(&v, &u, 4);
    return v;
}
template <typename U> static inline U atomicOr(U* p, U v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
template <typename U> static inline U atomicMax(U* p, U v) {
    U old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST,
                                                   __ATOMIC_SEQ_CST)) {}
    return old;
}
"""

_ENC_PARAMS = ", ".join(f"float t{k}" for k in range(16))
_ENC_ARGS = ", ".join(f"t{k}" for k in range(16))


def _scaled_launchers() -> str:
    out = []
    for d in _SK.DTYPES:
        st = "float" if d == "f32" else "unsigned short"
        a, e, dq = _SK.amax_name(d), _SK.encode_name(d), _SK.decode_name(d)
        out.append(
            f'extern "C" void emu_{a}(unsigned grid, unsigned block, const {st}* x, qb_u32* o,'
            f" qb_i64 n, int B, int log2B, int vec) {{ qb_run_grid(grid, block, [&] {{ {a}(x, o, n,"
            f" B, log2B, vec); }}); }}")
        for e in (e, _SK.encode_name(d, True)):
            out.append(
                f'extern "C" void emu_{e}(unsigned grid, unsigned block, const {st}* x, const float* f,'
                f" qb_u8* p, qb_i64 n, int B, int log2B, int divide, int vec, qb_u32 pad, {_ENC_PARAMS},"
                f" qb_u32 lo, qb_u32 hi, int j0, qb_u32 neg0, int rnan) {{ qb_run_grid(grid, block, [&] {{"
                f" {e}(x, f, p, n, B, log2B, divide, vec, pad, {_ENC_ARGS}, lo, hi, j0, neg0, rnan); }}); }}")
        out.append(
            f'extern "C" void emu_{dq}(unsigned grid, unsigned block, const qb_u8* p, const void* s,'
            f" const float* lut, int sbytes, const float* t, {st}* o, qb_i64 n, int B, int log2B, int vec) {{"
            f" qb_run_grid(grid, block, [&] {{ {dq}(p, s, lut, sbytes, t, o, n, B, log2B, vec); }}); }}")
        er = _SK.errors_name(d)
        out.append(
            f'extern "C" void emu_{er}(unsigned grid, unsigned block, const {st}* x, const float* f,'
            f" const float* s, const float* t, double* err, qb_i64 n, int B, int divide, int l1, int sym,"
            f" int vec, {_ENC_PARAMS}, qb_u32 lo, qb_u32 hi, int j0, qb_u32 neg0, int rnan) {{ qb_run_grid(grid,"
            f" block, [&] {{ {er}(x, f, s, t, err, n, B, divide, l1, sym, vec, {_ENC_ARGS}, lo, hi, j0, neg0,"
            f" rnan); }}); }}")
        g = _SK.ggml_name(d)
        out.append(
            f'extern "C" void emu_{g}(unsigned grid, unsigned block, const {st}* x, float* dd, qb_u8* p,'
            f" qb_i64 n, int B, const float* v, const qb_u8* order, int nv, float delta, int ntry,"
            f" qb_u32 pad) {{ qb_run_grid(grid, block, [&] {{ {g}(x, dd, p, n, B, v, order, nv, delta,"
            f" ntry, pad); }}); }}")
    out.append(
        f'extern "C" void emu_{_SK.STEPS_NAME}(unsigned grid, unsigned block, const qb_u32* a, qb_i64 nb,'
        " const qb_u32* starts, const int* buckets, int top, int shift, const void* stored, int sbytes,"
        " const float* factor, const float* scale, const qb_u8* valid, void* so, float* fo, float* sco,"
        f" int want, int* bad) {{ qb_run_grid(grid, block, [&] {{ {_SK.STEPS_NAME}(a, nb, starts, buckets, top,"
        " shift, stored, sbytes, factor, scale, valid, so, fo, sco, want, bad); }); }")
    return "\n".join(out)


def scaled_emulator_source() -> str:
    return _SHIM + _SCALED_SHIM + _SK.source() + "\n" + _scaled_launchers() + "\n"


class ScaledEmulator:
    """The scaled kernels compiled for the host; ``launch(name, grid, block, *args)`` with
    numpy arrays for pointers.  Use :func:`scaled_emulator` for the shared instance."""

    check = staticmethod(check_launch)

    def __init__(self, lib_path: Path, measure: bool = False):
        self.lib = ctypes.CDLL(str(lib_path))
        self.measure = measure
        for d in _SK.DTYPES:
            fa = getattr(self.lib, f"emu_{_SK.amax_name(d)}")
            fa.argtypes = [_U32, _U32, _P, _P, _I64, _I32, _I32, _I32]
            for sym in (False, True):
                fe = getattr(self.lib, f"emu_{_SK.encode_name(d, sym)}")
                fe.argtypes = ([_U32, _U32, _P, _P, _P, _I64, _I32, _I32, _I32, _I32, _U32]
                               + [_F32] * 16 + [_U32, _U32, _I32, _U32, _I32])
                fe.restype = None
            fd = getattr(self.lib, f"emu_{_SK.decode_name(d)}")
            fd.argtypes = [_U32, _U32, _P, _P, _P, _I32, _P, _P, _I64, _I32, _I32, _I32]
            fr = getattr(self.lib, f"emu_{_SK.errors_name(d)}")
            fr.argtypes = [_U32, _U32, _P, _P, _P, _P, _P, _I64, _I32, _I32, _I32, _I32, _I32] + [_F32] * 16 \
                + [_U32, _U32, _I32, _U32, _I32]
            fr.restype = None
            fg = getattr(self.lib, f"emu_{_SK.ggml_name(d)}")
            fg.argtypes = [_U32, _U32, _P, _P, _P, _I64, _I32, _P, _P, _I32, _F32, _I32, _U32]
            for fn in (fa, fd, fg):
                fn.restype = None
        fs = getattr(self.lib, f"emu_{_SK.STEPS_NAME}")
        fs.argtypes = [_U32, _U32, _P, _I64, _P, _P, _I32, _I32, _P, _I32, _P, _P, _P, _P, _P, _P, _I32, _P]
        fs.restype = None

    def launch(self, name: str, grid: int, block: int, *args, first_block: int = 0):
        conv = []
        for a in args:
            if isinstance(a, np.floating):
                a = float(a)
            elif isinstance(a, np.integer):
                a = int(a)
            conv.append(a)
        call_guarded(self.lib, name, int(grid), int(block), conv, trace=_trace(self), first_block=first_block)


_SCALED_EMU: dict[bool, ScaledEmulator] = {}


def scaled_emulator() -> ScaledEmulator:
    """Build (once; cached on disk) and load the host emulation of the scaled kernels (its
    measuring build within :func:`recording`)."""
    m = _RECORDER is not None
    if m not in _SCALED_EMU:
        _SCALED_EMU[m] = ScaledEmulator(_build_library(scaled_emulator_source(), "emu_scaled", m), m)
    return _SCALED_EMU[m]


def _kernel_input(x: np.ndarray) -> tuple[np.ndarray, str]:
    key = _dtype_key(x.dtype)
    xs = np.ascontiguousarray(x).reshape(-1)
    return (xs.view(np.uint16) if key == "bf16" else xs), key


def _aligned(a: np.ndarray, to: int) -> bool:
    return a.ctypes.data % to == 0


def scaled_amax_emulated(x: np.ndarray, block_size: int, *, vec: bool = True) -> np.ndarray:
    """:func:`quantbook.bulk.gpu.scaled.scaled_amax_gpu` run by the emulator (``vec=False``
    forces the scalar path)."""
    xs, key = _kernel_input(x)
    n = xs.size
    bits = np.zeros(F.n_blocks(n, block_size), dtype=np.uint32)
    grid, cta, v, log2b = _GS.launch_shape("amax", n, block_size, vec and _aligned(xs, 16), key)
    scaled_emulator().launch(_SK.amax_name(key), grid, cta, xs, bits, n, block_size, log2b, v)
    return _GS.amax_from_bits(bits)


def scaled_encode_emulated(x: np.ndarray, factor, divide: bool, table, block_size: int, *,
                           vec: bool = True, allow_symmetric: bool = True) -> np.ndarray:
    args = _GS.encoder_args(table, allow_symmetric)
    xs, key = _kernel_input(x)
    n = xs.size
    f, div = _GS.exact_multiplier(factor, divide)
    packed = np.full(_L.packed_length(n), 0xEE, dtype=np.uint8)   # poison: all bytes written?
    grid, cta, v, log2b = _GS.launch_shape("encode", n, block_size,
                                           vec and _aligned(xs, 16) and not div, key, args.sym)
    scaled_emulator().launch(_SK.encode_name(key, args.sym), grid, cta, xs, np.ascontiguousarray(f), packed,
                             n, block_size, log2b, int(div), v, args.pad, *args.scalars())
    return packed


def scaled_decode_emulated(packed, scale, table, block_size: int, n: int, out_dtype, *,
                           vec: bool = True, lut=None):
    """:func:`quantbook.bulk.gpu.scaled.scaled_decode_gpu` run by the emulator: ``scale`` a
    float32 per block, or with ``lut`` the stored bits the kernel looks up in it."""
    key = _dtype_key(out_dtype)
    st = {"f32": np.float32, "f16": np.float16, "bf16": np.uint16}[key]
    out = np.full(n, np.nan, np.float32) if key == "f32" else np.full(n, 0x7E7E, np.uint16).view(st)
    pk = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)
    grid, cta, v, log2b = _GS.launch_shape("decode", n, block_size,
                                           vec and _aligned(pk, _GS._DECODE_ALIGN[key])
                                           and _aligned(out, 16), key)
    if lut is None:
        s = np.ascontiguousarray(scale, dtype=np.float32).reshape(-1)
        lut, sbytes = s, 4
    else:
        s = np.ascontiguousarray(scale).reshape(-1)
        lut, sbytes = np.ascontiguousarray(lut, dtype=np.float32), s.itemsize
    scaled_emulator().launch(_SK.decode_name(key), grid, cta, pk, s, lut, sbytes,
                             F.decode_table(table, _L.SCALED_BITS), out, n, block_size, log2b, v)
    if key == "bf16":
        import ml_dtypes

        return out.view(ml_dtypes.bfloat16)
    return out


def scaled_errors_emulated(x: np.ndarray, factor, divide: bool, scale, table, block_size: int, loss: str,
                           *, vec: bool = True):
    """:func:`quantbook.bulk.gpu.scaled.scaled_errors_gpu` run by the emulator (``vec=False``
    forces the element-by-element loads)."""
    args = _GS.encoder_args(table)
    xs, key = _kernel_input(x)
    n = xs.size
    nb = F.n_blocks(n, block_size)
    f, div = _GS.exact_multiplier(factor, divide)
    err = np.full(nb, np.nan)                                    # poison: every block written?
    if n:
        scaled_emulator().launch(_SK.errors_name(key), -(-nb // _SK.GGML_CTA), _SK.GGML_CTA, xs,
                                 np.ascontiguousarray(f, np.float32),
                                 np.ascontiguousarray(scale, np.float32).reshape(-1),
                                 F.decode_table(table, _L.SCALED_BITS), err, n, block_size, int(div),
                                 int(loss == "l1"), int(args.sym),
                                 int(_GS.errors_vec(block_size, vec and _aligned(xs, 16))), *args.scalars())
    return err


def scaled_ggml_emulated(x: np.ndarray, table, block_size: int, ntry: int):
    """:func:`quantbook.bulk.gpu.scaled.scaled_ggml_gpu` run by the emulator."""
    v, order, nv, delta, pad = _GS.ggml_args(table)
    xs, key = _kernel_input(x)
    n = xs.size
    nb = F.n_blocks(n, block_size)
    d = np.full(nb, np.nan, np.float32)                        # poison: every block written?
    packed = np.full(_L.packed_length(n), 0xEE, dtype=np.uint8)
    if n:
        scaled_emulator().launch(_SK.ggml_name(key), -(-nb // _SK.GGML_CTA), _SK.GGML_CTA, xs, d, packed,
                                 n, block_size, v, order, nv, delta, ntry, pad)
    return d, packed


class EmulatedScaledBackend(Backend):
    """The scaled hooks of the gpu backend with the kernels run by the emulator.  Not
    registered (the bitsandbytes layout is :class:`EmulatedCudaBackend`'s): tests hand it to
    :func:`quantbook.bulk.scaled.quantize_scaled` / ``dequantize_scaled`` directly."""

    name = "gpu-scaled-emulated"
    scaled_layouts = True

    def __init__(self, vec: bool = True, allow_symmetric: bool = True):
        self.vec = vec
        self.allow_symmetric = allow_symmetric

    def unavailable(self):
        try:
            scaled_emulator()
        except EmulatorUnavailable as exc:
            return f"host emulation of the scaled kernels unavailable: {exc}"
        return None

    def sanitize_nonfinite(self, x, block_size):
        return sanitize_emulated(x, block_size)

    def scaled_amax(self, x, block_size):
        return scaled_amax_emulated(x, block_size, vec=self.vec)

    def scaled_encode(self, x, factor, divide, table, block_size):
        return scaled_encode_emulated(x, factor, divide, table, block_size, vec=self.vec,
                                      allow_symmetric=self.allow_symmetric)

    def scaled_decode(self, packed, scale, table, block_size, n, out_dtype):
        return scaled_decode_emulated(packed, scale, table, block_size, n, out_dtype, vec=self.vec)

    def scaled_decode_lookup(self, packed, lut, index, table, block_size, n, out_dtype):
        return scaled_decode_emulated(packed, index, table, block_size, n, out_dtype, vec=self.vec, lut=lut)

    def scaled_errors(self, x, factor, divide, scale, table, block_size, loss):
        return scaled_errors_emulated(x, factor, divide, scale, table, block_size, loss)

    def scaled_ggml(self, x, table, block_size, ntry):
        return scaled_ggml_emulated(x, table, block_size, ntry)


class EmulatedCudaBackend(EmulatedScaledBackend, name="gpu-emulated"):
    """The CUDA kernels, launched as the gpu backend launches them, on the CPU: bitsandbytes'
    layout and, as the gpu backend, the scaled layouts (the hooks above)."""

    def unavailable(self):
        try:
            emulator()
            scaled_emulator()
        except EmulatorUnavailable as exc:
            return f"host emulation of the kernels unavailable: {exc}"
        return None

    def quantize_blocks(self, x, code, bits, block_size):
        return quantize_emulated(x, code, bits, block_size)

    def dequantize_blocks(self, packed, absmax, code, bits, block_size, n, out_dtype):
        return dequantize_emulated(packed, absmax, code, bits, block_size, n, out_dtype)

    def quantize_nested(self, absmax, offset):
        return quantize_absmax_nested_emulated(absmax, offset)

    def _error_chunks(self, x, xhat):
        if not error_chunks_kernel_takes(x, xhat):   # as the gpu backend: the host's sums
            return super()._error_chunks(x, xhat)
        return error_chunks_emulated(x, xhat)


# ---- the vector-quantization kernels (quantbook/bulk/gpu/vq_kernels.py) -----------------------
# A third library: the same shim, the float64 intrinsics only these kernels use, and launchers
# built from the kernels' own parameter lists.

from quantbook.bulk.gpu import vq_kernels as _VK  # noqa: E402

_VQ_SHIM = r"""
static inline double __ddiv_rn(double a, double b) { volatile double r = a / b; return r; }
static inline double __dsqrt_rn(double a) { volatile double r = std::sqrt(a); return r; }
static inline double __longlong_as_double(long long u) { double d; std::memcpy(&d, &u, 8); return d; }
static inline long long __double_as_longlong(double d) { long long u; std::memcpy(&u, &d, 8); return u; }
static inline float __double2float_rn(double d) { volatile float r = (float)d; return r; }
"""

_VQ_CTYPES = {"qbv_i64": _I64, "int": _I32, "unsigned": _U32, "double": ctypes.c_double, "float": _F32}
#: the element type of each pointer a VQ kernel takes (its scalars: :data:`_SCALAR_NUMPY`)
_VQ_POINTERS = {"float*": np.float32, "double*": np.float64, "int*": np.int32, "qb_u16*": np.uint16}


def _vq_params(name: str) -> list[tuple[str, str]]:
    """``(type, name)`` of each parameter of kernel ``name``, pointers as ``T*``."""
    out = []
    for part in _VK.PARAMS[name].split(","):
        toks = part.replace("const ", "").replace("__restrict__", "").split()
        out.append(("".join(toks[:-1]), toks[-1]))
    return out


def vq_emulator_source() -> str:
    out = [_SHIM, _VQ_SHIM, _VK.source()]
    for name in _VK.all_kernel_names():
        args = ", ".join(n for _, n in _vq_params(name))
        out.append(f'extern "C" void emu_{name}(unsigned grid, unsigned block, {_VK.PARAMS[name]}) '
                   f"{{ qb_run_grid(grid, block, [&] {{ {name}({args}); }}); }}")
    return "\n".join(out) + "\n"


class VQEmulator(ScaledEmulator):
    """The vector-quantization kernels compiled for the host (``launch`` as the others')."""

    def __init__(self, lib_path: Path, measure: bool = False):
        self.lib = ctypes.CDLL(str(lib_path))
        self.measure = measure
        for name in _VK.all_kernel_names():
            fn = getattr(self.lib, f"emu_{name}")
            fn.argtypes = [_U32, _U32] + [_P if t.endswith("*") else _VQ_CTYPES[t] for t, _ in _vq_params(name)]
            fn.restype = None

    @staticmethod
    def check(name: str, args) -> None:
        """:func:`check_launch`, and each array of the pointer's element type, C-contiguous."""
        check_launch(name, args)
        for (typ, pname), a in zip(kernel_signature(name), args):
            if typ.endswith("*"):
                assert a.dtype == _VQ_POINTERS[typ] and a.flags.c_contiguous, (name, pname, a)


_VQ_EMU: dict[bool, VQEmulator] = {}


def vq_emulator() -> VQEmulator:
    """Build (once; cached on disk) and load the host emulation of the VQ kernels (its
    measuring build within :func:`recording`)."""
    m = _RECORDER is not None
    if m not in _VQ_EMU:
        _VQ_EMU[m] = VQEmulator(_build_library(vq_emulator_source(), "emu_vq", m), m)
    return _VQ_EMU[m]


class AnyEmulator:
    """Launches any kernel of the three libraries, by its name (a stand-in ``cupy`` serving
    every backend at once, e.g. evaluate-model with scalar and vector codebooks)."""

    def check(self, name: str, args) -> None:
        (VQEmulator.check if name.startswith("qbv_") else check_launch)(name, args)

    def launch(self, name: str, grid: int, block: int, *args, first_block: int = 0):
        lib = vq_emulator() if name.startswith("qbv_") else \
            scaled_emulator() if name.startswith("qbs_") else emulator()
        lib.launch(name, grid, block, *args, first_block=first_block)


def any_emulator() -> AnyEmulator:
    return AnyEmulator()
