"""Every file and stored object that quantbook writes and reads back says its format's version
(quantbook/io/versions.py; docs/json.md, "Format versions"): written now, it carries the version
docs/json.md states; without the key it reads as version 1; a later version, or a value that is
no version, is refused in one line, by the API and by the command line."""

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

import quantbook
from quantbook import Codebook, CodebookError, QuantState
from quantbook.bulk.vq import dequantize_vq, quantize_vq
from quantbook.bulk.vq_state import VQState
from quantbook.cli import main
from quantbook.codebooks.vector import VectorCodebook, VectorCodebookError
from quantbook.codebooks.vector_registry import get_vector
from quantbook.io.versions import FORMAT_KEY, FORMATS

from checkout import checkout_path

_X = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)


@dataclass
class Format:
    """A versioned format: ``write()`` gives ``(what was stored, the mapping written)``, ``read``
    reads a mapping back, ``decoded`` gives what must not change between the two."""

    write: Callable[[], tuple[Any, dict]]
    read: Callable[[dict], Any]
    decoded: Callable[[Any], Any]
    error: type[Exception]


def _codebook():
    cb = quantbook.get("fp4")   # a code order of its own: every key is written
    return cb, json.loads(cb.to_json())


def _vector():
    cb = get_vector("higgs-2d-16")
    return cb, json.loads(cb.to_json())


def _quant_state():
    packed, st = quantbook.quantize(_X, "e2m1", 16, scale="e4m3", backend="numpy")
    return (packed, st), st.as_dict()


def _vq_state():
    idx, st = quantize_vq(_X, "higgs-2d-16", backend="numpy")
    return (idx, st), st.to_dict()


#: every versioned format (the names docs/json.md and the messages use)
CASES = {
    "codebook file": Format(_codebook, Codebook.from_dict, lambda cb: cb, CodebookError),
    "vector codebook file": Format(_vector, VectorCodebook.from_dict, lambda cb: cb, VectorCodebookError),
    "quantization state": Format(_quant_state, QuantState.from_dict,
                                 lambda s: quantbook.dequantize(s[0], s[1], backend="numpy").tobytes(), ValueError),
    "VQ state": Format(_vq_state, VQState.from_dict,
                       lambda s: dequantize_vq(s[0], s[1], backend="numpy").tobytes(), ValueError),
}

#: the one line a later version gets (the version number of this quantbook aside)
_TOO_NEW = "{fmt} format {v}; this quantbook [^ ]+ reads format {current} and older: upgrade quantbook$"


def documented_versions() -> dict[str, int]:
    """``{format: version}`` from the table of docs/json.md, "Format versions"."""
    text = checkout_path("docs", "json.md").read_text(encoding="utf-8")
    body = text.split("## Format versions", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| ([A-Za-z ]+?) \|.*\| (\d+) \|$", body, re.M)}


def _read_back(case: Format, stored: Any, d: dict) -> Any:
    """What ``d`` reads to, in the form the stored object is compared in."""
    back = case.read(d)
    return case.decoded((stored[0], back) if isinstance(stored, tuple) else back)


def test_every_format_is_documented_and_tested():
    assert set(CASES) == set(FORMATS) == set(documented_versions())


@pytest.mark.parametrize("fmt", CASES)
def test_written_now_says_its_version_and_reads_without_it_as_before(fmt):
    case = CASES[fmt]
    stored, d = case.write()
    assert d[FORMAT_KEY] == documented_versions()[fmt]
    want = case.decoded(stored)
    assert _read_back(case, stored, d) == want
    assert _read_back(case, stored, {k: v for k, v in d.items() if k != FORMAT_KEY}) == want


@pytest.mark.parametrize("fmt", CASES)
def test_a_later_version_is_refused_in_one_line(fmt):
    case = CASES[fmt]
    stored, d = case.write()
    current = documented_versions()[fmt]
    for v in range(1, current + 1):   # every version up to the current one reads
        assert _read_back(case, stored, {**d, FORMAT_KEY: v}) == case.decoded(stored)
    with pytest.raises(case.error, match=_TOO_NEW.format(fmt=fmt, v=current + 1, current=current)) as info:
        case.read({**d, FORMAT_KEY: current + 1})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fmt", CASES)
@pytest.mark.parametrize("value", ["1", 1.0, True, None, 0, -1, [1]])
def test_a_value_that_is_no_version_is_refused(fmt, value):
    case = CASES[fmt]
    _, d = case.write()
    with pytest.raises(case.error, match=f"^{FORMAT_KEY} must be a positive integer"):
        case.read({**d, FORMAT_KEY: value})


@pytest.mark.parametrize("fmt", ["quantization state", "VQ state"])
def test_a_state_saved_with_np_savez_reads_its_version(fmt, tmp_path):
    # np.savez hands each field back as an array: the version as a 0-d one
    case = CASES[fmt]
    stored, d = case.write()
    assert d[FORMAT_KEY] == documented_versions()[fmt]
    arrays = {k: np.asarray(v) for k, v in d.items() if v is not None}
    np.savez(tmp_path / "s.npz", **arrays)
    loaded = dict(np.load(tmp_path / "s.npz"))
    loaded.update({k: None for k, v in d.items() if v is None})
    assert _read_back(case, stored, loaded) == case.decoded(stored)
    with pytest.raises(case.error, match="upgrade quantbook"):
        case.read({**loaded, FORMAT_KEY: np.asarray(d[FORMAT_KEY] + 1)})


def test_a_state_in_bitsandbytes_layout_keeps_bitsandbytes_keys_alone():
    # bitsandbytes' QuantState.from_dict asserts that every key is one of its valid_qs_keys
    # (bitsandbytes-foundation/bitsandbytes, bitsandbytes/functional.py, class QuantState)
    valid_qs_keys = {"absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state", "quant_type",
                     "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype", "nested_offset"}
    for nested in (False, True):
        d = quantbook.quantize(_X, "nf4", 64, nested=nested, backend="numpy")[1].as_dict()
        assert set(d) <= valid_qs_keys
    # a state with quantbook's own keys, which bitsandbytes cannot read, says its version
    d = quantbook.quantize(_X, "nf4", 64, bits=8, backend="numpy")[1].as_dict()
    assert d["bits"] == 8 and d[FORMAT_KEY] == documented_versions()["quantization state"]


@pytest.mark.parametrize("fmt, text", [
    ("codebook file", '{"format_verison": 1, "bits": 1, "levels": [-1, 1]}'),
    ("vector codebook file", '{"format_verison": 1, "kind": "vector", "points": [[0, 1], [1, 0]]}'),
])
def test_a_misspelt_version_key_is_named(fmt, text):
    reader = {"codebook file": Codebook.from_json, "vector codebook file": VectorCodebook.from_json}[fmt]
    with pytest.raises(CASES[fmt].error, match=f"did you mean '{FORMAT_KEY}'"):
        reader(text)


# ------------------------------------------------------------------------------ the command line
#: every command that writes a codebook file, and the format it writes
_WRITERS = [
    ("codebook file", ["show", "nf4", "--json"]),
    ("codebook file", ["export", "nf4", "--format", "json"]),
    ("codebook file", ["derive", "nf", "--bits", "3", "--json"]),
    ("codebook file", ["derive", "lloyd", "--bits", "2", "--block-size", "32", "--json"]),
    ("vector codebook file", ["show", "higgs-2d-16", "--json"]),
    ("vector codebook file", ["export", "higgs-2d-16", "--format", "json"]),
    ("vector codebook file", ["derive", "vq", "--dim", "2", "--points", "4", "--samples", "2000", "--restarts", "1",
                              "--json"]),
]


@pytest.mark.parametrize("fmt, argv", _WRITERS)
def test_every_command_that_writes_a_codebook_file_says_its_version(fmt, argv, capsys):
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d[FORMAT_KEY] == documented_versions()[fmt]
    CASES[fmt].read(d)   # and it reads back, results beside the codebook and all


def test_the_packages_derived_grids_say_their_version():
    """The derived grids shipped with quantbook (``data/vq_derived.json``, written by
    benchmarks/bench_derive_vq.py -o) are vector codebook objects: each says the version docs/json.md
    states, as the generator's ``VectorCodebook.to_dict`` writes it.  The file around them, like
    ``higgs_grids.json`` (published numbers, no codebook object), is not a versioned format."""
    data = json.loads(checkout_path("quantbook", "codebooks", "data", "vq_derived.json").read_text(encoding="utf-8"))
    assert data["codebooks"] and FORMAT_KEY not in data
    for d in data["codebooks"]:
        assert d[FORMAT_KEY] == documented_versions()["vector codebook file"], d["name"]
        assert get_vector(d["name"]).to_dict() == d   # the registry reads it, and writes it back as it is


#: the commands that read a codebook file, scalar and vector
_READERS = {
    "codebook file": [["show", "{}"], ["export", "{}", "--format", "c"], ["evaluate", "{}"], ["audit", "{}"]],
    "vector codebook file": [["show", "{}"], ["export", "{}", "--format", "npy", "-o", "{}.npy"]],
}


@pytest.mark.parametrize("fmt", _READERS)
def test_the_command_line_refuses_a_later_version_in_one_line(fmt, tmp_path, capsys):
    _, d = CASES[fmt].write()
    current = documented_versions()[fmt]
    path = tmp_path / "later.json"
    path.write_text(json.dumps({**d, FORMAT_KEY: current + 1}), encoding="utf-8")
    for argv in _READERS[fmt]:
        rc = main([a.format(path) for a in argv])
        err = capsys.readouterr().err
        assert rc == 2, (argv, err)
        assert "Traceback" not in err and err.count("\n") == 1, err
        assert re.fullmatch("quantbook: error: " + re.escape(str(path)) + ": "
                            + _TOO_NEW.format(fmt=fmt, v=current + 1, current=current), err.rstrip("\n")), err


def test_a_later_file_of_the_other_kind_is_named_as_the_other_kind():
    """A vector codebook file of a later version given to the scalar reader (and a scalar one to the vector
    reader) is named for its kind, whose reader then says what its version needs: the version is the format's."""
    later = {name: dict(CASES[name].write()[1], **{FORMAT_KEY: FORMATS[name] + 1})
             for name in ("codebook file", "vector codebook file")}
    with pytest.raises(CodebookError, match="this is a vector codebook"):
        Codebook.from_dict(later["vector codebook file"])
    with pytest.raises(VectorCodebookError, match="not a vector codebook"):
        VectorCodebook.from_dict(later["codebook file"])
