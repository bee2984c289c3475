"""The installed release of saga-sidecar (``pyproject.toml``'s version), for the CLI and metrics."""

from __future__ import annotations

from importlib import metadata


def version() -> str:
    """The installed package's version (``pyproject.toml``)."""
    try:
        return metadata.version("saga-sidecar")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"
