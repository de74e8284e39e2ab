"""Who is calling: one identity string from the client certificate, in a documented order.

1. the URI SAN (e.g. a SPIFFE id `spiffe://example.org/ci/builder`), used as is;
   a certificate with more than one URI SAN is refused as ambiguous (SPIFFE
   requires exactly one);
2. else the first DNS SAN, as `dns:NAME`;
3. else the subject common name, as `cn:NAME`.

The prefixes keep the three namespaces apart: a CN can never pass for a DNS name
or a URI. A URI SAN whose scheme is `dns` or `cn` is refused for the same reason.
A call without TLS (only possible with `[tls] insecure = true`) is `anonymous`,
a name no certificate can produce. The input is gRPC's auth context, a mapping of
property names to lists of bytes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from custody_server.policy.errors import IdentityError

ANONYMOUS = "anonymous"
MAX_IDENTITY_LENGTH = 1024
_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_RESERVED_SCHEMES = frozenset({"dns", "cn"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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


def check_identity_string(value: str) -> str:
    """The identity string rules, shared with the policy parser; IdentityError if broken."""
    if not value:
        raise IdentityError("identity is empty")
    if len(value) > MAX_IDENTITY_LENGTH:
        raise IdentityError(f"identity is longer than {MAX_IDENTITY_LENGTH} characters")
    if _CONTROL.search(value):
        raise IdentityError("identity contains control characters")
    if value == ANONYMOUS:
        return value
    scheme = _URI_SCHEME.match(value)
    if scheme is None:
        raise IdentityError(
            f"identity {value[:100]!r} is not a URI, 'dns:NAME', 'cn:NAME' or 'anonymous'"
        )
    if value.startswith(("dns:", "cn:")) and len(value) == len(scheme.group(0)):
        raise IdentityError(f"identity {value!r} has an empty name")
    return value


def identity_from_auth_context(auth: Mapping[str, Sequence[bytes]]) -> ClientIdentity:
    """The caller's identity; IdentityError when a certificate names none (UNAUTHENTICATED)."""
    if _first(auth, "transport_security_type") != "ssl":
        return ClientIdentity(ANONYMOUS, IdentitySource.PLAINTEXT)
    uris = _all(auth, "peer_uri")
    if len(uris) > 1:
        raise IdentityError(f"client certificate has {len(uris)} URI SANs; exactly one is "
                            "expected")
    if uris:
        scheme = _URI_SCHEME.match(uris[0])
        if scheme is None or scheme.group(1).lower() in _RESERVED_SCHEMES:
            raise IdentityError(f"client certificate URI SAN {uris[0][:100]!r} is not an "
                                "absolute URI with a usable scheme")
        return ClientIdentity(uris[0], IdentitySource.URI_SAN)
    dns = _first(auth, "peer_dns")
    if dns:
        return ClientIdentity(f"dns:{dns}", IdentitySource.DNS_SAN)
    common_name = _first(auth, "x509_common_name")
    if common_name:
        return ClientIdentity(f"cn:{common_name}", IdentitySource.COMMON_NAME)
    raise IdentityError("client certificate names no identity (no URI SAN, DNS SAN or CN)")


def _all(auth: Mapping[str, Sequence[bytes]], name: str) -> list[str]:
    values = auth.get(name) or ()
    try:
        return [bytes(v).decode("utf-8") for v in values]
    except UnicodeDecodeError:
        raise IdentityError(f"client certificate {name} is not valid UTF-8") from None


def _first(auth: Mapping[str, Sequence[bytes]], name: str) -> str:
    values = _all(auth, name)
    return values[0] if values else ""
