"""What the scripts in benchmarks/ do with a bad argument, in one place: a count below what a
run needs is refused by the script's parser, and an argument the library refuses (a codebook
name, a block size, a missing file) ends the run in one line on stderr, status 2, rather than
a traceback or a table of nothing.  Not a benchmark: the scripts import it from this folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quantbook.io.streams import printable_streams


def check_floors(ap: argparse.ArgumentParser, args: argparse.Namespace, **floors: int) -> None:
    """``ap.error`` (status 2) for the first option below its floor; ``floors`` maps an option's
    dest to its least value, and an option left at None (the script's default) passes."""
    for dest, low in floors.items():
        value = getattr(args, dest)
        if value is not None and value < low:
            ap.error(f"--{dest.replace('_', '-')} must be at least {low}, got {value}")


def only_in(ap: argparse.ArgumentParser, args: argparse.Namespace, mode: str, **readers: str | tuple[str, ...]) -> None:
    """``ap.error`` (status 2) for the first option given (not None) that this run's ``mode``
    does not read: a run that ignored it would look as if it had taken it.  ``readers`` maps an
    option's dest to the mode, or modes, that read it."""
    for dest, modes in readers.items():
        modes = (modes,) if isinstance(modes, str) else modes
        if getattr(args, dest) is not None and mode not in modes:
            ap.error(f"--{dest.replace('_', '-')} is read by {' and '.join(modes)} only, not by {mode}")


def int_list(ap: argparse.ArgumentParser, text: str, flag: str) -> list[int]:
    """A comma-separated list of integers, or ``ap.error`` naming ``flag``."""
    try:
        items = [int(v) for v in text.split(",")]
    except ValueError:
        ap.error(f"{flag} takes comma-separated integers, got {text!r}")
    return items


def vq_cases(ap: argparse.ArgumentParser, text: str) -> list[tuple[int, int]]:
    """``--cases`` of the vector-codebook benchmarks: comma-separated ``PxN`` (dimension x points)."""
    try:
        cases = [tuple(int(v) for v in item.split("x")) for item in text.split(",")]
    except ValueError:
        cases = []
    if not cases or any(len(c) != 2 for c in cases):
        ap.error(f"--cases takes comma-separated PxN such as 2x256, got {text!r}")
    return cases


def run(main) -> None:
    """``sys.exit(main())``; a ValueError or OSError out of it (what the library raises for a
    bad name, size or file; an unknown name is a ValueError too) as one line
    ``SCRIPT: error: ...``, status 2.  A bare KeyError is a bug, and keeps its traceback.  What
    standard output cannot encode (``±`` into an ASCII pipe) is written as the command line
    writes it, not a failure after the measurement."""
    try:
        with printable_streams():
            sys.exit(main())
    except (ValueError, OSError) as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}".splitlines()[0], file=sys.stderr)
        sys.exit(2)
