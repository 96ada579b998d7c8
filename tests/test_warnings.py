"""Each of quantbook's warnings names the line that called quantbook (:func:`quantbook.errors.warn`),
whichever public entry point it came through: filters by module or line (``-W``,
``warnings.filterwarnings``) and the once-per-line default action read that line."""

from __future__ import annotations

import ast
import os
import sys
import warnings

import numpy as np

import quantbook

from checkout import checkout_path


def _warnings_through(category, call):
    """The warnings of ``category`` that ``call`` gives, as ``(file, line)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    found = [(w.filename, w.lineno) for w in caught if issubclass(w.category, category)]
    assert found, f"{call} gave no {category.__name__}"
    return found


def _line(call) -> tuple[str, int]:
    return call.__code__.co_filename, call.__code__.co_firstlineno


def test_each_warning_names_the_line_that_called_quantbook(monkeypatch):
    """Every warning quantbook gives names the caller's line, whichever public entry point it came
    through (one fixed stacklevel per call site named quantbook's own files: ``export(cb, "bnb")``,
    a derivation through ``derive_from_recipe`` or a codebook's name, ``derive_vq``,
    ``BlockDistribution.expect``)."""
    from scipy.integrate import IntegrationWarning

    import quantbook.codebooks.codebook as codebook_module
    from quantbook import derive as D
    from quantbook.bulk import CodebookRangeWarning
    from quantbook.derive.vq import derive_vq, solve_vq
    from quantbook.export import bnb_bytes, export

    x = np.random.default_rng(0).standard_normal(256).astype(np.float32)
    calls = {
        CodebookRangeWarning: [
            lambda: quantbook.quantize(x, "max1960-n4", 64),
            lambda: quantbook.quantize(x, quantbook.get("max1960-n8"), 64, backend="numpy"),
            lambda: export(quantbook.get("max1960-n16"), "bnb"),
            lambda: bnb_bytes(quantbook.get("max1960-n16")),
        ],
        D.LloydWarning: [
            lambda: D.lloyd(4, 64, max_iter=1),
            lambda: D.solve_lloyd(3, 32, source="laplace", max_iter=1),
            lambda: derive_vq(dim=2, points=16, samples=4000, restarts=1, coarse_samples=1000, max_iter=1),
            lambda: solve_vq(dim=2, points=16, samples=4000, restarts=1, coarse_samples=1000, max_iter=1),
        ],
        IntegrationWarning: [
            lambda: D.BlockDistribution(None, "normal", "none").expect(lambda y: np.floor(50 * y)),   # 100 steps
        ],
        D.RoundingEdgeWarning: [
            lambda: D.nf(8, "99/100", "float64"),
        ],
    }
    for category, group in calls.items():
        for call in group:
            assert set(_warnings_through(category, call)) == {_line(call)}, call
    # every derivation warns with every level counted close to a float32 rounding edge
    monkeypatch.setattr(codebook_module, "FLOAT32_EDGE_BOUND", 1.0)
    edge = [lambda: D.lloyd(4, 64), lambda: D.quantile(4, 32), lambda: D.nf(4, None, "float64"),
            lambda: D.derive_from_recipe(D.lloyd(4, 16, name="lloyd16").recipe),
            lambda: quantbook.quantize(x, "lloyd-l1-32", 32),
            lambda: D.search_lloyd(4, 16, "search:4over6", samples=16 * 200, max_iter=1)]
    for call in edge:
        assert set(_warnings_through(D.RoundingEdgeWarning, call)) == {_line(call)}, call


def test_a_warning_raised_while_quantbook_imports_a_module_of_its_own_names_the_callers_line(tmp_path, monkeypatch):
    """A module quantbook imports may warn as it loads (numba's kernel cache, when it finds no
    writable directory): ``warnings.warn`` does not count importlib's frames in ``stacklevel``, and
    neither may the count of quantbook's own frames, or the warning names a line of the test runner
    beyond the caller.  A package in ``tmp_path`` stands for quantbook here."""
    import quantbook.errors as errors

    package = tmp_path / "fakebook"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "outer.py").write_text("import importlib\n\n\ndef load():\n"
                                      "    return importlib.import_module('fakebook.loud')\n", encoding="utf-8")
    (package / "loud.py").write_text("from quantbook.errors import warn\n\nwarn('loading', UserWarning)\n",
                                     encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(errors, "_PACKAGE", str(package) + os.sep)
    from fakebook import outer

    call = lambda: outer.load()  # noqa: E731
    try:
        assert _warnings_through(UserWarning, call) == [_line(call)]
    finally:
        for name in ("fakebook.loud", "fakebook.outer", "fakebook"):
            sys.modules.pop(name, None)


def test_a_numba_cache_warning_names_the_line_that_compiled(monkeypatch):
    """numba without a writable cache directory: the warning names the line that asked for the
    kernel, not quantbook's decorator."""
    import numba

    from quantbook.numerics import kernel_cache

    real = numba.njit

    def refusing(*args, **options):
        if options.get("cache"):
            raise RuntimeError("cannot cache function 'f': no locator available")
        return real(*args, **options)

    monkeypatch.setattr(numba, "njit", refusing)
    monkeypatch.setattr(kernel_cache, "_warn_uncached", kernel_cache._warn_uncached.__wrapped__)

    def f(a):
        return a + 1

    call = lambda: kernel_cache.cached_njit()(f)  # noqa: E731
    assert _warnings_through(RuntimeWarning, call) == [_line(call)]


def _warning_calls(tree: ast.AST):
    """``(line, what)`` of each call that warns: ``warnings.warn``/``warn_explicit`` (as
    ``warnings.x`` or imported from ``warnings``), and quantbook's ``warn`` without a category."""
    from_warnings = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                     and node.module == "warnings" for a in node.names if a.name in ("warn", "warn_explicit")}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "warnings" \
                and f.attr in ("warn", "warn_explicit") or isinstance(f, ast.Name) and f.id in from_warnings:
            yield node.lineno, "warnings.warn"
        elif isinstance(f, ast.Name) and f.id == "warn" and len(node.args) < 2 \
                and not any(k.arg == "category" for k in node.keywords):
            yield node.lineno, "warn without a category"


def test_quantbook_warns_only_through_errors_warn_with_a_category():
    """One rule for where a warning points: every warning of the package goes through
    :func:`quantbook.errors.warn` (the one ``warnings.warn``), with its category named."""
    root = checkout_path("quantbook")
    found = [f"{p.relative_to(root.parent)}:{line} {what}" for p in sorted(root.rglob("*.py"))
             for line, what in _warning_calls(ast.parse(p.read_text(encoding="utf-8")))
             if p != root / "errors.py"]
    assert not found, found
    spellings = ["import warnings\nwarnings.warn('x', UserWarning, stacklevel=2)",
                 "from warnings import warn as w\nw('x')", "warn('x')",
                 "import warnings\nwarnings.warn_explicit(1, 2, 3, 4)"]
    assert [len(list(_warning_calls(ast.parse(s)))) for s in spellings] == [1, 1, 1, 1]
    assert not list(_warning_calls(ast.parse("warn('x', UserWarning)\nwarn('x', category=UserWarning)\n"
                                             "from warnings import catch_warnings\ncatch_warnings()")))


def test_a_warning_made_an_error_by_the_filter_is_one_error_line_on_the_command_line(capsys, tmp_path):
    """``python -W error`` (or PYTHONWARNINGS) turns quantbook's warning into an exception: the
    command line reports it as the error the user asked for, not as a bug ("internal error")."""
    from quantbook.cli import main
    from quantbook.codebooks.bnb import CodebookRangeWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", CodebookRangeWarning)
        status = main(["export", "max1960-n16", "--format", "bnb", "-o", str(tmp_path / "a")])   # levels reach 2.733
    out, err = capsys.readouterr()
    assert (status, out) == (1, "")
    assert err.startswith("quantbook: error: codebook 'max1960-n16' has levels up to 2.733 in magnitude")
    assert err.endswith(" (CodebookRangeWarning made an error by the warnings filter)\n") and err.count("\n") == 1
    with warnings.catch_warnings():   # under the default filter the same command warns and succeeds
        warnings.simplefilter("default")
        assert main(["export", "max1960-n16", "--format", "bnb", "-o", str(tmp_path / "b")]) == 0
    out, err = capsys.readouterr()
    assert (tmp_path / "b").stat().st_size > 0 and not (tmp_path / "a").exists()
    assert "\nquantbook: warning: codebook 'max1960-n16' has levels up to 2.733" in err
