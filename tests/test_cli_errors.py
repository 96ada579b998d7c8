"""Bad input on the command line: every user error is one line on stderr and exit status 2.

Each case runs ``quantbook.cli.main`` (in a subprocess where a resource limit or a time limit
is part of the case) and checks the contract: exit status 2, exactly one line
``quantbook[ SUBCMD]: error: ...``, no traceback, and no damage (an existing output file
keeps its bytes, no stray files).
"""

import json
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

import quantbook.cli
from quantbook.cli import main

# where the quantbook under test is imported from, for the subprocesses (a copy of tests/ run
# against an installed wheel has no package beside it)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(quantbook.cli.__file__))))


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_user_error(rc, err, *fragments):
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), err
    assert lines[0].startswith("quantbook") and ": error: " in lines[0], err
    for f in fragments:
        assert f in lines[0], (f, err)


def test_the_subprocesses_import_the_quantbook_under_test():
    # a wrong ROOT put quantbook/ itself on the path, whose io/ hid the standard library's on Python 3.10
    assert os.path.samefile(os.path.join(ROOT, "quantbook", "__init__.py"), quantbook.cli.__file__.replace(
        os.path.join("cli", "__init__.py"), "__init__.py"))


def run_subprocess(argv, timeout=120, limit_file_size=None, cwd=None):
    """``python -m quantbook.cli ARGV`` with an optional RLIMIT_FSIZE (bytes)."""

    def limit():  # runs in the child, before quantbook starts
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "quantbook.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env,
                          preexec_fn=limit if limit_file_size is not None else None)


# ------------------------------------------------------------------------ derivation inputs
def test_lloyd_just_above_the_variance_limit_is_not_a_silent_three_level_table(capsys):
    # Student-t with nu = 2.0001 has a variance, barely: the answer is a real 16-level table
    # or a one-line error, never exit 0 with levels collapsed onto -1, 0, 1
    rc, out, err = run(capsys, "derive", "lloyd", "--source", "student-t:2.0001", "--json")
    if rc == 0:
        d = json.loads(out)
        assert len(set(d["levels"])) == 16, d["levels"]
    else:
        assert_user_error(rc, err)


def test_weight_domain_quantile_needs_a_variance(capsys):
    rc, _, err = run(capsys, "derive", "quantile", "--source", "student-t:1.5", "--domain", "weight")
    assert_user_error(rc, err, "student-t:1.5")


def test_plot_sweep_of_a_source_without_variance_says_so(capsys, tmp_path):
    out = tmp_path / "s.png"
    rc, _, err = run(capsys, "plot-sweep", "nf4", "--source", "student-t:2", "--max-block", "32", "-o", out)
    assert_user_error(rc, err, "student-t:2", "--domain normalized")
    assert "log-scaled" not in err and not out.exists()


@pytest.mark.parametrize("offset", ["1e-5000", "-0", "1/0", "0.5", "nan", "inf", ""])
def test_bad_offsets(capsys, offset):
    rc, _, err = run(capsys, "derive", "nf", "--offset", offset)
    assert_user_error(rc, err)


def test_a_negative_offset_is_read_as_a_value_and_refused_as_one(capsys):
    rc, _, err = run(capsys, "derive", "nf", "--offset", "-1/2")   # argparse took -1/2 for an option
    assert_user_error(rc, err, "offset must lie strictly between 1/2 and 1, got -1/2")


@pytest.mark.parametrize("offset, bits", [("0.99999999999999999999999", 4), ("0.5000000000000001", 8)])
def test_an_offset_float64_cannot_resolve_says_so(capsys, offset, bits):
    """In the open interval, but 1 in float64 (an infinite quantile: 'entry 0 is nan') or so
    near 1/2 that two positions meet ('duplicate levels'): the message names the offset."""
    rc, _, err = run(capsys, "derive", "nf", "--offset", offset, "--bits", str(bits))
    assert_user_error(rc, err, "is too close to 1/2 or 1 for float64 quantiles", "exact precision")
    rc, out, _ = run(capsys, "derive", "nf", "--offset", offset, "--bits", str(bits), "--precision", "exact")
    assert rc == 0 and out


def test_an_offset_with_a_billion_digit_exponent_fails_fast():
    r = run_subprocess(["derive", "nf", "--offset", "1e-999999999"], timeout=60)
    assert_user_error(r.returncode, r.stderr)


def test_a_long_valid_decimal_offset_is_exact(capsys):
    # 929/960 = 0.96770833...: 68 decimals of it give the same float64 table as the fraction
    digits = "0.9677083" + "3" * 61
    assert abs(Fraction(digits) - Fraction(929, 960)) < Fraction(1, 10**67)
    rc, out, err = run(capsys, "derive", "nf", "--offset", digits, "--json")
    assert rc == 0, err
    rc, ref, _ = run(capsys, "derive", "nf", "--offset", "929/960", "--json")
    assert json.loads(out)["levels"] == json.loads(ref)["levels"]


# ---------------------------------------------------------------------------- sample files
def test_npz_renamed_npy_as_source(capsys, tmp_path):
    p = tmp_path / "w.npz"
    np.savez(p, a=np.arange(100.0))
    fake = tmp_path / "w.npy"
    p.rename(fake)
    rc, _, err = run(capsys, "derive", "lloyd", "--source", fake)
    assert_user_error(rc, err, "w.npy")


def test_npy_header_claiming_a_trillion_values(capsys, tmp_path):
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }"
    header += " " * (117 - len(header)) + "\n"  # magic + 2 + 2 + 118 = 128 bytes, as numpy pads
    p = tmp_path / "huge.npy"
    p.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(64))
    rc, _, err = run(capsys, "derive", "lloyd", "--source", p)
    assert_user_error(rc, err, "huge.npy")


def test_samples_near_1e200_give_the_scale_free_answer(capsys, tmp_path):
    # the engine divides a sample by its RMS: scaling the sample must not change the table
    x = np.random.default_rng(7).standard_normal(2000)
    np.save(tmp_path / "big.npy", x * 1e200)
    np.save(tmp_path / "unit.npy", x)
    rc, out, err = run(capsys, "derive", "lloyd", "--bits", "3", "--source", tmp_path / "big.npy", "--json")
    assert rc == 0, err
    rc, ref, _ = run(capsys, "derive", "lloyd", "--bits", "3", "--source", tmp_path / "unit.npy", "--json")
    big, unit = json.loads(out), json.loads(ref)
    np.testing.assert_allclose(big["levels"], unit["levels"], rtol=1e-9, atol=1e-12)
    assert big["mse_weight"] == pytest.approx(unit["mse_weight"], rel=1e-9)


# --------------------------------------------------------------------------- codebook files
def test_deeply_nested_json_codebook(capsys, tmp_path):
    p = tmp_path / "deep.json"
    p.write_text('{"bits": 2, "levels": ' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf-8")
    rc, _, err = run(capsys, "show", p)
    assert_user_error(rc, err, "deep.json")


def test_json_level_beyond_float64(capsys, tmp_path):
    p = tmp_path / "big.json"
    p.write_text('{"bits": 2, "levels": [-1, 0, 1' + "0" * 400 + "]}", encoding="utf-8")
    rc, _, err = run(capsys, "show", p)
    assert_user_error(rc, err, "big.json")


def test_show_accepts_an_upper_case_json_suffix(capsys, tmp_path):
    from quantbook import get

    p = tmp_path / "AF4.JSON"
    p.write_text(get("af4").to_json(), encoding="utf-8")
    rc, out, err = run(capsys, "show", p, "--json")
    assert rc == 0, err
    assert json.loads(out)["levels"] == [float(v) for v in get("af4").levels]


def test_evaluate_model_with_huge_levels(capsys, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    model = tmp_path / "m.safetensors"
    st.save_file({"w": np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)}, str(model))
    cb = tmp_path / "huge.json"
    cb.write_text('{"bits": 2, "levels": [-1e308, 0, 1e308]}', encoding="utf-8")
    rc, _, err = run(capsys, "evaluate-model", model, "-c", cb)
    assert_user_error(rc, err, "huge.json")


# -------------------------------------------------------------------------------- outputs
def test_export_to_a_directory_name(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, "export", "nf4", "-o", "newdir/")
    assert_user_error(rc, err, "newdir/")
    assert os.listdir(tmp_path) == []


def test_export_with_a_300_character_name(capsys, tmp_path):
    rc, _, err = run(capsys, "export", "nf4", "-o", tmp_path / ("x" * 300 + ".json"))
    assert_user_error(rc, err)
    assert len(err) < 400 and os.listdir(tmp_path) == []


def test_export_under_a_file_size_limit_keeps_the_existing_file(tmp_path):
    # (ulimit -f 1; quantbook export nf8 -f c -o precious.h): the header is larger than 1 KiB
    precious = tmp_path / "precious.h"
    precious.write_bytes(b"/* keep me */\n")
    r = run_subprocess(["export", "nf8", "-f", "c", "-o", "precious.h"], limit_file_size=1024, cwd=tmp_path)
    assert_user_error(r.returncode, r.stderr, "precious.h")
    assert precious.read_bytes() == b"/* keep me */\n"
    assert os.listdir(tmp_path) == ["precious.h"]  # no temporary file left behind


def test_plot_to_pdf_is_a_real_pdf_or_refused(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "p.pdf"
    rc, _, err = run(capsys, "plot", "nf4", "-o", out)
    if rc == 0:
        assert out.read_bytes()[:5] == b"%PDF-"
    else:
        assert_user_error(rc, err, "p.pdf")
        assert not out.exists()


def test_plot_to_an_unknown_image_extension_is_refused(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "p.docx"
    rc, _, err = run(capsys, "plot", "nf4", "-o", out)
    assert_user_error(rc, err, "docx")
    assert not out.exists()


@pytest.mark.parametrize("value, fragment", [
    ("abc", "--qmax: expected a number, got 'abc'"),
    ("x" * 300, "got '" + "x" * 40 + "...'"),   # clipped: the value is the user's, of any length
    ("0", "--qmax: must be a positive finite number, got '0'"),
    ("-6", "must be a positive finite number, got '-6'"),
    ("inf", "must be a positive finite number, got 'inf'"),
    ("nan", "must be a positive finite number, got 'nan'"),
], ids=["abc", "300-chars", "0", "-6", "inf", "nan"])
@pytest.mark.parametrize("command", [["derive", "lloyd", "--scale", "e4m3"],
                                     ["evaluate-model", "W", "--scale", "e4m3"]], ids=["derive", "evaluate-model"])
def test_qmax_is_read_by_one_rule_everywhere(capsys, tmp_path, command, value, fragment):
    # --qmax of derive/evaluate and of evaluate-model: the same parse, the same one-line refusal
    w = tmp_path / "w.npy"
    np.save(w, np.ones(64, np.float32))
    rc, out, err = run(capsys, *[str(w) if a == "W" else a for a in command], "--qmax", value)
    assert_user_error(rc, err, fragment)
    assert out == "" and len(err) < 200


def test_seed_is_read_by_the_library_s_rule_everywhere(capsys):
    """Every --seed takes what the API takes (numpy.random.default_rng: any non-negative integer,
    past 2**63 too) and refuses the rest in the parser, by one rule: audit --vector stopped at
    2**63 - 1, and the other commands left a negative seed to the library's message."""
    from quantbook.cli.common import random_seed
    from quantbook.verify.vq import audit_vectors
    from test_cli_text import _options

    takers = {command: a for (command, flag), a in _options().items() if flag == "--seed"}
    assert set(takers) == {"derive lloyd", "derive vq", "evaluate", "audit"}, set(takers)
    assert all(a.type is random_seed for a in takers.values()), {n: a.type for n, a in takers.items()}
    big = 2**64 + 1
    np.random.default_rng(big)   # numpy's own rule: past 2**63 is a seed
    rc, out, err = run(capsys, "audit", "--vector", "higgs-2d-16", "--samples", 1000, "--seed", big, "--json")
    assert rc == 0, err
    (row,) = json.loads(out)
    want = audit_vectors(samples=1000, seed=big, names=["higgs-2d-16"])[0]
    assert (row["seed"], row["mse"]) == (big, want.mse)
    # every JSON output carries the seed as given, an integer (a float would have cut it to 53 bits)
    for argv, where in ((["derive", "vq", "-P", "1", "-N", "2", "--samples", 1000], ("recipe", "seed")),
                        (["derive", "lloyd", "--bits", "2", "--scale", "search:4over6", "--samples", 1024],
                         ("recipe", "seed")),
                        (["evaluate", "e2m1", "-B", "16", "--scale", "search:4over6", "--samples", 1024], ("seed",))):
        rc, out, err = run(capsys, *argv, "--seed", big, "--json")
        assert rc == 0, err
        got = json.loads(out)
        for key in where:
            got = got[key]
        assert type(got) is int and got == big, (argv, got)
    for argv in (["audit", "--vector"], ["derive", "vq", "-P", "1", "-N", "2"], ["evaluate", "e2m1", "-B", "16",
                 "--scale", "search:4over6"], ["derive", "lloyd", "--bits", "2", "--scale", "search:4over6"]):
        rc, out, err = run(capsys, *argv, "--seed", -1)
        assert_user_error(rc, err, "argument --seed: must be a non-negative integer, got '-1'")


# ---------------------------------------------------------------------- codebook spellings
@pytest.mark.parametrize("spec, fragment", [
    ("lloyd-l1-100000000-8bit@student-t:3", "block size"),  # B beyond the engine's 10**7
    ("lloyd-l2-1", "block size"),
    ("lloyd-l2-64-9bit", "bits"),
    ("lloyd-l2-64-0bit", "bits"),
    ("lloyd-l2-" + "9" * 5000, "5000-digit"),
    ("nf9", "2 to 8"),
    ("nf" + "4" * 5000, "5000-digit"),
    ("lloyd-l2-64@", "after '@'"),
    ("lloyd-l3-64", "unknown codebook"),
    ("no-such-table", "unknown codebook"),
], ids=lambda v: v if len(v) < 40 else f"{v[:12]}...({len(v)} chars)")
def test_bad_codebook_spellings_fail_fast(capsys, spec, fragment):
    rc, _, err = run(capsys, "show", spec)
    assert_user_error(rc, err, fragment)


def test_an_empty_codebook_list(capsys, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    model = tmp_path / "m.safetensors"
    st.save_file({"w": np.ones((4, 64), dtype=np.float32)}, str(model))
    rc, _, err = run(capsys, "evaluate-model", model, "-c", " , ")
    assert_user_error(rc, err, "no codebooks")


@pytest.mark.parametrize("argv, fragment", [
    (["export", "nf4", "-f", "json", "--name", "foo"], "--name names the C identifier"),    # it was dropped
    (["export", "nf4", "-f", "npy", "--name", "foo"], "not of --format npy"),
    (["evaluate-model", "W", "--scale", ""], "--scale is empty"),                         # it became float32
    (["evaluate-model", "W", "--task", "embed", "--device", ""], "unknown device ''"),      # it became auto
    (["derive", "vq", "-P", "2", "-N", "8", "--samples", "1000", "--init", "hexagonal", "--restarts", "50"],
     "--restarts counts k-means++ starts"),                                               # recorded, unused
])
def test_an_option_that_would_be_ignored_is_an_error(capsys, tmp_path, argv, fragment):
    safetensors = pytest.importorskip("safetensors.numpy")
    w = tmp_path / "w.safetensors"
    safetensors.save_file({"w": np.ones((4, 64), np.float32)}, str(w))
    rc, out, err = run(capsys, *[str(w) if a == "W" else a for a in argv])
    assert_user_error(rc, err, fragment)
    assert out == ""


@pytest.mark.parametrize("fmt", ["c", "json"])
def test_export_onto_its_own_input_is_refused(capsys, tmp_path, monkeypatch, fmt):
    """``export cb.json -f c -o cb.json`` replaced the only copy of a codebook with a C header."""
    monkeypatch.chdir(tmp_path)
    before = '{"bits": 1, "levels": [-1, 1]}'
    (tmp_path / "cb.json").write_text(before, encoding="utf-8")
    os.symlink("cb.json", tmp_path / "link.json")
    for source, out in (("cb.json", "cb.json"), ("cb.json", "./link.json"), ("link.json", str(tmp_path / "cb.json"))):
        assert main(["export", source, "-f", fmt, "-o", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"quantbook: error: output path '{out}' is the input '{source}'") and err.count("\n") == 1
    assert (tmp_path / "cb.json").read_text(encoding="utf-8") == before
    assert sorted(os.listdir(tmp_path)) == ["cb.json", "link.json"]
    # a registry name is not a file, even where a file has its name
    (tmp_path / "nf4").write_text("x", encoding="utf-8")
    assert main(["export", "nf4", "-f", fmt, "-o", "nf4"]) == 0


@pytest.mark.parametrize("source", ["cb.json ", " cb.json", "grid.json "])
def test_export_onto_its_own_input_spelled_with_spaces_is_refused(capsys, tmp_path, monkeypatch, source):
    """The codebook is read without the spaces around its spelling, but the check looked for a file with them
    (none) and let ``export 'cb.json ' -f c -o cb.json`` replace the only copy of the codebook."""
    from quantbook.codebooks.vector import VectorCodebook

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cb.json").write_text('{"bits": 1, "levels": [-1, 1]}', encoding="utf-8")
    (tmp_path / "grid.json").write_text(VectorCodebook("grid", np.array([[0.0, 1.0], [1.0, 0.0]]), "test").to_json(),
                                        encoding="utf-8")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    target = source.strip()
    assert main(["export", source, "-f", "c", "-o", target]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"quantbook: error: output path '{target}' is the input") and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("argv", [
    ["evaluate-model", "in.png", "-c", "nf4", "--plot", "in.png"],                 # the model
    ["evaluate-model", "m.safetensors", "-c", " in.png,nf4", "--plot", "in.png"],   # a codebook file
    ["evaluate-model", "m.safetensors", "--task", "lm", "--text", "in.png", "--plot", "in.png"],
    ["plot", "nf4", "in.png", "-o", "in.png"],
    ["plot", "nf4", "--source", "in.png", "-o", "in.png"],
    ["plot-sweep", "nf4", "--source", " in.png", "-o", "in.png"],
])
def test_a_picture_onto_one_of_its_inputs_is_refused(capsys, tmp_path, monkeypatch, argv):
    """--plot / -o naming a file the picture is made from (the model, the text, a codebook
    file, a sample source) is refused before any work, as export and derive refuse theirs;
    the picture replaced the input."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.png").write_bytes(b"the only copy")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("quantbook: error: output path 'in.png' is the input") and err.count("\n") == 1
    assert (tmp_path / "in.png").read_bytes() == b"the only copy"


_SAMPLE = np.random.default_rng(11).standard_normal(1000).astype(np.float32)


@pytest.mark.parametrize("name, array, fragment", [
    ("object", _SAMPLE.astype(object), "Python objects"),
    ("complex", _SAMPLE.astype(np.complex64), "got dtype complex64"),
    ("structured", np.zeros(10, [("a", "<f4")]), "structured"),
    ("bool", _SAMPLE > 0, "got dtype bool"),
    ("datetime", np.zeros(10, "datetime64[s]"), "got dtype datetime64"),
    ("0-d", np.array(1.5), "at least 2 values"),
    ("empty", np.zeros(0, np.float32), "at least 2 values"),
])
def test_a_sample_file_that_is_not_real_numbers_is_one_line(capsys, tmp_path, name, array, fragment):
    path = tmp_path / f"{name}.npy"
    np.save(path, array, allow_pickle=True)
    rc, _, err = run(capsys, "derive", "lloyd", "--bits", "2", "--source", path)
    assert_user_error(rc, err, fragment)


@pytest.mark.parametrize("name, stored", [("big-endian", _SAMPLE.astype(">f4")),
                                          ("fortran", np.asfortranarray(_SAMPLE.reshape(20, 50))),
                                          ("float64 of float32 values", _SAMPLE.astype(np.float64))])
def test_a_sample_file_is_read_as_its_values_whatever_its_layout(capsys, tmp_path, name, stored):
    # the levels depend on the values only: the native C-order float32 file is the oracle
    np.save(tmp_path / "plain.npy", _SAMPLE)
    np.save(tmp_path / "odd.npy", stored)
    outs = []
    for f in ("plain.npy", "odd.npy"):
        rc, out, err = run(capsys, "derive", "lloyd", "--bits", "2", "--source", tmp_path / f, "--json")
        assert rc == 0, err
        outs.append(json.loads(out)["levels"])
    assert outs[0] == outs[1]
