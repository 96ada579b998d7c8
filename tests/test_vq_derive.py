"""The vector Lloyd derivation: exact assignments, determinism, recipes, symmetry, input checks.

Samples are small (CI runs on 2 cores); tolerances come from the Monte-Carlo error."""

import math

import numpy as np
import pytest

from quantbook.codebooks.vector import nearest_brute
from quantbook.derive.recipes import RecipeError
from quantbook.derive.vq import (VQRecipe, cell_stats, derive_vq, draw_vectors, orbit_size, solve_vq,
                                 vector_errors, vq_mse)

SMALL = dict(samples=30_000, coarse_samples=10_000, restarts=2, final_passes=5, max_iter=100)


@pytest.mark.parametrize("p, n", [(1, 16), (2, 64), (2, 7), (3, 40), (8, 32)])
def test_pruned_search_is_exact(p, n):
    """The kernels' assignment (strip search; 2-D cell lists) equals brute force, ties included."""
    rng = np.random.default_rng(p * 100 + n)
    pts = rng.standard_normal((n, p))
    x = rng.standard_normal((20_000, p)).astype(np.float32) * 1.5
    x[:50] = pts[:50 % n].astype(np.float32) if n >= 50 else x[:50]
    ref = nearest_brute(pts, x)
    err = vector_errors(pts, x)
    d_ref = np.sum((x.astype(np.float64) - pts[ref]) ** 2, axis=1)
    np.testing.assert_array_equal(err, d_ref)
    st = cell_stats(pts, x)
    np.testing.assert_array_equal(st.counts, np.bincount(ref, minlength=n))


def test_ties_go_to_the_lowest_index_in_the_kernels():
    # a square lattice: the centre and edge midpoints are equidistant from 2 or 4 points
    g = np.array([[a, b] for a in (0.0, 1.0, 2.0) for b in (0.0, 1.0, 2.0)])
    for pts in (g, g[::-1].copy()):
        x = np.array([[0.5, 0.5], [1.5, 1.5], [0.5, 0.0], [1.0, 1.5], [0.5, 2.0]], dtype=np.float32)
        ref = nearest_brute(pts, x)
        got = np.sum((x.astype(np.float64)[:, None, :] - pts[None]) ** 2, axis=2)
        assert all(got[i, ref[i]] == got[i].min() and ref[i] == np.flatnonzero(got[i] == got[i].min())[0]
                   for i in range(len(x)))
        st = cell_stats(pts, x)
        np.testing.assert_array_equal(st.counts, np.bincount(ref, minlength=len(pts)))


def test_cell_stats_against_brute_force_sums():
    """Counts, centroids, spreads, the MSE per dimension and its standard error
    (``std(ddof=1)/√m`` of the per-vector errors, per dimension), from brute force."""
    rng = np.random.default_rng(9)
    pts = rng.standard_normal((12, 2))
    x = rng.standard_normal((5000, 2)).astype(np.float32)
    ref = nearest_brute(pts, x)
    e = np.sum((x.astype(np.float64) - pts[ref]) ** 2, axis=1)
    st = cell_stats(pts, x)
    np.testing.assert_array_equal(st.counts, np.bincount(ref, minlength=12))
    for k in range(12):
        mine = x[ref == k].astype(np.float64)
        np.testing.assert_allclose(st.centroids[k], mine.mean(0), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(st.spread[k], np.mean(np.sum((mine - mine.mean(0)) ** 2, axis=1)), rtol=1e-9)
    assert st.mse == pytest.approx(e.mean() / 2, rel=1e-12)
    assert st.mse_se == pytest.approx(e.std(ddof=1) / np.sqrt(e.size) / 2, rel=1e-9)


def test_ties_go_to_the_lowest_index_in_one_dimension():
    """The 1-D fit's sums (a sorted sweep, not the kernels): a value exactly half-way between
    two levels counts for the lower one, as brute force (argmin) says."""
    from quantbook.derive.vq import _Sums1D

    x = np.array([[-1.0], [0.0], [0.0], [1.0], [0.25], [0.75]], np.float32)
    for c in (np.array([[-0.5], [0.5]]), np.array([[-0.5], [0.0], [0.5], [1.0]])):
        counts = _Sums1D(x).run(c)[1]
        np.testing.assert_array_equal(counts, np.bincount(nearest_brute(c, x), minlength=c.shape[0]))


def test_one_dimension_reaches_the_exact_lloyd_max_code():
    """P = 1, N = 8 on N(0,1): the sample optimum is Max's quantizer up to sampling error."""
    from quantbook.derive import lloyd

    cb = derive_vq(1, 8, samples=400_000, coarse_samples=100_000, restarts=2, final_passes=50)
    exact = lloyd(bits=3, block_size=None, normalization="none", source="normal", fixed=[]).levels
    # a level's sampling error is about sqrt(cell variance / cell count) <= 0.03 here
    assert np.max(np.abs(cb.points[:, 0] - exact)) < 0.03


def test_two_dimensions_sixteen_points_match_higgs_within_mc_error():
    """Independent check of the whole derivation: on a fresh sample, with a brute-force search
    written here, the derived 16-point 2-D grid is no worse than HIGGS's (paired difference
    within 4 standard errors, or better)."""
    from quantbook.naming import resolve_vector

    cb = derive_vq(2, 16, samples=200_000, coarse_samples=50_000, restarts=4, final_passes=30)
    x = np.random.default_rng(99).standard_normal((100_000, 2))
    def errs(points):
        d = np.sum((x[:, None, :] - np.asarray(points, dtype=np.float64)[None]) ** 2, axis=2)
        return d.min(axis=1) / 2
    e_ours, e_higgs = errs(cb.points), errs(resolve_vector("higgs-2d-16").points)
    diff = e_ours - e_higgs
    se = diff.std(ddof=1) / math.sqrt(diff.size)
    assert diff.mean() < 4 * se, (e_ours.mean(), e_higgs.mean(), se)


def test_lattice_start_is_the_default_for_256_pairs_and_re_derives():
    assert VQRecipe(dim=2, points=256).init == "hexagonal"
    assert VQRecipe(dim=2, points=64).init == "kmeans++" and VQRecipe(dim=4, points=256).init == "kmeans++"
    r = VQRecipe(dim=2, points=256, samples=40_000, coarse_samples=2_000, seed=3)
    a = r.derive()
    b = VQRecipe.from_dict(a.recipe).derive()
    assert a.recipe["init"] == "hexagonal"
    assert np.array_equal(a.points.view(np.uint32), b.points.view(np.uint32))


def test_recipe_re_derives_bit_for_bit():
    r = VQRecipe(dim=2, points=32, **SMALL)
    a = r.derive()
    b = VQRecipe.from_dict(a.recipe).derive()
    assert np.array_equal(a.points.view(np.uint32), b.points.view(np.uint32))
    assert a.recipe == r.to_dict() and a.recipe["method"] == "vq"
    c = VQRecipe(dim=2, points=32, **{**SMALL, "seed": 1}).derive()
    assert not np.array_equal(a.points, c.points)
    # rows come sorted lexicographically
    assert np.all(np.lexsort(a.points.T[::-1]) == np.arange(32))


def test_max_iter_running_out_on_the_whole_sample_warns_and_a_cap_asked_for_does_not():
    """By default the whole sample is bounded by max_iter like every other level, and running out of it is a
    LloydWarning there too; a final_passes cap is the user's choice, said by converged alone.  (16 points from one
    start on 3*10**5 vectors: the 10**5-vector level converges in 96 passes, the whole sample needs 139.)"""
    import warnings

    from quantbook.derive.lloyd import LloydWarning

    kw = dict(dim=2, points=16, samples=300_000, restarts=1, max_iter=120)
    with pytest.warns(LloydWarning, match="used all 120 passes on 300000 vectors before"):
        res = solve_vq(**kw)
    assert res.iterations == 120 and not res.converged and res.change > res.codebook.recipe["tol"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        capped = solve_vq(**kw, final_passes=120)
    assert capped.iterations == 120 and not capped.converged
    assert np.array_equal(capped.codebook.points.view(np.uint32), res.codebook.points.view(np.uint32))


def test_result_is_a_lloyd_fixed_point_on_its_sample():
    r = VQRecipe(dim=2, points=16, samples=50_000, coarse_samples=50_000, restarts=1, max_iter=2000, tol=1e-12)
    res = solve_vq(r)
    x = draw_vectors("normal", 2, 50_000, 0)
    st = cell_stats(res.codebook.points, x)
    # converged to the float32 rounding of the centroids
    assert np.max(np.abs(st.centroids - res.codebook.points)) < 1e-5
    assert res.mse == pytest.approx(st.mse, rel=1e-6)


def test_fresh_sample_error_and_its_standard_error():
    pts = np.array([[-1.0], [1.0]])
    x = draw_vectors("normal", 1, 200_000, 5)
    mse, se = vq_mse(pts, x)
    # E(|X| - 1)^2 = 2 - 2 E|X| = 2 - 2 sqrt(2/pi)
    exact = 2 - 2 * math.sqrt(2 / math.pi)
    assert abs(mse - exact) < 4 * se and se == pytest.approx(math.sqrt(0.3 / 200_000), rel=0.3)


def test_symmetric_codebooks_are_unions_of_orbits():
    cb = derive_vq(2, 16, symmetric=True, **SMALL)
    pts = {tuple(map(float, p)) for p in cb.points}
    for a, b in pts:
        for q in ((b, a), (-a, b), (a, -b), (-b, -a)):
            assert q in pts
    assert orbit_size(2) == 8 and orbit_size(1) == 2 and orbit_size(3) == 48
    cb1 = derive_vq(1, 4, symmetric=True, **SMALL)
    np.testing.assert_array_equal(cb1.points[:, 0], -cb1.points[::-1, 0])


def test_block_scaled_samples():
    x = draw_vectors("normal", 2, 1000, 0, "absmax", 8)
    assert x.shape == (1000, 2) and np.max(np.abs(x)) == 1.0
    blocks = x.reshape(-1, 8).astype(np.float64)
    np.testing.assert_allclose(np.max(np.abs(blocks), axis=1), 1.0)
    x = draw_vectors("normal", 2, 999, 0, "rms", 4)  # rounded up to whole blocks
    assert x.shape == (1000, 2)
    np.testing.assert_allclose(np.mean(x.reshape(-1, 4).astype(np.float64) ** 2, axis=1), 1.0, rtol=1e-6)
    cb = derive_vq(2, 16, scale="rms", block_size=64, **SMALL)
    assert cb.recipe["scale"] == "rms" and cb.recipe["block_size"] == 64 and cb.name == (
        "vq-2d-16-rms64-samples=30000-restarts=2-coarse-samples=10000-max-iter=100-final-passes=5")


def test_npy_source(tmp_path):
    f = tmp_path / "w.npy"
    np.save(f, np.random.default_rng(0).laplace(size=50_000))
    cb = derive_vq(2, 16, source=str(f), **SMALL)
    assert cb.recipe["source"] == str(f)
    bad = tmp_path / "nan.npy"
    np.save(bad, np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError):
        derive_vq(2, 4, source=str(bad), samples=1000)


@pytest.mark.parametrize("kw, fragment", [
    (dict(dim=0), "dimension P"), (dict(dim=65), "at most 64"), (dict(points=1), "number of points"),
    (dict(points=65537), "65536"), (dict(scale="rms"), "needs a block size"),
    (dict(scale="rms", block_size=63), "must divide"), (dict(block_size=64), "block scale"),
    (dict(scale="max"), "scale must be"), (dict(symmetric=True, points=12), "multiple of 8"),
    (dict(samples=100), "at least 4 per point"), (dict(seed=-1), "seed"), (dict(tol=float("nan")), "tol"),
    (dict(tol="x"), "tol"), (dict(tol=None), "tol"), (dict(samples=10**11), "more than 536870912 values"),
    (dict(restarts=0), "restarts"), (dict(source="nope"), "unknown source"),
    (dict(init="grid"), "init must be"), (dict(dim=3, points=256, init="hexagonal"), "2 dimensions"),
    (dict(symmetric=True, points=256, init="hexagonal"), "not symmetric"),
    # a sample is drawn in whole blocks: a block of 2e9 values asked for 1e9 vectors (a MemoryError)
    (dict(points=4, samples=1000, scale="absmax", block_size=2 * 10**9), r"whole blocks of 2000000000: 1000000000\)"),
])
def test_bad_options(kw, fragment):
    with pytest.raises(ValueError, match=fragment):
        VQRecipe(**kw)


def test_helpers_check_their_arguments():
    from quantbook.derive.vq import draw_vectors, vq_mse

    x = np.zeros((10, 2), np.float32)
    for call, fragment in ((lambda: draw_vectors("normal", 2, 5, 0, "bogus", 4), "scale must be"),
                           (lambda: draw_vectors("normal", 2, 5, 0, "absmax", None), "block size"),
                           (lambda: draw_vectors("normal", 3, 5, 0, "rms", 4), "must divide"),
                           (lambda: vq_mse(np.array([0.0, 1.0]), x), r"\(N, P\) array"),
                           (lambda: vq_mse(np.zeros((0, 2)), x), r"\(N, P\) array")):
        with pytest.raises(ValueError, match=fragment):
            call()


def test_helpers_reject_non_finite_points_and_bad_seeds():
    x = np.zeros((10, 2), np.float32)
    for pts in ([[np.nan, 0.0], [1.0, 1.0]], [[np.inf, 0.0], [1.0, 1.0]], [[np.nan], [1.0]],
                [[1.0, np.nan], [0.0, 0.0]]):
        p = np.array(pts)
        for call in (vq_mse, cell_stats, vector_errors):   # NaN points gave an MSE of 1.0, SE 0
            with pytest.raises(ValueError, match="finite"):
                call(p, x[:, :p.shape[1]])
    with pytest.raises(ValueError, match=r"\(N, P\) array"):
        vector_errors(np.array([0.0, 1.0]), x[:, :1])
    for seed in (-1, 1.5, None):   # None drew an unseeded, unrepeatable sample
        with pytest.raises(ValueError, match="seed"):
            draw_vectors("normal", 2, 5, seed)


def test_recipe_json_checks():
    with pytest.raises(RecipeError, match="vq"):
        VQRecipe.from_dict({"method": "lloyd"})
    with pytest.raises(RecipeError, match="unknown parameter"):
        VQRecipe.from_dict({**VQRecipe().to_dict(), "bogus": 1})
    with pytest.raises(RecipeError, match="integer"):
        VQRecipe.from_dict({**VQRecipe().to_dict(), "dim": "2"})


def test_derive_vq_takes_every_field_of_its_recipe():
    """A recipe holds every option of derive_vq and nothing else, so it can be spelled back."""
    import dataclasses
    import inspect

    from quantbook.derive.vq import derive_vq

    options = set(inspect.signature(derive_vq).parameters) - {"progress"}
    assert options == {f.name for f in dataclasses.fields(VQRecipe)}


def test_the_description_counts_the_vectors_drawn():
    """With a block scale the sample is whole blocks: the text says how many vectors Lloyd saw
    (it said the number asked, and the next line of `derive vq` the number drawn)."""
    from quantbook.derive.vq import draw_vectors

    r = VQRecipe(dim=2, points=4, samples=1000, scale="absmax", block_size=4096)
    assert draw_vectors(r.source, 2, 1000, 0, "absmax", 4096).shape == (2048, 2)
    assert "Lloyd on 2048 vectors (1000 asked, in whole blocks)" in r.derive().source


PLUS = np.array([[0.0, 0.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0]])


@pytest.mark.parametrize("call, error, said", [
    (lambda: vector_errors(PLUS, np.zeros((3, 3))), ValueError, "need rows of 2 values, got shape (3, 3)"),
    (lambda: vector_errors(PLUS, np.array([[np.nan, 0.0]])), ValueError, "the sample holds non-finite values"),
    (lambda: cell_stats(PLUS, np.zeros((1, 2))), ValueError, "need at least two rows of 2 values, got shape (1, 2)"),
    (lambda: cell_stats(PLUS, np.array([[np.inf, 0.0], [0.0, 0.0]])), ValueError, "the sample holds non-finite values"),
    (lambda: solve_vq(VQRecipe(dim=2, points=4, samples=1000), dim=2), TypeError, "give a recipe or options, not both"),
    # a dict or a name was an AttributeError on its .dim
    (lambda: solve_vq({"dim": 2}), TypeError, "recipe must be a VQRecipe (or leave it out and give its options), "
     "got dict"),
])
def test_vq_derivation_refusals_say_what_is_wrong(call, error, said):
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == said
