"""VectorCodebook: validation, the nearest-point rule, JSON, the registry of HIGGS grids, naming."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

import quantbook
from quantbook.codebooks.vector import MAX_POINTS, VectorCodebook, VectorCodebookError
from quantbook.codebooks.vector_registry import get_vector, load_vector, vector_names
from quantbook.io.versions import FORMAT_KEY
from quantbook.naming import is_vector_spec, resolve_vector
from quantbook.naming import UnknownCodebookError


def brute(points, v):
    """Independent reference: a Python loop over the points, first minimum wins."""
    out = []
    for x in np.asarray(v, dtype=np.float64):
        best, bj = math.inf, -1
        for j, p in enumerate(np.asarray(points, dtype=np.float64)):
            d = sum((float(a) - float(b)) ** 2 for a, b in zip(x, p))
            if d < best:
                best, bj = d, j
        out.append(bj)
    return np.array(out)


def test_points_are_frozen_float32():
    cb = VectorCodebook("t", [[0, 1], [1, 0], [0.1, 0.2]])
    assert cb.points.dtype == np.float32 and cb.points.flags.c_contiguous and not cb.points.flags.writeable
    assert (cb.dim, cb.size, cb.index_bits) == (2, 3, 2)
    with pytest.raises(ValueError):
        cb.points[0, 0] = 5


@pytest.mark.parametrize("points, fragment", [
    ([[1.0, 2.0]], "2 to 65536"),
    ([1.0, 2.0], "(N, P)"),
    (np.zeros((3, 0)), "P >= 1"),
    ([[0.0, np.nan], [1, 1]], "finite"),
    ([[0.0, 1e39], [1, 1]], "float32"),
    ([[0.0, 1.0], [0.5, 0.5], [-0.0, 1.0]], "duplicate points: rows 0 and 2"),
    ([["a", "b"], ["c", "d"]], "numbers"),
])
def test_bad_points(points, fragment):
    with pytest.raises(VectorCodebookError, match=None) as exc:
        VectorCodebook("t", points)
    assert fragment in str(exc.value) and "\n" not in str(exc.value)


def test_size_limit():
    n = MAX_POINTS + 1
    with pytest.raises(VectorCodebookError, match="65536"):
        VectorCodebook("t", np.arange(n, dtype=np.float64)[:, None])
    # float32-distinct rows are checked after rounding: two float64 values one float32 apart merge
    with pytest.raises(VectorCodebookError, match="duplicate"):
        VectorCodebook("t", [[1.0], [1.0 + 1e-12]])


def test_nearest_matches_a_loop_and_ties_go_to_the_lowest_index():
    rng = np.random.default_rng(7)
    for p in (1, 2, 3):
        pts = rng.standard_normal((37, p))
        cb = VectorCodebook("t", pts)
        v = rng.standard_normal((300, p)).astype(np.float32)
        np.testing.assert_array_equal(cb.nearest(v), brute(cb.points, v))
    cb = VectorCodebook("t", [[1, 0], [-1, 0], [0, 1]])
    assert cb.nearest([[0, 0]]).tolist() == [0]  # three points at distance 1: the first
    cb = VectorCodebook("t", [[-1, 0], [1, 0]])
    assert cb.nearest([0, 5]).tolist() == [0]
    np.testing.assert_array_equal(cb.decode(np.array([[1, 0]])), [[[1, 0], [-1, 0]]])


def test_nearest_takes_16_bit_floats():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    cb = get_vector("higgs-2d-16")
    v = np.random.default_rng(3).standard_normal((200, 2)).astype(np.float32)
    for dt in (np.float16, ml_dtypes.bfloat16):
        low = v.astype(dt)
        np.testing.assert_array_equal(cb.nearest(low), brute(cb.points, low.astype(np.float64)))


def test_nearest_and_decode_reject_bad_input():
    cb = VectorCodebook("t", [[1, 0], [-1, 0]])
    for bad, frag in (([[np.nan, 0]], "NaN"), (np.zeros((2, 3)), "rows of 2"), ([["x", "y"]], "real")):
        with pytest.raises(VectorCodebookError, match=frag):
            cb.nearest(np.array(bad) if not isinstance(bad, list) or bad[0][0] != "x" else np.array(bad))
    # every float64 distance to an infinite coordinate is inf: the "tie" would pick index 0 silently
    for bad in ([[np.inf, 0]], [[0, -np.inf]]):
        with pytest.raises(VectorCodebookError, match="Inf"):
            cb.nearest(bad)
    with pytest.raises(VectorCodebookError, match=r"\[0, 1\]"):
        cb.decode([2])
    with pytest.raises(VectorCodebookError, match="integer"):
        cb.decode([0.5])


def test_a_vector_codebook_s_bits_per_weight():
    cb = get_vector("higgs-2d-256")
    assert cb.index_bits == 8
    assert cb.bits_per_weight(scale_bits=0) == 4.0
    assert cb.bits_per_weight() == 4 + 16 / 2  # one 16-bit scale per index by default
    assert cb.bits_per_weight(16, group=256) == 4 + 16 / 256  # HIGGS: a scale per group of 256
    assert VectorCodebook("t", [[0.0], [1.0], [2.0]]).index_bits == 2  # ceil(log2 3)
    with pytest.raises(VectorCodebookError):
        cb.bits_per_weight(group=0)


def test_json_round_trip_is_exact_and_short():
    rng = np.random.default_rng(1)
    cb = VectorCodebook("t", rng.standard_normal((64, 3)), source="s", recipe={"method": "vq", "dim": 3})
    d = json.loads(cb.to_json())
    assert set(d) == {FORMAT_KEY, "kind", "name", "dim", "size", "points", "source", "recipe"}
    assert d["kind"] == "vector" and d["dim"] == 3 and d["size"] == 64
    back = VectorCodebook.from_json(cb.to_json())
    assert back == cb and np.array_equal(back.points.view(np.uint32), cb.points.view(np.uint32))
    # every coordinate is written as the shortest decimal of its float32 value
    for row, prow in zip(d["points"], cb.points):
        for text, v in zip(row, prow):
            assert np.float32(text) == v and len(repr(text)) <= 16


@pytest.mark.parametrize("text, fragment", [
    ('{"kind": "scalar", "points": [[0], [1]]}', "kind"),
    ('{"kind": "vector"}', "lacks points"),
    ('{"kind": "vector", "dim": 3, "points": [[0, 1], [1, 0]]}', "dim is 3"),
    ("[", "not valid JSON"),
    ('{"kind": "vector", "point": [[0, 1], [1, 0]]}', "did you mean 'points'"),
    ('{"kind": "vector", "points": [[0, 1], [1, "0"]]}', "points must be numbers: row 1, column 1 is '0'"),
    ('{"kind": "vector", "points": [[0, true], [1, 0]]}', "row 0, column 1 is True"),
])
def test_bad_json(text, fragment):
    with pytest.raises(VectorCodebookError, match=fragment):
        VectorCodebook.from_json(text)


def test_higgs_grids_are_registered_with_their_provenance():
    names = vector_names()
    for p, n in ((1, 4), (1, 8), (1, 16), (2, 16), (2, 64), (2, 256)):
        cb = get_vector(f"higgs-{p}d-{n}")
        assert (cb.dim, cb.size) == (p, n)
        assert "c223ef094dec53c4cc0c6beedb497d2b79bf86a3" in cb.source and "higgs.py" in cb.source
        assert cb.recipe is None
        assert f"higgs-{p}d-{n}" in names
    # spot values transcribed from the source file (first row of each 2-D grid)
    first = [np.float32(-2.501467704772949), np.float32(0.17954708635807037)]
    assert get_vector("higgs-2d-256").points[0].tolist() == first
    assert get_vector("higgs-2d-16").points[13].tolist() == [np.float32(-0.0011779458727687597),
                                                             np.float32(0.00022069070837460458)]


@pytest.mark.parametrize("p, n", [(1, 4), (1, 8), (1, 16), (2, 16), (2, 64), (2, 256)])
def test_higgs_grids_are_transformers_own(p, n):
    """Every point of every grid, bit for bit, against the installed transformers'
    ``get_higgs_grid`` (the source the registry cites), where transformers is there."""
    higgs = pytest.importorskip("transformers.integrations.higgs",
                                reason="transformers (pip install 'quantbook[llm]') holds the HIGGS grids")
    ref = higgs.get_higgs_grid(p, n).numpy()
    assert ref.dtype == np.float32 and ref.shape == (n, p)
    got = get_vector(f"higgs-{p}d-{n}").points
    assert np.array_equal(got.astype(np.float32).view(np.uint32), ref.view(np.uint32))


def test_higgs_1d_grids_are_lloyd_max_for_the_normal_law():
    """HIGGS's 1-D grids are Max's (1960) minimum-MSE quantizers of N(0,1): they agree with
    the exact Lloyd-Max code to float32 rounding, and with Max's printed 4-digit table to its
    printing precision."""
    import quantbook
    from quantbook.derive import lloyd

    for n in (4, 8, 16):
        higgs = get_vector(f"higgs-1d-{n}").points[:, 0].astype(np.float64)
        exact = lloyd(bits=int(math.log2(n)), block_size=None, normalization="none", source="normal",
                      fixed=[]).levels
        assert np.max(np.abs(higgs - exact) / np.abs(exact)) < 2 ** -22  # within 2 float32 ULP
        printed = quantbook.get(f"max1960-n{n}").levels
        assert np.max(np.abs(higgs - printed)) < 6e-4


def test_naming(tmp_path):
    assert resolve_vector("HIGGS-2D-64") is get_vector("higgs-2d-64")
    assert is_vector_spec("higgs-1d-16") and not is_vector_spec("nf4") and not is_vector_spec(3)
    cb = VectorCodebook("mine", [[0, 1], [1, 0]])
    assert resolve_vector(cb) is cb and is_vector_spec(cb)
    f = tmp_path / "v.json"
    f.write_text(cb.to_json(), encoding="utf-8")
    assert is_vector_spec(str(f)) and resolve_vector(str(f)) == cb and load_vector(f) == cb
    scalar = tmp_path / "s.json"
    import quantbook

    scalar.write_text(quantbook.get("nf4").to_json(), encoding="utf-8")
    assert not is_vector_spec(str(scalar))
    with pytest.raises(VectorCodebookError, match="s.json: not a vector codebook"):
        resolve_vector(str(scalar))
    with pytest.raises(UnknownCodebookError, match="higgs-2d-256"):
        resolve_vector("higgs-3d-7")
    with pytest.raises(FileNotFoundError):
        resolve_vector(str(tmp_path / "missing.json"))
    # the scalar grammar is untouched
    assert quantbook.naming.resolve_codebook("nf4") is quantbook.get("nf4")


def test_quantize_is_the_nearest_point_by_brute_force():
    rng = np.random.default_rng(12)
    cb = VectorCodebook(name="rand-3d", points=rng.standard_normal((40, 3)))
    v = rng.standard_normal((300, 3)).astype(np.float32)
    want = np.asarray(cb.points)[brute(cb.points, v)]
    got = cb.quantize(v)
    assert got.dtype == np.float32 and got.shape == (300, 3)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(cb.quantize(v[7]), want[7:8])   # a single row of P values is M = 1


def test_replace_repr_and_equality():
    cb = VectorCodebook(name="sq", points=[[0.0, 1.0], [1.0, 2.0]], source="hand")
    other = cb.replace(name="sq2")
    assert other.name == "sq2" and other.source == "hand" and np.array_equal(other.points, cb.points)
    assert other != cb and cb.replace() == cb
    assert repr(cb) == "VectorCodebook(name='sq', dim=2, size=2)"
    assert cb.__eq__(cb.points) is NotImplemented and cb != "sq"


@pytest.mark.parametrize("make, message", [
    (lambda: VectorCodebook(name="v", points=[[0, 10**400], [1, 2]]), "points row 0 holds an integer too large"),
    (lambda: VectorCodebook(name="v", points=[[0, 1], [1]]), r"points must be an \(N, P\) array of numbers"),
    (lambda: VectorCodebook(name="v", points=[[0, 1], [1, 2]], source=3), "source must be a string, got int"),
    (lambda: VectorCodebook(name="v", points=[[0, 1], [1, 2]], recipe=[1]),
     r"recipe must be a mapping \(a JSON object\) or None, got list"),
    (lambda: VectorCodebook(name="v", points=[[0, 1], [1, 2]]).bits_per_weight(scale_bits=1.5),
     "scale_bits must be an integer, got 1.5"),
    (lambda: VectorCodebook(name="v", points=[[0, 1], [1, 2]]).bits_per_weight(scale_bits=-1),
     "scale_bits must be >= 0, got -1"),
    (lambda: VectorCodebook.from_dict([1]), "a vector codebook must be a JSON object"),
])
def test_more_vector_codebook_validation_errors(make, message):
    with pytest.raises(VectorCodebookError, match="^" + message):
        make()


def test_the_vector_registry_is_read_only():
    """vector_registry() is one mapping every caller shares (cached): an entry a caller removed
    or replaced was gone for the rest of the process.  The oracle: the data file's grid."""
    from quantbook.codebooks.vector_registry import vector_registry

    reg = vector_registry()
    with pytest.raises(TypeError):
        reg["higgs-2d-16"] = reg["higgs-2d-64"]
    with pytest.raises((TypeError, AttributeError)):
        reg.pop("higgs-2d-16")
    with pytest.raises((TypeError, AttributeError)):
        reg.clear()
    data = json.loads((Path(quantbook.__file__).parent / "codebooks" / "data" / "higgs_grids.json")
                      .read_text(encoding="utf-8"))
    grid = next(g for g in data["grids"] if g["dim"] == 2 and g["size"] == 16)
    assert "higgs-2d-16" in vector_names()
    assert np.array_equal(get_vector("higgs-2d-16").points, np.asarray(grid["points"], np.float32))
