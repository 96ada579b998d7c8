"""torch's float32 CPU arithmetic, reproduced bit for bit with numpy.

Two operations of PyTorch's CPU backend decide bits of published tables and of bitsandbytes'
nested statistics: ``torch.linspace`` (the dynamic 8-bit map, NFk's probabilities) and
``torch.sum`` / ``torch.mean`` (the nested absmax offset).  This module is the one place
where they are emulated.

:func:`linspace` — ``torch.linspace(start, end, steps)`` (float32).  Facts from ATen's
``aten/src/ATen/native/cpu/RangeFactoriesKernel.cpp`` and ``RangeFactories.cpp``: ``start``
and ``end`` are converted to float32; ``steps == 0`` gives an empty tensor and ``steps == 1``
``[start]``; otherwise ``step = (end - start) / (steps - 1)`` in float32 (the subtraction
and the division each rounded) and element ``i`` is ``start + step * i`` for
``i < steps // 2`` and ``end - step * (steps - 1 - i)`` for the rest, with the index
converted to float32.  The kernel is plain scalar C++, so how the multiply-add rounds is up
to the compiler: in ATen's AVX2 build, where FMA instructions are allowed, it becomes one
fused multiply-add (rounded once); the ``default`` (pre-AVX2) build rounds the product and
then the sum.  ATen registers this kernel with ``REGISTER_DISPATCH``, which
leaves the AVX512 slot empty, so AVX512 machines run the AVX2 code.  Hence ``capability``:
``"avx2"`` (also ``"avx512"``) rounds once, ``"default"`` twice.

:func:`sum` — ATen's ``cascade_sum`` (``aten/src/ATen/native/cpu/SumKernel.cpp``) for a
contiguous float32 tensor reduced to one value: the values are read as 8-lane vectors
(``Vectorized<float>`` is 8 floats in the default and AVX2 builds; the sum kernel, too,
has no AVX512 registration), four vectors at a time (instruction-level parallelism), summed
by ``multi_row_sum``'s four-level cascade; the leftover vectors go into the first ILP slot,
the slots are added in order, then the leftover scalars and the 8 lanes are added to a
scalar starting at zero, and the result is added to the zero-filled output.  Fewer than 8
values take the scalar version of the same ``row_sum``.  With several threads
(``torch.set_num_threads``) and at least ``GRAIN_SIZE = 32768`` values, ATen's
``two_pass_reduction`` splits the range into ``min(threads, ceil(n / 32768))`` equal chunks
(``at::parallel_for``; exactly 32768 values stay in one chunk), sums each into a
zero-filled buffer of ``threads`` entries and sums that buffer the same way.

:func:`mean` — ``torch.mean``: the float32 sum divided by ``float32(n)`` (float32 division).

Only x86-64 builds of torch are covered (other architectures have other vector widths
and compilers).
"""

from __future__ import annotations

import numpy as np
from .arguments import check_int

__all__ = ["CAPABILITIES", "TorchF32Error", "linspace", "sum", "mean"]

_F = np.float32

#: ATen CPU capabilities (``ATEN_CPU_CAPABILITY``) that :func:`linspace` distinguishes.
CAPABILITIES = ("default", "avx2", "avx512")

# ATen constants: internal::GRAIN_SIZE, Vectorized<float>::size() (x86 default/AVX2 builds),
# row_sum's ILP factor and multi_row_sum's number of cascade levels.
_GRAIN = 32768
_LANES = 8
_ILP = 4
_LEVELS = 4


class TorchF32Error(ValueError):
    """An argument the torch emulation cannot take (one-line reason)."""


# ------------------------------------------------------------------------------- linspace
def linspace(start: float, end: float, steps: int, *, capability: str = "avx2") -> np.ndarray:
    """``torch.linspace(start, end, steps)`` (float32, CPU) as a new float32 array.

    ``capability``: the ATen CPU capability torch runs with (``torch.backends.cpu.
    get_cpu_capability()``): ``"avx2"`` and ``"avx512"`` round each point once (fused
    multiply-add), ``"default"`` rounds the product and the sum separately.
    """
    cap = _check_capability(capability)
    s, e = _to_f32(start, "start"), _to_f32(end, "end")
    n = _check_count(steps, "steps", minimum=0)
    return _linspace(s, e, n, fused=cap != "default")


def _linspace(s: np.float32, e: np.float32, n: int, fused: bool,
              index: np.ndarray | None = None) -> np.ndarray:
    """The points ``index`` (default: all) of the grid; ``n >= 2`` unless ``index`` is None."""
    if index is None:
        if n <= 1:
            return np.full(n, s, dtype=_F)
        index = np.arange(n, dtype=np.int64)
    i = np.asarray(index, dtype=np.int64)
    with np.errstate(over="ignore", invalid="ignore"):
        step = _F(_F(e - s) / _F(n - 1))
        lower = i < n // 2
        # the index is converted to float32 first (rounds above 2**24)
        k = np.where(lower, i, n - 1 - i).astype(_F)
        base = np.where(lower, s, e).astype(_F)
        sign = np.where(lower, _F(1), _F(-1)).astype(_F)
        if fused:
            return _fma_f32(sign * step, k, base)
        return (base + sign * (step * k)).astype(_F)


def _fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 ``a * b + c`` rounded once (round to nearest even), elementwise."""
    a64, b64, c64 = (np.asarray(v, dtype=np.float64) for v in (a, b, c))
    p = a64 * b64  # exact: two 24-bit significands, float64's exponent range
    s = p + c64
    # TwoSum: err = (p + c) - s exactly, for finite s
    bb = s - p
    err = (p - (s - bb)) + (c64 - bb)
    # Round to odd in float64 (53 >= 24 + 2 bits), then to float32: one correct rounding.
    # Rounding s straight to float32 would round twice and miss float32 ties.
    bits = s.view(np.int64)
    fix = np.isfinite(s) & (err != 0) & ((bits & 1) == 0)
    if fix.any():
        s = s.copy()
        s[fix] = np.nextafter(s[fix], np.where(err[fix] > 0, np.inf, -np.inf))
    return s.astype(_F)


# ------------------------------------------------------------------------------ sum / mean
def sum(values: np.ndarray, threads: int = 1) -> np.float32:  # noqa: A001 - mirrors torch.sum
    """``torch.sum`` of a float32 tensor holding ``values`` (C order) with ``threads``
    intra-op threads, on the CPU (any x86-64 capability)."""
    x = _check_values(values)
    t = _check_count(threads, "threads", minimum=1)
    return _sum(x, t)


def mean(values: np.ndarray, threads: int = 1) -> np.float32:
    """``torch.mean`` of a float32 tensor holding ``values``: ``float32(sum / float32(n))``
    (NaN for no values, as torch)."""
    x = _check_values(values)
    t = _check_count(threads, "threads", minimum=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _F(_sum(x, t) / _F(x.size))


def _sum(x: np.ndarray, threads: int) -> np.float32:
    n = x.size
    with np.errstate(over="ignore", invalid="ignore"):
        if n < _GRAIN or threads == 1:
            return _F(_F(0) + _inner_sum(x))
        tasks = min(threads, -(-n // _GRAIN))
        chunk = -(-n // tasks)
        buffer = np.zeros(threads, dtype=_F)
        for t in range(tasks):
            buffer[t] = _F(0) + _inner_sum(x[t * chunk:(t + 1) * chunk])
        return _F(_F(0) + _inner_sum(buffer))


def _inner_sum(x: np.ndarray) -> np.float32:
    """One contiguous row: ``vectorized_inner_sum`` (>= 8 values) or the scalar ``row_sum``."""
    n = x.size
    if n < _LANES:
        return _row_sum(x.reshape(n, 1))[0]
    nvec = n // _LANES
    vacc = _row_sum(x[: nvec * _LANES].reshape(nvec, _LANES))
    total = _F(0)
    for v in x[nvec * _LANES:]:
        total = _F(total + v)
    for v in vacc:
        total = _F(total + v)
    return total


def _row_sum(vecs: np.ndarray) -> np.ndarray:
    """ATen ``row_sum`` over ``vecs`` (rows of equal width): 4 rows at a time, cascaded."""
    size, width = vecs.shape
    size_ilp = size // _ILP
    part = _multi_row_sum(vecs[: size_ilp * _ILP].reshape(size_ilp, _ILP * width))
    part = part.reshape(_ILP, width)
    for r in range(size_ilp * _ILP, size):
        part[0] += vecs[r]
    for k in range(1, _ILP):
        part[0] += part[k]
    return part[0]


def _multi_row_sum(rows: np.ndarray) -> np.ndarray:
    """ATen ``multi_row_sum``: the column sums of ``rows`` by the four-level cascade.

    Level 0 sums ``step = 2**max(4, ceil(log2(size)) // 4)`` consecutive rows; each complete
    group of ``step`` level-j sums becomes one level-(j+1) sum; the top level keeps adding.
    Every partial sum restarts from zero, so the cascade is a fixed tree that is evaluated
    here one level at a time, vectorised across groups and columns.
    """
    size, width = rows.shape
    power = max(4, _ceil_log2(size) // _LEVELS)
    step = 1 << power
    level = rows
    left = []  # what stays in accumulators 0..2 when the rows run out
    for _ in range(_LEVELS - 1):
        full = level.shape[0] // step
        left.append(_running_sum(level[full * step:].reshape(1, -1, width))[0])
        level = _running_sum(level[: full * step].reshape(full, step, width))
    top = _running_sum(level.reshape(1, -1, width))[0]
    acc = left[0]
    for extra in (*left[1:], top):
        acc = (acc + extra).astype(_F)
    return acc


def _running_sum(groups: np.ndarray) -> np.ndarray:
    """Sequential float32 sums from zero along axis 1 of ``groups`` (count, length, width)."""
    acc = np.zeros((groups.shape[0], groups.shape[2]), dtype=_F)
    for j in range(groups.shape[1]):
        acc += groups[:, j]
    return acc


def _ceil_log2(x: int) -> int:
    return 0 if x <= 1 else int(x - 1).bit_length()


# ------------------------------------------------------------------------------ validation
def _check_capability(capability: object) -> str:
    if not isinstance(capability, str) or capability.lower() not in CAPABILITIES:
        raise TorchF32Error(f"capability must be one of {', '.join(CAPABILITIES)}, got {capability!r}")
    return capability.lower()


def _check_count(value: object, name: str, minimum: int) -> int:
    return check_int(value, name, minimum, error=TorchF32Error)


def _to_f32(value: object, name: str) -> np.float32:
    """A Python/numpy real as torch's ``Scalar.to<float>()``: rounded to nearest."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TorchF32Error(f"{name} must be a real number, got {value!r}")
    if isinstance(value, (int, np.integer)) and abs(int(value)) > 2**53:
        # float(value) would round once more before the float32 rounding
        raise TorchF32Error(f"{name} must be an integer of magnitude at most 2**53, got {value!r}")
    v = float(value)
    if not np.isfinite(v) or abs(v) > float(np.finfo(_F).max):
        # torch refuses values beyond float32's range; infinite ends only give NaN points
        raise TorchF32Error(f"{name} must be finite and within float32's range, got {value!r}")
    return _F(v)


def _check_values(values: object) -> np.ndarray:
    x = np.asarray(values)
    if x.dtype != _F:
        raise TorchF32Error(f"values must be a float32 array (torch.float32), got dtype {x.dtype}")
    return np.ascontiguousarray(x).reshape(-1)
