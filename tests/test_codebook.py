"""Codebook value type: validation, encode/decode rule, JSON round trip."""

import json
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantbook import Codebook, CodebookError


def test_validation_errors():
    with pytest.raises(CodebookError, match="finite"):
        Codebook([0.0, np.nan], bits=1)
    with pytest.raises(CodebookError, match="finite"):
        Codebook([0.0, np.inf], bits=1)
    with pytest.raises(CodebookError, match="unsorted"):
        Codebook([0.5, 0.0], bits=1)
    with pytest.raises(CodebookError, match="duplicate"):
        Codebook([-0.0, 0.0, 1.0], bits=2)
    with pytest.raises(CodebookError, match="do not fit"):
        Codebook([0.0, 0.5, 1.0], bits=1)
    with pytest.raises(CodebookError, match="not one of the levels"):
        Codebook([0.0, 1.0], bits=1, code=[0.0, 0.5])
    with pytest.raises(CodebookError, match="does not appear"):
        Codebook([0.0, 0.5, 1.0], bits=2, code=[0.0, 1.0])
    with pytest.raises(CodebookError, match="bits"):
        Codebook([0.0, 1.0], bits=True)
    with pytest.raises(CodebookError, match="recipe"):  # e.g. a hand-edited JSON file
        Codebook.from_dict({"bits": 1, "levels": [0.0, 1.0], "recipe": [1, 2]})
    with pytest.raises(CodebookError, match="source"):
        Codebook.from_dict({"bits": 1, "levels": [0.0, 1.0], "source": 5})
    with pytest.raises(CodebookError, match="entry 1 is inf"):
        Codebook([0.0, np.inf], bits=1)


def test_immutable():
    cb = Codebook([-1.0, 0.0, 1.0], bits=2)
    with pytest.raises(ValueError):
        cb.levels[0] = 3.0
    with pytest.raises(AttributeError):
        cb.bits = 3


def test_recipes_are_read_only_and_shared_ones_stay_intact():
    """Codebooks are shared (the registry, cached derivations): a recipe refuses changes at
    any depth, yet compares, serialises and copies as the plain JSON object it came from."""
    import copy
    import pickle

    import quantbook
    from quantbook.naming import resolve_codebook
    from quantbook.codebooks.vector_registry import vector_registry

    given = {"method": "lloyd", "fixed": [-1.0, 0.0, 1.0], "nested": {"a": [1, 2]}}
    cb = Codebook([-1.0, 0.0, 1.0], bits=2, recipe=given)
    given["fixed"].append(9.0)                    # the caller's dict is not the codebook's
    assert cb.recipe["fixed"] == [-1.0, 0.0, 1.0]
    for change in (lambda r: r.__setitem__("bits", 3), lambda r: r.update(bits=3), lambda r: r.pop("method"),
                   lambda r: r["fixed"].append(0.5), lambda r: r["fixed"].__setitem__(0, 2.0),
                   lambda r: r["nested"]["a"].sort(), lambda r: r["nested"].clear()):
        with pytest.raises(TypeError, match="read-only"):
            change(cb.recipe)
    assert cb.recipe == {"method": "lloyd", "fixed": [-1.0, 0.0, 1.0], "nested": {"a": [1, 2]}}
    assert json.loads(json.dumps(cb.recipe)) == cb.recipe
    mine = copy.deepcopy(cb.recipe)
    mine["fixed"].append(0.5)                     # a deep copy is the caller's to change
    assert type(mine) is dict and type(mine["fixed"]) is list
    assert pickle.loads(pickle.dumps(cb)).recipe == cb.recipe
    vec = next(e.codebook for e in vector_registry().values() if e.codebook.recipe is not None)
    for shared in (quantbook.get("af4"), resolve_codebook("lloyd-l2-64-2bit"), vec):
        with pytest.raises(TypeError, match="read-only"):
            shared.recipe["bits"] = 1


def test_ties_go_to_lower_level_and_thresholds():
    cb = Codebook([-1.0, 0.0, 0.25, 1.0], bits=2)
    np.testing.assert_array_equal(cb.thresholds, [-0.5, 0.125, 0.625])
    assert cb.thresholds_f32.dtype == np.float32
    # exactly on a threshold -> lower level; just above -> upper
    assert cb.encode(-0.5) == 0 and cb.encode(np.nextafter(-0.5, 1)) == 1
    assert cb.encode(0.125) == 1 and cb.encode(np.nextafter(0.125, 1)) == 2
    assert cb.encode(5.0) == 3 and cb.encode(-5.0) == 0
    with pytest.raises(CodebookError, match="NaN"):
        cb.encode([0.0, np.nan])


def test_thresholds_near_float32_max_are_the_encoder_s():
    """The midpoint of two levels near float32's maximum: a float32 sum overflows, the
    encoder halves first.  The independent value: float64 (a + b) / 2 rounded to float32
    (exact here: the float64 sum is exact and halving it is exact)."""
    top = float(np.finfo(np.float32).max)
    cb = Codebook([-top, 0.0, 3e38, top], bits=2)
    a = cb.levels_f32.astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = cb.thresholds_f32
    assert got.tolist() == ((a[:-1] + a[1:]) / 2).astype(np.float32).tolist()
    assert cb.encode(np.nextafter(got[2], np.float32(np.inf))) == 3 and cb.encode(got[2]) == 2


def test_code_order_differs_from_sorted_order():
    # bit-pattern order with a repeated zero (as bitsandbytes' FP4): the lower index takes
    # y <= 0, the higher y > 0 (torch.bucketize over the sorted table, as bitsandbytes)
    code = [0.0, 0.5, 1.0, 0.0, -0.5, -1.0]
    cb = Codebook(np.unique(code), bits=3, code=code)
    np.testing.assert_array_equal(cb.levels, [-1.0, -0.5, 0.0, 0.5, 1.0])
    for t in ("float64", "float32"):
        np.testing.assert_array_equal(cb.encode([-1.0, -0.4, -0.1, 0.0, 0.1, 0.7, 1.0], t),
                                      [5, 4, 0, 0, 3, 1, 2])
    np.testing.assert_array_equal(cb.decode([5, 3, 2]), [-1.0, 0.0, 1.0])
    with pytest.raises(CodebookError):
        cb.decode([6])
    assert cb.decode([]).shape == cb.encode([]).shape == (0,)   # an empty list, as encode takes it
    with pytest.raises(CodebookError, match="integer indices"):
        cb.decode([0.5])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-640, 640), min_size=2, max_size=16, unique=True),
       st.lists(st.integers(-1280, 1280), min_size=1, max_size=50))
def test_encode_is_nearest_level_against_brute_force(levels, ys):
    # dyadic values (multiples of 1/64): distances and midpoints are exact, so ties are real
    levels = np.asarray(levels) / 64.0
    ys = np.asarray(ys) / 64.0
    levels = np.unique(np.asarray(levels) + 0.0)
    if levels.size < 2:
        return
    cb = Codebook(levels, bits=4)
    ys = np.asarray(ys)
    got = cb.decode(cb.encode(ys))
    dist = np.abs(ys[:, None] - levels[None, :])
    best = np.min(dist, axis=1)
    # nearest in float64 arithmetic, and among equally near levels the lowest one
    np.testing.assert_array_equal(np.abs(got - ys), best)
    lowest_nearest = levels[np.argmax(dist == best[:, None], axis=1)]
    np.testing.assert_array_equal(got, lowest_nearest)


def test_json_round_trip_is_bit_exact():
    rng = np.random.default_rng(0)
    levels = np.sort(rng.standard_normal(16))
    cb = Codebook(levels, bits=4, name="x", source="derived", recipe={"method": "test", "p": [1, 2]})
    back = Codebook.from_json(cb.to_json())
    assert back == cb
    assert json.loads(cb.to_json())["levels"] == [float(v) for v in levels]


def test_float32_midpoints_of_levels_near_the_maximum_do_not_overflow():
    cb = Codebook([-3.4e38, 3e38, 3.4e38], bits=2)
    t = cb.encoder("float32").bounds
    assert np.isfinite(t).all() and t[1] == np.float32(3.2e38)
    assert cb.encode(np.float32(3.3e38), "float32") == 2 and cb.encode(np.float32(3.1e38), "float32") == 1


def test_levels_that_are_one_float32_number_are_duplicates():
    """Every consumer of a table (the byte format, the kernels, the C header) works in float32:
    1.0 and 1.00000001 were accepted, exported as {1.0f, 1.0f} and given an entropy of -0."""
    with pytest.raises(CodebookError, match=r"distinct in float32: levels at positions 1 and 2 \(1\.0, 1\.00000001\)"):
        Codebook(levels=[-1.0, 1.0, 1.00000001], bits=2)
    nxt = float(np.nextafter(np.float32(1), np.float32(2)))
    assert Codebook(levels=[-1.0, 1.0, nxt], bits=2).levels_f32.tolist() == [-1.0, 1.0, nxt]   # one ULP apart


def test_a_name_that_is_not_a_string_is_said_to_be_one():
    """It said "name must be a non-empty string" for 3, as for ""; the vector class says the same."""
    from quantbook.codebooks.vector import VectorCodebook, VectorCodebookError

    with pytest.raises(CodebookError, match="^name must be a string, got int$"):
        Codebook([0.0, 1.0], bits=1, name=3)
    with pytest.raises(CodebookError, match="^name must not be empty$"):
        Codebook([0.0, 1.0], bits=1, name="")
    with pytest.raises(VectorCodebookError, match="^name must be a string, got int$"):
        VectorCodebook(name=3, points=[[0.0], [1.0]])


def test_a_number_for_levels_is_shown_as_given():
    # the message showed the array numpy made of it, array(3.)
    with pytest.raises(CodebookError, match=r"^levels must be a sequence of numbers, got 3\.0$"):
        Codebook(name="t", bits=2, levels=3.0)


@pytest.mark.parametrize("make, message", [
    (lambda: Codebook([-1.0, 1.0], bits=17), "bits must be between 1 and 16, got 17"),
    (lambda: Codebook([-1.0, 1.0], bits=0), "bits must be between 1 and 16, got 0"),
    (lambda: Codebook([-1.0, 1.0], bits=1, code=[-1.0, 1.0, 1.0]), r"code has 3 entries, more than 2\*\*1"),
    (lambda: Codebook([[0.1, 0.2]], bits=1), r"levels must be a non-empty 1-D sequence, got shape \(1, 2\)"),
    (lambda: Codebook(np.array(["a", 1.0], dtype=object), bits=1), "levels must be numbers: entry 0 is 'a'"),
    (lambda: Codebook([-1.0, 1.0], bits=1).encode([0.2], thresholds="f16"),
     "thresholds must be 'float64' or 'float32', got 'f16'"),
    (lambda: Codebook.from_dict({"levels": [-1.0, 1.0]}), "codebook object lacks bits"),
])
def test_more_codebook_validation_errors(make, message):
    with pytest.raises(CodebookError, match="^" + message + "$"):
        make()


def test_levels_given_as_an_object_array_are_read_as_numbers():
    cb = Codebook(np.array([-1, 0.25, 1.0], dtype=object), bits=2)
    assert cb.levels.dtype == np.float64 and cb.levels.tolist() == [-1.0, 0.25, 1.0]


def test_replace_keeps_the_code_order_unless_the_levels_change():
    cb = Codebook([-1.0, 0.0, 0.5, 1.0], bits=2, code=[0.5, -1.0, 1.0, 0.0], name="perm")
    renamed = cb.replace(name="perm2")
    assert renamed.name == "perm2" and renamed.code.tolist() == [0.5, -1.0, 1.0, 0.0]
    # new levels: the old code order named values that are gone, so the code is the levels in order
    moved = cb.replace(levels=[-1.0, -0.25, 0.25, 1.0])
    assert moved.code.tolist() == [-1.0, -0.25, 0.25, 1.0] and moved.name == "perm"
    # both given: taken as given
    both = cb.replace(levels=[-1.0, -0.25, 0.25, 1.0], code=[0.25, -1.0, 1.0, -0.25])
    assert both.code.tolist() == [0.25, -1.0, 1.0, -0.25]


def test_a_codebook_is_not_equal_to_another_type():
    cb = Codebook([-1.0, 1.0], bits=1)
    assert cb.__eq__([-1.0, 1.0]) is NotImplemented and cb != [-1.0, 1.0] and cb != "x"


def test_dataclasses_replace_rebuilds_a_codebook_as_its_own_replace_does():
    """A Codebook is a dataclass: ``dataclasses.replace`` goes through the constructor (its checks,
    the stored order kept) and agrees with :meth:`Codebook.replace`."""
    import dataclasses

    import quantbook

    cb = quantbook.get("fp4")   # a stored order of its own
    assert dataclasses.replace(cb, name="fp4-copy") == cb.replace(name="fp4-copy")
    with pytest.raises(CodebookError):
        dataclasses.replace(cb, bits=3)   # 15 levels do not fit in 3 bits
