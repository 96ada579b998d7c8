"""Benchmark: ``derive vq`` against an earlier revision of quantbook, in one run: time and bits.

    python benchmarks/bench_vq_lloyd.py --baseline REV [--cases 2x64,2x256] [--final-passes 10,100]
                                        [--samples 10000000] [--repeat 2]

extracts ``quantbook/`` at git revision REV (``git archive``; run it inside the git checkout)
into a temporary folder and derives each case (P x N, the default recipe but its
``final_passes``) with each tree in a child process of its own, old and new alternating, each
after a warm-up run that compiles its kernels.  It prints each tree's best wall time of
--repeat (and the CPU time of that run, all threads), new/old, the passes on the whole sample
and whether the two trees' results are the same bits: points, MSE, passes, convergence, the
last pass's change and the restarts' errors.  ``--profile`` adds, for each tree's best run,
where its time went: drawing the sample, the Lloyd passes at each sample size (calls, time,
per pass) and, within them, building the 2-D cell lists.

    python benchmarks/bench_vq_lloyd.py --baseline REV --bits [--registry]

derives instead a spread of small recipes (P = 2 to 4, 16 to 256 points, seeds, sample sizes,
both starts, symmetric and block-scaled samples) with both trees and says for each whether
the results are the same bits; ``--registry`` adds the registry's derived grids, each
re-derived by both trees (10^7 vectors) and compared with its stored points.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

from _cli import check_floors, int_list, run, vq_cases

#: the child: derive each recipe (JSON on the command line) after a warm-up, one JSON line each
_CHILD = r"""
import collections, hashlib, json, sys, time, warnings
warnings.simplefilter("ignore")   # an unconverged coarse level is part of some recipes
import quantbook
import quantbook.derive.vq as V
import quantbook.derive.vq_kernels as K
from quantbook.derive.vq import VQRecipe, solve_vq
print(json.dumps({"quantbook": quantbook.__file__}), flush=True)
spent, calls = collections.defaultdict(float), collections.Counter()

def timed(owner, name, key):   # wall time of every call, by key (a few microseconds a call)
    f = getattr(owner, name)
    def g(*a, **kw):
        t = time.perf_counter()
        try:
            return f(*a, **kw)
        finally:
            spent[key(*a)] += time.perf_counter() - t
            calls[key(*a)] += 1
    setattr(owner, name, g)

timed(V._Sums, "run", lambda acc, c: f"passes on {acc.x.shape[0]} vectors")
timed(K, "cell_lists", lambda *a: "their 2-D cell lists")
timed(V, "draw_vectors", lambda *a: "drawing the sample")
warm = set()
for spec in sys.argv[1:]:
    r = VQRecipe(**json.loads(spec))
    if r.dim not in warm:   # compiles (or loads) the kernels of this P, serial and parallel
        solve_vq(dim=r.dim, points=16, samples=1 << 18, coarse_samples=1 << 17, restarts=1, max_iter=3,
                 final_passes=2)
        warm.add(r.dim)
    spent.clear(), calls.clear()
    t0, c0 = time.perf_counter(), time.process_time()
    res = solve_vq(r)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    result = res.codebook.points.tobytes() + repr((res.mse, res.iterations, res.converged, res.change,
                                                   res.restart_mse)).encode()
    print(json.dumps({"wall": wall, "cpu": cpu, "passes": res.iterations, "converged": res.converged,
                      "mse": res.mse, "bits": hashlib.sha256(result).hexdigest(),
                      "points": res.codebook.points.tolist(),
                      "profile": {k: [calls[k], spent[k]] for k in sorted(spent)}}), flush=True)
"""

#: --bits: recipes that exercise every search (2-D cell lists, the strip search for P > 2,
#: the strip fallback outside the grid), both starts, the symmetric fold and block scales
_SPREAD = [dict(dim=2, points=16, samples=200_000, coarse_samples=20_000),
           dict(dim=2, points=16, samples=150_000, seed=7, restarts=2),
           dict(dim=2, points=64, samples=300_000, seed=3),
           dict(dim=2, points=64, samples=1_000_000, seed=1, final_passes=40),
           dict(dim=2, points=256, samples=400_000, seed=1),
           dict(dim=2, points=256, samples=300_000, seed=2, init="kmeans++", restarts=2),
           dict(dim=2, points=128, samples=250_000, seed=4, source="laplace"),
           dict(dim=2, points=64, samples=200_000, scale="rms", block_size=16),
           dict(dim=2, points=16, samples=100_000, symmetric=True),
           dict(dim=3, points=32, samples=100_000, coarse_samples=10_000),
           dict(dim=3, points=48, samples=60_000, symmetric=True),
           dict(dim=3, points=128, samples=200_000, seed=9, scale="absmax", block_size=24),
           dict(dim=4, points=64, samples=100_000, coarse_samples=10_000, seed=5),
           dict(dim=4, points=256, samples=200_000, seed=2, final_passes=20)]


def _baseline_tree(rev: str, into: Path) -> Path:
    """``quantbook/`` of git revision ``rev``, extracted under ``into``."""
    try:
        tar = subprocess.run(["git", "archive", "--format=tar", rev, "quantbook"], capture_output=True, check=True,
                             cwd=Path(__file__).resolve().parent.parent).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        raise ValueError(f"--baseline {rev}: git archive failed: {err.decode(errors='replace').strip() or exc}")
    with tarfile.open(fileobj=BytesIO(tar)) as t:
        # the data filter where this Python has it (3.10.12+): plain files only
        t.extractall(into, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return into


def _derive(tree: Path, specs: list[dict]) -> list[dict]:
    """Each recipe derived by the quantbook under ``tree`` in one child process (started in
    ``tree``: ``python -c`` puts its working folder first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", _CHILD, *map(json.dumps, specs)], env=env, capture_output=True,
                         text=True, cwd=tree)
    if out.returncode:
        raise ValueError(f"the child with quantbook from {tree} failed: {out.stderr.strip().splitlines()[-1:]}")
    first, *rows = [json.loads(line) for line in out.stdout.splitlines()]
    if not Path(first["quantbook"]).resolve().is_relative_to(tree.resolve()):
        raise ValueError(f"the child meant for {tree} imported quantbook from {first['quantbook']}")
    return rows


def _bits(trees: dict[str, Path], registry: bool) -> int:
    specs = list(_SPREAD)
    stored = []
    if registry:
        from quantbook.codebooks.vector_registry import vector_registry

        for name, entry in sorted(vector_registry().items()):
            recipe = entry.codebook.recipe
            if recipe is not None and recipe.get("method") == "vq":
                specs.append({k: v for k, v in recipe.items() if k != "method"})
                stored.append((len(specs) - 1, name, entry.codebook.points.tolist()))
    got = {side: _derive(tree, specs) for side, tree in trees.items()}
    differ = 0
    for i, spec in enumerate(specs):
        same = got["old"][i]["bits"] == got["new"][i]["bits"]
        differ += not same
        print(f"{'same bits' if same else 'DIFFERENT'}  passes {got['new'][i]['passes']:>3}  "
              f"MSE/dim {got['new'][i]['mse']:.6e}  {json.dumps(spec)}")
    for i, name, points in stored:
        for side in trees:
            same = got[side][i]["points"] == points
            differ += not same
            print(f"{'same bits' if same else 'DIFFERENT'}  {name}: the {side} tree's re-derivation and "
                  "the stored points")
    print("every result the same bits" if not differ else f"{differ} results differ")
    return 1 if differ else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, metavar="REV", help="the git revision to compare with")
    ap.add_argument("--cases", default="2x64,2x256", help="comma-separated PxN (default 2x64,2x256)")
    ap.add_argument("--final-passes", default="10,100", help="final_passes of each case (default 10,100)")
    ap.add_argument("--samples", type=int, default=None, help="fitting vectors (default the recipe's, 10^7)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per tree and case, alternating (default 2)")
    ap.add_argument("--profile", action="store_true", help="where each tree's best run spent its time")
    ap.add_argument("--bits", action="store_true", help="only compare the results of a spread of recipes")
    ap.add_argument("--registry", action="store_true", help="with --bits: also the registry's derived grids")
    args = ap.parse_args()
    check_floors(ap, args, repeat=1, samples=1)
    if args.registry and not args.bits:
        ap.error("--registry is read by --bits only")
    if args.profile and args.bits:
        ap.error("--profile is read by a timing run only, not by --bits")
    cases = vq_cases(ap, args.cases)
    finals = int_list(ap, args.final_passes, "--final-passes")
    from quantbook.derive.vq import VQRecipe

    specs = []
    for (p, n) in cases:
        for f in finals:
            spec = dict(dim=p, points=n, final_passes=f)
            if args.samples is not None:
                spec["samples"] = args.samples
            try:
                VQRecipe(**spec)
            except ValueError as exc:
                ap.error(str(exc))
            specs.append(spec)
    here = Path(__import__("quantbook").__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="quantbook-baseline-") as tmp:
        trees = {"old": _baseline_tree(args.baseline, Path(tmp)), "new": here}
        print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
              f"old: {args.baseline}, new: {here}")
        if args.bits:
            return _bits(trees, args.registry)
        print("| P | N | final passes | passes run | converged | old wall (CPU) | new wall (CPU) | new/old | bits |")
        print("|---:|---:|---:|---:|---|---:|---:|---:|---|")
        profiles = []
        for spec in specs:
            runs = {"old": [], "new": []}
            for _ in range(args.repeat):
                for side in ("old", "new"):
                    runs[side] += _derive(trees[side], [spec])
            best = {side: min(r, key=lambda v: v["wall"]) for side, r in runs.items()}
            same = len({v["bits"] for r in runs.values() for v in r}) == 1
            o, w = best["old"], best["new"]
            print(f"| {spec['dim']} | {spec['points']} | {spec['final_passes']} | {w['passes']} | "
                  f"{'yes' if w['converged'] else 'no'} | {o['wall']:.1f} s ({o['cpu']:.1f} s) | "
                  f"{w['wall']:.1f} s ({w['cpu']:.1f} s) | {w['wall'] / o['wall']:.2f} | "
                  f"{'same' if same else 'DIFFERENT'} |", flush=True)
            profiles.append((spec, best))
        for spec, best in profiles if args.profile else ():
            print(f"\nwhere the time went, P={spec['dim']} N={spec['points']} final_passes={spec['final_passes']}:")
            for side in ("old", "new"):
                print(f"  {side} ({best[side]['wall']:.1f} s):")
                for key, (k, sec) in best[side]["profile"].items():
                    print(f"    {key:32s} {k:5d} calls {sec:7.2f} s {1e3 * sec / k:9.2f} ms a call")
    return 0


if __name__ == "__main__":
    run(main)
