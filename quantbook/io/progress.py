"""Progress bars on standard error: the one progress implementation, on ``tqdm``.

``tqdm`` is optional: without it every bar is silently off.  A bar is drawn when standard
error is a terminal, or when the caller forces it (``--progress``) — then it is drawn to
whatever standard error is (a log file gets the bar's final state on its own line).  On a
terminal the bar is erased when it closes, so only the command's own output remains.  A bar
whose standard error can no longer be written (a reader that closed the pipe, a full disk)
stops drawing; the work it reports on goes on.

Typical use (a callback per item, e.g. :func:`quantbook.verify.audit`'s ``progress``)::

    with progress_bar(total=len(items), desc="auditing", force=args.progress) as bar:
        for item in items:
            bar.step(item.name)   # item.name is being worked on
            ...
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["progress_enabled", "progress_bar", "Progress"]


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_enabled(force: bool = False) -> bool:
    """Whether a bar would be drawn: ``tqdm`` is importable and ``force`` or stderr is a terminal."""
    return (bool(force) or _isatty(sys.stderr)) and _tqdm() is not None


class _Stderr:
    """The stream a bar draws on: once a write to it fails, the bar draws no more.  A bar is
    only a view of the work, and stopping the work there (``derive ... --progress 2>&1 | head``)
    would lose an output file the command was about to write."""

    def __init__(self, stream: Any) -> None:
        self._stream, self.broken = stream, False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self._stream.write(text)
            except OSError:
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except OSError:
                self.broken = True

    def __getattr__(self, name: str) -> Any:   # isatty, encoding, ... as the stream has them
        return getattr(self._stream, name)


class Progress:
    """A progress bar over items, or a no-op one; a context manager (closing it ends the bar).

    :meth:`step` announces the next item (the previous one counts as done), so the count
    shows finished items and the label the one in progress.
    """

    def __init__(self, total: int | None = None, desc: str | None = None, unit: str = "it",
                 force: bool = False) -> None:
        self._bar = None
        self._pending = False  # an item announced by step() and not yet counted
        if progress_enabled(force):
            tty = _isatty(sys.stderr)
            # looked up now, not at import: the CLI's tests replace sys.stderr
            self._bar = _tqdm()(total=total, desc=desc, unit=unit, file=_Stderr(sys.stderr), leave=not tty,
                                dynamic_ncols=tty, mininterval=0.1)

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    def step(self, label: str | None = None) -> None:
        """Count the previous item as done and show ``label`` as the one now in progress."""
        if self._bar is None:
            return
        if self._pending:
            self._bar.update(1)
        self._pending = True
        if label is not None:
            self._bar.set_postfix_str(str(label), refresh=False)
        self._bar.refresh()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items as done (for callers that do not use :meth:`step`)."""
        if self._bar is not None:
            self._bar.update(n)

    def close(self, finished: bool = True) -> None:
        """End the bar, counting the item in progress as done if ``finished`` (idempotent)."""
        if self._bar is None:
            return
        if self._pending and finished:
            self._bar.update(1)
            self._pending = False
        self._bar.close()
        self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(finished=exc_type is None)


def progress_bar(total: int | None = None, desc: str | None = None, unit: str = "it",
                 force: bool = False) -> Progress:
    """A :class:`Progress` over ``total`` items (``None``: unknown), drawn as the module doc says."""
    return Progress(total=total, desc=desc, unit=unit, force=force)
