"""Pipeline fixtures: the session's server, a signed demo layout, CI pipelines of each
flavour whose jobs reach the server with the address and mTLS files given as inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from interop.interop_support import Cli, agent_env, signed_demo_layout

from .pipeline_support import CiPipeline, Connection, custody_shim


@pytest.fixture(scope="module")
def cli(custody_server_address: str, client_tls: Any,
        tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """The CLI as an administrator beside the pipelines (layouts, `links list`)."""
    return Cli(agent_env(server=custody_server_address, state_dir=client_tls.state_dir,
                         home=tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="module")
def layout(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The in-toto demo layout (clone, update-version, package; an untar inspection),
    signed by the owner key."""
    return signed_demo_layout(cli, tmp_path_factory.mktemp("layout"))


@pytest.fixture(scope="module")
def custody_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with a `custody` command: the jobs' install step finds it and skips."""
    return custody_shim(tmp_path_factory.mktemp("bin"))


@pytest.fixture(scope="module")
def connection(custody_server_address: str, client_tls: Any) -> Connection:
    return Connection(server=custody_server_address, ca=client_tls.ca_cert,
                      cert=client_tls.cert, key=client_tls.key)


@pytest.fixture(params=["github", "gitlab"])
def pipeline(request: pytest.FixtureRequest, connection: Connection, custody_bin: Path,
             tmp_path: Path) -> CiPipeline:
    """A new pipeline run of each flavour."""
    return CiPipeline(flavour=request.param, connection=connection, base=tmp_path,
                      bin_dir=custody_bin)
