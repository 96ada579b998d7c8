"""Results independent of how the process runs: numba's thread count and compiler switch.

The oracles: the same work under another environment in a fresh process (the bytes must be
equal), and the numpy reference backend (:mod:`quantbook.bulk.reference`) for the bytes of the
format."""

import os
import subprocess
import sys
import textwrap

_QUANTIZE = textwrap.dedent("""
    import numpy as np
    import quantbook
    from quantbook.bulk import quantize_vq
    x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    for cb, bits in (("nf4", 4), ("nf8", 8)):
        p, s = quantbook.quantize(x, cb, 64)
        ref, rs = quantbook.quantize(x, cb, 64, backend="numpy")
        assert np.array_equal(p, ref) and np.array_equal(s.absmax, rs.absmax), cb
        assert np.array_equal(quantbook.dequantize(p, s), quantbook.dequantize(ref, rs, backend="numpy")), cb
    i, s = quantize_vq(x, "higgs-2d-256")
    ri, rs = quantize_vq(x, "higgs-2d-256", backend="numpy")
    assert np.array_equal(i, ri)
    try:
        quantbook.quantize(x, "nf4", 64, backend="cpu")
    except ValueError as exc:
        print(exc)
""")


def test_numba_switched_off_quantizes_with_the_numpy_reference():
    """With NUMBA_DISABLE_JIT set the cpu kernels cannot give the format's bytes (their 16-bit
    loads exist only compiled; the 4-bit encoder's sum of comparisons would be numpy's boolean
    OR), so ``auto`` takes the numpy reference and ``backend="cpu"`` says why."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-c", _QUANTIZE], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("backend='cpu' is unavailable: numba's compiler is switched off (NUMBA_DISABLE_JIT")
