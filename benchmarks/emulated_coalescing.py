"""Coalescing of the GPU kernels' global loads and stores, modelled on the CPU (no GPU needed).

    python benchmarks/emulated_coalescing.py [--summary] [--family NAME ...]

Runs the runs of tests/gpu_coalescing.py (every bulk kernel family through the gpu backend's
launchers on the tests' stand-in ``cupy``, full blocks of float32/float16/bfloat16, 1/2/4/8-bit
codes, block sizes 16, 64 and 4096) on the measuring emulator (tests/gpu_traffic.py), which
forms each warp-wide request as a GPU does, and prints a row per kernel, dtype, code, block
size, array and direction (``--summary``: a row per kernel, array and direction, the lowest
and highest over the runs).  Columns: ``req`` warp-wide requests; ``sect/req`` 32-byte sectors
a request touches; ``eff`` bytes moved / (32 * sectors), 1.0 ideal (what Nsight Compute
reports as sectors per request); ``coal`` the fewest sectors the request's bytes could lie in
/ the sectors touched (1.0 for a broadcast too); ``foot`` a warp's bytes over the launch / (32 *
the distinct sectors it touched), whether a sector fetched is used in the end.
tests/test_gpu_coalescing.py holds each access to the bound its kernel's design gives.

This models the access pattern only (as g++ compiles the CUDA source), not speed.  Needs what
the tests' emulator needs: the test extra (pytest, NVRTC) and g++.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

FAMILIES = ("blockwise", "nested", "sanitize", "error sums", "scaled", "vq")


def _group(kernel: str) -> str:
    """A kernel's name without its dtype, values a thread, packing and compares (the rows it
    summarises)."""
    return re.sub(r"_v\d+|_p\d|_s\d$", "", re.sub(r"_(f32|f16|bf16)(?=_|$)", "", kernel))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--summary", action="store_true", help="a row per kernel, array and direction")
    ap.add_argument("--family", action="append", choices=FAMILIES, help="only these families (repeatable)")
    args = ap.parse_args(argv)

    import gpu_coalescing as C   # noqa: PLC0415 - the tests' runs and emulator
    import gpu_emulator as E   # noqa: PLC0415
    import pytest   # noqa: PLC0415

    why = E.measuring_unavailable()
    if why:
        print(f"emulated_coalescing: {why}")
        return 1
    runs = [r for r in C.runs() if args.family is None or r.family in args.family]
    rows = []
    with pytest.MonkeyPatch.context() as mp:
        try:
            C.install_stand_in(mp)
        except pytest.skip.Exception as exc:
            print(f"emulated_coalescing: {exc}")
            return 1
        for run in runs:
            rows += C.measure(run)
    if args.summary:
        _print_summary(rows)
    else:
        _print_rows(rows)
    return 0


def _print_rows(rows) -> None:
    print(f"{'kernel':28s} {'dtype':8s} {'code':10s} {'B':>5s} {'array':14s} {'dir':5s} {'req':>6s} "
          f"{'sect/req':>8s} {'eff':>5s} {'coal':>5s} {'foot':>5s}")
    for r in rows:
        t = r.traffic
        print(f"{r.kernel:28s} {r.run.dtype:8s} {r.run.code:10s} {r.run.block:5d} {r.array:14s} {r.direction:5s} "
              f"{t.requests:6d} {t.sectors_per_request:8.1f} {t.efficiency:5.3f} {t.coalescing:5.3f} "
              f"{t.footprint:5.3f}")


def _print_summary(rows) -> None:
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r.run.family, _group(r.kernel), r.array, r.direction), []).append(r)
    print(f"{'family':10s} {'kernel':27s} {'array':13s} {'dir':5s} {'runs':>4s} {'eff':>11s} {'coal':>5s} "
          f"{'foot':>5s}  lowest eff at")
    for (family, kernel, array, direction), rs in groups.items():
        eff = [r.traffic.efficiency for r in rs]
        lows = [r for r in rs if r.traffic.efficiency == min(eff)]
        at = "all" if min(eff) == max(eff) else f"{lows[0].run.dtype} {lows[0].run.code} B={lows[0].run.block}" \
            + (f" (+{len(lows) - 1})" if len(lows) > 1 else "")
        print(f"{family:10s} {kernel:27s} {array:13s} {direction:5s} {len(rs):4d} {min(eff):5.3f}-{max(eff):5.3f} "
              f"{min(r.traffic.coalescing for r in rs):5.3f} {min(r.traffic.footprint for r in rs):5.3f}  {at}")


if __name__ == "__main__":
    sys.exit(main())
