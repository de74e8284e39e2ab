"""The one table that maps Custody's errors to gRPC status codes.

Clients get the error's own message (written to be safe to show) and the
status code; never a repr, a traceback, a PIN or a payload. Anything that is
not a CustodyError is a bug: the client gets INTERNAL with a request id, and
the log gets the traceback.
"""

from __future__ import annotations

import grpc

from custody_core.errors import CustodyError, KeyFormatError, MetadataError, SignatureError
from custody_server.errors import (
    AuditUnavailableError,
    ConfigError,
    NotFoundError,
    RequestError,
    ResponseTooLargeError,
    StoreUnavailableError,
)
from custody_server.keystore import (
    KeyExistsError,
    KeyNotFoundError,
    KeystoreUnavailableError,
)

# Most specific first: the first class in an error's MRO that is listed wins.
STATUS_BY_ERROR: dict[type[CustodyError], grpc.StatusCode] = {
    KeyFormatError: grpc.StatusCode.INVALID_ARGUMENT,
    MetadataError: grpc.StatusCode.INVALID_ARGUMENT,
    RequestError: grpc.StatusCode.INVALID_ARGUMENT,
    KeyNotFoundError: grpc.StatusCode.NOT_FOUND,
    KeyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    SignatureError: grpc.StatusCode.FAILED_PRECONDITION,
    KeystoreUnavailableError: grpc.StatusCode.UNAVAILABLE,
    AuditUnavailableError: grpc.StatusCode.UNAVAILABLE,
    StoreUnavailableError: grpc.StatusCode.UNAVAILABLE,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    ResponseTooLargeError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ConfigError: grpc.StatusCode.FAILED_PRECONDITION,
    CustodyError: grpc.StatusCode.INTERNAL,
}


def status_for(error: CustodyError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return grpc.StatusCode.INTERNAL


def client_message(error: CustodyError, *, max_length: int = 1000) -> str:
    message = str(error) or type(error).__name__
    return message if len(message) <= max_length else message[: max_length - 3] + "..."
