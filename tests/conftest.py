"""Shared test set-up: the test-only backends join the registry so that every suite that
loops over ``quantbook.bulk.BACKENDS`` runs them too; the NVRTC fixture of the compile tests."""

import pytest

import gpu_emulator  # noqa: F401  (registers the "gpu-emulated" backend)


@pytest.fixture(scope="module")
def nvrtc():
    """CuPy's NVRTC binding with a loadable libnvrtc; skips (with the reason) otherwise."""
    from quantbook.bulk.gpu.compile import NvrtcUnavailable, load_nvrtc

    try:
        return load_nvrtc()
    except NvrtcUnavailable as exc:
        pytest.skip(f"NVRTC library cannot be loaded: {exc}")
