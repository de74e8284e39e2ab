"""docker-compose.yml run for real, without Docker: its init containers, its PostgreSQL
(Debian's, initialized as the official image would be) and its two replicas, from the
config files it mounts (tests/operations/compose_support.py says how its paths and
addresses are translated). The database password is drawn at the first start, and the
replicas reach the database with it through their PGPASSFILE, never a password in a
file of the repository. On a fresh token the first `custody run` succeeds, and its link
is found through either replica; 16 clients then sign through both replicas (client-side
round robin) while one replica is stopped with SIGTERM and started again, and the other
killed with SIGKILL and started again: no client call fails, every signature a client
got is in one of the two audit trails and in the one shared store, and both trails
verify with `custody audit verify`."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from store.postgres_support import PostgresCluster, PostgresMissing

from custody_client.client import CustodyClient
from custody_client.errors import ClientError
from custody_client.link_draft import LinkDraft
from custody_client.settings import ConnectionSettings, TlsMaterial

from .compose_support import (
    ComposeService,
    free_port,
    load_compose,
    postgres_healthcheck,
    start_postgres,
)
from .ops_support import stop_group

pytestmark = pytest.mark.slow
CLIENTS = 16


class Replica:
    """One compose replica as a local process on a port of its own (kept across restarts,
    as the container's is)."""

    def __init__(self, service: ComposeService) -> None:
        self.service = service
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.output = bytearray()
        self._read: dict[Path, int] = {}  # bytes of each trail file read so far
        self._signed: list[tuple[str, str]] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [*self.service.entrypoint(), "--listen", self.address,
                   "--metrics-listen", "127.0.0.1:0"]
        # a process group of its own: the container (its workers too, if it has any)
        self.process = subprocess.Popen(command, env=self.service.environment(),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        start_new_session=True)
        threading.Thread(target=self._drain, args=(self.process,), daemon=True).start()
        # as compose's depends_on: service_healthy, by the service's own healthcheck
        deadline = time.monotonic() + 90
        while self.service.healthcheck(self.port).returncode != 0:
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, "not healthy:\n" + self.log()
            time.sleep(0.2)

    def _drain(self, process: subprocess.Popen[bytes]) -> None:
        stream: Any = process.stderr
        for chunk in iter(lambda: stream.read1(65536), b""):
            self.output.extend(chunk)

    def stop(self, how: signal.Signals) -> int:
        """SIGTERM to the server process, as compose stops a container; SIGKILL to the
        whole container (every process in it)."""
        assert self.process is not None
        return stop_group(self.process, how, log=self.log())

    def log(self) -> str:
        return bytes(self.output).decode(errors="replace")[-4000:]

    def trails(self) -> list[list[Path]]:
        """The files of each trail the replica wrote: one, or one per worker (wK/)."""
        directory = Path(self.service.path("/var/lib/custody/audit"))
        directories = [directory] if (directory / "audit.log").exists() else sorted(
            directory.glob("w*"))
        return [sorted(d.glob("audit*.log")) for d in directories]

    def signed(self) -> list[tuple[str, str]]:
        """(step name, signed_sha256) of each successful sign-link entry so far, in order
        (read on from where the last call stopped: the trail only grows)."""
        for path in (path for trail in self.trails() for path in trail):
            data = path.read_bytes()
            done = self._read.get(path, 0)
            end = data.rfind(b"\n") + 1  # whole lines only: one may be being written
            for line in data[done:end].splitlines():
                if b'"sign-link"' in line:
                    entry = json.loads(line)
                    if entry["event"]["outcome"] == "success":
                        self._signed.append((entry["custody"]["step"],
                                             entry["custody"]["signed_sha256"]))
            self._read[path] = max(done, end)
        return list(self._signed)

    def digests(self) -> set[str]:
        return {digest for _, digest in self.signed()}


class Load:
    """CLIENTS threads signing links through every replica until stopped."""

    def __init__(self, settings: ConnectionSettings) -> None:
        self.settings = settings
        self.returned: list[str] = []  # signed_sha256: what the signature covers
        self.files: list[str] = []  # SHA-256 of each signed file: its id in the store
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True)
                         for n in range(CLIENTS)]
        for thread in self._threads:
            thread.start()

    def _client(self, number: int) -> None:
        with CustodyClient(self.settings) as custody:
            index = 0
            while not self._stop.is_set():
                index += 1
                draft = LinkDraft(step_name=f"load-{number}", command=["make", str(index)])
                draft.add_products([(f"out/{number}/{index}", f"{index:064x}")])
                try:
                    signed = custody.sign_link(draft)
                except ClientError as error:
                    with self._lock:
                        self.failures.append(str(error))
                    continue
                with self._lock:
                    self.returned.append(signed.sha256)
                    self.files.append(hashlib.sha256(signed.content).hexdigest())

    def count(self) -> int:
        with self._lock:
            return len(self.returned)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)


def eventually(what: str, condition: Callable[[], bool], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.05)


@pytest.fixture
def services(tmp_path: Path) -> dict[str, ComposeService]:
    return load_compose(tmp_path)


@pytest.fixture
def database(services: dict[str, ComposeService]) -> Iterator[PostgresCluster]:
    """store-secret-init, then `postgres` once it ended, waited on by its healthcheck."""
    secret = services["store-secret-init"].run_to_end()
    assert secret.returncode == 0, secret.stderr
    try:
        cluster = start_postgres(services["postgres"])
    except PostgresMissing as missing:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {missing}", pytrace=False)
        pytest.skip(f"{missing}")
    try:
        eventually("postgres healthy",
                   lambda: postgres_healthcheck(services["postgres"]).returncode == 0)
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def replicas(services: dict[str, ComposeService], database: PostgresCluster
             ) -> Iterator[tuple[Replica, Replica]]:
    init = services["softhsm-init"].run_to_end()
    assert init.returncode == 0, init.stderr
    first, second = Replica(services["custody-1"]), Replica(services["custody-2"])
    try:
        first.start()
        second.start()  # depends_on custody-1: service_healthy
        yield first, second
    finally:
        for replica in (first, second):
            if replica.process is not None and replica.process.poll() is None:
                os.killpg(replica.process.pid, signal.SIGKILL)
                replica.process.wait()


def run_custody(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "PYTHONPATH": os.pathsep.join(str(Path(__file__).resolve().parents[2] / p)
                                         for p in ("core", "client"))}
    return subprocess.run([sys.executable, "-m", "custody_client", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_compose_replicas_sign_through_restarts(replicas: tuple[Replica, Replica],
                                                 database: PostgresCluster,
                                                 tmp_path: Path) -> None:
    first, second = replicas
    tls_dir = Path(first.service.path("/var/lib/custody/tls"))
    tls_flags = ("--ca", str(tls_dir / "ca.pem"), "--cert", str(tls_dir / "client.pem"),
                 "--key-file", str(tls_dir / "client-key.pem"))
    both = f"{first.address},{second.address}"

    # The PIN is not on the token's volume; the token's volume has no PIN.
    pin = Path(first.service.path("/var/lib/custody-pin/user.pin"))
    token = Path(first.service.path("/var/lib/custody/hsm"))
    assert pin.is_file() and not (token / "user.pin").exists()
    assert pin.resolve().parent != token.resolve()
    # The server certificate names the service as the compose network reaches it.
    certificate = x509.load_pem_x509_certificate((tls_dir / "server.pem").read_bytes())
    names = certificate.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert {"custody", "custody-1", "custody-2"} <= set(names)

    # A new user's first build, right after start, on a token nobody made keys in.
    work = tmp_path / "work"
    work.mkdir()
    (work / "src.c").write_text("int main(void) { return 0; }\n")
    first_run = run_custody("run", "-n", "build", "--server", both, *tls_flags, "-p", "src.c",
                            "--run-id", "compose-first", "--", "true", cwd=work)
    assert first_run.returncode == 0, first_run.stderr
    assert len(list(work.glob("build.*.link"))) == 1
    # One store: whichever replica signed it, each one finds the link.
    for replica in replicas:
        listed = run_custody("links", "list", "--server", replica.address, *tls_flags,
                             "--run-id", "compose-first", "--json", cwd=work)
        assert listed.returncode == 0, listed.stderr
        assert [json.loads(line)["step"] for line in listed.stdout.splitlines()] == ["build"]

    settings = ConnectionSettings(address=both, timeout=60, tls=TlsMaterial.from_files(
        ca=tls_flags[1], cert=tls_flags[3], key=tls_flags[5]))
    load = Load(settings)
    try:
        def progress(calls: int) -> Callable[[], bool]:
            target = load.count() + calls
            return lambda: load.count() >= target

        def every_client_through(replica: Replica) -> Callable[[], bool]:
            """Each client has signed through `replica` since now (its channel to it is
            connected), as a rolling restart waits for a replica before the next one."""
            before = len(replica.signed())
            clients = {f"load-{n}" for n in range(CLIENTS)}
            return lambda: clients <= {step for step, _ in replica.signed()[before:]}

        through_first, through_second = every_client_through(first), every_client_through(second)
        eventually("every client through both", lambda: through_first() and through_second())
        assert second.stop(signal.SIGTERM) == 0
        eventually("signing while custody-2 is stopped", progress(200))
        second.start()
        eventually("every client through custody-2 again", every_client_through(second))
        first.stop(signal.SIGKILL)
        eventually("signing while custody-1 is gone", progress(200))
        first.start()
        eventually("every client through custody-1 again", every_client_through(first))
    finally:
        load.stop()
    key_file = tmp_path / "audit.pub"
    with CustodyClient(settings) as custody:
        key_file.write_text(custody.get_public_key("audit").public_key_json)
    for replica in replicas:
        assert replica.stop(signal.SIGTERM) == 0, replica.log()

    print(f"{len(load.returned)} signatures returned; "
          f"{len(first.signed())} in custody-1's trail, {len(second.signed())} in custody-2's")
    assert load.failures == []
    returned = set(load.returned)
    assert len(returned) == len(load.returned)
    assert returned <= first.digests() | second.digests()
    # Every link a client got, through either replica, is in the one shared store.
    stored = set(database.psql("SELECT id FROM attestations WHERE kind = 'link'").split())
    missing = set(load.files) - stored
    assert not missing, f"{len(missing)} links returned but not stored"
    assert returned & first.digests() and returned & second.digests()
    for trail in (trail for replica in replicas for trail in replica.trails()):
        verified = run_custody("audit", "verify", *map(str, trail), "--key", str(key_file),
                               cwd=tmp_path)
        assert verified.returncode == 0, verified.stdout + verified.stderr
