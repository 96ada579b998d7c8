"""What a built wheel and sdist carry: the package's data files, the licence.

Users install a wheel, not a checkout: a file the package reads at run time that
pyproject.toml does not declare works from the checkout and is missing from the wheel.
"""

import glob
import hashlib
from pathlib import Path

from checkout import checkout_path, pyproject

# SHA-256 of https://www.apache.org/licenses/LICENSE-2.0.txt (11358 bytes): the licence text as
# the Apache Software Foundation publishes it, its appendix's placeholders left as they are
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def _package_files(package: Path) -> set[str]:
    """Every file of the package's source tree but Python's and numba's caches, relative to it."""
    return {p.relative_to(package).as_posix() for p in package.rglob("*")
            if p.is_file() and "__pycache__" not in p.relative_to(package).parts}


def _declared_data(package: Path, package_data: dict[str, list[str]]) -> set[str]:
    """The files pyproject's package-data globs match (keys are packages, globs relative to them)."""
    found = set()
    for key, patterns in package_data.items():
        assert key.split(".")[0] == package.name, f"package-data key {key!r} is not a quantbook package"
        base = package.joinpath(*key.split(".")[1:])
        for pattern in patterns:
            found |= {(base / f).relative_to(package).as_posix()
                      for f in glob.glob(pattern, root_dir=base, recursive=True) if (base / f).is_file()}
    return found


def test_every_data_file_of_the_package_is_declared_package_data():
    package = checkout_path("quantbook")
    data = {f for f in _package_files(package) if not f.endswith(".py")}
    declared = _declared_data(package, pyproject()["tool"]["setuptools"]["package-data"])
    assert data, "the package reads data files (codebooks/data/*.json): none found"
    assert sorted(data - declared) == [], "add them to [tool.setuptools.package-data] in pyproject.toml"


def test_the_licence_is_the_apache_text_and_pyproject_names_it():
    text = checkout_path("LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_0_SHA256
    project = pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
