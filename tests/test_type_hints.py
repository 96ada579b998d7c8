"""The package's type hints ship and stay true (PEP 561).

``quantbook/py.typed`` tells mypy and pyright that the installed package carries its own hints;
without it they skip it ("missing library stubs or py.typed marker") and check no call into it.

Every public callable, as :func:`test_docstrings.public_callables` walks them (each ``__all__``,
the public methods of the classes listed), with each such class's ``__init__`` and properties,
annotates every parameter (but ``self``/``cls``) and its return (but ``__init__``'s).  Exempt:
numba's kernels, whose hints numba ignores: the modules named ``*kernels*`` and any function
numba compiles (it carries ``py_func``).  A method that overrides an annotated method of a
quantbook base class inherits the base's contract: it repeats the base's annotations, parameter
by parameter and for the return (a parameter of its own is annotated as any other).

And mypy, with pyproject.toml's settings, reads the whole package without an error.
"""

from __future__ import annotations

import importlib.resources
import inspect
import os
import re
import subprocess
import sys
from fnmatch import fnmatch

import pytest

from checkout import ROOT, checkout_path
from test_docstrings import public_callables

#: ``module.qualname`` -> why it is left as it is: a public callable without hints, or an override
#: whose annotations are not its base's
ALLOWED: dict[str, str] = {
    # a narrower return than Recipe.from_dict's: each recipe class reads its own
    "quantbook.derive.vq.VQRecipe.from_dict": "returns its own class",
    # a vector recipe derives a VectorCodebook, which is no Codebook: Recipe.derive's contract does not
    # hold for it (mypy reports the override)
    "quantbook.derive.vq.VQRecipe.derive": "derives a vector codebook",
}


def _numba_kernel(obj) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return fnmatch(module.rsplit(".", 1)[-1], "*kernels*") or hasattr(obj, "py_func")


def _function(obj):
    """The Python function behind a method, classmethod, staticmethod, property or a cached or
    wrapped function (functools.lru_cache), or None."""
    obj = getattr(obj, "__func__", obj)
    obj = obj.fget if isinstance(obj, property) else obj
    obj = inspect.unwrap(obj) if callable(obj) else obj
    return obj if inspect.isfunction(obj) else None


def _class_members(cls) -> dict[str, object]:
    """The class's own ``__init__`` and public properties (public_callables has its methods)."""
    return {name: value for name, value in vars(cls).items()
            if name == "__init__" or (isinstance(value, property) and not name.startswith("_"))}


def checked_callables() -> dict[str, object]:
    """``{module.qualname: function}`` of every public callable the hints cover."""
    found: dict[str, object] = {}
    for obj in public_callables().values():
        members = _class_members(obj).values() if inspect.isclass(obj) else ()
        for value in (obj, *members):
            if _numba_kernel(value):
                continue
            fn = _function(value)
            if fn is not None and not _numba_kernel(fn):
                found.setdefault(f"{fn.__module__}.{fn.__qualname__}", fn)
    return found


def _parameters(fn) -> list[inspect.Parameter]:
    params = list(inspect.signature(fn).parameters.values())
    return params[1:] if params and params[0].name in ("self", "cls") else params


def gaps(fn) -> list[str]:
    """The names of ``fn``'s parameters without an annotation, and ``return`` when it has none."""
    missing = [p.name for p in _parameters(fn) if p.annotation is p.empty]
    if fn.__name__ != "__init__" and inspect.signature(fn).return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


def _text(annotation) -> str:
    if annotation is inspect.Parameter.empty:
        return "none"
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def base_method(cls, name: str):
    """The nearest quantbook base class's annotated function ``name`` that ``cls`` overrides, or None."""
    for base in cls.__mro__[1:]:
        if name in vars(base):
            fn = _function(vars(base)[name])
            ok = fn is not None and base.__module__.startswith("quantbook.") and not gaps(fn)
            return fn if ok else None
    return None


def contract_breaks(fn, base) -> list[str]:
    """Where the override ``fn`` does not repeat the annotations of ``base``."""
    own = {p.name: p for p in _parameters(fn)}
    out = [f"{p.name}: {_text(p.annotation)} in the base, {_text(own[p.name].annotation)} here"
           for p in _parameters(base) if p.name in own and _text(own[p.name].annotation) != _text(p.annotation)]
    out += [f"{p.name}: missing here" for p in _parameters(base) if p.name not in own
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    ret, base_ret = inspect.signature(fn).return_annotation, inspect.signature(base).return_annotation
    if _text(ret) != _text(base_ret):
        out.append(f"return: {_text(base_ret)} in the base, {_text(ret)} here")
    return out


CHECKED = checked_callables()


def test_the_walk_finds_what_users_call():
    for name in ("quantbook.bulk.api.quantize", "quantbook.derive.sources.Source.pdf",
                 "quantbook.derive.block.BlockDistribution.rvs", "quantbook.model.quality.Task.__init__",
                 "quantbook.scales.rule.ScaleRule.name", "quantbook.bulk.cpu.backend.NumbaBackend.quantize_blocks"):
        assert name in CHECKED, name
    assert not any(fnmatch(name, "*kernels*") for name in CHECKED)
    assert len(CHECKED) > 500


def test_the_rules_read_a_signature_as_written():
    def bare(x, y: int = 1, *args, **kw): ...

    def hinted(x: int, *args: int, **kw: str) -> None: ...

    assert gaps(bare) == ["x", "args", "kw", "return"] and gaps(hinted) == []

    class Base:
        def hook(self, a: int, b: str = "") -> float: ...

    class Same(Base):
        def hook(self, a: int, b: str = "", c: bool = False) -> float: ...

    class Other(Base):
        def hook(self, a: float, b: str = "") -> int: ...

    base = vars(Base)["hook"]
    assert contract_breaks(vars(Same)["hook"], base) == []
    assert contract_breaks(vars(Other)["hook"], base) == ["a: int in the base, float here",
                                                          "return: float in the base, int here"]


def test_every_public_callable_is_annotated():
    missing = {name: gaps(fn) for name, fn in CHECKED.items() if gaps(fn) and name not in ALLOWED}
    assert missing == {}, f"annotate them (or say why in ALLOWED): {missing}"


def test_an_override_repeats_its_base_s_annotations():
    broken = {}
    for name, fn in CHECKED.items():
        owner = getattr(sys.modules[fn.__module__], fn.__qualname__.split(".")[0], None)
        if not inspect.isclass(owner) or fn.__name__.startswith("__"):
            continue
        base = base_method(owner, fn.__name__)
        if base is not None and contract_breaks(fn, base) and name not in ALLOWED:
            broken[name] = contract_breaks(fn, base)
    assert broken == {}


def test_the_package_carries_its_py_typed_marker():
    # pyproject.toml's package data takes it into the wheel (tests/test_packaging.py)
    assert (importlib.resources.files("quantbook") / "py.typed").is_file()


_USER_SCRIPT = """
import numpy as np

import quantbook
from quantbook.derive import Normal, evaluate

cb = quantbook.get("nf4")
packed, state = quantbook.quantize(np.zeros(64, np.float32), cb)
reveal_type(state)
reveal_type(Normal().pdf(0.5))
reveal_type(evaluate(cb).mse_weight)
n = cb.code.size + quantbook.Codebook([0.0, 1.0], 1, code=None).code.size   # the table is always there
quantbook.get(4)
"""


def test_mypy_reads_the_package_s_hints_in_a_user_s_script(tmp_path):
    """A user's script, checked by mypy against the package as installed (a checkout's on
    PYTHONPATH, which mypy reads as it reads site-packages: it needs py.typed there too): the
    hints are read, and a wrong call is an error.  Some seconds, with a cold cache."""
    pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy)")
    (tmp_path / "user.py").write_text(_USER_SCRIPT, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}   # MYPYPATH would read it as the user's code
    if (ROOT / "quantbook" / "__init__.py").is_file():
        env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-m", "mypy", "user.py", "--cache-dir", str(tmp_path / "cache"),
                        "--no-error-summary", "--hide-error-context"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert "import-untyped" not in out, out
    # older mypy spells builtins and unions out (builtins.float, Union[...])
    revealed = [t.replace("builtins.", "") for t in re.findall(r'Revealed type is "(.*)"', out)]
    assert len(revealed) == 3, out
    assert revealed[0] == "quantbook.bulk.state.QuantState", out
    # numpy before 2 spells float64 numpy.floating[numpy._typing._64Bit]
    assert "float" in revealed[1] and "numpy.ndarray[" in revealed[1], out
    assert re.search(r"numpy\.(float64|floating\[numpy\._typing\._64Bit\])", revealed[1]), out
    assert revealed[2] == "float", out
    errors = re.findall(r"^user\.py:(\d+): error: (.*)$", out, re.M)
    assert errors == [("13", 'Argument 1 to "get" has incompatible type "int"; expected "str"  [arg-type]')], out


def test_mypy_reads_the_package_clean(tmp_path):
    """``mypy quantbook`` in the checkout, with pyproject.toml's ``[tool.mypy]``, reports no error;
    each one found is named.  A fresh cache each run: its time is in
    docs/benchmarks.md, "mypy over the package"."""
    pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy)")
    config = checkout_path("pyproject.toml")
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    r = subprocess.run([sys.executable, "-m", "mypy", "quantbook", "--config-file", str(config),
                        "--cache-dir", str(tmp_path / "cache"), "--no-error-summary", "--hide-error-context",
                        "--no-pretty", "--show-error-codes"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    errors = [(m.group(1).replace(os.sep, "/"), m.group(0)) for m in re.finditer(r"^(\S+?):\d+: error: .*$", out, re.M)]
    # status 1 with errors, 0 without; 2 (or a crash): mypy could not check, and says why
    assert r.returncode == (1 if errors else 0), out
    assert errors == [], "mypy reports:\n" + "\n".join(line for _, line in errors)
