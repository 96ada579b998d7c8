"""Recipes as data (quantbook.derive.recipes) and the audit's handling of transcribed tables."""

import inspect
import json

import numpy as np
import pytest

from quantbook import REGISTRY
from quantbook.derive import formats, lloyd, nf, quantile, solve_lloyd
from quantbook.derive.recipes import (BnbFP4Recipe, E2M1Recipe, LloydRecipe, NFRecipe, QuantileRecipe, Recipe,
                                      RecipeError, RoundedRecipe, ScaledIntegersRecipe, UniformSymmetricRecipe,
                                      derive_from_recipe)

EXAMPLES = [
    NFRecipe(5, "15/16", "exact"),
    NFRecipe(),
    LloydRecipe(3, 256, "l1", "normalized", "signed-absmax", "laplace", (0, 1)),
    LloydRecipe(4, 64, "l1", "normalized", fixed="-1,0,1", partition="halves"),
    LloydRecipe(2, None, "l2", normalization="none", fixed=()),
    QuantileRecipe(4, 32, symmetric=True, source="student-t:5"),
    QuantileRecipe(3, None, "none", "student-t:1", fixed="none"),
    E2M1Recipe(False),
    BnbFP4Recipe(),
    UniformSymmetricRecipe(3),
    ScaledIntegersRecipe((-2, -1, 0, 1), 2, 2),
    RoundedRecipe(NFRecipe(4, precision="float32-bnb"), 3),
]


@pytest.mark.parametrize("recipe", EXAMPLES, ids=lambda r: r.method)
def test_json_round_trip_and_rederivation(recipe):
    d = json.loads(json.dumps(recipe.to_dict()))
    assert Recipe.from_dict(d) == recipe and type(recipe).from_dict(d) == recipe
    cb = recipe.derive()
    assert cb.recipe == recipe.to_dict()
    again = derive_from_recipe(cb.recipe)  # the stored recipe re-derives the table bit for bit
    assert again.levels.tobytes() == cb.levels.tobytes() and again.code.tobytes() == cb.code.tobytes()


def test_every_registry_recipe_reads():
    for name, entry in REGISTRY.items():
        r = Recipe.from_dict(entry.codebook.recipe)
        assert r.method == entry.codebook.recipe["method"], name
        assert Recipe.from_dict(r.to_dict()) == r
        # written as a derivation writes it, so that `show` and `derive` print one recipe alike
        assert r.to_dict() == entry.codebook.recipe, name


def test_an_nf_offset_has_one_spelling_wherever_it_is_shown(capsys):
    """bitsandbytes' literal is 0.9677083 in the registry, in a derivation's recipe and in its text
    (derive nf printed 9677083/10000000); an offset without a short decimal stays P/Q."""
    from fractions import Fraction

    from quantbook.cli import main
    from quantbook.derive.normal_float import parse_offset

    recipe_lines = []
    for argv in (["derive", "nf", "--bits", "4", "--precision", "float32-bnb"], ["show", "nf4"],
                 ["derive", "nf", "--bits", "4", "--precision", "float32-bnb", "--offset", "9677083/10000000"]):
        assert main(argv) == 0
        recipe_lines.append(next(line for line in capsys.readouterr().out.splitlines() if line.startswith("recipe:")))
    assert recipe_lines == ["recipe: nf(bits=4, offset=0.9677083, precision=float32-bnb)"] * 3
    assert main(["derive", "nf", "--bits", "4", "--precision", "float32-bnb", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recipe"]["offset"] == "0.9677083" == REGISTRY["nf4"].codebook.recipe[
        "offset"]
    # the shorter of the decimal and the fraction (the fraction on a tie, or where the decimal has no end)
    for given, text in (("929/960", "929/960"), ("15/16", "15/16"), (0.9375, "15/16"), ("0.96770830", "0.9677083"),
                        ("0.96875", "31/32"), ("0.95", "0.95"), ("19/20", "0.95"),
                        (0.96, f"{Fraction(0.96).numerator}/{Fraction(0.96).denominator}")):
        assert NFRecipe(4, given).offset == text, given
        assert parse_offset(text) == parse_offset(given)


def test_recipes_written_by_earlier_versions_still_derive():
    # JSON as the previous `quantbook derive lloyd --json` and nf wrote them
    old_lloyd = {"method": "lloyd", "bits": 4, "block_size": 64, "loss": "l2", "domain": "weight",
                 "normalization": "absmax", "source": "normal", "fixed": [-1.0, 0.0, 1.0]}
    assert derive_from_recipe(old_lloyd).levels.tobytes() == lloyd(4, 64).levels.tobytes()
    old_nf = {"method": "nf", "bits": 4, "offset": "9677083/10000000", "precision": "float32-bnb"}
    assert Recipe.from_dict(old_nf) == Recipe.from_dict(dict(old_nf, offset="0.9677083"))
    old_q = {"method": "quantile", "bits": 4, "block_size": 64, "domain": "normalized", "normalization": "absmax",
             "source": "normal", "fixed": [-1.0, 0.0, 1.0]}
    assert derive_from_recipe(old_q) == quantile(4, 64)


@pytest.mark.parametrize("bad, words", [
    ([1], "mapping with a 'method'"),
    ({"bits": 4}, "mapping with a 'method'"),
    ({"method": "no-such"}, "no derivation method 'no-such'"),
    ({"method": "nf"}, "lacks the parameter 'bits'"),
    ({"method": "nf", "bits": 4, "precision": "exact"}, "lacks the parameter 'offset'"),
    ({"method": "nf", "bits": None, "offset": "929/960", "precision": "exact"}, "'bits' must be an integer"),
    ({"method": "nf", "bits": "4", "offset": "929/960", "precision": "exact"}, "'bits' must be an integer"),
    ({"method": "nf", "bits": 9, "offset": "929/960", "precision": "exact"}, "2 to 8 bits"),
    ({"method": "nf", "bits": 4, "offset": "1/4", "precision": "exact"}, "between 1/2 and 1"),
    ({"method": "nf", "bits": 4, "offset": "929/960", "precision": "exact", "bogus": 1}, "unknown parameter 'bogus'"),
    ({"method": "lloyd", "bits": 4, "block_size": 64, "loss": "l3", "domain": "weight", "normalization": "absmax",
      "source": "normal", "fixed": []}, "loss must be one of l1, l2"),
    ({"method": "lloyd", "bits": 4, "block_size": 64, "loss": "l1", "domain": "weight", "normalization": "absmax",
      "source": "student-t:1.5", "fixed": []}, "variance"),
    ({"method": "lloyd", "bits": 4, "block_size": 64, "loss": "l1", "domain": "weight", "normalization": "absmax",
      "source": "normal", "fixed": "oops"}, "'fixed' must be a list of numbers"),
    ({"method": "lloyd", "bits": 4, "loss": "l1", "normalization": "absmax", "source": "normal", "fixed": []},
     "lacks the parameter 'block_size'"),
    ({"method": "quantile", "bits": 4, "block_size": 64, "domain": "normalized", "normalization": "absmax",
      "source": "cauchy", "fixed": []}, "cauchy"),
    ({"method": "scaled-integers", "integers": [1, 2.5], "divisor": 2, "bits": 2}, "'integers' must be an integer"),
    ({"method": "scaled-integers", "integers": [1, 2], "divisor": 0, "bits": 2}, "divisor must be a positive"),
    ({"method": "rounded", "base": {"method": "no-such"}, "decimals": 4}, "no derivation method"),
    ({"method": "rounded", "base": {"method": "bnb-fp4"}, "decimals": -1}, "decimals"),
    ({"method": "e2m1", "normalise": "yes"}, "true or false"),
])
def test_bad_recipes_raise_one_line_recipe_errors(bad, words):
    with pytest.raises(RecipeError, match=words) as info:
        derive_from_recipe(bad)
    assert "\n" not in str(info.value)


def test_a_subclass_reads_only_its_own_method():
    with pytest.raises(RecipeError, match="reads 'lloyd' recipes"):
        LloydRecipe.from_dict({"method": "bnb-fp4"})


def _defaults(fn, skip=()):
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty and k not in skip}


@pytest.mark.parametrize("fn, cls", [(lloyd, LloydRecipe), (solve_lloyd, LloydRecipe), (quantile, QuantileRecipe),
                                     (nf, NFRecipe), (formats.e2m1, E2M1Recipe),
                                     (formats.uniform_symmetric, UniformSymmetricRecipe)])
def test_defaults_are_the_recipe_fields(fn, cls):
    # the functions take their defaults from the dataclass: the one place they are written
    solver = {"tol", "max_iter", "max_time", "name"}
    got = _defaults(fn, skip=solver)
    fields = {f.name for f in cls.__dataclass_fields__.values()}
    assert set(got) <= fields and got
    for k, v in got.items():
        assert v == getattr(cls, k), k
    assert LloydRecipe().fixed == (-1.0, 0.0, 1.0) and LloydRecipe(normalization="signed-absmax").fixed == (0.0, 1.0)
    assert LloydRecipe.domain == "weight" and QuantileRecipe.domain == "normalized"


def test_recipes_are_frozen_and_normalised():
    r = LloydRecipe(fixed=[1, -0.0, -1, 1])
    assert r.fixed == (-1.0, 0.0, 1.0) and r == LloydRecipe()
    assert LloydRecipe(2, 64, normalization="none", domain="normalized") == LloydRecipe(2, None, normalization="none")
    with pytest.raises(AttributeError):
        r.bits = 3
    assert NFRecipe(4, "0.9677083").offset == "0.9677083" == NFRecipe(4, "9677083/10000000").offset


# ------------------------------------------------------------------------------- the audit
def test_transcribed_tables_are_not_counted_as_reproduced():
    from quantbook.verify import audit

    assert {n for n, e in REGISTRY.items() if e.expect == "transcribed"} == {"iq4_nl", "int4-sym"}
    rows = {r.name: r for r in audit()}
    for name in ("iq4_nl", "int4-sym"):
        row = rows[name]
        assert row.status == "transcribed" and row.reproduced is None and not row.failed
        assert "transcribed, not derived" in row.explanation and row.to_dict()["status"] == "transcribed"
    for name in ("nf4", "fp4", "fp4-bnb-cpu", "af4", "nf4-torchao", "e2m1"):
        assert rows[name].status == "ok" and rows[name].reproduced, name
    assert {rows[n].status for n in ("max1960-n2", "max1960-n16")} == {"differs"}


def test_a_transcription_never_fails_the_audit():
    from quantbook import Codebook
    from quantbook.codebooks.registry import Published
    from quantbook.verify.audit import audit_one

    code = np.array([-1.0, 0.0, 0.5])
    cb = Codebook(code, bits=2, name="zz", source="test", recipe={"method": "no-such"})
    row = audit_one(Published(cb, "test", expect="transcribed"))  # a recipe that cannot run
    assert row.status == "transcribed" and not row.failed and "recipe failed" in row.explanation
    wrong = cb.replace(recipe={"method": "uniform-symmetric", "bits": 2})  # restates something else
    row = audit_one(Published(wrong, "test", expect="transcribed"))
    assert row.status == "transcribed" and not row.failed and "differs" in row.explanation
    with pytest.raises(ValueError, match="expect must be one of"):
        Published(cb, "test", expect="roughly")


@pytest.mark.parametrize("kw, said", [
    (dict(fixed="-1,a,1"), "fixed levels must be comma-separated numbers like -1,0,1 (or none), got '-1,a,1'"),
    (dict(fixed=[float("nan")]), "fixed levels must be finite, got [nan]"),
    (dict(fixed=[2.0]), "fixed levels must lie in [-1, 1] under absmax, got [2.0]"),
    (dict(fixed=[-1, 0.5, 1], symmetric=True), "symmetric codebooks need symmetric fixed levels, got [-1.0, 0.5, 1.0]"),
    (dict(bits=1), "3 fixed levels [-1.0, 0.0, 1.0] do not fit in 1 bit(s); free them with fixed=() (--fix none)"),
    (dict(bits=2, fixed=[-1, -0.5, 0.5, 1]), "all 4 levels are fixed; nothing to derive"),
    (dict(normalization="none", source="student-t:2", fixed=()),
     "student-t:2 has infinite variance: no L2 quantizer without normalisation"),
    (dict(loss="l1", normalization="none", source="student-t:1", fixed=()),
     "student-t:1 has no finite mean: no L1 quantizer without normalisation"),
    (dict(scale=3), "scale must be a rule name such as e4m3 or e8m0:floor, got 3"),
    (dict(scale="e4m3", normalization="signed-absmax"),
     "a scale rule maps the block's absolute maximum: normalization must be absmax, got 'signed-absmax'"),
    (dict(scale="e4m3", fixed=[0]), "a scale rule maps the block maximum to the table's largest magnitude: the "
                                    "fixed levels must include -1 and 1, got [0.0]"),
    (dict(scale="e8m0:floor", tensor_size=1024), "scale rule 'e8m0:floor' has no tensor scale: tensor_size does "
                                                 "not apply"),
    (dict(bits=8, scale="e4m3"), "the scaled layouts store 4-bit codes: bits must be 1 to 4, got 8"),
])
def test_lloyd_recipe_refusals_say_what_is_wrong(kw, said):
    """Each refusal of a Lloyd recipe's parameters, word for word (4-bit L2 at B=64 unless given)."""
    args = {"bits": 4, "block_size": 64, "loss": "l2", **kw}
    with pytest.raises(ValueError) as info:
        LloydRecipe(**args)
    assert str(info.value) == said


@pytest.mark.parametrize("change, said", [
    ({"loss": 3}, "recipe for 'lloyd': parameter 'loss' must be a string, got 3"),
    ({"bits": "4"}, "recipe for 'lloyd': parameter 'bits' must be an integer, got '4'"),
    ({"fixed": [1, "a"]}, "recipe for 'lloyd': parameter 'fixed' must be a list of numbers, got the entry 'a'"),
    ({"qmax": "6"}, "recipe for 'lloyd': parameter 'qmax' must be a number, got '6'"),
])
def test_a_recipe_file_with_a_wrong_type_names_the_parameter(change, said):
    d = {**LloydRecipe(4, 64, "l2").to_dict(), **change}
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(d)
    assert str(info.value) == said
