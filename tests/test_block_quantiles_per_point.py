"""ppf/isf of the block laws: each quantile a function of its own probability alone, bit for bit
(alone, in chunks, reversed, shuffled, beside hard points), and monotone in it even for
probabilities one ulp apart, where the evaluated cdf scatters by some ulps around the root."""
import numpy as np
import pytest

from quantbook.derive.block import BlockDistribution, _monotone_solve
from quantbook.derive.scaled import ScaledBlockDistribution

LAWS = [
    lambda: BlockDistribution(64),
    lambda: BlockDistribution(2),
    lambda: BlockDistribution(4096),
    lambda: BlockDistribution(64, "laplace", "signed-absmax"),
    lambda: BlockDistribution(64, "student-t:0.5"),
    lambda: ScaledBlockDistribution(16, "normal", "e4m3"),
]


def _bits(x):
    return np.asarray(x, dtype=np.float64).view(np.int64)


@pytest.mark.parametrize("law", range(len(LAWS)))
@pytest.mark.parametrize("method", ["ppf", "isf"])
def test_each_quantile_depends_on_its_own_probability_alone(law, method):
    d = LAWS[law]()
    inv = getattr(d, method)
    rng = np.random.default_rng(7)
    q = np.concatenate([rng.uniform(0, 1, 25), [0.5, 0.5 + 1e-13, 1e-6, 1 - 1e-6]])
    alone = np.array([inv(v) for v in q])
    together = inv(q)
    assert np.array_equal(_bits(together), _bits(alone))
    assert np.array_equal(_bits(inv(q[::-1])[::-1]), _bits(alone))
    order = rng.permutation(q.size)
    assert np.array_equal(_bits(inv(q[order])), _bits(alone[order]))
    chunks = np.concatenate([inv(c) for c in np.array_split(q, 4)])
    assert np.array_equal(_bits(chunks), _bits(alone))
    # beside points whose search takes long (tiny masses, a singular density's neighbourhood)
    hard = np.array([1e-300, 1e-12, 0.5 + 1e-16, 1 - 1e-15])
    big = inv(np.concatenate([hard, q, rng.uniform(0, 1, 200)]))[hard.size:hard.size + q.size]
    assert np.array_equal(_bits(big), _bits(alone))


@pytest.mark.parametrize("law", range(len(LAWS)))
def test_quantiles_of_neighbouring_probabilities_keep_their_order(law):
    d = LAWS[law]()
    # runs of consecutive floats: their roots lie within the cdf's rounding scatter of each other
    runs = [(s + np.arange(-300, 301) * np.spacing(s)) for s in (0.03, 0.2, 0.45, 0.5, 0.61, 0.9)]
    q = np.concatenate(runs)
    x, y = d.ppf(q), d.isf(q)
    for k in range(len(runs)):
        part = slice(601 * k, 601 * (k + 1))
        assert np.all(np.diff(x[part]) >= 0), k
        assert np.all(np.diff(y[part]) <= 0), k


@pytest.mark.parametrize("method", ["ppf", "isf"])
def test_a_steep_cdf_is_inverted_from_a_start_near_each_root(method, monkeypatch):
    # Newton started every point at the bracket's middle, 0: at B = 4096 a student-t:0.5 law's cdf
    # rises from 0.5 to 0.996 within 1e-3 of 0, and it took 31 evaluations of cdf and density a
    # point (6.5 from the cdf's table on the graded edges)
    d = BlockDistribution(4096, "student-t:0.5")
    mu = d._mu
    calls = []
    cum_dens, T0_dens = mu.cum_dens, mu.T0_dens
    monkeypatch.setattr(mu, "T0_dens", lambda y: calls.append(np.size(y)) or T0_dens(y))   # cum_dens's too
    q = np.random.default_rng(3).uniform(0, 1, 400)
    x = getattr(d, method)(q)
    assert sum(calls) <= 8 * q.size, sum(calls) / q.size
    # the start moves no answer: each is the one solved from the bracket's middle
    lo, hi = d._edges(-1.0)[0][-1] - 1.0, 1.0 - d._edges(1.0)[0][-1]
    inside = (x > lo) & (x < hi)
    assert inside.sum() > 300
    top = mu.T(0, mu.hi)
    if method == "ppf":
        ref = _monotone_solve(cum_dens, q[inside], lo, hi, f=mu.cum)
    else:
        ref = _monotone_solve(lambda y: (lambda t, dd: (t - top, dd))(*T0_dens(y)), d._w_plus - q[inside],
                              lo, hi, f=lambda y: mu.T(0, y) - top)
    assert np.array_equal(_bits(x[inside]), _bits(ref))


@pytest.mark.parametrize("normalization", ["absmax", "signed-absmax"])
def test_quantiles_keep_their_order_where_the_windows_change_their_rule(normalization):
    # a heavy-tailed law at a large block: the windows at ±1 pass half the support, where the points
    # are solved by position, not distance, and end at 1/128, where T(0, ·) differences take over
    d = BlockDistribution(10**7, "student-t:3", normalization)
    for y in (0.5, 1.0 - d._edges(1.0)[0][-1]):
        q0 = float(d.sf(y))
        x = d.isf(q0 + np.arange(-200, 201) * np.spacing(q0))
        assert np.all(np.diff(x) <= 0) and x[0] > y > x[-1]
    for y in (-0.5, d._edges(-1.0)[0][-1] - 1.0):
        q0 = float(d.cdf(y))
        x = d.ppf(q0 + np.arange(-200, 201) * np.spacing(q0))
        assert np.all(np.diff(x) >= 0) and x[0] < y < x[-1]
