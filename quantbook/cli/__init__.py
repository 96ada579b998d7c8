"""The ``quantbook`` command line.  Thin: parse, call the library, print.

One module per command group; each has ``register(subparsers)``, which adds its
sub-commands and binds each to its function:

* :mod:`.codebooks` — ``list``, ``show``, ``export``;
* :mod:`.derive` — ``derive nf|lloyd|quantile``, ``evaluate``;
* :mod:`.audit` — ``audit``;
* :mod:`.model` — ``evaluate-model``;
* :mod:`.plots` — ``plot``, ``plot-sweep``.

Shared helpers live in :mod:`.common`; the fields of every ``--json`` output are listed in
``docs/json.md``.  Codebook names follow :mod:`quantbook.naming`.

Errors: a user error — bad arguments, a bad input file, an invalid codebook, an output that
cannot be written — ends with one line ``quantbook[ SUBCMD]: error: ...`` on stderr and exit
status 2.  The library reports those as ValueError (its error classes derive from it, a
name that is not there too: :class:`quantbook.errors.NotFoundError`) or OSError (the
operating system refused a file).  Anything else, a bare KeyError included, is a bug: one
line ``quantbook: internal error: ...`` and exit status 1.  Never a traceback.  Warnings
raised during a command that succeeds follow its output as one line each (``quantbook:
warning: ...``); after an error only the error line is printed, so that it stays the one line.

Output: what standard output or error cannot encode (a pipe or terminal in ASCII or Latin-1, a
Windows code page) is written by one rule (:func:`quantbook.io.streams.printable_streams`), never a
failure after the work is done.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from typing import TYPE_CHECKING, Sequence

from ..console import interrupted
from ..io.streams import printable_streams

if TYPE_CHECKING:
    from .common import Parser

__all__ = ["main", "build_parser", "UsageError", "EXIT_STATUSES"]

#: what each exit status of :func:`main` means, as ``quantbook --help`` lists them
EXIT_STATUSES = {0: "success", 1: "a failed check (audit: a table not reproduced; a warning that the warnings filter "
                                    "makes an error) or an internal error (a bug)",
                 2: "a usage or input error", 130: "interrupted (Ctrl-C)"}


def __getattr__(name: str):
    # the command modules (numpy, the registry) load inside main, where a Ctrl-C is caught: `python -m
    # quantbook.cli` imports this package before it can catch anything
    if name == "UsageError":
        from .common import UsageError

        return UsageError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))   # UsageError too, before it loads


def _command_modules():
    from . import audit, codebooks, derive, model, plots

    return (codebooks, derive, audit, model, plots)


class _Version(argparse.Action):
    """``--version``, whose number is looked up when asked for: reading the package metadata
    (importlib.metadata) would add a tenth to the start-up of every command and of ``--help``."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        from .. import __version__

        parser._print_message(f"quantbook {__version__}\n", sys.stdout)
        parser.exit()


def build_parser() -> Parser:
    """The ``quantbook`` argument parser, with every command module's sub-commands."""
    from .common import Parser

    statuses = "; ".join(f"{code} {meaning}" for code, meaning in EXIT_STATUSES.items())
    p = Parser(prog="quantbook", description="Design, derive, audit and use k-bit quantization codebooks.",
               epilog=f"Exit status: {statuses}.")
    p.add_argument("--version", action=_Version, help="show program's version number and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for module in _command_modules():
        module.register(sub)
    return p


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _describe(exc: BaseException) -> str:
    """The one-line message of a library error."""
    if isinstance(exc, KeyError) and not isinstance(exc, ValueError) and exc.args:
        return _one_line(exc.args[0])  # str(KeyError) would quote the message
    if isinstance(exc, OSError) and exc.strerror:
        from ..io.files import short_name

        name = "" if exc.filename is None else short_name(exc.filename)
        return _one_line(f"{name}: {exc.strerror}" if name else exc.strerror)
    return _one_line(exc)


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the command (and sub-command) ``args`` ran."""
    for name in (getattr(args, "command", None), getattr(args, "method", None)):
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or name not in sub.choices:
            break
        parser = sub.choices[name]
    return parser


def _as_options(message: str, parser: argparse.ArgumentParser | None, args: argparse.Namespace | None) -> str:
    """The library names its parameters (``tensor_size=8``); on the command line they are the
    command's options (``--tensor-size 8``), so a message names what the user can change."""
    if parser is None or args is None:
        return message
    for action in _command_parser(parser, args)._actions:
        flag = next((o for o in action.option_strings if o.startswith("--")), None)
        if flag is None or action.dest == "help":
            continue
        name = rf"(?<![\w./\\-]){re.escape(action.dest)}="   # not inside a path
        if action.nargs == 0:   # a switch: nested=True is the flag given
            message = re.sub(name + r"True\b", flag, message)
        else:
            message = re.sub(name + r"(?=[\w'\"+.(\[-])", f"{flag} ", message)   # a value follows
        if "_" in action.dest:   # block_size is a parameter's name, never a word of the sentence
            message = re.sub(rf"(?<![\w./\\-]){re.escape(action.dest)}(?![\w=./\\-])", flag, message)
        elif action.nargs != 0 and getattr(args, action.dest, None) not in (None, action.default):
            # a word such as samples is the parameter where the message begins with the rule it broke
            # ("samples must be ...") and the user typed its option (after "FILE.json: " it is the file's)
            message = re.sub(rf"^{re.escape(action.dest)}(?= must\b)", flag, message)
    return message


def _silence_stdout() -> None:
    """After a broken pipe: send what is left in stdout's buffer nowhere, so that Python's
    final flush does not complain."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (e.g. captured)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``) and return its exit status
    (:data:`EXIT_STATUSES`: 0, 1 for a failed check or an internal error, 2 for a user error, 130
    for a Ctrl-C; the module docstring)."""
    with printable_streams():
        try:
            status = _main(argv)
        except SystemExit:   # --help and --version: argparse has printed its text, and leaves
            if _flush_stdout(report=True):
                raise SystemExit(2) from None
            raise
        return _flush_stdout(report=status == 0) or status


def _flush_stdout(report: bool) -> int:
    """Flush what the command printed while its failure can still be reported: left to the
    interpreter's exit, a closed pipe or a full disk is "Exception ignored ..." and status 120.
    A closed pipe is no error (0); any other failure is one error line (if ``report``; after
    an error, that error stays the one line) and status 2."""
    try:
        sys.stdout.flush()
        return 0
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except OSError as exc:
        _silence_stdout()   # the interpreter's own flush would fail again
        if not report:
            return 0
        print(f"quantbook: error: standard output: {_describe(exc)}", file=sys.stderr)
        return 2
    except (ValueError, AttributeError):   # a closed or replaced stdout: nothing to flush
        return 0


def _main(argv: Sequence[str] | None) -> int:
    try:
        from .common import UsageError
    except KeyboardInterrupt:
        return interrupted()
    caught: dict[tuple[type, str], None] = {}

    def collect(message, category, filename, lineno, file=None, line=None):
        caught.setdefault((category, _one_line(message)), None)

    parser = args = None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = collect
            parser = build_parser()
            args, extra = parser.parse_known_args(argv)
            if extra:   # argparse's own message names only "quantbook": name the command refused
                prog = " ".join(["quantbook", *(v for v in (args.command, getattr(args, "method", None)) if v)])
                raise UsageError(f"unrecognized arguments: {' '.join(extra)}", prog, hint=True)
            status = int(args.func(args) or 0)
    except UsageError as exc:   # the parser's refusals point to the usage it did not print
        hint = f" (see {exc.prog} --help)" if exc.hint else ""
        print(f"{exc.prog}: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `quantbook audit --json | head`: not an error
        _silence_stdout()
        return 0
    except (ValueError, OSError) as exc:
        print(f"quantbook: error: {_as_options(_describe(exc), parser, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return interrupted()
    except Warning as exc:   # a warnings filter (-W error, PYTHONWARNINGS) asked for it: not a bug
        print(f"quantbook: error: {_describe(exc)} ({type(exc).__name__} made an error by the warnings filter)",
              file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the command line never shows a traceback
        print(f"quantbook: internal error: {type(exc).__name__}: {_describe(exc)}", file=sys.stderr)
        return 1
    for category, message in caught:
        print(f"quantbook: warning: {message}", file=sys.stderr)
    return status
