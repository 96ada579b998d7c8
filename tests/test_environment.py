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


# what a table or a byte format holds, in float32 and bytes; float64 results differ from one CPU
# to another in their last bits (docs/derivation.md, "Reproducibility across CPUs")
_FLOAT32_WORK = textwrap.dedent("""
    import hashlib, json, warnings
    import numpy as np
    import quantbook
    from quantbook.derive import lloyd, nf, quantile
    from quantbook.verify.audit import audit

    def results():
        warnings.simplefilter("ignore")
        out = {}
        for name, cb in (("lloyd l2", lloyd(4, 64, "l2")), ("lloyd l1", lloyd(4, 64, "l1")),
                         ("lloyd laplace", lloyd(3, 16, source="laplace")), ("quantile", quantile(4, 64)),
                         ("nf4", nf(4, precision="float32-bnb")), ("lloyd e4m3", lloyd(4, 16, scale="e4m3"))):
            out[name] = cb.code_f32.tobytes().hex()
        for row in audit(["nf4", "af4", "max1960-n16"]):
            d = row.to_dict()
            out["audit " + row.name] = [d[k] for k in ("status", "reproduced", "bit_exact", "max_ulp", "explanation")]
        x = np.random.default_rng(0).standard_normal(1 << 12).astype(np.float32)
        for scale, bs in ((None, 64), ("e4m3", 16)):
            p, s = quantbook.quantize(x, "nf4", bs, scale=scale, backend="cpu")
            y = quantbook.dequantize(p, s, backend="cpu")
            out[f"quantize {scale}"] = hashlib.sha256(p.tobytes() + s.absmax.tobytes() + y.tobytes()).hexdigest()
        return out
""")


def _numpy_dispatched_features() -> list[str]:
    """The features numpy dispatches to (its loops beyond its baseline) that this CPU has."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:   # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    return [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]


def test_float32_tables_audit_and_bytes_are_the_same_on_another_cpu(tmp_path):
    """A process made to look like an old x86-64 CPU: numpy's loops at its baseline (its exp and
    log are then libm's, not its AVX-512 ones), glibc's libm without its FMA build, numba compiling
    for a generic x86-64 into an empty cache, OpenBLAS's SSE3 kernels.  The float32 tables of
    derived codebooks, the audit's verdicts and text and quantize's bytes are the same as here;
    the float64 levels underneath differ (by up to 275 ulp on an AVX-512 machine)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"the emulated CPU is an x86-64; this is {platform.machine()}")
    features = _numpy_dispatched_features()
    if not features:
        pytest.skip("this CPU has none of the features numpy dispatches to: nothing to turn off")
    env = dict(os.environ, NPY_DISABLE_CPU_FEATURES=" ".join(features), GLIBC_TUNABLES="glibc.cpu.hwcaps=-AVX2,-FMA",
               NUMBA_CPU_NAME="generic", NUMBA_CACHE_DIR=str(tmp_path), OPENBLAS_CORETYPE="Prescott",
               PYTHONWARNINGS="ignore")
    env.pop("NUMBA_CPU_FEATURES", None)
    code = _FLOAT32_WORK + "print(json.dumps(results()))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    here = {}
    exec(_FLOAT32_WORK, here)
    assert json.loads(r.stdout) == json.loads(json.dumps(here["results"]()))


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


def _float32_edge_distance(x) -> np.ndarray:
    """How far each float64 ``x`` lies from the nearest point where its float32 rounding changes
    (the midpoints between neighbouring float32 numbers), relative to ``|x|``; inf at 0."""
    x = np.asarray(x, dtype=np.float64)
    f = x.astype(np.float32)
    here = f.astype(np.float64)
    edges = [(here + np.nextafter(f, np.float32(s)).astype(np.float64)) / 2 for s in (np.inf, -np.inf)]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == 0, np.inf, np.minimum(*[np.abs(x - e) for e in edges]) / np.abs(x))


def _decimal_edge_distance(x, decimals) -> np.ndarray:
    """How far each ``x`` lies from the nearest point where its rounding to ``decimals`` places
    changes (``k + 1/2`` units of the last place), relative to ``|x|``; inf at 0."""
    x = np.asarray(x, dtype=np.float64)
    d = np.broadcast_to(np.asarray(decimals), x.shape)
    scaled = np.abs(x) * 10.0 ** d
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == 0, np.inf, np.abs(scaled - np.floor(scaled) - 0.5) / scaled)


def _significant(x, digits=4) -> np.ndarray:
    """The decimals that round ``x`` to ``digits`` significant digits."""
    return digits - 1 - np.floor(np.log10(np.abs(np.where(x == 0, 1.0, x)))).astype(int)


def test_audit_verdicts_stay_clear_of_the_rounding_edges_that_decide_them():
    """What the audit decides from float64 numbers (published decimals, Max's 4 significant
    digits, the float64 NF4 of its breakdown; the registry's float32 tables: the test below) is
    decided far from any rounding edge: every such number lies further than FLOAT32_EDGE_BOUND
    (relative; the one margin over the last digits another CPU changes) from an edge, so no CPU's
    last-bit differences can change a verdict, a ULP count or the text.  The edges are rebuilt by
    hand here (neighbouring float32 numbers, half units of the last decimal)."""
    import warnings

    from quantbook import REGISTRY
    from quantbook.codebooks.codebook import FLOAT32_EDGE_BOUND
    from quantbook.derive import nf
    from quantbook.derive.recipes import derive_from_recipe
    from quantbook.verify.optimality import optimality_report

    close = []

    def check(what, values, distance):
        d = distance(np.asarray(values, dtype=np.float64))
        close.extend(f"{what}[{i}] = {float(values[i])!r}: {d[i]:.1e}"
                     for i in np.flatnonzero(d <= FLOAT32_EDGE_BOUND))

    for name, entry in REGISTRY.items():
        if entry.expect != "decimals" and not name.startswith("max1960-"):
            continue
        cb = entry.codebook
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            derived = derive_from_recipe(cb.recipe)
        if entry.expect == "decimals":
            check(f"{name} decimals", derived.levels, lambda v: _decimal_edge_distance(v, entry.decimals))
        if name.startswith("max1960-"):   # levels, end points and the error at 4 significant digits
            y = derived.levels
            mse = optimality_report(cb.levels, "l2", None, "none", "normalized", "normal", [])["loss_optimum"]
            for what, v in (("levels", y), ("ends", (y[:-1] + y[1:]) / 2), ("mse", np.array([mse]))):
                check(f"{name} {what}", v, lambda u: _decimal_edge_distance(u, _significant(u)))
            check(f"{name} decimals", y, lambda v: _decimal_edge_distance(v, entry.decimals))
    for offset in ("929/960", "0.9677083"):   # the audit's breakdown of NF4
        check(f"nf4 float64 {offset}", nf(4, offset, "float64").code, _float32_edge_distance)
    assert close == []


def test_a_derived_level_near_a_float32_rounding_edge_warns(monkeypatch, capsys):
    """A derived float64 level closer than FLOAT32_EDGE_BOUND = 1e-11 (relative, docs/derivation.md)
    to a float32 rounding edge may round to the neighbouring float32 on another CPU: the derivation says so
    (RoundingEdgeWarning), naming the level; a level further away, or a float32 number, does not.
    The edges are those rebuilt by hand above (``_float32_edge_distance``)."""
    import warnings

    from quantbook.cli import main
    from quantbook.codebooks.codebook import FLOAT32_EDGE_BOUND, warn_float32_edges
    from quantbook.derive import RoundingEdgeWarning, lloyd

    assert FLOAT32_EDGE_BOUND == 1e-11 and issubclass(RoundingEdgeWarning, UserWarning)
    f = np.float32(0.3)
    mid = (float(f) + float(np.nextafter(f, np.float32(1)))) / 2   # exact in float64: a round-half-even tie
    for rel in (0.0, 1e-13, -5e-12, 9e-12, 1.2e-11, -3e-11, 1e-9):
        x = mid * (1 + rel)
        near = _float32_edge_distance([x])[0] < FLOAT32_EDGE_BOUND
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warn_float32_edges([0.0, 0.1, x], "codes")
        assert [w.category for w in caught] == ([RoundingEdgeWarning] if near else []), rel
        if near:
            assert f"level 2 ({x!r})" in str(caught[0].message) and "another CPU" in str(caught[0].message)
    with warnings.catch_warnings():   # float32 numbers, as published tables and bnb's NF4 hold
        warnings.simplefilter("error")
        warn_float32_edges(np.float32([-1, -0.6961928, 0, 1e-40, 3.4028235e38]), "a float32 table")

    lloyd_module = sys.modules["quantbook.derive.lloyd"]
    solve = lloyd_module._solve_levels

    def on_an_edge(*args):   # the solver's levels with the one nearest 0.3 moved onto its float32 tie
        levels, it, res = solve(*args)
        levels = levels.copy()
        levels[np.argmin(np.abs(levels - 0.3))] = mid
        return levels, it, res

    with warnings.catch_warnings():
        warnings.simplefilter("error", RoundingEdgeWarning)
        safe = lloyd(4, 64)
    assert _float32_edge_distance(safe.levels).min() > FLOAT32_EDGE_BOUND
    monkeypatch.setattr(lloyd_module, "_solve_levels", on_an_edge)
    with pytest.warns(RoundingEdgeWarning) as caught:
        cb = lloyd(4, 64)
    assert f"level {np.flatnonzero(cb.levels == mid)[0]} ({mid!r})" in str(caught[0].message)
    assert main(["derive", "lloyd", "--bits", "4"]) == 0
    assert "quantbook: warning: the 4-bit l2 code of normal" in capsys.readouterr().err


def _on_an_edge(v, rel=1e-13) -> float:
    """A float64 number ``rel`` (relative) above the float32 rounding edge next to ``v``: the
    midpoint of ``float32(v)`` and its neighbour away from 0, exact in float64, rebuilt by hand."""
    f = np.float32(v)
    mid = (float(f) + float(np.nextafter(f, np.float32(np.copysign(np.inf, v))))) / 2
    assert _float32_edge_distance([mid])[0] == 0
    return mid * (1 + rel)


def _edge_warnings(call):
    """``call()``'s result and the messages of the RoundingEdgeWarnings it gave."""
    import warnings

    from quantbook.derive import RoundingEdgeWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = call()
    return out, [str(w.message) for w in caught if w.category is RoundingEdgeWarning]


def test_every_registered_table_clears_the_float32_rounding_edges():
    """Every table of the registry, derived from its recipe, keeps its float32 bits on another
    CPU: each float64 number rounded to float32 on the way (the levels; NF4's quantiles before
    bitsandbytes stores them, rebuilt here from torch's float32 linspace) lies further than
    FLOAT32_EDGE_BOUND, 12 times the largest move between CPUs measured, from a float32 rounding
    edge (edges rebuilt by hand), and the derivations' own check agrees: no RoundingEdgeWarning.
    Prints each table's smallest margin."""
    import warnings
    from fractions import Fraction

    from scipy.stats import norm

    from quantbook import REGISTRY
    from quantbook.codebooks.codebook import FLOAT32_EDGE_BOUND
    from quantbook.derive import RoundingEdgeWarning
    from quantbook.derive.recipes import derive_from_recipe
    from quantbook.numerics import torch_f32

    margins = {}
    for name, entry in REGISTRY.items():
        recipe = entry.codebook.recipe
        with warnings.catch_warnings():
            warnings.simplefilter("error", RoundingEdgeWarning)
            values = [derive_from_recipe(recipe).levels]
        while recipe["method"] == "rounded":
            recipe = recipe["base"]
        if recipe["method"] == "nf" and recipe["precision"] == "float32-bnb":
            half = 2 ** (recipe["bits"] - 1)
            for n in (half + 1, half):   # bitsandbytes' quantiles, float64, before they are stored as float32
                p = torch_f32.linspace(float(Fraction(recipe["offset"])), 0.5, n)[:-1].astype(np.float64)
                values.append(norm.ppf(p))
        margins[name] = min(float(_float32_edge_distance(v).min()) for v in values)
    for name, m in sorted(margins.items(), key=lambda kv: kv[1]):
        print(f"smallest float32 rounding-edge margin (relative) of {name}: {m:.2e}")
    assert min(margins.values()) > FLOAT32_EDGE_BOUND, margins


def test_quantile_and_scaled_codes_near_a_float32_rounding_edge_warn(monkeypatch):
    """The quantile code checks its levels as the Lloyd code does; under a rule of the scaled
    layout, whose table is the levels times qmax rounded to float32 (other rounding edges), both
    check that table too: a level whose product with qmax lies 1e-13 from a float32 rounding edge
    warns, naming the scaled table, though the level itself lies clear of its own edges."""
    from quantbook.codebooks.codebook import FLOAT32_EDGE_BOUND
    from quantbook.derive import lloyd, quantile

    lloyd_module = sys.modules["quantbook.derive.lloyd"]
    quantiles, solve = lloyd_module._quantile_levels, lloyd_module._solve_levels

    def moved(levels, target):   # the level nearest 0.3 replaced by target(that level)
        levels = np.array(levels, dtype=np.float64)
        i = np.argmin(np.abs(levels - 0.3))
        levels[i] = target(levels[i])
        return levels

    def force(m, target):   # both derivations' levels with one moved
        def solved(*args):
            levels, it, res = solve(*args)
            return moved(levels, target), it, res

        m.setattr(lloyd_module, "_quantile_levels", lambda mu, n, fx: moved(quantiles(mu, n, fx), target))
        m.setattr(lloyd_module, "_solve_levels", solved)

    with monkeypatch.context() as m:
        force(m, _on_an_edge)
        cb, said = _edge_warnings(lambda: quantile(4, 64))
    assert len(said) == 1 and "quantile code of normal" in said[0], said
    i = int(np.argmin(_float32_edge_distance(cb.levels)))
    assert f"level {i} ({float(cb.levels[i])!r})" in said[0]

    for derive in (lloyd, quantile):
        with monkeypatch.context() as m:
            force(m, lambda v: _on_an_edge(6 * v) / 6)   # its product with qmax = 6 on an edge
            cb, said = _edge_warnings(lambda: derive(4, 32, scale="e8m0:floor"))
            plain = _edge_warnings(lambda: derive(4, 32))[1]   # the same level in the plain layout
        products = cb.levels * 6
        assert _float32_edge_distance(cb.levels).min() > FLOAT32_EDGE_BOUND   # the level itself lies clear
        assert _float32_edge_distance(products).min() < 1e-12 and plain == []
        assert len(said) == 1 and "scaled layout's table (levels x 6)" in said[0] and "e8m0:floor" in said[0], said
        j = int(np.argmin(_float32_edge_distance(products)))
        assert f"level {j} ({float(products[j])!r})" in said[0]


def test_nf_codes_warn_where_a_float64_number_they_round_to_float32_lies_on_an_edge(monkeypatch):
    """NF's float64 levels and the float64 quantiles float32-bnb stores as float32 come from
    scipy's normal quantile, whose last digits differ between CPUs: one forced 1e-13 from a
    float32 rounding edge warns, in ``nf`` and in the published recipes that build on it (nf4,
    and nf4-torchao through its base).  The exact precision computes in mpmath, the same on every
    CPU: a level on an edge does not warn there."""
    import mpmath
    from scipy.stats import norm

    from quantbook import REGISTRY
    from quantbook.derive import nf
    from quantbook.derive.recipes import derive_from_recipe

    nf_module = sys.modules["quantbook.derive.normal_float"]

    class Forced:   # scipy's norm with the quantile nearest ``at`` (times the largest) moved onto an edge
        at = 0.3

        @classmethod
        def ppf(cls, p):
            q = norm.ppf(p)
            top = norm.ppf(p[0]) if cls.at < 1 else 1.0
            i = np.argmin(np.abs(q - cls.at * top))
            q[i] = _on_an_edge(q[i] / top) * top
            return q

    monkeypatch.setattr(nf_module, "norm", Forced)
    cb, said = _edge_warnings(lambda: nf(4, precision="float64"))
    assert said and "the float64 code 'nf4-float64'" in said[0], said
    assert _float32_edge_distance(cb.levels).min() < 1e-12

    Forced.at = 1.5   # float32-bnb: a quantile itself (units of sigma), before it is stored
    for call in (lambda: nf(4, precision="float32-bnb"), lambda: derive_from_recipe(REGISTRY["nf4"].codebook.recipe),
                 lambda: derive_from_recipe(REGISTRY["nf4-torchao"].codebook.recipe)):
        said = _edge_warnings(call)[1]
        assert said and "the float32-bnb code 'nf4'" in said[0], said
    monkeypatch.undo()

    exact = nf_module.nf_exact

    def exact_on_an_edge(*args):
        levels = exact(*args)
        i = int(np.argmin([abs(float(v) - 0.3) for v in levels]))
        levels[i] = mpmath.mpf(_on_an_edge(float(levels[i])))
        return levels

    monkeypatch.setattr(nf_module, "nf_exact", exact_on_an_edge)
    cb, said = _edge_warnings(lambda: nf(4, precision="exact"))
    assert _float32_edge_distance(cb.levels).min() < 1e-12 and said == []


def test_search_lloyd_warns_for_its_start_and_vq_for_nothing(monkeypatch):
    """``search_lloyd`` fits float32 samples with float64 sums in a fixed order and ``derive vq``
    too, the same bits on every CPU: a fitted level or point on a float32 rounding edge does not
    warn.  What could differ is the start of ``search_lloyd``, the exact Lloyd code of the base
    rule (its scaled table decides the first fit, and a level whose cell stays empty keeps its
    value): a start level on an edge warns through ``lloyd``."""
    from quantbook.derive import search_lloyd
    from quantbook.derive.vq import solve_vq

    lloyd_module = sys.modules["quantbook.derive.lloyd"]
    search_module = sys.modules["quantbook.derive.search_lloyd"]
    vq_module = sys.modules["quantbook.derive.vq"]
    solve, step, vq_lloyd = lloyd_module._solve_levels, search_module._step, vq_module._lloyd

    def start_on_an_edge(*args):
        levels, it, res = solve(*args)
        levels = levels.copy()
        i = np.argmin(np.abs(levels - 0.3))
        levels[i] = _on_an_edge(levels[i])
        return levels, it, res

    def fit_on_an_edge(*args):
        new, err = step(*args)
        new = new.copy()
        i = np.argmin(np.abs(new - 0.3))
        new[i] = _on_an_edge(new[i])
        return new, err

    def points_on_an_edge(*args, **kw):
        c, *rest = vq_lloyd(*args, **kw)
        c = c.copy()
        c[0, 0] = _on_an_edge(c[0, 0])
        return c, *rest

    with monkeypatch.context() as m:
        m.setattr(search_module, "_step", fit_on_an_edge)
        m.setattr(vq_module, "_lloyd", points_on_an_edge)
        cb, said = _edge_warnings(lambda: search_lloyd(4, 16, samples=2**14))
        assert _float32_edge_distance(cb.levels).min() < 1e-12 and said == []
        vq, said = _edge_warnings(lambda: solve_vq(dim=2, points=16, samples=20000, coarse_samples=2000,
                                                   restarts=1).codebook)
        assert said == [] and vq.points.dtype == np.float32
    monkeypatch.setattr(lloyd_module, "_solve_levels", start_on_an_edge)
    said = _edge_warnings(lambda: search_lloyd(4, 16, samples=2**14))[1]
    assert said and "4-bit l2 code of normal (absmax, B=16, weight domain)" in said[0], said
