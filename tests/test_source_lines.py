"""The house's line length: no line of the package, its tests or its benchmarks is over 120
characters (a reviewer reads them side by side)."""

from checkout import ROOT, checkout_path


def test_no_python_line_is_over_120_characters():
    long = [f"{path.relative_to(ROOT)}:{n}"
            for folder in ("quantbook", "tests", "benchmarks")
            for path in sorted(checkout_path(folder).rglob("*.py"))
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if len(line) > 120]
    assert not long, f"lines over 120 characters: {long}"
