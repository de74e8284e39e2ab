"""Custody in-toto core: pure metadata, envelopes and verification (no I/O)."""
