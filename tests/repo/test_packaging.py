"""Repository promises: compose names real files, the client installs without the server."""

from __future__ import annotations

import posixpath
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
    copies = dockerfile_copies((ROOT / "Dockerfile").read_text(encoding="utf-8"))
    assert any(init_script.startswith(f"{landed}/") for landed in copies.values()), \
        f"the image does not hold {init_script}"
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
