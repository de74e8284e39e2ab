"""What the CLI's commands share: settings from flags, progress, safe file writing."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from custody_client.errors import ClientError, InputError, RecordingError
from custody_client.models import EnvelopeKind
from custody_client.recording import ProgressCallback, RecordingOptions
from custody_client.settings import DEFAULT_TIMEOUT_SECONDS, ConnectionSettings
from custody_core.errors import CustodyError, MetadataError

if TYPE_CHECKING:
    from custody_client.client import CustodyClient
    from custody_client.signing_client import SigningClient

# Exit codes, the same for every command (README: "Exit codes"). 0 and 1 are
# in-toto's; the others let a release gate tell an outage from a bad release.
EXIT_OK = 0
EXIT_FAILED = 1  # verification failed (or a failure no code below names)
EXIT_USAGE = 2  # bad flags, or input refused here before any call (argparse exits 2 too)
EXIT_UNAVAILABLE = 3  # no answer: server down, TLS handshake failed, not serving, deadline
EXIT_REFUSED = 4  # the server answered with an error: permission, a request it refuses
EXIT_INTERRUPTED = 130

# gRPC codes that say the service could not be reached or did not answer in time.
_UNAVAILABLE_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})


def exit_code_for(error: CustodyError) -> int:
    """The exit code of a command that ended with `error`."""
    if isinstance(error, ClientError):
        return EXIT_UNAVAILABLE if error.code in _UNAVAILABLE_CODES else EXIT_REFUSED
    if isinstance(error, InputError | RecordingError | MetadataError):
        return EXIT_USAGE
    return EXIT_FAILED


def connection_settings(args: argparse.Namespace) -> ConnectionSettings:
    return ConnectionSettings.from_options(
        server=getattr(args, "server", None),
        ca=getattr(args, "ca", None),
        cert=getattr(args, "cert", None),
        key_file=getattr(args, "key_file", None),
        tls=getattr(args, "tls", False),
        plaintext=getattr(args, "plaintext", False),
        timeout=getattr(args, "timeout", None) or DEFAULT_TIMEOUT_SECONDS,
    )


def _quiet_grpc() -> None:
    # gRPC's own log lines (TLS handshake details at INFO) would break "one line per error".
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def open_client(args: argparse.Namespace) -> CustodyClient:
    _quiet_grpc()
    from custody_client.client import CustodyClient  # grpc loads only when a command needs it

    return CustodyClient(connection_settings(args))


def open_signing_client(args: argparse.Namespace) -> SigningClient:
    """The preflight and SignLink only: gRPC without protobuf's runtime."""
    _quiet_grpc()
    from custody_client.signing_client import SigningClient

    return SigningClient(connection_settings(args))


class ClientInBackground:
    """Load gRPC, open the channel and check the server in a thread, while the caller
    records materials; `client()` waits for it (and raises if the server is not there)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._client: SigningClient | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._connect, args=(args,), daemon=True,
                                        name="custody-connect")
        self._thread.start()

    def _connect(self, args: argparse.Namespace) -> None:
        try:
            client = open_signing_client(args)
            self._client = client
            client.check_server()
        except BaseException as error:  # handed to the caller's thread by client()
            self._error = error

    def client(self) -> SigningClient:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._client is not None
        return self._client

    def close(self) -> None:
        # On an error path the thread may still be waiting for a slow server: it is a
        # daemon thread, so it does not hold the process; close the channel if it is done.
        if not self._thread.is_alive() and self._client is not None:
            self._client.close()

    def __enter__(self) -> ClientInBackground:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def recording_options(args: argparse.Namespace) -> RecordingOptions:
    return RecordingOptions(
        exclude_patterns=tuple(args.exclude_patterns or ()),
        base_path=args.base_path,
        lstrip_paths=tuple(args.lstrip_paths or ()),
    )


def envelope_from_args(args: argparse.Namespace) -> EnvelopeKind:
    if getattr(args, "use_dsse", False):
        return EnvelopeKind.DSSE
    return EnvelopeKind(args.envelope)


def metadata_directory(path: str | None) -> Path:
    """The directory links are written to: it must exist before any work is done."""
    directory = Path(path or ".")
    if not directory.is_dir():
        raise InputError(f"metadata directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise InputError(f"metadata directory {directory} is not writable")
    return directory


def relative_link_path(name: str) -> str | None:
    """`name` if it is a relative path that stays below its directory, else None."""
    parts = name.split("/")
    if not name or "\x00" in name or "\\" in name or any(p in ("", ".", "..") for p in parts):
        return None
    return name


def checked_link_name(name: str) -> str:
    """A file name from the server, checked before it names a file on this machine: a
    relative path that stays below the metadata directory (a step name with `/` names a
    subdirectory, as in in-toto)."""
    if relative_link_path(name) is None or not name.endswith(".link"):
        raise InputError(f"the server returned an unusable link file name {name!r:.100}")
    return name


def write_file(path: Path, content: bytes) -> None:
    """Write atomically: a reader never sees half a link, and a failure leaves nothing."""
    directory = path.parent
    try:
        fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as error:
        raise InputError(f"cannot write {path}: {error.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(temp_name, 0o644)
        os.replace(temp_name, path)
    except OSError as error:
        Path(temp_name).unlink(missing_ok=True)
        raise InputError(f"cannot write {path}: {error.strerror}") from None


def read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except IsADirectoryError:
        raise InputError(f"{what} {path} is a directory") from None
    except OSError as error:
        raise InputError(f"cannot read {what} {path}: {error.strerror}") from None


class ProgressLine:
    """`hashing products: 1234/10000 files` on stderr, only when stderr is a terminal."""

    def __init__(self, *, enabled: bool, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._enabled = enabled and self._stream.isatty()
        self._last = 0.0
        self._shown = False

    def callback(self, what: str) -> ProgressCallback | None:
        if not self._enabled:
            return None

        def report(done: int, total: int) -> None:
            now = time.monotonic()
            if done < total and now - self._last < 0.1:
                return
            self._last = now
            self._stream.write(f"\r\x1b[Kcustody: hashing {what}: {done}/{total} files")
            self._stream.flush()
            self._shown = True

        return report

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._shown = False
