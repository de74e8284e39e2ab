"""How the client reaches the server: address, TLS material, deadline and retries."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from custody_client.errors import InputError
from custody_client.local_tls import CA_FILE, find_local_tls, state_dir

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT_SECONDS = 60.0
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the server's default limit

ENV_SERVER = "CUSTODY_SERVER"
ENV_CA = "CUSTODY_CA"
ENV_CERT = "CUSTODY_CERT"
ENV_KEY_FILE = "CUSTODY_KEY_FILE"


SYSTEM_ROOTS = "the system's CA certificates"


@dataclass(frozen=True)
class TlsMaterial:
    """PEM bytes: the CA to trust (None: the system's roots) and an optional client pair.

    `ca_source` says which CA that is and why, for error messages."""

    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = field(default=None, repr=False)  # a private key: never printed
    ca_source: str = ""

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise InputError("a client certificate needs its key, and a key its certificate "
                             "(--cert and --key-file go together)")

    @classmethod
    def from_files(cls, *, ca: str | None, cert: str | None, key: str | None,
                   ca_source: str = "") -> TlsMaterial:
        return cls(ca=_read(ca, "CA certificate"), cert=_read(cert, "client certificate"),
                   key=_read(key, "client key"),
                   ca_source=ca_source or (f"the CA in {ca}" if ca else SYSTEM_ROOTS))


def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise InputError(f"cannot read {what} {path}: {error.strerror}") from None


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of UNAVAILABLE: exponential backoff with full jitter, bounded in count."""

    max_attempts: int = 4
    initial_backoff: float = 0.2
    max_backoff: float = 3.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InputError("max_attempts must be at least 1")
        if not 0 <= self.initial_backoff <= self.max_backoff:
            raise InputError("backoff must satisfy 0 <= initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise InputError("multiplier must be at least 1")

    def backoff(self, retry: int, *, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return (rng or random).uniform(0, ceiling)  # jitter, not a secret


NO_RETRIES = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class ConnectionSettings:
    """Where and how to call. `timeout` bounds a whole call, retries included.

    `address`: host:port, or several replicas' separated by commas, over which calls are
    spread and retries move (custody_client.replicas)."""

    address: str = DEFAULT_ADDRESS
    tls: TlsMaterial | None = None
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    retry: RetryPolicy = RetryPolicy()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        if (not self.address or any(c.isspace() for c in self.address)
                or not all(self.addresses)):
            raise InputError(f"bad server address {self.address!r} (host:port, or several "
                             "separated by commas without spaces)")
        if self.timeout <= 0:
            raise InputError("the timeout must be positive")
        if self.max_message_bytes < 1:
            raise InputError("max_message_bytes must be positive")

    @property
    def addresses(self) -> tuple[str, ...]:
        """Each replica's address."""
        return tuple(self.address.split(","))

    @property
    def transport(self) -> str:
        return "TLS" if self.tls is not None else "plaintext"

    @classmethod
    def from_options(
        cls,
        *,
        server: str | None = None,
        ca: str | None = None,
        cert: str | None = None,
        key_file: str | None = None,
        tls: bool = False,
        plaintext: bool = False,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        environ: Mapping[str, str] | None = None,
    ) -> ConnectionSettings:
        """Settings from flags, else the environment, else the local embedded default.

        TLS material: --ca/--cert/--key-file, else CUSTODY_CA/CUSTODY_CERT/CUSTODY_KEY_FILE,
        else the local CA and client certificate in the state directory (local_tls), else
        none. A client certificate given without a CA is checked against the local CA
        when there is one (the server's certificate comes from it), else the system's
        roots; so is `tls` without anything else. TLS is on when material is found or
        `tls` is set; `plaintext` turns it off.
        """
        env = os.environ if environ is None else environ
        address = server or env.get(ENV_SERVER) or DEFAULT_ADDRESS
        if plaintext:
            if tls or ca or cert or key_file:
                raise InputError("--plaintext cannot be combined with TLS flags")
            return cls(address=address, tls=None, timeout=timeout)
        ca_source = f"the CA in {ca} (--ca)" if ca else ""
        if not ca and (ca := env.get(ENV_CA) or None):
            ca_source = f"the CA in {ca} (${ENV_CA})"
        cert = cert or env.get(ENV_CERT) or None
        key_file = key_file or env.get(ENV_KEY_FILE) or None
        if not (ca or cert or key_file):
            local = find_local_tls(env)
            if local is not None:
                ca, cert, key_file = str(local.ca), str(local.cert), str(local.key)
                ca_source = f"the local CA {local.ca} (no --ca given)"
        elif not ca and (cert or key_file):
            local_ca = state_dir(env) / "tls" / CA_FILE
            if local_ca.is_file() and os.access(local_ca, os.R_OK):
                ca, ca_source = str(local_ca), f"the local CA {local_ca} (no --ca given)"
            else:
                ca_source = (f"{SYSTEM_ROOTS} (no --ca given, and no local CA at "
                             f"{local_ca})")
        material = None
        if tls or ca or cert or key_file:
            material = TlsMaterial.from_files(ca=ca, cert=cert, key=key_file,
                                              ca_source=ca_source)
        return cls(address=address, tls=material, timeout=timeout)
