"""The block laws' root solver (quantbook.derive.block._monotone_solve) against its contract, with
functions whose roots are known exactly: the least point of its lattice (every float from
2**52·h up, multiples of h = 2**(floor(log2(tol)) - 10) below) in [lo, hi] where f reaches
the target, hi when there is none; and answers monotone in the target for an f whose
evaluation scatters by a few ulps, which a bisection of varying points would not keep."""
import math

import numpy as np
import pytest

from quantbook.derive.block import _monotone_solve

TOL = 1e-15
H = 2.0 ** (math.floor(math.log2(TOL)) - 10)
TOP = 2.0**52 * H


def _prev(x):
    """The lattice point below each ``x`` (the docstring's lattice, built here by hand)."""
    x = np.asarray(x, dtype=np.float64)
    fine = (x > -TOP) & (x <= TOP)   # below TOP the points are the multiples of H
    return np.where(fine, x - H, np.nextafter(x, -np.inf))


def _on_lattice(x):
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.abs(x) >= TOP, True, np.floor(x / H) * H == x)


def _line(x):
    return x, np.ones_like(x)


@pytest.mark.parametrize("lo, hi", [(-1.0, 1.0), (-3e-9 - 7e-20, 5e-9 + 3e-20), (0.3 + 1e-17, 0.7),
                                    (-2.5e-3, 2.5e-3), (-40.0, 1e-18 / 3), (1e-9 + 3e-20, 0.7),
                                    (-0.7, -1e-9 - 3e-20)])
def test_the_answer_is_the_least_lattice_point_reaching_the_target(lo, hi):
    rng = np.random.default_rng(3)
    t = np.concatenate([rng.uniform(lo, hi, 300), [lo, hi, 0.5 * (lo + hi), lo - 1.0, hi + 1.0]])
    x = _monotone_solve(_line, t, lo, hi)
    assert np.all(_on_lattice(x)) and np.all((x >= lo) & (x <= hi))
    last = hi if abs(hi) >= TOP else math.floor(hi / H) * H   # the bracket's top lattice point
    assert np.all((t <= x) | (x == last))
    # below the answer the target is missed, or the answer is the bracket's first lattice point
    below = _prev(x)
    assert np.all((below < t) | (below < lo))


def test_a_bracket_holding_one_lattice_point_or_none():
    # [0.5h, 1.5h] holds h alone: every target at or below h gives h, the others h as well (none reach)
    x = _monotone_solve(_line, np.array([0.2 * H, 0.9 * H, 1.2 * H]), 0.5 * H, 1.5 * H)
    assert np.array_equal(x, [H, H, H])
    # lo == hi on the lattice: that point, whatever the target
    assert np.array_equal(_monotone_solve(_line, np.array([-1.0, 0.3, 2.0]), 0.3, 0.3), [0.3, 0.3, 0.3])


def test_shapes_and_non_finite_targets():
    assert _monotone_solve(_line, np.float64(0.25), -1.0, 1.0).shape == ()
    assert _monotone_solve(_line, np.empty((0, 3)), -1.0, 1.0).shape == (0, 3)
    x = _monotone_solve(_line, np.array([[0.1, np.nan], [-0.2, 0.3]]), -1.0, 1.0)
    assert x.shape == (2, 2) and np.isnan(x[0, 1]) and np.array_equal(x[[0, 1, 1], [0, 0, 1]], [0.1, -0.2, 0.3])


def _noisy(x):
    """``x`` plus a fixed pseudo-random error of up to 8 eps per float (a hash of its bits):
    an evaluated cdf's rounding scatter, well inside the solver's noise bound."""
    bits = np.asarray(x, dtype=np.float64).view(np.uint64)
    h = ((bits * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)).astype(np.float64) / 2.0**24
    return x + (2.0 * h - 1.0) * 8.0 * np.finfo(np.float64).eps


def test_answers_keep_their_order_where_f_scatters():
    runs = [s + np.arange(-400, 401) * np.spacing(s) for s in (0.25, 0.5, 0.7, 0.9)]
    for t in runs:
        x = _monotone_solve(lambda v: (_noisy(v), np.ones_like(v)), t, 0.0, 1.0, f=_noisy)
        assert np.all(np.diff(x) >= 0)
        # and each answer is its own target's, computed alone or among the others
        assert np.array_equal(x[::97], [_monotone_solve(lambda v: (_noisy(v), np.ones_like(v)), v, 0.0, 1.0,
                                                        f=_noisy) for v in t[::97]])
