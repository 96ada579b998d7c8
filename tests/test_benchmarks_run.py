"""The scripts in benchmarks/ run (CI times none, so one that crashed or lost its table would go
unnoticed): each CPU benchmark on its tiniest input, to a zero status and a table with its
header and a row; each GPU benchmark, on a machine where no GPU is usable, to one line on
stderr and status 1.

In this process (the imports paid once), but for bench_gpu_host_work.py, which puts a stand-in
``cupy`` in ``sys.modules``, and bench_memory.py, which runs each case in a process of its own.
Not run here, for their time: bench_model_quality.py (a model of SmolLM2's vocabulary, 15-20 s
on 2 cores; tests/test_model_quality.py runs it on one layer) and compare_fouroversix.py (it
downloads its reference package); tests/test_benchmarks_cli.py asks each for ``--help`` and
checks the refusals of bad arguments.
"""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from checkout import checkout_path

BENCHMARKS = checkout_path("benchmarks")


def _run(monkeypatch, script: str, *args: str) -> int:
    """``python benchmarks/<script> args`` in this process: its exit status."""
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / script), *args])
    monkeypatch.syspath_prepend(str(BENCHMARKS))   # as `python SCRIPT` has it: its folder first
    try:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    except SystemExit as exc:
        return 0 if exc.code is None else exc.code
    return 0


def _table(out: str, header: str, row: str) -> None:
    """``out`` has a line matching ``header`` and, after it, one matching ``row``."""
    lines = out.splitlines()
    at = next((i for i, line in enumerate(lines) if re.search(header, line)), None)
    assert at is not None, f"no header {header!r} in:\n{out}"
    assert any(re.search(row, line) for line in lines[at + 1:]), f"no row {row!r} after the header in:\n{out}"


def _case(command: str, header: str, row: str, id: str):
    """``SCRIPT ARGS...`` (words without spaces), the header of its table and one of its rows."""
    script, *args = command.split()
    return pytest.param(script, args, header, row, id=id)


NUM = r"\d+\.\d+"
CPU = [
    _case("bench_derive.py --blocksizes 16 --losses l2 --repeat 1 --mc-samples 6400",
          r"^\s+B loss\s+ms/code\s+iters\s+change$", rf"^\s+16\s+l2\s+{NUM}\s+\d+\s+\d\.\de[-+]\d\d$", "derive"),
    _case("bench_derive.py --samples --sample-size 20000 --blocksizes 16 --losses l2",
          r"^\s+sample\s+knots\s+B loss\s+wall s\s+cpu s", rf"^\s+normal\s+all\s+16\s+l2\s+{NUM}\s+{NUM}\s+\d+",
          "derive-samples"),
    _case("bench_derive_scaled.py --repeat 1 --rules e4m3,nested", r"^rule\s+B loss\s+ms/code",
          rf"^nested\s+64 l2\s+{NUM}\s+\d+\s+{NUM}$", "derive_scaled"),
    _case("bench_derive_scaled.py --table --rules e4m3 --mc-log2n 12", r"^### e4m3 B=16$",
          rf"^\| lloyd-l1 \| {NUM}e-\d\d \| {NUM}e-\d\d \| {NUM} \| {NUM}e-\d\d \| {NUM}e-\d\d ± ",
          "derive_scaled-table"),
    _case("bench_derive_scaled.py --readme --samples 1024", r"^### NVFP4 \(e4m3, B16\)$",
          rf"^\| search optimum, search:4over6 \| {NUM}e-\d\d ± ", "derive_scaled-readme"),
    _case("bench_derive_vq.py --table --cases 1x4 --samples 2000 --eval-samples 100", r"^\| P \| N \| bits/w \|",
          rf"^\| 1 \| 4 \| 2 \| {NUM}e-\d\d ± ", "derive_vq-table"),
    _case("bench_quantize_cpu.py --log2n 12 --repeat 1 --skip-bnb", r"quantize GB/s\s+x copy\s+x bnb\s+dequant GB/s",
          rf"^cpu\s+{NUM}\s+{NUM}\s+-\s+{NUM}", "quantize_cpu"),
    _case("bench_quantize_vq.py --log2n 12 --repeat 1 --numpy-log2n 12 --no-gpu",
          r"^4,096 float32 weights \(1 x 4096\), P=2, N=256", rf"^quantize\s+numpy\s+{NUM} GB/s\s+ratio numba/numpy",
          "quantize_vq"),
    _case("bench_scaled_cpu.py --log2n 12 --repeat 1", r"^layout\s+rule\s+B\s+blocks\s+build ms",
          rf"^NVFP4\s+e4m3\s+16\s+256\s+{NUM}", "scaled_cpu"),
    _case("bench_memory.py --log2n 12 --repeat 1 --ops quantize --layouts nf4 --backends cpu --dtypes float32",
          r"^\| case \| backend \| float32 traced / rss \(out\), s \|$",
          rf"^\| quantize nf4 \| cpu \| {NUM} / {NUM} \(0\.14\), {NUM} \|$", "memory"),
    # the heavy tail's law (student-t:3) is most of measure_law_gaps' time: a light one here
    _case("measure_law_gaps.py --tensors 2 --log2n 10 --source normal --nested-log2n 12",
          r"^NVFP4 \(e4m3, B=16\), normal, 2 tensors of 2\^10: law ",
          r"^nested statistics, iq4_nl at B=16, N\(0,1\), 2\^12 values: MAE increment law ", "law_gaps"),
    _case("measure_sample_laws.py --sizes 300 --blocksizes 16 --mc-log2n 12 --nested-log2n 12",
          r"^\s+sample\s+B\s+normalization\s+difference\s+seconds$", rf"^  MAE: law {NUM}e-\d\d, Monte Carlo ",
          "sample_laws"),
    _case("measure_cpu_bits.py --settings numba-generic --only nf4", r"^native: 4 results \(\d+ s\)$",
          r"^numba-generic: 0 of 4 results differ \(\d+ s\)$", "cpu_bits"),
    _case("measure_edge_margins.py --bits 2 --block-sizes 64 --sources normal",
          r"^bound 1e-11; 30 codes derived, 0 refused$",
          r"^scaled table: 27 codes, \d+ warn; smallest margin of the rest \d\.\d\de-\d\d$", "edge_margins"),
    _case("emulated_coalescing.py --summary --family sanitize", r"^family\s+kernel\s+array\s+dir\s+runs\s+eff",
          r"^sanitize\s+qb_sanitize\s+x\s+load\s+\d+ \d\.\d{3}-", "emulated_coalescing"),
]


@pytest.mark.parametrize("script, args, header, row", CPU)
def test_cpu_benchmark_runs_on_its_tiniest_input(monkeypatch, capsys, script, args, header, row):
    if script == "bench_memory.py" and not Path("/proc/self/clear_refs").exists():
        pytest.skip("bench_memory.py reads /proc/self (Linux)")
    status = _run(monkeypatch, script, *args)
    out, err = capsys.readouterr()
    if script == "emulated_coalescing.py" and status == 1 and out.startswith("emulated_coalescing: "):
        pytest.skip(out.strip())   # the emulator's g++ or NVRTC is missing
    assert status == 0, err
    assert "Traceback" not in err
    _table(out, header, row)


def test_evaluate_model_benchmark_runs_on_a_tiny_file(monkeypatch, capsys, tmp_path):
    """Its default is a real model: here a file of two small tensors, both backends and the ratio."""
    st = pytest.importorskip("safetensors.numpy", reason="safetensors writes the file: pip install safetensors")
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.safetensors"
    st.save_file({"a.weight": rng.standard_normal((64, 64), dtype=np.float32),
                  "b.weight": rng.standard_normal((32, 128), dtype=np.float32)}, str(path))
    status = _run(monkeypatch, "bench_evaluate_model.py", "--file", str(path), "--codebooks", "nf4,fp4",
                  "--repeat", "1", "--backends", "cpu,numpy")
    out, err = capsys.readouterr()
    assert status == 0, err
    _table(out, r"tiny\.safetensors: 2 tensors, 8,192 weights; 2 codebooks, B=64", r"^read only\s+\d+\.\d{3} s$")
    assert re.search(r"^evaluate cpu\s+\d+\.\d{3} s\s+\d+\.\d M weight-codebooks/s$", out, re.M), out
    assert re.search(r"^evaluate numpy\s+\d+\.\d{3} s\s+\d+\.\d M weight-codebooks/s$", out, re.M), out
    assert re.search(r"^numpy speed relative to cpu: \d+\.\d\dx$", out, re.M), out


def test_gpu_host_work_benchmark_runs_on_the_stand_in():
    """A CPU benchmark despite its name (the tests' stand-in cupy, launches that do nothing):
    in a process of its own, as it puts that stand-in in ``sys.modules``."""
    r = subprocess.run([sys.executable, str(BENCHMARKS / "bench_gpu_host_work.py"), "--calls", "2", "--rounds", "1",
                        "--log2n", "6"], capture_output=True, text=True, timeout=120, env=dict(os.environ))
    if r.returncode == 1 and r.stderr.startswith("bench_gpu_host_work: needs NVRTC"):
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, r.stderr
    _table(r.stdout, r"^host work a call \(stand-in cupy", r"^\s+quantize_gpu\s+\d+\.\d us$")


def _gpu_usable() -> bool:
    from quantbook.bulk.gpu.backend import gpu_available

    return gpu_available()[0]


GPU = [("bench_quantize_gpu.py", ["--log2n", "12", "--repeat", "1", "--warmup", "0"]),
       ("bench_scaled_gpu.py", ["--log2n", "12", "--repeat", "1"]),
       ("bench_stream_gpu.py", ["--log2mib", "4", "--repeat", "1"])]


@pytest.mark.parametrize("script, args", GPU, ids=[s for s, _ in GPU])
def test_gpu_benchmark_without_a_gpu_says_so_in_one_line(monkeypatch, capsys, script, args):
    if _gpu_usable():
        pytest.skip("a GPU is usable here: the benchmark would measure")
    status = _run(monkeypatch, script, *args)
    out, err = capsys.readouterr()
    assert status == 1
    assert out == "" and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith(f"{script[:-3]}: ") and "nothing measured" in err, err


def test_gpu_environment_report_without_a_gpu_stops_gpu_check(monkeypatch, capsys):
    """gpu_env.py lists what it finds, then one line on stderr and status 1: gpu_check.sh stops."""
    if _gpu_usable():
        pytest.skip("a GPU is usable here")
    status = _run(monkeypatch, "gpu_env.py")
    out, err = capsys.readouterr()
    assert status == 1
    assert "quantbook gpu backend: NOT usable" in out
    assert err == "no usable GPU: the other stages would only skip\n"
