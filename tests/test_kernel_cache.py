"""numba's on-disk cache of quantbook's kernels follows every kernel module, not only the
kernel's own file (``quantbook.numerics.kernel_cache``).

The oracle of the end-to-end case is the changed source itself: after a helper in another
module changes, a kernel that calls it must compute with the new helper.
"""

import ast
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cache_keyword(node) -> bool:
    return isinstance(node, ast.Call) and any(k.arg == "cache" for k in node.keywords)


def test_every_cached_kernel_is_declared_through_the_keyed_cache():
    homes = {ROOT / "quantbook" / "numerics" / name for name in ("parallel.py", "kernel_cache.py")}
    direct = []
    for path in sorted((ROOT / "quantbook").rglob("*.py")):
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
    shutil.copytree(ROOT / "quantbook", tmp_path / "quantbook", ignore=shutil.ignore_patterns("__pycache__"))

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
