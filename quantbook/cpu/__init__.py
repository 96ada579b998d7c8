"""numba CPU backend of the bulk block-wise format (``backend="cpu"``).

Imported lazily by :mod:`quantbook.bulk.api`; importing :mod:`quantbook` does not import numba.
"""
