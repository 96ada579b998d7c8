"""Generate tests/data/torchao_vectors.npz: MXFP4 (every ScaleCalculationMode) and NVFP4 bytes
computed by torchao's prototype.mx_formats itself, for tests/test_layouts_torchao.py.

Run with a Python that has torch and torchao 0.18, e.g. a virtual environment over the one
that has torch:

    python -m venv --system-site-packages /tmp/taoenv
    /tmp/taoenv/bin/pip install --no-deps torchao==0.18.0
    /tmp/taoenv/bin/python tests/data/make_torchao_vectors.py

With torch 2.14.1 and torchao 0.18.0 every case but ``factor`` (added later) came out bit for
bit as first committed.

Each case stores the input (float32 values, or bfloat16 bit patterns for bf16 cases), the
packed E2M1 codes (torchao's ``qdata``), the block scales (E8M0 or E4M3 bytes), the float32
tensor scale (NVFP4) and torchao's float32 dequantization.  Versions go into ``meta``.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchao
from torchao.prototype.mx_formats.config import ScaleCalculationMode
from torchao.prototype.mx_formats.kernels import f32_to_f4_unpacked
from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

OUT = Path(__file__).with_name("torchao_vectors.npz")
rng = np.random.default_rng(20240611)


def inputs(block):
    """name -> float32 array (rows x cols, cols a multiple of the block)."""
    cases = {}
    cases["normal"] = rng.standard_normal((8, 128)).astype(np.float32)
    cases["wide"] = (rng.standard_normal((16, 64)) * np.exp(rng.uniform(-30, 30, (16, 1)))).astype(np.float32)
    z = rng.standard_normal((4, 4 * block)).astype(np.float32)
    z[0, :block] = 0
    z[1, block:2 * block] = -0.0
    z[2, :block] = rng.standard_normal(block) * 1e-3
    cases["zeros"] = z
    # block maxima on and next to the rules' breakpoints: powers of two, 1.75 * 2**k, 6 * 2**k
    rows = []
    for base in (1.0, 1.75, 6.0, 3.0, 448.0 * 6):
        for k in (-20, -3, 0, 1, 5, 30):
            for d in (-1, 0, 1):
                m = np.float32(base * 2.0**k)
                for _ in range(abs(d)):
                    m = np.nextafter(m, np.float32(np.inf if d > 0 else -np.inf))
                row = (rng.uniform(-1, 1, block) * m).astype(np.float32)
                row[rng.integers(block)] = m * rng.choice([-1, 1])
                rows.append(row)
    cases["breakpoints"] = np.stack(rows).reshape(-1, 2 * block)
    # values exactly on E2M1 ties and signed zeros after scaling by a power of two
    t = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 7.0, 0.1, -0.1, -0.25, -0.75,
                  -5.0, -7.9, -0.0], np.float32)
    tie = np.tile(np.concatenate([t, -t]), (4, 2 * block // (2 * t.size)))
    cases["ties"] = (tie * np.float32(2.0**-3)).astype(np.float32)
    # extreme magnitudes: subnormal and huge block maxima
    ext = rng.standard_normal((4, block)).astype(np.float32)
    ext[0] *= np.float32(1e-39)
    ext[1] *= np.float32(1e-42)
    ext[2] = ext[2] / np.abs(ext[2]).max() * np.float32(3e38)
    ext[3] *= np.float32(2.0**-126)
    cases["extreme"] = ext
    return cases


def factor_blocks():
    """NVFP4 blocks whose codes depend on how the value factor is rounded: torchao multiplies by
    ``(1 / t) / e``; blocks where ``1 / (t * e)`` is another float32 hold values next to E2M1's
    decision points on which the two factors pick different codes (by torchao's own encoder).
    The first value of a block sets its E4M3 scale ``e``; the last block holds the tensor's
    maximum, which sets ``t``."""
    g = np.random.default_rng(20261127)
    big = np.float32(g.uniform(1, 2))
    t = np.float32(big / np.float32(448 * 6))
    e = torch.arange(0x08, 0x7F, dtype=torch.uint8).view(torch.float8_e4m3fn).float().numpy()
    f = ((np.float32(1) / t) / e).astype(np.float32)
    other = (np.float32(1) / (t * e).astype(np.float32)).astype(np.float32)
    mids = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], np.float32)
    blocks = []
    for ei, fi, oi in zip(e[f != other], f[f != other], other[f != other]):
        near = (mids / fi).astype(np.float32)
        x = np.concatenate([near + k * np.spacing(near) for k in range(-3, 4)]).astype(np.float32)
        codes = [f32_to_f4_unpacked(torch.from_numpy((x * v).astype(np.float32))).numpy() for v in (fi, oi)]
        x = x[codes[0] != codes[1]]
        if x.size:
            row = np.resize(x * g.choice([-1, 1], x.size).astype(np.float32), 15)
            blocks.append(np.concatenate([[np.float32(6 * t * ei)], row]).astype(np.float32))
    top = np.float32(big) * (g.uniform(-1, 1, 16)).astype(np.float32)
    top[0] = big
    return np.stack([*blocks, top]).astype(np.float32)


def main():
    torch.manual_seed(0)
    arrays, meta = {}, {"torch": torch.__version__, "torchao": torchao.__version__,
                        "numpy": np.__version__, "python": sys.version.split()[0], "cases": []}
    for kind, block in (("mxfp4", 32), ("nvfp4", 16)):
        cases = inputs(block)
        if kind == "nvfp4":
            cases["factor"] = factor_blocks()
        for name, x in cases.items():
            for dt in ("float32", "bfloat16"):
                xt = torch.from_numpy(x)
                if dt == "bfloat16":
                    xt = xt.to(torch.bfloat16)
                if kind == "nvfp4" and name == "extreme":
                    continue  # tensor scale 0 or subnormal: torchao divides by it (not defined)
                modes = [m.value for m in ScaleCalculationMode] if kind == "mxfp4" else [None]
                for mode in modes:
                    key = f"{kind}-{name}-{dt}" + (f"-{mode}" if mode else "")
                    if kind == "mxfp4":
                        scale, q = to_mx(xt, torch.float4_e2m1fn_x2, block, ScaleCalculationMode(mode))
                        deq = to_dtype(q, scale, torch.float4_e2m1fn_x2, block, torch.float32)
                        ts = np.float32(np.nan)
                    else:
                        pts = per_tensor_amax_to_scale(torch.max(torch.abs(xt)).float())
                        t = NVFP4Tensor.to_nvfp4(xt, block_size=16, per_tensor_scale=pts)
                        scale, q = t.scale, t.qdata
                        deq = t.dequantize(torch.float32)
                        ts = np.float32(pts.item())
                    xin = xt.view(torch.int16).numpy().view(np.uint16) if dt == "bfloat16" else x
                    arrays[f"{key}/x"] = np.ascontiguousarray(xin)
                    arrays[f"{key}/packed"] = q.contiguous().view(torch.uint8).numpy().reshape(-1).copy()
                    arrays[f"{key}/scales"] = scale.contiguous().view(torch.uint8).numpy().reshape(-1).copy()
                    arrays[f"{key}/tensor_scale"] = np.array([ts], np.float32)
                    arrays[f"{key}/dequant"] = deq.numpy().astype(np.float32).reshape(-1)
                    meta["cases"].append({"key": key, "layout": kind, "mode": mode, "dtype": dt,
                                          "block": block, "shape": list(x.shape)})
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez_compressed(OUT, **arrays)
    print(f"{OUT}: {len(meta['cases'])} cases, {OUT.stat().st_size} bytes; torch {torch.__version__}, "
          f"torchao {torchao.__version__}")


if __name__ == "__main__":
    main()
