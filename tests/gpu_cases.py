"""Inputs and comparisons shared by the backend tests."""

import types

import numpy as np
import pytest

from quantbook.bulk import BACKENDS
from quantbook.bulk.format import code_encoder


def usable_backend(name):
    """The registered backend ``name``, or a skip naming why it cannot run here."""
    backend = BACKENDS[name]
    why = backend.unavailable()
    if why:
        pytest.skip(f"backend {backend.name!r} unavailable: {why}")
    return backend


def bits_equal(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype.itemsize == b.dtype.itemsize and \
        np.array_equal(a.view(np.uint8), b.view(np.uint8))


def adversarial_input(n, blocksize, code, rng):
    """Seeded normal data, plus: block 0 with absmax exactly 1 and the rest ON the encoder's
    bounds and the code values (ties), an all-zero block, and subnormal values."""
    bounds = code_encoder(code).bounds
    x = rng.standard_normal(n).astype(np.float32)
    m = min(n, blocksize)
    x[:m] = rng.choice(np.concatenate([bounds, code, -bounds, [0.0, 1.0, -1.0]]), m)
    x[0] = 1.0
    if n > blocksize:
        x[blocksize:2 * blocksize] = 0.0
    if n >= 2 * blocksize + 5:
        x[2 * blocksize:2 * blocksize + 5] = [1e-39, -3e-40, 0.0, 1e-45, -1e-39]
    return x


class FakeDeviceArray(np.ndarray):
    """A host array posing as a CuPy array (``.data.ptr``), for stand-in ``cupy`` modules."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)


def fake_device(a, dtype=None):
    return np.asarray(a, dtype=dtype).view(FakeDeviceArray)
