"""The ``quantbook`` console script: the command line (:func:`quantbook.cli.main`), imported inside
:func:`main`.

That import (numpy, the registry, the command modules) is the command's first fraction of a
second; a Ctrl-C during it ends as a Ctrl-C during the command does, one line and status 130,
where the script's own ``from quantbook.cli import main`` left Python's traceback.  This module
and ``quantbook/__init__.py`` import nothing heavy, so that :func:`main` is running by then.
"""

import sys

__all__ = ["main", "interrupted"]


def interrupted() -> int:
    """What the command line does on Ctrl-C: one line on stderr, and the status a shell gives a
    process ended by SIGINT (128 + 2)."""
    print("quantbook: interrupted", file=sys.stderr)
    return 130


def main() -> int:
    try:
        from .cli import main as command_line
    except KeyboardInterrupt:
        return interrupted()
    return command_line()
