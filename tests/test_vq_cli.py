"""Vector codebooks on the command line: derive vq, audit --vector, show and export; JSON
fields against docs/json.md; bad input is one line and exit status 2."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from quantbook.codebooks.vector import VectorCodebook
from quantbook.naming import resolve_vector

from checkout import checkout_path
from test_cli_errors import run

DOC = ("docs", "json.md")


def section(title_fragment):
    fields, current, found = {}, None, []
    for line in checkout_path(*DOC).read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            fields[current] = set()
        elif current and line.startswith("| `"):
            names = re.match(r"\| (`[^|]+`) \|", line).group(1)
            fields[current] |= set(re.findall(r"`([^`]+)`", names))
    found = [v for k, v in fields.items() if title_fragment in k]
    assert len(found) == 1, title_fragment
    return found[0]


def paths(obj, prefix=""):
    out = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{prefix}.{k}" if prefix else k
            out.add(p)
            out |= paths(v, p)
    return out


def test_derive_vq_json_fields_and_recipe(capsys, tmp_path):
    f = tmp_path / "g.json"
    code, out, _ = run(capsys, "derive", "vq", "--dim", "2", "--points", "16", "--samples", "20000",
                       "--restarts", "1", "--json", "-o", f)
    assert code == 0
    d = json.loads(out)
    grid = section("Vector grids")
    assert paths(d) - {p for p in paths(d) if p.startswith("recipe.")} == \
        (grid - {p for p in grid if p.startswith("recipe.")}) | section("quantbook derive vq")
    assert {p for p in paths(d) if p.startswith("recipe.")} == {p for p in grid if p.startswith("recipe.")}
    cb = VectorCodebook.from_json(f.read_text(encoding="utf-8"))
    assert np.array_equal(cb.points, np.array(d["points"], dtype=np.float32)) and d["kind"] == "vector"
    # the fresh-sample MSE is an honest estimate: recompute it with a brute-force search
    x = np.random.default_rng(d["eval_seed"]).standard_normal((d["eval_samples"], 2)).astype(np.float32)
    e = np.min(np.sum((x.astype(np.float64)[:, None] - cb.points.astype(np.float64)[None]) ** 2, axis=2), axis=1)
    assert d["mse"] == pytest.approx(e.mean() / 2, rel=1e-9)
    assert d["bits_per_weight"] == 2.0


def test_derive_vq_text_output_is_the_json_run_in_words(capsys, tmp_path):
    argv = ["derive", "vq", "--dim", "2", "--points", "16", "--samples", "20000", "--restarts", "1"]
    code, out, _ = run(capsys, *argv, "--json")
    assert code == 0
    d = json.loads(out)
    code, text, _ = run(capsys, *argv)
    assert code == 0
    lines = text.splitlines()
    assert lines[0] == f"{d['name']}: 16 points in 2-D, 2 bits/weight (index)"
    assert lines[1] == f"source: {d['source']}"
    m = re.match(r"MSE/dim (\S+) ± (\S+) \(fresh sample: (\d+) vectors, seed (\d+)\); on the fitting sample (\S+)$",
                 lines[2])
    assert m and float(m[1]) == pytest.approx(d["mse"], rel=1e-6) and int(m[3]) == d["eval_samples"]
    assert int(m[4]) == d["eval_seed"] and float(m[5]) == pytest.approx(d["fit_mse"], rel=1e-6)
    # the gap to the Gaussian distortion-rate bound D(R) = 2^-2R at R = 2 bits, by hand
    gap = float(re.fullmatch(r"gap to D\(R\)=2\^-2R: (\S+) dB", lines[3])[1])
    assert gap == pytest.approx(10 * np.log10(d["mse"] / 2.0 ** -4), abs=1e-3)
    converged = "yes" if d["converged"] else "no"
    assert lines[4].startswith(f"Lloyd passes on the whole sample {d['iterations']}, converged {converged}")
    if not d["converged"]:   # what it did not reach, and what allows more passes
        assert lines.pop(5) == (f"  not converged: the last pass still lowered the error by {d['change']:.1e} of "
                                f"itself (tol {d['recipe']['tol']:g}); --final-passes N allows more than "
                                f"{d['recipe']['final_passes']}")
    # the points, each float32 written as its shortest float64 repr, in the codebook's order
    assert lines[5] == "points:" and len(lines) == 6 + 16
    got = np.array([[float(v) for v in line.split()] for line in lines[6:]], dtype=np.float32)
    np.testing.assert_array_equal(got, np.array(d["points"], dtype=np.float32))
    # with -o the file holds the points and the listing is left out
    f = tmp_path / "g.json"
    code, text, err = run(capsys, *argv, "-o", f)
    assert code == 0 and "points:" not in text and err == f"wrote {f}\n"
    np.testing.assert_array_equal(VectorCodebook.from_json(f.read_text(encoding="utf-8")).points, got)


def test_show_and_export_json(capsys, tmp_path):
    code, out, _ = run(capsys, "show", "higgs-2d-64", "--json")
    d = json.loads(out)
    assert code == 0 and {p for p in paths(d) if "." not in p} == \
        {p for p in section("Vector grids") if "." not in p}
    f = tmp_path / "h.json"
    assert run(capsys, "export", "higgs-2d-64", "-f", "json", "-o", f)[0] == 0
    assert json.loads(f.read_text(encoding="utf-8")) == d
    assert run(capsys, "show", f)[0] == 0
    code, out, _ = run(capsys, "show", "higgs-1d-4")
    assert "4 points in 1-D" in out and "c223ef09" in out


def test_audit_vector_json(capsys):
    code, out, _ = run(capsys, "audit", "--vector", "--samples", "20000", "--json")
    rows = json.loads(out)
    assert code == 0
    assert set().union(*(paths(r) for r in rows)) == section("Vector audit")
    assert [r["name"] for r in rows][:6] == ["higgs-1d-4", "higgs-1d-8", "higgs-1d-16", "higgs-2d-16",
                                            "higgs-2d-64", "higgs-2d-256"]
    code, out, _ = run(capsys, "audit", "--vector", "--samples", "20000")
    assert code == 0 and "higgs-2d-256" in out and "gap to D(R)" in out


def test_export_npy_and_headers(capsys, tmp_path):
    f = tmp_path / "g.npy"
    assert run(capsys, "export", "higgs-2d-16", "-f", "npy", "-o", f)[0] == 0
    pts = np.load(f)
    assert pts.dtype == np.float32 and np.array_equal(pts, resolve_vector("higgs-2d-16").points)
    for fmt in ("c", "cuda"):
        h = tmp_path / f"g.{fmt}"
        assert run(capsys, "export", "higgs-2d-16", "-f", fmt, "-o", h)[0] == 0
        text = h.read_text(encoding="utf-8")
        assert "float higgs_2d_16_points[16][2]" in text and "#define HIGGS_2D_16_INDEX_BITS 4" in text
        assert ("__constant__" in text) == (fmt == "cuda")


def _float32_misorders(points, n=200_000, seed=0):
    """Vectors a few float32 ulps from the midpoints of pairs of points on which distances
    computed in float32 (differences, squares and sum) pick another point than float64 does."""
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(points), n), rng.integers(0, len(points), n)
    m = ((points[i].astype(np.float64) + points[j]) / 2).astype(np.float32)
    v = (m + rng.integers(-4, 5, m.shape) * np.spacing(m)).astype(np.float32)
    t = (v[:, None, :] - points[None, :, :]).astype(np.float32)
    d32 = (t * t).astype(np.float32).sum(axis=2, dtype=np.float32)
    d64 = ((v[:, None, :].astype(np.float64) - points[None, :, :]) ** 2).sum(axis=2)
    return v[np.argmin(d32, axis=1) != np.argmin(d64, axis=1)]


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_header_encodes_as_nearest(tmp_path, capsys):
    """The header's encoder, compiled, gives VectorCodebook.nearest on random vectors, ties,
    and near-ties that float32 distances would get wrong."""
    cb = resolve_vector("higgs-2d-64")
    h = tmp_path / "g.h"
    assert run(capsys, "export", "higgs-2d-64", "-f", "c", "-o", h)[0] == 0
    rng = np.random.default_rng(5)
    near = _float32_misorders(cb.points)
    assert len(near) > 100
    v = np.concatenate([rng.standard_normal((500, 2)), cb.points[:10], near]).astype(np.float32)
    src = tmp_path / "t.c"
    src.write_text('#include <stdio.h>\n#include "g.h"\nint main(void){float v[2];'
                   'while(scanf("%a %a",&v[0],&v[1])==2){float o[2];unsigned i=higgs_2d_64_encode(v);'
                   'higgs_2d_64_decode(i,o);printf("%u %a %a\\n",i,(double)o[0],(double)o[1]);}return 0;}\n',
                   encoding="utf-8")
    exe = tmp_path / "t"
    subprocess.run(["cc", "-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Werror", "-o", str(exe), str(src)],
                   check=True, cwd=tmp_path)
    inp = "".join(f"{float(a).hex()} {float(b).hex()}\n" for a, b in v)
    out = subprocess.run([str(exe)], input=inp, capture_output=True, text=True, check=True).stdout.split("\n")
    got = np.array([int(line.split()[0]) for line in out if line])
    np.testing.assert_array_equal(got, cb.nearest(v))
    dec = np.array([[float.fromhex(t) for t in line.split()[1:]] for line in out if line], dtype=np.float32)
    np.testing.assert_array_equal(dec, cb.points[got])


@pytest.mark.parametrize("argv, fragment", [
    (["derive", "vq", "--dim", "2", "--points", "70000"], "at most 65536"),
    (["derive", "vq", "--dim", "2", "--points", "1"], "number of points"),
    (["derive", "vq", "--dim", "0", "--points", "16"], "dimension P"),
    (["derive", "vq", "--dim", "3", "--points", "16", "--scale", "rms", "--block-size", "64"], "divide"),
    (["derive", "vq", "--dim", "2", "--points", "16", "--scale", "rms"], "needs a block size"),
    (["derive", "vq", "--dim", "2", "--points", "12", "--symmetric"], "multiple of 8"),
    (["derive", "vq", "--dim", "2", "--points", "16", "--source", "nope"], "unknown source"),
    (["derive", "vq", "--dim", "2", "--points", "16", "--samples", "10"], "at least 4 per point"),
    (["derive", "vq", "--dim", "x", "--points", "16"], "integer"),
    (["derive", "vq", "--points", "16"], "--dim"),
    (["audit", "--samples", "1000"], "only with --vector"),
    (["audit", "--vector", "--samples", "10"], "samples must be an integer >= 100"),
    (["audit", "--vector", "--layouts"], "not --vector"),
    (["export", "higgs-2d-16", "-f", "bnb"], "exports as json, c, cuda, npy"),
    (["export", "higgs-2d-16", "-f", "c", "--scale", "e4m3"], "scalar codebooks"),
    (["show", "higgs-3d-7"], "unknown codebook"),
    (["evaluate", "higgs-2d-256"], "is a vector codebook; this takes a scalar one"),
    (["plot-sweep", "higgs-2d-16", "-o", "x.png"], "is a vector codebook; this takes a scalar one"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, fragment):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("quantbook") and fragment in err, err


@pytest.mark.parametrize("spelling", ["w.npy", "m.safetensors", "m.safetensors:w*@tensor"])
def test_derive_vq_does_not_write_onto_its_sample(capsys, tmp_path, monkeypatch, spelling):
    # -o naming the --source file replaced the weights the codebook was fitted to with its JSON
    import safetensors.numpy

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.save("w.npy", rng.standard_normal(4096))
    safetensors.numpy.save_file({"w": rng.standard_normal((64, 64)).astype(np.float32)}, "m.safetensors")
    before = {p: Path(p).read_bytes() for p in ("w.npy", "m.safetensors")}
    target = spelling.split(":")[0]
    code, out, err = run(capsys, "derive", "vq", "--dim", "2", "--points", "4", "--samples", "2000", "--restarts", "1",
                         "--source", spelling, "-o", target)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"quantbook: error: output path '{target}' is the input")
    assert {p: Path(p).read_bytes() for p in before} == before


def test_nan_in_a_sample_file(capsys, tmp_path):
    f = tmp_path / "w.npy"
    np.save(f, np.array([0.5, np.nan, -1.0, 2.0] * 100))
    code, out, err = run(capsys, "derive", "vq", "--dim", "2", "--points", "4", "--source", f,
                         "--samples", "1000")
    assert code == 2 and err.count("\n") == 1, err


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_c_header_breaks_exact_ties_to_the_lowest_index(tmp_path, capsys):
    """A square lattice of step 1/2 (in both orders), vectors on the lattice of step 1/4:
    most are equidistant from two or four points.  The compiled encoder against brute force
    (argmin's first minimum over float64 distances)."""
    from quantbook.codebooks.vector import VectorCodebook, nearest_brute

    k = np.arange(-2, 3) / 2
    lattice = np.array([(a, b) for a in k for b in k], np.float32)
    v = np.array([(a, b) for a in np.arange(-4, 5) / 4 for b in np.arange(-4, 5) / 4], np.float32)
    for name, pts in (("up", lattice), ("down", lattice[::-1].copy())):
        f = tmp_path / f"{name}.json"
        f.write_text(VectorCodebook(name, pts).to_json(), encoding="utf-8")
        h = tmp_path / f"{name}.h"
        assert run(capsys, "export", str(f), "-f", "c", "-o", h)[0] == 0
        src = tmp_path / f"{name}.c"
        src.write_text(f'#include <stdio.h>\n#include "{name}.h"\nint main(void){{float v[2];'
                       f'while(scanf("%a %a",&v[0],&v[1])==2)printf("%u\\n",{name}_encode(v));return 0;}}\n',
                       encoding="utf-8")
        exe = tmp_path / name
        subprocess.run(["cc", "-std=c99", "-O2", "-ffp-contract=off", "-Wall", "-Werror", "-o", str(exe), str(src)],
                       check=True, cwd=tmp_path)
        inp = "".join(f"{float(a).hex()} {float(b).hex()}\n" for a, b in v)
        got = [int(t) for t in subprocess.run([str(exe)], input=inp, capture_output=True, text=True,
                                              check=True).stdout.split()]
        np.testing.assert_array_equal(got, nearest_brute(pts, v))
    d = ((v[:, None, :].astype(np.float64) - lattice[None]) ** 2).sum(-1)
    assert ((d == d.min(1, keepdims=True)).sum(1) > 1).mean() > 0.5   # ties are most of the cases


def test_the_default_converges_where_ten_passes_did_not(capsys):
    """16 points from one k-means++ start on 3*10**5 vectors: after 10 passes on the whole sample (the former
    default) the last pass still lowers the error by 9e-6 of itself (tol 1e-6), and the output says by how much
    and how to allow more passes.  The default now runs to convergence (139 passes), lower."""
    argv = ["derive", "vq", "--dim", "2", "--points", "16", "--samples", "300000", "--restarts", "1"]
    code, out, _ = run(capsys, *argv, "--final-passes", "10", "--json")
    short = json.loads(out)
    assert code == 0 and not short["converged"] and short["iterations"] == short["recipe"]["final_passes"] == 10
    assert short["change"] > 5 * short["recipe"]["tol"]
    assert short["name"] == "vq-2d-16-samples=300000-restarts=1-final-passes=10"
    code, text, err = run(capsys, *argv, "--final-passes", "10")
    assert code == 0 and "; --final-passes N allows more than 10\n" in text and not err   # a cap asked for: no warning
    code, out, err = run(capsys, *argv, "--json")
    default = json.loads(out)
    assert code == 0 and default["converged"] and default["recipe"]["final_passes"] is None and not err
    assert 10 < default["iterations"] < default["recipe"]["max_iter"]
    assert 0 <= default["change"] <= default["recipe"]["tol"]
    assert default["fit_mse"] < short["fit_mse"] and default["mse"] < short["mse"]
    assert default["name"] == "vq-2d-16-samples=300000-restarts=1"
    # the oracle of the former default is an explicit final_passes=10 call (the default was 10): the command line's
    # --final-passes 10 gives its points bit for bit, and its recipe
    from quantbook.derive.vq import derive_vq

    old = derive_vq(dim=2, points=16, samples=300_000, restarts=1, final_passes=10)
    assert np.array_equal(np.array(short["points"], dtype=np.float32).view(np.uint32), old.points.view(np.uint32))
    assert short["recipe"] == old.recipe and not np.array_equal(np.array(default["points"], np.float32), old.points)
