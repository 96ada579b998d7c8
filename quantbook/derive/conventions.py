"""scipy.stats' conventions for the public methods of the laws in this package, in one
place: a public method checks its argument and masks what has no answer (NaN in, NaN out; no
quantile outside [0, 1]), a private hook computes on the rest, and a scalar in gives a float
out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, SupportsIndex, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..numerics.fpstate import ignore_underflow
from ..numerics.reals import real_array

__all__ = ["real_array", "apply", "at_x", "at_q", "sample_shape", "FloatOrArray", "Size"]

#: what a public method returns: a float (``numpy.float64``) for a scalar argument, a float64
#: array of the argument's shape for an array
FloatOrArray: TypeAlias = float | NDArray[np.float64]
#: the ``size`` of ``rvs``, as numpy's and scipy's (:func:`sample_shape`)
Size: TypeAlias = SupportsIndex | Sequence[SupportsIndex] | None


@ignore_underflow
def apply(hook: Callable[[np.ndarray], Any], x: ArrayLike, what: str,
          valid: Callable[[np.ndarray], np.ndarray]) -> FloatOrArray:
    """``hook`` on the valid entries of ``x`` (as a 1-D array), NaN elsewhere; 0-d in ->
    float out."""
    arr = real_array(x, what)
    ok = valid(arr)
    if ok.all():
        out = np.asarray(hook(arr.reshape(-1)), dtype=np.float64).reshape(arr.shape)
    else:
        out = np.full(arr.shape, np.nan)
        if ok.any():
            out[ok] = hook(arr[ok])
    return out[()]


def at_x(hook: Callable[[np.ndarray], Any], x: ArrayLike, what: str = "x") -> FloatOrArray:
    """A function of a point: NaN where the point is NaN."""
    return apply(hook, x, what, lambda a: ~np.isnan(a))


def at_q(hook: Callable[[np.ndarray], Any], q: ArrayLike, what: str = "q") -> FloatOrArray:
    """A function of a probability: NaN outside [0, 1] (and at NaN)."""
    return apply(hook, q, what, lambda a: (a >= 0) & (a <= 1))


def sample_shape(size: Any) -> tuple[int, ...]:
    """The shape ``rvs`` returns for ``size`` (an integer or a tuple of them, all >= 0; None,
    as scipy's, is one value: shape ``()``)."""
    if size is None:
        return ()
    try:
        shape = tuple(int(v) for v in np.atleast_1d(size))
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"size must be a non-negative integer or a tuple of them, got {size!r}") from None
    if any(v < 0 for v in shape) or isinstance(size, (str, bytes, bool)) \
            or not np.all(np.atleast_1d(size) == np.asarray(shape)):
        raise ValueError(f"size must be a non-negative integer or a tuple of them, got {size!r}")
    return shape
