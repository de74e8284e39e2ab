"""Custody client: typed gRPC client and the `custody` CLI for pipeline agents."""
