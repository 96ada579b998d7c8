"""The command line's text output says what it prints: numbers are words where they are not
finite, columns line up for any name, the text and ``--json`` print the same quantities, every
default the help states is the one used, and the exit statuses are the documented ones."""

import json
import re

import numpy as np
import pytest

from quantbook.cli import main

from checkout import checkout_path

LONG_NAME = "a-codebook-named-with-exactly-forty-char"   # 40 characters
assert len(LONG_NAME) == 40


def run(capsys, *argv, status=0):
    assert main([str(a) for a in argv]) == status
    return capsys.readouterr().out


def ends(line: str) -> list[int]:
    """Where each field of a line ends (fields are apart by two spaces or more; right-aligned columns
    end together)."""
    return [m.end() for m in re.finditer(r"\S+(?: \S+)*", line)]


def long_named_codebook(tmp_path):
    """nf4 saved under a 40-character name, in a folder whose name has spaces."""
    folder = tmp_path / "my codebooks"
    folder.mkdir()
    path = folder / "long name.json"
    d = json.loads(run_capsys_free("show", "nf4", "--json"))
    d["name"] = LONG_NAME
    path.write_text(json.dumps(d), encoding="utf-8")
    return path


def run_capsys_free(*argv) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(list(argv)) == 0
    return buf.getvalue()


# ------------------------------------------------------------------ values that are not finite
def test_an_infinite_or_undefined_value_is_a_word_not_nan(capsys):
    # Student-t with 2 degrees of freedom has no finite variance: the weight-domain MSE is
    # infinite, and the SQNR (infinite signal over infinite error) and the gap to D(R) have no value
    out = run(capsys, "evaluate", "nf4", "--source", "student-t:2")
    assert "MSE  weight inf " in out
    assert "SQNR undefined dB" in out and "gap undefined dB" in out
    assert not re.search(r"\bnan\b", out, re.I)
    # the normalised errors stay finite numbers
    assert re.search(r"normalised \d\.\d{6}e-\d\d absmax\n", out)


def test_derive_extras_print_words_not_python_reprs(capsys):
    out = run(capsys, "derive", "quantile", "--bits", "2", "--source", "student-t:2")
    assert "mse_weight: inf σ²\n" in out and "sqnr_db: undefined dB\n" in out
    assert not re.search(r"\bnan\b", out, re.I)
    out = run(capsys, "derive", "lloyd", "--bits", "2")
    assert re.search(r"^converged: (yes|no)$", out, re.M) and "True" not in out
    out = run(capsys, "derive", "nf", "--bits", "2", "--precision", "exact")
    line = next(v for v in out.splitlines() if v.startswith("levels_exact: "))
    assert "[" not in line and "'" not in line
    # NF2's one inner positive level is Phi^-1(p) / Phi^-1(offset) at the quantile positions of
    # docs/derivation.md; here only the printed form is checked: four comma-separated decimals
    values = line.split(": ", 1)[1].split(", ")
    assert len(values) == 4 and all(re.fullmatch(r"-?\d+\.\d+", v) for v in values)


def test_number_words():
    import math

    from quantbook.io.text import number

    assert number(1.5, ">8.3f") == "   1.500"
    assert number(math.inf, ">8.3f") == "     inf" and number(-math.inf, "8.3f") == "    -inf"
    assert number(math.nan, ">11.4e") == "  undefined" and number(None, "") == "undefined"
    assert number(np.float64(math.nan), "<10") == "undefined "


# ------------------------------------------------------------------------------------ units
def test_evaluate_states_its_units_and_they_are_the_ones_measured(capsys, tmp_path):
    """evaluate's weight errors are in units of σ, the source's RMS (a sample is divided by it), and
    its normalised errors in units of the block's absmax: each number says its unit, and a sample of
    RMS about 3, quantized by hand in blocks of 64 (nearest NF4 level of x/absmax), gives the
    printed numbers in those units."""
    import quantbook

    x = 3 * np.random.default_rng(5).standard_normal(2**18)
    np.save(tmp_path / "x.npy", x)
    out = run(capsys, "evaluate", "nf4", "--source", tmp_path / "x.npy")
    n = r"(\d\.\d{6}e-\d\d)"
    mse_w, mse_n, mae_w, mae_n = map(float, re.search(rf"MSE  weight {n} σ²   normalised {n} absmax²\n"
                                                     rf"  MAE  weight {n} σ    normalised {n} absmax\n", out).groups())
    assert re.search(r"D\(R\) at R = 4.5 bits/weight: \S+ σ²   gap", out)
    assert "σ = the source's RMS" in out and "absmax = the block's largest |x|" in out
    m, e = _blocks_by_hand(x, quantbook.get("nf4").levels, 64)
    sigma = np.sqrt(np.mean(x**2))
    assert mse_w == pytest.approx(np.mean((m * e) ** 2) / sigma**2, rel=0.01)   # not the raw 9x
    assert mae_w == pytest.approx(np.mean(np.abs(m * e)) / sigma, rel=0.01)
    assert mse_n == pytest.approx(np.mean(e**2), rel=0.01) and mae_n == pytest.approx(np.mean(np.abs(e)), rel=0.01)
    # no normalisation: the levels are in σ, and both domains are the weights'; a scaled layout's
    # normalised unit is what the block's largest entry decodes to
    out = run(capsys, "evaluate", "nf4", "--normalization", "none")
    w, v = re.search(rf"MSE  weight {n} σ²   normalised {n} σ²\n", out).groups()
    assert w == v and "absmax" not in out
    out = run(capsys, "evaluate", "e2m1", "-B", "16", "--scale", "e4m3")
    assert re.search(rf"normalised {n} \(qmax·s\)²\n.*normalised {n} qmax·s\n", out, re.S)
    assert "qmax·s = the block's largest decoded magnitude" in out


def test_evaluate_model_states_its_units_and_they_are_the_weights(capsys, tmp_path):
    """evaluate-model's errors are in the weights' own units (MSE: weight²): the table's header says
    so, and the same tensor times 10 has 100 times the MSE and 10 times the MAE (the blocks' absmax
    scales with it; powers of two would hide a wrong exponent less well than 10)."""
    st = pytest.importorskip("safetensors.numpy")
    w = np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32)
    model = tmp_path / "m.safetensors"
    st.save_file({"w": w, "w10": w * np.float32(10)}, str(model))
    out = run(capsys, "evaluate-model", model, "-c", "nf4", "--per-tensor")
    header = next(v for v in out.splitlines() if v.startswith("tensor "))
    assert re.fullmatch(r"tensor +MSE weight²  +MAE weight  +SQNR dB  +rel\. Frob\.  +bits/w", header), header
    rows = {v.split()[0]: [float(t) for t in v.split()[1:3]] for v in out.splitlines() if v.startswith("w")}
    assert rows["w10"][0] == pytest.approx(100 * rows["w"][0], rel=1e-3)
    assert rows["w10"][1] == pytest.approx(10 * rows["w"][1], rel=1e-3)


def _blocks_by_hand(x, levels, block_size, scale_of=None):
    """The blocks of ``x``, each block's unit (its absmax, or ``scale_of(absmax)``) and the error of
    the nearest level to ``x / unit``, in that unit."""
    blocks = x.reshape(-1, block_size)
    m = np.abs(blocks).max(axis=1, keepdims=True)
    unit = m if scale_of is None else scale_of(m)
    y = blocks / unit
    return unit, y - levels[np.abs(y[..., None] - levels).argmin(-1)]


def test_plot_sweep_states_its_units_and_they_are_the_ones_measured(capsys, tmp_path):
    """plot-sweep prints evaluate's errors: in σ (the source's RMS) in the weight domain, in the block's
    absmax in the normalised one, and in qmax·s in a scaled layout.  A sample of RMS about 3 quantized
    by hand gives the printed numbers in those units; under e8m0:floor the block's scale is
    s = 2^(floor(log2 absmax) - 2) (OCP MX v1.0 with E2M1's largest exponent, 2), so that qmax·s is
    from 0.75 to 1.5 absmax: a normalised error in absmax would be off by far more than the tolerance."""
    pytest.importorskip("matplotlib")
    import quantbook

    x = 3 * np.random.default_rng(5).standard_normal(2**18)
    np.save(tmp_path / "x.npy", x)
    sweep = ("--source", tmp_path / "x.npy", "--min-block", "64", "--max-block", "64", "-o", tmp_path / "s.png")
    n = r"(\d\.\d{3}e-\d\d)"

    def printed(out, mse_unit, mae_unit):
        got = re.search(rf"^nf4 +mse {re.escape(mse_unit)} +{n}\nnf4 +mae {re.escape(mae_unit)} +{n}\n", out, re.M)
        assert got, out
        return map(float, got.groups())

    unit, e = _blocks_by_hand(x, quantbook.get("nf4").levels, 64)
    sigma = np.sqrt(np.mean(x**2))
    out = run(capsys, "plot-sweep", "nf4", *sweep)
    mse, mae = printed(out, "σ²", "σ")
    assert mse == pytest.approx(np.mean((unit * e) ** 2) / sigma**2, rel=0.01)   # not the raw 9x
    assert mae == pytest.approx(np.mean(np.abs(unit * e)) / sigma, rel=0.01)
    assert out.splitlines()[-1] == ("units: σ = the source's RMS, 1 as scaled (student-t:NU with NU at most 2: "
                                    "its scale)")
    out = run(capsys, "plot-sweep", "nf4", *sweep, "--domain", "normalized")
    mse, mae = printed(out, "absmax²", "absmax")
    assert mse == pytest.approx(np.mean(e**2), rel=0.01) and mae == pytest.approx(np.mean(np.abs(e)), rel=0.01)
    assert out.splitlines()[-1] == "units: absmax = the block's largest |x|"
    # the table is E2M1's, largest magnitude 1 (qmax·L in units of s); the rule scales the source's values,
    # which are in σ
    e2m1 = quantbook.get("e2m1").levels
    unit, e = _blocks_by_hand(x / sigma, e2m1 / np.abs(e2m1).max(), 64,
                              lambda m: 6 * 2.0 ** (np.floor(np.log2(m)) - 2))
    out = run(capsys, "plot-sweep", "e2m1", *sweep, "--domain", "normalized", "--scale", "e8m0:floor")
    mse, mae = printed(out.replace("e2m1", "nf4"), "(qmax·s)²", "qmax·s")
    assert mse == pytest.approx(np.mean(e**2), rel=0.01) and mae == pytest.approx(np.mean(np.abs(e)), rel=0.01)
    assert out.splitlines()[-1] == "units: qmax·s = the block's largest decoded magnitude (s: the block's scale)"


def test_derive_states_its_units_and_they_are_the_ones_measured(capsys, tmp_path):
    """derive lloyd|quantile print evaluate's errors of the derived table, each with evaluate's unit: a
    sample of RMS about 3 quantized by hand with the printed levels (blocks of 64) gives the numbers
    in σ and in the block's absmax; a scaled layout's normalised unit is qmax·s, and a search rule's
    fitted error is in σ² (l2) or σ (l1)."""
    x = 3 * np.random.default_rng(5).standard_normal(2**18)
    np.save(tmp_path / "x.npy", x)
    out = run(capsys, "derive", "quantile", "--bits", "2", "--source", tmp_path / "x.npy", "--block-size", "64")
    levels = np.array([float(v) for v in re.findall(r"^ +\d+  (\S+) +0x", out, re.M)])
    got = {k: (float(v), u) for k, v, u in re.findall(r"^(\w+): (\S+) (\S+)$", out, re.M)}
    unit, e = _blocks_by_hand(x, levels, 64)
    sigma = np.sqrt(np.mean(x**2))
    want = {"mse_weight": (np.mean((unit * e) ** 2) / sigma**2, "σ²"),
            "mae_weight": (np.mean(np.abs(unit * e)) / sigma, "σ"),
            "mse_normalized": (np.mean(e**2), "absmax²"), "mae_normalized": (np.mean(np.abs(e)), "absmax")}
    for key, (value, u) in want.items():
        assert got[key][1] == u and got[key][0] == pytest.approx(value, rel=0.01), key
    assert got["sqnr_db"][1] == "dB"
    assert "units: σ = the source's RMS" in out and "absmax = the block's largest |x|" in out
    out = run(capsys, "derive", "quantile", "--bits", "2", "--block-size", "16", "--scale", "e4m3")
    assert re.search(r"^mse_normalized: \S+ \(qmax·s\)²\nmae_normalized: \S+ qmax·s$", out, re.M)
    assert "qmax·s = the block's largest decoded magnitude" in out
    for loss, u in (("l2", "σ²"), ("l1", "σ")):
        out = run(capsys, "derive", "lloyd", "--bits", "2", "--block-size", "16", "--scale", "search:4over6",
                  "--samples", 1 << 12, "--loss", loss)
        assert re.search(rf"^mse_weight_fitting_sample: \S+ {u}$", out, re.M) and "units: σ = " in out


# ------------------------------------------------------------------------------ alignment
def test_plot_sweep_columns_line_up_for_short_and_long_names(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    cb = long_named_codebook(tmp_path)
    for specs in (["nf4"], ["nf4", str(cb)]):
        out = run(capsys, "plot-sweep", *specs, "--min-block", "16", "--max-block", "32", "-o", tmp_path / "s.png")
        header, *rows, units = out.splitlines()[1:]
        assert len(rows) == 2 * len(specs) and units.startswith("units: ")
        for row in rows:
            assert ends(row)[-2:] == ends(header)[-2:], (header, row)   # the block-size columns
            metric = re.search(r"  (mse|mae) ", row).start() + 2
            assert metric == header.index("metric"), (header, row)


def test_evaluate_model_columns_line_up_for_long_names_and_a_path_with_spaces(capsys, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    cb = long_named_codebook(tmp_path)
    model = tmp_path / "a model dir" / "my model.safetensors"
    model.parent.mkdir()
    rng = np.random.default_rng(0)
    st.save_file({"w": rng.standard_normal((4, 64)).astype(np.float32),
                  "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((4, 64)).astype(np.float32)},
                 str(model))
    out = run(capsys, "evaluate-model", model, "-c", f"nf4,{cb}", "--per-tensor")
    lines = out.splitlines()
    assert lines[0].startswith(f"{model}: 2 tensors")
    tables = [i for i, v in enumerate(lines) if v.startswith(("codebook ", "tensor "))]
    assert len(tables) == 3
    for i in tables:
        header = lines[i]
        for row in lines[i + 1:i + 3]:
            assert ends(row)[-5:] == ends(header)[-5:], (header, row)


# ------------------------------------------------------------------------ stated defaults
def _options():
    """``{(command, option): argparse action}`` of every sub-command, ``option`` its long flag
    (or the positional's dest)."""
    import argparse

    from quantbook.cli import build_parser

    out = {}

    def walk(parser, words):
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, [*words, name])
            elif a.dest not in ("help", "version"):
                flag = next((o for o in a.option_strings if o.startswith("--")), a.dest)
                out[(" ".join(words), flag)] = a

    walk(build_parser(), [])
    return out


def _effective_defaults():
    """What each option left out really is, read from where the command fills it in: the
    argparse default where there is one, else the library's (recipe fields, signatures,
    constants): ``{(command, option): value}``."""
    import dataclasses
    import inspect

    import quantbook
    from quantbook.derive.lloyd import solve_lloyd
    from quantbook.derive.metrics import evaluate
    from quantbook.derive.recipes import FIT_SAMPLES, LloydRecipe, NFRecipe, QuantileRecipe, default_fixed
    from quantbook.derive.search_lloyd import EVAL_SAMPLES, evaluate_search, solve_search_lloyd
    from quantbook.derive.vq import VQRecipe
    from quantbook.model.evaluate import ModelReport, VQOptions, evaluate_model
    from quantbook.model.quality import evaluate_quality
    from quantbook.scales import DEFAULT_QMAX
    from quantbook.verify.vq import AUDIT_SAMPLES, AUDIT_SEED

    def sig(fn, name):
        return inspect.signature(fn).parameters[name].default

    def fields(cls):
        return {f.name: f.default for f in dataclasses.fields(cls)}

    out = {("export", "--block-size"): sig(quantbook.quantize, "block_size"), ("export", "--qmax"): DEFAULT_QMAX}
    nf = fields(NFRecipe)
    out.update({("derive nf", "--bits"): nf["bits"], ("derive nf", "--precision"): nf["precision"]})
    for meth, cls in (("lloyd", LloydRecipe), ("quantile", QuantileRecipe)):
        f = fields(cls)
        for key in ("bits", "block_size", "normalization", "source", "qmax", "domain"):
            out[(f"derive {meth}", "--" + key.replace("_", "-"))] = f[key]
        out[(f"derive {meth}", "--fix")] = ",".join(f"{v:g}" for v in default_fixed(f["normalization"]))
    out[("derive lloyd", "--loss")] = fields(LloydRecipe)["loss"]
    assert sig(solve_lloyd, "loss") == fields(LloydRecipe)["loss"]
    out[("derive lloyd", "--samples")] = FIT_SAMPLES      # search_lloyd's default sample
    out[("derive lloyd", "--seed")] = sig(solve_search_lloyd, "seed")
    vq = fields(VQRecipe)
    for key in ("source", "scale", "seed", "samples", "restarts", "init"):
        out[("derive vq", "--" + key.replace("_", "-"))] = vq[key]
    out.update({("evaluate", "--block-size"): sig(evaluate, "block_size"),
                ("evaluate", "--normalization"): sig(evaluate, "normalization"),
                ("evaluate", "--source"): sig(evaluate, "source"), ("evaluate", "--qmax"): DEFAULT_QMAX,
                ("evaluate", "--samples"): EVAL_SAMPLES, ("evaluate", "--seed"): sig(evaluate_search, "seed")})
    out.update({("audit", "--samples"): AUDIT_SAMPLES, ("audit", "--seed"): AUDIT_SEED})
    v = fields(VQOptions)
    out.update({("evaluate-model", "--block-size"): sig(evaluate_model, "block_size"),
                ("evaluate-model", "--scale"): fields(ModelReport)["scale"],
                ("evaluate-model", "--qmax"): sig(evaluate_model, "qmax"),
                ("evaluate-model", "--tokens"): sig(evaluate_quality, "tokens"),
                ("evaluate-model", "--context"): sig(evaluate_quality, "context"),
                ("evaluate-model", "--device"): sig(evaluate_quality, "device"),
                ("evaluate-model", "--rotate"): ",".join(sig(evaluate_model, "rotations")),
                ("evaluate-model", "--vq-group"): v["group"], ("evaluate-model", "--vq-scale"): v["scale"],
                ("evaluate-model", "--vq-scale-dtype"): v["scale_dtype"],
                ("plot-sweep", "--qmax"): DEFAULT_QMAX})
    return out


#: options whose help describes what happens without them rather than naming a value; each is
#: None on the parser, so the command decides (checked by the tests of those commands)
DESCRIBED = {("export", "--output"), ("export", "--name"), ("derive nf", "--offset"), ("audit", "names"),
             ("evaluate-model", "--tensors"), ("evaluate-model", "--text"), ("plot-sweep", "--scale"),
             ("derive vq", "--final-passes"),
             *((cmd, flag) for cmd in ("derive lloyd", "derive quantile", "evaluate")
               for flag in ("--scale", "--tensor-size"))}

_STATED = re.compile(r"\bdefault(?: is|:)? ([^\s;)]+)")


def _stated(text: str):
    """The value after the first "default" of a help text: a number (10^7 too) or a word."""
    token = _STATED.search(text).group(1).rstrip(",:.")
    power = re.fullmatch(r"(\d+)\^(\d+)", token)
    if power:
        return int(power.group(1)) ** int(power.group(2))
    return float(token) if re.fullmatch(r"-?\d+(\.\d+)?", token) else token


def test_every_stated_default_is_the_one_used():
    effective = _effective_defaults()
    checked = set()
    for key, action in _options().items():
        text = action.help or ""
        has_default = action.default not in (None, False) and action.nargs != 0
        if key in DESCRIBED:
            assert "default" in text and action.default is None, key
            continue
        if "default" not in text:
            assert not has_default, f"{key}: default {action.default!r} not stated in its help"
            assert key not in effective, f"{key}: default {effective[key]!r} not stated in its help"
            continue
        want = action.default if action.default is not None else effective[key]
        assert action.default is None or key not in effective or effective[key] == action.default, key
        got = _stated(text)
        if isinstance(got, (int, float)):
            assert float(want) == got, (key, text, want)
        else:
            assert str(want) == got, (key, text, want)
        checked.add(key)
    assert set(effective) <= checked | DESCRIBED, set(effective) - checked
    assert len(checked) > 50


def test_every_argument_says_what_it_is():
    """``--help`` lists each option and positional with a line that says what it is (plot's and
    plot-sweep's ``-o FILE`` and evaluate's ``NAME|FILE.json`` had none)."""
    bare = sorted(key for key, action in _options().items() if not (action.help or "").strip())
    assert not bare, bare


def test_the_described_defaults_are_those_documented():
    from fractions import Fraction

    from quantbook.derive.normal_float import BNB_OFFSET_LITERAL, default_offset

    help_of = {key: a.help for key, a in _options().items()}
    offset = help_of[("derive nf", "--offset")]
    # the offset of NF4 is the mean of the two centre positions (docs/derivation.md): (1 - 1/30 + 1 - 1/32) / 2
    assert default_offset(4) == (1 - Fraction(1, 30) + 1 - Fraction(1, 32)) / 2 == Fraction(929, 960)
    assert "929/960 for k=4" in offset and f"{float(BNB_OFFSET_LITERAL)} with float32-bnb" in offset
    assert "default 0,1 signed-absmax" not in help_of[("derive lloyd", "--fix")]  # the form is "0,1 signed-absmax"
    assert "0,1 signed-absmax; none: none" in help_of[("derive lloyd", "--fix")]


def test_every_block_size_option_has_the_one_default(capsys, tmp_path):
    """-B left out is one block size in every command, and the API's: the one constant (export,
    evaluate-model and the search rules' defaults each spelled 64)."""
    import inspect

    import quantbook
    from quantbook.codebooks.blocks import DEFAULT_BLOCK_SIZE

    options = {cmd: a for (cmd, flag), a in _options().items() if flag == "--block-size"}
    assert set(options) == {"export", "derive lloyd", "derive quantile", "derive vq", "evaluate", "evaluate-model",
                            "plot"}, set(options)
    vq = options.pop("derive vq")   # the block of --scale rms|absmax, which it needs: no default
    assert vq.default is None and "default" not in vq.help
    for cmd, action in options.items():   # the parser's default, else the one its help states
        default = action.default if action.default is not None else _stated(action.help)
        assert default == DEFAULT_BLOCK_SIZE, (cmd, default)
    assert inspect.signature(quantbook.quantize).parameters["block_size"].default == DEFAULT_BLOCK_SIZE
    # what each command does without -B
    assert json.loads(run(capsys, "evaluate", "nf4", "--json"))["block_size"] == DEFAULT_BLOCK_SIZE
    d = json.loads(run(capsys, "evaluate", "e2m1", "--scale", "search:4over6", "--samples", 2 * DEFAULT_BLOCK_SIZE,
                       "--json"))
    assert d["block_size"] == DEFAULT_BLOCK_SIZE
    header = run(capsys, "export", "nf4", "-f", "c", "--scale", "e4m3")
    assert f"#define NF4_BLOCK_SIZE {DEFAULT_BLOCK_SIZE}\n" in header
    st = pytest.importorskip("safetensors.numpy")
    model = tmp_path / "m.safetensors"
    st.save_file({"w": np.ones((2, 128), np.float32)}, str(model))
    assert json.loads(run(capsys, "evaluate-model", model, "-c", "nf4", "--json"))["block_size"] == DEFAULT_BLOCK_SIZE


# ------------------------------------------------------------------------------ exit statuses
def test_exit_statuses_are_documented_and_returned(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    listed = dict(re.findall(r"(\d+) ([^;.]+)", help_text.split("Exit status: ")[1]))
    assert set(listed) == {"0", "1", "2", "130"}
    readme = checkout_path("README.md").read_text(encoding="utf-8")
    assert set(re.findall(r"^- (\d+): ", readme, re.M)) >= set(listed)

    assert main(["list"]) == 0                                   # success
    assert main(["evaluate", "nf4", "--block-size", "x"]) == 2   # the parser refuses a usage
    assert main(["show", "no-such-table"]) == 2                  # an input the library refuses
    capsys.readouterr()
    # a failed check: a table expected bit for bit, one float32 ULP off its recipe's output
    from quantbook import Codebook
    from quantbook.codebooks.registry import _ENTRIES, REGISTRY, Published

    nf4 = REGISTRY["nf4"].codebook
    off = nf4.code.copy()
    off[9] = float(np.nextafter(np.float32(off[9]), np.float32(1)))
    monkeypatch.setitem(_ENTRIES, "zz-off", Published(Codebook(np.unique(off), bits=4, name="zz-off", source="test",
                                                               recipe=nf4.recipe, code=off), "test entry"))
    assert main(["audit", "nf4", "zz-off"]) == 1
    assert "not reproduced: zz-off" in capsys.readouterr().err
    assert main(["audit", "nf4"]) == 0
    capsys.readouterr()
    # an internal error (a bug) and an interrupt
    from quantbook.cli import codebooks

    def fail(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(codebooks, "_cmd_list", fail)
    assert main(["list"]) == 1 and "internal error" in capsys.readouterr().err

    def interrupt(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(codebooks, "_cmd_list", interrupt)
    assert main(["list"]) == 130


def test_vector_points_line_up(capsys):
    out = run(capsys, "derive", "vq", "--dim", "2", "--points", "4", "--samples", "2000", "--restarts", "1")
    rows = out.split("points:\n")[1].splitlines()
    assert len(rows) == 4 and len({tuple(ends(r)) for r in rows}) == 1, rows
    assert re.search(r"converged (yes|no),", out)
    rows = run(capsys, "show", "higgs-2d-16").splitlines()[3:]
    assert len(rows) == 16 and len({tuple(ends(r)) for r in rows}) == 1, rows


# -------------------------------------------------------------------------- text vs --json
def same(token: str, value, spec: str) -> bool:
    """The text's ``token`` is the JSON ``value`` printed at the text's precision: the same
    quantity, units and rounding (JSON's null is a value that is not finite)."""
    if value is None:
        return token in ("inf", "-inf", "undefined")
    return format(value, spec) == token


def both(capsys, *argv):
    text = run(capsys, *argv)
    return text, json.loads(run(capsys, *argv, "--json"))


def fields(pattern: str, text: str) -> dict:
    m = re.search(pattern, text)
    assert m, (pattern, text)
    return m.groupdict()


@pytest.mark.parametrize("argv", [["nf4"], ["nf4", "--source", "student-t:2"], ["af4", "-B", "32"],
                                  ["e2m1", "-B", "16", "--scale", "e4m3"]], ids=" ".join)
def test_evaluate_text_is_its_json(capsys, argv):
    text, d = both(capsys, "evaluate", *argv)
    n = r"(?:-?[\d.]+(?:e[-+]\d+)?|inf|-inf|undefined)"
    u2, u = r"(?:absmax|\(qmax·s\))²", r"(?:absmax|qmax·s)"   # the normalised errors' units
    got = fields(rf"MSE  weight (?P<mse_weight>{n}) σ²   normalised (?P<mse_normalized>{n}) {u2}\n"
                 rf"  MAE  weight (?P<mae_weight>{n}) σ    normalised (?P<mae_normalized>{n}) {u}\n"
                 rf"  SQNR (?P<sqnr_db>{n}) dB   code-usage entropy (?P<entropy_bits>{n}) bits\n"
                 rf"  D\(R\) at R = (?P<bits_per_weight>{n}) bits/weight: (?P<rd_bound>{n}) σ²   "
                 rf"gap (?P<gap_db>{n}) dB", text)
    specs = {"mse_weight": ".6e", "mse_normalized": ".6e", "mae_weight": ".6e", "mae_normalized": ".6e",
             "sqnr_db": ".3f", "entropy_bits": ".4f", "bits_per_weight": "g", "rd_bound": ".6e", "gap_db": ".3f"}
    for key, spec in specs.items():
        assert same(got[key], d[key], spec), (key, got[key], d[key])


def test_evaluate_search_text_is_its_json(capsys):
    text, d = both(capsys, "evaluate", "e2m1", "-B", "16", "--scale", "search:4over6", "--samples", "16000")
    got = fields(r"Monte Carlo: (?P<samples>\d+) values, seed (?P<seed>\d+)\)\n"
                 r"  MSE  weight (?P<mse_weight>\S+) ± (?P<mse_standard_error>\S+) σ²\n"
                 r"  MAE  weight (?P<mae_weight>\S+) σ\n"
                 r"  SQNR (?P<sqnr_db>\S+) dB   (?P<bits_per_weight>\S+) bits/weight",
                 text)
    specs = {"samples": "d", "seed": "d", "mse_weight": ".6e", "mse_standard_error": ".1e", "mae_weight": ".6e",
             "sqnr_db": ".3f", "bits_per_weight": "g"}
    for key, spec in specs.items():
        assert same(got[key], d[key], spec), (key, got[key], d[key])


@pytest.mark.parametrize("method", ["lloyd", "quantile"])
def test_derive_text_is_its_json(capsys, method):
    # without a finite variance the weight-domain errors are infinite: Lloyd minimises the normalised ones
    text, d = both(capsys, "derive", method, "--bits", "2", "--source", "student-t:2", "--domain", "normalized")
    extra = {k: v.split()[0] for k, v in re.findall(r"^(\w+): (.*)$", text, re.M)}   # the value, not its unit
    for key in ("mse_weight", "mae_weight", "mse_normalized", "mae_normalized", "sqnr_db", "iterations",
                "change"):
        if key in d:   # the text shows the float in full: it reads back as the JSON's
            assert (float(extra[key]) == d[key]) if d[key] is not None else extra[key] in ("inf", "undefined")
    assert d["mse_weight"] is None and extra["mse_weight"] == "inf"
    if method == "lloyd":
        assert extra["converged"] == ("yes" if d["converged"] else "no")
    table = re.findall(r"^ +(\d+)  (\S+) +0x([0-9a-f]{8})$", text, re.M)
    code = d.get("code", d["levels"])
    assert [float(v) for _, v, _ in table] == code
    assert [int(h, 16) for _, _, h in table] == [int(np.float32(v).view(np.uint32)) for v in code]


def test_audit_text_is_its_json(capsys):
    text, rows = both(capsys, "audit", "nf4", "max1960-n8", "iq4_nl")
    got = re.findall(r"\] (\S+): .*\n +bit_exact=(\S+)  max_ulp=(\S+)  max_abs_diff=(\S+)  expect=(\S+)", text)
    assert [g[0] for g in got] == [r["name"] for r in rows]
    for (name, bit_exact, ulp, diff, expect), r in zip(got, rows):
        assert bit_exact == {None: "-", True: "yes", False: "no"}[r["bit_exact"]]
        assert ulp == ("-" if r["max_ulp"] is None else str(r["max_ulp"]))
        assert diff == ("-" if r["max_abs_diff"] is None else format(r["max_abs_diff"], ".3g"))
        assert expect == r["expect"]


def test_audit_vector_text_is_its_json(capsys):
    text, (r,) = both(capsys, "audit", "--vector", "higgs-2d-16", "--samples", "20000")
    got = fields(r"(?P<size>\d+) points in (?P<dim>\d+)-D, (?P<bits_per_weight>\S+) bits/weight \(index\)\n"
                 r" +MSE/dim (?P<mse>\S+) ± (?P<mse_se>\S+) \(MC, (?P<samples>\d+) vectors, seed (?P<seed>\d+)\)\n"
                 r" +gap to D\(R\)=2\^-2R: (?P<gap_db>\S+) dB  scalar Lloyd-Max at \S+ bits (?P<scalar_mse>\S+) "
                 r"\((?P<scalar_db>\S+) dB\)\n"
                 r" +Lloyd fixed point: max \|centroid - point\| (?P<centroid_max>\S+) "
                 r"\(max z (?P<centroid_max_z>\S+); "
                 r"(?P<empty_cells>\d+) empty cells\)\n"
                 r" +derived (?P<derived>\S+): MSE/dim (?P<derived_mse>\S+), gain (?P<gain_pct>\S+) % ± "
                 r"(?P<gain_se_pct>\S+) % \(paired\)", text)
    specs = {"size": "d", "dim": "d", "bits_per_weight": "g", "mse": ".6e", "mse_se": ".1e", "samples": "d",
             "seed": "d", "gap_db": ".2f", "scalar_mse": ".4e", "centroid_max": ".2e", "centroid_max_z": ".1f",
             "empty_cells": "d", "derived_mse": ".6e", "gain_pct": "+.3f", "gain_se_pct": ".3f"}
    for key, spec in specs.items():
        assert same(got[key], r[key], spec), (key, got[key], r[key])
    assert got["derived"] == r["derived"]
    import math   # the scalar code's gap to the bound, from the JSON's two MSEs

    assert same(got["scalar_db"], 10 * math.log10(r["scalar_mse"] / r["rd_bound"]), ".2f")


def test_evaluate_model_text_is_its_json(capsys, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(0)
    model = tmp_path / "m.safetensors"
    st.save_file({"a": rng.standard_normal((16, 64)).astype(np.float32),
                  "zero": np.zeros((2, 64), np.float32)}, str(model))
    text, d = both(capsys, "evaluate-model", model, "-c", "nf4,int4-sym", "--per-tensor")
    keys, specs = ("mse_weight", "mae_weight", "sqnr_db", "rel_frobenius", "bits_per_weight"), \
        (".4e", ".4e", ".3f", ".5f", ".4f")
    tables = {None: d["codebooks"], **{t["name"]: t["codebooks"] for t in d["per_tensor"]}}
    seen = 0
    block = None
    for line in text.splitlines():
        m = re.fullmatch(r"(\S+):", line)
        if m:
            block = m.group(1)
        parts = line.split()
        if len(parts) == 6 and not line.startswith(("codebook", "tensor")):
            label, values = parts[0], parts[1:]
            row = d["codebooks"][label] if block is None else tables[label][block]
            for key, spec, token in zip(keys, specs, values):
                assert same(token, row[key], spec), (label, block, key, token, row[key])
            seen += 1
    assert seen == 2 + 2 * 2
    # the all-zero tensor is quantized without error: SQNR inf in the text, null in the JSON
    assert tables["zero"]["nf4"]["sqnr_db"] is None


def test_plot_sweep_text_is_its_json(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    text, d = both(capsys, "plot-sweep", "nf4", "af4", "--min-block", "16", "--max-block", "64", "-o",
                   tmp_path / "s.png")
    lines = text.splitlines()
    assert [int(b) for b in lines[1].split()[2:]] == d["block_sizes"]
    assert lines[-1].startswith("units: ")
    for line in lines[2:-1]:
        label, metric, _unit, *values = line.split()
        want = d["codebooks"][label][f"{metric}_{d['domain']}"]
        assert len(values) == len(want) and all(same(t, v, ".3e") for t, v in zip(values, want)), line
