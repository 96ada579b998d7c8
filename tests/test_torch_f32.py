"""quantbook.numerics.torch_f32 against torch's own results (tests/data/torch_vectors.npz).

The vectors come from real torch (tests/data/make_torch_vectors.py records the version and
the CPU), measured once per ATEN_CPU_CAPABILITY (default, avx2, avx512).  Every comparison is
bit for bit (NaN only has to be NaN).

Which rounding torch.linspace does depends on the capability, and the vectors settle it:
with ``avx2`` (and ``avx512``, which runs the same kernel) each point ``start + step*i`` is
rounded ONCE, as a fused multiply-add; with ``default`` the product and the sum are rounded
separately.  :func:`test_linspace_rounding_variants` shows both the twice-rounded formula
and "fused in float64, then rounded to float32" failing against torch's avx2 results.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import mpmath
import numpy as np
import pytest

from quantbook.numerics import torch_f32 as T

DATA = Path(__file__).parent / "data"
_F = np.float32


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_torch_vectors", DATA / "make_torch_vectors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = _load_generator()
Z = dict(np.load(DATA / "torch_vectors.npz"))
CAPS = [str(c) for c in Z["capabilities"]]


def _same_bits(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=_F), np.asarray(b, dtype=_F)
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


def _torch_linspace(cap: str) -> list[tuple[str, float, float, int, np.ndarray]]:
    """The stored full linspace outputs of capability ``cap``, one entry per case."""
    vals = Z["ls_values"].copy()
    vals[Z[f"ls_diff_index_{cap}"]] = Z[f"ls_diff_values_{cap}"]
    out, off = [], 0
    for label, a, b, n in zip(Z["ls_label"], Z["ls_start"], Z["ls_end"], Z["ls_steps"]):
        m = int(n) if n <= Z["ls_full_limit"] else 0
        out.append((str(label), float(a), float(b), int(n), vals[off:off + m]))
        off += m
    assert off == vals.size
    return out


def _case(cap: str, label: str, a: float, b: float, n: int) -> np.ndarray:
    for lab, a2, b2, n2, v in _torch_linspace(cap):
        if (lab, a2, b2, n2) == (label, a, b, n):
            return v
    raise KeyError((label, a, b, n))


# ----------------------------------------------------------------------------- the vectors
def test_vectors_record_torch_and_cpu():
    meta = json.loads(str(Z["meta_json"]))
    assert meta["torch"] and meta["machine"] == "x86_64"
    assert CAPS == ["default", "avx2", "avx512"]
    assert [str(c) for c in Z["capability_reported"]] == ["DEFAULT", "AVX2", "AVX512"]


def test_nf_cases_are_quantbooks_nf_grids():
    # the generator restates NFk's grid; tie it to the one definition of the offsets
    from quantbook.derive.normal_float import BNB_OFFSET_LITERAL, default_offset

    cases = {lab: (a, b, n) for lab, a, b, n, _ in _torch_linspace("avx2") if lab.startswith("nf")}
    for k in range(2, 9):
        half = 2 ** (k - 1)
        for name, off in (("bnb", float(BNB_OFFSET_LITERAL)), ("default", float(default_offset(k)))):
            assert cases[f"nf{k}-{name}-pos"] == (off, 0.5, half + 1)
            assert cases[f"nf{k}-{name}-neg"] == (off, 0.5, half)


# ------------------------------------------------------------------------------- linspace
@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
def test_linspace_matches_torch(cap):
    cases = _torch_linspace(cap)
    assert len(cases) > 600
    for label, a, b, n, want in cases:
        got = T.linspace(a, b, n, capability=cap)
        assert got.dtype == _F and got.shape == (n,), (label, a, b, n)
        m = want.size
        assert _same_bits(got[:m], want).all(), (cap, label, a, b, n, np.flatnonzero(~_same_bits(got[:m], want)))


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
def test_linspace_large_grids_match_torch(cap):
    # up to 2**25 + 5 points (the float32 index rounds above 2**24): sampled points only
    ci = CAPS.index(cap)
    off = 0
    for label, a, b, n, c in zip(Z["lss_label"], Z["lss_start"], Z["lss_end"], Z["lss_steps"], Z["lss_count"]):
        idx = Z["lss_index"][off:off + c]
        want = Z["lss_values"][ci][off:off + c]
        off += c
        got = T._linspace(_F(a), _F(b), int(n), cap != "default", idx)
        assert _same_bits(got, want).all(), (cap, str(label), n, idx[~_same_bits(got, want)])
    # the public function on one of them (a million points)
    sel = list(Z["lss_label"]).index("large")
    off = int(Z["lss_count"][:sel].sum())
    idx = Z["lss_index"][off:off + Z["lss_count"][sel]]
    full = T.linspace(float(Z["lss_start"][sel]), float(Z["lss_end"][sel]), int(Z["lss_steps"][sel]), capability=cap)
    assert _same_bits(full[idx], Z["lss_values"][ci][off:off + idx.size]).all()


def _twice_rounded(a, b, n):
    """Product rounded to float32, then the sum (the formula normal_float.py used)."""
    s, e = _F(a), _F(b)
    step = _F(_F(e - s) / _F(n - 1))
    i = np.arange(n)
    lo = s + step * i.astype(_F)
    hi = e - step * (n - 1 - i).astype(_F)
    return np.where(i < n // 2, lo, hi).astype(_F)


def _fused_via_float64(a, b, n):
    """``start + step*i`` exactly in float64, then rounded to float32 (the former bulk emulation's)."""
    s, e = _F(a), _F(b)
    step = _F(_F(e - s) / _F(n - 1))
    i = np.arange(n)
    lo = (np.float64(s) + np.float64(step) * i).astype(_F)
    hi = (np.float64(e) - np.float64(step) * (n - 1 - i)).astype(_F)
    return np.where(i < n // 2, lo, hi).astype(_F)


def test_linspace_rounding_variants():
    # torch.linspace(0.1, 1, 9)[3]: avx2 rounds 0.1 + 3*0.1125 once (0.4375), the default
    # build rounds 3*0.1125 first (0.33749998) and then the sum (0.43749997)
    avx2, default = _case("avx2", "dynamic-map", 0.1, 1.0, 9), _case("default", "dynamic-map", 0.1, 1.0, 9)
    assert avx2[3] == _F(0.4375) and default[3] == np.nextafter(_F(0.4375), _F(0))
    assert _twice_rounded(0.1, 1.0, 9)[3] == default[3] != avx2[3]

    # the twice-rounded formula is exactly the default build and misses the avx2 build;
    # the dynamic map's grids n = 9, 17, 33, 65 are among the misses
    missed = set()
    for (label, a, b, n, t_avx2), (*_, t_def) in zip(_torch_linspace("avx2"), _torch_linspace("default")):
        if label == "dynamic-map" or label.startswith("nf"):
            old = _twice_rounded(a, b, n)
            assert _same_bits(old, t_def).all()
            if not _same_bits(old, t_avx2).all():
                missed.add((label, n))
    assert {("dynamic-map", n) for n in (9, 17, 33, 65)} <= missed
    # NF4's grids (9 and 8 points) come out the same both ways; NF5 and up do not
    assert not {m for m in missed if m[0].startswith("nf4")}
    assert ("nf5-bnb-pos", 17) in missed

    # "fused in float64, then float32" double-rounds where the exact point sits within
    # float64 rounding of a float32 tie: 1 + 2**-24 + 2**-54 (torch: 1 + 2**-23; via
    # float64: the tie 1 + 2**-24, rounded to even: 1.0)
    ci = CAPS.index("avx2")
    off = 0
    seen = 0
    for label, a, b, n, c in zip(Z["lss_label"], Z["lss_start"], Z["lss_end"], Z["lss_steps"], Z["lss_count"]):
        idx = Z["lss_index"][off:off + c]
        torch_avx2 = Z["lss_values"][ci][off:off + c]
        torch_def = Z["lss_values"][CAPS.index("default")][off:off + c]
        off += c
        if not str(label).startswith("tie"):
            continue
        seen += 1
        k = idx[3]  # the constructed point
        via64 = _fused_via_float64(a, b, int(n))[k]
        assert torch_avx2[3] != via64 and abs(float(torch_avx2[3]) - 1.0) in (2.0**-23, 2.0**-24)
        assert via64 == _F(1.0) == torch_def[3] == _twice_rounded(a, b, int(n))[k]
        assert T.linspace(float(a), float(b), int(n))[k] == torch_avx2[3]
    assert seen == 2


def test_fma_rounds_once_correctly():
    # against mpmath at float32 precision (ties to even), normal range
    rng = np.random.default_rng(7)
    a = (rng.standard_normal(3000) * 2.0 ** rng.integers(-20, 20, 3000)).astype(_F)
    b = rng.integers(0, 2**24, 3000).astype(_F)
    c = (rng.standard_normal(3000) * 2.0 ** rng.integers(-10, 40, 3000)).astype(_F)
    # plus the two constructed near-tie points (float64-then-float32 gets both wrong)
    a = np.concatenate([a, [_F(16519105 * 2.0**-54), _F(-16519105 * 2.0**-55)]]).astype(_F)
    b = np.concatenate([b, [_F(65), _F(65)]]).astype(_F)
    c = np.concatenate([c, [_F(1), _F(1)]]).astype(_F)
    got = T._fma_f32(a, b, c)
    for x, y, z, g in zip(a, b, c, got):
        with mpmath.workprec(200):
            exact = mpmath.mpf(float(x)) * mpmath.mpf(float(y)) + mpmath.mpf(float(z))
        with mpmath.workprec(24):
            want = float(+exact)  # one rounding to 24 bits, nearest even
        assert g == _F(want), (x, y, z, g, want)
    assert got[-2] == _F(1 + 2.0**-23) and got[-1] == _F(1 - 2.0**-24)


# ----------------------------------------------------------------------------- sum / mean
def _check_sums(c: int, x: np.ndarray) -> None:
    for j, threads in enumerate(Z["threads"]):
        s, m = T.sum(x, int(threads)), T.mean(x, int(threads))
        assert isinstance(s, np.float32) and isinstance(m, np.float32)
        for ci, cap in enumerate(CAPS):  # the same for every capability
            assert _same_bits(s, Z["sum_result"][ci, c, j]), (c, x.size, int(threads), cap, s)
            assert _same_bits(m, Z["mean_result"][ci, c, j]), (c, x.size, int(threads), cap, m)


def test_sum_and_mean_match_torch():
    cases = list(zip(Z["sum_kind"], Z["sum_n"], Z["sum_seed"], Z["sum_sha256"]))
    assert len(cases) > 400 and Z["sum_n"].max() > 2**24
    for c, (kind, n, seed, sha) in enumerate(cases):
        x = GEN.sum_input(str(kind), int(n), int(seed))
        assert GEN.digest(x) == sha, "regenerated input differs from the measured one"
        _check_sums(c, x)


def test_sum_and_mean_edge_inputs_match_torch():
    # -0.0, cancellation, overflow, inf, nan, subnormals, lost increments
    base = Z["sum_n"].size
    off = 0
    for e, count in enumerate(Z["explicit_count"]):
        x = Z["explicit_values"][off:off + count]
        off += count
        _check_sums(base + e, x)


def test_sum_of_no_values():
    assert T.sum(np.zeros(0, _F)) == 0 and np.isnan(T.mean(np.zeros(0, _F)))
    x = GEN.sum_input("signed", 1000, 3).reshape(10, 100)
    assert T.sum(x, 2) == T.sum(x.ravel(), 2)


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call", [
    lambda: T.linspace(0.0, 1.0, -1),
    lambda: T.linspace(0.0, 1.0, 5.0),
    lambda: T.linspace(0.0, 1.0, True),
    lambda: T.linspace(float("inf"), 1.0, 5),
    lambda: T.linspace(0.0, 1e39, 5),
    lambda: T.linspace(0.0, 2**60, 5),
    lambda: T.linspace("0", 1.0, 5),
    lambda: T.linspace(0.0, 1.0, 5, capability="avx3"),
    lambda: T.sum(np.ones(4)),
    lambda: T.sum([1.0, 2.0]),
    lambda: T.sum(np.ones(4, _F), 0),
    lambda: T.mean(np.ones(4, _F), 1.5),
])
def test_bad_input_is_rejected(call):
    with pytest.raises(T.TorchF32Error):
        call()


def test_sum_and_mean_match_the_torch_of_the_bitsandbytes_vectors():
    """The ``torch.sum`` / ``.mean()`` that tests/data/make_bnb_vectors.py recorded beside
    bitsandbytes' bytes (the nested offset is that mean), for 1 to 4 threads."""
    spec = importlib.util.spec_from_file_location("make_bnb_vectors", DATA / "make_bnb_vectors.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    bnb = np.load(DATA / "bnb_vectors.npz")
    assert bnb["sums"].shape[0] == bnb["sums_values"].shape[0] > 100
    for (n, threads), (s, m) in zip(bnb["sums"], bnb["sums_values"]):
        x = gen.sum_input(int(n))
        assert _same_bits(T.sum(x, int(threads)), s), (n, threads)
        assert _same_bits(T.mean(x, int(threads)), m), (n, threads)
