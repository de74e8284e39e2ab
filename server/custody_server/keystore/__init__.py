"""The PKCS#11 key store: keys generated inside a token, used by label, never exported."""

from __future__ import annotations

from custody_core.api_enums import KeyAlgorithm
from custody_server.keystore._connection import ReconnectBackoff
from custody_server.keystore.errors import (
    KeyExistsError,
    KeyNotFoundError,
    KeystoreError,
    KeystoreUnavailableError,
)
from custody_server.keystore.store import Pkcs11KeyStore, Pkcs11Signer, StoredKey

__all__ = [
    "KeyAlgorithm",
    "KeyExistsError",
    "KeyNotFoundError",
    "KeystoreError",
    "KeystoreUnavailableError",
    "Pkcs11KeyStore",
    "Pkcs11Signer",
    "ReconnectBackoff",
    "StoredKey",
]
