"""The readable numpy reference of quantbook's bulk block-wise format.  It DEFINES the format.

Every backend (numba ``cpu``, CuPy ``gpu``) must return exactly the bytes computed here.  The
rules reproduce what bitsandbytes 0.50.2 does on the CPU (``quantize_4bit`` /
``dequantize_4bit`` / ``compress_statistics``), measured bit-for-bit against that release
(tests/test_bulk_bnb.py, tests/data/bnb_vectors.npz).  In short, for block size ``B``:

1. ``x`` is flattened in C order and converted to float32 (exact for float16/bfloat16);
   ``absmax[b] = max |x|`` over block ``b``; the last block may be partial.
2. ``s = max(absmax[b], float32(1e-38))``.  Full blocks: ``y = x * (1/s)`` (float32 reciprocal,
   then a float32 multiply); the partial last block: ``y = x / s`` (float32 division) — that is
   how bitsandbytes does it.  ``y`` is clamped to [-1, 1].  An all-zero block has ``y = 0`` (no
   NaN) and ``absmax = 0`` — except the partial last block, whose stored absmax is ``s`` (so
   ``float32(1e-38)`` when it is all zero), exactly as bitsandbytes stores it.
3. Code index: sort the code table stably by value (``order``), take float32 midpoints of
   neighbours ``bounds[k] = float32(float32(sorted[k] + sorted[k+1]) / 2)``, and
   ``index = order[#{k : bounds[k] < y}]`` — a value exactly on a midpoint goes to the LOWER
   value (torch.bucketize, right=False).  For a table with a repeated value (bitsandbytes FP4
   stores 0.0 at indices 0 and 8) the lower index takes ``y <= value`` and the higher index
   ``y > value``.
4. Packing: 1, 2, 4 bits -> 8/bits codes per byte, the first element in the most significant
   bits (4 bits: high nibble); the last byte is padded with the index of ``y = 0``.  3 and 5..8
   bits: one byte per code.
5. Dequantize: ``float32(code[index] * absmax[block])`` then cast (round to nearest even) to the
   output dtype.

Nested statistics (``quantize_absmax_nested``): ``offset`` = torch's float32 mean of ``absmax``
(emulated bit-for-bit by :func:`torch_mean_f32`), ``absmax - offset`` quantized in blocks of 256
with bitsandbytes' dynamic 8-bit map through its CPU library's 65536-bin lookup table.

Sources (facts, not code): bitsandbytes 0.50.2 ``bitsandbytes/backends/default/ops.py``
(``quantize_4bit``: reciprocal scaling, ``clamp(min=1e-38)``, ``torch.bucketize`` on float32
midpoints of the ``argsort``-ed table; ``_dequantize_4bit_compute``: float32 product, then
cast), ``bitsandbytes/functional.py`` (``get_4bit_type``, ``quantize_4bit`` with
``compress_statistics``: ``offset = absmax.mean()``, ``quantize_blockwise(absmax - offset,
blocksize=256)``), the C++ ``quantize_cpu`` of ``csrc/cpu_ops.cpp`` (the 65536-entry LUT), and
PyTorch's ``aten/src/ATen/native/cpu/SumKernel.cpp`` (cascade sum).  Every rule was confirmed
by running bitsandbytes 0.50.2 / torch 2.13.0+cpu (tests/data/make_bnb_vectors.py).

Caveat kept from bitsandbytes: for a block whose absmax is a float32 subnormal (< 1e-38) the
scaled values use ``s = 1e-38`` while dequantize multiplies by the stored absmax, so such
blocks do not round-trip to within the usual error bound.
"""

from __future__ import annotations

import numpy as np

from .dynamic_map import LUT_SIZE, dynamic_map, nested_lut

__all__ = [
    "TINY", "NESTED_BLOCKSIZE", "sorted_bounds", "encode", "zero_index", "scale_blocks",
    "pack_codes", "unpack_codes", "packed_length",
    "quantize_reference", "dequantize_reference",
    "torch_sum_f32", "torch_mean_f32", "quantize_absmax_nested", "dequantize_absmax_nested",
]

_F = np.float32
#: bitsandbytes divides by ``absmax.clamp(min=1e-38)``: 1e-38 rounded to float32 (a subnormal).
TINY = _F(1e-38)
NESTED_BLOCKSIZE = 256


# ----------------------------------------------------------------------------- encoding rule
def sorted_bounds(code_f32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(bounds, order)`` of a code table: float32 midpoints of the stably sorted values.

    ``order`` maps a rank (``#{bounds < y}``) back to a code index.
    """
    code = np.asarray(code_f32, dtype=_F).reshape(-1)
    order = np.argsort(code, kind="stable")
    s = code[order]
    bounds = ((s[:-1] + s[1:]) / _F(2)).astype(_F)
    return bounds, order.astype(np.uint8 if code.size <= 256 else np.int64)


def encode(y: np.ndarray, bounds: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Code indices of scaled float32 values ``y`` (rule 3 of the module docstring)."""
    return order[np.searchsorted(bounds, y, side="left")]


def zero_index(bounds: np.ndarray, order: np.ndarray) -> int:
    """The code index of ``y = 0.0`` — used to pad the last byte."""
    return int(encode(np.zeros(1, dtype=_F), bounds, order)[0])


def scale_blocks(xf: np.ndarray, blocksize: int) -> tuple[np.ndarray, np.ndarray]:
    """``(y, absmax)``: per-block absmax and the clamped scaled values (rules 1-2)."""
    n = xf.size
    full, rem = divmod(n, blocksize)
    nb = full + (1 if rem else 0)
    absmax = np.zeros(nb, dtype=_F)
    y = np.empty(n, dtype=_F)
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite input: caller reports it
        _scale_into(xf, blocksize, full, rem, absmax, y)
    np.clip(y, _F(-1), _F(1), out=y)
    return y, absmax


def _scale_into(xf, blocksize, full, rem, absmax, y):
    if full:
        blocks = xf[: full * blocksize].reshape(full, blocksize)
        absmax[:full] = np.abs(blocks).max(axis=1)
        inv = (_F(1) / np.maximum(absmax[:full], TINY)).astype(_F)
        y[: full * blocksize] = (blocks * inv[:, None]).reshape(-1)
    if rem:
        tail = xf[full * blocksize:]
        # bitsandbytes stores the CLAMPED value for the partial last block
        absmax[-1] = np.maximum(np.abs(tail).max(), TINY)
        y[full * blocksize:] = tail / absmax[-1]


# ----------------------------------------------------------------------------------- packing
def packed_length(n: int, bits: int) -> int:
    """Bytes used for ``n`` codes of ``bits`` bits."""
    if bits in (1, 2, 4):
        per = 8 // bits
        return -(-n // per)
    return n


def pack_codes(idx: np.ndarray, bits: int, pad: int) -> np.ndarray:
    """Pack code indices (first element in the most significant bits)."""
    idx = np.asarray(idx, dtype=np.uint8).reshape(-1)
    if bits not in (1, 2, 4):
        return idx.copy()
    per = 8 // bits
    m = packed_length(idx.size, bits) * per
    full = np.full(m, pad, dtype=np.uint8)
    full[: idx.size] = idx
    groups = full.reshape(-1, per)
    out = np.zeros(groups.shape[0], dtype=np.uint8)
    for k in range(per):
        out |= groups[:, k] << np.uint8(8 - bits * (k + 1))
    return out


def unpack_codes(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``n`` code indices (uint8)."""
    packed = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if bits not in (1, 2, 4):
        return packed[:n].copy()
    per = 8 // bits
    mask = np.uint8((1 << bits) - 1)
    out = np.empty((packed.size, per), dtype=np.uint8)
    for k in range(per):
        out[:, k] = (packed >> np.uint8(8 - bits * (k + 1))) & mask
    return out.reshape(-1)[:n]


# ------------------------------------------------------------------------- quantize/dequantize
def quantize_reference(x: np.ndarray, code_f32: np.ndarray, bits: int,
                       blocksize: int) -> tuple[np.ndarray, np.ndarray]:
    """``(packed uint8, absmax float32)`` of the finite float array ``x`` (any shape)."""
    xf = np.asarray(x).reshape(-1).astype(_F)
    bounds, order = sorted_bounds(code_f32)
    y, absmax = scale_blocks(xf, blocksize)
    idx = encode(y, bounds, order)
    return pack_codes(idx, bits, zero_index(bounds, order)), absmax


def dequantize_reference(packed: np.ndarray, absmax: np.ndarray, code_f32: np.ndarray,
                         bits: int, blocksize: int, n: int, out_dtype) -> np.ndarray:
    """Flat array of ``n`` values of ``out_dtype``: ``float32(code[idx] * absmax)`` then cast."""
    idx = unpack_codes(packed, bits, n)
    code = np.asarray(code_f32, dtype=_F)
    scale = np.repeat(np.asarray(absmax, dtype=_F), blocksize)[:n]
    return (code[idx] * scale).astype(out_dtype)


# ----------------------------------------------------------------- torch's float32 mean (CPU)
def _ceil_log2(x: int) -> int:
    return 0 if x <= 1 else int(x - 1).bit_length()


def _multi_row_sum(rows: np.ndarray) -> np.ndarray:
    """torch's ``multi_row_sum``: a 4-level cascade over ``rows`` (size, *lanes), float32."""
    size = rows.shape[0]
    levels = 4
    power = max(4, _ceil_log2(size) // levels)
    step = 1 << power
    mask = step - 1
    acc = np.zeros((levels,) + rows.shape[1:], dtype=_F)
    i = 0
    while i + step <= size:
        for _ in range(step):
            acc[0] += rows[i]
            i += 1
        for j in range(1, levels):
            acc[j] += acc[j - 1]
            acc[j - 1] = 0
            if i & (mask << (j * power)):
                break
    while i < size:
        acc[0] += rows[i]
        i += 1
    for j in range(1, levels):
        acc[0] += acc[j]
    return acc[0]


def _row_sum(vecs: np.ndarray) -> np.ndarray:
    """torch's ``row_sum`` with 4-way ILP over ``vecs`` (size, lanes)."""
    size = vecs.shape[0]
    ilp = 4
    size_ilp = size // ilp
    head = vecs[: size_ilp * ilp].reshape((size_ilp, ilp) + vecs.shape[1:])
    part = _multi_row_sum(head)
    for i in range(size_ilp * ilp, size):
        part[0] += vecs[i]
    for k in range(1, ilp):
        part[0] += part[k]
    return part[0]


def _inner_sum(x: np.ndarray, lanes: int) -> np.float32:
    n = x.size
    if n < lanes:  # scalar path
        return _F(_row_sum(x.reshape(n, 1))[0])
    nvec = n // lanes
    vacc = _row_sum(x[: nvec * lanes].reshape(nvec, lanes))
    total = _F(0)
    for k in range(nvec * lanes, n):
        total = _F(total + x[k])
    for k in range(lanes):
        total = _F(total + vacc[k])
    return total


def torch_sum_f32(values: np.ndarray, threads: int = 1, lanes: int = 8,
                  grain: int = 32768) -> np.float32:
    """``torch.sum`` of a contiguous 1-D float32 tensor on the CPU, bit for bit.

    Emulates ATen's ``cascade_sum`` (aten/src/ATen/native/cpu/SumKernel.cpp): 4-way ILP rows of
    ``lanes``-wide vectors summed in a 4-level cascade, then the scalar tail, then the lanes.
    For ``size >= grain`` torch splits the range over ``threads`` equal chunks and adds the
    per-thread sums.  Checked against torch 2.13.0+cpu (x86-64, 8 float lanes measured) for
    1..10^6 elements and 1..4 threads.
    """
    x = np.ascontiguousarray(values, dtype=_F).reshape(-1)
    n = x.size
    threads = max(1, int(threads))
    if n < grain or threads == 1:
        return _F(_F(0) + _inner_sum(x, lanes))
    tasks = min(threads, -(-n // grain))
    chunk = -(-n // tasks)
    parts = np.zeros(threads, dtype=_F)
    for t in range(tasks):
        parts[t] = _F(0) + _inner_sum(x[t * chunk:(t + 1) * chunk], lanes)
    return _F(_F(0) + _inner_sum(parts, lanes))


def torch_mean_f32(values: np.ndarray, threads: int = 1) -> np.float32:
    """``torch.mean`` of a 1-D float32 tensor on the CPU: ``float32(sum / n)``."""
    x = np.asarray(values, dtype=_F).reshape(-1)
    return _F(torch_sum_f32(x, threads) / _F(x.size))


# ------------------------------------------------------------------------ nested statistics
def quantize_absmax_nested(absmax: np.ndarray, threads: int = 1,
                           ) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """``(qabsmax uint8, nested_absmax float32, offset)`` as bitsandbytes' compress_statistics.

    ``offset = torch_mean_f32(absmax)``; ``d = absmax - offset`` in blocks of 256:
    ``a = max |d|``; ``a == 0`` -> codes 0; else ``v = clamp(d * (1/a), -1, 1)``, bin
    ``trunc(((v + 1) * 0.5) * 65535 + 0.5)`` (each step rounded to float32), code =
    ``nested_lut()[bin]``.  ``threads`` is torch's thread count (matters for >= 32768 blocks).
    """
    a = np.asarray(absmax, dtype=_F).reshape(-1)
    offset = torch_mean_f32(a, threads)
    d = (a - offset).astype(_F)
    n = d.size
    B = NESTED_BLOCKSIZE
    nb = -(-n // B)
    lut = nested_lut()
    q = np.empty(n, dtype=np.uint8)
    nabs = np.empty(nb, dtype=_F)
    for b in range(nb):
        blk = d[b * B:(b + 1) * B]
        m = _F(np.abs(blk).max())
        nabs[b] = m
        if m == 0:
            q[b * B:(b + 1) * B] = 0
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            v = blk * (_F(1) / m)  # 1/m overflows to inf only for subnormal m
        # bitsandbytes clamps with max(v, -1) then min(., 1) (x86 maxps: NaN -> -1)
        v = np.clip(np.where(np.isnan(v), _F(-1), v), _F(-1), _F(1)).astype(_F)
        t = ((((v + _F(1)) * _F(0.5)) * _F(LUT_SIZE - 1)) + _F(0.5)).astype(_F)
        q[b * B:(b + 1) * B] = lut[t.astype(np.int64)]
    return q, nabs, offset


def dequantize_absmax_nested(qabsmax: np.ndarray, nested_absmax: np.ndarray, offset,
                             nested_code: np.ndarray | None = None,
                             nested_blocksize: int = NESTED_BLOCKSIZE) -> np.ndarray:
    """``float32(float32(code[q] * nested_absmax[i // 256]) + offset)`` (float32 array)."""
    code = dynamic_map() if nested_code is None else np.asarray(nested_code, dtype=_F)
    q = np.asarray(qabsmax, dtype=np.uint8).reshape(-1)
    scale = np.repeat(np.asarray(nested_absmax, dtype=_F), nested_blocksize)[: q.size]
    return ((code[q] * scale).astype(_F) + _F(offset)).astype(_F)
