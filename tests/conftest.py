"""Shared test set-up: OpenMP's waiting threads sleep; the test-only backends join the registry
so that every suite that loops over ``quantbook.bulk.BACKENDS`` runs them too; the NVRTC fixture
of the compile tests."""

import os

# Set before numba or torch loads GNU OpenMP, which reads it once: a thread waiting at a barrier
# sleeps instead of spinning.  On two cores shared with other work, threads spinning at a
# barrier held the cores that the threads they waited for needed: SmolLM2's forward passes took
# several times as long (docs/benchmarks.md, "The test suite's time").  No values change; a run
# that sets OMP_WAIT_POLICY keeps its own.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import pytest  # noqa: E402

import gpu_emulator  # noqa: E402,F401  (registers the "gpu-emulated" backend)


@pytest.fixture(scope="module")
def nvrtc():
    """CuPy's NVRTC binding with a loadable libnvrtc; skips (with the reason) otherwise."""
    from quantbook.bulk.gpu.compile import NvrtcUnavailable, load_nvrtc

    try:
        return load_nvrtc()
    except NvrtcUnavailable as exc:
        pytest.skip(f"NVRTC library cannot be loaded: {exc}")
