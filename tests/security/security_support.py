"""Access-control test support: a test CA, client certificates for any identity, and
in-process servers (real SoftHSM token, real mTLS) with a given policy and limits.

The servers are configured as production is: explicit [tls] cert/key/client_ca and an
explicit [policy] file, not the embedded default's local files.
"""

from __future__ import annotations

import os
import re
import signal as signalmod
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from custody_api.v1 import custody_pb2_grpc
from custody_client.local_tls import find_local_tls
from custody_server.audit_events import AuditEvent, MemoryAuditSink
from custody_server.tls_bootstrap import (
    CertificateAuthority,
    CertificateRequest,
    IssuedCertificate,
    issue_certificate,
)

DENIAL_ACTIONS = frozenset({"authenticate", "authorize"})


# A client's certificate and key, as the local CA issues them.
ClientCert = IssuedCertificate


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca: CertificateAuthority
    server_cert: Path
    server_key: Path
    ca_cert: Path

    def client(self, *, uri: tuple[str, ...] = (), dns: tuple[str, ...] = (),
               cn: str = "") -> ClientCert:
        return issue_certificate(self.ca, CertificateRequest(
            common_name=cn, uri_names=uri, dns_names=dns), now=datetime.now(UTC))

    def credentials(self, client: ClientCert | None) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.cert_pem,
            private_key=client.key_pem if client else None,
            certificate_chain=client.cert_pem if client else None,
        )


class GatedAuditSink(MemoryAuditSink):
    """Holds the worker that audits a SignLink of `step` until the test releases it.

    A deterministic way to keep a server's only worker busy: waiting on a slow call
    raced the call itself on a fast machine.
    """

    def __init__(self, step: str) -> None:
        super().__init__()
        self.step = step
        self.entered = threading.Event()
        self.release = threading.Event()
        self.recorded = threading.Event()  # the held call's entry is in the sink

    def record(self, event: AuditEvent) -> None:
        held = event.action == "sign-link" and event.details.get("step") == self.step
        if held:
            self.entered.set()
            self.release.wait(timeout=30)  # bounded: a failing test must not hang
        super().record(event)
        if held:
            self.recorded.set()


@dataclass
class AccessServer:
    running: Any  # custody_server.app.RunningServer
    keys: Any  # custody_server.lifecycle.keyring.KeyRing
    audit: MemoryAuditSink
    policy_file: Path
    pki: Pki
    address: str
    _channels: list[grpc.Channel] = field(default_factory=list)

    def channel(self, client: ClientCert | None) -> grpc.Channel:
        channel = grpc.secure_channel(self.address, self.pki.credentials(client),
                                      options=[("grpc.max_receive_message_length", 1 << 26)])
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


REPO = Path(__file__).resolve().parents[2]


class ServerProcess:
    """`python -m custody_server.main` in its own process; stderr is collected so that
    tests can wait for what it says (listening, policy reloaded...)."""

    def __init__(self, state_dir: Path, *, args: tuple[str, ...] = ()) -> None:
        env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
        env["PYTHONPATH"] = os.pathsep.join(str(REPO / p) for p in ("core", "client", "server"))
        self.state_dir = state_dir
        self.process = subprocess.Popen(
            [sys.executable, "-m", "custody_server.main", "--state-dir", str(state_dir),
             "--listen", "127.0.0.1:0", "--log-format", "console", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self._stderr = bytearray()
        self._terminated = False
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        match = self.wait_for(rb"listening on [^:\s]+:(\d+)")
        self.address = f"127.0.0.1:{int(match.group(1))}"

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._lock:
                self._stderr += line

    @property
    def stderr(self) -> bytes:
        with self._lock:
            return bytes(self._stderr)

    def wait_for(self, pattern: bytes, *, after: int = 0, timeout: float = 30.0
                 ) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.compile(pattern).search(self.stderr, after)
            if match:
                return match
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"server did not say {pattern!r}; it said:\n"
                             + self.stderr.decode(errors="replace")[-3000:])

    def credentials(self) -> grpc.ChannelCredentials:
        files = find_local_tls({"CUSTODY_STATE_DIR": str(self.state_dir)})
        assert files is not None, "the server did not create its local TLS files"
        return grpc.ssl_channel_credentials(root_certificates=files.ca.read_bytes(),
                                            private_key=files.key.read_bytes(),
                                            certificate_chain=files.cert.read_bytes())

    def channel(self) -> grpc.Channel:
        return grpc.secure_channel(self.address, self.credentials())

    def signal(self, signum: int) -> None:
        if signum == signalmod.SIGTERM:
            self._terminated = True
        self.process.send_signal(signum)

    def stop(self, *, timeout: float = 30.0) -> int:
        """SIGTERM (once: a second one could land while the interpreter is finalizing,
        after its handlers are gone) and the exit code."""
        if self.process.poll() is None and not self._terminated:
            self.signal(signalmod.SIGTERM)
        try:
            code: int = self.process.wait(timeout=timeout)
            return code
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
