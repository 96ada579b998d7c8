"""Test infrastructure: the global-memory requests of an emulated kernel, as a GPU forms them.

A measuring build of the emulator (:func:`gpu_emulator.recording`) notes every load and store
that falls in a launch's arrays — the calls ``-fsanitize=kernel-address`` already makes
(:mod:`gpu_bounds`) — with the emulated thread and the static site that made it (the hook's
return address).  From those, per warp (32 consecutive ``threadIdx.x``) and per (site, k-th
execution of that site by the lane), a *request*: what a warp-wide load or store instruction
asks of memory.  Its cost is the 32-byte sectors it touches; its use, the distinct bytes it
moves.  Each array is placed as a device allocation is, its first byte on a 256-byte
boundary (keeping the host array's offset modulo 16, which the launchers test), so sectors
are counted from the array's start.

Per array and direction (:func:`summary`):

* ``efficiency`` = bytes / (32 · sectors), 1.0 when every byte of every sector a request
  touches is used (Nsight Compute reports the sectors per request: ``sectors_per_request``);
* ``coalescing`` = the fewest sectors the request's bytes could lie in / the sectors touched:
  1.0 for a request whose bytes are one aligned run, even a one-word broadcast, whose
  efficiency is 4/32;
* ``footprint`` = the bytes a warp moves over the whole launch / (32 · the distinct sectors it
  touches): whether the sectors a warp's requests fetch are used in the end, by later
  requests of the same warp (when the cache keeps them).

This models the access pattern only: what the host compiler emits (g++ at -O1), one access a
load or store of the source, vectors as their declared width.  Not speed, not caching, not the
order in which warps run.
"""

from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass

import numpy as np

#: sector size, bytes (every NVIDIA GPU since Maxwell)
SECTOR = 32
WARP = 32

#: a measuring build's extra compiler flags: a vector (uint4, float4, uint2) loaded or stored
#: whole, one access of its width as on a GPU, not split into its fields
FLAGS = ["-fno-tree-sra"]

#: first in a measuring build's source: what the hooks call (gpu_bounds' QB_TRACE)
HEAD = r"""
static void qb_trace(const void* p, unsigned long long n, int write, void* site);
#define QB_TRACE(p, n, write) qb_trace((p), (n), (write), __builtin_return_address(0))
"""

#: last in a measuring build's source: the record of each access to the launch's arrays
TAIL = r"""
struct QbTraceSpan { unsigned long long lo, hi; int owner; };
static const int QB_TRACE_SPANS = 256;
static QbTraceSpan qb_tspan[QB_TRACE_SPANS];
static int qb_ntspan = 0;
static unsigned long long qb_tlo = ~0ull, qb_thi = 0;
struct QbTraceRec { unsigned long long at, site; unsigned thread, block; int owner; unsigned size_write; };
static QbTraceRec* qb_trec = nullptr;
static unsigned long long qb_ntrec = 0, qb_caprec = 0;
static const unsigned long long QB_TRACE_MAX = 1ull << 24;   /* records: 512 MiB */
extern "C" { int qb_trace_full = 0; }

/* only while a grid runs (qb_armed): the accesses of the kernels' threads, none of the host's */
static QB_UNCHECKED void qb_trace(const void* p, unsigned long long n, int write, void* site) {
    const unsigned long long a = (unsigned long long)p;
    if (!qb_armed || !n || a >= qb_thi || a + n <= qb_tlo) return;
    for (int i = 0; i < qb_ntspan; ++i) {
        const QbTraceSpan& s = qb_tspan[i];
        if (a >= s.hi || a + n <= s.lo) continue;
        if (qb_ntrec == qb_caprec) {
            const unsigned long long cap = qb_caprec ? 2 * qb_caprec : (1ull << 16);
            void* m = cap <= QB_TRACE_MAX ? std::realloc(qb_trec, cap * sizeof(QbTraceRec)) : nullptr;
            if (!m) { qb_trace_full = 1; return; }
            qb_trec = static_cast<QbTraceRec*>(m);
            qb_caprec = cap;
        }
        qb_trec[qb_ntrec++] = QbTraceRec{a, (unsigned long long)site, threadIdx.x, blockIdx.x, s.owner,
                                         (unsigned)(n << 1) | (unsigned)(write != 0)};
        return;
    }
}

/* the next launch's arrays, rows of (lo, hi, owner); the records start over */
extern "C" QB_UNCHECKED void qb_trace_spans(int k, const unsigned long long* rows) {
    qb_ntspan = k < QB_TRACE_SPANS ? k : QB_TRACE_SPANS;
    qb_trace_full = k > QB_TRACE_SPANS;
    qb_tlo = ~0ull;
    qb_thi = 0;
    for (int i = 0; i < qb_ntspan; ++i) {
        qb_tspan[i] = QbTraceSpan{rows[3 * i], rows[3 * i + 1], (int)rows[3 * i + 2]};
        qb_tlo = rows[3 * i] < qb_tlo ? rows[3 * i] : qb_tlo;
        qb_thi = rows[3 * i + 1] > qb_thi ? rows[3 * i + 1] : qb_thi;
    }
    qb_ntrec = 0;
}
extern "C" QB_UNCHECKED unsigned long long qb_trace_count() { return qb_ntrec; }
extern "C" QB_UNCHECKED const void* qb_trace_records() { return qb_trec; }
"""

_REC = np.dtype([("at", "<u8"), ("site", "<u8"), ("thread", "<u4"), ("block", "<u4"), ("owner", "<i4"),
                 ("size_write", "<u4")])


def kernel_params(source: str, name: str) -> list[str]:
    """The parameter names of kernel ``name`` in ``source``, in order (what a launch passes)."""
    m = re.search(rf"\b{re.escape(name)}\(([^)]*)\)\s*\{{", source)
    if m is None:
        raise ValueError(f"kernel {name!r} not found in its source")
    return [re.findall(r"\w+", part)[-1] for part in m[1].split(",")]


@dataclass
class Launch:
    """The accesses of one launch to its arrays: ``arrays[i]`` names the array (the kernel's
    parameters that share it), ``owner`` indexes it; ``off`` is the byte offset from the
    device allocation's start."""

    name: str
    grid: int
    block: int
    arrays: dict[int, str]
    site: np.ndarray
    thread: np.ndarray
    cta: np.ndarray
    owner: np.ndarray
    off: np.ndarray
    size: np.ndarray
    write: np.ndarray


class Recorder:
    """What :func:`gpu_bounds.call_guarded` tells (``trace``): each launch's arrays, then its
    accesses; ``launches`` in order.  ``params(name)``: a kernel's parameter names."""

    def __init__(self, params):
        self.params = params
        self.launches: list[Launch] = []
        self._spans = []

    def begin(self, lib, spans) -> None:
        self._spans = spans
        rows = np.array([(lo, lo + n, idx[0]) for lo, n, idx in spans], np.uint64).reshape(-1)
        lib.qb_trace_spans.argtypes = [ctypes.c_int, ctypes.c_void_p]
        lib.qb_trace_spans(len(spans), rows.ctypes.data)

    def end(self, lib, name: str, grid: int, block: int) -> None:
        if ctypes.c_int.in_dll(lib, "qb_trace_full").value:
            raise RuntimeError(f"{name}: too many accesses or arrays to record")
        lib.qb_trace_count.restype = ctypes.c_ulonglong
        lib.qb_trace_records.restype = ctypes.c_void_p
        count = int(lib.qb_trace_count())
        recs = np.zeros(0, _REC)
        if count:
            buf = (ctypes.c_char * (count * _REC.itemsize)).from_address(lib.qb_trace_records())
            recs = np.frombuffer(buf, _REC).copy()
        lib.qb_trace_spans(0, None)   # nothing noted until the next launch's arrays are set
        names = self.params(name)
        base = np.zeros(max((idx[0] for _, _, idx in self._spans), default=0) + 1, np.uint64)
        arrays = {}
        for lo, _, idx in self._spans:
            base[idx[0]] = lo - lo % 16   # the array's offset modulo 16 kept, 256-byte aligned otherwise
            arrays[idx[0]] = "|".join(names[i] for i in idx)
        owner = recs["owner"].astype(np.int64)
        self.launches.append(Launch(name, grid, block, arrays, recs["site"], recs["thread"].astype(np.int64),
                                    recs["block"].astype(np.int64), owner,
                                    (recs["at"] - base[owner]).astype(np.int64),
                                    (recs["size_write"] >> 1).astype(np.int64), (recs["size_write"] & 1) == 1))


@dataclass
class Traffic:
    """The requests of one array and direction in a launch (module docstring)."""

    requests: int
    bytes: int
    sectors: int
    ideal: int
    warp_bytes: int
    warp_sectors: int

    @property
    def efficiency(self) -> float:
        return self.bytes / (SECTOR * self.sectors)

    @property
    def coalescing(self) -> float:
        return self.ideal / self.sectors

    @property
    def footprint(self) -> float:
        return self.warp_bytes / (SECTOR * self.warp_sectors)

    @property
    def sectors_per_request(self) -> float:
        return self.sectors / self.requests


def _groups(*cols) -> np.ndarray:
    """The id of each row's distinct tuple of ``cols`` (0, 1, … in sorted order)."""
    order = np.lexsort(cols[::-1])
    new = np.zeros(order.size, bool)
    if order.size:
        new[0] = True
        for c in cols:
            new[1:] |= c[order][1:] != c[order][:-1]
    ids = np.empty(order.size, np.int64)
    ids[order] = np.cumsum(new) - 1
    return ids


def _unique(a: np.ndarray) -> np.ndarray:
    """The sorted distinct values of ``a`` (numpy's unique may hash, much slower here)."""
    a = np.sort(a)
    return a[np.concatenate([[True], a[1:] != a[:-1]])] if a.size else a


def _distinct(group: np.ndarray, off: np.ndarray, size: np.ndarray, ngroups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group, its distinct bytes and its distinct sectors (of the accesses ``off``, ``size``):
    each access cut at sector boundaries, a 32-bit mask of the bytes it covers in each sector,
    the masks of one (group, sector) or-ed together."""
    first, last = off // SECTOR, (off + size - 1) // SECTOR
    cnt = last - first + 1
    rep = np.repeat(np.arange(off.size), cnt)
    sec = first[rep] + (np.arange(rep.size) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    lo = np.maximum(off[rep] - sec * SECTOR, 0).astype(np.uint64)
    hi = np.minimum(off[rep] + size[rep] - sec * SECTOR, SECTOR).astype(np.uint64)
    one = np.uint64(1)
    mask = ((one << hi) - one) ^ ((one << lo) - one)
    key = group[rep] << 40 | sec
    order = np.argsort(key, kind="stable")
    key, mask = key[order], mask[order]
    start = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]])) if key.size else np.zeros(0, np.int64)
    used = np.bitwise_or.reduceat(mask, start) if key.size else mask
    ones = np.unpackbits(used.astype("<u4").view(np.uint8).reshape(-1, 4), axis=1).sum(axis=1)
    g = key[start] >> 40
    return (np.bincount(g, weights=ones, minlength=ngroups).astype(np.int64),
            np.bincount(g, minlength=ngroups))


def summary(launch: Launch) -> dict[tuple[str, str], Traffic]:
    """``(array, "load" | "store")`` -> its :class:`Traffic` in ``launch``."""
    n = launch.site.size
    if not n:
        return {}
    # k: how many times the lane ran the site before (a lane's accesses are in program order)
    lane_site = _groups(launch.cta, launch.thread, launch.site)
    counts = np.bincount(lane_site)
    k = np.empty(n, np.int64)
    order = np.lexsort((np.arange(n), lane_site))
    k[order] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    warp = launch.thread // WARP
    req = _groups(launch.cta, warp, launch.site, launch.owner, launch.write.astype(np.int64), k)
    nreq = int(req.max()) + 1
    rbytes, rsect = _distinct(req, launch.off, launch.size, nreq)
    per_warp = _groups(launch.cta, warp, launch.owner, launch.write.astype(np.int64))
    wbytes, wsect = _distinct(per_warp, launch.off, launch.size, int(per_warp.max()) + 1)
    out = {}
    for o in _unique(launch.owner):
        for w, how in ((False, "load"), (True, "store")):
            sel = (launch.owner == o) & (launch.write == w)
            if not sel.any():
                continue
            r = _unique(req[sel])
            pw = _unique(per_warp[sel])
            out[(launch.arrays[int(o)], how)] = Traffic(
                int(r.size), int(rbytes[r].sum()), int(rsect[r].sum()), int((-(-rbytes[r] // SECTOR)).sum()),
                int(wbytes[pw].sum()), int(wsect[pw].sum()))
    return out
