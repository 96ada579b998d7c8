"""numba's multi-threaded kernels, launched one at a time per process.

Without OpenMP or TBB (macOS wheels, slim Linux images without ``libgomp``) numba runs
``parallel=True`` kernels on its *workqueue* threading layer, which aborts the whole process
when two Python threads launch kernels at the same time (a thread pool quantizing layers, a
data loader).  Every launch already spreads over all cores, so this module makes concurrent
callers wait their turn on one lock instead: nothing is lost in throughput, and the other
layers (OpenMP, TBB) are spared oversubscribing the cores.  Every multi-threaded kernel of the
package is declared through :func:`parallel_njit`, so the rule is kept in this one place.
"""

from __future__ import annotations

import functools
import threading

import numba

__all__ = ["parallel_njit"]

_LAUNCH = threading.Lock()


def parallel_njit(**options):
    """``numba.njit(parallel=True, cache=True, **options)``, each call holding the launch lock.

    The returned function keeps numba's attributes a caller reads: ``py_func`` (the Python
    function) and ``dispatcher`` (the compiled kernel, for numba's own introspection).
    """
    def declare(fn):
        kernel = numba.njit(parallel=True, cache=True, **options)(fn)

        @functools.wraps(fn)
        def launch(*args, **kwargs):
            with _LAUNCH:
                return kernel(*args, **kwargs)

        launch.py_func = fn
        launch.dispatcher = kernel
        return launch
    return declare
