"""Files that earlier versions of quantbook wrote still read, bit for bit.

Data: tests/data/old_versions/COMMIT/, each folder written by that commit's own code
(tests/data/make_old_version_files.py runs it from a git worktree): codebook and vector codebook
JSON from ``show --json``, ``derive ... --json``, ``export --format json|npy`` and ``derive vq -o``,
and quantization states saved with the values that commit dequantized.  Oracles: the float32
bits a file holds, decoded here by ``json`` and numpy alone; what the old commit dequantized;
bitsandbytes' published NF4; the byte format rebuilt by hand (docs/format.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import quantbook
from quantbook import Codebook
from quantbook.bulk import QuantState, dequantize
from quantbook.bulk.vq import dequantize_vq
from quantbook.bulk.vq_state import VQState
from quantbook.codebooks.vector import VectorCodebook
from quantbook.codebooks.vector_registry import load_vector
from quantbook.derive.recipes import derive_from_recipe
from quantbook.derive.vq import VQRecipe
from test_cli_errors import run
from test_nf import BNB_NF4
from user_model import user_model

DATA = Path(__file__).parent / "data" / "old_versions"
JSON_FILES = sorted(DATA.glob("*/*.json"))
STATES = sorted(DATA.glob("*/*.npz"))


def _raw(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


SCALAR = [p for p in JSON_FILES if _raw(p).get("kind") != "vector"]
VECTOR = [p for p in JSON_FILES if _raw(p).get("kind") == "vector"]


def _ids(paths):
    return [f"{p.parent.name}/{p.name}" for p in paths]


def _bits64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).view(np.uint64)


def _bits32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(np.float32).view(np.uint32)


def _state(path: Path) -> tuple[dict, dict]:
    """The saved arrays and the state's dict as the old commit's as_dict()/to_dict() gave it."""
    z = dict(np.load(path))
    d = {k[len("state."):]: v for k, v in z.items() if k.startswith("state.")}
    d.update({k: None for k in z["state_none"]})
    return z, d


def test_the_data_spans_the_history():
    # from the first commit that printed codebook JSON to the day before the data was made
    assert [p.name for p in sorted(DATA.iterdir()) if p.is_dir()] == sorted(
        ["49e15fe", "6e32536", "40d5eb4", "e6a7d06", "7ebe4f6", "c5675d9"])
    assert SCALAR and VECTOR and STATES


@pytest.mark.parametrize("path", SCALAR, ids=_ids(SCALAR))
def test_codebook_file_reads_bit_for_bit(path):
    raw = _raw(path)
    for cb in (quantbook.load(path), quantbook.load(str(path)), Codebook.from_json(path.read_bytes())):
        np.testing.assert_array_equal(cb.levels.view(np.uint64), _bits64(raw["levels"]))
        np.testing.assert_array_equal(cb.code.view(np.uint64), _bits64(raw.get("code", raw["levels"])))
        assert (cb.bits, cb.name, cb.source) == (raw["bits"], raw["name"], raw["source"])
        assert cb.to_dict()["recipe"] == raw["recipe"]


@pytest.mark.parametrize("path", SCALAR, ids=_ids(SCALAR))
def test_codebook_file_through_the_command_line(path, capsys, tmp_path):
    raw = _raw(path)
    rc, out, err = run(capsys, "show", path, "--json")
    assert rc == 0, err
    shown = json.loads(out)
    np.testing.assert_array_equal(_bits64(shown["levels"]), _bits64(raw["levels"]))
    assert shown["recipe"] == raw["recipe"]
    rc, out, err = run(capsys, "evaluate", path, "--json")
    assert rc == 0 and json.loads(out)["codebook"] == raw["name"], err
    rc, out, err = run(capsys, "export", path, "--format", "npy", "-o", tmp_path / "table.npy")
    assert rc == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "table.npy").view(np.uint32),
                                  _bits32(raw.get("code", raw["levels"])))
    rc, out, err = run(capsys, "evaluate-model", user_model(tmp_path / "m.safetensors"), "-c", path, "--json")
    assert rc == 0 and list(json.loads(out)["codebooks"]) == [str(path)], err


@pytest.mark.parametrize("path", [p for p in JSON_FILES if _raw(p).get("recipe")],
                         ids=_ids([p for p in JSON_FILES if _raw(p).get("recipe")]))
def test_old_recipe_rederives_the_table_it_came_with(path):
    # each of these derivations is unchanged since the file was written; docs/json.md lists the
    # recipes of earlier commits that re-derive another table (derivations corrected since)
    raw = _raw(path)
    if raw.get("kind") == "vector":
        points = VQRecipe.from_dict(raw["recipe"]).derive().points
        np.testing.assert_array_equal(points.view(np.uint32), _bits32(raw["points"]))
    else:
        np.testing.assert_array_equal(_bits32(derive_from_recipe(raw["recipe"]).levels), _bits32(raw["levels"]))


@pytest.mark.parametrize("path", VECTOR, ids=_ids(VECTOR))
def test_vector_codebook_file_reads_bit_for_bit(path, capsys):
    raw = _raw(path)
    for cb in (load_vector(path), VectorCodebook.from_json(path.read_bytes())):
        np.testing.assert_array_equal(cb.points.view(np.uint32), _bits32(raw["points"]))
        assert (cb.name, cb.dim, cb.size, cb.source) == (raw["name"], raw["dim"], raw["size"], raw["source"])
        assert cb.to_dict()["recipe"] == raw["recipe"]
    rc, out, err = run(capsys, "show", path)
    assert rc == 0, err


def test_old_nf4_exports_hold_the_published_table(capsys, tmp_path):
    old = DATA / "6e32536"
    np.testing.assert_array_equal(np.load(old / "export_nf4.npy").view(np.uint32), BNB_NF4.view(np.uint32))
    np.testing.assert_array_equal(quantbook.load(old / "export_nf4.json").code_f32.view(np.uint32),
                                  BNB_NF4.view(np.uint32))
    rc, _, err = run(capsys, "export", "nf4", "--format", "npy", "-o", tmp_path / "now.npy")
    assert rc == 0, err
    assert (tmp_path / "now.npy").read_bytes() == (old / "export_nf4.npy").read_bytes()


@pytest.mark.parametrize("path", STATES, ids=_ids(STATES))
def test_old_state_dequantizes_as_it_did(path):
    z, d = _state(path)
    if "indices" in z:
        y = dequantize_vq(z["indices"], VQState.from_dict(d))
    else:
        y = dequantize(z["packed"], QuantState.from_dict(d))
    old = z["dequantized"]
    assert (y.dtype, y.shape) == (old.dtype, old.shape)
    np.testing.assert_array_equal(y.view(np.uint8), old.view(np.uint8))


@pytest.mark.parametrize("name", ["6e32536/state_lloyd3.npz", "40d5eb4/state_nf4_float16.npz"])
def test_old_state_decoded_by_hand(name):
    # docs/format.md: 4-bit codes two a byte, the first in the high nibble, 3-bit codes one a
    # byte; each value float32(code[index] * absmax[block]), rounded once to the output dtype
    z, d = _state(DATA / name)
    packed = z["packed"].reshape(-1)
    index = np.stack([packed >> 4, packed & 15], axis=1).reshape(-1) if int(d.get("bits", 4)) == 4 else packed
    n = int(np.prod(d["shape"]))
    block = np.arange(n) // int(d["blocksize"])
    values = (d["quant_map"][index[:n]] * d["absmax"][block]).astype(np.float32).astype(str(d["dtype"]))
    y = dequantize(z["packed"], QuantState.from_dict(d)).reshape(-1)
    np.testing.assert_array_equal(y.view(np.uint8), values.view(np.uint8))


@pytest.mark.parametrize("name, builtin", [("6e32536/state_nf4_float64.npz", False),
                                           ("e6a7d06/state_nf4_e8m0.npz", False),
                                           ("6e32536/state_nf4_nested.npz", True)])
def test_an_old_state_keeps_bitsandbytes_type_name_only_for_its_table_and_layout(name, builtin):
    # bitsandbytes decodes quant_type nf4 with its own table, whatever quant map is stored: an
    # old state said nf4 for a float64 NF4 derived as "nf4", and for NF4 in E8M0's scaled layout
    # (its map is NF4 times qmax = 6, its absmax E8M0 bytes)
    z, d = _state(DATA / name)
    assert str(d["quant_type"]) == "nf4"
    nf4 = BNB_NF4 * np.float32(6 if "scale_rule" in d else 1)
    is_nf4 = np.array_equal(np.asarray(d["quant_map"], np.float32).view(np.uint32), nf4.view(np.uint32))
    assert is_nf4 == (name != "6e32536/state_nf4_float64.npz")
    st = QuantState.from_dict(d)
    assert st.quant_type == st.as_dict()["quant_type"] == ("nf4" if builtin else "custom-nf4")


@pytest.mark.parametrize("stored, table, want", [("NF4", "bnb", "nf4"), ("Nf4", "bnb", "nf4"), ("nf4", "bnb", "nf4"),
                                                 ("NF4", "edited", "custom-NF4"), ("FP4", "bnb", "custom-FP4")])
def test_a_stored_type_name_in_capitals_is_read_as_its_table_is_named(stored, table, want):
    """A state written before the rule named its type after the codebook, capitals and all (a table
    called ``NF4``).  bitsandbytes' own NF4 table (the published one) is ``nf4`` whatever the stored
    spelling, as quantize names it; another table under that name is ``custom-`` it, as is NF4's
    table under FP4's name.  The capitals made bitsandbytes' own table ``custom-NF4``."""
    code = BNB_NF4.copy()
    if table == "edited":
        code[-2] = np.float32(0.75)
    x = np.random.default_rng(0).standard_normal(128).astype(np.float32)
    _, st = quantbook.quantize(x, Codebook(code, bits=4, name="t"), 64)
    assert st.code.view(np.uint32).tolist() == code.view(np.uint32).tolist()
    d = dict(st.as_dict(), quant_type=stored)
    assert QuantState.from_dict(d).quant_type == want
