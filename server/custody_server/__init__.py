"""Custody server: the gRPC signing and verification service."""
