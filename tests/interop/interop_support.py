"""Running the `custody` CLI as an agent would: a subprocess with only the client installed.

The subprocess gets PYTHONPATH = core + client (never server/), so every interop test also
proves that the agent side runs without python-pkcs11, structlog or the server package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from venv_tools import venv_tool

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Cli:
    env: dict[str, str]

    def __call__(self, *args: str, cwd: Path, check: bool = True
                 ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "custody_client", *args], cwd=cwd,
                                env=self.env, capture_output=True, text=True, timeout=120,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"custody {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def with_env(self, **changes: str | None) -> Cli:
        env = dict(self.env)
        for name, value in changes.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return Cli(env)


def agent_env(*, server: str, state_dir: Path | None, home: Path) -> dict[str, str]:
    """An agent's environment: the server address and (for mTLS) the local state dir."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "PYTHONPATH": f"{ROOT}/core:{ROOT}/client",
        "CUSTODY_SERVER": server,
    }
    if state_dir is not None:
        env["CUSTODY_STATE_DIR"] = str(state_dir)
    return env


def reference(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run one of in-toto's commands (in-toto-run, in-toto-record, in-toto-verify, ...)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
    return subprocess.run([venv_tool(tool), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def demo_layout(*, functionary: str, functionary_key: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """The in-toto demo layout: clone, update-version, package, and an untar inspection.

    `functionary` is "alias:build" (the server resolves it) or a key id, whose public key
    dict is then `functionary_key`.
    """
    keys = {functionary: functionary_key} if functionary_key else {}
    step: dict[str, Any] = {"_type": "step", "threshold": 1, "pubkeys": [functionary]}
    return {
        "_type": "layout",
        "expires": "2099-01-01T00:00:00Z",
        "readme": "the in-toto demo supply chain",
        "keys": keys,
        "steps": [
            {**step, "name": "clone", "expected_command": ["cp", "-r", "demo-project", "."],
             "expected_materials": [],
             "expected_products": [["CREATE", "demo-project/foo.py"], ["DISALLOW", "*"]]},
            {**step, "name": "update-version", "expected_command": [],
             "expected_materials": [["MATCH", "demo-project/*", "WITH", "PRODUCTS", "FROM",
                                     "clone"], ["DISALLOW", "*"]],
             "expected_products": [["ALLOW", "demo-project/foo.py"], ["DISALLOW", "*"]]},
            {**step, "name": "package",
             "expected_command": ["tar", "--exclude", ".git", "-zcvf", "demo-project.tar.gz",
                                  "demo-project"],
             "expected_materials": [["MATCH", "demo-project/*", "WITH", "PRODUCTS", "FROM",
                                     "update-version"], ["DISALLOW", "*"]],
             "expected_products": [["CREATE", "demo-project.tar.gz"], ["DISALLOW", "*"]]},
        ],
        "inspect": [
            {"_type": "inspection", "name": "untar",
             "run": ["tar", "xzf", "demo-project.tar.gz"],
             "expected_materials": [
                 ["MATCH", "demo-project.tar.gz", "WITH", "PRODUCTS", "FROM", "package"],
                 ["ALLOW", "root.layout"], ["ALLOW", "owner.pub"], ["DISALLOW", "*"]],
             "expected_products": [
                 ["MATCH", "demo-project/foo.py", "WITH", "PRODUCTS", "FROM", "update-version"],
                 ["ALLOW", "demo-project.tar.gz"], ["ALLOW", "root.layout"],
                 ["ALLOW", "owner.pub"], ["DISALLOW", "*"]]},
        ],
    }


# The demo's three steps, each as argv for `custody` or for in-toto's tools.
CLONE = ["run", "-n", "clone", "-p", "demo-project", "--"]
PACKAGE = ["run", "-n", "package", "-m", "demo-project", "-p", "demo-project.tar.gz", "--",
           "tar", "--exclude", ".git", "-zcvf", "demo-project.tar.gz", "demo-project"]



def signed_demo_layout(cli: Cli, work: Path) -> bytes:
    """The demo layout with `alias:build` as its functionary, signed by the owner key
    through the CLI in `work`."""
    (work / "layout.json").write_text(json.dumps(demo_layout(functionary="alias:build")))
    cli("sign-layout", "-l", "layout.json", "--key", "owner", "-o", "root.layout", cwd=work)
    return (work / "root.layout").read_bytes()

def write_template(work: Path) -> Path:
    template = work / "template"
    (template / "demo-project").mkdir(parents=True)
    (template / "demo-project" / "foo.py").write_text("VERSION = 'foo-v0'\n")
    return template


def update_version(functionary_dir: Path) -> None:
    """The hand edit between `record start` and `record stop`."""
    foo = functionary_dir / "demo-project" / "foo.py"
    foo.write_text("VERSION = 'foo-v1'\n")


def tamper_with(functionary_dir: Path) -> None:
    """The attacker's edit after update-version, before packaging."""
    with (functionary_dir / "demo-project" / "foo.py").open("a") as handle:
        handle.write("print('something evil')\n")


def final_product_dir(work: Path, name: str, *, functionary_dir: Path,
                      layout: bytes, owner_pub: bytes) -> Path:
    """What a release gate sees: the layout, its key, the links and the tarball."""
    final = work / name
    final.mkdir()
    for link in functionary_dir.glob("*.link"):
        shutil.copy(link, final / link.name)
    shutil.copy(functionary_dir / "demo-project.tar.gz", final / "demo-project.tar.gz")
    (final / "root.layout").write_bytes(layout)
    (final / "owner.pub").write_bytes(owner_pub)
    return final


def metablock(payload: dict[str, Any]) -> str:
    return json.dumps({"signed": payload, "signatures": []}, indent=1, sort_keys=True)
