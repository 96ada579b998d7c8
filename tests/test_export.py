"""Tests for quantbook.export and `quantbook export`.

References are independent of the exporter: the float32 bits a real compiler (gcc, and
nvcc / NVRTC for CUDA) puts in the compiled tables are compared with ``numpy.float32`` of
the registry's float64 values, the code order with a plain-Python search, the thresholds
with the exact (float64) midpoints of the float32 values rounded once, and the encoder with
a brute-force nearest-value search.  Everything is bit-exact (no tolerance).
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest

import quantbook
from quantbook.cli import main
from quantbook.codebooks.registry import REGISTRY
from quantbook.export import (
    IdentifierError,
    bnb_quant_map,
    c_float_literal,
    c_header,
    c_identifier,
    export,
)

NAMES = list(REGISTRY)


def _ident(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)  # registry names have no runs or leading digits


def _ref_code_to_level(cb) -> list[int]:
    levels = sorted(set(float(v) + 0.0 for v in cb.code))  # -0.0 == 0.0 in the set
    return [levels.index(float(v)) for v in cb.code]


def _ref_level_to_code(cb) -> list[int]:
    levels = sorted(set(float(v) + 0.0 for v in cb.code))
    return [min(i for i, v in enumerate(cb.code) if float(v) == lv) for lv in levels]


def _ref_encoder(cb) -> tuple[list[float], list[int]]:
    """Bounds and rank -> index of the float32 table: a stable sort (Python's; -0.0 == 0.0) and
    the exact midpoint of adjacent float32 values (a float64 sum of two float32 is exact),
    rounded once to float32 -- equal to float32(float32(a + b) / 2) away from subnormals."""
    vals = [float(np.float32(v)) for v in cb.code]
    order = sorted(range(len(vals)), key=lambda i: vals[i])
    s = [vals[i] for i in order]
    return [float(np.float32((a + b) / 2)) for a, b in zip(s[:-1], s[1:])], order


# ----------------------------------------------------------------------------- identifiers
@pytest.mark.parametrize("name, ident", [
    ("nf4", "nf4"), ("nf4-torchao", "nf4_torchao"), ("max1960-n16", "max1960_n16"),
    ("fp4-bnb-cpu", "fp4_bnb_cpu"), ("my table v2.1", "my_table_v2_1"), ("iq4_nl", "iq4_nl"),
    ("a_-b", "a_b"), ("x__y", "x_y"),   # no "__": reserved in C++
    ("nf4-", "nf4"), ("lloyd(l2)", "lloyd_l2"),   # no trailing "_"
])
def test_c_identifier_sanitises(name, ident):
    assert c_identifier(name) == ident


@pytest.mark.parametrize("bad", ["", "---", "4bit", "_hidden", "float", "static", "naïve", "__x"])
def test_c_identifier_rejects(bad):
    with pytest.raises(IdentifierError):
        c_identifier(bad)


@pytest.mark.parametrize("given", [False, True])
def test_c_identifier_says_a_name_must_be_a_string(given):
    """3 was "an empty name cannot be a C identifier"."""
    with pytest.raises(IdentifierError, match="^a name must be a string to make a C identifier from, got int$"):
        c_identifier(3, given=given)
    with pytest.raises(IdentifierError, match="empty name"):
        c_identifier("", given=given)


@pytest.mark.parametrize("given", ["a b", "x.y", "x-", "x__y", "nf4_", "9a", "_a", "a\u00e9"])
def test_a_given_identifier_is_used_as_it_stands_or_refused(given, capsys):
    """A name derived from a codebook's is rewritten; one chosen with --name is not ("nf4_"
    would have been nf4's own identifier)."""
    with pytest.raises(IdentifierError, match="--name"):
        c_identifier(given, given=True)
    assert main(["export", "af4", "-f", "c", "--name", given]) == 2
    assert capsys.readouterr().out == ""
    assert c_identifier("Good_1a", given=True) == "Good_1a"


# C99 6.4.4.2: a decimal floating constant has a point, or an exponent, or both
_C_FLOAT = re.compile(r"-?(?:(?:\d+\.\d*|\.\d+)(?:[eE][+-]?\d+)?|\d+[eE][+-]?\d+)f")


def test_float_literals_round_trip_float32():
    vals = np.concatenate([[1.0, -1.0, 0.0, 0.07958029955625534, 1e-40, 3.4e38, 2**-149, 1e10, -4e9],
                           np.random.default_rng(3).standard_normal(2000)]).astype(np.float32)
    for v in vals:
        lit = c_float_literal(v)
        assert _C_FLOAT.fullmatch(lit), lit
        assert np.float32(lit[:-1]).view(np.uint32) == v.view(np.uint32), lit
    assert c_float_literal(-0.0) == "-0.0f"
    assert c_float_literal(1.0) == "1.0f"
    assert c_float_literal(1e10) == "1e+10f"    # nine digits write it without a point


# ------------------------------------------------------------------------------------ json
@pytest.mark.parametrize("name", NAMES)
def test_json_round_trips_float64(name, tmp_path):
    cb = REGISTRY[name].codebook
    path = tmp_path / f"{name}.json"
    assert main(["export", name, "--format", "json", "-o", str(path)]) == 0
    back = quantbook.Codebook.from_json(path.read_text(encoding="utf-8"))
    assert back == cb  # bitwise float64 levels and code, recipe, source, name
    assert quantbook.load(str(path)).levels.tobytes() == cb.levels.tobytes()


def test_show_reads_exported_json(tmp_path, capsys):
    path = tmp_path / "fp4.json"
    assert main(["export", "fp4", "-o", str(path)]) == 0
    capsys.readouterr()
    assert main(["show", str(path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    ref = REGISTRY["fp4"].codebook
    assert np.array(shown["levels"]).tobytes() == ref.levels.tobytes()
    assert np.array(shown["code"]).view(np.int64).tolist() == ref.code.view(np.int64).tolist()


def test_json_to_stdout(capsys):
    assert main(["export", "af4"]) == 0
    assert quantbook.Codebook.from_json(capsys.readouterr().out) == REGISTRY["af4"].codebook


# ------------------------------------------------------------------------------------ C
_C_MAIN = r"""
#include <stdio.h>
#include <string.h>
%(includes)s
static unsigned bits_of(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
#define DUMP(id, ID) do { \
    printf("%%s bits %%d sizes %%d %%d %%d\n", #id, ID##_BITS, ID##_CODE_SIZE, ID##_N_LEVELS, ID##_N_THRESHOLDS); \
    printf("%%s code", #id); \
    for (int i = 0; i < ID##_CODE_SIZE; ++i) printf(" %%08x", bits_of(id##_code[i])); \
    puts(""); \
    printf("%%s levels", #id); \
    for (int i = 0; i < ID##_N_LEVELS; ++i) printf(" %%08x", bits_of(id##_levels[i])); \
    puts(""); \
    printf("%%s thresholds", #id); \
    for (int i = 0; i < ID##_N_THRESHOLDS; ++i) printf(" %%08x", bits_of(id##_thresholds[i])); \
    puts(""); \
    printf("%%s order", #id); for (int i = 0; i < ID##_CODE_SIZE; ++i) printf(" %%d", id##_order[i]); puts(""); \
    printf("%%s c2l", #id); for (int i = 0; i < ID##_CODE_SIZE; ++i) printf(" %%d", id##_code_to_level[i]); puts(""); \
    printf("%%s l2c", #id); for (int i = 0; i < ID##_N_LEVELS; ++i) printf(" %%d", id##_level_to_code[i]); puts(""); \
    printf("%%s encode", #id); for (int i = 0; i < n_probe; ++i) printf(" %%u", id##_encode(probe[i])); puts(""); \
    printf("%%s decode", #id); \
    for (int i = 0; i < ID##_CODE_SIZE; ++i) printf(" %%08x", bits_of(id##_decode(i))); \
    puts(""); \
} while (0)
int main(void) {
    static const float probe[] = { %(probe)s };
    const int n_probe = (int)(sizeof probe / sizeof probe[0]);
%(dumps)s
    return 0;
}
"""


def _probe_values() -> np.ndarray:
    rng = np.random.default_rng(20261123)
    return np.concatenate([rng.uniform(-1.1, 1.1, 300), [-1.0, 1.0, 0.0, -0.0, 2.0, -2.0]]).astype(np.float32)


def _brute_force_encode(cb, y: np.ndarray) -> np.ndarray:
    """Nearest float32 code value by exhaustive search (the lower value on an exact tie); a value
    stored at several indices goes to the lowest for y <= value and the highest for y > value."""
    vals = [float(np.float32(v)) for v in cb.code]
    distinct = sorted(set(v + 0.0 for v in vals))
    out = []
    for v in y.astype(np.float64):
        near = min(distinct, key=lambda lv: (abs(v - lv), lv))
        idx = [i for i, c in enumerate(vals) if c == near]
        out.append(min(idx) if v <= near else max(idx))
    return np.array(out)


def _parse_dump(text: str) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {}
    for line in text.splitlines():
        ident, key, *vals = line.split()
        out.setdefault(ident, {})[key] = vals
    return out


def _check_tables(name: str, got: dict[str, list[str]], probe: np.ndarray | None) -> None:
    cb = REGISTRY[name].codebook
    hexes = lambda a: [f"{int(b):08x}" for b in np.asarray(a, dtype=np.float64).astype(np.float32).view(np.uint32)]
    levels64 = np.array(sorted(set(float(v) + 0.0 for v in cb.code)))
    assert got["code"] == hexes([float(v) for v in cb.code]), name
    assert got["levels"] == hexes(levels64), name
    bounds, order = _ref_encoder(cb)
    assert got["thresholds"] == hexes(bounds), name
    assert [int(v) for v in got["order"]] == order, name
    assert [int(v) for v in got["c2l"]] == _ref_code_to_level(cb), name
    assert [int(v) for v in got["l2c"]] == _ref_level_to_code(cb), name
    if "decode" in got:
        assert got["decode"] == got["code"]
    if probe is not None:
        enc = np.array([int(v) for v in got["encode"]])
        t32 = np.array(bounds, dtype=np.float32)
        # away from the float32 thresholds, float32 encoding must agree with the exact nearest level
        far = np.min(np.abs(probe[:, None].astype(np.float64) - t32[None, :]), axis=1) > 1e-6
        assert np.array_equal(enc[far], _brute_force_encode(cb, probe[far])), name
        # every result is the Codebook's own float32-threshold encoding too
        assert np.array_equal(enc, cb.encode(probe, thresholds="float32")), name


@pytest.fixture(scope="module")
def headers(tmp_path_factory):
    d = tmp_path_factory.mktemp("headers")
    for name in NAMES:
        cb = REGISTRY[name].codebook
        (d / f"{_ident(name)}.h").write_text(c_header(cb), encoding="utf-8")
        (d / f"{_ident(name)}.cuh").write_text(c_header(cb, cuda=True), encoding="utf-8")
    return d


@pytest.mark.parametrize("compiler, flags", [
    ("gcc", ["-x", "c", "-std=c99"]),
    ("g++", ["-x", "c++", "-std=c++98"]),  # the header is valid C++ too (no C99 hex float literals)
])
def test_c_headers_compile_and_hold_exact_bits(headers, compiler, flags):
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not found")
    probe = _probe_values()
    idents = [_ident(n) for n in NAMES]
    src = _C_MAIN % dict(
        includes="\n".join(f'#include "{i}.h"' for i in idents),
        probe=", ".join(c_float_literal(v) for v in probe),
        dumps="\n".join(f"    DUMP({i}, {i.upper()});" for i in idents),
    )
    (headers / "main.c").write_text(src, encoding="utf-8")
    exe = headers / f"dump-{compiler}"
    cc = subprocess.run([compiler, *flags, "-Wall", "-Wextra", "-Werror", "-pedantic", "-O1",
                         "-o", str(exe), str(headers / "main.c")], capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    dump = _parse_dump(run.stdout)
    for name, ident in zip(NAMES, idents):
        cb = REGISTRY[name].codebook
        assert dump[ident]["bits"] == [str(cb.bits), "sizes", str(cb.code.size), str(cb.n_levels),
                                       str(cb.code.size - 1)]
        _check_tables(name, dump[ident], probe)


@pytest.mark.parametrize("name", ["nf4", "fp4"])
def test_threshold_ties_go_to_the_lower_rank_and_nan_past_every_bound_in_c(headers, tmp_path, name):
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found")
    cb = REGISTRY[name].codebook
    i, I = _ident(name), _ident(name).upper()
    src = (f'#include <stdio.h>\n#include "{headers}/{i}.h"\nint main(void){{volatile float z = 0.0f;'
           f'for(int k=0;k<{I}_N_THRESHOLDS;++k) printf("%u ", {i}_rank_of({i}_thresholds[k]));'
           f'printf("%u", {i}_rank_of(z / z));return 0;}}\n')
    (tmp_path / "t.c").write_text(src, encoding="utf-8")
    subprocess.run(["gcc", "-std=c99", "-o", str(tmp_path / "t"), str(tmp_path / "t.c")], check=True)
    out = subprocess.run([str(tmp_path / "t")], capture_output=True, text=True, check=True).stdout
    ranks = [int(v) for v in out.split()]
    n = cb.code.size - 1  # FP4: 15 bounds for 16 codes, the one between its two zeros at 0 itself
    assert ranks[:n] == list(range(n))  # y on threshold k -> rank k, the lower one
    assert ranks[n] == n  # NaN: past every bound, as quantbook.codebooks.encoding says


# --------------------------------------------------------------------------------- CUDA
_CU_KERNEL = """
%(includes)s
extern "C" __global__ void touch(float* f, unsigned* u, const float* y)
{
    int i = threadIdx.x;
%(body)s
}
"""


def _cuda_source(idents) -> str:
    body = "\n".join(
        f"    f[i] = {i}_decode(i) + {i}_levels[i] + {i}_thresholds[i];"
        f" u[i] = {i}_code_to_level[i] + {i}_level_to_code[i] + {i}_order[i] + {i}_encode(y[i]);"
        for i in idents)
    return _CU_KERNEL % dict(includes="\n".join(f'#include "{i}.cuh"' for i in idents), body=body)


def _ptx_const_arrays(ptx: str) -> dict[str, bytes]:
    """``.const`` arrays in PTX: name -> little-endian bytes (PTX may leave trailing zeros out)."""
    out = {}
    pattern = r"\.const\s+\.align\s+\d+\s+\.b8\s+(\w+)\[(\d+)\]\s*(?:=\s*\{([^}]*)\})?\s*;"
    for m in re.finditer(pattern, ptx):  # no initialiser at all: all zero
        data = bytes(int(b) for b in m.group(3).split(",")) if m.group(3) else b""
        out[m.group(1)] = data + bytes(int(m.group(2)) - len(data))
    return out


def _check_ptx(ptx: str) -> None:
    arrays = _ptx_const_arrays(ptx)
    for name in NAMES:
        i = _ident(name)
        cb = REGISTRY[name].codebook
        idx_t = np.uint8 if cb.bits <= 8 else np.uint16
        got = {
            "code": [f"{v:08x}" for v in np.frombuffer(arrays[f"{i}_code"], "<u4")],
            "levels": [f"{v:08x}" for v in np.frombuffer(arrays[f"{i}_levels"], "<u4")],
            "thresholds": [f"{v:08x}" for v in np.frombuffer(arrays[f"{i}_thresholds"], "<u4")],
            "order": np.frombuffer(arrays[f"{i}_order"], idx_t).tolist(),
            "c2l": np.frombuffer(arrays[f"{i}_code_to_level"], idx_t).tolist(),
            "l2c": np.frombuffer(arrays[f"{i}_level_to_code"], idx_t).tolist(),
        }
        _check_tables(name, got, None)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_cuda_headers_compile_with_nvcc_and_hold_exact_bits(headers):
    idents = [_ident(n) for n in NAMES]
    (headers / "k.cu").write_text(_cuda_source(idents), encoding="utf-8")
    r = subprocess.run(["nvcc", "-ptx", "-arch=compute_75", "-std=c++14", "-Werror", "all-warnings", "-o",
                        str(headers / "k.ptx"), str(headers / "k.cu")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    _check_ptx((headers / "k.ptx").read_text(encoding="utf-8"))


def test_cuda_headers_compile_with_nvrtc_and_hold_exact_bits(headers):
    try:
        from cupy.cuda import nvrtc
    except Exception as exc:  # noqa: BLE001 - cupy absent or its CUDA libraries missing
        pytest.skip(f"NVRTC not importable through cupy: {exc}")
    idents = [_ident(n) for n in NAMES]
    src = _cuda_source(idents)
    hdr_src = [(headers / f"{i}.cuh").read_text(encoding="utf-8").encode() for i in idents]
    hdr_names = [f"{i}.cuh".encode() for i in idents]
    try:
        prog = nvrtc.createProgram(src, "k.cu", hdr_src, hdr_names)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"NVRTC unusable here: {exc}")
    try:
        nvrtc.compileProgram(prog, ["-arch=compute_75"])
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"NVRTC rejected the headers: {exc}\n{nvrtc.getProgramLog(prog)}")
    ptx = nvrtc.getPTX(prog)
    _check_ptx(ptx.decode() if isinstance(ptx, bytes) else ptx)


@pytest.mark.parametrize("bits", [8, 12])
def test_a_cuda_header_beyond_constant_memory_compiles_to_sass(nvrtc, bits):
    """Constant memory holds 64 KiB; a 12-bit table's header (about 100 KB of tables) goes to
    global memory, else ptxas refuses it ("too much global constant data")."""
    from quantbook import Codebook
    from quantbook.bulk.gpu.compile import compile_source

    cb = Codebook(np.linspace(-1, 1, 2**bits), bits=bits, name=f"u{bits}")
    src = export(cb, "cuda") + (f'extern "C" __global__ void k(const float* y, unsigned short* c, float* d) '
                                f'{{ c[threadIdx.x] = u{bits}_encode(y[threadIdx.x]); '
                                f'd[threadIdx.x] = u{bits}_decode(c[threadIdx.x]); }}\n')
    cubin = compile_source(src, "sm_80", output="cubin")
    assert cubin[:4] == b"\x7fELF"
    assert ("__constant__" in src) == (bits == 8)


@pytest.mark.parametrize("points", [8192, 8193])
def test_a_cuda_vector_table_of_exactly_64_kib_stays_in_constant_memory(nvrtc, points):
    """Constant memory holds 64 KiB (CUDA C++ Programming Guide): a table of 8192 points of
    two floats (65 536 bytes) fits there, and ptxas builds it; one more point goes to global
    memory."""
    from quantbook.bulk.gpu.compile import compile_source
    from quantbook.codebooks.vector import VectorCodebook

    pts = np.random.default_rng(0).standard_normal((points, 2))
    src = export(VectorCodebook("v", pts), "cuda")
    src += ('extern "C" __global__ void k(const float* y, unsigned* c, float* d) '
            '{ c[threadIdx.x] = v_encode(y + 2 * threadIdx.x); v_decode(c[threadIdx.x], d + 2 * threadIdx.x); }\n')
    assert compile_source(src, "sm_80", output="cubin")[:4] == b"\x7fELF"
    assert ("static __constant__ float v_points" in src) == (points == 8192)


# ---------------------------------------------------------------------------- npy / bnb
def test_npy_is_the_index_to_value_table(tmp_path):
    path = tmp_path / "fp4.npy"
    assert main(["export", "fp4", "--format", "npy", "-o", str(path)]) == 0
    arr = np.load(path)
    assert arr.dtype == np.float32 and arr.shape == (16,)
    ref = np.array([v / np.float32(12) for v in np.float32([0, 0.0625, 8, 12, 4, 6, 2, 3])], dtype=np.float32)
    assert arr[:8].view(np.uint32).tolist() == ref.view(np.uint32).tolist()
    assert arr[9:].view(np.uint32).tolist() == (-ref[1:]).view(np.uint32).tolist()


@pytest.mark.parametrize("name, quant_type, builtin", [
    ("nf4", "nf4", True), ("fp4", "fp4", True), ("fp4-bnb-cpu", "fp4", True),
    ("af4", "af4", False), ("nf4-torchao", "nf4-torchao", False), ("int4-sym", "int4-sym", False),
])
def test_bnb_quant_map(name, quant_type, builtin, tmp_path):
    path = tmp_path / "qm.npz"
    assert main(["export", name, "--format", "bnb", "-o", str(path)]) == 0
    d = np.load(path)
    assert str(d["quant_type"]) == quant_type and bool(d["bnb_builtin"]) is builtin
    qm = d["quant_map"]
    assert qm.dtype == np.float32 and qm.shape == (16,)
    cb = REGISTRY[name].codebook
    assert qm[: cb.code.size].tobytes() == np.asarray(cb.code, dtype=np.float32).tobytes()
    if cb.code.size < 16:  # int4-sym: 15 entries, padded with 0.0 (zero is a level)
        assert np.all(qm[cb.code.size:] == 0.0)


def test_bnb_8bit_maps_stay_ascending():
    """bitsandbytes' 8-bit quantizer (csrc/kernels.cu, dQuantize) binary-searches the quant map,
    so the map must be ascending: a short table is padded with its largest entry (indices
    kept), and a table stored in another order is refused."""
    from quantbook import Codebook

    cb = Codebook(np.linspace(-1, 1, 201), bits=8, name="u201")
    qm = bnb_quant_map(cb)
    assert qm.shape == (256,) and np.all(np.diff(qm) >= 0)
    assert qm[:201].tobytes() == cb.code_f32.tobytes() and np.all(qm[201:] == 1.0)
    levels = np.linspace(-1, 1, 201)
    shuffled = Codebook(levels, bits=8, name="shuffled", code=levels[::-1])
    with pytest.raises(ValueError, match="ascending"):
        bnb_quant_map(shuffled)


def test_bnb_nf4_quant_map_matches_bitsandbytes_digits():
    # bitsandbytes/functional.py get_4bit_type("nf4") (see registry citation): independent literal copy
    digits = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
              -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
              0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
              0.7229568362236023, 1.0]
    assert bnb_quant_map(REGISTRY["nf4"].codebook).tobytes() == np.float32(digits).tobytes()


def test_bnb_loads_into_torch_quant_state_fields(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "nf4.npz"
    assert main(["export", "nf4", "-f", "bnb", "-o", str(path)]) == 0
    d = np.load(path)
    qm = torch.from_numpy(d["quant_map"])  # what QuantState(code=...) holds
    assert qm.dtype == torch.float32 and qm.numel() == 16
    # dequantize one packed byte as bitsandbytes' default backend does: high nibble first
    byte = torch.tensor([0x7F], dtype=torch.uint8)
    vals = qm[torch.stack([byte >> 4, byte & 0xF], -1).long().flatten()]
    assert vals.tolist() == [0.0, 1.0]


# --------------------------------------------------------------------------------- CLI errors
def _err(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_cli_errors(capsys, tmp_path):
    assert "does not exist" in _err(capsys, ["export", "nf4", "-f", "c", "-o", str(tmp_path / "no" / "x.h")])
    assert "directory" in _err(capsys, ["export", "nf4", "-f", "c", "-o", str(tmp_path)])
    assert "output path is empty" in _err(capsys, ["export", "nf4", "-f", "c", "-o", ""])
    assert "unknown codebook" in _err(capsys, ["export", "nf4x", "-f", "c"])
    assert "no such codebook file" in _err(capsys, ["export", "missing.json"])
    assert "invalid choice" in _err(capsys, ["export", "nf4", "-f", "xml"])
    assert "bnb format needs" in _err(capsys, ["export", "max1960-n8", "-f", "bnb", "-o", str(tmp_path / "a.npz")])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "4bit table", "bits": 2, "levels": [-1, 0, 1]}), encoding="utf-8")
    assert "--name" in _err(capsys, ["export", str(bad), "-f", "c"])
    assert "keyword" in _err(capsys, ["export", "nf4", "-f", "c", "--name", "float"])


def test_a_dash_for_the_output_is_standard_output(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "nf4", "-f", "c", "-o", "-"]) == 0
    assert "static const float nf4_code[16]" in capsys.readouterr().out
    assert not (tmp_path / "-").exists()


def test_cli_name_override_and_binary_stdout(capsys, tmp_path, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "4bit table", "bits": 2, "levels": [-1, 0, 1]}), encoding="utf-8")
    assert main(["export", str(bad), "-f", "c", "--name", "t4"]) == 0
    assert "static const float t4_code[3]" in capsys.readouterr().out
    # binary to a non-terminal stdout goes to its byte buffer
    buf = io.BytesIO()

    class _Out:
        buffer = buf

        @staticmethod
        def isatty():
            return False

    monkeypatch.setattr("sys.stdout", _Out)
    assert main(["export", "nf4", "-f", "npy"]) == 0
    assert np.load(io.BytesIO(buf.getvalue())).tobytes() == REGISTRY["nf4"].codebook.code_f32.tobytes()


def test_export_function_types():
    cb = REGISTRY["nf4"].codebook
    assert isinstance(export(cb, "json"), str) and isinstance(export(cb, "c"), str)
    assert isinstance(export(cb, "npy"), bytes) and isinstance(export(cb, "bnb"), bytes)
    with pytest.raises(ValueError):
        export(cb, "xml")


def test_export_derived_shorthand_keeps_recipe(tmp_path):
    path = tmp_path / "l.json"
    assert main(["export", "lloyd-l2-64", "-o", str(path)]) == 0
    cb = quantbook.Codebook.from_json(path.read_text(encoding="utf-8"))
    assert cb.name == "lloyd-l2-64" and cb.recipe["method"] == "lloyd" and cb.recipe["block_size"] == 64
    from quantbook.derive import derive_from_recipe

    assert derive_from_recipe(cb.recipe).levels.tobytes() == cb.levels.tobytes()  # recipe re-derives it


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_bnb_export_loads_into_bitsandbytes_quant_state(quant_type, tmp_path):
    """The exported quant map is bit-identical to the one bitsandbytes itself stores, and
    QuantState.from_dict accepts it in place of its own (CPU, pure-torch backend)."""
    torch = pytest.importorskip("torch")
    F = pytest.importorskip("bitsandbytes.functional")
    path = tmp_path / "qm.npz"
    assert main(["export", quant_type, "-f", "bnb", "-o", str(path)]) == 0
    d = np.load(path)
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    q, state = F.quantize_4bit(x, blocksize=64, quant_type=quant_type)
    assert str(d["quant_type"]) == state.quant_type
    assert d["quant_map"].view(np.uint32).tolist() == state.code.numpy().view(np.uint32).tolist()
    packed = state.as_dict(packed=True)
    packed["quant_map"] = torch.from_numpy(d["quant_map"])
    mine = F.QuantState.from_dict(packed, device=torch.device("cpu"))
    assert torch.equal(F.dequantize_4bit(q, mine), F.dequantize_4bit(q, state))


def test_one_level_header_compiles_without_warnings(tmp_path):
    """A 1-level table has no thresholds: no `i < 0` loop (-Wtype-limits), encode gives code 0."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not found")
    cb = quantbook.Codebook(levels=[0.25], bits=1, name="one")
    (tmp_path / "one.h").write_text(c_header(cb), encoding="utf-8")
    (tmp_path / "m.c").write_text('#include <stdio.h>\n#include "one.h"\n'
                                  'int main(void){printf("%u %u %g", ONE_N_THRESHOLDS, one_encode(0.9f), '
                                  '(double)one_decode(0));return 0;}\n', encoding="utf-8")
    subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-o", str(tmp_path / "m"),
                    str(tmp_path / "m.c")], check=True, capture_output=True)
    out = subprocess.run([str(tmp_path / "m")], capture_output=True, text=True, check=True).stdout
    assert out == "0 0 0.25"


# --------------------------------------------------------------------------- bad outputs
def test_export_to_a_path_ending_in_a_slash_creates_nothing(tmp_path, capsys):
    target = str(tmp_path / "newdir") + "/"
    assert "names a directory" in _err(capsys, ["export", "nf4", "-o", target])
    assert list(tmp_path.iterdir()) == []  # no file called "newdir"


def test_codebook_beyond_float32_cannot_be_exported(tmp_path, capsys):
    """float32 tables (npy, bnb, C) of such levels would hold ±inf: the codebook itself is refused."""
    with pytest.raises(quantbook.CodebookError, match="float32"):
        quantbook.Codebook(levels=[-1e39, 0.0, 1e39], bits=2)
    src = tmp_path / "wide.json"
    src.write_text(json.dumps({"name": "wide", "bits": 2, "levels": [-1e39, 0.0, 1.0]}), encoding="utf-8")
    for fmt in ("npy", "bnb", "c"):
        out = tmp_path / f"wide.{fmt}"
        assert "float32" in _err(capsys, ["export", str(src), "-f", fmt, "-o", str(out)])
        assert not out.exists()


def test_the_library_functions_name_what_they_take():
    """A name where a Codebook is wanted is a TypeError that says what to pass, not an
    AttributeError from inside (the command line resolves names; the library does not guess
    the block size a derived name would need)."""
    from quantbook.verify import audit_one

    with pytest.raises(TypeError, match=r"export needs a Codebook or a VectorCodebook .*got 'nf4'"):
        export("nf4", "c")
    with pytest.raises(TypeError, match="got int"):
        export(3, "json")
    with pytest.raises(TypeError, match=r"audit_one needs a registry entry .*got 'nf4'"):
        audit_one("nf4")
    assert audit_one(REGISTRY["nf4"]).reproduced


_SCALAR_HELPERS = ("c_header", "npy_bytes", "bnb_bytes", "bnb_quant_map", "bnb_quant_type")
_VECTOR_HELPERS = ("vector_c_header", "vector_npy_bytes")


@pytest.mark.parametrize("helper", _SCALAR_HELPERS + _VECTOR_HELPERS)
@pytest.mark.parametrize("given", ["nf4", "lloyd-l2", "higgs-2d-16", "other-kind", 3])
def test_the_export_helpers_refuse_what_is_not_their_codebook_in_one_line(helper, given):
    """A name, the other kind of codebook or any other object is one TypeError naming the
    helper and what it got (it was an AttributeError from inside); for a name of its kind, the
    call it suggests really makes a codebook of that name, which the helper takes; a name of
    the other kind is said to be one (the call would give what the helper refuses)."""
    import quantbook.bulk
    import quantbook.naming
    from quantbook.codebooks.vector_registry import get_vector

    fn = getattr(quantbook.export, helper)
    vector = helper in _VECTOR_HELPERS
    if given == "other-kind":
        given = quantbook.get("nf4") if vector else get_vector("higgs-2d-16")
    with pytest.raises(TypeError) as info:
        fn(given)
    msg = str(info.value)
    assert msg.startswith(f"{helper} needs a {'VectorCodebook' if vector else 'Codebook'} object, got ")
    assert "\n" not in msg
    if not isinstance(given, str):
        assert (type(given).__name__ + (f" {given.name!r}" if hasattr(given, "name") else "")) in msg
        return
    named_vector = given == "higgs-2d-16"
    if named_vector != vector:
        assert msg.endswith(f"got {given!r}, the name of a {'vector' if named_vector else 'scalar'} codebook: "
                            f"this takes a {'vector' if vector else 'scalar'} one")
        return
    call = re.search(r"(quantbook\.\S+\(.*\)) gives", msg).group(1)
    cb = eval(call, {"quantbook": quantbook, "block_size": 64})
    assert cb.name.startswith(given)
    fn(cb)


def test_a_headers_command_can_be_run_again(tmp_path, capsys):
    """The header says the command that made it: a file by its path (quoted for a shell; it
    said `quantbook export unnamed`), a name by the resolved name (lloyd-l2 at -B 32 is
    lloyd-l2-32)."""
    import shlex

    f = tmp_path / "my cb.json"
    f.write_text('{"bits": 2, "levels": [-1, 0, 1]}', encoding="utf-8")
    for spec, argv, want in ((str(f), [], f"quantbook export {shlex.quote(str(f))} --format c"),
                             ("lloyd-l2", ["-B", "32"], "quantbook export lloyd-l2-32 --format c")):
        assert main(["export", spec, "-f", "c", *argv]) == 0
        line = next(ln for ln in capsys.readouterr().out.splitlines() if "Generated by" in ln)
        assert f"(`{want}`)" in line, line
        cmd = shlex.split(want)[2:]   # the command it names gives the same header
        assert main(["export", *cmd]) == 0 and f"(`{want}`)" in capsys.readouterr().out


def test_only_bitsandbytes_own_tables_are_named_as_its_built_in_types(tmp_path, capsys):
    """bitsandbytes decodes quant_type nf4/fp4 with built-in tables, whatever quant map is
    stored: a table that is not theirs must not carry the name, in a file or in a state."""
    from quantbook.bulk import quantize

    edited = quantbook.Codebook(levels=np.r_[REGISTRY["nf4"].codebook.levels[:-1], 0.999], bits=4, name="nf4")
    path = tmp_path / "edited.json"
    path.write_text(edited.to_json(), encoding="utf-8")
    out = tmp_path / "e.npz"
    assert main(["export", str(path), "-f", "bnb", "-o", str(out)]) == 0
    d = np.load(out)
    assert str(d["quant_type"]) == "custom-nf4" and not bool(d["bnb_builtin"])
    assert main(["export", "af4", "-f", "bnb", "--name", "FP4", "-o", str(out)]) == 2
    assert "--name 'FP4' is a type bitsandbytes decodes with its built-in table" in capsys.readouterr().err
    x = np.linspace(-1, 1, 256, dtype=np.float32)
    assert quantize(x, edited, 64)[1].as_dict()["quant_type"] == "custom-nf4"
    assert quantize(x, "fp4-bnb-cpu", 64)[1].as_dict()["quant_type"] == "fp4"   # bitsandbytes' CPU table
    assert quantize(x, "fp4", 16, scale="e4m3")[1].quant_type == "custom-fp4"   # not bitsandbytes' layout


def test_a_bnb_quant_map_beyond_one_is_warned_about_as_quantize_warns(tmp_path):
    from quantbook.bulk import CodebookRangeWarning

    with pytest.warns(CodebookRangeWarning, match="'max1960-n16' has levels up to 2.73"):
        export(REGISTRY["max1960-n16"].codebook, "bnb")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export(REGISTRY["nf4"].codebook, "bnb")


def test_a_file_name_given_to_a_vector_helper_points_to_the_vector_reader():
    # a name that is neither grammar's (a file) is read as the kind the helper wants, not as a scalar name
    from quantbook.export.arrays import vector_npy_bytes

    with pytest.raises(TypeError, match=re.escape("quantbook.naming.resolve_vector('my_grid.json') gives its")):
        vector_npy_bytes("my_grid.json")


@pytest.mark.parametrize("bad", [b"nf4", 0, False, {}, ["nf4"], 1.5])
@pytest.mark.parametrize("vector", [False, True])
def test_a_header_spelling_is_a_str(bad, vector):
    from quantbook.codebooks.vector_registry import get_vector

    cb = get_vector("higgs-2d-16") if vector else quantbook.get("nf4")
    with pytest.raises(ValueError, match="spelling must be a str"):
        export(cb, "c", spelling=bad)


def test_export_refuses_a_layout_or_format_it_cannot_write():
    from quantbook.codebooks.vector_registry import get_vector
    from quantbook.export import HeaderLayout

    cb = quantbook.get("e2m1")
    layout = HeaderLayout("e4m3", 16, 6.0, np.asarray(cb.code, np.float32))
    for fmt in ("json", "npy", "bnb"):   # the layout would be dropped in silence
        with pytest.raises(ValueError, match=f"^a scaled layout is written only into c and cuda headers, not format "
                                             f"'{fmt}'$"):
            export(cb, fmt, layout=layout)
    grid = get_vector("higgs-2d-16")
    with pytest.raises(ValueError, match="^a scaled layout .* applies to scalar codebooks, not to vector codebooks$"):
        export(grid, "c", layout=layout)
    with pytest.raises(ValueError, match="^a vector codebook exports as json, c, cuda, npy, not 'bnb'$"):
        export(grid, "bnb")
    with pytest.raises(ValueError, match="^layout must be a HeaderLayout, got str$"):
        c_header(cb, layout="e4m3")
    with pytest.raises(ValueError, match="^the layout table has 8 entries, the code 16$"):
        c_header(cb, layout=HeaderLayout("e4m3", 16, 6.0, np.ones(8, np.float32)))
    for table in (np.ones(16), np.ones((4, 4), np.float32), np.array([1.0, np.inf], np.float32)):
        with pytest.raises(ValueError, match="^the layout table must be a 1-D array of finite float32 values$"):
            HeaderLayout("e4m3", 16, 6.0, table)
