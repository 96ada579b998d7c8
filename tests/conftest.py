"""Shared test set-up: the test-only backends join the registry so that every suite that
loops over ``quantbook.bulk.BACKENDS`` runs them too."""

import gpu_emulator  # noqa: F401  (registers the "gpu-emulated" backend)
