"""Write tests/data/old_versions/: files that earlier commits of quantbook wrote, each by that
commit's own code (a ``git worktree`` of it on ``PYTHONPATH``), for tests/test_old_version_files.py.

    python tests/data/make_old_version_files.py        # from the repository root, in its git clone

Each commit's folder holds what its command line printed or wrote (the commands are in
``STEPS``) and ``.npz`` files of a fixed array quantized through its API: the packed codes (or
VQ indices), what that commit dequantized them to, and its state's ``as_dict()``/``to_dict()``
as ``state.KEY`` arrays (``state_none`` lists the keys whose value was None).  The written files
are the oracle: the commit's numbers, not those of the code under test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "data" / "old_versions"

#: per commit (oldest first): ("cli", FILE, ARGS) runs ``quantbook ARGS`` (its standard output
#: is FILE unless ARGS write it with -o); ("state", FILE, CODEBOOK, OPTIONS) quantizes the array
#: with ``quantize(x, CODEBOOK, **OPTIONS)`` (a FILE.json CODEBOOK: a file written above);
#: ("vq", FILE, GRID, OPTIONS) with ``quantize_vq``
STEPS = {
    # the first commit: show and derive nf print codebook JSON (--json)
    "49e15fe": [
        ("cli", "show_fp4.json", ["show", "fp4", "--json"]),
        ("cli", "derive_nf4.json", ["derive", "nf", "--bits", "4", "--json"]),
    ],
    # export, derive lloyd, quantize
    "6e32536": [
        ("cli", "export_nf4.json", ["export", "nf4", "--format", "json", "-o", "export_nf4.json"]),
        ("cli", "export_nf4.npy", ["export", "nf4", "--format", "npy", "-o", "export_nf4.npy"]),
        ("cli", "derive_nf4.json", ["derive", "nf", "--bits", "4", "--json"]),
        ("cli", "derive_lloyd3.json", ["derive", "lloyd", "--bits", "3", "--block-size", "64", "--json"]),
        ("state", "state_nf4_nested.npz", "nf4", {"nested": True}),
        ("state", "state_nf4_float64.npz", "derive_nf4.json", {}),
        ("state", "state_lloyd3.npz", "derive_lloyd3.json", {"bits": 3}),
    ],
    # recipes as data, the io layer
    "40d5eb4": [
        ("cli", "derive_quantile4.json", ["derive", "quantile", "--bits", "4", "--block-size", "64", "--json"]),
        ("state", "state_nf4_float16.npz", "nf4", {"dtype": "float16"}),
    ],
    # vector codebooks, scaled layouts
    "e6a7d06": [
        ("cli", "vq_2d_16.json", ["derive", "vq", "--dim", "2", "--points", "16", "--samples", "20000",
                                  "--seed", "0", "-o", "vq_2d_16.json"]),
        ("cli", "derive_lloyd4_e8m0.json", ["derive", "lloyd", "--bits", "4", "--block-size", "32",
                                            "--scale", "e8m0", "--qmax", "4", "--json"]),
        ("state", "state_nf4_e8m0.npz", "nf4", {"block_size": 32, "scale": "e8m0"}),
    ],
    # strict codebook JSON, search rules
    "7ebe4f6": [
        ("cli", "export_higgs-2d-16.json", ["export", "higgs-2d-16", "--format", "json",
                                            "-o", "export_higgs-2d-16.json"]),
        ("cli", "derive_lloyd4_search.json", ["derive", "lloyd", "--bits", "4", "--block-size", "32",
                                              "--scale", "search:ggml", "--samples", "65536", "--json"]),
        ("vq", "state_vq_higgs16.npz", "higgs-2d-16", {}),
        ("vq", "state_vq_higgs16_plain.npz", "higgs-2d-16", {"rotate": None, "scale_dtype": "float32"}),
    ],
    # the day before these files were made
    "c5675d9": [
        ("cli", "derive_nf3_offset.json", ["derive", "nf", "--bits", "3", "--offset", "29/30", "--json"]),
        ("cli", "derive_lloyd4_e4m3.json", ["derive", "lloyd", "--bits", "4", "--block-size", "16",
                                            "--scale", "e4m3", "--tensor-size", "4096", "--json"]),
        ("state", "state_e2m1_e4m3.npz", "e2m1", {"block_size": 16, "scale": "e4m3"}),
    ],
}

#: run by the old commit's Python: quantize a fixed array and save what it wrote (argv: FILE,
#: KIND, CODEBOOK, OPTIONS as a Python literal)
_QUANTIZE = r"""
import ast, sys
import numpy as np
path, kind, codebook, options = sys.argv[1], sys.argv[2], sys.argv[3], ast.literal_eval(sys.argv[4])
x = np.random.default_rng(0).standard_normal((4, 128)).astype(options.pop("dtype", "float32"))
if kind == "vq":
    from quantbook.bulk.vq import dequantize_vq, quantize_vq
    from quantbook.codebooks.vector_registry import get_vector
    codes, st = quantize_vq(x, get_vector(codebook), **options)
    y, d, first = dequantize_vq(codes, st), st.to_dict(), "indices"
else:
    import quantbook
    cb = quantbook.load(codebook) if codebook.endswith(".json") else codebook
    codes, st = quantbook.quantize(x, cb, **options)
    y, d, first = quantbook.dequantize(codes, st), st.as_dict(), "packed"
arrays = {"state." + k: np.asarray(v) for k, v in d.items() if v is not None}
np.savez_compressed(path, **{first: np.asarray(codes)}, dequantized=np.asarray(y), **arrays,
                    state_none=np.array(sorted(k for k, v in d.items() if v is None), dtype=str))
"""

_CLI = "import sys; from quantbook.cli import main; sys.argv[0] = 'quantbook'; sys.exit(main(sys.argv[1:]))"


def write(commit: str, tree: Path, out: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(tree))
    for step in STEPS[commit]:
        kind, name = step[0], step[1]
        if kind == "cli":
            args = step[2]
            done = subprocess.run([sys.executable, "-c", _CLI, *args], cwd=out, env=env, check=True,
                                  capture_output=True, text=True)
            if "-o" not in args:
                (out / name).write_text(done.stdout, encoding="utf-8")
        else:
            subprocess.run([sys.executable, "-c", _QUANTIZE, name, kind, step[2], repr(step[3])], cwd=out,
                           env=env, check=True)
        print(f"{commit}/{name}")


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        for commit in STEPS:
            tree = Path(scratch) / commit
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True,
                           capture_output=True)
            try:
                out = OUT / commit
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                write(commit, tree, out)
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)


if __name__ == "__main__":
    main()
