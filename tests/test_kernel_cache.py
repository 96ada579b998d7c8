"""numba's on-disk cache of quantbook's kernels follows every kernel module, not only the
kernel's own file (``quantbook.numerics.kernel_cache``), and keeps each build of a kernel apart.

The oracle of the end-to-end case is the changed source itself: after a helper in another
module changes, a kernel that calls it must compute with the new helper.
"""

import ast
import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from checkout import ROOT, checkout_path


def _cache_keyword(node) -> bool:
    return isinstance(node, ast.Call) and any(k.arg == "cache" for k in node.keywords)


def test_every_cached_kernel_is_declared_through_the_keyed_cache():
    homes = {checkout_path("quantbook", "numerics") / name for name in ("parallel.py", "kernel_cache.py")}
    direct = []
    for path in sorted(checkout_path("quantbook").rglob("*.py")):
        if path in homes:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        direct += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(tree) if _cache_keyword(n)]
    assert direct == []


def test_the_kernels_cache_locator_is_quantbooks():
    pytest.importorskip("numba", reason="the kernels need numba")
    from quantbook.bulk.cpu import kernels, scaled_kernels

    for dispatcher in (kernels._block_absmax, scaled_kernels.scaled_amax.dispatcher):
        impl = getattr(getattr(dispatcher, "_cache", None), "_impl", None)
        if impl is None or not hasattr(impl, "_locator"):
            pytest.skip("this numba keeps its cache locator elsewhere")
        assert type(impl._locator).__name__.startswith("Quantbook")


_RUN = textwrap.dedent("""
    import numpy as np
    from quantbook.bulk.cpu.backend import _f16_table
    from quantbook.bulk.cpu.scaled_kernels import scaled_amax
    x = np.arange(-8, 8, dtype=np.float32)
    amax = np.empty(2, np.float32)
    scaled_amax(x, _f16_table(), 8, amax)
    print(amax.tolist())
""")


def test_a_kernel_recompiles_when_a_helper_in_another_module_changes(tmp_path):
    """scaled_amax (scaled_kernels.py) calls _block_absmax (kernels.py).  With numba's own key,
    a cached scaled_amax kept the old _block_absmax after kernels.py alone changed."""
    pytest.importorskip("numba", reason="the kernels need numba")
    shutil.copytree(checkout_path("quantbook"), tmp_path / "quantbook", ignore=shutil.ignore_patterns("__pycache__"))

    def run():
        p = subprocess.run([sys.executable, "-c", _RUN], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin",
                                             "NUMBA_NUM_THREADS": "2"})
        assert p.returncode == 0, p.stderr
        return p.stdout.strip()

    assert run() == "[8.0, 7.0]"   # compiled and cached
    helper = tmp_path / "quantbook" / "bulk" / "cpu" / "kernels.py"
    text = helper.read_text(encoding="utf-8")
    changed = text.replace("        if a > m:\n            m = a\n", "        if a > m:\n            m = a + 1\n", 1)
    assert changed != text
    helper.write_text(changed, encoding="utf-8")
    assert run() == "[9.0, 8.0]"


def _modules_naming_numba():
    """Every quantbook module whose source names numba (a superset of those that declare kernels)."""
    import quantbook

    package = Path(quantbook.__file__).parent
    for path in sorted(package.rglob("*.py")):
        if "numba" in path.read_text(encoding="utf-8"):
            name = ".".join(("quantbook",) + path.relative_to(package).with_suffix("").parts)
            yield importlib.import_module(name.removesuffix(".__init__"))


def test_each_build_of_a_kernel_has_cache_files_of_its_own():
    """numba names a kernel's cache files ``<module file stem>.<qualified name>-<first line>``
    (numba.core.caching) and keys their entries by argument types alone: two builds of one
    function under one name (vq_kernels' parallel ``assign`` and single-threaded ``assign_serial``)
    loaded each other's code."""
    pytest.importorskip("numba", reason="the kernels need numba")
    from numba.core.dispatcher import Dispatcher

    names = {}   # cache file name: {dispatcher: where it is declared}
    for module in _modules_naming_numba():
        for attr, obj in vars(module).items():
            d = getattr(obj, "dispatcher", obj)
            if isinstance(d, Dispatcher):
                f = d.py_func
                name = f"{Path(inspect.getfile(f)).stem}.{f.__qualname__}-{f.__code__.co_firstlineno}"
                names.setdefault(name, {}).setdefault(d, f"{module.__name__}.{attr}")
    assert len(names) > 40, sorted(names)   # every module's kernels were found
    assert {n: sorted(a.values()) for n, a in names.items() if len(a) > 1} == {}


_BUILDS = textwrap.dedent("""
    import sys
    import numba
    import numpy as np
    from quantbook.derive import vq_kernels as k

    def parallel_ran():
        try:
            numba.threading_layer()
            return True
        except ValueError:   # no parallel region has run in this process
            return False

    x = np.random.default_rng(0).standard_normal((256, 2))
    c = np.random.default_rng(1).standard_normal((16, 2))
    order = np.argsort(c[:, 0], kind="stable")
    c0 = np.ascontiguousarray(c[order, 0])
    want = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(axis=2), axis=1)
    builds = {"serial": k.assign_serial, "parallel": k.assign.dispatcher}
    for name in sys.argv[1:]:
        out = np.empty(len(x), np.int64)
        builds[name](x, c, order, c0, k.search_grid(c), out)
        assert np.array_equal(out, want)
        assert parallel_ran() == (name == "parallel" or sys.argv[1] == "parallel"), name
        assert not builds[name].stats.cache_hits, f"{name} loaded the other build's cached code"
    print("ok")
""")


@pytest.mark.parametrize("first", ["serial", "parallel"])
def test_the_parallel_and_single_threaded_builds_of_a_kernel_do_not_load_each_others_code(tmp_path, first):
    """With an empty cache, each build compiles its own code: the one built second loaded the first
    one's (a single-threaded build that ran threads outside the launch lock aborts the process on
    numba's workqueue layer; a parallel one that ran on one thread lost its speed)."""
    pytest.importorskip("numba", reason="the kernels need numba")
    second = {"serial": "parallel", "parallel": "serial"}[first]
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", _BUILDS, first, second], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout[-2000:] + r.stderr[-3000:]


_NOWHERE = textwrap.dedent("""
    import sys, warnings
    from numba.core import caching

    def unwritable(self):   # what every cache directory raised: a read-only install, no writable home
        raise PermissionError(13, "Permission denied", self.get_cache_path())

    caching._CacheLocator.ensure_cache_path = unwritable
    if sys.argv[1] == "cli":
        from quantbook.cli import main
        sys.exit(main(["derive", "vq", "--dim", "2", "--points", "16", "--samples", "4096", "--json"]))
    import numpy as np
    import quantbook
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
        cpu = quantbook.quantize(x, "nf4", 64, backend="cpu")[0]
    assert np.array_equal(cpu, quantbook.quantize(x, "nf4", 64, backend="numpy")[0])
    print(*{str(w.message) for w in caught if w.category is RuntimeWarning}, sep="\\n")
""")


def test_the_kernels_run_uncached_where_numba_can_write_no_cache(tmp_path):
    """A user who cannot write to the installed package nor has a writable home (HOME=/nonexistent,
    a read-only container) and has no NUMBA_CACHE_DIR: numba refused to declare a cached kernel
    ("cannot cache function ...: no locator available"), so importing the kernels failed and
    `derive vq` was an internal error.  Now they compile uncached, and one warning says how to
    cache them."""
    pytest.importorskip("numba", reason="the kernels need numba")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    r = subprocess.run([sys.executable, "-c", _NOWHERE, "api"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and "NUMBA_CACHE_DIR" in lines[0] and "compile again in every process" in lines[0]
    r = subprocess.run([sys.executable, "-c", _NOWHERE, "cli"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["dim"] == 2
    assert r.stderr.count("quantbook: warning: numba finds no writable directory") == 1, r.stderr
