"""NF derivation: bitsandbytes bit-exactness, the 929/960 identity, NFk shape."""

from fractions import Fraction

import mpmath
import numpy as np
import pytest
from scipy.stats import norm

from quantbook.derive import default_offset, derive_offset, nf, nf_exact, parse_offset

# bitsandbytes' published float32 NF4 (bitsandbytes/functional.py get_4bit_type('nf4')),
# written here independently of the registry module.
BNB_NF4 = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)


def test_float32_bnb_nf4_is_bit_exact():
    cb = nf(4, precision="float32-bnb")
    np.testing.assert_array_equal(cb.levels.astype(np.float32).view(np.uint32), BNB_NF4.view(np.uint32))


def test_plain_float64_nf4_is_not_bit_exact():
    # the reason the float32-bnb replay exists: documented as 12 of 16 levels differing
    cb = nf(4, precision="float64")
    differ = cb.levels.astype(np.float32).view(np.uint32) != BNB_NF4.view(np.uint32)
    assert differ.sum() == 12
    # the decimal literal alone does not fix it (10 of 16 still differ)
    lit = nf(4, offset="0.9677083", precision="float64").levels.astype(np.float32)
    assert (lit.view(np.uint32) != BNB_NF4.view(np.uint32)).sum() == 10


def test_float64_and_exact_agree_to_float64_rounding():
    a = nf(4, precision="float64").levels
    b = nf(4, precision="exact").levels
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-14)


def test_exact_against_independent_mpmath_quantiles():
    # NF4 at 929/960 from first principles: positive quantiles at 929/960 - i*(929/960-1/2)/8
    mpmath.mp.dps = 40
    try:
        off = mpmath.mpf(929) / 960
        top = mpmath.sqrt(2) * mpmath.erfinv(2 * off - 1)
        p3 = off - 3 * (off - mpmath.mpf(1) / 2) / 8
        want = mpmath.sqrt(2) * mpmath.erfinv(2 * p3 - 1) / top
        got = nf_exact(4)[7 + 8 - 3]
        assert abs(got - want) < mpmath.mpf(10) ** -30
    finally:
        mpmath.mp.dps = 15


def test_offset_identity_929_960():
    d = derive_offset(4)
    assert d.offset == Fraction(929, 960) == (Fraction(29, 30) + Fraction(31, 32)) / 2
    assert d.lower_position == Fraction(29, 30) and d.upper_position == Fraction(31, 32)
    assert d.lower_position < d.offset < d.upper_position
    assert default_offset(4) == Fraction(929, 960)
    for bad, match in ((0, "2 to 8 bits, got 0"), (9, "2 to 8 bits"), (10**30, "2 to 8 bits"), (2.5, "integer"),
                       (True, "integer")):   # 0 divided by zero, 10**30 never returned
        with pytest.raises(ValueError, match=match):
            default_offset(bad)
    assert d.bnb_literal == Fraction(9677083, 10**7)
    assert d.literal_minus_offset == Fraction(-1, 30000000)
    # in float32 the literal and 929/960 are different numbers
    assert np.float32(0.9677083) != np.float32(929 / 960)
    assert any("929/960" in line for line in d.lines())


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("precision", ["exact", "float64", "float32-bnb"])
def test_nfk_shape(bits, precision):
    cb = nf(bits, precision=precision)
    lv = cb.levels
    assert lv.size == 2**bits
    assert lv[0] == -1.0 and lv[-1] == 1.0 and 0.0 in lv
    assert np.all(np.diff(lv) > 0)
    assert np.sum(lv > 0) == 2 ** (bits - 1) and np.sum(lv < 0) == 2 ** (bits - 1) - 1


def test_nfk_positive_levels_are_normal_quantiles():
    # independent reference: scipy norm.ppf at the stated positions
    bits, off = 5, default_offset(5)
    p = np.linspace(float(off), 0.5, 2 ** (bits - 1) + 1)[:-1]
    want = np.sort(norm.ppf(p) / norm.ppf(float(off)))
    got = nf(bits).levels[nf(bits).levels > 0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)


def test_any_rational_offset():
    cb = nf(4, offset="15/16", precision="exact")
    assert cb.recipe["offset"] == "15/16"
    assert parse_offset("0.9677083") == Fraction(9677083, 10**7)
    for bad in ("1/3", "1", "abc", "1/0", float("nan")):
        with pytest.raises(ValueError):
            parse_offset(bad)


def test_offset_spellings():
    assert parse_offset("9.677083e-1") == parse_offset("+0.9677083") == Fraction(9677083, 10**7)
    assert parse_offset(" 929 / 960 ") == Fraction(929, 960)
    # a long but valid decimal (929/960 to 59 digits) is exact, and as float64 it is 929/960
    long = "0.96770833333333333333333333333333333333333333333333333333333"
    assert parse_offset(long) == Fraction(int(long[2:]), 10 ** (len(long) - 2))
    a, b = nf(4, long, "float64"), nf(4, "929/960", "float64")
    assert a == b.replace(recipe=a.recipe, name=a.name)
    assert a.name != b.name == "nf4-float64"   # only bitsandbytes' table is "nf4"
    for bad, words in (("0.4", "between 1/2 and 1"), ("-0.9", "between 1/2 and 1"), ("0.0", "between"),
                       ("9/8", "between"), ("1/0", "zero denominator"), ("0.9.1", "rational like"),
                       ("", "rational like"), (True, "number")):
        with pytest.raises(ValueError, match=words):
            parse_offset(bad)


def test_huge_offsets_are_refused_quickly_in_one_line():
    # Fraction("1e-999999999") builds 10**999999999 (never returns, memory grows) and a
    # 5000-digit number fails when printed (sys.set_int_max_str_digits); run in a subprocess
    # so that a regression fails here instead of hanging
    import subprocess
    import sys

    code = (
        "from fractions import Fraction\n"
        "from quantbook.derive import nf, parse_offset\n"
        "for bad in ('1e-999999999', '9e99999999999', '1e-5000', '0.' + '9' * 5000, '1/' + '3' * 5000,\n"
        "            Fraction(1, 10**5000), 10**5000):\n"
        "    try:\n"
        "        nf(4, bad)\n"
        "    except ValueError as exc:\n"
        "        print(exc)\n"
        "    else:\n"
        "        print('NOT REFUSED')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 7 and "NOT REFUSED" not in r.stdout
    assert "set_int_max_str_digits" not in r.stdout and all(len(line) < 200 for line in lines)
    assert all("between 1/2 and 1" in line for line in lines[:3]), lines
    assert all("digits" in line for line in lines[3:]), lines


@pytest.mark.parametrize("bits", [0, 1, -3, 9, 4.0, "4", True])
def test_derive_offset_checks_bits_as_default_offset(bits):
    # bits 0 gave offset zoo, -3 a negative "offset", 4.0 floats, "4" a sympy TypeError
    with pytest.raises(ValueError, match="bits must be an integer|NF codebooks are defined for 2 to 8 bits"):
        derive_offset(bits)
    with pytest.raises(ValueError):
        default_offset(bits)


@pytest.mark.parametrize("dps", [0, -1, 2.0, True])
def test_nf_exact_refuses_a_precision_that_is_not_positive(dps):
    # mpmath took dps=0 and gave levels rounded to a few bits (-0.75 for -0.6961928...)
    with pytest.raises(ValueError, match=r"dps \(significant digits\) must be a positive integer"):
        nf_exact(4, dps=dps)
