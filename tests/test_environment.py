"""Results independent of how the process runs: numba's thread count, Python's hash seed and
numba's compiler switch.

The oracles: the same work under another environment in a fresh process (the bytes must be
equal), and the numpy reference backend (:mod:`quantbook.bulk.reference`) for the bytes of the
format."""

import json
import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

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


_WORK = textwrap.dedent("""
    import contextlib, hashlib, io, warnings
    import numpy as np
    import quantbook
    from quantbook.bulk import dequantize_vq, quantize_vq
    from quantbook.cli import main
    from quantbook.derive import Empirical, lloyd, search_lloyd
    from quantbook.derive.vq import VQRecipe, solve_vq
    warnings.simplefilter("ignore")
    h = hashlib.sha256()
    x = np.random.default_rng(0).standard_normal((16, 4096)).astype(np.float32)
    for cb, scale, bs in (("nf4", None, 64), ("nf5", None, 64), ("e2m1", "e4m3", 16), ("iq4_nl", "search:ggml", 32)):
        p, s = quantbook.quantize(x, cb, bs, scale=scale)
        h.update(p.tobytes() + quantbook.dequantize(p, s).tobytes())
    i, s = quantize_vq(x, "higgs-2d-256")
    h.update(i.tobytes() + dequantize_vq(i, s).tobytes())
    # above the parallel kernel's sample size; the fitting error shows the order of its sums
    vq = solve_vq(VQRecipe(dim=2, points=16, samples=140_000, coarse_samples=20_000, restarts=1, max_iter=5))
    h.update(vq.codebook.points.tobytes() + repr(vq.mse).encode())
    h.update(search_lloyd(4, 32, "search:ggml", samples=32 * 2000, max_iter=3).levels.tobytes())
    h.update(lloyd(3, 64, source=Empirical(np.random.default_rng(1).standard_t(5, 4000))).levels.tobytes())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for argv in (["list", "--json"], ["show", "nf4", "--json"], ["audit", "nf4", "af4", "--json"]):
            main(argv)
    h.update(out.getvalue().encode())
    print(h.hexdigest())
""")


def test_results_do_not_depend_on_the_thread_count_or_the_hash_seed():
    """Quantized bytes (block-wise, scaled, a search rule, vector), derivations on a sample
    (vector Lloyd over the chunks of its sample, a search fit, Lloyd on a sample's block law)
    and --json output: the same on one numba thread as on three (more than this machine may
    have: an uneven split), under two hash seeds (set order must not leak)."""
    digests = []
    for threads, seed in (("1", "0"), ("3", "12345")):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads, PYTHONHASHSEED=seed, PYTHONWARNINGS="ignore")
        r = subprocess.run([sys.executable, "-c", _WORK], capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        digests.append(r.stdout.split()[-1])
    assert digests[0] == digests[1]


_BLAS_WORK = textwrap.dedent("""
    import json, warnings
    from quantbook.derive import lloyd

    def results():
        warnings.simplefilter("ignore")
        return {f"{scale} {loss}": lloyd(4, bs, loss, scale=scale).levels.tobytes().hex()
                for scale, bs, loss in (("e4m3", 16, "l2"), ("nested", 64, "l1"), (None, 64, "l2"))}
""")


def _dynamic_openblas() -> bool:
    """Whether numpy's and scipy's BLAS are OpenBLAS builds that pick their kernels by CPU at run
    time (DYNAMIC_ARCH), which OPENBLAS_CORETYPE overrides."""
    import scipy

    try:
        configs = [m.show_config(mode="dicts")["Build Dependencies"]["blas"] for m in (np, scipy)]
    except (TypeError, KeyError):   # numpy < 1.26 has no mode="dicts"
        return False
    return all("DYNAMIC_ARCH" in str(c.get("openblas configuration", "")) for c in configs)


def test_derivations_do_not_depend_on_the_blas_kernels():
    """The scaled laws' Gauss rule (Lanczos, then the Jacobi matrix's eigenvectors) and the
    nested law's atoms took BLAS products, and scipy's default tridiagonal eigensolver merges by
    them: OpenBLAS's SSE3 kernels moved an e4m3 code by up to 52 float64 ulp against its AVX-512
    ones, a nested L1 code by up to 265.  Now the same float64 bits under any kernel."""
    if platform.machine().lower() not in ("x86_64", "amd64") or not _dynamic_openblas():
        pytest.skip("needs numpy's and scipy's OpenBLAS built to pick x86 kernels at run time (DYNAMIC_ARCH)")
    env = dict(os.environ, OPENBLAS_CORETYPE="Prescott", PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-c", _BLAS_WORK + "print(json.dumps(results()))"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    here = {}
    exec(_BLAS_WORK, here)
    assert json.loads(r.stdout) == here["results"]()

