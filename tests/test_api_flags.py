"""The public functions' True/False parameters: a truthy string such as ``"no"`` must not switch
an option on.  Every one refuses what is not a bool (or 0 / 1) with one line naming the parameter,
before any work; the calls are small so that, on code that accepted the string, they finish."""

from __future__ import annotations

import numpy as np
import pytest

import quantbook
from quantbook.derive import Empirical, lloyd, quantile, search_lloyd, solve_search_lloyd
from quantbook.derive.formats import e2m1
from quantbook.derive.vq import derive_vq, solve_vq
from quantbook.export import bnb_quant_type, c_header, c_identifier, vector_c_header
from quantbook.model import evaluate_model
from quantbook.model.evaluate import ErrorSums, ModelReport


def _vector():
    from quantbook.codebooks.vector_registry import get_vector

    return get_vector("higgs-2d-16")


def _report():
    return ModelReport("m.safetensors", 64, False, ["nf4"], {"nf4": ErrorSums()}, [])


_SMALL_SEARCH = {"samples": 4096, "max_iter": 1}
_SMALL_VQ = {"dim": 1, "points": 4, "samples": 1000, "coarse_samples": 1000, "restarts": 1}
_PAIRS = [("nf4", quantbook.get("nf4"))]

CALLS = {
    "quantize": lambda **kw: quantbook.quantize(np.ones(64, np.float32), **kw),
    "c_header": lambda **kw: c_header(quantbook.get("nf4"), **kw),
    "vector_c_header": lambda **kw: vector_c_header(_vector(), **kw),
    "c_identifier": lambda **kw: c_identifier("nf4", **kw),
    "bnb_quant_type": lambda **kw: bnb_quant_type(quantbook.get("nf4"), **kw),
    "search_lloyd": lambda **kw: search_lloyd(**_SMALL_SEARCH, **kw),
    "solve_search_lloyd": lambda **kw: solve_search_lloyd(**_SMALL_SEARCH, **kw),
    "Empirical": lambda **kw: Empirical(np.linspace(-1, 1, 101), **kw),
    "lloyd": lambda **kw: lloyd(2, **kw),
    "quantile": lambda **kw: quantile(2, **kw),
    "e2m1": lambda **kw: e2m1(**kw),
    "derive_vq": lambda **kw: derive_vq(**_SMALL_VQ, **kw),
    "solve_vq": lambda **kw: solve_vq(**_SMALL_VQ, **kw),
    "evaluate_model": lambda **kw: evaluate_model("no-such-model.safetensors", _PAIRS, **kw),
    "ModelReport.to_dict": lambda **kw: _report().to_dict(**kw),
    "ModelReport.format_table": lambda **kw: _report().format_table(**kw),
    "evaluate_quality": lambda **kw: _quality()("no-such-model", _PAIRS, **kw),
    "load_model": lambda **kw: _quality(load=True)("no-such-model", "lm", **kw),
}


def _quality(load=False):
    from quantbook.model import quality

    return quality.load_model if load else quality.evaluate_quality


FLAGS = [("quantize", "nested"), ("quantize", "allow_nonfinite"), ("c_header", "cuda"),
         ("vector_c_header", "cuda"), ("c_identifier", "given"), ("bnb_quant_type", "layout_bnb"),
         ("search_lloyd", "progress"), ("solve_search_lloyd", "progress"), ("Empirical", "standardize"),
         ("lloyd", "symmetric"), ("quantile", "symmetric"), ("e2m1", "normalise"),
         ("derive_vq", "symmetric"), ("derive_vq", "progress"), ("solve_vq", "progress"),
         ("evaluate_model", "nested"), ("evaluate_model", "progress"), ("ModelReport.to_dict", "per_tensor"),
         ("ModelReport.format_table", "per_tensor"), ("evaluate_quality", "nested"),
         ("evaluate_quality", "progress"), ("load_model", "progress")]


@pytest.mark.parametrize("bad", ["no", "yes", None, 2, 0.5])
@pytest.mark.parametrize("call, flag", FLAGS)
def test_a_public_flag_is_true_or_false(call, flag, bad):
    if bad is None and (call, flag) == ("evaluate_model", "progress"):
        return   # None is its documented default (no bar, no callback)
    with pytest.raises(ValueError) as info:
        CALLS[call](**{flag: bad})
    assert str(info.value).startswith(f"{flag} must be True or False")
    assert str(info.value).endswith(f"got {bad!r}")


def test_a_flag_takes_bools_and_the_integers_0_and_1():
    """The accepted values: True/False, numpy bools and 0/1, which mean what they say."""
    nf4 = quantbook.get("nf4")
    for yes in (True, np.True_, 1):
        assert "__constant__" in c_header(nf4, cuda=yes)
    for no in (False, np.False_, 0):
        assert "__constant__" not in c_header(nf4, cuda=no)
    assert bnb_quant_type(nf4, layout_bnb=0) == ("custom-nf4", False)   # not read as the built-in table
    with pytest.raises(ValueError, match="progress must be True or False, None or a callable, got 'x'"):
        evaluate_model("m.safetensors", _PAIRS, progress="x")


def test_a_flag_is_read_as_a_python_bool():
    # what a flag becomes is stored (a recipe's symmetric, written to JSON): 1 and numpy's True are True
    from quantbook.numerics.arguments import check_flag

    for value, want in ((1, True), (0, False), (np.True_, True), (np.False_, False)):
        got = check_flag(value, "flag")
        assert type(got) is bool and got is want


def test_block_distribution_expect_conditional_is_a_flag():
    from quantbook.derive import BlockDistribution

    bd = BlockDistribution(16)
    for bad in ("no", None, 2, 0.5):
        with pytest.raises(ValueError, match="conditional must be True or False"):
            bd.expect(conditional=bad)
    # conditional on the whole support divides by a mass of 1: the plain expectation
    assert bd.expect(lambda y: y * y, conditional=np.True_) == pytest.approx(bd.var() + bd.mean() ** 2)
