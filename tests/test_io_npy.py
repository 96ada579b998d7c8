"""quantbook.io.npy.load_npy: the header is checked before any data is read.

Good files are written by ``numpy.save`` and compared with ``numpy.load``; bad ones are
built from numpy's own header writer (``numpy.lib.format.write_array_header_1_0``).
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

from quantbook.io.npy import NpyError, load_npy


def _header_only(path, shape, descr="<f8", fortran=False, data=b""):
    buf = io.BytesIO()  # the writer puts the magic string first
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": shape})
    path.write_bytes(buf.getvalue() + data)
    return path


@pytest.mark.parametrize("arr", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    np.arange(6, dtype=">i4"),
    np.array(3.5),
    np.zeros((0, 5), dtype=np.float16),
])
def test_reads_what_numpy_saves(tmp_path, arr):
    path = tmp_path / "a.npy"
    np.save(path, arr)
    got = load_npy(path)
    ref = np.load(path)
    assert got.dtype == ref.dtype and got.shape == ref.shape and np.array_equal(got, ref)


def test_version_2_header(tmp_path):
    path = tmp_path / "v2.npy"
    arr = np.arange(5.0)
    with open(path, "wb") as f:
        np.lib.format.write_array(f, arr, version=(2, 0))
    assert np.array_equal(load_npy(path), arr)


def _err(path, **kw) -> str:
    with pytest.raises(NpyError) as info:
        load_npy(path, **kw)
    text = str(info.value)
    assert "\n" not in text and str(path) in text
    return text


def test_npz_renamed_npy(tmp_path):
    path = tmp_path / "renamed.npy"
    with open(path, "wb") as f:
        np.savez(f, x=np.ones(3))
    assert "zip archive" in _err(path)


def test_header_claiming_a_trillion_values_reads_nothing(tmp_path):
    path = _header_only(tmp_path / "huge.npy", (10**12,))
    assert "more than the limit" in _err(path, max_values=10**6)
    assert "1,000,000,000,000 values" in _err(path)  # the default limit too
    assert "truncated" in _err(path, max_values=None)  # no limit: the missing data is found first


def test_other_bad_files(tmp_path):
    (tmp_path / "t.npy").write_text("1 2 3\n", encoding="utf-8")
    assert "not a .npy file" in _err(tmp_path / "t.npy")
    obj = tmp_path / "o.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "Python objects" in _err(obj)
    short = _header_only(tmp_path / "s.npy", (4,), data=b"\0" * 16)
    assert "truncated" in _err(short)
    rec = tmp_path / "r.npy"
    np.save(rec, np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")]))
    assert "structured" in _err(rec)
    bad = tmp_path / "b.npy"
    text = b"{'descr': 1}".ljust(63) + b"\n"
    bad.write_bytes(np.lib.format.magic(1, 0) + len(text).to_bytes(2, "little") + text)
    assert "bad header" in _err(bad)
    with pytest.raises(FileNotFoundError):
        load_npy(tmp_path / "missing.npy")


@pytest.mark.parametrize("shape", [(-1,), (True,), (4, -2), (2.0,)])
def test_dimensions_must_be_integers_of_at_least_zero(tmp_path, shape):
    """numpy's header reader takes (-1,), which would make the limit check pass and read the
    whole file; a bool or float dimension is no dimension either."""
    path = _header_only(tmp_path / "neg.npy", shape, data=b"\0" * 800)
    assert "bad shape" in _err(path, max_values=10) or "shape is not valid" in _err(path, max_values=10)


def test_a_version_2_header_claiming_4_gib_is_refused_before_it_is_read(tmp_path):
    """numpy reads the header whole before checking its length: a version 2 header may claim
    2**32 - 1 bytes, and reading it asked for a 4 GiB buffer (under a memory limit the
    MemoryError read "bad header: )")."""
    import tracemalloc

    path = tmp_path / "h.npy"
    path.write_bytes(np.lib.format.magic(2, 0) + (2**32 - 1).to_bytes(4, "little") + b"{}")
    tracemalloc.start()
    try:
        err = _err(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "claims 4,294,967,295 bytes" in err
    assert peak < 2**26


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_the_header_limit_is_numpy_s_own(tmp_path, version):
    """The longest header read is the one ``numpy.load`` reads by default: a header of that many
    bytes (padded with spaces) loads as numpy loads it, one byte more is refused as numpy refuses it."""
    arr = np.arange(5, dtype=np.float64)
    head = str({"descr": "<f8", "fortran_order": False, "shape": (5,)}).encode()
    width = 2 if version == (1, 0) else 4
    for length in (10000, 10001):
        path = tmp_path / f"h{length}.npy"
        padded = head + b" " * (length - len(head) - 1) + b"\n"
        path.write_bytes(np.lib.format.magic(*version) + length.to_bytes(width, "little") + padded + arr.tobytes())
        try:
            want = np.load(path)
        except ValueError:
            want = None
        if want is None:
            with pytest.raises(NpyError, match="bad header"):
                load_npy(path)
        else:
            assert np.array_equal(load_npy(path), want)
        assert (want is None) == (length > 10000)   # the case is the one meant: numpy's limit lies between


@pytest.mark.parametrize("bad", [3, b"a.npy", None])
def test_a_path_that_is_not_a_str_or_path_is_named(bad):
    # os.stat's TypeError ("expected str, bytes or os.PathLike object, not int"), or pathlib's for bytes
    want = f"path must be a str or os.PathLike naming a .npy file, got {type(bad).__name__}"
    with pytest.raises(TypeError, match=f"^{re.escape(want)}$"):
        load_npy(bad)
