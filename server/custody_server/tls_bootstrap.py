"""Local mTLS material for the embedded default: a CA, a server and a client certificate.

On first start the server creates, in `<state_dir>/tls/` (mode 0700):

    ca.pem, ca-key.pem            the local CA (ECDSA P-256, 10 years)
    server.pem, server-key.pem    the server (localhost, 127.0.0.1, ::1, and the host
                                  name or else `[tls] server_names`)
    client.pem, client-key.pem    the local client, URI SAN LOCAL_CLIENT_IDENTITY

Private keys are written with mode 0600. The CA key stays in the state directory
so that more client certificates can be issued (`issue_certificate`); whoever can
read the state directory can also read the token's PIN file, so it adds no new
exposure. Leaf certificates are re-issued when missing, when they expire within
RENEW_BEFORE, or (server) when a needed name is missing; a missing CA starts over.

The client side finds these files with custody_client.local_tls (same names).
More client certificates from the local CA, e.g. for a build agent:

    python -m custody_server.tls_bootstrap issue-client --state-dir DIR \
        --uri spiffe://example.org/ci/builder --out builder

and a CRL that revokes one (name it in `[tls] crl_file`, then `kill -HUP` the server):

    python -m custody_server.tls_bootstrap revoke --state-dir DIR --crl DIR/tls/clients.crl \
        builder.pem
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import os
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOCAL_CLIENT_IDENTITY = "spiffe://custody.local/client/local-admin"
CA_LIFETIME = timedelta(days=3650)
LEAF_LIFETIME = timedelta(days=730)
RENEW_BEFORE = timedelta(days=30)
CRL_LIFETIME = timedelta(days=30)  # nextUpdate of the CRLs issue_crl makes
_BACKDATE = timedelta(minutes=5)  # tolerate small clock skew between client and server


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate and its private key, in memory."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(cls, *, common_name: str, now: datetime) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate=certificate, private_key=key)

    @classmethod
    def load(cls, *, cert_file: Path, key_file: Path) -> CertificateAuthority:
        certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{key_file} is not an EC private key")
        return cls(certificate=certificate, private_key=key)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.private_key)


@dataclass(frozen=True)
class IssuedCertificate:
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class CertificateRequest:
    """What a leaf certificate says about its holder. Empty lists are fine."""

    common_name: str
    uri_names: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    server: bool = False  # serverAuth EKU
    client: bool = True  # clientAuth EKU

    def __post_init__(self) -> None:
        if not (self.server or self.client):
            raise ValueError("a certificate must be for a server, a client or both")
        for address in self.ip_addresses:
            ipaddress.ip_address(address)  # ValueError names the bad address


def issue_certificate(ca: CertificateAuthority, request: CertificateRequest, *,
                      now: datetime, lifetime: timedelta = LEAF_LIFETIME) -> IssuedCertificate:
    """A new key pair and a certificate for it, signed by `ca`."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in request.uri_names]
    names += [x509.DNSName(d) for d in request.dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in request.ip_addresses]
    usages = [oid for wanted, oid in ((request.server, ExtendedKeyUsageOID.SERVER_AUTH),
                                      (request.client, ExtendedKeyUsageOID.CLIENT_AUTH)) if wanted]
    subject = ([x509.NameAttribute(NameOID.COMMON_NAME, request.common_name)]
               if request.common_name else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + lifetime, ca.certificate.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.private_key.public_key()), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names),
                                        critical=not subject)
    certificate = builder.sign(ca.private_key, hashes.SHA256())
    return IssuedCertificate(cert_pem=certificate.public_bytes(serialization.Encoding.PEM),
                             key_pem=_key_pem(key))


def issue_crl(ca: CertificateAuthority, *, revoked: Iterable[int], now: datetime,
              lifetime: timedelta = CRL_LIFETIME) -> bytes:
    """A CRL (PEM) from `ca` revoking the certificates with these serial numbers, for
    `[tls] crl_file`."""
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + lifetime)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.private_key.public_key()), critical=False)
    )
    for serial in sorted(set(revoked)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial)
            .revocation_date(now - _BACKDATE).build())
    crl = builder.sign(ca.private_key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class LocalTls:
    """Where the embedded default's TLS files are (see the module docstring)."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca-key.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server-key.pem"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.directory / "client-key.pem"

    def authority(self) -> CertificateAuthority:
        return CertificateAuthority.load(cert_file=self.ca_cert, key_file=self.ca_key)


def local_tls_dir(state_dir: Path) -> Path:
    return state_dir / "tls"


def ensure_local_tls(state_dir: Path, *, listen_host: str = "",
                     server_names: Sequence[str] = (),
                     now: datetime | None = None) -> tuple[LocalTls, list[str]]:
    """Create or renew the local CA, server and client certificates; say what was done.

    `server_names` (`[tls] server_names`): the names callers reach the service by, in the
    server certificate besides localhost, 127.0.0.1 and ::1; none: the host name instead.
    Replicas sharing the directory may start at once: an exclusive flock on
    `.tls.lock` there makes one of them create the CA and the others use it."""
    now = now or datetime.now(UTC)
    files = LocalTls(local_tls_dir(state_dir))
    files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(files.directory / ".tls.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released when closed (or the process dies)
        return files, _ensure_files(files, now=now, listen_host=listen_host,
                                    server_names=server_names)
    finally:
        os.close(fd)


def _ensure_files(files: LocalTls, *, now: datetime, listen_host: str,
                  server_names: Sequence[str]) -> list[str]:
    notes: list[str] = []
    if files.ca_cert.exists() and files.ca_key.exists():
        ca = files.authority()
    else:
        ca = CertificateAuthority.create(common_name="Custody local CA", now=now)
        _write(files.ca_key, ca.key_pem, private=True)
        _write(files.ca_cert, ca.cert_pem, private=False)
        for stale in (files.server_cert, files.client_cert):
            stale.unlink(missing_ok=True)  # signed by a CA that is gone
        notes.append(f"created a local CA in {files.directory}")
    server_request = CertificateRequest(
        common_name="custody-server", server=True, client=False,
        **_server_names(listen_host, server_names),
    )
    if _needs_issue(files.server_cert, now=now, request=server_request):
        _write_pair(files.server_cert, files.server_key,
                    issue_certificate(ca, server_request, now=now))
        notes.append(f"issued the server certificate {files.server_cert}")
    client_request = CertificateRequest(common_name="custody-local-client",
                                        uri_names=(LOCAL_CLIENT_IDENTITY,))
    if _needs_issue(files.client_cert, now=now, request=client_request):
        _write_pair(files.client_cert, files.client_key,
                    issue_certificate(ca, client_request, now=now))
        notes.append(f"issued the local client certificate {files.client_cert} "
                     f"(identity {LOCAL_CLIENT_IDENTITY})")
    return notes


def _server_names(listen_host: str,
                  configured: Sequence[str] = ()) -> dict[str, tuple[str, ...]]:
    """localhost, 127.0.0.1, ::1, the listen host, and the configured names; with none
    configured, the host name too (not with them: replicas sharing the certificate have
    host names of their own, and each would issue it again without the others')."""
    dns = ["localhost"]
    ips = ["127.0.0.1", "::1"]
    host_name = socket.gethostname()
    names = list(configured)
    if not configured and host_name:
        names.append(host_name)
    host = listen_host.strip("[]")
    if host and host not in ("0.0.0.0", "::"):  # noqa: S104 (comparing, not binding)
        names.append(host)
    for name in names:
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            if name not in dns:
                dns.append(name)
        else:
            if str(address) not in ips:
                ips.append(str(address))
    return {"dns_names": tuple(dns), "ip_addresses": tuple(ips)}


def _needs_issue(cert_file: Path, *, now: datetime, request: CertificateRequest) -> bool:
    if not cert_file.exists() or not cert_file.with_name(
            cert_file.stem + "-key.pem").exists():
        return True
    try:
        certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return True
    if certificate.not_valid_after_utc - RENEW_BEFORE < now:
        return True
    have_dns = set(sans.get_values_for_type(x509.DNSName))
    have_uri = set(sans.get_values_for_type(x509.UniformResourceIdentifier))
    have_ips = {str(a) for a in sans.get_values_for_type(x509.IPAddress)}
    wanted_ips = {str(ipaddress.ip_address(a)) for a in request.ip_addresses}
    return not (set(request.dns_names) <= have_dns and set(request.uri_names) <= have_uri
                and wanted_ips <= have_ips)


def _write_pair(cert_file: Path, key_file: Path, issued: IssuedCertificate) -> None:
    _write(key_file, issued.key_pem, private=True)
    _write(cert_file, issued.cert_pem, private=False)


def _write(path: Path, data: bytes, *, private: bool) -> None:
    """Write atomically; private files are created 0600 (never briefly world-readable)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())



def issue_client_files(state_dir: Path, *, out: Path, request: CertificateRequest,
                       lifetime: timedelta = LEAF_LIFETIME) -> tuple[Path, Path]:
    """Issue a client certificate from the local CA into OUT.pem and OUT-key.pem (0600)."""
    files = LocalTls(local_tls_dir(state_dir))
    issued = issue_certificate(files.authority(), request, now=datetime.now(UTC),
                               lifetime=lifetime)
    cert_file, key_file = out.with_name(out.name + ".pem"), out.with_name(out.name + "-key.pem")
    _write_pair(cert_file, key_file, issued)
    return cert_file, key_file


def revoke_local_files(state_dir: Path, *, crl_file: Path, certificates: Iterable[Path]) -> int:
    """Add the serials of `certificates` to `crl_file` (created if missing), a CRL from
    the local CA; the serials it already lists stay. Returns how many it lists."""
    ca = LocalTls(local_tls_dir(state_dir)).authority()
    serials: set[int] = set()
    if crl_file.exists():
        existing = x509.load_pem_x509_crl(crl_file.read_bytes())
        if not existing.is_signature_valid(ca.private_key.public_key()):
            raise ValueError(f"{crl_file} is not a CRL of the local CA in {state_dir}")
        serials = {entry.serial_number for entry in existing}
    for path in certificates:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
        if certificate.issuer != ca.certificate.subject:
            raise ValueError(f"{path} was not issued by the local CA in {state_dir}")
        serials.add(certificate.serial_number)
    _write(crl_file, issue_crl(ca, revoked=serials, now=datetime.now(UTC)), private=False)
    return len(serials)


def main(argv: list[str] | None = None) -> int:
    """`python -m custody_server.tls_bootstrap issue-client ...`: one more client
    certificate from the embedded default's local CA (e.g. for a build agent);
    `... revoke ...`: a CRL from the local CA for `[tls] crl_file`."""
    parser = argparse.ArgumentParser(prog="python -m custody_server.tls_bootstrap")
    commands = parser.add_subparsers(dest="command", required=True)
    issue = commands.add_parser("issue-client", help="issue a client certificate")
    issue.add_argument("--state-dir", type=Path, required=True)
    issue.add_argument("--out", type=Path, required=True,
                       help="writes OUT.pem and OUT-key.pem (mode 0600)")
    issue.add_argument("--uri", action="append", default=[], help="URI SAN (a SPIFFE id)")
    issue.add_argument("--dns", action="append", default=[], help="DNS SAN")
    issue.add_argument("--cn", default="", help="subject common name")
    issue.add_argument("--days", type=int, default=LEAF_LIFETIME.days)
    revoke = commands.add_parser(
        "revoke", help="add client certificates to a CRL of the local CA (tls.crl_file); "
                       "then kill -HUP the server")
    revoke.add_argument("--state-dir", type=Path, required=True)
    revoke.add_argument("--crl", type=Path, required=True,
                        help="the CRL file (PEM) to write; the serials it lists stay")
    revoke.add_argument("certificates", type=Path, nargs="*",
                        help="certificates (PEM) to revoke; none: renew the CRL's dates")
    options = parser.parse_args(argv)
    if options.command == "revoke":
        try:
            count = revoke_local_files(options.state_dir, crl_file=options.crl,
                                       certificates=options.certificates)
        except (OSError, ValueError) as error:
            print(f"tls_bootstrap: {error}", file=sys.stderr)
            return 2
        print(f"{options.crl}: {count} revoked certificate(s)")
        return 0
    if not (options.uri or options.dns or options.cn):
        parser.error("give --uri, --dns or --cn: the identity the policy will name")
    try:
        cert_file, key_file = issue_client_files(
            options.state_dir, out=options.out, lifetime=timedelta(days=options.days),
            request=CertificateRequest(common_name=options.cn, uri_names=tuple(options.uri),
                                       dns_names=tuple(options.dns)))
    except (OSError, ValueError) as error:
        print(f"tls_bootstrap: {error}", file=sys.stderr)
        return 2
    print(f"{cert_file}\n{key_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
