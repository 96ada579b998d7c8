"""Python threads may call the numba backends at the same time.

numba's workqueue threading layer (its fallback without OpenMP or TBB) aborts the process when
two threads launch ``parallel=True`` kernels at once; every such kernel goes through
``quantbook.numerics.parallel.parallel_njit``, whose lock makes them wait their turn.  The
oracle is the same work done first on one thread (and the numpy reference where there is one).
"""

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _parallel_keyword(node) -> bool:
    return isinstance(node, ast.Call) and any(k.arg == "parallel" for k in node.keywords)


def test_every_multithreaded_kernel_is_declared_through_parallel_njit():
    home = ROOT / "quantbook" / "numerics" / "parallel.py"
    direct = []
    for path in sorted((ROOT / "quantbook").rglob("*.py")):
        if path == home:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        direct += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(tree) if _parallel_keyword(n)]
    assert direct == []


_CONCURRENT = textwrap.dedent("""
    import concurrent.futures as cf
    import numpy as np
    import quantbook
    from quantbook.bulk import dequantize_vq, quantize_vq
    from quantbook.derive.lloyd import lloyd
    from quantbook.derive.sources import Empirical
    from quantbook.derive.vq import derive_vq

    x = np.random.default_rng(7).standard_normal(1 << 18).astype(np.float32)
    sample = np.random.default_rng(8).standard_t(5, 1 << 14)

    def scalar(nested):
        p, s = quantbook.quantize(x, "nf4", 64, nested=nested, backend="cpu")
        return p.tobytes() + quantbook.dequantize(p, s, backend="cpu").tobytes()

    def scaled(rule):
        p, s = quantbook.quantize(x, "e2m1", 32, scale=rule, qmax=6.0, backend="cpu")
        return p.tobytes() + quantbook.dequantize(p, s, backend="cpu").tobytes()

    def vector():
        idx, s = quantize_vq(x, "higgs-2d-256", backend="cpu")
        return np.asarray(idx).tobytes() + dequantize_vq(idx, s, backend="cpu").tobytes()

    def derived():
        return lloyd(4, 64, source=Empirical(sample), max_iter=2).levels.tobytes()

    def vq_derived():
        return derive_vq(dim=2, points=16, samples=1 << 17, restarts=1, max_iter=2).points.tobytes()

    jobs = [lambda: scalar(False), lambda: scalar(True), lambda: scaled("e8m0"), lambda: scaled("search:ggml"),
            vector, derived, vq_derived]
    alone = [job() for job in jobs]
    ref, _ = quantbook.quantize(x, "nf4", 64, backend="numpy")
    assert alone[0].startswith(ref.tobytes())
    with cf.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda i: jobs[i % len(jobs)](), range(2 * len(jobs))))
    assert together == alone * 2, [i for i, t in enumerate(together) if t != alone[i % len(jobs)]]
    print("ok")
""")


def test_concurrent_threads_on_the_workqueue_layer_neither_abort_nor_change_a_byte():
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-c", _CONCURRENT], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout[-2000:] + r.stderr[-4000:]
