"""Access-control test servers: a test CA, client certificates for any identity, and
in-process servers (real SoftHSM token, real mTLS) with a given policy and limits.

The servers are configured as production is: explicit [tls] cert/key/client_ca and an
explicit [policy] file, not the embedded default's local files.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest

from custody_api.v1 import custody_pb2_grpc
from custody_server.audit_events import AuditEvent, MemoryAuditSink
from custody_server.config import Limits, PolicyConfig, ServerConfig, TlsConfig
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.tls_bootstrap import (
    CertificateAuthority,
    CertificateRequest,
    issue_certificate,
)

DENIAL_ACTIONS = frozenset({"authenticate", "authorize"})


@dataclass(frozen=True)
class ClientCert:
    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca: CertificateAuthority
    server_cert: Path
    server_key: Path
    ca_cert: Path

    def client(self, *, uri: tuple[str, ...] = (), dns: tuple[str, ...] = (),
               cn: str = "") -> ClientCert:
        issued = issue_certificate(self.ca, CertificateRequest(
            common_name=cn, uri_names=uri, dns_names=dns), now=datetime.now(UTC))
        return ClientCert(cert_pem=issued.cert_pem, key_pem=issued.key_pem)

    def credentials(self, client: ClientCert | None) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.cert_pem,
            private_key=client.key_pem if client else None,
            certificate_chain=client.cert_pem if client else None,
        )


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    now = datetime.now(UTC)
    ca = CertificateAuthority.create(common_name="Custody test CA", now=now)
    server = issue_certificate(ca, CertificateRequest(
        common_name="custody-test-server", dns_names=("localhost",),
        ip_addresses=("127.0.0.1",), server=True, client=False), now=now)
    paths = {name: directory / name for name in ("server.pem", "server-key.pem", "ca.pem")}
    paths["server.pem"].write_bytes(server.cert_pem)
    paths["server-key.pem"].write_bytes(server.key_pem)
    paths["ca.pem"].write_bytes(ca.cert_pem)
    return Pki(directory=directory, ca=ca, server_cert=paths["server.pem"],
                   server_key=paths["server-key.pem"], ca_cert=paths["ca.pem"])


@dataclass
class AccessServer:
    running: Any  # custody_server.app.RunningServer
    keys: Any  # custody_server.keyring.KeyRing
    audit: MemoryAuditSink
    policy_file: Path
    pki: Pki
    address: str
    _channels: list[grpc.Channel] = field(default_factory=list)

    def channel(self, client: ClientCert | None) -> grpc.Channel:
        channel = grpc.secure_channel(self.address, self.pki.credentials(client))
        self._channels.append(channel)
        return channel

    def custody(self, client: ClientCert | None) -> Any:
        return custody_pb2_grpc.CustodyStub(self.channel(client))  # type: ignore[no-untyped-call]

    def key_admin(self, client: ClientCert | None) -> Any:
        return custody_pb2_grpc.KeyAdminStub(self.channel(client))  # type: ignore[no-untyped-call]

    def denials(self) -> list[AuditEvent]:
        return [e for e in self.audit.events if e.action in DENIAL_ACTIONS]

    def close(self) -> None:
        for channel in self._channels:
            channel.close()
        self.running.stop(grace=1).wait()


StartServer = Callable[..., AccessServer]


@pytest.fixture
def start_server(keystore: Pkcs11KeyStore, pki: Pki, tmp_path: Path
                 ) -> Iterator[StartServer]:
    """start_server(policy_text, **limits) -> AccessServer; stopped after the test."""
    from custody_server.app import build_server
    from custody_server.keyring import KeyRing

    started: list[AccessServer] = []

    def start(policy: str, *, limits: Limits | None = None,
              config_changes: dict[str, Any] | None = None) -> AccessServer:
        keys = KeyRing(keystore)
        for alias in ("build", "owner"):
            if not keys.exists(alias):
                keys.create(alias, KeyAlgorithm.ECDSA_P256)
        state = tmp_path / f"state-{uuid.uuid4().hex[:8]}"
        state.mkdir()
        policy_file = state / "policy.toml"
        policy_file.write_text(policy)
        config = ServerConfig(
            listen="127.0.0.1:0", state_dir=state,
            tls=TlsConfig(cert=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert),
            policy=PolicyConfig(file=policy_file), limits=limits or Limits(),
        )
        if config_changes:
            config = dataclasses.replace(config, **config_changes)
        audit = MemoryAuditSink()
        running = build_server(config=config, keys=keys, audit=audit)
        server = AccessServer(running=running, keys=keys, audit=audit, policy_file=policy_file,
                              pki=pki, address=f"127.0.0.1:{running.port}")
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def unique_alias(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
