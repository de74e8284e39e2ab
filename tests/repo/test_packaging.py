"""Repository promises: compose names real files, the client installs without the server."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_names_what_exists() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"softhsm-init", "custody"} <= set(services)
    for service in services.values():
        assert service["build"] == "."
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"compose mounts missing {source}"
            else:
                assert source in compose["volumes"], f"undeclared volume {source}"
    init_script = services["softhsm-init"]["entrypoint"][1]
    assert init_script.startswith("/opt/custody/")
    assert (ROOT / init_script.removeprefix("/opt/custody/")).is_file()
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    for copied in ("core", "client", "server", "softhsm", "pyproject.toml"):
        assert f"COPY {copied}" in dockerfile or copied in dockerfile
        assert (ROOT / copied).exists()
    config = tomllib.loads((ROOT / "deploy" / "custody.toml").read_text())
    from custody_server.config import config_from_dict

    parsed = config_from_dict(config, base=ROOT / "deploy")
    from custody_client.local_tls import CA_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE

    health = " ".join(services["custody"]["healthcheck"]["test"])
    for name in (CA_FILE, CLIENT_CERT_FILE, CLIENT_KEY_FILE):
        assert f"'{name}'" in health, f"healthcheck must use {name} (mTLS is the default)"
    assert f"{parsed.state_dir}/tls/" in health
    env_conf = services["custody"]["environment"]["SOFTHSM2_CONF"]
    assert str(parsed.hsm.pin_file).startswith(str(Path(env_conf).parent))


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
