"""Node client fixtures: the compiled example agent, as an agent of the session's server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from .node_support import Agent, build_client, node_binary


@pytest.fixture(scope="session")
def agent_script() -> Path:
    """The client built once per session (tsc), so the tests run the code as it is."""
    node_binary()
    return build_client()


@pytest.fixture(scope="session")
def agent(agent_script: Path, custody_server_address: str, client_tls: Any,
          tmp_path_factory: pytest.TempPathFactory) -> Agent:
    """The agent with the server address and the local mTLS files (CUSTODY_STATE_DIR), as
    the Python CLI finds them."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path_factory.mktemp("home")),
        "CUSTODY_SERVER": custody_server_address,
        "CUSTODY_STATE_DIR": str(client_tls.state_dir),
    }
    return Agent(node=node_binary(), script=agent_script, env=env)
