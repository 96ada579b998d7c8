"""What a GPU machine offers the other checks of gpu_check.sh: the driver, the packages, the
device CuPy and torch see, bitsandbytes and Nsight Compute.

    python benchmarks/gpu_env.py

Exits 1 when CuPy sees no usable GPU (every later stage would only skip), so that
gpu_check.sh stops at once; what is missing otherwise (torch's CUDA, bitsandbytes, ncu) is
printed, and the stages that need it say so in their turn.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys


def _line(what: str, fn) -> object:
    try:
        value = fn()
    except Exception as exc:   # noqa: BLE001 - each missing piece is one line
        value = None
        print(f"{what}: MISSING ({type(exc).__name__}: {' '.join(str(exc).split())[:200]})")
    else:
        print(f"{what}: {value}")
    return value


def _cpu() -> str:
    """The host's processor and its float16 conversion features (bitsandbytes' CPU kernels
    round some float16 ties differently from one host to another)."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return platform.processor() or "unknown"
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    wanted = [f for f in ("f16c", "avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16") if f in flags]
    return f"{model}, {os.cpu_count()} CPUs, {' '.join(wanted) or 'none of f16c/avx2/avx512'}"


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    smi = shutil.which("nvidia-smi")
    if smi:
        r = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        print("nvidia-smi:", (r.stdout or r.stderr).strip())
    else:
        print("nvidia-smi: MISSING")
    print("python:", sys.version.split()[0], platform.machine())
    print("cpu:", _cpu())
    _line("numpy", lambda: __import__("numpy").__version__)
    _line("numba", lambda: __import__("numba").__version__)

    def cupy_device():
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        return f"{cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, {n} device(s), {name}"

    ok = _line("cupy", cupy_device) is not None

    def torch_cuda():
        import torch

        return f"{torch.__version__}, cuda {'available' if torch.cuda.is_available() else 'NOT available'}"

    _line("torch", torch_cuda)
    _line("bitsandbytes", lambda: __import__("bitsandbytes").__version__)
    print("ncu:", shutil.which("ncu") or "MISSING (the ncu stage will fail)")
    from quantbook.bulk.gpu.backend import gpu_available

    usable, why = gpu_available()
    print("quantbook gpu backend:", "usable" if usable else f"NOT usable: {why}")
    if not (ok and usable):
        print("no usable GPU: the other stages would only skip", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
