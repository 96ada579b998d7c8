"""The docstrings of the public API say what the signatures say.

Every public callable (each name in a module's ``__all__``, and the public methods of the public
classes) is read with :mod:`inspect`.  Where its docstring lists parameters (a numpydoc
``Parameters`` section, or entries ``name``: ... as this project writes them, two or more), it
lists only parameters the signature has, and mentions every one; an entry's stated default
(``(default 64)``, ``default: None``) is the signature's.  A function annotated to return a
dataclass names only its fields in the sentences that say what it returns, and a documented dict
has exactly the keys it is said to have.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import re
import typing

import pytest

from test_package_names import _modules

_CONSTANTS = {"None", "True", "False"}


def public_callables() -> dict[str, object]:
    """``{qualified name: callable}``: what every ``__all__`` lists, and the public methods of the
    classes among them (each object once, under the first name that lists it)."""
    found: dict[str, object] = {}
    seen: set[int] = set()
    for name, module in sorted(_modules().items()):
        for attr in getattr(module, "__all__", ()):
            obj = getattr(module, attr)
            if not callable(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            found[f"{name}.{attr}"] = obj
            if inspect.isclass(obj):
                for meth, value in vars(obj).items():
                    value = getattr(value, "__func__", value)   # classmethod, staticmethod
                    if not meth.startswith("_") and inspect.isfunction(value) and id(value) not in seen:
                        seen.add(id(value))
                        found[f"{name}.{attr}.{meth}"] = value
    return found


def parameters(obj) -> dict[str, inspect.Parameter]:
    """The named parameters a caller passes (no ``self``, ``*args``, ``**kwargs``)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):   # a builtin or a numba dispatcher without one
        return {}
    return {n: p for n, p in sig.parameters.items()
            if n not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def docstring(obj) -> str:
    """The object's own docstring (a class's, not one inherited or made up by dataclasses)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
    return inspect.cleandoc(doc or "")


#: an entry where a sentence or the docstring begins: ``name``, ``a``/``b`` or ``a``, ``b``, a type
#: in brackets, a colon
_ENTRY = re.compile(r"(?:^|(?<=[.;:]\s)|(?<=\n\n))\s*(``\w+``(?:(?:/|, | and )``\w+``)*)(?: \([^()]*\))?:(?!:)")


def entries(doc: str) -> tuple[list[tuple[list[str], str]], bool]:
    """The docstring's parameter entries, ``[(names, text up to the next entry)]`` in order, and
    whether it has a ``Parameters`` section."""
    found: list[tuple[list[str], int, int]] = []
    m = re.search(r"^(Parameters|Args|Arguments):?\n(-+\n)?", doc, re.M)
    if m:   # `name:` or `name : type` lines at the section's indent, up to the first other line
        section = doc[m.end():]
        indent = re.match(r"[ \t]*", section).group(0)
        pos = m.end()
        for line in section.splitlines(keepends=True):
            head = re.match(re.escape(indent) + r"(\w+(?:, \w+)*)\s*(?:\([^()]*\))?\s*:", line)
            if head:
                found.append(([n.strip() for n in head.group(1).split(",")], pos, pos + len(line)))
            elif line.strip() and not line.startswith((indent + " ", indent + "\t")):
                break
            pos += len(line)
    for e in _ENTRY.finditer(doc):
        found.append((re.findall(r"``(\w+)``", e.group(1)), e.start(1), e.end()))
    found.sort(key=lambda f: f[1])
    out = []
    for i, (names, _, end) in enumerate(found):
        stop = found[i + 1][1] if i + 1 < len(found) else len(doc)
        out.append(([n for n in names if n not in _CONSTANTS], doc[end:stop]))
    return out, m is not None


_DEFAULT = re.compile(r"\(default:? (``[^`]+``|[-\w.]+)\)|default(?: is|:)? (``[^`]+``|-?\d[\w.]*|None|True|False)\b")


def stated_default(text: str):
    """The literal an entry states as its default, or ``...`` where it states none (or a word)."""
    m = _DEFAULT.search(text)
    if not m:
        return ...
    try:
        return ast.literal_eval((m.group(1) or m.group(2)).strip("`"))
    except (ValueError, SyntaxError):
        return ...


CALLABLES = public_callables()
LISTING = {q: obj for q, obj in CALLABLES.items() if entries(docstring(obj))[0] and parameters(obj)}


def test_the_walk_finds_the_api():
    assert {"quantbook.quantize", "quantbook.bulk.quantize_vq", "quantbook.Codebook.encode",
            "quantbook.derive.nf", "quantbook.model.quality.WeightSwap.apply"} <= set(CALLABLES)
    assert {"quantbook.quantize", "quantbook.Codebook", "quantbook.bulk.quantize_vq"} <= set(LISTING)


def test_entries_are_read_as_written():
    doc = ("What it does.  ``a``: one; ``b``/``c``: two (default 64).\n\n"
           "Parameters\n----------\nd, e:\n    three (default: ``\"x\"``)\nf : int\n    four\n\nReturns it.")
    found, section = entries(doc)
    assert section and [names for names, _ in found] == [["a"], ["b", "c"], ["d", "e"], ["f"]]
    assert [stated_default(text) for _, text in found] == [..., 64, "x", ...]
    assert entries("``float8_e4m3fn`` (and torch's cast): a dtype\nnamed mid-sentence")[0] == [
        (["float8_e4m3fn"], " a dtype\nnamed mid-sentence")]   # where a docstring begins, it is an entry
    assert entries("as ml_dtypes'\n``float8_e4m3fn`` (and torch's cast): no entry")[0] == []


@pytest.mark.parametrize("qualname", sorted(LISTING))
def test_documented_parameters_are_the_signature_s(qualname):
    obj = LISTING[qualname]
    params, doc = parameters(obj), docstring(obj)
    found, section = entries(doc)
    named = {n for names, _ in found for n in names}
    assert sorted(named - set(params)) == [], f"{qualname} documents parameters it does not take"
    if section or len(found) >= 2:   # a list of the parameters: all of them
        mentioned = named | set(re.findall(r"``(\w+)``", doc))
        assert sorted(set(params) - mentioned) == [], f"{qualname} lists its parameters but not these"
    for names, text in found:
        want = stated_default(text)
        for name in names:
            if want is not ... and params[name].default is not inspect.Parameter.empty:
                assert params[name].default == want, f"{qualname}: the default {name} is said to have"


def _returned_dataclass(obj):
    try:
        kind = typing.get_type_hints(obj).get("return")
    except Exception:   # an annotation that names what only a type checker imports
        return None
    return kind if inspect.isclass(kind) and dataclasses.is_dataclass(kind) else None


RETURNING = {q: obj for q, obj in CALLABLES.items() if not inspect.isclass(obj) and _returned_dataclass(obj)}


def test_the_walk_finds_dataclass_returns():
    assert {"quantbook.derive.evaluate", "quantbook.model.evaluate_model"} <= set(RETURNING)


@pytest.mark.parametrize("qualname", sorted(RETURNING))
def test_what_is_said_to_be_returned_is_a_field(qualname):
    obj = RETURNING[qualname]
    kind = _returned_dataclass(obj)
    said = {n for sentence in re.findall(r"[^.]*\b[Rr]eturns?\b[^.]*\.", docstring(obj))
            for n in re.findall(r"``(\w+)``", sentence)}
    known = {f.name for f in dataclasses.fields(kind)} | set(dir(kind)) | set(parameters(obj))
    assert sorted(said - known) == [], f"{qualname} returns a {kind.__name__}, which has no such field"


def _dict_keys(doc: str) -> set[str]:
    """The keys a "Returns a dict: ``k`` (...), ``k2``" paragraph names (outside its brackets)."""
    text = doc.split("Returns a dict:", 1)[1].split("\n\n")[0]
    while re.search(r"\([^()]*\)", text):
        text = re.sub(r"\([^()]*\)", "", text)
    return set(re.findall(r"``(\w+)``", text))


def test_a_documented_dict_has_the_documented_keys():
    from quantbook import get
    from quantbook.verify.optimality import optimality_report

    said = [q for q, obj in CALLABLES.items() if "Returns a dict:" in docstring(obj)]
    assert said == ["quantbook.verify.optimality.optimality_report"]   # the one; another needs a case here
    got = optimality_report(get("max1960-n4").levels, "l2", None, "none", "normalized", "normal", [])
    assert set(got) == _dict_keys(docstring(optimality_report))


# --------------------------------------------------------------------------- cross-references
_ROLE = re.compile(r":(?:func|class|meth|data|mod|attr|exc):`([^`]+)`")


def _docstrings(module) -> list[tuple[int, str, tuple[str, ...]]]:
    """``(line, docstring, classes)`` of a module and of every class and function in its source,
    ``classes`` the names of the classes it is in (a class's own included), outermost first."""
    tree = ast.parse(inspect.getsource(module))
    found = [(1, ast.get_docstring(tree, clean=False) or "", ())]

    def visit(node, classes):
        for n in ast.iter_child_nodes(node):
            inner = classes
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = (*classes, n.name) if isinstance(n, ast.ClassDef) else classes
                found.append((n.lineno, ast.get_docstring(n, clean=False) or "", inner))
            visit(n, inner)

    visit(tree, ())
    return found


def _walk(obj, parts: list[str]) -> bool:
    """Whether ``obj.a.b...`` is there: an attribute, a submodule, or a dataclass field or annotation
    (which a class need not hold as an attribute)."""
    for part in parts:
        if hasattr(obj, part):
            obj = getattr(obj, part)
        elif hasattr(obj, "__path__") and importlib.util.find_spec(f"{obj.__name__}.{part}"):
            obj = importlib.import_module(f"{obj.__name__}.{part}")   # a package's submodule not yet loaded
        elif inspect.isclass(obj) and (part in getattr(obj, "__dataclass_fields__", {}) or
                                       part in vars(obj).get("__annotations__", {})):
            obj = None   # a field's value: nothing further to walk
        else:
            return False
    return True


def _resolves(module, classes: tuple[str, ...], target: str) -> bool:
    """Whether a reference resolves as Sphinx reads it here: a full dotted path ``quantbook.x.y``, a
    path relative to the module's package (``.sibling.name``, ``..parent.name``, as an import
    reads it), or a name the enclosing classes or the module itself hold."""
    dots = len(target) - len(target.lstrip("."))
    parts = target.lstrip(".").split(".")
    if dots:
        package = module.__name__ if hasattr(module, "__path__") else module.__name__.rpartition(".")[0]
        parts = package.split(".")[:len(package.split(".")) - (dots - 1)] + parts
    if parts[0] == "quantbook":   # the longest module of the path, then its attributes
        # (quantbook.derive.lloyd is a module, though the package quantbook.derive holds the function lloyd)
        k = 1
        while k < len(parts) and hasattr(importlib.import_module(".".join(parts[:k])), "__path__") \
                and importlib.util.find_spec(".".join(parts[:k + 1])):
            k += 1
        return _walk(importlib.import_module(".".join(parts[:k])), parts[k:])
    scopes, obj = [], module
    for name in classes:   # a method's docstring may name its class's other members
        obj = getattr(obj, name, None)
        scopes.append(obj)
    return any(_walk(scope, parts) for scope in (*reversed(scopes), module) if scope is not None)


def test_the_reading_of_references():
    from quantbook.bulk.cpu import backend as cpu_backend
    from quantbook.derive import metrics

    assert _resolves(cpu_backend, (), "quantbook.numerics.parallel.unavailable")
    assert _resolves(cpu_backend, (), "parallel.unavailable")             # the module imports parallel
    assert not _resolves(cpu_backend, (), ".parallel.unavailable")        # quantbook.bulk.cpu has none
    assert _resolves(cpu_backend, (), "..layouts") and _resolves(metrics, (), ".scaled.check_scale")
    assert _resolves(metrics, ("Evaluation",), "mse_weight")              # a dataclass field, no attribute
    assert not _resolves(metrics, (), "BlockDistribution")                # quantbook.derive's, not imported here


def test_cross_references_name_what_is_there():
    """``:meth:`reference_metrics``` in a docstring names something, where it is written: a full
    dotted path (``quantbook.x.y``), a path relative to its module's package, or a name its module
    or class holds (a name that only some other module holds resolves nowhere); or a library that
    imports (``numpy.ndarray``)."""
    stale, seen = [], 0
    for module_name, module in _modules().items():
        for line, doc, classes in _docstrings(module):
            for target in _ROLE.findall(doc):
                target = target.split("<")[-1].rstrip(">").lstrip("~!")
                seen += 1
                head = target.split(".")[0]
                if head and head != "quantbook" and head not in vars(module) and importlib.util.find_spec(head):
                    continue   # numpy.ndarray, scipy.stats, os.PathLike
                if not _resolves(module, classes, target):
                    stale.append(f"{module_name}:{line}: {target}")
    assert seen > 500 and stale == []
