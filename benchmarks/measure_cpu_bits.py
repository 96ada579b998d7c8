"""Whether derivations, the audit and quantize give the same bits on another CPU, emulated here.

numpy picks its loops for exp, log, expm1, log1p and power by the CPU's features at run time
(AVX-512 or not), glibc picks its libm (exp, log, pow, sin: an FMA build or not; scipy.special
and Python's math call it) by the CPU's features, OpenBLAS picks its kernels (``@``, dot,
LAPACK's products) by the CPU, and numba compiles for the host CPU.  Each setting makes this
machine look like another CPU to one of them, or to all; each runs in a fresh process with an
empty NUMBA_CACHE_DIR of its own, computes the same results, and they are compared bit for bit
with the machine's own: float64 bits, float32 tables, bytes, JSON text.

    python benchmarks/measure_cpu_bits.py [--settings NAME,...] [--only TEXT] [--list]

Prints, per setting, every result that differs: how many values, the largest difference in
float64 ulps and relative, and whether its float32 table (``float32``) differs.  ``--only``:
the results whose name holds TEXT; ``--list``: the settings and their environments.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np

from _cli import run

_GLIBC_NO_FMA = "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F,-AVX512DQ,-AVX512VL,-AVX512BW"
_HASWELL = "+avx,+avx2,+fma,+sse4.2,+popcnt,+bmi,+bmi2,+f16c"
_CPU_VARIABLES = ("NPY_DISABLE_CPU_FEATURES", "GLIBC_TUNABLES", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES",
                  "OPENBLAS_CORETYPE")


def numpy_dispatched_above(level: str) -> list[str]:
    """The features numpy dispatches to on this CPU above ``level`` (``X86_V3``: AVX2;
    ``X86_V2``: SSE4.2): what NPY_DISABLE_CPU_FEATURES may name (numpy refuses its baseline)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:   # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    keep = {"X86_V3": ("X86_V3", "AVX", "F16C", "FMA3", "AVX2"), "X86_V2": ()}[level]
    return [f for f in __cpu_dispatch__ if __cpu_features__.get(f) and f not in keep]


def settings() -> dict[str, dict[str, str]]:
    """Name -> the environment that emulates that CPU."""
    avx2, sse = " ".join(numpy_dispatched_above("X86_V3")), " ".join(numpy_dispatched_above("X86_V2"))
    return {
        "native": {},
        "numpy-avx2": {"NPY_DISABLE_CPU_FEATURES": avx2},
        "numpy-sse4.2": {"NPY_DISABLE_CPU_FEATURES": sse},
        "glibc-no-fma": {"GLIBC_TUNABLES": _GLIBC_NO_FMA},
        "numba-generic": {"NUMBA_CPU_NAME": "generic"},
        "numba-haswell": {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": _HASWELL},
        "openblas-haswell": {"OPENBLAS_CORETYPE": "Haswell"},
        "openblas-sandybridge": {"OPENBLAS_CORETYPE": "Sandybridge"},
        "openblas-prescott": {"OPENBLAS_CORETYPE": "Prescott"},
        # glibc takes its FMA build on any CPU with AVX2 and FMA, as it does here
        "avx2-machine": {"NPY_DISABLE_CPU_FEATURES": avx2, "NUMBA_CPU_NAME": "haswell",
                         "NUMBA_CPU_FEATURES": _HASWELL, "OPENBLAS_CORETYPE": "Haswell"},
        "sse-machine": {"NPY_DISABLE_CPU_FEATURES": sse, "GLIBC_TUNABLES": _GLIBC_NO_FMA,
                        "NUMBA_CPU_NAME": "generic", "OPENBLAS_CORETYPE": "Prescott"},
    }


def _cli(argv: list[str]) -> str:
    from quantbook.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(argv)
    return out.getvalue()


def _floats(obj) -> np.ndarray:
    """Every float field of a dataclass or mapping, in order, as float64."""
    d = obj if isinstance(obj, dict) else asdict(obj)
    return np.array([v for v in d.values() if isinstance(v, float)], dtype=np.float64)


def _bytes(*arrays) -> np.ndarray:
    return np.concatenate([np.frombuffer(np.ascontiguousarray(a).tobytes(), np.uint8) for a in arrays])


def results() -> dict:
    """name -> a function giving a float64 array (compared as float64 and float32), uint8 bytes
    or text."""
    import quantbook
    from quantbook.bulk.vq import dequantize_vq, quantize_vq
    from quantbook.derive import Empirical, evaluate, evaluate_search, lloyd, nf, quantile, search_lloyd
    from quantbook.derive.vq import derive_vq
    from quantbook.scales import rule_names

    get = quantbook.get
    out = {
        "lloyd l2 4b B64": lambda: lloyd(4, 64, "l2").levels,
        "lloyd l1 4b B64": lambda: lloyd(4, 64, "l1").levels,
        "lloyd l2 2b B4096": lambda: lloyd(2, 4096, "l2").levels,
        "lloyd l2 3b B16 laplace": lambda: lloyd(3, 16, "l2", source="laplace").levels,
        "lloyd l1 4b B64 student-t:5": lambda: lloyd(4, 64, "l1", source="student-t:5").levels,
        "lloyd l2 4b B64 signed-absmax": lambda: lloyd(4, 64, "l2", normalization="signed-absmax").levels,
        "lloyd l2 8b B64": lambda: lloyd(8, 64, "l2").levels,
        "lloyd l2 4b B16 e4m3": lambda: lloyd(4, 16, scale="e4m3").levels,
        "lloyd l2 4b B32 e8m0": lambda: lloyd(4, 32, scale="e8m0").levels,
        "lloyd l2 4b B64 nested": lambda: lloyd(4, 64, scale="nested").levels,
        "lloyd l1 4b B64 nested": lambda: lloyd(4, 64, "l1", scale="nested").levels,
        "nf4 float32-bnb": lambda: nf(4, precision="float32-bnb").levels,
        "nf4 float64": lambda: nf(4, precision="float64").levels,
        "nf3 exact": lambda: nf(3, precision="exact").levels,
        "quantile 4b B64": lambda: quantile(4, 64).levels,
        "quantile 4b B64 student-t:3": lambda: quantile(4, 64, source="student-t:3").levels,
        "lloyd l2 4b B64 on a sample": lambda: lloyd(4, 64, source=Empirical(
            np.random.default_rng(7).standard_normal(2000))).levels,
        "search-lloyd 4over6 B16": lambda: search_lloyd(4, 16, "search:4over6", samples=2**16, seed=0).levels,
        "vq 2d 16": lambda: derive_vq(2, 16, samples=10**5, coarse_samples=10**4).points.ravel(),
        "vq 2d 256": lambda: derive_vq(2, 256, samples=2 * 10**5, coarse_samples=2 * 10**4).points.ravel(),
        "evaluate nf4 B64": lambda: _floats(evaluate(get("nf4"), 64)),
        "evaluate af4 B64 student-t:5": lambda: _floats(evaluate(get("af4"), 64, "student-t:5")),
        "evaluate e2m1 B16 e4m3": lambda: _floats(evaluate(get("e2m1"), 16, scale="e4m3")),
        "evaluate e2m1 B16 search:4over6": lambda: _floats(evaluate_search(get("e2m1"), 16, "search:4over6",
                                                                           samples=2**16)),
        "cli audit --json": lambda: _cli(["audit", "--json"]),
        "cli audit --vector --json": lambda: _cli(["audit", "--vector", "--json"]),
        "cli derive lloyd --json": lambda: _cli(["derive", "lloyd", "--bits", "4", "--block-size", "64", "--json"]),
        "cli evaluate nf4 --json": lambda: _cli(["evaluate", "nf4", "--block-size", "64", "--source", "laplace",
                                                 "--json"]),
    }
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(1 << 16) * np.exp(0.5 * rng.standard_normal(1 << 16))).astype(np.float32)

    def quantized(rule, backend):
        cb = "iq4_nl" if rule.startswith("search:ggml") else "nf4"
        bs = 32 if rule.startswith("e8m0") else 16 if rule != "float32" else 64
        packed, state = quantbook.quantize(x, cb, bs, backend=backend, scale=rule)
        y = quantbook.dequantize(packed, state, backend=backend)
        return _bytes(packed, state.absmax, y, *((state.nested_absmax,) if state.nested else ()))

    def vector(backend):
        idx, state = quantize_vq(x, "higgs-2d-256", backend=backend)
        return _bytes(idx, state.scales, dequantize_vq(idx, state, backend=backend))

    for backend in ("numpy", "cpu"):
        for rule in rule_names():
            out[f"quantize {rule} {backend}"] = lambda r=rule, b=backend: quantized(r, b)
        out[f"quantize_vq higgs-2d-256 {backend}"] = lambda b=backend: vector(b)
    return out


def _save(res: dict[str, object], path: str) -> None:
    arrays = {}
    for i, (name, v) in enumerate(res.items()):
        kind = "t" if isinstance(v, str) else "b" if np.asarray(v).dtype == np.uint8 else "f"
        arrays[f"{i:03d}{kind}{name}"] = np.frombuffer(v.encode(), np.uint8) if kind == "t" else np.asarray(v)
    np.savez(path, **arrays)


def _load(path: str) -> dict[str, tuple[str, np.ndarray]]:
    with np.load(path) as z:
        return {k[4:]: (k[3], z[k]) for k in z.files}


def _ulps(a: np.ndarray, b: np.ndarray) -> int:
    """The largest distance in float64 ulps between ``a`` and ``b`` (their bits as ordered integers)."""
    def key(v):
        i = np.ascontiguousarray(v, np.float64).view(np.int64).astype(object)
        return [-(2**63) - k if k < 0 else k for k in i]
    return max((abs(p - q) for p, q in zip(key(a), key(b))), default=0)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.abs(a - b) / np.maximum(np.abs(a), np.abs(b))
    return float(np.max(np.where(a == b, 0.0, r), initial=0.0))


def _json_floats(text: str) -> list[tuple[str, float]]:
    found = []

    def walk(v, where):
        if isinstance(v, float):
            found.append((where, v))
        elif isinstance(v, (dict, list)):
            for k, w in (v.items() if isinstance(v, dict) else enumerate(v)):
                walk(w, f"{where}.{k}")
    walk(json.loads(text), "")
    return found


def _without_floats(v):
    if isinstance(v, float):
        return None
    if isinstance(v, dict):
        return {k: _without_floats(w) for k, w in v.items()}
    return [_without_floats(w) for w in v] if isinstance(v, list) else v


def compare(base: dict, other: dict) -> list[str]:
    """One line per result of ``other`` that is not ``base``'s bit for bit."""
    lines = []
    for name, (kind, a) in base.items():
        b = other[name][1]
        if a.shape == b.shape and a.tobytes() == b.tobytes():
            continue
        if kind == "f" and a.shape == b.shape:
            n = int(np.sum(a.view(np.int64) != b.view(np.int64)))
            f32 = "DIFFERS" if a.astype(np.float32).tobytes() != b.astype(np.float32).tobytes() else "same"
            lines.append(f"  {name}: {n} of {a.size} float64 values differ, up to {_ulps(a, b)} ulp, "
                         f"{_relative(a, b):.1e} relative; float32 {f32}")
        elif kind == "t":
            ta, tb = a.tobytes().decode(), b.tobytes().decode()
            fa, fb = _json_floats(ta), _json_floats(tb)
            same_rest = _without_floats(json.loads(ta)) == _without_floats(json.loads(tb))
            diff = [(w, x, y) for (w, x), (_, y) in zip(fa, fb) if x != y]
            worst = max(diff, key=lambda d: _relative(np.array([d[1]]), np.array([d[2]])), default=None)
            lines.append(f"  {name}: {len(diff)} of {len(fa)} floats differ"
                         + (f", up to {_relative(np.array([worst[1]]), np.array([worst[2]])):.1e} relative "
                            f"(at {worst[0]})" if worst else "")
                         + ("; every other field the same" if same_rest else "; OTHER FIELDS DIFFER"))
        else:
            n = int(np.sum(a != b)) if a.shape == b.shape else -1
            lines.append(f"  {name}: {n} of {a.size} bytes DIFFER")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", default=None, help="comma-separated settings (default: all; --list names them)")
    ap.add_argument("--only", default="", help="only the results whose name holds this text")
    ap.add_argument("--list", action="store_true", help="print the settings and their environments")
    ap.add_argument("--dump", default=None, help=argparse.SUPPRESS)   # the child: compute, save to this .npz
    args = ap.parse_args(argv)
    if args.dump:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # a LloydWarning is a result too: the levels are compared
            _save({k: f() for k, f in results().items() if args.only in k}, args.dump)
        return 0
    table = settings()
    if args.list:
        for name, env in table.items():
            print(f"{name}: {' '.join(f'{k}={v!r}' for k, v in env.items()) or '(this CPU)'}")
        return 0
    names = list(table) if args.settings is None else ["native"] + [s for s in args.settings.split(",")
                                                                     if s != "native"]
    for s in names:
        if s not in table:
            ap.error(f"unknown setting {s!r} (known: {', '.join(table)})")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for s in names:
            env = {k: v for k, v in os.environ.items() if k not in _CPU_VARIABLES}
            env.update(table[s], NUMBA_CACHE_DIR=str(Path(tmp, f"numba-{s}")))
            path = str(Path(tmp, f"{s}.npz"))
            t = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--dump", path, "--only", args.only], env=env, check=True)
            res = _load(path)
            took = f"{time.perf_counter() - t:.0f} s"
            if base is None:
                base = res
                print(f"{s}: {len(res)} results ({took})", flush=True)
                continue
            lines = compare(base, res)
            print(f"{s}: {len(lines)} of {len(res)} results differ ({took})", *lines, sep="\n", flush=True)
    return 0


if __name__ == "__main__":
    run(main)
