"""The layout audit (``quantbook audit --layouts``): published 4-bit tables in the scaled
layouts they were made for, against the optimum of that layout.

Oracles: Monte Carlo through ``quantbook.quantize`` (bytes checked against torchao in
tests/test_layouts_torchao.py), N(0,1) weights with a stated seed, 4 standard errors; the
published storage costs of the layouts; and rough savings from Lloyd on a sample, measured
independently of the exact law (about 37 % for NVFP4, 25 % for MXFP4 floor)."""

import json

import numpy as np
import pytest

import quantbook
from quantbook import Codebook
from quantbook.cli import main
from quantbook.verify.layouts import LAYOUTS, attach_layouts, audit_layout, layout_findings


@pytest.fixture(scope="module")
def findings():
    return {(f.codebook, f.scale): f for f in layout_findings()}


def mc_mse(codebook, block_size, scale, n=1 << 18, seed=21, qmax=6.0):
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    packed, state = quantbook.quantize(x, codebook, block_size, scale=scale, backend="numpy", qmax=qmax)
    e2 = ((quantbook.dequantize(packed, state).astype(np.float64) - x) ** 2).reshape(-1, block_size).mean(axis=1)
    return e2.mean(), e2.std(ddof=1) / np.sqrt(e2.size)


def test_every_layout_has_a_finding(findings):
    assert len(findings) == len(LAYOUTS)
    # published costs: NVFP4 4.5, MXFP4 4.25, fp16 scale per 32 4.5, float32 absmax per 64 4.5 bits per weight
    expect = {"e4m3": 4.5, "e8m0:floor": 4.25, "e8m0:ceil": 4.25, "e8m0:even": 4.25, "e8m0:rceil": 4.25,
              "float16": 4.5, "float32": 4.5, "search:ggml": 4.5, "search:ggml-ref": 4.5}
    for (_, scale), f in findings.items():
        if scale in expect:
            assert f.bits_per_weight == expect[scale]


def test_nested_matches_monte_carlo(findings):
    """NF4 under nested statistics: the table's and the optimum's expected MSE within 4
    standard errors of whole tensors (2**20 values, seeds 21/22); the increment over float32
    statistics is tested more closely in tests/test_scale_nested.py."""
    f, f32 = findings[("nf4", "nested")], findings[("nf4", "float32")]
    assert f.available and 4.0 < f.bits_per_weight < 4.5  # the 8-bit statistics are cheaper than float32
    assert f.mse_weight > f32.mse_weight and f.optimum_mse_weight > f32.optimum_mse_weight
    mean, se = mc_mse("nf4", 64, "nested", n=1 << 20)
    assert abs(f.mse_weight - mean) < 4 * se, (f.mse_weight, mean, se)
    opt = Codebook(levels=np.asarray(f.optimum_levels), bits=4)
    mean, se = mc_mse(opt, 64, "nested", n=1 << 20, seed=22)
    assert abs(f.optimum_mse_weight - mean) < 4 * se, (f.optimum_mse_weight, mean, se)
    assert 0 < f.loss_percent < 10


@pytest.mark.parametrize("name, scale, B", [("e2m1", "e4m3", 16), ("e2m1", "e8m0:floor", 32),
                                            ("e2m1", "e8m0:ceil", 32), ("iq4_nl", "float16", 32)])
def test_table_and_optimum_match_monte_carlo(findings, name, scale, B):
    f = findings[(name, scale)]
    mean, se = mc_mse(name, B, scale)
    assert abs(f.mse_weight - mean) < 4 * se, (f.mse_weight, mean, se)
    opt = Codebook(levels=np.asarray(f.optimum_levels), bits=4)
    mean, se = mc_mse(opt, B, scale, seed=22)
    assert abs(f.optimum_mse_weight - mean) < 4 * se, (f.optimum_mse_weight, mean, se)
    assert f.loss_percent == pytest.approx(100 * (f.mse_weight / f.optimum_mse_weight - 1))


def test_optimum_is_better_and_savings_match_sample_lloyd(findings):
    for f in findings.values():
        if f.available and f.method == "exact":
            # the optimum with fewer levels fixed is at least as good as with 0 fixed too
            assert f.optimum_mse_weight <= f.optimum_zero_mse_weight
            assert f.loss_percent > 0 and f.loss_zero_percent > 0
            assert min(f.optimum_levels) == -1 and max(f.optimum_levels) == 1 and len(f.optimum_levels) == 16
    nv = findings[("e2m1", "e4m3")]
    mx = findings[("e2m1", "e8m0:floor")]
    assert 0.33 < 1 - nv.optimum_mse_weight / nv.mse_weight < 0.42
    assert 0.20 < 1 - mx.optimum_mse_weight / mx.mse_weight < 0.30


@pytest.mark.parametrize("scale", ["search:ggml", "search:ggml-ref"])
def test_ggml_search_findings_match_monte_carlo(findings, scale):
    """IQ4_NL under ggml's quantizers (bytes checked against ggml in
    tests/test_scale_ggml.py): the finding's Monte Carlo against an independent sample (seed
    21, numpy backend), and its fitted optimum against a third (seed 22), 4 SE each."""
    f = findings[("iq4_nl", scale)]
    assert f.method == "monte-carlo" and f.available and f.mse_standard_error > 0
    mean, se = mc_mse("iq4_nl", 32, scale, n=1 << 20, qmax=127)
    assert abs(f.mse_weight - mean) < 4 * np.hypot(se, f.mse_standard_error), (f.mse_weight, mean, se)
    opt = Codebook(levels=np.asarray(f.optimum_levels), bits=4)
    mean, se = mc_mse(opt, 32, scale, n=1 << 20, seed=22, qmax=127)
    assert abs(f.optimum_mse_weight - mean) < 4 * np.hypot(se, f.mse_standard_error)
    assert min(f.optimum_levels) == -1 and len(f.optimum_levels) == 16
    # the search beats absmax float16 scales by far; IQ4_NL is within a few % of the fitted codes
    assert f.mse_weight < 0.85 * findings[("iq4_nl", "float16")].mse_weight
    assert -1 < f.loss_percent < 5


def test_attach_keeps_verdicts():
    from quantbook.verify.audit import audit

    rows = audit(["nf4", "fp4", "iq4_nl", "e2m1"])
    before = [(r.status, r.failed) for r in rows]
    attach_layouts(rows)
    assert [(r.status, r.failed) for r in rows] == before
    got = {r.name: [d["scale"] for d in r.details.get("layouts", [])] for r in rows}
    assert got == {"nf4": ["float32", "nested"], "fp4": [],
                   "iq4_nl": ["float16", "search:ggml-ref", "search:ggml"],
                   "e2m1": ["e4m3", "e8m0:floor", "e8m0:ceil", "e8m0:even", "e8m0:rceil"]}


def test_cli_audit_layouts(capsys):
    assert main(["audit", "--layouts", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert len(by_name["e2m1"]["details"]["layouts"]) == 5
    assert by_name["nf4"]["details"]["layouts"][1]["available"] is True
    assert all("layouts" not in r["details"] for r in rows if r["name"] not in ("e2m1", "iq4_nl", "nf4"))
    assert main(["audit", "--layouts"]) == 0
    out = capsys.readouterr().out
    assert "layout NVFP4 (e4m3, B16, 4.5 bits/w): MSE" in out and "not available" not in out
    assert "bitsandbytes nested (nested, B64, 4.12695 bits/w): MSE" in out


def test_a_caller_changing_a_search_finding_leaves_the_next_callers(findings):
    """A search layout's finding is cached (its samples are fixed): the one returned is a
    copy, so a caller that changes it (its levels sorted in place, a field overwritten) does not
    change what the next caller gets.  The oracle: the values read before the change."""
    lay = next(lay for lay in LAYOUTS if lay.scale == "search:ggml")
    first = audit_layout(lay)
    want = (first.mse_weight, list(first.optimum_levels))
    first.mse_weight = -1.0
    first.optimum_levels.reverse()
    again = audit_layout(lay)
    assert (again.mse_weight, again.optimum_levels) == want
    assert findings[("iq4_nl", "search:ggml")].optimum_levels == want[1]
