"""What counts as an integer argument, a True/False flag, a list of names and an array, for every layer's
public functions: below all of them, so that each reads its arguments by the same rule."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any, Iterable, TypeAlias

import numpy as np

__all__ = ["is_int", "check_int", "check_flag", "check_names", "random_generator", "is_torch_tensor", "host_array",
           "bfloat16", "one_line", "did_you_mean", "Seed", "RandomSource"]

#: what a ``random_state`` may be (:func:`random_generator`): None, a seed numpy.random.default_rng takes, a
#: Generator or a RandomState
Seed: TypeAlias = (int | np.integer | Sequence[int] | np.random.SeedSequence | np.random.BitGenerator
                   | np.random.Generator | np.random.RandomState | None)
#: what :func:`random_generator` returns: the draws' methods (``random``, ``standard_normal``, ``laplace``,
#: ``standard_t``) have the same signatures on both
RandomSource: TypeAlias = np.random.Generator | np.random.RandomState


def is_int(v: Any) -> bool:
    """Whether ``v`` is an integer argument (a block size, a width): a Python or numpy
    integer, not a bool, and not an integral float."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def check_int(value: Any, what: str, minimum: int | None = None, maximum: int | None = None, *,
              also: str = "", error: type[Exception] = ValueError) -> int:
    """``value`` as an int: an integer argument (:func:`is_int`) from ``minimum`` to ``maximum``
    (each bound optional); an ``error`` naming ``what`` (and ``also``, what else the caller
    takes) otherwise."""
    if not is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            wanted = f"an integer from {minimum} to {maximum}"
        elif minimum is not None:
            wanted = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        else:
            wanted = "an integer" if maximum is None else f"an integer <= {maximum}"
        raise error(f"{what} must be {wanted}{also}, got {one_line(value)}")
    return int(value)


def check_flag(value: Any, what: str, also: str = "") -> bool:
    """``value`` as a bool: True, False, a numpy bool or the integer 0 or 1; a ValueError
    naming ``what`` (and ``also``, what else the caller takes) otherwise: a string such as
    ``"no"`` is truthy, and would switch it on."""
    if not (isinstance(value, (bool, np.bool_)) or (is_int(value) and value in (0, 1))):
        raise ValueError(f"{what} must be True or False{also}, got {value!r}")
    return bool(value)


def check_names(v: Any, what: str, example: str) -> list[str]:
    """A comma-separated str, or a sequence of str, as a list of its (unstripped) items; a
    ValueError naming ``what`` otherwise: bytes or an array would be iterated as numbers."""
    items = v.split(",") if isinstance(v, str) else v
    items = None if isinstance(items, (bytes, bytearray, np.ndarray)) or not hasattr(items, "__iter__") \
        else list(items)
    if items is None or not all(isinstance(s, str) for s in items):
        raise ValueError(f"{what} must be a str such as {example!r} or a sequence of str, got {one_line(v)}")
    return items


def random_generator(random_state: Any, what: str = "random_state") -> RandomSource:
    """``random_state`` as what draws: a Generator or a RandomState as it is, None a fresh Generator,
    anything else the Generator ``numpy.random.default_rng`` makes of it (an integer seed:
    ``random_state=5`` and ``random_state=numpy.random.default_rng(5)`` draw the same numbers); a
    ValueError naming ``what`` for a bool (``True`` would be seed 1) or what numpy refuses.

    A RandomState draws with its own (legacy) methods, as scipy.stats' ``rvs`` does: where a law's
    draw is scipy's transformation, the same RandomState state gives scipy's numbers (``default_rng`` of
    it would share its bits but draw normal and t variates by other algorithms).  Unlike scipy
    (``scipy._lib._util.check_random_state``), an integer seeds ``default_rng``, not a RandomState,
    and None is a fresh Generator, not numpy's global RandomState: the seeded recipes of the docs
    draw what they always drew."""
    if isinstance(random_state, (np.random.Generator, np.random.RandomState)):
        return random_state
    if not isinstance(random_state, (bool, np.bool_)):
        try:
            return np.random.default_rng(random_state)
        except (TypeError, ValueError):
            pass
    raise ValueError(f"{what} must be None, a non-negative integer seed, a numpy.random.Generator or RandomState, "
                     f"got {one_line(random_state)}")


def did_you_mean(word: str, known: Iterable[str], cutoff: float = 0.75) -> str:
    """`` (did you mean 'x'?)`` for the entry of ``known`` that ``word`` looks most like, by
    difflib's ratio at ``cutoff`` or above, compared without case; else ``""``.  For error
    messages about a name that is not there (``iq4nl`` for ``iq4_nl``)."""
    by_lower: dict[str, str] = {}
    for k in known:
        by_lower.setdefault(str(k).lower(), str(k))
    near = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=cutoff)
    return f" (did you mean {by_lower[near[0]]!r}?)" if near else ""


def one_line(v: Any, limit: int = 80) -> str:
    """``repr(v)`` as an error message shows it: on one line (an array's or a long list's repr
    spans many), clipped to ``limit`` characters."""
    shown = " ".join(repr(v).split())
    return shown if len(shown) <= limit else shown[:limit] + "..."


def bfloat16() -> np.dtype:
    """ml_dtypes' bfloat16, or a ValueError saying how to install it."""
    return _ml_dtype("bfloat16")


def _ml_dtype(name: str) -> np.dtype:
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - depends on the environment
        raise ValueError(f"{name} needs the ml_dtypes package: pip install 'quantbook[bf16]'") from None
    return np.dtype(getattr(ml_dtypes, name))


#: torch dtypes numpy has no type for -> the integer dtype of their bits; ml_dtypes has each,
#: under torch's name
_TORCH_BITS = {"bfloat16": "int16", "float8_e4m3fn": "uint8", "float8_e5m2": "uint8",
               "float8_e4m3fnuz": "uint8", "float8_e5m2fnuz": "uint8"}


def is_torch_tensor(v: Any) -> bool:
    """``v`` is a torch tensor (on any device), told without importing torch."""
    return hasattr(v, "detach") and hasattr(v, "numpy")


def host_array(v: Any, what: str = "x", error: type[ValueError] = ValueError) -> np.ndarray:
    """``v`` as a plain numpy array: the one rule for every array a user hands a public function.

    * a torch tensor: detached and brought to the host, its lazy conjugate and negative views
      resolved (torch hands neither to numpy), its bfloat16 and float8 read through their bits
      as ml_dtypes' types of the same names (torch cannot hand them to numpy); one it cannot
      read at all (sparse, on the meta device) is a ValueError naming ``what``;
    * a masked array: its data when no entry is masked, else a ValueError naming ``what``:
      every computation here would read a masked entry's hidden value, a silent wrong answer;
    * anything else through ``np.asarray``: an ndarray subclass (``np.matrix``, ``np.memmap``,
      a user's) becomes a plain ndarray view, as the kernels and the reshapes take it (a
      matrix stays 2-D when flattened); what numpy cannot read (a ragged nested list) is a
      ValueError naming ``what``.

    ``error``: the ValueError subclass the caller raises (a CodebookError, a SourceError).
    """
    if is_torch_tensor(v):
        try:
            t = v.detach().cpu().resolve_conj().resolve_neg()
            name = str(t.dtype).replace("torch.", "")
            if name in _TORCH_BITS:
                import torch
                return t.view(getattr(torch, _TORCH_BITS[name])).numpy().view(_ml_dtype(name))
            return t.numpy()
        except (TypeError, RuntimeError, NotImplementedError) as exc:   # sparse, meta, quantized...
            raise error(f"{what} is a torch tensor that numpy cannot read: {' '.join(str(exc).split())}") from None
    if isinstance(v, np.ma.MaskedArray):
        masked = int(np.ma.count_masked(v))
        if masked:
            entries = "entry" if masked == 1 else "entries"
            raise error(f"{what} is a masked array with {masked} masked {entries}, which would be read as "
                             f"the values under the mask; pass {what}.filled(value) or {what}.compressed()")
        v = np.ma.getdata(v)
    try:
        return np.asarray(v)
    except ValueError as exc:   # a ragged nested list: numpy's message names no argument
        raise error(f"{what} cannot be read as an array ({' '.join(str(exc).split())})") from None

