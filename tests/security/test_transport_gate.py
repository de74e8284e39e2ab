"""The transport gate (issue 14 items 1, 3, 6), through real servers with mTLS:

- the identity comes from the certificate's own bytes: a NUL (or any control character)
  in a URI SAN, a DNS SAN or the CN is refused, where gRPC's auth context would have
  cut the name at the NUL and admitted the prefix;
- a request that does not parse goes through the certificate check, the rate limit and
  the audit like any other, and gets INVALID_ARGUMENT with a request id;
- a CRL revokes certificates, checked on every call and re-read on SIGHUP.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtensionOID
from policy_support import grant_all, policy
from security_support import AccessServer, ClientCert, Pki, ServerProcess, StartServer

from custody_api.v1 import custody_pb2 as pb
from custody_server.audit_events import AuditEvent
from custody_server.config import ServerConfig, TlsConfig
from custody_server.errors import ConfigError
from custody_server.policy.errors import IdentityError, RevocationError
from custody_server.policy.identity import identity_from_certificate
from custody_server.policy.revocation import parse_crl
from custody_server.tls_bootstrap import (
    CertificateAuthority,
    CertificateRequest,
    LocalTls,
    ensure_local_tls,
    issue_client_files,
    issue_crl,
    local_tls_dir,
)
from custody_server.tls_bootstrap import main as tls_main

ADMIN = "spiffe://custody.local/client/local-admin"
LIMITED = "spiffe://example.test/limited"
STRANGER = "spiffe://example.test/stranger"
EVERYTHING = grant_all(ADMIN, "dns:admin.example", "cn:admin", LIMITED)
POLICY = policy(EVERYTHING, rate=(100000.0, 100000), rates={LIMITED: (2.0, 2)})
SIGN_LINK = "/custody.v1.Custody/SignLink"
CREATE_KEY = "/custody.v1.KeyAdmin/CreateKey"
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
SIGNING_ACTIONS = frozenset({"sign-link", "sign-layout", "key-create"})


def _serial(client: ClientCert) -> str:
    return format(x509.load_pem_x509_certificate(client.cert_pem).serial_number, "X")


def _raw(channel: grpc.Channel, method: str) -> Any:
    """A callable that sends bytes as they are and returns the response's bytes."""
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def _raw_call(server: AccessServer, client: ClientCert, method: str, body: bytes
              ) -> grpc.RpcError:
    """Send `body` as the request's bytes; the error the server answered with."""
    with pytest.raises(grpc.RpcError) as caught:
        _raw(server.channel(client), method)(body, timeout=20)
    return caught.value


def _details(error: grpc.RpcError) -> str:
    return str(error.details())


def _request_id(error: grpc.RpcError) -> str:
    trailers = {str(k): str(v) for k, v in cast(Any, error.trailing_metadata())}
    return trailers["x-request-id"]


def _signed_anything(server: AccessServer) -> list[AuditEvent]:
    return [e for e in server.audit.events
            if e.action in SIGNING_ACTIONS and e.outcome == "success"]


# 1. Identities with a NUL or another control character.

NUL_NAMES = [
    pytest.param({"uri": (f"{ADMIN}\0.evil.example.com",)}, "URI SAN", id="uri-san"),
    pytest.param({"dns": ("admin.example\0.evil.example.com",)}, "DNS SAN", id="dns-san"),
    pytest.param({"cn": "admin\0.evil.example.com"}, "common name", id="common-name"),
]


@pytest.mark.parametrize(("names", "kind"), NUL_NAMES)
def test_a_nul_in_a_certificate_name_is_unauthenticated(
        start_server: StartServer, pki: Pki, names: dict[str, Any], kind: str) -> None:
    server = start_server(POLICY)
    # The same names without what follows the NUL are admitted (the test can fail).
    clean = pki.client(**{k: (tuple(v.split("\0")[0] for v in value) if k != "cn"  # type: ignore[arg-type]
                              else value.split("\0")[0]) for k, value in names.items()})
    assert server.custody(clean).SignLink(pb.SignLinkRequest(step_name="ok"), timeout=20)
    evil = pki.client(**names)
    before = len(_signed_anything(server))
    for method, body in ((SIGN_LINK, pb.SignLinkRequest(step_name="evil")),
                         (CREATE_KEY, pb.CreateKeyRequest(alias="evil"))):
        error = _raw_call(server, evil, method, body.SerializeToString())
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert f"{kind} '" in _details(error)
        assert "\\x00.evil.example.com' contains an unprintable character" in _details(error)
        assert REQUEST_ID.match(_request_id(error))
    assert len(_signed_anything(server)) == before  # no signature, no key
    assert not server.keys.exists("evil")
    denials = [e for e in server.denials() if e.details.get("certificate_serial")
               == _serial(evil)]
    assert [(e.action, e.outcome, e.details["rpc"], e.details["caller"]) for e in denials] \
        == [("authenticate", "failure", "SignLink", ""),
            ("authenticate", "failure", "CreateKey", "")]
    assert all("\\x00" in e.reason and "\0" not in e.reason for e in denials)


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _general_names(*names: tuple[int, bytes]) -> bytes:
    """GeneralNames, DER by hand: (context tag number, raw bytes) each, so that a test can
    put in bytes no certificate builder would (an IA5String that is not ASCII)."""
    body = b"".join(bytes([0x80 | tag]) + _der_length(len(raw)) + raw for tag, raw in names)
    return b"\x30" + _der_length(len(body)) + body


def _certificate_with_san(ca: CertificateAuthority, san_der: bytes) -> x509.Certificate:
    key = ca.private_key  # any key does for a certificate that is only parsed
    now = datetime.now(UTC)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.UnrecognizedExtension(
                ExtensionOID.SUBJECT_ALTERNATIVE_NAME, san_der), critical=True)
            .sign(key, hashes.SHA256()))


@pytest.mark.parametrize(("names", "message"), [
    ([(6, ADMIN.encode() + b"\0.evil.example.com")], r"URI SAN 'spiffe://custody.local/"
                                                      r"client/local-admin\x00.evil"),
    ([(2, b"admin.example\0x")], r"DNS SAN 'admin.example\x00x'"),
    ([(6, b"spiffe://a/\x1b[31m")], r"'spiffe://a/\x1b[31m'"),
    ([(6, b"spiffe://a/\xff")], "cannot be read"),  # not ASCII: no IA5String
    ([(6, b"spiffe://a/ok"), (2, b"d\0")], r"DNS SAN 'd\x00'"),  # an unused name too
])
def test_hand_encoded_names(pki: Pki, names: list[tuple[int, bytes]], message: str) -> None:
    certificate = _certificate_with_san(pki.ca, _general_names(*names))
    with pytest.raises(IdentityError) as caught:
        identity_from_certificate(certificate)
    assert message in str(caught.value)


# 3. Requests that do not deserialize.

GARBAGE = {  # request bytes -> what the parser says about them
    b"\xff\xff\xff\xff": "Wire format was corrupt",
    b"\x0a\x02\xff\xfe": "String field had bad UTF-8",  # step_name (field 1)
    b"\x0a\xff\xff\xff\xff\x0f": "",  # a length past the end
}


@pytest.mark.parametrize(("body", "reason"), GARBAGE.items())
def test_malformed_request_from_a_known_identity(start_server: StartServer, pki: Pki,
                                                 body: bytes, reason: str) -> None:
    server = start_server(POLICY)
    admin = pki.client(uri=(ADMIN,))
    error = _raw_call(server, admin, SIGN_LINK, body)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _details(error).startswith("malformed request: Error parsing message with type "
                                      "'custody.v1.SignLinkRequest'")
    assert reason in _details(error)
    assert REQUEST_ID.match(_request_id(error))
    [entry] = [e for e in server.audit.events if e.action == "decode-request"]
    assert (entry.category, entry.outcome, entry.details["caller"], entry.details["rpc"],
            entry.details["certificate_serial"]) == (
        "api", "failure", ADMIN, "SignLink", _serial(admin))
    assert entry.reason == _details(error)
    assert _signed_anything(server) == []
    # The same server still takes a well-formed request on the same path.
    ok = _raw(server.channel(admin), SIGN_LINK)(
        pb.SignLinkRequest(step_name="fine").SerializeToString(), timeout=20)
    assert pb.SignLinkResponse.FromString(ok).file_name.startswith("fine.")


def test_malformed_request_from_an_unknown_identity(start_server: StartServer,
                                                    pki: Pki) -> None:
    """Refused as unknown before the request is read, and audited, every time."""
    server = start_server(POLICY)
    stranger = pki.client(uri=(STRANGER,))
    for method in (SIGN_LINK, CREATE_KEY):
        for body in GARBAGE:
            error = _raw_call(server, stranger, method, body)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "is not in the policy" in _details(error)
            assert REQUEST_ID.match(_request_id(error))
    denials = server.denials()
    assert len(denials) == 6
    assert {(e.action, e.details["caller"], e.details["certificate_serial"])
            for e in denials} == {("authenticate", STRANGER, _serial(stranger))}
    assert [e for e in server.audit.events if e.action == "decode-request"] == []


def test_malformed_requests_are_rate_limited(start_server: StartServer, pki: Pki) -> None:
    """2 calls/s, burst 2: of 50 malformed calls most are RESOURCE_EXHAUSTED, and every
    one is accounted for in the audit trail."""
    server = start_server(POLICY)
    limited = pki.client(uri=(LIMITED,))
    codes = []
    started = datetime.now(UTC)
    for _ in range(50):
        codes.append(_raw_call(server, limited, SIGN_LINK, b"\xff\xff\xff\xff").code())
    elapsed = (datetime.now(UTC) - started).total_seconds()
    parsed = codes.count(grpc.StatusCode.INVALID_ARGUMENT)
    refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert parsed + refused == 50
    assert 2 <= parsed <= 2 + 2 * elapsed + 1  # the burst, then 2/s
    assert refused >= 50 - (3 + 2 * elapsed)
    decoded = [e for e in server.audit.events if e.action == "decode-request"]
    assert len(decoded) == parsed
    server.running.access.report_pending_refusals()
    rate = [e for e in server.audit.events if e.action == "rate-limit"]
    assert sum(e.details["refusals"] for e in rate) == refused
    assert {e.details["caller"] for e in rate} == {LIMITED}
    assert _signed_anything(server) == []


def test_health_and_reflection_still_answer(start_server: StartServer, pki: Pki) -> None:
    """Only Custody and KeyAdmin take raw bytes; health and reflection parse as before."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    server = start_server(POLICY)
    channel = server.channel(pki.client(uri=(STRANGER,)))
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=20).status == \
        health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    [answer] = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=20)
    names = {s.name for s in answer.list_services_response.service}
    assert {"custody.v1.Custody", "custody.v1.KeyAdmin"} <= names


# 6. Revocation.

def _write_crl(path: Path, ca: CertificateAuthority, *clients: ClientCert,
               der: bool = False) -> Path:
    pem = issue_crl(ca, revoked=[int(_serial(c), 16) for c in clients], now=datetime.now(UTC))
    path.write_bytes(x509.load_pem_x509_crl(pem).public_bytes(serialization.Encoding.DER)
                     if der else pem)
    return path


def test_crl_parsing_rules(pki: Pki) -> None:
    now = datetime.now(UTC)
    agent = pki.client(uri=("spiffe://example.test/agent",))
    pem = issue_crl(pki.ca, revoked=[int(_serial(agent), 16)], now=now)
    crl = parse_crl(pem, trusted=[pki.ca.certificate], source="t")
    der = x509.load_pem_x509_crl(pem).public_bytes(serialization.Encoding.DER)
    assert parse_crl(der, trusted=[pki.ca.certificate], source="t").serials == crl.serials
    assert crl.serials == {int(_serial(agent), 16)} and not crl.expired(now)
    assert crl.expired(now + timedelta(days=31))

    other = CertificateAuthority.create(common_name="Custody test CA", now=now)  # same name
    with pytest.raises(RevocationError, match="not signed by a certificate of the client CA"):
        parse_crl(issue_crl(other, revoked=[1], now=now), trusted=[pki.ca.certificate],
                  source="t")
    with pytest.raises(RevocationError, match="not a certificate revocation list"):
        parse_crl(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
                  trusted=[pki.ca.certificate], source="t")
    with pytest.raises(RevocationError, match="not a certificate revocation list"):
        parse_crl(pki.ca.cert_pem, trusted=[pki.ca.certificate], source="t")

    def crl_with(extension: x509.ExtensionType, *, critical: bool) -> bytes:
        built = (x509.CertificateRevocationListBuilder()
                 .issuer_name(pki.ca.certificate.subject)
                 .last_update(now).next_update(now + timedelta(days=1))
                 .add_extension(extension, critical=critical)
                 .sign(pki.ca.private_key, hashes.SHA256()))
        return built.public_bytes(serialization.Encoding.PEM)

    with pytest.raises(RevocationError, match="delta CRLs are not supported"):
        parse_crl(crl_with(x509.DeltaCRLIndicator(1), critical=True),
                  trusted=[pki.ca.certificate], source="t")
    indirect = x509.IssuingDistributionPoint(
        full_name=None, relative_name=None, only_contains_user_certs=False,
        only_contains_ca_certs=False, only_some_reasons=None, indirect_crl=True,
        only_contains_attribute_certs=False)
    with pytest.raises(RevocationError, match="indirect CRLs are not supported"):
        parse_crl(crl_with(indirect, critical=True), trusted=[pki.ca.certificate],
                  source="t")
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"),
                                         b"\x05\x00")
    with pytest.raises(RevocationError, match=r"critical extension .*1\.3\.6\.1\.4\.1\.99999"):
        parse_crl(crl_with(unknown, critical=True), trusted=[pki.ca.certificate], source="t")
    parse_crl(crl_with(unknown, critical=False), trusted=[pki.ca.certificate], source="t")


def test_a_revoked_certificate_is_unauthenticated(start_server: StartServer, pki: Pki,
                                                  tmp_path: Path) -> None:
    admin, stolen = pki.client(uri=(ADMIN,)), pki.client(uri=(ADMIN,))
    crl = _write_crl(tmp_path / "clients.crl", pki.ca, stolen, der=True)
    server = start_server(POLICY, config_changes={"tls": TlsConfig(
        cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert, crl_file=crl)})
    assert server.custody(admin).SignLink(pb.SignLinkRequest(step_name="ok"), timeout=20)
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as caught:
            server.custody(stolen).SignLink(pb.SignLinkRequest(step_name="stolen"), timeout=20)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert f"(serial {_serial(stolen)}) is revoked" in str(caught.value.details())
    assert [e.details["step"] for e in _signed_anything(server)] == ["ok"]
    denials = server.denials()
    assert [(e.action, e.details["caller"], e.details["certificate_serial"]) for e in denials] \
        == [("authenticate", ADMIN, _serial(stolen))] * 2


def test_a_revoked_certificate_has_a_bucket_of_its_own(start_server: StartServer, pki: Pki,
                                                       tmp_path: Path) -> None:
    """Its refusals are audited at the default rate (here 2/s, burst 2), and the identity
    it names keeps its own rate (here 100,000/s) for its other certificates."""
    revoked_rates = policy(EVERYTHING, rate=(2.0, 2),
                           rates={ADMIN: (100000.0, 100000), LIMITED: (2.0, 2)})
    admin, stolen = pki.client(uri=(ADMIN,)), pki.client(uri=(ADMIN,))
    crl = _write_crl(tmp_path / "clients.crl", pki.ca, stolen)
    server = start_server(revoked_rates, config_changes={"tls": TlsConfig(
        cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert, crl_file=crl)})
    body = pb.SignLinkRequest(step_name="x").SerializeToString()
    started = datetime.now(UTC)
    codes = [_raw_call(server, stolen, SIGN_LINK, body).code() for _ in range(30)]
    elapsed = (datetime.now(UTC) - started).total_seconds()
    refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    denied = codes.count(grpc.StatusCode.UNAUTHENTICATED)
    assert denied + refused == 30 and 2 <= denied <= 2 + 2 * elapsed + 1
    for _ in range(10):  # the identity's own rate is untouched
        assert server.custody(admin).SignLink(pb.SignLinkRequest(step_name="ok"), timeout=20)
    assert len(server.denials()) == denied
    server.running.access.report_pending_refusals()
    rate = [e for e in server.audit.events if e.action == "rate-limit"]
    assert sum(e.details["refusals"] for e in rate) == refused
    assert {e.details["certificate_serial"] for e in rate} == {_serial(stolen)}


@pytest.mark.parametrize("content", [b"", b"not a crl", b"other-ca"])
def test_a_bad_crl_stops_the_start(keystore: Any, pki: Pki, tmp_path: Path,
                                   content: bytes) -> None:
    from custody_server.app import build_server
    from custody_server.audit_events import MemoryAuditSink
    from custody_server.lifecycle.keyring import KeyRing

    crl = tmp_path / "clients.crl"
    if content == b"other-ca":
        other = CertificateAuthority.create(common_name="other", now=datetime.now(UTC))
        crl.write_bytes(issue_crl(other, revoked=[1], now=datetime.now(UTC)))
    else:
        crl.write_bytes(content)
    (tmp_path / "policy.toml").write_text(POLICY)
    config = ServerConfig(listen="127.0.0.1:0", state_dir=tmp_path, tls=TlsConfig(
        cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert, crl_file=crl))
    with pytest.raises(ConfigError, match=r"tls\.crl_file"):
        build_server(config=config, keys=KeyRing(keystore), audit=MemoryAuditSink())
    with pytest.raises(ConfigError, match=r"cannot be combined with tls\.crl_file"):
        dataclasses.replace(config, tls=TlsConfig(insecure=True, crl_file=crl))


def _audit_entries(state: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted((state / "audit").glob("audit*.log"))
            for line in path.read_bytes().splitlines()]


def _sign(server: ServerProcess, files: tuple[Path, Path]) -> grpc.StatusCode:
    local = LocalTls(local_tls_dir(server.state_dir))
    credentials = grpc.ssl_channel_credentials(local.ca_cert.read_bytes(),
                                               files[1].read_bytes(), files[0].read_bytes())
    with grpc.secure_channel(server.address, credentials) as channel:
        try:
            _raw(channel, SIGN_LINK)(pb.SignLinkRequest(step_name="build")
                                     .SerializeToString(), timeout=20)
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()
            return code
    return grpc.StatusCode.OK


def test_revocation_before_and_after_sighup(tmp_path: Path) -> None:
    """A real server process on the embedded default's local CA, with [tls] crl_file
    made by `tls_bootstrap revoke`: revoked at start, revoked by a reload, and a bad
    CRL at reload that leaves the old one in force; all in the audit trail."""
    state = tmp_path / "state"
    ensure_local_tls(state)  # what the first start would make; the CRL needs the CA first
    agents = {name: issue_client_files(state, out=tmp_path / name, request=CertificateRequest(
        "", uri_names=(f"spiffe://example.test/{name}",))) for name in ("first", "second")}
    serials = {name: format(x509.load_pem_x509_certificate(files[0].read_bytes())
                            .serial_number, "X") for name, files in agents.items()}
    (state / "policy.toml").write_text(
        'version = 1\n[[grant]]\nidentities = ["spiffe://example.test/first", '
        '"spiffe://example.test/second"]\nrpcs = ["SignLink"]\nlink_keys = ["build"]\n'
        'steps = ["build"]\n')
    crl = state / "tls" / "clients.crl"
    assert tls_main(["revoke", "--state-dir", str(state), "--crl", str(crl),
                     str(agents["first"][0])]) == 0
    config = tmp_path / "custody.toml"
    config.write_text(f'[tls]\ncrl_file = "{crl}"\n')
    server = ServerProcess(state, args=("--config", str(config)))
    try:
        server.wait_for(rb"certificate revocation list .*clients\.crl \(1 revoked")
        assert _sign(server, agents["first"]) == grpc.StatusCode.UNAUTHENTICATED
        assert _sign(server, agents["second"]) == grpc.StatusCode.OK

        assert tls_main(["revoke", "--state-dir", str(state), "--crl", str(crl),
                         str(agents["second"][0])]) == 0
        mark = len(server.stderr)
        server.signal(signal.SIGHUP)
        server.wait_for(rb"CRL reloaded \(sha256 [0-9a-f]{64}\)", after=mark)
        assert _sign(server, agents["second"]) == grpc.StatusCode.UNAUTHENTICATED
        assert _sign(server, agents["first"]) == grpc.StatusCode.UNAUTHENTICATED

        other = CertificateAuthority.create(common_name="Custody local CA",
                                            now=datetime.now(UTC))
        crl.write_bytes(issue_crl(other, revoked=[], now=datetime.now(UTC)))
        mark = len(server.stderr)
        server.signal(signal.SIGHUP)
        server.wait_for(rb"CRL NOT reloaded, the old one stays: .*not signed by a certificate "
                        rb"of the client CA", after=mark)
        assert _sign(server, agents["second"]) == grpc.StatusCode.UNAUTHENTICATED
        assert server.stop() == 0
    finally:
        server.stop()
    entries = _audit_entries(state)
    refused = [(e["custody"]["certificate_serial"], e["user"]["name"]) for e in entries
               if e["event"]["action"] == "authenticate"]
    assert refused == [(serials["first"], "spiffe://example.test/first"),
                       (serials["second"], "spiffe://example.test/second"),
                       (serials["first"], "spiffe://example.test/first"),
                       (serials["second"], "spiffe://example.test/second")]
    assert all("is revoked" in e["event"]["reason"] for e in entries
               if e["event"]["action"] == "authenticate")
    reloads = [(e["event"]["outcome"], e["custody"]["revoked_serials"]) for e in entries
               if e["event"]["action"] == "crl-reload"]
    assert reloads == [("success", 2), ("failure", 2)]
    signed = [e for e in entries if e["event"]["action"] == "sign-link"]
    assert [e["user"]["name"] for e in signed] == ["spiffe://example.test/second"]


def test_access_control_uses_the_rate_limiter_it_is_given(pki: Pki) -> None:
    """An empty RateLimiter is falsy (it has a length): it must still be the one used."""
    from custody_server.audit_events import MemoryAuditSink
    from custody_server.policy import PolicyStore, RateLimiter, RequestLimits, parse_policy
    from custody_server.policy.rpcs import RPC_CATALOG
    from custody_server.transport.authz import AccessControl, AccessRefused, KeyDefaults

    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    access = AccessControl(
        policy=PolicyStore(parse_policy(POLICY.encode(), source="test")),
        audit=MemoryAuditSink(), limits=RequestLimits(), rate_limiter=limiter,
        defaults=KeyDefaults(link_key="build", layout_key="owner"))
    client = pki.client(uri=(LIMITED,))  # 2/s, burst 2
    auth = {"transport_security_type": [b"ssl"], "x509_pem_cert": [client.cert_pem]}
    rpc = RPC_CATALOG[SIGN_LINK]
    body = pb.SignLinkRequest(step_name="s").SerializeToString()

    def admit() -> Any:
        return access.admit(rpc, body, auth=auth, peer="ipv4:127.0.0.1:1",
                            parse=pb.SignLinkRequest.FromString)

    admit(), admit()
    with pytest.raises(AccessRefused):
        admit()
    now[0] += 0.5  # one token, on the given clock
    identity, request = admit()
    assert (identity.value, request.step_name) == (LIMITED, "s")
    assert len(limiter) == 1
