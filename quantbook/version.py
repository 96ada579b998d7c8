"""quantbook's version number, one rule for every layer (this module imports nothing of quantbook)."""

__all__ = ["installed_version"]


def installed_version() -> str:
    """pyproject.toml's version, from the installed package metadata ("unknown" in a source tree
    that was never installed).  importlib.metadata takes about as long to import as the rest of a
    command's start-up, so callers ask at first use."""
    from importlib import metadata

    try:
        return metadata.version("quantbook")
    except metadata.PackageNotFoundError:
        return "unknown"
