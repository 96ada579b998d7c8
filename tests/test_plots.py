"""Tests for quantbook.plots and the `plot` / `plot-sweep` commands.

The plotted sweep numbers are checked against a plain-numpy Monte-Carlo estimate (fixed
seed; within 4 standard errors over blocks); the pictures for being
real PNGs of the expected size with something drawn on them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantbook.cli import main
from quantbook.codebooks.registry import REGISTRY
from quantbook.plots import plot_levels, plot_sweep, sweep_errors

try:
    import matplotlib
except ImportError:   # the sweep's numbers and the checks before any drawing still run
    matplotlib = None

needs_mpl = pytest.mark.skipif(matplotlib is None, reason="matplotlib is not installed (pip install 'quantbook[plot]')")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_pixels(path) -> np.ndarray:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC
    return imread(str(path))


def _monte_carlo(cb, B: int, blocks: int, seed: int = 11) -> dict[str, tuple[float, float]]:
    """``(mean, standard error over blocks)`` of each error, nearest level by the float64
    midpoints (ties have probability 0)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((blocks, B))
    m = np.abs(x).max(axis=1, keepdims=True)
    y = x / m
    lv = np.asarray(cb.levels, dtype=np.float64)
    q = lv[np.searchsorted((lv[:-1] + lv[1:]) / 2, y)]
    e_n = y - q
    e_w = m * e_n
    out = {}
    for key, e in (("mse_w", e_w**2), ("mae_w", np.abs(e_w)), ("mse_n", e_n**2), ("mae_n", np.abs(e_n))):
        per_block = e.mean(axis=1)
        out[key] = (float(per_block.mean()), float(per_block.std(ddof=1) / np.sqrt(blocks)))
    return out


@pytest.mark.parametrize("B", [16, 256])
def test_sweep_numbers_match_monte_carlo(B):
    """Within 4 standard errors over blocks: 200 000 blocks at B = 16, 20 000 at B = 256."""
    cb = REGISTRY["nf4"].codebook
    mc = _monte_carlo(cb, B, blocks=200_000 if B == 16 else 20_000)
    w = sweep_errors(cb, [B], domain="weight")
    n = sweep_errors(cb, [B], domain="normalized")
    for got, key in ((w["mse"][0], "mse_w"), (w["mae"][0], "mae_w"), (n["mse"][0], "mse_n"), (n["mae"][0], "mae_n")):
        mean, se = mc[key]
        assert abs(got - mean) < 4 * se, (key, got, mean, se)


def test_sweep_rederives_per_block_size():
    from quantbook.naming import resolve_codebook

    seen = []

    def factory(B):
        seen.append(B)
        return resolve_codebook("lloyd-l2", B)

    e = sweep_errors(factory, [16, 64, 256])
    assert seen == [16, 64, 256]
    nf4 = sweep_errors(REGISTRY["nf4"].codebook, [16, 64, 256])
    # the per-B L2-optimal table (weight domain) can never be worse than NF4 in MSE
    assert np.all(e["mse"] <= nf4["mse"] * (1 + 1e-9))
    assert np.all(np.diff(nf4["mse"]) > 0)  # larger blocks, larger error (absmax grows)


@needs_mpl
def test_plot_levels_png(tmp_path):
    out = tmp_path / "levels.png"
    plot_levels([("nf4", REGISTRY["nf4"].codebook), ("fp4", REGISTRY["fp4"].codebook)], 64, out)
    img = _png_pixels(out)
    assert img.shape[0] > 300 and img.shape[1] > 700
    assert img[..., :3].std() > 0.05  # something is drawn


@needs_mpl
def test_plot_sweep_png_and_numbers(tmp_path):
    out = tmp_path / "sweep.png"
    cbs = [("nf4", REGISTRY["nf4"].codebook), ("af4", REGISTRY["af4"].codebook)]
    got = plot_sweep(cbs, out, block_sizes=[16, 64, 1024])
    assert set(got) == {"nf4", "af4"} and got["nf4"]["mse"].shape == (3,)
    assert np.array_equal(got["nf4"]["mse"], sweep_errors(cbs[0][1], [16, 64, 1024])["mse"])
    assert _png_pixels(out).shape[1] > 700


@needs_mpl
def test_cli_plot_and_sweep(tmp_path, capsys):
    out = tmp_path / "p.png"
    assert main(["plot", "nf4", "af4", "lloyd-l2-64", "-B", "128", "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    out2 = tmp_path / "s.png"
    capsys.readouterr()
    assert main(["plot-sweep", "nf4", "lloyd-l2", "--min-block", "16", "--max-block", "64",
                 "--json", "-o", str(out2)]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["block_sizes"] == [16, 32, 64]
    assert set(d["codebooks"]) == {"nf4", "lloyd-l2 (fit at each B)"}
    assert out2.read_bytes()[:8] == PNG_MAGIC
    assert main(["plot-sweep", "nf4", "--min-block", "32", "--max-block", "64", "-o", str(out2)]) == 0
    assert "nf4" in capsys.readouterr().out


@pytest.mark.parametrize("argv, msg", [
    (["plot", "nf4"], "required"),
    (["plot", "nf4", "-o", "/nonexistent-dir/x.png"], "does not exist"),
    # the picture's format is checked first, by matplotlib
    pytest.param(["plot", "nope", "-o", "{tmp}/x.png"], "unknown codebook", marks=needs_mpl),
    pytest.param(["plot-sweep", "nf4", "--min-block", "64", "--max-block", "16", "-o", "{tmp}/x.png"], "larger than",
                 marks=needs_mpl),
    pytest.param(["plot", "nf4", "--source", "cauchy", "-o", "{tmp}/x.png"], "unknown source", marks=needs_mpl),
    pytest.param(["plot", " , ", "-o", "{tmp}/x.png"], "no codebooks given", marks=needs_mpl),
    pytest.param(["plot", "nf4,af4", "nf4", "-o", "{tmp}/x.png"], "codebook listed twice: nf4", marks=needs_mpl),
    pytest.param(["plot-sweep", "nf4", "e2m1,nf4", "--min-block", "16", "--max-block", "32", "-o", "{tmp}/x.png"],
                 "codebook listed twice: nf4", marks=needs_mpl),
])
def test_cli_plot_errors(argv, msg, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1, err


@needs_mpl
def test_plot_model_report_png(tmp_path):
    from quantbook.model.evaluate import ErrorSums, ModelReport, TensorResult
    from quantbook.plots import _strip_common_prefix

    assert _strip_common_prefix(["enc.layer.0.w", "enc.layer.1.w"]) == ("enc.layer.", ["0.w", "1.w"])
    assert _strip_common_prefix(["a.w", "b.w"]) == ("", ["a.w", "b.w"])
    tensors = [TensorResult(f"enc.layer.{i}.weight", "F32", (8, 8),
                            {"nf4": ErrorSums(64, 0.1 * (i + 1), 1.0, 10.0, 288),
                             "af4": ErrorSums(64, 0.2, 1.0, 10.0, 288)}) for i in range(3)]
    totals = {c: ErrorSums() for c in ("nf4", "af4")}
    for t in tensors:
        for c in totals:
            totals[c].add(t.sums[c])
    rep = ModelReport("m.safetensors", 64, False, ["nf4", "af4"], totals, tensors)
    out = tmp_path / "r.png"
    from quantbook.plots import plot_model_report

    plot_model_report(rep, out)
    assert _png_pixels(out)[..., :3].std() > 0.05


@needs_mpl
@pytest.mark.parametrize("name, magic", [
    ("p.pdf", b"%PDF-"), ("p.svg", b"<?xml"), ("P.PNG", PNG_MAGIC), ("p.eps", b"%!PS-Adobe"), ("noext", PNG_MAGIC),
])
def test_the_extension_names_the_format(name, magic, tmp_path, capsys):
    out = tmp_path / name
    assert main(["plot", "nf4", "-o", str(out)]) == 0
    assert out.read_bytes().startswith(magic)


def test_a_dash_is_not_a_picture_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["plot", "nf4", "-o", "-"]) == 2
    assert "not to standard output (-)" in capsys.readouterr().err and not (tmp_path / "-").exists()


@needs_mpl
def test_unknown_extension_is_refused_before_any_work(tmp_path, monkeypatch):
    from quantbook import plots
    from quantbook.derive import block

    def boom(*a, **k):
        raise AssertionError("the density was computed before the path was checked")

    monkeypatch.setattr(block, "BlockDistribution", boom)
    for bad in ("p.xyz", "p.pgf", "p.raw"):
        with pytest.raises(ValueError, match=r"unknown image extension") as info:
            plots.plot_levels([("nf4", REGISTRY["nf4"].codebook)], 64, tmp_path / bad)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="directory"):
        plots.plot_levels([("nf4", REGISTRY["nf4"].codebook)], 64, str(tmp_path) + "/")
    assert list(tmp_path.iterdir()) == []


def _drawn(monkeypatch):
    """The figures the plot functions would save, in order."""
    import quantbook.plots as P

    figs = []
    monkeypatch.setattr(P, "_save", lambda fig, out: figs.append(fig))
    return figs


@needs_mpl
def test_pictures_say_their_settings_and_show_every_series(monkeypatch, tmp_path):
    """A sweep's title names the source, rule and qmax; eleven series stay tellable apart
    (colours repeat after ten, marker and line style do not); a table beyond [-1, 1] is
    drawn whole."""
    from quantbook.naming import resolve_codebook

    figs = _drawn(monkeypatch)
    names = ["nf4", "af4", "fp4", "e2m1", "iq4_nl", "int4-sym", "nf4-torchao", "nf3", "nf2", "fp4-bnb-cpu",
             "max1960-n16"]   # at most 16 entries: the scaled layouts store 4-bit codes
    plot_sweep([(n, resolve_codebook(n)) for n in names], tmp_path / "s.png", block_sizes=[16, 32],
               source="laplace", scale="e8m0:floor", qmax=4.0)
    fig = figs[-1]
    assert "laplace" in fig._suptitle.get_text() and "e8m0:floor" in fig._suptitle.get_text() \
        and "qmax 4" in fig._suptitle.get_text()
    lines = fig.axes[0].get_lines()
    styles = {(ln.get_color(), ln.get_marker(), ln.get_linestyle()) for ln in lines}
    assert len(lines) == 11 and len(styles) == 11
    plot_levels([("max1960-n16", REGISTRY["max1960-n16"].codebook)], 64, tmp_path / "l.png")
    lo, hi = figs[-1].axes[0].get_xlim()
    top = float(np.max(np.abs(REGISTRY["max1960-n16"].codebook.levels)))
    assert lo < -top and hi > top


@needs_mpl
def test_a_sweep_s_normalised_axis_names_evaluate_s_unit(monkeypatch, tmp_path):
    """The normalised errors are x over the block's absmax, or over qmax·s in a scaled layout, as
    evaluate's are: float32 and nested statistics encode with the exact absmax, so their axis is
    y = x/absmax (it said x / (qmax · scale) for any rule).  The oracle: float32's numbers are those
    without a rule."""
    from quantbook.naming import resolve_codebook

    figs = _drawn(monkeypatch)
    cbs = [("nf4", resolve_codebook("nf4"))]
    labels, titles = {}, {}
    for scale in (None, "float32", "nested", "e4m3"):
        got = plot_sweep(cbs, tmp_path / "s.png", block_sizes=[16, 64], domain="normalized", scale=scale)
        labels[scale] = [ax.get_ylabel() for ax in figs[-1].axes]
        titles[scale] = figs[-1]._suptitle.get_text()
        if scale == "float32":
            assert np.array_equal(got["nf4"]["mse"], sweep_errors(cbs[0][1], [16, 64], domain="normalized")["mse"])
    assert labels[None] == labels["float32"] == labels["nested"] == ["MSE of y = x/absmax", "MAE of y = x/absmax"]
    assert labels["e4m3"] == ["MSE of x / (qmax · scale)", "MAE of x / (qmax · scale)"]
    # a qmax only where the layout has one (bitsandbytes' layouts map each block to ±1)
    assert [("qmax" in titles[s]) for s in (None, "float32", "nested", "e4m3")] == [False, False, False, True]


@needs_mpl
def test_names_are_drawn_as_they_are(tmp_path):
    """A file name is a label, not TeX (``a$\\frac$.json`` ended in a mathtext parse error, a
    name of two ``$`` was drawn as math), and one whose bytes are not UTF-8 is drawn with
    U+FFFD where it made matplotlib raise a TypeError after the table was printed; printed,
    it is its own bytes."""
    import os
    import subprocess
    import sys

    from quantbook.plots import _plain

    assert _plain("a$\\frac$.json") == "a\\$\\frac\\$.json" and _plain(os.fsdecode(b"bad\xff.json")) == "bad\ufffd.json"
    text = '{"bits": 2, "levels": [-1, 0, 1]}'
    names = [os.fsencode(tmp_path / "a$\\frac$.json"), os.fsencode(tmp_path / "x$y$.json")]
    if os.name == "posix":
        names.append(os.fsencode(tmp_path) + b"/bad\xff.json")
    for p in names:
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)
    for cmd in ([b"plot", *names, b"nf4"], [b"plot-sweep", *names, b"--max-block", b"64"]):
        out = tmp_path / f"{cmd[0].decode()}.png"
        r = subprocess.run([sys.executable, "-m", "quantbook.cli", *cmd, b"-o", os.fsencode(out)],
                           capture_output=True, timeout=120)
        assert r.returncode == 0 and out.stat().st_size > 0, r.stderr
        if cmd[0] == b"plot-sweep" and os.name == "posix":
            assert b"bad\xff.json" in r.stdout   # the name's own bytes


@needs_mpl
def test_a_label_that_begins_with_an_underscore_is_in_the_legend(tmp_path, monkeypatch):
    """matplotlib leaves labels that begin with "_" out of a legend: a file "_a.json" was drawn
    without one."""
    from quantbook.naming import resolve_codebook

    figs = _drawn(monkeypatch)
    plot_sweep([("_a.json", resolve_codebook("nf4")), ("nf4", resolve_codebook("nf4"))], tmp_path / "s.png",
               block_sizes=[16, 32])
    legend = [t.get_text() for t in figs[-1].axes[0].get_legend().get_texts()]
    assert legend == ["\u200b_a.json", "nf4"]


def test_a_picture_is_not_written_over_an_input_named_by_a_path_object(tmp_path, monkeypatch):
    """The Python API's inputs may be path objects as well as strings (the command line's are strings)."""
    from pathlib import Path

    from quantbook.plots import check_plot_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.png").write_bytes(b"the only copy")
    for inputs in ([Path("in.png")], [tmp_path / "in.png"], ["in.png "], [None, Path("other.png")]):
        if inputs[0] is None:
            assert check_plot_path("in.png", inputs) == Path("in.png")
            continue
        with pytest.raises(ValueError, match="is the input"):
            check_plot_path("in.png", inputs)


def test_cli_plot_reads_a_codebook_file_with_a_comma_in_its_name(tmp_path, monkeypatch):
    """The list grammar is quantbook.naming.split_specs' for every command: an argument that names
    a file is that file, commas and all, as evaluate-model -c reads it (plot split it)."""
    pytest.importorskip("matplotlib", reason="plot draws with matplotlib")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a,b.json").write_text('{"bits": 2, "levels": [-1, -0.3, 0.3, 1]}', encoding="utf-8")
    assert main(["plot", "a,b.json", "nf4,af4", "-o", "p.png"]) == 0
    assert (tmp_path / "p.png").stat().st_size > 0


def _without_matplotlib(monkeypatch):
    """As if matplotlib were not installed: its modules, loaded or not, fail to import."""
    import sys

    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)


def test_plot_sweep_prints_its_numbers_without_a_picture_or_matplotlib(monkeypatch, capsys):
    """-o is optional: without it plot-sweep prints the numbers only (a user wanted the numbers and had
    no matplotlib); a picture asked for still needs it, and says so before any work."""
    from quantbook.derive import evaluate

    _without_matplotlib(monkeypatch)
    assert main(["plot-sweep", "nf4", "--min-block", "16", "--max-block", "32", "--json"]) == 0
    out, err = capsys.readouterr()
    want = [evaluate(REGISTRY["nf4"].codebook, B).mse_weight for B in (16, 32)]
    assert json.loads(out)["codebooks"]["nf4"]["mse_weight"] == pytest.approx(want, rel=1e-12) and err == ""
    assert main(["plot-sweep", "nf4", "--min-block", "16", "--max-block", "32"]) == 0
    out, err = capsys.readouterr()
    assert f"{want[1]:.3e}" in out and err == ""
    assert main(["plot-sweep", "nf4", "--min-block", "16", "--max-block", "32", "-o", "s.png"]) == 2
    assert "plots need matplotlib" in capsys.readouterr().err


def test_a_refitted_row_says_what_it_was_fitted_for(monkeypatch, capsys):
    """A lloyd-LOSS name without B is the table the name says (fitted for its source, absmax and the
    exact float32 absmax) at each B, as in every command; where the sweep's law is another, the text,
    the JSON and the picture's legend all say what it was fitted for (it read "(fit at each B)" under
    --scale e8m0, whose own optimum is lower)."""
    import quantbook.plots as plots
    from quantbook.derive import evaluate, lloyd

    drawn = {}

    def draw(codebooks, out, block_sizes, **law):   # the picture's labels, without drawing it
        drawn[out] = [label for label, _ in codebooks]
        return {label: plots.sweep_errors(cb, block_sizes, **law) for label, cb in codebooks}

    monkeypatch.setattr(plots, "plot_sweep", draw)
    monkeypatch.setattr(plots, "check_plot_path", lambda *a, **k: None)
    sweep = ["plot-sweep", "nf4", "lloyd-l2", "lloyd-l2@laplace", "--min-block", "32", "--max-block", "32"]
    cases = {("--scale", "e8m0"): {"lloyd-l2": "lloyd-l2 (fit at each B for float32 absmax)",
                                    "lloyd-l2@laplace": "lloyd-l2@laplace (fit at each B for laplace weights, "
                                                        "float32 absmax)"},
             ("--source", "laplace"): {"lloyd-l2": "lloyd-l2 (fit at each B for normal weights)",
                                       "lloyd-l2@laplace": "lloyd-l2@laplace (fit at each B)"}}
    for option, labels in cases.items():
        assert main([*sweep, *option, "--json", "-o", "j.png"]) == 0
        got = json.loads(capsys.readouterr().out)["codebooks"]
        assert list(got) == ["nf4", *labels.values()] == drawn["j.png"]
        assert main([*sweep, *option, "-o", "t.png"]) == 0
        text = capsys.readouterr().out
        rows = [line.split("  mse ")[0].rstrip() for line in text.splitlines() if "  mse " in line]
        assert rows == list(got) == drawn["t.png"]
        # the row is the named table's: fitted for normal (or laplace) and float32, measured in the sweep's law
        law = {"--scale": {"scale": "e8m0"}, "--source": {"source": "laplace"}}[option[0]]
        named = evaluate(lloyd(4, 32), 32, **law).mse_weight
        assert got[labels["lloyd-l2"]]["mse_weight"] == [pytest.approx(named, rel=1e-12)]
    optimum = evaluate(lloyd(4, 32, scale="e8m0"), 32, scale="e8m0").mse_weight
    assert optimum < evaluate(lloyd(4, 32), 32, scale="e8m0").mse_weight   # what the old label let one assume
