"""Who is calling: one identity string, read from the client certificate's own bytes.

1. the URI SAN (e.g. a SPIFFE id `spiffe://example.org/ci/builder`), used as is;
   a certificate with more than one URI SAN is refused as ambiguous (SPIFFE
   requires exactly one);
2. else the first DNS SAN, as `dns:NAME`;
3. else the first subject common name, as `cn:NAME`.

The prefixes keep the three namespaces apart: a CN can never pass for a DNS name
or a URI. A URI SAN whose scheme is `dns` or `cn` is refused for the same reason.
A call without TLS (only possible with `[tls] insecure = true`) is `anonymous`,
a name no certificate can produce.

The names come from the DER certificate (gRPC's auth context property
`x509_pem_cert`, parsed with `cryptography`), never from gRPC's own name properties
(`peer_uri`, `peer_dns`, `x509_common_name`): those end at the first NUL byte, so a
certificate whose URI SAN is `spiffe://x/admin\\0.evil.example` would pass for
`spiffe://x/admin`. A certificate any of whose URI SANs, DNS SANs or common names
holds a control character (U+0000-U+001F, U+007F-U+009F: NUL, newline, escape...),
or is empty, is refused, whichever name would have been the identity. Messages show names
through `render_name`, which escapes those characters.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID

from custody_core.display import escape_unprintable
from custody_server.policy.errors import IdentityError

ANONYMOUS = "anonymous"
MAX_IDENTITY_LENGTH = 1024
PEM_CERT_PROPERTY = "x509_pem_cert"  # gRPC's auth context: the peer's certificate, PEM
_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_RESERVED_SCHEMES = frozenset({"dns", "cn"})
_RENDER_LIMIT = 200


class IdentitySource(enum.Enum):
    URI_SAN = "uri-san"
    DNS_SAN = "dns-san"
    COMMON_NAME = "common-name"
    PLAINTEXT = "plaintext"


@dataclass(frozen=True)
class ClientIdentity:
    value: str
    source: IdentitySource

    def __post_init__(self) -> None:
        check_identity_string(self.value)


@dataclass(frozen=True)
class PeerCertificate:
    """What the access check needs from a caller's certificate; read once per certificate.

    `identity` is None when the certificate names no usable one; `problem` says why.
    Without TLS: the identity `anonymous`, no serial, no issuer.
    """

    identity: ClientIdentity | None
    problem: str = ""
    serial: int | None = None
    issuer: bytes = b""  # DER of the issuer's name: a serial is unique per issuer

    @property
    def serial_text(self) -> str:
        """The serial as `openssl x509 -serial` prints it (upper-case hex); '' if none."""
        if self.serial is None:
            return ""
        return ("-" if self.serial < 0 else "") + format(abs(self.serial), "X")


def render_name(value: str) -> str:
    """A name from a certificate as safe text for messages, logs and the audit trail:
    quoted, backslashes and unprintable characters escaped (NUL is `\\x00`, a
    right-to-left override `\\u202e`), and cut at 200 characters with `...`."""
    escaped = escape_unprintable(value.replace("\\", "\\\\"))
    if len(escaped) > _RENDER_LIMIT:
        escaped = escaped[:_RENDER_LIMIT] + "..."
    return f"'{escaped}'"


def check_identity_string(value: str) -> str:
    """The identity string rules, shared with the policy parser; IdentityError if broken."""
    if not value:
        raise IdentityError("identity is empty")
    if len(value) > MAX_IDENTITY_LENGTH:
        raise IdentityError(f"identity is longer than {MAX_IDENTITY_LENGTH} characters")
    if not value.isprintable():
        raise IdentityError(f"identity {render_name(value)} contains an unprintable "
                            "character")
    if value == ANONYMOUS:
        return value
    scheme = _URI_SCHEME.match(value)
    if scheme is None:
        raise IdentityError(
            f"identity {render_name(value)} is not a URI, 'dns:NAME', 'cn:NAME' or "
            "'anonymous'")
    if value.startswith(("dns:", "cn:")) and len(value) == len(scheme.group(0)):
        raise IdentityError(f"identity {value!r} has an empty name")
    return value


def identity_from_certificate(certificate: x509.Certificate) -> ClientIdentity:
    """The identity a certificate names, in the documented order; IdentityError if none
    or if any of its names holds a control character (UNAUTHENTICATED)."""
    try:
        try:
            sans = certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            uris: list[str] = []
            dns: list[str] = []
        else:
            uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
            dns = sans.get_values_for_type(x509.DNSName)
        common_names = [attribute.value for attribute in
                        certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    except ValueError as error:
        raise IdentityError(f"client certificate names cannot be read: {error}"[:300]) from None
    for kind, names in (("URI SAN", uris), ("DNS SAN", dns), ("common name", common_names)):
        for name in names:
            if not isinstance(name, str):
                raise IdentityError(f"client certificate {kind} is not text")
            if not name:
                raise IdentityError(f"client certificate has an empty {kind}")
            if not name.isprintable():  # controls, and what reorders or hides text
                raise IdentityError(f"client certificate {kind} {render_name(name)} contains "
                                    "an unprintable character")
    if len(uris) > 1:
        raise IdentityError(f"client certificate has {len(uris)} URI SANs; exactly one is "
                            "expected")
    if uris:
        scheme = _URI_SCHEME.match(uris[0])
        if scheme is None or scheme.group(1).lower() in _RESERVED_SCHEMES:
            raise IdentityError(f"client certificate URI SAN {render_name(uris[0])} is not an "
                                "absolute URI with a usable scheme")
        return ClientIdentity(uris[0], IdentitySource.URI_SAN)
    if dns:
        return ClientIdentity(f"dns:{dns[0]}", IdentitySource.DNS_SAN)
    common_name = common_names[0] if common_names else ""
    if isinstance(common_name, str) and common_name:
        return ClientIdentity(f"cn:{common_name}", IdentitySource.COMMON_NAME)
    raise IdentityError("client certificate names no identity (no URI SAN, DNS SAN or CN)")


def peer_from_auth_context(auth: Mapping[str, Sequence[bytes]]) -> PeerCertificate:
    """The caller's certificate as the access check needs it (gRPC's auth context)."""
    if _first(auth, "transport_security_type") != b"ssl":
        return PeerCertificate(ClientIdentity(ANONYMOUS, IdentitySource.PLAINTEXT))
    pem = _first(auth, PEM_CERT_PROPERTY)
    if not pem:
        return PeerCertificate(None, "the TLS peer presented no certificate")
    return _peer_from_pem(pem)


def identity_from_auth_context(auth: Mapping[str, Sequence[bytes]]) -> ClientIdentity:
    """The caller's identity; IdentityError when its certificate names none."""
    peer = peer_from_auth_context(auth)
    if peer.identity is None:
        raise IdentityError(peer.problem)
    return peer.identity


@functools.lru_cache(maxsize=1024)
def _peer_from_pem(pem: bytes) -> PeerCertificate:
    """Parsed once per certificate: a client presents the same one on every call."""
    try:
        certificate = x509.load_pem_x509_certificate(pem)
        serial, issuer = certificate.serial_number, certificate.issuer.public_bytes()
    except ValueError as error:
        return PeerCertificate(None, f"client certificate cannot be read: {error}"[:300])
    try:
        identity = identity_from_certificate(certificate)
    except IdentityError as error:
        return PeerCertificate(None, str(error), serial=serial, issuer=issuer)
    return PeerCertificate(identity, serial=serial, issuer=issuer)


def _first(auth: Mapping[str, Sequence[bytes]], name: str) -> bytes:
    values = auth.get(name) or ()
    return bytes(values[0]) if values else b""
