"""numba CPU backend (``backend="cpu"``); numba itself is imported on first use."""

from .backend import NumbaBackend

__all__ = ["NumbaBackend"]
