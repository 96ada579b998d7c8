"""numba's multi-threaded kernels: declared in one place, launched one at a time per process,
and refused where launching one would end the process.

**Threads.** Without OpenMP or TBB (macOS wheels, slim Linux images without ``libgomp``)
numba runs ``parallel=True`` kernels on its *workqueue* threading layer, which aborts the
whole process when two Python threads launch kernels at the same time (a thread pool
quantizing layers, a data loader).  Every launch already spreads over all cores, so callers
take turns on one lock instead: nothing is lost in throughput, and the other layers (OpenMP,
TBB) are spared oversubscribing the cores.

**Fork.** GNU OpenMP (``libgomp``) is not fork-safe: numba ends a process forked after its
OpenMP layer started at that process's first parallel kernel, and a ``multiprocessing.Pool``
waiting on such a worker waits forever.  A child forked so is recorded at the fork.  There
:func:`unavailable` says why, the numba backends report it (``backend="auto"`` passes over
them to numpy, the same bits), and any other kernel (a derivation from a sample, ``derive
vq``, ggml's search) raises it as a ValueError instead of ending the process.

A fork also waits for a numba compilation in flight in another thread, for every kernel
declared (:func:`.kernel_cache.install`).

**Small launches.** A launch of little work may run on the calling thread alone
(``one_thread=True``): waking the other threads costs more than such work, and on a machine
whose cores are busy the launch waited for them, milliseconds each time.

numba itself is imported only when a kernel is declared, so importing quantbook never needs it.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from typing import Any, Callable

__all__ = ["parallel_njit", "unavailable"]

_LAUNCH = threading.Lock()
#: whether this process was forked from one whose GNU OpenMP layer had started (inherited by its children)
_forked_after_openmp = False


def _gnu_openmp_started() -> bool:
    """Whether numba's threading layer has started in this process on GNU OpenMP."""
    numba = sys.modules.get("numba")
    if numba is None:
        return False
    try:
        layer = numba.threading_layer()
    except ValueError:   # not started
        return False
    return layer == "omp" and getattr(sys.modules.get("numba.np.ufunc.omppool"), "openmp_vendor", "GNU") == "GNU"


def _after_fork() -> None:
    global _LAUNCH, _forked_after_openmp
    _LAUNCH = threading.Lock()   # a thread of the parent may have held it; none of them runs here
    _forked_after_openmp = _forked_after_openmp or _gnu_openmp_started()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def unavailable() -> str | None:
    """Why numba's parallel kernels cannot run in this process, or None (the ``unavailable``
    of the numba backends)."""
    try:
        import numba  # noqa: F401
    except ImportError as exc:
        return f"numba is not installed ({exc})"
    if _forked_after_openmp:
        return ("this process was forked after numba's GNU OpenMP threading layer started in its parent, and numba "
                "ends such a process at its first parallel kernel; start workers with the spawn or forkserver "
                "method, or set NUMBA_THREADING_LAYER=workqueue (or tbb) before numba starts")
    return None


def parallel_njit(**options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``numba.njit(parallel=True, cache=True, **options)`` (its cache keyed as
    :mod:`.kernel_cache` keys it, in files of its own), each call holding the launch lock
    and refused (ValueError) where :func:`unavailable` says why.  A call with ``one_thread=True``
    runs on the calling thread alone (numba's thread count is restored after it): for a kernel
    whose results do not depend on the number of threads, and little work.

    The returned function keeps numba's attributes a caller reads: ``py_func`` (the Python
    function) and ``dispatcher`` (the compiled kernel, for numba's own introspection).
    """
    import numba

    from .kernel_cache import build_copy, compile_cached, install
    install()   # the cache key of every quantbook kernel module, and forks wait for a compilation

    def declare(fn):
        kernel = compile_cached(build_copy(fn, "parallel"), parallel=True, **options)

        @functools.wraps(fn)
        def launch(*args, one_thread=False, **kwargs):
            if _forked_after_openmp:
                raise ValueError(f"numba's parallel kernel {fn.__name__} cannot run: {unavailable()}")
            with _LAUNCH:
                if not one_thread:
                    return kernel(*args, **kwargs)
                threads = numba.get_num_threads()   # the calling thread's setting (numba keeps one per thread)
                numba.set_num_threads(1)
                try:
                    return kernel(*args, **kwargs)
                finally:
                    numba.set_num_threads(threads)

        launch.py_func = fn
        launch.dispatcher = kernel
        return launch
    return declare
