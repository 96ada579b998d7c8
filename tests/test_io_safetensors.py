"""quantbook.io.safetensors: one header parse per file, hostile headers, raw dtypes.

Files are written either by the ``safetensors`` package itself or byte by byte from the
format description (8-byte little-endian header length, JSON header, data), so the reader
is checked against an independent writer.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import quantbook.io.safetensors as st
from quantbook.cli import main
from quantbook.codebooks.registry import REGISTRY


@pytest.fixture
def safetensors_numpy():
    """The safetensors package, the independent writer; the raw-byte tests do without it."""
    return pytest.importorskip("safetensors.numpy")


def _raw(path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> Path:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h) if length is None else length) + h + data)
    return path


@pytest.fixture
def many(tmp_path, safetensors_numpy):
    rng = np.random.default_rng(11)
    tensors = {f"t{i:03d}": rng.standard_normal((2, 32)).astype(np.float32) for i in range(60)}
    path = tmp_path / "many.safetensors"
    safetensors_numpy.save_file(tensors, str(path))
    return path, tensors


@pytest.fixture
def count_parses(monkeypatch):
    calls = []
    real = st._parse_header

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(st, "_parse_header", counting)
    return calls


# ------------------------------------------------------------------ linear in the tensor count
def test_reading_every_tensor_parses_the_header_once(many, count_parses):
    """Re-parsing the header for each tensor made whole-file reads quadratic in the number of
    tensors; counting parses catches that without timing anything."""
    path, tensors = many
    got = dict((info.name, x) for info, x in st.iter_tensors(path))
    assert len(count_parses) == 1
    assert all(np.array_equal(got[k], v) for k, v in tensors.items())
    count_parses.clear()
    st.sample_weights(path, max_samples=None, standardize="row")
    assert len(count_parses) == 1
    count_parses.clear()
    st.sample_weights(path, max_samples=500, standardize="tensor")  # the subsampling branch
    assert len(count_parses) == 1


def test_evaluate_model_and_the_source_parse_the_header_once(many, count_parses):
    from quantbook.derive.model_source import safetensors_source
    from quantbook.model import evaluate_model

    path, tensors = many
    rep = evaluate_model(str(path), [("nf4", REGISTRY["nf4"].codebook)], backend="numpy")
    assert len(rep.tensors) == len(tensors) and len(count_parses) == 1
    count_parses.clear()
    safetensors_source(str(path), "t0*")
    assert len(count_parses) == 1


def test_an_open_file_is_reused(many, count_parses):
    path, tensors = many
    f = st.open_safetensors(path)
    for name in tensors:
        st.read_tensor(f, name)
    assert st.list_tensors(f, "t00*") == [st.TensorInfo(f"t00{i}", "F32", (2, 32)) for i in range(10)]
    assert len(count_parses) == 1


# ------------------------------------------------------------------------------- dtypes
def test_bfloat16_and_integer_tensors_read_from_raw_bytes(tmp_path):
    """bf16 is the top half of a float32: the reference is ``bits << 16`` viewed as float32."""
    pytest.importorskip("ml_dtypes")
    f32 = np.random.default_rng(5).standard_normal(12).astype(np.float32)
    bits = (f32.view(np.uint32) >> 16).astype("<u2")
    ids = np.arange(5, dtype="<i8")
    header = {"__metadata__": {"format": "pt"},
              "w": {"dtype": "BF16", "shape": [3, 4], "data_offsets": [0, 24]},
              "ids": {"dtype": "I64", "shape": [5], "data_offsets": [24, 64]}}
    path = _raw(tmp_path / "bf.safetensors", header, bits.tobytes() + ids.tobytes())
    f = st.SafetensorsFile(path)
    assert f.metadata == {"format": "pt"}
    w = f.read("w")
    assert str(w.dtype) == "bfloat16" and w.shape == (3, 4)
    ref = (bits.astype(np.uint32) << 16).view(np.float32).reshape(3, 4)
    assert np.array_equal(w.astype(np.float32), ref)
    assert np.array_equal(f.read("ids"), ids)
    assert [i.name for i in f.tensors()] == ["w"] and len(f.tensors(floating_only=False)) == 2


# ----------------------------------------------------------------------- hostile headers
@pytest.mark.parametrize("header, data, length, msg", [
    (b'{"a":' * 200_000, b"", None, "nested too deeply"),
    (b"[" * 200_000, b"", None, "nested too deeply"),
    (b"{}", b"", 2**63, "exceeds the limit"),
    (b"{}", b"", 500, "exceeds the file"),
    (b'{"w": {"dtype": "F32", "shape": [1' + b"0" * 5000 + b'], "data_offsets": [0, 4]}}', b"", None, "bad header"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 2**70]}}, b"\0" * 4, None, "bad or truncated"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}, b"\0" * 4, None, "bad or truncated"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4, None, "bad or truncated"),
    ({"w": {"dtype": "F32", "shape": [0, 2**62, 2**62], "data_offsets": [0, 0]}}, b"", None, "bad or truncated"),
    ({"w": {"dtype": "F32", "shape": [1] * 40, "data_offsets": [0, 4]}}, b"\0" * 4, None, "bad or truncated"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, None, "expected 8"),
    ([1, 2], b"", None, "not a JSON object"),
])
def test_hostile_headers_are_one_line_errors(tmp_path, capsys, header, data, length, msg):
    path = _raw(tmp_path / "h.safetensors", header, data, length)
    with pytest.raises(st.SafetensorsError) as info:
        st.list_tensors(path)
    text = str(info.value)
    assert msg in text and "\n" not in text and "h.safetensors" in text, text
    assert main(["evaluate-model", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("quantbook: error:") and err.count("\n") == 1, err


def test_empty_tensor_with_a_zero_dimension_reads(tmp_path):
    path = _raw(tmp_path / "e.safetensors", {"e": {"dtype": "F16", "shape": [0, 7], "data_offsets": [0, 0]}})
    assert st.read_tensor(path, "e").shape == (0, 7)


def test_unknown_dtype_is_listed_but_not_read(tmp_path):
    path = _raw(tmp_path / "u.safetensors", {"q": {"dtype": "F4_E2M1", "shape": [4], "data_offsets": [0, 2]}},
                b"\0\0")
    assert [i.dtype for i in st.list_tensors(path, floating_only=False)] == ["F4_E2M1"]
    with pytest.raises(st.SafetensorsError, match="cannot be read"):
        st.read_tensor(path, "q")


def test_file_shrunk_after_opening_is_an_error(tmp_path, safetensors_numpy):
    x = np.arange(8, dtype=np.float32)
    path = tmp_path / "s.safetensors"
    safetensors_numpy.save_file({"x": x}, str(path))
    f = st.open_safetensors(path)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(st.SafetensorsError, match="truncated"):
        f.read("x")


def test_tensor_patterns():
    """None or * is every tensor; a spelling without any pattern is an error, not everything."""
    assert st.split_globs(None) is None and st.split_globs("a*, *") is None
    assert st.split_globs(" a*, ,b ") == ["a*", "b"]
    for empty in ("", ",", " , "):
        with pytest.raises(ValueError, match="no tensor name pattern"):
            st.split_globs(empty)


@pytest.mark.parametrize("bad", [1.5, 2.5, 1, True, "100"])
def test_sample_weights_max_samples_is_an_integer(tmp_path, bad):
    """1.5 was "at least 2", 2.5 drew a sample of floats' rounding; checked before the file is read."""
    header = {"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}
    path = _raw(tmp_path / "w.safetensors", header, np.arange(8, dtype="<f4").tobytes())
    with pytest.raises(ValueError, match=r"^max_samples must be an integer >= 2 or None, got "):
        st.sample_weights(path, max_samples=bad)
    with pytest.raises(ValueError, match="max_samples must be an integer"):
        st.sample_weights(tmp_path / "missing.safetensors", max_samples=bad)
    assert st.sample_weights(path, max_samples=np.int64(3)).size == 3


def _one_tensor(tmp_path):
    data = np.linspace(-1, 1, 64, dtype=np.float32)
    header = {"w": {"dtype": "F32", "shape": [8, 8], "data_offsets": [0, data.nbytes]}}
    return _raw(tmp_path / "one.safetensors", header, data.tobytes()), data


@pytest.mark.parametrize("bad", [b"w*", [1], np.array(["w"]), 5, ["w", None]])
def test_globs_are_a_str_or_a_sequence_of_str(tmp_path, bad):
    path, _ = _one_tensor(tmp_path)
    with pytest.raises(ValueError, match="globs must be a str such as 'a\\*,b\\*' or a sequence of str"):
        st.list_tensors(path, bad)
    assert [t.name for t in st.list_tensors(path, ("w",))] == ["w"]


@pytest.mark.parametrize("bad", ["1", None, 1.5, True, -1, [1, 2]])
def test_sample_weights_checks_its_seed_even_when_no_draw_is_made(tmp_path, bad):
    path, data = _one_tensor(tmp_path)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        st.sample_weights(path, seed=bad)
    assert np.array_equal(st.sample_weights(path, seed=np.int64(3)), data.astype(np.float64))


class _BytesPath:
    def __fspath__(self):
        return b"one.safetensors"


@pytest.mark.parametrize("reader", ["SafetensorsFile", "open_safetensors", "list_tensors", "read_tensor",
                                    "iter_tensors", "sample_weights"])
@pytest.mark.parametrize("bad", [3, b"one.safetensors", ["one.safetensors"], None, _BytesPath()])
def test_every_reader_names_its_path_argument(tmp_path, reader, bad):
    # pathlib's TypeError ("argument should be a str or an os.PathLike object where __fspath__ returns a str,
    # not 'int'") named neither the argument nor the file it should name
    path, data = _one_tensor(tmp_path)
    call = {"read_tensor": lambda p: st.read_tensor(p, "w")}.get(reader, getattr(st, reader))
    with pytest.raises(TypeError, match=f"^path must be a str or os.PathLike naming a safetensors file, "
                                        f"got {type(bad).__name__}$"):
        call(bad)
    for good in (path, str(path)):   # a Path and a str still read
        call(good)
        assert np.array_equal(st.read_tensor(good, "w"), data.reshape(8, 8))
