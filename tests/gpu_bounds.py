"""Test infrastructure: no access of an emulated kernel (tests/gpu_emulator.py) leaves its array.

For a launch, each array (or each set of overlapping ones) is copied between two inaccessible
guards (inaccessible pages), at its address modulo 16 (what the launchers test) and as close to
the page after as that allows; the up to 15 bytes between and the bytes before the array hold a
canary.  A read or write past a page faults (the shim leaves the grid, the launcher raises); a
write into the canary shows after the launch.  The bytes come back to the caller's arrays
afterwards.
"""

from __future__ import annotations

import ctypes
import mmap

import numpy as np

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
        fn(ctypes.c_uint(grid), ctypes.c_uint(block), *conv)
        if ctypes.c_int.in_dll(lib, "qb_faulted").value:
            at = ctypes.c_ulonglong.in_dll(lib, "qb_fault_at").value
            where = [(g, idx) for g, idx in guards if g.holds(at)]
            if where:
                g, idx = where[0]
                off = at - g.start
                rel = f"{off - g.n} bytes past its end" if off >= g.n else f"{-off} bytes before its start"
                raise RuntimeError(f"{name}: out-of-bounds access at {at:#x}: argument {idx[0]} "
                                   f"({g.n} bytes), {rel}")
            raise RuntimeError(f"{name}: invalid memory access at {at:#x}")
        check_barriers(lib, name)
        for g, idx in guards:
            bad = g.overwritten()
            if bad:
                raise RuntimeError(f"{name}: out-of-bounds write to argument {idx[0]} ({g.n} bytes): "
                                   f"bytes {bad[0]}..{bad[1]} from its start")
        for g, _ in guards:
            g.copy_back()
    finally:
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
