"""The scripts in benchmarks/ (CI does not run them): each answers --help without measuring,
and the inputs a small run gets wrong are refused in one line rather than by a traceback."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from checkout import checkout_path

BENCHMARKS = checkout_path("benchmarks")


def _run(monkeypatch, script: str, *args: str) -> int:
    """``benchmarks/<script> args`` in this process (its imports are paid once for all): the
    exit status it raises."""
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / script), *args])
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS), *sys.path])   # some add folders of their own
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    return exc.value.code


# _cli.py is the scripts' shared argument helper, not a script
@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_")))
def test_every_benchmark_answers_help(monkeypatch, capsys, script):
    assert _run(monkeypatch, script, "--help") == 0
    assert capsys.readouterr().out.startswith(f"usage: {script}")


def test_vq_benchmark_refuses_a_tensor_under_a_row(monkeypatch, capsys):
    assert _run(monkeypatch, "bench_quantize_vq.py", "--log2n", "10") == 2
    assert "--log2n must be at least 12, got 10" in capsys.readouterr().err


@pytest.mark.parametrize("args, said", [(["--repeat", "0"], "--repeat must be at least 1, got 0"),
                                        (["--samples", "--sample-size", "1"], "--sample-size must be at least 2")])
def test_derive_benchmark_refuses_what_would_measure_nothing(monkeypatch, capsys, args, said):
    assert _run(monkeypatch, "bench_derive.py", *args) == 2   # --repeat 0 was taken for the default
    assert said in capsys.readouterr().err


def test_model_quality_benchmark_on_cuda_without_a_gpu_says_so_before_building_the_model(monkeypatch):
    """gpu_check.sh's `quality` stage (--device cuda) on a machine where torch sees no GPU: one
    line, before the seconds spent building the model, not a traceback after them."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU: the run would go ahead")
    import quantbook.model.quality as quality

    def built(*args, **kwargs):
        raise AssertionError("the model was built before --device was checked")

    monkeypatch.setattr(quality, "load_model", built)
    monkeypatch.setitem(sys.modules, "transformers", None)   # the synthetic model cannot be built either
    with pytest.raises(SystemExit, match=r"^bench_model_quality: --device cuda: torch sees no CUDA GPU"):
        runpy.run_path(str(BENCHMARKS / "bench_model_quality.py"), run_name="bench_model_quality")["main"](
            ["--synthetic", "--layers", "1", "--device", "cuda", "--backends", "numpy", "--codebooks", "nf4"])


@pytest.mark.parametrize("script, args, said", [
    ("bench_derive.py", ["--mc-samples", "10"], "--mc-samples must be at least 64, got 10"),   # an empty sample
    ("bench_derive.py", ["--blocksizes", "16,x"], "--blocksizes takes comma-separated integers, got '16,x'"),
    ("bench_derive.py", ["--losses", "l3"], "loss must be one of l1, l2, got 'l3'"),
    # each run reads one of the two sample sizes: the other was ignored
    ("bench_derive.py", ["--sample-size", "1000"], "--sample-size is read by --samples only, not by a timing run"),
    ("bench_derive.py", ["--samples", "--mc-samples", "1000"],
     "--mc-samples is read by a timing run only, not by --samples"),
    ("bench_derive_scaled.py", ["--repeat", "0"], "--repeat must be at least 1, got 0"),
    # the README tables' fits at B = 16, 32 and 64: refused before the first table, not after it
    ("bench_derive_scaled.py", ["--readme", "--samples", "10000"],
     "--samples: samples=10000 must be a positive multiple of block_size=32"),
    # --table and --readme each print their own tables: --readme beside --table was ignored, as
    # was an option the run does not read
    ("bench_derive_scaled.py", ["--table", "--readme"], "argument --readme: not allowed with argument --table"),
    ("bench_derive_scaled.py", ["--table", "--samples", "1024"], "--samples is read by --readme only, not by --table"),
    ("bench_derive_scaled.py", ["--readme", "--repeat", "1"], "--repeat is read by a timing run only, not by --readme"),
    ("bench_derive_scaled.py", ["--mc-log2n", "12"], "--mc-log2n is read by --table only, not by a timing run"),
    ("bench_derive_scaled.py", ["--table", "--mc-log2n", "4"], "--mc-log2n must be at least 5, got 4"),
    ("bench_derive_scaled.py", ["--rules", "e4m3,e5m2"], "--rules takes e4m3, e8m0:floor, e8m0:ceil, e8m0:even, "
     "e8m0:rceil, float16, bfloat16, nested, got 'e5m2'"),
    ("bench_derive_scaled.py", ["--table", "--rules", "nested"], "--rules with --table takes e4m3, e8m0:floor, "
     "e8m0:ceil, e8m0:even, e8m0:rceil, float16, bfloat16, got 'nested'"),
    ("bench_derive_vq.py", ["--cases", "2x"], "--cases takes comma-separated PxN such as 2x256, got '2x'"),
    ("bench_derive_vq.py", ["--samples", "0"], "samples must be a positive integer, got 0"),
    ("bench_derive_vq.py", ["--eval-samples", "1"], "--eval-samples must be at least 2, got 1"),
    ("bench_evaluate_model.py", ["--repeat", "0", "--synthetic"], "--repeat must be at least 1, got 0"),
    ("bench_evaluate_model.py", ["--file", "no-such.safetensors"], "no such safetensors file: no-such.safetensors"),
    ("bench_evaluate_model.py", ["--synthetic", "--codebooks", "nope"], "unknown codebook 'nope'"),
    ("bench_gpu_host_work.py", ["--calls", "0"], "--calls must be at least 1, got 0"),
    ("bench_model_quality.py", ["--synthetic", "--layers", "1", "--device", "cpu", "--tokens", "0"],
     "--tokens must be at least 1, got 0"),
    ("bench_model_quality.py", ["--synthetic", "--layers", "1", "--device", "cpu", "--rotate", "nope"],
     "unknown rotation 'nope'"),
    ("bench_quantize_cpu.py", ["--log2n", "12", "--repeat", "0"], "--repeat must be at least 1, got 0"),
    ("bench_quantize_vq.py", ["--size", "7"], "no HIGGS grid of --dim 2 and --size 7 (P x N: 1x4, "),
    ("bench_quantize_vq.py", ["--log2n", "12", "--repeat", "0"], "--repeat must be at least 1, got 0"),
    ("bench_scaled_cpu.py", ["--log2n", "12", "--repeat", "0"], "--repeat must be at least 1, got 0"),   # inf
    ("bench_memory.py", ["--log2n", "11"], "--log2n must be from 12 to 30 (vq takes rows of 4096 values), got 11"),
    ("compare_fouroversix.py", ["--rows", "0"], "--rows must be at least 1, got 0"),
    ("measure_law_gaps.py", ["--tensors", "1"], "--tensors must be at least 2, got 1"),
    ("measure_law_gaps.py", ["--log2n", "4"], "--log2n must be at least 5, got 4"),
    ("measure_law_gaps.py", ["--source", "nope"], "unknown source 'nope'"),
    ("measure_cpu_bits.py", ["--settings", "nope"], "unknown setting 'nope' (known: native, numpy-avx2, "),
    ("measure_sample_laws.py", ["--sizes", "300,1"], "--sizes: an empirical source needs at least 2 values"),
    ("measure_sample_laws.py", ["--sizes", "300,-3"], "--sizes: an empirical source needs at least 2 values"),
    ("measure_sample_laws.py", ["--blocksizes", "16,1"], "--blocksizes: block size must be between 2 and 10**7, got 1"),
    ("measure_sample_laws.py", ["--nested-log2n", "11"], "--nested-log2n must be at least 12, got 11"),
])
def test_a_bad_argument_is_refused_in_a_line_before_anything_runs(monkeypatch, capsys, script, args, said):
    """Status 2 and the reason, from the parser or the library's own check, before a table
    starts; they were tracebacks, a table of inf, or a run on an empty sample."""
    assert _run(monkeypatch, script, *args) == 2
    err = capsys.readouterr().err
    assert said in err.splitlines()[-1] and "Traceback" not in err, err


def test_memory_benchmark_fails_when_a_case_does(monkeypatch, capsys):
    """A case whose process failed shows its error in its cell, and the run's status says so."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("bench_memory.py reads /proc/self (Linux)")
    bench = runpy.run_path(str(BENCHMARKS / "bench_memory.py"), run_name="bench_memory")
    monkeypatch.setitem(bench["main"].__globals__, "_one", lambda spec, log2n, repeat: {"error": "MemoryError"})
    assert bench["main"](["--ops", "sums", "--backends", "numpy", "--dtypes", "float32"]) == 1
    assert "| sums | numpy | MemoryError |" in capsys.readouterr().out


def test_fouroversix_comparison_without_the_package_index_says_so_in_a_line(monkeypatch, capsys):
    """pip cannot download the reference package (no index here): one line and status 1."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    assert _run(monkeypatch, "compare_fouroversix.py", "--rows", "1") == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("compare_fouroversix: "), err
    assert "nothing compared" in err


@pytest.mark.parametrize("args, said", [(["--bits", "5"], "--bits takes widths from 2 to 4"),
                                        (["--block-sizes", "1"], "--block-sizes must be at least 2"),
                                        (["--sources", "nromal"], "nromal")])
def test_edge_margin_measurement_refuses_what_every_derivation_would_refuse(monkeypatch, capsys, args, said):
    """Each derivation the library refuses counts as refused: arguments that would make every one
    refused are refused first, in one line."""
    assert _run(monkeypatch, "measure_edge_margins.py", *args) == 2
    assert said in capsys.readouterr().err
