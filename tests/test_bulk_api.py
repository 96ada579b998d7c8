"""quantize / dequantize API: argument checks, QuantState validation, the backend registry.

Behaviour shared by every backend is in tests/test_conformance.py.  Expected values here come
from first principles and bitsandbytes' published table, not from the code's earlier output.
"""

import math
import re

import numpy as np
import pytest

import quantbook as qb
from quantbook import Codebook, CodebookError
from quantbook.bulk import BACKENDS, Backend
from quantbook.bulk import format as F
from quantbook.bulk.reference import dequantize_reference, quantize_reference

from checkout import checkout_path


def test_errors_are_clear():
    x = np.ones((4, 64), dtype=np.float32)
    with pytest.raises(ValueError, match="empty"):
        qb.quantize(np.zeros((0, 3), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        qb.quantize(x[:, ::2])
    with pytest.raises(ValueError, match="int32"):
        qb.quantize(np.ones(64, np.int32))
    with pytest.raises(ValueError, match="float64"):
        qb.quantize(np.ones(64))
    for dt in (">f4", ">f2"):   # numba would misread (or fail on) byte-swapped values
        with pytest.raises(ValueError, match="byte order"):
            qb.quantize(np.ones(64, dt))
    for b in (48, 8, 8192, 0, True):
        with pytest.raises(ValueError, match="power of two"):
            qb.quantize(x, block_size=b)
    with pytest.raises(ValueError, match="16 entries needs more than 3 bits"):
        qb.quantize(x, "nf4", bits=3)
    with pytest.raises(ValueError, match="backend"):
        qb.quantize(x, backend="tpu")
    with pytest.raises(ValueError, match="device array"):
        qb.quantize(x, backend="gpu")
    packed, st = qb.quantize(x)
    with pytest.raises(ValueError, match="bytes"):
        qb.dequantize(packed[:-1], st)
    with pytest.raises((KeyError, ValueError), match="no-such-codebook"):
        qb.quantize(x, "no-such-codebook")
    with pytest.raises(ValueError, match=r"np.asarray\(x, dtype=np.float32\) for a list"):
        qb.quantize([0.5, 0.25])   # a list has no astype: the message names a conversion that works
    for flag in ("nested", "allow_nonfinite"):   # "no" is truthy: it must not switch the option on
        with pytest.raises(ValueError, match=f"{flag} must be True or False, got 'no'"):
            qb.quantize(x, **{flag: "no"})
    with pytest.raises(ValueError, match="nested must be True or False, got None"):   # before scale= rewrites it
        qb.quantize(x, nested=None, scale="float32")
    wide = Codebook(levels=np.linspace(-1, 1, 512), bits=9)
    with pytest.raises(ValueError, match="'unnamed' has 9-bit codes: bits must be an integer from 1 to 8"):
        qb.quantize(x, wide)


def test_levels_beyond_the_absmax_range_are_warned_about():
    """Absmax-normalised values lie in [-1, 1]; Max's N(0, 1) quantizer has levels at ±1.51, so
    values above 0.981 of their block's absmax come back as 1.51 times it (a float16 maximum
    becomes inf).  The bytes stay what the codebook says; the user is told."""
    x = np.full(64, 65504.0, np.float16)
    for be in ("numpy", "cpu"):
        with pytest.warns(qb.bulk.CodebookRangeWarning, match=r"'max1960-n4' has levels up to 1\.51"):
            packed, st = qb.quantize(x, "max1960-n4", 64, backend=be)
        with np.errstate(over="ignore"):
            assert np.isinf(qb.dequantize(packed, st, backend=be).astype(np.float32)).all()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("nf4", "fp4", "e2m1", "af4", "iq4_nl", "int4-sym", "nf3"):   # tables within [-1, 1]
            qb.quantize(x, name, 64)
        qb.quantize(x, "max1960-n4", 16, scale="float16")   # a scale rule rescales the table


def test_the_command_line_passes_the_range_warning_on_once(tmp_path, capsys):
    safetensors = pytest.importorskip("safetensors.numpy")
    from quantbook.cli import main

    rng = np.random.default_rng(5)
    path = tmp_path / "w.safetensors"
    safetensors.save_file({k: rng.standard_normal((4, 64)).astype(np.float32) for k in "ab"}, str(path))
    assert main(["evaluate-model", str(path), "--codebooks", "nf4,max1960-n4"]) == 0
    err = capsys.readouterr().err.splitlines()   # two tensors, one line
    assert len(err) == 1 and err[0].startswith("quantbook: warning: codebook 'max1960-n4' has levels up to 1.51")


def test_torch_cpu_tensors_are_read_as_their_numpy_values():
    """A tensor that requires grad is read without its graph, and a bfloat16 one through its
    bits (torch hands numpy no bfloat16): the bytes are those of the same values in numpy."""
    torch = pytest.importorskip("torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    t = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    ref = t.numpy().astype(ml_dtypes.bfloat16)
    for be in ("numpy", "cpu"):
        want, st_want = qb.quantize(ref, "nf4", 64, backend=be)
        got, st = qb.quantize(t.bfloat16(), "nf4", 64, backend=be)
        assert np.array_equal(got, want) and st.dtype == st_want.dtype == np.dtype(ml_dtypes.bfloat16)
        got, _ = qb.quantize(t.clone().requires_grad_(True), "nf4", 64, backend=be)
        assert np.array_equal(got, qb.quantize(t.numpy(), "nf4", 64, backend=be)[0])
    fields = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in st.as_dict().items()}
    fields["absmax"].requires_grad_(True)   # a stored state read back from tensors
    assert np.array_equal(qb.dequantize(got, qb.QuantState.from_dict(fields)), qb.dequantize(got, st))
    pts = np.random.default_rng(0).standard_normal((16, 2)).astype(np.float32)
    idx, vst = qb.bulk.quantize_vq(t.bfloat16(), torch.from_numpy(pts).requires_grad_(True), rotate=None)
    assert np.array_equal(idx, qb.bulk.quantize_vq(ref, pts, rotate=None)[0]) and vst.dtype == ref.dtype


def test_a_non_contiguous_input_is_refused_with_a_copy_that_works_for_it():
    """The copy the error names is made as named and quantized: numpy cannot copy a torch
    bfloat16 tensor (torch hands it no bfloat16), so a tensor is told to copy itself."""
    torch = pytest.importorskip("torch")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    t = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    ref = np.ascontiguousarray(t.numpy().T)
    with pytest.raises(TypeError):   # what the numpy advice did with a bfloat16 tensor
        np.ascontiguousarray(t.bfloat16().T)
    for x, copy, make, want in [(t.numpy().T, "np.ascontiguousarray(x)", np.ascontiguousarray, ref),
                                (t.T, "x.contiguous()", torch.Tensor.contiguous, ref),
                                (t.bfloat16().T, "x.contiguous()", torch.Tensor.contiguous,
                                 ref.astype(ml_dtypes.bfloat16))]:
        with pytest.raises(ValueError, match=r"^x is not C-contiguous \(shape \(32, 64\), strides .*\); pass "
                           + re.escape(copy) + " — quantize does not copy silently$"):
            qb.quantize(x, "nf4", 64)
        assert np.array_equal(qb.quantize(make(x), "nf4", 64)[0], qb.quantize(want, "nf4", 64)[0])


def test_quant_state_dict_roundtrip():
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes")
    x = np.random.default_rng(1).standard_normal((7, 33)).astype(ml_dtypes.bfloat16)
    for nested in (False, True):
        packed, st = qb.quantize(x, "fp4", 32, nested=nested)
        d = st.as_dict()
        assert set(d) >= {"absmax", "quant_map", "blocksize", "dtype", "shape", "quant_type"}
        assert d["dtype"] == "bfloat16" and d["shape"] == (7, 33) and d["quant_type"] == "fp4"
        if nested:
            assert d["nested_blocksize"] == 256 and d["nested_dtype"] == "float32"
            assert d["nested_quant_map"].size == 256 and isinstance(d["nested_offset"], float)
        st2 = qb.QuantState.from_dict(d)
        assert np.array_equal(qb.dequantize(packed, st2).view(np.uint16),
                              qb.dequantize(packed, st).view(np.uint16))
    with pytest.raises(ValueError, match="lacks"):
        qb.QuantState.from_dict({"absmax": [1.0]})
    bad = dict(st.as_dict(), blocksize=0)
    with pytest.raises(ValueError, match="power of two"):
        qb.QuantState.from_dict(bad)


@pytest.mark.parametrize("scale", [None, "nested", "e4m3"])
def test_a_state_survives_pickle_and_copy_and_reads_a_pickle_of_the_plain_field(scale):
    """A host state pickles and copies with its fields; one pickled while ``absmax`` was a plain
    dataclass attribute (its dict holds ``absmax``) reads back as the same state."""
    import copy
    import pickle

    x = np.random.default_rng(2).standard_normal((9, 40)).astype(np.float16)
    packed, st = qb.quantize(x, "e2m1" if scale == "e4m3" else "nf4", 16, scale=scale, backend="numpy")
    want = qb.dequantize(packed, st, backend="numpy")
    old = dict(st.__dict__)
    old["absmax"] = old.pop("_absmax")
    plain = qb.QuantState.__new__(qb.QuantState)
    plain.__setstate__(old)
    for got in (pickle.loads(pickle.dumps(st)), copy.copy(st), copy.deepcopy(st), plain):
        assert np.array_equal(got.absmax, st.absmax) and got.absmax_nbytes == st.absmax.nbytes
        assert np.array_equal(qb.dequantize(packed, got.validate(), backend="numpy").view(np.uint16),
                              want.view(np.uint16))


@pytest.mark.parametrize("field, value, said", [("nested_blocksize", None, "nested_blocksize must be a power of two"),
                                                ("nested_offset", None, "nested_offset must be a finite number"),
                                                ("blocksize", 64.0, "block_size must be an integer"),
                                                ("shape", None, "shape must be a tuple")])
def test_as_dict_of_a_state_put_together_by_hand_names_the_bad_field(field, value, said):
    """``as_dict`` converts the fields (``int(nested_blocksize)``, ...): a state built field by
    field with one left out or of the wrong type is refused in one line naming it."""
    import dataclasses

    x = np.random.default_rng(2).standard_normal(512).astype(np.float32)
    st = dataclasses.replace(qb.quantize(x, "nf4", 64, nested=True)[1], **{field: value})
    with pytest.raises(ValueError, match=said):
        st.as_dict()


def test_a_3_bit_state_keeps_its_width_through_its_dict():
    # bitsandbytes' dict has no "bits" (its codes are 4 bits): the dict of a narrower code must say it, and
    # read back it must give bitsandbytes' values, rebuilt by hand here: code[nearest] * block absmax
    cb = qb.get("max1960-n8")   # 8 levels: 3 bits
    levels = np.asarray(cb.code, np.float64) / np.max(np.abs(cb.code))
    cb = Codebook(levels=levels, bits=3, name="n8-unit")
    x = np.random.default_rng(5).standard_normal(64 * 8).astype(np.float32)
    packed, st = qb.quantize(x, cb, 64)
    d = st.as_dict()
    assert d["bits"] == 3 and F.packed_length(x.size, 3) == packed.size
    st2 = qb.QuantState.from_dict(d)
    assert st2.bits == 3
    blocks = x.reshape(-1, 64).astype(np.float64)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    code = np.asarray(cb.code, np.float32)
    idx = np.argmin(np.abs((blocks / amax)[..., None] - code.astype(np.float64)), axis=-1)
    want = (code[idx] * amax.astype(np.float32)).astype(np.float32).ravel()
    np.testing.assert_array_equal(qb.dequantize(packed, st2), want)
    # the same dict without its "bits" is a 4-bit state, which these bytes are not
    with pytest.raises(ValueError, match="packed"):
        qb.dequantize(packed, qb.QuantState.from_dict({k: v for k, v in d.items() if k != "bits"}))


@pytest.mark.parametrize("rule, decode", [
    ("e8m0:floor", lambda b: np.ldexp(np.float32(1), b.astype(np.int32) - 127)),
    ("float16", lambda h: h.astype(np.float32)),
    ("bfloat16", lambda u: (u.astype(np.uint32) << 16).view(np.float32)),
    ("e4m3", lambda b: b.view(pytest.importorskip("ml_dtypes").float8_e4m3fn).astype(np.float32)),
])
def test_absmax_f32_of_a_scaled_state_decodes_its_stored_scales(rule, decode):
    # the per-block float32 scales of NVFP4/MXFP4-style states, against each stored format decoded by hand
    # (e4m3 with a tensor scale: the stored value times the float32 tensor scale)
    x = np.random.default_rng(6).standard_normal(32 * 40).astype(np.float32) * 3
    packed, st = qb.quantize(x, "e2m1", 32, scale=rule)
    want = decode(np.asarray(st.absmax))
    if st.tensor_scale is not None:
        want = want * np.float32(st.tensor_scale)
    got = st.absmax_f32()
    assert got.dtype == np.float32 and got.shape == (40,)
    np.testing.assert_array_equal(got, want)
    assert f"scale {rule}" in repr(st)


def _edit(st, **fields):
    for k, v in fields.items():
        setattr(st, k, v)
    return st


@pytest.mark.parametrize("make, message", [
    (lambda st, sc: _edit(st, tensor_scale=1.0), "state has a tensor_scale but no scale_rule"),
    (lambda st, sc: _edit(st, nested_offset=0.5), "state has nested fields but no nested_absmax"),
    (lambda st, sc: _edit(sc, nested_offset=0.5), "a scaled-layout state has no nested statistics"),
    (lambda st, sc: _edit(sc, bits=3, code=sc.code[::2].copy()), "the scaled layouts store 4-bit codes, got bits=3"),
    (lambda st, sc: _edit(sc, scale_rule="float32"), "scale_rule 'float32' is not stored in the scaled layout"),
    (lambda st, sc: _edit(sc, tensor_scale=2.0), "scale rule e8m0:floor has no tensor scale, got tensor_scale=2.0"),
])
def test_a_state_whose_fields_contradict_each_other_is_refused(make, message):
    x = np.random.default_rng(7).standard_normal(256).astype(np.float32)
    st = qb.quantize(x, "nf4", 64)[1]
    sc = qb.quantize(x, "e2m1", 32, scale="e8m0")[1]
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")):
        make(st, sc).validate()


def test_a_state_shape_is_a_tuple_as_a_vq_state_shape_is():
    """Both states hold a tuple (as their dicts give and ``from_dict`` makes of a stored list):
    a list put in by hand is refused, as a VQState refused it, not carried into repr and dicts."""
    from quantbook.bulk.vq import quantize_vq

    x = np.random.default_rng(7).standard_normal((4, 64)).astype(np.float32)
    packed, st = qb.quantize(x, "nf4", 64)
    vst = quantize_vq(x, np.random.default_rng(0).standard_normal((16, 2)).astype(np.float32), rotate=None)[1]
    for state, said in [(st, "a tuple of non-negative"), (vst, "a non-empty tuple of positive")]:
        state.shape = [4, 64]
        with pytest.raises(ValueError, match=rf"^shape must be {said} integers, got \[4, 64\]$"):
            state.validate()
    assert qb.QuantState.from_dict(dict(_edit(st, shape=(4, 64)).as_dict(), shape=[4, 64])).shape == (4, 64)


def test_a_scalar_field_is_one_number_rule_and_a_stored_0d_array_is_read_by_from_dict():
    """``nested_offset`` and ``tensor_scale`` take the same numbers (a numpy integer too, as
    ``from_dict`` reads one); a 0-d array is a stored form that ``from_dict`` reads, not a
    field's value, for these as for ``blocksize``."""
    x = np.random.default_rng(7).standard_normal(256).astype(np.float32)
    packed, st = qb.quantize(x, "e2m1", 16, scale="e4m3")
    want = qb.dequantize(packed, _edit(st, tensor_scale=2.0))   # the same scale as a Python float
    assert not np.array_equal(want, qb.dequantize(packed, _edit(st, tensor_scale=4.0)))
    np.testing.assert_array_equal(qb.dequantize(packed, _edit(st, tensor_scale=np.int64(2))), want)
    for stored in (np.int64(2), np.array(2.0, np.float32)):
        back = qb.QuantState.from_dict(dict(_edit(st, tensor_scale=2.0).as_dict(), tensor_scale=stored))
        assert type(back.tensor_scale) in (int, float) and back.tensor_scale == 2
    with pytest.raises(ValueError, match=r"^scale rule e4m3 needs a tensor_scale that is a positive finite number, "
                       r"got array\(2\., dtype=float32\)$"):
        _edit(st, tensor_scale=np.array(2.0, np.float32)).validate()
    _, nst = qb.quantize(x, "nf4", 64, nested=True)
    _edit(nst, nested_offset=np.int64(1)).validate()
    with pytest.raises(ValueError, match=r"^nested_offset must be a finite number, got array\(1\.\)$"):
        _edit(nst, nested_offset=np.array(1.0)).validate()


def test_from_dict_names_what_is_missing_or_not_a_mapping():
    x = np.random.default_rng(8).standard_normal(256).astype(np.float32)
    d = qb.quantize(x, "nf4", 64, nested=True)[1].as_dict()
    with pytest.raises(ValueError, match="^QuantState.from_dict needs a mapping$"):
        qb.QuantState.from_dict(list(d.items()))
    with pytest.raises(ValueError, match="^nested quant state lacks nested_quant_map, nested_offset$"):
        qb.QuantState.from_dict({k: v for k, v in d.items() if k not in ("nested_quant_map", "nested_offset")})
    with pytest.raises(ValueError, match="^unsupported dtype 'int8'; expected one of"):
        qb.QuantState.from_dict(dict(d, dtype="int8"))


@pytest.mark.parametrize("field", ["blocksize", "shape", "bits", "nested_blocksize"])
def test_from_dict_shows_a_bad_integer_field_on_one_clipped_line(field):
    """A long value (an array where an integer belongs) is shown on one line, clipped, as the
    other refused arguments are; its repr spanned many lines and ran as long as the array."""
    x = np.random.default_rng(2).standard_normal(512).astype(np.float32)
    d = qb.quantize(x, "nf4", 64, nested=True)[1].as_dict()
    d[field] = np.linspace(0.5, 9.5, 2000)
    with pytest.raises(ValueError, match="must be (an )?integer") as info:
        qb.QuantState.from_dict(d)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_fp4_is_bitsandbytes_050_table():
    # bitsandbytes 0.50.2 get_4bit_type("fp4"): raw / 12 in float32, +0.0 at index 8
    raw = np.array([0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3], np.float32)
    assert np.array_equal(qb.get("fp4").code_f32.view(np.int32), (raw / np.float32(12)).view(np.int32))
    _, st = qb.quantize(np.ones(16, np.float32), "fp4", 16)
    assert st.quant_type == "fp4" and np.array_equal(st.code, raw / np.float32(12))


def test_fp4_zero_neighbourhood_rule():
    # stable sort puts index 0 before index 8: y in (-0.0026, 0] -> 0, y in (0, 0.0026] -> 8
    enc = F.code_encoder(qb.get("fp4").code_f32)
    y = np.array([-0.002, -0.0, 0.0, 1e-6, 0.002, 0.003], dtype=np.float32)
    assert enc(y).tolist() == [0, 0, 0, 8, 8, 1]


def _state(nested=False, n=300):
    x = np.random.default_rng(8).standard_normal(n).astype(np.float32)
    return qb.quantize(x, "nf4", 16, nested=nested)


@pytest.mark.parametrize("field,value,match", [
    ("absmax", lambda s: np.where(np.arange(s.absmax.size) == 2, np.nan, s.absmax).astype(np.float32),
     "finite non-negative"),
    ("absmax", lambda s: (-s.absmax).astype(np.float32), "finite non-negative"),
    ("absmax", lambda s: np.where(np.arange(s.absmax.size) == s.absmax.size - 1, np.inf, s.absmax).astype(np.float32),
     r"entry 18 is .*inf"),
    ("absmax", lambda s: np.where(np.arange(s.absmax.size) == 7, -1e-30, s.absmax).astype(np.float32),
     "entry 7 is"),
    ("absmax", lambda s: s.absmax[:-1], "entries, expected"),
    ("absmax", lambda s: s.absmax.astype(np.float64), "float32 array"),
    ("bits", lambda s: 9, "bits must be"),
    ("blocksize", lambda s: 24, "power of two"),
    ("code", lambda s: np.full(16, np.nan, np.float32), "finite"),
    ("code", lambda s: None, "code must be a table of float32 levels, got None"),
    # a long table is shown on one line, clipped (its repr spans lines)
    ("code", lambda s: np.arange(16) * 1j,
     r"code must be a table of float32 levels, got array\(\[0\. \+0\.j, [^\n]*\.\.\.$"),
    ("shape", lambda s: 100, "shape must be a tuple of non-negative integers, got 100"),
    ("dtype", lambda s: None, "dtype must be one of float32, float16, bfloat16 in native byte order, got None"),
    ("dtype", lambda s: "float64", "dtype must be one of .*got 'float64'"),
])
def test_dequantize_rejects_a_tampered_state(field, value, match):
    packed, st = _state()
    setattr(st, field, value(st))
    with pytest.raises(ValueError, match=match):
        qb.dequantize(packed, st)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("table", ["float16", "bfloat16", "float64"])
def test_a_state_code_table_of_any_real_float_dtype_decodes_as_its_values(table, backend):
    """A code table held in another float dtype (bfloat16 from ml_dtypes, as float16 and
    float64 were) decodes as the float32 table of its values; the oracle is the state with
    that widened table."""
    if backend == "cpu":
        pytest.importorskip("numba", reason="the cpu backend needs numba")
    dt = np.dtype(table) if table != "bfloat16" else pytest.importorskip("ml_dtypes").bfloat16
    packed, st = _state(nested=True)
    narrow = st.code.astype(dt)
    st.code = narrow
    got = qb.dequantize(packed, st, backend=backend)
    st.code = narrow.astype(np.float32)
    np.testing.assert_array_equal(got, qb.dequantize(packed, st, backend="numpy"))


@pytest.mark.parametrize("cb,scale,B,bad", [
    ("e2m1", "e4m3", 16, 0x7F), ("e2m1", "e4m3", 16, 0xFF), ("e2m1", "e8m0:floor", 32, 0xFF),
    ("e2m1", "float16", 16, 0x7C00), ("e2m1", "float16", 16, 0xBC00),
    ("iq4_nl", "search:ggml", 32, 0x7C00), ("iq4_nl", "search:ggml", 32, 0xFE00)])
@pytest.mark.parametrize("where", [0, 5, -1])
def test_dequantize_rejects_a_damaged_stored_scale(cb, scale, B, bad, where):
    """A stored scale whose bits decode to NaN, Inf or a negative scale (where the rule is
    unsigned), at either end or inside: refused with the block named (the check reads the
    rule's decode table; a signed rule's codes lie on both sides of the sign bit)."""
    x = np.random.default_rng(3).standard_normal(B * 40).astype(np.float32)
    packed, st = qb.quantize(x, cb, B, scale=scale)
    qb.dequantize(packed, st)
    stored = st.absmax.copy()
    stored.view(f"u{stored.itemsize}")[where] = bad
    st.absmax = stored
    with pytest.raises(ValueError, match=rf"absmax entry {where % 40} .*decodes to a .*non-finite"):
        qb.dequantize(packed, st)


def test_a_signed_rules_negative_scales_are_accepted():
    x = np.random.default_rng(5).standard_normal(32 * 40).astype(np.float32)
    packed, st = qb.quantize(x, "iq4_nl", 32, scale="search:ggml")
    assert (st.absmax < 0).any() and (st.absmax > 0).any()
    assert np.isfinite(qb.dequantize(packed, st)).all()


def test_stored_scales_around_a_bad_code_are_accepted():
    """Stored values on both sides of a bad code (e4m3: 0x7F is NaN) but not the code itself:
    decoded, not refused (-0.0 is not negative)."""
    x = np.random.default_rng(4).standard_normal(16 * 8).astype(np.float32)
    packed, st = qb.quantize(x, "e2m1", 16, scale="e4m3")
    stored = st.absmax.copy()
    stored[0] = 0x80                           # -0.0: a zero scale
    st.absmax = stored
    out = qb.dequantize(packed, st)
    assert np.all(out[:16] == 0) and np.isfinite(out).all()


def test_a_bad_entry_of_a_misshapen_scale_array_is_named():
    """A 2-D absmax of the right size: the flat index of the bad entry, not an IndexError."""
    packed, st = _state(n=320)
    a = st.absmax.copy()
    a[7] = np.nan
    st.absmax = a.reshape(4, 5)
    with pytest.raises(ValueError, match="entry 7 is"):
        qb.dequantize(packed, st)


def test_a_negative_zero_scale_is_a_zero_scale():
    packed, st = _state()
    st.absmax = st.absmax.copy()
    st.absmax[4] = -0.0
    out = qb.dequantize(packed, st, backend="numpy").reshape(-1)
    assert np.all(out[4 * st.blocksize:5 * st.blocksize] == 0)


@pytest.mark.filterwarnings("error")   # refused in one line, without an overflow warning
def test_nested_statistics_that_decode_beyond_float32_are_refused():
    """Stored values all finite, yet code * nested_absmax + offset overflows: caught after the
    nested decode, not passed to the kernels as inf."""
    packed, st = _state(nested=True, n=16 * 300)
    st.nested_absmax = np.full_like(st.nested_absmax, np.finfo(np.float32).max)
    st.nested_offset = float(np.finfo(np.float32).max)
    with pytest.raises(ValueError, match="decode to non-finite block scales"):
        qb.dequantize(packed, st)


@pytest.mark.parametrize("field,value,match", [
    ("nested_offset", None, "finite number"),
    ("nested_offset", float("nan"), "finite number"),
    ("absmax", "float", "uint8 array"),
    ("nested_absmax", "short", "entries, expected"),
    ("nested_absmax", "nan", "finite non-negative"),
    ("nested_quant_map", "short", "256 finite"),
    ("nested_blocksize", 8, "nested_blocksize must be a power of two from 16 to 4096"),
    ("nested_blocksize", 1 << 40, "nested_blocksize must be a power of two from 16 to 4096"),
    ("nested_blocksize", 96, "nested_blocksize must be a power of two from 16 to 4096"),
])
def test_dequantize_rejects_a_tampered_nested_state(field, value, match):
    packed, st = _state(nested=True, n=16 * 300)
    if value == "float":
        value = st.absmax.astype(np.float32)
    elif value == "short":
        value = getattr(st, field)[:-1]
    elif value == "nan":
        value = np.full_like(st.nested_absmax, np.nan)
    setattr(st, field, value)
    with pytest.raises(ValueError, match=match):
        qb.dequantize(packed, st)


def test_from_dict_names_a_scale_beyond_float32_without_a_warning():
    # the cast to float32 overflowed first: a RuntimeWarning (an error under -W error) before the
    # refusal, whose message then showed numpy's repr of the value (np.float64(1e+300))
    import warnings

    d = _state(nested=False, n=16 * 300)[1].as_dict()
    wide = np.asarray(d["absmax"], np.float64)
    wide[2] = 1e300
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"^absmax must hold float32 values: its float64 value 1e\+300 \(entry 2"):
            qb.QuantState.from_dict(dict(d, absmax=wide))


def test_from_dict_refuses_what_it_cannot_represent():
    packed, st = _state(nested=True, n=16 * 300)
    d = st.as_dict()
    with pytest.raises(ValueError, match="bits must be"):
        qb.QuantState.from_dict(dict(d, bits=9))
    with pytest.raises(ValueError, match="absmax must hold uint8"):   # float scales as codes
        qb.QuantState.from_dict(dict(d, absmax=st.absmax_f32()))
    with pytest.raises(ValueError, match="finite number"):
        qb.QuantState.from_dict(dict(d, nested_offset=float("inf")))
    assert np.array_equal(qb.dequantize(packed, qb.QuantState.from_dict(d)), qb.dequantize(packed, st))
    # a float64 that is not a float32 was rounded to one in silence; one that is, is taken
    inexact = np.asarray(d["nested_absmax"], np.float64) * (1 + 2**-40)
    with pytest.raises(ValueError, match=r"nested_absmax must hold float32 values: its float64 value .* \(entry 0\)"):
        qb.QuantState.from_dict(dict(d, nested_absmax=inexact))
    wide = dict(d, nested_absmax=np.asarray(d["nested_absmax"], np.float64), quant_map=np.float64(st.code))
    assert np.array_equal(qb.dequantize(packed, qb.QuantState.from_dict(wide)), qb.dequantize(packed, st))
    for key, value in (("blocksize", 64.9), ("bits", 4.5), ("shape", (4800.5,)), ("nested_blocksize", 256.5)):
        with pytest.raises(ValueError, match="must be an integer|must be integers"):   # not cut to 64, 4, ...
            qb.QuantState.from_dict(dict(d, **{key: value}))


@pytest.mark.parametrize("layout", [dict(), dict(nested=True), dict(scale="e4m3"), dict(scale="e8m0"),
                                    dict(scale="bfloat16"), dict(scale="float16")])
def test_a_state_survives_json(layout):
    """A state written as JSON (lists of Python ints and floats) reads back to the same
    dequantized values in every layout: integer stored bytes (uint8 codes, E4M3/E8M0 bytes,
    bfloat16 bits) arrive as int64 and are taken when they fit; ones that do not are refused."""
    import json

    x = np.random.default_rng(1).standard_normal(16 * 300).astype(np.float32)
    packed, st = qb.quantize(x, "e2m1" if "scale" in layout else "nf4", block_size=16, **layout)
    d = json.loads(json.dumps({k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v)
                               for k, v in st.as_dict().items()}))
    back = qb.QuantState.from_dict(d)
    assert np.array_equal(qb.dequantize(packed, back).view(np.uint32), qb.dequantize(packed, st).view(np.uint32))
    if np.asarray(st.absmax).dtype.kind == "u":
        top = np.iinfo(np.asarray(st.absmax).dtype).max
        for bad in (-1, top + 1):
            with pytest.raises(ValueError, match=rf"absmax must hold .* \(0\.\.{top}\)"):
                qb.QuantState.from_dict(dict(d, absmax=[bad] + d["absmax"][1:]))


def test_a_scaled_state_survives_np_savez(tmp_path):
    """np.savez hands scalars back as 0-d arrays: the rule's name among them."""
    x = np.random.default_rng(0).standard_normal(256).astype(np.float32)
    packed, st = qb.quantize(x, "e2m1", block_size=16, scale="e4m3")
    np.savez(tmp_path / "s.npz", **{k: np.asarray(v) for k, v in st.as_dict().items()})
    back = qb.QuantState.from_dict(dict(np.load(tmp_path / "s.npz")))
    assert back.scale_rule == "e4m3" and back.tensor_scale == st.tensor_scale
    assert np.array_equal(qb.dequantize(packed, back), qb.dequantize(packed, st))


def test_codebook_outside_float32_range_is_refused():
    """Levels past float32's range would decode to +-inf in every float32 consumer."""
    with pytest.raises(CodebookError, match="float32's range"):
        Codebook([-1.7e308, 1e308, 1.7e308], bits=2)
    with pytest.raises(CodebookError, match="float32's range"):
        Codebook([-1.0, 0.0, 3.5e38], bits=2)
    Codebook([-3.4e38, 0.0, 3.4e38], bits=2)   # the edge is fine


def test_backends_register_by_subclassing(monkeypatch):
    monkeypatch.setattr("quantbook.bulk.backend.BACKENDS", dict(BACKENDS))
    from quantbook.bulk import backend as B

    class Mine(Backend, name="mine"):
        pass

    assert isinstance(B.BACKENDS["mine"], Mine) and Mine.name == "mine"
    with pytest.raises(ValueError, match="already registered"):
        class Again(Backend, name="mine"):
            pass


class _FakeDevice:
    """Stands in for a CuPy array: has __cuda_array_interface__, lives on the 'device'."""

    def __init__(self, a):
        self.a = np.ascontiguousarray(a)
        self.__cuda_array_interface__ = {"shape": self.a.shape, "typestr": self.a.dtype.str}
        self.shape, self.dtype, self.size = self.a.shape, self.a.dtype, self.a.size

    def get(self):
        return self.a

    def reshape(self, *shape):
        return _FakeDevice(self.a.reshape(*shape))


class _FakeDeviceBackend(Backend):
    """A device backend whose 'device' is the numpy reference behind _FakeDevice arrays."""

    device = True
    auto = True
    name = "fake-device"

    def __init__(self):
        self.calls = []

    def quantize_blocks(self, x, code, bits, block_size):
        self.calls.append("q")
        p, a = quantize_reference(x.get(), code, bits, block_size)
        return _FakeDevice(p), _FakeDevice(a)

    def dequantize_blocks(self, packed, absmax, code, bits, block_size, n, out_dtype):
        self.calls.append("dq")
        assert isinstance(absmax, np.ndarray) and code.size == 16
        return _FakeDevice(dequantize_reference(packed.get(), absmax, code, bits, block_size, n, out_dtype))

    def to_host(self, a):
        return a.get() if isinstance(a, _FakeDevice) else np.asarray(a)

    def from_host(self, a):
        return _FakeDevice(a)


def test_device_dispatch_through_the_registry(monkeypatch):
    """backend='auto' sends device arrays to a registered device backend; host-only backends
    refuse them, and device strides are checked without a copy."""
    fake = _FakeDeviceBackend()
    monkeypatch.setitem(BACKENDS, "gpu", fake)   # stands in for the real GPU backend
    calls = fake.calls
    x = np.random.default_rng(4).standard_normal((5, 40)).astype(np.float16)
    packed, st = qb.quantize(_FakeDevice(x), "nf4", 32, nested=True)
    ref_p, ref_s = qb.quantize(x, "nf4", 32, nested=True)
    assert np.array_equal(packed.get(), ref_p) and np.array_equal(st.absmax, ref_s.absmax)
    assert st.dtype == np.float16 and st.shape == (5, 40)
    with pytest.raises(ValueError, match="uint8"):   # a device array of another dtype
        qb.dequantize(_FakeDevice(packed.get().view(np.int8)), st)
    y = qb.dequantize(packed, st)
    assert calls == ["q", "dq"]
    assert np.array_equal(y.get().view(np.uint16), qb.dequantize(ref_p, ref_s).view(np.uint16))
    with pytest.raises(ValueError, match="device array needs a GPU backend"):
        qb.quantize(_FakeDevice(x), backend="cpu")
    # non-contiguous device arrays are an error too (CAI strides in bytes), never a silent copy
    bad = _FakeDevice(x)
    bad.__cuda_array_interface__ = dict(bad.__cuda_array_interface__, strides=(2, 10))
    with pytest.raises(ValueError, match="C-contiguous"):
        qb.quantize(bad, "nf4", 32)
    ok = _FakeDevice(x[:1])   # a length-1 dimension may carry any stride
    ok.__cuda_array_interface__ = dict(ok.__cuda_array_interface__, strides=(999, 2))
    qb.quantize(ok, "nf4", 32)
    assert calls == ["q", "dq", "q"]


def test_auto_picks_only_backends_that_ask_for_it(monkeypatch):
    """Test-only and reference backends are never chosen by backend='auto'."""
    from quantbook.bulk.api import _pick_backend

    assert _pick_backend("auto", False).name == "cpu"
    monkeypatch.setattr(type(BACKENDS["cpu"]), "unavailable", lambda self: "numba is not installed")
    assert _pick_backend("auto", False).name == "numpy"   # not gpu-emulated, which is registered too


@pytest.mark.parametrize("scale", [None, "float32", "nested"])
def test_qmax_outside_the_scaled_layouts_is_refused_not_ignored(scale):
    """bitsandbytes' layout maps each block to ±1: a qmax there would be silently ignored."""
    x = np.random.default_rng(0).standard_normal(256).astype(np.float32)
    with pytest.raises(ValueError, match="qmax applies only with a rule of the scaled layouts"):
        qb.quantize(x, "nf4", 64, scale=scale, qmax=3.0, backend="numpy")
    qb.quantize(x, "nf4", 64, scale=scale, qmax=6.0, backend="numpy")   # the default, spelled out


def test_nonfinite_error_names_the_first_nonfinite_scale():
    """format.nonfinite_error (an integer maximum of the bits first) against numpy's isfinite,
    over float32's special values: negative and negative-zero scales are finite, so no error."""
    from quantbook.bulk.format import nonfinite_error

    good = np.abs(np.random.default_rng(4).standard_normal(37)).astype(np.float32)
    for v in np.array([0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38, -1.0, np.inf, -np.inf, np.nan, -np.nan],
                      dtype=np.float32):
        arr = good.copy()
        arr[[5, 11]] = v
        err = nonfinite_error(arr, 64, 37 * 64)
        if np.isfinite(v):
            assert err is None, v
        else:
            assert "first in block 5 (elements 320..383 " in str(err), v
    assert nonfinite_error(good[:0], 64, 0) is None


def _sanitized_by_loop(x, block_size):
    """allow_nonfinite's rule, value by value in Python floats: NaN -> 0, +-Inf -> +- the
    largest finite magnitude of the block (0 when it has none)."""
    vals = [float(v) for v in np.asarray(x, np.float32).reshape(-1)]
    out = []
    for b in range(0, len(vals), block_size):
        block = vals[b:b + block_size]
        top = max([abs(v) for v in block if math.isfinite(v)], default=0.0)
        out += [0.0 if math.isnan(v) else math.copysign(top, v) if math.isinf(v) else v for v in block]
    return np.array(out, np.float32).astype(x.dtype)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_sanitize_nonfinite_is_the_documented_rule(dtype):
    """format.sanitize_nonfinite against a loop over the blocks: the specials at the ends of
    the dtype (largest finite, subnormal, -0), a block with no finite value (Inf -> +-0), a
    NaN with its sign bit set, a ragged last block."""
    dt = np.dtype(dtype) if dtype != "bfloat16" else pytest.importorskip("ml_dtypes").bfloat16
    big = float(np.array(np.finfo(np.float32).max if dtype == "float32" else 60000.0, np.float32).astype(dt))
    neg_nan = np.array(-np.nan, dt)
    x = np.array([0.5, np.nan, np.inf, -np.inf, -0.25, -big, 1e-40, -0.0,       # block 0
                  np.inf, -np.inf, np.nan, np.nan, np.inf, np.nan, -np.inf, np.inf,   # no finite
                  3.0, -7.0, np.inf, 0.0, 2.0, -np.inf, 1.0, 6.0,
                  np.inf, -np.inf, -2.0], np.float32).astype(dt)
    x[13] = neg_nan
    got = F.sanitize_nonfinite(x, 8)
    want = _sanitized_by_loop(x, 8)
    assert got.dtype == x.dtype and got.view(np.uint8).tobytes() == want.view(np.uint8).tobytes()
    assert got[8:16].view(np.uint16 if dt != np.float32 else np.uint32).tolist()[:2] == (
        [0, 0x8000] if dt != np.float32 else [0, 0x80000000])               # +0 and -0
    assert float(got[2]) == big and float(got[3]) == -big and float(got[26]) == -2.0


@pytest.mark.parametrize("args", [["--dtype", "float16"], ["--dtype", "bfloat16"], ["--bits", "8"]])
def test_cpu_benchmark_runs_and_checks_bytes(args, capsys, monkeypatch):
    """benchmarks/bench_quantize_cpu.py on a small input: numba against the numpy reference,
    for each input dtype and a width stored a byte a code."""
    import importlib.util

    pytest.importorskip("numba")
    if "bfloat16" in args:
        pytest.importorskip("ml_dtypes")
    path = checkout_path("benchmarks", "bench_quantize_cpu.py")
    monkeypatch.syspath_prepend(str(path.parent))   # its folder's _cli, as `python SCRIPT` finds it
    spec = importlib.util.spec_from_file_location("bench_quantize_cpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--log2n", "12", "--repeat", "1", "--skip-bnb", *args]) == 0
    out = capsys.readouterr().out
    assert "numba vs the numpy reference: IDENTICAL" in out and args[-1] in out


@pytest.mark.parametrize("threads", [0, "2", 2.0, True])
@pytest.mark.parametrize("nested", [False, True])
def test_torch_threads_is_checked_by_name(threads, nested):
    # it was checked only with nested=True, as "threads must ..." from the torch emulation
    x = np.ones(64, np.float32)
    with pytest.raises(ValueError, match=r"^torch_threads must be a positive integer"):
        qb.quantize(x, "nf4", 64, nested=nested, torch_threads=threads)


def test_scaled_bits_error_shows_the_argument_as_given():
    x = np.ones(64, np.float32)
    with pytest.raises(ValueError, match=r"got bits='4'"):   # read "got bits=4", as if 4 were refused
        qb.quantize(x, "e2m1", 16, scale="e4m3", bits="4")


@pytest.mark.parametrize("layout", [dict(), dict(scale="float16")])
def test_from_dict_refuses_integer_codes_as_float_scales(layout):
    """The reverse of float scales read as codes: integer bytes (another layout's uint8 codes or
    E8M0 bytes) given where the layout stores float scales would be read as scales of 0..255."""
    x = np.random.default_rng(2).standard_normal(16 * 20).astype(np.float32)
    _, st = qb.quantize(x, "e2m1" if layout else "nf4", block_size=16, **layout)
    d = st.as_dict()
    with pytest.raises(ValueError, match="absmax must hold float"):
        qb.QuantState.from_dict(dict(d, absmax=np.arange(20, dtype=np.uint8)))


@pytest.mark.parametrize("field", ["absmax", "quant_map"])
@pytest.mark.parametrize("scalar", [1.5, -0.0, np.float64(4.0), np.array(6.0)])
def test_from_dict_reads_a_scalar_array_field_as_one_entry(field, scalar):
    # a scalar is a one-entry array: the entry count is then checked, not an IndexError raised
    x = np.linspace(-1, 1, 256, dtype=np.float32)
    packed, st = qb.quantize(x, "nf4", 64, backend="numpy")
    d = {**st.as_dict(), field: scalar}
    if field == "absmax":
        with pytest.raises(ValueError, match="absmax has 1 entries, expected 4"):
            qb.dequantize(packed, qb.QuantState.from_dict(d), "numpy")
    else:
        assert qb.QuantState.from_dict(d).code.tolist() == [np.float32(float(scalar))]


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("narrow", [np.int16, np.uint16, np.int32])
@pytest.mark.parametrize("nested", [False, True])
def test_a_numpy_integer_block_size_in_a_state_is_its_value(backend, narrow, nested):
    """A state built field by field with numpy integer block sizes decodes as with Python ints:
    numpy 2 kept their width in the counts, so size // np.int16(64) overflowed at 40000 values
    (any size for an unsigned one).  The reference is the format's rule, by hand."""
    if BACKENDS[backend].unavailable():
        pytest.skip(BACKENDS[backend].unavailable())
    n = 40000
    x = np.random.default_rng(11).standard_normal(n).astype(np.float32)
    packed, st = qb.quantize(x, "nf4", 64, nested=nested, backend="numpy")
    if nested:   # float32(float32(map[q] * nested_absmax[i // 256]) + offset)
        s = np.repeat(st.nested_absmax, 256)[: st.absmax.size]
        scales = ((st.nested_quant_map[st.absmax] * s).astype(np.float32) + np.float32(st.nested_offset))
        st.nested_blocksize = narrow(256)
    else:
        scales = st.absmax
    want = np.repeat(scales.astype(np.float32), 64)[:n] * st.code[F.unpack_codes(packed, 4, n)]
    st.blocksize = narrow(64)
    got = qb.dequantize(packed, st, backend=backend)
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.astype(np.float32).view(np.uint32))
    assert type(st.blocksize) is int and (not nested or type(st.nested_blocksize) is int)


def test_a_state_of_more_than_2_31_values_counts_its_blocks_in_python_ints():
    """2**31 + 64 values in blocks of np.int32(64): 2**25 + 1 blocks, and a short absmax is
    named as such (the count overflowed int32 before)."""
    st = qb.QuantState(absmax=np.ones(3, np.float32), shape=(2**25 + 1, 64), dtype=np.dtype(np.float16),
                       blocksize=np.int32(64), code=qb.get("nf4").code_f32, quant_type="nf4")
    assert st.n_blocks == 2**25 + 1
    with pytest.raises(ValueError, match=f"^absmax has 3 entries, expected {2**25 + 1}$"):
        st.validate()
