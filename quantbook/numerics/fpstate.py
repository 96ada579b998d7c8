"""numpy's floating-point error state inside quantbook, stated once.

quantbook runs inside its callers' programs and under their numpy error state (``np.seterr``,
``np.errstate``), which it neither changes nor trips over: a caller runs under
``np.errstate(all="raise")`` to catch its own bugs, and quantbook's answers stay the same bits.

* A division by zero, an overflow or an invalid operation whose inf or NaN quantbook relies on
  (a density at ±inf, the log of 0, a value beyond float32's range refused by name afterwards) is
  silenced where it happens, by an ``np.errstate`` that says why.
* Underflow is silenced for the whole of each function whose arithmetic meets it, or that runs
  many that do (a law's public methods, :func:`quantbook.derive.conventions.apply`), by
  :func:`ignore_underflow`: a result rounded to a subnormal number or to 0 (a far tail's density, a
  tiny weight divided by its block's scale, the float32 step above 0) is the right answer throughout
  quantbook's numerics, as numpy's own default (``under="ignore"``) takes it.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import numpy as np

__all__ = ["ignore_underflow"]

_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def ignore_underflow(fn: _Fn) -> _Fn:
    """``fn`` run under ``np.errstate(under="ignore")`` (module docstring), the caller's state for
    the rest.  A new errstate each call: numpy 1.x keeps the state to restore on the errstate
    object, so one shared by calls that overlap (threads, recursion) restores the wrong state."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(under="ignore"):
            return fn(*args, **kwargs)
    return run  # type: ignore[return-value]
