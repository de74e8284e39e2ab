"""A real Custody server, in-process on port 0, on the session's SoftHSM token."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from custody_api.v1 import custody_pb2_grpc
from custody_server.app import RunningServer, build_server
from custody_server.audit_events import MemoryAuditSink
from custody_server.config import ServerConfig
from custody_server.keyring import KeyRing
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore


@dataclass
class Service:
    running: RunningServer
    store: Pkcs11KeyStore
    keys: KeyRing
    audit: MemoryAuditSink
    address: str


@pytest.fixture(scope="session")
def service(keystore: Pkcs11KeyStore, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Service]:
    keys = KeyRing(keystore)
    for alias in ("build", "owner"):
        if not keys.exists(alias):
            keys.create(alias, KeyAlgorithm.ECDSA_P256)
    audit = MemoryAuditSink()
    state: Path = tmp_path_factory.mktemp("state")
    config = ServerConfig(listen="127.0.0.1:0", state_dir=state)
    running = build_server(config=config, keys=keys, audit=audit)
    yield Service(running=running, store=keystore, keys=keys, audit=audit,
                  address=f"127.0.0.1:{running.port}")
    running.stop(grace=1).wait()


@pytest.fixture(scope="session")
def channel(service: Service) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(service.address, options=[
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]) as channel:
        yield channel


@pytest.fixture
def custody(channel: grpc.Channel) -> Any:
    return custody_pb2_grpc.CustodyStub(channel)


@pytest.fixture
def key_admin(channel: grpc.Channel) -> Any:
    return custody_pb2_grpc.KeyAdminStub(channel)
