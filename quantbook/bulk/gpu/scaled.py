"""Host launchers of the scaled-layout kernels (:mod:`.scaled_kernels`): the ``scaled_*``
hooks of :class:`quantbook.bulk.backend.Backend` on device arrays, byte-identical to the
numpy reference.  Block maxima stay on the device: a deterministic rule is looked up in its
step table (:mod:`quantbook.scales.steps`) by a kernel, and a search's errors stay there for
its pick, so only the stored scales cross to the host.

The host side prepares what the kernels take, in numpy (no GPU needed, so the tests check
it directly): the encoder as 16 thresholds and nibble tables (:func:`encoder_args`, checked
against the layout's encoder on every critical value), an exact multiplier in place of a
division by a power of two (:func:`exact_multiplier`, also applied to a step table's
divisors by :func:`step_args`), and the launch shape (:func:`launch_shape`).  CuPy is
imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from functools import lru_cache

import numpy as np
from numpy.typing import DTypeLike

from ...numerics.losses import check_loss
from ...scales.rule import ScaleRule
from ...scales.steps import BUCKET_SHIFT, StepTable, step_table
from .. import format as F
from .. import layouts as L
from . import backend as G
from . import scaled_kernels as SK

__all__ = ["EncoderArgs", "encoder_args", "encode_with_args", "exact_multiplier", "step_args",
           "launch_shape", "amax_from_bits", "ggml_args", "scaled_amax_gpu", "scaled_scales_gpu",
           "scaled_encode_gpu", "scaled_decode_gpu", "scaled_errors_gpu", "scaled_ggml_gpu"]

_F = np.float32
#: alignment of the packed bytes for the decode kernel's vector path (half a 16-byte store)
_DECODE_ALIGN = {"f32": 2, "f16": 4, "bf16": 4}


# ---- host-side preparation (numpy only) -----------------------------------------------------

@dataclass(frozen=True)
class EncoderArgs:
    """The encoder as the kernel takes it.  General (``sym`` False): ``rank = #{k : t[k] <
    y}`` (NaN: ``rnan``), the code of a rank the nibble ``rank & 7`` of ``lo`` (rank < 8) or
    ``hi``, except ``neg0`` for rank ``j0`` when ``y`` has the sign bit.  Symmetric in
    E2M1's code layout: ``rank = #{k < 8 : t[k] < |y|}``, the code ``rank | sign << 3``
    (``lo``/``hi`` hold that layout), ``neg0`` for NaN.  ``pad`` is the code of +0."""

    t: np.ndarray
    lo: int
    hi: int
    j0: int
    neg0: int
    rnan: int
    pad: int
    sym: bool = False

    def scalars(self) -> tuple:
        """The encode kernel's arguments after ``pad`` (the errors kernel's after ``sym``): 16
        float32 thresholds, lo, hi, j0, neg0, rnan."""
        return (*(_F(v) for v in self.t), np.uint32(self.lo), np.uint32(self.hi), np.int32(self.j0),
                np.uint32(self.neg0), np.int32(self.rnan))


def _nibbles(codes) -> int:
    return int(sum(int(c) << (4 * r) for r, c in enumerate(codes)))


def encode_with_args(y: np.ndarray, a: EncoderArgs) -> np.ndarray:
    """numpy emulation of the kernel's encoder (``qbs_code`` / ``qbs_code_sym``) on float32 ``y``."""
    y = np.asarray(y, dtype=_F).reshape(-1)
    neg = np.signbit(y)
    with np.errstate(invalid="ignore"):
        if a.sym:
            r = np.sum(a.t[None, :8] < np.abs(y)[:, None], axis=1)
            return np.where(np.isnan(y), a.neg0, r | (neg << 3)).astype(np.uint8)
        r = np.sum(a.t[None, :] < y[:, None], axis=1)
    r = np.where(np.isnan(y), a.rnan, r)
    code = (np.where(r < 8, a.lo, a.hi) >> ((r & 7) * 4)) & 15
    return np.where((r == a.j0) & neg, a.neg0, code).astype(np.uint8)


def _critical_values(enc: L.ScaledEncoder, t: np.ndarray) -> np.ndarray:
    """Every float32 where either encoder can change its answer (both signs), their
    neighbours, and the ends: equal there, the two encoders are equal everywhere."""
    m = np.concatenate([enc.mids, t])
    m = np.abs(m[np.isfinite(m)])
    big = np.finfo(_F).max
    tiny = np.float32(1.4e-45)
    pts = np.concatenate([m, np.nextafter(m, _F(-np.inf)), np.nextafter(m, _F(np.inf)),
                          np.abs(enc.values), [0.0, tiny, big, np.inf]]).astype(_F)
    return np.concatenate([pts, -pts, np.array([np.nan, -np.nan], _F)])


def _symmetric_args(enc: L.ScaledEncoder, t: np.ndarray, pad: int) -> EncoderArgs | None:
    """The symmetric form when the encoder depends on ``|y|`` and the sign alone, with the
    codes ``rank | sign << 3`` (E2M1's layout): magnitude thresholds are the general ones
    above 0; a rank's codes are those of its smallest member."""
    tm = t[np.isfinite(t) & (t >= 0)]
    if tm.size > 7:
        return None
    t8 = np.full(16, np.inf, _F)
    t8[: tm.size] = tm
    rep = np.concatenate([[_F(0)], np.nextafter(tm, _F(np.inf))]).astype(_F)   # rank r's smallest |y|
    ranks = np.arange(rep.size)
    if not (np.array_equal(enc(rep), ranks) and np.array_equal(enc(-rep), ranks | 8)):
        return None
    with np.errstate(invalid="ignore"):
        nan = enc(np.array([np.nan], _F))[0]
    return EncoderArgs(t8, 0x76543210, 0xFEDCBA98, -1, int(nan), 0, pad, True)


@lru_cache(maxsize=64)
def _encoder_args(table_bytes: bytes, allow_symmetric: bool) -> EncoderArgs:
    enc = L.scaled_encoder(np.frombuffer(table_bytes, dtype=_F))
    mids, up, pos, neg = enc.mids, enc.up, enc.pos, enc.neg
    nm = mids.size
    t = np.full(16, np.inf, _F)
    with np.errstate(invalid="ignore"):
        # a tie goes up: y >= m is y > pred(m); only the first of equal midpoints is a tie
        # (numpy's searchsorted stops there)
        first = np.ones(nm, bool)
        first[1:] = mids[1:] != mids[:-1]
        t[:nm] = np.where(up & first, np.nextafter(mids, _F(-np.inf)), mids)
    differ = np.flatnonzero(pos != neg)
    j0 = int(differ[0]) if differ.size else -1
    neg0 = int(neg[j0]) if differ.size else 0
    general = EncoderArgs(t, _nibbles(pos[:8]), _nibbles(pos[8:16]), j0, neg0, nm, enc.zero_index)
    y = _critical_values(enc, t)
    ref = enc(y)
    if allow_symmetric:
        sym = _symmetric_args(enc, t, enc.zero_index)
        if sym is not None and np.array_equal(encode_with_args(y, sym), ref):
            return sym
    with np.errstate(invalid="ignore"):
        sorted_t = bool(np.all(t[1:] >= t[:-1]))
    if differ.size > 1 or not sorted_t or not np.array_equal(encode_with_args(y, general), ref):
        raise ValueError("this code table is too extreme for the gpu encoder (its thresholds do not "
                         "reproduce the encoder's); use backend='numpy' or 'cpu'")
    return general


def encoder_args(table: np.ndarray, allow_symmetric: bool = True) -> EncoderArgs:
    """The kernel's encoder of a scaled-layout table (at most 16 finite float32 entries):
    the symmetric form when it gives the same codes (checked on every critical value),
    else the general one."""
    return _encoder_args(F.check_code_table(table, L.SCALED_BITS).tobytes(), bool(allow_symmetric))


def exact_multiplier(factor: np.ndarray, divide: bool) -> tuple[np.ndarray, bool]:
    """``(f, divide)`` for the kernel: a division by powers of two (the e8m0 rules) becomes a
    multiplication by their reciprocals, which rounds the same (both are the exact quotient
    rounded once) as long as every reciprocal is a float32; otherwise the division stays."""
    f = np.ascontiguousarray(factor, dtype=_F).reshape(-1)
    if not divide or not f.size:
        return f, bool(divide)
    u = f.view(np.uint32)
    # positive normal powers of two (1/f is 2^-126..2^126, or 2^-127 for f = 2^127: exact),
    # or 2^-127 (0x00400000), whose reciprocal 2^127 is the only one of a subnormal in range
    pow2 = ((u & np.uint32(0x807FFFFF)) == 0) & (u != 0) & (u < np.uint32(0x7F800000))
    if not bool(np.all(pow2 | (u == np.uint32(0x00400000)))):
        return f, True
    return (_F(1) / f).astype(_F), False


@lru_cache(maxsize=64)
def step_args(table: StepTable) -> tuple[np.ndarray, bool]:
    """``(factor, divide)`` of a step table for the device: the divisors of its valid
    steps through :func:`exact_multiplier` (one decision for the whole table), NaN elsewhere.
    Cached per table (the tables are cached too); the factors are read-only, so the device
    copy is found by identity."""
    f = np.full(table.factor.size, np.nan, _F)
    div = table.divide
    if table.valid.any():
        fv, div = exact_multiplier(table.factor[table.valid], table.divide)
        f[table.valid] = fv
    f.setflags(write=False)
    return f, bool(div)


def _log2_or_neg(block_size: int) -> int:
    b = int(block_size)
    return b.bit_length() - 1 if b > 0 and b & (b - 1) == 0 else -1


def launch_shape(kind: str, n: int, block_size: int, aligned: bool,
                 dtype: str = "f32", sym: bool = False) -> tuple[int, int, int, int]:
    """``(grid, cta, vec, log2B)`` of a launch (``kind``: amax, encode, decode; ``dtype`` the
    kernel's f32/f16/bf16; ``sym``: the symmetric encoder's).  The vector path needs a
    power-of-two block size of at least one chunk and aligned pointers (and, for encode, a
    multiplication: pass ``aligned`` False for a division); the scalar path takes a block
    (amax) or a byte (encode, decode) a thread."""
    log2b = _log2_or_neg(block_size)
    vec = int(bool(aligned) and log2b >= 3)
    if vec:
        per = SK.elements_per_thread(kind, dtype, sym) * SK.CTA
        return max(1, -(-n // per)), SK.CTA, 1, log2b
    units = F.n_blocks(n, block_size) if kind == "amax" else L.packed_length(n)
    return max(1, -(-units // SK.CTA)), SK.CTA, 0, log2b


def errors_vec(block_size: int, aligned: bool) -> bool:
    """Whether the errors kernel reads a block in 16-byte chunks: whole chunks of 8 values
    (a block size that is a multiple of 8) from a 16-byte aligned array."""
    return bool(aligned) and block_size % SK.CHUNK == 0


def amax_from_bits(bits: np.ndarray) -> np.ndarray:
    """The amax kernel's output (uint32: float32 bits, NaN already for a block with NaN/Inf)
    as float32."""
    return np.asarray(bits, dtype=np.uint32).view(_F)


def ggml_args(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, np.float32, int]:
    """``(v, order, nv, delta, pad)`` of the ggml search kernel: the ascending table, the stored
    index of each entry, their count, the trial step (:func:`quantbook.scales.ggml.ggml_table`)
    and the code of +0 that pads an odd count."""
    from ...scales.ggml import ggml_table

    v, order, delta = ggml_table(table)
    return v, order, int(v.size), _F(delta), int(L.scaled_encoder(table).zero_index)


def _check_block_size(block_size: int) -> int:
    b = int(block_size)
    if b < 2 or b % 2:
        raise ValueError(f"the scaled layouts need an even block size >= 2, got {block_size!r}")
    if b > _MAX_BLOCK:   # the kernels take it as an int: refused, never cut to 32 bits
        raise ValueError(f"the gpu's scaled-layout kernels take block sizes up to {_MAX_BLOCK}, got {b}")
    return b


#: the largest even block size an ``int B`` kernel argument holds
_MAX_BLOCK = 2**31 - 2


# ---- device launches -------------------------------------------------------------------------

_MODULES: dict[int, tuple] = {}


def _kernel(name: str):
    """The compiled kernel ``name`` of :mod:`.scaled_kernels` for the current device (one
    compile serves the hooks and every dtype)."""
    return G.module_kernel(_MODULES, SK.source, "qbs_scaled.cu", name)


def scaled_amax_gpu(x: Any, block_size: int) -> Any:
    """Per-block ``max |x|`` of a device array (CuPy float32); NaN for a block holding
    NaN/Inf."""
    b = _check_block_size(block_size)
    xd, key, keep = G._as_device(x)
    cp = G._cupy()
    n = int(xd.size)
    nb = F.n_blocks(n, b)
    bits = cp.zeros(nb, dtype=cp.uint32)          # zero: the atomicMax path of big blocks
    if n:
        grid, cta, vec, log2b = launch_shape("amax", n, b, xd.data.ptr % 16 == 0, key)
        _kernel(SK.amax_name(key))((grid,), (cta,),
                                   (xd, bits, np.int64(n), np.int32(b), np.int32(log2b), np.int32(vec)))
    del keep
    return bits.view(cp.float32)


def scaled_scales_gpu(amax: Any, rule: ScaleRule | str, qmax: float, tensor_scale: Any = None,
                      need_scale: bool = False) -> tuple[Any, Any, bool, Any] | None:
    """``(stored, factor, divide, scale)`` of a deterministic rule for device block maxima, as
    :meth:`quantbook.bulk.backend.Backend.scaled_scales` (CuPy arrays), or None when a block
    lands on a step the rule refuses: one kernel looks every block up in the rule's step
    table, and one flag comes back."""
    table = step_table(rule, qmax, tensor_scale)
    f, div = step_args(table)
    cp = G._cupy()
    a = cp.ascontiguousarray(cp.asarray(amax, dtype=cp.float32)).reshape(-1)
    nb = int(a.size)
    stored = cp.empty(nb, dtype=table.stored.dtype)
    factor = cp.empty(nb, dtype=cp.float32)
    scale = cp.empty(nb if need_scale else 1, dtype=cp.float32)
    bad = cp.zeros(1, dtype=cp.int32)
    if nb:
        _kernel(SK.STEPS_NAME)(
            (-(-nb // SK.CTA),), (SK.CTA,),
            (a.view(cp.uint32), np.int64(nb), G._device_const(table.starts), G._device_const(table.buckets),
             np.int32(table.buckets.size - 2), np.int32(BUCKET_SHIFT), G._device_const(table.stored),
             np.int32(table.stored.itemsize), G._device_const(f), G._device_const(table.scale),
             G._device_const(table.valid), stored, factor, scale, np.int32(need_scale), bad))
        if int(cp.asnumpy(bad)[0]):
            return None
    return stored, factor, div, scale if need_scale else None


def _device_factor(factor, divide: bool):
    """``(f, divide)`` on the device: a device ``factor`` as given (a division stays one), a
    host one through :func:`exact_multiplier`."""
    cp = G._cupy()
    if hasattr(factor, "__cuda_array_interface__"):
        return cp.ascontiguousarray(cp.asarray(factor, dtype=cp.float32)).reshape(-1), bool(divide)
    f, div = exact_multiplier(factor, divide)
    return cp.asarray(f), div


def scaled_encode_gpu(x: Any, factor: Any, divide: bool, table: np.ndarray, block_size: int) -> Any:
    """Packed 4-bit codes (CuPy uint8, ``ceil(n / 2)`` bytes, the first code in the low
    nibble) of ``y = x / factor[block]`` (``divide``) or ``x * factor[block]``.  A host
    ``factor`` is prepared by :func:`exact_multiplier` and copied to the device; a device one
    is used as given (a division stays a division)."""
    b = _check_block_size(block_size)
    args = encoder_args(table)
    xd, key, keep = G._as_device(x)
    cp = G._cupy()
    n = int(xd.size)
    f, div = _device_factor(factor, divide)
    if f.size < F.n_blocks(n, b):
        raise ValueError(f"factor holds {f.size} values, {F.n_blocks(n, b)} needed")
    packed = cp.empty(L.packed_length(n), dtype=cp.uint8)
    if n:
        # the vector path multiplies; a division that stays one takes the scalar path
        grid, cta, vec, log2b = launch_shape("encode", n, b, xd.data.ptr % 16 == 0 and not div, key, args.sym)
        _kernel(SK.encode_name(key, args.sym))(
            (grid,), (cta,),
            (xd, f, packed, np.int64(n), np.int32(b), np.int32(log2b), np.int32(div),
             np.int32(vec), np.uint32(args.pad), *args.scalars()))
    del keep
    return packed


def scaled_decode_gpu(packed: Any, scale: Any, table: np.ndarray, block_size: int, n: int, out_dtype: DTypeLike,
                      lut: np.ndarray | None = None) -> Any:
    """``out_dtype(float32(table[code] * scale[block]))`` for ``n`` values (a flat CuPy array;
    bfloat16 as in :func:`quantbook.bulk.gpu.backend.dequantize_gpu`); ``scale`` on the host
    or the device.  With ``lut`` (a host float32 decode table of 256 or 65536 entries,
    :meth:`quantbook.bulk.state.QuantState.scale_lookup`), ``scale`` holds the stored
    values' bits (uint8 or uint16) and block ``b``'s scale is ``lut[scale[b]]``, looked up
    by the kernel."""
    b = _check_block_size(block_size)
    dec = F.decode_table(table, L.SCALED_BITS)
    key = G._dtype_key(out_dtype)
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cp = G._cupy()
    pk = cp.ascontiguousarray(cp.asarray(packed)).reshape(-1).view(cp.uint8)
    if lut is None:   # a float32 scale a block, from the host or on the device
        s = cp.ascontiguousarray(cp.asarray(scale, dtype=cp.float32)).reshape(-1)
        lut_d, sbytes = s, 4   # the kernel reads s itself; lut_d only needs to be a valid pointer
    else:
        lut = np.asarray(lut)
        sdt = np.dtype(scale.dtype)
        if lut.dtype != _F or lut.ndim != 1 or sdt.kind != "u" or sdt.itemsize > 2 \
                or lut.size != 1 << (8 * sdt.itemsize):
            raise ValueError(f"a scale lookup takes uint8 or uint16 stored bits and a float32 table of "
                             f"2**bits entries, got {sdt} bits and a {lut.dtype} table of {lut.size}")
        s = cp.ascontiguousarray(cp.asarray(scale)).reshape(-1)
        lut_d, sbytes = G._device_const(lut), sdt.itemsize
    if pk.size < L.packed_length(n):
        raise ValueError(f"packed holds {pk.size} bytes, {L.packed_length(n)} needed for n={n}")
    if s.size < F.n_blocks(n, b):
        raise ValueError(f"scale holds {s.size} values, {F.n_blocks(n, b)} needed")
    out, view = G._empty_out(n, key)
    if n:
        aligned = pk.data.ptr % _DECODE_ALIGN[key] == 0 and out.data.ptr % 16 == 0
        grid, cta, vec, log2b = launch_shape("decode", n, b, aligned, key)
        _kernel(SK.decode_name(key))(
            (grid,), (cta,),
            (pk, s, lut_d, np.int32(sbytes), G._device_const(dec), out, np.int64(n), np.int32(b),
             np.int32(log2b), np.int32(vec)))
    return out if view is None else view


def scaled_ggml_gpu(x: Any, table: np.ndarray, block_size: int, ntry: int) -> tuple[np.ndarray, Any]:
    """``(d, packed)`` of ggml's search on a device array: the float32 scale of each block (host)
    and the packed codes (CuPy uint8), as :meth:`quantbook.bulk.backend.Backend.scaled_ggml`."""
    b = _check_block_size(block_size)
    v, order, nv, delta, pad = ggml_args(table)
    xd, key, keep = G._as_device(x)
    cp = G._cupy()
    n = int(xd.size)
    nb = F.n_blocks(n, b)
    d = cp.zeros(nb, dtype=cp.float32)
    packed = cp.empty(L.packed_length(n), dtype=cp.uint8)
    if n:
        grid = -(-nb // SK.GGML_CTA)
        _kernel(SK.ggml_name(key))(
            (grid,), (SK.GGML_CTA,),
            (xd, d, packed, np.int64(n), np.int32(b), cp.asarray(v), cp.asarray(order), np.int32(nv),
             delta, np.int32(ntry), np.uint32(pad)))
    del keep
    return cp.asnumpy(d), packed


def scaled_errors_gpu(x: Any, factor: Any, divide: bool, scale: Any, table: np.ndarray, block_size: int,
                      loss: str) -> Any:
    """Per-block errors (CuPy float64) of one search candidate on a device array, as
    :meth:`quantbook.bulk.backend.Backend.scaled_errors`; ``factor`` and ``scale`` on the host
    or the device."""
    b = _check_block_size(block_size)
    check_loss(loss)
    args = encoder_args(table)
    xd, key, keep = G._as_device(x)
    cp = G._cupy()
    n = int(xd.size)
    nb = F.n_blocks(n, b)
    f, div = _device_factor(factor, divide)
    s = cp.ascontiguousarray(cp.asarray(scale, dtype=cp.float32)).reshape(-1)
    if f.size < nb or s.size < nb:
        raise ValueError(f"factor and scale need {nb} values, got {f.size} and {s.size}")
    err = cp.zeros(nb, dtype=cp.float64)
    if n:
        _kernel(SK.errors_name(key))(
            (-(-nb // SK.GGML_CTA),), (SK.GGML_CTA,),
            (xd, f, s, G._device_const(F.decode_table(table, L.SCALED_BITS)), err,
             np.int64(n), np.int32(b), np.int32(div), np.int32(loss == "l1"), np.int32(args.sym),
             np.int32(errors_vec(b, xd.data.ptr % 16 == 0)), *args.scalars()))
    del keep
    return err
