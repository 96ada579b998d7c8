"""No dead private names: every module-level private function, class or constant of the
package, its tests and its benchmarks is read somewhere (pyflakes reports unused imports
and locals, not these).

A name counts as read when its own file names it again (code, a string or a comment: a name
reached through ``globals()`` or ``getattr`` is spelt somewhere), or another file imports it,
reads it as an attribute (``module._name``) or spells it as a string (``monkeypatch.setattr``).
Decorated functions and classes given keywords are left out: a decorator (numba's
``overload``) or ``__init_subclass__`` registers them, and nothing then names them again."""

import ast
import re
from collections import Counter

from checkout import checkout_path

ROOT = checkout_path()  # the source tree it reads; outside a checkout the module skips


def _private_definitions(tree: ast.Module):
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            registered = node.decorator_list or (isinstance(node, ast.ClassDef) and node.keywords)
            if not registered:
                yield node.name, node.lineno
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        yield name.id, node.lineno


def _reached_from_outside(tree: ast.Module) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.add(node.value)
    return out


def test_every_private_module_level_name_is_read():
    paths = [p for folder in ("quantbook", "tests", "benchmarks") for p in sorted((ROOT / folder).rglob("*.py"))]
    texts = {p: p.read_text(encoding="utf-8") for p in paths}
    trees = {p: ast.parse(t) for p, t in texts.items()}
    outside = {p: _reached_from_outside(tree) for p, tree in trees.items()}
    dead = []
    for path, tree in trees.items():
        words = Counter(re.findall(r"\w+", texts[path]))
        for name, line in _private_definitions(tree):
            if not name.startswith("_") or name.startswith("__"):
                continue
            if words[name] >= 2 or any(name in names for p, names in outside.items() if p != path):
                continue
            dead.append(f"{path.relative_to(ROOT)}:{line} {name}")
    assert not dead, f"private names nothing reads (remove them): {dead}"
