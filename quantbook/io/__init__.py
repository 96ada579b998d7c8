"""Files in and out: the layer above :mod:`quantbook.numerics`.  From quantbook it imports only that,
:mod:`quantbook.errors` and :mod:`quantbook.version`.

* :mod:`.files` — the one place that writes user output files (path checks, atomic writes);
* :mod:`.safetensors` — reading ``.safetensors`` model files (header parsed once per file);
* :mod:`.npy` — reading ``.npy`` arrays with the header checked before any data is read;
* :mod:`.progress` — progress bars on standard error (``tqdm``, optional);
* :mod:`.text` — numbers and table columns as the command line prints them;
* :mod:`.streams` — what standard output and error cannot encode (``σ`` as ``sigma`` on ASCII);
* :mod:`.versions` — the format version every file quantbook writes and reads back says.

The submodules are imported on use so that ``import quantbook.io.files`` stays cheap.
"""

from __future__ import annotations

__all__ = ["files", "safetensors", "npy", "progress", "text", "streams", "versions"]


def __getattr__(name: str):
    """A submodule, imported on its first use as an attribute (``quantbook.io.text``)."""
    if name in __all__:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
