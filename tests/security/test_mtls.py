"""mTLS by default: the local CA and certificates, what the handshake refuses, identities
from certificates, the configuration rules, and the explicit plaintext mode."""

from __future__ import annotations

import json
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from policy_support import grant, policy
from security_support import Pki, StartServer

from custody_api.v1 import custody_pb2 as pb
from custody_api.v1 import custody_pb2_grpc
from custody_client.local_tls import find_local_tls
from custody_server.audit_events import MemoryAuditSink
from custody_server.config import (
    Limits,
    PolicyConfig,
    ServerConfig,
    TlsConfig,
    config_from_dict,
)
from custody_server.errors import ConfigError
from custody_server.policy import ANONYMOUS, identity_from_auth_context
from custody_server.policy.errors import IdentityError
from custody_server.tls_bootstrap import (
    LOCAL_CLIENT_IDENTITY,
    CertificateAuthority,
    CertificateRequest,
    LocalTls,
    ensure_local_tls,
    issue_certificate,
)

OPEN_POLICY = policy(grant([LOCAL_CLIENT_IDENTITY, "spiffe://example.test/ok"], ["ListKeys"]))


def _sans(path: Path) -> x509.SubjectAlternativeName:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_local_tls_material_is_made_once_private_and_complete(tmp_path: Path) -> None:
    files, notes = ensure_local_tls(tmp_path)
    assert len(notes) == 3  # CA, server, client
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
    for key in (files.ca_key, files.server_key, files.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    server = _sans(files.server_cert)
    assert {"localhost"} <= set(server.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "::1"} <= {str(a) for a in server.get_values_for_type(x509.IPAddress)}
    assert _sans(files.client_cert).get_values_for_type(
        x509.UniformResourceIdentifier) == [LOCAL_CLIENT_IDENTITY]
    before = {p: p.read_bytes() for p in files.directory.iterdir()}
    again, notes = ensure_local_tls(tmp_path)
    assert notes == [] and again == files
    assert {p: p.read_bytes() for p in files.directory.iterdir()} == before


def test_leaves_are_renewed_before_they_expire_and_for_new_names(tmp_path: Path) -> None:
    files, _ = ensure_local_tls(tmp_path)
    ca = files.ca_cert.read_bytes()
    later = datetime.now(UTC) + timedelta(days=720)  # inside the 30-day renewal margin
    _, notes = ensure_local_tls(tmp_path, now=later)
    assert [n.split()[1] for n in notes] == ["the", "the"]  # server and client re-issued
    assert files.ca_cert.read_bytes() == ca  # the CA is kept
    _, notes = ensure_local_tls(tmp_path, listen_host="custody.internal", now=later)
    assert len(notes) == 1 and "server" in notes[0]
    assert "custody.internal" in _sans(files.server_cert).get_values_for_type(x509.DNSName)
    files.ca_key.unlink()  # a lost CA key: start over, the old leaves go with it
    _, notes = ensure_local_tls(tmp_path)
    assert len(notes) == 3 and files.ca_cert.read_bytes() != ca


def test_the_cli_finds_what_the_server_made(service: Any) -> None:
    server_side = LocalTls(service.tls.state_dir / "tls")
    found = find_local_tls({"CUSTODY_STATE_DIR": str(service.tls.state_dir)})
    assert found is not None
    assert (found.ca, found.cert, found.key) == (server_side.ca_cert, server_side.client_cert,
                                                 server_side.client_key)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=found.ca.read_bytes(), private_key=found.key.read_bytes(),
        certificate_chain=found.cert.read_bytes())
    for target in (service.address, service.address.replace("127.0.0.1", "localhost")):
        with grpc.secure_channel(target, credentials) as channel:
            stub = custody_pb2_grpc.KeyAdminStub(channel)  # type: ignore[no-untyped-call]
            assert stub.ListKeys(pb.ListKeysRequest(), timeout=10).keys
    assert find_local_tls({"CUSTODY_STATE_DIR": str(service.tls.state_dir / "nowhere")}) is None


def _refused(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    code: grpc.StatusCode = caught.value.code()
    return code


def test_the_handshake_refuses_what_has_no_trusted_client_certificate(
        start_server: StartServer, pki: Pki) -> None:
    server = start_server(OPEN_POLICY)
    good = pki.client(uri=("spiffe://example.test/ok",))
    assert server.key_admin(good).ListKeys(pb.ListKeysRequest(), timeout=10).keys is not None

    now = datetime.now(UTC)
    other_ca = CertificateAuthority.create(common_name="someone else", now=now)
    stranger = issue_certificate(other_ca, CertificateRequest(
        common_name="x", uri_names=("spiffe://example.test/ok",)), now=now)
    expired = issue_certificate(pki.ca, CertificateRequest(
        common_name="x", uri_names=("spiffe://example.test/ok",)),
        now=now - timedelta(days=10), lifetime=timedelta(days=1))
    attempts = {
        "no client certificate": grpc.ssl_channel_credentials(pki.ca.cert_pem),
        "certificate from another CA": grpc.ssl_channel_credentials(
            pki.ca.cert_pem, stranger.key_pem, stranger.cert_pem),
        "expired certificate": grpc.ssl_channel_credentials(
            pki.ca.cert_pem, expired.key_pem, expired.cert_pem),
    }
    for credentials in attempts.values():
        with grpc.secure_channel(server.address, credentials) as channel:
            stub = custody_pb2_grpc.KeyAdminStub(channel)  # type: ignore[no-untyped-call]
            assert _refused(lambda s=stub: s.ListKeys(pb.ListKeysRequest(), timeout=5)) \
                == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(server.address) as channel:
        stub = custody_pb2_grpc.KeyAdminStub(channel)  # type: ignore[no-untyped-call]
        assert _refused(lambda: stub.ListKeys(pb.ListKeysRequest(), timeout=5)) \
            == grpc.StatusCode.UNAVAILABLE
    assert server.denials() == []  # nothing reached the service: no call, nothing to audit


def _certificate_auth(pki: Pki, request: CertificateRequest) -> dict[str, list[bytes]]:
    """gRPC's auth context for a TLS peer with a certificate from the test CA."""
    issued = issue_certificate(pki.ca, request, now=datetime.now(UTC))
    return {"transport_security_type": [b"ssl"], "x509_pem_cert": [issued.cert_pem],
            # what gRPC itself reads from a certificate: never used for the identity
            "peer_uri": [b"spiffe://a/b"], "x509_common_name": [b"gRPC's own"]}


@pytest.mark.parametrize(("auth", "expected"), [
    ({}, ANONYMOUS),
    ({"transport_security_type": [b"insecure"]}, ANONYMOUS),
    ({"transport_security_type": [b"ssl"], "peer_uri": [b"spiffe://a/b"]},
     "presented no certificate"),
])
def test_identity_without_a_certificate(auth: dict[str, list[bytes]], expected: str) -> None:
    try:
        identity = identity_from_auth_context(auth)
    except IdentityError as error:
        assert expected in str(error)
    else:
        assert identity.value == expected


@pytest.mark.parametrize(("request_", "expected"), [
    (CertificateRequest("cn", uri_names=("spiffe://a/b",), dns_names=("d.example",)),
     "spiffe://a/b"),
    (CertificateRequest("cn", dns_names=("d.example", "e.example")), "dns:d.example"),
    (CertificateRequest("builder"), "cn:builder"),
    (CertificateRequest("", uri_names=("spiffe://a", "spiffe://b")), "2 URI SANs"),
    (CertificateRequest("", uri_names=("dns:d.example",)), "usable scheme"),
    (CertificateRequest("", uri_names=("no-scheme",)), "usable scheme"),
    (CertificateRequest("a\nb"), r"common name 'a\x0ab' contains an unprintable character"),
    (CertificateRequest("cn", uri_names=("spiffe://a/b\0.evil",)),
     r"URI SAN 'spiffe://a/b\x00.evil' contains an unprintable character"),
    # what reorders or hides text is refused as a control is: a right-to-left override
    # would show "builder.live" in a log for the name the policy sees
    (CertificateRequest("builder\u202eevil."),
     r"common name 'builder\u202eevil.' contains an unprintable character"),
    (CertificateRequest("build\u200bagent"), r"'build\u200bagent'"),
    # any name with a control character refuses the certificate, also one not used
    (CertificateRequest("c\x85n", uri_names=("spiffe://a/b",)), r"'c\x85n'"),
    (CertificateRequest("", uri_names=("spiffe://a/b",), dns_names=("d\x7f",)), r"'d\x7f'"),
    (CertificateRequest(""), "names no identity"),
])
def test_identity_order_and_refusals(pki: Pki, request_: CertificateRequest,
                                     expected: str) -> None:
    try:
        identity = identity_from_auth_context(_certificate_auth(pki, request_))
    except IdentityError as error:
        assert expected in str(error)
    else:
        assert identity.value == expected


@pytest.mark.parametrize(("data", "message"), [
    ({"tls": {"cert": "s.pem"}}, "tls.cert is set but tls.client_ca is not"),
    ({"tls": {"cert": "s.pem", "key": "k.pem"}}, "tls.client_ca is not"),
    ({"tls": {"insecure": True, "cert": "s.pem"}}, "cannot be combined"),
    ({"tls": {"insecure": "yes"}}, "tls.insecure must be true or false"),
    ({"policy": {"file": "p.toml", "reload": True}}, "unknown key(s) in [policy]: reload"),
    ({"limits": {"max_json_depth": 65}}, "at most 64"),
    ({"limits": {"max_layout_bytes": 0}}, "limits.max_layout_bytes must be at least 1"),
])
def test_configuration_mistakes_are_refused(data: dict[str, Any], message: str,
                                            tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict(data, base=tmp_path)


def test_configuration_defaults_and_paths(tmp_path: Path) -> None:
    config = config_from_dict({"state_dir": "state", "policy": {"file": "p.toml"}},
                              base=tmp_path)
    assert config.tls.enabled and config.tls.local and not config.tls.insecure
    assert config.policy_file == tmp_path / "p.toml"
    assert ServerConfig(state_dir=tmp_path).policy_file == tmp_path / "policy.toml"
    full = config_from_dict({"tls": {"cert": "s.pem", "key": "k.pem", "client_ca": "ca.pem"},
                             "limits": {"max_concurrent_rpcs": 8, "max_json_depth": 10}},
                            base=tmp_path)
    assert full.tls.client_ca == tmp_path / "ca.pem" and not full.tls.local
    assert (full.limits.max_concurrent_rpcs, full.limits.max_json_depth) == (8, 10)


def test_plaintext_only_when_asked_and_callers_are_anonymous(keystore: Any,
                                                             tmp_path: Path) -> None:
    """[tls] insecure = true: plaintext; every caller is "anonymous", which the default
    policy (written on first start) allows, and which the signed link records."""
    from custody_server.app import build_server
    from custody_server.lifecycle.keyring import KeyRing

    config = ServerConfig(listen="127.0.0.1:0", state_dir=tmp_path,
                          tls=TlsConfig(insecure=True), limits=Limits())
    running = build_server(config=config, keys=KeyRing(keystore), audit=MemoryAuditSink())
    try:
        assert (tmp_path / "policy.toml").is_file() and not (tmp_path / "tls").exists()
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]
            response = stub.SignLink(pb.SignLinkRequest(step_name="plain"), timeout=10)
        assert json.loads(response.signed)["signed"]["environment"] == {
            "custody.requested-by": ANONYMOUS}
    finally:
        running.stop(grace=1).wait()


def test_a_missing_policy_file_stops_the_server(keystore: Any, tmp_path: Path) -> None:
    from custody_server.app import build_server
    from custody_server.lifecycle.keyring import KeyRing

    config = ServerConfig(listen="127.0.0.1:0", state_dir=tmp_path,
                          policy=PolicyConfig(file=tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match=r"cannot read policy file .*absent\.toml"):
        build_server(config=config, keys=KeyRing(keystore), audit=MemoryAuditSink())


def test_more_client_certificates_from_the_local_ca(service: Any, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from custody_server.tls_bootstrap import main as tls_main

    out = tmp_path / "agent"
    assert tls_main(["issue-client", "--state-dir", str(service.tls.state_dir), "--out",
                     str(out), "--uri", "spiffe://custody.test/agent"]) == 0
    cert, key = Path(f"{out}.pem"), Path(f"{out}-key.pem")
    assert capsys.readouterr().out.split() == [str(cert), str(key)]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    credentials = grpc.ssl_channel_credentials(service.tls.ca_cert.read_bytes(),
                                               key.read_bytes(), cert.read_bytes())
    with grpc.secure_channel(service.address, credentials) as channel:
        stub = custody_pb2_grpc.KeyAdminStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as caught:  # trusted, but not in the test policy
            stub.ListKeys(pb.ListKeysRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "spiffe://custody.test/agent" in str(caught.value.details())
    with pytest.raises(SystemExit):
        tls_main(["issue-client", "--state-dir", str(service.tls.state_dir), "--out", str(out)])
