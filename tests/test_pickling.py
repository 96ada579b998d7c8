"""Public objects as values across copies and processes: pickling (what multiprocessing does to
arguments and results), deep and shallow copies, equality and hashing, and worker pools of each
start method.  The oracle is always the object or the run that did not travel."""

import copy
import multiprocessing
import pickle
import warnings

import numpy as np
import pytest

import quantbook as qb
from quantbook.codebooks.vector_registry import get_vector

PROTOCOLS = range(2, pickle.HIGHEST_PROTOCOL + 1)


def _copies(obj):
    """``(how, copy)`` for every pickle protocol from 2 and both copy functions."""
    out = [(f"pickle protocol {p}", pickle.loads(pickle.dumps(obj, protocol=p))) for p in PROTOCOLS]
    return out + [("deepcopy", copy.deepcopy(obj)), ("copy", copy.copy(obj))]


@pytest.mark.parametrize("name", ["nf4", "fp4", "af4"])
def test_codebook_copies_stay_read_only_and_equal(name):
    """Below protocol 5 (multiprocessing's default is 4) numpy unpickles arrays writable, and
    deepcopy copies them writable: a copy's levels could then change under its hash, out of
    step with its code table, and its recipe become a plain dict."""
    cb = qb.get(name)
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    want = qb.quantize(x, cb, 64, backend="numpy")[0]
    for how, c in _copies(cb):
        assert c == cb and hash(c) == hash(cb), how
        for field in ("levels", "code", "level_to_code"):
            with pytest.raises(ValueError, match="read-only"):
                getattr(c, field)[0] = 7.0
        with pytest.raises(TypeError, match="read-only"):
            c.recipe["bits"] = 1
        assert np.array_equal(c.code.view(np.int64), cb.code.view(np.int64)), how   # fp4's -0.0 kept
        assert np.array_equal(qb.quantize(x, c, 64, backend="numpy")[0], want), how


@pytest.mark.parametrize("recipe", [None, {"dim": 2, "points": 3, "source": "normal"}])
def test_vector_codebook_copies_stay_read_only_and_equal(recipe):
    from quantbook.codebooks.vector import VectorCodebook

    vc = get_vector("higgs-2d-256") if recipe is None else VectorCodebook(
        "mine", np.array([[0.0, 1.0], [1.0, 0.0], [-1.0, -1.0]]), "derived", recipe)
    v = np.random.default_rng(1).standard_normal((500, 2))
    for how, c in _copies(vc):
        assert c == vc and hash(c) == hash(vc), how
        with pytest.raises(ValueError, match="read-only"):
            c.points[0, 0] = 7.0
        assert np.array_equal(c.nearest(v), vc.nearest(v)), how
        if recipe is not None:   # a derived grid's recipe travels with it, read-only
            assert dict(c.recipe) == recipe, how
            with pytest.raises(TypeError, match="read-only"):
                c.recipe["dim"] = 3


def test_search_rules_that_choose_differently_are_not_equal():
    """A rule's name is its identity (==, hash, a state's scale_rule, a recipe's scale): a search
    rule must spell its factors exactly, or two rules that pick different scales compare equal
    and a state names a rule that did not make it.  The block is one where they differ."""
    from quantbook.scales import get_rule

    x = np.random.default_rng(0).standard_normal(1 << 18).astype(np.float32)[6784 * 16:6785 * 16]
    a, b = get_rule("search:float16@1,0.75"), get_rule("search:float16@1,0.7500004")
    sa = qb.quantize(x, "e2m1", 16, scale=a, backend="numpy")[1]
    sb = qb.quantize(x, "e2m1", 16, scale=b, backend="numpy")[1]
    assert not np.array_equal(sa.absmax, sb.absmax)
    assert a != b and a.name == "search:float16@1,0.75/l2"   # short where short is exact
    for st in (sa, sb):
        again = qb.quantize(x, "e2m1", 16, scale=st.scale_rule, backend="numpy")[1]
        assert np.array_equal(again.absmax, st.absmax), st.scale_rule


@pytest.mark.parametrize("n", [32, 33, 65536])
def test_a_repr_shows_up_to_32_levels_and_else_three_at_each_end(n):
    levels = np.linspace(-1.0, 1.0, n)
    text = repr(qb.Codebook(levels, int(np.ceil(np.log2(n))), name="wide"))
    shown = text[text.index("levels=[") + len("levels=["):text.index("]")].split(", ")
    fmt = [f"{v:.6g}" for v in levels]
    assert shown == (fmt if n <= 32 else fmt[:3] + ["..."] + fmt[-3:])
    assert text.endswith(f", n_levels={n})" if n > 32 else "])")


def test_a_search_rule_name_reads_back_as_its_factors():
    # a factor is spelled short only where the short form is the same float; 0.1 + 0.2 needs 17 digits
    from quantbook.scales import get_rule

    for spelled in ("float16@1,0.30000000000000004", "float16@0.1,1e-05,1.0000000000000002"):
        rule = get_rule(f"search:{spelled}")
        assert get_rule(rule.name).factors == rule.factors and get_rule(rule.name) == rule, rule.name
    assert get_rule("search:float16@1,0.30000000000000004") != get_rule("search:float16@1,0.3")


def test_reprs_stay_short_for_big_objects():
    """A repr names the object without dumping it: a 16-bit codebook shows its ends and count,
    a state its shape; a 4-bit codebook still shows every level."""
    levels = np.linspace(-1.0, 1.0, 65536)
    text = repr(qb.Codebook(levels, 16, name="wide"))
    assert len(text) < 200 and "n_levels=65536" in text and text.count(", ") < 12
    assert f"{levels[1]:.6g}" in text and f"{levels[-2]:.6g}" in text
    assert repr(qb.get("nf4")).count(", ") == 15 + 2    # 16 levels, then name and bits
    x = np.zeros((1024, 1024), np.float32)
    assert len(repr(qb.quantize(x, "nf4", 64, backend="numpy")[1])) < 200


def _job(kind, seed, codebook, backend):
    """One quantization a worker runs and the parent checks: ``(packed, state)``."""
    x = np.random.default_rng(seed).standard_normal((8, 256)).astype(np.float32)
    if kind == "vq":
        from quantbook.bulk.vq import quantize_vq

        return quantize_vq(x, codebook, group=64, backend=backend)
    kw = {"nested": {"scale": "nested"}, "e4m3": {"scale": "e4m3", "block_size": 16}}.get(kind, {})
    return qb.quantize(x, codebook, **({"block_size": 64} | kw), backend=backend)


def _jobs():
    return [("plain", 1, "nf4", "cpu"), ("plain", 2, qb.get("fp4"), "numpy"), ("nested", 3, "af4", "cpu"),
            ("e4m3", 4, "e2m1", "cpu"), ("e4m3", 5, "e2m1", "numpy"),
            ("vq", 6, get_vector("higgs-2d-256"), "cpu"), ("vq", 7, "higgs-2d-256", "numpy")]


def _undo(kind, packed, state, backend):
    from quantbook.bulk.vq import dequantize_vq

    return (dequantize_vq if kind == "vq" else qb.dequantize)(packed, state, backend=backend)


def _same_results(jobs, got):
    """Each worker's bytes and state, dequantized here by each host backend, equal this process's."""
    for job, (packed, state) in zip(jobs, got):
        want_packed, want_state = _job(*job)
        assert np.array_equal(packed, want_packed), job
        for backend in ("numpy", "cpu"):
            want = _undo(job[0], want_packed, want_state, backend)
            assert np.array_equal(_undo(job[0], packed, state, backend).view(np.uint32), want.view(np.uint32)), job


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_worker_pools_quantize_as_this_process_does(method):
    """States made in workers of a fresh interpreter (codebook objects sent there, states sent
    back) dequantize here to the bits of a single-process run."""
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    jobs = _jobs()
    with multiprocessing.get_context(method).Pool(2) as pool:
        got = pool.starmap_async(_job, jobs).get(timeout=240)
    _same_results(jobs, got)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork start method here")
def test_forked_workers_after_parallel_kernels_do_not_hang():
    """numba ends a process forked after its GNU OpenMP threading layer started (libgomp is not
    fork-safe) at that process's first parallel kernel, and a Pool whose worker dies waits for
    it forever.  Forked workers must quantize all the same: ``backend="auto"`` passes over the
    numba backends there (numpy gives the same bits), and ``backend="cpu"`` either runs (a
    fork-safe layer) or says why not; never a hang (the timeout)."""
    _job("plain", 0, "nf4", "cpu")   # the parallel kernels have run in this process
    auto = [job[:3] + ("auto",) for job in _jobs()]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.starmap_async(_job, auto).get(timeout=60)
        try:
            cpu = [pool.apply_async(_job, ("plain", 1, "nf4", "cpu")).get(timeout=60)]
        except ValueError as exc:
            assert "backend='cpu' is unavailable" in str(exc) and "spawn" in str(exc)
            cpu = []
    _same_results(auto, got)
    _same_results([("plain", 1, "nf4", "cpu")] * len(cpu), cpu)



def _derive_from_sample(seed):
    """A derivation whose numba kernel is no backend's (the sample law's sums)."""
    from quantbook.derive.lloyd import LloydWarning, lloyd
    from quantbook.derive.sources import Empirical

    sample = np.random.default_rng(seed).standard_normal(1 << 12)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LloydWarning)   # two iterations are enough to run the kernel
            return lloyd(4, 64, source=Empirical(sample), max_iter=2).levels
    except ValueError as exc:
        return str(exc)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork start method here")
def test_forked_workers_get_an_error_from_other_parallel_kernels_not_an_ended_process():
    """Past the backends: any parallel kernel in a child forked after GNU OpenMP started says
    why it cannot run (the process ended and the pool hung before); elsewhere it runs as here."""
    want = _derive_from_sample(0)
    assert not isinstance(want, str)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_derive_from_sample, (0,)).get(timeout=60)
    if isinstance(got, str):
        assert "cannot run" in got and "spawn" in got
    else:
        assert np.array_equal(got, want)

@pytest.fixture
def stand_in_gpu(monkeypatch):
    """The gpu backends on a stand-in ``cupy`` (tests/gpu_cases.py): kernels emulated on the host."""
    import gpu_emulator as E
    from gpu_cases import use_stand_in_cupy
    from quantbook.bulk.gpu import scaled as GS
    from quantbook.bulk.gpu import vq as GV

    return use_stand_in_cupy(monkeypatch, E.any_emulator, build=lambda: (E.emulator(), E.vq_emulator()),
                             caches=(GS, GV))


@pytest.mark.parametrize("kind", ["plain", "nested", "vq"])
def test_states_a_gpu_made_travel_as_host_arrays(stand_in_gpu, kind):
    """A state a GPU made holds host arrays, the scales read-only with the device copy kept
    for them: a pickled or copied state is a plain host state, which the GPU uploads and
    checks again (nothing of the original's kept copy is reused), and every backend decodes it
    to the numpy reference's bits."""
    from gpu_cases import fake_device
    from quantbook.bulk.gpu.kept import kept

    x = np.random.default_rng(3).standard_normal((4, 256)).astype(np.float32)
    if kind == "vq":
        from quantbook.bulk.vq import quantize_vq

        packed, state = quantize_vq(fake_device(x), "higgs-2d-256", group=64, backend="gpu")
        field = "scales"
    else:
        packed, state = qb.quantize(fake_device(x), "nf4", 64, nested=kind == "nested", backend="gpu")
        field = "absmax"
    host_packed = np.asarray(packed).view(np.ndarray)
    want = _undo(kind, host_packed, state, "numpy")
    for how, c in _copies(state)[:-1]:   # copy.copy shares the kept array itself
        assert type(getattr(c, field)) is np.ndarray and kept(getattr(c, field), 0) is None, how
        for backend, p in (("numpy", host_packed), ("cpu", host_packed), ("gpu", packed)):
            got = np.asarray(_undo(kind, p, c, backend)).view(np.ndarray)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), (how, backend)


def test_the_shared_scaled_encoder_is_read_only():
    """scaled_encoder hands every caller the one encoder it cached for a table, as the scalar
    encoder and the step tables are shared: its arrays must refuse changes, or one caller's edit
    would change every later quantization in the process."""
    from quantbook.bulk.layouts import scaled_encoder, scaled_table

    table = scaled_table(qb.get("e2m1").code, 6.0)
    x = np.random.default_rng(4).standard_normal(4096).astype(np.float32)
    want = qb.quantize(x, "e2m1", 32, scale="e8m0", backend="numpy")[0]
    enc = scaled_encoder(table)
    for field in ("values", "mids", "up", "pos", "neg"):
        with pytest.raises(ValueError, match="read-only"):
            getattr(enc, field)[0] = 1
    assert scaled_encoder(table) is enc
    assert np.array_equal(qb.quantize(x, "e2m1", 32, scale="e8m0", backend="numpy")[0], want)
