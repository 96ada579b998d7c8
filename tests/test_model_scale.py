"""``evaluate-model --scale``: the scaled layouts (docs/scales.md) in the weight-error table.

The reference is the bulk API itself on the numpy backend (the CLI runs the default
backend), with the error sums written here in plain numpy; bits per weight against the
closed forms of docs/scales.md: 4-bit codes, one stored scale byte per block (partial last
block included) and, for e4m3, a float32 tensor scale per tensor.  Weights: seeded N(0, 1).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import quantbook
from quantbook.cli import main


# even sizes (whole bytes of codes); 300 is not a multiple of 16 or 32 (a partial last block)
SHAPES = {"a.weight": (64, 48), "b.weight": (10, 30)}


def _save_file(tensors, path) -> None:
    """Write a test file with safetensors (quantbook reads them with its own code, so only the
    tests that write one need the package)."""
    st = pytest.importorskip("safetensors.numpy", reason="safetensors writes the test files: pip install safetensors")
    st.save_file(tensors, str(path))


@pytest.fixture()
def model(tmp_path):
    rng = np.random.default_rng(20261125)
    tensors = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    path = tmp_path / "m.safetensors"
    _save_file(tensors, str(path))
    return path, tensors


def _run(capsys, *argv) -> dict:
    assert main(["evaluate-model", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("scale,block,tensor_bits", [("e4m3", 16, 32), ("e8m0:floor", 32, 0)])
def test_scaled_mse_and_bits(capsys, model, scale, block, tensor_bits):
    path, tensors = model
    d = _run(capsys, str(path), "-c", "e2m1", "-B", str(block), "--scale", scale)
    assert d["scale"] == scale and d["block_size"] == block
    sse, n, bits = 0.0, 0, 0
    for x in tensors.values():
        packed, state = quantbook.quantize(x, "e2m1", block, scale=scale, backend="numpy")
        xhat = quantbook.dequantize(packed, state, backend="numpy")
        e = xhat.astype(np.float64) - x.astype(np.float64)
        sse += float(np.sum(e * e))
        n += x.size
        bits += 4 * x.size + 8 * math.ceil(x.size / block) + tensor_bits
    got = d["codebooks"]["e2m1"]
    assert got["mse_weight"] == pytest.approx(sse / n, rel=1e-12)
    assert got["bits_per_weight"] == pytest.approx(bits / n, rel=1e-15)
    # sanity: the scaled layout really ran (E2M1 at qmax 6 is not the bnb fp4 layout's error)
    assert sse > 0


def test_json_records_the_qmax_it_ran(capsys, model):
    """The JSON says which qmax made its errors (the table is rescaled to it), and null where
    bitsandbytes' layouts have none."""
    path, _ = model
    assert _run(capsys, str(path), "-c", "e2m1", "-B", "16", "--scale", "e4m3", "--qmax", "3")["qmax"] == 3.0
    assert _run(capsys, str(path), "-c", "e2m1", "-B", "16", "--scale", "e4m3")["qmax"] == 6.0
    assert _run(capsys, str(path), "-c", "nf4")["qmax"] is None
    assert _run(capsys, str(path), "-c", "nf4", "--nested")["qmax"] is None


def test_nested_rule_is_the_nested_flag(capsys, model):
    path, tensors = model
    a = _run(capsys, str(path), "-c", "nf4", "--scale", "nested")
    b = _run(capsys, str(path), "-c", "nf4", "--nested")
    assert a == b and a["nested"] is True and a["scale"] == "nested"
    c = _run(capsys, str(path), "-c", "nf4")
    n = sum(x.size for x in tensors.values())
    bits = sum(4 * x.size + 32 * math.ceil(x.size / 64) for x in tensors.values())
    assert c["scale"] == "float32" and c["codebooks"]["nf4"]["bits_per_weight"] == pytest.approx(bits / n, rel=1e-15)


def test_float16_scale_bits(capsys, model):
    path, tensors = model
    d = _run(capsys, str(path), "-c", "nf4", "-B", "16", "--scale", "float16")
    n = sum(x.size for x in tensors.values())
    bits = sum(4 * x.size + 16 * math.ceil(x.size / 16) for x in tensors.values())
    assert d["codebooks"]["nf4"]["bits_per_weight"] == pytest.approx(bits / n, rel=1e-15)


@pytest.mark.parametrize("argv", [
    ["-c", "nf5", "--scale", "e4m3", "-B", "16"],  # 32 entries: the scaled layout holds 16
    ["-c", "e2m1", "--scale", "e4m3", "--nested"],
    ["-c", "e2m1", "--scale", "e9m0"],
    ["-c", "e2m1", "--scale", "e4m3", "--qmax", "0"],
    ["-c", "e2m1", "--scale", "e4m3", "--qmax", "nan"],
    ["-c", "nf4", "--scale", "float32", "--qmax", "4"],
    ["-c", "nf4", "--qmax", "4"],
])
def test_bad_scale_input(capsys, model, argv):
    path, _ = model
    assert main(["evaluate-model", str(path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err


def test_bad_scale_fails_before_reading(tmp_path):
    # the codebook check comes before any tensor is read: a missing tensor selection is not reached
    from quantbook.model import evaluate_model
    from quantbook.naming import resolve_codebooks

    path = tmp_path / "m.safetensors"
    _save_file({"w": np.ones((4, 16), np.float32)}, str(path))
    with pytest.raises(ValueError, match="at most 16 entries"):
        evaluate_model(str(path), resolve_codebooks("nf5", 16), block_size=16, scale="e4m3")


def test_weight_swap_scaled():
    # the --task path quantizes through WeightSwap: the same bytes as quantbook.quantize (numpy)
    torch = pytest.importorskip("torch", reason="WeightSwap swaps torch nn.Linear weights")
    from quantbook.model.evaluate import resolve_scale
    from quantbook.model.quality import WeightSwap
    from quantbook.naming import resolve_codebooks

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    w0 = lin.weight.detach().numpy().copy()
    (label, cb), = resolve_codebooks("e2m1", 16)
    _, rule, nested = resolve_scale("e4m3", False, [(label, cb)])
    packed, state = quantbook.quantize(w0, "e2m1", 16, scale="e4m3", backend="numpy")
    ref = quantbook.dequantize(packed, state, backend="numpy")
    with WeightSwap([("l.weight", lin)]) as swap:
        s = swap.apply(cb, 16, nested, "none", "cpu", scale=rule, qmax=6.0)
        assert np.array_equal(lin.weight.detach().numpy(), ref)
    assert np.array_equal(lin.weight.detach().numpy(), w0)  # restored
    assert s.mse == pytest.approx(float(np.mean((ref.astype(np.float64) - w0) ** 2)), rel=1e-12)
    assert s.bits_per_weight == (4 * w0.size + 8 * w0.size // 16 + 32) / w0.size
