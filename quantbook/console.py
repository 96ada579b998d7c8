"""The ``quantbook`` console script: the command line (:func:`quantbook.cli.main`), imported inside
:func:`main`.

A Ctrl-C during the command's first fraction of a second ends as one during the command does,
one line and status 130, where the script's own ``from quantbook.cli import main`` left Python's
traceback.  This module, ``quantbook/__init__.py`` and the ``quantbook.cli`` package import
nothing heavy; :func:`quantbook.cli.main` loads numpy, the registry and the command modules
inside its own handling of a Ctrl-C.

What standard output and error cannot encode is written by one rule,
:func:`quantbook.io.streams.printable_streams`.
"""

import sys

__all__ = ["main", "interrupted"]


def interrupted() -> int:
    """What the command line does on Ctrl-C: one line on stderr, and the status a shell gives a
    process ended by SIGINT (128 + 2)."""
    print("quantbook: interrupted", file=sys.stderr)
    return 130


def main() -> int:
    """The ``quantbook`` console script: :func:`quantbook.cli.main`'s exit status."""
    try:
        from .cli import main as command_line
    except KeyboardInterrupt:
        return interrupted()
    return command_line()
