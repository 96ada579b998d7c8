"""Generate tests/data/ggml_vectors.npz: IQ4_NL blocks quantized by ggml itself, for
tests/test_scale_ggml.py.

ggml is not on the package index as a library, but llama-cpp-python's source distribution
vendors it.  This script downloads that sdist (pip), compiles ggml's base library with the
system C/C++ compiler (x86-64 baseline flags, no FMA contraction), and calls, through ctypes:

* ``quantize_iq4_nl`` (the quantizer llama-quantize runs: 15 trial scales, least-squares
  refit; ``search:ggml``),
* ``quantize_row_iq4_nl_ref`` (``search:ggml-ref``),
* ``dequantize_row_iq4_nl``.

It stores the float32 inputs and, per case and quantizer, the float16 scale bits, the codes
(unpacked from ggml's nibbles: code ``j`` of a block in the low nibble of byte ``j mod 16``
for ``j < 16``, high nibble otherwise) and ggml's float32 dequantization.  Versions go into
``meta``.  The ``trial`` case is chosen with quantbook (blocks where the trial step matters) and
needs it importable.  ggml's reference quantizer leaves an all-zero block's codes unset (stack
contents), so those codes differ from run to run; the tests compare such blocks as values.
Run from the repository root (needs network access to the package index, gcc, g++):

    python tests/data/make_ggml_vectors.py
"""

import ctypes
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("ggml_vectors.npz")
SDIST = "llama-cpp-python==0.3.36"
QK = 32
rng = np.random.default_rng(20251126)


def build(tmp: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", SDIST, "--no-deps", "--no-binary", ":all:",
                    "-d", str(tmp)], check=True, capture_output=True)
    (sd,) = tmp.glob("llama_cpp_python-*.tar.gz")
    with tarfile.open(sd) as tf:
        tf.extractall(tmp, filter="data")
    src = next(tmp.glob("llama_cpp_python-*/vendor/llama.cpp/ggml/src"))
    inc = tmp / "inc"
    inc.mkdir()
    (inc / "ggml-version.h").write_text('#pragma once\n#define GGML_VERSION "vendored"\n'
                                        '#define GGML_COMMIT "llama-cpp-python-0.3.36"\n', encoding="utf-8")
    objs = []
    for f in ["ggml.c", "ggml-alloc.c", "ggml-quants.c", "ggml.cpp", "ggml-backend.cpp",
              "ggml-backend-meta.cpp", "ggml-opt.cpp", "ggml-threading.cpp", "gguf.cpp"]:
        o = tmp / (f + ".o")
        cc = ["gcc", "-std=c11"] if f.endswith(".c") else ["g++", "-std=c++17"]
        subprocess.run([*cc, "-O2", "-fPIC", "-D_GNU_SOURCE", f"-I{src.parent / 'include'}", f"-I{src}",
                        f"-I{inc}", "-c", str(src / f), "-o", str(o)], check=True)
        objs.append(str(o))
    lib = tmp / "libggml-base.so"
    subprocess.run(["g++", "-shared", "-o", str(lib), *objs, "-lpthread", "-lm"], check=True)
    return lib


def inputs() -> dict:
    cases = {}
    cases["normal"] = rng.standard_normal((16, 256)).astype(np.float32)
    cases["wide"] = (rng.standard_normal((16, 64)) * np.exp(rng.uniform(-25, 25, (16, 1)))).astype(np.float32)
    cases["heavy"] = rng.standard_t(3, (8, 256)).astype(np.float32)
    z = rng.standard_normal((4, 4 * QK)).astype(np.float32)
    z[0, :QK] = 0
    z[1, QK:2 * QK] = -0.0
    z[2, :QK] = rng.standard_normal(QK) * 1e-16    # below ggml's 1e-15 threshold
    z[3, :QK] = rng.standard_normal(QK) * 1e-12    # squares underflow towards subnormals
    z[3, QK:2 * QK] = 1.0                          # a constant block
    z[3, 2 * QK:3 * QK] = -3.0
    cases["edge"] = z
    # scaled integers: many values land exactly on the table's midpoints
    cases["grid"] = (rng.integers(-127, 128, (8, 4 * QK)) * np.float32(0.5)).astype(np.float32)
    # a negative extreme and a positive extreme of equal magnitude (the first one counts)
    e = rng.uniform(-1, 1, (4, QK)).astype(np.float32)
    e[:, 3], e[:, 7] = -2.0, 2.0
    e[2:, 3], e[2:, 7] = 2.0, -2.0
    cases["extremes"] = e
    cases["trial"] = trial_blocks()
    return cases


def trial_blocks(n: int = 64) -> np.ndarray:
    """Normal blocks on which the size of the trial step decides the answer: those where
    quantbook's search with a step of 1/128 instead of ggml's 1/127 (of the table's range)
    picks another scale.  quantbook only chooses the inputs; ggml gives the expected bytes."""
    from quantbook.codebooks.registry import IQ4_NL_INT
    from quantbook.scales import ggml as search

    x = rng.standard_normal((200_000, QK)).astype(np.float32)
    table = np.array(IQ4_NL_INT, np.float32)
    d = search.ggml_search_reference(x, table)[0]
    keep = search.ggml_table
    search.ggml_table = lambda t: (*keep(t)[:2], np.float32(keep(t)[2] * np.float32(127 / 128)))
    try:
        d128 = search.ggml_search_reference(x, table)[0]
    finally:
        search.ggml_table = keep
    picked = np.flatnonzero(d != d128)
    if picked.size < n:
        raise SystemExit(f"only {picked.size} blocks depend on the trial step")
    return x[picked[:n]].reshape(n // 8, 8 * QK)


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        lib = ctypes.CDLL(str(build(Path(d))))
        fp = ctypes.POINTER(ctypes.c_float)
        lib.quantize_iq4_nl.restype = ctypes.c_size_t
        lib.quantize_iq4_nl.argtypes = [fp, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, fp]
        lib.quantize_row_iq4_nl_ref.argtypes = [fp, ctypes.c_void_p, ctypes.c_int64]
        lib.dequantize_row_iq4_nl.argtypes = [ctypes.c_void_p, fp, ctypes.c_int64]
        arrays, meta = {}, {"sdist": SDIST, "ggml_commit": "0c1e570", "block": QK, "cases": []}
        for name, x in inputs().items():
            x = np.ascontiguousarray(x, np.float32)
            rows, cols = x.shape
            nb = x.size // QK
            arrays[f"{name}/x"] = x
            for mode in ("ggml", "ggml-ref"):
                out = np.zeros(nb * 18, np.uint8)  # block_iq4_nl: fp16 d + 16 bytes
                if mode == "ggml":
                    lib.quantize_iq4_nl(x.ctypes.data_as(fp), out.ctypes.data, rows, cols, None)
                else:
                    lib.quantize_row_iq4_nl_ref(x.ctypes.data_as(fp), out.ctypes.data, x.size)
                blk = out.reshape(nb, 18)
                d = blk[:, :2].copy().view(np.uint16).reshape(nb)
                qs = blk[:, 2:]
                codes = np.concatenate([qs & 0x0F, qs >> 4], axis=1)
                deq = np.zeros(x.size, np.float32)
                lib.dequantize_row_iq4_nl(out.ctypes.data, deq.ctypes.data_as(fp), x.size)
                arrays[f"{name}/{mode}/d"] = d
                arrays[f"{name}/{mode}/codes"] = codes.astype(np.uint8)
                arrays[f"{name}/{mode}/deq"] = deq.reshape(x.shape)
            meta["cases"].append(name)
    meta["numpy"] = np.__version__
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {', '.join(meta['cases'])}")


if __name__ == "__main__":
    main()
