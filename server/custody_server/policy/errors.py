"""The policy's one error kind."""

from __future__ import annotations

from custody_core.errors import CustodyError
from custody_server.errors import ConfigError


class PolicyError(ConfigError):
    """The policy file is unreadable or wrong; the message says where and what."""


class IdentityError(CustodyError):
    """A client certificate names no usable identity (the call is UNAUTHENTICATED)."""
