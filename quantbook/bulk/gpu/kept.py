"""Device arrays kept for the host copies made of them.

A :class:`~quantbook.bulk.state.QuantState` holds host arrays, so a state quantized on a GPU
brings its block scales to the host, and dequantizing it on the GPU would upload them and
check them again: an upload of a float32 a block and a reduction whose answer the host
waits for.  Instead the backend keeps the checked device array the copy was made from, for
as long as the host copy lives, and makes the host copy read-only, so that it cannot change
under the kept one.  A host copy made writable again, replaced or resized is not used.

What is kept is bounded (:data:`KEEP_BYTES`, the least recently used go first), so states
held on the host do not hold GPU memory without limit; a state whose copy went is uploaded
and checked as any other.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

__all__ = ["keep", "kept", "KEEP_BYTES"]

#: device bytes kept at most, over every GPU (a 2**28-value tensor's float32 scales at
#: B = 64 are 16 MiB)
KEEP_BYTES = 256 << 20

#: id(host) -> (weak reference to host, its data pointer and size, the device array, its GPU),
#: least recently used first
_KEPT: dict[int, tuple] = {}
_held = [0]   # their device bytes


def _drop(key: int) -> None:
    entry = _KEPT.pop(key, None)
    if entry is not None:
        _held[0] -= int(entry[3].nbytes)


def keep(host: np.ndarray, dev: Any, device_id: int) -> None:
    """Make ``host`` (a fresh host copy of the device array ``dev`` on GPU ``device_id``)
    read-only and keep ``dev`` for it; an array that does not own its memory is left as is."""
    if not isinstance(host, np.ndarray) or host.base is not None or not host.flags.owndata:
        return
    host.setflags(write=False)
    key = id(host)

    def forget(ref, key=key):   # the host copy is gone: so is the device array, to CuPy's pool
        if _KEPT.get(key, (None,))[0] is ref:
            _drop(key)

    _drop(key)
    _KEPT[key] = (weakref.ref(host, forget), host.ctypes.data, host.size, dev, device_id)
    _held[0] += int(dev.nbytes)
    while _held[0] > KEEP_BYTES and len(_KEPT) > 1:
        _drop(next(iter(_KEPT)))


def kept(host: Any, device_id: int) -> Any | None:
    """The device array kept for ``host`` on GPU ``device_id``, or None (never kept, kept on
    another GPU, let go for room, or ``host`` made writable or resized since: then it is
    forgotten)."""
    key = id(host)
    hit = _KEPT.get(key)
    if hit is None or hit[0]() is not host:
        return None
    if host.flags.writeable or host.ctypes.data != hit[1] or host.size != hit[2]:
        _drop(key)
        return None
    if hit[4] != device_id:
        return None
    _KEPT[key] = _KEPT.pop(key)   # the most recently used now
    return hit[3]
