"""A separate process that cold-starts like a replica: default keys and the audit key.

Usage: python bootstrap_race_worker.py LINK_ALIAS LAYOUT_ALIAS AUDIT_ALIAS AUDIT_DIR; the
token comes from SOFTHSM2_CONF, CUSTODY_PKCS11_MODULE, CUSTODY_TEST_TOKEN and
CUSTODY_TEST_PIN_FILE. It warms its key ring (so it believes every alias is missing),
prints "ready", waits for a line on stdin, then starts; prints the outcome as JSON.

SoftHSM's file store can fail a read (GeneralError) while another process rewrites the
token file; the store reconnects at the next call. Warming and reading the outcome are
retried for that: they are setup and checking, not the race under test, which runs once
and must succeed. (Opening is worse: a process that loads the module while another one
logs in may see a half-written token for good, so the test starts racers one by one.)
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from custody_server.audit import AuditSettings, open_audit_trail
from custody_server.bootstrap import ensure_default_keys
from custody_server.keystore import KeystoreUnavailableError, Pkcs11KeyStore
from custody_server.lifecycle.keyring import KeyRing

T = TypeVar("T")


def retried(operation: Callable[[], T]) -> T:
    for _ in range(50):
        try:
            return operation()
        except KeystoreUnavailableError:
            time.sleep(0.05)
    return operation()


def main() -> int:
    link_alias, layout_alias, audit_alias, audit_dir = sys.argv[1:5]
    store = Pkcs11KeyStore.open(
        module_path=os.environ["CUSTODY_PKCS11_MODULE"],
        token_label=os.environ["CUSTODY_TEST_TOKEN"],
        pin=Path(os.environ["CUSTODY_TEST_PIN_FILE"]).read_text().strip(),
    )
    keys = KeyRing(store, cache_ttl=60.0)
    retried(keys.all)  # the cached view: none of the aliases exists yet
    print("ready", flush=True)
    sys.stdin.readline()
    notes = ensure_default_keys(keys, (link_alias, layout_alias))
    trail = open_audit_trail(AuditSettings(directory=Path(audit_dir), key_alias=audit_alias),
                             keys=keys, store=store, node=f"race-{uuid.uuid4().hex[:12]}")
    trail.close()
    keyids = retried(lambda: {alias: keys.get(alias).active.keyid
                              for alias in (link_alias, layout_alias, audit_alias)})
    print(json.dumps({"notes": notes, "keyids": keyids, "guard": keys.guard.description}))
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
