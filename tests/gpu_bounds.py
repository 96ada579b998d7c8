"""Test infrastructure: no access of an emulated kernel (tests/gpu_emulator.py) leaves its array.

Every array a launch passes (or each set of overlapping ones) is copied between two inaccessible
guards, at its address modulo 16 (what the launchers test) and as close to the guard after as
that allows.  The bytes around an array that are still mapped (the up to 15 after it, those
before it) hold a canary.  An access to a guard faults; and the library is built with
``-fsanitize=kernel-address``, which calls the shim's check before every load and store, so an
access to a canary byte, read or write, is an error too (a read there would otherwise see the
canary and pass unnoticed).  Either leaves the grid at once, and the launcher raises, naming the
kernel and the argument.  Accesses the compiler drops or narrows (a dead load, the used word of
a vector load) are not seen: they cannot change an output.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import subprocess

import numpy as np

# The check of every access (the shim's tail: it leaves the grid through qb_fault_jmp, as a
# fault does).  Not instrumented itself.
SHIM = r"""
#include <sys/mman.h>
#include <unistd.h>
#include <algorithm>
#include <cstdio>
#define QB_UNCHECKED __attribute__((no_sanitize_address, noinline))
#define QB_HOOK extern "C" __attribute__((no_sanitize_address, visibility("hidden")))

/* the canary bytes no access may touch: [lo, hi), of a launch's argument owner; disjoint,
   sorted by address */
struct QbWatch { unsigned long long lo, hi; long long owner; };
static const int QB_MAX_WATCH = 1 << 14;
static QbWatch qb_watch[QB_MAX_WATCH];
static int qb_nwatch = 0;
static unsigned long long qb_watch_lo = ~0ull, qb_watch_hi = 0;   /* all of them: a quick test */
static int qb_armed = 0;
extern "C" {
int qb_oob = 0, qb_oob_write = 0;
long long qb_oob_owner = 0;
unsigned long long qb_oob_at = 0, qb_oob_size = 0;
}

static QB_UNCHECKED void qb_watch_sorted() {
    std::sort(qb_watch, qb_watch + qb_nwatch, [](const QbWatch& a, const QbWatch& b) { return a.lo < b.lo; });
    qb_watch_lo = ~0ull;
    qb_watch_hi = 0;
    for (int i = 0; i < qb_nwatch; ++i) {
        qb_watch_lo = qb_watch[i].lo < qb_watch_lo ? qb_watch[i].lo : qb_watch_lo;
        qb_watch_hi = qb_watch[i].hi > qb_watch_hi ? qb_watch[i].hi : qb_watch_hi;
    }
}

static QB_UNCHECKED void qb_watch_add(unsigned long long lo, unsigned long long hi, long long owner) {
    if (lo >= hi) return;
    if (qb_nwatch == QB_MAX_WATCH) { std::fprintf(stderr, "emulator: too many arrays\n"); std::abort(); }
    qb_watch[qb_nwatch++] = QbWatch{lo, hi, owner};
}

static void qb_bounds_arm(int on) { qb_armed = on; if (on) qb_oob = 0; }

__attribute__((no_sanitize_address)) static inline void qb_access(const void* p, unsigned long long n, int write) {
    const unsigned long long a = (unsigned long long)p;
    if (!n || a + n <= qb_watch_lo || a >= qb_watch_hi) return;
    int lo = 0, hi = qb_nwatch;   /* the first span that ends after a */
    while (lo < hi) {
        const int m = (lo + hi) / 2;
        if (qb_watch[m].hi <= a) lo = m + 1; else hi = m;
    }
    if (lo == qb_nwatch || qb_watch[lo].lo >= a + n || qb_oob) return;
    qb_oob = 1; qb_oob_write = write; qb_oob_owner = qb_watch[lo].owner; qb_oob_at = a; qb_oob_size = n;
    if (qb_armed) { qb_faulted = 1; qb_fault_at = a; siglongjmp(qb_fault_jmp, 1); }
}

/* what -fsanitize=kernel-address calls (recoverable, out of line) */
#define QB_HOOKS(n) \
    QB_HOOK void __asan_load##n##_noabort(const void* p) { qb_access(p, n, 0); } \
    QB_HOOK void __asan_store##n##_noabort(const void* p) { qb_access(p, n, 1); }
QB_HOOKS(1) QB_HOOKS(2) QB_HOOKS(4) QB_HOOKS(8) QB_HOOKS(16)
QB_HOOK void __asan_loadN_noabort(const void* p, unsigned long n) { qb_access(p, n, 0); }
QB_HOOK void __asan_storeN_noabort(const void* p, unsigned long n) { qb_access(p, n, 1); }
/* clang's may call these for memcpy and the like */
QB_HOOK void* __asan_memcpy(void* d, const void* s, unsigned long n) {
    qb_access(s, n, 0); qb_access(d, n, 1); return std::memcpy(d, s, n);
}
QB_HOOK void* __asan_memmove(void* d, const void* s, unsigned long n) {
    qb_access(s, n, 0); qb_access(d, n, 1); return std::memmove(d, s, n);
}
QB_HOOK void* __asan_memset(void* d, int c, unsigned long n) { qb_access(d, n, 1); return std::memset(d, c, n); }
QB_HOOK void __asan_handle_no_return() {}
QB_HOOK void __asan_before_dynamic_init(const char*) {}
QB_HOOK void __asan_after_dynamic_init() {}

/* the arrays of the next launch: rows of (lo, hi, owner) */
extern "C" QB_UNCHECKED void qb_watch_launch(int k, const unsigned long long* rows) {
    qb_nwatch = 0;
    for (int i = 0; i < k; ++i) qb_watch_add(rows[3 * i], rows[3 * i + 1], (long long)rows[3 * i + 2]);
    qb_watch_sorted();
}
"""


@functools.lru_cache(maxsize=None)
def check_flags(cxx: str) -> tuple[str, ...]:
    """The compiler's flags for a call to the shim's check before every load and store (no
    shadow memory, no runtime: only the calls)."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    if "clang" in version:
        opt = ["-mllvm", "-asan-instrumentation-with-call-threshold=0", "-mllvm", "-asan-stack=0",
               "-mllvm", "-asan-globals=0"]
    else:
        opt = ["--param", "asan-instrumentation-with-call-threshold=0", "--param", "asan-stack=0",
               "--param", "asan-globals=0"]
    return ("-fsanitize=kernel-address", "-fno-sanitize-address-use-after-scope", *opt)


# ---- the arrays of a launch -------------------------------------------------------------------

_PAGE = mmap.PAGESIZE
_GUARD = 16 * _PAGE   # inaccessible bytes on either side (address space only)
_KEEP = 16
_CANARY = 0xA5
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _extent(a: np.ndarray) -> tuple[int, int]:
    """The bytes ``[lo, hi)`` an array's elements occupy (any strides)."""
    lo = hi = a.ctypes.data
    if a.size == 0:
        return lo, lo
    for n, st in zip(a.shape, a.strides):
        (lo, hi) = (lo + st * (n - 1), hi) if st < 0 else (lo, hi + st * (n - 1))
    return lo, hi + a.itemsize


def _bytes_at(addr: int, n: int) -> np.ndarray:
    return np.frombuffer((ctypes.c_char * n).from_address(addr), np.uint8) if n else np.zeros(0, np.uint8)


class _Guarded:
    """One span ``[lo, hi)`` of host memory copied between guard pages for a launch."""

    def __init__(self, lo: int, hi: int):
        self.lo, self.n = lo, hi - lo
        pages = -(-(self.n + _KEEP) // _PAGE)
        self.size = pages * _PAGE + 2 * _GUARD
        base = _libc.mmap(None, self.size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                          -1, 0)
        if base in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed for a guarded array")
        self.base, self.end = base, base + _GUARD + pages * _PAGE
        start = self.end - self.n
        self.start = start - (start - lo) % _KEEP
        _bytes_at(base + _GUARD, pages * _PAGE)[:] = _CANARY
        ctypes.memmove(self.start, lo, self.n)
        for at in (base, self.end):
            _libc.mprotect(at, _GUARD, 0)   # PROT_NONE

    def holds(self, addr: int) -> bool:
        return self.base <= addr < self.base + self.size

    def canaries(self) -> list[tuple[int, int]]:
        """The mapped bytes around the array: ``[lo, hi)`` before it and after it."""
        return [(self.base + _GUARD, self.start), (self.start + self.n, self.end)]

    def overwritten(self) -> tuple[int, int] | None:
        """``(first, last)`` canary bytes written, as offsets from the array's start."""
        lead = _bytes_at(self.base + _GUARD, self.start - self.base - _GUARD)
        tail = _bytes_at(self.start + self.n, self.end - self.start - self.n)
        bad = np.concatenate([np.flatnonzero(lead != _CANARY) - lead.size,
                              np.flatnonzero(tail != _CANARY) + self.n])
        return (int(bad.min()), int(bad.max())) if bad.size else None

    def copy_back(self) -> None:
        new, old = _bytes_at(self.start, self.n), _bytes_at(self.lo, self.n)
        if not np.array_equal(new, old):   # only then: inputs may be read-only memory
            old[:] = new

    def free(self) -> None:
        _libc.munmap(self.base, self.size)


def _fault(lib, name: str, guards) -> str:
    """The message for a launch left at an access out of bounds."""
    if ctypes.c_int.in_dll(lib, "qb_oob").value:   # a canary byte, by the check
        at = ctypes.c_ulonglong.in_dll(lib, "qb_oob_at").value
        size = ctypes.c_ulonglong.in_dll(lib, "qb_oob_size").value
        owner = ctypes.c_longlong.in_dll(lib, "qb_oob_owner").value
        how = "write to" if ctypes.c_int.in_dll(lib, "qb_oob_write").value else "read of"
        g = next(g for g, idx in guards if idx[0] == owner)
        return (f"{name}: out-of-bounds {how} argument {owner} ({g.n} bytes): "
                f"bytes {at - g.start}..{at - g.start + size - 1} from its start")
    at = ctypes.c_ulonglong.in_dll(lib, "qb_fault_at").value   # a guard page
    where = [(g, idx) for g, idx in guards if g.holds(at)]
    if not where:
        return f"{name}: invalid memory access at {at:#x}"
    g, idx = where[0]
    off = at - g.start
    rel = f"{off - g.n} bytes past its end" if off >= g.n else f"{-off} bytes before its start"
    return f"{name}: out-of-bounds access at {at:#x}: argument {idx[0]} ({g.n} bytes), {rel}"


def call_guarded(lib, name: str, grid: int, block: int, args) -> None:
    """Launch kernel ``name`` of ``lib`` (its ``emu_`` function) with every numpy array in
    ``args`` guarded: an access out of an array's bounds raises, naming the kernel and the
    argument (its position in ``args``)."""
    fn = getattr(lib, f"emu_{name}")
    spans = sorted(((*_extent(a), i) for i, a in enumerate(args) if isinstance(a, np.ndarray)), key=lambda t: t[:2])
    groups: list[list] = []   # overlapping arrays (in-place, aliases) share one copy
    for lo, hi, i in spans:
        if groups and lo < groups[-1][1]:
            groups[-1][1] = max(groups[-1][1], hi)
            groups[-1][2].append(i)
        else:
            groups.append([lo, hi, [i]])
    guards: list[tuple[_Guarded, list[int]]] = []
    try:
        conv = list(args)
        for lo, hi, idx in groups:
            g = _Guarded(lo, hi)
            guards.append((g, idx))
            for i in idx:
                conv[i] = ctypes.c_void_p(g.start + args[i].ctypes.data - lo)
        rows = np.array([(a, b, idx[0]) for g, idx in guards for a, b in g.canaries()], np.uint64).reshape(-1)
        lib.qb_watch_launch(ctypes.c_int(rows.size // 3), rows.ctypes.data_as(ctypes.c_void_p))
        fn(ctypes.c_uint(grid), ctypes.c_uint(block), *conv)
        if ctypes.c_int.in_dll(lib, "qb_faulted").value:
            raise RuntimeError(_fault(lib, name, guards))
        check_barriers(lib, name)
        for g, idx in guards:
            bad = g.overwritten()
            if bad:
                raise RuntimeError(f"{name}: out-of-bounds write to argument {idx[0]} ({g.n} bytes): "
                                   f"bytes {bad[0]}..{bad[1]} from its start")
        for g, _ in guards:
            g.copy_back()
    finally:
        lib.qb_watch_launch(ctypes.c_int(0), None)   # no check on memory given back
        for g, _ in guards:
            g.free()


def check_barriers(lib, name: str) -> None:
    """A kernel whose threads pass different numbers of barriers would hang a GPU; one that
    accesses memory through a misaligned pointer would fault there."""
    if ctypes.c_int.in_dll(lib, "qb_barrier_mismatch").value:
        raise RuntimeError(f"{name}: the threads of a block passed different numbers of barriers")
    if ctypes.c_int.in_dll(lib, "qb_misaligned").value:
        at = ctypes.c_ulonglong.in_dll(lib, "qb_misaligned_at").value
        raise RuntimeError(f"{name}: misaligned memory access at {at:#x}")
