"""What counts as an integer argument (``quantbook.numerics.arguments``): one rule, read by every
public function.  The oracle is the table below, written from the rule's definition (a Python or
numpy integer, not a bool; an integral float is not an integer), and a scan of the package's
source for integer tests written inline beside it."""

from __future__ import annotations

import ast
from fractions import Fraction

import numpy as np
import pytest

from quantbook.numerics.arguments import check_int, is_int

from checkout import ROOT, checkout_path


INTEGERS = [0, 7, -3, 2**70, np.int8(5), np.uint64(2**63), np.int64(-1), np.intp(64)]
NOT_INTEGERS = [True, False, np.bool_(True), 2.0, np.float32(3), Fraction(4), "4", b"4", None, [4],
                np.array(4), np.array([4]), 4 + 0j]


@pytest.mark.parametrize("v", INTEGERS, ids=repr)
def test_integers_are_read_as_python_ints(v):
    assert is_int(v)
    out = check_int(v, "n")
    assert type(out) is int and out == int(v)


@pytest.mark.parametrize("v", NOT_INTEGERS, ids=repr)
def test_everything_else_is_refused_naming_the_argument(v):
    assert not is_int(v)
    with pytest.raises(ValueError, match=r"^block_size must be an integer, got "):
        check_int(v, "block_size")


@pytest.mark.parametrize("value, lo, hi, wanted", [
    (-1, 0, None, "a non-negative integer"),
    (0, 1, None, "a positive integer"),
    (1, 2, None, "an integer >= 2"),
    (5, 0, 4, "an integer from 0 to 4"),
    (-1, 0, 4, "an integer from 0 to 4"),
    (9, None, 8, "an integer <= 8"),
])
def test_bounds_are_inclusive_and_said(value, lo, hi, wanted):
    with pytest.raises(ValueError) as e:
        check_int(value, "k", lo, hi)
    assert str(e.value) == f"k must be {wanted}, got {value!r}"
    if lo is not None:
        assert check_int(lo, "k", lo, hi) == lo
    if hi is not None:
        assert check_int(hi, "k", lo, hi) == hi


def test_what_else_is_taken_and_the_error_class():
    class OwnError(ValueError):
        pass

    with pytest.raises(OwnError, match=r"^knots must be an integer >= 2 or None, got 1$"):
        check_int(1, "knots", 2, also=" or None", error=OwnError)
    with pytest.raises(ValueError, match=r"^n must be an integer, got array\(\[0, 0, 0,"):
        check_int(np.zeros(1000, np.int64), "n")   # one line, clipped, however long the value's repr


def _types(node) -> set[str]:
    elts = node.elts if isinstance(node, ast.Tuple) else [node]
    return {ast.unparse(e) for e in elts}


def _inline_integer_tests(tree):
    """`isinstance(v, bool) or not isinstance(v, (int, np.integer))` and its spellings: a bool test
    and an integer-only type test (no float beside it) in one boolean expression."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.BoolOp):
            continue
        calls = [n for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                 and n.func.id == "isinstance" and len(n.args) == 2]
        kinds = [_types(c.args[1]) for c in calls]
        has_bool = any(k & {"bool", "np.bool_"} for k in kinds)
        int_only = any(k & {"int", "np.integer", "numbers.Integral", "Integral"}
                       and not k & {"float", "np.floating", "numbers.Real"} and not k & {"bool", "np.bool_"}
                       for k in kinds)
        if has_bool and int_only:
            yield node.lineno


def test_the_integer_rule_is_written_once():
    home = checkout_path("quantbook", "numerics", "arguments.py")
    found = [f"{path.relative_to(ROOT)}:{line}"
             for path in sorted(checkout_path("quantbook").rglob("*.py")) if path != home
             for line in _inline_integer_tests(ast.parse(path.read_text(encoding="utf-8")))]
    assert not found, f"integer tests written inline (use numerics.arguments.is_int / check_int): {found}"


def test_the_scan_finds_the_spellings_it_is_for():
    for text in ("isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1",
                 "isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral)",
                 "isinstance(v, Integral) and not isinstance(v, bool)"):
        assert list(_inline_integer_tests(ast.parse(text))), text
    for text in ("isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))",
                 "isinstance(v, (int, np.integer)) and abs(int(v)) > 2**53"):
        assert not list(_inline_integer_tests(ast.parse(text))), text
