"""What kinds of arrays the public entry points take: each (entry point, kind of input) either
gives what the plain ndarray of the same values gives, bit for bit, or a one-line
ValueError naming the argument.  Never a silent wrong answer: a masked array's mask, a
complex number's imaginary part or a date read as seconds."""

import re

import numpy as np
import pytest

import quantbook as qb
from quantbook import Codebook
from quantbook.bulk import QuantState, VQState, dequantize, dequantize_vq, quantize_vq
from quantbook.derive import Empirical, Normal, parse_source
from quantbook.derive.vq import vector_errors, vq_mse
from quantbook.naming import resolve_vector
from quantbook.model.evaluate import error_sums

torch = pytest.importorskip("torch")
ml_dtypes = pytest.importorskip("ml_dtypes")

_RNG = np.random.default_rng(7)
#: values bfloat16 holds exactly, so that a bfloat16 input's plain equivalent has them too
X = _RNG.standard_normal((4, 64)).astype(ml_dtypes.bfloat16).astype(np.float32)
LEVELS = np.array([-1.0, -0.5, 0.0, 0.25, 1.0])


def _quantize(**kw):
    def run(x):
        packed, state = qb.quantize(x, **kw)
        return packed, state.as_dict(), dequantize(packed, state, backend=kw["backend"])
    return run


_GRID = resolve_vector("higgs-2d-256")
_P, _S = qb.quantize(X, backend="numpy")
_I, _V = quantize_vq(X, "higgs-2d-256", backend="numpy")

#: entry point -> (its family, the plain array it is fed, the call)
ENTRIES = {
    "quantize-numpy": ("float", X, _quantize(backend="numpy")),
    "quantize-cpu": ("float", X, _quantize(backend="cpu")),
    "quantize-nested-cpu": ("float", X, _quantize(backend="cpu", nested=True)),
    "quantize-e8m0-cpu": ("float", X, _quantize(codebook="e2m1", backend="cpu", scale="e8m0", block_size=32)),
    "quantize-e4m3-numpy": ("float", X, _quantize(codebook="e2m1", backend="numpy", scale="e4m3", block_size=16)),
    "quantize-float16-cpu": ("float", X, _quantize(codebook="e2m1", backend="cpu", scale="float16", block_size=32)),
    "quantize-search-cpu": ("float", X,
                            _quantize(codebook="e2m1", backend="cpu", scale="search:4over6", block_size=16)),
    "dequantize-packed-cpu": ("int", _P, lambda p: dequantize(p, _S, backend="cpu")),
    "quantize_vq-numpy": ("float", X, lambda x: quantize_vq(x, "higgs-2d-256", backend="numpy")),
    "quantize_vq-cpu": ("float", X, lambda x: quantize_vq(x, "higgs-2d-256", backend="cpu")),
    "dequantize_vq-indices": ("int", _I, lambda i: dequantize_vq(i, _V, backend="numpy")),
    "vq-points": ("real", _V.points, lambda p: quantize_vq(X, p, backend="numpy")),
    "error_sums-x": ("real", X, lambda x: vars(error_sums(x, X[::-1]))),
    "error_sums-xhat": ("real", X, lambda x: vars(error_sums(X[::-1], x))),
    "Empirical": ("real", X, lambda x: (Empirical(x).digest, Empirical(x).rms)),
    "parse_source": ("real", X, lambda x: (parse_source(x).digest, parse_source(x).rms)),
    "Codebook-levels": ("real", LEVELS, lambda v: Codebook(levels=v, bits=3, name="t")),
    "Codebook.encode": ("real", X, lambda y: qb.get("nf4").encode(y, "float32")),
    "Codebook.decode": ("int", _P & 15, lambda i: qb.get("nf4").decode(i)),
    "QuantState.from_dict-absmax": ("real", _S.absmax, lambda a: QuantState.from_dict({**_S.as_dict(), "absmax": a})),
    "VQState.from_dict-points": ("real", _V.points, lambda p: VQState.from_dict({**_V.to_dict(), "points": p})),
    "VectorCodebook.nearest": ("real", X.reshape(-1, 2), lambda v: _GRID.nearest(v)),
    "VectorCodebook.decode": ("int", _I, lambda i: _GRID.decode(i)),
    "vq_mse-x": ("real", X.reshape(-1, 2), lambda v: vq_mse(_GRID.points, v)),
    "vq_mse-points": ("real", _GRID.points.copy(), lambda p: vq_mse(p, X.reshape(-1, 2))),
    "vector_errors-x": ("real", X.reshape(-1, 2), lambda v: vector_errors(_GRID.points, v)),
}


class _Sub(np.ndarray):
    """A subclass that adds nothing: it must work as an ndarray does."""


def _masked(a):
    mask = np.zeros(a.shape, bool)
    mask.flat[3] = True
    return np.ma.masked_array(a, mask=mask)


def _read_only(a):
    a = a.copy()
    a.setflags(write=False)
    return a


def _f8(a):
    return np.asarray(a).astype(ml_dtypes.float8_e4m3fn)


def _memmap(a, tmp_path):
    m = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=a.dtype, shape=a.shape)
    m[...] = a
    return m


#: kind -> (make it from the plain array, the plain array it stands for (None: that one), families)
KINDS = {
    "masked, nothing masked": (lambda a, _: np.ma.masked_array(a, mask=np.zeros(a.shape, bool)), None,
                               "float int real"),
    "masked, one entry masked": (lambda a, _: _masked(a), None, "float int real"),
    "np.matrix": (lambda a, _: np.asmatrix(a), lambda a: np.asarray(np.asmatrix(a)), "float int"),
    "trivial subclass": (lambda a, _: a.view(_Sub), None, "float int real"),
    "memmap": (_memmap, None, "float int real"),
    "read-only": (lambda a, _: _read_only(a), None, "float int real"),
    "torch, requires grad": (lambda a, _: torch.from_numpy(a.copy()).requires_grad_(), None, "float real"),
    "torch bfloat16": (lambda a, _: torch.from_numpy(np.asarray(a, np.float32)).bfloat16(),
                       lambda a: a.astype(ml_dtypes.bfloat16), "float real"),
    "torch float8": (lambda a, _: torch.from_numpy(_f8(a).view(np.uint8)).view(torch.float8_e4m3fn), _f8,
                     "float real"),
    "big-endian": (lambda a, _: a.astype(a.dtype.newbyteorder(">")), None, "float real"),
    "complex": (lambda a, _: a.astype(np.complex64), None, "float int real"),
    "datetime": (lambda a, _: a.astype(np.int64).astype("datetime64[s]"), None, "float int real"),
    "bool": (lambda a, _: a > 0, None, "float int real"),
    "ragged list": (lambda a, _: [np.asarray(a).ravel().tolist(), [0]], None, "float int real"),
}

#: what a kind of input gives where it is not the plain array's result: (family, kind) -> message
ERRORS = {
    ("*", "masked, one entry masked"): r"is a masked array with 1 masked entry",
    ("*", "ragged list"): r"^\w+ cannot be read as an array \(",
    ("float", "big-endian"): r"x has non-native byte order",
    ("float", "complex"): r"x must hold float32, float16, bfloat16 values, got dtype complex64",
    ("float", "datetime"): r"x must hold float32, float16, bfloat16 values, got dtype datetime64",
    ("float", "bool"): r"x must hold float32, float16, bfloat16 values, got dtype bool",
    ("int", "complex"): r"(packed must be a uint8 array|integer)",
    ("int", "datetime"): r"(packed must be a uint8 array|integer)",
    ("int", "bool"): r"(packed must be a uint8 array|integer|unsupported operand)",
    ("real", "complex"): r"(real numbers|numbers, got|float64 values|must hold float|table of numbers)",
    ("real", "datetime"): r"(real numbers|numbers, got|float64 values|must hold float|table of numbers)",
    ("real", "bool"): r"(real numbers|numbers, got|float64 values|must hold float|table of numbers)",
}
#: the exceptions to a family's rule
ERRORS_BY_ENTRY = {
    # a masked argument is named: the packed bytes, the indices, the sample, the table
    ("dequantize-packed-cpu", "masked, one entry masked"): r"packed is a masked array",
    ("dequantize_vq-indices", "masked, one entry masked"): r"indices is a masked array",
    ("Empirical", "masked, one entry masked"): r"sample is a masked array",
    ("parse_source", "masked, one entry masked"): r"sample is a masked array",
    ("error_sums-xhat", "masked, one entry masked"): r"xhat is a masked array",
    ("vq-points", "masked, one entry masked"): r"vq_codebook is a masked array",
    ("parse_source", "ragged list"): r"a source must be a name or a file",   # a list is not a sample
    ("Codebook-levels", "ragged list"): r"^levels must be a sequence of numbers",
    ("Codebook-levels", "masked, one entry masked"): r"levels is a masked array",
    ("Codebook.encode", "masked, one entry masked"): r"y is a masked array",
    ("Codebook.decode", "masked, one entry masked"): r"indices is a masked array",
    ("QuantState.from_dict-absmax", "masked, one entry masked"): r"absmax is a masked array",
    ("VQState.from_dict-points", "masked, one entry masked"): r"points is a masked array",
    ("VectorCodebook.nearest", "masked, one entry masked"): r"v is a masked array",
    ("VectorCodebook.decode", "masked, one entry masked"): r"idx is a masked array",
    ("vq_mse-x", "masked, one entry masked"): r"x is a masked array",
    ("vector_errors-x", "masked, one entry masked"): r"x is a masked array",
    ("vq_mse-points", "masked, one entry masked"): r"points is a masked array",
    ("quantize-numpy", "masked, one entry masked"): r"x is a masked array",
    # quantize_vq converts every input to float32 (a copy): byte order is no reason to refuse
    ("quantize_vq-numpy", "big-endian"): None,
    ("quantize_vq-cpu", "big-endian"): None,
}


def _canon(v):
    """A result as comparable plain data: arrays by type, dtype, shape and bytes."""
    if isinstance(v, (tuple, list)):
        return [_canon(e) for e in v]
    if isinstance(v, dict):
        return {k: _canon(e) for k, e in v.items()}
    if isinstance(v, QuantState):
        return _canon(v.as_dict())
    if isinstance(v, VQState):
        return _canon(v.to_dict())
    if isinstance(v, Codebook):
        return _canon([v.levels, v.code, v.bits])
    if isinstance(v, np.ndarray):
        return (type(v).__name__, v.dtype.str, v.shape, v.tobytes())
    return repr(v)


def _outcome(call, x):
    try:
        return "result", _canon(call(x))
    except ValueError as exc:
        return "error", str(exc)


def _expected_error(entry, family, kind):
    if (entry, kind) in ERRORS_BY_ENTRY:
        return ERRORS_BY_ENTRY[entry, kind]
    return ERRORS.get((family, kind), ERRORS.get(("*", kind)))


CASES = [(e, k) for e, (fam, _, _) in ENTRIES.items() for k, (_, _, fams) in KINDS.items()
         if fam in fams.split()]


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("entry, kind", CASES, ids=[f"{e}|{k}" for e, k in CASES])
def test_an_input_works_as_its_plain_array_or_is_refused_in_one_line(entry, kind, tmp_path):
    family, plain, call = ENTRIES[entry]
    make, equivalent, _ = KINDS[kind]
    x = make(plain, tmp_path)
    want_error = _expected_error(entry, family, kind)
    if want_error is None:   # the plain array's result, or its one-line error
        assert _outcome(call, x) == _outcome(call, plain if equivalent is None else equivalent(plain))
    else:
        with pytest.raises(ValueError) as info:
            call(x)
        message = str(info.value)
        assert re.search(want_error, message), message
        assert "\n" not in message


def test_the_mask_is_not_read_through_by_the_numpy_reference():
    # the numpy backend would quantize the hidden values as if no mask were there
    x = np.ma.masked_array(np.ones(64, np.float32), mask=np.arange(64) == 5)
    with pytest.raises(ValueError, match=r"x is a masked array with 1 masked entry.*x\.filled"):
        qb.quantize(x, backend="numpy")


def test_a_torch_view_with_the_negative_bit_is_read_as_its_values():
    # torch's lazy negation (the imaginary part of a conjugate) cannot go to numpy as it is
    z = torch.tensor([1 + 2j, 3 - 4j] * 32, dtype=torch.complex64)
    view = z.conj().imag
    assert view.is_neg()
    want = np.asarray([-2.0, 4.0] * 32, np.float32)
    assert _canon(qb.quantize(view, backend="numpy")[0]) == _canon(qb.quantize(want, backend="numpy")[0])


def _mask_first(a):
    return np.ma.masked_array(a, mask=np.arange(a.size).reshape(a.shape) == 0)


@pytest.mark.parametrize("field", ["absmax", "nested_absmax", "vq scales", "vq points"])
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_a_state_with_a_masked_field_is_refused(field, backend):
    # a state built by hand: every decode would read the hidden value of the masked entry
    x = np.random.default_rng(3).standard_normal((4, 256)).astype(np.float32)
    if field.startswith("vq"):
        idx, st = quantize_vq(x, "higgs-2d-256", backend=backend)
        name = field.split()[1]
        setattr(st, name, _mask_first(getattr(st, name)))
        with pytest.raises(ValueError, match=f"{name} is a masked array with 1 masked entry"):
            dequantize_vq(idx, st, backend=backend)
        return
    packed, st = qb.quantize(x, backend=backend, nested=field == "nested_absmax")
    setattr(st, field, _mask_first(getattr(st, field)))
    with pytest.raises(ValueError, match=f"{field} is a masked array with 1 masked entry"):
        dequantize(packed, st, backend=backend)


def test_a_list_is_not_a_source_and_the_error_stays_short():
    # a list is neither a spelling nor an array; its repr (a million numbers) is not the message
    with pytest.raises(ValueError, match=r"^a source must be a name or a file, got \[0\.5, 0\.5.*\.\.\.$") as info:
        parse_source([0.5] * 100_000)
    assert len(str(info.value)) < 160


@pytest.mark.parametrize("method", ["pdf", "cdf", "sf", "logpdf"])
def test_a_law_reads_ml_dtypes_floats_as_scipy_does(method):
    # scipy.stats widens a bfloat16 array to float64; the laws here follow it
    import scipy.stats

    x = np.linspace(-3, 3, 101).astype(ml_dtypes.bfloat16)
    got = getattr(Normal(), method)(x)
    want = getattr(scipy.stats.norm, method)(x.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-14)


@pytest.mark.parametrize("bad", [np.linspace(-3, 3, 1000).astype(np.complex128), np.zeros(500, "datetime64[s]")])
def test_a_law_names_a_bad_array_by_its_dtype_on_one_line(bad):
    with pytest.raises(ValueError, match=r"^x must be real numbers, got an array of (complex128|datetime64\[s\])$"):
        Normal().pdf(bad)


def test_error_sums_refuse_an_xhat_of_another_shape():
    # a transpose has the size of x but pairs each value with another's estimate
    with pytest.raises(ValueError, match=r"x and xhat differ in shape: \(4, 64\) and \(64, 4\)"):
        error_sums(X, X.T.copy())


@pytest.mark.parametrize("make", [lambda: torch.randn(4, 64).to_sparse(), lambda: torch.empty(4, 64, device="meta")],
                         ids=["sparse", "meta"])
def test_a_torch_tensor_numpy_cannot_read_is_named(make):
    with pytest.raises(ValueError, match=r"^x is a torch tensor that numpy cannot read: "):
        qb.quantize(make(), backend="numpy")


def test_error_sums_name_the_dtypes_they_take():
    # longdouble is a float too: the message says which floats
    with pytest.raises(ValueError, match=r"^error sums need float32, float16, bfloat16 or float64 values, got dtype "
                                         r"float(96|128)$"):
        error_sums(X.astype(np.longdouble), X)


def test_what_counts_as_a_real_dtype():
    # ml_dtypes' types are numbers of numpy's kinds; raw bytes, records and bool are not
    from quantbook.numerics.reals import real_kind

    for dt, kind in [(ml_dtypes.bfloat16, "f"), (ml_dtypes.float8_e4m3fn, "f"), (ml_dtypes.int4, "i"),
                     (ml_dtypes.uint4, "u"), (np.float16, "f"), (np.int8, "i"), (np.uint64, "u"), (np.dtype("V4"), ""),
                     (np.dtype([("a", np.float32)]), ""), (np.dtype((np.void, 2)), ""), (bool, ""),
                     (np.complex64, "")]:
        assert real_kind(dt) == kind, dt
    with pytest.raises(ValueError, match=r"must be real numbers, got dtype \|V4"):
        Empirical(np.zeros(8, "V4"))


def test_a_states_float_field_reads_ml_dtypes_as_numpys():
    # an int4 array is integers, as an int8 one: not float32 scales; a bfloat16 one is floats,
    # each a float32, as a float16 one
    d = _S.as_dict()
    for ints in (np.int8, ml_dtypes.int4):
        with pytest.raises(ValueError, match="absmax must hold float32 values"):
            QuantState.from_dict({**d, "absmax": np.ones(np.size(d["absmax"]), ints)})
    scales = np.linspace(0.5, 2.0, np.size(d["absmax"])).astype(ml_dtypes.bfloat16)
    for floats in (np.float16, ml_dtypes.bfloat16):
        got = QuantState.from_dict({**d, "absmax": scales.astype(floats)}).absmax
        assert got.dtype == np.float32 and np.array_equal(got, scales.astype(np.float32))


def test_a_law_shows_a_long_bad_list_on_one_short_line():
    with pytest.raises(ValueError, match=r"^x must be real numbers, got \['a', 'a'.{60,}\.\.\.$") as info:
        Normal().pdf(["a"] * 100_000)
    assert len(str(info.value)) < 160
    with pytest.raises(ValueError, match=r"^x must be real numbers in an array of one shape, got \[\[1\.0, .*\.\.\.$"):
        Normal().pdf([[1.0] * 100_000, [2.0]])   # ragged


def test_a_strided_torch_bfloat16_tensor_is_read_as_its_values():
    # a transpose: its bits are read in the tensor's own strides
    t = torch.from_numpy(X.T.copy()).to(torch.bfloat16).T
    assert not t.is_contiguous()
    got = error_sums(t, X)
    assert got.sse == 0.0 and got.sx2 == error_sums(X, X).sx2


def test_a_law_reads_bool_as_scipy_does():
    import scipy.stats

    x = np.array([True, False, True])
    np.testing.assert_allclose(Normal().pdf(x), scipy.stats.norm.pdf(x), rtol=1e-14)


def test_a_table_without_a_name_is_custom():
    # a torch tensor has a name attribute, None
    pts = np.asarray(_V.points)
    for table in (pts, torch.from_numpy(pts.copy())):
        assert quantize_vq(X, table, backend="numpy")[1].codebook == "custom"


def test_each_refusal_is_its_modules_error():
    """A refused array (masked entry, complex) is the error class the entry point raises for
    every other bad input, so a caller catching CodebookError or SourceError catches it."""
    from quantbook.codebooks.codebook import CodebookError
    from quantbook.codebooks.vector import VectorCodebookError
    from quantbook.derive.sources import Empirical, SourceError
    from quantbook.naming import resolve_vector

    masked = np.ma.array([[0.5, 0.25]], mask=[[1, 0]])
    grid = resolve_vector("higgs-2d-256")
    cases = [(lambda a: qb.get("nf4").encode(a), CodebookError), (lambda a: qb.get("nf4").decode(a), CodebookError),
             (grid.nearest, VectorCodebookError), (grid.decode, VectorCodebookError),
             (Empirical, SourceError)]
    for call, error in cases:
        for bad in (masked.astype(np.int64) if call in (cases[1][0], grid.decode) else masked,
                    np.array([[1 + 2j, 3.0]])):
            with pytest.raises(error):
                call(bad)
