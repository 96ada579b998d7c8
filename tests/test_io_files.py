"""quantbook.io.files: output path checks and atomic writes.

References are the operating system's own view: file contents read back byte for byte,
``os.stat`` modes, the directory listing (no temporary file left behind).  The permission
tests run as root too (here and in CI): the checked operation runs in a forked child that drops to
an unprivileged uid (:func:`_unprivileged`).
"""

from __future__ import annotations

import errno
import os
import pickle
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

from quantbook.io.files import (
    OutputPathError,
    atomic_output,
    check_output_dir,
    check_output_path,
    write_output,
)


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


# ---------------------------------------------------------------------- permissions, as root too
#: the uid and gid a root test process drops to (nobody's on most systems): root passes over file permissions
_NOBODY = 65534


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def own_dir(tmp_path):
    """A directory for a permission test: ``tmp_path``, or as root a fresh one in the system's temporary
    directory, which :func:`_unprivileged`'s uid can reach (pytest's directories are root's, mode 0700: that uid
    would be refused on the way in, whatever the permission under test)."""
    if not _is_root():
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="quantbook-permissions-"))
    try:
        yield d
    finally:
        shutil.rmtree(d)


def _unprivileged(fn, home: Path):
    """``fn()`` by a process that file permissions bind: this one, unless it is root; as root, a forked child
    that drops to :data:`_NOBODY`, which first gets ``home`` and all in it, and sends back what ``fn`` returns
    or raises.  Forked, not a new interpreter: the interpreter may lie where that uid cannot read (/root).
    A skip only where root cannot drop its privileges (no CAP_SETUID, CAP_SETGID or CAP_CHOWN) or that uid
    cannot reach ``home``."""
    if not _is_root():
        return fn()
    try:
        for p in (home, *home.rglob("*")):
            os.chown(p, _NOBODY, _NOBODY, follow_symlinks=False)
    except PermissionError as exc:
        pytest.skip(f"root cannot give uid {_NOBODY} its files here: {exc.strerror}")
    r, w = os.pipe()
    with warnings.catch_warnings():   # Python 3.12 warns of forking with threads: the child starts none
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:   # the child never returns into pytest
        data = b""
        try:
            os.close(r)
            try:
                os.setgroups([])
                os.setgid(_NOBODY)
                os.setuid(_NOBODY)
            except OSError as exc:
                out: tuple = ("skip", f"root cannot drop to uid {_NOBODY} here: {exc.strerror}")
            else:
                if not os.access(home, os.X_OK):
                    out = ("skip", f"uid {_NOBODY} cannot reach {home}")
                else:
                    try:
                        out = ("ok", fn())
                    except BaseException as exc:   # sent back to be raised in the test
                        out = ("raised", exc)
            data = pickle.dumps(out)
        except BaseException as exc:
            data = pickle.dumps(("raised", RuntimeError(f"the unprivileged child failed: {exc!r}")))
        finally:
            try:
                while data:
                    data = data[os.write(w, data):]
            finally:
                os._exit(0)
    os.close(w)
    chunks = []
    try:
        while select.select([r], [], [], 120)[0]:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the unprivileged child did not answer within 120 s")
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "skip":
        pytest.skip(value)
    if kind == "raised":
        raise value
    return value


@pytest.mark.parametrize("make, msg", [
    (lambda d: "", "empty"),
    (lambda d: str(d / "newdir") + os.sep, "names a directory"),
    (lambda d: str(d / "newdir") + os.sep + ".", "names a directory"),
    (lambda d: str(d), "is a directory"),
    (lambda d: str(d / "missing" / "x.h"), "does not exist"),
    (lambda d: str(d / ("n" * 300 + ".h")), "file name too long"),
    (lambda d: str(d / "a\0b"), "NUL"),
])
def test_bad_output_paths_are_one_line_errors(tmp_path, make, msg):
    with pytest.raises(OutputPathError) as info:
        check_output_path(make(tmp_path))
    assert msg in _one_line(info.value)
    with pytest.raises(OutputPathError):
        write_output(b"x", make(tmp_path))
    assert sorted(os.listdir(tmp_path)) == []  # nothing created, not even "newdir"


def test_write_replaces_contents_and_keeps_mode_and_links(tmp_path):
    target = tmp_path / "t.h"
    target.write_text("old", encoding="utf-8")
    os.chmod(target, 0o640)
    link = tmp_path / "link.h"
    link.symlink_to(target)
    write_output("new text", link)
    assert link.is_symlink() and os.readlink(link) == str(target)  # the link is kept
    assert target.read_text(encoding="utf-8") == "new text"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["link.h", "t.h"]


def test_new_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_output(b"\x00\x01", tmp_path / "a.bin")
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(os.stat(tmp_path / "a.bin").st_mode) == 0o666 & ~0o027


@pytest.mark.parametrize("stop", [RuntimeError, KeyboardInterrupt])   # an error, or Ctrl-C half-way
def test_a_failure_inside_the_block_leaves_the_old_file(tmp_path, stop):
    target = tmp_path / "keep.txt"
    target.write_bytes(b"precious")
    with pytest.raises(stop):
        with atomic_output(target) as f:
            f.write(b"half")
            raise stop("stop")
    assert target.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_read_only_file_is_refused(own_dir):
    """In a directory it may write in, where the new file could replace it: the file's own mode refuses."""
    target = own_dir / "ro.txt"
    target.write_text("x", encoding="utf-8")
    os.chmod(target, 0o444)
    with pytest.raises(OutputPathError, match="not writable"):
        _unprivileged(lambda: write_output("y", target), own_dir)
    assert target.read_text(encoding="utf-8") == "x"


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_special_files_are_written_in_place():
    write_output(b"discarded", "/dev/null")  # replacing the device node would be a disaster
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_check_output_dir(tmp_path):
    assert check_output_dir(tmp_path) == tmp_path
    (tmp_path / "f").write_text("", encoding="utf-8")
    for bad, msg in ((tmp_path / "nope", "does not exist"), (tmp_path / "f", "not a directory")):
        with pytest.raises(OutputPathError, match=msg):
            check_output_dir(bad)


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")
def test_file_size_limit_leaves_the_existing_header_intact(tmp_path):
    """`(ulimit -f 1; quantbook export nf4 -f c -o precious.h)`: the write fails (EFBIG; Python
    ignores SIGXFSZ), the existing file keeps its contents and the error is one line."""
    target = tmp_path / "precious.h"
    target.write_bytes(b"/* precious */\n")
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024)); "
            "from quantbook.cli import main; sys.exit(main(['export', 'nf4', '-f', 'c', '-o', sys.argv[1]]))")
    r = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.startswith("quantbook: error: cannot write") and r.stderr.count("\n") == 1, r.stderr
    assert "too large" in r.stderr
    assert target.read_bytes() == b"/* precious */\n"
    assert os.listdir(tmp_path) == ["precious.h"]  # the temporary file is gone too


def test_a_long_non_ascii_name_that_fits_is_written(tmp_path):
    # 80 three-byte characters: 245 bytes, under the 255-byte limit on a name; the temporary
    # file's name is cut in bytes, not in characters, so it fits too
    name = "\u91cf" * 80 + ".json"
    try:
        (tmp_path / name).write_bytes(b"old")   # the file system's own verdict on the name
    except OSError:
        pytest.skip("the file system refuses this name itself")
    write_output("new", tmp_path / name)
    assert (tmp_path / name).read_text(encoding="utf-8") == "new"
    assert os.listdir(tmp_path) == [name]


@pytest.mark.skipif(not os.path.exists("/dev/stdout"), reason="no /dev/stdout")
@pytest.mark.parametrize("mode", ["ab", "wb"])
def test_dev_stdout_into_a_file_writes_the_stream_itself(tmp_path, mode):
    """``-o /dev/stdout >> log``: the data is appended to ``log``; replacing ``log`` (or reopening
    it, which truncates) would lose what it held, and what is printed afterwards."""
    log = tmp_path / "log"
    log.write_bytes(b"kept\n")
    code = ("import sys; from quantbook.io.files import write_output; write_output(b'data\\n', '/dev/stdout'); "
            "print('after', flush=True)")
    with open(log, mode, encoding=None) as out:
        subprocess.run([sys.executable, "-c", code], stdout=out, check=True, timeout=120)
    assert log.read_bytes() == (b"kept\n" if mode == "ab" else b"") + b"data\nafter\n"
    assert os.listdir(tmp_path) == ["log"]


@pytest.mark.skipif(not os.path.exists("/dev/stdout"), reason="no /dev/stdout")
def test_dev_stdout_comes_after_what_was_printed_before_it(tmp_path):
    # print() holds its text in sys.stdout's buffer (a file or a pipe, not a terminal): data written to
    # the descriptor itself came first, before text printed earlier
    log = tmp_path / "log"
    code = ("from quantbook.io.files import write_output; print('before'); write_output(b'data\\n', '/dev/stdout'); "
            "print('after')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with open(log, "wb") as out:
        subprocess.run([sys.executable, "-c", code], stdout=out, check=True, timeout=120, env=env)
    assert log.read_bytes() == b"before\ndata\nafter\n"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="no /proc/self/fd")
def test_a_relative_link_to_a_descriptor_is_read_from_its_own_directory(tmp_path):
    # d/out -> fd/1 and d/fd -> /proc/self/fd: "fd/1" is d/fd/1, not ./fd/1 of the working directory
    # (read so, the link was taken for a file and the log it ends at replaced)
    (tmp_path / "d").mkdir()
    os.symlink("/proc/self/fd", tmp_path / "d" / "fd")
    os.symlink("fd/1", tmp_path / "d" / "out")
    log = tmp_path / "log"
    log.write_bytes(b"kept\n")
    code = "from quantbook.io.files import write_output; write_output(b'data\\n', 'd/out')"
    with open(log, "ab") as out:
        subprocess.run([sys.executable, "-c", code], stdout=out, check=True, timeout=120, cwd=tmp_path)
    assert log.read_bytes() == b"kept\ndata\n"
    assert sorted(os.listdir(tmp_path)) == ["d", "log"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_a_fifo_codebook_is_refused_not_waited_on(tmp_path):
    """A FIFO named like a codebook: read once to see whether it holds a vector codebook, it
    was empty (or, with no writer, blocked) when read again to load it; now refused at once."""
    fifo = tmp_path / "cb.json"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-m", "quantbook.cli", "show", str(fifo)], capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL)
    assert (r.returncode, r.stderr) == (2, f"quantbook: error: {fifo} is a FIFO, not a codebook file\n")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_a_fifo_or_directory_of_weights_is_named_for_what_it_is(tmp_path):
    from quantbook.derive.sources import SourceError, parse_source
    from quantbook.io.npy import NpyError, load_npy
    from quantbook.io.safetensors import SafetensorsError, SafetensorsFile

    for name in ("w.npy", "w.safetensors"):
        os.mkfifo(tmp_path / name)
    (tmp_path / "d.npy").mkdir()
    # these said "no such file" of a file that is there
    with pytest.raises(NpyError, match="w.npy is a FIFO, not a .npy file"):
        load_npy(tmp_path / "w.npy")
    with pytest.raises(NpyError, match="d.npy is a directory, not a .npy file"):
        load_npy(tmp_path / "d.npy")
    with pytest.raises(SafetensorsError, match="w.safetensors is a FIFO, not a safetensors file"):
        SafetensorsFile(tmp_path / "w.safetensors")
    with pytest.raises(SourceError, match="w.npy is a FIFO, not a sample file"):
        parse_source(str(tmp_path / "w.npy"))
    with pytest.raises(SourceError, match="no such sample file"):
        parse_source(str(tmp_path / "missing.npy"))


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets")
def test_a_socket_is_named_for_what_it_is(tmp_path, monkeypatch):
    from quantbook.io.npy import NpyError, load_npy

    monkeypatch.chdir(tmp_path)   # a socket's path is short (108 bytes): name it from its directory
    with socket.socket(socket.AF_UNIX) as s:
        s.bind("s.npy")
        with pytest.raises(NpyError, match="s.npy is a socket, not a .npy file"):
            load_npy("s.npy")


def test_an_output_that_is_one_of_the_inputs_is_refused(tmp_path):
    src = tmp_path / "in.json"
    src.write_text("kept", encoding="utf-8")
    os.link(src, tmp_path / "hard.json")
    for out in (src, tmp_path / "hard.json", str(tmp_path / "." / "in.json")):
        with pytest.raises(OutputPathError, match="is the input"):
            check_output_path(out, inputs=["normal", tmp_path / "missing.json", src])
    assert check_output_path(tmp_path / "new.json", inputs=[src]) == tmp_path / "new.json"
    assert src.read_text(encoding="utf-8") == "kept"


# ------------------------------------------------------------- the operating system's errors
def _cli_error(capsys, *args: str) -> str:
    """What ``quantbook ARGS`` says on stderr when it refuses them (status 2, one line)."""
    from quantbook.cli import main

    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.rstrip("\n")


def _shortened(text: str) -> str:
    return text[:60] + "..." + text[-40:]   # the start and end of a name over 120 characters, by hand


def test_an_input_the_system_cannot_stat_or_read_is_one_line(tmp_path, capsys):
    """A parent that is a file, a missing parent, a directory, a name too long and a file that
    fails to read, through the codebook reader (`show`): each named with the system's reason
    (os.strerror) and the name, a long one cut in the middle.  The long name was printed whole
    (300 characters in a one-line message), with another spelling of the reason than outputs."""
    (tmp_path / "f.json").write_text("{}", encoding="utf-8")
    (tmp_path / "d.json").mkdir()
    under_file, long = tmp_path / "f.json" / "x.json", str(tmp_path / ("n" * 300 + ".json"))
    assert _cli_error(capsys, "show", str(under_file)) == \
        f"quantbook: error: cannot read {under_file}: {os.strerror(errno.ENOTDIR)}"
    assert _cli_error(capsys, "show", str(tmp_path / "no" / "x.json")) == \
        f"quantbook: error: no such codebook file: {tmp_path / 'no' / 'x.json'}"
    assert _cli_error(capsys, "show", str(tmp_path / "d.json")) == \
        f"quantbook: error: {tmp_path / 'd.json'} is a directory, not a codebook file"
    assert _cli_error(capsys, "show", long) == f"quantbook: error: cannot read {_shortened(long)}: file name too long"


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux's /proc/self/mem")
def test_a_file_that_fails_to_read_is_one_line(tmp_path, capsys):
    """A regular file whose read fails (/proc/self/mem at offset 0: an I/O error, for root too)."""
    link = tmp_path / "mem.json"
    link.symlink_to("/proc/self/mem")
    assert _cli_error(capsys, "show", str(link)) == f"quantbook: error: cannot read {link}: {os.strerror(errno.EIO)}"


def test_a_file_without_read_permission_is_one_line(own_dir, capsys):
    path = own_dir / "cb.json"
    path.write_text("{}", encoding="utf-8")
    os.chmod(path, 0)
    assert _unprivileged(lambda: _cli_error(capsys, "show", str(path)), own_dir) == \
        f"quantbook: error: cannot read {path}: {os.strerror(errno.EACCES)}"


def test_a_file_in_a_directory_without_search_permission_is_one_line(own_dir, capsys):
    (own_dir / "d").mkdir()
    (own_dir / "d" / "cb.json").write_text("{}", encoding="utf-8")
    os.chmod(own_dir / "d", 0o600)
    try:
        assert _unprivileged(lambda: _cli_error(capsys, "show", str(own_dir / "d" / "cb.json")), own_dir) == \
            f"quantbook: error: cannot read {own_dir / 'd' / 'cb.json'}: {os.strerror(errno.EACCES)}"
    finally:
        os.chmod(own_dir / "d", 0o700)


def test_a_safetensors_name_too_long_is_the_readers_error(tmp_path):
    """It was a bare OSError out of Path.is_dir (which passes over only some errors)."""
    from quantbook.io.safetensors import SafetensorsError, SafetensorsFile

    long = str(tmp_path / ("w" * 300 + ".safetensors"))
    with pytest.raises(SafetensorsError) as info:
        SafetensorsFile(long)
    assert _one_line(info.value) == f"cannot read {_shortened(long)}: file name too long"


def test_an_output_the_system_cannot_write_is_one_line(tmp_path, capsys):
    """Under a file, under a missing directory, and (where it exists) /dev/full, whose writes
    fail for want of space: the output's rules (quoted name, the system's reason)."""
    (tmp_path / "f.json").write_text("{}", encoding="utf-8")
    out = tmp_path / "f.json" / "out.json"
    assert _cli_error(capsys, "export", "nf4", "-o", str(out)) == \
        f"quantbook: error: cannot write {str(out)!r}: {os.strerror(errno.ENOTDIR)}"
    out = tmp_path / "no" / "out.json"
    assert _cli_error(capsys, "export", "nf4", "-o", str(out)) == \
        f"quantbook: error: cannot write {str(out)!r}: directory {str(out.parent)!r} does not exist"
    if os.path.exists("/dev/full"):
        assert _cli_error(capsys, "export", "nf4", "-o", "/dev/full") == \
            f"quantbook: error: cannot write '/dev/full': {os.strerror(errno.ENOSPC)}"


def test_an_output_in_a_read_only_directory_is_one_line(own_dir, capsys):
    os.chmod(own_dir, 0o500)
    try:
        out = str(own_dir / "out.json")
        assert _unprivileged(lambda: _cli_error(capsys, "export", "nf4", "-o", out), own_dir) == \
            f"quantbook: error: cannot write {out!r}: directory {str(own_dir)!r} is not writable"
        assert not os.path.exists(out)
    finally:
        os.chmod(own_dir, 0o700)
