"""docs/api.md is what docs/make_api.py writes from the code now, and names every public name."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys

import pytest

from checkout import checkout_path


@pytest.fixture(scope="module")
def make_api():
    spec = importlib.util.spec_from_file_location("make_api", checkout_path("docs", "make_api.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_is_up_to_date(make_api):
    page = checkout_path("docs", "api.md").read_text(encoding="utf-8")
    assert page == make_api.render(), f"docs/api.md is out of date: run `{make_api.COMMAND}`"


def test_the_check_says_what_to_run(make_api, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(make_api, "PAGE", tmp_path / "api.md")
    (tmp_path / "api.md").write_text("stale\n", encoding="utf-8")
    assert make_api.main(["--check"]) == 1
    assert "python docs/make_api.py > docs/api.md" in capsys.readouterr().err
    (tmp_path / "api.md").write_text(make_api.render(), encoding="utf-8")
    assert make_api.main(["--check"]) == 0


def test_every_exported_name_is_on_the_page(make_api):
    page = checkout_path("docs", "api.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^## (\S+)\n(.*?)(?=^## |\Z)", page, re.M | re.S))
    assert set(make_api.MODULES) <= set(sections)
    for name in make_api.MODULES:
        listed = re.findall(r"^- `(?:quantbook\.io\.)?(\w+)", sections[name], re.M)
        assert listed == list(importlib.import_module(name).__all__), name


def test_the_modules_users_import_are_documented(make_api):
    """Every ``from quantbook.X import`` / ``import quantbook.X`` of README.md and docs/*.md."""
    imported = set()
    for path in [checkout_path("README.md"), *sorted(checkout_path("docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        imported |= set(re.findall(r"^\s*(?:from|import) (quantbook(?:\.\w+)*)", text, re.M))
    assert imported and imported <= set(make_api.MODULES)


def test_signatures_are_written_without_annotations_or_addresses(make_api):
    def f(a: int, b: "list[int]" = (1,), /, c=None, *args, d: float = 1.5, **kw) -> None: ...

    assert make_api.signature(f) == "(a, b=(1,), /, c=None, *args, d=1.5, **kw)"
    np = pytest.importorskip("numpy")
    assert make_api.default_text(np.float32(0.5)) == "0.5"   # numpy 2 writes np.float32(0.5)
    assert make_api.default_text(frozenset({"b", "a"})) == "frozenset({'a', 'b'})"
    with pytest.raises(TypeError, match="make_api.py"):
        make_api.default_text(object())


def test_first_sentences(make_api):
    assert make_api.first_sentence("The x (e.g. y. z) of ``a.b``. More.\n\nOther.") == "The x (e.g. y. z) of `a.b`."
    assert make_api.first_sentence("A :class:`~quantbook.Codebook`, i.e. a table.  Rest.") == \
        "A `quantbook.Codebook`, i.e. a table."
    assert make_api.first_sentence(None) == ""


def test_the_script_runs_as_documented():
    import subprocess

    r = subprocess.run([sys.executable, str(checkout_path("docs", "make_api.py")), "--check"],
                       capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "PYTHONPATH": str(checkout_path())})
    assert r.returncode == 0, r.stderr[-2000:]
