"""The README's "Five minutes" walkthrough, run as written (its one shell block, line by
line under `set -e`) against the session's server: an agent records a step, the layout
is signed, the gate verifies the artifact from the attestation store, and the reference
in-toto-verify accepts the same files. The walkthrough once told a reader to verify with
`--artifact` a link recorded without a run, which the store cannot group: it failed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from .interop_support import ROOT, agent_env

SECTION = "## Five minutes"


def walkthrough() -> str:
    """The first ```sh block of the README's "Five minutes" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(SECTION):]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None, "no shell block in the walkthrough"
    return block.group(1)


def test_the_walkthrough_runs_as_written(custody_server_address: str, client_tls: Any,
                                         tmp_path: Path) -> None:
    script = walkthrough()
    assert "--artifact hello.tar.gz" in script  # the gate's question is asked
    # `.venv` is the checkout's, as for a reader in its root
    script = script.replace(". .venv/bin/activate", f". {ROOT}/.venv/bin/activate")
    env = agent_env(server=custody_server_address, state_dir=client_tls.state_dir,
                    home=tmp_path / "home")
    result = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS: root.layout verified (1 step, 1 artifact checked)" in result.stdout
    assert "links: run demo-1, from the attestation store" in result.stdout
    assert (tmp_path / "demo" / "owner.pub").read_text().startswith("-----BEGIN PUBLIC KEY")
