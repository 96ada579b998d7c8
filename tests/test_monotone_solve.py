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


def _lattice_value(k: int) -> float:
    """The docstring's lattice numbered in order: multiples of H below TOP, every float above."""
    if abs(k) < 2**52:
        return k * H
    top_bits = int(np.float64(TOP).view(np.int64))
    v = float(np.int64(top_bits + abs(k) - 2**52).view(np.float64))
    return v if k > 0 else -v


def _full_bisection(f, t: float, lo: float, hi: float) -> float:
    """The answer the docstring defines: a bisection of every lattice number in (-2**62, 2**62]
    from the top, f taken as below the target under ``lo`` and above it from the bracket's last
    lattice point on, evaluated everywhere else (about 62 evaluations)."""
    last = hi if abs(hi) >= TOP else math.floor(hi / H) * H
    L, R = -(2**62), 2**62
    while R - L > 1:
        m = (L + R) // 2
        v = _lattice_value(m)
        if v < lo:
            L = m
        elif v >= last or f(np.float64(v)) >= t:
            R = m
        else:
            L = m
    return _lattice_value(R)


@pytest.mark.parametrize("slope", [1.0, 300.0])
def test_where_f_scatters_within_the_bound_the_answer_is_the_full_bisections(slope):
    """The solver evaluates f only in a band Newton finds; where f's error stays within the
    solver's bound (here 8 eps of 32), that is the same answer as the whole bisection's.  A
    derivative 300 times too steep makes Newton's first band too narrow: it must widen until
    its ends clear the target by the bound, not merely reach the other side."""
    for s in (0.25, 0.5, 0.7, 0.9):
        t = s + np.arange(-400, 401, 20) * np.spacing(s)
        x = _monotone_solve(lambda v: (_noisy(v), np.full_like(v, slope)), t, 0.0, 1.0, f=_noisy)
        assert x.tolist() == [_full_bisection(_noisy, v, 0.0, 1.0) for v in t]


def test_a_newton_step_that_rounds_to_zero_ends_the_search():
    # Newton's step rounding to 0 lands on the end of the bracket it came from: that counted as a
    # step out of the bracket and restarted a bisection of the whole bracket (some 50 more steps)
    calls = []

    def f_df(x):
        calls.append(x.size)
        # above the target at 0.3 by 1e-15, steep: the step there, 1e-18, rounds to 0
        return 1.0 + 1e-15 + 1e3 * (x - 0.3), np.full(x.shape, 1e3)

    x = _monotone_solve(f_df, np.ones(1), 0.0, 1.0, x0=0.3)
    assert x[0] == 0.3
    assert len(calls) <= 3, len(calls)
