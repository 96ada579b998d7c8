"""What a built wheel and sdist carry: the package's data files, the licence, the metadata.

Users install a wheel, not a checkout: a file the package reads at run time that
pyproject.toml does not declare works from the checkout and is missing from the wheel.
"""

import email
import glob
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

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


# what the build reads; the rest of a checkout (.git, caches, local wheel folders) stays behind
_BUILD_INPUTS = ["pyproject.toml", "MANIFEST.in", "README.md", "CHANGELOG.md", "LICENSE", "quantbook", "tests", "docs",
                 "benchmarks"]
# what no wheel or sdist may carry: Python's and numba's caches, a stray build product
_JUNK = ["quantbook/__pycache__/naming.cpython-311.pyc", "quantbook/bulk/cpu/__pycache__/kernels.f-1.py311.nbi",
         "quantbook/bulk/cpu/__pycache__/kernels.f-1.py311.1.nbc", "quantbook/bulk/cpu/stray.so",
         "tests/__pycache__/conftest.cpython-311.pyc", "benchmarks/stray.so"]


def _requirement(text: str) -> str:
    return re.sub(r"\s+", "", text).lower().replace("_", "-")


def _setuptools_or_skip():
    setuptools = pytest.importorskip("setuptools", reason="the build backend (setuptools>=77, the test extra)")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} is older than the 77 pyproject.toml builds with")


def test_the_built_wheel_and_sdist_carry_the_package_and_the_repository(tmp_path):
    """An offline build (setuptools' own backend, as pip calls it) of a copy of the checkout with
    cache files planted in it.  The wheel: every module, the declared data, the licence, the
    metadata of pyproject.toml, and nothing else.  The sdist: every file the build read, so its
    tests run as from a checkout (setuptools alone took tests/test_*.py, not conftest.py or data)."""
    _setuptools_or_skip()
    src = tmp_path / "src"
    src.mkdir()
    for name in _BUILD_INPUTS:
        path = checkout_path(name)
        if not path.exists():   # the assertions below say what its absence leaves out
            continue
        ignore = shutil.ignore_patterns("__pycache__", ".hypothesis", ".pytest_cache", "*.egg-info")
        shutil.copytree(path, src / name, ignore=ignore) if path.is_dir() else shutil.copy(path, src / name)
    repository = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    for junk in _JUNK:
        (src / junk).parent.mkdir(parents=True, exist_ok=True)
        (src / junk).write_bytes(b"\0")
    build = ("import sys; from setuptools import build_meta as b; "
             "out = sys.argv[1]; b.build_wheel(out); b.build_sdist(out)")   # the backend rewrites sys.argv
    r = subprocess.run([sys.executable, "-c", build, str(tmp_path / "dist")], cwd=src, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,), (sdist,) = (tmp_path / "dist").glob("*.whl"), (tmp_path / "dist").glob("*.tar.gz")
    project = pyproject()["project"]
    info = f"quantbook-{project['version']}.dist-info"

    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        metadata = email.message_from_string(whl.read(f"{info}/METADATA").decode("utf-8"))
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
        licence = whl.read(f"{info}/licenses/LICENSE")
    package = sorted(f for f in repository if f.startswith("quantbook/"))
    modules = {f for f in package if f.endswith(".py")}
    package_data = pyproject()["tool"]["setuptools"]["package-data"]
    data = {f"quantbook/{f}" for f in _declared_data(src / "quantbook", package_data)}
    dist_info = {f"{info}/{f}" for f in ("METADATA", "WHEEL", "entry_points.txt", "top_level.txt", "RECORD",
                                          "licenses/LICENSE")}
    assert sorted(names - modules - data - dist_info) == []
    assert sorted((modules | data | dist_info) - names) == []
    assert licence == (src / "LICENSE").read_bytes()

    assert (metadata["Name"], metadata["Version"]) == (project["name"], project["version"])
    assert metadata["Requires-Python"] == project["requires-python"]
    assert (metadata["License-Expression"], metadata.get_all("License-File")) == ("Apache-2.0", ["LICENSE"])
    declared = {_requirement(d) for d in project["dependencies"]}
    declared |= {_requirement(f'{d};extra=="{extra}"') for extra, deps in project["optional-dependencies"].items()
                 for d in deps}
    assert {_requirement(d) for d in metadata.get_all("Requires-Dist")} == declared
    assert sorted(metadata.get_all("Provides-Extra")) == sorted(project["optional-dependencies"])
    assert metadata.get_payload() == (src / "README.md").read_text(encoding="utf-8")
    scripts = dict(re.findall(r"^(\S+) = (\S+)$", entry_points.split("[console_scripts]")[1], re.M))
    assert scripts == project["scripts"]

    with tarfile.open(sdist) as tar:
        files = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
    made = {"PKG-INFO", "setup.cfg"} | {f for f in files if f.startswith("quantbook.egg-info/")}
    assert sorted(files - made - repository) == []
    assert sorted(repository - files) == []
