"""The randomized Hadamard transform (moved to :mod:`quantbook.numerics.hadamard`, where the
bulk layer can use it too); re-exported here for the model layer and its callers."""

from ..numerics.hadamard import SEED, check_size, default_size, fwht, rotate, signs, unrotate

__all__ = ["fwht", "signs", "rotate", "unrotate", "default_size", "check_size", "SEED"]
