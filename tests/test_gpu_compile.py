"""Always-running NVRTC compile check of the GPU kernels for sm_80 and sm_90 (no GPU needed).

Every dequantize and nested kernel, the quantize kernels of every dtype, values a thread and
packing with one compare a value, and those of float16 with none and with the most
(the other counts are the same template with another loop count; compiling all would take
minutes on two cores).  ptxas must report no register spills.

Skips only when CuPy's NVRTC binding or libnvrtc itself cannot be loaded
(pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12 — both are in the [test] extra).
"""

import re
import struct

import pytest

from quantbook.bulk.gpu import kernels as K
from quantbook.bulk.gpu.compile import compile_source

from checkout import checkout_path
from gpu_cases import ptxas_build


SAMPLE = sorted({K.quantize_name(d, v, p, k) for d in K.DTYPES for p in K.PACKINGS for v in K.quantize_vecs(d, p)
                 for k in ("s1", "w") if k in K.searches(p)}
                | {K.quantize_name("f16", v, p, k) for p in K.PACKINGS for v in K.quantize_vecs("f16", p)
                   for k in ("s0", f"s{K.max_steps(p)}")}
                | {n for n in K.all_kernel_names() if not n.startswith("qb_quantize_")}
                | {K.NESTED_QUANT_NAME})


def _family(name):
    return re.sub(r"_s\d+", "", name)


def test_sample_covers_every_kernel_family():
    assert set(SAMPLE) <= set(K.all_kernel_names())
    assert {_family(n) for n in K.all_kernel_names()} == {_family(n) for n in SAMPLE}
    assert {n.split("_p")[0] for n in SAMPLE if n.startswith("qb_quantize_") and n != K.NESTED_QUANT_NAME} == \
        {f"qb_quantize_{d}_v{v}" for d in K.DTYPES for v in K.VECS[d]}
    assert not any("_v32_p8_" in n for n in K.all_kernel_names())   # never launched


@pytest.fixture(scope="module")
def sm_90(nvrtc):
    """SAMPLE for sm_90, once for the PTX and the SASS tests: ``(ptxas' log, cubin, PTX)``."""
    return ptxas_build(K.source(SAMPLE), "spills.cu")


@pytest.mark.parametrize("arch", ["sm_80"])     # sm_90: test_no_kernel_spills_registers
def test_every_kernel_compiles_to_sass(nvrtc, arch):
    cubin = compile_source(K.source(SAMPLE), arch, output="cubin")
    assert cubin[:4] == b"\x7fELF"
    # complete image: CuPy's getCUBIN drops the last byte, compile_source restores it
    phoff, shoff = struct.unpack_from("<QQ", cubin, 32)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", cubin, 54)
    assert max(phoff + phentsize * phnum, shoff + shentsize * shnum) <= len(cubin)
    for name in SAMPLE:                        # every instantiation is in the image
        assert name.encode() in cubin, name


def test_the_block_kernels_ptx_is_plain_ieee_float32(sm_90):
    """No FMA contraction, no flush-to-zero, IEEE division only, no local-memory spills."""
    ptx = sm_90[2]
    entries = re.split(r"\.entry ", ptx)[1:]
    assert sorted(e.split("(")[0].strip() for e in entries) == SAMPLE
    for body in entries:
        name = body.split("(")[0].strip()
        assert "fma." not in body, name
        assert ".ftz" not in body, name
        assert ".local" not in body, name
        assert not re.search(r"div\.(approx|full)\.f32", body), name
        assert not re.search(r"rcp\.approx", body), name
        if name.startswith("qb_quantize_"):
            assert "div.rn.f32" in body, name


def test_quantize_groups_meet_at_their_own_barriers(nvrtc):
    """One CTA-wide barrier (after the tables are loaded); the warps of a quantization
    block meet at a barrier of their group (an id and a thread count in registers), so the
    other groups of the CTA do not wait for them."""
    name = K.quantize_name("f16", 32, 4, "s1")
    ptx = compile_source(K.source([name]), "compute_90", output="ptx").decode()
    bars = re.findall(r"\b(?:bar|barrier)\.sync(?:\.aligned)?\s+([^;]*);", ptx)
    assert [b.strip() for b in bars if not b.strip().startswith("%")] == ["0"]
    assert all(re.fullmatch(r"%r\d+, %r\d+", b.strip()) for b in bars if b.strip().startswith("%"))
    assert len(bars) == 3                      # the table barrier; a group's, sorted and not


def test_no_kernel_spills_registers(sm_90):
    """ptxas' report for sm_90: every sampled kernel compiles to SASS and fits the registers
    its launch bounds leave (a spill would go through local memory for every value)."""
    log, cubin, _ = sm_90
    found = re.findall(r"Function properties for (\w+)\n.*?(\d+) bytes spill stores, (\d+) bytes spill loads",
                       log)
    assert sorted(name for name, _, _ in found) == SAMPLE
    assert [name for name, st, ld in found if int(st) or int(ld)] == []
    assert bytes(cubin[:4]) == b"\x7fELF" and all(name.encode() in bytes(cubin) for name in SAMPLE)


def test_compile_error_reports_the_log(nvrtc):
    with pytest.raises(RuntimeError, match="NVRTC failed"):
        compile_source("this is not CUDA", "sm_80")


def test_kernel_source_subset_and_unknown_names():
    src = K.source([K.quantize_name("f16", 32, 4, "s1")])
    assert "qb_quantize_f16_v32_p4_s1(" in src and "qb_dequantize_f16_p4(" not in src
    assert "qb_quantize_f16_v32_p4_s2(" not in src and "qb_quantize_f16_v16_p4_s1(" not in src
    assert "qb_quantize_f16_v32_p4_w(" not in src
    with pytest.raises(ValueError, match="unknown kernel"):
        K.source(["qb_nope"])


def test_the_streaming_benchmarks_kernels_compile(nvrtc):
    """benchmarks/bench_stream_gpu.py's kernels (CuPy compiles them at run time on a GPU)."""
    import importlib.util

    path = checkout_path("benchmarks", "bench_stream_gpu.py")
    spec = importlib.util.spec_from_file_location("bench_stream_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cubin = compile_source(bench._SOURCE, "sm_90", output="cubin")
    assert cubin[:4] == b"\x7fELF"
    for name in ("s16_lane", "s16_thread", "s32_lane", "s32_thread"):
        assert name.encode() in cubin
