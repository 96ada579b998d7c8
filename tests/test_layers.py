"""The package's layers point down (pyproject.toml's import-linter contracts): no module imports
a higher layer, lazily or not, so there is no import circle to break later."""

import ast
import shutil
import subprocess
import sys

import pytest

from checkout import ROOT, checkout_path


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (it is in the [test] extra)")
    r = subprocess.run([exe, "--no-cache"], cwd=checkout_path(), capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "broken" not in r.stdout.lower().replace("0 broken", "")


#: what a user pays for only when a command uses it (numpy, scipy and numba are the core)
_HEAVY = ("torch", "transformers", "cupy", "matplotlib", "safetensors", "tqdm", "sympy", "ml_dtypes")


def _loaded_after(code: str) -> list[str]:
    code += f"\nimport sys; print(sorted(m for m in {_HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def test_importing_quantbook_loads_no_heavy_optional_dependency():
    assert _loaded_after("import sys, quantbook; assert 'numba' not in sys.modules") == []


@pytest.mark.parametrize("package", ["quantbook.derive", "quantbook.verify", "quantbook.bulk", "quantbook.model",
                                     "quantbook.plots", "quantbook.export", "quantbook.naming"])
def test_importing_a_subpackage_loads_no_heavy_optional_dependency(package):
    # sympy (half a second and more) is for derive_offset alone, scipy.stats' and numba's cost is the core's
    assert _loaded_after(f"import {package}") == []


_EVERY_HELP = """
import argparse, contextlib, io, sys
from quantbook.cli import build_parser, main

def commands(parser, words):
    yield words
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, words + [name])

seen = list(commands(build_parser(), []))
assert len(seen) > 10, seen
for words in seen:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(words + ["--help"])
        except SystemExit as exc:
            assert exc.code == 0, (words, exc.code)
    assert "usage:" in out.getvalue(), words
# reading the package metadata is for --version alone (a tenth of the start-up)
assert "importlib.metadata" not in sys.modules
"""


def test_help_of_every_command_loads_no_heavy_optional_dependency():
    assert _loaded_after(_EVERY_HELP) == []


_LAZY_NAMES = """
import sys
import quantbook
loaded = sorted(m for m in ('numpy', 'quantbook.codebooks', 'quantbook.bulk') if m in sys.modules)
assert loaded == [], loaded   # the console script must be running before these load (its Ctrl-C)
from quantbook.bulk import QuantState, dequantize, quantize
from quantbook.codebooks import REGISTRY, Codebook, CodebookError, get, load, names
for name in quantbook.__all__:
    assert name == "__version__" or getattr(quantbook, name) is globals()[name], name
star = {}
exec("from quantbook import *", star)
assert sorted(n for n in star if n != "__builtins__") == sorted(quantbook.__all__)
assert set(quantbook.__all__) <= set(dir(quantbook))
import quantbook.errors as errors
assert quantbook.errors is errors and quantbook.scales is sys.modules["quantbook.scales"]
for missing in ("no_such_name", "_private"):
    assert not hasattr(quantbook, missing), missing
print("ok")
"""


def test_importing_quantbook_loads_its_names_at_first_use():
    out = subprocess.run([sys.executable, "-c", _LAZY_NAMES], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def _cached_njit(dec) -> bool:
    """Whether a decorator is numba's ``njit``/``jit`` asked to cache on disk."""
    if not isinstance(dec, ast.Call):
        return False
    name = dec.func.attr if isinstance(dec.func, ast.Attribute) else getattr(dec.func, "id", "")
    return name in ("njit", "jit") and any(k.arg == "cache" and getattr(k.value, "value", False) for k in dec.keywords)


def test_numba_kernels_cached_on_disk_are_defined_at_module_level():
    """numba keys its disk cache by the function's closure: a cached kernel defined inside
    another function is compiled anew in every process and adds a cache file each time."""
    nested = []
    for path in sorted(checkout_path("quantbook").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for outer in ast.walk(tree):
            if isinstance(outer, (ast.FunctionDef, ast.AsyncFunctionDef)):
                nested += [f"{path.relative_to(ROOT)}:{f.lineno} {f.name}" for f in ast.walk(outer)
                           if f is not outer and isinstance(f, ast.FunctionDef)
                           and any(_cached_njit(d) for d in f.decorator_list)]
    assert nested == []


_SHOW = """
import contextlib, io, sys
from quantbook.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    assert main(["show", "nf4"]) == 0 and main(["list"]) == 0
assert "recipe: nf(bits=4, offset=0.9677083, precision=float32-bnb)" in out.getvalue(), out.getvalue()[:500]
print(sorted(m for m in ("quantbook.derive", "quantbook.verify", "scipy.stats", "sympy") if m in sys.modules))
"""


def test_showing_a_published_table_loads_no_derivation():
    # `show` prints the recipe of a table; the derivations (scipy.stats, over a second to import) are not needed
    out = subprocess.run([sys.executable, "-c", _SHOW], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"
