"""Shared fixtures: one real SoftHSM2 token per pytest process, and a key store on it.

SoftHSM reads SOFTHSM2_CONF once, when the module is first loaded into the process, so the
token directory is made once per process (session scope) and the variable is set before
python-pkcs11 loads the module. Tests share the token: give every key a unique label
(`unique_label`).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest
import structlog
from ecs_support import EntryCollector
from policy_support import open_policy

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


@pytest.fixture(scope="session", autouse=True)
def ecs_audit_entries() -> Iterator[EntryCollector]:
    """Every audit entry the test suite makes, checked against ECS 8.11 (ecs_support.py):
    each line the audit trail renders, and each event a MemoryAuditSink keeps (as the trail
    would write it). Any problem fails the run at its end, naming the action."""
    from custody_server.audit.entry import ecs_entry, new_event_id
    from custody_server.audit.render import EntryRenderer

    collector = EntryCollector()
    render, record = EntryRenderer.render, MemoryAuditSink.record

    def checked_render(self: EntryRenderer, entries: Any, **options: Any) -> Any:
        lines, state = render(self, entries, **options)
        for line in lines:
            collector.check(json.loads(line), written=True)
        return lines, state

    def checked_record(self: MemoryAuditSink, event: Any) -> None:
        collector.check(ecs_entry(event, event_id=new_event_id(),
                                  request=structlog.contextvars.get_contextvars()),
                        written=False)
        record(self, event)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(EntryRenderer, "render", checked_render)
        patch.setattr(MemoryAuditSink, "record", checked_record)
        yield collector
    assert not collector.problems, (
        f"audit entries that are not valid ECS 8.11 ({collector.checked} checked): "
        + "; ".join(f"[{action}] {problem}" for problem, action in
                    list(collector.problems.items())[:20]))


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
# default keys `build` (links) and `owner` (layouts). It speaks mTLS with the local
# certificates that custody_server.tls_bootstrap makes in its state directory, and its
# policy lets the local client identity do everything (TEST_POLICY). Tests about access
# control itself start their own servers (tests/security).

TEST_CLIENT_IDENTITY = "spiffe://custody.local/client/local-admin"  # tls_bootstrap's local client
TEST_POLICY = open_policy(TEST_CLIENT_IDENTITY, "anonymous")
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


@dataclass(frozen=True)
class ClientTls:
    """A client's TLS files, laid out as the embedded default keeps them: setting
    CUSTODY_STATE_DIR=state_dir lets custody_client.local_tls find them."""

    state_dir: Path
    ca_cert: Path
    cert: Path
    key: Path
    identity: str

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca_cert.read_bytes(),
                                            private_key=self.key.read_bytes(),
                                            certificate_chain=self.cert.read_bytes())


@dataclass
class Service:
    running: Any  # custody_server.app.RunningServer
    store: Pkcs11KeyStore
    keys: Any  # custody_server.lifecycle.keyring.KeyRing
    audit: MemoryAuditSink
    address: str  # "127.0.0.1:PORT", mTLS
    tls: ClientTls

    def open_channel(self, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A new mTLS channel to the server as the test client (close it when done)."""
        return grpc.secure_channel(self.address, self.tls.channel_credentials(),
                                   options=[*_CHANNEL_OPTIONS, *options])


def _start_service(keystore: Pkcs11KeyStore, state: Path, *, insecure: bool) -> Service:
    # Imported here so that a broken server module fails its own tests, not the whole suite.
    from custody_server.app import build_server
    from custody_server.config import PolicyConfig, TlsConfig
    from custody_server.lifecycle.keyring import KeyRing
    from custody_server.tls_bootstrap import ensure_local_tls

    keys = KeyRing(keystore)
    for alias in ("build", "owner"):
        if not keys.exists(alias):
            keys.create(alias, KeyAlgorithm.ECDSA_P256)
    audit = MemoryAuditSink()
    files, _ = ensure_local_tls(state)
    policy = state / "test-policy.toml"
    policy.write_text(TEST_POLICY)
    config = ServerConfig(listen="127.0.0.1:0", state_dir=state,
                          tls=TlsConfig(insecure=insecure), policy=PolicyConfig(file=policy))
    running = build_server(config=config, keys=keys, audit=audit)
    tls = ClientTls(state_dir=state, ca_cert=files.ca_cert, cert=files.client_cert,
                    key=files.client_key, identity=TEST_CLIENT_IDENTITY)
    return Service(running=running, store=keystore, keys=keys, audit=audit,
                   address=f"127.0.0.1:{running.port}", tls=tls)


@pytest.fixture(scope="session")
def service(keystore: Pkcs11KeyStore, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Service]:
    """The session's server, mTLS; connect with `service.open_channel()` or `channel`."""
    running = _start_service(keystore, tmp_path_factory.mktemp("state"), insecure=False)
    yield running
    running.running.stop(grace=1).wait()


@pytest.fixture(scope="session")
def client_tls(service: Service) -> ClientTls:
    """CA, client certificate and key for `custody_server_address` (for the CLI:
    --ca/--cert/--key, or CUSTODY_STATE_DIR=client_tls.state_dir)."""
    return service.tls


@pytest.fixture(scope="session")
def channel(service: Service) -> Iterator[grpc.Channel]:
    with service.open_channel() as channel:
        yield channel


@pytest.fixture
def custody(channel: grpc.Channel) -> Any:
    return custody_pb2_grpc.CustodyStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture
def key_admin(channel: grpc.Channel) -> Any:
    return custody_pb2_grpc.KeyAdminStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="session")
def custody_server_address(service: Service) -> str:
    """"127.0.0.1:PORT" of the session's running server: mTLS, see `client_tls`."""
    return service.address


@pytest.fixture(scope="session")
def plaintext_service(keystore: Pkcs11KeyStore, tmp_path_factory: pytest.TempPathFactory
                      ) -> Iterator[Service]:
    """A second session server with `[tls] insecure = true` (every caller "anonymous",
    allowed everything): for tests that are not about the transport."""
    running = _start_service(keystore, tmp_path_factory.mktemp("plain"), insecure=True)
    yield running
    running.running.stop(grace=1).wait()


@pytest.fixture(scope="session")
def plaintext_server_address(plaintext_service: Service) -> str:
    """"127.0.0.1:PORT" of `plaintext_service` (grpc.insecure_channel works)."""
    return plaintext_service.address
