"""The package's layers point down (pyproject.toml's import-linter contracts): no module imports
a higher layer, lazily or not, so there is no import circle to break later."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (it is in the [test] extra)")
    r = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "broken" not in r.stdout.lower().replace("0 broken", "")


def test_importing_quantbook_loads_no_heavy_optional_dependency():
    code = ("import sys, quantbook; "
            "print(sorted(m for m in ('numba', 'cupy', 'torch', 'matplotlib', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
