"""Error and warning classes shared by every layer (this module imports nothing)."""

__all__ = ["NotFoundError", "RoundingEdgeWarning"]


class NotFoundError(KeyError, ValueError):
    """A name that is not there: a published table, a tensor in a file.  A KeyError, as a
    lookup is, and a ValueError, as bad input is, so the command line reports it as a user
    error; a bare KeyError is a bug."""

    __str__ = BaseException.__str__  # KeyError's own str() would quote the message


class RoundingEdgeWarning(UserWarning):
    """A derived float64 level so close to a float32 rounding edge that the last-digit
    differences of another CPU's exp and log could round it to the neighbouring float32."""
