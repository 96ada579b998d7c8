"""Generate tests/data/bnb_vectors.npz from bitsandbytes (the independent reference).

Run once with bitsandbytes installed (measured with bitsandbytes 0.50.2, torch 2.13.0+cpu):

    pip install bitsandbytes        # (--no-deps if pip wants another torch)
    python tests/data/make_bnb_vectors.py

Every case stores the input, bitsandbytes' packed bytes, absmax, nested statistics
(``compress_statistics=True``) and ``dequantize_4bit`` output.  The inputs are seeded (numpy
PCG64, seed 20241123) and include the edge cases the format must get right: partial last blocks,
odd lengths, all-zero blocks (full and partial), values exactly on the float32 midpoints,
FP4's two zeros, and a block with a subnormal absmax.  Also stored: ``torch.sum`` of fixed
arrays for 1..4 threads (the nested offset is torch's float32 mean) and bitsandbytes'
``create_dynamic_map()``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("bnb_vectors.npz")
SEED = 20241123


def sum_input(n: int) -> np.ndarray:
    """Deterministic positive float32 values without an RNG (for the torch.sum vectors)."""
    i = np.arange(n, dtype=np.int64)
    return ((((i * 2654435761) % 1000003).astype(np.float64) / 1000003.0) ** 3 * 7.0 + 1e-3).astype(np.float32)


def cases(rng: np.random.Generator):
    out = []
    sizes = {32: 1001, 64: 1001, 128: 2 * 128 + 33, 256: 3 * 256 + 1, 512: 2 * 512 + 33,
             1024: 1024 + 33, 2048: 2048 + 33, 4096: 4096 + 33}
    for qt in ("nf4", "fp4"):
        for dt in ("float32", "float16"):
            for B, n in sizes.items():
                x = rng.standard_normal(n) * 10.0 ** rng.integers(-2, 3)
                out.append(dict(name=f"{qt}-{dt}-B{B}-n{n}", qt=qt, dt=dt, B=B, x=x, nested=(B in (64, 256, 2048))))
    # many blocks -> several nested 256-blocks
    x = rng.standard_normal(300 * 64 + 5) * np.repeat(rng.uniform(0.1, 3, 301), 64)[: 300 * 64 + 5]
    out.append(dict(name="nf4-float32-B64-nested-301blocks", qt="nf4", dt="float32", B=64, x=x, nested=True))
    out.append(dict(name="fp4-float16-B64-nested-301blocks", qt="fp4", dt="float16", B=64, x=x, nested=True))
    # all-zero blocks (a full one and the partial tail) + constant blocks
    x = rng.standard_normal(64 * 5 + 10)
    x[64:128] = 0.0
    x[-10:] = 0.0
    x[192:256] = -2.5
    for qt in ("nf4", "fp4"):
        out.append(dict(name=f"{qt}-zero-blocks", qt=qt, dt="float32", B=64, x=x, nested=True))
    # values exactly on float32 midpoints (absmax 1 so y == x), and FP4's zero neighbourhood
    import torch
    from bitsandbytes.backends.default.ops import _get_4bit_quantize_bounds
    for qt in ("nf4", "fp4"):
        bounds = _get_4bit_quantize_bounds(qt, torch.device("cpu"))[0].numpy().astype(np.float64)
        f32 = bounds.astype(np.float32)
        near = np.concatenate([f32, np.nextafter(f32, np.float32(2)), np.nextafter(f32, np.float32(-2)),
                               [0.0, -0.0, 1e-4, -1e-4, 0.0026, -0.0026, 0.002604, -0.002604]])
        x = np.concatenate([[1.0], near, [-1.0]]).astype(np.float32)
        out.append(dict(name=f"{qt}-on-midpoints", qt=qt, dt="float32", B=64, x=x, nested=False))
    # subnormal absmax (bitsandbytes clamps the divisor at float32(1e-38))
    x = rng.standard_normal(128)
    x[:64] *= 1e-40
    out.append(dict(name="nf4-subnormal-block", qt="nf4", dt="float32", B=64, x=x, nested=False))
    return out


def main() -> None:
    import torch
    import torch._dynamo

    torch._dynamo.config.disable = True  # bnb's torch.compile'd fallbacks run eagerly (same math)
    import bitsandbytes
    import bitsandbytes.functional as F

    rng = np.random.default_rng(SEED)
    arrays: dict[str, np.ndarray] = {}
    meta = []
    for k, c in enumerate(cases(rng)):
        dt = c["dt"]
        x = np.asarray(c["x"]).astype(dt)
        t = torch.from_numpy(x.copy())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            packed, st = F.quantize_4bit(t, blocksize=c["B"], quant_type=c["qt"],
                                         compress_statistics=c["nested"])
            deq = F.dequantize_4bit(packed, st)
        p = f"c{k}_"
        arrays[p + "x"] = x
        arrays[p + "packed"] = packed.numpy().reshape(-1)
        arrays[p + "absmax"] = st.absmax.numpy().reshape(-1)
        arrays[p + "deq"] = deq.numpy().reshape(-1)
        entry = dict(name=c["name"], quant_type=c["qt"], dtype=dt, blocksize=c["B"], n=int(x.size),
                     nested=bool(c["nested"]))
        if c["nested"]:
            arrays[p + "nested_absmax"] = st.state2.absmax.numpy().reshape(-1)
            arrays[p + "nested_offset"] = np.array([st.offset.item()], dtype=np.float32)
        meta.append(entry)
    arrays["dynamic_map"] = F.create_dynamic_map().numpy()
    sums = []
    for n in list(range(1, 40)) + [64, 100, 1000, 4097, 32767, 32768, 40000, 100003]:
        x = torch.from_numpy(sum_input(n))
        for threads in (1, 2, 3, 4):
            torch.set_num_threads(threads)
            sums.append((n, threads, x.sum().item(), x.mean().item()))
    arrays["sums"] = np.array([[n, th] for n, th, _, _ in sums], dtype=np.int64)
    arrays["sums_values"] = np.array([[s, m] for _, _, s, m in sums], dtype=np.float32)
    arrays["meta"] = np.frombuffer(json.dumps(dict(
        cases=meta, bitsandbytes=bitsandbytes.__version__, torch=torch.__version__,
        seed=SEED)).encode(), dtype=np.uint8)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e3:.0f} kB, {len(meta)} cases, "
          f"bitsandbytes {bitsandbytes.__version__}, torch {torch.__version__})")


if __name__ == "__main__":
    main()
