"""Inputs and comparisons shared by the backend tests."""

import types

import numpy as np
import pytest

from quantbook.bulk import BACKENDS
from quantbook.bulk.format import code_encoder

from checkout import checkout_path


def usable_backend(name):
    """The registered backend ``name``, or a skip naming why it cannot run here."""
    backend = BACKENDS[name]
    why = backend.unavailable()
    if why:
        pytest.skip(f"backend {backend.name!r} unavailable: {why}")
    return backend


def scaled_backend(name):
    """:func:`usable_backend`, or a skip when it does not implement the scaled layouts."""
    from quantbook.bulk.layouts import implements

    backend = usable_backend(name)
    if not implements(backend):
        pytest.skip(f"backend {backend.name!r} does not implement the scaled layouts")
    return backend


def quantize_on(be, x, codebook="nf4", block_size=64, **kw):
    """``quantbook.quantize`` of host ``x`` on backend ``be`` (uploaded where it works), the
    packed codes back on the host."""
    import quantbook as qb

    packed, state = qb.quantize(be.from_host(np.ascontiguousarray(x)), codebook, block_size,
                                backend=be.name, **kw)
    return be.to_host(packed), state


def dequantize_on(be, packed, state):
    """``quantbook.dequantize`` on backend ``be``, the values back on the host in the state's dtype."""
    import quantbook as qb

    out = be.to_host(qb.dequantize(be.from_host(np.asarray(packed)), state, backend=be.name))
    if out.dtype == np.uint16 and np.dtype(state.dtype).name == "bfloat16":  # old CuPy: raw bits
        out = out.view(state.dtype)
    return out


def bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype.itemsize == b.dtype.itemsize and \
        np.array_equal(a.view(np.uint8), b.view(np.uint8))


def ptxas_build(src, name):
    """``src`` compiled by NVRTC for sm_90 with ptxas' verbose report: ``(log, cubin, ptx)``.
    The PTX is the one NVRTC hands ptxas, the same bytes a compile for compute_90 gives, so a
    test of the PTX and one of the SASS share one compile (each takes seconds on two cores)."""
    from quantbook.bulk.gpu.compile import NVRTC_OPTIONS, load_nvrtc

    nv = load_nvrtc()
    prog = nv.createProgram(src, name, [], [])
    try:
        nv.compileProgram(prog, ["--gpu-architecture=sm_90", *NVRTC_OPTIONS, "--ptxas-options=-v"])
        log, cubin, ptx = nv.getProgramLog(prog), bytes(nv.getCUBIN(prog)), nv.getPTX(prog)
    finally:
        nv.destroyProgram(prog)
    log = (log.decode() if isinstance(log, bytes) else log).replace("\0", "")
    ptx = (ptx.decode() if isinstance(ptx, bytes) else ptx).rstrip("\0")
    return log, cubin, ptx


def weights_file(path, seed, rows, cols):
    """A seeded safetensors file for evaluate-model: ``a.weight`` (float32, rows x cols),
    ``b.weight`` (float16, Student-t, rows/2 x cols/2) and ``c.bias`` (37 values, a ragged
    tensor); ``path`` returned as a string."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(seed)
    safetensors_numpy.save_file({"a.weight": (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32),
                                 "b.weight": (rng.standard_t(4, (rows // 2, cols // 2)) * 0.05).astype(np.float16),
                                 "c.bias": rng.standard_normal(37).astype(np.float32)}, str(path))
    return str(path)


def float64_rounding_cases() -> np.ndarray:
    """float64 values at the edges of rounding to float16 (once) and bfloat16 (through
    float32, as ml_dtypes): ties, sticky bits beyond float32 (1 + 2^-11 + 2^-40 rounds up
    once, to 1 through float32), subnormals of each type, overflow, values beyond float32,
    ±0, ±inf, NaNs of either sign with payloads, seeded random magnitudes from 1e-50 to 1e50
    and values near bfloat16's ties on float32's grid."""
    rng = np.random.default_rng(5)
    special = np.array([0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, -65520.0,
                        1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 1.0 + 2.0**-11 + 2.0**-40, -(1.0 + 2.0**-11 + 2.0**-40),
                        1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-8 + 2.0**-30, 1.0 + 2.0**-8 + 2.0**-20,
                        2.0**-25, 2.0**-25 + 2.0**-60, 3 * 2.0**-26, 1e-8, 6.1e-5, 2.0**-24,
                        1e-40, 1e-45, 2.0**-150, 2.0**-149, 1e-50, 3.4028235e38, 3.3961e38, 1e39, -1e300], np.float64)
    nans = np.array([0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001, 0x7FF0040000000000,
                     0xFFF123456789ABCD], np.uint64).view(np.float64)
    return np.concatenate([special, nans, rng.standard_normal(2000) * 10.0 ** rng.uniform(-50, 50, 2000),
                           1.0 + rng.integers(0, 2**30, 500) * 2.0**-38])


def scale_rounding_cases() -> list[tuple[np.ndarray, int, str]]:
    """``(v, group, rule)`` whose statistics sit at float16's rounding edges: float32 values
    one a group (absmax) — ties between neighbours, normal and subnormal, the largest finite,
    the overflow boundary, half the least subnormal, zero, a float32 subnormal, numbers far
    beyond float16 — and root mean squares of (t, t ± one float32 ulp) for those values t,
    which lie strictly between two float32: rounding through float32 first sends half of the
    ties among them the wrong way."""
    h = np.arange(0, 0x7C00, 97, dtype=np.uint16).view(np.float16)
    lo, up = h.astype(np.float32), np.nextafter(h, np.float16(np.inf)).astype(np.float32)
    ties = lo + (up - lo) / 2   # exact in float32
    edge = np.array([65504.0, 65519.996, 65520.0, 65536.0, 1e6, 3e38, 2.0**-25, 2.0**-26, 2.0**-24,
                     2.0**-25 * (1 + 2.0**-23), 2.0**-14, 0.0, 1e-40], np.float32)
    t = np.concatenate([lo, ties, np.nextafter(ties, np.float32(0)), np.nextafter(ties, np.float32(1e9)), edge])
    pairs = np.stack([np.concatenate([t, t]), np.concatenate([np.nextafter(t, np.float32(-1e9)),
                                                              np.nextafter(t, np.float32(1e9))])], axis=1)
    return [(t, 1, "absmax"), (np.ascontiguousarray(pairs, np.float32).reshape(-1), 2, "rms")]


def grid_ties(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(points, y, path)`` for the P = 2 cell grid's tie rule: 30 points on a lattice of
    eighths, and float32 vectors ``y`` at exactly equal least distance from two of them
    (dyadic steps along their bisector, so every distance is exact in float64); ``path`` is
    True where the grid answers ``y`` from a cell's three inline candidates, the tied pair
    among them, else from a longer list.  The tie goes to the lower index."""
    from quantbook.bulk import vq

    rng = np.random.default_rng(seed)
    lattice = np.unique(rng.integers(-40, 40, (40, 2)), axis=0)[:30]
    rng.shuffle(lattice)
    pts = (lattice / 8).astype(np.float32)
    _, lo0, lo1, inv0, inv1, cells, lut, multi = vq._grid_tables(pts.tobytes(), len(pts))
    c = pts.astype(np.float64)
    steps = np.arange(-64, 65)[:, None] / 64
    ys, fast = [], []
    for a in range(len(c)):
        for b in range(a + 1, len(c)):
            y = (c[a] + c[b]) / 2 + steps * np.array([c[a, 1] - c[b, 1], c[b, 0] - c[a, 0]])
            d = ((y[:, None, :] - c[None]) ** 2).sum(axis=2)
            keep = (y.astype(np.float32) == y).all(axis=1) & (d[:, a] == d[:, b]) & (d[:, a] == d.min(axis=1))
            y = y[keep]
            fx = np.clip((y[:, 0] - lo0) * inv0, 0, cells - 1).astype(int)
            fy = np.clip((y[:, 1] - lo1) * inv1, 0, cells - 1).astype(int)
            row = lut[fx * cells + fy]
            inline = (row[:, 0] >= 0) & (row == a).any(axis=1) & (row == b).any(axis=1)
            listed = (row[:, 0] < 0) & (multi[np.maximum(-1 - row[:, 0], 0)] > 0)
            ys.append(y[inline | listed])
            fast.append(inline[inline | listed])
    return pts, np.concatenate(ys).astype(np.float32), np.concatenate(fast)


def adversarial_input(n, blocksize, code, rng):
    """Seeded normal data, plus: block 0 with absmax exactly 1 and the rest ON the encoder's
    bounds and the code values (ties), an all-zero block, and subnormal values."""
    bounds = code_encoder(code).bounds
    x = rng.standard_normal(n).astype(np.float32)
    m = min(n, blocksize)
    x[:m] = rng.choice(np.concatenate([bounds, code, -bounds, [0.0, 1.0, -1.0]]), m)
    x[0] = 1.0
    if n > blocksize:
        x[blocksize:2 * blocksize] = 0.0
    if n >= 2 * blocksize + 5:
        x[2 * blocksize:2 * blocksize + 5] = [1e-39, -3e-40, 0.0, 1e-45, -1e-39]
    return x


class FakeDeviceArray(np.ndarray):
    """A host array posing as a CuPy array (``.data.ptr``), for stand-in ``cupy`` modules."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)

    @property
    def __cuda_array_interface__(self):   # what quantbook's api looks for in a device array
        return self.__array_interface__

    @property
    def device(self):   # CuPy's: the GPU that holds the array (set_device moves it there)
        return types.SimpleNamespace(id=getattr(self, "_device_id", 0))

    def get(self):   # CuPy's: a fresh host array
        return np.asarray(self).copy()


def count_transfers(monkeypatch, cp):
    """``(down, up)``: lists that get the size of every array a stand-in ``cp`` copies to the
    host (``get``) and from it (``asarray`` of a host array) from now on."""
    down, up = [], []
    get, upload = FakeDeviceArray.get, cp.asarray
    monkeypatch.setattr(FakeDeviceArray, "get", lambda a: (down.append(a.size), get(a))[1])
    monkeypatch.setattr(cp, "asarray", lambda a, dtype=None: (
        up.append(np.size(a)) if not isinstance(a, FakeDeviceArray) else None, upload(a, dtype))[1])
    return down, up


def set_device(a, device_id):
    """``a`` as a stand-in array held by GPU ``device_id``."""
    a = a.view(FakeDeviceArray)
    a._device_id = device_id
    return a


def fake_device(a, dtype=None):
    return np.asarray(a, dtype=dtype).view(FakeDeviceArray)


def fake_cupy(emulator):
    """A stand-in ``cupy`` module for machines without a GPU: arrays are
    :class:`FakeDeviceArray` in host memory, modules accept only real ELF cubins (NVRTC still
    compiles), and each launch runs the same kernel through ``emulator()`` (tests/gpu_emulator.py),
    recorded in ``launches`` as ``(name, grid, block)`` and the current device of each in
    ``launch_devices``.  Fresh arrays (``empty``) hold 0xEE bytes, so a byte a kernel never
    writes (or an array the host should have zeroed) shows up."""
    cp = types.ModuleType("cupy")
    cp.ndarray = FakeDeviceArray
    cp.uint8, cp.uint16, cp.uint32, cp.int32, cp.float16, cp.float32, cp.float64 = (
        np.uint8, np.uint16, np.uint32, np.int32, np.float16, np.float32, np.float64)
    cp.asarray = lambda a, dtype=None: fake_device(a, dtype)
    cp.ascontiguousarray = lambda a: np.ascontiguousarray(a).view(FakeDeviceArray)
    cp.empty = lambda n, dtype: np.full(np.empty(n, dtype).shape + (np.dtype(dtype).itemsize,), 0xEE,
                                        np.uint8).view(dtype).reshape(n).view(FakeDeviceArray)
    cp.zeros = lambda n, dtype: np.zeros(n, dtype).view(FakeDeviceArray)
    cp.asnumpy = lambda a: np.asarray(a).view(np.ndarray).copy()
    cp.searchsorted = lambda a, v, side="left": np.searchsorted(a, v, side=side).view(FakeDeviceArray)
    cp.isfinite = lambda a: np.isfinite(a).view(FakeDeviceArray)
    cp.launches = []
    cp.launch_devices = []
    current = [0]   # the device stack: cupy.cuda.Device(i) as a context manager pushes i

    class Module:
        def load(self, image):
            assert isinstance(image, bytes) and image[:4] == b"\x7fELF"   # a real sm_90 cubin

        def get_function(self, name):
            def launch(grid, block, args):
                emu = emulator()
                if hasattr(emu, "check"):   # the argument types, where the emulator knows them
                    emu.check(name, args)
                conv = [int(a) if isinstance(a, np.integer) else
                        float(a) if isinstance(a, np.floating) else a for a in args]
                cp.launches.append((name, grid, block))
                cp.launch_devices.append(current[-1])
                emu.launch(name, grid[0], block[0], *conv)
            return launch

    class Device:
        compute_capability = "90"

        def __init__(self, device=None):
            self.id = current[-1] if device is None else int(device)

        def __enter__(self):
            current.append(self.id)
            return self

        def __exit__(self, *exc):
            current.pop()

    cp.cuda = types.SimpleNamespace(
        Device=Device, function=types.SimpleNamespace(Module=Module),
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1,
                                      getDeviceProperties=lambda i: {"name": b"emulated",
                                                                     "multiProcessorCount": 2}))
    return cp


def use_stand_in_cupy(monkeypatch, emulator, build=None, caches=()):
    """:func:`fake_cupy` of ``emulator`` installed as ``cupy`` for one test: NVRTC loaded
    first (the stand-in cannot load it), the emulation built (``build()``, default
    ``emulator()``), the compiled-module caches of the gpu backend and of the modules in
    ``caches`` and its device-table, launch-plan and device-property caches emptied.  Skips,
    with the reason, without NVRTC or a C++ compiler."""
    import sys

    import gpu_emulator as E
    from quantbook.bulk.gpu import backend as G
    from quantbook.bulk.gpu.compile import NvrtcUnavailable, load_nvrtc

    try:
        load_nvrtc()
        (build or emulator)()
    except (NvrtcUnavailable, E.EmulatorUnavailable) as exc:
        pytest.skip(f"needs NVRTC and a C++ compiler: {exc}")
    fake = fake_cupy(emulator)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    for mod in (G, *caches):
        monkeypatch.setattr(mod, "_MODULES", {})
    monkeypatch.setattr(G, "_CONSTS", {})
    monkeypatch.setattr(G, "_PLANS", {})
    # kept after the test, the stand-in's 2 SMs and its dead kernels' ids would size a real
    # device's later launches
    for cache in ("_SMS", "_RESIDENT", "_NAMES"):
        monkeypatch.setattr(G, cache, {})
    return fake


def load_benchmark(cp, monkeypatch, script):
    """``benchmarks/<script>.py`` as a module, with the stand-in ``cp`` given what a benchmark
    run needs (events whose times are all 1 ms, seeded ``random``, device copies, a memory
    pool), so the script can run end to end on the emulator."""
    import importlib.util

    class Event:
        def record(self):
            pass

        def synchronize(self):
            pass

    class Device(cp.cuda.Device):
        def synchronize(self):
            pass

    cp.cuda.Event = Event
    cp.cuda.Device = Device
    cp.cuda.get_elapsed_time = lambda a, b: 1.0
    cp.random = types.SimpleNamespace(
        standard_normal=lambda n, dtype: fake_device(np.random.default_rng(0).standard_normal(n), dtype))
    cp.empty_like = lambda a: np.empty_like(a).view(FakeDeviceArray)
    cp.get_default_memory_pool = lambda: types.SimpleNamespace(free_all_blocks=lambda: None)
    monkeypatch.setattr(FakeDeviceArray, "data", property(lambda self: types.SimpleNamespace(
        ptr=self.ctypes.data, copy_from_device_async=lambda src, size: None)))
    path = checkout_path("benchmarks", f"{script}.py")
    monkeypatch.syspath_prepend(str(path.parent))   # its folder's _cli, as `python SCRIPT` finds it
    spec = importlib.util.spec_from_file_location(script, path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench
