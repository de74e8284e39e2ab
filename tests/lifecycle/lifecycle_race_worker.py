"""A separate process that runs the scheduler's due work once, at a given moment.

Usage: python lifecycle_race_worker.py ALIAS START_AT (epoch seconds); the token comes
from SOFTHSM2_CONF, CUSTODY_PKCS11_MODULE, CUSTODY_TEST_TOKEN and CUSTODY_TEST_PIN_FILE.
Prints the DueWork as JSON.
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
    work = lifecycle.run_due()
    print(json.dumps({"rotated": list(work.rotated), "guard": keys.guard.description}))
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
