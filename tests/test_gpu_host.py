"""Host-side parts of the GPU backend: argument checks, launch shapes, encoder tables, imports.

No GPU and no CuPy needed.  The encoder tables are checked against the format's encoder
(quantbook.codebooks.encoding, after the clamp to [-1, 1]) on every float32 within 64 ULPs of
each bound and code value plus random values (seed 0): exact equality of code indices.
"""

import re
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantbook.bulk import format as F
from quantbook.bulk.gpu import backend as G
from quantbook.bulk.gpu import kernels as K
from quantbook.bulk.gpu.tables import encode_with_tables, encoder_tables, search_size
from quantbook.bulk.nested import dynamic_map
from quantbook.codebooks import registry

from checkout import checkout_path


def test_importing_quantbook_gpu_does_not_import_cupy():
    code = ("import sys, quantbook, quantbook.bulk.gpu.backend, quantbook.bulk.gpu.compile; "
            "print('cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("P, layout", [(2, "word"), (16, "word"), (16, "coarse"), (256, "fine")])
def test_every_layouts_table_is_the_size_the_kernel_copies(P, layout):
    # the kernel copies QB_BUCKET_BYTES to shared memory whichever layout it reads
    t = encoder_tables(np.linspace(-1, 1, P, dtype=np.float32), P, layout)
    assert t.bucket.nbytes == K.BUCKET_BYTES == 16384 and t.layout == layout and t.fine == (P == 256)
    assert re.search(r"#define QB_BUCKET_BYTES (\d+)", K.source()).group(1) == "16384"


def test_the_layout_asked_for_must_hold_the_table():
    close = np.array([-1.0, 0.5, 0.52, 0.56], np.float32)   # bounds 0.51 and 0.54 share a bucket of 1/8
    assert encoder_tables(close, 4).layout == "coarse" and encoder_tables(close, 4, "coarse").layout == "coarse"
    with pytest.raises(ValueError, match="at most one bound"):
        encoder_tables(close, 4, "word")
    with pytest.raises(ValueError, match="does not hold tables of P = 16"):
        encoder_tables(close, 16, "fine")
    with pytest.raises(ValueError, match="does not hold tables of P = 256"):
        encoder_tables(close, 256, "word")
    with pytest.raises(ValueError, match="layout must be one of coarse, fine, word"):
        encoder_tables(close, 4, "wide")


@pytest.mark.parametrize("bits,packing", [(1, 1), (2, 2), (3, 8), (4, 4), (5, 8), (8, 8)])
def test_packing_for_bits(bits, packing):
    assert G.packing_for_bits(bits) == packing


@pytest.mark.parametrize("bits", [0, 9, 4.0, True, "4"])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        G.packing_for_bits(bits)


@pytest.mark.parametrize("bs", [8, 48, 8192, 64.0, -64])
def test_bad_blocksize_rejected_before_touching_the_device(bs):
    with pytest.raises(ValueError, match="block_size"):
        G.quantize_gpu(np.zeros(4, np.float32), np.zeros(16, np.float32), 4, bs)


def test_host_checks_need_no_cupy():
    """With CuPy unimportable, host arrays are still rejected with the pointer to 'cpu'."""
    code = ("import sys; sys.modules['cupy'] = None\n"
            "import numpy as np\nfrom quantbook.bulk.gpu import backend as G\n"
            "try:\n    G.quantize_gpu(np.zeros(64, np.float32), np.zeros(16, np.float32), 4, 64)\n"
            "except TypeError as e:\n    print('TypeError', e)\n"
            "print(G.gpu_available()[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "TypeError" in out.stdout and "backend='cpu'" in out.stdout and out.stdout.strip().endswith("False")


def test_numpy_input_is_rejected_with_a_pointer_to_the_cpu_backend():
    with pytest.raises(TypeError, match="backend='cpu'"):
        G.quantize_gpu(np.zeros(64, np.float32), registry.get("nf4").code, 4, 64)


def test_code_table_checks():
    with pytest.raises(ValueError, match="entries"):
        G.quantize_gpu(np.zeros(4, np.float32), np.zeros(17, np.float32), 4, 64)
    with pytest.raises(ValueError, match="finite"):
        G.quantize_gpu(np.zeros(4, np.float32), np.array([0, np.nan], np.float32), 4, 64)


@pytest.mark.parametrize("dtype,key", [("float32", "f32"), (np.float16, "f16"), ("bfloat16", "bf16"),
                                       ("torch.bfloat16", "bf16")])
def test_dtype_keys(dtype, key):
    assert G._dtype_key(dtype) == key
    with pytest.raises(ValueError, match="dtype"):
        G._dtype_key(np.float64)


@pytest.mark.parametrize("packing", [4, 8])
@pytest.mark.parametrize("key,bs", [("f32", 16), ("f32", 4096), ("f16", 16), ("f16", 32), ("bf16", 4096)])
def test_quantize_launch_shape(key, bs, packing):
    n = 100_003
    grid, cta = G.quantize_launch(n, key, bs, packing)
    v = K.quantize_vec(key, bs, packing)
    assert v == (32 if key != "f32" and bs >= 32 and packing < 8 else 16)
    assert v <= bs and cta % 32 == 0 and cta <= 512 and cta % max(1, bs // v) == 0
    assert grid * cta * v >= n > (grid - 1) * cta * v


def test_absmax_floor_constant_is_float32_1e_minus_38():
    m = np.uint32(int(K._COMMON.split("QB_ABSMAX_MIN_BITS ")[1].split("u")[0], 16))
    assert m.view(np.float32) == F.TINY == np.float32(1e-38)


def _probe_points(tabs_values, rng):
    anchors = np.concatenate([tabs_values, [0.0, -0.0, 1.0, -1.0]]).astype(np.float32)
    u = anchors.view(np.int32).astype(np.int64)
    # walk +-64 representable floats around each anchor (through the bit pattern)
    pts = []
    for sign_fix in (1, -1):
        w = (u[:, None] + sign_fix * np.arange(-64, 65)[None, :]).ravel()
        w = w[(w >= -(2**31)) & (w < 2**31)].astype(np.int32)
        pts.append(w.view(np.float32))
    pts.append(rng.uniform(-1, 1, 20_000).astype(np.float32))
    pts.append(np.array([1.5, -1.5, 3.0, -3.0, np.inf, -np.inf, 1.0000001, -1.0000001], np.float32))
    y = np.concatenate(pts)
    return y      # unclamped (the tables fold the clamp in), NaN included


def _want(code, y):
    return F.code_encoder(code)(np.clip(y, -1, 1)).astype(np.int64)


def _encodes_as_the_format(code, y, tabs):
    """The tables' encoder against the format's on ``y``: all of it for the coarse layout,
    the kernel's range (|y| < 2 and NaN) for the fine one, which refuses the rest."""
    if tabs.fine:
        outside = np.abs(y) >= 2
        assert outside.any()
        with pytest.raises(ValueError, match=r"\|y\| < 2"):
            encode_with_tables(y, tabs)
        y = y[~outside]
    return np.array_equal(encode_with_tables(y, tabs), _want(code, y))


@pytest.mark.parametrize("name", sorted(registry.REGISTRY))
def test_encoder_tables_match_the_format(name):
    code = np.asarray(registry.get(name).code, np.float32)
    enc = F.code_encoder(code)
    y = _probe_points(np.concatenate([enc.bounds, code]), np.random.default_rng(0))
    bits = registry.get(name).bits
    for P in (None, search_size(G.packing_for_bits(bits)), 256):
        for layout in (None, "coarse") if P != 256 else (None,):
            tabs = encoder_tables(code, P, layout)
            below = int(np.count_nonzero(enc.bounds < -1))          # folded clamp drops these ranks
            assert tabs.P >= code.size and tabs.K == code.size - below and tabs.P & (tabs.P - 1) == 0
            assert tabs.ident == (below == 0 and bool(np.array_equal(enc.order, np.arange(code.size))))
            assert tabs.fine == (tabs.P == 256) and (layout is None or tabs.layout == layout)
            assert _encodes_as_the_format(code, y, tabs)


_LEVEL = st.one_of(st.floats(-1.5, 1.5, width=32), st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-40, -1e-40]))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(levels=st.lists(_LEVEL, min_size=1, max_size=16), near=st.lists(st.integers(-3, 3), max_size=16))
def test_random_tables_encode_as_the_format_in_either_layout(levels, near):
    """Any table of up to 16 levels (ties, +-0, subnormals, levels beyond +-1, levels a few
    float32 steps apart): the word layout where it holds the table, and the coarse one always,
    encode every probe point as the format does."""
    code = np.array(levels, np.float32)
    for i, k in enumerate(near[: code.size - 1]):   # neighbours: bounds in one bucket, or none between
        code[i + 1] = np.float32(code[i] + np.float32(k) * np.spacing(code[i]))
    y = _probe_points(np.concatenate([F.code_encoder(code).bounds, code]), np.random.default_rng(code.size))
    P = max(2, 1 << (code.size - 1).bit_length())
    layouts = ["coarse"] + (["word"] if encoder_tables(code, P).layout == "word" else [])
    for layout in layouts:
        assert _encodes_as_the_format(code, y, encoder_tables(code, P, layout)), layout


def test_encoder_tables_dynamic_map_and_odd_sizes():
    rng = np.random.default_rng(1)
    for code in (dynamic_map(), np.array([0.5], np.float32), np.array([0.3, -0.2, 0.3], np.float32),
                 rng.uniform(-1, 1, 100).astype(np.float32)):
        y = _probe_points(np.concatenate([F.code_encoder(code).bounds, code]), rng)
        for P, layout in ((None, None), (256, None)) + (((None, "coarse"),) if code.size <= 128 else ()):
            assert _encodes_as_the_format(code, y, encoder_tables(code, P, layout))
    # the fine layout's buckets are four times narrower: one compare a value for the
    # dynamic map, which takes two in the coarse one
    assert encoder_tables(dynamic_map(), 256).steps == 1
    with pytest.raises(ValueError, match="power of two"):
        encoder_tables(np.zeros(17, np.float32), 16)


def test_benchmark_without_a_gpu_says_so():
    ok, _ = G.gpu_available()
    if ok:
        pytest.skip("a GPU is present: the benchmark would run")

    bench = checkout_path("benchmarks", "bench_quantize_gpu.py")
    r = subprocess.run([sys.executable, str(bench), "--log2n", "10"], capture_output=True, text=True)
    assert r.returncode == 1
    assert "nothing measured" in r.stderr and "Traceback" not in r.stderr


_PARSE_ONLY = r'''
import argparse, os, runpy, sys
args = sys.argv[1:]
if args[:2] == ["-m", "pytest"]:   # the tests stage: the files it names are there
    named = [a for i, a in enumerate(args[2:], 2)
             if not a.startswith("-") and args[i - 1] not in ("-p", "-n", "-k", "-m", "-o")]   # not an option's value
    missing = [a for a in named if not os.path.isfile(a.split("::")[0])]
    print("pytest files:", len(named), "missing:", missing)
    sys.exit(4 if missing else 0)
if not (args and args[0].endswith(".py")):
    sys.exit(0)                 # -c: not what this dry run checks
if os.environ.get("FAIL_SCRIPT") and args[0].endswith(os.environ["FAIL_SCRIPT"]):
    sys.exit(1)                 # this stage fails (e.g. env on a machine without a GPU)
parse = argparse.ArgumentParser.parse_args
def parsed(self, a=None, ns=None):
    parse(self, a, ns)          # a flag the benchmark lacks exits 2 here
    print("parsed:", " ".join(args))
    raise SystemExit(0)
argparse.ArgumentParser.parse_args = parsed
sys.argv = args
sys.path.insert(0, os.path.dirname(os.path.abspath(args[0])))   # as `python SCRIPT` has it: its folder first
runpy.run_path(args[0], run_name="__main__")
'''

_FAKE_NCU = r'''
import os, sys
args = sys.argv[1:]
i = next(i for i, a in enumerate(args) if a.endswith("parse_only.py"))   # ncu's own flags before it
os.execv(sys.executable, [sys.executable, *args[i:]])
'''


def _gpu_check(tmp_path, **env_extra):
    """benchmarks/gpu_check.sh run dry: ``(completed process, OUTDIR)``, each benchmark stopped
    right after its arguments are parsed and ncu standing in by running its command."""
    import os
    import shutil

    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    root = checkout_path()
    (tmp_path / "parse_only.py").write_text(_PARSE_ONLY, encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    ncu = bin_dir / "ncu"
    ncu.write_text(f"#!{sys.executable}\n{_FAKE_NCU}", encoding="utf-8")
    ncu.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               PYTHON=f"{sys.executable} {tmp_path / 'parse_only.py'}", BASE=".", LOG2N="20")
    for key in ("STAGES", "WHEELS", "BUDGET", "BASE_FIRST"):
        env.pop(key, None)
    env.update(env_extra)
    r = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), str(out)], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
    return r, out


def _sections(log: str) -> dict[str, str]:
    """check.log's stages: the text behind each ``=== NAME`` line."""
    parts = re.split(r"^=== (\w+) .*$", log, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_gpu_check_script_dry_run(tmp_path):
    """Every stage, in the order of priority, with each benchmark stopped once its arguments
    are parsed: the device time of a lent machine is not spent on a flag a benchmark no
    longer takes, or a stage that names a missing script.  What comes back is two files
    (a lent machine returns eight)."""
    r, out = _gpu_check(tmp_path)
    assert r.returncode == 0, r.stderr
    stages = (out / "stages.txt").read_text(encoding="utf-8").splitlines()
    assert [line.split()[0] for line in stages] == ["env", "sweep", "base", "tests", "ncu", "scaled", "stream",
                                                    "quality", "evaluate", "vq"]
    assert all(" rc=0 " in line for line in stages), stages
    assert sorted(p.name for p in out.iterdir()) == ["check.log", "stages.txt"]
    logs = _sections((out / "check.log").read_text(encoding="utf-8"))
    for name in ("env", "sweep", "base", "scaled", "stream", "vq", "evaluate", "quality"):
        assert logs[name].count("parsed: benchmarks/") == 1, name
    assert logs["sweep"].strip() == "parsed: benchmarks/bench_quantize_gpu.py --log2n 20"
    assert re.fullmatch(r"pytest files: [1-9]\d* missing: \[\]", logs["tests"].strip()), logs["tests"]
    # the three profiled rows: codes of a byte, 2-bit codes at B = 4096, NF4 at B = 16
    assert logs["ncu"].count("parsed: benchmarks/bench_quantize_gpu.py --profile") == 3


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
@pytest.mark.parametrize("first, order", [("0", ["env", "sweep", "base"]), ("1", ["env", "base", "sweep"])])
def test_gpu_check_runs_base_before_the_sweep_when_asked(tmp_path, first, order):
    """BASE_FIRST=1 swaps the two quantize sweeps, so that calls can alternate which runs on the
    machine the other has warmed."""
    r, out = _gpu_check(tmp_path, STAGES="env sweep base", BASE_FIRST=first)
    assert r.returncode == 0, r.stderr
    stages = (out / "stages.txt").read_text(encoding="utf-8").splitlines()
    assert [line.split()[0] for line in stages] == order and all(" rc=0 " in line for line in stages), stages


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
@pytest.mark.parametrize("env, rc, said", [
    (dict(STAGES="env sweeep"), 2, "unknown stage 'sweeep'"),
    (dict(STAGES="sweep base", BASE=""), 2, "the base stage needs BASE=DIR"),
    (dict(WHEELS="no-such-folder", PYTHON=sys.executable), 1, "installing the wheels in no-such-folder failed"),
])
def test_gpu_check_refuses_settings_that_would_waste_the_device(tmp_path, env, rc, said):
    r, out = _gpu_check(tmp_path, **env)
    assert r.returncode == rc and said in r.stderr, r.stderr
    assert not (out / "stages.txt").exists() or (out / "stages.txt").read_text(encoding="utf-8") == ""


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_gpu_check_stops_without_a_gpu_and_keeps_its_budget(tmp_path):
    r, out = _gpu_check(tmp_path, FAIL_SCRIPT="gpu_env.py")
    assert r.returncode == 1
    assert (out / "stages.txt").read_text(encoding="utf-8").splitlines() == [
        (out / "stages.txt").read_text(encoding="utf-8").splitlines()[0],
        "gpu_check: stopped after env (no usable GPU, see above)"]
    r, out = _gpu_check(tmp_path, BUDGET="24")   # under 20 s for a stage, less 5 to spare
    stages = (out / "stages.txt").read_text(encoding="utf-8").splitlines()
    assert r.returncode == 0
    assert [line.split()[0] for line in stages] == ["env", "sweep", "base", "tests", "ncu", "scaled", "stream",
                                                    "quality", "evaluate", "vq"]
    assert all(" skipped: " in line for line in stages), stages


_FAKE_PIP = r'''
import pathlib, sys
args = sys.argv[1:]
assert args[0] == "download" and "--no-deps" in args and args[args.index("--python-version") + 1] == "3.12", args
out = pathlib.Path(args[args.index("-d") + 1])
out.mkdir(exist_ok=True)
(out / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl").write_bytes(b"w" * 1000)
with open(out.parent / "pip_calls", "a") as f:
    f.write(args[-1] + "\n")
'''


@pytest.mark.skipif(sys.platform == "win32", reason="a bash script")
def test_gpu_prepare_script_makes_the_carried_folders_once(tmp_path):
    """benchmarks/gpu_prepare.sh in a small repository, with a stand-in pip: the wheel folder
    and the base worktree are made once (a second run downloads nothing), both are ignored by
    git, and what would travel is counted against the 64 MiB a call carries."""
    import os
    import shutil

    if shutil.which("bash") is None or shutil.which("git") is None:
        pytest.skip("needs bash and git")
    root = checkout_path()
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    shutil.copy(root / "benchmarks" / "gpu_prepare.sh", repo / "benchmarks")
    (repo / "a.txt").write_text("x" * 500, encoding="utf-8")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "one"]):
        subprocess.run(git + cmd, cwd=repo, check=True, capture_output=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    (tmp_path / "fake_pip.py").write_text(_FAKE_PIP, encoding="utf-8")
    env = dict(os.environ, PIP=f"{sys.executable} {tmp_path / 'fake_pip.py'}")
    for _ in range(2):
        r = subprocess.run(["bash", str(repo / "benchmarks" / "gpu_prepare.sh"), "HEAD"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    assert (repo / "pip_calls").read_text(encoding="utf-8") == "bitsandbytes==0.50.2\n"   # once
    assert (repo / ".git" / "info" / "exclude").read_text(encoding="utf-8").splitlines().count("/.whl/") == 1
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo / ".base", capture_output=True, text=True)
    assert base.stdout.strip() == head
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    assert ".whl" not in status and ".base" not in status
    assert "of the 67108864 a call may carry" in r.stdout
    assert "WHEELS=.whl BASE=.base bash benchmarks/gpu_check.sh" in r.stdout
