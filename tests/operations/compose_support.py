"""docker-compose.yml's services run as local processes, without Docker.

Each service gets a file system of its own, a directory under one root, and every path
of the container in its command, entrypoint, environment and config files is translated
into it. Its mount points are links: a named volume to a directory shared by every
service that mounts it, a bind-mounted file to a copy in which the container's paths are
translated the same way. The image's system files (/usr) are this machine's. The image's
/opt/custody is this repository; its `custody-server` entrypoint is
`python -m custody_server.main`. The one thing changed on purpose: every container listens
on 50051 in a network of its own, while here they share one host, so each one is given a
port of its own (--listen, --metrics-listen on top of the compose command), and a service
the others reach by name (`postgres:5432`) gets a local port that every config file and
command naming it is translated to.

The `postgres` service (the official image) runs as Debian's PostgreSQL, initialized as
the image's entrypoint does it from the service's environment: the superuser and the
database it names, the password read (as root) from POSTGRES_PASSWORD_FILE, password
authentication over TCP.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from store.postgres_support import PostgresCluster, find_bin

ROOT = Path(__file__).resolve().parents[2]
PYTHONPATH = os.pathsep.join(str(ROOT / part) for part in ("core", "client", "server"))
IMAGE_WORKDIR = "/opt/custody"  # the Dockerfile's WORKDIR, where it copies this repository
CONTAINER_PORT = 50051
_SYSTEM = ("/usr/",)  # the image's own files: the same packages on this machine
_QUOTED_PATH = re.compile(r"""(["'])(/[^"'\n]*)\1""")
# Services the others reach by name in the compose network, and the port each listens on.
NETWORK_PORTS = {"postgres": 5432}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class ComposeService:
    """One service of the compose file, its paths translated to `root`, and the network
    addresses it names (`postgres:5432`) to the local ones in `addresses`."""

    name: str
    spec: dict[str, Any]
    root: Path
    addresses: dict[str, str] = field(default_factory=dict)

    def mounts(self) -> dict[str, str]:
        """Path in the container -> volume name or ./host path."""
        mounts = {}
        for volume in self.spec.get("volumes", []):
            source, target = volume.split(":")[:2]
            mounts[target] = source
        return mounts

    def path(self, container_path: str) -> str:
        """Where a path of this service's container is on this machine: in the service's
        own file system, whose mount points are links to the volumes (`mount`)."""
        if container_path == IMAGE_WORKDIR or container_path.startswith(IMAGE_WORKDIR + "/"):
            return str(ROOT) + container_path[len(IMAGE_WORKDIR):]
        if container_path.startswith(_SYSTEM):
            return container_path
        return str(self.root / "fs" / self.name) + container_path

    def mount(self) -> None:
        """The service's file system: a link at each mount point to its volume (a
        directory under root/volumes, shared by the services that mount it) or to a
        translated copy of the bind-mounted file."""
        for target, source in self.mounts().items():
            if source.startswith("./"):
                original = ROOT / source
                assert original.is_file(), f"compose binds {source}: not a file"
                mounted = self.root / "binds" / self.name / target.lstrip("/")
                mounted.parent.mkdir(parents=True, exist_ok=True)
                mounted.write_text(self.translate(original.read_text(encoding="utf-8")))
            else:
                mounted = self.root / "volumes" / source
                mounted.mkdir(parents=True, exist_ok=True, mode=0o700)
            point = Path(self.path(target))
            point.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not point.is_symlink():
                point.symlink_to(mounted)

    def translate(self, text: str) -> str:
        """Every quoted absolute path in `text` (a config file, a script) translated, and
        every network address of a service (`postgres:5432`)."""
        text = _QUOTED_PATH.sub(lambda m: m[1] + self.path(m[2]) + m[1], text)
        for address, local in self.addresses.items():
            text = re.sub(rf"(?<![\w.-]){re.escape(address)}(?!\d)", local, text)
        return text

    def arguments(self, words: list[str]) -> list[str]:
        return [self.path(word) if word.startswith("/") else word for word in words]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
        env["PYTHONPATH"] = PYTHONPATH
        for name, value in (self.spec.get("environment") or {}).items():
            env[name] = self.path(value) if str(value).startswith("/") else str(value)
        return env

    def entrypoint(self) -> list[str]:
        """The service's entrypoint and command; the image's is custody-server."""
        entrypoint = self.spec.get("entrypoint")
        if entrypoint is None:
            return [sys.executable, "-m", "custody_server.main",
                    *self.arguments(self.spec.get("command", []))]
        return self.arguments([*entrypoint, *self.spec.get("command", [])])

    def run_to_end(self) -> subprocess.CompletedProcess[str]:
        """A service that runs once and ends (an init container)."""
        return subprocess.run(self.entrypoint(), env=self.environment(), capture_output=True,
                              text=True, timeout=120, check=False)

    def healthcheck(self, port: int) -> subprocess.CompletedProcess[str]:
        """The service's healthcheck command, against the port it listens on here."""
        kind, program, *rest = self.spec["healthcheck"]["test"]
        assert kind == "CMD" and program == "python", self.spec["healthcheck"]
        rest = [self.translate(word).replace(f"127.0.0.1:{CONTAINER_PORT}",
                                             f"127.0.0.1:{port}") for word in rest]
        return subprocess.run([sys.executable, *rest], env=self.environment(),
                              capture_output=True, text=True, timeout=30, check=False)


def load_compose(root: Path) -> dict[str, ComposeService]:
    """The compose file's services, each with its file system mounted under `root`."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    addresses = {f"{name}:{port}": f"127.0.0.1:{free_port()}"
                 for name, port in NETWORK_PORTS.items() if name in compose["services"]}
    services = {name: ComposeService(name, spec, root, addresses)
                for name, spec in compose["services"].items()}
    for service in services.values():
        service.mount()
    return services


def local_port(service: ComposeService) -> int:
    """The port a service reached by name in the compose network listens on here."""
    return int(service.addresses[f"{service.name}:{NETWORK_PORTS[service.name]}"]
               .rsplit(":", 1)[1])


def start_postgres(service: ComposeService) -> PostgresCluster:
    """The `postgres` service, as the official image's entrypoint starts it (PostgresMissing
    without Debian's PostgreSQL)."""
    environment = service.spec["environment"]
    assert "POSTGRES_PASSWORD" not in environment, "a password literal in the compose file"
    assert environment["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    # the entrypoint's file_env: the file's content without trailing newlines
    password = Path(service.path(environment["POSTGRES_PASSWORD_FILE"])).read_text()
    return PostgresCluster.create(user=environment["POSTGRES_USER"],
                                  database=environment["POSTGRES_DB"],
                                  password=password.rstrip("\n"), port=local_port(service))


def postgres_healthcheck(service: ComposeService) -> subprocess.CompletedProcess[str]:
    """The `postgres` service's healthcheck command (pg_isready), against its port here."""
    kind, program, *rest = service.spec["healthcheck"]["test"]
    assert kind == "CMD" and program == "pg_isready", service.spec["healthcheck"]
    return subprocess.run([str(find_bin() / program), *rest, "--port", str(local_port(service))],
                          capture_output=True, text=True, timeout=30, check=False)
