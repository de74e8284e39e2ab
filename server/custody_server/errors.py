"""The server's own error kinds, under the one root in custody_core.errors."""

from __future__ import annotations

from custody_core.errors import CustodyError


class ConfigError(CustodyError):
    """The configuration file or a setting in it is wrong; the server does not start."""


class RequestError(CustodyError):
    """A request field is missing, malformed or over a limit (INVALID_ARGUMENT)."""


class LimitExceededError(RequestError):
    """A request is over a configured size limit (INVALID_ARGUMENT, says which limit)."""


class AuditUnavailableError(CustodyError):
    """The audit record could not be written, so nothing is signed (UNAVAILABLE)."""


class MalformedRequestError(RequestError):
    """A request's bytes are not a valid protobuf message of its RPC (INVALID_ARGUMENT)."""


class ResponseTooLargeError(CustodyError):
    """The response would exceed the message size limit; found before anything was
    signed, so nothing was (RESOURCE_EXHAUSTED)."""


class StoreUnavailableError(CustodyError):
    """The attestation store cannot be read or written: a link that cannot be stored is
    not returned (UNAVAILABLE; the service recovers by itself when the database does)."""


class NotFoundError(CustodyError):
    """A stored link or run that does not exist (NOT_FOUND)."""
