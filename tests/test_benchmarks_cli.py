"""The scripts in benchmarks/ (CI does not run them): each answers --help without measuring,
and the inputs a small run gets wrong are refused in one line rather than by a traceback."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(monkeypatch, script: str, *args: str) -> int:
    """``benchmarks/<script> args`` in this process (its imports are paid once for all): the
    exit status it raises."""
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / script), *args])
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS), *sys.path])   # some add folders of their own
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    return exc.value.code


@pytest.mark.parametrize("script", sorted(p.name for p in BENCHMARKS.glob("*.py")))
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
