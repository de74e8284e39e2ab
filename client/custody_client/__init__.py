"""Custody client: typed gRPC client and the `custody` CLI for pipeline agents.

Kept import-free so that `custody --version` starts without loading gRPC.
"""

__version__ = "0.1.0"
