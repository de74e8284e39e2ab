"""A separate process that runs the scheduler's due work (or prepares next versions, as
a server does at start) once, when GO_FILE appears.

Usage: python lifecycle_race_worker.py ALIAS GO_FILE [due|prepare]; the token comes
from SOFTHSM2_CONF, CUSTODY_PKCS11_MODULE, CUSTODY_TEST_TOKEN and CUSTODY_TEST_PIN_FILE.
Prints what it did as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from custody_server.audit_events import MemoryAuditSink
from custody_server.keystore import Pkcs11KeyStore
from custody_server.lifecycle.keyring import KeyRing
from custody_server.lifecycle.manager import KeyLifecycle
from custody_server.lifecycle.settings import LifecycleSettings, RotationSchedule


def main() -> int:
    alias, go_file = sys.argv[1], Path(sys.argv[2])
    work = sys.argv[3] if len(sys.argv) > 3 else "due"
    store = Pkcs11KeyStore.open(
        module_path=os.environ["CUSTODY_PKCS11_MODULE"],
        token_label=os.environ["CUSTODY_TEST_TOKEN"],
        pin=Path(os.environ["CUSTODY_TEST_PIN_FILE"]).read_text().strip(),
    )
    keys = KeyRing(store)
    settings = LifecycleSettings(schedules={alias: RotationSchedule(
        period=timedelta(seconds=1), overlap=timedelta(hours=1))})
    lifecycle = KeyLifecycle(keys=keys, audit=MemoryAuditSink(),
                             clock=lambda: datetime.now(UTC), settings=settings)
    keys.all()  # warm the cache: every worker is ready before the start
    print("ready", flush=True)
    while not go_file.exists():  # all workers start the due work together
        time.sleep(0.005)
    if work == "prepare":
        prepared = [p for p in lifecycle.prepare_all(trigger="start")
                    if p.startswith(f"{alias} ")]
        following = keys.get(alias).next
        print(json.dumps({"prepared": prepared,
                          "next_keyid": following.keyid if following else None}))
    else:
        done = lifecycle.run_due()
        print(json.dumps({"rotated": list(done.rotated), "guard": keys.guard.description}))
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
