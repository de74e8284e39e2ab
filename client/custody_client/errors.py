"""The client's error kinds, under Custody's one root (custody_core.errors.CustodyError)."""

from __future__ import annotations

from custody_core.errors import CustodyError


class ClientError(CustodyError):
    """A call to the Custody server failed.

    `code` is the gRPC status code name ("UNAVAILABLE", "NOT_FOUND", ...) and the message
    is one line, safe to print.
    """

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(" ".join(message.split()))
        self.code = code


class RecordingError(CustodyError):
    """Artifacts could not be recorded: unreadable file, bad pattern, clashing prefixes."""


class InputError(CustodyError):
    """A file or value given on the command line cannot be used (missing, malformed)."""
