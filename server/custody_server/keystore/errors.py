"""Errors of the key store. Messages name labels and tokens, never a PIN or key material."""

from __future__ import annotations

from custody_core.errors import CustodyError


class KeystoreError(CustodyError):
    """A key store operation failed for a reason the caller cannot fix by retrying."""


class KeyNotFoundError(KeystoreError):
    """No key (or data object) with that label is on the token."""


class KeyExistsError(KeystoreError):
    """A key with that label is already on the token; labels are never reused silently."""


class KeystoreUnavailableError(KeystoreError):
    """The token or its session failed; the store reconnects on a later call (UNAVAILABLE)."""
