"""The bulk kernels' memory requests, measured on the emulator (tests/gpu_traffic.py): the runs
that tests/test_gpu_coalescing.py bounds and benchmarks/emulated_coalescing.py tabulates.

Each run calls the public functions on stand-in device arrays (tests/gpu_cases.py: the gpu
backend's own launchers and launch shapes, every kernel run by the measuring emulator) on full
blocks of seeded normal values, and gives one row per kernel launched, array and direction.
Families: ``blockwise`` (bitsandbytes' layout: quantize, dequantize), ``nested`` (the nested
statistics), ``sanitize`` (``allow_nonfinite``), ``error sums``, ``scaled`` (NVFP4/MXFP4-like:
block maxima, the step-table lookup, the encoders, decode; ``search:4over6``'s errors kernel;
ggml's search) and ``vq`` (rotation, group statistics, the searches, decode, the casts).
"""

from __future__ import annotations

from dataclasses import dataclass

import gpu_emulator as E
import gpu_traffic
import numpy as np
from gpu_cases import fake_device, use_stand_in_cupy

DTYPES = ("float32", "float16", "bfloat16")
BITS = (1, 2, 4, 8)
BLOCKS = (16, 64, 4096)
#: values a run quantizes: whole CTA tiles of every kernel (8192 values at most), four of them
N = 32768


@dataclass(frozen=True)
class Run:
    family: str
    dtype: str
    code: str     # "4-bit", "e2m1", "P=2 N=256", ...
    block: int    # the block size, the nested statistics' 256 or the VQ group

    @property
    def id(self) -> str:
        return f"{self.family}-{self.dtype}-{self.code}-B{self.block}".replace(" ", "")


@dataclass(frozen=True)
class Row:
    run: Run
    kernel: str
    array: str
    direction: str   # "load" | "store"
    traffic: gpu_traffic.Traffic


def runs() -> list[Run]:
    out = [Run("blockwise", d, f"{b}-bit", B) for d in DTYPES for b in BITS for B in BLOCKS]
    out.append(Run("nested", "float32", "8-bit", 256))
    out += [Run("sanitize", d, "-", B) for d in DTYPES for B in BLOCKS]
    out += [Run("error sums", d, "-", 256) for d in DTYPES]
    out += [Run("scaled", d, c, B) for d in DTYPES for c in ("e2m1", "nf4") for B in BLOCKS]
    out += [Run("vq", d, c, B) for d in DTYPES for c in ("P=2 N=256", "P=4 N=16") for B in BLOCKS]
    return out


def _dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def _values(run: Run, n: int = N, shape=None):
    x = np.random.default_rng(len(run.id)).standard_normal(n).astype(np.float32) * 0.02
    return fake_device(x.astype(_dtype(run.dtype)).reshape(shape or (n,)))


def _blockwise(run: Run) -> None:
    from quantbook.bulk.gpu import backend as G

    bits = int(run.code.split("-")[0])
    code = np.linspace(-1, 1, 2**bits).astype(np.float32)
    packed, absmax = G.quantize_gpu(_values(run), code, bits, run.block)
    G.dequantize_gpu(packed, absmax, code, bits, run.block, N, _dtype(run.dtype))


def _nested(run: Run) -> None:
    from quantbook.bulk.gpu import backend as G

    absmax = fake_device(np.abs(np.random.default_rng(1).standard_normal(N // 8)).astype(np.float32))
    q, nested, offset = G.quantize_absmax_nested(absmax)
    G.dequantize_absmax_nested(q, nested, offset)


def _sanitize(run: Run) -> None:
    from quantbook.bulk.gpu import backend as G

    G.sanitize_gpu(_values(run), run.block)


def _error_sums(run: Run) -> None:
    from quantbook.bulk.gpu import backend as G

    x = _values(run, 2 * N)   # a thread a run of 256 values: 256 threads, one CTA
    G.error_chunks_gpu(x, fake_device(np.asarray(x)[::-1].copy()))


def _scaled(run: Run) -> None:
    import quantbook as qb

    x = _values(run)
    packed, state = qb.quantize(x, run.code, run.block, scale="e8m0", backend="gpu")   # amax, steps, encode
    qb.dequantize(packed, state, backend="gpu")                                        # decode (lookup)
    qb.quantize(x, run.code, run.block, scale="search:4over6", backend="gpu")         # errors, encode
    if run.block <= 64:   # a thread a block: a block of 4096 would need 2^17 values for one warp
        qb.quantize(x, "iq4_nl", run.block, scale="search:ggml", backend="gpu")


def _vq(run: Run) -> None:
    from quantbook.bulk.vq import dequantize_vq, quantize_vq

    p, npts = (int(t.split("=")[1]) for t in run.code.split())
    pts = np.random.default_rng(p).standard_normal((npts, p)).astype(np.float32)
    x = _values(run, shape=(N // 4096, 4096))   # rows of 4096: the rotation's tile and one butterfly
    idx, state = quantize_vq(x, pts, group=run.block, backend="gpu")
    dequantize_vq(idx, state, backend="gpu")


_FAMILIES = {"blockwise": _blockwise, "nested": _nested, "sanitize": _sanitize, "error sums": _error_sums,
             "scaled": _scaled, "vq": _vq}


def install_stand_in(monkeypatch) -> None:
    """The stand-in ``cupy`` for the runs, every library's emulation built (skips, with the
    reason, without NVRTC or a compiler)."""
    from quantbook.bulk.gpu import scaled as GS
    from quantbook.bulk.gpu import vq as GV

    use_stand_in_cupy(monkeypatch, E.any_emulator, caches=(GS, GV),
                      build=lambda: (E.emulator(), E.scaled_emulator(), E.vq_emulator()))


def measure(run: Run) -> list[Row]:
    """The rows of ``run`` (under :func:`stand_in`), in launch order."""
    with E.recording() as rec:
        _FAMILIES[run.family](run)
    rows = []
    for launch in rec.launches:
        for (array, direction), t in gpu_traffic.summary(launch).items():
            rows.append(Row(run, launch.name, array, direction, t))
    return rows
