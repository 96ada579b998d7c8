"""quantbook inside a program with settings of its own: numpy's error state and the warnings
filter (where quantbook's own warnings point: tests/test_warnings.py).

* Under ``np.errstate(all="raise")`` and ``warnings.simplefilter("error")`` every public entry
  point given valid input answers as under numpy's defaults, to the bit (quantbook/numerics/fpstate.py):
  no FloatingPointError from an underflow, a 0/0 or an overflow it relies on, no RuntimeWarning.
  The reference is the same calls in another process under the defaults: both processes start
  with empty caches, so each mode computes every answer itself.
* quantbook leaves the caller's error state as it found it, after an error too.

Run as a script (``python tests/test_fpstate.py strict|default``) this module prints the digest of
every case's answer as JSON: what the first test compares.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

import quantbook

HERE = Path(__file__).resolve()
# where the quantbook under test is imported from, for the subprocesses
ROOT = Path(quantbook.__file__).resolve().parents[1]


# ------------------------------------------------------------------ the cases
def _digest(obj, h) -> None:
    """Feed ``obj``'s value, to the bit, into the hash ``h`` (a run's seconds and paths left out)."""
    if isinstance(obj, np.ndarray):
        h.update(f"{obj.dtype}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _digest(v, h)
        h.update(b"]")
    elif isinstance(obj, dict):
        for k in sorted(obj, key=repr):
            if k not in ("seconds", "file"):
                h.update(repr(k).encode())
                _digest(obj[k], h)
    elif isinstance(obj, (float, np.floating)):
        h.update(np.float64(obj).tobytes())
    elif isinstance(obj, (str, bytes, int, bool, type(None), np.integer, np.bool_, np.dtype)):
        h.update(repr(obj).encode())
    elif hasattr(obj, "to_dict"):
        _digest(obj.to_dict(), h)
        for name in ("levels", "code", "points"):
            if hasattr(obj, name):
                _digest(np.asarray(getattr(obj, name)), h)
    elif hasattr(obj, "__dataclass_fields__"):
        _digest({k: getattr(obj, k) for k in obj.__dataclass_fields__}, h)
    else:
        _digest({k: v for k, v in vars(obj).items() if not k.startswith("_")}, h)


def _or_error(f, *args, **kwargs):
    """``f(*args, **kwargs)``, or the message of the ValueError it raises (an answer too)."""
    try:
        return f(*args, **kwargs)
    except ValueError as exc:
        return f"ValueError: {exc}"


#: points and probabilities at the edges of every law's domain
_XS = np.array([0.0, -0.0, 5e-324, 1e-300, 0.5, -1.0, 1.0, np.nextafter(1.0, 0.0), 1.5, 8.0, 40.0, -40.0, 1e300,
                -1e300, np.inf, -np.inf, np.nan])
_QS = np.array([0.0, 5e-324, 1e-300, 1e-20, 0.3, 0.5, 1 - 1e-16, 1.0, -0.1, 1.1, np.nan])


def _law(law):
    out = {}
    for name in ("pdf", "logpdf", "cdf", "logcdf", "sf", "logsf", "ppf", "isf", "abs_ppf", "abs_isf", "abs_log_isf"):
        f = getattr(law, name, None)
        if f is None:
            continue
        args = _QS if name in ("ppf", "isf", "abs_ppf", "abs_isf") else _XS
        if name == "abs_log_isf":
            args = np.array([0.0, -1e-300, -0.5, -40.0, -800.0, -1e5, -np.inf, np.nan])
        out[name] = (f(args), [f(float(v)) for v in args])
    for name in ("mean", "var", "std", "median", "entropy", "support"):
        if hasattr(law, name):
            v = getattr(law, name)
            out[name] = _or_error(v) if callable(v) else v
    if hasattr(law, "partial_moment"):
        out["partial_moment"] = [law.partial_moment(k, _XS) for k in (0, 1, 2)]
    out["moment"] = [_or_error(law.moment, k) for k in (0, 1, 2)]
    if hasattr(law, "expect"):
        out["expect"] = law.expect(lambda y: y * y)
    out["rvs"] = _or_error(law.rvs, 64, random_state=3)
    return out


def _arrays():
    """Inputs of every kind a tensor may hold: zeros, subnormals, the ends of float32's range (made
    as the module loads, under numpy's defaults: their own casts underflow)."""
    rng = np.random.default_rng(7)
    blocks = [rng.standard_normal(64), np.zeros(64), np.full(64, 1e-42), np.full(64, 1e-38),
              np.r_[3e38, rng.standard_normal(63)], np.r_[1e-42, np.zeros(63)], np.full(64, -3.4028235e38),
              rng.standard_normal(64) * 1e-20, rng.standard_normal(37)]
    x = np.concatenate(blocks).astype(np.float32)
    out = {"float32": x, "float16": np.r_[x[:128], [65504, 6e-8, -6e-8] * 21].astype(np.float16)}
    try:
        import ml_dtypes

        out["bfloat16"] = x.astype(ml_dtypes.bfloat16)
    except ImportError:
        pass
    return out


_ARRAYS = _arrays()


def _quantize(backend, rule):
    out = {}
    for dname, x in _ARRAYS.items():
        for cb in ("nf4", "e2m1", "iq4_nl"):
            for bs in (16, 32, 64):
                kw = {} if rule is None else {"scale": rule}
                r = _or_error(quantbook.quantize, x, cb, bs, backend=backend, **kw)
                out[dname, cb, bs] = r if isinstance(r, str) else (*r, quantbook.dequantize(*r, backend=backend))
    x = _ARRAYS["float32"]
    nonfinite = np.r_[x[:100], np.nan, np.inf, -np.inf, x[100:200]].astype(np.float32)
    kw = {} if rule is None else {"scale": rule}
    r = _or_error(quantbook.quantize, nonfinite, "nf4", 64, backend=backend, allow_nonfinite=True, **kw)
    out["nonfinite"] = r if isinstance(r, str) else (*r, quantbook.dequantize(*r, backend=backend))
    if rule is None:
        for cb, bits in (("nf4", None), ("fp4", None), ("nf2", None), ("lloyd-l2-64", 8)):
            for nested in (False, True):
                r = _or_error(quantbook.quantize, x[:512], cb, 64, nested=nested, backend=backend, bits=bits)
                out[cb, bits, nested] = r if isinstance(r, str) else (*r, quantbook.dequantize(*r, backend=backend))
    return out


def _vq_arrays():
    x = np.random.default_rng(3).standard_normal((6, 128))
    x[0], x[1, :64] = 0, 1e-42
    xs = {"float32": x.astype(np.float32), "float16": x.astype(np.float16)}
    xs["float32"][2, :64] = 3e38
    xs["float16"][2, :64] = 6e4
    return xs


_VQ_ARRAYS = _vq_arrays()


def _quantize_vq(backend):
    from quantbook.bulk import dequantize_vq, quantize_vq

    xs, out = _VQ_ARRAYS, {}
    for name in ("higgs-2d-16", "higgs-1d-8", "vq-2d-256"):
        for scale in ("rms", "absmax"):
            for rotate in ("hadamard", "none"):
                for sd in ("float16", "float32"):
                    for dt in ("float32", "float16"):
                        r = _or_error(quantize_vq, xs[dt], name, group=64, scale=scale, rotate=rotate,
                                      backend=backend, scale_dtype=sd)
                        out[name, scale, rotate, sd, dt] = r if isinstance(r, str) else \
                            (*r, dequantize_vq(*r, backend=backend))
    return out


def _scale_rules():
    from quantbook.scales import get_rule, rule_names

    amax = np.array([0.0, 1e-45, 1e-40, 1e-38, 1e-30, 0.37, 1.0, 6.0, 2688.0, 1e30, 3.4028235e38], dtype=np.float32)
    out = {}
    for name in rule_names():
        rule = get_rule(name)
        big = out[name, "tensor scale"] = _or_error(rule.tensor_scale, 1e30, 6.0)   # fouroversix refuses it
        for t in [v for v in (big, rule.tensor_scale(1e-30, 6.0)) if not isinstance(v, str)]:
            stored = _or_error(rule.encode, amax, 6.0, t)
            out[name, t, "encode"] = stored
            if not isinstance(stored, str):
                out[name, t, "decode"] = _or_error(rule.decode, stored, t)
                out[name, t, "divisor"] = _or_error(rule.divisor, stored, t)
            out[name, t, "scale"] = _or_error(rule.scale, amax, 6.0, t)
            out[name, t, "storable"] = _or_error(rule.storable, amax, 6.0, t)
            out[name, t, "breakpoints"] = _or_error(rule.breakpoints, 6.0, t, 0.0, 1e-30)
    return out


def _codebooks():
    from quantbook.codebooks.vector import VectorCodebook
    from quantbook.codebooks.vector_registry import get_vector, vector_names

    y = np.array([0.0, -0.0, 1e-45, -1e-40, 0.3, -0.7, 1.0, -1.0, 2.0, 3e38, np.inf, -np.inf], dtype=np.float32)
    y64 = np.array([1e-300, -1e-42, 5e-324, 1e-38, 0.3, 1e39, -np.inf])
    out = {}
    for name in quantbook.names():
        cb = quantbook.get(name)
        out[name] = (cb.encode(y), cb.encode(y, "float32"), cb.quantize(y), cb.decode(np.arange(cb.code.size)),
                     cb.thresholds, cb.to_json(), cb.encode(y64), cb.encode(y64, "float32"), cb.quantize(y64),
                     cb.encoder("float32")(y64))
    tiny = quantbook.Codebook(levels=[-1.0, -1e-30, 0.0, 1e-40, 1.0], bits=3, name="tiny")   # a subnormal float32
    out["tiny"] = (tiny, tiny.levels_f32, tiny.code_f32, tiny.encode(y64, "float32"), tiny.quantize(y),
                   tiny.thresholds_f32, quantbook.Codebook.from_json(tiny.to_json()))
    v = VectorCodebook(points=[[0.0, 1e-40], [1e-300, 1.0], [-1.0, 0.5]], name="tiny2d")
    out["tiny2d"] = (v, v.nearest([[0.0, 0.0], [1e-42, 3e38]]), VectorCodebook.from_json(v.to_json()))
    for name in vector_names():
        v = get_vector(name)
        pts = np.array([[0.0] * v.dim, [1e-42] * v.dim, [3e38] * v.dim, [-1e-300] * v.dim])
        out[name] = (v.nearest(pts), v.quantize(pts), v.decode(np.arange(min(v.size, 4))))
    return out


def _derivations():
    from quantbook import derive as D
    from quantbook.derive.vq import solve_vq

    out = {}
    for bits in (2, 4, 8):
        for precision in D.PRECISIONS:
            out["nf", bits, precision] = _or_error(D.nf, bits, None, precision)
    out["nf_exact"] = [str(v) for v in D.nf_exact(4)]
    out["offset"] = repr(D.derive_offset(4))
    for kw in (dict(bits=4, block_size=64), dict(bits=4, block_size=64, loss="l1"),
               dict(bits=3, block_size=16, source="laplace"), dict(bits=4, block_size=32, source="student-t:5"),
               dict(bits=4, block_size=64, source="student-t:2", domain="normalized"),
               dict(bits=4, block_size=64, source="student-t:0.5", domain="normalized"),
               dict(bits=4, block_size=None, normalization="none"), dict(bits=2, block_size=4096),
               dict(bits=4, block_size=64, normalization="signed-absmax", fixed=()),
               dict(bits=4, block_size=16, scale="e4m3"), dict(bits=4, block_size=32, scale="e8m0:floor"),
               dict(bits=4, block_size=16, scale="float16"), dict(bits=4, block_size=16, scale="bfloat16"),
               dict(bits=4, block_size=16, scale="e4m3", tensor_size=1024), dict(bits=4, block_size=64, scale="nested"),
               dict(bits=4, block_size=16, scale="fouroversix:6"), dict(bits=8, block_size=64)):
        out["lloyd", str(kw)] = D.solve_lloyd(**kw)
        out["quantile", str(kw)] = D.quantile(**{k: v for k, v in kw.items() if k != "loss"})
    out["halves"] = D.lloyd(4, 64, loss="l1", partition="halves")
    for kw in (dict(block_size=64), dict(block_size=64, source="student-t:2"), dict(block_size=16, scale="e4m3"),
               dict(block_size=32, scale="e8m0:rceil"), dict(block_size=16, scale="e4m3", tensor_size=1024),
               dict(block_size=64, scale="nested"), dict(block_size=None, normalization="none", source="laplace")):
        for name in ("nf4", "af4", "e2m1"):
            out["evaluate", name, str(kw)] = D.evaluate(quantbook.get(name), **kw)
    out["search"] = D.solve_search_lloyd(4, 16, "search:4over6", samples=16 * 1000, max_iter=3)
    out["search ggml"] = D.solve_search_lloyd(4, 32, "search:ggml", samples=32 * 500, max_iter=2)
    out["evaluate_search"] = [D.evaluate_search(quantbook.get("e2m1"), 16, s, samples=16 * 200)
                              for s in ("search:4over6", "search:fouroversix", "search:ggml", "search:ggml-ref")]
    for kw in (dict(dim=2, points=16), dict(dim=2, points=16, scale="rms", block_size=64),
               dict(dim=1, points=8, source="laplace")):
        out["vq", str(kw)] = solve_vq(samples=8000, restarts=1, coarse_samples=2000, **kw)
    sample = np.r_[np.random.default_rng(1).standard_normal(3000), np.zeros(50), 1e-300, 1e3]
    out["empirical"] = D.lloyd(4, 64, source=D.Empirical(sample), name="sample")
    return out


def _laws():
    from quantbook import derive as D
    from quantbook.derive.scaled import ScaledBlockDistribution

    out = {}
    for spec in ("normal", "laplace", "student-t:5", "student-t:2", "student-t:1", "student-t:0.5", "student-t:1e6"):
        out[spec] = _law(D.parse_source(spec))
    out["empirical"] = _law(D.Empirical(np.random.default_rng(0).standard_normal(2000)))
    out["empirical ties"] = _law(D.Empirical(np.r_[np.zeros(100), np.ones(100), np.arange(50.0)]))
    for args in ((64,), (16, "laplace", "signed-absmax"), (8, "student-t:2"), (None, "normal", "none")):
        out["block", args] = _law(D.BlockDistribution(*args))
    for args, kw in (((16, "normal", "e4m3"), {}), ((32, "normal", "e8m0:floor"), {}),
                     ((16, "laplace", "float16"), {}), ((16, "normal", "e4m3"), {"tensor_size": 1024})):
        out["scaled", args, str(kw)] = _law(ScaledBlockDistribution(*args, **kw))
    return out


def _audits_and_exports():
    from quantbook.codebooks.vector_registry import get_vector, vector_names
    from quantbook.export import FORMATS, VECTOR_FORMATS, export
    from quantbook.verify import audit
    from quantbook.verify.layouts import layout_findings
    from quantbook.verify.vq import audit_vectors

    out = {"audit": audit(), "layouts": layout_findings("nf4"), "vectors": audit_vectors(samples=20000)}
    for name in quantbook.names():
        for fmt in FORMATS:
            out[name, fmt] = _or_error(export, quantbook.get(name), fmt)
    for name in vector_names():
        for fmt in VECTOR_FORMATS:
            out[name, fmt] = export(get_vector(name), fmt)
    return out


def _model(tmp):
    from safetensors.numpy import save_file

    from quantbook.model import evaluate_model, safetensors_source, sample_weights
    from quantbook.naming import resolve_codebooks

    rng = np.random.default_rng(2)
    path = os.path.join(tmp, "m.safetensors")
    save_file({"a.weight": rng.standard_normal((64, 128)).astype(np.float32),
               "z.weight": np.zeros((64, 64), np.float32),
               "t.weight": (rng.standard_normal((32, 64)) * 1e-30).astype(np.float32),
               "d.weight": rng.standard_normal((16, 64)) * 1e-200}, path)   # float64, its squares underflow
    cbs = resolve_codebooks("nf4,af4,e2m1,lloyd-l2-64", 64)
    out = {"plain": evaluate_model(path, cbs, 64), "nested": evaluate_model(path, cbs, 64, nested=True),
           "rotations": evaluate_model(path, cbs, 64, rotations=("none", "hadamard")),
           "e4m3": evaluate_model(path, resolve_codebooks("nf4,e2m1", 16), 16, scale="e4m3"),
           "sample": [sample_weights(path, standardize=s) for s in ("row", "tensor", "none")]}
    src = safetensors_source(path)
    out["source"] = (src.pdf(_XS), src.cdf(_XS), src.ppf(_QS))
    return out


def _plots(tmp):
    from quantbook.naming import resolve_codebooks
    from quantbook.plots import plot_levels, plot_sweep, sweep_errors

    cbs = resolve_codebooks("nf4,af4,e2m1", 64)
    plot_levels(cbs, 64, os.path.join(tmp, "levels.png"))
    plot_sweep(cbs, os.path.join(tmp, "sweep.pdf"))
    return [sweep_errors(cb, [16, 64, 4096], source) for _, cb in cbs for source in ("normal", "student-t:2")]


def _command_line(tmp):
    from quantbook.cli import main

    np.save(os.path.join(tmp, "s.npy"), np.random.default_rng(0).standard_normal(3000))
    out = {}
    for argv in (["list", "--json"], ["show", "af4", "--json"], ["derive", "nf", "--bits", "4", "--json"],
                 ["derive", "lloyd", "--bits", "4", "--block-size", "32", "--json"],
                 ["derive", "lloyd", "--bits", "4", "--source", os.path.join(tmp, "s.npy")],
                 ["derive", "quantile", "--bits", "3", "--scale", "e4m3", "--block-size", "16"],
                 ["evaluate", "nf4", "--source", "student-t:2"], ["evaluate", "e2m1", "--block-size", "16",
                                                                  "--scale", "e8m0:floor"],
                 ["export", "nf4", "--format", "c"], ["show", "higgs-2d-16"]):
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = main(argv)
        assert status == 0, (argv, stderr.getvalue())
        out[tuple(a.replace(tmp, "TMP") for a in argv)] = (stdout.getvalue().replace(tmp, "TMP"),
                                                           stderr.getvalue().replace(tmp, "TMP"))
    return out


def _cases(tmp) -> dict:
    from quantbook.scales import rule_names

    importlib.import_module("gpu_emulator")   # the "gpu-emulated" backend: the GPU backend's host side

    cases = {"laws": _laws, "codebooks": _codebooks, "derivations": _derivations, "scale rules": _scale_rules,
             "audits and exports": _audits_and_exports, "model": lambda: _model(tmp),
             "plots": lambda: _plots(tmp), "command line": lambda: _command_line(tmp)}
    for backend in ("numpy", "cpu", "gpu-emulated"):
        for rule in (None, *rule_names()):
            cases[f"quantize {backend} {rule}"] = lambda b=backend, r=rule: _quantize(b, r)
        cases[f"quantize_vq {backend}"] = lambda b=backend: _quantize_vq(b)
    return cases


def _run_cases(mode: str) -> dict:
    """Every case's answer (its digest, or the exception it raised) and the warnings it gave,
    under ``mode``: ``"strict"`` (``np.errstate(all="raise")`` and warnings as errors, quantbook's
    own warnings aside) or ``"default"`` (numpy's defaults)."""
    from quantbook.bulk import CodebookRangeWarning
    from quantbook.derive import LloydWarning, RoundingEdgeWarning

    own = (CodebookRangeWarning, LloydWarning, RoundingEdgeWarning)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, case in _cases(tmp).items():
            state = np.geterr()
            with warnings.catch_warnings(record=True) as caught, contextlib.ExitStack() as stack:
                warnings.simplefilter("error" if mode == "strict" else "always")
                for category in own:   # quantbook's warnings about the answer, not the arithmetic
                    warnings.filterwarnings("always", category=category)
                # a dependency's notice of its own API (matplotlib 3.7 calls pyparsing's old names), not the
                # arithmetic: recorded in both modes (the newest versions' run makes them errors on its own)
                for category in (DeprecationWarning, PendingDeprecationWarning):
                    warnings.filterwarnings("always", category=category)
                if mode == "strict":
                    stack.enter_context(np.errstate(all="raise"))
                try:
                    h = hashlib.sha256()
                    _digest(case(), h)
                    answer = h.hexdigest()
                except Exception as exc:  # noqa: BLE001 - reported, as the answer
                    answer = f"{type(exc).__name__}: {exc}"
            assert np.geterr() == state, name
            results[name] = {"answer": answer, "warnings": sorted({f"{w.category.__name__}: {w.message}"
                                                                   for w in caught})}
    return results


# ------------------------------------------------------------------ the tests
def _in_a_new_process(mode: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(HERE), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=HERE.parent)


def test_valid_input_gives_the_same_bits_under_errstate_raise_and_warnings_as_errors():
    """Every public entry point (derivations of each kind, the laws' methods at the ends of their
    domains, quantize and dequantize on every CPU backend under every scale rule, the vector
    layout, the audits, export, a model's evaluation, the command line) gives under
    ``np.errstate(all="raise")`` and ``warnings.simplefilter("error")`` the bits and the warnings
    it gives under numpy's defaults.  Before, a far tail's density underflowing (a derivation,
    any law's pdf at 40) raised FloatingPointError, and so did a tiny weight in quantize."""
    runs = {mode: _in_a_new_process(mode) for mode in ("strict", "default")}
    done = {}
    try:
        for mode, proc in runs.items():
            done[mode] = proc.communicate(timeout=900)
    finally:   # a failure leaves no process running
        for proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    got = {}
    for mode, proc in runs.items():
        assert proc.returncode == 0, done[mode][1][-3000:]
        got[mode] = json.loads(done[mode][0])
    strict, default = got["strict"], got["default"]
    assert set(strict) == set(default)
    broken = {k: v["answer"] for k, v in default.items() if ":" in v["answer"]}
    assert not broken, broken   # each case answers under the defaults
    differ = {k: (strict[k], default[k]) for k in default if strict[k] != default[k]}
    assert not differ, differ


@pytest.mark.parametrize("settings", [dict(all="raise"), dict(divide="warn", over="ignore", under="print",
                                                               invalid="call")], ids=["raise", "mixed"])
def test_the_callers_error_state_is_left_as_it_was(settings):
    """quantbook sets numpy's error state only inside its own calls: the caller's is the same
    after a call, after one that raised an error, and after one that raised inside a local
    ``np.errstate`` of quantbook's (a refused overflow)."""
    from quantbook import derive as D
    from quantbook.derive import BlockDistribution, lloyd

    def calls():
        yield lambda: quantbook.quantize(np.float32([1e-42, 0.5, 0.0] * 32), "nf4", 32, backend="numpy")
        yield lambda: BlockDistribution(16).ppf([0.0, 1e-300, 0.5])
        yield lambda: lloyd(4, 32)
        yield lambda: quantbook.quantize(np.float32([np.nan] * 64), "nf4", 64)       # NaN refused
        yield lambda: quantbook.quantize(np.float32([3e38, 1e-42] * 8), "e2m1", 16, scale="float16")  # overflow refused
        yield lambda: D.Empirical([1.0, np.nan])                                    # refused inside ignore_underflow
        yield lambda: lloyd(9, 64)                                                  # bad bits
        yield lambda: quantbook.get("e2m1").encode([1.0, "x"])                      # not numbers

    def handler(kind, flag):
        pass

    with np.errstate(call=handler, **settings):
        before = (np.geterr(), np.geterrcall())
        for call in calls():
            with warnings.catch_warnings(), contextlib.suppress(ValueError, IndexError, TypeError):
                warnings.simplefilter("ignore")
                call()
            assert (np.geterr(), np.geterrcall()) == before


if __name__ == "__main__":
    print(json.dumps(_run_cases(sys.argv[1])))
