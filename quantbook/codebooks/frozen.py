"""Read-only copies of a codebook's recipe: a JSON object whose dicts and lists refuse
changes.  They are ``dict`` and ``list`` subclasses, so they compare equal to plain ones
and ``json.dumps`` writes them unchanged; ``copy.deepcopy(recipe)`` gives a plain, writable
copy (``dict(recipe)`` only a shallow one: its lists stay read-only).  Codebooks are shared (the registry, cached derivations), so a change
through one holder would reach every other."""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["FrozenDict", "FrozenList", "freeze"]


def _refuse(self, *args, **kwargs):
    raise TypeError("a codebook's recipe is read-only; change a copy (copy.deepcopy(cb.recipe))")


def _thawed(obj):
    if isinstance(obj, dict):
        return {k: _thawed(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_thawed(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_thawed(v) for v in obj)
    return obj


class FrozenDict(dict):
    """A dict that refuses changes."""

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):
        return (freeze, (_thawed(self),))

    def __copy__(self):
        return dict(self)

    def __deepcopy__(self, memo):
        return _thawed(self)


class FrozenList(list):
    """A list that refuses changes."""

    __setitem__ = __delitem__ = __iadd__ = __imul__ = append = clear = extend = insert = pop = remove = \
        reverse = sort = _refuse

    def __reduce__(self):
        return (freeze, (_thawed(self),))

    def __copy__(self):
        return list(self)

    def __deepcopy__(self, memo):
        return _thawed(self)


def freeze(obj: Any) -> Any:
    """``obj`` with every mapping and list (at any depth) replaced by a read-only copy."""
    if isinstance(obj, Mapping):
        return FrozenDict({k: freeze(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return FrozenList(freeze(v) for v in obj)
    if isinstance(obj, tuple):
        return tuple(freeze(v) for v in obj)
    return obj
