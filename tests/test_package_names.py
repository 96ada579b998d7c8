"""``import quantbook`` loads its public names at first use (PEP 562): they are listed, found and
absent as eagerly imported names were, in a fresh process where none has loaded yet."""
import ast
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys

import pytest

import quantbook

from checkout import ROOT, checkout_path


def _fresh(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


def test_names_are_listed_before_they_load():
    # dir() and inspect.getmembers see every public name before its first use (completion, pydoc)
    out = _fresh("import sys, quantbook; print(sorted(set(quantbook.__all__) - set(dir(quantbook))), "
                 "'numpy' in sys.modules)")
    assert out == "[] False"


def test_a_missing_name_is_an_attribute_error():
    assert not hasattr(quantbook, "no_such_name")
    assert getattr(quantbook, "no_such_subpackage", 7) == 7
    assert _fresh("import quantbook; print(hasattr(quantbook, 'no_such_name'))") == "False"


def test_star_import_and_threads_in_a_fresh_process():
    code = ("import threading, quantbook\n"
            "got = []\n"
            "ts = [threading.Thread(target=lambda n=n: got.append(getattr(quantbook, n)))\n"
            "      for n in quantbook.__all__ * 2]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "ns = {}\nexec('from quantbook import *', ns)\n"
            "print(len(got) == 2 * len(quantbook.__all__),\n"
            "      all(ns[n] is getattr(quantbook, n) for n in quantbook.__all__))")
    assert _fresh(code) == "True True"


def test_the_type_checkers_names_are_the_loaded_ones():
    tree = ast.parse(checkout_path("quantbook", "__init__.py").read_text(encoding="utf-8"))
    seen = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for imp in node.body:
                for alias in imp.names:
                    seen[alias.name] = imp.module
    assert seen == quantbook._HOMES
    assert set(seen) | {"__version__"} == set(quantbook.__all__)


def test_a_subpackage_is_an_attribute_before_it_is_imported():
    # eager imports made quantbook.derive, quantbook.export ... attributes of the package; a
    # private name is never looked for as a module (quantbook._x is an AttributeError, not an import)
    out = _fresh("import sys, quantbook\n"
                 "before = 'quantbook.export' in sys.modules\n"
                 "print(before, quantbook.export.__name__, quantbook.derive.__name__, hasattr(quantbook, '_HOMESX'))")
    assert out == "False quantbook.export quantbook.derive False"


def test_the_command_lines_names_are_listed_before_they_load():
    # the quantbook.cli package loads UsageError at first use (its Ctrl-C): dir() lists it before, as when the
    # package imported it eagerly
    out = _fresh("import sys, quantbook.cli as c; print(sorted(set(c.__all__) - set(dir(c))), 'numpy' in sys.modules, "
                 "c.UsageError.__module__)")
    assert out == "[] False quantbook.cli.common"


def _modules():
    """Every module of the package (the command line's ``__main__`` runs it, so it is left out)."""
    found = {"quantbook": quantbook}
    for info in pkgutil.walk_packages(quantbook.__path__, "quantbook."):
        if not info.name.endswith(".__main__"):
            found[info.name] = importlib.import_module(info.name)
    return found


def _undocumented(obj) -> bool:
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj)):
        return False   # a constant: documented where it is assigned
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    # a dataclass without a docstring gets its signature as one
    return not doc or (inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("))


@pytest.mark.skipif(sys.flags.optimize >= 2, reason="python -OO strips docstrings")
def test_every_listed_name_exists_and_has_a_docstring():
    missing, undocumented = [], []
    for name, module in _modules().items():
        if not module.__doc__:
            undocumented.append(name)
        for attr in getattr(module, "__all__", ()):
            if not hasattr(module, attr):
                missing.append(f"{name}.{attr}")
            elif _undocumented(getattr(module, attr)):
                undocumented.append(f"{name}.{attr}")
    assert missing == [] and undocumented == []


def test_the_packages_list_their_public_names():
    packages = [n for n, m in _modules().items() if hasattr(m, "__path__")]
    # numerics is a namespace of modules a star-import should not load (numba's threads among them)
    assert [n for n in packages if not hasattr(sys.modules[n], "__all__")] == ["quantbook.numerics"]

