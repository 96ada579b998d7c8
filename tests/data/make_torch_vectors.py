"""Generate tests/data/torch_vectors.npz: torch's own float32 CPU results (the reference).

Run with a Python that has torch and numpy (quantbook itself is not needed):

    /opt/torchenv/bin/python tests/data/make_torch_vectors.py

The script runs the measurements once per ATen CPU capability, each in a child process with
``ATEN_CPU_CAPABILITY`` set (``default``, ``avx2``, ``avx512``; torch reports the one it
uses, and ``avx512`` is honoured even on a CPU without AVX512 — kernels that have no AVX512
registration then run their AVX2 code).  Recorded per capability:

* ``torch.linspace(start, end, steps)`` (float32) for: ``(0.1, 1, n)``, n = 2..300 (the
  dynamic 8-bit map); NFk's probability grids, k = 2..8, ``linspace(offset, 0.5, 2**(k-1)+1)``
  and ``linspace(offset, 0.5, 2**(k-1))`` for bitsandbytes' offset literal 0.9677083 and
  the default offset (1 - 1/(2(2**k - 1)) + 1 - 1/2**(k+1)) / 2; seeded random
  ``(start, end, steps)``; a few edge cases.  Full outputs are stored for steps <= 4096;
  larger grids (up to 2**25 + 5 points, where the float32 index rounds) keep sampled points.
  Two grids are built so that one point's exact value lies within float64 rounding of a
  float32 tie: a fused multiply-add evaluated in float64 and then rounded to float32 gets it
  wrong there, so they check that the emulation rounds once, correctly.
* ``torch.sum`` and ``torch.mean`` of float32 vectors of 0..2**24+1 values under
  ``torch.set_num_threads(t)``, t in THREADS.  Inputs are rebuilt from ``(kind, n, seed)`` by
  :func:`sum_input` (numpy's PCG64 ``random()`` and exact float64 arithmetic only, so any
  numpy >= 1.17 gives the same values; the SHA-256 of each input is stored to prove it);
  a few edge-case inputs are stored literally.

Only results are stored for the generated inputs, which keeps the file small.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("torch_vectors.npz")
CAPABILITIES = ("default", "avx2", "avx512")
THREADS = (1, 2, 3, 4, 8)
SEED = 20250611
FULL_LIMIT = 4096          # linspace grids up to this many points are stored whole
_F = np.float32


# ------------------------------------------------------------------------------ the inputs
def sum_input(kind: str, n: int, seed: int) -> np.ndarray:
    """The float32 input of a generated sum case (also used by tests/test_torch_f32.py)."""
    rng = np.random.default_rng(seed)
    u = rng.random(n)
    if kind == "absmax":      # positive, like block absmax values of weights: 0.01 .. 0.1
        x = 0.01 + 0.09 * (u * u)
    elif kind == "signed":    # both signs, magnitudes 2**-8 .. 2**8 (cancellation)
        e = np.floor(rng.random(n) * 17.0) - 8.0
        x = np.ldexp(2.0 * u - 1.0, e.astype(np.int64))
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return x.astype(np.float32)


def digest(x: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, dtype="<f4").tobytes()).hexdigest()


def sum_cases(rng: np.random.Generator) -> list[tuple[str, int, int]]:
    sizes = set(range(0, 130))
    sizes |= {m * k + d for m in (8, 32, 64) for k in (3, 5, 17, 100, 1000, 4097) for d in (-1, 0, 1)}
    sizes |= {2**p + d for p in range(8, 22) for d in (-1, 0, 1)}
    sizes |= {16383, 16384, 16385, 32767, 32768, 32769, 32770, 49152, 65535, 65536, 65537,
              98303, 98304, 98305, 131073, 250000, 500000, 999999, 1000000, 1000001,
              1500000, 1999999, 2000000}
    sizes |= {int(v) for v in rng.integers(130, 300_000, 16)}
    out = []
    for i, n in enumerate(sorted(sizes)):
        # one kind per size above 300000 values keeps the test fast
        for j, kind in enumerate(("absmax", "signed")):
            if n <= 300_000 or (i + j) % 2 == 0:
                out.append((kind, n, SEED + 2 * i + j))
    out.append(("absmax", 2**24 + 1, SEED - 1))  # float32(n) rounds: the mean's divisor
    return out


def explicit_sum_inputs() -> list[np.ndarray]:
    big = np.float32(3e38)
    xs = [
        np.full(40, -0.0, dtype=_F),
        np.full(40000, -0.0, dtype=_F),
        np.array([1e8, 1.0, -1e8, 1.0] * 9, dtype=_F),
        np.array([big, big, -big] + [0.0] * 30, dtype=_F),
        np.array([1.0, np.inf, 2.0] + [0.5] * 30, dtype=_F),
        np.array([np.inf, -np.inf] + [0.5] * 30, dtype=_F),
        np.array([1.0, np.nan] + [0.5] * 30, dtype=_F),
        np.array([1e-45] * 50 + [3e-39] * 17, dtype=_F),   # subnormals
        np.ones(33333, dtype=_F),
        np.array([2.0**24] + [1.0] * 70000, dtype=_F),       # every lone +1 is lost
    ]
    return xs


def nf_default_offset(k: int) -> float:
    n = 2**k
    return float((1 - Fraction(1, 2 * (n - 1)) + 1 - Fraction(1, 2 * n)) / 2)


def linspace_cases(rng: np.random.Generator) -> list[tuple[str, float, float, int]]:
    cases = [("dynamic-map", 0.1, 1.0, n) for n in range(2, 301)]
    for k in range(2, 9):
        half = 2 ** (k - 1)
        for name, off in (("bnb", 0.9677083), ("default", nf_default_offset(k))):
            cases.append((f"nf{k}-{name}-pos", off, 0.5, half + 1))
            cases.append((f"nf{k}-{name}-neg", off, 0.5, half))
    for _ in range(300):
        kind = rng.integers(4)
        if kind == 0:
            a, b = rng.uniform(-10, 10, 2)
        elif kind == 1:
            a, b = rng.choice([-1, 1], 2) * 10.0 ** rng.uniform(-6, 6, 2)
        elif kind == 2:
            a = rng.uniform(-1, 1)
            b = a + rng.choice([-1, 1]) * 10.0 ** rng.uniform(-7, 0)
        else:
            a, b = rng.uniform(0, 1, 2)
        steps = int(rng.integers(2, 40) if rng.random() < 0.5 else rng.integers(40, 3000))
        cases.append(("random", float(a), float(b), steps))
    cases += [("edge", 0.0, 1.0, 0), ("edge", 0.25, 7.0, 1), ("edge", 2.0, 2.0, 9),
              ("edge", 5.0, -3.0, 2), ("edge", -1.0, 1.0, 3), ("edge", 1e-40, 3e-38, 17),
              ("edge", -3e38, 3e38, 5), ("edge", 1.0, 1.0000001, 1000)]
    return cases


def tie_cases() -> list[tuple[str, float, float, int, int]]:
    """Grids with a point whose exact value is a float32 tie plus/minus 2**-54 or 2**-55.

    (2**30 + 1) = 65 * 16519105, so with ``step = 16519105 * 2**-54`` the point
    ``1 + 65*step = 1 + 2**-24 + 2**-54`` lies just above the tie between 1 and 1 + 2**-23;
    float64 drops the 2**-54 and float32 then rounds the tie to even (1.0), while one
    correct rounding gives 1 + 2**-23.  Likewise ``1 - 65*step`` below 1 with half that step.
    Searched: grid sizes whose float32 ``(end - start) / (steps - 1)`` equals that step.
    """
    out = []
    for name, scale, sign in (("tie-lower", 2.0**-54, 1), ("tie-upper", 2.0**-55, -1)):
        target = _F(16519105 * scale)
        ulp = 2.0**-23 if sign > 0 else 2.0**-24     # spacing of the float32s next to 1
        n = np.arange(200, 3_000_000, dtype=np.int64)
        m = np.rint(float(target) * n / ulp)
        if sign > 0:
            start, end = np.full(n.size, _F(1.0)), (1.0 + m * ulp).astype(_F)
        else:
            start, end = (1.0 - m * ulp).astype(_F), np.full(n.size, _F(1.0))
        hit = np.flatnonzero((m >= 1) & ((end - start) / n.astype(_F) == target))
        if hit.size == 0:
            raise RuntimeError(f"no grid found for {name}")
        found = (float(start[hit[0]]), float(end[hit[0]]), int(n[hit[0]]) + 1)
        start, end, steps = found
        idx = 65 if sign > 0 else steps - 1 - 65
        out.append((name, start, end, steps, idx))
    return out


def sampled_cases(rng: np.random.Generator) -> list[tuple[str, float, float, int, np.ndarray]]:
    out = []
    for name, start, end, steps, idx in tie_cases():
        out.append((name, start, end, steps, np.array([0, 1, idx - 1, idx, idx + 1, steps - 1])))
    for name, a, b, steps in (("large", -2.0, 3.0, 1_000_003), ("large", 0.1, 1.0, 65537 * 7),
                              ("index-rounds", 0.0, 1.0, 2**25 + 5), ("index-rounds", 3.5, -1.25, 2**25 + 4)):
        pts = {0, 1, steps // 2 - 1, steps // 2, steps - 1}
        pts |= {int(v) for v in rng.integers(0, steps, 200)}
        for c in (2**24 - 2, 2**24, 2**24 + 1, 2**24 + 3, steps - 1 - 2**24, steps - 2 - 2**24):
            if 0 <= c < steps:
                pts |= {c - 1, c, c + 1}
        out.append((name, a, b, steps, np.array(sorted(p for p in pts if 0 <= p < steps))))
    return out


# ----------------------------------------------------------------------------- measuring
def measure(out_path: str) -> None:
    """Child process: every measurement under this process's ATEN_CPU_CAPABILITY."""
    import torch

    rng = np.random.default_rng(SEED)
    res: dict[str, np.ndarray] = {}
    lin = linspace_cases(rng)
    vals = []
    for _, a, b, n in lin:
        v = torch.linspace(a, b, n, dtype=torch.float32).numpy()
        vals.append(v if n <= FULL_LIMIT else v[:0])
    res["ls_values"] = np.concatenate(vals).astype(_F)
    samp = sampled_cases(rng)
    svals = []
    for _, a, b, n, idx in samp:
        torch.set_num_threads(1)
        v1 = torch.linspace(a, b, n, dtype=torch.float32).numpy()[idx]
        torch.set_num_threads(4)
        v4 = torch.linspace(a, b, n, dtype=torch.float32).numpy()[idx]
        assert np.array_equal(v1.view(np.uint32), v4.view(np.uint32)), "linspace depends on threads"
        svals.append(v1)
    res["lss_values"] = np.concatenate(svals).astype(_F)

    cases = sum_cases(rng)
    explicit = explicit_sum_inputs()
    sums = np.zeros((len(cases) + len(explicit), len(THREADS)), dtype=_F)
    means = np.zeros_like(sums)
    shas = []
    for c in range(len(cases) + len(explicit)):
        if c < len(cases):
            x = sum_input(*cases[c])
            shas.append(digest(x))
        else:
            x = explicit[c - len(cases)]
        t = torch.from_numpy(x)
        for j, th in enumerate(THREADS):
            torch.set_num_threads(th)
            sums[c, j] = t.sum().item()
            means[c, j] = t.mean().item()
    res["sum_result"] = sums
    res["mean_result"] = means
    res["sum_sha256"] = np.array(shas)
    res["capability_reported"] = np.array(torch.backends.cpu.get_cpu_capability())
    res["torch_version"] = np.array(torch.__version__)
    res["numpy_version"] = np.array(np.__version__)
    np.savez(out_path, **res)


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            return sorted(f for f in line.split(":", 1)[1].split()
                          if f.startswith(("avx", "fma", "sse4", "f16c")))
    return []


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        measure(sys.argv[2])
        return
    import tempfile

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cap in CAPABILITIES:
            path = os.path.join(tmp, f"{cap}.npz")
            env = dict(os.environ, ATEN_CPU_CAPABILITY=cap)
            subprocess.run([sys.executable, __file__, "--child", path], env=env, check=True)
            with np.load(path) as z:
                runs[cap] = {k: z[k] for k in z.files}

    rng = np.random.default_rng(SEED)
    lin = linspace_cases(rng)
    samp = sampled_cases(rng)
    cases = sum_cases(rng)
    explicit = explicit_sum_inputs()
    base = runs["avx2"]
    for cap in CAPABILITIES:
        assert np.array_equal(runs[cap]["sum_sha256"], base["sum_sha256"])

    data: dict[str, np.ndarray] = {}
    data["capabilities"] = np.array(CAPABILITIES)
    data["capability_reported"] = np.array([str(runs[c]["capability_reported"]) for c in CAPABILITIES])
    data["threads"] = np.array(THREADS, dtype=np.int64)
    # linspace: whole outputs for the avx2 run; the other capabilities as differences to it
    data["ls_label"] = np.array([c[0] for c in lin])
    data["ls_start"] = np.array([c[1] for c in lin], dtype=np.float64)
    data["ls_end"] = np.array([c[2] for c in lin], dtype=np.float64)
    data["ls_steps"] = np.array([c[3] for c in lin], dtype=np.int64)
    data["ls_full_limit"] = np.array(FULL_LIMIT)
    data["ls_values"] = base["ls_values"]
    for cap in CAPABILITIES:
        v = runs[cap]["ls_values"]
        diff = np.flatnonzero(v.view(np.uint32) != base["ls_values"].view(np.uint32))
        data[f"ls_diff_index_{cap}"] = diff.astype(np.int64)
        data[f"ls_diff_values_{cap}"] = v[diff]
    data["lss_label"] = np.array([c[0] for c in samp])
    data["lss_start"] = np.array([c[1] for c in samp], dtype=np.float64)
    data["lss_end"] = np.array([c[2] for c in samp], dtype=np.float64)
    data["lss_steps"] = np.array([c[3] for c in samp], dtype=np.int64)
    data["lss_count"] = np.array([len(c[4]) for c in samp], dtype=np.int64)
    data["lss_index"] = np.concatenate([c[4] for c in samp]).astype(np.int64)
    data["lss_values"] = np.stack([runs[c]["lss_values"] for c in CAPABILITIES])
    # sums: generated inputs by recipe, explicit ones literally
    data["sum_kind"] = np.array([c[0] for c in cases])
    data["sum_n"] = np.array([c[1] for c in cases], dtype=np.int64)
    data["sum_seed"] = np.array([c[2] for c in cases], dtype=np.int64)
    data["sum_sha256"] = base["sum_sha256"]
    data["explicit_count"] = np.array([x.size for x in explicit], dtype=np.int64)
    data["explicit_values"] = np.concatenate(explicit).astype(_F)
    data["sum_result"] = np.stack([runs[c]["sum_result"] for c in CAPABILITIES])
    data["mean_result"] = np.stack([runs[c]["mean_result"] for c in CAPABILITIES])
    meta = {
        "torch": str(base["torch_version"]),
        "numpy": str(base["numpy_version"]),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_flags": cpu_flags(),
        "capability_reported": {c: str(runs[c]["capability_reported"]) for c in CAPABILITIES},
        "seed": SEED,
    }
    data["meta_json"] = np.array(json.dumps(meta))
    np.savez_compressed(OUT, **data)
    print(json.dumps(meta, indent=1))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")
    for cap in CAPABILITIES:
        same_sum = np.array_equal(runs[cap]["sum_result"].view(np.uint32), base["sum_result"].view(np.uint32))
        print(cap, "linspace points differing from avx2:", data[f"ls_diff_index_{cap}"].size,
              "| sums equal to avx2:", same_sum)


if __name__ == "__main__":
    main()
