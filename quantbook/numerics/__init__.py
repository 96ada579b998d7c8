"""Numerical kernels shared by the layers above: emulations of other libraries' floating-point
arithmetic, bit for bit, and the Hadamard rotation.

* :mod:`.torch_f32` — torch's float32 CPU ``linspace``, ``sum`` and ``mean``;
* :mod:`.hadamard` — the fixed-seed randomized Walsh–Hadamard rotation;
* :mod:`.reals` — what counts as real numbers, as float64 (±inf beyond its range);
* :mod:`.fpstate` — numpy's floating-point error state inside quantbook (the caller's, underflow
  aside: :func:`~.fpstate.ignore_underflow`);
* :mod:`.dots` — weighted sums along a row that round the same in any piece, on any threads;
* :mod:`.losses` — the names of the two losses (L1, L2) and the check of a ``loss`` argument;
* :mod:`.arguments` — what counts as an integer argument, a True/False flag and an array, and
  how an argument is shown in an error;
* :mod:`.parallel` — numba's multi-threaded kernels, launched one at a time per process;
* :mod:`.kernel_cache` — numba's on-disk cache of the kernels (:func:`~.kernel_cache.cached_njit`), kept
  fresh when any module that compiles with numba changes.
"""
