"""Interop fixtures: the `custody` CLI as an agent of the session's server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .interop_support import Cli, agent_env


@pytest.fixture(scope="module")
def agent_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent's HOME, one per test module."""
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def cli(custody_server_address: str, client_tls: Any, agent_home: Path) -> Cli:
    """An agent with the server address and the local mTLS files (CUSTODY_STATE_DIR)."""
    return Cli(agent_env(server=custody_server_address, state_dir=client_tls.state_dir,
                         home=agent_home))
