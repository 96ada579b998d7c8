"""Inputs and comparisons shared by the GPU kernel tests (emulated on the CPU, and on a device)."""

import numpy as np

from quantbook.bulk import reference as R


def bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype.itemsize == b.dtype.itemsize and \
        np.array_equal(a.view(np.uint8), b.view(np.uint8))


def adversarial_input(n, blocksize, code, rng):
    bounds, _ = R.sorted_bounds(code)
    x = rng.standard_normal(n).astype(np.float32)
    m = min(n, blocksize)
    # block 0: absmax exactly 1, the rest ON the bounds / code values (ties of the encoder)
    x[:m] = rng.choice(np.concatenate([bounds, code, -bounds, [0.0, 1.0, -1.0]]), m)
    x[0] = 1.0
    if n > blocksize:
        x[blocksize:2 * blocksize] = 0.0                       # an all-zero block
    if n >= 2 * blocksize + 5:
        x[2 * blocksize:2 * blocksize + 5] = [1e-39, -3e-40, 0.0, 1e-45, -1e-39]  # subnormal
    return x
