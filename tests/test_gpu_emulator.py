"""The host emulation of CUDA (tests/gpu_emulator.py) is the oracle of every GPU test without a
device, so its own rules are checked here on small kernels with known answers: a barrier keeps
the threads of a block in step, a shuffle exchanges the values of a warp, a barrier a kernel
leaves out shows up, and threads that pass different numbers of barriers are an error."""

from __future__ import annotations

import ctypes

import gpu_emulator as E
import numpy as np
import pytest

from quantbook.bulk.gpu import kernels as K
from quantbook.bulk.gpu import scaled_kernels as SK
from quantbook.bulk.gpu import vq_kernels as VK

_TOYS = r"""
/* thread 0 hands its block's first value to the others through shared memory */
template <bool SYNC>
__global__ void toy_broadcast(const float* x, float* out) {
    __shared__ float s;
    const unsigned e = blockIdx.x * blockDim.x + threadIdx.x;
    if (threadIdx.x == 0) s = x[e];
    if (SYNC) __syncthreads();
    out[e] = s;
}
/* every lane gets its warp's sum */
__global__ void toy_warp_sum(const float* x, float* out) {
    const unsigned e = blockIdx.x * blockDim.x + threadIdx.x;
    float a = x[e];
    for (int off = 1; off < 32; off <<= 1) a += __shfl_xor_sync(0xffffffffu, a, off);
    out[e] = a;
}
/* lane l gets lane (7 l + 3) mod 32's float and lane (l + 5) mod 32's bits (a source lane
   past 31 wraps, as on a GPU) */
__global__ void toy_shfl_from(const float* x, const unsigned* u, float* out, unsigned* uout) {
    const unsigned e = blockIdx.x * blockDim.x + threadIdx.x, lane = threadIdx.x & 31u;
    out[e] = __shfl_sync(0xffffffffu, x[e], (int)((7u * lane + 3u) & 31u));
    uout[e] = __shfl_sync(0xffffffffu, u[e], (int)lane + 37);
}
/* the threads past n leave before the barrier the others wait at */
__global__ void toy_early_exit(const float* x, float* out, int n) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= n) return;
    __syncthreads();
    out[e] = x[e];
}
/* each warp publishes a shuffled value, and every thread reads the next warp's, twice;
   without SYNC2 nothing keeps a warp's second write after the other warps' first reads */
template <bool SYNC2>
__global__ void toy_two_rounds(const float* x, float* out) {
    __shared__ float s[32];
    const unsigned w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (unsigned r = 0; r < 2; ++r) {
        float a = x[r * blockDim.x + threadIdx.x];
        a += __shfl_xor_sync(0xffffffffu, a, 1);
        if ((threadIdx.x & 31) == 0) s[w] = a;
        __syncthreads();
        out[r * blockDim.x + threadIdx.x] = s[(w + 1) % nw];
        if (SYNC2) __syncthreads();
    }
}
extern "C" void emu_toy_two_rounds(unsigned grid, unsigned block, const float* x, float* o, int sync) {
    if (sync) qb_run_grid(grid, block, [&] { toy_two_rounds<true>(x, o); });
    else qb_run_grid(grid, block, [&] { toy_two_rounds<false>(x, o); });
}
/* a 16-byte load a thread: x must be 16-byte aligned, as on a GPU */
__global__ void toy_vector_load(const float* x, float* out) {
    const uint4 r = reinterpret_cast<const uint4*>(x)[threadIdx.x];
    out[threadIdx.x] = __uint_as_float(r.y);
}
extern "C" void emu_toy_vector_load(unsigned grid, unsigned block, const float* x, float* o) {
    qb_run_grid(grid, block, [&] { toy_vector_load(x, o); });
}
extern "C" void emu_toy_broadcast(unsigned grid, unsigned block, const float* x, float* o, int sync) {
    if (sync) qb_run_grid(grid, block, [&] { toy_broadcast<true>(x, o); });
    else qb_run_grid(grid, block, [&] { toy_broadcast<false>(x, o); });
}
extern "C" void emu_toy_shfl_from(unsigned grid, unsigned block, const float* x, const unsigned* u, float* o,
                                  unsigned* uo) {
    qb_run_grid(grid, block, [&] { toy_shfl_from(x, u, o, uo); });
}
extern "C" void emu_toy_warp_sum(unsigned grid, unsigned block, const float* x, float* o) {
    qb_run_grid(grid, block, [&] { toy_warp_sum(x, o); });
}
/* out[e + shift] = x[e + skew]: an access out of bounds when shift or skew is not 0 */
__global__ void toy_shifted_copy(const float* x, float* out, int shift, int skew) {
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    out[e + shift] = x[e + skew];
}
extern "C" void emu_toy_shifted_copy(unsigned grid, unsigned block, const float* x, float* o, int shift,
                                     int skew) {
    qb_run_grid(grid, block, [&] { toy_shifted_copy(x, o, shift, skew); });
}
extern "C" void emu_toy_early_exit(unsigned grid, unsigned block, const float* x, float* o, int n) {
    qb_run_grid(grid, block, [&] { toy_early_exit(x, o, n); });
}
/* a block's values go through shared memory, written at t + wshift and read at t + rshift:
   out of its bounds unless both are 0 */
__global__ void toy_shared_shift(const float* x, float* out, int wshift, int rshift) {
    __shared__ float s[64];
    const int t = threadIdx.x, e = blockIdx.x * blockDim.x + t;
    s[t + wshift] = x[e];
    __syncthreads();
    out[e] = s[t + rshift];
    __syncthreads();
}
extern "C" void emu_toy_shared_shift(unsigned grid, unsigned block, const float* x, float* o, int wshift,
                                     int rshift) {
    qb_run_grid(grid, block, [&] { toy_shared_shift(x, o, wshift, rshift); });
}
/* a table meant to be loaded once a CTA but loaded by block 0 only: the later blocks rely on
   block 0's values still being there */
__global__ void toy_table_once(const float* table, const int* idx, float* out) {
    __shared__ float s_t[16];
    if (blockIdx.x == 0 && threadIdx.x < 16) s_t[threadIdx.x] = table[threadIdx.x];
    __syncthreads();
    const unsigned e = blockIdx.x * blockDim.x + threadIdx.x;
    out[e] = s_t[idx[e]];
}
extern "C" void emu_toy_table_once(unsigned grid, unsigned block, const float* t, const int* idx, float* o) {
    qb_run_grid(grid, block, [&] { toy_table_once(t, idx, o); });
}
/* a flag set by any thread that sees a negative value, never cleared: it relies on shared
   memory starting at zero */
__global__ void toy_negate_if_any(const float* x, float* out) {
    __shared__ int s_neg;
    const unsigned e = blockIdx.x * blockDim.x + threadIdx.x;
    if (x[e] < 0.0f) s_neg = 1;
    __syncthreads();
    out[e] = s_neg ? -x[e] : x[e];
}
extern "C" void emu_toy_negate_if_any(unsigned grid, unsigned block, const float* x, float* o) {
    qb_run_grid(grid, block, [&] { toy_negate_if_any(x, o); });
}
/* the bytes a shared array holds as each block begins, copied out unchecked by thread 0 (what
   a read before any write sees), then written by the block */
static QB_UNCHECKED void toy_copy_unchecked(const void* s, unsigned n, unsigned char* to) {
    for (unsigned i = 0; i < n; ++i) to[i] = static_cast<const volatile unsigned char*>(s)[i];
}
__global__ void toy_peek(unsigned char* seen) {
    __shared__ float s[8];
    if (threadIdx.x == 0) toy_copy_unchecked(s, sizeof s, seen + blockIdx.x * sizeof s);
    __syncthreads();
    if (threadIdx.x < 8) s[threadIdx.x] = 1.0f;
    __syncthreads();
}
extern "C" void emu_toy_peek(unsigned grid, unsigned block, unsigned char* seen) {
    qb_run_grid(grid, block, [&] { toy_peek(seen); });
}
"""


@pytest.fixture(scope="module")
def toys():
    try:
        lib = ctypes.CDLL(str(E._build_library(E._SHIM + _TOYS, "emu_toys")))
    except E.EmulatorUnavailable as exc:
        pytest.skip(str(exc))

    def launch(name, grid, block, *args):
        conv = [a if isinstance(a, np.ndarray) else ctypes.c_int(a) for a in args]
        E.call_guarded(lib, name, grid, block, conv)

    return launch


@pytest.mark.parametrize("block", [32, 256, 1024])
def test_a_barrier_orders_the_threads_of_a_block(toys, block):
    x = np.arange(3 * block, dtype=np.float32)
    out = np.full_like(x, np.nan)
    toys("toy_broadcast", 3, block, x, out, 1)
    assert np.array_equal(out, np.repeat(x[::block], block))


def test_a_missing_barrier_shows_up(toys):
    """Thread 0 runs last between two barriers, so without the barrier the others read ``s``
    before any thread of their block has written it, and the launch raises; were the fibers
    run in thread order, the kernel would seem right."""
    x = np.arange(2 * 256, dtype=np.float32)
    out = np.full_like(x, np.nan)
    with pytest.raises(RuntimeError, match="toy_broadcast: read of shared array s \\(4 bytes\\) before any "
                                           "write in this block \\(block 0\\): bytes 0..3"):
        toys("toy_broadcast", 2, 256, x, out, 0)


def test_a_shuffle_exchanges_the_values_of_a_warp(toys):
    x = np.arange(4 * 128, dtype=np.float32) % 97   # integer sums: exact in any order
    out = np.full_like(x, np.nan)
    toys("toy_warp_sum", 4, 128, x, out)
    assert np.array_equal(out, np.repeat(x.reshape(-1, 32).sum(axis=1), 32))


def test_a_shuffle_from_a_lane_reads_that_lane_of_the_same_warp(toys):
    """``__shfl_sync``: every lane reads the value its source lane holds, within its own
    warp; the unsigned overload keeps every bit (a NaN payload too)."""
    x = np.arange(3 * 64, dtype=np.float32)
    u = np.arange(3 * 64, dtype=np.uint32) | np.uint32(0x7FA00000)   # signalling NaNs, each its own payload
    out, uout = np.full_like(x, np.nan), np.zeros_like(u)
    toys("toy_shfl_from", 3, 64, x, u, out, uout)
    lane = np.arange(x.size) % 32
    base = np.arange(x.size) - lane
    assert np.array_equal(out, x[base + (7 * lane + 3) % 32])
    assert np.array_equal(uout, u[base + (lane + 5) % 32])


def test_threads_that_pass_different_numbers_of_barriers_fail(toys):
    x = np.ones(256, dtype=np.float32)
    out = np.zeros_like(x)
    with pytest.raises(RuntimeError, match="different numbers of barriers"):
        toys("toy_early_exit", 1, 256, x, out, 200)
    toys("toy_early_exit", 1, 256, x, out, 256)   # all threads pass it: no error
    assert np.array_equal(out, x)


def test_warps_meet_only_at_barriers(toys):
    """A shuffle waits for its own warp only: a warp goes on to its next write while the
    warps before it have not yet read the last value (a race on a GPU, where warps meet only
    at barriers), so the missing second barrier shows up; were a shuffle a barrier of the
    whole block, the race would stay hidden."""
    x = np.arange(2 * 128, dtype=np.float32) % 97
    pairs = (x[0::2] + x[1::2]).reshape(2, 4, 16)[:, :, 0]        # lane 0's value a warp and round
    want = np.repeat(np.roll(pairs, -1, axis=1), 32, axis=1).reshape(-1)
    out = np.full_like(x, np.nan)
    toys("toy_two_rounds", 1, 128, x, out, 1)
    assert np.array_equal(out, want)
    toys("toy_two_rounds", 1, 128, x, out, 0)
    assert not np.array_equal(out, want)


def test_a_misaligned_vector_access_is_an_error(toys):
    """A 16-byte load through a pointer that is not 16-byte aligned faults on a GPU; here the
    launch raises (on the CPU the load would just work), so a host side that asks for the
    vector path on an offset array shows up."""
    x = np.arange(4 * 32 + 4, dtype=np.float32)
    out = np.full(32, np.nan, np.float32)
    start = (-x.ctypes.data % 16) // 4           # the first 16-byte aligned element
    toys("toy_vector_load", 1, 32, x[start:], out)
    assert np.array_equal(out, x[start + 1:start + 4 * 32:4])
    with pytest.raises(RuntimeError, match="misaligned"):
        toys("toy_vector_load", 1, 32, x[start + 1:], out)


def _aligned(n: int) -> np.ndarray:
    """``n`` float32 starting on a 16-byte boundary (so where an array's end lies is known)."""
    buf = np.zeros(n + 4, np.float32)
    start = (-buf.ctypes.data % 16) // 4
    return buf[start:start + n]


@pytest.mark.parametrize("n, shift, skew, what", [
    (62, 1, 0, "out-of-bounds write to argument 1 .*bytes 248..251"),
    (62, -1, 0, "out-of-bounds write to argument 1 .*bytes -4..-1"),
    (62, 0, 1, "out-of-bounds read of argument 0 .*bytes 248..251"),
    (62, 0, -1, "out-of-bounds read of argument 0 .*bytes -4..-1"),
    (64, 1, 0, "out-of-bounds access .*argument 1 .*0 bytes past its end"),
    (64, 0, 5000, "out-of-bounds access .*argument 0 .*past its end"),
    (64, -5000, 0, "out-of-bounds access .*argument 1 .*before its start")])
def test_an_access_out_of_bounds_fails(toys, n, shift, skew, what):
    """An access just past an array's end (62 float32 end 8 bytes short of a 16-byte boundary,
    so 8 canary bytes lie between them and the next page) or before its start touches the
    canary bytes, read or write; one farther away (or, for an array that ends on a 16-byte
    boundary, any access past its end) an inaccessible page: either raises, naming the
    argument, and the next launch runs as before.  A read of the canary would otherwise pass:
    it just returns those bytes."""
    x = _aligned(n)
    x[:] = np.arange(n)
    out = _aligned(n)
    with pytest.raises(RuntimeError, match=f"toy_shifted_copy: {what}"):
        toys("toy_shifted_copy", 2, n // 2, x, out, shift, skew)
    toys("toy_shifted_copy", 2, n // 2, x, out, 0, 0)
    assert np.array_equal(out, x)


@pytest.mark.parametrize("wshift, rshift, what", [
    (1, 0, "out-of-bounds access .*: shared array s \\(256 bytes\\), 0 bytes past its end"),
    (-1, 0, "out-of-bounds write to shared array s \\(256 bytes\\): bytes -4..-1"),
    (0, 1, "out-of-bounds access .*: shared array s \\(256 bytes\\), 0 bytes past its end"),
    (0, -1, "out-of-bounds read of shared array s \\(256 bytes\\): bytes -4..-1"),
    (0, 5000, "out-of-bounds access .*: shared array s \\(256 bytes\\), \\d+ bytes past its end")])
def test_a_shared_access_out_of_bounds_fails(toys, wshift, rshift, what):
    """A ``__shared__`` array is checked as a launch's are: an access one element past either
    end, read or write, raises, naming the kernel and the array (on a GPU it would read or
    clobber whatever lies next to it in shared memory).  This one ends where an inaccessible
    page begins, so past its end an access faults; before its start it touches the canary
    bytes.  In bounds, the values go through."""
    x = np.arange(2 * 64, dtype=np.float32)
    out = np.full_like(x, np.nan)
    with pytest.raises(RuntimeError, match=f"toy_shared_shift: {what}"):
        toys("toy_shared_shift", 2, 64, x, out, wshift, rshift)
    toys("toy_shared_shift", 2, 64, x, out, 0, 0)
    assert np.array_equal(out, x)


def test_a_shared_read_before_any_write_in_its_block_fails(toys):
    """On a GPU a CTA's shared memory starts undefined, so a kernel that reads a shared byte no
    thread of its block has written (the table block 0 loaded, a flag it never clears) works
    only by accident; here the launch raises, naming the kernel, the array and the block.  A
    write by one thread and reads by the others after a barrier are fine (the tests above)."""
    table = np.arange(16, dtype=np.float32) * 0.5
    idx = (np.arange(3 * 64) * 7 % 16).astype(np.int32)
    out = np.full(idx.size, np.nan, np.float32)
    with pytest.raises(RuntimeError, match="toy_table_once: read of shared array s_t \\(64 bytes\\) before any "
                                           "write in this block \\(block 1\\): bytes \\d+..\\d+ from its start"):
        toys("toy_table_once", 3, 64, table, idx, out)
    x = np.arange(2 * 64, dtype=np.float32)   # no negative value: no thread sets the flag
    with pytest.raises(RuntimeError, match="toy_negate_if_any: read of shared array s_neg \\(4 bytes\\) before "
                                           "any write in this block \\(block 0\\): bytes 0..3"):
        toys("toy_negate_if_any", 2, 64, x, out)


def test_a_blocks_shared_memory_starts_as_poison(toys):
    """What a read the check misses would see: each block's shared array starts as poison,
    never zeros nor the previous block's values (as a kept array would hold), and the poison
    changes from block to block and from launch to launch (all ones, so NaN; 0x7f bytes, so
    huge; noise), so a read one pattern leaves harmless shows up with another."""
    grid, width = 6, 32
    launches = []
    for _ in range(2):
        seen = np.zeros(grid * width, np.uint8)
        toys("toy_peek", grid, 32, seen)
        launches.append(seen.reshape(grid, width))
    written = np.full(8, 1.0, np.float32).view(np.uint8)
    for seen in launches:
        assert not any(np.array_equal(b, written) or not b.any() for b in seen)
        patterns = {b.tobytes() for b in seen}
        assert len(patterns) >= 3 and {b"\xff" * width, b"\x7f" * width} <= patterns
        assert np.isnan(seen.view(np.float32)).any()
    assert not np.array_equal(launches[0], launches[1])


def test_sorting_the_watched_spans_is_not_taken_for_an_access_out_of_bounds():
    """The shim keeps its watched spans sorted with std::sort, a template compiled with the
    checks, which moves an entry a field at a time: midway, an entry may run from a span below
    the library's own memory to one above it, and the sort's next access there was taken for
    an out-of-bounds one (the suite once failed so, at random: during a launch whose kernel
    first met a ``__shared__`` array, the launch raised and left the list half sorted).  Two
    spans either side of the library, given again in the wrong order, are sorted unflagged."""
    try:
        lib = ctypes.CDLL(str(E._build_library(E._SHIM, "emu_shim")))
    except E.EmulatorUnavailable as exc:
        pytest.skip(str(exc))
    oob = ctypes.c_int.in_dll(lib, "qb_oob")
    here = ctypes.addressof(oob)   # the shim's own memory: its spans' list lies next to this flag
    rows = np.array([(here + (64 << 20), here + (64 << 20) + 16, 0), (here - (64 << 20), here - (64 << 20) + 16, 1)],
                    np.uint64)
    try:
        for _ in range(2):   # the second sort starts from a list that covers the shim's memory
            oob.value = 0
            lib.qb_watch_launch(ctypes.c_int(2), rows.ctypes.data_as(ctypes.c_void_p))
            assert oob.value == 0, hex(ctypes.c_ulonglong.in_dll(lib, "qb_oob_at").value - here)
    finally:
        lib.qb_watch_launch(ctypes.c_int(0), None)


def test_two_builds_loaded_together_keep_their_own_shared_arrays(toys):
    """A kernel's shared array in two libraries loaded in one process (the plain and the
    measuring emulator, as one test run loads them): g++ makes a static local of a template
    one symbol for every library, so the slot one library made must not lead the other to an
    array it never made (there it read address 0 + offset and the launch faulted)."""
    lib = ctypes.CDLL(str(E._build_library(E._SHIM + _TOYS + "/* a second build */\n", "emu_toys")))

    def other(name, grid, block, *args):
        E.call_guarded(lib, name, grid, block, [a if isinstance(a, np.ndarray) else ctypes.c_int(a) for a in args])

    x = np.arange(2 * 64, dtype=np.float32)
    for launch in (toys, other, toys):
        out = np.full_like(x, np.nan)
        launch("toy_broadcast", 2, 64, x, out, 1)
        assert np.array_equal(out, np.repeat(x[::64], 64))


def test_every_shared_array_of_the_kernels_is_guarded():
    """Each ``__shared__`` declaration of the three kernel sources becomes guarded memory; one
    the rewrite does not know is an error, not an unchecked array."""
    for src in (K.source(), SK.source(), VK.source()):
        out = E.guard_shared(src)
        assert out.count("QB_SHARED") == src.count("__shared__") > 0
    with pytest.raises(ValueError, match="cannot guard"):
        E.guard_shared("__shared__ float a[4], b[4];")
    with pytest.raises(ValueError, match="outside a function"):
        E.guard_shared("__shared__ float a[4];\n__global__ void k() { a[0] = 1.0f; }")


def _nested_dequantize_variants() -> str:
    """The nested-absmax dequantize kernel as it is, and two copies each reading one element
    past an array: ``q`` (a launch's, its end in the bytes before the next page) and ``s_t``
    (shared)."""
    name = K.NESTED_DEQUANT_NAME
    src = K.source([name])
    body = src[src.index('extern "C" __global__ void __launch_bounds__(256) ' + name):]
    out = [src]
    load = "for (int i = threadIdx.x; i < QB_MAX_TABLE; i += blockDim.x) s_t[i] = code[i];"
    for tag, old, new in (("q", "s_t[q[i]]", "s_t[q[i + 1]]"), ("s", "s_t[q[i]]", "s_t[q[i] + 1]"),
                          ("once", load, "if (blockIdx.x == 0) " + load)):
        assert body.count(old) == 1
        out.append(body.replace(name, f"{name}_{tag}").replace(old, new))
    for tag in ("", "_q", "_s", "_once"):
        out.append(f'extern "C" void emu_{name}{tag}(unsigned grid, unsigned block, const qb_u8* q, const float* m,'
                   f" const float* code, float offset, float* o, qb_i64 n, int log2B) {{ qb_run_grid(grid, block,"
                   f" [&] {{ {name}{tag}(q, m, code, offset, o, n, log2B); }}); }}")
    return "\n".join(out)


def test_a_real_kernel_reading_past_an_array_fails():
    """Copies of a real kernel, each changed to read one element past an array, fail where the
    kernel as it is passes: past a launch's array whose end lies 4 bytes short of a 16-byte
    boundary (before the check, a read of the canary byte went unnoticed) and past a shared
    array; so does one that loads its shared table in block 0 only (a kept array held it)."""
    try:
        lib = ctypes.CDLL(str(E._build_library(E._SHIM + _nested_dequantize_variants(), "emu_toys_nested")))
    except E.EmulatorUnavailable as exc:
        pytest.skip(str(exc))
    n = 300                                              # 300 bytes: 4 short of a 16-byte boundary
    buf = np.zeros(n + 16, np.uint8)
    q = buf[-buf.ctypes.data % 16:][:n]
    q[:] = np.arange(n) % 256                            # the last block's codes reach 255
    nested = np.array([0.5, 2.0], np.float32)
    code = np.linspace(-1, 1, 256, dtype=np.float32)
    name = K.NESTED_DEQUANT_NAME

    def launch(tag):
        out = np.full(n, np.nan, np.float32)
        E.call_guarded(lib, name + tag, 2, 256, [q, nested, code, ctypes.c_float(0.25), out,
                                                  ctypes.c_longlong(n), ctypes.c_int(8)])
        return out

    assert np.array_equal(launch(""), code[q] * nested[np.arange(n) >> 8] + np.float32(0.25))
    with pytest.raises(RuntimeError, match=f"{name}_q: out-of-bounds read of argument 0 \\(300 bytes\\): "
                                           "bytes 300..300"):
        launch("_q")
    with pytest.raises(RuntimeError, match=f"{name}_s: out-of-bounds access .*: shared array s_t "
                                           "\\(1024 bytes\\), 0 bytes past its end"):
        launch("_s")
    with pytest.raises(RuntimeError, match=f"{name}_once: read of shared array s_t \\(1024 bytes\\) before any "
                                           "write in this block \\(block 1\\)"):
        launch("_once")
