"""Access-control test support: a test CA, client certificates for any identity, and
in-process servers (real SoftHSM token, real mTLS) with a given policy and limits.

The servers are configured as production is: explicit [tls] cert/key/client_ca and an
explicit [policy] file, not the embedded default's local files.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from custody_api.v1 import custody_pb2_grpc
from custody_server.audit_events import AuditEvent, MemoryAuditSink
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


def unique_alias(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
