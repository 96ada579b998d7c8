"""Registry entries, the audit and the CLI contract."""

import re
import json
import subprocess
import sys

import numpy as np
import pytest

from quantbook import REGISTRY, get, names
from quantbook.verify import audit

from test_cli_errors import run as run_cli


def test_every_registry_table_loads_with_source():
    assert len(REGISTRY) >= 12
    for name, entry in REGISTRY.items():
        cb = entry.codebook
        assert cb.name == name and len(cb.source) > 20 and entry.summary
        assert cb.n_levels <= 2**cb.bits


def test_the_scalar_registry_is_read_only():
    """REGISTRY is one mapping every caller shares, and no way to register a table (a table of
    one's own is a Codebook or its JSON file): an entry a caller replaced or removed was so
    for the rest of the process.  The oracle: bitsandbytes' NF4 value, as published."""
    import quantbook

    with pytest.raises(TypeError):
        REGISTRY["nf4"] = REGISTRY["fp4"]
    with pytest.raises((TypeError, AttributeError)):
        REGISTRY.pop("nf4")
    with pytest.raises((TypeError, AttributeError)):
        REGISTRY.clear()
    assert quantbook.REGISTRY is REGISTRY and get("nf4").code[1] == -0.6961928009986877


def test_published_values_against_independent_literals():
    # spot checks typed from the sources, independent of the registry module's lists
    assert get("nf4").code[8] == np.float32(0.07958029955625534)
    assert get("af4").code[1] == -0.69441008
    assert np.float32(get("fp4").code[2]) == np.float32(8.0) / np.float32(12.0)
    assert get("fp4").code[8] == 0.0 and not np.signbit(get("fp4").code[8])
    assert np.signbit(get("e2m1").code[8])  # OCP has a negative-zero encoding
    assert get("iq4_nl").code[0] * 127 == -127 and round(get("iq4_nl").code[8] * 127) == 1
    assert get("nf4-torchao").code[14] == 0.7230
    assert list(get("max1960-n4").levels) == [-1.510, -0.4528, 0.4528, 1.510]


def test_audit_reproduces_expected_tables():
    rows = {r.name: r for r in audit()}
    assert rows["nf4"].bit_exact and rows["nf4"].max_ulp == 0
    assert rows["nf4"].details["float64_variants"]["float64, offset 929/960"]["max_ulp"] == 8
    for name in ("fp4", "e2m1", "iq4_nl", "int4-sym"):
        assert rows[name].bit_exact, name
    assert rows["nf4-torchao"].reproduced
    assert not any(r.failed for r in rows.values())


def test_audit_detects_a_wrong_table(monkeypatch):
    from quantbook.codebooks.registry import Published
    from quantbook.verify.audit import audit_one

    entry = REGISTRY["nf4"]
    bad_code = entry.codebook.code.copy()
    bad_code[9] = float(np.nextafter(np.float32(bad_code[9]), np.float32(1)))  # one ULP off
    bad = Published(entry.codebook.replace(levels=np.unique(bad_code), code=bad_code), "x")
    row = audit_one(bad)
    assert not row.bit_exact and row.max_ulp == 1 and row.failed


def _entry(name, code, recipe, **kw):
    from quantbook import Codebook
    from quantbook.codebooks.registry import Published

    code = np.asarray(code, dtype=np.float64)
    return Published(Codebook(np.unique(code), bits=4, name=name, source="test", recipe=recipe, code=code),
                     "test entry", **kw)


def test_cli_audit_exit_status_follows_expectations(capsys, monkeypatch):
    from quantbook.codebooks.registry import _ENTRIES   # what the read-only REGISTRY shows

    nf4 = REGISTRY["nf4"].codebook
    off = nf4.code.copy()
    off[9] = float(np.nextafter(np.float32(off[9]), np.float32(1)))  # one float32 ULP off
    # report-only rows never fail the audit, even when they differ or their recipe cannot run
    monkeypatch.setitem(_ENTRIES, "zz-report", _entry("zz-report", off, nf4.recipe, expect="report"))
    monkeypatch.setitem(_ENTRIES, "zz-norecipe", _entry("zz-norecipe", off, {"method": "no-such"},
                                                        expect="report"))
    rc, _, err = run_cli(capsys, "audit")
    assert rc == 0, err
    # a table expected bit for bit that is one ULP off fails: exit status 1, named on stderr
    monkeypatch.setitem(_ENTRIES, "zz-off", _entry("zz-off", off, nf4.recipe))
    rc, out, err = run_cli(capsys, "audit")
    assert rc == 1 and "zz-off" in err and "zz-report" not in err
    assert re.search(r"\[ *FAIL\] zz-off", out)
    monkeypatch.delitem(_ENTRIES, "zz-off")
    # ... and so does one whose recipe cannot be run
    monkeypatch.setitem(_ENTRIES, "zz-broken", _entry("zz-broken", nf4.code, {"method": "no-such"}))
    rc, _, err = run_cli(capsys, "audit", "--json")
    assert rc == 1 and "zz-broken" in err


def test_audit_named_tables_only(capsys):
    assert [r.name for r in audit("af4")] == ["af4"]   # a name, not its letters
    rc, out, _ = run_cli(capsys, "audit", "e2m1", "nf4", "--json")
    assert rc == 0 and [r["name"] for r in json.loads(out)] == ["e2m1", "nf4"]
    rc, _, err = run_cli(capsys, "audit", "nf4", "bogus")
    assert rc == 2 and err == ("quantbook: error: no published codebook 'bogus' (quantbook list names them; "
                                 "a codebook file is FILE.json)\n")
    rc, out, _ = run_cli(capsys, "audit", "--layouts", "e2m1", "--json")
    assert rc == 0 and [r["name"] for r in json.loads(out)] == ["e2m1"] and json.loads(out)[0]["details"]["layouts"]
    rc, _, err = run_cli(capsys, "audit", "--vector", "higgs-2d-9")
    assert rc == 2 and "no vector grid 'higgs-2d-9' (did you mean 'higgs-2d-64'?); known: higgs-1d-4" in err


def test_cli_audit_json_shape(capsys):
    rc, out, _ = run_cli(capsys, "audit", "--json")
    assert rc == 0
    rows = json.loads(out)
    assert {r["name"] for r in rows} == set(REGISTRY)
    for r in rows:
        for key in ("name", "bit_exact", "max_ulp", "max_abs_diff", "explanation"):
            assert key in r


def test_cli_list_show_derive(capsys):
    rc, out, _ = run_cli(capsys, "list")
    assert rc == 0 and "nf4" in out and "max1960-n16" in out
    rc, out, _ = run_cli(capsys, "show", "fp4", "--json")
    d = json.loads(out)
    assert rc == 0 and d["bits"] == 4 and len(d["levels"]) == 15 and len(d["code"]) == 16
    assert {"name", "bits", "levels", "source", "recipe"} <= set(d)
    rc, out, _ = run_cli(capsys, "derive", "nf", "--bits", "4", "--precision", "float32-bnb", "--json")
    d = json.loads(out)
    np.testing.assert_array_equal(np.float32(d["levels"]), np.float32(REGISTRY["nf4"].codebook.levels))
    rc, out, _ = run_cli(capsys, "derive", "nf", "--bits", "3", "--offset", "929/960", "--precision", "exact", "--json")
    d = json.loads(out)
    assert d["recipe"]["offset"] == "929/960" and len(d["levels_exact"]) == 8


def test_cli_show_loads_json_file(capsys, tmp_path):
    rc, out, _ = run_cli(capsys, "derive", "nf", "--bits", "5", "--json")
    path = tmp_path / "nf5.json"
    path.write_text(out, encoding="utf-8")
    rc, out2, _ = run_cli(capsys, "show", str(path), "--json")
    assert rc == 0 and json.loads(out2)["levels"] == json.loads(out)["levels"]


@pytest.mark.parametrize("argv", [
    [], ["nope"], ["show"], ["show", "nope"], ["show", "missing.json"],
    ["derive", "nf", "--bits", "9"], ["derive", "nf", "--bits", "x"],
    ["derive", "nf", "--offset", "2/3x"], ["derive", "nf", "--offset", "1/4"],
    ["derive", "nf", "--precision", "float16"], ["audit", "--bogus"],
])
def test_cli_bad_input_one_line_exit_2(capsys, argv):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2
    assert err.count("\n") == 1 and "error" in err and "Traceback" not in err


def test_cli_bad_json_file(capsys, tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"bits": 2, "levels": [0.5, 0.1]}', encoding="utf-8")
    rc, _, err = run_cli(capsys, "show", str(p))
    assert rc == 2 and "increasing" in err
    p.write_text("{not json", encoding="utf-8")
    rc, _, err = run_cli(capsys, "show", str(p))
    assert rc == 2 and "JSON" in err


def test_console_script_entry_point():
    # the installed command is the same main()
    r = subprocess.run([sys.executable, "-m", "quantbook.cli", "derive", "nf", "--bits", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_bad_recipes_raise_recipe_error():
    from quantbook.derive.recipes import RecipeError, derive_from_recipe

    for bad in ({"method": "nf"}, {"method": "nf", "bits": None}, {"method": "no-such"}, {"bits": 4}, [1]):
        with pytest.raises(RecipeError):
            derive_from_recipe(bad)


def test_cli_json_is_standard_json_for_heavy_tails(capsys):
    # Cauchy (student-t:1) has no variance: weight-domain MSE is infinite -> null, not Infinity
    rc, out, _ = run_cli(capsys, "evaluate", "nf4", "--source", "student-t:1", "--json")
    assert rc == 0 and "Infinity" not in out and "NaN" not in out
    d = json.loads(out)
    assert d["mse_weight"] is None and d["mse_normalized"] > 0


@pytest.mark.parametrize("name", ["e2m1", "fp4"])
def test_bit_exact_means_the_stored_table_in_its_order(name):
    """A table stored as its sorted levels (15 entries, no -0.0, not in bit-pattern order)
    holds the same levels as its recipe's 16-entry table, but is not that table bit for bit."""
    import dataclasses

    from quantbook.verify.audit import audit_one

    entry = REGISTRY[name]
    assert audit_one(entry).reproduced is True
    sorted_only = dataclasses.replace(entry, codebook=entry.codebook.replace(code=entry.codebook.levels))
    row = audit_one(sorted_only)
    assert row.reproduced is False and "stored entries" in row.explanation


@pytest.mark.parametrize("derived, published", [([1.0, 2.0], [1.0]), ([1.0], [1.0, 2.0, 3.0]), ([], [])])
def test_compare_refuses_tables_of_different_lengths(derived, published):
    # numpy broadcast a one-entry table against the other: compare([1, 2], [1]) read "1 entry differs"
    from quantbook.verify import compare

    with pytest.raises(ValueError, match="two non-empty tables of equal length"):
        compare(np.array(derived), np.array(published))


def test_register_check_refuses_unknown_names_and_non_callables():
    from quantbook.verify import register_check
    from quantbook.verify.audit import _CHECKS

    before = {k: list(v) for k, v in _CHECKS.items()}
    with pytest.raises(ValueError, match="no published codebook 'nf44'"):
        register_check("nf44", lambda entry, derived, row: None)   # a check that would never run
    with pytest.raises(ValueError, match="needs a callable"):
        register_check("nf4", 3)   # failed only inside a later audit
    assert _CHECKS == before


def _near_integers():
    """[-1, 0, 1] published; its recipe gives [-1, 0.1, 1]: equal once rounded to 0 decimals."""
    from quantbook.codebooks.codebook import Codebook

    recipe = {"method": "scaled-integers", "integers": [-10, 1, 10], "divisor": 10, "bits": 2}
    return Codebook(np.array([-1.0, 0.0, 1.0]), 2, "near-integers", recipe=recipe)


@pytest.mark.parametrize("expect", ["report", "decimals"])
def test_zero_decimals_is_a_number_of_decimals(expect):
    """0 decimals is a criterion like any other (it was read as "no criterion" for a report)."""
    from quantbook.codebooks.registry import Published
    from quantbook.verify.audit import audit_one

    row = audit_one(Published(_near_integers(), "t", expect=expect, decimals=0))
    assert row.reproduced is True and row.status == "ok"
    assert row.explanation == "published rounded to 0 decimals; the recipe rounded likewise matches every entry"
    row = audit_one(Published(_near_integers(), "t", expect=expect, decimals=1))
    assert row.reproduced is False and "differs in 1 entries" in row.explanation


def test_a_difference_shows_plain_numbers():
    from quantbook.codebooks.registry import Published
    from quantbook.verify.audit import audit_one

    row = audit_one(Published(_near_integers(), "t", expect="report"))
    assert row.reproduced is None
    assert row.explanation == "1 of 3 entries differ, worst at index 1 (0.1 derived vs 0.0 published)"


@pytest.mark.parametrize("decimals, said", [(-1, "decimals must be an integer from 0 to 17 or None, got -1"),
                                            (2.5, "decimals must be an integer from 0 to 17 or None, got 2.5"),
                                            (True, "decimals must be an integer from 0 to 17 or None, got True"),
                                            (None, "expect='decimals' needs the number of decimals")])
def test_a_published_entrys_decimals_are_checked(decimals, said):
    from quantbook.codebooks.registry import Published

    with pytest.raises(ValueError, match=re.escape(said)):
        Published(_near_integers(), "t", expect="decimals", decimals=decimals)


def test_names_is_the_published_list_in_its_order():
    # quantbook.names(): the twelve published tables in registration order (the order `quantbook list` prints),
    # written out here; a copy, so that a caller's edit cannot change the registry
    want = ["nf4", "fp4", "fp4-bnb-cpu", "af4", "nf4-torchao", "iq4_nl", "e2m1", "int4-sym",
            "max1960-n2", "max1960-n4", "max1960-n8", "max1960-n16"]
    got = names()
    assert got == want and all(get(n).name == n for n in got)
    got.clear()
    assert names() == want


def _codebook_file(path, cb, **change):
    d = json.loads(cb.to_json())
    d.update(change)
    path.write_text(json.dumps(d), encoding="utf-8")
    return path


def test_audit_a_codebook_file_against_its_own_recipe(capsys, tmp_path):
    """A table of one's own, in a file with its recipe, is audited like a published one: its
    recipe re-derived and compared bit for bit (the file was named "no published codebook").
    The oracle for the failing case is a level moved by hand one float32 ULP."""
    from quantbook.derive import nf

    cb = nf(3)
    good = _codebook_file(tmp_path / "mine.json", cb)
    rc, out, err = run_cli(capsys, "audit", good)
    assert rc == 0 and re.search(r"\[ *ok\] nf3: nf\(", out) and "reproduced bit for bit" in out, (out, err)
    off = [float(v) for v in cb.levels]
    off[1] = float(np.nextafter(np.float32(off[1]), np.float32(1)))
    bad = _codebook_file(tmp_path / "off.json", cb, name="mine-off", levels=off)
    rc, out, err = run_cli(capsys, "audit", "e2m1", bad)
    assert rc == 1 and re.search(r"\[ *FAIL\] mine-off", out) and "mine-off" in err
    assert "max_ulp=1 " in out and "1 of 8 entries differ, worst at index 1" in out
    rows = {r.name: r for r in audit(["E2M1", str(bad)])}
    assert rows["e2m1"].status == "ok" and rows["mine-off"].max_ulp == 1 and rows["mine-off"].failed
    # a misspelt recipe key, which reading the file cannot see, is what the audit names
    recipe = {**cb.recipe, "precison": cb.recipe["precision"]}
    del recipe["precision"]
    typo = _codebook_file(tmp_path / "typo.json", cb, recipe=recipe)
    rc, out, _ = run_cli(capsys, "audit", typo)
    assert rc == 1 and "unknown parameter 'precison'" in out
    rc, _, err = run_cli(capsys, "audit", tmp_path / "none.json")
    assert rc == 2 and "no such codebook file" in err and err.count("\n") == 1
    rc, _, err = run_cli(capsys, "audit", "mine.jsn")
    assert rc == 2 and "a codebook file is FILE.json" in err


def test_a_file_audit_takes_none_of_the_registry_tables_findings(capsys, tmp_path):
    """A file's table named like a published one is the file's: the registry's NF4 breakdown and
    layouts are not added to it, and its JSON row carries its own recipe."""
    from quantbook.derive import nf

    cb = nf(3)
    f = _codebook_file(tmp_path / "nf4.json", cb, name="nf4")
    rc, out, _ = run_cli(capsys, "audit", f, "--layouts", "--json")
    assert rc == 0
    [row] = json.loads(out)
    assert row["name"] == "nf4" and row["recipe"] == cb.recipe and row["status"] == "ok"
    assert "929/960" not in row["explanation"] and "layouts" not in row["details"]
