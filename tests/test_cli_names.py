"""One grammar of codebook names (quantbook.naming) for the API and the command line."""

import json
import time

import numpy as np
import pytest

import quantbook
from quantbook import REGISTRY, Codebook, CodebookError
from quantbook.cli import main
from quantbook.naming import (MAX_BLOCK_SIZE, UnknownCodebookError, depends_on_block_size, resolve_codebook,
                                    resolve_codebooks)


def test_registry_names_files_and_codebooks():
    assert resolve_codebook("nf4") is REGISTRY["nf4"].codebook
    assert resolve_codebook("IQ4_NL") is REGISTRY["iq4_nl"].codebook  # keywords are case-insensitive
    cb = REGISTRY["af4"].codebook
    assert resolve_codebook(cb) is cb


@pytest.mark.parametrize("kwargs", [dict(bits=2), dict(), dict(loss="l1", domain="normalized", block_size=256),
                                    dict(bits=3, source="laplace")])
def test_derived_tables_are_named_as_the_grammar_reads_them(kwargs):
    from quantbook.derive import lloyd, nf

    cb = lloyd(**kwargs)
    back = resolve_codebook(cb.name)
    assert np.array_equal(back.levels, cb.levels) and back.recipe == cb.recipe and back.name == cb.name
    assert resolve_codebook(nf(3).name).recipe == nf(3).recipe
    assert resolve_codebook(nf(4, precision="float32-bnb").name) is REGISTRY["nf4"].codebook


def test_different_tables_never_share_a_name():
    from quantbook.derive import lloyd, nf

    assert resolve_codebook("lloyd-l2", block_size=64).name == "lloyd-l2-64"
    assert resolve_codebook("lloyd-l2", block_size=256).name == "lloyd-l2-256"
    assert nf(4).name != "nf4"                  # float64 quantiles, not bitsandbytes' table
    for other in (lloyd(fixed="none"), lloyd(bits=3, symmetric=True)):  # not sayable: a label
        with pytest.raises(UnknownCodebookError):
            resolve_codebook(other.name)


@pytest.mark.parametrize("suffix", [".json", ".JSON", ".Json"])
def test_json_files_with_any_case_of_suffix(tmp_path, suffix):
    p = tmp_path / ("t" + suffix)
    p.write_text(REGISTRY["af4"].codebook.to_json(), encoding="utf-8")
    assert resolve_codebook(str(p)) == REGISTRY["af4"].codebook
    assert resolve_codebook(p) == REGISTRY["af4"].codebook  # a Path too


def test_missing_and_oversized_json_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such codebook file"):
        resolve_codebook(str(tmp_path / "none.json"))
    big = tmp_path / "big.json"
    big.write_bytes(b" " * ((16 << 20) + 1))
    with pytest.raises(CodebookError, match="larger than 16 MiB"):
        resolve_codebook(str(big))


def test_nf_k_is_normalfloat_with_k_bits():
    from scipy.stats import norm

    cb = resolve_codebook("NF3")
    assert cb.name == "nf3" and cb.bits == 3 and cb.n_levels == 8
    assert resolve_codebook("NF05").name == "nf5" == resolve_codebook(resolve_codebook("NF05").name).name
    # NF3 from its definition: 4 positive and 3 negative normal quantiles at the offset
    # (1 - 1/(2*7) + 1 - 1/(2*8)) / 2 = 209/224, plus 0, each side scaled to 1
    off = 209 / 224
    pos = norm.ppf(np.linspace(0.5, off, 5)[1:])
    neg = -norm.ppf(np.linspace(0.5, off, 4)[1:])
    ref = np.sort(np.concatenate([neg / -neg.min(), [0.0], pos / pos.max()]))
    np.testing.assert_allclose(cb.levels, ref, atol=1e-12)


def test_nf4_however_k_is_written_is_bitsandbytes_table():
    """nfK at K = 4 is bitsandbytes' float32 NF4 (the registry's nf4) in every spelling of 4,
    not the float64 quantiles the other K get: against bitsandbytes' published table
    (bitsandbytes/functional.py, get_4bit_type('nf4'))."""
    published = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                          -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                          0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                          0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)
    for spelling in ("nf4", "NF4", "nf04", "Nf004"):
        cb = resolve_codebook(spelling)
        assert np.array_equal(cb.code_f32.view(np.uint32), published.view(np.uint32)), spelling


def test_lloyd_shorthand_uses_the_engine_defaults():
    from quantbook.derive import lloyd

    cb = resolve_codebook("lloyd-l2-64")
    assert cb.name == "lloyd-l2-64" and cb.bits == 4 and cb.n_levels == 16
    assert {-1.0, 0.0, 1.0} <= set(cb.levels.tolist())  # the documented fixed levels
    assert np.array_equal(cb.levels, lloyd(block_size=64, loss="l2").levels)
    r = resolve_codebook("lloyd-l1-128-3bit-normalized@laplace").recipe
    assert (r["bits"], r["block_size"], r["loss"], r["domain"], r["source"]) == (3, 128, "l1", "normalized",
                                                                                 "laplace")


def test_block_size_fills_in_a_missing_b():
    assert depends_on_block_size("lloyd-l1") and depends_on_block_size("lloyd-l2@laplace")
    assert not depends_on_block_size("lloyd-l1-64") and not depends_on_block_size("nf4")
    assert not depends_on_block_size(REGISTRY["nf4"].codebook)
    assert resolve_codebook("lloyd-l1", block_size=256).recipe["block_size"] == 256
    assert resolve_codebook("nf4", block_size=None) is REGISTRY["nf4"].codebook  # not needed: not checked
    with pytest.raises(CodebookError, match="block size"):
        resolve_codebook("lloyd-l1", block_size=1)
    with pytest.raises(CodebookError, match="integer"):
        resolve_codebook("lloyd-l1", block_size=64.0)


@pytest.mark.parametrize("spec, match", [
    (f"lloyd-l2-{MAX_BLOCK_SIZE + 1}", "block size B must be between 2 and 10\\*\\*7"),
    ("lloyd-l2-64-9bit", "bits K must be from 2 to 8"),
    ("lloyd-l2-64-1bit", "--bits 1 --fix none"),
    ("nf1", "NormalFloat bits K must be from 2 to 8"),
    ("lloyd-l1-" + "1" * 100_000, "100000-digit"),
])
def test_numbers_out_of_range_are_clear_and_fast(spec, match):
    t = time.perf_counter()
    with pytest.raises(CodebookError, match=match):
        resolve_codebook(spec)
    assert time.perf_counter() - t < 1.0


def test_unknown_names_and_wrong_types():
    with pytest.raises(UnknownCodebookError, match="unknown codebook 'nf4x'") as info:
        resolve_codebook("nf4x")
    # a ValueError (the library's rule for bad input) that is also a KeyError, as a registry
    # lookup is; its message is not quoted the way str(KeyError) would quote it
    assert isinstance(info.value, ValueError) and isinstance(info.value, KeyError)
    assert str(info.value).startswith("unknown codebook")
    for bad in (4, None, ["nf4"], b"nf4", np.float32(1)):
        with pytest.raises(CodebookError, match="a Codebook"):
            resolve_codebook(bad)
    with pytest.raises(CodebookError, match="empty"):
        resolve_codebook("  ")


def test_resolve_codebooks_labels():
    cb = REGISTRY["fp4"].codebook
    assert [label for label, _ in resolve_codebooks("nf4, fp4,,af4")] == ["nf4", "fp4", "af4"]
    assert [label for label, _ in resolve_codebooks(["nf3", cb])] == ["nf3", "fp4"]
    with pytest.raises(CodebookError, match="no codebooks"):
        resolve_codebooks(" , ")


def test_the_api_and_the_command_line_accept_the_same_names(capsys, tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    p = tmp_path / "T.JSON"
    p.write_text(REGISTRY["af4"].codebook.to_json(), encoding="utf-8")
    for spec in ("nf3", "NF4", "lloyd-l2-64-3bit", str(p)):
        _, state = quantbook.quantize(x, spec, block_size=64)
        assert main(["show", spec, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert np.array_equal(np.float32(shown["levels"]), np.unique(state.code)), spec
    with pytest.raises(ValueError, match="unknown codebook"):
        quantbook.quantize(x, "no-such-codebook")
    assert isinstance(resolve_codebook("nf3"), Codebook)


def test_one_rule_for_the_case_of_published_names(capsys):
    """quantize, show and resolve_codebook read NF4 as nf4; get, load, audit and register_check
    refused it.  Every entry in any case is the same table through each, and the one rule
    (the name itself, else the only name equal to it ignoring case) is what decides."""
    from quantbook.codebooks.vector_registry import get_vector
    from quantbook.naming import is_vector_spec, resolve_vector
    from quantbook.verify import audit

    for name, entry in REGISTRY.items():
        for spelled in (name.upper(), name.title(), name):
            assert quantbook.get(spelled) is quantbook.load(spelled) is resolve_codebook(spelled) is entry.codebook
    assert [row.name for row in audit(["NF4", "Int4-Sym"])] == ["nf4", "int4-sym"]
    assert main(["audit", "IQ4_NL"]) == 0
    assert "iq4_nl" in capsys.readouterr().out
    assert get_vector("HIGGS-2D-16") is resolve_vector("Higgs-2d-16") is get_vector("higgs-2d-16")
    assert is_vector_spec("HIGGS-2D-16")
    for bad in ("nf4 ", "NF4X", "nf-4"):
        with pytest.raises(KeyError):
            quantbook.get(bad)
    from quantbook.codebooks.spelling import published_name

    assert published_name("AB", ["ab", "Ab"]) is None   # two names fold alike: neither is guessed
    assert published_name("Ab", ["ab", "Ab"]) == "Ab" and published_name(3, ["ab"]) is None


def test_a_name_that_is_not_there_suggests_the_nearest_one(capsys, tmp_path):
    """A misspelt name is told the published one it looks like (difflib's ratio >= 0.75 without
    case: 'iq4nl' -> 'iq4_nl' is 10/11), and nothing when none is near."""
    from quantbook.naming import resolve_vector
    from quantbook.numerics.arguments import did_you_mean

    assert did_you_mean("IQ4NL", ["nf4", "iq4_nl"]) == " (did you mean 'iq4_nl'?)"
    assert did_you_mean("zzz", ["nf4", "iq4_nl"]) == ""
    with pytest.raises(UnknownCodebookError, match=r"'iq4nl' \(did you mean 'iq4_nl'\?\)"):
        resolve_codebook("iq4nl")
    with pytest.raises(UnknownCodebookError, match=r"unknown codebook 'qqqq': expected"):
        resolve_codebook("qqqq")
    with pytest.raises(UnknownCodebookError, match=r"'higgs-2d-265' \(did you mean 'higgs-2d-256'\?\)"):
        resolve_vector("higgs-2d-265")
    for argv in (["show", "fp44"], ["audit", "fp44"], ["export", "iq4nl", "-f", "json"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "(did you mean 'fp4'?)" in err or "(did you mean 'iq4_nl'?)" in err, err
        assert err.count("\n") == 1


def test_a_tensor_that_is_not_there_suggests_the_nearest_one(tmp_path):
    from quantbook.io.safetensors import SafetensorsFile

    save_file = pytest.importorskip("safetensors.numpy", reason="safetensors writes the file").save_file
    path = tmp_path / "m.safetensors"
    save_file({"model.layers.0.mlp.up_proj.weight": np.zeros(4, np.float32)}, str(path))
    with pytest.raises(KeyError, match=r"has no tensor 'model.layers.0.mlp.up_prj.weight' "
                                       r"\(did you mean 'model.layers.0.mlp.up_proj.weight'\?\)"):
        SafetensorsFile(path).read("model.layers.0.mlp.up_prj.weight")


def test_a_derivations_label_says_how_to_use_its_table(capsys, tmp_path):
    """A table the grammar cannot spell gets a label that does not read back; naming it again (as
    derive printed it) says to save the table as FILE.json, which then reads back."""
    from quantbook.derive import lloyd, nf

    labels = [lloyd(fixed="none").name, lloyd(bits=3, symmetric=True).name, nf(4).name]
    # as the derivations name them: what the grammar cannot say is said after the bits and B
    assert labels == ["lloyd-l2-4b-B64-fixed=none", "lloyd-l2-3b-B64-symmetric", "nf4-float64"]
    for label in labels:
        with pytest.raises(UnknownCodebookError, match=r"save the table with `quantbook derive \.\.\. --json > "
                                                       r"FILE\.json`"):
            resolve_codebook(label)
    with pytest.raises(UnknownCodebookError) as info:
        resolve_codebook("qqqq")
    assert "FILE.json`" not in str(info.value)   # a name nothing printed gets only the grammar
    assert main(["show", "quantile-3b-B128"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--json > FILE.json" in err


def _grid(cls, **axes):
    """Every valid recipe of ``cls`` over the product of ``axes`` (an invalid combination is skipped)."""
    import itertools

    out = []
    for values in itertools.product(*axes.values()):
        try:
            out.append(cls(**dict(zip(axes, values))))
        except ValueError:
            pass
    return out


def _one_to_one(recipes, name_of):
    """Each distinct recipe (its JSON form) has its own name, and the same recipe the same name."""
    names = {}
    for r in recipes:
        names.setdefault(json.dumps(r.to_dict(), sort_keys=True), set()).add(name_of(r))
    assert all(len(n) == 1 for n in names.values())
    by_name = {}
    for key, (name,) in names.items():
        by_name.setdefault(name, []).append(key)
    shared = {name: keys for name, keys in by_name.items() if len(keys) > 1}
    assert not shared, list(shared.items())[:3]
    return len(names)


def test_different_recipes_get_different_names():
    """A derivation's name or label says every recipe field that differs from its default: `derive lloyd
    --scale e8m0 -B 32 --fix -1,0,1` and `... --fix -1,1` were both lloyd-l2-4b-B32-e8m0-floor."""
    from quantbook.derive import lloyd as derive_lloyd
    from quantbook.derive.lloyd import _lloyd_name
    from quantbook.derive.recipes import LloydRecipe, QuantileRecipe, SearchLloydRecipe

    layouts = [(None, 6, None), ("e8m0", 6, None), ("e8m0:rceil", 4, None), ("e4m3", 6, None), ("e4m3", 6, 2**20)]
    common = dict(bits=(3, 4), block_size=(32, 64), normalization=("absmax", "signed-absmax", "none"),
                  fixed=(None, "-1,1", "none", "-1,0,1", "-1,-0.5,0,1"), symmetric=(False, True),
                  source=("normal", "laplace"), layout=layouts)

    def make(cls):
        def build(layout, **kw):
            scale, qmax, tensor_size = layout
            return cls(scale=scale, qmax=qmax, tensor_size=tensor_size, **kw)
        return build

    lloyds = _grid(make(LloydRecipe), loss=("l1", "l2"), domain=("weight", "normalized"),
                   partition=("nearest", "halves"), **common)
    assert _one_to_one(lloyds, _lloyd_name) > 1000
    from quantbook.derive.lloyd import _label
    from quantbook.derive.search_lloyd import _name as _search_name, default_samples

    quantiles = _grid(make(QuantileRecipe), domain=("weight", "normalized"), **common)
    assert _one_to_one(quantiles, lambda r: _label("quantile", r)) > 500
    searches = _grid(SearchLloydRecipe, block_size=(16, 48), samples=(10**7, 10**7 + 32, 48 * 1000), seed=(0, 1),
                     loss=("l1", "l2"), fixed=((-1, 0, 1), (-1, 1)), tol=(1e-6, 1e-5), source=("normal", "laplace"))
    # the name of a search fit: its head and every field away from the default (samples: whole blocks of 10**7)
    for r in searches:
        assert (r.samples == default_samples(None, 10**7, r.block_size)) == ("samples=" not in _search_name(r))
    assert _one_to_one(searches, _search_name) > 100
    # the labels are the tables' names, and none reads back as a name of the grammar (which would be another table)
    for kwargs in (dict(scale="e8m0", block_size=32), dict(scale="e8m0", block_size=32, fixed="-1,1")):
        name = derive_lloyd(bits=3, **kwargs).name
        assert name == _lloyd_name(LloydRecipe(bits=3, **kwargs))
        with pytest.raises(UnknownCodebookError):
            resolve_codebook(name)



def test_different_vector_recipes_get_different_names():
    """A derived vector codebook's name says every recipe field away from its default, as the scalar labels do:
    `derive vq -P 2 -N 64 --seed 3` and `--samples 20000` were both vq-2d-64, the registry's grid."""
    from quantbook.codebooks.vector_registry import vector_registry
    from quantbook.derive.vq import VQRecipe, derive_vq
    from quantbook.naming import resolve_vector

    def build(layout, **kw):
        scale, block_size = layout
        return VQRecipe(scale=scale, block_size=block_size, **kw)

    recipes = _grid(build, dim=(1, 2), points=(16, 256), symmetric=(False, True),
                    layout=(("none", None), ("rms", 32), ("absmax", 32), ("rms", 64)), seed=(0, 1),
                    samples=(10**7, 20000), restarts=(4, 2), coarse_samples=(10**5, 1000), max_iter=(500, 50),
                    tol=(1e-6, 1e-5), final_passes=(None, 10), init=("auto", "kmeans++", "hexagonal"),
                    source=("normal", "laplace"))
    assert _one_to_one(recipes, lambda r: r.name) > 10000
    # a name the registry holds is its own recipe's: the grids derived at the defaults keep their names
    registry = vector_registry()
    for r in recipes:
        entry = registry.get(r.name)
        assert entry is None or entry.codebook.recipe == r.to_dict()
    for name, entry in registry.items():
        if entry.codebook.recipe is not None:
            assert VQRecipe.from_dict(entry.codebook.recipe).name == name
    assert {"vq-2d-16", "vq-2d-64", "vq-2d-256", "higgs-2d-256"} <= set(registry)
    # spelled by hand: the head, then each field away from its default in the recipe's order, then the source
    assert VQRecipe(points=64, init="kmeans++").name == "vq-2d-64"   # what auto picks for 64 points
    assert VQRecipe(points=64, final_passes=10).name == "vq-2d-64-final-passes=10"   # the former default's cap
    assert VQRecipe(init="kmeans++", restarts=2).name == "vq-2d-256-restarts=2-init=kmeans++"
    assert VQRecipe(dim=4, points=16, scale="rms", block_size=32, seed=3, tol=1e-5,
                    source="laplace").name == "vq-4d-16-rms32-seed=3-tol=1e-05@laplace"
    assert VQRecipe(dim=4, points=16, final_passes=30).name == "vq-4d-16-final-passes=30"
    cb = derive_vq(dim=1, points=4, samples=20000, final_passes=20)
    assert cb.name == "vq-1d-4-samples=20000-final-passes=20"
    with pytest.raises(UnknownCodebookError):
        resolve_vector(cb.name)
