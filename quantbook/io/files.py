"""Writing user output files: the one place that does it.

Rules (stated once, used by ``export``, the plots and every ``-o PATH``):

* the path must name a file: empty, ending in a path separator, or naming an existing
  directory is an :class:`OutputPathError` (:func:`check_output_dir` is for the rare API
  that wants a directory);
* its directory must exist and be writable; an existing file must be writable, and not
  one of the inputs the caller names (writing it would replace what the output is made from);
* operating-system errors (a name too long, no permission, disk full, file size limit)
  become one-line :class:`OutputPathError` messages;
* writes are atomic: the data goes to a temporary file in the same directory, which then
  replaces the target with :func:`os.replace`.  A write that fails half-way leaves an
  existing file untouched and no temporary file behind.  An existing file keeps its
  permission bits; a symbolic link keeps pointing at its (replaced) target.  Special
  files (a FIFO, a device) cannot be replaced and are written in place; ``/dev/stdout``
  (``/dev/fd/N``) is written through that open descriptor, even when it is a file: after
  ``>> log`` it appends to ``log``, which it neither replaces nor truncates; what the process
  printed there before comes first.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import stat
import sys
from pathlib import Path
from typing import IO, Iterable, Iterator

from ..numerics.arguments import check_int

__all__ = ["OutputPathError", "check_output_path", "check_output_dir", "write_output", "atomic_output",
           "check_input_path", "check_input_file", "read_small_file", "parse_json", "dump_json", "short_name",
           "name_text"]


class OutputPathError(ValueError):
    """An output path that cannot be written, with a one-line reason."""


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENAMETOOLONG:
        return "file name too long"
    if exc.errno == errno.EFBIG:
        return "file too large (file size limit reached)"
    return exc.strerror or str(exc)


def short_name(path: object) -> str:
    """``path`` (an OSError's filename: a str, bytes, a path or a descriptor) as text for a
    one-line message, its middle left out past 120 characters: a name long enough to be the
    problem (too long to open) would flood the line."""
    text = os.fspath(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    text = os.fsdecode(text) if isinstance(text, bytes) else text
    return text if len(text) <= 120 else text[:60] + "..." + text[-40:]


def name_text(name: object) -> str:
    """A name the system gave (a file's, or text made from one) as Unicode text to write into a
    UTF-8 file or draw: its bytes read as UTF-8, those that are not UTF-8 as U+FFFD.  Python
    holds such a byte as a lone surrogate (in a C or POSIX locale every non-ASCII byte of a
    name), which a UTF-8 writer refuses."""
    text = os.fsdecode(name) if isinstance(name, (bytes, os.PathLike)) else str(name)
    text = re.sub("[\ud800-\udc7f\udd00-\udfff]", "\ufffd", text)   # not a byte surrogateescape holds
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _describe(path: str | os.PathLike) -> str:
    return repr(short_name(path))


def _stat(p: Path, shown: str) -> os.stat_result | None:
    """``os.stat(p)``, ``None`` when nothing is there; other OS errors become one line."""
    try:
        return os.stat(p)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputPathError(f"cannot write {shown}: {_os_reason(exc)}") from None


def check_output_path(path: str | os.PathLike, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """``path`` as a :class:`Path` if a file can be written there, else :class:`OutputPathError`.

    ``inputs``: the files the output is made from; ``path`` naming one of them (by any name:
    a link, another spelling) is refused, since writing it would replace the input.  Entries
    that name no file are passed over.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise OutputPathError(f"output path must be a string or a path, got {type(path).__name__}")
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text == "":
        raise OutputPathError("output path is empty")
    shown = _describe(text)
    if "\0" in text:
        raise OutputPathError(f"output path {shown} contains a NUL character")
    if text.endswith(os.sep) or (os.altsep and text.endswith(os.altsep)):
        raise OutputPathError(f"output path {shown} ends with {text[-1]!r}: it names a directory, not a file")
    if os.path.basename(text) in (".", ".."):  # pathlib would drop a trailing "/." and write a file
        raise OutputPathError(f"output path {shown} names a directory, not a file")
    p = Path(text)
    st = _stat(p, shown)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise OutputPathError(f"output path {shown} is a directory, not a file")
    parent = p.parent
    pst = _stat(parent, shown)
    if pst is None or not stat.S_ISDIR(pst.st_mode):
        raise OutputPathError(f"cannot write {shown}: directory {str(parent)!r} does not exist")
    if st is not None and stat.S_ISREG(st.st_mode):
        for source in inputs:
            if _same_file(st, source):
                raise OutputPathError(f"output path {shown} is the input {_describe(source)}: writing it would "
                                      "replace what it is made from")
    if st is not None and not os.access(p, os.W_OK):
        raise OutputPathError(f"cannot write {shown}: the file is not writable")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {shown}: directory {str(parent)!r} is not writable")
    return p


def _same_file(st: os.stat_result, path: str | os.PathLike) -> bool:
    try:
        other = os.stat(path)
    except (OSError, TypeError, ValueError):   # not a file (a source's name, a spelling with a suffix)
        return False
    return (st.st_dev, st.st_ino) == (other.st_dev, other.st_ino)


def check_output_dir(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path` if it is an existing writable directory, else :class:`OutputPathError`."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not text:
        raise OutputPathError("output directory is empty")
    shown = _describe(text)
    p = Path(text)
    st = _stat(p, shown)
    if st is None:
        raise OutputPathError(f"output directory {shown} does not exist")
    if not stat.S_ISDIR(st.st_mode):
        raise OutputPathError(f"output directory {shown} is not a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputPathError(f"output directory {shown} is not writable")
    return p


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, binary: bool = True, encoding: str = "utf-8") -> Iterator[IO]:
    """A file object whose contents replace ``path`` when the ``with`` block ends without error.

    See the module docstring for the rules.  On an error (or an exception in the block) the
    temporary file is removed and ``path`` is left as it was; OS errors are re-raised as
    :class:`OutputPathError`.
    """
    p = check_output_path(path)
    shown = _describe(path)
    mode, coding = ("wb", None) if binary else ("w", encoding)   # a text file's encoding is named, never the locale's
    stream = _descriptor(p)
    if stream is not None:
        # the stream itself, where it stands (appending if it appends); its file, if it has one, must
        # not be replaced (the stream would go on into the old one) nor reopened (that truncates it)
        _flush_own_streams(stream)
        try:
            with os.fdopen(os.dup(stream), mode, encoding=coding) as f:
                yield f
        except BrokenPipeError:   # the reader has gone, as after `| head`: the caller's to take quietly
            raise
        except OSError as exc:
            raise OutputPathError(f"cannot write {shown}: {_os_reason(exc)}") from None
        return
    target = Path(os.path.realpath(p))  # write through a symbolic link, keep the link
    st = _stat(target, shown)
    if st is not None and not stat.S_ISREG(st.st_mode):
        # a FIFO, a device (/dev/null, a terminal): nothing to replace, write in place
        try:
            with open(target, mode, encoding=coding) as f:
                yield f
        except OSError as exc:
            raise OutputPathError(f"cannot write {shown}: {_os_reason(exc)}") from None
        return
    tmp = target.with_name(f".{_prefix(target.name, 200)}.{secrets.token_hex(4)}.tmp")
    try:
        # a new file gets 0o666 less the umask, as open() would give it; an existing one its own mode
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if st is None else 0o600)
    except OSError as exc:
        raise OutputPathError(f"cannot write {shown}: {_os_reason(exc)}") from None
    done = False
    try:
        try:
            with os.fdopen(fd, mode, encoding=coding) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            if st is not None:
                os.chmod(tmp, stat.S_IMODE(st.st_mode))
            os.replace(tmp, target)
            done = True
        except OSError as exc:
            raise OutputPathError(f"cannot write {shown}: {_os_reason(exc)}") from None
    finally:
        if not done:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _descriptor(path: Path) -> int | None:
    """``N`` when ``path``, or a symbolic link on the way to it, is ``/proc/self/fd/N`` or
    ``/dev/fd/N`` (``/dev/stdout`` is such a link): an open file descriptor of this process."""
    fd_dirs = {os.path.realpath("/proc/self/fd"), os.path.realpath("/dev/fd")}
    current = os.path.abspath(path)
    for _ in range(40):   # the kernel's own limit on the links it follows
        parent, name = os.path.split(current)
        if name.isascii() and name.isdigit() and os.path.realpath(parent) in fd_dirs:
            return int(name)
        if not os.path.islink(current):
            return None
        current = os.path.join(parent, os.readlink(current))   # a relative link is relative to its directory
    return None


def _flush_own_streams(fd: int) -> None:
    """Send on what this process printed to descriptor ``fd`` and ``sys.stdout`` or ``sys.stderr``
    still holds, so that data written to the descriptor directly follows it, in the order written."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None and stream.fileno() == fd:
                stream.flush()
        except (AttributeError, OSError, ValueError):   # captured, closed or failing: the write itself reports that
            pass


def _prefix(name: str, limit: int) -> str:
    """The longest start of ``name`` whose file-system encoding has at most ``limit`` bytes: a
    name's limit (255) is in bytes, and a non-ASCII character takes several."""
    name = name[:limit]   # every character takes at least one byte
    while len(os.fsencode(name)) > limit:
        name = name[:-1]
    return name


def write_output(data: str | bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` (``str`` as UTF-8) to ``path`` atomically; returns the path.

    Raises :class:`OutputPathError` (a ``ValueError``) with a one-line reason.
    """
    if not isinstance(data, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"data must be str or bytes, got {type(data).__name__}")
    binary = not isinstance(data, str)
    with atomic_output(path, binary=binary) as f:
        f.write(data)
    return Path(os.fspath(path))


def check_input_path(path: object, what: str = "file") -> Path:
    """``path`` (a reader's argument of that name) as a :class:`Path`: a str or an os.PathLike
    that gives one, else a one-line TypeError saying so (pathlib's own, or os.stat's for an int,
    a file descriptor, names neither the argument nor the file it should name)."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(text, str):
        raise TypeError(f"path must be a str or os.PathLike naming a {what}, got {type(path).__name__}")
    return Path(text)


def check_input_file(path: str | os.PathLike, error: type[Exception], what: str = "file") -> Path:
    """``path`` as a :class:`Path` if it names a regular file (:func:`check_input_path`).
    ``FileNotFoundError`` when nothing is there; ``error`` (one line) for a directory, a FIFO, a
    device or a socket: the readers size their input before reading it, or read it twice (a FIFO
    is empty the second time, and one without a writer blocks forever)."""
    check_input_path(path, what)
    name, shown = os.fspath(path), short_name(path)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such {what}: {shown}") from None
    except OSError as exc:   # a parent that is a file, a name too long, a directory not searchable
        raise error(f"cannot read {shown}: {_os_reason(exc)}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "a device")
        raise error(f"{shown} is {kind}, not a {what}")
    return Path(name)


def read_small_file(path: str | os.PathLike, error: type[Exception], max_bytes: int,
                    what: str = "codebook file") -> bytes:
    """The bytes of a small input file.  ``FileNotFoundError`` when it is missing; ``error``
    (one line) for anything but a regular file (:func:`check_input_file`), an unreadable file
    or one over ``max_bytes`` (read up to the limit: it may grow while it is read)."""
    name, shown = os.fspath(path), short_name(path)
    check_input_file(name, error, what)
    try:
        with open(name, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:   # no permission to read, an I/O error
        raise error(f"cannot read {shown}: {_os_reason(exc)}") from None
    if len(data) > max_bytes:
        raise error(f"{shown} is larger than {max_bytes // 2**20} MiB: not a {what}")
    return data


def dump_json(obj: object, indent: int | None) -> str:
    """``json.dumps(obj, indent=indent)`` for an ``indent`` that is None or a non-negative integer:
    json takes a str as the indent itself (``"abc"`` writes text that is not JSON) and fails inside
    on a float."""
    return json.dumps(obj, indent=None if indent is None else check_int(indent, "indent", 0, also=" or None"))


def parse_json(text: str | bytes, error: type[Exception], what: str = "codebook") -> object:
    """``json.loads(text)``; ``error`` (one line) for anything that is not JSON text, the
    tokens ``NaN`` and ``Infinity`` included (Python writes them, JSON has none: a file that
    holds one would be written back as invalid JSON)."""
    if not isinstance(text, (str, bytes, bytearray)):
        raise error(f"JSON text must be str or bytes, got {type(text).__name__}")

    def refuse(token: str):
        raise error(f"not valid JSON: {token} is not a JSON number")

    def finite(token: str) -> float:
        v = float(token)
        if not math.isfinite(v):   # 1e999: read as inf, and written back as Infinity
            raise error(f"{token[:40]} is too large for a finite float")
        return v

    def unique(pairs: list) -> dict:
        seen: set = set()
        for key, _ in pairs:   # json keeps the last: a file that says two things says neither
            if key in seen:
                raise error(f"not a {what}: the key {key!r} appears twice in one object")
            seen.add(key)
        return dict(pairs)

    try:
        value = json.loads(text, parse_constant=refuse, parse_float=finite, object_pairs_hook=unique)
    except error:
        raise
    except json.JSONDecodeError as exc:
        raise error(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise error(f"not a {what}: the JSON is nested too deeply") from None
    except UnicodeDecodeError as exc:
        raise error(f"not valid JSON: not UTF-8 text ({exc.reason})") from None
    except ValueError:  # what json raises besides JSONDecodeError: Python's int digit limit
        raise error("not valid JSON: a number has too many digits") from None
    if _depth(value) > MAX_JSON_DEPTH:   # the readers of a recipe recurse into it
        raise error(f"not a {what}: the JSON is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    return value


#: deepest nesting a JSON input may have: recipes nest a few levels (a rounded table's base
#: recipe); far below the depth at which Python's recursion in the code that reads them fails
MAX_JSON_DEPTH = 32


def _depth(value: object) -> int:
    """How deep lists and objects nest in ``value`` (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        items = v.values() if isinstance(v, dict) else v if isinstance(v, list) else None
        if items is not None:
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in items)
    return deepest
