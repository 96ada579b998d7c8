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

import pytest

from checkout import ROOT, checkout_path


def _parallel_keyword(node) -> bool:
    return isinstance(node, ast.Call) and any(k.arg == "parallel" for k in node.keywords)


def test_every_multithreaded_kernel_is_declared_through_parallel_njit():
    home = checkout_path("quantbook", "numerics", "parallel.py")
    direct = []
    for path in sorted(checkout_path("quantbook").rglob("*.py")):
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


_FORK = textwrap.dedent("""
    import os, sys, threading, time
    import numpy as np
    import quantbook as qb
    from quantbook.numerics import parallel

    started, holding = sys.argv[1] == "1", sys.argv[2] == "1"
    x = np.random.default_rng(0).standard_normal(1 << 14).astype(np.float32)
    want = qb.quantize(x, "nf4", 64, backend="numpy")[0]
    if started:   # the parent's threading layer has started
        assert np.array_equal(qb.quantize(x, "nf4", 64, backend="cpu")[0], want)
    else:   # numba imported (its kernels declared), none run
        import quantbook.bulk.cpu.kernels
    held, done = threading.Event(), threading.Event()

    def launcher():   # a thread inside a launch (holding the lock) when the process forks
        with parallel._LAUNCH:
            held.set()
            done.wait()

    if holding:
        threading.Thread(target=launcher, daemon=True).start()
        held.wait()
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if np.array_equal(qb.quantize(x, "nf4", 64, backend="cpu")[0], want) else 3)
        except BaseException as exc:
            print(f"child: {exc}", flush=True)
            os._exit(4)
    deadline = time.monotonic() + 30
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            print("ok" if status == 0 else f"child status {status}")
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("the child hung")
            break
        time.sleep(0.05)
    done.set()
""")


def _fork(started: bool, holding: bool, layer: str | None = None) -> str:
    """What a child forked as said reports of its own cpu quantization (the numpy reference's bytes)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")   # Python warns of a fork beside a thread: the case tested
    env.pop("NUMBA_THREADING_LAYER", None)
    if layer:
        env["NUMBA_THREADING_LAYER"] = layer
    r = subprocess.run([sys.executable, "-c", _FORK, str(int(started)), str(int(holding))], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    return r.stdout.strip()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_child_forked_while_a_thread_holds_the_launch_lock_has_its_own():
    # the lock is copied held into the child, where the thread holding it does not run: every kernel
    # the child launched waited forever (workqueue is fork-safe, so the child may run kernels)
    assert _fork(started=True, holding=True, layer="workqueue") == "ok"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_child_forked_before_any_parallel_kernel_ran_runs_them():
    # only a fork after GNU OpenMP started is refused: a worker forked before any kernel ran (a data
    # loader started first) runs the numba backends on whatever layer numba picks
    assert _fork(started=False, holding=False) == "ok"


_FORK_COMPILING = textwrap.dedent("""
    import os, threading, time
    import numba
    from numba.core.compiler_lock import global_compiler_lock
    DECLARE   # quantbook declares a kernel: numba is in use

    def compiling():   # another thread compiling all the time (a fresh function: nothing cached)
        i = 0
        while True:
            i += 1
            numba.njit(lambda x, i=i: x + i)(1.0)

    def child_compiles(in_thread=False) -> str:
        pid = os.fork()
        if pid == 0:
            if not in_thread:
                os._exit(0 if numba.njit(lambda x: 2 * x)(3.0) == 6.0 else 3)
            # a thread of the child's own: the lock must be free, not held by the forking thread
            got = []
            t = threading.Thread(target=lambda: got.append(numba.njit(lambda x: 2 * x)(3.0)), daemon=True)
            t.start()
            t.join(50)
            os._exit(0 if got == [6.0] else 3)
        deadline = time.monotonic() + 60
        while True:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                return "ok" if status == 0 else f"child status {status}"
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                return "the child hung"
            time.sleep(0.02)

    with global_compiler_lock:   # the forking thread itself compiling: the lock is reentrant
        print(child_compiles())
    threading.Thread(target=compiling, daemon=True).start()
    time.sleep(0.5)
    for k in range(3):
        print(said := child_compiles(in_thread=k == 2))
        if said != "ok":
            break
""")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
@pytest.mark.parametrize("declare", ["import quantbook.bulk.cpu.kernels",
                                     "from quantbook.numerics.kernel_cache import cached_njit; cached_njit()"])
def test_a_child_forked_while_another_thread_compiles_can_compile(declare):
    # numba compiles under one global lock; a child forked while another thread held it inherited it
    # held, and its first compilation (a kernel's first call on new types) waited forever.  Declaring a
    # single-threaded kernel alone sets the wait up too (it came with the first parallel kernel only)
    env = dict(os.environ, PYTHONWARNINGS="ignore")   # Python warns of a fork beside a thread: the case tested
    r = subprocess.run([sys.executable, "-c", _FORK_COMPILING.replace("DECLARE", declare)], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    assert r.stdout.splitlines() == ["ok"] * 4, r.stdout
