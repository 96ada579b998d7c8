"""What every command module shares: the user-error type, the parser class, argument types,
JSON printing and codebook loading.

Importing this module is cheap (argparse, json, numpy): the derivation engine (sympy,
scipy.stats) is loaded only by the commands that need it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterable, NoReturn

import numpy as np

from ..io.files import name_text
from ..io.text import number

if TYPE_CHECKING:   # loaded where a command reads a codebook
    from ..codebooks.codebook import Codebook

__all__ = ["UsageError", "Parser", "integer", "int_in", "random_seed", "block_size", "layout_block_size",
           "add_json_flag", "add_block_size", "add_bits", "add_source", "add_normalization", "add_domain", "add_scale",
           "add_qmax", "add_sample", "add_symmetric", "add_progress", "add_output", "OPTION_WORDS", "json_safe",
           "print_json", "load_codebook", "print_codebook", "output_path", "SOURCE_SPELLINGS", "point_rows",
           "text_value", "error_units", "units_line", "block_size_note"]

#: the spellings of ``--source`` (quantbook.derive.parse_source, and the safetensors source's suffixes)
SOURCE_SPELLINGS = "normal | laplace | student-t:NU | FILE.npy | FILE.safetensors[:GLOBS][@row|@tensor|@none]"

#: what an option is that several commands take with helps of their own (they differ on purpose): each of
#: those helps says these words, so that the option keeps one meaning; any other shared option has one help
#: (tests/test_cli_options.py)
OPTION_WORDS = {
    "--block-size": "block size B",
    "--bits": "bits k",
    "--source": f"weight distribution: {SOURCE_SPELLINGS}",
    "--normalization": "block normalisation",
    "--domain": "domain of the",
    "--scale": "block scale",
    "--samples": "in the seeded",
    "--seed": "seed of the",
    "--symmetric": "invariant under sign flips",
    "--progress": "a progress bar on standard error even when it is not a terminal",
    "--output": "file to write",
}


class UsageError(Exception):
    """A user error: printed as one line, exit status 2.  ``prog`` names the sub-command."""

    def __init__(self, message: str, prog: str = "quantbook", hint: bool = False) -> None:
        super().__init__(message)
        self.prog, self.hint = prog, hint


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors are one line and whose writes fail loudly."""

    def error(self, message: str) -> NoReturn:  # one line, exit 2 (argparse would print the usage too)
        raise UsageError(message, self.prog, hint=True)

    def _print_message(self, message: str, file: Any = None) -> None:
        # argparse drops a failed write: with standard output unbuffered (python -u), --help and
        # --version into a full disk succeeded in silence; raised, main reports it (a closed pipe quietly)
        file = file or sys.stderr
        if message and file is not None:   # no stream at all (pythonw): nothing to write to
            file.write(message)


def integer(text: str) -> int:
    """An argparse type: an integer (its range is the library's to check)."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {_clip(text)!r}") from None


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``lo`` to ``hi``."""

    def parse(text: str) -> int:
        v = integer(text)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {v}")
        return v

    return parse


def random_seed(text: str) -> int:
    """An argparse type: a seed, by the library's rule for one
    (:func:`quantbook.numerics.arguments.random_generator`: any non-negative integer, however large)."""
    from ..numerics.arguments import random_generator

    v = integer(text)
    try:
        random_generator(v, "seed")
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {_clip(text)!r}") from None
    return v


def block_size(text: str) -> int:
    """An argparse type: a block size of the exact derivations, by their rule
    (:func:`quantbook.codebooks.blocks.check_derived_block_size`)."""
    from ..codebooks.blocks import check_derived_block_size

    return _by_rule(integer(text), check_derived_block_size, "block size ")


def layout_block_size(text: str) -> int:
    """An argparse type: a block size the byte layouts store, by their rule
    (:func:`quantbook.codebooks.blocks.check_block_size`)."""
    from ..codebooks.blocks import check_block_size

    return _by_rule(integer(text), check_block_size, "block_size ")


def _by_rule(value: int, check: Callable[[int], int], name: str) -> int:
    """``check(value)``, its refusal an argparse error (which names the option itself, not ``name``)."""
    try:
        return check(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace(name, "", 1)) from None


def positive_float(text: str) -> float:
    """An argparse type: a positive finite number (``--qmax``)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {_clip(text)!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {_clip(text)!r}")
    return v


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "..."


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--json`` to a command's parser."""
    parser.add_argument("--json", action="store_true", help="JSON output (fields: docs/json.md)")


# The options several commands take, each defined here once.  Where commands differ on purpose (the
# block sizes a command can use, its sample's default, ...) the caller says how in the help, which
# begins or goes on with the option's OPTION_WORDS; defaults are left to the library (None) unless the
# caller gives one.
def add_block_size(parser: argparse.ArgumentParser, rest: str, type: Callable[[str], int] = block_size,
                   default: int | None = None) -> None:
    """``--block-size B``/``-B``, its help ``block size B`` + ``rest``; ``type``: the rule of the block
    sizes the command's library takes (the exact derivations', the byte layouts' or, checked later, its own)."""
    parser.add_argument("--block-size", "-B", type=type, default=default, metavar="B",
                        help=f"{OPTION_WORDS['--block-size']}{rest}")


def add_bits(parser: argparse.ArgumentParser, lo: int) -> None:
    """``--bits K``, ``lo`` .. 8 (the library checks the range, which differs by derivation)."""
    parser.add_argument("--bits", type=integer, metavar="K", help=f"{OPTION_WORDS['--bits']}, {lo}..8 (default 4)")


def add_source(parser: argparse.ArgumentParser, default: str | None = None, note: str = "") -> None:
    """``--source SOURCE`` (:data:`SOURCE_SPELLINGS`)."""
    parser.add_argument("--source", default=default, metavar="SOURCE",
                        help=f"{OPTION_WORDS['--source']} (default normal{note})")


def add_normalization(parser: argparse.ArgumentParser, choices: tuple[str, ...] = ("absmax", "signed-absmax", "none"),
                      default: str | None = None, note: str = "") -> None:
    """``--normalization``; ``choices`` without ``none`` where the command needs blocks, which ``note`` says."""
    parser.add_argument("--normalization", choices=choices, default=default,
                        help=f"{OPTION_WORDS['--normalization']} (default absmax{note})")


def add_domain(parser: argparse.ArgumentParser, what: str, default_text: str, default: str | None = None,
               law: bool = False) -> None:
    """``--domain``: the domain of ``what``, an error or (``law``) the law split into equal probabilities;
    ``default_text``: the default and, where it is not weight, why."""
    domains = ("weight (y's law weighted by the block's scale) or normalized (y's own, y = x/absmax)" if law else
               "weight (the error scale·(y - q), in units of σ) or normalized (y - q, y = x/absmax)")
    parser.add_argument("--domain", choices=("weight", "normalized"), default=default,
                        help=f"{OPTION_WORDS['--domain']} {what}: {domains} (default {default_text})")


def add_scale(parser: argparse.ArgumentParser, rest: str, choices: tuple[str, ...] | None = None) -> None:
    """``--scale RULE``: a block scale rule (:mod:`quantbook.scales`), its help ``block scale`` + ``rest``;
    with ``choices``, derive vq's division of each block of vectors, which its help tells apart."""
    parser.add_argument("--scale", choices=choices, metavar=None if choices else "RULE",
                        help=f"{OPTION_WORDS['--scale']} {rest}")


def add_qmax(parser: argparse.ArgumentParser) -> None:
    """``--qmax Q`` (:func:`positive_float`)."""
    parser.add_argument("--qmax", type=positive_float, metavar="Q",
                        help="with --scale: the table's largest magnitude in the units the scale multiplies "
                             "(default 6, E2M1's)")


def add_sample(parser: argparse.ArgumentParser, when: str, unit: str, sample: str, samples: str, seed: str) -> None:
    """``--samples M`` and ``--seed S`` of a seeded sample: ``when`` they apply, the ``unit`` counted in
    which ``sample``, and the defaults' text (the seed by :func:`random_seed`, the API's rule)."""
    parser.add_argument("--samples", type=integer, metavar="M",
                        help=f"{when}{unit} {OPTION_WORDS['--samples']} {sample} (default {samples})")
    parser.add_argument("--seed", type=random_seed, metavar="S",
                        help=f"{when}{OPTION_WORDS['--seed']} {sample} (default {seed})")


def add_symmetric(parser: argparse.ArgumentParser, what: str, more: str = "") -> None:
    """``--symmetric``: ``what`` is invariant under sign flips (and ``more``); the library's default: not."""
    parser.add_argument("--symmetric", action="store_const", const=True,
                        help=f"{what} {OPTION_WORDS['--symmetric']}{more}")


def add_progress(parser: argparse.ArgumentParser, when: str = "") -> None:
    """``--progress`` (:func:`quantbook.io.progress.progress_enabled`: a terminal draws one anyway)."""
    parser.add_argument("--progress", action="store_true",
                        help=f"{when}{OPTION_WORDS['--progress']} (drawn on a terminal anyway)")


def add_output(parser: argparse.ArgumentParser, what: str, required: bool = False) -> None:
    """``-o FILE``/``--output FILE``: ``what`` says what is written there, and what without it."""
    parser.add_argument("-o", "--output", metavar="FILE", default=None, required=required,
                        help=f"{OPTION_WORDS['--output']}: {what}")


def json_safe(obj: Any) -> Any:
    """Standard JSON has no inf/NaN: non-finite floats become null (e.g. the MSE of a source
    without a variance).  Text is written as Unicode (:func:`~quantbook.io.files.name_text`):
    a file name's non-UTF-8 bytes, which Python holds as lone surrogates in a C locale, would be
    written as ``\\udccf`` escapes that strict JSON readers refuse."""
    if isinstance(obj, str):
        return name_text(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, dict):
        return {name_text(k) if isinstance(k, str) else k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def print_json(obj: Any) -> None:
    """Print ``obj`` as standard JSON (:func:`json_safe`), indented."""
    print(json.dumps(json_safe(obj), indent=2, allow_nan=False))


def load_codebook(spec: str, block_size: int | None = None) -> Codebook:
    """The Codebook a command-line spelling names (:mod:`quantbook.naming`; ``block_size`` None: its default)."""
    from ..naming import resolve_codebook

    return resolve_codebook(spec) if block_size is None else resolve_codebook(spec, block_size)


#: what each unit of the expected errors is (derive, evaluate, plot-sweep): every source is scaled to RMS 1
_MEANINGS = {"σ": "σ = the source's RMS, 1 as scaled (student-t:NU with NU at most 2: its scale)",
             "absmax": "absmax = the block's largest |x|",
             "qmax·s": "qmax·s = the block's largest decoded magnitude (s: the block's scale)"}


def error_units(normalization: str = "none", scale: Any = None) -> dict[str, str]:
    """``{field: unit}`` of the errors of an evaluation (:func:`quantbook.derive.metrics.evaluate`'s
    fields) under ``normalization`` and the rule ``scale``: the weight domain's in σ, the normalised
    domain's in :func:`quantbook.derive.metrics.normalized_unit`; an MSE's unit is the square."""
    from ..derive.metrics import normalized_unit

    norm = normalized_unit(normalization, scale)
    squared = f"({norm})²" if "·" in norm else f"{norm}²"
    return {"mse_weight": "σ²", "mae_weight": "σ", "rd_bound": "σ²", "mse_normalized": squared,
            "mae_normalized": norm, "sqnr_db": "dB"}


def units_line(units: Iterable[str]) -> str:
    """``units: ...``: what each unit among ``units`` (as :func:`error_units` writes them) is, once each."""
    said = dict.fromkeys(_MEANINGS[base] for base in (u.strip("()²") for u in units) if base in _MEANINGS)
    return "units: " + "; ".join(said)


def print_codebook(cb: Codebook, as_json: bool, extra: dict[str, Any] | None = None,
                   units: dict[str, str] | None = None) -> None:
    """``show``'s output: the codebook's fields, then ``extra`` (JSON: merged into one object); in
    the text each value of ``extra`` that ``units`` names is followed by its unit, and a
    :func:`units_line` says what they are."""
    if as_json:
        d = cb.to_dict()
        d.update(extra or {})
        print_json(d)
        return
    print(f"{cb.name}: {cb.bits}-bit, {cb.n_levels} levels")
    print(f"source: {cb.source}")
    from ..codebooks.codebook import format_recipe

    print(f"recipe: {format_recipe(cb.recipe)}")
    print(f"{'index':>5}  {'value (float64 repr)':<24}  {'float32 hex':<10}")
    for i, v in enumerate(cb.code):
        print(f"{i:>5}  {float(v)!r:<24}  0x{np.float32(v).view(np.uint32):08x}")
    units = units or {}
    for key, value in (extra or {}).items():
        print(f"{key}: {text_value(value)}" + (f" {units[key]}" if key in units else ""))
    if units:
        print(units_line(units[key] for key in extra or {} if key in units))


def point_rows(points: Any) -> list[str]:
    """The rows of a vector codebook's points, each coordinate its float64 repr, right-aligned to
    the longest so that the columns line up."""
    cells = [[repr(float(v)) for v in row] for row in np.asarray(points, dtype=np.float64)]
    width = max((len(c) for row in cells for c in row), default=0)
    return ["  ".join(f"{c:>{width}}" for c in row) for row in cells]


def text_value(value: Any) -> str:
    """An ``extra`` value in the text output: the JSON field's value as a reader reads it (a
    float as its shortest repr, a switch as yes/no, a list as its items)."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return number(float(value), "")   # float(): numpy 2's str is np.float64(...) inside containers
    if isinstance(value, (list, tuple)):
        return ", ".join(text_value(v) for v in value)
    return str(value)


def block_size_note(args: argparse.Namespace) -> str:
    """The line that ends a command's text output where ``--scale`` is the rule of one format and ``-B`` was
    left at its default, which is not that format's block size (e4m3 in blocks of 64 is not NVFP4): a note,
    not an error, since other block sizes are layouts of their own; '' otherwise and under ``--json``."""
    scale = args.scale
    if args.block_size is not None or getattr(args, "json", False) or scale is None or not scale.strip():
        return ""
    from ..codebooks.blocks import DEFAULT_BLOCK_SIZE
    from ..scales import get_rule

    blocks = get_rule(scale).format_blocks
    if blocks is None or blocks[1] == DEFAULT_BLOCK_SIZE:
        return ""
    fmt, size = blocks
    return f"note: blocks of {DEFAULT_BLOCK_SIZE} (the -B default); {fmt} stores blocks of {size}: -B {size}"


def output_path(path: str, inputs: tuple[str, ...] = ()) -> str:
    """Check an ``-o FILE`` before any work is done (:func:`quantbook.io.files.check_output_path`);
    ``inputs``: the command's input files, which it must not overwrite."""
    from ..io.files import check_output_path

    check_output_path(path, inputs)
    return path
