"""Peak extra host memory of the bulk paths, as multiples of the input's bytes.

    python benchmarks/bench_memory.py                      # 2**24 values, every case
    python benchmarks/bench_memory.py --log2n 26 --backends cpu
    python benchmarks/bench_memory.py --ops quantize --layouts nf4,nvfp4 --dtypes float16
    python benchmarks/bench_memory.py --ops nonfinite --layouts nf4,nvfp4

Each case runs in a fresh Python process (``--one``), so that one case's memory cannot hide
in another's.  The process makes a seeded normal input of 2**log2n values (``--dtypes``),
runs the case once on a small array (numba compiles or loads its kernels) and ``--repeat``
times on the whole input (the best time is printed), then resets the kernel's record of its
peak resident set (``/proc/self/clear_refs``) and runs it once more, measuring:

* ``traced``: the peak of ``tracemalloc`` during the call, over what was traced before it
  (numpy's allocations, and the arrays the backends allocate in Python; not the arrays numba
  allocates inside a kernel);
* ``rss``: the peak resident set (``VmHWM``) during the call over the resident set before
  it (everything the call touched, numba's allocations included).

Both count what the call returns (the packed codes and scales of quantize, the values of
dequantize), shown as ``out``.  Cases: ``quantize`` and ``dequantize`` (quantbook.quantize /
dequantize) and ``nonfinite`` (quantize with ``allow_nonfinite=True`` of the input with a NaN
and an Inf in it; not ``vq``, which has no such option) of the layouts ``nf4`` (bitsandbytes'
layout), ``nf4-nested`` (nested=True), ``mxfp4`` (e2m1, scale e8m0, B = 32), ``nvfp4`` (e2m1,
scale e4m3, B = 16), ``4over6`` (NVFP4 with the search:4over6 scales) and ``vq`` (quantize_vq /
dequantize_vq, higgs-2d-256, group 64, Hadamard rotation, rows of 4096); ``sums`` (Backend.error_sums of
x against a decoded copy, as evaluation calls it) and ``sums-x`` (error_sums of x alone); on
the backends ``numpy`` and ``cpu``.  Linux with glibc only (it reads /proc/self and sets
glibc's mmap threshold for the measured call).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _cli import check_floors, run

OPS = ("quantize", "dequantize", "nonfinite", "sums", "sums-x")
LAYOUTS = ("nf4", "nf4-nested", "mxfp4", "nvfp4", "4over6", "vq")
BACKENDS = ("numpy", "cpu")
DTYPES = ("float32", "float16", "bfloat16")
ROW = 4096   # vq: the rows the Hadamard rotation runs along
LOG2_ROW = ROW.bit_length() - 1   # the smallest input: one row


def _status(key: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024


def _fixed_mmap_threshold() -> None:
    """glibc's moving mmap threshold serves arrays up to 32 MB from a heap that the calls
    before made resident, where the resident set does not show them: after the timed calls
    (which run as a user's would), every array above 64 kB gets its own mapping, and the free
    heap goes back to the system."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 65536)   # M_MMAP_THRESHOLD
    libc.malloc_trim(0)


def _input(n: int, dtype: str) -> np.ndarray:
    from quantbook.bulk.state import dtype_from_name

    x = np.empty(n, dtype_from_name(dtype))
    rng = np.random.default_rng(0)
    step = 1 << 20   # in pieces: no whole-tensor float64 temporary before the measurement
    for s in range(0, n, step):
        x[s:s + step] = rng.standard_normal(min(step, n - s), dtype=np.float32)
    return x


def _case(op: str, layout: str, backend: str):
    """``(prepare, call)``: ``prepare(x)`` makes the call's arguments (untraced), ``call(*args)`` runs it."""
    import quantbook as qb
    from quantbook.bulk.backend import BACKENDS as BE
    from quantbook.bulk.vq import dequantize_vq, quantize_vq

    if op in ("sums", "sums-x"):
        be = BE[backend]
        if op == "sums-x":
            return (lambda x: (x,)), be.error_sums

        def prepare(x):
            p, st = qb.quantize(x, "nf4", 64, backend="cpu" if BE["cpu"].unavailable() is None else "numpy")
            return x, qb.dequantize(p, st)
        return prepare, be.error_sums
    if layout == "vq":
        def q(x):
            return quantize_vq(x.reshape(-1, ROW), "higgs-2d-256", group=64, rotate="hadamard", backend=backend)
        if op == "quantize":
            return (lambda x: (x,)), q
        return (lambda x: q(x)), lambda idx, st: dequantize_vq(idx, st, backend=backend)
    kw = {"nf4": dict(codebook="nf4", block_size=64), "nf4-nested": dict(codebook="nf4", block_size=64, nested=True),
          "mxfp4": dict(codebook="e2m1", block_size=32, scale="e8m0"),
          "nvfp4": dict(codebook="e2m1", block_size=16, scale="e4m3"),
          "4over6": dict(codebook="e2m1", block_size=16, scale="search:4over6")}[layout]
    if op == "quantize":
        return (lambda x: (x,)), lambda x: qb.quantize(x, backend=backend, **kw)
    if op == "nonfinite":
        def with_nonfinite(x):
            y = x.copy()
            y[[1, y.size // 2]] = (np.nan, np.inf)
            return (y,)
        return with_nonfinite, lambda x: qb.quantize(x, backend=backend, allow_nonfinite=True, **kw)
    return (lambda x: qb.quantize(x, backend=backend, **kw)), lambda p, st: qb.dequantize(p, st, backend=backend)


def _nbytes(r) -> int:
    if isinstance(r, np.ndarray):
        return r.nbytes
    if isinstance(r, (tuple, list)):
        return sum(_nbytes(a) for a in r)
    if hasattr(r, "__dict__"):   # a state: its arrays
        return sum(_nbytes(a) for a in vars(r).values() if isinstance(a, np.ndarray))
    return 0


def measure(op: str, layout: str, backend: str, dtype: str, log2n: int, repeat: int = 1) -> dict:
    """One case in this process (see the module docstring)."""
    import tracemalloc

    prepare, call = _case(op, layout, backend)
    call(*prepare(_input(1 << 14, dtype)))   # compile / load the kernels
    x = _input(1 << log2n, dtype)
    args = prepare(x)
    seconds = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        r = call(*args)
        seconds = min(seconds, time.perf_counter() - t0)
        out = _nbytes(r)
        del r
    gc.collect()
    _fixed_mmap_threshold()
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")   # resets VmHWM to the current resident set
    rss0 = _status("VmRSS")
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    call(*args)
    traced = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    rss = _status("VmHWM") - rss0
    return {"traced": traced / x.nbytes, "rss": rss / x.nbytes, "out": out / x.nbytes, "seconds": seconds,
            "input_bytes": x.nbytes}


def _one(spec: str, log2n: int, repeat: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", spec, "--log2n", str(log2n),
           "--repeat", str(repeat)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _qb_path() -> str:
    import quantbook

    return quantbook.__file__


def _list(s: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [v for v in s.split(",") if v]
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise ValueError(f"{flag} takes a comma-separated list of {', '.join(allowed)}, got {s!r}")
    return items


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--log2n", type=int, default=24, help="2**LOG2N values in the input, 12 to 30 (default 24)")
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--layouts", default=",".join(LAYOUTS), help="for quantize, dequantize and nonfinite")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--repeat", type=int, default=3, help="timed calls a case (the best is printed)")
    ap.add_argument("--one", help=argparse.SUPPRESS)   # OP/LAYOUT/BACKEND/DTYPE: one case, JSON out
    args = ap.parse_args(argv)
    if not LOG2_ROW <= args.log2n <= 30:
        raise ValueError(f"--log2n must be from {LOG2_ROW} to 30 (vq takes rows of {ROW} values), got {args.log2n}")
    check_floors(ap, args, repeat=1)
    if args.one:
        op, layout, backend, dtype = args.one.split("/")
        print(json.dumps(measure(op, layout, backend, dtype, args.log2n, args.repeat)))
        return 0
    if not Path("/proc/self/clear_refs").exists():
        raise ValueError("this benchmark reads /proc/self (Linux)")
    ops = _list(args.ops, OPS, "--ops")
    layouts = _list(args.layouts, LAYOUTS, "--layouts")
    backends = _list(args.backends, BACKENDS, "--backends")
    dtypes = _list(args.dtypes, DTYPES, "--dtypes")
    load = os.getloadavg()[0]
    print(f"n = 2^{args.log2n} values; {os.cpu_count()} CPUs, load avg {load:.2f}; peak extra bytes over the "
          "input's bytes: traced (tracemalloc) / rss (VmHWM), out = what the call returns; seconds of the "
          f"best of {args.repeat} untraced calls; quantbook from {Path(_qb_path()).parent}")
    from quantbook.bulk.format import PIECE

    if (1 << args.log2n) < 16 * PIECE:   # the host paths work in pieces of PIECE values
        print(f"note: under 2^{(16 * PIECE).bit_length() - 1} values the host paths' pieces of 2^"
              f"{PIECE.bit_length() - 1} values and fixed allocations are a large share of the input: these "
              "multiples are not a large tensor's (docs/benchmarks.md: 2^24)")
    print()
    print("| case | backend | " + " | ".join(f"{d} traced / rss (out), s" for d in dtypes) + " |")
    print("|---|---|" + "---|" * len(dtypes))
    failed = False
    for op in ops:
        for layout in (layouts if op in ("quantize", "dequantize", "nonfinite") else ["-"]):
            if op == "nonfinite" and layout == "vq":
                continue
            for backend in backends:
                cells = []
                for dtype in dtypes:
                    r = _one(f"{op}/{layout}/{backend}/{dtype}", args.log2n, args.repeat)
                    failed = failed or "error" in r
                    cells.append(r["error"] if "error" in r else
                                 f"{r['traced']:.2f} / {r['rss']:.2f} ({r['out']:.2f}), {r['seconds']:.2f}")
                name = op if layout == "-" else f"{op} {layout}"
                print(f"| {name} | {backend} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nload avg at the end {os.getloadavg()[0]:.2f}")
    return 1 if failed else 0   # a case that failed shows its error in its cell


if __name__ == "__main__":
    run(main)
