"""The embedded default's local mTLS files, as the server lays them out.

On first start `custody-server` creates a local CA and a client certificate in
`<state dir>/tls/` (custody_server.tls_bootstrap): `ca.pem`, `client.pem`,
`client-key.pem`. The state directory is `$CUSTODY_STATE_DIR`, else
`$XDG_STATE_HOME/custody`, else `~/.local/state/custody`, as for the server. When no TLS
material is given on the command line or in the environment, the CLI uses these files if
they are there, so that `custody` talks to a local `custody-server` with no setup.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_STATE_DIR = "CUSTODY_STATE_DIR"
CA_FILE = "ca.pem"
CLIENT_CERT_FILE = "client.pem"
CLIENT_KEY_FILE = "client-key.pem"


def state_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if value := env.get(ENV_STATE_DIR):
        return Path(value)
    base = env.get("XDG_STATE_HOME") or str(Path(env.get("HOME") or Path.home())
                                            / ".local" / "state")
    return Path(base) / "custody"


@dataclass(frozen=True)
class LocalTlsFiles:
    ca: Path
    cert: Path
    key: Path


def find_local_tls(environ: Mapping[str, str] | None = None) -> LocalTlsFiles | None:
    """The local CA and client pair, if all three files are there and readable."""
    directory = state_dir(environ) / "tls"
    files = LocalTlsFiles(ca=directory / CA_FILE, cert=directory / CLIENT_CERT_FILE,
                          key=directory / CLIENT_KEY_FILE)
    for path in (files.ca, files.cert, files.key):
        if not (path.is_file() and os.access(path, os.R_OK)):
            return None
    return files
