"""Shared fixtures: one real SoftHSM2 token per pytest process, and a key store on it.

SoftHSM reads SOFTHSM2_CONF once, when the module is first loaded into the process, so the
token directory is made once per process (session scope) and the variable is set before
python-pkcs11 loads the module. Tests share the token: give every key a unique label
(`unique_label`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest

from custody_api.v1 import custody_pb2_grpc
from custody_server.audit_events import MemoryAuditSink
from custody_server.config import ServerConfig
from custody_server.keystore import KeyAlgorithm, Pkcs11KeyStore
from custody_server.softhsm import SoftHsmError, SoftHsmToken, find_softhsm_module, init_token

TEST_TOKEN_LABEL = "custody-test"


def _softhsm_missing(reason: str) -> NoReturn:
    """Skip on a developer machine; fail in CI, where a skipped HSM suite would hide breakage."""
    if os.environ.get("CI"):
        pytest.fail(f"SoftHSM2 is required in CI: {reason}", pytrace=False)
    pytest.skip(f"SoftHSM2 not available: {reason} (apt-get install softhsm2)")


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> SoftHsmToken:
    """A fresh SoftHSM2 token in a temp dir, with SOFTHSM2_CONF pointing at it."""
    try:
        module_path = find_softhsm_module()
    except SoftHsmError as error:
        _softhsm_missing(str(error))
    import pkcs11

    if module_path in pkcs11._loaded:
        # Too late: the module already read another (or no) config in this process.
        pytest.fail(
            "libsofthsm2.so was loaded before the softhsm_token fixture ran; "
            "load it only through the fixtures",
            pytrace=False,
        )
    try:
        token = init_token(tmp_path_factory.mktemp("softhsm"), label=TEST_TOKEN_LABEL)
    except SoftHsmError as error:
        _softhsm_missing(str(error))
    os.environ["SOFTHSM2_CONF"] = str(token.conf_path)
    return token


@pytest.fixture(scope="session")
def keystore(softhsm_token: SoftHsmToken) -> Iterator[Pkcs11KeyStore]:
    """An open key store on the session's token (shared: use unique labels)."""
    store = Pkcs11KeyStore.open(
        module_path=softhsm_token.module_path,
        token_label=softhsm_token.token_label,
        pin=softhsm_token.read_pin(),
    )
    yield store
    store.close()


@pytest.fixture
def unique_label() -> str:
    """A key or object label no other test uses."""
    return f"test-{uuid.uuid4().hex}"


# A real Custody server, in-process on port 0, on the session's token, with the
# default keys `build` (links) and `owner` (layouts).


@dataclass
class Service:
    running: Any  # custody_server.app.RunningServer
    store: Pkcs11KeyStore
    keys: Any  # custody_server.keyring.KeyRing
    audit: MemoryAuditSink
    address: str


@pytest.fixture(scope="session")
def service(keystore: Pkcs11KeyStore, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Service]:
    # Imported here so that a broken server module fails its own tests, not the whole suite.
    from custody_server.app import build_server
    from custody_server.keyring import KeyRing

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
    return custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture
def key_admin(channel: grpc.Channel) -> Any:
    return custody_pb2_grpc.KeyAdminStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def custody_server_address(service: Service) -> str:
    """"127.0.0.1:PORT" of the session's running server (plaintext)."""
    return service.address
