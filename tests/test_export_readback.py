"""Every export format read back by a consumer that is not quantbook, compared bit for bit with the
codebook's float32 values (numpy's float32 of its float64 table).

* C headers: gcc (C99, pedantic) and g++ (C++17) compile a program that includes them -- each
  header twice, two tables concatenated into one header, the lot in two translation units linked
  together -- and prints every value with ``%a``; Python reads the hex back (``float.fromhex``).
* CUDA headers: nvcc compiles a kernel that uses every table for sm_90, to an object and to PTX;
  the arrays' bytes are read from the PTX (``.const`` for ``__constant__``, ``.global`` for
  ``__device__``).
* JSON: Python's ``json`` with NaN/Infinity refused, and node's ``JSON.parse`` (strict by the
  standard) with ``Math.fround`` doing the float32 rounding.
* ``.npy``: a reader written from the NPY format's specification (numpy.lib.format: magic,
  version, header length, a literal dict with ``descr``, ``fortran_order``, ``shape``) and
  ``np.load(allow_pickle=False)``.
* ``bnb``: bitsandbytes' own bytes (tests/data/bnb_vectors.npz, made by
  tests/data/make_bnb_vectors.py): its ``create_dynamic_map()`` for an 8-bit table, and its packed
  NF4/FP4 codes and absmax decoded with the exported quant map (``code[nibble] * absmax``, high
  nibble first) against its ``dequantize_4bit`` output.

Tables: the registry (1, 2, 3 and 4 bits, FP4's -0.0), float32's extremes with both zeros, an
8-bit and a 12-bit table, names that are not C identifiers or are keywords, and vector codebooks.
Tests needing a compiler skip with the reason where it is absent; each compiles once per module.
"""

from __future__ import annotations

import ast
import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from quantbook import Codebook
from quantbook.codebooks.codebook import CodebookError
from quantbook.codebooks.registry import REGISTRY
from quantbook.codebooks.vector import VectorCodebook, VectorCodebookError
from quantbook.naming import resolve_vector
from quantbook.export import export
from test_export import _ptx_const_arrays, _ref_encoder

BNB = np.load(Path(__file__).parent / "data" / "bnb_vectors.npz")
_F = np.finfo(np.float32)
_TINY = float(np.float32(2.0**-149))   # the smallest subnormal
_MAX, _MIN = float(_F.max), float(_F.tiny)


def _scalar_tables() -> dict[str, tuple[Codebook, str | None]]:
    """C identifier -> (codebook, the ``name`` given to the exporter or None)."""
    out: dict[str, tuple[Codebook, str | None]] = {}
    for name, entry in REGISTRY.items():
        out[name.replace("-", "_")] = (entry.codebook, None)
    extremes = [-_MAX, -_TINY, -0.0, 0.0, _TINY, _MIN, _MAX]
    out["float32_extremes"] = (Codebook([v for v in extremes if v or not np.signbit(v)], bits=3,
                                        name="float32 extremes", code=extremes), None)
    dyn = BNB["dynamic_map"].astype(np.float64)
    out["bnb_dynamic"] = (Codebook(dyn, bits=8, name="bnb-dynamic"), None)
    out["u12"] = (Codebook(np.linspace(-1, 1, 2**12), bits=12, name="u12"), None)
    # not identifiers as they stand, or keywords in C23 / C++ (only ever a prefix in the header)
    for name, ident in (("my table v2.1", "my_table_v2_1"), ("and", "and"), ("typeof", "typeof"),
                        ("requires", "requires")):
        out[ident] = (Codebook([-1.0, -0.25, 0.5, 1.0], bits=2, name=name), None)
    # refused as identifiers: exported under a given name
    out["klass"] = (Codebook([-1.0, 1.0], bits=1, name="class"), "klass")
    out["t2bit"] = (Codebook([-1.0, 0.0, 1.0], bits=2, name="2bit"), "t2bit")
    # a source ending in the trigraph for a backslash (C99, C++ before 17) ends a comment line
    out["trigraph"] = (Codebook([-1.0, 0.0, 1.0], bits=2, name="trigraph", source="Table 2 ??/"), None)
    return out


def _vector_tables() -> dict[str, VectorCodebook]:
    pts = np.random.default_rng(7).standard_normal((16, 3))
    pts[0] = [-0.0, _TINY, -_MAX]
    pts[1] = [0.0, -_TINY, _MAX]
    return {"higgs_2d_16": resolve_vector("higgs-2d-16"), "higgs_1d_4": resolve_vector("higgs-1d-4"),
            "vec3_and": VectorCodebook("vec3 and", pts)}


SCALAR = _scalar_tables()
VECTOR = _vector_tables()


def _bits(values) -> list[int]:
    """float32 bit patterns of float64 values, rounded by numpy (the reference)."""
    return np.asarray(values, dtype=np.float64).astype(np.float32).view(np.uint32).tolist()


def _ref_levels(cb: Codebook) -> list[float]:
    return sorted(set(float(v) + 0.0 for v in cb.code))   # -0.0 == 0.0: one level, +0.0


def _write_headers(d: Path, suffix: str, cuda: bool) -> list[str]:
    names = []
    for ident, (cb, given) in SCALAR.items():
        (d / f"{ident}{suffix}").write_text(export(cb, "cuda" if cuda else "c", name=given), encoding="utf-8")
        names.append(f"{ident}{suffix}")
    for ident, cb in VECTOR.items():
        (d / f"{ident}{suffix}").write_text(export(cb, "cuda" if cuda else "c"), encoding="utf-8")
        names.append(f"{ident}{suffix}")
    return names


def test_the_identifiers_are_the_ones_the_tables_are_keyed_by():
    for ident, (cb, given) in SCALAR.items():
        assert f"float {ident}_code[" in export(cb, "c", name=given), ident
    for ident, cb in VECTOR.items():
        assert f"float {ident}_points[" in export(cb, "c"), ident


# ------------------------------------------------------------------------------------ C / C++
_C_MAIN = r"""
#include <stdio.h>
%(includes)s
static void row(const char *id, const char *key, const float *v, int n)
{
    printf("%%s %%s", id, key);
    for (int i = 0; i < n; ++i) printf(" %%a", (double)v[i]);
    puts("");
}
#define SCALAR(id, ID) do { \
    float dec[ID##_CODE_SIZE]; \
    for (int i = 0; i < ID##_CODE_SIZE; ++i) dec[i] = id##_decode((unsigned)i); \
    row(#id, "code", id##_code, ID##_CODE_SIZE); \
    row(#id, "levels", id##_levels, ID##_N_LEVELS); \
    row(#id, "thresholds", id##_thresholds, ID##_N_THRESHOLDS); \
    row(#id, "decode", dec, ID##_CODE_SIZE); \
} while (0)
#define VECTOR(id, ID) row(#id, "points", &id##_points[0][0], ID##_SIZE * ID##_DIM)
float other_unit(void);
int main(void)
{
%(dumps)s
    printf("other %%a\n", (double)other_unit());
    return 0;
}
"""

# a second translation unit with every header: static tables and functions must not collide at link time
_C_OTHER = """
%(includes)s
float other_unit(void);
float other_unit(void) { return nf4_decode(15) + higgs_2d_16_points[0][0]; }
"""


@pytest.fixture(scope="module")
def c_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("c")
    names = _write_headers(d, ".h", cuda=False)
    # two tables in one header: the concatenation of two exports
    (d / "both.h").write_text((d / "nf4.h").read_text(encoding="utf-8") + (d / "fp4.h").read_text(encoding="utf-8"),
                              encoding="utf-8")
    includes = "\n".join(f'#include "{n}"' for n in ["both.h"] + names + names)   # each header twice
    dumps = [f"    SCALAR({i}, {i.upper()});" for i in SCALAR] + [f"    VECTOR({i}, {i.upper()});" for i in VECTOR]
    (d / "main.c").write_text(_C_MAIN % dict(includes=includes, dumps="\n".join(dumps)), encoding="utf-8")
    (d / "other.c").write_text(_C_OTHER % dict(includes=includes), encoding="utf-8")
    return d


def _parse(text: str) -> dict[tuple[str, str], list[int]]:
    out = {}
    for line in text.splitlines():
        ident, key, *vals = line.split()
        out[ident, key] = np.array([float.fromhex(v) for v in vals], np.float32).view(np.uint32).tolist()
    return out


def _check_scalar(got: dict, ident: str, cb: Codebook) -> None:
    assert got[ident, "code"] == _bits(cb.code), ident
    assert got[ident, "decode"] == _bits(cb.code), ident
    assert got[ident, "levels"] == _bits(_ref_levels(cb)), ident
    assert got[ident, "thresholds"] == _bits(_ref_encoder(cb)[0]), ident


@pytest.mark.parametrize("compiler, flags", [
    ("gcc", ["-x", "c", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]),
    ("g++", ["-x", "c++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic"]),
])
def test_c_headers_read_back_with_percent_a(c_dir, compiler, flags):
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not found")
    exe = c_dir / f"dump-{compiler}"
    cc = subprocess.run([compiler, *flags, "-O1", "-o", str(exe), str(c_dir / "main.c"), str(c_dir / "other.c")],
                        capture_output=True, text=True, cwd=c_dir)
    assert cc.returncode == 0, cc.stderr[-4000:]
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    *tables, other = out.splitlines()
    got = _parse("\n".join(tables))
    for ident, (cb, _) in SCALAR.items():
        _check_scalar(got, ident, cb)
    for ident, cb in VECTOR.items():
        assert got[ident, "points"] == _bits(cb.points.reshape(-1)), ident
    # the other translation unit's tables are the same
    ref = np.float32(REGISTRY["nf4"].codebook.code[15]) + np.float32(VECTOR["higgs_2d_16"].points[0, 0])
    assert other.split()[0] == "other" and np.float32(float.fromhex(other.split()[1])) == ref


def test_a_trigraph_at_the_end_of_a_comment_line_is_broken(tmp_path):
    """``??/`` is a backslash in C99: at the end of the Source line it spliced the next line into
    it, and gcc -Wall refused the header under -Werror."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found")
    cb, _ = SCALAR["trigraph"]
    (tmp_path / "t.h").write_text(export(cb, "c"), encoding="utf-8")
    (tmp_path / "t.c").write_text('#include "t.h"\nint main(void) { return (int)trigraph_decode(1); }\n',
                                  encoding="utf-8")
    cc = subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-o", str(tmp_path / "t"),
                         str(tmp_path / "t.c")], capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr


def test_headers_of_names_that_differ_only_in_case_include_together(tmp_path):
    """``nf4``, ``NF4`` and ``Nf4`` are three C identifiers: their guards and macros are three too
    (one guard silently skipped the second header; one macro would be redefined), and a
    program including all three reads each table and its sizes (-Werror: no redefinition)."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found")
    cbs = {"nf4": REGISTRY["nf4"].codebook, "NF4": Codebook([-1.0, -0.5, 0.0, 0.5, 1.0], bits=3, name="NF4"),
           "Nf4": Codebook([-1.0, 0.0, 1.0], bits=2, name="Nf4")}
    macros = {"nf4": "NF4", "NF4": "nf4", "Nf4": "Nf4"}   # the spelling identifiers.py states
    for i, cb in enumerate(cbs.values()):
        (tmp_path / f"h{i}.h").write_text(export(cb, "c"), encoding="utf-8")
    rows = "\n".join(f'    printf("{ident} %d %d %a\\n", {m}_BITS, {m}_N_LEVELS, (double){ident}_decode(0));'
                     for ident, m in macros.items())
    (tmp_path / "t.c").write_text('#include <stdio.h>\n#include "h0.h"\n#include "h1.h"\n#include "h2.h"\n'
                                  f"int main(void)\n{{\n{rows}\n    return 0;\n}}\n", encoding="utf-8")
    cc = subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-o", str(tmp_path / "t"),
                         str(tmp_path / "t.c")], capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr[-4000:]
    out = subprocess.run([str(tmp_path / "t")], capture_output=True, text=True, check=True).stdout.split("\n")
    for line, (ident, cb) in zip(out, cbs.items()):
        name, bits, n_levels, first = line.split()
        assert (name, int(bits), int(n_levels)) == (ident, cb.bits, len(_ref_levels(cb)))
        assert np.float32(float.fromhex(first)) == np.float32(cb.code[0])


@pytest.mark.parametrize("cuda", [False, True], ids=["c", "cuda"])
def test_the_include_guard_is_the_hash_of_the_definitions_it_guards(cuda, monkeypatch):
    """The guard rebuilt from the header's own text as c_header.py states it: the first 12 hex
    digits (capitals) of the SHA-256 of the UTF-8 lines it guards with \\n line ends.  What it
    hashes holds neither the version nor the codebook's name: one table exported by another
    version, or under another name that gives the same identifier, keeps the guard."""
    import hashlib
    import importlib
    import re

    c_header = importlib.import_module("quantbook.export.c_header")   # the module, not its function

    suffix = "CUH" if cuda else "H"
    flavour = "cuda" if cuda else "c"
    for cb, macro in ((SCALAR["nf4"][0], "NF4"), (VECTOR[next(iter(VECTOR))], None)):
        text = export(cb, flavour)
        guard, rest = re.search(r"^#ifndef (\w+)\n#define \1\n\n(.*)\Z", text, re.M | re.S).groups()
        body, end = rest.rsplit("#endif", 1)
        assert end == f" /* {guard} */\n"
        digest = hashlib.sha256(body.encode("utf-8")).hexdigest()[:12].upper()
        macro = macro or re.search(r"^#define (\w+)_DIM ", body, re.M).group(1)
        assert guard == f"QUANTBOOK_{macro}_{digest}_{suffix}"
    tables = [Codebook([-1.0, 0.0, 1.0], bits=2, name=n, source=s) for n, s in (("nf4-x", "one"), ("nf4_x", "two"))]
    guards = {re.search(r"#ifndef (\w+)", export(t, flavour)).group(1) for t in tables}
    monkeypatch.setattr(c_header, "installed_version", lambda: "0.0.0-other")
    assert "quantbook 0.0.0-other" in export(tables[0], flavour)
    guards.add(re.search(r"#ifndef (\w+)", export(tables[0], flavour)).group(1))
    assert len(guards) == 1


@pytest.mark.parametrize("same", [False, True], ids=["other-tables", "same-tables"])
@pytest.mark.parametrize("kind", ["scalar", "vector"])
def test_headers_of_names_that_give_one_identifier_never_stand_in_for_each_other(tmp_path, kind, same):
    """``nf4-x`` and ``nf4_x`` give one C identifier, ``nf4_x``.  A program that includes both headers
    and reads the tables of the one it includes last either fails to compile (the symbols are
    defined twice) or reads that header's own values (the same tables): one include guard for both
    skipped the second header, and the program compiled against the first one's values."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found")
    if kind == "scalar":
        tables = [[-1.0, -0.5, 0.0, 0.5, 1.0], [-1.0, -0.5, 0.0, 0.5, 1.0] if same else [-1.0, -0.25, 0.0, 0.25, 1.0]]
        cbs = [Codebook(t, bits=3, name=n) for t, n in zip(tables, ("nf4-x", "nf4_x"))]
        first, count = "nf4_x_code[0]", "NF4_X_CODE_SIZE"
    else:
        rng = np.random.default_rng(3)
        pts = rng.standard_normal((4, 2))
        cbs = [VectorCodebook("nf4-x", pts), VectorCodebook("nf4_x", pts if same else rng.standard_normal((4, 2)))]
        first, count = "nf4_x_points[0][0]", "NF4_X_SIZE * NF4_X_DIM"
    for i, cb in enumerate(cbs):
        (tmp_path / f"h{i}.h").write_text(export(cb, "c"), encoding="utf-8")
    for order in ((0, 1), (1, 0)):
        meant = cbs[order[1]]
        includes = "".join(f'#include "h{i}.h"\n' for i in order)
        (tmp_path / "t.c").write_text(f"#include <stdio.h>\n{includes}int main(void)\n{{\n"
                                      f"    const float *v = &{first};\n"
                                      f'    for (int i = 0; i < {count}; ++i) printf("%a\\n", (double)v[i]);\n'
                                      "    return 0;\n}\n", encoding="utf-8")
        exe = tmp_path / "t"
        cc = subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-o", str(exe),
                             str(tmp_path / "t.c")], capture_output=True, text=True)
        if cc.returncode != 0:
            assert not same and "redefinition of" in cc.stderr, cc.stderr[-4000:]
            continue
        out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
        want = meant.code if kind == "scalar" else meant.points.reshape(-1)
        assert [float.fromhex(v) for v in out] == [float(np.float32(v)) for v in want], (order, same)


# ------------------------------------------------------------------------------------ CUDA
_CU = """
%(includes)s
extern "C" __global__ void touch(float* f, unsigned* u, const float* y)
{
    const unsigned i = threadIdx.x;
    float p[4];
%(body)s
}
"""


def _ptx_arrays(ptx: str) -> dict[str, tuple[str, bytes]]:
    """``.const`` and ``.global`` arrays of PTX: name -> (state space, bytes)."""
    out = {name: ("const", data) for name, data in _ptx_const_arrays(ptx).items()}
    for name, data in _ptx_const_arrays(_globals_as_const(ptx)).items():
        assert name not in out, name
        out[name] = ("global", data)
    return out


def _globals_as_const(ptx: str) -> str:
    """Only the ``.global`` declarations, spelt as ``.const`` for the ``.const`` reader."""
    return "\n".join(line.replace(".global", ".const", 1) for line in ptx.splitlines()
                     if line.lstrip().startswith(".global"))


@pytest.fixture(scope="module")
def ptx(tmp_path_factory):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    d = tmp_path_factory.mktemp("cuda")
    names = _write_headers(d, ".cuh", cuda=True)
    body = []
    for ident in SCALAR:
        body.append(f"    f[i] = {ident}_decode(i) + {ident}_levels[i] + {ident}_thresholds[i];"
                    f" u[i] = {ident}_encode(y[i]) + {ident}_order[i] + {ident}_code_to_level[i]"
                    f" + {ident}_level_to_code[i];")
    for ident in VECTOR:
        body.append(f"    {ident}_decode(i, p); f[i] += p[0]; u[i] += {ident}_encode(y + 4 * i);")
    (d / "k.cu").write_text(_CU % dict(includes="\n".join(f'#include "{n}"' for n in names + names),
                                       body="\n".join(body)), encoding="utf-8")
    flags = ["-arch=sm_90", "-std=c++17", "-Werror", "all-warnings"]
    for out, mode in (("k.o", "-c"), ("k.ptx", "--ptx")):
        r = subprocess.run([nvcc, mode, *flags, "-o", str(d / out), str(d / "k.cu")], capture_output=True,
                           text=True, cwd=d)
        assert r.returncode == 0, f"nvcc {mode}: {r.stderr[-4000:]}"
    assert (d / "k.o").stat().st_size > 0
    return _ptx_arrays((d / "k.ptx").read_text(encoding="utf-8"))


def test_cuda_headers_read_back_from_ptx(ptx):
    le = lambda data: np.frombuffer(data, "<u4").tolist()   # noqa: E731
    for ident, (cb, _) in SCALAR.items():
        space = "global" if cb.bits >= 12 else "const"     # 64 KiB of constant memory
        for key, ref in (("code", cb.code), ("levels", _ref_levels(cb)), ("thresholds", _ref_encoder(cb)[0])):
            assert ptx[f"{ident}_{key}"][0] == space, (ident, key)
            assert le(ptx[f"{ident}_{key}"][1]) == _bits(ref), (ident, key)
    for ident, cb in VECTOR.items():
        assert ptx[f"{ident}_points"][0] == "const"
        assert le(ptx[f"{ident}_points"][1]) == _bits(cb.points.reshape(-1)), ident


# ------------------------------------------------------------------------------------ JSON
def _strict(text: str):
    def refuse(token):
        raise AssertionError(f"{token} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_json_reads_back_with_a_strict_parser():
    for ident, (cb, _) in SCALAR.items():
        d = _strict(export(cb, "json"))
        assert _bits(d["levels"]) == _bits(_ref_levels(cb)), ident
        assert _bits(d.get("code", d["levels"])) == _bits(cb.code), ident   # FP4's -0.0 included
        assert d["bits"] == cb.bits and d["name"] == cb.name
    for ident, cb in VECTOR.items():
        d = _strict(export(cb, "json"))
        assert _bits(np.array(d["points"]).reshape(-1)) == _bits(cb.points.reshape(-1)), ident


_NODE = r"""
const fs = require("fs");
const out = [];
for (const path of process.argv.slice(1)) {
    const d = JSON.parse(fs.readFileSync(path, "utf8"));
    const vals = d.kind === "vector" ? d.points.flat() : (d.code || d.levels);
    const dv = new DataView(new ArrayBuffer(4));
    out.push(vals.map(v => { dv.setFloat32(0, Math.fround(v)); return dv.getUint32(0); }));
}
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node not found")
def test_json_reads_back_in_node(tmp_path):
    paths, refs = [], []
    for ident, (cb, _) in SCALAR.items():
        (tmp_path / f"{ident}.json").write_text(export(cb, "json"), encoding="utf-8")
        paths.append(str(tmp_path / f"{ident}.json"))
        refs.append(_bits(cb.code))
    for ident, cb in VECTOR.items():
        (tmp_path / f"{ident}.json").write_text(export(cb, "json"), encoding="utf-8")
        paths.append(str(tmp_path / f"{ident}.json"))
        refs.append(_bits(cb.points.reshape(-1)))
    r = subprocess.run(["node", "-e", _NODE, *paths], capture_output=True, text=True, check=True)
    assert json.loads(r.stdout) == refs


@pytest.mark.parametrize("recipe", [{"nu": float("inf")}, {"fit": [0.5, float("nan")]}, {"a": {"b": -float("inf")}},
                                    {1: "a"}, {"x": {1, 2}}, {"x": np.complex64(3)}, {"x": np.datetime64(1, "s")}])
def test_a_recipe_json_cannot_hold_is_refused(recipe):
    """``json.dumps`` wrote NaN and Infinity as tokens no JSON parser takes (quantbook's own
    refused the file it had written), turned an int key into a string and failed on a set."""
    with pytest.raises(CodebookError, match="recipe.*(JSON|string)"):
        Codebook([-1.0, 1.0], bits=1, name="r", recipe=recipe)
    with pytest.raises(VectorCodebookError, match="recipe.*(JSON|string)"):
        VectorCodebook("v", [[0.0, 0.0], [1.0, 1.0]], recipe=recipe)


def test_numpy_scalars_in_a_recipe_are_held_as_python_values():
    """A derivation given numpy scalars (``tensor_size=np.int64(2**20)``) put them in its recipe
    as they came: the JSON export failed on them, and refusing them would end a long derivation
    in an error.  They become the Python values (float32's exactly) and the file reads back."""
    given = {"n": np.int64(3), "u": np.uint8(7), "x": np.float32(0.1), "y": np.float64(0.25),
             "b": np.bool_(True), "deep": [{"m": np.int32(-2)}]}
    want = {"n": 3, "u": 7, "x": float(np.float32(0.1)), "y": 0.25, "b": True, "deep": [{"m": -2}]}
    for cb in (Codebook([-1.0, 1.0], bits=1, name="r", recipe=given),
               VectorCodebook("v", [[0.0, 0.0], [1.0, 1.0]], recipe=given)):
        assert cb.recipe == want
        assert type(cb.recipe["n"]) is int and type(cb.recipe["x"]) is float and type(cb.recipe["b"]) is bool
        assert json.loads(export(cb, "json"))["recipe"] == want


# ------------------------------------------------------------------------------------ npy
def _read_npy(data: bytes) -> tuple[dict, bytes]:
    """An .npy file by its specification (numpy.lib.format): b"\\x93NUMPY", major and minor
    version bytes, the header length (uint16 little-endian in version 1, uint32 in 2 and 3),
    the header (a Python literal dict, padded with spaces and ended by a newline), the data."""
    assert data[:6] == b"\x93NUMPY", data[:6]
    major = data[6]
    size = 2 if major == 1 else 4
    n = int.from_bytes(data[8:8 + size], "little")
    start = 8 + size
    header = data[start:start + n].decode("latin1" if major < 3 else "utf8")
    assert header.endswith("\n") and (start + n) % 16 == 0
    return ast.literal_eval(header), data[start + n:]


def _raw_f32(data: bytes, shape: tuple) -> list[int]:
    head, body = _read_npy(data)
    assert head == {"descr": "<f4", "fortran_order": False, "shape": shape}, head
    assert len(body) == 4 * int(np.prod(shape))
    return np.frombuffer(body, "<u4").tolist()


def test_npy_reads_back_by_the_format_and_np_load():
    for ident, (cb, _) in SCALAR.items():
        data = export(cb, "npy")
        assert _raw_f32(data, (cb.code.size,)) == _bits(cb.code), ident
        arr = np.load(io.BytesIO(data), allow_pickle=False)
        assert arr.dtype == np.float32 and arr.view(np.uint32).tolist() == _bits(cb.code), ident
    for ident, cb in VECTOR.items():
        data = export(cb, "npy")
        assert _raw_f32(data, cb.points.shape) == _bits(cb.points.reshape(-1)), ident
        arr = np.load(io.BytesIO(data), allow_pickle=False)
        assert arr.shape == cb.points.shape and arr.view(np.uint32).reshape(-1).tolist() == \
            _bits(cb.points.reshape(-1)), ident


# ------------------------------------------------------------------------------------ bnb
def _bnb_members(cb: Codebook) -> dict[str, tuple[dict, bytes]]:
    data = export(cb, "bnb")
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = {n: _read_npy(z.read(n)) for n in z.namelist()}
    np.load(io.BytesIO(data), allow_pickle=False)["quant_type"]   # nothing in it needs pickle
    return members


def test_bnb_8bit_map_is_bitsandbytes_dynamic_map():
    """bitsandbytes' ``create_dynamic_map()`` (256 float32 values, ascending) exported as an 8-bit
    table gives back its own bytes."""
    head, body = _bnb_members(SCALAR["bnb_dynamic"][0])["quant_map.npy"]
    assert head == {"descr": "<f4", "fortran_order": False, "shape": (256,)}
    assert body == BNB["dynamic_map"].astype("<f4").tobytes()


@pytest.mark.parametrize("name", ["nf4", "fp4"])
def test_bnb_quant_map_decodes_bitsandbytes_bytes_to_its_output(name):
    """bitsandbytes' packed codes (high nibble first) and absmax, decoded with the exported map as
    ``dequantize_4bit`` does (``code[nibble] * absmax``, float32), give its output bit for bit."""
    members = _bnb_members(REGISTRY[name].codebook)
    head, body = members["quant_map.npy"]
    assert head["descr"] == "<f4" and head["shape"] == (16,)
    qm = np.frombuffer(body, "<f4")
    qt_head, qt_body = members["quant_type.npy"]
    assert qt_head["descr"] == "<U3" and qt_body.decode("utf-32-le") == name
    cases = json.loads(BNB["meta"].tobytes())["cases"]
    used = 0
    for k, c in enumerate(cases):
        if c["quant_type"] != name or c["nested"] or c["dtype"] != "float32":
            continue
        packed, absmax, deq = BNB[f"c{k}_packed"], BNB[f"c{k}_absmax"], BNB[f"c{k}_deq"]
        codes = np.stack([packed >> 4, packed & 0xF], axis=1).reshape(-1)[: c["n"]]
        scale = np.repeat(absmax, c["blocksize"])[: c["n"]]
        out = (qm[codes] * scale).astype(np.float32)
        assert out.view(np.uint32).tolist() == deq.view(np.uint32).tolist(), c["name"]
        used += 1
    assert used >= 6
