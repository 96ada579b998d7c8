"""quantbook: design, derive, audit, export and use the codebooks of block-wise k-bit quantization.

Data flows one way: distributions → derivation (:mod:`quantbook.derive`) → :class:`Codebook`
→ export / quantize / audit (:mod:`quantbook.verify`).

The public names below are loaded at their first use (PEP 562), so importing quantbook imports
neither numpy nor the registry: the ``quantbook`` command (:mod:`quantbook.console`) is running
before they load, and answers a Ctrl-C during that import as any other of its Ctrl-Cs.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:   # what type checkers see; at run time __getattr__ loads each name
    from .bulk import QuantState, dequantize, quantize
    from .codebooks import REGISTRY, Codebook, CodebookError, get, load, names

#: the subpackage each public name is loaded from (numba is imported later still, by the cpu backend)
_HOMES = {"Codebook": "codebooks", "CodebookError": "codebooks", "REGISTRY": "codebooks", "get": "codebooks",
          "load": "codebooks", "names": "codebooks", "quantize": "bulk", "dequantize": "bulk", "QuantState": "bulk"}

__all__ = ["Codebook", "CodebookError", "REGISTRY", "get", "load", "names", "__version__",
           "quantize", "dequantize", "QuantState"]


def __getattr__(name: str):
    if name == "__version__":
        from .version import installed_version

        globals()[name] = value = installed_version()
        return value
    if name in _HOMES:
        value = getattr(_importlib.import_module(f".{_HOMES[name]}", __name__), name)
        globals()[name] = value   # loaded once
        return value
    if not name.startswith("_"):   # a subpackage, as `import quantbook.NAME` gives it (and eager imports gave)
        try:
            return _importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":   # the subpackage is there, a module it needs is not
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
