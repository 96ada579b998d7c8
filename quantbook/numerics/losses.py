"""The two error measures every derivation, evaluation and scale search takes: ``l1`` (the
mean absolute error) and ``l2`` (the mean squared error).  The one list of their names and
the one check of a ``loss`` argument, below every layer that reads one."""

from __future__ import annotations

from typing import Any

__all__ = ["LOSSES", "check_loss"]

LOSSES = ("l1", "l2")


def check_loss(loss: Any, what: str = "loss") -> str:
    """``loss`` if it is one of :data:`LOSSES` (exactly: option keywords are not case-folded),
    else a ValueError naming ``what``."""
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"{what} must be one of {', '.join(LOSSES)}, got {loss!r}")
    return loss
