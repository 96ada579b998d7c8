"""Loading codebooks from JSON (Codebook.from_json / from_dict, registry.load, `quantbook show`):
every bad input is one CodebookError line, never a RecursionError, OverflowError or traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quantbook import Codebook, CodebookError, load
from quantbook.cli import main


@pytest.mark.parametrize("text, msg", [
    ("[" * 100_000, "nested too deeply"),
    ('{"bits": 4, "levels": [' * 50_000, "nested too deeply"),
    ('{"bits": 2, "levels": [-1, 0, 1' + "0" * 400 + "]}", "too large for a float"),
    ('{"bits": 2, "levels": [-1, 0], "code": [0, -1, 1' + "0" * 400 + "]}", "code entry 2 is too large"),
    ('{"bits": 2, "levels": [-1, 0, 1' + "0" * 5000 + "]}", "too many digits"),
    (b'{"bits": 2, "levels": [\xff]}', "not UTF-8"),
    ('{"bits": 2, "levels": [-1, 1e400]}', "finite"),
    ("[1, 2]", "JSON object"),
    ('{"bits": 2, "levels": [-1, 0, 1], "recipe": {"a": Infinity}}', "Infinity is not a JSON number"),
    ('{"bits": 2, "levels": [-1, NaN, 1]}', "NaN is not a JSON number"),
    ('{"bits": 2, "levels": [-1, 0, 1], "recipe": {"tol": 1e999}}', "1e999 is too large for a finite float"),
    # deep enough for json, too deep for the code that reads a recipe (it recursed into it)
    ('{"bits": 4, "levels": [0, 1], "recipe": ' + '{"a": ' * 400 + "1" + "}" * 401, "nested too deeply"),
    ('{"bits": 4, "levels": [0, 1], "recipe": ' + '{"a": ' * 32 + "1" + "}" * 33, "more than 32 levels"),
    # json keeps the last of two equal keys: this file was read as a 2-bit table
    ('{"bits": 4, "levels": [-1, 0, 1], "bits": 2}', "the key 'bits' appears twice in one object"),
    ('{"bits": 2, "levels": [-1, 1], "recipe": {"method": "nf", "method": "x"}}', "'method' appears twice"),
    # a misspelt vector file was read as a scalar one ("lacks bits, levels")
    ('{"kind": "Vector", "points": [[0, 1], [1, 0]]}', """kind is 'Vector': a scalar codebook has no kind"""),
    ('{"kind": "vector", "points": [[0, 1], [1, 0]]}', "this is a vector codebook"),
    # read as absent, a misspelt "code" stored the table in sorted order under its own name
    ('{"bits": 2, "levels": [-1, 0, 1], "codes": [0, -1, 1]}', "the key 'codes'"),
    ('{"bits": 2, "Levels": [-1, 0, 1], "levels": [-1, 1]}', "did you mean 'levels'?"),
    # numpy reads strings and booleans as numbers
    ('{"bits": 2, "levels": [" 0.5 ", "1_0"]}', "levels must be numbers: entry 0 is ' 0.5 '"),
    ('{"bits": 2, "levels": [false, true]}', "levels must be numbers: entry 0 is False"),
    ('{"bits": 2, "levels": [0, 1], "code": [1, "0"]}', "code must be numbers: entry 1 is '0'"),
])
def test_bad_json_is_one_codebook_error_line(text, msg):
    with pytest.raises(CodebookError) as info:
        Codebook.from_json(text)
    assert msg in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_largest_integer_level_that_fits():
    # 2**1023 is a float64; the lead's float32 bound then rejects it, as a CodebookError too
    with pytest.raises(CodebookError, match="float32"):
        Codebook.from_json('{"bits": 1, "levels": [0, %d]}' % 2**1023)
    cb = Codebook.from_json('{"bits": 2, "levels": [-3, 0, 7]}')  # plain integers are fine
    assert cb.levels.tolist() == [-3.0, 0.0, 7.0]


def test_load_accepts_upper_case_extension_and_names_the_file(tmp_path, capsys):
    ref = Codebook(levels=[-1.0, 0.0, 0.5, 1.0], bits=2, name="mine")
    up = tmp_path / "MINE.JSON"
    up.write_text(ref.to_json(), encoding="utf-8")
    assert load(str(up)) == ref
    assert main(["show", str(up), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["levels"] == [-1.0, 0.0, 0.5, 1.0]
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000, encoding="utf-8")
    assert main(["show", str(deep)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "deep.json" in err and "nested too deeply" in err, err


def test_load_rejects_directories_and_oversized_files(tmp_path):
    (tmp_path / "d.json").mkdir()
    with pytest.raises(CodebookError, match="is a directory"):
        load(str(tmp_path / "d.json"))
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(17 * 2**20)  # sparse: nothing is written
    with pytest.raises(CodebookError, match="larger than 16 MiB"):
        load(str(big))
    with pytest.raises(FileNotFoundError):
        load(str(tmp_path / "missing.JSON"))


def test_round_trip_still_exact():
    cb = Codebook(levels=np.array([-1.0, -0.1234567890123, 0.0, 1.0]), bits=2, name="t", recipe={"a": [1, 2]})
    assert Codebook.from_json(cb.to_json()) == cb


@pytest.mark.parametrize("indent", ["abc", " ", 1.5, True, -1, np.float64(2.0), [2]])
def test_to_json_takes_an_integer_indent_or_none(indent):
    # json takes a str as the indent itself ("abc" wrote text that is not JSON), True as 1 and a float
    # or a list to a TypeError inside it
    from quantbook.codebooks.vector_registry import get_vector

    for cb in (Codebook(levels=[-1.0, 0.0, 1.0], bits=2, name="t"), get_vector("higgs-2d-256")):
        with pytest.raises(ValueError, match=r"^indent must be a non-negative integer or None, got "):
            cb.to_json(indent=indent)
        for fine in (None, 0, np.int8(3)):
            assert type(cb).from_json(cb.to_json(indent=fine)) == cb
        assert json.loads(cb.to_json(indent=np.int8(3))) == json.loads(cb.to_json(indent=3))


@pytest.mark.parametrize("argv", [["show", "F"], ["export", "F", "-f", "c"], ["evaluate", "F"], ["show", "V"]])
def test_a_deep_recipe_is_one_line_from_every_command(tmp_path, capsys, argv):
    """Each of these walked the recipe recursively and ended in an internal RecursionError."""
    deep = '{"a": ' * 400 + "1" + "}" * 400
    scalar, vector = tmp_path / "deep.json", tmp_path / "deepv.json"
    scalar.write_text('{"bits": 4, "levels": [0, 1], "recipe": %s}' % deep, encoding="utf-8")
    vector.write_text('{"kind": "vector", "name": "v", "points": [[0, 1], [1, 0]], "recipe": %s}' % deep,
                      encoding="utf-8")
    argv = [str(scalar) if a == "F" else str(vector) if a == "V" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nested too deeply" in err and "internal" not in err, err
    ok = '{"bits": 4, "levels": [0, 1], "recipe": %s}' % ('{"a": ' * 20 + "1" + "}" * 20)
    assert Codebook.from_json(ok).recipe["a"]["a"]   # a nesting within the limit loads


def test_a_file_whose_name_ends_in_a_space_is_that_file(tmp_path, capsys):
    """Spellings are read without surrounding spaces (" nf4 " is nf4), but a file named
    "x.json " exists as it is named: it was 'no such codebook file: x.json'."""
    ref = Codebook(levels=[-1.0, 0.0, 1.0], bits=2, name="spaced")
    path = tmp_path / "x.json "
    path.write_text(ref.to_json(), encoding="utf-8")
    assert load(str(path)) == ref
    assert main(["show", str(path)]) == 0 and capsys.readouterr().out.startswith("spaced:")
    assert main(["show", " nf4 "]) == 0 and capsys.readouterr().out.startswith("nf4:")


def test_a_derive_json_object_is_read_as_its_codebook(capsys):
    """Its results (mse_weight, converged, ...) sit beside the codebook's keys; none is taken
    for a misspelling of one."""
    assert main(["derive", "lloyd", "--bits", "3", "--json"]) == 0
    out = capsys.readouterr().out
    assert Codebook.from_json(out).levels.tolist() == json.loads(out)["levels"]


def test_the_largest_float32_as_printed_is_a_level():
    """3.4028235e38 is float32's maximum as numpy prints it; as a float64 it lies above that
    maximum but rounds to it, as every float32 consumer reads the table."""
    cb = Codebook.from_json('{"bits": 2, "levels": [-3.4028235e38, 0, 1]}')
    assert cb.levels_f32[0] == -np.finfo(np.float32).max
    with pytest.raises(CodebookError, match="round to a finite float32"):
        Codebook.from_json('{"bits": 2, "levels": [-3.4028236e38, 0, 1]}')


def test_load_takes_a_path_object(tmp_path):
    # a pathlib.Path was "no published codebook PosixPath(...) (and not a .json file)"
    path = tmp_path / "mine.json"
    path.write_text('{"name": "mine", "bits": 2, "levels": [-1, -0.25, 0.5, 1]}', encoding="utf-8")
    cb = load(path)
    assert cb.name == "mine" and cb.levels.tolist() == [-1, -0.25, 0.5, 1]
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.json")


def test_a_path_object_is_always_a_file_never_a_registry_name(tmp_path, monkeypatch):
    # Path("nf4") gave the published NF4, though no such file exists; a Path names a file, whatever its suffix
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="nf4"):
        load(Path("nf4"))
    Path("nf4").write_text('{"name": "mine", "bits": 2, "levels": [-1, -0.25, 0.5, 1]}', encoding="utf-8")
    assert load(Path("nf4")).name == "mine"
    assert load("nf4").name == "nf4"   # the string is still the registry's name


def test_every_resolver_reads_a_path_object_as_a_file(tmp_path, monkeypatch):
    # load(Path("nf4")) read the file, while quantize, resolve_codebook and resolve_vector took the Path's
    # text as a published name: the published table, though the user's file of that name differs
    import quantbook as qb
    from quantbook.codebooks.vector import VectorCodebook
    from quantbook.naming import is_vector_spec, resolve_codebook, resolve_vector

    monkeypatch.chdir(tmp_path)
    x = np.linspace(-1.0, 1.0, 64, dtype=np.float32)
    for resolve in (resolve_codebook, lambda p: qb.quantize(x, p, 64, backend="numpy"), resolve_vector):
        for name in ("nf4", "higgs-2d-256"):
            with pytest.raises(FileNotFoundError, match=name):
                resolve(Path(name))
    Path("nf4").write_text('{"name": "mine", "bits": 2, "levels": [-1, -0.25, 0.5, 1]}', encoding="utf-8")
    assert resolve_codebook(Path("nf4")) == load(Path("nf4")) and load(Path("nf4")).name == "mine"
    assert qb.quantize(x, Path("nf4"), 64, backend="numpy")[1].code.tolist() == [-1, -0.25, 0.5, 1]
    assert resolve_codebook("nf4").name == "nf4"   # the string is still the registry's name
    grid = VectorCodebook("grid", np.array([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]]), "test")
    Path("higgs-2d-256").write_text(grid.to_json(), encoding="utf-8")
    assert is_vector_spec(Path("higgs-2d-256")) and resolve_vector(Path("higgs-2d-256")) == grid
    assert resolve_vector("higgs-2d-256").name == "higgs-2d-256"
    with pytest.raises(CodebookError, match="is a vector codebook"):
        resolve_codebook(Path("higgs-2d-256"))


def test_quantize_vq_reads_a_path_object_as_a_file(tmp_path, monkeypatch):
    # quantize_vq turned a Path into its text: Path("higgs-2d-256") gave the published grid though no such
    # file existed, and a vector codebook file without .json was unknown
    from quantbook.bulk import dequantize_vq, quantize_vq
    from quantbook.codebooks.vector import VectorCodebook

    monkeypatch.chdir(tmp_path)
    x = np.linspace(-1.0, 1.0, 64, dtype=np.float32)
    with pytest.raises(FileNotFoundError, match="higgs-2d-256"):
        quantize_vq(x, Path("higgs-2d-256"), group=64, backend="numpy")
    grid = VectorCodebook("grid", np.array([[0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]]), "test")
    Path("higgs-2d-256").write_text(grid.to_json(), encoding="utf-8")
    idx, state = quantize_vq(x, Path("higgs-2d-256"), group=64, rotate=None, backend="numpy")
    assert state.codebook == "grid" and np.array_equal(state.points, grid.points.astype(np.float32))
    # the oracle: the grid given as an array of its points
    ref_idx, ref = quantize_vq(x, grid.points, group=64, rotate=None, backend="numpy")
    assert np.array_equal(idx, ref_idx)
    assert np.array_equal(dequantize_vq(idx, state, backend="numpy"), dequantize_vq(ref_idx, ref, backend="numpy"))
