"""Write docs/api.md, the reference of quantbook's public Python API, from the code itself.

    python docs/make_api.py > docs/api.md     # regenerate
    python docs/make_api.py --check           # exit 1 where docs/api.md is out of date

Each module's ``__all__`` in order: a callable with its signature (annotations left out, defaults
written the same on every Python and numpy version), a class with its public methods and
properties, a constant with the ``#:`` comment above its assignment; each with the first sentence
of its docstring.  No Sphinx: :mod:`inspect` and :mod:`ast` only.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import inspect
import re
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parent / "api.md"
COMMAND = "python docs/make_api.py > docs/api.md"

#: the modules users import (README.md and docs/*.md import from these), in the page's order
MODULES = ["quantbook", "quantbook.bulk", "quantbook.bulk.vq", "quantbook.codebooks", "quantbook.codebooks.vector",
           "quantbook.derive", "quantbook.derive.vq", "quantbook.scales", "quantbook.naming", "quantbook.export",
           "quantbook.verify", "quantbook.model", "quantbook.model.quality", "quantbook.plots", "quantbook.io",
           "quantbook.errors"]
#: modules a backend's author reads, named with their summary only (their names are the backends' hooks)
BACKEND_MODULES = ["quantbook.bulk.format", "quantbook.bulk.sums", "quantbook.bulk.layouts", "quantbook.bulk.scaled"]

_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "resp.")


def _rst_to_markdown(text: str) -> str:
    """``x`` and :role:`~a.b` as markdown spans."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"``\1``", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def first_sentence(doc: str | None) -> str:
    """The docstring's first sentence (of its first paragraph), on one line."""
    paragraph = inspect.cleandoc(doc or "").split("\n\n")[0]
    text = " ".join(paragraph.split())
    spans = [m.span() for m in re.finditer(r"``[^`]*``|`[^`]*`|\([^()]*\)", text)]
    for m in re.finditer(r"[.!?](?=\s|$)", text):
        end = m.end()
        if any(a < end <= b for a, b in spans) or text[:end].endswith(_ABBREVIATIONS):
            continue
        text = text[:end]
        break
    return _rst_to_markdown(text)


def _own_doc(obj) -> str | None:
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__")
        # dataclasses make one up from the signature; that says nothing the page does not show
        if dataclasses.is_dataclass(obj) and doc and doc.startswith(obj.__name__ + "("):
            return None
        return doc
    return getattr(obj, "__doc__", None)


def default_text(value, param_name: str = "") -> str:
    """A default as its source would write it; never an address or a version-dependent repr."""
    if value is None or isinstance(value, (bool, int, str, bytes)) and not isinstance(value, enum.Enum):
        return repr(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, tuple):
        items = [default_text(v) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(default_text(v) for v in value) + "]"
    if isinstance(value, (frozenset, set)):   # sorted: a set of strings iterates in a per-process order
        items = "{" + ", ".join(sorted(default_text(v) for v in value)) + "}"
        return f"frozenset({items})" if isinstance(value, frozenset) else items
    if inspect.isclass(value) or inspect.isfunction(value) or inspect.isbuiltin(value):
        return value.__name__
    if type(value).__module__ == "numpy":   # numpy 2 writes np.float64(1.0), numpy 1 writes 1.0
        return repr(value.item())
    raise TypeError(f"no rendering of the default {param_name}={value!r} ({type(value).__name__}): "
                    "teach docs/make_api.py's default_text")


def signature(obj, drop_first: bool = False) -> str:
    """``(a, b=1, *, c=None)``: the parameters without annotations."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    fields = {f.name: f for f in dataclasses.fields(obj)} if inspect.isclass(obj) and \
        dataclasses.is_dataclass(obj) else {}
    params = list(sig.parameters.values())[1 if drop_first else 0:]
    out, star_done, slash_pending = [], False, False
    for p in params:
        if slash_pending and p.kind != p.POSITIONAL_ONLY:
            out.append("/")
            slash_pending = False
        if p.kind == p.POSITIONAL_ONLY:
            slash_pending = True
        if p.kind == p.KEYWORD_ONLY and not star_done:
            out.append("*")
            star_done = True
        if p.kind == p.VAR_POSITIONAL:
            out.append("*" + p.name)
            star_done = True
            continue
        if p.kind == p.VAR_KEYWORD:
            out.append("**" + p.name)
            continue
        if p.default is p.empty:
            out.append(p.name)
        elif p.name in fields and fields[p.name].default_factory is not dataclasses.MISSING:
            factory = fields[p.name].default_factory
            out.append(f"{p.name}={factory.__name__}()" if factory.__name__ != "<lambda>" else f"{p.name}=...")
        else:
            out.append(f"{p.name}={default_text(p.default, p.name)}")
    if slash_pending:
        out.append("/")
    return "(" + ", ".join(out) + ")"


def _constant_comment(module, name: str, value) -> str:
    """The ``#:`` comment above ``NAME = ...`` in the module that defines the constant."""
    homes = [module] + sorted((m for n, m in list(sys.modules.items()) if n.startswith("quantbook.") and m
                               and m is not module and vars(m).get(name, object()) is value), key=lambda m: m.__name__)
    for home in homes:
        try:
            source = inspect.getsource(home)
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        for node in ast.parse(source).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, ast.AnnAssign) else []
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                i, comment = node.lineno - 2, []
                while i >= 0 and lines[i].lstrip().startswith("#:"):
                    comment.insert(0, lines[i].lstrip()[2:].strip())
                    i -= 1
                if comment:
                    return first_sentence(" ".join(comment))
    return ""


def _constant_kind(value) -> str:
    """`` = value`` for a number or a tuple of plain literals (the same text everywhere), else the type."""
    plain = (bool, int, float, str)
    if isinstance(value, plain) and not isinstance(value, (str, enum.Enum)) or \
            isinstance(value, tuple) and all(isinstance(v, plain) and not isinstance(v, enum.Enum) for v in value):
        return f" = {default_text(value)}"
    return f": {type(value).__name__}"


def _line(span: str, summary: str, indent: str = "") -> str:
    return f"{indent}- `{span}`" + (f": {summary}" if summary else "")


def _members(cls) -> list[str]:
    """The class's own public methods and properties, in definition order."""
    lines = []
    for attr, raw in vars(cls).items():
        if attr.startswith("_"):
            continue
        if isinstance(raw, property) or type(raw).__name__ == "cached_property":
            fget = raw.fget if isinstance(raw, property) else raw.func
            lines.append(_line(f"{cls.__name__}.{attr}", first_sentence(fget.__doc__), "  "))
        elif isinstance(raw, (classmethod, staticmethod)) or inspect.isfunction(raw):
            func = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
            drop = not isinstance(raw, staticmethod)
            kind = "classmethod " if isinstance(raw, classmethod) else "staticmethod " \
                if isinstance(raw, staticmethod) else ""
            lines.append(_line(f"{cls.__name__}.{attr}{signature(func, drop)}",
                               ((f"({kind.strip()}) " if kind else "") + first_sentence(func.__doc__)).strip(), "  "))
    return lines


def _entry(module, name: str, seen: dict[int, str]) -> list[str]:
    value = getattr(module, name)
    if name == "__version__":   # computed at first use from the installed metadata
        from quantbook.version import installed_version

        return [_line("__version__: str", first_sentence(installed_version.__doc__))]
    if not isinstance(value, (bool, int, float, str)) and id(value) in seen:
        return [_line(name, f"the same object as `{seen[id(value)]}`, above")]
    seen[id(value)] = f"{module.__name__}.{name}"
    if inspect.ismodule(value):
        return [_line(value.__name__, first_sentence(value.__doc__))]
    if inspect.isclass(value):
        bases = [b.__name__ for b in value.__bases__ if b is not object]
        kind = "exception" if issubclass(value, BaseException) and not issubclass(value, Warning) else \
            "warning" if issubclass(value, Warning) else "class"
        head = f"{kind}" + (f", a {' and '.join(bases)}" if bases else "")
        if issubclass(value, BaseException) and "__init__" not in vars(value):
            span = name
        else:
            span = name + signature(value)
        return [_line(span, f"({head}) {first_sentence(_own_doc(value))}".rstrip())] + _members(value)
    if callable(value):
        return [_line(name + signature(value), first_sentence(_own_doc(value)))]
    del seen[id(value)]   # a constant's value may be shared by chance (a small tuple)
    return [_line(name + _constant_kind(value), _constant_comment(module, name, value))]


def render() -> str:
    out = ["# Python API reference", "",
           "Every name that the packages below export (their `__all__`), with its signature and the first",
           "sentence of its docstring (the docstrings say the rest: `help(quantbook.quantize)`). Annotations",
           f"are left out. The page is written by `{COMMAND}`",
           "from the code; tests/test_docs_api.py fails where it is out of date.", ""]
    out += [f"- [{name}](#{name.replace('.', '')})" for name in MODULES]
    out += ["- [For backend authors](#for-backend-authors)", ""]
    seen: dict[int, str] = {}
    for name in MODULES:
        module = importlib.import_module(name)
        out += [f"## {name}", "", first_sentence(module.__doc__), ""]
        for attr in module.__all__:
            out += _entry(module, attr, seen)
        out.append("")
    out += ["## For backend authors", "",
            "A backend subclasses `quantbook.bulk.Backend` (a vector codebook's: `quantbook.bulk.vq.VQBackend`),",
            "whose methods are listed above; these modules hold the rules every backend shares:", ""]
    out += [_line(name, first_sentence(importlib.import_module(name).__doc__)) for name in BACKEND_MODULES]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv == ["--check"]:
        if not PAGE.exists() or PAGE.read_text(encoding="utf-8") != text:
            print(f"docs/api.md is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    if argv:
        print(f"usage: {COMMAND}  |  python docs/make_api.py --check", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
