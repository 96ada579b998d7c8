"""ggml's IQ4_NL scale search (quantbook.scales.ggml) against ggml itself.

Oracle: tests/data/ggml_vectors.npz, written by tests/data/make_ggml_vectors.py from ggml's
own ``quantize_iq4_nl``, ``quantize_row_iq4_nl_ref`` and ``dequantize_row_iq4_nl`` (llama.cpp
as vendored by llama-cpp-python 0.3.36).  Scales, codes and decoded floats compare bit for
bit; the numba path compares to the numpy reference.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import quantbook as qb
from quantbook.bulk.layouts import scaled_table
from quantbook.codebooks.registry import IQ4_NL_INT
from quantbook.scales import get_rule, rule_names
from quantbook.scales.ggml import GgmlSearch, ggml_search, ggml_search_reference

from gpu_cases import usable_backend

DATA = np.load(Path(__file__).parent / "data" / "ggml_vectors.npz")
META = json.loads(bytes(DATA["meta"]).decode())
TABLE = np.array(IQ4_NL_INT, np.float32)
MODES = {"ggml": 7, "ggml-ref": -1}


def _cases():
    return [(c, m) for c in META["cases"] for m in MODES]


def test_layout_table_is_ggml_kvalues():
    """Against the literal kvalues_iq4nl of ggml/src/ggml-common.h (llama.cpp), not the
    registry's copy that the table is made from."""
    kvalues = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]
    assert TABLE.tolist() == kvalues
    assert np.array_equal(scaled_table(qb.get("iq4_nl").code, 127), np.array(kvalues, np.float32))


@pytest.mark.parametrize("fn", [ggml_search_reference, ggml_search])
@pytest.mark.parametrize("case,mode", _cases())
def test_scales_and_codes_equal_ggml(fn, case, mode):
    x = DATA[f"{case}/x"].reshape(-1, 32)
    d, q = fn(x, TABLE, MODES[mode])
    with np.errstate(over="ignore"):
        bits = d.astype(np.float16).view(np.uint16)
    assert np.array_equal(bits, DATA[f"{case}/{mode}/d"])
    codes = DATA[f"{case}/{mode}/codes"]
    # ggml's reference quantizer leaves a block below 1e-15 without codes (it decodes to 0)
    live = np.abs(x).max(axis=1) >= 1e-15 if mode == "ggml-ref" else np.ones(len(x), bool)
    assert np.array_equal(q[live], codes[live])


def test_vectors_cover_ties_and_dead_blocks():
    x = DATA["grid/x"].reshape(-1, 32)
    m = x[np.arange(len(x)), np.abs(x).argmax(axis=1)]
    y = (np.float32(-127) / m)[:, None] * x   # the first fit's scaled values
    mids = (TABLE[:-1] + TABLE[1:]) / 2
    assert np.isin(y, mids).sum() >= 5        # exactly half-way: the tie rule decides
    assert (np.abs(DATA["edge/x"].reshape(-1, 32)).max(axis=1) < 1e-15).sum() >= 3


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("case,mode", _cases())
def test_bulk_decodes_like_ggml(backend, case, mode):
    x = DATA[f"{case}/x"]
    d = DATA[f"{case}/{mode}/d"].view(np.float16)
    if not np.isfinite(d).all():
        with pytest.raises(ValueError, match="overflows float16"):
            qb.quantize(x, "iq4_nl", 32, scale=f"search:{mode}", qmax=127, backend=backend)
        # the other blocks, tiny scales among them, still decode as ggml's do
        keep = np.isfinite(d)
        x, d = np.ascontiguousarray(x.reshape(-1, 32)[keep]), d[keep]
        g = DATA[f"{case}/{mode}/deq"].reshape(-1, 32)[keep].reshape(-1)
    else:
        g = DATA[f"{case}/{mode}/deq"].reshape(-1)
    p, st = qb.quantize(x, "iq4_nl", 32, scale=f"search:{mode}", qmax=127, backend=backend)
    assert st.absmax.dtype == np.float16 and np.array_equal(st.absmax.view(np.uint16), d.view(np.uint16))
    y = qb.dequantize(p, st, backend=backend).reshape(-1)
    assert np.array_equal(y, g)   # as values: a dead block is ±0 in ggml's reference path
    if mode == "ggml":
        assert np.array_equal(y.view(np.uint32), g.view(np.uint32))


@pytest.mark.parametrize("code,qmax", [("nf4", 6.0), ("e2m1", 6.0), ("iq4_nl", 1.0), ("af4", 127.0)])
@pytest.mark.parametrize("ntry", [7, -1, 2])
def test_compiled_equals_reference(code, qmax, ntry):
    rng = np.random.default_rng(ntry + 10)
    x = (rng.standard_t(4, (300, 32)) * np.exp(rng.uniform(-8, 8, (300, 1)))).astype(np.float32)
    x[0] = 0
    x[1, ::3] = -x[1, 0]   # equal magnitudes, both signs
    table = scaled_table(qb.get(code).code, qmax)
    d0, q0 = ggml_search_reference(x, table, ntry)
    d1, q1 = ggml_search(x, table, ntry)
    assert np.array_equal(d0.view(np.uint32), d1.view(np.uint32)) and np.array_equal(q0, q1)


def test_unsorted_table_with_repeats():
    # codes index the table as given, in its stored order
    t = np.array([0.5, -1.0, 0.0, 1.0, -0.5, 0.0], np.float32)
    x = np.random.default_rng(1).standard_normal((50, 16)).astype(np.float32)
    d, q = ggml_search(x, t)
    d0, q0 = ggml_search_reference(x, t)
    assert np.array_equal(q, q0) and np.array_equal(d, d0)
    srt = np.sort(t)
    d1, q1 = ggml_search_reference(x, srt)
    assert np.array_equal(t[q], srt[q1]) and np.array_equal(d, d1)


def _best_index_int8(val, x):
    """ggml's ``best_index_int8`` (ggml-quants.c) rebuilt by hand: the nearest of the ascending
    ``val``, ``0`` at or below the first, a tie going up."""
    if x <= val[0]:
        return 0
    if x >= val[-1]:
        return len(val) - 1
    ml, mu = 0, len(val) - 1
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < val[mav]:
            mu = mav
        else:
            ml = mav
    return mu - 1 if x - val[mu - 1] < val[mu] - x else mu


@pytest.mark.parametrize("fn", [ggml_search_reference, ggml_search])
def test_a_value_on_a_lowest_entry_stored_twice_takes_the_first(fn):
    """ggml returns 0 for ``x <= val[0]``: a value exactly on a lowest entry that the table
    stores twice is coded as the first of the two, not as the second a search would reach."""
    table = TABLE.copy()
    table[1] = -127                                        # -127 at indices 0 and 1
    x = np.random.default_rng(2).uniform(-0.9, 0.9, (4, 32)).astype(np.float32)
    x[:, 3] = 1.0                                          # each block's maximum
    d, q = fn(x, table, -1)                                # ggml-ref: the codes of the first fit
    v = np.sort(table)
    order = np.argsort(table, kind="stable")
    for b in range(len(x)):
        idv = np.float32(1) / (np.float32(1.0) / v[0])     # 1 / d0 with d0 = m / v[0]
        y = (idv * x[b]).astype(np.float32)
        assert y[3] == v[0]
        assert q[b].tolist() == [int(order[_best_index_int8(v, yj)]) for yj in y]
    assert (q[:, 3] == 0).all()


@pytest.mark.parametrize("fn", [ggml_search_reference, ggml_search])
@pytest.mark.parametrize("ntry", [7, -1])
def test_a_block_whose_maximum_is_exactly_the_threshold_is_searched(fn, ntry):
    """ggml skips a block when ``amax < GROUP_MAX_EPS`` (1e-15f): one whose maximum is
    float32(1e-15) itself gets a scale, one a float below it stores 0."""
    eps = np.float32(1e-15)
    x = np.zeros((2, 32), np.float32)
    x[0] = np.linspace(-1, 1, 32).astype(np.float32) * eps
    x[1] = x[0] * np.float32(0.999)
    assert np.abs(x[0]).max() == eps
    d, _ = fn(x, TABLE / np.float32(127), ntry)
    assert d[0] != 0 and d[1] == 0


def test_rule_names_and_cost():
    r = get_rule("search:ggml")
    assert isinstance(r, GgmlSearch) and r.name == "search:ggml" and r.signed
    assert get_rule("search:ggml-ref").name == "search:ggml-ref"
    assert {"search:ggml", "search:ggml-ref"} <= set(rule_names())
    assert r.bits_per_weight(32) == 4.5 and r.stored_dtype == "float16"
    with pytest.raises(ValueError, match="not 1-D"):
        r.breakpoints(127)
    with pytest.raises(ValueError, match="from the values"):
        r.encode(np.ones(2, np.float32), 127)
    with pytest.raises(ValueError, match=r"ntry must be 7 \(search:ggml\) or -1"):
        GgmlSearch(3)


def test_bad_tables_and_inputs():
    x = np.ones((2, 32), np.float32)
    with pytest.raises(ValueError, match="negative and positive"):
        ggml_search(x, np.array([0, 1, 2], np.float32))
    with pytest.raises(ValueError, match="2-D"):
        ggml_search(np.ones(32, np.float32), TABLE)
    with pytest.raises(ValueError, match="overflows float16"):
        qb.quantize(np.full(32, 1e7, np.float32), "iq4_nl", 32, scale="search:ggml", qmax=127)
    with pytest.raises(ValueError, match="NaN|Inf|finite"):
        qb.quantize(np.array([np.nan] * 32, np.float32), "iq4_nl", 32, scale="search:ggml")


@pytest.mark.parametrize("backend", ["numpy", "cpu", "gpu-emulated"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("qmax,amp", [(1e-17, 1e-14), (2e11, 2e8), (1e8, 3e10), (1e8, 1e11)])
def test_a_search_float32_cannot_carry_is_refused(backend, mode, qmax, amp):
    """Far from ggml's qmax of 127 the search's float32 sums underflow (d = 0) or overflow
    (d = inf or NaN) while each block's scale, about amax / qmax, is a float16 number: an
    error naming the block, not a block stored as 0 (it would decode to zeros) nor a float16
    overflow the scale does not have."""
    usable_backend(backend)
    x = (np.random.default_rng(4).standard_normal(64) * amp).astype(np.float32)
    ref = (np.abs(x.reshape(2, 32)).max(axis=1) / np.float32(qmax)).astype(np.float16)
    assert np.isfinite(ref).all() and (ref > 0).all()     # the scales float16 holds
    with pytest.raises(ValueError, match="block 0: ggml's search leaves float32's range"):
        qb.quantize(x, "iq4_nl", 32, scale=f"search:{mode}", qmax=qmax, backend=backend)


@pytest.mark.parametrize("backend", ["numpy", "cpu", "gpu-emulated"])
def test_search_sums_beyond_float32_and_dead_blocks(backend):
    """Values far beyond ggml's take the sums to inf - inf = NaN: the error says so, neither
    that a block's maximum is NaN nor by storing a scale of 0.  Blocks below ggml's 1e-15
    store 0 at any qmax."""
    usable_backend(backend)
    big = np.tile(np.float32([3e38, -3e38]), 16)
    with pytest.raises(ValueError, match="block 0: ggml's search leaves float32's range"):
        qb.quantize(big, "iq4_nl", 32, scale="search:ggml", qmax=127, backend=backend)
    # a NaN sum fails S_qq > 0, so d = 0: the block must not be stored as zeros
    big = np.random.default_rng(6).uniform(-1e30, 1e30, 64).astype(np.float32)
    for mode in MODES:
        with pytest.raises(ValueError, match="block 0: ggml's search leaves float32's range"):
            qb.quantize(big, "e2m1", 32, scale=f"search:{mode}", backend=backend)
    dead = np.full(64, 9e-16, np.float32)
    p, st = qb.quantize(dead, "iq4_nl", 32, scale="search:ggml", qmax=1e-17, backend=backend)
    assert (st.absmax == 0).all() and (qb.dequantize(p, st, backend=backend) == 0).all()


def test_the_rules_own_search_refuses_sums_beyond_float32():
    """The host search the derivation runs (``GgmlSearch.search``) keeps the same rule as
    ``quantize``: a block whose sums overflow is an error, not a stored scale of 0 or NaN."""
    big = np.tile(np.float32([3e38, -3e38]), 16).reshape(1, 32)
    for reference in (False, True):
        with pytest.raises(ValueError, match="block 0: ggml's search leaves float32's range"):
            GgmlSearch().search(big, TABLE, reference=reference)
    stored, _ = GgmlSearch().search(np.zeros((1, 32), np.float32), TABLE)
    assert (stored == 0).all()


def test_negative_scales_only_where_the_rule_is_signed():
    x = np.random.default_rng(2).standard_normal(320).astype(np.float32)
    p, st = qb.quantize(x, "iq4_nl", 32, scale="search:ggml", qmax=127)
    assert (st.absmax < 0).any()
    st.validate()
    st.scale_rule = "float16"
    with pytest.raises(ValueError, match="negative"):
        st.validate()


def test_partial_block_pads_with_zeros():
    x = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    p, st = qb.quantize(x, "iq4_nl", 32, scale="search:ggml", qmax=127)
    full = np.zeros(1024, np.float32)
    full[:1000] = x
    d, _ = ggml_search_reference(full.reshape(-1, 32), TABLE)
    assert np.array_equal(st.absmax, d.astype(np.float16))
    assert qb.dequantize(p, st).shape == (1000,)


def test_search_lowers_the_error():
    x = np.random.default_rng(5).standard_normal(32 * 4000).astype(np.float32)
    err = {}
    for rule in ("float16", "search:ggml-ref", "search:ggml"):
        p, st = qb.quantize(x, "iq4_nl", 32, scale=rule, qmax=127)
        err[rule] = float(np.mean((qb.dequantize(p, st) - x) ** 2))
    assert err["search:ggml"] < err["search:ggml-ref"] < err["float16"]


def test_export_header_names_the_search(capsys):
    from quantbook.cli import main

    assert main(["export", "iq4_nl", "--format", "c", "--scale", "search:ggml", "--block-size", "32",
                 "--qmax", "127"]) == 0
    out = capsys.readouterr().out
    assert "scale rule search:ggml" in out and "signed scale" in out and "2-byte scale (float16)" in out


def test_the_compiled_search_is_found_in_numbas_disk_cache_by_the_next_process(tmp_path):
    """The first process compiles the search and caches it; a second loads it (about 0.4 s
    against 2.3 s on the 2-core VM) instead of compiling and caching it once more."""
    pytest.importorskip("numba")
    code = ("import numpy as np; from quantbook.scales.ggml import ggml_search; "
            "ggml_search(np.ones((2, 32), np.float32), np.linspace(-1, 1, 16, dtype=np.float32))")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "NUMBA_DEBUG_CACHE": "1"}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert "data saved" in runs[0]
    assert "data loaded" in runs[1] and "data saved" not in runs[1], runs[1][-2000:]


def test_a_block_whose_scale_rounds_to_float16_zero_stores_zero_not_an_error():
    """Above ggml's 1e-15 but with its sums Σ w·x·q underflowing (x³·qmax below float32's
    smallest subnormal), the search gives d = 0; the block's scale, amax / qmax = 1.1e-14, is
    0 in float16 anyway, so storing 0 is the rule's answer, not an error."""
    assert np.float16(np.float32(1.1e-15) / np.float32(0.1)) == 0
    x = np.tile(np.float32([1.1e-15, -1.1e-15, 5e-16, 0]), 16)
    p, st = qb.quantize(x, "iq4_nl", 32, scale="search:ggml", qmax=0.1)
    assert (st.absmax == 0).all() and (qb.dequantize(p, st) == 0).all()
