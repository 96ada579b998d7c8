"""Generate tests/data/fouroversix_vectors.npz: NVFP4 blocks quantized by Four Over Six's own
package, for tests/test_scale_fouroversix.py.

The package (``fouroversix`` 1.0.5 on the package index, by the paper's authors) ships a
PyTorch reference quantizer, ``fouroversix.quantize.pytorch.reference.quantize_to_fp4``,
which runs on the CPU.  Its source distribution needs torch to build, so this script downloads
it without building (pip, no build isolation: torch must be importable), puts its ``src`` on
the path and calls that function for NVFP4 with ``scale_rule`` ``mse`` and ``mae``, scales in
row order (``use_blackwell_scale_layout=False``).

It stores the float32 inputs and, per case and rule, the packed E2M1 bytes, the E4M3 scale
bytes and the float32 tensor maximum the package keeps.  Per block it also stores whether
either candidate's scaled values reach 7: the package then rounds them to 8, which its packing
cannot hold (docs/scales.md), so those blocks are not compared byte for byte.  Versions go
into ``meta``.  Run from the repository root with torch installed (needs network access to the
package index):

    python tests/data/make_fouroversix_vectors.py
"""

import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("fouroversix_vectors.npz")
SDIST = "fouroversix==1.0.5"
rng = np.random.default_rng(20261127)


def inputs() -> dict:
    cases = {}
    cases["normal"] = rng.standard_normal((32, 256)).astype(np.float32)
    cases["heavy"] = rng.standard_t(3, (32, 256)).astype(np.float32)
    # block maxima spread over 2**-30 .. 1 of the tensor's: subnormal and zero E4M3 scales
    spread = np.exp(rng.uniform(-21, 0, (32 * 16, 1))).repeat(16).reshape(32, 256)
    cases["wide"] = (rng.standard_normal((32, 256)) * spread).astype(np.float32)
    z = rng.standard_normal((4, 64)).astype(np.float32)
    z[0, :16] = 0
    z[1, 16:32] = -0.0
    z[2, :16] = rng.standard_normal(16) * 1e-6
    z[3, :16] = -1e-5
    cases["zeros"] = z
    # half-integers: many values exactly on E2M1's midpoints after scaling
    cases["grid"] = (rng.integers(-12, 13, (16, 256)) * np.float32(0.5)).astype(np.float32)
    return cases


def _kept(rows, scales, big, g, torch, quantize_to_fp4, ScaleRule, limit=None) -> np.ndarray:
    """The crafted ``rows`` that the package stores with the intended ``scales`` (the first
    ``limit``), then a last block that holds the tensor's maximum ``big``."""
    top = (big * g.uniform(-1, 1, 16)).astype(np.float32)
    top[0] = big
    blocks = np.stack([*rows, top]).astype(np.float32)
    _, s, _ = quantize_to_fp4(torch.from_numpy(blocks), scale_rule=ScaleRule.mse, use_blackwell_scale_layout=False)
    kept = s.float().numpy().reshape(-1)[:-1] == np.array(scales, np.float32)
    return np.concatenate([blocks[:-1][kept][:limit], blocks[-1:]])


def factor_blocks(torch, quantize_to_fp4, fake_quantize_to_e2m1, ScaleRule) -> np.ndarray:
    """Blocks whose codes depend on how the value factor is rounded: the package multiplies by
    ``1 / (d · e)``; for block scales ``e`` where ``enc / e`` is another float32, values next to
    E2M1's decision points on which the two pick different codes (by the package's own
    rounding).  The first value of a block sets ``e``; blocks that the package then stores with
    that scale (the candidate mapping to 6) are kept.  The last block holds the tensor's
    maximum, chosen so that ``d`` is not ``G / 1536``."""
    g = np.random.default_rng(20261128)
    while True:   # a maximum for which d = 1 / (1536 / G) is not G / 1536 in float32
        big = np.float32(g.uniform(1, 4))
        enc = np.float32(np.float32(1536) / big)
        d = np.float32(np.float32(1) / enc)
        if d != np.float32(big / np.float32(1536)):
            break
    e = torch.arange(0x08, 0x79, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()
    f = (np.float32(1) / (d * e).astype(np.float32)).astype(np.float32)
    other = (enc / e).astype(np.float32)
    mids = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32)
    rows, scales = [], []
    for ei, fi, oi in zip(e[f != other], f[f != other], other[f != other]):
        near = (mids / fi).astype(np.float32)
        x = np.concatenate([near + k * np.spacing(near) for k in range(-3, 4)]).astype(np.float32)
        q = [fake_quantize_to_e2m1(torch.from_numpy((x * v).astype(np.float32))).numpy() for v in (fi, oi)]
        x = x[q[0] != q[1]]
        if x.size:
            # two such values; the rest decode exactly under this scale, so that the block
            # keeps it rather than the candidate mapping to 4
            exact = (g.choice([0.5, 1, 1.5, 2, 3, 4, 6], 13) * ei * (big / np.float32(1536))).astype(np.float32)
            row = np.concatenate([[np.float32(6 * ei) * d], g.choice(x, 2), exact])
            rows.append(row * g.choice([-1, 1], 16))
            scales.append(ei)
    return _kept(rows, scales, big, g, torch, quantize_to_fp4, ScaleRule)


def four_blocks(torch, quantize_to_fp4, ScaleRule) -> np.ndarray:
    """Blocks whose scale for the candidate mapping to 4 depends on the order of its float32
    steps: the package computes ``((M / 6) · enc) · 1.5``; block maxima next to E4M3's
    midpoints where ``(M / 4) · enc`` rounds to another E4M3 value.  The other values decode
    exactly under the package's scale, so that the block keeps that candidate (kept only where
    it does).  The last block holds the tensor's maximum."""
    g = np.random.default_rng(20261129)
    big = np.float32(g.uniform(1, 2))
    enc = np.float32(np.float32(1536) / big)
    grid = torch.arange(0x08, 0x7E, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()
    mids = ((grid[:-1].astype(np.float64) + grid[1:]) / 2)
    mids = mids[(mids > 2.0**-5) & (mids < 380)]
    m0 = (mids * 4 / float(enc)).astype(np.float32)
    m = np.concatenate([m0 + k * np.spacing(m0) for k in range(-4, 5)]).astype(np.float32)
    m = m[(m > 0) & (m <= big)]

    def e4m3(v):
        return torch.from_numpy(np.ascontiguousarray(v, np.float32)).to(torch.float8_e4m3fn).float().numpy()

    s_pkg = e4m3((((m / np.float32(6)).astype(np.float32) * enc).astype(np.float32) * np.float32(1.5)))
    s_alt = e4m3(((m / np.float32(4)).astype(np.float32) * enc).astype(np.float32))
    rows, scales = [], []
    for mi, si in zip(m[s_pkg != s_alt], s_pkg[s_pkg != s_alt]):
        exact = (g.choice([0.5, 1, 1.5, 2, 3, 4], 15) * si * (big / np.float32(1536))).astype(np.float32)
        exact = exact[np.abs(exact) < mi]
        row = np.concatenate([[mi], np.resize(exact, 15) if exact.size else np.zeros(15, np.float32)])
        rows.append(row * g.choice([-1, 1], 16))
        scales.append(si)
    return _kept(rows, scales, big, g, torch, quantize_to_fp4, ScaleRule, limit=64)


def reach_seven(torch, quantize_to_nvfp4, ScaleRule, x) -> np.ndarray:
    """Per block of 16, whether either candidate's scaled values reach 7 in the package (which
    then rounds them to 8, a value its packing cannot hold)."""
    blocks = torch.from_numpy(np.ascontiguousarray(x, np.float32)).reshape(-1, 16)
    amax = blocks.abs().max().float()
    reach = torch.zeros(blocks.shape[0], dtype=torch.bool)
    for factor in (None, 1.5):
        scaled, _ = quantize_to_nvfp4(blocks, amax, scale_rule=ScaleRule.mse, scale_expansion_factor=factor)
        reach |= scaled.abs().max(dim=1).values >= 7
    return reach.numpy()


def load_package(d: str) -> None:
    """Download the package's source distribution into ``d`` and put its ``src`` on the path."""
    subprocess.run([sys.executable, "-m", "pip", "download", SDIST, "--no-deps", "--no-binary", ":all:",
                    "--no-build-isolation", "-d", d], check=True, capture_output=True)
    (sd,) = Path(d).glob("fouroversix-*.tar.gz")
    with tarfile.open(sd) as tf:
        tf.extractall(d, filter="data")
    sys.path.insert(0, str(next(Path(d).glob("fouroversix-*/src"))))


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        load_package(d)
        import torch
        from fouroversix.quantize.pytorch.reference import (fake_quantize_to_e2m1, quantize_to_fp4,
                                                            quantize_to_nvfp4)
        from fouroversix.utils import ScaleRule

        arrays, meta = {}, {"sdist": SDIST, "torch": torch.__version__, "numpy": np.__version__, "cases": []}
        cases = inputs()
        cases["factor"] = factor_blocks(torch, quantize_to_fp4, fake_quantize_to_e2m1, ScaleRule)
        cases["four"] = four_blocks(torch, quantize_to_fp4, ScaleRule)
        for name, x in cases.items():
            xt = torch.from_numpy(x)
            arrays[f"{name}/x"] = x
            arrays[f"{name}/reach7"] = reach_seven(torch, quantize_to_nvfp4, ScaleRule, x)
            for rule in ("mse", "mae"):
                vals, scales, g = quantize_to_fp4(xt, scale_rule=ScaleRule(rule), use_blackwell_scale_layout=False)
                arrays[f"{name}/{rule}/packed"] = vals.view(torch.uint8).numpy().reshape(-1).copy()
                arrays[f"{name}/{rule}/scales"] = scales.view(torch.uint8).numpy().reshape(-1).copy()
                arrays[f"{name}/{rule}/amax"] = np.array([g.item()], np.float32)
            meta["cases"].append(name)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {', '.join(meta['cases'])}")


if __name__ == "__main__":
    main()
