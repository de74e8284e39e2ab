"""Repository promises: compose names real files, the client installs without the server,
the wheel is the `custody-intoto` distribution with Custody's packages and commands."""

from __future__ import annotations

import configparser
import posixpath
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_names_what_exists() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"softhsm-init", "store-secret-init", "postgres", "custody-1", "custody-2"} \
        <= set(services)
    for name, service in services.items():
        if name == "postgres":  # the official image (Docker Hub's library/postgres)
            assert re.fullmatch(r"postgres:\d+(-\w+)?", service["image"]), service["image"]
        else:
            assert service["build"] == "."
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"compose mounts missing {source}"
            else:
                assert source in compose["volumes"], f"undeclared volume {source}"
    copies = dockerfile_copies((ROOT / "Dockerfile").read_text(encoding="utf-8"))
    for init in ("softhsm-init", "store-secret-init"):
        init_script = services[init]["entrypoint"][1]
        assert init_script.startswith("/opt/custody/")
        assert (ROOT / init_script.removeprefix("/opt/custody/")).is_file()
        assert any(init_script.startswith(f"{landed}/") for landed in copies.values()), \
            f"the image does not hold {init_script}"


def compose_mounts(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's mounts: the path in the container -> the volume or host path."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        mounts[target] = source
    return mounts


def volume_of(path: Path | str, mounts: dict[str, str]) -> str | None:
    """The volume (or host path) a path in the container lies on; None: the container's
    own file system."""
    text = str(path)
    holders = [t for t in mounts if text == t or text.startswith(t.rstrip("/") + "/")]
    return mounts[max(holders, key=len)] if holders else None


def test_compose_replicas_keep_secrets_and_trails_apart() -> None:
    """Two replicas on one token volume; the PIN on a volume of its own (never the token's);
    the TLS material shared; an audit trail and a node name per replica; the certificate
    names the service as the compose network reaches it."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    from custody_server.config import config_from_dict

    parsed = config_from_dict(tomllib.loads((ROOT / "deploy" / "custody.toml").read_text()),
                              base=ROOT / "deploy")
    from custody_client.local_tls import CA_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE

    replicas = ["custody-1", "custody-2"]
    audit_volumes, nodes = set(), set()
    for name in replicas:
        service = services[name]
        mounts = compose_mounts(service)
        health = " ".join(service["healthcheck"]["test"])
        for file in (CA_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE):
            assert f"'{file}'" in health, f"healthcheck must use {file} (mTLS is the default)"
        assert f"{parsed.state_dir}/tls/" in health
        conf = service["environment"]["SOFTHSM2_CONF"]
        token = volume_of(conf, mounts)
        pin = volume_of(parsed.hsm.pin_file or "", mounts)
        assert token == "custody-token" and pin == "custody-pin", (token, pin)
        assert any(v.startswith("custody-pin:") and v.endswith(":ro")
                   for v in service["volumes"]), "the replicas only read the PIN"
        assert volume_of(parsed.state_dir / "tls", mounts) == "custody-tls"
        audit_volumes.add(volume_of(parsed.audit.directory or "", mounts))
        command = service["command"]
        assert command[:2] == ["--config", "/etc/custody/custody.toml"]
        assert mounts["/etc/custody/custody.toml"] == "./deploy/custody.toml"
        assert mounts[str(parsed.policy.file)] == "./deploy/policy.toml"
        nodes.add(command[command.index("--audit-node") + 1])
        assert "custody" in service["networks"]["default"]["aliases"]
        assert name in parsed.tls.server_names
    assert None not in audit_volumes and len(audit_volumes) == len(replicas)
    assert nodes == set(replicas)
    assert "custody" in parsed.tls.server_names
    init = compose_mounts(services["softhsm-init"])
    entrypoint = services["softhsm-init"]["entrypoint"]
    assert volume_of(entrypoint[2], init) == "custody-token"
    assert volume_of(entrypoint[entrypoint.index("--pin-file") + 1], init) == "custody-pin"
    assert entrypoint[entrypoint.index("--pin-file") + 1] == str(parsed.hsm.pin_file)


def test_compose_replicas_share_one_postgres_store_and_no_password_is_committed() -> None:
    """Both replicas' config names the `postgres` service's database, by a URL without a
    password; libpq reads it from PGPASSFILE, on a volume of its own (not the database's)
    that only the init container writes, the replicas read-only; the postgres image reads
    the same volume's password file. The replicas wait for a healthy database."""
    from psycopg.conninfo import conninfo_to_dict

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    from custody_server.config import config_from_dict

    parsed = config_from_dict(tomllib.loads((ROOT / "deploy" / "custody.toml").read_text()),
                              base=ROOT / "deploy")
    assert parsed.store.postgres_url is not None, "the replicas must share PostgreSQL"
    dsn = conninfo_to_dict(parsed.store.postgres_url)
    assert "password" not in dsn and "passfile" not in dsn
    assert (dsn["host"], dsn.get("port"), dsn["dbname"], dsn["user"]) == (
        "postgres", "5432", "custody", "custody")
    postgres = services["postgres"]
    environment = postgres["environment"]
    assert environment["POSTGRES_USER"] == dsn["user"]
    assert environment["POSTGRES_DB"] == dsn["dbname"]
    assert not {"POSTGRES_PASSWORD", "PGPASSWORD"} & {
        name for service in services.values() for name in service.get("environment") or {}}
    assert environment["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    db_mounts = compose_mounts(postgres)
    data_volume = db_mounts["/var/lib/postgresql/data"]
    secret_volume = volume_of(environment["POSTGRES_PASSWORD_FILE"], db_mounts)
    assert secret_volume is not None and secret_volume != data_volume
    assert f"{secret_volume}:/run/custody-db-secret:ro" in postgres["volumes"]
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert "ports" not in postgres, "the database is reached inside the compose network"
    assert postgres["depends_on"]["store-secret-init"]["condition"] == \
        "service_completed_successfully"
    init = services["store-secret-init"]
    assert volume_of(init["entrypoint"][2], compose_mounts(init)) == secret_volume
    for name in ("custody-1", "custody-2"):
        service = services[name]
        mounts = compose_mounts(service)
        assert volume_of(service["environment"]["PGPASSFILE"], mounts) == secret_volume
        assert any(v.startswith(f"{secret_volume}:") and v.endswith(":ro")
                   for v in service["volumes"]), "the replicas only read the password"
        assert data_volume not in mounts.values()
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
    # no literal password anywhere a deployment would copy from
    for text in ((ROOT / "docker-compose.yml").read_text(),
                 (ROOT / "deploy" / "custody.toml").read_text()):
        assert not re.search(r"(?i)password\s*[:=]\s*\S|://[^/@\s]*:[^/@\s]*@", text)


def dockerfile_copies(dockerfile: str) -> dict[str, str]:
    """Each COPY source of the Dockerfile -> the absolute path it lands at in the image."""
    copies: dict[str, str] = {}
    workdir = "/"
    for line in dockerfile.splitlines():
        words = [word for word in line.split() if not word.startswith("--")]
        if words[:1] == ["WORKDIR"]:
            workdir = posixpath.join(workdir, words[1])
        elif words[:1] == ["COPY"]:
            *sources, destination = words[1:]
            for source in sources:
                target = destination + source if destination.endswith("/") else destination
                copies[source] = posixpath.normpath(posixpath.join(workdir, target))
    return copies


def test_dockerfile_copies_what_the_install_needs() -> None:
    """`pip install '.[server]'` in the image needs pyproject.toml, its readme and every
    package directory, at the paths pyproject.toml names, beside it."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"],
              *pyproject["tool"]["setuptools"]["packages"]["find"]["where"]}
    copies = dockerfile_copies((ROOT / "Dockerfile").read_text(encoding="utf-8"))
    assert needed <= set(copies), f"the Dockerfile does not copy {needed - set(copies)}"
    install_root = posixpath.dirname(copies["pyproject.toml"])
    for source, landed in copies.items():
        assert (ROOT / source).exists(), f"the Dockerfile copies missing {source}"
        assert landed == posixpath.join(install_root, source), (source, landed)


def test_dockerfile_copies_reads_copy_lines() -> None:
    copies = dockerfile_copies("WORKDIR /opt/x\nCOPY a b ./\nCOPY --chown=u c ./d\n")
    assert copies == {"a": "/opt/x/a", "b": "/opt/x/b", "c": "/opt/x/d"}


def test_client_imports_without_server_dependencies() -> None:
    """The agent side must not pull in python-pkcs11 or structlog."""
    code = (
        "import sys\n"
        "import custody_client.cli, custody_client.client, custody_api.v1.custody_pb2_grpc\n"
        "bad = {'pkcs11', 'structlog', 'custody_server'} & set(sys.modules)\n"
        "print(sorted(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, env={"PYTHONPATH": f"{ROOT}/core:{ROOT}/client",
                                           "PATH": "/usr/bin:/bin"}, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_server_extra_holds_the_hsm_dependencies() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    server = " ".join(project["optional-dependencies"]["server"])
    for dependency in ("python-pkcs11", "structlog"):
        assert dependency not in base
        assert dependency in server


DISTRIBUTION = "custody-intoto"  # PyPI's `custody` is an unrelated project
IMPORT_PACKAGES = {"custody_core", "custody_client", "custody_server", "custody_api"}
COMMANDS = {"custody": "custody_client.cli:main", "custody-server": "custody_server.main:main"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel pip builds from what the Dockerfile copies (in a copy: no build/ or
    egg-info left in the checkout), offline: the venv's own setuptools, no index."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "src"
    for path in dockerfile_copies((ROOT / "Dockerfile").read_text(encoding="utf-8")):
        original = ROOT / path
        if original.is_dir():
            shutil.copytree(original, source / path, ignore=shutil.ignore_patterns(
                "__pycache__", "*.egg-info"))
        else:
            (source / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(original, source / path)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "--wheel-dir", str(tmp / "dist"), str(source)],
        capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    (built_wheel,) = (tmp / "dist").glob("*.whl")
    return zipfile.ZipFile(built_wheel)


def test_the_wheel_is_custody_intoto_with_the_packages_and_commands(
        wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    (metadata_file,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    fields = Parser().parsestr(wheel.read(metadata_file).decode())
    assert fields["Name"] == DISTRIBUTION
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert fields["Version"] == version
    assert Path(str(wheel.filename)).name.startswith(f"custody_intoto-{version}-")
    packages = {n.split("/")[0] for n in names if n.endswith("/__init__.py")}
    assert packages == IMPORT_PACKAGES
    # what the server reads at run time besides modules: the store's schema migrations
    assert any(n.startswith("custody_server/store/migrations/") and n.endswith(".sql")
               for n in names)
    (entry_points_file,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    entry_points = configparser.ConfigParser()
    entry_points.read_string(wheel.read(entry_points_file).decode())
    assert dict(entry_points["console_scripts"]) == COMMANDS


def test_the_server_reports_the_installed_distributions_version() -> None:
    """custody_build_info{version} and the ECS `service.version`: read from the installed
    distribution by its name, which must be pyproject's (else "0+unknown")."""
    import custody_server

    assert custody_server.DISTRIBUTION == DISTRIBUTION
    assert custody_server.__version__ == metadata.version(DISTRIBUTION)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION
    assert custody_server.__version__ == project["version"]
