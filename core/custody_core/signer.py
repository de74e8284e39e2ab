"""The one small signing interface that the core asks of a key store."""

from __future__ import annotations

from typing import Protocol

from custody_core.keys import PublicKey


class Signer(Protocol):
    """Something that signs bytes with a private key it never hands out.

    `sign` returns the signature bytes exactly as in-toto encodes them before hex
    or base64: DER for ECDSA, raw 64 bytes for Ed25519, the PSS block for RSA.
    """

    @property
    def public_key(self) -> PublicKey: ...

    def sign(self, data: bytes) -> bytes: ...
