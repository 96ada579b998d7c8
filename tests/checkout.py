"""The repository's own files (README.md, docs/, benchmarks/, pyproject.toml, the package's source
tree) for the tests that read them, found from this file.

A copy of tests/ run against an installed wheel has none of them: such a test skips, saying
which file it needs, where it would otherwise fail on a missing file or, walking an empty
tree, pass without checking anything.  In a checkout (pyproject.toml beside tests/) a missing
file fails the test that reads it.
"""

from pathlib import Path

import pytest

__all__ = ["ROOT", "checkout_path", "pyproject"]

ROOT = Path(__file__).resolve().parents[1]


def checkout_path(*parts: str) -> Path:
    """``ROOT/parts``; outside a checkout, a skip of the calling test (of the whole module when
    called as the module is imported)."""
    if not (ROOT / "pyproject.toml").is_file():
        what = f" ({'/'.join(parts)})" if parts else ""
        pytest.skip(f"needs the repository checkout{what}: {ROOT} is not one", allow_module_level=True)
    return ROOT.joinpath(*parts)


def pyproject() -> dict:
    """pyproject.toml, parsed (tomllib from Python 3.11; pytest brings tomli to 3.10)."""
    try:
        import tomllib
    except ImportError:
        import tomli as tomllib
    return tomllib.loads(checkout_path("pyproject.toml").read_text(encoding="utf-8"))
