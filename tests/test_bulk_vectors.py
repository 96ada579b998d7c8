"""quantize/dequantize vs committed bitsandbytes 0.50.2 test vectors (tests/data/bnb_vectors.npz).

The vectors were produced by bitsandbytes itself (tests/data/make_bnb_vectors.py), an
independent implementation; every comparison is exact (bytes / float32 bit patterns), except
that dequantized zeros compare as numbers: bitsandbytes' C++ CPU kernel returns -0.0 for FP4
code 8 where its pure-torch path (and quantbook) return +0.0.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import quantbook as qb
from quantbook.bulk import reference as R
from quantbook.bulk.dynamic_map import dynamic_map

HERE = Path(__file__).parent
DATA = np.load(HERE / "data" / "bnb_vectors.npz")
META = json.loads(bytes(DATA["meta"]).decode())
CASES = list(enumerate(META["cases"]))


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("k,case", CASES, ids=[c["name"] for _, c in CASES])
def test_matches_bitsandbytes_vectors(k, case, backend):
    p = f"c{k}_"
    x = DATA[p + "x"]
    packed, st = qb.quantize(x, case["quant_type"], case["blocksize"], nested=case["nested"],
                             backend=backend)
    assert np.array_equal(packed, DATA[p + "packed"]), "packed bytes differ"
    if case["nested"]:
        assert np.array_equal(st.absmax, DATA[p + "absmax"])  # uint8 nested codes
        assert np.array_equal(_bits(st.nested_absmax), _bits(DATA[p + "nested_absmax"]))
        assert np.float32(st.nested_offset) == DATA[p + "nested_offset"][0]
    else:
        assert np.array_equal(_bits(st.absmax), _bits(DATA[p + "absmax"]))
    y = qb.dequantize(packed, st, backend=backend).reshape(-1)
    ref = DATA[p + "deq"]
    assert y.dtype == ref.dtype
    assert np.array_equal(y, ref)  # numeric equality (+0.0 == -0.0)
    nz = ref != 0
    assert np.array_equal(_bits(y[nz]), _bits(ref[nz]))  # and bit-identical where non-zero


def test_dynamic_map_matches_bitsandbytes():
    assert np.array_equal(_bits(dynamic_map()), _bits(DATA["dynamic_map"]))


@pytest.mark.parametrize("impl", ["numpy", "numba"])
def test_torch_sum_emulation(impl):
    spec = importlib.util.spec_from_file_location("make_bnb_vectors", HERE / "data" / "make_bnb_vectors.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    sum_input = gen.sum_input
    if impl == "numba":
        from quantbook.cpu.kernels import torch_sum_f32 as fn
    else:
        fn = R.torch_sum_f32
    for (n, threads), (s, m) in zip(DATA["sums"], DATA["sums_values"]):
        x = sum_input(int(n))
        got = np.float32(fn(x, int(threads)))
        assert got == s, (n, threads, got, s)
        assert np.float32(got / np.float32(n)) == m
