"""A real PostgreSQL for tests and benchmarks: Debian's packages (`apt-get install
postgresql`), a cluster made by initdb in a temporary directory, listening on a unix
socket only (trusted), and with a password also on 127.0.0.1 (password authentication,
as the official image's server: docker-compose.yml's), stopped and started as the test
says.

PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user
the package made (else `nobody`), and initdb, pg_ctl and postgres run under `runuser`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

DATABASE = "custody"
USER = "custody"


class PostgresMissing(Exception):
    """No PostgreSQL server binaries here."""


def find_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise PostgresMissing("no initdb under /usr/lib/postgresql/*/bin (apt-get install "
                          "postgresql)")


def _run_as() -> list[str]:
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--"]
    raise PostgresMissing("running as root and no postgres or nobody user to run as")


@dataclass
class PostgresCluster:
    root: Path
    bin: Path
    prefix: list[str]
    user: str = USER
    database: str = DATABASE
    port: int | None = None  # with a password: TCP on 127.0.0.1

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def server_port(self) -> int:
        """Its port; without TCP it names the socket file (`.s.PGSQL.5432`)."""
        return self.port or 5432

    @property
    def url(self) -> str:
        """Over the socket, trusted: no password."""
        return (f"postgresql://{self.user}@/{self.database}?host={self.socket_dir}"
                f"&port={self.server_port}")

    def _tool(self, name: str, *args: str, check: bool = True,
              timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*self.prefix, str(self.bin / name), *args], check=False,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{name} exited {result.returncode}: {result.stderr[-2000:]}")
        return result

    @classmethod
    def create(cls, *, user: str = USER, database: str = DATABASE,
               password: str | None = None, port: int | None = None) -> PostgresCluster:
        """A new cluster whose superuser `user` owns the database `database`, started.
        With `password` and `port` it also listens on 127.0.0.1:`port`, where the user
        must give the password (scram-sha-256); the socket stays trusted. Its directory
        is made under the system's temporary directory (a test's tmp_path is closed to
        other users, and the server's user must reach it); `destroy` removes it."""
        assert (password is None) == (port is None), "a password goes with a port"
        root = Path(tempfile.mkdtemp(prefix="custody-pg-"))
        cluster = cls(root=root, bin=find_bin(), prefix=_run_as(), user=user,
                      database=database, port=port)
        cluster.socket_dir.mkdir(parents=True, exist_ok=True)
        auth = ["--auth=trust"]
        if password is not None:
            password_file = root / "initdb-password"  # read by initdb, then removed
            password_file.write_text(password + "\n")
            password_file.chmod(0o600)
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256",
                    f"--pwfile={password_file}"]
        if cluster.prefix:  # the user the server runs as owns its directories
            owner = pwd.getpwnam(cluster.prefix[2])
            for path in (root, cluster.socket_dir, *root.glob("initdb-password")):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            root.chmod(0o755)  # the tests (root) read the socket directory
        try:
            cluster._tool("initdb", "-D", str(cluster.data), "-U", user, *auth,
                          "-E", "UTF8", "--no-sync")
        finally:
            (root / "initdb-password").unlink(missing_ok=True)
        settings = {"listen_addresses": "''" if port is None else "'127.0.0.1'",
                    "port": str(cluster.server_port),
                    "unix_socket_directories": f"'{cluster.socket_dir}'",
                    "max_connections": "50", "fsync": "on"}
        with (cluster.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        cluster.start()
        cluster._tool("createdb", "-h", str(cluster.socket_dir), "-p",
                      str(cluster.server_port), "-U", user, database)
        return cluster

    def start(self) -> None:
        self._tool("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w",
                   "-t", "60", "start")

    def stop(self, *, mode: str = "fast") -> None:
        """`immediate`: as a crash (no checkpoint, connections cut)."""
        self._tool("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", mode, "stop")

    def running(self) -> bool:
        return self._tool("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def psql(self, sql: str) -> str:
        result = self._tool("psql", "-h", str(self.socket_dir), "-p", str(self.server_port),
                            "-U", self.user, "-d", self.database, "-At", "-c", sql)
        return result.stdout

    def destroy(self) -> None:
        if self.running():
            self.stop(mode="immediate")
        shutil.rmtree(self.root, ignore_errors=True)
