"""The command line's text output says what it prints: numbers are words where they are not
finite, columns line up for any name, the text and ``--json`` print the same quantities, every
default the help states is the one used, and the exit statuses are the documented ones."""

import json
import re

import numpy as np
import pytest

from quantbook.cli import main

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
    assert re.search(r"normalised \d\.\d{6}e-\d\d\n", out)


def test_derive_extras_print_words_not_python_reprs(capsys):
    out = run(capsys, "derive", "quantile", "--bits", "2", "--source", "student-t:2")
    assert "mse_weight: inf\n" in out and "sqnr_db: undefined\n" in out
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


# ------------------------------------------------------------------------------ alignment
def test_plot_sweep_columns_line_up_for_short_and_long_names(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    cb = long_named_codebook(tmp_path)
    for specs in (["nf4"], ["nf4", str(cb)]):
        out = run(capsys, "plot-sweep", *specs, "--min-block", "16", "--max-block", "32", "-o", tmp_path / "s.png")
        header, *rows = out.splitlines()[1:]
        assert len(rows) == 2 * len(specs)
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
