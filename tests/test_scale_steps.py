"""Step tables (quantbook/scales/steps.py) against the rules they come from, and against the
rules' own breakpoints (the exact math of where each rule steps)."""

import numpy as np
import pytest

from quantbook.scales import FAMILIES, ScaleRule, get_rule, rule_names
from quantbook.scales.steps import BUCKET_SHIFT, decode_table, step_table

_F = np.float32

DETERMINISTIC = [n for n in rule_names() if get_rule(n).deterministic and get_rule(n).layout == "scaled"]
QMAX = [6.0, 1.0, 127.0, 2.5]


def _probes(starts, rng):
    """Every step's first maximum and its predecessor, 0, the largest float, subnormals, and
    maxima spread over float32's whole range."""
    s = starts.astype(np.int64)
    bits = np.concatenate([s, np.maximum(s - 1, 0), [0, 1, 0x7F7FFFFF, 0x007FFFFF],
                           rng.integers(0, 0x7F800000, 20000)])
    return bits.astype(np.uint32).view(_F)


def _tensor_scales(rule, qmax):
    return [rule.tensor_scale(g, qmax) for g in (1.0, 3.7e-3, 6.0 * 448.0, 2.9e35)]


@pytest.mark.parametrize("qmax", QMAX)
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_lookup_is_the_rule(name, qmax):
    rule = get_rule(name)
    if rule.fixed_qmax not in (None, qmax):
        pytest.skip(f"{name} takes qmax {rule.fixed_qmax:g} only")
    rng = np.random.default_rng(7)
    for ts in _tensor_scales(rule, qmax):
        t = step_table(rule, qmax, ts)
        assert t.starts[0] == 0 and np.all(np.diff(t.starts.astype(np.int64)) > 0)
        a = _probes(t.starts, rng)
        i = t.index(a)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            want = rule._encode(a, qmax, ts)
        assert np.array_equal(t.stored[i].view(np.uint8), want.view(np.uint8))
        ok = ~(rule.overflow(want) | rule.underflow(want, ts))
        assert np.array_equal(t.valid[i], ok)
        f, divide = rule.divisor(want[ok], ts)
        assert t.divide == divide
        assert np.array_equal(t.factor[i][ok].view(np.uint32), f.view(np.uint32))
        assert np.array_equal(t.scale[i][ok].view(np.uint32), rule.decode(want[ok], ts).view(np.uint32))


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_steps_are_the_breakpoints(name):
    """Each step lies within a float32 ulp or two of a breakpoint of the rule's exact scale
    function (the rule's own float32 arithmetic may move it that much), one step for each;
    the step into overflow (float16's inf) is not a breakpoint of a finite scale."""
    rule = get_rule(name)
    qmax = 6.0
    ts = rule.tensor_scale(1.0, qmax)
    t = step_table(rule, qmax, ts)
    lo, hi = 1e-30, 1e30              # away from the clamps at the ends of the scale formats
    steps = t.starts.view(_F).astype(np.float64)
    steps = steps[(steps > lo) & (steps < hi) & ~rule.overflow(t.stored)]
    b = rule.breakpoints(qmax, ts, lo, hi)
    assert steps.size == b.size
    ulps = np.abs(steps.astype(_F).view(np.int32).astype(np.int64)
                  - b.astype(_F).view(np.int32).astype(np.int64))
    assert ulps.max() <= 2


def test_refusals():
    with pytest.raises(ValueError, match="no step table"):
        step_table("search:4over6", 6.0)
    with pytest.raises(ValueError, match="no step table"):
        step_table("float32", 6.0)          # the bnb layout: every float is a step
    with pytest.raises(ValueError, match="tensor scale"):
        step_table("e4m3", 6.0)
    with pytest.raises(ValueError, match="qmax"):
        step_table("e8m0:floor", 0.0)


def test_refused_steps():
    f16 = step_table("float16", 6.0)
    assert not f16.valid[-1] and f16.valid[:-1].all()          # only the overflow to inf
    bf = step_table("bfloat16", 6.0)
    s = bf.stored.astype(np.int64)
    assert np.array_equal(~bf.valid, ((s > 0) & (s < 0x80)) | (s >= 0x7F80))   # subnormal or inf


def test_tables_are_cached_and_read_only():
    a = step_table("e8m0:rceil", 6.0)
    assert step_table(get_rule("e8m0:rceil"), 6, None) is a
    with pytest.raises(ValueError):
        a.starts[0] = 1


def test_every_deterministic_scaled_family_is_covered():
    fams = {get_rule(n).family for n in DETERMINISTIC}
    want = {f for f, c in FAMILIES.items() if c.deterministic and c.layout == "scaled"}
    assert fams == want and {"e4m3", "e8m0", "float16", "bfloat16"} <= fams


class _Halves(ScaleRule):
    """A made-up rule whose stored value steps at M = 1, 2, 3 while the scale it decodes to
    steps only at 2: stored 0 and 1 both stand for the scale 1."""

    family = "test-halves"
    stored_dtype, stored_bytes = "uint8", 1

    def _encode(self, amax, qmax, tensor_scale):
        return np.minimum(np.floor(np.asarray(amax, _F)), 3).astype(np.uint8)

    def _decode(self, stored, tensor_scale):
        return (np.asarray(stored) // 2 + 1).astype(_F)


def test_a_scale_that_does_not_increase_with_its_stored_value_has_no_step_table(monkeypatch):
    """The module's check: the decoded scales of the steps must increase, so two steps that
    decode to the same scale are refused, not tabled."""
    monkeypatch.setitem(FAMILIES, _Halves.family, _Halves)
    with pytest.raises(ValueError, match="not increasing"):
        step_table(_Halves.family, 6.0)


@pytest.mark.parametrize("name", ["e4m3", "float16", "e8m0:even"])
def test_buckets_bracket_every_step(name):
    rule = get_rule(name)
    t = step_table(rule, 6.0, rule.tensor_scale(1.0, 6.0))
    bits = _probes(t.starts, np.random.default_rng(2)).view(np.uint32)
    k = (bits >> BUCKET_SHIFT).astype(np.int64)
    i = t.index(bits.view(_F))
    assert np.all(t.buckets[k] <= i) and np.all(i <= t.buckets[k + 1])


@pytest.mark.parametrize("name", [n for n in rule_names() if get_rule(n).layout == "scaled"])
def test_decode_table_is_the_rule_on_every_stored_value(name):
    rule = get_rule(name)
    width = np.dtype(rule.stored_dtype).itemsize
    every = np.arange(1 << (8 * width), dtype=np.uint32).astype(f"u{width}").view(rule.stored_dtype)
    for ts in ([None] if rule.tensor_bytes == 0 else [_F(1.0), _F(3.7e-3 / 2688), _F(2.9e35 / 2688)]):
        t = decode_table(rule, ts)
        with np.errstate(invalid="ignore", over="ignore"):
            want = np.asarray(rule.decode(every, ts), dtype=_F)
        assert t.shape == want.shape and np.array_equal(t.view(np.uint32), want.view(np.uint32))


def test_decode_table_only_for_narrow_stored_values():
    assert decode_table("float32") is None
    assert decode_table("e8m0:floor") is decode_table(get_rule("e8m0:floor"))   # cached
