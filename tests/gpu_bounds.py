"""Test infrastructure: no access of an emulated kernel (tests/gpu_emulator.py) leaves its array.

Every array a launch passes (or each set of overlapping ones) is copied between two inaccessible
guards, at its address modulo 16 (what the launchers test) and as close to the guard after as
that allows; every ``__shared__`` array lies in memory of its own, the same way, ending as close
to a guard as its alignment allows.  The bytes around an array that are still mapped (the up to
15 after it, those before it) hold a canary.  An access to a guard faults; and the library is
built with ``-fsanitize=kernel-address``, which calls the shim's check before every load and
store, so an access to a canary byte, read or write, is an error too (a read there would
otherwise see the canary and pass unnoticed).  Either leaves the grid at once, and the launcher
raises, naming the kernel and the array.  Accesses the compiler drops or narrows (a dead load,
the used word of a vector load) are not seen: they cannot change an output.

A GPU's shared memory holds no defined value when a CTA starts, so a ``__shared__`` array starts
each block as poison (all ones, 0x7f bytes or noise, in turn), never the zeros or the previous
block's values a kept array would hold; and the check notes which of its bytes the block has
written, so a read of one no thread of the block has written raises too, naming the kernel, the
array and the block.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import re
import subprocess

import numpy as np

# The check of every access, the shared arrays' memory and their list (the shim's tail: it
# leaves the grid through qb_fault_jmp, as a fault does).  Not instrumented itself.
SHIM = r"""
#include <sys/mman.h>
#include <unistd.h>
#include <algorithm>
#include <cstdio>
#define QB_UNCHECKED __attribute__((no_sanitize_address, noinline))
#define QB_HOOK extern "C" __attribute__((no_sanitize_address, visibility("hidden")))

/* the canary bytes no access may touch: [lo, hi), of a launch's argument (owner >= 0) or of
   shared array -1 - owner; and each shared array's own bytes (data), whose reads are checked
   against what its CTA wrote; disjoint, sorted by address */
struct QbWatch { unsigned long long lo, hi; long long owner; int data; };
static const int QB_MAX_WATCH = 1 << 14;
static QbWatch qb_watch[QB_MAX_WATCH];
static int qb_nwatch = 0;
static unsigned long long qb_watch_lo = ~0ull, qb_watch_hi = 0;   /* all of them: a quick test */
static int qb_armed = 0;
extern "C" {
int qb_oob = 0, qb_oob_write = 0, qb_oob_unset = 0;   /* unset: a shared read before any write */
long long qb_oob_owner = 0;
unsigned long long qb_oob_at = 0, qb_oob_size = 0, qb_oob_block = 0;
}
static QB_UNCHECKED int qb_shared_read_unset(int k, unsigned long long lo, unsigned long long hi, int write);

static QB_UNCHECKED void qb_watch_sorted() {
    /* no check while std::sort (a template: compiled with the checks) moves the entries a field at
       a time: one may then run from a span below this library's memory to one above it */
    qb_watch_lo = ~0ull;
    qb_watch_hi = 0;
    std::sort(qb_watch, qb_watch + qb_nwatch, [](const QbWatch& a, const QbWatch& b) { return a.lo < b.lo; });
    for (int i = 0; i < qb_nwatch; ++i) {
        qb_watch_lo = qb_watch[i].lo < qb_watch_lo ? qb_watch[i].lo : qb_watch_lo;
        qb_watch_hi = qb_watch[i].hi > qb_watch_hi ? qb_watch[i].hi : qb_watch_hi;
    }
}

static QB_UNCHECKED void qb_watch_add(unsigned long long lo, unsigned long long hi, long long owner,
                                      int data = 0) {
    if (lo >= hi) return;
    if (qb_nwatch == QB_MAX_WATCH) { std::fprintf(stderr, "emulator: too many arrays\n"); std::abort(); }
    qb_watch[qb_nwatch++] = QbWatch{lo, hi, owner, data};
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
    for (; lo < qb_nwatch && qb_watch[lo].lo < a + n; ++lo) {   /* the spans it touches */
        const QbWatch& w = qb_watch[lo];
        const unsigned long long b = a > w.lo ? a : w.lo, e = a + n < w.hi ? a + n : w.hi;
        if (w.data && !qb_shared_read_unset((int)(-1 - w.owner), b, e, write)) continue;
        if (qb_oob) return;
        qb_oob = 1; qb_oob_write = write; qb_oob_unset = w.data; qb_oob_owner = w.owner;
        qb_oob_at = w.data ? b : a; qb_oob_size = w.data ? e - b : n; qb_oob_block = blockIdx.x;
        if (qb_armed) { qb_faulted = 1; qb_fault_at = a; siglongjmp(qb_fault_jmp, 1); }
        return;
    }
}

/* what -fsanitize=kernel-address calls (recoverable, out of line); a measuring build
   (gpu_traffic) defines QB_TRACE to note each access and the site that made it */
#ifndef QB_TRACE
#define QB_TRACE(p, n, write)
#endif
#define QB_HOOKS(n) \
    QB_HOOK void __asan_load##n##_noabort(const void* p) { QB_TRACE(p, n, 0); qb_access(p, n, 0); } \
    QB_HOOK void __asan_store##n##_noabort(const void* p) { QB_TRACE(p, n, 1); qb_access(p, n, 1); }
QB_HOOKS(1) QB_HOOKS(2) QB_HOOKS(4) QB_HOOKS(8) QB_HOOKS(16)
QB_HOOK void __asan_loadN_noabort(const void* p, unsigned long n) { QB_TRACE(p, n, 0); qb_access(p, n, 0); }
QB_HOOK void __asan_storeN_noabort(const void* p, unsigned long n) { QB_TRACE(p, n, 1); qb_access(p, n, 1); }
/* clang's may call these for memcpy and the like */
QB_HOOK void* __asan_memcpy(void* d, const void* s, unsigned long n) {
    QB_TRACE(s, n, 0); QB_TRACE(d, n, 1); qb_access(s, n, 0); qb_access(d, n, 1); return std::memcpy(d, s, n);
}
QB_HOOK void* __asan_memmove(void* d, const void* s, unsigned long n) {
    QB_TRACE(s, n, 0); QB_TRACE(d, n, 1); qb_access(s, n, 0); qb_access(d, n, 1); return std::memmove(d, s, n);
}
QB_HOOK void* __asan_memset(void* d, int c, unsigned long n) {
    QB_TRACE(d, n, 1); qb_access(d, n, 1); return std::memset(d, c, n);
}
QB_HOOK void __asan_handle_no_return() {}
QB_HOOK void __asan_before_dynamic_init(const char*) {}
QB_HOOK void __asan_after_dynamic_init() {}

/* the arrays of the next launch: rows of (lo, hi, owner) */
extern "C" QB_UNCHECKED void qb_watch_launch(int k, const unsigned long long* rows) {
    int j = 0;
    for (int i = 0; i < qb_nwatch; ++i)
        if (qb_watch[i].owner < 0) qb_watch[j++] = qb_watch[i];
    qb_nwatch = j;
    for (int i = 0; i < k; ++i) qb_watch_add(rows[3 * i], rows[3 * i + 1], (long long)rows[3 * i + 2]);
    qb_watch_sorted();
}

/* A shared-memory array (QB_SHARED below): memory of its own between guards, made when its kernel
   first runs.  A GPU's shared memory holds no defined value when a CTA starts, so the first of a
   CTA's threads to reach the declaration fills it with poison (a pattern that changes from CTA to
   CTA: NaN / all ones, huge values, noise) and forgets which bytes were written: a read of a byte
   no thread of the CTA has written raises, and one the check misses still sees poison, never the
   zeros or the previous CTA's values a kept array would hold. */
struct QbShared { unsigned long long map, size, lo, n, cta; const char* name; unsigned char* written; const int* key; };
static const int QB_MAX_SHARED = 4096;
static QbShared qb_shared[QB_MAX_SHARED];
static int qb_nshared = 0;
static const unsigned long long QB_SHARED_GUARD = 16;   /* pages */

static QB_UNCHECKED int qb_shared_alloc(unsigned long long n, unsigned long long align, const char* name,
                                        const int* key) {
    const unsigned long long page = (unsigned long long)sysconf(_SC_PAGESIZE), guard = QB_SHARED_GUARD * page;
    const unsigned long long data = (n + align + page - 1) / page * page;
    const unsigned long long size = data + 2 * guard;
    void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned char* written = static_cast<unsigned char*>(std::calloc(n, 1));
    if (m == MAP_FAILED || !written || qb_nshared == QB_MAX_SHARED) {
        std::fprintf(stderr, "emulator: no memory for shared array %s\n", name);
        std::abort();
    }
    const unsigned long long base = (unsigned long long)m, end = base + guard + data;
    mprotect(m, guard, PROT_NONE);
    mprotect((void*)end, guard, PROT_NONE);
    const unsigned long long lo = (end - n) / align * align;
    std::memset((void*)(base + guard), 0xA5, data);   /* the canary around it */
    const long long owner = -1 - qb_nshared;
    qb_shared[qb_nshared++] = QbShared{base, size, lo, n, ~0ull, name, written, key};
    qb_watch_add(base + guard, lo, owner);
    qb_watch_add(lo, lo + n, owner, 1);
    qb_watch_add(lo + n, end, owner);
    qb_watch_sorted();
    return qb_nshared - 1;
}

/* the poison of CTA number cta (counted over launches): each pattern in turn, so a read whose
   result one of them leaves unchanged (fmaxf of NaN, a sum with 0) shows up with another */
static QB_UNCHECKED void qb_shared_poison(const QbShared& s, unsigned long long cta) {
    unsigned char* p = reinterpret_cast<unsigned char*>(s.lo);
    switch (cta % 3) {
    case 0: std::memset(p, 0xFF, s.n); break;   /* NaN of either float width, integers all ones */
    case 1: std::memset(p, 0x7F, s.n); break;   /* 3.4e38f, 1.4e306, large positive integers */
    default: {                                  /* noise, different each time */
        unsigned long long z = cta * 0x9E3779B97F4A7C15ull + s.lo;
        for (unsigned long long i = 0; i < s.n; i += 8) {
            z += 0x9E3779B97F4A7C15ull;
            unsigned long long r = z;
            r = (r ^ (r >> 30)) * 0xBF58476D1CE4E5B9ull;
            r = (r ^ (r >> 27)) * 0x94D049BB133111EBull;
            r ^= r >> 31;
            std::memcpy(p + i, &r, s.n - i < 8 ? s.n - i : 8);
        }
    }
    }
}

/* what a QB_SHARED declaration runs, in every thread of every CTA: the array (made on the
   first call; *k caches its index), poisoned and unwritten once a CTA.  g++ makes the slot *k of
   a template kernel one variable for every library loaded (a unique symbol), so the index is
   trusted only where this library's array of that slot holds it. */
static QB_UNCHECKED void* qb_shared_enter(int* k, unsigned long long n, unsigned long long align,
                                          const char* name) {
    if (*k < 0 || *k >= qb_nshared || qb_shared[*k].key != k) {
        int i = 0;
        while (i < qb_nshared && qb_shared[i].key != k) ++i;
        *k = i < qb_nshared ? i : qb_shared_alloc(n, align, name, k);
    }
    QbShared& s = qb_shared[*k];
    if (s.cta != qb_cta_seq) {
        s.cta = qb_cta_seq;
        qb_shared_poison(s, s.cta);
        std::memset(s.written, 0, s.n);
    }
    return (void*)s.lo;
}

/* bytes [lo, hi) of shared array k accessed: a write marks them, a read of one not marked
   since its CTA began is the error (returns 1) */
static QB_UNCHECKED int qb_shared_read_unset(int k, unsigned long long lo, unsigned long long hi, int write) {
    unsigned char* w = qb_shared[k].written + (lo - qb_shared[k].lo);
    const unsigned long long n = hi - lo;
    if (write) { std::memset(w, 1, n); return 0; }
    for (unsigned long long i = 0; i < n; ++i)
        if (!w[i]) return 1;
    return 0;
}

/* shared array k's place and name, or those of the one whose memory (guards too) holds at */
extern "C" QB_UNCHECKED int qb_shared_info(int k, unsigned long long at, unsigned long long* lo,
                                          unsigned long long* n, const char** name) {
    if (k < 0)
        for (int i = 0; i < qb_nshared && k < 0; ++i)
            if (at >= qb_shared[i].map && at < qb_shared[i].map + qb_shared[i].size) k = i;
    if (k < 0 || k >= qb_nshared) return -1;
    *lo = qb_shared[k].lo; *n = qb_shared[k].n; *name = qb_shared[k].name;
    return k;
}

#define QB_ALIGN(T, A) ((A) > alignof(T) ? (A) : alignof(T))
#define QB_SHARED(T, name, N, A) \
    static int qb_shared_slot_##name = -1; \
    T (&name)[N] = *static_cast<T (*)[N]>(qb_shared_enter(&qb_shared_slot_##name, sizeof(T[N]), QB_ALIGN(T, A), #name))
#define QB_SHARED1(T, name, A) \
    static int qb_shared_slot_##name = -1; \
    T& name = *static_cast<T*>(qb_shared_enter(&qb_shared_slot_##name, sizeof(T), QB_ALIGN(T, A), #name))
"""

_SHARED_DECL = re.compile(r"__shared__\s+(?:__align__\((?P<align>\d+)\)\s+)?(?P<type>\w+(?:\s+\w+)*?)\s+"
                          r"(?P<name>\w+)\s*(?:\[(?P<count>[^\]\n]+)\])?\s*;")


def guard_shared(src: str) -> str:
    """``src`` with each ``__shared__`` declaration made a reference into memory of its own
    (``QB_SHARED``); a form it cannot rewrite is an error rather than an unchecked array, and so
    is one outside a function (run once, at load, it could not start each CTA afresh)."""
    def one(m: re.Match) -> str:
        if src.count("{", 0, m.start()) <= src.count("}", 0, m.start()):
            raise ValueError(f"a __shared__ declaration outside a function: {m[0]!r}")
        a = m["align"] or "0"
        if m["count"] is None:
            return f"QB_SHARED1({m['type']}, {m['name']}, {a});"
        return f"QB_SHARED({m['type']}, {m['name']}, {m['count']}, {a});"

    out = _SHARED_DECL.sub(one, src)
    left = out.find("__shared__")
    if left >= 0:
        raise ValueError(f"a __shared__ declaration the emulator cannot guard: {out[left:left + 80]!r}")
    return out


@functools.lru_cache(maxsize=None)
def check_flags(cxx: str) -> tuple[str, ...]:
    """The compiler's flags for a call to the shim's check before every load and store (no
    shadow memory, no runtime: only the calls)."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    if "clang" in version:
        opt = ["-mllvm", "-asan-instrumentation-with-call-threshold=0", "-mllvm", "-asan-stack=0",
               "-mllvm", "-asan-globals=0"]
    else:
        # -fno-gnu-unique: a template's statics (a __shared__ array's slot) stay this library's own;
        # g++ binds them process-wide (STB_GNU_UNIQUE) even under RTLD_LOCAL, and a plain and a
        # measuring build of one library are loaded side by side (gpu_emulator.recording)
        opt = ["--param", "asan-instrumentation-with-call-threshold=0", "--param", "asan-stack=0",
               "--param", "asan-globals=0", "-fno-gnu-unique"]
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


def _shared(lib, k: int, at: int = 0) -> tuple[int, int, str] | None:
    """Shared array ``k``'s start, size and name (``k < 0``: the one whose memory holds ``at``)."""
    lo, n, nm = ctypes.c_ulonglong(), ctypes.c_ulonglong(), ctypes.c_char_p()
    f = lib.qb_shared_info
    f.argtypes = [ctypes.c_int, ctypes.c_ulonglong, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    if f(k, at, ctypes.byref(lo), ctypes.byref(n), ctypes.byref(nm)) < 0:
        return None
    return lo.value, n.value, nm.value.decode()


def _fault(lib, name: str, guards) -> str:
    """The message for a launch left at an access out of bounds."""
    if ctypes.c_int.in_dll(lib, "qb_oob").value:   # a canary byte, or an unwritten shared one, by the check
        at = ctypes.c_ulonglong.in_dll(lib, "qb_oob_at").value
        size = ctypes.c_ulonglong.in_dll(lib, "qb_oob_size").value
        owner = ctypes.c_longlong.in_dll(lib, "qb_oob_owner").value
        if ctypes.c_int.in_dll(lib, "qb_oob_unset").value:
            lo, n, nm = _shared(lib, -1 - owner)
            block = ctypes.c_ulonglong.in_dll(lib, "qb_oob_block").value
            return (f"{name}: read of shared array {nm} ({n} bytes) before any write in this block "
                    f"(block {block}): bytes {at - lo}..{at - lo + size - 1} from its start")
        how = "write to" if ctypes.c_int.in_dll(lib, "qb_oob_write").value else "read of"
        if owner >= 0:
            g = next(g for g, idx in guards if idx[0] == owner)
            what, lo, n = f"argument {owner}", g.start, g.n
        else:
            lo, n, nm = _shared(lib, -1 - owner)
            what = f"shared array {nm}"
        return (f"{name}: out-of-bounds {how} {what} ({n} bytes): "
                f"bytes {at - lo}..{at - lo + size - 1} from its start")
    at = ctypes.c_ulonglong.in_dll(lib, "qb_fault_at").value   # a guard page
    where = [(g.start, g.n, f"argument {idx[0]}") for g, idx in guards if g.holds(at)]
    sh = _shared(lib, -1, at)
    if sh:
        where.append((sh[0], sh[1], f"shared array {sh[2]}"))
    if not where:
        return f"{name}: invalid memory access at {at:#x}"
    lo, n, what = where[0]
    off = at - lo
    rel = f"{off - n} bytes past its end" if off >= n else f"{-off} bytes before its start"
    return f"{name}: out-of-bounds access at {at:#x}: {what} ({n} bytes), {rel}"


class Window:
    """A launch argument standing for the elements ``[at, at + array.size)`` of an array too large
    to hold (past 2**31 or 2**32 values): the kernel's pointer lies ``at`` elements before
    ``array``'s first, so a launch whose blocks touch only those elements works on ``array``,
    guarded as any other argument; an access outside the window leaves it and raises."""

    def __init__(self, array: np.ndarray, at: int):
        self.array, self.at = array, int(at)


def call_guarded(lib, name: str, grid: int, block: int, args, trace=None, first_block: int = 0) -> None:
    """Launch kernel ``name`` of ``lib`` (its ``emu_`` function) with every numpy array in
    ``args`` guarded: an access out of an array's bounds raises, naming the kernel and the
    argument (its position in ``args``), or the shared array.  ``trace`` (a measuring build's
    :class:`gpu_traffic.Recorder`) is told the arrays' places before the launch, and takes the
    accesses noted after it.  A :class:`Window` argument is guarded as its array; the blocks
    before ``first_block`` do not run."""
    fn = getattr(lib, f"emu_{name}")
    shift = [a.at * a.array.itemsize if isinstance(a, Window) else 0 for a in args]
    args = [a.array if isinstance(a, Window) else a for a in args]
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
                conv[i] = ctypes.c_void_p(g.start + args[i].ctypes.data - lo - shift[i])
        rows = np.array([(a, b, idx[0]) for g, idx in guards for a, b in g.canaries()], np.uint64).reshape(-1)
        lib.qb_watch_launch(ctypes.c_int(rows.size // 3), rows.ctypes.data_as(ctypes.c_void_p))
        if trace is not None:
            trace.begin(lib, [(g.start, g.n, idx) for g, idx in guards])
        ctypes.c_uint.in_dll(lib, "qb_block0").value = first_block
        try:
            fn(ctypes.c_uint(grid), ctypes.c_uint(block), *conv)
        finally:
            ctypes.c_uint.in_dll(lib, "qb_block0").value = 0
        if ctypes.c_int.in_dll(lib, "qb_faulted").value:
            raise RuntimeError(_fault(lib, name, guards))
        check_barriers(lib, name)
        for g, idx in guards:
            bad = g.overwritten()
            if bad:
                raise RuntimeError(f"{name}: out-of-bounds write to argument {idx[0]} ({g.n} bytes): "
                                   f"bytes {bad[0]}..{bad[1]} from its start")
        if trace is not None:
            trace.end(lib, name, grid, block)
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
