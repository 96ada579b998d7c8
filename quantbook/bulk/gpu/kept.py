"""Device arrays kept for the host copies made of them.

A :class:`~quantbook.bulk.state.QuantState` holds host arrays, so a state quantized on a GPU
brings its block scales to the host, and dequantizing it on the GPU would upload them and
check them again: an upload of a float32 a block and a reduction whose answer the host
waits for.  Instead the backend keeps the checked device array the copy was made from, for
as long as the host copy lives, and gives the state a read-only view of the host copy whose
memory numpy will not write: the view's base is a read-only buffer, so numpy refuses to make
it writable again or to resize it, and the values cannot change under the kept array.  An
array assigned in its place is not the kept one's, and is uploaded.

What is kept is bounded (:data:`KEEP_BYTES`, the least recently used go first), so states
held on the host do not hold GPU memory without limit; a state whose copy went is uploaded
and checked as any other.
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any

import numpy as np

__all__ = ["keep", "kept", "KEEP_BYTES"]

#: device bytes kept at most, over every GPU (a 2**28-value tensor's float32 scales at
#: B = 64 are 16 MiB); the newest is kept whatever its size
KEEP_BYTES = 256 << 20

#: id(the state's array) -> (weak reference to it, the device array, its GPU), least recently
#: used first
_KEPT: dict[int, tuple] = {}
_held = [0]   # their device bytes
_lock = threading.Lock()
#: (key, weak reference) of host copies that went while the lock was held (a collection
#: can run anywhere), dropped by the next call
_gone: list[tuple[int, Any]] = []


def _drop(key: int, ref: Any = None) -> None:
    """Forget ``key`` (only while it is ``ref``'s, when given); the lock is held."""
    entry = _KEPT.get(key)
    if entry is not None and (ref is None or entry[0] is ref):
        del _KEPT[key]
        _held[0] -= int(entry[1].nbytes)


def _forget(key: int, ref: Any) -> None:
    """A host copy went: so does its device array, to CuPy's pool."""
    if _lock.acquire(blocking=False):
        try:
            _drop(key, ref)
        finally:
            _lock.release()
    else:   # the lock is held, perhaps by the thread this collection interrupted
        _gone.append((key, ref))


def _tidy() -> None:
    while _gone:
        _drop(*_gone.pop())


def keep(host: np.ndarray, dev: Any, device_id: int) -> np.ndarray:
    """The array a state holds for ``host``, a fresh host copy of the device array ``dev`` on
    GPU ``device_id``: a read-only view of it that cannot be made writable, for which ``dev``
    is kept.  An array that does not own its memory is returned as it is, and nothing kept."""
    if not isinstance(host, np.ndarray) or host.base is not None or not host.flags.owndata:
        return host
    flat = np.frombuffer(host.reshape(-1).view(np.uint8).data.toreadonly(), np.uint8)
    frozen = flat.view(host.dtype).reshape(host.shape)
    key = id(frozen)
    ref = weakref.ref(frozen, functools.partial(_forget, key))
    with _lock:
        _tidy()
        _drop(key)
        _KEPT[key] = (ref, dev, device_id)
        _held[0] += int(dev.nbytes)
        while _held[0] > KEEP_BYTES and len(_KEPT) > 1:
            _drop(next(iter(_KEPT)))
    return frozen


def kept(host: Any, device_id: int) -> Any | None:
    """The device array kept for ``host`` (an array :func:`keep` returned) on GPU
    ``device_id``, or None (never kept, kept on another GPU, or let go for room)."""
    key = id(host)
    with _lock:
        _tidy()
        hit = _KEPT.get(key)
        if hit is None or hit[0]() is not host or hit[2] != device_id:
            return None
        _KEPT[key] = _KEPT.pop(key)   # the most recently used now
        return hit[1]
