"""Every ``--json`` output uses one vocabulary, and docs/json.md lists exactly its fields."""

import dataclasses
import json
import math
import re

import numpy as np
import pytest

from quantbook.cli import main

from checkout import checkout_path

DOC = ("docs", "json.md")


def documented() -> dict[str, set[str]]:
    """``{section heading: {field path}}`` from the tables of docs/json.md."""
    sections: dict[str, set[str]] = {}
    current = None
    for line in checkout_path(*DOC).read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            sections[current] = set()
        elif current and line.startswith("| `"):
            sections[current].add(re.match(r"\| `([^`]+)`", line).group(1))
    return sections


def section(title_fragment: str) -> set[str]:
    found = [fields for title, fields in documented().items() if title_fragment in title]
    assert len(found) == 1, title_fragment
    return found[0]


def paths(obj, prefix="", keyed=(), opaque=()) -> set[str]:
    """Field paths of a JSON value: ``a.b``, ``list[].field``; objects at ``keyed`` paths are
    keyed by data (``LABEL``), those at ``opaque`` paths are not descended into."""
    out = set()
    if isinstance(obj, dict) and prefix not in opaque:
        for k, v in obj.items():
            p = (f"{prefix}." if prefix else "") + ("LABEL" if prefix in keyed else k)
            if prefix not in keyed:
                out.add(p)
            out |= paths(v, p, keyed, opaque)
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, dict):
                out |= paths(item, f"{prefix}[]" if prefix else "", keyed, opaque)
    return out


def run_json(capsys, *argv):
    assert main([str(a) for a in argv]) == 0
    text = capsys.readouterr().out
    assert "Infinity" not in text and "NaN" not in text
    return json.loads(text)


def test_codebook_objects_show_and_export(capsys, tmp_path):
    d = run_json(capsys, "show", "fp4", "--json")  # fp4 has a code order of its own
    assert paths(d, opaque={"recipe"}) == section("Codebook objects")
    run_json_file = tmp_path / "fp4.json"
    assert main(["export", "fp4", "-f", "json", "-o", str(run_json_file)]) == 0
    assert json.loads(run_json_file.read_text(encoding="utf-8")) == d


def test_list(capsys):
    rows = run_json(capsys, "list", "--json")
    assert set().union(*(paths(r) for r in rows)) == section("quantbook list")
    from quantbook import REGISTRY

    assert [r["name"] for r in rows] == list(REGISTRY)
    assert all(r["n_levels"] == REGISTRY[r["name"]].codebook.n_levels for r in rows)


def test_derive_nf(capsys):
    d = run_json(capsys, "derive", "nf", "--bits", "3", "--precision", "exact", "--json")
    assert paths(d, opaque={"recipe"}) == section("quantbook derive nf")
    assert set(d["recipe"]) == {"method", "bits", "offset", "precision"}


def test_derive_lloyd_and_quantile_share_evaluate_names(capsys):
    lloyd = run_json(capsys, "derive", "lloyd", "--bits", "2", "--block-size", "32", "--json")
    quant = run_json(capsys, "derive", "quantile", "--bits", "2", "--block-size", "32", "--json")
    fields = section("quantbook derive lloyd")
    assert paths(lloyd, opaque={"recipe"}) == fields
    assert paths(quant, opaque={"recipe"}) == fields - {"iterations", "change", "converged"}
    # the metrics are evaluate's, under the same names, for the model the table was derived for
    from quantbook import Codebook
    from quantbook.derive import evaluate

    for d in (lloyd, quant):
        e = evaluate(Codebook.from_dict(d), 32).to_dict()
        for key in ("mse_weight", "mae_weight", "mse_normalized", "mae_normalized", "sqnr_db"):
            assert d[key] == e[key], key


def test_derive_lloyd_under_a_search_rule(capsys):
    d = run_json(capsys, "derive", "lloyd", "--scale", "search:4over6", "--block-size", "16", "--samples",
                 1 << 12, "--json")
    assert paths(d, opaque={"recipe"}) == section("fitted under a search rule")


def test_evaluate_under_a_search_rule(capsys):
    d = run_json(capsys, "evaluate", "iq4_nl", "--scale", "search:ggml", "--block-size", "32", "--samples",
                 1 << 12, "--json")
    assert paths(d) == section("Monte Carlo under a search rule")


def test_evaluate(capsys):
    d = run_json(capsys, "evaluate", "nf4", "--json")
    assert paths(d) == section("quantbook evaluate NAME")
    # independent check of a vocabulary field: bits per weight of a 4-bit table with a
    # float32 scale per block of 64
    assert d["bits_per_weight"] == 4 + 32 / 64
    d = run_json(capsys, "evaluate", "max1960-n4", "--normalization", "none", "--json")
    assert d["block_size"] is None


def test_evaluate_in_a_scaled_layout(capsys):
    fields = section("quantbook evaluate NAME") | section("scaled layouts")
    d = run_json(capsys, "evaluate", "nf4", "--scale", "e4m3", "--block-size", "16", "--json")
    assert paths(d) == fields   # a two-level rule: its tensor model too
    d = run_json(capsys, "evaluate", "nf4", "--scale", "nested", "--json")
    assert paths(d) == fields - {"tensor_model"}   # no tensor scale; qmax null: nested maps each block to ±1
    assert d["bits_per_weight"] == 4 + (8 + 32 / 256) / 64   # a uint8 code a block, a float32 a 256-block


def test_audit_layout_findings():
    # `audit --layouts` takes 15-30 s: its rows are LayoutFinding.to_dict(), read from the class
    from quantbook.verify.layouts import LayoutFinding

    text = checkout_path(*DOC).read_text(encoding="utf-8")
    text = text.split("With `--layouts`")[1].split("Layout findings never")[0]
    heads = {name for head in re.findall(r"^- (.*?): ", text, re.M) for name in re.findall(r"`(\w+)`", head)}
    fields = set(LayoutFinding("nf4", "bitsandbytes", "float32", 64, 4.5, True).to_dict())
    assert fields == {f.name for f in dataclasses.fields(LayoutFinding)}
    assert heads <= fields and fields <= set(re.findall(r"`(\w+)`", text))   # each listed, as a bullet or in one


def test_audit(capsys):
    rows = run_json(capsys, "audit", "--json")
    got = set().union(*(paths(r, opaque={"recipe", "details"}) for r in rows))
    assert got == section("quantbook audit")
    from quantbook import REGISTRY

    for r in rows:  # `recipe` is the recipe object, as in a codebook object
        assert r["recipe"] == REGISTRY[r["name"]].codebook.recipe
    # `details`: its fields are named in the row's cell, and float64_variants is keyed by the labels it lists
    lines = checkout_path(*DOC).read_text(encoding="utf-8").splitlines()
    cell = next(line for line in lines if line.startswith("| `details` |"))
    keyed = {"float64_variants"}
    got = set().union(*(paths(r["details"], keyed=keyed) for r in rows))
    named = set(re.findall(r"`([^`]+)`", cell))
    assert {"optimality.printed_vs_exact[].exact_4sig", "float64_variants.LABEL.max_ulp"} <= got   # the walk sees them
    assert sorted({part.removesuffix("[]") for p in got for part in p.split(".")} - named - {"LABEL"}) == []
    labels = {label for r in rows for label in r["details"].get("float64_variants", {})}
    assert labels and labels <= named and "keyed by the variant's label" in cell


def test_evaluate_model(capsys, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(0)
    model = tmp_path / "m.safetensors"
    x = rng.standard_normal((16, 64)).astype(np.float32)
    st.save_file({"a": x, "b": rng.standard_normal((4, 64)).astype(np.float32)}, str(model))
    d = run_json(capsys, "evaluate-model", model, "-c", "nf4,int4-sym", "--per-tensor", "--json")
    keyed = {"codebooks", "per_tensor[].codebooks"}
    optional = {"rotations", "vq", "vq.group", "vq.scale", "vq.scale_dtype"}
    assert paths(d, keyed=keyed) == section("quantbook evaluate-model") - optional
    # a vector grid and a second rotation add the optional fields, and only those
    full = run_json(capsys, "evaluate-model", model, "-c", "nf4,higgs-2d-16", "--rotate", "none,hadamard",
                    "--per-tensor", "--json")
    assert paths(full, keyed=keyed) == section("quantbook evaluate-model")
    assert full["rotations"] == ["none", "hadamard"] and full["vq"]["group"] == 64
    # mse_weight is the mean squared error of the weights, in their units: recompute one
    import quantbook

    packed, state = quantbook.quantize(x, "nf4", block_size=64)
    e = quantbook.dequantize(packed, state).astype(np.float64) - x
    tensor_a = next(t for t in d["per_tensor"] if t["name"] == "a")
    assert tensor_a["codebooks"]["nf4"]["mse_weight"] == pytest.approx(float(np.mean(e * e)), rel=1e-12)
    assert tensor_a["codebooks"]["nf4"]["mae_weight"] == pytest.approx(float(np.mean(np.abs(e))), rel=1e-12)


def test_plot_sweep_names_the_domain(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    got = set()
    for domain in ("weight", "normalized"):
        d = run_json(capsys, "plot-sweep", "nf4", "--min-block", "16", "--max-block", "32", "--domain", domain,
                     "--json", "-o", tmp_path / "s.png")
        got |= paths(d, keyed={"codebooks"})
        assert set(d["codebooks"]["nf4"]) == {f"mse_{domain}", f"mae_{domain}"}
        e = run_json(capsys, "evaluate", "nf4", "--block-size", "32", "--json")
        assert d["codebooks"]["nf4"][f"mse_{domain}"][1] == pytest.approx(e[f"mse_{domain}"], rel=1e-12)
    assert got == section("quantbook plot-sweep")


def test_recipe_parameters_are_documented():
    from quantbook.derive import recipes

    rows = {}
    for line in checkout_path(*DOC).read_text(encoding="utf-8").split("## Recipe objects")[1].splitlines():
        m = re.match(r"\| `([^`]+)` \| (.*) \|$", line)
        if m:
            rows[m.group(1)] = set(re.findall(r"`([a-z_]+)`", m.group(2)))
    assert set(rows) == set(recipes.available_methods())
    classes = {cls.method: cls for cls in recipes.Recipe.__subclasses__()}
    for method in recipes.available_methods():
        fields = {f.name for f in dataclasses.fields(classes[method])}
        assert fields <= rows[method], (method, fields - rows[method])


def test_non_finite_numbers_are_null(capsys):
    # Cauchy has no variance: the weight-domain MSE is infinite, written as null
    d = run_json(capsys, "evaluate", "nf4", "--source", "student-t:1", "--json")
    assert d["mse_weight"] is None and math.isfinite(d["mse_normalized"])
