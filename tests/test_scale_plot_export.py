"""``plot-sweep --scale`` and ``export --scale``: the scaled layouts in the sweep and in C headers.

References: the sweep's exact errors against a Monte Carlo of the real byte layout
(``quantbook.quantize(..., scale=RULE, backend="numpy")`` on 2**18 N(0,1) values, seed
20261125, within 4 standard errors); the header's tables against the float32 bits gcc puts in
the compiled program, compared with the OCP E2M1 grid and the layout's own table.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

import quantbook
from quantbook.bulk.layouts import scaled_table
from quantbook.scales import get_rule

from test_cli_errors import run as _run
from test_cli_json import paths, section

SEED = 20261125


@pytest.fixture(scope="module")
def normal_sample() -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal(2**18).astype(np.float32)


@pytest.mark.parametrize("rule, qmax", [("e4m3", None), ("e8m0:floor", None), ("e8m0:rceil", 4.0)])
def test_plot_sweep_scale_matches_monte_carlo(capsys, tmp_path, normal_sample, rule, qmax):
    pytest.importorskip("matplotlib")
    B = 32
    extra = [] if qmax is None else ["--qmax", qmax]
    rc, out, _ = _run(capsys, "plot-sweep", "e2m1", "--scale", rule, *extra, "--min-block", B, "--max-block", B,
                      "--json", "-o", tmp_path / "s.png")
    assert rc == 0
    d = json.loads(out)
    assert d["scale"] == rule and d["qmax"] == (6.0 if qmax is None else qmax)
    assert paths(d, keyed={"codebooks"}) <= section("quantbook plot-sweep")
    x = normal_sample
    packed, state = quantbook.quantize(x, "e2m1", B, scale=rule, backend="numpy",
                                       **({} if qmax is None else {"qmax": qmax}))
    e = quantbook.dequantize(packed, state).astype(np.float64) - x
    for key, err in (("mse_weight", e * e), ("mae_weight", np.abs(e))):
        se = float(np.std(err)) / np.sqrt(err.size)
        assert abs(d["codebooks"]["e2m1"][key][0] - float(np.mean(err))) < 4 * se, key


def test_plot_sweep_scale_changes_the_numbers_and_prints_the_rule(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    args = ["plot-sweep", "e2m1", "--min-block", "16", "--max-block", "16", "-o", tmp_path / "s.png"]
    rc, plain, _ = _run(capsys, *args, "--json")
    rc2, scaled, _ = _run(capsys, *args, "--json", "--scale", "e8m0:floor")
    assert rc == rc2 == 0
    p, s = json.loads(plain), json.loads(scaled)
    assert p["scale"] is None and p["qmax"] is None
    # E8M0 rounds the scale to a power of two: a coarser grid than the exact absmax
    assert s["codebooks"]["e2m1"]["mse_weight"][0] > p["codebooks"]["e2m1"]["mse_weight"][0]
    rc, text, _ = _run(capsys, *args, "--scale", "e4m3", "--qmax", "3")
    assert rc == 0 and "scale e4m3, qmax 3" in text


@pytest.mark.parametrize("argv", [["--scale", "nested"], ["--scale", "search:4over6"], ["--scale", "nope"],
                                  ["--qmax", "4"], ["--scale", "float32", "--qmax", "4"],
                                  ["--scale", "e4m3", "--qmax", "-1"], ["--scale", "e4m3", "--qmax", "nan"]])
def test_plot_sweep_refuses_rules_it_cannot_model(capsys, tmp_path, argv):
    out = tmp_path / "s.png"
    rc, _, err = _run(capsys, "plot-sweep", "e2m1", "--max-block", "32", *argv, "-o", out)
    assert rc == 2 and err.count("\n") == 1 and "error" in err
    assert not out.exists()


_MAIN = r"""
#include <stdio.h>
#include <string.h>
#include "%(header)s"
int main(void) {
    unsigned i, u;
    float q = %(I)s_QMAX;
    printf("rule %%s\n", %(I)s_SCALE_RULE);
    printf("block %%d\n", (int)%(I)s_BLOCK_SIZE);
    printf("bytes %%d %%d\n", (int)%(I)s_SCALE_BYTES, (int)%(I)s_TENSOR_SCALE_BYTES);
    memcpy(&u, &q, 4);
    printf("qmax %%u\n", u);
    printf("table");
    for (i = 0; i < sizeof %(i)s_layout_table / sizeof %(i)s_layout_table[0]; ++i) {
        memcpy(&u, &%(i)s_layout_table[i], 4);
        printf(" %%u", u);
    }
    printf("\n");
    return 0;
}
"""


def _compile_and_dump(tmp_path, header_text: str, ident: str) -> dict[str, list[str]]:
    (tmp_path / "h.h").write_text(header_text, encoding="utf-8")
    (tmp_path / "main.c").write_text(_MAIN % dict(header="h.h", I=ident.upper(), i=ident), encoding="utf-8")
    exe = tmp_path / "dump"
    cc = subprocess.run(["gcc", "-x", "c", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1",
                         "-o", str(exe), str(tmp_path / "main.c")], capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    return {line.split()[0]: line.split()[1:] for line in run.stdout.splitlines()}


@pytest.mark.parametrize("name, rule, block_size, qmax", [
    ("e2m1", "e4m3", 16, None),        # NVFP4
    ("e2m1", "e8m0:floor", 32, None),  # MXFP4
    ("nf4", "bfloat16", 64, 4.0),
    ("fp4", "search:4over6", 16, None),
])
def test_export_scale_header_compiles_and_holds_the_layout(capsys, tmp_path, name, rule, block_size, qmax):
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found")
    extra = [] if qmax is None else ["--qmax", qmax]
    rc, text, _ = _run(capsys, "export", name, "--format", "c", "--scale", rule, "--block-size", block_size, *extra)
    assert rc == 0
    q = 6.0 if qmax is None else qmax
    assert f"scale rule {rule}, block size {block_size}, qmax {q:g}" in text  # the comment names the layout
    dump = _compile_and_dump(tmp_path, text, name)
    r = get_rule(rule)
    assert dump["rule"] == [rule]
    assert dump["block"] == [str(block_size)]
    assert dump["bytes"] == [str(r.stored_bytes), str(r.tensor_bytes)]
    assert dump["qmax"] == [str(int(np.float32(q).view(np.uint32)))]
    cb = quantbook.get(name)
    want = scaled_table(cb.code, q).view(np.uint32)
    assert [int(v) for v in dump["table"]] == want.tolist()
    if name == "e2m1":  # the OCP MX v1.0 E2M1 element values, in bit-pattern order
        grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float32)
        ocp = np.concatenate([grid, -grid])
        assert [int(v) for v in dump["table"]] == ocp.view(np.uint32).tolist()


def test_export_scale_defaults_and_cuda(capsys):
    rc, text, _ = _run(capsys, "export", "e2m1", "--format", "cuda", "--scale", "e4m3")
    assert rc == 0
    assert "#define E2M1_BLOCK_SIZE 64\n" in text and "#define E2M1_QMAX 6.0f\n" in text
    assert "static __constant__ float e2m1_layout_table[16]" in text


def test_export_without_scale_is_the_plain_header(capsys):
    for fmt in ("c", "cuda"):
        rc, text, _ = _run(capsys, "export", "e2m1", "--format", fmt)
        assert rc == 0
        assert text == quantbook.export.export(quantbook.get("e2m1"), fmt)
        assert "layout" not in text and "SCALE" not in text


@pytest.mark.parametrize("argv", [
    ["--format", "c", "--scale", "nested"],
    ["--format", "c", "--scale", "float32"],
    ["--format", "json", "--scale", "e4m3"],
    ["--format", "c", "--block-size", "16"],
    ["--format", "c", "--qmax", "4"],
    ["--format", "c", "--scale", "e4m3", "--qmax", "0"],
    ["--format", "c", "--scale", "e4m3", "--qmax", "inf"],
    ["--format", "c", "--scale", "e4m3", "--qmax", "1e-50"],
    ["--format", "c", "--scale", "bogus"],
])
def test_export_scale_bad_input_is_one_line(capsys, argv):
    rc, out, err = _run(capsys, "export", "e2m1", *argv)
    assert rc == 2 and out == "" and err.count("\n") == 1


@pytest.mark.parametrize("block_size", [8, 48, 8192, 64.0, True])
def test_header_layout_holds_only_block_sizes_the_byte_layouts_store(block_size):
    """The library's own check, not only the command line's: a header for a block size that
    quantize refuses would describe bytes nobody can make."""
    from quantbook.export import HeaderLayout

    table = scaled_table(quantbook.get("e2m1").code, 6.0)
    with pytest.raises(ValueError, match="block_size must be"):
        quantbook.quantize(np.zeros(64, np.float32), "e2m1", block_size, scale="e4m3")
    with pytest.raises(ValueError, match="block_size must be"):
        HeaderLayout("e4m3", block_size, 6.0, table)
    assert HeaderLayout("e4m3", np.int64(16), 6.0, table).block_size == 16
