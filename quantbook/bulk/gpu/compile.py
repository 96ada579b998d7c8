"""Compile the kernels with NVRTC, with or without a GPU.

Uses ``cupy_backends.cuda.libs.nvrtc`` directly: CuPy's own compile helpers query the
current device for its architecture and fail on a machine without one.  NVRTC itself
needs no device, so :func:`compile_source` works on CI (it is what the always-running
compile test calls for ``sm_80`` and ``sm_90``).

``libnvrtc`` is looked up by CuPy; when that fails and the ``nvidia-cuda-nvrtc-cu12``
wheel is installed, the library is preloaded from the wheel's ``nvidia/cuda_nvrtc/lib``
with ``ctypes`` (RTLD_GLOBAL) and the lookup is retried.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import struct
from pathlib import Path
from types import ModuleType

__all__ = ["NVRTC_OPTIONS", "NvrtcUnavailable", "load_nvrtc", "compile_source", "cache_dir"]

#: Options every kernel is compiled with: one IEEE float32 operation per source operation
#: (no FMA contraction, no flush-to-zero, correctly rounded division), as numpy computes.
NVRTC_OPTIONS = ("--std=c++17", "--fmad=false", "--ftz=false", "--prec-div=true",
                 "--prec-sqrt=true")


class NvrtcUnavailable(RuntimeError):
    """CuPy or the NVRTC library cannot be loaded on this machine."""


_NVRTC: ModuleType | None = None


def _preload_from_wheel() -> list[str]:
    """Load libnvrtc from the nvidia-cuda-nvrtc-cu12 / -cu13 wheel, if installed."""
    loaded: list[str] = []
    for pkg in ("nvidia.cuda_nvrtc", "nvidia.cu13"):
        try:
            mod = __import__(pkg, fromlist=["__path__"])
        except ImportError:
            continue
        for root in getattr(mod, "__path__", []):
            for lib in sorted(Path(root).glob("lib*/libnvrtc.so*")):
                if "builtins" in lib.name or ".alt." in lib.name:
                    continue
                try:
                    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
                    loaded.append(str(lib))
                except OSError:
                    pass
    return loaded


def load_nvrtc() -> ModuleType:
    """The ``cupy_backends.cuda.libs.nvrtc`` module with a working library, or raise
    :class:`NvrtcUnavailable` (one line saying why)."""
    global _NVRTC
    if _NVRTC is not None:
        return _NVRTC
    first_error: Exception | None = None
    for attempt in range(2):
        if attempt == 1 and not _preload_from_wheel():
            break
        try:
            from cupy_backends.cuda.libs import nvrtc  # noqa: PLC0415 - optional dependency

            nvrtc.getVersion()
            _NVRTC = nvrtc
            return nvrtc
        except Exception as exc:  # ImportError, OSError, RuntimeError from the loader
            first_error = first_error or exc
    raise NvrtcUnavailable(
        "cannot load NVRTC through CuPy (pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12): "
        f"{type(first_error).__name__}: {first_error}")


def supported_archs() -> list[int]:
    """Compute capabilities this NVRTC can compile for, e.g. [50, ..., 90, 100, 120]."""
    return sorted(int(a) for a in load_nvrtc().getSupportedArchs())


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$QUANTBOOK_CACHE`` or the user's cache directory, then
    ``gpu``."""
    root = os.environ.get("QUANTBOOK_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "quantbook")
    return Path(root) / "gpu"


def _complete_elf(data: bytes) -> bytes:
    """Undo CuPy's ``getCUBIN`` dropping the cubin's last byte (it strips a "trailing NUL"
    as for PTX): zero-pad to the end of the ELF64 program/section header tables."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2:
        return data
    phoff, shoff = struct.unpack_from("<QQ", data, 32)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 54)
    end = max(phoff + phentsize * phnum, shoff + shentsize * shnum)
    return data + b"\0" * (end - len(data)) if end > len(data) else data


def compile_source(src: str, arch: str, *, output: str = "cubin", name: str = "quantbook.cu",
                   extra_options: tuple[str, ...] = (), use_cache: bool = False) -> bytes:
    """Compile CUDA source with NVRTC; no GPU needed.

    ``arch`` is ``"sm_XY"`` (``output="cubin"``: SASS, so ptxas runs too) or
    ``"compute_XY"`` (``output="ptx"``).  Returns the cubin bytes or the PTX text as bytes
    (NUL-terminated, ready for ``cuModuleLoadData``).  Raises ``RuntimeError`` with the
    NVRTC log on a compile error, :class:`NvrtcUnavailable` if NVRTC cannot be loaded.
    """
    if output not in ("cubin", "ptx"):
        raise ValueError(f"output must be 'cubin' or 'ptx', got {output!r}")
    nvrtc = load_nvrtc()
    options = (f"--gpu-architecture={arch}",) + NVRTC_OPTIONS + tuple(extra_options)
    key = None
    if use_cache:
        h = hashlib.sha256()
        for part in (src, repr(options), output, repr(tuple(nvrtc.getVersion()))):
            h.update(part.encode())
            h.update(b"\0")
        key = cache_dir() / f"{h.hexdigest()[:32]}.{output}"
        try:
            return key.read_bytes()
        except OSError:
            pass
    prog = nvrtc.createProgram(src, name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, list(options))
        except nvrtc.NVRTCError as exc:
            log = nvrtc.getProgramLog(prog)
            raise RuntimeError(f"NVRTC failed for {arch}: {exc}\n{log}") from None
        if output == "cubin":
            data = _complete_elf(bytes(nvrtc.getCUBIN(prog)))
        else:
            ptx = nvrtc.getPTX(prog)
            data = ptx.encode() if isinstance(ptx, str) else bytes(ptx)
            if not data.endswith(b"\0"):
                data += b"\0"
    finally:
        nvrtc.destroyProgram(prog)
    if key is not None:
        try:
            key.parent.mkdir(parents=True, exist_ok=True)
            tmp = key.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, key)
        except OSError:
            pass
    return data
