"""The policy the embedded default writes on first start: the local client may do all."""

from __future__ import annotations

import os
from pathlib import Path

from custody_server.policy.identity import ANONYMOUS
from custody_server.tls_bootstrap import LOCAL_CLIENT_IDENTITY

DEFAULT_POLICY_NAME = "policy.toml"

LOCAL_POLICY = f"""\
# Custody access policy (written on first start by the embedded default).
# Default deny: only the identities named in a [[grant]] may call, and only what it says.
# Identities come from client certificates: the URI SAN (e.g. a SPIFFE id), else
# "dns:<first DNS SAN>", else "cn:<common name>". See docs/SECURITY.md.
# Edit, then `kill -HUP <server pid>` to reload; a bad file is rejected, the old policy stays.
version = 1

[rate_limit]
per_second = 50.0
burst = 100

# The local client certificate (tls/client.pem) may do everything, quickly. So may
# "anonymous", the identity of every caller when `[tls] insecure = true` (plaintext, no
# authentication: the server warns at start); with TLS no caller is ever "anonymous".
[rate_limit.identities."{LOCAL_CLIENT_IDENTITY}"]
per_second = 10000.0
burst = 20000

[rate_limit.identities."{ANONYMOUS}"]
per_second = 10000.0
burst = 20000

[[grant]]
identities = ["{LOCAL_CLIENT_IDENTITY}", "{ANONYMOUS}"]
rpcs = ["*"]
link_keys = ["*"]
steps = ["*"]
layout_keys = ["*"]
admin_keys = ["*"]

# A build agent that may only sign links for its steps, with the `build` key:
# [[grant]]
# identities = ["spiffe://example.org/ci/builder"]
# rpcs = ["SignLink"]
# link_keys = ["build"]
# steps = ["build", "test-*"]
#
# A release gate that verifies an artifact from the attestation store (custody verify
# --artifact without --link-dir) reads the store, so it needs ListLinks as well:
# [[grant]]
# identities = ["spiffe://example.org/gate"]
# rpcs = ["Verify", "ListLinks"]
"""


def write_default_policy(path: Path) -> bool:
    """Write the local policy unless the file exists; True when it was written."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(LOCAL_POLICY)
    return True
