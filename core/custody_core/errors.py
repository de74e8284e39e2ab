"""The one error root of Custody and the core's own error kinds.

Every error Custody raises on purpose derives from `CustodyError`. The transport
maps each kind to a gRPC status code in one table (custody_server.transport.errors).
"""

from __future__ import annotations


class CustodyError(Exception):
    """Root of every error Custody raises on purpose.

    The message is safe to show to a client: it never holds a PIN, a private key
    or a full payload.
    """


class MetadataError(CustodyError):
    """Input metadata is malformed: bad JSON, wrong `_type`, missing fields, bad rules."""


class KeyFormatError(MetadataError):
    """A public key dict or PEM cannot be understood (unknown type, scheme or encoding)."""


class SignatureError(CustodyError):
    """A signature does not verify, or no trusted signature was found."""


class UnusableKeyError(KeyFormatError):
    """A well-formed key dict whose key cannot verify anything here: an unsupported
    keytype or scheme, or public key material that does not parse or does not fit."""
