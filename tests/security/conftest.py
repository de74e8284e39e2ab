"""Fixtures for the access-control tests (helpers live in security_support.py)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from security_support import AccessServer, Pki, StartServer

from custody_server.audit_events import MemoryAuditSink
from custody_server.config import Limits, PolicyConfig, ServerConfig, TlsConfig
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.tls_bootstrap import (
    CertificateAuthority,
    CertificateRequest,
    issue_certificate,
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


@pytest.fixture
def start_server(keystore: Pkcs11KeyStore, pki: Pki, tmp_path: Path
                 ) -> Iterator[StartServer]:
    """start_server(policy_text, **limits) -> AccessServer; stopped after the test."""
    from custody_server.app import build_server
    from custody_server.lifecycle.keyring import KeyRing

    started: list[AccessServer] = []

    def start(policy: str, *, limits: Limits | None = None,
              config_changes: dict[str, Any] | None = None,
              audit: MemoryAuditSink | None = None) -> AccessServer:
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
        audit = audit if audit is not None else MemoryAuditSink()
        running = build_server(config=config, keys=keys, audit=audit)
        server = AccessServer(running=running, keys=keys, audit=audit, policy_file=policy_file,
                              pki=pki, address=f"127.0.0.1:{running.port}")
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


