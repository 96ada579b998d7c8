"""A test's name says what it tests: no test function's name is defined in two test files (a
failure report, ``pytest -k NAME`` and a reader all take the name for one test)."""

import ast
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_test_name_is_in_two_files():
    files = defaultdict(set)
    for path in sorted(TESTS.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                files[node.name].add(path.name)
    shared = {name: sorted(where) for name, where in files.items() if len(where) > 1}
    assert shared == {}
