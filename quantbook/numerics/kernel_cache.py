"""numba's on-disk cache of quantbook's kernels, kept fresh across modules.

numba keys a cached kernel by its own source file only.  A kernel that calls (or inlines) a
compiled helper of another module kept the helper's old code after that module alone changed
(a ``git checkout`` or an edit in a source checkout: a pip upgrade rewrites every file): it
ran stale, a silent wrong answer.  Here every quantbook kernel's cache key also holds a digest
of every quantbook module that compiles with numba, so a change to any of them recompiles them
all on first use.

:func:`cached_njit` declares a single-threaded kernel (``numba.njit(cache=True)``);
:mod:`quantbook.numerics.parallel` declares the multi-threaded ones through :func:`compile_cached`
(uncached where numba can write its cache nowhere) and :func:`install`, which also makes a fork
wait for a compilation in flight in another thread.
The key is set through numba's cache locators (``numba.core.caching``); where a numba version
lacks them, numba's own key stands.

numba names a kernel's cache files after its function (module, qualified name, first line) and
keys their entries by argument types, not by the build's options: two builds of one function
shared one entry, and each loaded the code the other had saved.  A build other than the plain
single-threaded one compiles a copy of the function named after the build (:func:`build_copy`).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import types
from pathlib import Path
from typing import Any, Callable

__all__ = ["cached_njit", "compile_cached", "install", "kernel_sources_digest", "build_copy"]

_PACKAGE = Path(__file__).resolve().parent.parent
_USES_NUMBA = re.compile(rb"^\s*(?:from numba\b|import numba\b)", re.MULTILINE)


@functools.lru_cache(maxsize=None)
def kernel_sources_digest() -> str:
    """SHA-256 over the path and bytes of every quantbook module that imports numba, read once
    per process."""
    h = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        data = path.read_bytes()
        if _USES_NUMBA.search(data):
            h.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(data).digest())
    return h.hexdigest()


def _in_package(py_file: str) -> bool:
    try:
        return Path(py_file).resolve().is_relative_to(_PACKAGE)
    except (OSError, ValueError):
        return False


@functools.lru_cache(maxsize=None)
def install() -> bool:
    """What declaring any quantbook kernel sets up, once: every later fork waits for a numba
    compilation in flight (:func:`_hold_compiler_lock_across_fork`), and quantbook's cache key
    goes in front of numba's file-backed cache locators; whether the key could be set."""
    _hold_compiler_lock_across_fork()
    try:
        from numba.core import caching
    except ImportError:
        return False
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    mixin = getattr(caching, "_SourceFileBackedLocatorMixin", None)
    classes = getattr(impl, "_locator_classes", None)
    if mixin is None or not isinstance(classes, list):
        return False
    for i, base in reversed(list(enumerate(classes))):
        if issubclass(base, mixin):
            classes.insert(i, _keyed(base))
    return True


def _hold_compiler_lock_across_fork() -> None:
    """Make every later fork take numba's compiler lock first: numba compiles under one global
    lock, and a child forked while another thread held it inherited it held, by a thread that
    does not exist there, so the child's first compilation waited forever.  The lock is
    reentrant, so a thread forking in the middle of a compilation of its own does not wait on
    itself."""
    if not hasattr(os, "register_at_fork"):
        return
    from numba.core.compiler_lock import global_compiler_lock as lock
    os.register_at_fork(before=lock.acquire, after_in_parent=lock.release, after_in_child=lock.release)


def _keyed(base: type) -> type:
    class Keyed(base):
        @classmethod
        def from_function(cls, py_func, py_file):
            return super().from_function(py_func, py_file) if _in_package(py_file) else None

        def get_source_stamp(self):
            return (super().get_source_stamp(), kernel_sources_digest())

    Keyed.__name__ = Keyed.__qualname__ = f"Quantbook{base.__name__}"
    return Keyed


def build_copy(fn: types.FunctionType, build: str) -> types.FunctionType:
    """A copy of ``fn`` whose qualified name ends in ``__build``, so that numba caches the build
    in files of its own (a single-threaded build of a parallel kernel's function loaded the
    parallel code, and ran threads outside the launch lock)."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__module__ = fn.__module__
    copy.__doc__ = fn.__doc__
    copy.__qualname__ = f"{fn.__qualname__}__{build}"
    return copy


def compile_cached(fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
    """``numba.njit(cache=True, **options)(fn)``, its cache keyed by every quantbook kernel module.
    Where numba has no directory it can write the cache to (a read-only install run by a user
    without a writable home, NUMBA_CACHE_DIR unset), the kernel uncached, with one warning:
    numba refused to declare it, and importing the kernels failed."""
    import numba

    install()
    try:
        return numba.njit(cache=True, **options)(fn)
    except RuntimeError as exc:
        if "cannot cache function" not in str(exc):
            raise
    _warn_uncached()
    return numba.njit(**options)(fn)


@functools.lru_cache(maxsize=None)
def _warn_uncached() -> None:
    from ..errors import warn

    warn("numba finds no writable directory to cache quantbook's compiled kernels in (the package's "
         "__pycache__ or the user's cache directory), so they compile again in every process; set "
         "NUMBA_CACHE_DIR to a writable directory", RuntimeWarning)


def cached_njit(**options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The decorator ``numba.njit(cache=True, **options)``, by :func:`compile_cached`."""
    install()
    return functools.partial(compile_cached, **options)
