"""Coalescing of the bulk kernels' global loads and stores, checked on the CPU.

The measuring emulator (tests/gpu_traffic.py) forms each warp-wide request as a GPU does and
counts the 32-byte sectors it touches.  The model itself is checked first, on small kernels
whose sector counts are worked out by hand (the oracle): a coalesced 16-byte copy, lanes that
each write their own 128-byte run (32 sectors a request), a per-block scale every lane reads,
strided loads, an array that starts 4 bytes past a boundary, a divergent store.

Then every bulk kernel family (tests/gpu_coalescing.py: the gpu backend's launchers on full
blocks, float32/float16/bfloat16, 1/2/4/8-bit codes, block sizes 16, 64 and 4096), each of its
global accesses held to the bound its design gives (EXPECT, with the reason).  Only the access
pattern is modelled, not speed; an access the table does not know fails, so a new one gets its
bound when it is written.
"""

from __future__ import annotations

import ctypes
import re

import gpu_coalescing as C
import gpu_emulator as E
import gpu_traffic as T
import numpy as np
import pytest

from quantbook.bulk.gpu import kernels as K
from quantbook.bulk.gpu import scaled_kernels as SK
from quantbook.bulk.gpu import vq_kernels as VK


@pytest.fixture(scope="module")
def measuring():
    why = E.measuring_unavailable()
    if why:
        pytest.skip(why)


# ---- the model, on kernels with known answers ------------------------------------------------

_TOYS = r"""
/* coalesced: thread e loads the 16 bytes at 16 e and stores them changed (a vector whose fields
   are used: one 16-byte access each way, as on a GPU, not four 4-byte ones) */
__global__ void toy_copy16(const uint4* x, uint4* out) {
    const unsigned e = blockIdx.x * blockDim.x + threadIdx.x;
    const uint4 r = x[e];
    out[e] = make_uint4(r.w, r.z + 1u, r.y, r.x);
}
/* the pattern a coalesced store replaces: thread e writes its own 128-byte run, 16 bytes a store */
__global__ void toy_runs(const uint4* x, uint4* out) {
    const unsigned e = blockIdx.x * blockDim.x + threadIdx.x;
    for (int v = 0; v < 8; ++v) {
        const uint4 r = x[8 * e + v];
        out[8 * e + v] = make_uint4(r.w, r.z + 1u, r.y, r.x);
    }
}
/* a scale a block of 64 that every lane reads, and every stride-th value */
__global__ void toy_scalars(const float* s, const float* x, float* out, int stride) {
    const unsigned e = blockIdx.x * blockDim.x + threadIdx.x;
    out[e] = s[e / 64] * x[stride * e];
}
/* only the odd lanes load and store */
__global__ void toy_diverge(const float* x, float* out) {
    const unsigned e = blockIdx.x * blockDim.x + threadIdx.x;
    if (threadIdx.x & 1) out[e] = x[e];
}
""" + "".join(
    f'extern "C" void emu_{k}(unsigned grid, unsigned block, {p}) {{\n'
    f"  qb_run_grid(grid, block, [&] {{ {k}({a}); }});\n}}\n"
    for k, p, a in [("toy_copy16", "const uint4* x, uint4* out", "x, out"),
                    ("toy_runs", "const uint4* x, uint4* out", "x, out"),
                    ("toy_scalars", "const float* s, const float* x, float* out, int stride", "s, x, out, stride"),
                    ("toy_diverge", "const float* x, float* out", "x, out")])


@pytest.fixture(scope="module")
def toys(measuring):
    lib = ctypes.CDLL(str(E._build_library(E._SHIM + _TOYS, "emu_toys_traffic", measure=True)))

    def launch(name, grid, block, *args):
        rec = T.Recorder(lambda k: T.kernel_params(_TOYS, k))
        conv = [a if isinstance(a, np.ndarray) else ctypes.c_int(a) for a in args]
        E.call_guarded(lib, name, grid, block, conv, trace=rec)
        (one,) = rec.launches
        return T.summary(one)

    return launch


def _check(t: T.Traffic, requests, sectors, nbytes, warp_sectors):
    assert (t.requests, t.sectors, t.bytes, t.warp_sectors) == (requests, sectors, nbytes, warp_sectors)


def test_a_coalesced_16_byte_copy_is_16_sectors_a_request(toys):
    x = np.arange(4 * 64, dtype=np.uint32)
    got = toys("toy_copy16", 1, 64, x, np.zeros_like(x))   # two warps
    for key in (("x", "load"), ("out", "store")):
        _check(got[key], 2, 2 * 16, 2 * 512, 2 * 16)
        assert got[key].efficiency == 1.0 and got[key].sectors_per_request == 16


def test_lanes_writing_their_own_runs_touch_a_sector_a_lane(toys):
    """The dequantize stores of the earlier kernels: 32 sectors a request, each half used by
    it; the next request uses the other half (the warp's footprint is whole)."""
    x = np.arange(32 * 32, dtype=np.uint32)
    got = toys("toy_runs", 1, 32, x, np.zeros_like(x))
    for key in (("x", "load"), ("out", "store")):
        _check(got[key], 8, 8 * 32, 8 * 512, 128)
        assert got[key].efficiency == 0.5 and got[key].coalescing == 0.5 and got[key].footprint == 1.0


def test_a_per_block_scale_is_one_sector_and_strides_waste_what_they_skip(toys):
    s = np.arange(2, dtype=np.float32)
    x = np.arange(2 * 64, dtype=np.float32)
    got = toys("toy_scalars", 1, 64, s, x, np.zeros(64, np.float32), 2)
    _check(got[("s", "load")], 2, 2, 8, 2)                 # a float a warp: broadcast
    assert got[("s", "load")].efficiency == 4 / 32 and got[("s", "load")].coalescing == 1.0
    _check(got[("x", "load")], 2, 2 * 8, 2 * 128, 2 * 8)   # every other float: 256 bytes a warp
    assert got[("x", "load")].efficiency == 0.5
    _check(got[("out", "store")], 2, 2 * 4, 2 * 128, 2 * 4)


def test_sectors_count_from_the_array_start_its_offset_mod_16_kept(toys):
    """An array 4 bytes past a 16-byte boundary (as a device view into an allocation): each
    warp's 128 bytes then span 5 sectors."""
    buf = np.arange(64 + 4, dtype=np.float32)
    assert buf.ctypes.data % 16 == 0
    x = buf[1:65]
    got = toys("toy_scalars", 1, 64, np.ones(1, np.float32), x, np.zeros(64, np.float32), 1)
    _check(got[("x", "load")], 2, 5 + 5, 256, 10)          # bytes 4..131: sectors 0-4, 132..259: 4-8
    assert got[("x", "load")].efficiency == 0.8


def test_a_divergent_access_is_one_request_of_the_lanes_that_take_it(toys):
    x = np.arange(64, dtype=np.float32)
    got = toys("toy_diverge", 1, 64, x, np.zeros_like(x))
    for key in (("x", "load"), ("out", "store")):
        _check(got[key], 2, 2 * 4, 2 * 64, 2 * 4)
        assert got[key].efficiency == 0.5


def test_only_a_recording_uses_the_measuring_build(measuring):
    plain = E.emulator()
    with E.recording() as rec:
        inside = E.emulator()
        E.sanitize_emulated(np.ones(64, np.float32), 64)
    assert not plain.measure and inside.measure and inside.lib._name != plain.lib._name
    assert E.emulator() is plain
    assert [launch.name for launch in rec.launches] == [K.sanitize_name("f32")]
    E.sanitize_emulated(np.ones(64, np.float32), 64)        # not noted: the recording is over
    assert len(rec.launches) == 1


# ---- the bulk kernels ------------------------------------------------------------------------

_D = r"(f32|f16|bf16)"
_HALF = r"(f16|bf16)"
_GATHER = {}   # a data-dependent index into a small table (cached on a GPU): no bound
_STREAM = {"efficiency": 0.95}
_PER_BLOCK = {"coalescing": 0.95}   # a value a block (or group), several lanes sharing it or one lane storing it


def _lane_runs(efficiency: float) -> dict:
    """A thread reads (or writes) its own contiguous run: each request touches a sector a lane
    (at worst), using ``efficiency`` of it; the warp's later requests use the rest."""
    return {"efficiency": efficiency, "footprint": 0.95}


#: (kernel name pattern, array, direction, least values, why); the first match applies
EXPECT = [
    # bitsandbytes' layout (kernels.py)
    (rf"qb_quantize_{_D}_v\d+_p\d_(s\d|w)", "x", "load", _lane_runs(0.5),
     "V consecutive values a thread (32 or 64 bytes) in 16-byte loads"),
    (rf"qb_quantize_{_D}_v\d+_p\d_(s\d|w)", "packed", "store", _STREAM, "consecutive lanes, consecutive bytes"),
    (rf"qb_quantize_{_D}_v\d+_p\d_(s\d|w)", "absmax", "store", _PER_BLOCK, "a block's first lane stores its max"),
    (rf"qb_quantize_{_D}_v\d+_p\d_(s\d|w)", "bucket|bounds|order", "load", {"coalescing": 0.95},
     "the encoder tables, copied to shared memory by consecutive threads"),
    (rf"qb_dequantize_{_D}_p\d", "packed", "load", _STREAM, "consecutive lanes, consecutive bytes"),
    (rf"qb_dequantize_{_D}_p\d", "out", "store", _STREAM,
     "16 bytes a lane, consecutive lanes (float32 from 1-bit codes: lanes trade halves of their bytes)"),
    (rf"qb_dequantize_{_D}_p\d", "absmax", "load", _PER_BLOCK, "the lanes of a block share its absmax"),
    (rf"qb_dequantize_{_D}_p\d", "code", "load", {"coalescing": 0.95}, "the code table, copied to shared memory"),
    (K.NESTED_QUANT_NAME, "absmax", "load", _STREAM, "a value a thread"),
    (K.NESTED_QUANT_NAME, "q", "store", _STREAM, "a byte a thread"),
    (K.NESTED_QUANT_NAME, "nested_absmax", "store", _PER_BLOCK, "one lane a block of 256"),
    (K.NESTED_QUANT_NAME, "lut", "load", _GATHER, "the 65536-entry code table, by value"),
    (K.NESTED_DEQUANT_NAME, "q", "load", _STREAM, "a byte a thread"),
    (K.NESTED_DEQUANT_NAME, "out", "store", _STREAM, "a value a thread"),
    (K.NESTED_DEQUANT_NAME, "nested_absmax", "load", _PER_BLOCK, "a warp shares a block's value"),
    (K.NESTED_DEQUANT_NAME, "code", "load", {"coalescing": 0.95}, "the code table, copied to shared memory"),
    (rf"qb_sanitize_{_D}", "x", "load", _STREAM, "a block's values strided over its lanes"),
    (rf"qb_sanitize_{_D}", "out", "store", _STREAM, "a block's values strided over its lanes"),
    (rf"qb_error_chunks_{_D}", "x|xh|x\\|xh", "load", _STREAM,
     "64 bytes of each of 8 runs a warp, in 16-byte loads, staged in shared memory"),
    (rf"qb_error_chunks_{_D}", "out", "store", _STREAM, "a run's two sums, consecutive runs"),
    # the scaled layouts (scaled_kernels.py)
    (r"qbs_(amax|encode|encode_sym)_f32", "x", "load", _lane_runs(0.5), "a chunk of 8 float32 a lane, 2 loads"),
    (rf"qbs_(amax|encode|encode_sym)_{_HALF}", "x", "load", _STREAM, "a chunk of 8 16-bit values a lane, 1 load"),
    (rf"qbs_amax_{_D}", "out", "store|load", _PER_BLOCK, "a block's max from one lane (atomicMax past 256)"),
    (rf"qbs_(encode|encode_sym)_{_D}", "factor", "load", _PER_BLOCK, "the lanes of a block share its factor"),
    (rf"qbs_(encode|encode_sym)_{_D}", "packed", "store", _STREAM, "4 bytes a lane, consecutive lanes"),
    (SK.STEPS_NAME, "amax", "load", _PER_BLOCK, "a thread a block"),
    (SK.STEPS_NAME, "stored_out|factor_out|scale_out", "store", _PER_BLOCK, "a thread a block"),
    (SK.STEPS_NAME, "starts|buckets|stored|factor|scale|valid", "load", _GATHER, "the step table, by value"),
    (rf"qbs_decode_{_D}", "packed", "load", _STREAM, "2 or 4 bytes a lane, consecutive lanes"),
    (rf"qbs_decode_{_D}", "out", "store", _STREAM, "16 bytes a lane, consecutive lanes"),
    (rf"qbs_decode_{_D}", "scale", "load", _PER_BLOCK, "the lanes of a block share its scale"),
    (rf"qbs_decode_{_D}", "lut", "load", _GATHER, "the rule's decode table, by the stored bits"),
    (rf"qbs_decode_{_D}", "table", "load", {"coalescing": 0.95}, "16 values, copied to shared memory"),
    (rf"qbs_errors_{_D}", "x", "load", _lane_runs(0.5), "a thread a block, a chunk a 16-byte load (or two)"),
    (rf"qbs_errors_{_D}", "factor|scale|table", "load", _PER_BLOCK, "a thread a block"),
    (rf"qbs_errors_{_D}", "err", "store", _PER_BLOCK, "a thread a block"),
    (r"qbs_ggml_f32", "x", "load", _lane_runs(4 / 32), "a thread a block, value by value (arithmetic-bound)"),
    (rf"qbs_ggml_{_HALF}", "x", "load", _lane_runs(2 / 32), "a thread a block, value by value (arithmetic-bound)"),
    (rf"qbs_ggml_{_D}", "packed", "store", _lane_runs(1 / 32), "a thread a block, a byte at a time"),
    (rf"qbs_ggml_{_D}", "d", "store", _PER_BLOCK, "a thread a block"),
    (rf"qbs_ggml_{_D}", "v|order", "load", {"coalescing": 0.95}, "16 values, copied to shared memory"),
    # vector quantization (vq_kernels.py)
    (r"qbv_fwht_tile|qbv_butterfly|qbv_cast|qbv_cast64", ".*", "load|store", _STREAM,
     "consecutive entries, consecutive lanes"),
    (r"qbv_group_stat", "v", "load", _lane_runs(0.5), "a thread a group, 16-byte loads"),
    (r"qbv_group_stat", "out|scale|half_bits", "store", _PER_BLOCK, "a thread a group"),
    (r"qbv_encode|qbv_encode_grid2", "v", "load", _lane_runs(4 / 32), "a thread a vector, a value at a time"),
    (r"qbv_encode|qbv_encode_grid2|qbv_decode", "s", "load", _PER_BLOCK, "the vectors of a group share its scale"),
    (r"qbv_encode", "out", "store", _STREAM, "an index a thread"),
    (r"qbv_encode_grid2", "out", "store", {"footprint": 0.95},
     "an index a thread, stored in the branch of the search that found it"),
    (r"qbv_encode|qbv_encode_grid2|qbv_decode", "c0s|order|pts|lut|multi", "load", _GATHER,
     "the codebook and its search tables, by value"),
    (r"qbv_decode", "idx", "load", _PER_BLOCK, "the P lanes of a vector share its index"),
    (r"qbv_decode", "out", "store", _STREAM, "a value a thread"),
]


def _expected(kernel: str, array: str, direction: str):
    for pat, arrays, dirs, least, why in EXPECT:
        if re.fullmatch(pat, kernel) and re.fullmatch(arrays, array) and re.fullmatch(dirs, direction):
            return least, why
    return None


def test_every_bound_names_a_kernel_there_is():
    names = K.all_kernel_names() + SK.all_kernel_names() + VK.all_kernel_names()
    for pat, *_ in EXPECT:
        assert any(re.fullmatch(pat, n) for n in names), pat


@pytest.fixture(scope="module")
def stand_in(measuring):
    with pytest.MonkeyPatch.context() as mp:
        C.install_stand_in(mp)
        yield


def test_a_kernel_the_plain_build_ran_first_is_measured_all_the_same(stand_in):
    """The plain and the measuring build of a library run side by side in one process.  g++
    bound a template's statics (a ``__shared__`` array's slot) to one object for both
    (STB_GNU_UNIQUE, even under RTLD_LOCAL): a kernel the plain build had run faulted when
    measured, and every emulator test after it in the process failed."""
    from gpu_cases import fake_device
    from quantbook.bulk import reference as R
    from quantbook.bulk.gpu import backend as G

    x = np.random.default_rng(0).standard_normal(8192).astype(np.float32)
    code = np.linspace(-1, 1, 4).astype(np.float32)
    want = R.quantize_reference(x, code, 2, 32)

    def same_as_the_reference():
        p, a = G.quantize_gpu(fake_device(x), code, 2, 32)
        return np.array_equal(np.asarray(p), want[0]) and np.array_equal(np.asarray(a), want[1])

    assert same_as_the_reference()   # the plain build first
    rows = C.measure(C.Run("blockwise", "float32", "2-bit", 32))
    assert {r.kernel for r in rows} >= {"qb_quantize_f32_v16_p2_w"}
    assert same_as_the_reference()   # and again after the measuring one


@pytest.mark.parametrize("run", C.runs(), ids=lambda r: r.id)
def test_global_accesses_are_as_coalesced_as_the_kernel_design_allows(stand_in, run):
    rows = C.measure(run)
    assert rows, run
    bad = []
    for row in rows:
        hit = _expected(row.kernel, row.array, row.direction)
        if hit is None:
            bad.append(f"{row.kernel} {row.array} {row.direction}: no bound for this access (add one to EXPECT)")
            continue
        least, why = hit
        for metric, floor in least.items():
            got = getattr(row.traffic, metric)
            if got < floor:
                bad.append(f"{row.kernel} {row.array} {row.direction}: {metric} {got:.3f} < {floor:.3f} ({why})")
    assert not bad, "\n".join(bad)
