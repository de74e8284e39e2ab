"""Revoked client certificates: a CRL named by the config, checked on every call.

`[tls] crl_file` is a certificate revocation list (PEM or DER) issued by the client
CA. A call whose certificate's serial the CRL lists (for the CRL's issuer) is
UNAUTHENTICATED. The CRL's signature is verified against the client CA file the
server trusts; a CRL that no certificate of that file signed is refused, as are
kinds of CRL that list less than they seem to: delta CRLs, indirect CRLs (entries
for other issuers) and any CRL with a critical extension this code does not know.
At start a bad CRL stops the server; on reload (SIGHUP) it is rejected and the old
one stays in force. A CRL past its nextUpdate is still applied (refusing it would
lock every client out); `RevocationList.expired` lets the server warn about it.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from custody_server.policy.errors import RevocationError
from custody_server.policy.identity import PeerCertificate
from custody_server.policy.store import ReloadOutcome

_KNOWN_CRL_EXTENSIONS = frozenset({
    ExtensionOID.CRL_NUMBER, ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    ExtensionOID.ISSUING_DISTRIBUTION_POINT, ExtensionOID.AUTHORITY_INFORMATION_ACCESS,
    ExtensionOID.ISSUER_ALTERNATIVE_NAME, ExtensionOID.FRESHEST_CRL,
})


@dataclass(frozen=True)
class RevocationList:
    """The serials a CRL revokes, for its issuer (DER of the issuer's name)."""

    issuer: bytes
    serials: frozenset[int]
    fingerprint: str  # SHA-256 of the file, for the audit trail
    next_update: datetime | None = None

    def revokes(self, peer: PeerCertificate) -> bool:
        return peer.serial in self.serials and peer.issuer == self.issuer

    def expired(self, now: datetime) -> bool:
        return self.next_update is not None and self.next_update < now


def parse_crl(data: bytes, *, trusted: Sequence[x509.Certificate], source: str
              ) -> RevocationList:
    """A CRL from PEM or DER bytes, signed by one of `trusted`; RevocationError if not."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            crl = x509.load_pem_x509_crl(data)
        else:
            crl = x509.load_der_x509_crl(data)
        extensions = crl.extensions
        revoked = list(crl)
    except ValueError as error:
        raise RevocationError(f"{source}: not a certificate revocation list (PEM or DER): "
                              f"{error}"[:400]) from None
    signer = next((ca for ca in trusted if ca.subject == crl.issuer
                   and _signed_by(crl, ca)), None)
    if signer is None:
        raise RevocationError(f"{source}: the CRL is not signed by a certificate of the "
                              f"client CA file (CRL issuer {crl.issuer.rfc4514_string()[:200]!r})")
    for extension in extensions:
        if extension.oid == ExtensionOID.DELTA_CRL_INDICATOR:
            raise RevocationError(f"{source}: delta CRLs are not supported; give a full CRL")
        if extension.oid == ExtensionOID.ISSUING_DISTRIBUTION_POINT and \
                isinstance(extension.value, x509.IssuingDistributionPoint) and \
                extension.value.indirect_crl:
            raise RevocationError(f"{source}: indirect CRLs are not supported")
        if extension.critical and extension.oid not in _KNOWN_CRL_EXTENSIONS:
            raise RevocationError(f"{source}: the CRL has a critical extension Custody does "
                                  f"not understand ({extension.oid.dotted_string})")
    return RevocationList(
        issuer=crl.issuer.public_bytes(),
        serials=frozenset(entry.serial_number for entry in revoked),
        fingerprint=hashlib.sha256(data).hexdigest(),
        next_update=crl.next_update_utc,
    )


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.crl_sign:
        return False
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a key type that cannot sign CRLs
        return False


def load_client_cas(path: Path) -> list[x509.Certificate]:
    """The certificates of the client CA file (PEM, one or more)."""
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as error:
        raise RevocationError(f"cannot read the client CA file {path}: {error.strerror}"
                              ) from None
    except ValueError as error:
        raise RevocationError(f"client CA file {path}: {error}"[:400]) from None


class RevocationStore:
    """The CRL in force, swapped atomically on reload; the old one stays if the new is bad."""

    def __init__(self, revocation: RevocationList, *, path: Path,
                 trusted: Sequence[x509.Certificate]) -> None:
        self._revocation = revocation
        self._path = path
        self._trusted = tuple(trusted)
        self._reload_lock = threading.Lock()

    @classmethod
    def from_files(cls, crl_file: Path, *, client_ca_file: Path) -> RevocationStore:
        """At start: a bad CRL is a RevocationError and the server does not start."""
        trusted = load_client_cas(client_ca_file)
        return cls(_load(crl_file, trusted), path=crl_file, trusted=trusted)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def current(self) -> RevocationList:
        return self._revocation  # one attribute read: atomic

    def reload(self) -> ReloadOutcome:
        with self._reload_lock:
            previous = self._revocation
            try:
                revocation = _load(self._path, self._trusted)
            except RevocationError as error:
                return ReloadOutcome(loaded=False, fingerprint=previous.fingerprint,
                                     previous_fingerprint=previous.fingerprint,
                                     error=str(error))
            self._revocation = revocation
            return ReloadOutcome(loaded=True, fingerprint=revocation.fingerprint,
                                 previous_fingerprint=previous.fingerprint)


def _load(path: Path, trusted: Sequence[x509.Certificate]) -> RevocationList:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise RevocationError(f"cannot read tls.crl_file {path}: {error.strerror}") from None
    return parse_crl(data, trusted=trusted, source=f"tls.crl_file {path}")
