"""Custody server: the gRPC signing and verification service."""

from importlib import metadata as _metadata

DISTRIBUTION = "custody-intoto"  # pyproject.toml's [project] name (PyPI's `custody` is not us)

try:  # the installed distribution's version (pyproject.toml)
    __version__ = _metadata.version(DISTRIBUTION)
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
