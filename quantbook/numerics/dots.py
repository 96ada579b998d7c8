"""Weighted sums along the last axis whose rounding depends on the summed values alone.

A BLAS matrix-vector product (``a @ w``) rounds a row by where it falls: its kernels take the
rows in groups and the last few apart, and its threads split the rows into ranges, so one row's
value changes with how many rows are asked for at once (the pieces of a long array) and with
the number of BLAS threads.  OpenBLAS also picks its kernels by the CPU it runs on (fused
multiply-adds, the number of partial sums), so even a dot product of two vectors differs from
one CPU to another (docs/derivation.md, "Reproducibility across CPUs").  Here each product is
rounded, then each row is added up on its own by numpy's pairwise summation, which depends on the
row's length only: a law asked for at one point, in any piece, on any number of threads and on any
CPU gives the same bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .fpstate import ignore_underflow

__all__ = ["row_dot", "norm"]


@ignore_underflow
def row_dot(a: Any, w: Any) -> Any:
    """``Σ_j a[..., j]·w[j]`` for every row of ``a`` (``a @ w`` for 1-D ``w``), each row summed
    in an order fixed by its length (module docstring)."""
    return np.multiply(a, w).sum(axis=-1)


def norm(v: Any) -> float:
    """The Euclidean norm of the vector ``v``, summed as :func:`row_dot` sums (``np.linalg.norm``
    of a vector is a BLAS dot product)."""
    return float(np.sqrt(row_dot(v, v)))
