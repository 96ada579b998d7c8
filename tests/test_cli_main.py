"""The command line's frame: entry points, one module per command group, the error contract."""

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import quantbook.cli
from quantbook.codebooks import REGISTRY
from quantbook.cli import build_parser, main

from checkout import pyproject

CLI_DIR = Path(quantbook.cli.__file__).parent
ROOT = CLI_DIR.parent.parent   # where the quantbook under test is imported from, for the subprocesses
CONSOLE_SCRIPT = "quantbook.console:main"


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_console_script_and_module_entry_points():
    try:
        importlib.metadata.distribution("quantbook")
    except importlib.metadata.PackageNotFoundError:   # e.g. a checkout on PYTHONPATH, as on a lent GPU
        pytest.skip("quantbook is on the path but not installed (pip install -e .): no entry points to check")
    scripts = importlib.metadata.entry_points(group="console_scripts")
    assert [e.value for e in scripts if e.name == "quantbook"] == [CONSOLE_SCRIPT], "reinstall: pip install -e ."
    r = subprocess.run([sys.executable, "-m", "quantbook.cli", "list"], capture_output=True, text=True,
                       env=_env(), timeout=120)
    assert r.returncode == 0 and "nf4" in r.stdout and r.stderr == ""


@pytest.mark.parametrize("module", ["quantbook", "quantbook.cli"])
def test_python_m_runs_the_command_line(module):
    """``python -m quantbook`` and ``python -m quantbook.cli`` are the ``quantbook`` command:
    its output, its one-line errors and exit statuses."""
    ok = subprocess.run([sys.executable, "-m", module, "show", "nf4", "--json"], capture_output=True, text=True,
                        env=_env(), timeout=120)
    assert ok.returncode == 0 and ok.stderr == ""
    assert json.loads(ok.stdout)["levels"] == [float(v) for v in REGISTRY["nf4"].codebook.levels]
    bad = subprocess.run([sys.executable, "-m", module, "show", "no-such-table"], capture_output=True, text=True,
                         env=_env(), timeout=120)
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.startswith("quantbook: error:") \
        and bad.stderr.count("\n") == 1


def test_pyproject_declares_the_console_script():
    assert pyproject()["project"]["scripts"] == {"quantbook": CONSOLE_SCRIPT}


def test_every_command_is_registered_by_its_group_module():
    groups = {"codebooks": {"list", "show", "export"}, "derive": {"derive", "evaluate"}, "audit": {"audit"},
              "model": {"evaluate-model"}, "plots": {"plot", "plot-sweep"}}
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) == set().union(*groups.values())
    for module, commands in groups.items():
        mod = __import__(f"quantbook.cli.{module}", fromlist=["register"])
        for command in commands:  # each command runs a function of its own group's module
            func = sub.choices[command].get_default("func")
            if func is None:  # `derive` has sub-commands of its own
                inner = next(a for a in sub.choices[command]._actions
                             if a.__class__.__name__ == "_SubParsersAction")
                funcs = [p.get_default("func") for p in inner.choices.values()]
            else:
                funcs = [func]
            assert all(f.__module__ == mod.__name__ for f in funcs), command


def test_command_modules_share_only_public_helpers():
    # a command module may use common.py's public names, never another module's private ones
    for path in CLI_DIR.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from .{node.module}"


def test_usage_errors_name_the_sub_command(capsys):
    assert main(["derive", "nf", "--bits", "x"]) == 2
    err = capsys.readouterr().err
    assert err == ("quantbook derive nf: error: argument --bits: expected an integer, got 'x' "
                   "(see quantbook derive nf --help)\n")
    assert main(["evaluate", "nf4", "--bogus", "1"]) == 2   # the top parser's refusal named no command
    assert capsys.readouterr().err == ("quantbook evaluate: error: unrecognized arguments: --bogus 1 "
                                       "(see quantbook evaluate --help)\n")
    assert main(["derive", "lloyd", "--bogus"]) == 2
    assert capsys.readouterr().err.startswith("quantbook derive lloyd: error: unrecognized arguments: --bogus (see")


def test_an_internal_error_is_one_line_and_exit_1(capsys, monkeypatch):
    from quantbook.cli import codebooks

    def boom(args):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(codebooks, "_cmd_list", boom)
    assert main(["list"]) == 1
    assert capsys.readouterr().err == "quantbook: internal error: RuntimeError: something broke\n"


def test_a_bare_key_error_is_a_bug_and_a_missing_name_a_user_error(capsys, monkeypatch):
    """A lookup that fails inside the library (a bare KeyError) is an internal error, not the
    user's; a name the user gave that is not there is the user's (NotFoundError)."""
    from quantbook.cli import codebooks

    def lookup(args):
        return {}[(1, -1.0)]

    monkeypatch.setattr(codebooks, "_cmd_list", lookup)
    assert main(["list"]) == 1
    assert capsys.readouterr().err.startswith("quantbook: internal error: KeyError")
    import quantbook
    from quantbook.errors import NotFoundError

    with pytest.raises(NotFoundError, match="no published codebook 'no-such-table'") as info:
        quantbook.get("no-such-table")
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)

    def missing(args):
        quantbook.get("no-such-table")

    monkeypatch.setattr(codebooks, "_cmd_list", missing)
    assert main(["list"]) == 2
    assert capsys.readouterr().err == (f"quantbook: error: no published codebook 'no-such-table'; known: "
                                       f"{', '.join(quantbook.REGISTRY)}\n")


def test_interrupt_exits_130(capsys, monkeypatch):
    from quantbook.cli import codebooks

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(codebooks, "_cmd_list", interrupted)
    assert main(["list"]) == 130
    assert capsys.readouterr().err == "quantbook: interrupted\n"


# Ctrl-C while the command line imports numpy: Python's own SIGINT handler raises KeyboardInterrupt there
_CTRL_C_IN_IMPORT = """
import signal, sys

# a Ctrl-C reaches Python as KeyboardInterrupt even where this process was started with SIGINT ignored
# (a background job of a shell without job control)
signal.signal(signal.SIGINT, signal.default_int_handler)

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy":
            signal.raise_signal(signal.SIGINT)
        return None

sys.meta_path.insert(0, CtrlC())
"""


def test_interrupt_while_the_console_script_imports_the_command_line_exits_130():
    # the script pip writes for pyproject.toml's entry point imports it, then calls it: an entry point that
    # imports the command line (numpy, ...) as it is imported left a traceback, not the line and status 130
    module, function = pyproject()["project"]["scripts"]["quantbook"].split(":")
    script = f"{_CTRL_C_IN_IMPORT}\nfrom {module} import {function}\nsys.exit({function}())\n"
    r = subprocess.run([sys.executable, "-c", script, "list"], capture_output=True, text=True, env=_env(),
                       timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (130, "", "quantbook: interrupted\n")


def test_interrupt_while_python_m_loads_the_commands_exits_130():
    # `python -m quantbook.cli` imports the package before its __main__ can catch anything: a package that
    # imported numpy as it was imported left Python's traceback, not the line and status 130
    run = "runpy.run_module('quantbook.cli', run_name='__main__', alter_sys=True)"
    script = f"{_CTRL_C_IN_IMPORT}\nimport runpy\n{run}\n"
    r = subprocess.run([sys.executable, "-c", script, "list"], capture_output=True, text=True, env=_env(),
                       timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (130, "", "quantbook: interrupted\n")


def test_warnings_follow_a_success_and_vanish_behind_an_error(capsys, monkeypatch):
    from quantbook.cli import codebooks

    def warns(args):
        print("result")
        warnings.warn("first\nline", UserWarning)
        warnings.warn("first\nline", UserWarning)  # the same warning twice is printed once
        warnings.warn("second", RuntimeWarning)
        return 0

    monkeypatch.setattr(codebooks, "_cmd_list", warns)
    assert main(["list"]) == 0
    out = capsys.readouterr()
    assert out.out == "result\n"
    assert out.err == "quantbook: warning: first line\nquantbook: warning: second\n"

    def warns_then_fails(args):
        warnings.warn("noise", RuntimeWarning)
        raise ValueError("the real problem")

    monkeypatch.setattr(codebooks, "_cmd_list", warns_then_fails)
    assert main(["list"]) == 2
    assert capsys.readouterr().err == "quantbook: error: the real problem\n"
    with warnings.catch_warnings():  # main restored the warning machinery
        warnings.simplefilter("error")
        with pytest.raises(UserWarning):
            warnings.warn("after", UserWarning)


def test_os_errors_are_user_errors(capsys, monkeypatch):
    from quantbook.cli import codebooks

    def denied(args):
        raise PermissionError(13, "Permission denied", "/some/file")

    monkeypatch.setattr(codebooks, "_cmd_list", denied)
    assert main(["list"]) == 2
    assert capsys.readouterr().err == "quantbook: error: /some/file: Permission denied\n"


def test_a_closed_pipe_is_not_an_error():
    # the reader goes away before quantbook writes: no error, no message
    with subprocess.Popen([sys.executable, "-m", "quantbook.cli", "export", "nf8", "-f", "c"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()) as p:
        p.stdout.close()
        err = p.stderr.read()
        assert p.wait(timeout=120) == 0 and err == b""


@pytest.mark.parametrize("unbuffered", [False, True])
@pytest.mark.parametrize("argv", [["show", "nf4"], ["list", "--json"], ["--help"], ["--version"]])
def test_a_closed_pipe_after_a_short_output_is_not_an_error(argv, unbuffered):
    # buffered, output shorter than stdout's buffer reaches the pipe only at the final flush; Python's
    # own flush at exit would print "Exception ignored ... BrokenPipeError" and exit 120.  Unbuffered
    # (python -u, PYTHONUNBUFFERED=1) the write itself meets the closed pipe
    env = {k: v for k, v in _env().items() if k != "PYTHONUNBUFFERED"}   # stdout buffered, as for a user
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    r, w = os.pipe()
    os.close(r)   # the reader is gone before quantbook writes
    try:
        p = subprocess.run([sys.executable, "-m", "quantbook.cli", *argv], stdout=w, stderr=subprocess.PIPE,
                           env=env, timeout=120)
    finally:
        os.close(w)
    assert (p.returncode, p.stderr) == (0, b"")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
@pytest.mark.parametrize("argv", [["show", "nf4"], ["--version"]])
def test_a_full_disk_behind_standard_output_is_an_error(argv):
    # the output waits in stdout's buffer until the end: the failed write is still one error line,
    # not Python's "Exception ignored ... OSError" (status 120), and never a silent success
    env = {k: v for k, v in _env().items() if k != "PYTHONUNBUFFERED"}
    with open("/dev/full", "w", encoding="utf-8") as full:
        p = subprocess.run([sys.executable, "-m", "quantbook.cli", *argv], stdout=full, stderr=subprocess.PIPE,
                           env=env, timeout=120, text=True)
    assert (p.returncode, p.stderr) == (2, "quantbook: error: standard output: No space left on device\n")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
@pytest.mark.parametrize("argv", [["show", "nf4"], ["--version"], ["--help"], ["show", "--help"]])
def test_a_full_disk_behind_unbuffered_standard_output_is_an_error(argv):
    # unbuffered (python -u, PYTHONUNBUFFERED=1) the write itself fails; argparse dropped that failure
    # for --help and --version, which then succeeded in silence with status 0
    env = dict(_env(), PYTHONUNBUFFERED="1")
    with open("/dev/full", "w", encoding="utf-8") as full:
        p = subprocess.run([sys.executable, "-m", "quantbook.cli", *argv], stdout=full, stderr=subprocess.PIPE,
                           env=env, timeout=120, text=True)
    assert p.returncode == 2 and p.stderr.startswith("quantbook: error: ") and p.stderr.count("\n") == 1
    assert "No space left on device" in p.stderr


def test_a_failed_flush_after_an_error_leaves_that_error_the_one_line(capsys, monkeypatch):
    # the command's own error is the line to read, and its status the one to keep; the output that
    # could not be flushed after it (a full disk) adds nothing
    import errno
    import io

    class Full(io.StringIO):
        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sys, "stdout", Full())
    assert main(["show", "no-such-codebook"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("quantbook: error: ") and "no-such-codebook" in err and err.count("\n") == 1


def test_version(capsys):
    import quantbook

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"quantbook {quantbook.__version__}\n"


def test_library_parameter_names_are_spelled_as_the_command_s_options(capsys, monkeypatch):
    """The library names ``tensor_size=8``; the user typed ``--tensor-size 8`` (or ``-B``)."""
    assert main(["evaluate", "nf4", "--scale", "e4m3", "-B", "16", "--tensor-size", "8"]) == 2
    assert capsys.readouterr().err == "quantbook: error: --tensor-size 8 holds less than one block of 16 values\n"
    assert main(["evaluate", "nf4", "--scale", "search:4over6", "-B", "16", "--samples", "64",
                 "--tensor-size", "48"]) == 2
    assert "--samples 64 must be a positive multiple of --tensor-size 48" in capsys.readouterr().err
    assert main(["export", "nf4", "-f", "c", "--scale", "e4m3", "-B", "24"]) == 2
    assert capsys.readouterr().err.startswith("quantbook: error: --block-size must be a power of two")
    assert main(["evaluate", "/no/such/block_size.json", "-B", "16"]) == 2   # a path keeps its name
    assert capsys.readouterr().err == "quantbook: error: no such codebook file: /no/such/block_size.json\n"

    def refuse(args):   # what a switch and options of this command look like in a library message
        raise ValueError("nested=True does not combine with scale='e4m3'; block_size=64; a.block_size=1; "
                         "max_block_size=2; rotate=; block_size is")

    parser = build_parser()
    parser._subparsers._group_actions[0].choices["evaluate-model"].set_defaults(func=refuse)
    monkeypatch.setattr(quantbook.cli, "build_parser", lambda: parser)
    assert main(["evaluate-model", "m.safetensors"]) == 2
    assert capsys.readouterr().err == ("quantbook: error: --nested does not combine with --scale 'e4m3'; "
                                       "--block-size 64; a.block_size=1; max_block_size=2; rotate=; "
                                       "--block-size is\n")


@pytest.mark.skipif(not os.path.exists("/dev/stdout"), reason="no /dev/stdout")
def test_output_to_dev_stdout_on_a_closed_pipe_is_not_an_error():
    with subprocess.Popen([sys.executable, "-m", "quantbook.cli", "export", "nf4", "-f", "c", "-o", "/dev/stdout"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()) as p:
        p.stdout.close()
        err = p.stderr.read()
        assert p.wait(timeout=120) == 0 and err == b""
