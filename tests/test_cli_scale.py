"""``derive``/``evaluate --scale``: the command line passes the scale rule to the library.

Oracles: the layouts' published storage costs (NVFP4 4.5, MXFP4 4.25 bits per weight: an
E4M3 or E8M0 byte per block of 16 or 32), and Monte Carlo through ``quantbook.quantize``,
whose bytes are checked against torchao elsewhere (tests/test_layouts_torchao.py)."""

import json
import re

import numpy as np
import pytest

import quantbook
from quantbook import Codebook
from quantbook.cli import main

from test_cli_errors import run


def run_json(capsys, *argv):
    rc, out, err = run(capsys, *argv)
    assert rc == 0, err
    return json.loads(out)


def mc_mse(codebook, block_size, scale, qmax=6.0, n=1 << 18, seed=11):
    """Mean and standard error over blocks of the squared error of N(0,1) weights (seed 11)
    stored by ``quantbook.quantize`` in the layout."""
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    packed, state = quantbook.quantize(x, codebook, block_size, scale=scale, qmax=qmax, backend="numpy")
    e2 = ((quantbook.dequantize(packed, state).astype(np.float64) - x) ** 2).reshape(-1, block_size).mean(axis=1)
    return e2.mean(), e2.std(ddof=1) / np.sqrt(e2.size)


@pytest.mark.parametrize("rule, B, bpw", [("e4m3", 16, 4.5), ("e8m0:floor", 32, 4.25), ("e8m0", 32, 4.25),
                                          ("bfloat16", 32, 4.5)])
def test_evaluate_scale_matches_monte_carlo(capsys, rule, B, bpw):
    d = run_json(capsys, "evaluate", "e2m1", "--block-size", B, "--scale", rule, "--json")
    assert d["bits_per_weight"] == bpw  # the scale byte(s) are counted
    assert d["scale"] == (rule if ":" in rule or rule != "e8m0" else "e8m0:floor") and d["qmax"] == 6
    assert ("tensor_model" in d) == (rule == "e4m3")
    mean, se = mc_mse("e2m1", B, rule)
    # e4m3: the phase-averaged tensor model differs from one tensor by ~0.1 %, well inside 4 SE here
    assert abs(d["mse_weight"] - mean) < 4 * se, (d["mse_weight"], mean, se)


def test_evaluate_tensor_size_counts_the_tensor_scale(capsys):
    d = run_json(capsys, "evaluate", "e2m1", "--block-size", 16, "--scale", "e4m3", "--tensor-size", 1024, "--json")
    assert d["bits_per_weight"] == 4 + 8 / 16 + 32 / 1024
    assert d["tensor_model"] == "tensors of 1024 values"


def test_evaluate_scale_text(capsys):
    rc, out, _ = run(capsys, "evaluate", "nf4", "--block-size", 32, "--scale", "e8m0:rceil")
    assert rc == 0
    assert "scale e8m0:rceil" in out and "R = 4.25 bits/weight" in out


def test_derive_lloyd_scale(capsys):
    d = run_json(capsys, "derive", "lloyd", "--block-size", 32, "--scale", "e8m0:floor", "--json")
    assert d["recipe"]["scale"] == "e8m0:floor" and d["recipe"]["qmax"] == 6
    assert d["converged"] and min(d["levels"]) == -1 and max(d["levels"]) == 1
    # the reported MSE is that of the derived levels stored in MXFP4's layout
    mean, se = mc_mse(Codebook.from_dict(d), 32, "e8m0:floor")
    assert abs(d["mse_weight"] - mean) < 4 * se, (d["mse_weight"], mean, se)
    # and it beats E2M1 in its own layout by the margin a sample Lloyd reaches (about 25 %)
    e2m1 = run_json(capsys, "evaluate", "e2m1", "--block-size", 32, "--scale", "e8m0:floor", "--json")
    assert 0.20 < 1 - d["mse_weight"] / e2m1["mse_weight"] < 0.30


def test_derive_quantile_scale_and_qmax(capsys):
    d = run_json(capsys, "derive", "quantile", "--block-size", 32, "--scale", "e8m0:floor", "--qmax", 4, "--json")
    assert d["recipe"]["scale"] == "e8m0:floor" and d["recipe"]["qmax"] == 4
    # qmax changes where the E8M0 scale puts the block maximum, so the expected error changes
    d6 = run_json(capsys, "derive", "quantile", "--block-size", 32, "--scale", "e8m0:floor", "--json")
    assert d["mse_weight"] != d6["mse_weight"]
    mean, se = mc_mse(Codebook.from_dict(d), 32, "e8m0:floor", qmax=4.0)
    assert abs(d["mse_weight"] - mean) < 4 * se, (d["mse_weight"], mean, se)


@pytest.mark.parametrize("argv, needle", [
    (("derive", "quantile", "--scale", "search:4over6"), "not a function of the block maximum"),
    (("evaluate", "nf4", "--scale", "bogus"), "unknown scale rule 'bogus'"),
    (("derive", "lloyd", "--scale", "e8m0:up"), "rounding must be one of"),
    (("evaluate", "nf4", "--qmax", "3"), "--qmax applies only with a rule of the scaled layouts"),
    (("derive", "lloyd", "--tensor-size", "64"), "--tensor-size applies only with a rule of the scaled layouts"),
    (("derive", "lloyd", "--qmax", "3", "--tensor-size", "64"), "--qmax and --tensor-size apply only with"),
    (("evaluate", "nf4", "--scale", "nested", "--qmax", "3"), "float32 and nested keep"),
    (("export", "nf4", "--format", "c", "--scale", "e4m3", "--block-size", "3"), "power of two from 16"),
    (("export", "nf4", "-B", "32"), "lloyd-... spelling without B"),
    (("export", "nf4", "--qmax", "3"), "--qmax applies only with a rule of the scaled layouts"),
    (("derive", "lloyd", "--scale", "nested", "--qmax", "3"), "float32 and nested keep"),
    (("evaluate", "nf4", "--scale", "float32", "--qmax", "3"), "float32 and nested keep"),
    (("evaluate", "nf4", "--scale", "e8m0", "--tensor-size", "64"), "has no tensor scale"),
    (("evaluate", "nf4", "--scale", "e4m3", "--normalization", "none"), "normalization must be absmax"),
    (("evaluate", "nf4", "--scale", "e4m3", "--qmax", "-1"), "positive finite"),
    (("derive", "lloyd", "--seed", "3"), "apply only to a search rule"),
    (("derive", "lloyd", "--progress"), "apply only to a search rule"),
    (("evaluate", "nf4", "--samples", "4096"), "apply only to a search rule"),
    (("evaluate", "nf4", "--scale", "search:ggml", "--normalization", "none"), "does not apply"),
    (("evaluate", "nf4", "--scale", "search:4over6", "--block-size", "16", "--samples", "100"),
     "multiple of --block-size"),
    (("derive", "lloyd", "--scale", "float16", "--samples", "4096"), "apply only to a search rule"),
    (("derive", "lloyd", "--scale", "search:ggml", "--symmetric"), "do not apply to a search rule"),
    (("derive", "lloyd", "--scale", "search:ggml", "--samples", "100"), "multiple of --block-size"),
    # without block scaling a derivation has no block (its recipe dropped -B 64, -3 too); evaluate
    # still reads it for a lloyd-... name, and the parser checks it for any (0 passed)
    (("evaluate", "nf4", "--normalization", "none", "--block-size", "0"), "-B: must be between 2"),
    (("derive", "quantile", "--normalization", "none", "-B", "-3"), "-B: must be between 2"),
    (("derive", "lloyd", "--normalization", "none", "-B", "64"), "--block-size does not apply"),
])
def test_bad_scale_one_line_exit_2(capsys, argv, needle):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and needle in err, err


def test_export_block_size_names_the_lloyd_table(capsys):
    rc, out, err = run(capsys, "export", "lloyd-l2", "-B", "32")
    assert rc == 0 and json.loads(out)["name"] == "lloyd-l2-32" and json.loads(out)["recipe"]["block_size"] == 32


def test_derive_lloyd_search_rule_fits_on_a_sample(capsys):
    # the command line gives the library's fit (quantbook.derive.search_lloyd, same arguments)
    from quantbook.derive import solve_search_lloyd

    got = run_json(capsys, "derive", "lloyd", "--scale", "search:ggml", "--block-size", 32, "--qmax", 127,
                   "--samples", 1 << 15, "--seed", 4, "--fix=-1", "--json")
    ref = solve_search_lloyd(4, 32, "search:ggml", samples=1 << 15, seed=4, fixed=(-1,), qmax=127)
    assert got["levels"] == [float(v) for v in ref.codebook.levels]
    assert got["mse_weight_fitting_sample"] == ref.mse and got["recipe"]["method"] == "search-lloyd"


def test_a_search_fit_shows_its_progress(capsys):
    rc = main(["derive", "lloyd", "--scale", "search:4over6", "--block-size", "16", "--samples", str(1 << 14),
               "--progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "fitting (search:4over6)" in err and "iter" in err


@pytest.mark.parametrize("rule,B,qmax", [("search:ggml", 32, 127), ("search:4over6", 16, 6)])
def test_evaluate_search_rule_is_the_layouts_error(capsys, rule, B, qmax):
    # the Monte Carlo of `evaluate` against quantbook.quantize on the same seeded sample
    got = run_json(capsys, "evaluate", "iq4_nl", "--scale", rule, "--block-size", B, "--qmax", qmax,
                   "--samples", 1 << 16, "--seed", 7, "--json")
    x = np.random.default_rng(7).standard_normal(1 << 16).astype(np.float32)
    p, st = quantbook.quantize(x, "iq4_nl", B, scale=rule, qmax=qmax, backend="numpy")
    e = quantbook.dequantize(p, st).astype(np.float64) - x
    assert got["mse_weight"] == pytest.approx(np.mean(e * e), rel=1e-12)
    assert got["mae_weight"] == pytest.approx(np.mean(np.abs(e)), rel=1e-12)
    assert got["bits_per_weight"] == 4.5   # a float16 scale per 32 values, an E4M3 byte per 16


def test_a_table_the_scaled_layouts_cannot_store_is_refused_everywhere(capsys, tmp_path):
    """The scaled layouts store 4-bit codes of a table rescaled to its largest magnitude: more
    than 16 levels, or levels all 0, are one error, the same from quantize, the exact law,
    a search rule's Monte Carlo and a derivation (nf8 under e4m3 used to be evaluated at
    8.125 bits a weight, and an all-0 table under a search rule crashed after printing NaNs)."""
    from quantbook.derive import evaluate, evaluate_search, lloyd

    zero = tmp_path / "zero.json"
    zero.write_text('{"bits": 4, "levels": [0]}', encoding="utf-8")
    x = np.ones(64, np.float32)
    for cb, match in ((Codebook(levels=[0.0], bits=4), "levels are all 0"),
                      (quantbook.bulk.resolve_codebook("nf8"), "the scaled layouts store 4-bit codes")):
        for call in (lambda: quantbook.quantize(x, cb, 16, scale="e4m3"), lambda: evaluate(cb, 16, scale="e4m3"),
                     lambda: evaluate_search(cb, 16, "search:4over6", samples=4096)):
            with pytest.raises(ValueError, match=match):
                call()
    with pytest.raises(ValueError, match="the scaled layouts store 4-bit codes: bits must be 1 to 4, got 8"):
        lloyd(8, 16, scale="e4m3")
    for argv, msg in ((["evaluate", str(zero), "--scale", "search:4over6", "--samples", "4096"], "levels are all 0"),
                      (["evaluate", "nf8", "--scale", "e4m3"], "at most 16 entries, got 256"),
                      (["derive", "lloyd", "--bits", "8", "--scale", "e4m3"], "bits must be 1 to 4, got 8"),
                      (["plot-sweep", "nf8", "--scale", "e4m3", "-o", str(tmp_path / "s.png")], "at most 16 entries")):
        rc, out, err = run(capsys, *argv)
        assert rc == 2 and out == "" and err.count("\n") == 1 and msg in err, (argv, err)


def test_search_rule_defaults_on_the_command_line(capsys):
    """--block-size defaults to 64 for a search rule as its help says (derive lloyd used the
    library's 16, so deriving and then evaluating with the defaults measured two layouts), and
    a block size that does not divide the default sample rounds the sample up to whole blocks
    (it was an error about --samples, never given)."""
    d = run_json(capsys, "derive", "lloyd", "--scale", "search:4over6", "--samples", "8192", "--json")
    assert d["recipe"]["block_size"] == 64
    e = run_json(capsys, "evaluate", "nf4", "--scale", "search:4over6", "--block-size", "48", "--json")
    assert e["block_size"] == 48 and e["samples"] == -(-(1 << 22) // 48) * 48
    rc, _, err = run(capsys, "evaluate", "nf4", "--scale", "search:4over6", "--block-size", "48", "--samples", "4096")
    assert rc == 2 and "--samples 4096 must be a positive multiple of --block-size 48" in err   # given: its error


def test_block_size_has_its_short_flag_and_nested_names_no_qmax(capsys):
    """-B is --block-size on every command that takes one (evaluate and derive said
    'unrecognized arguments'); nested statistics encode with the exact absmax, so the line
    names no qmax (--qmax is refused with them)."""
    rc, out, err = run(capsys, "evaluate", "nf4", "-B", "16")
    assert rc == 0 and "B=16" in out.splitlines()[0], err
    assert run_json(capsys, "derive", "lloyd", "-B", "32", "--json")["recipe"]["block_size"] == 32
    rc, out, err = run(capsys, "evaluate", "nf4", "--scale", "nested")
    assert rc == 0 and out.splitlines()[0].endswith("(absmax, B=64, scale nested)"), out
    # without normalisation evaluate still fits a lloyd-... name at -B (it is not refused)
    d = run_json(capsys, "evaluate", "lloyd-l2", "--normalization", "none", "-B", "128", "--json")
    assert d["codebook"] == "lloyd-l2-128"
    # nested statistics keep bitsandbytes' 1-8 bit codes: a 5-bit derivation under them is fine
    assert run_json(capsys, "derive", "lloyd", "--bits", "5", "--scale", "nested", "--json")["bits"] == 5


@pytest.mark.parametrize("layout, qmax", [((), None), (("--scale", "float32"), None), (("--scale", "nested"), None),
                                          (("--scale", "e8m0:floor"), 6.0), (("--scale", "e4m3", "--qmax", "3"), 3.0)])
def test_evaluate_json_always_carries_qmax(capsys, layout, qmax):
    """``qmax`` is in every exact evaluation's JSON, null where the layout has none (the exact absmax
    maps each block to ±1), as evaluate-model's JSON writes it; it was left out but for the scaled
    layouts."""
    d = run_json(capsys, "evaluate", "nf4", "-B", "32", *layout, "--json")
    assert "qmax" in d and d["qmax"] == qmax


@pytest.mark.parametrize("argv", [("plot-sweep",), ("export",), ("derive", "lloyd"), ("evaluate",),
                                  ("evaluate-model",)])
def test_scale_help_lists_the_registered_families(capsys, argv):
    """Every command's --scale help names the scaled layouts' families from the registry
    (scales.rule_spellings), so a new rule cannot be left out of one; the four commands take
    all of these (fouroversix was missing from three)."""
    from quantbook.scales import rule_names, rule_spellings

    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for family in ("e4m3", "e8m0[:floor|ceil|even|rceil]", "fouroversix[:6|4]", "float16", "bfloat16"):
        assert family in text, (argv, family)
    listed = rule_spellings()
    for name in rule_names():
        family, _, arg = name.partition(":")
        assert family in listed and (not arg or arg in listed), name


def test_every_command_reads_qmax_by_one_rule(capsys):
    """--qmax is one rule (cli.common.positive_float) in every command that takes it: export and
    plot-sweep read a plain float, so '-3' or 'nan' reached the library and its message."""
    from quantbook.cli.common import positive_float
    from test_cli_text import _options

    takers = {command: a for (command, flag), a in _options().items() if flag == "--qmax"}
    assert {"derive lloyd", "evaluate", "evaluate-model", "export", "plot-sweep"} <= set(takers), set(takers)
    assert all(a.type is positive_float for a in takers.values()), {n: a.type for n, a in takers.items()}
    for argv in (["export", "nf4", "--scale", "e4m3", "--qmax", "-3"],
                 ["plot-sweep", "nf4", "--scale", "e4m3", "--qmax", "nan", "-o", "x.png"]):
        assert main(argv) == 2
        assert "argument --qmax: must be a positive finite number" in capsys.readouterr().err


@pytest.mark.parametrize("spec, hint", [
    ("mxfp4", "(mxfp4 is a format; its block scale rule is 'e8m0')"),
    ("NVFP4", "(NVFP4 is a format; its block scale rule is 'e4m3')"),
    ("e4m4", "(did you mean 'e4m3'?)"),
    ("e8mo", "(did you mean 'e8m0'?)"),
])
def test_a_format_or_a_misspelt_rule_is_pointed_at_the_rule(capsys, spec, hint):
    """A user who knows the formats types their names; the rule each uses is named (MXFP4's block
    scale is E8M0, NVFP4's E4M3: the OCP MX and NVIDIA specifications), and a near miss is told."""
    rc, _, err = run(capsys, "evaluate", "nf4", "--scale", spec)
    assert rc == 2 and hint in err and err.count("\n") == 1, err
    with pytest.raises(ValueError, match=re.escape(hint)):
        quantbook.quantize(np.ones(32, np.float32), "e2m1", 32, scale=spec)


#: every command that takes a scale rule and -B: its arguments without them (MODEL: a small model file)
_SCALED_COMMANDS = {
    "evaluate-model": ["evaluate-model", "MODEL", "-c", "nf4"],
    "derive lloyd": ["derive", "lloyd", "--bits", "3"],
    "derive quantile": ["derive", "quantile", "--bits", "3"],
    "evaluate": ["evaluate", "e2m1"],
}


def test_every_command_with_a_scale_rule_and_a_block_size_is_checked_for_the_note():
    from test_cli_text import _options

    options = _options()
    takers = {command for (command, flag), a in options.items() if flag == "--scale" and not a.choices
              and (command, "--block-size") in options}
    # export writes a file format (a C header on standard output), not a text report: its note goes to
    # standard error (test_export_notes_a_default_block_size_on_standard_error)
    assert takers - {"export"} == set(_SCALED_COMMANDS), takers


@pytest.mark.parametrize("scale, note", [("e4m3", "NVFP4 stores blocks of 16: -B 16"),
                                         ("e8m0", "MXFP4 stores blocks of 32: -B 32"), ("float16", None)])
@pytest.mark.parametrize("output", [None, "h.h"])
def test_export_notes_a_default_block_size_on_standard_error(scale, note, output, capsys, tmp_path, monkeypatch):
    """A header for --scale e4m3 with -B left at 64 describes blocks of 64, not NVFP4's 16: export says so on
    standard error, and writes the header it writes for -B 64 given."""
    monkeypatch.chdir(tmp_path)

    def header(*more):
        code, out, err = run(capsys, "export", "nf4", "--format", "c", "--scale", scale, *more,
                             *(["-o", output] if output else []))
        assert code == 0, err
        return (tmp_path / output).read_text(encoding="utf-8") if output else out, err

    noted, err = header()
    assert [line for line in err.splitlines() if line.startswith("note:")] == \
        ([f"note: blocks of 64 (the -B default); {note}"] if note else [])
    given, err = header("-B", "64")
    assert given == noted and "note:" not in err


@pytest.mark.parametrize("command", list(_SCALED_COMMANDS))
@pytest.mark.parametrize("scale, note", [
    ("e4m3", "NVFP4 stores blocks of 16: -B 16"), ("search:4over6", "NVFP4 stores blocks of 16: -B 16"),
    ("e8m0:rceil", "MXFP4 stores blocks of 32: -B 32"), ("float16", None), (None, None)])
def test_a_default_block_size_that_is_not_the_format_s_is_noted(command, scale, note, capsys, tmp_path):
    """--scale e4m3 with -B left at 64 is not NVFP4 (blocks of 16): every command that takes both says so in
    the last line of its text, a note, not an error (derive and evaluate said nothing); a -B given, --json and
    rules of no one format say nothing."""
    from user_model import user_model

    if scale == "search:4over6" and command == "derive quantile":
        pytest.skip("quantile has no search rules")
    argv = [str(user_model(tmp_path / "m.safetensors")) if a == "MODEL" else a for a in _SCALED_COMMANDS[command]]
    argv += [] if scale is None else ["--scale", scale]
    if scale == "search:4over6" and command != "evaluate-model":
        argv += ["--samples", "16000"]   # Monte Carlo: a small sample
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    last = out.rstrip("\n").splitlines()[-1]
    assert last == (f"note: blocks of 64 (the -B default); {note}" if note else last) and \
        (note is not None) == last.startswith("note:")
    assert "note:" not in err
    for more in (["-B", "64"], ["--json"]):
        code, out, err = run(capsys, *argv, *more)
        assert code == 0 and "note:" not in out + err, err
        if more == ["--json"]:
            json.loads(out)
