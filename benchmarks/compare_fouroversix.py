"""How often ``search:fouroversix`` differs from Four Over Six's own package, block by block.

Quantizes seeded tensors with the package's PyTorch reference (``fouroversix`` 1.0.5,
downloaded as tests/data/make_fouroversix_vectors.py does; needs torch and the package index)
and with quantbook, and counts the blocks whose scale byte or codes differ, split by the
reasons docs/scales.md gives: a zero scale, scaled values that reach 7, and the rest (errors
that tie to float32 precision).

    python benchmarks/compare_fouroversix.py [--rows 256]
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data"))
from make_fouroversix_vectors import SDIST, load_package, reach_seven  # noqa: E402

import quantbook as qb  # noqa: E402
from _cli import check_floors  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=256, help="rows of 1024 values per case (default 256)")
    args = ap.parse_args()
    check_floors(ap, args, rows=1)
    try:
        import torch
    except ImportError as exc:
        print(f"compare_fouroversix: needs torch ({exc}); nothing compared", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as d:
        try:
            load_package(d)
        except subprocess.CalledProcessError as exc:   # no package index here: pip's last line says why
            why = (exc.stderr or b"").decode(errors="replace").strip().splitlines() or [f"status {exc.returncode}"]
            print(f"compare_fouroversix: pip download {SDIST} failed: {why[-1]}; nothing compared", file=sys.stderr)
            return 1
        from fouroversix.quantize.pytorch.reference import quantize_to_fp4, quantize_to_nvfp4
        from fouroversix.utils import ScaleRule

        rng = np.random.default_rng(0)
        shape = (args.rows, 1024)
        spread = np.exp(rng.uniform(-8, 0, (shape[0] * 64, 1))).repeat(16).reshape(shape)
        cases = {"normal": rng.standard_normal(shape), "student-t:3": rng.standard_t(3, shape),
                 "spread e^U(-8,0)": rng.standard_normal(shape) * spread,
                 "quarter-integers -2..2": rng.integers(-8, 9, shape) * 0.25}
        print(f"{'case':24} {'blocks':>8} {'differ':>7} {'zero scale':>11} {'reach 7':>8} {'other':>6}")
        for name, x in cases.items():
            x = np.ascontiguousarray(x, np.float32)
            xt = torch.from_numpy(x)
            vals, sc, _ = quantize_to_fp4(xt, scale_rule=ScaleRule.mse, use_blackwell_scale_layout=False)
            ref_p = vals.view(torch.uint8).numpy().reshape(-1, 8)
            ref_s = sc.view(torch.uint8).numpy().reshape(-1)
            p, st = qb.quantize(x, "e2m1", 16, scale="search:fouroversix", backend="cpu")
            differ = (st.absmax != ref_s) | (p.reshape(-1, 8) != ref_p).any(axis=1)
            reach = reach_seven(torch, quantize_to_nvfp4, ScaleRule, x)
            zero = differ & (ref_s == 0)
            r7 = differ & ~zero & reach
            print(f"{name:24} {ref_s.size:8d} {differ.sum():7d} {zero.sum():11d} {r7.sum():8d} "
                  f"{(differ & ~zero & ~reach).sum():6d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
