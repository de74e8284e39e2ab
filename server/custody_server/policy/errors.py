"""The policy's one error kind."""

from __future__ import annotations

from custody_core.errors import CustodyError
from custody_server.errors import ConfigError


class PolicyError(ConfigError):
    """The policy file is unreadable or wrong; the message says where and what."""


class IdentityError(CustodyError):
    """A client certificate names no usable identity (the call is UNAUTHENTICATED)."""


class RevocationError(ConfigError):
    """The certificate revocation list is unreadable, not the client CA's, or of a kind
    Custody does not check (delta, indirect, unknown critical extension)."""
