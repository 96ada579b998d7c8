"""Read-only copies of a codebook's recipe: a JSON object whose dicts and lists refuse
changes.  They are ``dict`` and ``list`` subclasses, so they compare equal to plain ones
and ``json.dumps`` writes them unchanged; ``copy.deepcopy(recipe)`` gives a plain, writable
copy (``dict(recipe)`` only a shallow one: its lists stay read-only).  Codebooks are shared
(the registry, cached derivations), so a change through one holder would reach every other."""

from __future__ import annotations

import math
from typing import Any, Mapping, NoReturn

import numpy as np

from ..numerics.arguments import one_line

__all__ = ["FrozenDict", "FrozenList", "freeze", "check_json"]


def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError("a codebook's recipe is read-only; change a copy (copy.deepcopy(cb.recipe))")


def _thawed(obj):
    if isinstance(obj, dict):
        return {k: _thawed(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_thawed(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_thawed(v) for v in obj)
    return obj


class _Frozen:
    """What the read-only containers share: pickling, copying and deep-copying give (or go
    through) plain ones; ``_plain`` is the container type."""

    _plain: type = object

    def __reduce__(self):
        return (freeze, (_thawed(self),))

    def __copy__(self):
        return self._plain(self)

    def __deepcopy__(self, memo):
        return _thawed(self)


class FrozenDict(_Frozen, dict):
    """A dict that refuses changes."""

    _plain = dict
    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = _refuse
    # mypy 1.10 holds update to MutableMapping's overloads, which _refuse's signature does not match (newer mypy
    # accepts it)
    update = _refuse  # type: ignore[assignment, unused-ignore]


class FrozenList(_Frozen, list):
    """A list that refuses changes."""

    _plain = list
    __setitem__ = __delitem__ = __iadd__ = __imul__ = append = clear = extend = insert = pop = remove = \
        reverse = sort = _refuse


def freeze(obj: Any, error: type[Exception] = ValueError) -> Any:
    """``obj`` with every mapping and list (at any depth) replaced by a read-only copy and every
    numpy bool, integer or float by the Python value (a derivation given ``np.int64(64)`` still
    makes a recipe JSON holds); ``error`` unless the result is a JSON value (:func:`check_json`)."""
    frozen = _freeze(obj)
    check_json(frozen, error)
    return frozen


def _freeze(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return FrozenDict({k: _freeze(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return FrozenList(_freeze(v) for v in obj)
    if isinstance(obj, tuple):
        return tuple(_freeze(v) for v in obj)
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        return obj.item()
    return obj


def check_json(obj: Any, error: type[Exception] = ValueError, where: str = "recipe") -> None:
    """``error`` unless ``obj`` is what JSON can hold and read back: objects with string keys,
    arrays (lists, tuples), strings, ints, bools, None and finite floats.  ``json.dumps`` writes
    NaN and infinities as tokens no JSON parser takes (quantbook's own refuses them), turns other
    keys into strings and fails on other types."""
    if obj is None or isinstance(obj, (str, bool, int)):
        return
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise error(f"{where} holds {obj!r}, which JSON cannot hold (finite numbers only)")
        return
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise error(f"{where} has the key {k!r}: JSON object keys are strings")
            check_json(v, error, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_json(v, error, f"{where}[{i}]")
        return
    raise error(f"{where} holds a {type(obj).__name__} ({one_line(obj)}), which JSON cannot hold")
