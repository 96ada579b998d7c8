"""The randomized Hadamard transform along a weight matrix's input dimension (its rows).

The one definition of the rotation: the model evaluation (``--rotate``) and vector
quantization in bulk (:func:`quantbook.bulk.vq.quantize_vq`, whose numba and CUDA kernels repeat these
float64 operations bit for bit) both use it.

``H = D·Hₙ/√n`` with ``Hₙ`` the Sylvester Hadamard matrix of order ``n`` (a power of two)
and ``D`` a fixed-seed diagonal of random signs (``-1`` where
``numpy.random.default_rng(0).random(n) < 0.5``, else ``+1``); for an input dimension that ``n`` divides,
the transform is block-diagonal (one ``H`` per group of ``n`` columns).  ``H`` is
orthogonal, so ``W·H`` keeps every row's energy, and ``(W·H)·Hᵀ = W``.  Rotating makes the
entries of a block close to Gaussian whatever the original outliers (QuaRot, Ashkboos et
al. 2024; HIGGS, Malinovskii et al. 2024), which is the law the derived codebooks are
optimal for.

:func:`rotate` computes ``W·H`` and :func:`unrotate` ``V·Hᵀ``, both with the fast
Walsh–Hadamard transform (``n·log2 n`` additions per group), in float64.
"""

from __future__ import annotations

import numpy as np
from .arguments import check_int, is_int

__all__ = ["fwht", "signs", "rotate", "unrotate", "default_size", "check_size", "check_divides", "SEED"]

#: the seed of the random signs: fixed, so that a rotation is the same in every run
SEED = 0


def check_size(n: int) -> int:
    """``n`` when it is a power of two ≥ 1, else a one-line ValueError."""
    if not is_int(n) or n < 1 or n & (n - 1):
        raise ValueError(f"the Hadamard size must be a power of two, got {n}")
    return int(n)


def default_size(columns: int) -> int:
    """The largest power of two that divides ``columns`` (e.g. 576 → 64, 1536 → 512)."""
    if columns < 1:
        raise ValueError(f"a matrix to rotate needs at least one column, got {columns}")
    return columns & -columns


def fwht(x: np.ndarray) -> np.ndarray:
    """The orthonormal Walsh–Hadamard transform ``x·Hₙ/√n`` of each row of ``x`` (float64 copy)."""
    x = np.array(x, dtype=np.float64)
    n = check_size(x.shape[-1])
    lead = x.shape[:-1]
    h = 1
    while h < n:
        y = x.reshape(*lead, n // (2 * h), 2, h)
        a = y[..., 0, :] + y[..., 1, :]
        b = y[..., 0, :] - y[..., 1, :]
        y[..., 0, :] = a
        y[..., 1, :] = b
        h *= 2
    x *= 1.0 / np.sqrt(n)
    return x


def signs(n: int, seed: int = SEED) -> np.ndarray:
    """The ``n`` fixed-seed random signs (±1.0) of ``D``."""
    # an integer alone: default_rng took True as seed 1 and drew a RandomState's current bits, not fixed signs
    check_int(seed, "seed", 0)
    return np.where(np.random.default_rng(seed).random(check_size(n)) < 0.5, -1.0, 1.0)


def check_divides(n: int, columns: int) -> None:
    """A one-line ValueError unless the Hadamard size ``n`` divides the input dimension."""
    if columns % n:
        raise ValueError(f"the Hadamard size {n} does not divide the input dimension {columns}")


def _groups(w: np.ndarray, n: int | None) -> tuple[np.ndarray, int]:
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"rotate a 2-D weight matrix, got shape {w.shape}")
    n = default_size(w.shape[1]) if n is None else check_size(n)
    check_divides(n, w.shape[1])
    return w.reshape(w.shape[0], w.shape[1] // n, n), n


def rotate(w: np.ndarray, n: int | None = None, seed: int = SEED) -> np.ndarray:
    """``W·H`` (float64) for a 2-D ``W`` (rows = outputs, columns = inputs); ``n``: the
    Hadamard size (default :func:`default_size` of the column count)."""
    g, n = _groups(w, n)
    return fwht(g * signs(n, seed)).reshape(np.shape(w))


def unrotate(v: np.ndarray, n: int | None = None, seed: int = SEED) -> np.ndarray:
    """``V·Hᵀ`` (float64): undoes :func:`rotate` with the same ``n`` and ``seed``."""
    g, n = _groups(v, n)
    return (fwht(g) * signs(n, seed)).reshape(np.shape(v))
